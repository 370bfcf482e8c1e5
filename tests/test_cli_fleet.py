"""The fleet commands end to end through the CLI, against real OpenSSH servers: collect (with one node
failing), then audit, diff and explain on the collection. Nodes print rules synthesized by bench.synth."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench import synth
from iptrace.cli import main
from tests.sshd import SshdFarm, default_scripts, free_port, have_sshd, keygen
from tests.terminal import ROOT, on_a_terminal

pytestmark = pytest.mark.skipif(not have_sshd(), reason="OpenSSH server (/usr/sbin/sshd) is not installed")


def _dump(node_ip: str, endpoints: list[str]) -> str:
    svc = synth.ServiceSpec("default", "web", "10.96.7.7", [synth.PortSpec("http", 80, "TCP", 30080, 8080)],
                            type="NodePort", endpoints=[synth.EndpointSpec(ip, 8080) for ip in endpoints])
    return synth.render([svc], node_ips=[node_ip], pod_cidr="10.244.0.0/16")


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    key = keygen(tmp_path / "client_key")
    farm = SshdFarm(tmp_path, key)
    try:
        nodes = {}
        # node-b's kube-proxy is stale: it still DNATs to an endpoint the others dropped.
        for name, ip, eps in (("node-a", "198.18.0.11", ["10.244.1.5", "10.244.2.6"]),
                              ("node-b", "198.18.0.12", ["10.244.1.5", "10.244.2.6", "10.244.3.9"]),
                              ("node-c", "198.18.0.13", ["10.244.1.5", "10.244.2.6"])):
            scripts = default_scripts(ip)
            scripts["iptables-save"] = "#!/bin/sh\ncat <<'EOF'\n" + _dump(ip, eps) + "EOF\n"
            nodes[name] = farm.start(name, ip=ip, scripts=scripts)
        known_hosts = farm.known_hosts(tmp_path / "known_hosts")
        config = tmp_path / "ssh_config"
        config.write_text("".join(f"Host {name}\n  HostName 127.0.0.1\n  Port {s.port}\n  User root\n"
                                  for name, s in nodes.items()))
        yield {"farm": farm, "key": key, "known_hosts": known_hosts, "config": config, "tmp": tmp_path}
    finally:
        farm.stop_all()


def _ssh_args(f) -> list[str]:
    return ["-i", str(f["key"]), "--known-hosts", str(f["known_hosts"]), "--ssh-config", str(f["config"]),
            "--timeout", "5"]


def test_collect_audit_diff_explain(fleet) -> None:
    out = fleet["tmp"] / "snap"
    dead = f"root@127.0.0.1:{free_port()}"
    runner = CliRunner()
    result = runner.invoke(main, ["collect", "node-a", "node-b", "node-c", dead, "--out", str(out),
                                  *_ssh_args(fleet)])
    assert result.exit_code == 1, result.output
    assert "3 of 4 nodes collected" in result.output
    assert "refused" in result.output
    assert f"Error: 127.0.0.1:{dead.rsplit(':', 1)[1]}" in result.output  # the failure is named on stderr
    for name in ("node-a", "node-b", "node-c"):
        dump = out / name / "iptables-save.txt"
        assert dump.is_file()
        assert stat.S_IMODE(dump.stat().st_mode) == 0o600
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o700

    audit = runner.invoke(main, ["audit", str(out), "-o", "json"])
    report = json.loads(audit.output)
    ids = {(f["node"], f["id"]) for f in report["findings"]}
    # node-b, and only node-b, is told its endpoints disagree with the majority of the fleet
    assert {node for node, _ in ids} == {"node-b"}, report["findings"]
    assert ("node-b", "endpoints-differ") in ids or ("node-b", "kube-proxy-stale") in ids
    assert "10.244.3.9" in json.dumps(report["findings"])
    assert audit.exit_code == (3 if any(f["severity"] == "error" for f in report["findings"]) else 0)

    d = runner.invoke(main, ["diff", str(out / "node-a"), str(out / "node-b"), "-o", "json"])
    assert d.exit_code == 0, d.output
    assert "10.244.3.9" in d.output

    # A collected node directory brings its own addresses: the nodePort on node-a's address is recognised.
    e = runner.invoke(main, ["explain", str(out / "node-a"), "--dst", "198.18.0.11:80", "--src", "external",
                             "-o", "json"])
    assert e.exit_code == 3, e.output
    assert json.loads(e.output)["diagnoses"][0]["id"] == "service-port-on-node-ip"
    ok = runner.invoke(main, ["trace", str(out / "node-a"), "--dst", "198.18.0.11:30080", "-o", "json"])
    assert ok.exit_code == 0, ok.output
    assert {o["destination"] for o in json.loads(ok.output)["outcomes"]} == {"10.244.1.5:8080", "10.244.2.6:8080"}


def test_audit_reports_a_node_it_could_not_collect(fleet) -> None:
    """`audit NODE…` with one node unreachable: that node is in the report as a load-error naming why (it said "no
    findings — every node forwards every Service the same way" and `"ok": true`, the node only on stderr), and
    the reachable nodes are audited as without it. Exit 1: the audit is incomplete (it wins over 3)."""
    dead = f"127.0.0.1:{free_port()}"
    runner = CliRunner()
    result = runner.invoke(main, ["audit", "node-a", dead, "node-c", "-o", "json", *_ssh_args(fleet)])
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert [(n["name"], n["status"]) for n in report["nodes"]] == [  # (in the order given)
        ("node-a", "ok"), (dead, "load-error"), ("node-c", "ok")]
    lost = report["nodes"][1]["error"]
    assert lost.startswith("could not be collected: connection to ") and "refused" in lost, lost
    assert [(f["id"], f["severity"], f["node"], f["detail"]) for f in report["findings"]] == [
        ("load-error", "error", dead, lost)]
    assert f"Error: {dead}: connection to " in result.stderr
    text = runner.invoke(main, ["audit", "node-a", "node-c", dead, *_ssh_args(fleet)])
    assert text.exit_code == 1
    assert text.stdout.startswith("Audit of 3 nodes: 1 error,"), text.stdout
    assert "no findings" not in text.stdout


def test_rerun_keeps_the_old_files_of_a_node_that_now_fails(fleet) -> None:
    out = fleet["tmp"] / "snap"
    runner = CliRunner()
    first = runner.invoke(main, ["collect", "node-a", "--out", str(out), *_ssh_args(fleet)])
    assert first.exit_code == 0, first.output
    before = (out / "node-a" / "iptables-save.txt").read_text()
    fleet["farm"].servers[0].set_script("iptables-save", None)  # the command disappears on the node
    second = runner.invoke(main, ["collect", "node-a", "--out", str(out), *_ssh_args(fleet)])
    assert second.exit_code == 1
    assert "command-missing" in second.output
    assert (out / "node-a" / "iptables-save.txt").read_text() == before


def test_collect_nodes_from_the_cluster(fleet) -> None:
    """`collect --kubeconfig -l SEL`: the nodes' InternalIPs come from the API (the unmodified client over real
    HTTP); the node directory is named after the Node. Only loopback addresses are ever contacted."""
    from tests.apiserver import ApiServer, Grant, write_kubeconfig

    def node(name: str, ip: str, role: str) -> dict:
        return {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "role": role}},
                "status": {"addresses": [{"type": "InternalIP", "address": ip},
                                         {"type": "Hostname", "address": name}]}}

    objects = {"Service": [], "EndpointSlice": [],
               "Node": [node("worker-1", "127.0.0.1", "worker"), node("cp-1", "127.0.0.2", "control-plane")]}
    port = fleet["farm"].servers[0].port
    with ApiServer(objects=objects, tokens={"t": Grant("admin")}) as api:
        kubeconfig = write_kubeconfig(fleet["tmp"] / "kubeconfig", api.url, {"admin": "t"})
        out = fleet["tmp"] / "from-cluster"
        args = ["-i", str(fleet["key"]), "--accept-new-host-keys", "--known-hosts", str(fleet["tmp"] / "kh"),
                "--ssh-config", str(fleet["tmp"] / "empty_config"), "--user", "root", "--port", str(port)]
        (fleet["tmp"] / "empty_config").write_text("")
        result = CliRunner().invoke(main, ["collect", "--kubeconfig", str(kubeconfig), "-l", "role=worker",
                                           "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    assert "1 of 1 node collected" in result.output
    assert (out / "worker-1" / "iptables-save.txt").is_file()
    assert not (out / "cp-1").exists()


def test_audit_with_lenient_says_what_each_node_was_read_past(tmp_path: Path) -> None:
    """A truncated node dump under --lenient: audited with the others, and a note on stderr names the node, the
    problem's line and why (its findings leave out what the problem covers); a whole node says nothing."""
    whole = (Path(__file__).parent.parent / "sample_dumps" / "nodeport-fb-backends.txt").read_text()
    cut = tmp_path / "cut.txt"
    cut.write_text(whole[:whole.index("COMMIT", whole.index("*nat"))])  # the nat table's COMMIT and what follows
    good = tmp_path / "good.txt"
    good.write_text(whole)
    strict = CliRunner().invoke(main, ["audit", str(cut), str(good), "-o", "json"])
    assert json.loads(strict.stdout)["nodes"][0]["status"] == "load-error"
    result = CliRunner().invoke(main, ["audit", "--lenient", str(cut), str(good), "-o", "json"])
    nodes = json.loads(result.stdout)["nodes"]
    assert [n["status"] for n in nodes] == ["ok", "ok"]
    end, nat = cut.read_text().count("\n") + 1, whole[:whole.index("*nat")].count("\n") + 1
    assert result.stderr.splitlines() == [
        f"note: cut: {cut} read with --lenient past 1 problem (first: line {end}: table nat opened at line {nat} "
        "has no COMMIT (the dump looks truncated); expected 'COMMIT' at its end)"]


