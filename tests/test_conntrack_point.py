"""iptables mode: the raw table runs before conntrack (found by the kernfuzz sweep, judged by the kernel).

raw (priority -300) sees a packet before conntrack (-200) attached its connection, so `-m conntrack --ctstate`
and `-m state --state` read INVALID there, not NEW (xt_conntrack / xt_state: no connection and not untracked).
Of a packet without a connection (there, or untracked) the other conntrack criteria are not looked at: the match
holds exactly when it has a --ctstate that holds (conntrack_mt's `if (ct == NULL) return match_flags &
XT_CONNTRACK_STATE`); `-m connmark` never holds and CONNMARK does nothing. iptrace read NEW in raw too, so a
raw `--ctstate INVALID -j DROP` was predicted to pass what the kernel drops.

The nftables twin is tests/test_nft_conntrack_point.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from iptrace.dataplane import Packet, Trace
from iptrace.iptables import load
from iptrace.iptables.walk import Tracer
from tests.oracle import CLIENT_IP, NODE_IP, Topology, oracle_unavailable

POD, OTHER_POD = "198.18.128.10", "198.18.128.4"
SERVICE = "198.19.0.20"
PORT = 8080

RAW = f"""-A PREROUTING -s {CLIENT_IP}/32 -p tcp -m tcp --dport 81 -m conntrack --ctstate INVALID -j DROP
-A PREROUTING -s {CLIENT_IP}/32 -p tcp -m tcp --dport 82 -m state --state NEW -j DROP
-A PREROUTING -s {CLIENT_IP}/32 -p tcp -m tcp --dport 83 -m conntrack --ctorigdst {SERVICE} -j DROP
-A PREROUTING -s {CLIENT_IP}/32 -p tcp -m tcp --dport 84 -m conntrack --ctstate INVALID --ctorigdst 10.0.0.1 -j DROP
-A PREROUTING -s {CLIENT_IP}/32 -p tcp -m tcp --dport 85 -m connmark ! --mark 0x5 -j DROP
-A PREROUTING -s {CLIENT_IP}/32 -p tcp -m tcp --dport 86 -j CONNMARK --set-xmark 0x7/0xffffffff
"""
DUMP = f"""*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
{RAW}COMMIT
*mangle
:PREROUTING ACCEPT [0:0]
-A PREROUTING -s {OTHER_POD}/32 -m conntrack --ctstate INVALID -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -d {SERVICE}/32 -p tcp -j DNAT --to-destination {POD}:{PORT}
-A POSTROUTING ! -s 198.18.128.0/17 -j MASQUERADE
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -m connmark --mark 0x7 -j DROP
COMMIT
"""
DNATED = ("DNAT", f"{POD}:{PORT}", True)


def trace(src: str, dport: int) -> Trace:
    return Tracer(load(DUMP), node_ips=[NODE_IP]).trace(Packet(src, SERVICE, dport))


def only(t: Trace) -> tuple[str, str | None, bool]:
    assert len(t.outcomes) == 1, t.outcomes
    o = t.outcomes[0]
    return o.verdict, o.destination, o.masquerade


def test_raw_reads_ctstate_invalid() -> None:
    assert only(trace(CLIENT_IP, 81))[0] == "DROP"
    assert only(trace(CLIENT_IP, 82)) == DNATED


def test_without_a_connection_only_ctstate_counts() -> None:
    assert only(trace(CLIENT_IP, 83)) == DNATED  # no --ctstate: the match fails
    assert only(trace(CLIENT_IP, 84))[0] == "DROP"  # --ctstate INVALID holds: --ctorigdst is not looked at


def test_an_untracked_packet_is_judged_by_its_state_alone() -> None:
    untracked = DUMP.replace("*raw\n:PREROUTING ACCEPT [0:0]\n", f"*raw\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -s {OTHER_POD}/32 -j CT --notrack\n")
    untracked = untracked.replace("-A FORWARD -m connmark", f"-A FORWARD -s {OTHER_POD}/32 -m conntrack --ctstate UNTRACKED "
                                                           "--ctorigdst 10.0.0.1 -j REJECT\n-A FORWARD -m connmark")
    t = Tracer(load(untracked), node_ips=[NODE_IP]).trace(Packet(OTHER_POD, SERVICE, 80))
    assert only(t)[0] == "REJECT"  # not DNATed (untracked), and --ctorigdst is not looked at


def test_connmark_needs_a_connection() -> None:
    assert only(trace(CLIENT_IP, 85)) == DNATED
    assert only(trace(CLIENT_IP, 86)) == DNATED  # the CONNMARK in raw did nothing: FORWARD's connmark 0x7 fails


def test_after_raw_the_packet_has_its_connection() -> None:
    assert only(trace(CLIENT_IP, 80)) == DNATED
    assert only(trace(OTHER_POD, 80)) == ("DNAT", f"{POD}:{PORT}", False)  # mangle: NEW, not INVALID


# --------------------------------------------------------------------------------------------- the kernel


@pytest.fixture(scope="module", params=["nft", "legacy"])
def node(request: pytest.FixtureRequest) -> Iterator[tuple[Topology, Tracer]]:
    reason = oracle_unavailable(request.param)
    if reason:
        pytest.skip(reason)
    with Topology(request.param) as topo:
        topo.add_pod_ip(POD, OTHER_POD)
        topo.start_server(tcp_ports=[PORT])
        topo.load(DUMP)
        yield topo, Tracer(load(topo.save()), node_ips=topo.node_ips)


@pytest.mark.root
@pytest.mark.parametrize(("src", "dport"), [(CLIENT_IP, p) for p in range(80, 87)] + [(OTHER_POD, 80)])
def test_the_kernel_agrees(node: tuple[Topology, Tracer], src: str, dport: int) -> None:
    topo, tracer = node
    topo.flush_conntrack()
    kind = "pod" if src == OTHER_POD else "client"
    result = topo.probe(kind, SERVICE, dport, src_ip=src if kind == "pod" else None, timeout=0.5)  # type: ignore[arg-type]
    t = tracer.trace(Packet(src, SERVICE, dport))
    where = f"{src} → {SERVICE}:{dport}: kernel {result}; predicted {t.outcomes}"
    if result.outcome == "connected":
        assert only(t) == ("DNAT", f"{POD}:{PORT}", result.seen_source != src), where
    else:
        assert result.outcome == "timeout" and only(t)[0] == "DROP", where
