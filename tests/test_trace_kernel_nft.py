"""The kernel agrees with the nftables trace: kube-proxy's nftables-mode transaction (bench.synth_nft, the
1.34/1.35 layout, both families) is loaded with `nft -f` into the oracle's `node` namespace, iptrace reads the
kernel's own listing of it (`nft list ruleset`), real connections are made, and every observation must be one
iptrace predicted:

- the endpoint a connection lands on is a predicted DNAT destination, and the source the endpoint sees shows
  masquerading exactly when predicted;
- refused ⇔ every predicted outcome is REJECT; a timeout is a predicted DROP (the kernel's trace ends in a
  drop) or a packet no rule decides (the kernel's trace ends in no verdict);
- the rules the SYN matched (`nft monitor trace`), in every table, are the predicted path's;
- the kernel's JSON listing (`nft -j list ruleset`) of the same ruleset predicts the same outcomes and chains;
- 200 connections to a three-endpoint Service fit the predicted 1/3 split (chi-square).

What nftables mode does differently from iptables mode is checked here too: a ClusterIP's unserved port is
refused and an unallocated address of the service CIDR is dropped (iptables lets both go unanswered). The
node also has iptables-nft's tables (kubelet's chains, the CNI portmap plugin's hostPorts) and flannel's
nftables-mode table, created before kube-proxy's, as on a real node: the trace runs through all of them.
Node 198.18.0.1 (pod side 198.18.128.1), pods 198.18.128.0/17, service CIDR 198.19.0.0/17 (ClusterIPs);
externalIPs and LB IPs in 198.19.128.0/17, routed like the service range (TESTING.md's addresses).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from bench.make_samples_nft import flannel_nft
from bench.synth import EndpointSpec, PortSpec, ServiceSpec
from bench.synth_nft import render_nft
from iptrace import dataplanes
from iptrace.dataplane import Outcome, Packet, Trace
from iptrace.kube.analysis import Analysis, analyse
from tests.oracle import CLIENT_IP, NODE_IP, ProbeResult, Topology
from tests.oracle.netns import CLIENT_IP6, NODE_IP6
from tests.oracle.nft import KernelStep, NftTracer, list_ruleset, load_nft, nft, requires_nft, restore_iptables_nft

pytestmark = [pytest.mark.root, requires_nft()]

POD_CIDR, POD_CIDR6 = "198.18.128.0/17", "fd00:198:18:8000::/64"
SERVICE_CIDRS = ["198.19.0.0/17", "fd00:198:19::/112"]
CLIENT_POD = "198.18.128.4"  # a pod that is no endpoint
ALLOWED_CLIENT = "198.18.64.5"  # inside the LoadBalancer source range
A, B, C = "198.18.128.10", "198.18.128.11", "198.18.128.12"
LOCAL_EP, REMOTE_EP = "198.18.128.13", "198.18.128.14"
STICKY_1, STICKY_2 = "198.18.128.15", "198.18.128.16"
HAIRPIN = "198.18.128.17"
POD6, A6, B6 = "fd00:198:18:8000::4", "fd00:198:18:8000::a", "fd00:198:18:8000::b"
PODS = (CLIENT_POD, A, B, C, LOCAL_EP, REMOTE_EP, STICKY_1, STICKY_2, HAIRPIN, POD6, A6, B6)
PORT = 8080
EXTERNAL_IP, LB_IP = "198.19.200.10", "198.19.201.12"
UNALLOCATED = "198.19.0.99"
HOST_PORT, CLASH_PORT = 8081, 30086


def ep(ip: str, local: bool = True) -> EndpointSpec:
    return EndpointSpec(ip, PORT, local=local)


SERVICES = [
    ServiceSpec("shop", "web", "198.19.0.10", [PortSpec("http", 80, node_port=30080, target_port=PORT)],
                type="NodePort", external_ips=[EXTERNAL_IP], endpoints=[ep(A), ep(B), ep(C)]),
    ServiceSpec("shop", "single", "198.19.0.11", [PortSpec("http", 80, target_port=PORT)], endpoints=[ep(HAIRPIN)]),
    ServiceSpec("shop", "ranged", "198.19.0.12", [PortSpec("http", 80, node_port=30082, target_port=PORT)],
                type="LoadBalancer", lb_ips=[LB_IP], lb_source_ranges=["198.18.64.0/24"], endpoints=[ep(A)]),
    ServiceSpec("shop", "local", "198.19.0.13", [PortSpec("http", 80, node_port=30083, target_port=PORT)],
                type="NodePort", external_traffic_policy="Local",
                endpoints=[ep(LOCAL_EP), ep(REMOTE_EP, local=False)]),
    ServiceSpec("shop", "nolocal", "198.19.0.14", [PortSpec("http", 80, node_port=30084, target_port=PORT)],
                type="NodePort", external_traffic_policy="Local", endpoints=[ep(REMOTE_EP, local=False)]),
    ServiceSpec("shop", "empty", "198.19.0.15", [PortSpec("http", 80, node_port=30085, target_port=PORT)],
                type="NodePort", endpoints=[]),
    ServiceSpec("shop", "sticky", "198.19.0.16", [PortSpec("http", 80, target_port=PORT)],
                session_affinity_timeout=10800, endpoints=[ep(STICKY_1), ep(STICKY_2)]),
    ServiceSpec("shop", "itp", "198.19.0.18", [PortSpec("http", 80, target_port=PORT)],
                internal_traffic_policy="Local", endpoints=[ep(LOCAL_EP), ep(REMOTE_EP, local=False)]),
    ServiceSpec("shop", "itp-remote", "198.19.0.19", [PortSpec("http", 80, target_port=PORT)],
                internal_traffic_policy="Local", endpoints=[ep(REMOTE_EP, local=False)]),
    ServiceSpec("shop", "clash", "198.19.0.17", [PortSpec("http", 80, node_port=CLASH_PORT, target_port=PORT)],
                type="NodePort", endpoints=[ep(B)]),
    ServiceSpec("shop", "web6", "fd00:198:19::a", [PortSpec("http", 80, target_port=PORT)],
                endpoints=[ep(A6), ep(B6)]),
]


# What else a node has, created before kube-proxy's table (so registered first at the same priorities): kubelet's
# chains and the CNI portmap plugin's hostPorts through iptables-nft, and flannel's nftables-mode table. The
# hostPort 30086 is also the nodePort of shop/clash: whichever nat chain runs first at dstnat decides.
IPTABLES_NFT = f"""*mangle
:KUBE-IPTABLES-HINT - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
COMMIT
*nat
:CNI-HOSTPORT-DNAT - [0:0]
:CNI-HOSTPORT-MASQ - [0:0]
:CNI-HOSTPORT-SETMARK - [0:0]
:CNI-DN-oracle - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \\"cbr0\\" id: \\"oracle\\"" -m multiport \
--dports {HOST_PORT},{CLASH_PORT} -j CNI-DN-oracle
-A CNI-DN-oracle -s {C}/32 -p tcp -m tcp --dport {HOST_PORT} -j CNI-HOSTPORT-SETMARK
-A CNI-DN-oracle -p tcp -m tcp --dport {HOST_PORT} -j DNAT --to-destination {C}:{PORT}
-A CNI-DN-oracle -p tcp -m tcp --dport {CLASH_PORT} -j DNAT --to-destination {C}:{PORT}
-A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE
-A CNI-HOSTPORT-SETMARK -m comment --comment "CNI portfwd masquerade mark" -j MARK --set-xmark 0x2000/0x2000
COMMIT
"""
FLANNEL = flannel_nft(cluster_cidr=POD_CIDR, node_subnet="198.18.128.0/24")


def transaction() -> str:
    return "".join(render_nft(SERVICES, node_ips=[NODE_IP, NODE_IP6], pod_cidr=POD_CIDR6 if v6 else POD_CIDR,
                              service_cidrs=SERVICE_CIDRS, ipv6=v6, form="transaction") for v6 in (False, True))


@dataclass
class Node:
    topo: Topology
    tracer: NftTracer
    analyses: dict[str, Analysis]
    listing: str
    from_json: dict[str, Analysis]  # the same, read from `nft -j list ruleset`

    def analysis(self, ip: str) -> Analysis:
        return self.analyses["ipv6" if ":" in ip else "ipv4"]


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    with Topology("nft", ipv6=True) as topo:
        topo.add_pod_ip(*PODS)
        topo.add_client_ip(ALLOWED_CLIENT)
        topo.start_server(tcp_ports=[PORT])
        restore_iptables_nft(topo, IPTABLES_NFT)
        load_nft(topo, FLANNEL)
        load_nft(topo, transaction())
        listing = list_ruleset(topo)  # what iptrace reads: the kernel's listing, before the oracle's own table
        dataplane, ruleset = dataplanes.load(listing, source="nft list ruleset")
        assert dataplane.name == "nftables"
        analyses = {f: analyse(dataplane, ruleset, f, node_ips=topo.node_ips) for f in ("ipv4", "ipv6")}
        json_dp, json_rs = dataplanes.load(nft(topo, "-j", "list", "ruleset"), source="nft -j list ruleset")
        from_json = {f: analyse(json_dp, json_rs, f, node_ips=topo.node_ips) for f in ("ipv4", "ipv6")}
        with NftTracer(topo) as tracer:
            yield Node(topo, tracer, analyses, listing, from_json)


def describe(trace: Trace) -> str:
    lines = []
    for o in trace.outcomes:
        lines.append(f"{o.verdict} {o.destination} p={o.probability:.3f} masq={o.masquerade} by={o.decided_by}")
        lines.extend(f"    {s.table} {s.chain}: {s.rule}" for s in o.path)
    return "\n".join(lines + [f"  assumed: {a}" for a in trace.assumptions])


def source_of(kind: str, src_ip: str | None, dst: str, result: ProbeResult) -> str:
    if result.source is not None:
        return result.source[0]
    v6 = ":" in dst
    return src_ip or {"client": CLIENT_IP6 if v6 else CLIENT_IP, "node": NODE_IP6 if v6 else NODE_IP}[kind]


_COUNTER = re.compile(r"counter packets \d+ bytes \d+")


def rule_path(steps: list[Any]) -> list[tuple[str, str, str]]:
    """(table, chain, rule) of every rule on a path, in every table, as the kernel's trace prints them (counter
    values aside; iptrace also lists the set element a lookup found, which the kernel's trace does not)."""
    return [(s.table, s.chain, " ".join(_COUNTER.sub("counter", s.rule).split())) for s in steps
            if not s.rule.startswith("element ")]