def test_audit_with_lenient_of_a_dump_cut_before_kube_proxys_rules_says_so(tmp_path: Path) -> None:
    """A dump cut before KUBE-SERVICES, read with --lenient: no-kube-proxy-rules says its rules may be in what
    could not be read; the report (-o json/html, kept where stderr is not) said only 'kube-proxy is not running in
    iptables mode on this node'."""
    whole = (Path(__file__).parent.parent / "sample_dumps" / "nodeport-fb-backends.txt").read_text()
    cut = tmp_path / "cut.txt"
    cut.write_text(whole[:whole.index(":KUBE-SERVICES")])
    good = tmp_path / "good.txt"
    good.write_text(whole)
    result = CliRunner().invoke(main, ["audit", "--lenient", str(cut), str(good), "-o", "json"])
    (finding,) = [f for f in json.loads(result.stdout)["findings"] if f["node"] == "cut"]
    assert finding["id"] == "no-kube-proxy-rules", finding
    assert "--lenient" in finding["detail"] and "could not be read" in finding["detail"], finding["detail"]


def test_two_inputs_of_one_name_are_named_with_their_paths(tmp_path: Path) -> None:
    """Dumps saved under one file name in two directories (or two node directories whose meta.json name one node)
    cannot both be audited under that name: the usage error says which inputs, so that the user knows what to
    rename."""
    text = (Path(__file__).resolve().parent.parent / "sample_dumps" / "nodeport-fb-backends.txt").read_text()
    paths = []
    for node in ("node-1", "node-2"):
        (tmp_path / node).mkdir()
        (tmp_path / node / "rules.txt").write_text(text)
        paths.append(str(tmp_path / node / "rules.txt"))
    result = CliRunner().invoke(main, ["audit", *paths])
    assert result.exit_code == 2
    assert f"two inputs are both called 'rules' ({paths[0]}, {paths[1]}); rename one of them" in result.stderr


