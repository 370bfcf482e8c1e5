"""known_hosts as OpenSSH reads it, against a real sshd (tests/sshd.py): marker lines (`@cert-authority`,
`@revoked`) and lines that hold no key. paramiko's own loader stops at the first of them (an internal error for
every node), and a revoked key must never be accepted, not even with --accept-new-host-keys. And identity files
that hold no private key, named as such."""

from __future__ import annotations

from pathlib import Path

import pytest

from iptrace.collect.ssh import collect
from tests.sshd import SshdFarm, have_sshd, keygen, public_key

pytestmark = pytest.mark.skipif(not have_sshd(), reason="OpenSSH server (/usr/sbin/sshd) is not installed")


def _collect(farm: SshdFarm, server, tmp_path: Path, known_hosts: Path, **kwargs):
    (tmp_path / "ssh_config").write_text("")
    kwargs.setdefault("identity_files", [farm.client_key])
    [result] = collect([f"127.0.0.1:{server.port}"], out_dir=tmp_path / "out", user="root",
                       ssh_config=tmp_path / "ssh_config", known_hosts=known_hosts, connect_timeout=5,
                       command_timeout=10, **kwargs)
    return result


def test_marker_lines_and_lines_without_a_key_are_read_as_openssh_reads_them(farm: SshdFarm, tmp_path: Path):
    server = farm.start("a")
    ca = keygen(tmp_path / "host_ca")
    known_hosts = tmp_path / "known_hosts"
    # An organisation's host CA (paramiko verifies no certificates: such hosts stay unknown), a line cut by an
    # editor, a key blob of the wrong shape, then the node's own key.
    known_hosts.write_text(f"@cert-authority *.example.com {public_key(ca)}\n"
                           "node9.example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKnTPmFPT7ScO3KEj92rd6\n"
                           "node8.example.com ssh-rsa AAAAB3NzaC1yc2E=\n"  # (base64, but no RSA key)
                           + server.known_hosts_line)
    result = _collect(farm, server, tmp_path, known_hosts)
    assert result.ok, result.error


def test_a_revoked_host_key_is_refused_even_with_accept_new(farm: SshdFarm, tmp_path: Path):
    server = farm.start("a")
    known_hosts = tmp_path / "known_hosts"
    revoked = f"@revoked * {public_key(server.host_key)}\n"
    known_hosts.write_text(revoked)
    result = _collect(farm, server, tmp_path, known_hosts, accept_new_host_keys=True)
    assert (result.ok, result.error_kind) == (False, "host-key"), result.error
    assert "is REVOKED in known_hosts" in (result.error or "")
    assert known_hosts.read_text() == revoked
    # Listed as a known key as well: still refused (OpenSSH checks revocation first).
    known_hosts.write_text(revoked + server.known_hosts_line)
    result = _collect(farm, server, tmp_path, known_hosts)
    assert (result.ok, result.error_kind) == (False, "host-key"), result.error
    assert not (tmp_path / "out" / result.node).exists()


@pytest.mark.parametrize("given", ["public", "garbage"])
def test_an_identity_file_that_is_no_private_key_is_an_auth_error_naming_it(farm: SshdFarm, tmp_path: Path,
                                                                           given: str):
    """`-i key.pub` (the classic slip) or a file that is no key: paramiko's 'not a valid OPENSSH private key file'
    came out as 'SSH to … failed (…)', kind ssh, naming no file."""
    server = farm.start("a")
    key = Path(f"{farm.client_key}.pub")
    if given == "garbage":
        key = tmp_path / "garbage"
        key.write_text("not a key\n")
    result = _collect(farm, server, tmp_path, farm.known_hosts(tmp_path / "known_hosts"), identity_files=[key],
                      allow_agent=False)
    assert (result.ok, result.error_kind) == (False, "auth"), result.error
    assert f"(tried {key})" in (result.error or "") and "not a private key" in (result.error or "")
