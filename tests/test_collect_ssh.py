"""collect over SSH against real OpenSSH servers (tests/sshd.py): success, every failure kind, jump hosts,
atomic replacement, file modes, secrets. One test runs the real iptables-save inside a network namespace."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from ipaddress import ip_address
from pathlib import Path

import pytest

from iptrace.collect import store
from iptrace.collect.gather import parse_ip_addr, parse_iptables_version
from iptrace.collect.ssh import NodeTarget, collect, read_inventory, remote_command
from iptrace.errors import InputError
from iptrace.routes import parse_routes
from tests.signals import default_sigint
from tests.sshd import (
    SAMPLE_DUMP,
    SAMPLE_DUMP6,
    SAMPLE_LEGACY_DUMP,
    SAMPLE_NFT,
    SUDO_PASSWORD,
    SshdFarm,
    default_scripts,
    free_port,
    gone_within,
    have_sshd,
    keygen,
    public_key,
)

needs_sshd = pytest.mark.skipif(not have_sshd(), reason="OpenSSH server (/usr/sbin/sshd) is not installed")


@pytest.fixture
def client_key(tmp_path: Path) -> Path:
    return keygen(tmp_path / "client_key")


@pytest.fixture
def farm(tmp_path: Path, client_key: Path, monkeypatch: pytest.MonkeyPatch):
    # An agent of the person running the tests must not take part (nor leak keys into results).
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    farm = SshdFarm(tmp_path, client_key)
    try:
        yield farm
    finally:
        farm.stop_all()


def _collect(farm: SshdFarm, targets, tmp_path: Path, **kwargs):
    kwargs.setdefault("out_dir", tmp_path / "out")
    kwargs.setdefault("identity_files", [farm.client_key])
    kwargs.setdefault("user", "root")
    kwargs.setdefault("ssh_config", _empty_config(tmp_path))
    kwargs.setdefault("connect_timeout", 5)
    kwargs.setdefault("command_timeout", 10)
    if "known_hosts" not in kwargs:
        kwargs["known_hosts"] = farm.known_hosts(tmp_path / "known_hosts")
    return collect(targets, **kwargs)


def _empty_config(tmp_path: Path) -> Path:
    path = tmp_path / "ssh_config"
    if not path.exists():
        path.write_text("")
    return path


def _target(server, user: str = "") -> str:
    return f"{user + '@' if user else ''}127.0.0.1:{server.port}"


def _name(server) -> str:
    """The directory name collect gives a server's node."""
    return NodeTarget.parse(_target(server)).name


def _describe(results) -> str:
    return "\n".join(f"{r.node}: ok={r.ok} kind={r.error_kind} error={r.error}" for r in results)


# ------------------------------------------------------------------------------------ pure parts

def test_node_target_forms():
    assert NodeTarget.parse("node1") == NodeTarget("node1")
    t = NodeTarget.parse("admin@10.0.0.5:2222")
    assert (t.user, t.host, t.port, t.name) == ("admin", "10.0.0.5", 2222, "10.0.0.5:2222")
    t = NodeTarget.parse("[fd00::5]:2200")
    assert (t.host, t.port, t.name, str(t)) == ("fd00::5", 2200, "[fd00::5]:2200", "[fd00::5]:2200")
    t = NodeTarget.parse("root@fd00::5")
    assert (t.user, t.host, t.port) == ("root", "fd00::5", None)
    assert NodeTarget.parse("n1", name="worker-1").name == "worker-1"
    for bad in ("", "host:", "host:x", "host:70000", "[::1", "[::1]x", "../etc", "-oProxyCommand=x",
                "a b", "user@", "h;rm"):
        with pytest.raises(InputError):
            NodeTarget.parse(bad)
    with pytest.raises(InputError, match="node name"):
        NodeTarget("10.0.0.1", name="../escape")


def test_inventory_plain_and_ansible(tmp_path: Path):
    inventory = tmp_path / "nodes"
    inventory.write_text(
        "# cluster a\n"
        "node1\n"
        "root@10.0.0.2:2222   # second\n"
        "\n"
        "[workers]\n"
        "worker-3 ansible_host=10.0.0.3 ansible_user=admin ansible_port=2200 ansible_become=true\n"
        "10.0.0.4 name=w4\n"
        "[workers:vars]\n"
        "ansible_user=ignored\n"
        "[masters]\n"
        "[fd00::9]:22\n")
    nodes = read_inventory(inventory)
    assert [(n.name, n.host, n.user, n.port) for n in nodes] == [
        ("node1", "node1", None, None),
        ("10.0.0.2:2222", "10.0.0.2", "root", 2222),
        ("worker-3", "10.0.0.3", "admin", 2200),
        ("w4", "10.0.0.4", None, None),
        ("[fd00::9]:22", "fd00::9", None, 22),
    ]
    inventory.write_text("node1\nnode2 colour=blue\n")
    with pytest.raises(InputError, match=r"nodes:2: unknown option 'colour'"):
        read_inventory(inventory)
    inventory.write_text("node1\nnode$2\n")
    with pytest.raises(InputError, match=r"nodes:2: bad node host"):
        read_inventory(inventory)


def test_remote_commands_are_fixed_argv():
    assert remote_command(("iptables-save",), sudo=False) == "iptables-save"
    assert remote_command(("iptables-save",), sudo=True) == "sudo -n iptables-save"
    assert remote_command(("ip", "-o", "addr", "show"), sudo=False) == "ip -o addr show"