@pytest.mark.parametrize("via", ["ssh", "api"])
@pytest.mark.parametrize("timeout", ["nan", "inf", "-1"])
def test_a_timeout_that_is_no_number_of_seconds_is_one_error_before_any_node(tmp_path: Path, via: str,
                                                                            timeout: str) -> None:
    """`--timeout nan` passed the check (nan <= 0 is false) and failed every node with paramiko's 'Invalid value
    NaN'; `--timeout inf` was an internal error (OverflowError). Both are refused once, before any node."""
    out = tmp_path / "out"
    args = ["collect", "--via", via, "--out", str(out), "--timeout", timeout]
    args += ["--kubeconfig", str(tmp_path / "no-kubeconfig")] if via == "api" else [f"127.0.0.1:{free_port()}"]
    result = CliRunner().invoke(main, args)
    assert (result.exit_code, result.stdout) == (1, ""), result.output
    assert result.stderr == "Error: timeouts must be positive numbers of seconds\n"
    assert not out.exists()


def test_an_inventory_without_nodes_is_named(tmp_path: Path) -> None:
    """An inventory of comments only (an Ansible file whose hosts are all in :vars/:children sections): the usage
    error said to give an --inventory FILE, which was given."""
    inventory = tmp_path / "nodes.ini"
    inventory.write_text("# none yet\n[workers:vars]\nansible_user=admin\n")
    result = CliRunner().invoke(main, ["collect", "--inventory", str(inventory), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.stderr.endswith(f"Error: no nodes: {inventory} lists none (one [user@]host[:port] a line, "
                                  "# comments)\n")
    assert not (tmp_path / "out").exists()


def test_collect_shows_progress_on_a_terminal_never_on_a_pipe(fleet) -> None:
    """With stderr on a terminal, a progress line names each node as it is collected (and leaves nothing behind
    on stdout, which stays the plain table); with stderr on a pipe there is no progress and no terminal code."""
    out = fleet["tmp"] / "snap"
    args = ["collect", "node-a", "node-b", "node-c", "--out", str(out), *_ssh_args(fleet)]
    code, stdout, shown = on_a_terminal(args, timeout=60)
    assert code == 0, shown
    assert "collected node-" in shown and "\x1b[" in shown, shown
    assert stdout.decode().endswith("3 of 3 nodes collected\n") and b"\x1b" not in stdout
    piped = subprocess.run([sys.executable, "-m", "iptrace", *args], capture_output=True, cwd=ROOT)
    assert (piped.returncode, piped.stderr) == (0, b""), piped.stderr
    assert b"\x1b" not in piped.stdout