def check(node: Node, kind: str, dst: str, port: int, src_ip: str | None = None
          ) -> tuple[ProbeResult, Outcome, Trace, list[KernelStep]]:
    """One real connection; asserts it is one of the predicted outcomes (verdict, endpoint, masquerade, the rules
    of kube-proxy's table the SYN matched)."""
    result, kernel = node.tracer.path_of(
        lambda sport: node.topo.probe(kind, dst, port, src_ip=src_ip, sport=sport))  # type: ignore[arg-type]
    src = source_of(kind, src_ip, dst, result)
    trace = node.analysis(dst).tracer.trace(Packet(src, dst, port))
    where = (f"{kind} {src} → {dst}:{port}: kernel said {result}\nkernel path:\n"
             + "\n".join(f"    {s.table} {s.chain}: {s.rule} ({s.verdict})" for s in kernel)
             + f"\npredicted:\n{describe(trace)}")
    kernel_verdict = kernel[-1].verdict if kernel else ""
    if result.outcome == "connected":
        assert result.endpoint is not None, where
        landed = f"[{result.endpoint[0]}]:{result.endpoint[1]}" if ":" in result.endpoint[0] \
            else f"{result.endpoint[0]}:{result.endpoint[1]}"
        matching = [o for o in trace.outcomes if o.verdict == "DNAT" and o.destination == landed]
        assert matching, where
        outcome = matching[0]
        assert outcome.masquerade == (result.seen_source != src), where
    elif result.outcome == "refused":
        assert {o.verdict for o in trace.outcomes} == {"REJECT"}, where
        outcome = trace.outcomes[0]
    else:
        assert result.outcome == "timeout", where
        assert len(trace.outcomes) == 1 and trace.outcomes[0].verdict != "DNAT", where
        outcome = trace.outcomes[0]
        # Both time out; the kernel's trace tells a DROP from a packet nothing decided.
        assert (outcome.verdict == "DROP") == (kernel_verdict == "drop"), where
    assert rule_path(kernel) == rule_path(list(outcome.path)), where
    # The kernel's JSON listing of the same ruleset predicts the same (its steps carry handles, not lines),
    # except for iptables-nft's rules, whose xt matches JSON names without their arguments: a trace that meets one
    # says it assumed it does not match, and answers as the text does everywhere else.
    twin = node.from_json["ipv6" if ":" in dst else "ipv4"].tracer.trace(Packet(src, dst, port))
    if summary(twin) != summary(trace):
        assert any("iptables extension" in a for a in twin.assumptions), f"{where}\nfrom nft -j:\n{describe(twin)}"
        if all(o.decided_by is None or o.decided_by.table not in IPTABLES_NFT_TABLES for o in trace.outcomes):
            assert summary(twin, IPTABLES_NFT_TABLES) == summary(trace, IPTABLES_NFT_TABLES), f"{where}\nnft -j:\n{describe(twin)}"
    return result, outcome, trace, kernel