def test_parse_version_and_addresses():
    assert parse_iptables_version("iptables v1.8.9 (nf_tables)\n") == ("1.8.9", "nf_tables")
    assert parse_iptables_version("iptables v1.8.7 (legacy)\n") == ("1.8.7", "legacy")
    assert parse_iptables_version("iptables v1.6.1\n") == ("1.6.1", "legacy")
    assert parse_iptables_version("nonsense") == (None, None)
    text = ("1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever\n"
            "3: eth0@if7    inet 198.18.0.4/24 brd 198.18.0.255 scope global eth0\\       valid_lft forever\n"
            "3: eth0@if7    inet6 fe80::1%eth0/64 scope link \\       valid_lft forever\n"
            "garbage line\n")
    parsed = parse_ip_addr(text)
    assert [(a["interface"], a["address"], a["prefixlen"], a["scope"]) for a in parsed] == [
        ("lo", "127.0.0.1", 8, "host"), ("eth0", "198.18.0.4", 24, "global"), ("eth0", "fe80::1", 64, "link")]


def test_argument_errors(tmp_path: Path):
    with pytest.raises(InputError, match="given twice"):
        collect(["a:22", "b", "a:22"], out_dir=tmp_path / "o")
    with pytest.raises(InputError, match="identity file"):
        collect(["a"], out_dir=tmp_path / "o", identity_files=[tmp_path / "nope"])
    with pytest.raises(InputError, match="parallel"):
        collect(["a"], out_dir=tmp_path / "o", parallel=0)
    with pytest.raises(InputError, match="ssh config"):
        collect(["a"], out_dir=tmp_path / "o", ssh_config=tmp_path / "missing_config")


def test_store_rejects_what_is_not_a_node_dir(tmp_path: Path):
    with pytest.raises(InputError, match="not a directory"):
        store.read_node_dir(tmp_path / "missing")
    (tmp_path / "n").mkdir()
    assert not store.is_node_dir(tmp_path / "n")
    with pytest.raises(InputError, match=r"iptables-save\.txt: missing"):
        store.read_node_dir(tmp_path / "n")
    (tmp_path / "n" / "nft-ruleset.txt").write_text("table ip t {\n}\n")  # (saved by hand on an nft node)
    assert store.is_node_dir(tmp_path / "n")
    assert store.read_node_dir(tmp_path / "n").dump_path == tmp_path / "n" / "nft-ruleset.txt"
    (tmp_path / "n" / "iptables-save.txt").write_text("*filter\nCOMMIT\n")
    assert store.read_node_dir(tmp_path / "n").dump_path == tmp_path / "n" / "iptables-save.txt"
    (tmp_path / "n" / "meta.json").write_text("{not json")
    with pytest.raises(InputError, match=r"meta\.json:1:2: unreadable metadata"):
        store.read_node_dir(tmp_path / "n")


# ------------------------------------------------------------------------------------ real sshd

@needs_sshd
def test_several_nodes_in_parallel(farm: SshdFarm, tmp_path: Path):
    servers = [farm.start(f"n{i}", ip=f"198.18.0.{i + 1}") for i in range(4)]
    seen = []
    results = _collect(farm, [_target(s) for s in servers], tmp_path, parallel=4, progress=seen.append)
    assert all(r.ok for r in results), _describe(results)
    assert sorted(r.node for r in seen) == sorted(r.node for r in results)
    assert [r.node for r in results] == [f"127.0.0.1:{s.port}" for s in servers]
    out = tmp_path / "out"
    for index, (server, result) in enumerate(zip(servers, results, strict=True)):
        node_dir = out / result.node
        ip = f"198.18.0.{index + 1}"
        assert (node_dir / "iptables-save.txt").read_text() == SAMPLE_DUMP % {"ip": ip}
        assert (node_dir / "ip6tables-save.txt").read_text() == SAMPLE_DUMP6
        assert not (node_dir / "iptables-legacy-save.txt").exists()
        meta = json.loads((node_dir / "meta.json").read_text())
        assert meta["node"] == result.node
        assert (meta["host"], meta["port"], meta["user"]) == ("127.0.0.1", server.port, "root")
        assert meta["addresses"] == ["127.0.0.1", "::1", ip, "fe80::1"]
        assert (meta["iptables_version"], meta["backend"]) == ("1.8.9", "nf_tables")
        assert meta["files"] == ["ip6tables-save.txt", "iptables-save.txt", "routes.txt"]
        assert meta["errors"] == [] and meta["routes"] == {"status": "ok", "error": None}
        assert meta["collected_at"].endswith("+00:00")
        assert set(result.files) == {node_dir / "iptables-save.txt", node_dir / "ip6tables-save.txt",
                                     node_dir / "routes.txt", node_dir / "meta.json"}
        # (the host's own routes, as its real `cat` read them: what the node directory's analyses then use)
        assert parse_routes((node_dir / "routes.txt").read_text()).v4 is not None
        # Dumps describe the cluster's topology: private files in private directories.
        assert stat.S_IMODE(node_dir.stat().st_mode) == 0o700
        for path in node_dir.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        snapshot = store.read_node_dir(node_dir)
        assert snapshot.node == result.node
        assert snapshot.addresses == ("127.0.0.1", "::1", ip, "fe80::1")
        assert snapshot.dump_text == SAMPLE_DUMP % {"ip": ip}
        assert snapshot.ip6_dump_text == SAMPLE_DUMP6
        assert snapshot.legacy_dump_text is None
        assert store.is_node_dir(node_dir)
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert [s.node for s in store.list_snapshot(out)] == sorted(r.node for r in results)
    assert not [p for p in out.rglob(".*")], "temporary files left behind"


