"""The kernel shows the bug and the fix: conntrack entries that the rules no longer decide.

A Service with endpoints A and B in the oracle's namespaces (client ↔ node ↔ pods, 198.18.0.0/15 only). A
client flow lands on A; the rules are replaced without A, exactly as kube-proxy writes them once A's pod is
gone (bench.synth renders the Service with B only; iptables-restore loads it) and conntrack is NOT flushed;
the kernel keeps sending the client's packets to A. `iptrace explain` on the node's iptables-save and its
conntrack table (listed inside the node namespace) names A; the `conntrack -D` commands of its fix, run inside
the node namespace, delete exactly the stale entries (every other entry is still there, compared entry by
entry through /proc) and the next packet reaches B. For UDP (IPv4 and IPv6), TCP (an established connection),
and the reverse UDP case (a flow that was never DNATed, then the Service's rules appear).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bench.synth import EndpointSpec, PortSpec, ServiceSpec, render
from iptrace.cli import main
from tests.oracle import CLIENT_IP, NODE_IP, Topology, requires_root_netns
from tests.oracle.netns import CLIENT_IP6, NODE_IP6, ConntrackEntry, run_in_netns, socket_in

_NO_CONNTRACK = None if shutil.which("conntrack") else "conntrack (conntrack-tools) is not installed"
if _NO_CONNTRACK and os.environ.get("IPTRACE_ORACLE_REQUIRED") == "1":
    raise RuntimeError(f"IPTRACE_ORACLE_REQUIRED=1 but {_NO_CONNTRACK}")
pytestmark = [pytest.mark.root, requires_root_netns("nft"),
              pytest.mark.skipif(_NO_CONNTRACK is not None, reason=_NO_CONNTRACK or "")]

POD_CIDR = "198.18.128.0/17"
POD_CIDR6 = "fd00:198:18:8000::/64"
A, B, C = "198.18.128.10", "198.18.128.11", "198.18.128.12"
A6, B6 = "fd00:198:18:8000::10", "fd00:198:18:8000::11"
DNS = "198.19.0.53"  # kube-system/dns:dns, UDP 53 -> 5353
DNS6 = "fd00:198:19::53"
STATSD = "198.19.0.54"  # monitoring/statsd, UDP 8125 -> 5353 on C, then on A as well
WEB = "198.19.0.80"  # default/web:http, TCP 80 -> 8080


def udp_dump(endpoints: list[str] | None, *, ipv6: bool = False) -> str:
    """kube-proxy's rules for the DNS Service with these endpoints (None: kube-proxy has not written the Service
    yet); IPv4 also has a statsd Service whose endpoints are C and A."""
    services = []
    if endpoints is not None:
        services.append(ServiceSpec("kube-system", "dns", DNS6 if ipv6 else DNS,
                                    [PortSpec("dns", 53, protocol="UDP", target_port=5353)],
                                    endpoints=[EndpointSpec(ip, 5353) for ip in endpoints]))
    if not ipv6:
        services.append(ServiceSpec("monitoring", "statsd", STATSD, [PortSpec("", 8125, protocol="UDP",
                                                                              target_port=5353)],
                                    endpoints=[EndpointSpec(C, 5353), EndpointSpec(A, 5353)]))
    return render(services, node_ips=[NODE_IP6 if ipv6 else NODE_IP], pod_cidr=POD_CIDR6 if ipv6 else POD_CIDR,
                  ipv6=ipv6)


def tcp_dump(endpoints: list[str]) -> str:
    return render([ServiceSpec("default", "web", WEB, [PortSpec("http", 80, target_port=8080)],
                               endpoints=[EndpointSpec(ip, 8080) for ip in endpoints])],
                  node_ips=[NODE_IP], pod_cidr=POD_CIDR)


# ------------------------------------------------------------------------------------------------ helpers


@pytest.fixture
def topo(request: pytest.FixtureRequest) -> Iterator[Topology]:
    ipv6 = getattr(request, "param", False)
    with Topology("nft", ipv6=ipv6) as topology:
        topology.add_pod_ip(*((A6, B6) if ipv6 else (A, B, C)))
        yield topology


def in_node(topo: Topology, command: str) -> str:
    """A command inside the node namespace, stdout and stderr together (as `2>&1` would keep them)."""
    done = subprocess.run(["ip", "netns", "exec", topo.node, *shlex.split(command)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=30, check=False)
    assert done.returncode == 0, (command, done.stdout)
    return done.stdout


def udp_client(topo: Topology, dst: str, port: int, sport: int, *, v6: bool = False) -> socket.socket:
    """A UDP socket in `client` with a fixed source port, connected to dst:port (one conntrack flow)."""
    s = socket_in(topo.client, socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((CLIENT_IP6 if v6 else CLIENT_IP, sport))
    s.connect((dst, port))
    s.settimeout(1.0)
    return s


def ask(s: socket.socket) -> str | None:
    """One datagram (or line) out and the answering endpoint's address back; None when nothing answers."""
    try:
        s.send(b"who\n")
        data = s.recv(4096).decode()
    except TimeoutError:
        return None
    if data.startswith("{"):  # the oracle's echo server: {"local": [ip, port], "peer": …}
        return str(json.loads(data)["local"][0])
    return data.strip()