IPTABLES_NFT_TABLES = ("ip nat", "ip filter", "ip mangle")


def summary(trace: Trace, without: tuple[str, ...] = ()) -> list[tuple[object, ...]]:
    """Each outcome's verdict, endpoint, exact share, masquerade and chains (those of `without`'s tables aside)."""
    return [(o.verdict, o.destination, o.exact_probability, o.masquerade,
             tuple((s.table, s.chain) for s in o.path if s.table not in without)) for o in trace.outcomes]


# ---------------------------------------------------------------------------------------------- the cases


@pytest.mark.parametrize(("kind", "src_ip"), [("pod", CLIENT_POD), ("node", None), ("client", None)])
def test_cluster_ip(node: Node, kind: str, src_ip: str | None) -> None:
    result, outcome, _, _ = check(node, kind, "198.19.0.10", 80, src_ip)
    assert result.outcome == "connected"
    assert outcome.service == "shop/web:http"
    assert outcome.masquerade == (kind != "pod")  # only sources inside the pod CIDR keep their address


@pytest.mark.parametrize(("kind", "dst", "port"), [
    ("client", NODE_IP, 30080), ("pod", NODE_IP, 30080), ("node", NODE_IP, 30080),
    ("client", EXTERNAL_IP, 80), ("pod", EXTERNAL_IP, 80),
])
def test_nodeport_and_external_ip(node: Node, kind: str, dst: str, port: int) -> None:
    result, outcome, _, _ = check(node, kind, dst, port, CLIENT_POD if kind == "pod" else None)
    assert result.outcome == "connected" and outcome.masquerade  # externalTrafficPolicy=Cluster: always