@needs_sshd
def test_wrong_key_is_auth(farm: SshdFarm, tmp_path: Path):
    server = farm.start("a")
    other = keygen(tmp_path / "other_key")
    [result] = _collect(farm, [_target(server)], tmp_path, identity_files=[other])
    assert (result.ok, result.error_kind) == (False, "auth"), result.error
    assert "authentication failed for root@127.0.0.1" in result.error
    assert not (tmp_path / "out" / result.node).exists()


@needs_sshd
def test_unknown_host_key_refused_then_accepted_new(farm: SshdFarm, tmp_path: Path):
    server = farm.start("a")
    known_hosts = tmp_path / "kh" / "known_hosts"
    [result] = _collect(farm, [_target(server)], tmp_path, known_hosts=known_hosts)
    assert result.error_kind == "host-key", _describe([result])
    assert "not in known_hosts" in result.error and "--accept-new-host-keys" in result.error
    assert not known_hosts.exists()

    [result] = _collect(farm, [_target(server)], tmp_path, known_hosts=known_hosts, accept_new_host_keys=True)
    assert result.ok, result.error
    assert known_hosts.read_text() == f"[127.0.0.1]:{server.port} {public_key(server.host_key)}\n"
    assert stat.S_IMODE(known_hosts.stat().st_mode) == 0o600

    # Recorded: the next run verifies against it without accept-new.
    [result] = _collect(farm, [_target(server)], tmp_path, known_hosts=known_hosts)
    assert result.ok, result.error


@needs_sshd
def test_changed_host_key_refused_even_with_accept_new(farm: SshdFarm, tmp_path: Path):
    server = farm.start("a")
    impostor = keygen(tmp_path / "old_host_key")
    known_hosts = tmp_path / "known_hosts_changed"
    known_hosts.write_text(f"[127.0.0.1]:{server.port} {public_key(impostor)}\n")
    before = known_hosts.read_text()
    [result] = _collect(farm, [_target(server)], tmp_path, known_hosts=known_hosts, accept_new_host_keys=True)
    assert result.error_kind == "host-key", _describe([result])
    assert "CHANGED" in result.error and f"ssh-keygen -R '[127.0.0.1]:{server.port}'" in result.error
    assert known_hosts.read_text() == before


@needs_sshd
def test_refused_port(farm: SshdFarm, tmp_path: Path):
    [result] = _collect(farm, [f"127.0.0.1:{free_port()}"], tmp_path)
    assert result.error_kind == "refused", _describe([result])


def test_silent_listener_times_out(tmp_path: Path):
    # The kernel completes the TCP handshake from the backlog; nobody ever sends an SSH banner.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        (tmp_path / "cfg").write_text("")
        [result] = collect([f"127.0.0.1:{port}"], out_dir=tmp_path / "out", connect_timeout=0.5,
                           ssh_config=tmp_path / "cfg", known_hosts=tmp_path / "kh", allow_agent=False)
    assert result.error_kind == "timeout", _describe([result])


@needs_sshd
def test_command_missing_and_missing_ip6tables_is_a_warning(farm: SshdFarm, tmp_path: Path):
    no_save = default_scripts("198.18.0.1")
    del no_save["iptables-save"]
    no_six = default_scripts("198.18.0.2")
    del no_six["ip6tables-save"]
    a = farm.start("a", scripts=no_save)
    b = farm.start("b", ip="198.18.0.2", scripts=no_six)
    ra, rb = _collect(farm, [_target(a), _target(b)], tmp_path)
    assert ra.error_kind == "command-missing", _describe([ra])
    assert "`iptables-save` not found" in ra.error
    assert rb.ok, rb.error
    meta = json.loads((tmp_path / "out" / rb.node / "meta.json").read_text())
    assert meta["files"] == ["iptables-save.txt", "routes.txt"]
    assert any("ip6tables-save" in e and "not found" in e for e in meta["errors"]), meta["errors"]
    assert rb.warnings == tuple(meta["errors"])


@needs_sshd
def test_sudo(farm: SshdFarm, tmp_path: Path):
    scripts = default_scripts("198.18.0.1")
    log = tmp_path / "sudo.log"
    scripts["sudo"] = f'#!/bin/sh\necho "$*" >> {log}\n[ "$1" = -n ] && shift\nexec "$@"\n'
    ok = farm.start("ok", scripts=scripts)
    password = farm.start("pw", scripts={**default_scripts("198.18.0.2"), "sudo": SUDO_PASSWORD})
    r_ok, r_pw = _collect(farm, [_target(ok), _target(password)], tmp_path, sudo=True)
    assert r_ok.ok, r_ok.error
    # Exactly the commands that need root go through sudo (reading which legacy tables exist included).
    assert sorted(log.read_text().splitlines()) == [
        "-n cat /proc/net/ip_tables_names", "-n conntrack -L -f ipv4", "-n conntrack -L -f ipv6",
        "-n ip6tables-save", "-n iptables-save", "-n nft list ruleset"]
    assert json.loads((tmp_path / "out" / r_ok.node / "meta.json").read_text())["sudo"] is True
    assert r_pw.error_kind == "sudo-password", _describe([r_pw])
    assert "needs a password" in r_pw.error