def landing(topo: Topology, dst: str, port: int, endpoint: str, first_port: int, *, v6: bool = False
            ) -> socket.socket:
    """A client flow that the kernel sent to `endpoint` (each try is a new flow, so kube-proxy's random split
    is drawn again: 40 tries miss a 50% endpoint with probability 1e-12)."""
    for sport in range(first_port, first_port + 40):
        s = udp_client(topo, dst, port, sport, v6=v6)
        if ask(s) == endpoint:
            return s
        s.close()
    raise AssertionError(f"no flow to {dst}:{port} landed on {endpoint}")


def flows(topo: Topology) -> set[ConntrackEntry]:
    """The node's conntrack table, read by the oracle itself (/proc), independently of iptrace's reader."""
    return set(topo.conntrack())


def explain(tmp_path: Path, topo: Topology, table: str, dst: str, port: int, proto: str, *, ipv6: bool = False,
            src: str | None = None) -> tuple[int, dict[str, Any]]:
    dump = tmp_path / "iptables-save.txt"
    dump.write_text(topo.save(ipv6=ipv6))
    conntrack = tmp_path / "conntrack.txt"
    conntrack.write_text(table)
    args = ["explain", str(dump), "--dst", f"[{dst}]:{port}" if ipv6 else f"{dst}:{port}", "--proto", proto,
            "--node-ip", NODE_IP6 if ipv6 else NODE_IP, "--conntrack", str(conntrack), "-o", "json"]
    result = CliRunner().invoke(main, args + (["--src", src] if src else []))
    assert result.exit_code in (0, 3), result.output
    return result.exit_code, json.loads(result.stdout)


def the(report: dict[str, Any], diagnosis_id: str) -> dict[str, Any]:
    found = [d for d in report["diagnoses"] if d["id"] == diagnosis_id]
    assert len(found) == 1, [(d["id"], d["summary"]) for d in report["diagnoses"]]
    return found[0]


def run_fix(topo: Topology, diagnosis: dict[str, Any]) -> int:
    """Run every `conntrack -D` of the fix inside the node namespace; how many entries they deleted."""
    commands = [line for line in diagnosis["fix"].splitlines() if line.startswith("conntrack -D ")]
    assert commands, diagnosis["fix"]
    deleted = 0
    for command in commands:
        out = in_node(topo, command)
        deleted += int(out.split("): ", 1)[1].split()[0])  # "…: 1 flow entries have been deleted."
    return deleted


def stale_keys(entries: set[ConntrackEntry], dst: str, sport: int) -> set[ConntrackEntry]:
    return {e for e in entries if e.dst == dst and e.sport == sport}


# ------------------------------------------------------------------------------------------------ UDP