@pytest.mark.parametrize(("src_ip", "expected"), [(ALLOWED_CLIENT, "connected"), (CLIENT_IP, "timeout")])
def test_load_balancer_source_ranges(node: Node, src_ip: str, expected: str) -> None:
    result, outcome, _, kernel = check(node, "client", LB_IP, 80, src_ip)
    assert result.outcome == expected
    if expected == "timeout":
        assert outcome.verdict == "DROP" and outcome.decided_by is not None
        assert outcome.decided_by.chain.startswith("firewall-") and kernel[-1].chain == outcome.decided_by.chain


def test_external_traffic_policy_local(node: Node) -> None:
    for _ in range(4):  # only the local endpoint, never the remote one, and the client keeps its address
        result, outcome, trace, _ = check(node, "client", NODE_IP, 30083)
        assert result.endpoint == (LOCAL_EP, PORT) and not outcome.masquerade
        assert [o.destination for o in trace.outcomes] == [f"{LOCAL_EP}:{PORT}"]
    result, outcome, _, _ = check(node, "client", NODE_IP, 30084)
    assert result.outcome == "timeout" and outcome.verdict == "DROP"  # no local endpoint: dropped for outsiders
    # ... while pods and the node itself are short-circuited to every endpoint.
    result, outcome, _, _ = check(node, "pod", NODE_IP, 30084, CLIENT_POD)
    assert result.endpoint == (REMOTE_EP, PORT) and not outcome.masquerade
    result, outcome, _, _ = check(node, "node", NODE_IP, 30084)
    assert result.endpoint == (REMOTE_EP, PORT) and outcome.masquerade