@needs_sshd
def test_permission_denied_suggests_sudo(farm: SshdFarm, tmp_path: Path):
    scripts = default_scripts("198.18.0.1")
    scripts["iptables-save"] = ("#!/bin/sh\necho 'iptables-save v1.8.9 (nf_tables): Could not fetch rule set "
                                "generation id: Permission denied (you must be root)' >&2\nexit 1\n")
    server = farm.start("a", scripts=scripts)
    [result] = _collect(farm, [_target(server)], tmp_path)
    assert result.error_kind == "permission", _describe([result])
    assert "try --sudo" in result.error


@needs_sshd
def test_hung_command_times_out_and_is_stopped(farm: SshdFarm, tmp_path: Path):
    scripts = default_scripts("198.18.0.1")
    pid_file = tmp_path / "hung.pid"
    # Blocks reading stdin for ever, like a command waiting for input that never comes.
    scripts["iptables-save"] = f"#!/bin/sh\necho $$ > {pid_file}\nexec cat\n"
    hung = farm.start("hung", scripts=scripts)
    fine = farm.start("fine", ip="198.18.0.2")
    r_hung, r_fine = _collect(farm, [_target(hung), _target(fine)], tmp_path, command_timeout=1)
    assert r_hung.error_kind == "timeout", _describe([r_hung])
    assert "`iptables-save` did not finish within 1s" in r_hung.error
    assert r_fine.ok, r_fine.error
    pid = int(pid_file.read_text())
    assert gone_within(pid, 10), "the hung command was left running on the node"


@needs_sshd
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_collect_stops_at_once_and_keeps_what_it_collected(farm: SshdFarm, tmp_path: Path,
                                                                          signum: int):
    """Ctrl-C (or a CI job's SIGTERM) while a node's command hangs: the command is stopped on the node, nodes
    not reached yet are not contacted, the nodes already collected stay on disk, one line says so, exit 130."""
    scripts = default_scripts("198.18.0.1")
    pid_file = tmp_path / "hung.pid"
    scripts["iptables-save"] = f"#!/bin/sh\necho $$ > {pid_file}\nexec cat\n"
    hung = farm.start("hung", scripts=scripts)
    fine = farm.start("fine", ip="198.18.0.2")
    later = farm.start("later", ip="198.18.0.3")
    out = tmp_path / "out"
    # One node at a time: `later` waits for the worker, which the hung node never gives back.
    argv = [sys.executable, "-c", "from iptrace.cli import main; main()", "collect", _target(fine), _target(hung),
            _target(later), "--out", str(out), "--parallel", "1", "--user", "root", "-i", str(farm.client_key),
            "--known-hosts", str(farm.known_hosts(tmp_path / "known_hosts")), "--ssh-config",
            str(_empty_config(tmp_path)), "--timeout", "60"]
    process = subprocess.Popen(argv, cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    try:
        deadline = time.monotonic() + 30
        while not (pid_file.exists() and (out / _name(fine) / "meta.json").exists()):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.02)
        started = time.monotonic()
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=20)
        waited = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, stderr
    assert stderr == (f"Error: interrupted; the commands running on the nodes were stopped; the nodes collected "
                      f"before are in {out}\n")
    assert waited < 10  # (the command itself would have run for the whole --timeout 60)
    assert (out / _name(fine) / "iptables-save.txt").read_text() == SAMPLE_DUMP % {"ip": "198.18.0.2"}
    assert not (out / _name(hung)).exists() and not (out / _name(later)).exists()
    assert b"Accepted publickey" not in later.log.read_bytes()
    pid = int(pid_file.read_text())
    assert gone_within(pid, 10), "the hung command was left running on the node"