@pytest.mark.parametrize("topo", [False, True], ids=["ipv4", "ipv6"], indirect=True)
def test_udp_flow_keeps_going_to_a_removed_endpoint_until_its_entry_is_deleted(topo: Topology,
                                                                               tmp_path: Path) -> None:
    v6 = topo.ipv6
    a, b, dns = (A6, B6, DNS6) if v6 else (A, B, DNS)
    topo.start_server(udp_ports=[5353])
    topo.load(udp_dump([a, b], ipv6=v6), ipv6=v6)
    stale = landing(topo, dns, 53, a, 41000, v6=v6)
    healthy = landing(topo, dns, 53, b, 41100, v6=v6)
    direct = udp_client(topo, a, 5353, 41200, v6=v6)  # to A itself, not through the Service
    assert ask(direct) == a
    if not v6:
        statsd = landing(topo, STATSD, 8125, a, 41300)  # another Service that still has A
    stale_port = stale.getsockname()[1]

    # A's pod is gone: kube-proxy rewrites the Service with B only, and does not delete the entry.
    topo.load(udp_dump([b], ipv6=v6), ipv6=v6, flush_conntrack=False)
    assert ask(stale) == a, "the kernel follows the entry, not the rules"
    assert ask(healthy) == b

    # IPv4: `conntrack -L` with its closing line; IPv6: /proc/net/nf_conntrack (fully expanded addresses).
    listing = in_node(topo, "cat /proc/net/nf_conntrack" if v6 else "conntrack -L")
    before = flows(topo)
    # Every flow the kernel still sends to A through the Service: ours, and those of earlier tries that landed
    # on A while `landing` looked for B (their sockets are closed, their entries live on for 30 s).
    expected_gone = {e for e in before if e.dst == dns and e.dport == 53 and e.reply_src == a}
    assert stale_keys(before, dns, stale_port) <= expected_gone
    code, report = explain(tmp_path, topo, listing, dns, 53, "udp", ipv6=v6)
    assert code == 3
    d = the(report, "stale-conntrack")
    old = f"[{a}]:5353" if v6 else f"{a}:5353"
    n = len(expected_gone)
    assert d["severity"] == "error" and d["summary"].startswith(f"{n} UDP conntrack entr"), d["summary"]
    assert f"still {'goes' if n == 1 else 'go'} to {old}, an endpoint the rules no longer choose" in d["summary"]
    conntrack_evidence = [e for e in d["evidence"] if e.get("source")]
    assert len(conntrack_evidence) == n and any(f"sport={stale_port} " in e["rule"] for e in conntrack_evidence)
    for e in conntrack_evidence:
        assert listing.splitlines()[e["line"] - 1] == e["rule"]
    assert "CleanStaleEntries" in d["detail"] and "pkg/proxy/conntrack/cleanup.go" in d["detail"]

    assert run_fix(topo, d) == n
    after = flows(topo)
    assert before - after == expected_gone, "the fix deleted other entries too"
    assert ask(stale) == b, "after the fix the next packet is DNATed by the current rules"
    assert ask(healthy) == b and ask(direct) == a
    if not v6:
        assert ask(statsd) == a


def test_udp_flow_created_before_the_service_rules_never_reaches_an_endpoint(topo: Topology,
                                                                            tmp_path: Path) -> None:
    topo.start_server(udp_ports=[5353])
    # A Service without endpoints is REJECTed: the kernel never confirms a rejected flow, so no entry is left.
    topo.load(udp_dump([]))
    client = udp_client(topo, DNS, 53, 42000)
    with pytest.raises(ConnectionRefusedError):
        client.send(b"who\n")
        client.recv(4096)
    assert stale_keys(flows(topo), DNS, 42000) == set()
    # Before kube-proxy writes the Service's rules (node reboot, kube-proxy restart): the flow goes out untouched.
    topo.load(udp_dump(None))
    client = udp_client(topo, DNS, 53, 42001)
    assert ask(client) is None
    # The endpoints appear; the entry still sends the client's packets to the Service address itself.
    topo.load(udp_dump([A, B]), flush_conntrack=False)
    assert ask(client) is None, "the untranslated entry keeps the flow away from the endpoints"
    fresh = udp_client(topo, DNS, 53, 42002)
    assert ask(fresh) in (A, B)

    listing = in_node(topo, "conntrack -L -o extended")
    code, report = explain(tmp_path, topo, listing, DNS, 53, "udp")
    assert code == 3
    d = the(report, "stale-conntrack-no-dnat")
    assert "never DNATed" in d["summary"] and "kubernetes/kubernetes#48370" in d["detail"]
    assert f"{A}:5353" in d["detail"] and f"{B}:5353" in d["detail"]
    assert [e["line"] for e in d["evidence"] if e.get("source")] == [
        i for i, line in enumerate(listing.splitlines(), 1) if "sport=42001 " in line]
    assert not [x for x in report["diagnoses"] if x["id"] == "stale-conntrack"]  # the fresh flow is fine

    before = flows(topo)
    expected_gone = stale_keys(before, DNS, 42001)
    assert len(expected_gone) == 1 and next(iter(expected_gone)).reply_src == DNS
    assert run_fix(topo, d) == 1
    assert before - flows(topo) == expected_gone
    assert ask(client) in (A, B), "after the fix the next packet is DNATed to an endpoint"
    assert ask(fresh) in (A, B)


# ------------------------------------------------------------------------------------------------ TCP