def test_internal_traffic_policy_local(node: Node) -> None:
    for _ in range(3):  # only the node's own endpoint
        result, _, trace, _ = check(node, "pod", "198.19.0.18", 80, CLIENT_POD)
        assert result.endpoint == (LOCAL_EP, PORT)
        assert [o.destination for o in trace.outcomes] == [f"{LOCAL_EP}:{PORT}"]
    result, outcome, _, _ = check(node, "pod", "198.19.0.19", 80, CLIENT_POD)
    assert result.outcome == "timeout" and outcome.verdict == "DROP"  # no local endpoint: @no-endpoint-services drop


@pytest.mark.parametrize(("kind", "dst", "port"), [
    ("pod", "198.19.0.15", 80), ("node", "198.19.0.15", 80), ("client", NODE_IP, 30085)])
def test_no_endpoints_is_refused(node: Node, kind: str, dst: str, port: int) -> None:
    result, outcome, _, _ = check(node, kind, dst, port, CLIENT_POD if kind == "pod" else None)
    assert result.outcome == "refused" and outcome.verdict == "REJECT"


@pytest.mark.parametrize(("kind", "dst"), [("pod", "198.19.0.10"), ("client", "198.19.0.10"),
                                           ("node", "198.19.0.10"), ("client", "fd00:198:19::a")])
def test_a_cluster_ips_unserved_port_is_refused(node: Node, kind: str, dst: str) -> None:
    """The targetPort used on the ClusterIP: a hang in iptables mode, refused in nftables mode."""
    result, outcome, _, kernel = check(node, kind, dst, PORT, CLIENT_POD if kind == "pod" else None)
    assert result.outcome == "refused" and outcome.verdict == "REJECT"
    assert kernel[-1].chain == "cluster-ips-check" and "@cluster-ips reject" in kernel[-1].rule


def test_an_unallocated_service_address_is_dropped(node: Node) -> None:
    result, outcome, _, kernel = check(node, "client", UNALLOCATED, 80)
    assert result.outcome == "timeout" and outcome.verdict == "DROP"
    assert kernel[-1].chain == "cluster-ips-check" and "unallocated" in kernel[-1].rule


def test_an_unserved_port_outside_the_service_cidr_goes_unanswered(node: Node) -> None:
    result, outcome, _, kernel = check(node, "client", EXTERNAL_IP, PORT)
    assert result.outcome == "timeout" and outcome.verdict in ("CONTINUE", "ACCEPT")
    assert all(s.verdict != "drop" for s in kernel)


def test_hairpin_is_masqueraded(node: Node) -> None:
    result, outcome, _, _ = check(node, "pod", "198.19.0.11", 80, HAIRPIN)
    assert result.outcome == "connected" and outcome.masquerade and result.seen_source != HAIRPIN


@pytest.mark.parametrize("kind", ["client", "pod"])
def test_ipv6_cluster_ip(node: Node, kind: str) -> None:
    result, outcome, _, _ = check(node, kind, "fd00:198:19::a", 80, POD6 if kind == "pod" else None)
    assert result.outcome == "connected" and outcome.masquerade == (kind == "client")


