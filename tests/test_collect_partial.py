"""Nodes whose collection went partly wrong, collected over a real sshd (tests/sshd.py) and then audited from
the directory: what collect warned about at the time must still be said by whoever reads the directory later,
when it bears on the answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from iptrace.cli import main
from iptrace.collect.ssh import collect
from tests.sshd import SshdFarm, default_scripts, have_sshd

pytestmark = pytest.mark.skipif(not have_sshd(), reason="OpenSSH server (/usr/sbin/sshd) is not installed")


def test_a_conntrack_table_collected_for_one_family_only_is_said_to_be_partial(farm: SshdFarm, tmp_path: Path):
    """`conntrack -L -f ipv4` listed the node's flows, `-f ipv6` failed: collect kept the IPv4 entries and warned
    once. Reading the directory later, audit and explain judged the table as if it were whole: IPv6 flows were
    never checked, and nothing said so (a table cut at --conntrack-max-entries is said to be partial)."""
    stale = ("udp      17 29 src=198.18.128.9 dst=198.19.0.10 sport=5000 dport=80 src=198.18.128.7 dst=198.18.128.9 "
             "sport=80 dport=5000 mark=0 use=1")
    conntrack = ("#!/bin/sh\nif [ \"$3\" = ipv6 ]; then echo 'conntrack v1.4.7 (conntrack-tools): Operation failed: "
                 "invalid parameters' >&2; exit 1; fi\necho '" + stale + "'\n")
    server = farm.start("n", scripts={**default_scripts("198.18.0.1"), "conntrack": conntrack})
    (tmp_path / "ssh_config").write_text("")
    out = tmp_path / "out"
    result, = collect([f"127.0.0.1:{server.port}"], out_dir=out, identity_files=[farm.client_key], user="root",
                      ssh_config=tmp_path / "ssh_config", known_hosts=farm.known_hosts(tmp_path / "known_hosts"),
                      connect_timeout=5, command_timeout=10)
    assert result.ok and any("conntrack -L -f ipv6" in w for w in result.warnings), result.warnings
    node = out / result.node
    said = (f"note: {node / 'conntrack.txt'}: holds no IPv6 entries: `conntrack -L -f ipv6` failed (conntrack v1.4.7 "
            "(conntrack-tools): Operation failed: invalid parameters) when the node was collected; those flows were "
            "not checked\n")

    audited = CliRunner().invoke(main, ["audit", str(out), "-o", "json", "--jobs", "1"])
    assert audited.exit_code == 3, audited.output
    assert [f["id"] for f in json.loads(audited.stdout)["findings"]] == ["stale-conntrack"]
    assert audited.stderr == said

    explained = CliRunner().invoke(main, ["explain", str(node), "--dst", "198.19.0.10:80", "--proto", "udp"])
    assert said in explained.stderr, explained.stderr


def test_a_node_whose_new_collection_failed_keeps_its_files_and_says_they_are_older(farm: SshdFarm, tmp_path: Path):
    """Collecting into the same directory again (a cron job, a second try): a node that fails this time keeps the
    earlier collection's files, as it should, but `audit DIR` then showed it 'ok' beside the fresh nodes and
    `services DIR/NODE` answered from it, with nothing saying these rules were from an earlier collection."""
    servers = [farm.start(name, ip=f"198.18.0.{i + 1}") for i, name in enumerate(("flaky", "fine"))]
    never = farm.start("never", ip="198.18.0.3", scripts={**default_scripts("198.18.0.3"),
                                                          "iptables-save": "#!/bin/sh\nexit 1\n"})
    (tmp_path / "ssh_config").write_text("")
    out = tmp_path / "out"

    def run() -> list:
        return collect([f"127.0.0.1:{s.port}" for s in (*servers, never)], out_dir=out,
                       identity_files=[farm.client_key], user="root", ssh_config=tmp_path / "ssh_config",
                       known_hosts=farm.known_hosts(tmp_path / "known_hosts"), connect_timeout=5, command_timeout=10)

    flaky, fine, failed = run()
    assert flaky.ok and fine.ok and not failed.ok
    dump = (out / flaky.node / "iptables-save.txt").read_bytes()
    servers[0].set_script("iptables-save", "#!/bin/sh\necho 'iptables-save: broken' >&2\nexit 1\n")
    flaky_again, _, _ = run()
    assert not flaky_again.ok
    assert (out / flaky.node / "iptables-save.txt").read_bytes() == dump
    assert not (out / failed.node).exists(), "a node never collected gets no directory"
    meta = json.loads((out / flaky.node / "meta.json").read_text())
    assert meta["failed_attempt"]["error"] == "`iptables-save` failed (iptables-save: broken)"

    audited = CliRunner().invoke(main, ["audit", str(out), "-o", "json", "--jobs", "1"])
    assert audited.exit_code == 0, audited.output
    said = [f for f in json.loads(audited.stdout)["findings"] if f["id"] == "load-error"]
    assert [(f["node"], f["severity"]) for f in said] == [(flaky.node, "warning")]
    assert f"failed (`iptables-save` failed (iptables-save: broken)); its files are from an earlier one " \
           f"({meta['collected_at']})" in said[0]["detail"]
    services = CliRunner().invoke(main, ["services", str(out / flaky.node)])
    assert services.exit_code == 0 and services.stderr.count("its last collection") == 1, services.stderr

    servers[0].set_script("iptables-save", default_scripts("198.18.0.1")["iptables-save"])
    assert run()[0].ok
    assert "failed_attempt" not in json.loads((out / flaky.node / "meta.json").read_text())
    audited = CliRunner().invoke(main, ["audit", str(out), "-o", "json", "--jobs", "1"])
    assert not [f for f in json.loads(audited.stdout)["findings"] if f["id"] == "load-error"]
