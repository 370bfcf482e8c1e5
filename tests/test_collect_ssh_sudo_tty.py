"""--sudo on a node whose sudoers has `Defaults requiretty` (older RHEL/CentOS), over a real sshd (tests/sshd.py):
collect runs commands without a terminal, and sudo refuses every one of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from iptrace.collect.ssh import collect
from tests.sshd import SshdFarm, default_scripts, have_sshd

pytestmark = pytest.mark.skipif(not have_sshd(), reason="OpenSSH server (/usr/sbin/sshd) is not installed")
# What sudo prints (plugins/sudoers/sudoers.c) when requiretty is set and the session has no terminal.
SUDO_REQUIRETTY = '#!/bin/sh\necho "sudo: sorry, you must have a tty to run sudo" >&2\nexit 1\n'


def test_sudo_that_requires_a_terminal_is_named_with_the_sudoers_line_that_allows_it(farm: SshdFarm,
                                                                                     tmp_path: Path):
    """Was: 'admin: `iptables-save` failed (sudo: sorry, you must have a tty to run sudo)', kind ssh — read as a
    broken iptables-save or connection, with no way forward."""
    server = farm.start("n", scripts={**default_scripts("198.18.0.1"), "sudo": SUDO_REQUIRETTY})
    (tmp_path / "ssh_config").write_text("")
    result, = collect([f"root@127.0.0.1:{server.port}"], out_dir=tmp_path / "out", identity_files=[farm.client_key],
                      ssh_config=tmp_path / "ssh_config", known_hosts=farm.known_hosts(tmp_path / "known_hosts"),
                      connect_timeout=5, command_timeout=10, sudo=True)
    assert not result.ok and result.error_kind == "permission", (result.error_kind, result.error)
    assert "`Defaults requiretty`" in (result.error or "") and "`Defaults:root !requiretty`" in (result.error or "")
    assert not (tmp_path / "out" / result.node).exists()