@needs_sshd
def test_nft_failures_are_named_and_nothing_else_is_lost(farm: SshdFarm, tmp_path: Path):
    """An nft that fails, crashes or misreads newer rules is named per node; the iptables dumps, addresses and
    conntrack table of that node are still saved."""
    conntrack = ("#!/bin/sh\n[ \"$3\" = ipv4 ] || exit 0\n"
                 "for i in 1 2 3 4 5; do echo \"udp      17 29 src=198.18.0.$i dst=198.19.0.10 sport=1000 dport=53 "
                 "[UNREPLIED] src=198.19.0.10 dst=198.18.0.$i sport=53 dport=1000 mark=0 use=1\"; done\n"
                 "echo 'conntrack v1.4.7 (conntrack-tools): 5 flow entries have been shown.' >&2\n")
    nft_version = '#!/bin/sh\n[ "$1" = --version ] && echo "nftables v1.0.6 (Lester Gooch #5)" && exit 0\n'
    behaviours = {
        "failing": nft_version + "echo 'Error: Could not process rule: No such file or directory' >&2\nexit 1\n",
        "crashing": nft_version + "echo 'table ip kube-proxy {'\nkill -SEGV $$\n",
        "misreading": nft_version + ("echo 'table ip kube-proxy {'\necho '\tchain services {'\n"
                                     "echo '\t\t[invalid type] ip daddr vmap @service-ips'\necho '\t}'\necho '}'\n"
                                     "echo \"netlink: Error: unknown expression type 'foo'\" >&2\n"),
        "fine": nft_version + "cat <<'EOF'\n" + SAMPLE_NFT + "EOF\n",
    }
    servers = []
    for index, (name, script) in enumerate(behaviours.items()):
        scripts = {**default_scripts(f"198.18.0.{index + 1}"), "nft": script}
        if name != "fine":
            scripts["conntrack"] = conntrack
        servers.append(farm.start(name, ip=f"198.18.0.{index + 1}", scripts=scripts))
    results = _collect(farm, [_target(s) for s in servers], tmp_path, conntrack_max_entries=3)
    assert all(r.ok for r in results), _describe(results)
    failing, crashing, misreading, fine = results
    out = tmp_path / "out"
    for result in results:
        node_dir = out / result.node
        assert (node_dir / "iptables-save.txt").is_file() and (node_dir / "ip6tables-save.txt").is_file()
        assert store.read_node_dir(node_dir).addresses
    meta = {r.node: json.loads((out / r.node / "meta.json").read_text()) for r in results}

    assert "nft list ruleset: `nft list ruleset` failed (Error: Could not process rule" in failing.warnings[0]
    assert (meta[failing.node]["nft"]["status"], meta[failing.node]["nft"]["version"]) == ("failed", "1.0.6")
    assert not (out / failing.node / "nft-ruleset.txt").exists()
    assert meta[failing.node]["errors"] == list(failing.warnings)

    assert crashing.warnings[0].startswith("nft list ruleset: crashed (SIGSEGV")
    assert crashing.warnings[0].endswith("; nft-ruleset.txt not saved")
    assert meta[crashing.node]["nft"]["status"] == "failed"
    assert not (out / crashing.node / "nft-ruleset.txt").exists()

    # Exit status 0, but nft said it could not decode a rule: saved, and flagged.
    assert meta[misreading.node]["nft"]["status"] == "misread"
    assert "nft v1.0.6 could not read every rule (netlink: Error: unknown expression type 'foo')" in \
        misreading.warnings[0]
    assert "[invalid type]" in (out / misreading.node / "nft-ruleset.txt").read_text()

    assert fine.warnings == () and meta[fine.node]["nft"]["status"] == "ok"
    assert (out / fine.node / "nft-ruleset.txt").read_text() == SAMPLE_NFT
    # No conntrack on that node: a note, not a failure.
    assert fine.notes == ("no `conntrack` on the node: conntrack.txt not collected",)
    assert meta[fine.node]["conntrack"]["status"] == "missing"

    # The others' conntrack tables were cut at 3 entries (of 5), and say so.
    for result in (failing, crashing, misreading):
        lines = (out / result.node / "conntrack.txt").read_text().splitlines()
        assert [line.split()[3] for line in lines] == ["src=198.18.0.1", "src=198.18.0.2", "src=198.18.0.3"]
        assert meta[result.node]["conntrack"] == {"status": "ok", "entries": {"ipv4": 3, "ipv6": 0},
                                                  "capped": True, "max_entries": 3, "error": None}
        assert "conntrack.txt capped at 3 entries per family (--conntrack-max-entries)" in result.notes
        assert meta[result.node]["notes"] == list(result.notes)



@needs_sshd
def test_legacy_tables_are_collected_and_stale_files_removed(farm: SshdFarm, tmp_path: Path):
    server = farm.start("a", scripts=default_scripts("198.18.0.1", legacy=True))
    [result] = _collect(farm, [_target(server)], tmp_path)
    assert result.ok, result.error
    node_dir = tmp_path / "out" / result.node
    assert (node_dir / "iptables-legacy-save.txt").read_text() == SAMPLE_LEGACY_DUMP
    assert json.loads((node_dir / "meta.json").read_text())["files"] == [
        "ip6tables-save.txt", "iptables-legacy-save.txt", "iptables-save.txt", "routes.txt"]
    assert store.read_node_dir(node_dir).legacy_dump_text == SAMPLE_LEGACY_DUMP

    # The node was cleaned up: the legacy dump of the previous run must not linger beside the new one.
    for name, text in default_scripts("198.18.0.1").items():
        server.set_script(name, text)
    [result] = _collect(farm, [_target(server)], tmp_path)
    assert result.ok, result.error
    assert not (node_dir / "iptables-legacy-save.txt").exists()
    assert store.read_node_dir(node_dir).legacy_dump_text is None


@needs_sshd
def test_partial_success_and_rerun_replace_only_successful_nodes(farm: SshdFarm, tmp_path: Path):
    a = farm.start("a", ip="198.18.0.1")
    b = farm.start("b", ip="198.18.0.2")
    first = _collect(farm, [_target(a), _target(b)], tmp_path)
    assert all(r.ok for r in first), _describe(first)
    out = tmp_path / "out"
    b_before = {p.name: p.read_bytes() for p in (out / first[1].node).iterdir()}

    # Second run: a has new rules, b is broken (its iptables-save fails) — b's old files must survive intact.
    a.set_script("iptables-save", "#!/bin/sh\necho '*filter'\necho 'COMMIT'\n")
    b.set_script("iptables-save", "#!/bin/sh\necho 'iptables-save: broken' >&2\nexit 3\n")
    second = _collect(farm, [_target(a), _target(b)], tmp_path)
    assert second[0].ok and not second[1].ok, _describe(second)
    assert second[1].error_kind == "ssh" and "broken" in second[1].error
    assert (out / second[0].node / "iptables-save.txt").read_text() == "*filter\nCOMMIT\n"
    b_after = {p.name: p.read_bytes() for p in (out / first[1].node).iterdir()}
    # Every file intact; meta.json only gains what the failed attempt was (store.mark_failed).
    meta_before, meta_after = json.loads(b_before.pop("meta.json")), json.loads(b_after.pop("meta.json"))
    assert b_after == b_before
    assert meta_after.pop("failed_attempt")["error"] == "`iptables-save` failed (iptables-save: broken)"
    assert meta_after == meta_before

    # A node that cannot even be reached keeps its files too.
    farm.stop_all()
    third = _collect(farm, [_target(a)], tmp_path, known_hosts=tmp_path / "known_hosts")
    assert third[0].error_kind == "refused"
    assert (out / second[0].node / "iptables-save.txt").read_text() == "*filter\nCOMMIT\n"