class _Servers:
    """TCP servers on A and B inside `pods` that keep each connection open and answer every message with the
    address it reached (the oracle's echo server closes after one answer)."""

    def __init__(self, topo: Topology, ips: list[str], port: int) -> None:
        self.listeners = []
        for ip in ips:
            listener = socket_in(topo.pods, socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((ip, port))
            listener.listen()
            self.listeners.append(listener)
            threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    @staticmethod
    def _talk(conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    if not conn.recv(4096):
                        return
                    conn.sendall(f"{conn.getsockname()[0]}\n".encode())
                except OSError:
                    return

    def close(self) -> None:
        for listener in self.listeners:
            listener.close()


def tcp_landing(topo: Topology, endpoint: str, first_port: int) -> socket.socket:
    for sport in range(first_port, first_port + 40):
        s = socket_in(topo.client, socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(2.0)
        s.bind((CLIENT_IP, sport))
        s.connect((WEB, 80))
        if ask(s) == endpoint:
            return s
        s.close()
    raise AssertionError(f"no connection landed on {endpoint}")


def test_established_tcp_connection_stays_on_a_removed_endpoint_until_its_entry_is_deleted(
        topo: Topology, tmp_path: Path) -> None:
    servers = _Servers(topo, [A, B], 8080)
    try:
        topo.load(tcp_dump([A, B]))
        stale = tcp_landing(topo, A, 43000)
        healthy = tcp_landing(topo, B, 43100)
        stale_port = stale.getsockname()[1]
        topo.load(tcp_dump([B]), flush_conntrack=False)
        assert ask(stale) == A, "an established connection keeps its endpoint"
        assert ask(healthy) == B

        listing = in_node(topo, "conntrack -L -o extended")
        code, report = explain(tmp_path, topo, listing, WEB, 80, "tcp", src=CLIENT_IP)
        assert code == 3
        d = the(report, "stale-conntrack")
        assert f"still goes to {A}:8080" in d["summary"] and "kubernetes/kubernetes#102631" in d["detail"]
        assert f"--orig-src {CLIENT_IP}" in d["fix"]  # the question named the client

        before = flows(topo)
        expected_gone = stale_keys(before, WEB, stale_port)
        assert len(expected_gone) == 1
        # Watch the next packet of the connection: conntrack's events show where the kernel sends it now.
        events = subprocess.Popen(["ip", "netns", "exec", topo.node, "conntrack", "-E", "-e", "NEW", "-p", "tcp",
                                   "--orig-port-src", str(stale_port)], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        try:
            assert run_fix(topo, d) == 1
            assert before - flows(topo) == expected_gone
            threading.Event().wait(0.3)  # conntrack -E subscribes before the packet is sent
            with pytest.raises(ConnectionResetError):
                ask(stale)  # B's kernel has no such connection: it resets it, and the client reconnects
        finally:
            threading.Event().wait(0.3)
            events.terminate()
            seen = events.communicate(timeout=10)[0]
        new = [line for line in seen.splitlines() if "[NEW]" in line]
        assert new and f"src={B} " in new[0].split("dport=80", 1)[1], seen
        assert ask(healthy) == B, "the other connection is untouched"
    finally:
        servers.close()


def test_proc_table_with_a_gre_flow_is_read(topo: Topology, tmp_path: Path) -> None:
    """A GRE flow through the node (a PPTP or GRE tunnel) is printed in /proc/net/nf_conntrack with GRE's own
    timeouts (`gre 47 29 timeout=30, stream_timeout=180 src=…`); that one line made the whole table unreadable,
    so the stale UDP entry beside it went unsaid."""
    topo.start_server(udp_ports=[5353])
    topo.load(udp_dump([A, B]))
    stale = landing(topo, DNS, 53, A, 42000)
    topo.load(udp_dump([B]), flush_conntrack=False)
    gre = run_in_netns(topo.client, lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, 47))
    with gre:
        gre.sendto(b"\x00\x00\x08\x00" + bytes(20), (NODE_IP, 0))  # a GRE header carrying an IPv4 payload
    listing = in_node(topo, "cat /proc/net/nf_conntrack")
    assert any(line.split()[2:3] == ["gre"] and " timeout=" in line for line in listing.splitlines()), listing
    code, report = explain(tmp_path, topo, listing, DNS, 53, "udp")
    assert code == 3
    evidence = [e for e in the(report, "stale-conntrack")["evidence"] if e.get("source")]
    assert any(f"sport={stale.getsockname()[1]} " in e["rule"] for e in evidence)