def test_load_balancing_fits_the_predicted_split(node: Node) -> None:
    trace = node.analysis("198.19.0.10").tracer.trace(Packet(CLIENT_IP, "198.19.0.10", 80))
    predicted = {o.destination: o.exact_probability for o in trace.outcomes if o.verdict == "DNAT"}
    assert sorted(predicted.values()) == [pytest.approx(1 / 3)] * 3 and sum(predicted.values()) == 1  # numgen: 1/N
    seen: Counter[str] = Counter()
    for result in node.topo.probe_many(200, "client", "198.19.0.10", 80):
        assert result.outcome == "connected", result
        seen[f"{result.endpoint[0]}:{result.endpoint[1]}"] += 1  # type: ignore[index]
    assert set(seen) <= set(predicted), (seen, predicted)
    n = sum(seen.values())
    chi2 = sum((seen[d] - n * float(p)) ** 2 / (n * float(p)) for d, p in predicted.items())
    # 2 degrees of freedom: 18.4 is p = 0.0001; a real bias (e.g. 1/2-1/4-1/4) gives ~25 at n = 200.
    assert chi2 < 18.4, (seen, predicted, chi2)


def test_session_affinity(node: Node) -> None:
    # Affinity sets live as long as the namespace: empty them, so that the first connection really is first.
    for line in node.listing.splitlines():
        if line.strip().startswith("set affinity-"):
            nft(node.topo, "flush", "set", "ip", "kube-proxy", line.split()[1])
    first, _, trace, _ = check(node, "pod", "198.19.0.16", 80, CLIENT_POD)
    assert first.outcome == "connected"
    assert sorted(o.destination for o in trace.outcomes) == [f"{STICKY_1}:{PORT}", f"{STICKY_2}:{PORT}"]
    assert any("affinity" in a for a in trace.assumptions)
    # Later connections from the same client stick to the first endpoint: exactly what the trace's "no affinity
    # entry yet" assumption says it does not model.
    later = {node.topo.probe("pod", "198.19.0.16", 80, src_ip=CLIENT_POD).endpoint for _ in range(8)}
    assert later == {first.endpoint}


def test_a_host_port_beside_kube_proxy(node: Node) -> None:
    result, outcome, _, _ = check(node, "client", NODE_IP, HOST_PORT)
    assert result.endpoint == (C, PORT) and outcome.decided_by is not None and outcome.decided_by.table == "ip nat"


def test_a_host_port_that_is_also_a_node_port(node: Node) -> None:
    """Both nat chains hook prerouting at priority dstnat; of equal priorities the newest runs first, so
    kube-proxy's (created after iptables-nft's table) DNATs to the NodePort's endpoint, and a connection's NAT is
    decided once: the hostPort's DNAT never runs."""
    result, _, trace, _ = check(node, "client", NODE_IP, CLASH_PORT)
    assert result.endpoint == (B, PORT) and [o.destination for o in trace.outcomes] == [f"{B}:{PORT}"]


@pytest.mark.parametrize("kind", ["pod", "client"])
def test_a_localhost_node_port_from_elsewhere_is_the_senders_own(node: Node, kind: str) -> None:
    # 127.0.0.1 in the pod's (or the client's) own network namespace: no endpoint answers and no base chain of the
    # node sees the packet; iptrace says it never reaches the node's rules. From the node itself, nftables mode
    # has no localhost nodePorts: not rewritten either (the trace's own rules).
    src_ip = CLIENT_POD if kind == "pod" else None
    result, kernel = node.tracer.path_of(
        lambda sport: node.topo.probe(kind, "127.0.0.1", 30080, src_ip=src_ip, sport=sport, timeout=0.4))  # type: ignore[arg-type]
    assert result.outcome != "connected" and kernel == [], (result, kernel)
    trace = node.analysis("127.0.0.1").tracer.trace(Packet(source_of(kind, src_ip, "127.0.0.1", result),
                                                           "127.0.0.1", 30080))
    assert [(o.verdict, o.path) for o in trace.outcomes] == [("CONTINUE", ())], describe(trace)
    own = node.topo.probe("node", "127.0.0.1", 30080, timeout=0.4)
    assert own.outcome != "connected", own
    assert "DNAT" not in node.analysis("127.0.0.1").tracer.trace(Packet(NODE_IP, "127.0.0.1", 30080)).verdicts