@needs_sshd
def test_jump_host_via_ssh_config_and_argument(farm: SshdFarm, tmp_path: Path, client_key: Path):
    jump = farm.start("jump", extra_config="LogLevel DEBUG1\n", scripts={})
    target = farm.start("target", ip="198.18.0.7")
    known_hosts = farm.known_hosts(tmp_path / "known_hosts")
    config = tmp_path / "ssh_config_jump"
    config.write_text(
        "Host node-7\n"
        f"  HostName 127.0.0.1\n  Port {target.port}\n  User root\n  ProxyJump bastion\n"
        "Host bastion\n"
        f"  HostName 127.0.0.1\n  Port {jump.port}\n  User root\n"
        "Host *\n"
        f"  IdentityFile {client_key}\n  UserKnownHostsFile {known_hosts}\n")
    [result] = collect(["node-7"], out_dir=tmp_path / "out", ssh_config=config, allow_agent=False)
    assert result.ok, result.error
    meta = json.loads((tmp_path / "out" / "node-7" / "meta.json").read_text())
    assert (meta["node"], meta["host"], meta["port"], meta["user"]) == (
        "node-7", "127.0.0.1", target.port, "root")
    assert "198.18.0.7" in meta["addresses"]
    assert f"target 127.0.0.1 port {target.port}" in jump.log.read_text(), "not forwarded by the jump host"

    # The same through jump= (like `ssh -J`), with an empty ssh config.
    log_size = len(jump.log.read_text())
    [result] = _collect(farm, [_target(target)], tmp_path, jump=f"root@127.0.0.1:{jump.port}",
                        known_hosts=known_hosts, out_dir=tmp_path / "out2")
    assert result.ok, result.error
    assert f"target 127.0.0.1 port {target.port}" in jump.log.read_text()[log_size:]

    # A jump host that cannot reach the node says so.
    [result] = _collect(farm, [f"127.0.0.1:{free_port()}"], tmp_path, jump=f"root@127.0.0.1:{jump.port}",
                        known_hosts=known_hosts, out_dir=tmp_path / "out3")
    assert result.error_kind == "refused", _describe([result])
    assert "jump host root@127.0.0.1" in result.error


@needs_sshd
@pytest.mark.skipif(shutil.which("ssh") is None, reason="the OpenSSH client is not installed")
def test_proxy_command_from_ssh_config(farm: SshdFarm, tmp_path: Path, client_key: Path):
    """ProxyCommand runs the user's own command (here the real `ssh -W`) as the transport."""
    jump = farm.start("jump", scripts={})
    target = farm.start("target", ip="198.18.0.8")
    known_hosts = farm.known_hosts(tmp_path / "known_hosts")
    config = tmp_path / "ssh_config_proxy"
    config.write_text(
        "Host node-8\n"
        f"  HostName 127.0.0.1\n  Port {target.port}\n  User root\n  IdentityFile {client_key}\n"
        f"  UserKnownHostsFile {known_hosts}\n"
        f"  ProxyCommand ssh -F /dev/null -i {client_key} -o BatchMode=yes -o IdentitiesOnly=yes "
        f"-o UserKnownHostsFile={known_hosts} -p {jump.port} -W %h:%p root@127.0.0.1\n")
    [result] = collect(["node-8"], out_dir=tmp_path / "out", ssh_config=config, allow_agent=False)
    assert result.ok, result.error
    assert "198.18.0.8" in store.read_node_dir(tmp_path / "out" / "node-8").addresses


@needs_sshd
def test_ssh_config_alias_and_user_known_hosts(farm: SshdFarm, tmp_path: Path, client_key: Path):
    server = farm.start("a", ip="198.18.0.9")
    known_hosts = farm.known_hosts(tmp_path / "kh_from_config")
    config = tmp_path / "ssh_config_alias"
    config.write_text(f"Host web-*\n  HostName 127.0.0.1\n  Port {server.port}\n  User root\n"
                      f"  IdentityFile {client_key}\n  UserKnownHostsFile {known_hosts}\n")
    [result] = collect(["web-1"], out_dir=tmp_path / "out", ssh_config=config, allow_agent=False)
    assert result.ok, result.error
    assert store.read_node_dir(tmp_path / "out" / "web-1").addresses[2] == "198.18.0.9"


