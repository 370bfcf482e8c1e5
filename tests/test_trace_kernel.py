"""The kernel agrees with the trace: kube-proxy dumps (bench.synth, 198.18/15 addresses) are loaded with
iptrace-restore into the oracle's `node` namespace (tests/oracle; nft and legacy backends separately), real
connections are made, and every observation must be one iptrace predicted:

- the endpoint a connection lands on is a predicted DNAT destination; refused ⇔ REJECT; timeout ⇔ DROP or
  no DNAT at all;
- the rules whose counters moved: in the nat table exactly the predicted path of that outcome (nat sees only
  a connection's first packet); in the other tables every predicted rule moved (they also count the later
  packets of the connection and its replies, which a first-packet trace does not describe);
- the source the endpoint sees shows masquerading exactly when predicted;
- 200 connections to a load-balanced Service fit the predicted split (chi-square, generous threshold).

Node 198.18.0.1 (pod side 198.18.128.1), pods 198.18.128.0/17, Services 198.19.0.0/16 (TESTING.md).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest

from bench.synth import EndpointSpec, PortSpec, ServiceSpec, render
from iptrace.dataplane import Outcome, Packet, Trace
from iptrace.iptables import load
from iptrace.iptables.model import Ruleset
from iptrace.iptables.walk import Tracer
from tests.oracle import CLIENT_IP, NODE_IP, ProbeResult, Topology, oracle_unavailable, requires_root_netns

pytestmark = [pytest.mark.root, requires_root_netns()]

POD_CIDR = "198.18.128.0/17"
CLIENT_POD = "198.18.128.4"  # a pod that is no endpoint
ALLOWED_CLIENT = "198.18.64.5"  # inside the LoadBalancer source range
A, B, C = "198.18.128.10", "198.18.128.11", "198.18.128.12"
LOCAL_EP, REMOTE_EP = "198.18.128.13", "198.18.128.14"
STICKY_1, STICKY_2 = "198.18.128.15", "198.18.128.16"
HAIRPIN = "198.18.128.17"
PODS = (CLIENT_POD, A, B, C, LOCAL_EP, REMOTE_EP, STICKY_1, STICKY_2, HAIRPIN)
PORT = 8080
QUICK = 0.4  # connections expected to time out


def ep(ip: str, local: bool = True) -> EndpointSpec:
    return EndpointSpec(ip, PORT, local=local)


SERVICES = [
    ServiceSpec("shop", "web", "198.19.0.10", [PortSpec("http", 80, node_port=30080, target_port=PORT)],
                type="NodePort", external_ips=["198.19.2.10"], endpoints=[ep(A), ep(B), ep(C)]),
    ServiceSpec("shop", "single", "198.19.0.11", [PortSpec("http", 80, target_port=PORT)],
                endpoints=[ep(HAIRPIN)]),
    ServiceSpec("shop", "ranged", "198.19.0.12", [PortSpec("http", 80, node_port=30082, target_port=PORT)],
                type="LoadBalancer", lb_ips=["198.19.1.12"], lb_source_ranges=["198.18.64.0/24"],
                endpoints=[ep(A)]),
    ServiceSpec("shop", "local", "198.19.0.13", [PortSpec("http", 80, node_port=30083, target_port=PORT)],
                type="NodePort", external_traffic_policy="Local",
                endpoints=[ep(LOCAL_EP), ep(REMOTE_EP, local=False)]),
    ServiceSpec("shop", "nolocal", "198.19.0.14", [PortSpec("http", 80, node_port=30084, target_port=PORT)],
                type="NodePort", external_traffic_policy="Local", endpoints=[ep(REMOTE_EP, local=False)]),
    ServiceSpec("shop", "empty", "198.19.0.15", [PortSpec("http", 80, node_port=30085, target_port=PORT)],
                type="NodePort", endpoints=[]),
    ServiceSpec("shop", "sticky", "198.19.0.16", [PortSpec("http", 80, target_port=PORT)],
                session_affinity_timeout=10800, endpoints=[ep(STICKY_1), ep(STICKY_2)]),
]
DUMP = render(SERVICES, node_ips=[NODE_IP], pod_cidr=POD_CIDR)


@pytest.fixture(scope="module", params=["nft", "legacy"])
def backend(request: pytest.FixtureRequest) -> str:
    reason = oracle_unavailable(request.param)
    if reason:
        pytest.skip(reason)
    return request.param


def _topology(backend: str) -> Topology:
    topology = Topology(backend)  # type: ignore[arg-type]
    topology.__enter__()
    try:
        topology.add_pod_ip(*PODS)
        topology.add_client_ip(ALLOWED_CLIENT)
        topology.start_server(tcp_ports=[PORT])
        topology.load(DUMP)
    except BaseException:
        topology.close()
        raise
    return topology


@pytest.fixture(scope="module")
def topo(backend: str) -> Iterator[Topology]:
    topology = _topology(backend)
    try:
        yield topology
    finally:
        topology.close()


@pytest.fixture(scope="module")
def ruleset() -> Ruleset:
    return load(DUMP, source="synth")


@pytest.fixture(scope="module")
def tracer(ruleset: Ruleset, topo: Topology) -> Tracer:
    return Tracer(ruleset, node_ips=topo.node_ips, pod_cidrs=[POD_CIDR])


def describe(trace: Trace) -> str:
    lines = []
    for o in trace.outcomes:
        lines.append(f"{o.verdict} {o.destination} p={o.probability:.3f} masq={o.masquerade} by={o.decided_by}")
        lines.extend(f"    {s.table:6} {s.chain} {s.rule}" for s in o.path)
    return "\n".join(lines)


def positions(ruleset: Ruleset, outcome: Outcome) -> set[tuple[str, str, int]]:
    """(table, chain, 1-based index in chain) of every rule on the outcome's path — the oracle's terms."""
    out = set()
    for step in outcome.path:
        chain = ruleset.chain(step.table, step.chain)
        assert chain is not None
        index = next(i for i, r in enumerate(chain.rules, 1) if r.line == step.line)
        out.add((step.table, step.chain, index))
    return out


def source_of(kind: str, src_ip: str | None, result: ProbeResult) -> str:
    if result.source is not None:
        return result.source[0]
    return src_ip or {"client": CLIENT_IP, "node": NODE_IP}[kind]


def connect_and_check(topo: Topology, ruleset: Ruleset, tracer: Tracer, kind: str, dst: str, port: int,
                      src_ip: str | None = None) -> tuple[ProbeResult, Outcome, Trace]:
    """One real connection; asserts it is one of the predicted outcomes (verdict, endpoint, masquerade, path)."""
    timeout = 1.0
    path = topo.path_of(lambda: topo.probe(kind, dst, port, src_ip=src_ip, timeout=timeout))  # type: ignore[arg-type]
    result: ProbeResult = path.result
    src = source_of(kind, src_ip, result)
    trace = tracer.trace(Packet(src, dst, port))
    where = f"{kind} {src} → {dst}:{port}: kernel said {result}\npredicted:\n{describe(trace)}"
    if result.outcome == "connected":
        assert result.endpoint is not None, where
        landed = f"{result.endpoint[0]}:{result.endpoint[1]}"
        matching = [o for o in trace.outcomes if o.verdict == "DNAT" and o.destination == landed]
        assert matching, where
        outcome = matching[0]
        assert outcome.masquerade == (result.seen_source != src), where
    elif result.outcome == "refused":
        assert {o.verdict for o in trace.outcomes} == {"REJECT"}, where
        outcome = trace.outcomes[0]
    else:
        assert result.outcome == "timeout", where
        assert all(o.verdict == "DROP" or o.verdict != "DNAT" for o in trace.outcomes), where
        assert len(trace.outcomes) == 1, where
        outcome = trace.outcomes[0]
    kernel = {(s.table, s.chain, s.index) for s in path}
    predicted = positions(ruleset, outcome)
    assert {p for p in kernel if p[0] == "nat"} == {p for p in predicted if p[0] == "nat"}, (
        f"{where}\nkernel nat rules: {sorted(p for p in kernel if p[0] == 'nat')}")
    missing = {p for p in predicted if p[0] != "nat"} - kernel
    assert not missing, f"{where}\npredicted rules the kernel did not count: {sorted(missing)}"
    return result, outcome, trace


# ---------------------------------------------------------------------------------------------- the cases


@pytest.mark.parametrize(("kind", "src_ip"), [("pod", CLIENT_POD), ("node", None), ("client", None)])
def test_cluster_ip(topo: Topology, ruleset: Ruleset, tracer: Tracer, kind: str, src_ip: str | None) -> None:
    result, outcome, _trace = connect_and_check(topo, ruleset, tracer, kind, "198.19.0.10", 80, src_ip)
    assert result.outcome == "connected"
    assert outcome.service == "shop/web:http"
    assert outcome.masquerade == (kind != "pod")  # only sources inside the pod CIDR keep their address


@pytest.mark.parametrize(("kind", "dst", "port"), [
    ("client", NODE_IP, 30080),      # NodePort from outside: masqueraded (ETP Cluster)
    ("pod", NODE_IP, 30080),
    ("client", "198.19.2.10", 80),   # externalIP
    ("pod", "198.19.2.10", 80),
])
def test_nodeport_and_external_ip(topo: Topology, ruleset: Ruleset, tracer: Tracer, kind: str, dst: str,
                                  port: int) -> None:
    src_ip = CLIENT_POD if kind == "pod" else None
    result, _outcome, _ = connect_and_check(topo, ruleset, tracer, kind, dst, port, src_ip)
    assert result.outcome == "connected"


@pytest.mark.parametrize(("src_ip", "expected"), [(ALLOWED_CLIENT, "connected"), (CLIENT_IP, "timeout")])
def test_load_balancer_source_ranges(topo: Topology, ruleset: Ruleset, tracer: Tracer, src_ip: str,
                                     expected: str) -> None:
    result, outcome, _ = connect_and_check(topo, ruleset, tracer, "client", "198.19.1.12", 80, src_ip)
    assert result.outcome == expected
    if expected == "timeout":
        assert outcome.verdict == "DROP" and outcome.decided_by is not None
        assert outcome.decided_by.chain == "KUBE-PROXY-FIREWALL"


def test_external_traffic_policy_local(topo: Topology, ruleset: Ruleset, tracer: Tracer) -> None:
    for _ in range(6):  # only the local endpoint, never the remote one
        result, outcome, trace = connect_and_check(topo, ruleset, tracer, "client", NODE_IP, 30083)
        assert result.endpoint == (LOCAL_EP, PORT) and not outcome.masquerade
        assert [o.destination for o in trace.outcomes] == [f"{LOCAL_EP}:{PORT}"]
    result, outcome, _ = connect_and_check(topo, ruleset, tracer, "client", NODE_IP, 30084)
    assert result.outcome == "timeout" and outcome.verdict == "DROP"  # "has no local endpoints"


@pytest.mark.parametrize(("kind", "dst", "port"), [("pod", "198.19.0.15", 80), ("client", NODE_IP, 30085)])
def test_no_endpoints_is_refused(topo: Topology, ruleset: Ruleset, tracer: Tracer, kind: str, dst: str,
                                 port: int) -> None:
    src_ip = CLIENT_POD if kind == "pod" else None
    result, outcome, _ = connect_and_check(topo, ruleset, tracer, kind, dst, port, src_ip)
    assert result.outcome == "refused" and outcome.verdict == "REJECT"


def test_wrong_port_is_not_dnated(topo: Topology, ruleset: Ruleset, tracer: Tracer) -> None:
    result, outcome, _ = connect_and_check(topo, ruleset, tracer, "pod", "198.19.0.10", PORT, CLIENT_POD)
    assert result.outcome == "timeout" and outcome.verdict != "DNAT"


def test_hairpin_is_masqueraded(topo: Topology, ruleset: Ruleset, tracer: Tracer) -> None:
    result, outcome, _ = connect_and_check(topo, ruleset, tracer, "pod", "198.19.0.11", 80, HAIRPIN)
    assert result.outcome == "connected" and outcome.masquerade
    assert result.seen_source != HAIRPIN


def test_load_balancing_fits_the_predicted_split(topo: Topology, tracer: Tracer) -> None:
    trace = tracer.trace(Packet(CLIENT_IP, "198.19.0.10", 80))
    predicted = {o.destination: o.probability for o in trace.outcomes if o.verdict == "DNAT"}
    assert len(predicted) == 3
    seen = Counter()
    for result in topo.probe_many(200, "client", "198.19.0.10", 80):
        assert result.outcome == "connected", result
        seen[f"{result.endpoint[0]}:{result.endpoint[1]}"] += 1  # type: ignore[index]
    assert set(seen) <= set(predicted), (seen, predicted)
    n = sum(seen.values())
    chi2 = sum((seen[d] - n * p) ** 2 / (n * p) for d, p in predicted.items())
    # 2 degrees of freedom: 18.4 is p = 0.0001; a real bias (e.g. 1/2-1/4-1/4) gives ~25 at n = 200.
    assert chi2 < 18.4, (seen, predicted, chi2)


def test_session_affinity(backend: str, ruleset: Ruleset) -> None:
    # recent lists live as long as the namespace: a fresh one, so that the first connection is really first.
    topology = _topology(backend)
    try:
        tracer = Tracer(ruleset, node_ips=topology.node_ips, pod_cidrs=[POD_CIDR])
        first, _outcome, trace = connect_and_check(topology, ruleset, tracer, "pod", "198.19.0.16", 80, CLIENT_POD)
        assert first.outcome == "connected"
        assert sorted(o.destination for o in trace.outcomes) == [f"{STICKY_1}:{PORT}", f"{STICKY_2}:{PORT}"]
        assert any("recent list" in a for a in trace.assumptions)
        # Later connections from the same client stick to the first endpoint: exactly what the trace's
        # "no recent entry yet" assumption says it does not model.
        later = {topology.probe("pod", "198.19.0.16", 80, src_ip=CLIENT_POD).endpoint for _ in range(8)}
        assert later == {first.endpoint}
    finally:
        topology.close()


# (0.0.0.0 from the client only: a socket bound to an address connects to that address, and the oracle's pods share
# one namespace whose pod addresses reach each other through the node)
@pytest.mark.parametrize(("kind", "dst"), [("pod", "127.0.0.1"), ("client", "127.0.0.1"), ("client", "0.0.0.0")])
def test_a_localhost_node_port_from_elsewhere_is_the_senders_own(topo: Topology, tracer: Tracer, kind: str,
                                                                 dst: str) -> None:
    # 127.0.0.1 in the pod's (or the client's) own network namespace: no endpoint answers (what the sender's own
    # loopback does with it is the sender's: the oracle's namespaces drop it), and no rule of the node counts the
    # connection; iptrace says it never reaches the node's rules. From the node, the same address is the Service's
    # localhost nodePort (route_localnet=1, as kube-proxy sets it).
    src_ip = CLIENT_POD if kind == "pod" else None
    path = topo.path_of(lambda: topo.probe(kind, dst, 30080, src_ip=src_ip, timeout=QUICK))  # type: ignore[arg-type]
    assert path.result.outcome != "connected", path.result
    assert not list(path), sorted((p.table, p.chain, p.index) for p in path)
    trace = tracer.trace(Packet(source_of(kind, src_ip, path.result), dst, 30080))
    assert [(o.verdict, o.path) for o in trace.outcomes] == [("CONTINUE", ())], describe(trace)
    node = topo.probe("node", dst, 30080)  # (0.0.0.0: Linux connects it to 127.0.0.1)
    landed = f"{node.endpoint[0]}:{node.endpoint[1]}" if node.endpoint else None
    assert landed in {o.destination for o in tracer.trace(Packet("127.0.0.1", dst, 30080)).outcomes}