@needs_sshd
def test_secrets_never_appear(farm: SshdFarm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    passphrase = "correct horse battery staple 1729"
    locked = keygen(tmp_path / "locked_key", passphrase=passphrase)
    server = farm.start("a", authorized=(farm.client_key, locked))
    secrets = [farm.client_key.read_text(), locked.read_text(), passphrase]
    secrets += [line for s in secrets[:2] for line in s.splitlines() if "PRIVATE KEY" not in line]

    # Without the passphrase the encrypted key cannot be used: an auth error that gives no key material.
    [locked_result] = _collect(farm, [_target(server)], tmp_path, identity_files=[locked],
                               out_dir=tmp_path / "out_locked")
    assert locked_result.error_kind == "auth", _describe([locked_result])
    assert "ssh-agent" in locked_result.error

    # Through a real ssh-agent holding the encrypted key (unlocked by ssh-add through SSH_ASKPASS).
    agent_sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(agent_sock)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    farm.extra_processes.append(agent)
    deadline = time.monotonic() + 5
    while not agent_sock.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    askpass = tmp_path / "askpass"
    askpass.write_text(f"#!/bin/sh\necho '{passphrase}'\n")
    askpass.chmod(0o700)
    env = {**os.environ, "SSH_AUTH_SOCK": str(agent_sock), "SSH_ASKPASS": str(askpass),
           "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"}
    subprocess.run(["ssh-add", str(locked)], env=env, check=True, stdin=subprocess.DEVNULL,
                   capture_output=True)
    monkeypatch.setenv("SSH_AUTH_SOCK", str(agent_sock))
    [agent_result] = _collect(farm, [_target(server)], tmp_path, identity_files=(),
                              out_dir=tmp_path / "out_agent")
    assert agent_result.ok, agent_result.error

    [ok] = _collect(farm, [_target(server)], tmp_path, out_dir=tmp_path / "out_ok")
    assert ok.ok, ok.error
    wrong = keygen(tmp_path / "wrong_key")
    [auth] = _collect(farm, [_target(server)], tmp_path, identity_files=[wrong], allow_agent=False,
                      out_dir=tmp_path / "out_auth")
    assert auth.error_kind == "auth"
    results = (locked_result, agent_result, ok, auth)
    texts = [repr(r) for r in results] + [str(r.error) for r in results]
    for out in ("out_locked", "out_agent", "out_ok", "out_auth"):
        texts += [p.read_text() for p in (tmp_path / out).rglob("*") if p.is_file()]
    for text in texts:
        for secret in secrets:
            assert secret not in text


# ------------------------------------------------------------------------ real iptables-save in a netns

def _netns_available() -> bool:
    tools = ("ip", "iptables-restore")
    return os.geteuid() == 0 and all(shutil.which(tool) is not None for tool in tools)


@pytest.mark.root
@needs_sshd
@pytest.mark.skipif(not _netns_available(), reason="needs root, ip and iptables-restore")
def test_real_iptables_save_inside_a_node_namespace(farm: SshdFarm, tmp_path: Path):
    """sshd runs inside a `node` namespace holding real rules; the collector connects from a `client`
    namespace over a veth (198.18.0.0/24), and the node's own, real iptables-save answers."""
    base = f"ipt-{os.getpid()}-{time.monotonic_ns() % 100000}"
    node_ns, client_ns = f"{base}-node", f"{base}-cl"
    created: list[str] = []
    try:
        for ns in (node_ns, client_ns):
            if subprocess.run(["ip", "netns", "add", ns], capture_output=True).returncode != 0:
                pytest.skip("ip netns add failed (no network namespaces here)")
            created.append(ns)
        run = _runner()
        run("ip", "-n", node_ns, "link", "add", "veth-n", "type", "veth", "peer", "name", "veth-c",
            "netns", client_ns)
        run("ip", "-n", node_ns, "addr", "add", "198.18.0.1/24", "dev", "veth-n")
        run("ip", "-n", client_ns, "addr", "add", "198.18.0.2/24", "dev", "veth-c")
        for ns, dev in ((node_ns, "veth-n"), (client_ns, "veth-c")):
            run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "-n", ns, "link", "set", dev, "up")
        run("ip", "-n", node_ns, "route", "add", "198.18.128.0/17", "via", "198.18.0.2")
        rules = (SAMPLE_DUMP % {"ip": "198.18.0.1"}).replace("# node 198.18.0.1\n", "")
        subprocess.run(["ip", "netns", "exec", node_ns, "iptables-restore"], input=rules.encode(), check=True)
        subprocess.run(["ip", "netns", "exec", node_ns, "nft", "-f", "-"], input=SAMPLE_NFT.encode(), check=True)
        # One connection the node's conntrack table remembers (a UDP DNS query to a Service address).
        run("ip", "netns", "exec", node_ns, "conntrack", "-I", "-p", "udp", "-s", "198.18.0.2", "-d",
            "198.19.0.10", "--sport", "40000", "--dport", "53", "-t", "300")
        # The node's real commands: nothing stands in for them (empty bin dir, the system's PATH).
        server = farm.start("netns", scripts={}, netns=node_ns, listen="198.18.0.1",
                            path_tail="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        known_hosts = tmp_path / "known_hosts_ns"
        known_hosts.write_text(f"198.18.0.1 {public_key(server.host_key)}\n")
        (tmp_path / "cfg_ns").write_text("")
        script = (
            "import json, sys\n"
            "from pathlib import Path\n"
            "from iptrace.collect.ssh import collect\n"
            f"[x] = collect(['root@198.18.0.1'], out_dir=Path({str(tmp_path / 'out')!r}), "
            f"identity_files=[{str(farm.client_key)!r}], known_hosts=Path({str(known_hosts)!r}), "
            f"ssh_config=Path({str(tmp_path / 'cfg_ns')!r}), allow_agent=False, connect_timeout=5)\n"
            "print(json.dumps([x.ok, x.error_kind, x.error]))\n")
        repo = Path(__file__).resolve().parents[1]
        done = subprocess.run(["ip", "netns", "exec", client_ns, sys.executable, "-c", script], cwd=repo,
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(repo)})
        assert done.returncode == 0, done.stderr
        ok, kind, error = json.loads(done.stdout)
        assert ok, (kind, error)
        snapshot = store.read_node_dir(tmp_path / "out" / "198.18.0.1")
        assert "-A KUBE-SEP-SXIVWICOYRO3J4NJ -p tcp -m comment --comment \"ns1/svc1:p80\" -m tcp -j DNAT " \
               "--to-destination 198.18.128.1:80" in snapshot.dump_text
        assert snapshot.dump_text.startswith("# Generated by iptables-save v")
        assert "198.18.0.1" in snapshot.addresses and "127.0.0.1" in snapshot.addresses
        assert snapshot.meta["backend"] in ("nf_tables", "legacy")
        # The node's own nft listing, map elements included (never --terse), beside iptables-nft's tables.
        assert snapshot.nft_ruleset_text is not None and "table ip kube-proxy {" in snapshot.nft_ruleset_text
        assert "elements = { 198.19.0.10 . tcp . 80 : goto service-XPGD46QR-ns1/svc1/tcp/p80 }" in \
            snapshot.nft_ruleset_text
        assert snapshot.meta["nft"]["status"] == "ok" and snapshot.meta["nft"]["version"]
        assert snapshot.nft_ruleset_path == tmp_path / "out" / "198.18.0.1" / "nft-ruleset.txt"
        # Its conntrack table: the entry made above, as `conntrack -L` prints it.
        assert snapshot.conntrack_text is not None
        entries = [line for line in snapshot.conntrack_text.splitlines() if "sport=40000 dport=53" in line]
        assert any(e.startswith("udp ") and "src=198.18.0.2 dst=198.19.0.10 sport=40000 dport=53" in e
                   for e in entries), snapshot.conntrack_text
        assert snapshot.meta["conntrack"]["entries"]["ipv4"] >= 1 and not snapshot.meta["conntrack"]["capped"]
        assert snapshot.meta["files"] == ["conntrack.txt", "ip6tables-save.txt", "iptables-save.txt",
                                          "nft-ruleset.txt", "routes.txt"]
        # Its routes: the namespace's own (no default route there, unlike the host's).
        routes = parse_routes((tmp_path / "out" / "198.18.0.1" / "routes.txt").read_text())
        assert routes.v4 is not None
        assert [routes.v4.device(int(ip_address(ip))) for ip in ("198.18.128.9", "198.18.0.2", "10.0.0.1")] == [
            "veth-n", "veth-n", None]
        assert snapshot.meta["errors"] == [] and snapshot.meta["via"] == "ssh"
    finally:
        farm.stop_all()
        for ns in created:
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)


def _runner():
    def run(*argv: str) -> None:
        subprocess.run(argv, check=True, capture_output=True)
    return run


@pytest.mark.root
@needs_sshd
def test_a_node_without_iptables_is_collected_from_its_nft_ruleset(farm: SshdFarm, tmp_path: Path):
    """A node in nftables mode need not have iptables installed: collect failed it ('`iptables-save` not found on
    the node'), losing its nft ruleset. Its `nft list ruleset` is its rules now (store reads it as the dump), the
    missing iptables commands are one note, and audit analyses the node."""
    nft = ('#!/bin/sh\n[ "$1" = --version ] && echo "nftables v1.0.6 (Lester Gooch #5)" && exit 0\n'
           "cat <<'EOF'\n" + SAMPLE_NFT + "EOF\n")
    scripts = {name: text for name, text in default_scripts("198.18.0.1").items()
               if name not in ("iptables-save", "ip6tables-save", "iptables")}
    server = farm.start("nftonly", scripts={**scripts, "nft": nft})  # (PATH /usr/bin:/bin: no iptables there)
    [result] = _collect(farm, [_target(server)], tmp_path)
    assert result.ok, _describe([result])
    node_dir = tmp_path / "out" / result.node
    assert sorted(p.name for p in node_dir.iterdir()) == ["meta.json", "nft-ruleset.txt", "routes.txt"]
    assert result.warnings == ()
    assert result.notes[0] == "no `iptables-save` on the node: the node's rules are its `nft list ruleset` " \
                              "(nft-ruleset.txt)"
    snapshot = store.read_node_dir(node_dir)
    assert snapshot.dump_path == node_dir / "nft-ruleset.txt" and snapshot.addresses
    from click.testing import CliRunner

    from iptrace.cli import main
    audit = CliRunner().invoke(main, ["audit", str(tmp_path / "out"), "-o", "json"])
    [row] = json.loads(audit.stdout)["nodes"]
    assert (row["status"], row["mode"], row["services"]) == ("ok", "nftables", 1), audit.output


def test_free_ports_of_two_xdist_workers_never_meet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each pytest-xdist worker's sshd ports come from a range of its own (bind(0) may hand two workers one port
    between the check and sshd's bind); outside xdist the kernel picks one."""
    ports = {}
    for worker in ("gw0", "gw1"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        ports[worker] = {free_port() for _ in range(50)}
    assert all(12_000 <= p < 14_000 for p in ports["gw0"]) and all(14_000 <= p < 16_000 for p in ports["gw1"])
    monkeypatch.delenv("PYTEST_XDIST_WORKER")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port()))  # (free now)
