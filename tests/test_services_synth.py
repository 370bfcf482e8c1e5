"""The service view against the synthesizer's input: for random Services rendered by bench/synth.py in every
kube-proxy era (current, ~1.26 KUBE-EXT, KUBE-XLB), IPv4 and IPv6, with and without comments, the view must
give back the Services it was rendered from."""

from __future__ import annotations

import random
import re

import pytest

from bench.synth import EndpointSpec, PortSpec, ServiceSpec, render
from iptrace.iptables import load
from iptrace.kube.cluster import ClusterService, ClusterServicePort, ClusterState
from iptrace.kube.view import MASQ_ALWAYS, MASQ_NEVER, MASQ_OFF_POD
from tests.dumps import build_view

NODE_V4, NODE_V6 = "192.168.49.2", "fd00:49::2"


def _ip(rng: random.Random, ipv6: bool, base: str) -> str:
    if ipv6:
        return f"{base}{rng.randrange(1, 0xffff):x}"
    return f"{base}{rng.randrange(0, 256)}.{rng.randrange(1, 255)}"


def random_services(seed: int, ipv6: bool, n: int = 12) -> list[ServiceSpec]:
    rng = random.Random(seed)
    out: list[ServiceSpec] = []
    used_np: set[int] = set()
    for i in range(n):
        kind = rng.choice(["ClusterIP", "ClusterIP", "NodePort", "LoadBalancer"])
        cluster_ip = f"fd00:96::{i + 1:x}" if ipv6 else f"10.96.{i // 200}.{i % 200 + 1}"
        ports = [PortSpec(rng.choice(["http", "", "grpc"]), rng.choice([80, 443, 5001]),
                          rng.choice(["TCP", "TCP", "UDP"]), target_port=rng.choice([8080, 9000]))]
        if rng.random() < 0.3:
            ports.append(PortSpec("metrics" if ports[0].name else "", 9100, "TCP", target_port=9100))
            if not ports[0].name:
                ports[0].name = "main"
        if kind != "ClusterIP":
            for p in ports:
                np = rng.randrange(30000, 32767)
                while np in used_np:
                    np = rng.randrange(30000, 32767)
                used_np.add(np)
                p.node_port = np
        svc = ServiceSpec(f"ns{rng.randrange(3)}", f"svc{i}", cluster_ip, ports, type=kind)
        if rng.random() < 0.2:
            svc.external_ips = [_ip(rng, ipv6, "fd00:ee::" if ipv6 else "198.51.")]
        if kind == "LoadBalancer":
            svc.lb_ips = [_ip(rng, ipv6, "fd00:1b::" if ipv6 else "203.0.")]
            if rng.random() < 0.5:
                svc.lb_source_ranges = ["fd00:aa::/64"] if ipv6 else ["198.18.0.0/24", "192.0.2.0/28"]
        if kind != "ClusterIP" and rng.random() < 0.4:
            svc.external_traffic_policy = "Local"
            if kind == "LoadBalancer":
                svc.health_check_node_port = 32000 + i
        if rng.random() < 0.15:
            svc.internal_traffic_policy = "Local"
        if rng.random() < 0.2:
            svc.session_affinity_timeout = rng.choice([10800, 60])
        if rng.random() > 0.12:
            for _ in range(rng.randrange(1, 6)):
                ip = _ip(rng, ipv6, "fd00:244::" if ipv6 else "10.244.")
                svc.endpoints.append(EndpointSpec(ip, 8080, local=rng.random() < 0.4))
        out.append(svc)
    return out


def _spn(svc: ServiceSpec, p: PortSpec) -> str:
    return f"{svc.namespace}/{svc.name}:{p.name}" if p.name else f"{svc.namespace}/{svc.name}"


def _cluster(services: list[ServiceSpec]) -> ClusterState:
    return ClusterState(services=tuple(
        ClusterService(s.namespace, s.name, s.type, (s.cluster_ip,),
                       tuple(ClusterServicePort(p.name, p.port, p.protocol, p.target_port or p.port, p.node_port)
                             for p in s.ports))
        for s in services))


CASES = [(era, ipv6, seed) for era in ("current", "ext", "xlb") for ipv6 in (False, True) for seed in range(4)]


@pytest.mark.parametrize(("era", "ipv6", "seed"), CASES, ids=[f"{e}-{'v6' if v else 'v4'}-{s}" for e, v, s in CASES])
def test_view_gives_back_the_services(era: str, ipv6: bool, seed: int) -> None:
    services = random_services(seed, ipv6)
    pod_cidr = "fd00:244::/64" if ipv6 else "10.244.0.0/16"
    text = render(services, node_ips=[NODE_V6 if ipv6 else NODE_V4], pod_cidr=pod_cidr, era=era, ipv6=ipv6,
                  random_fully=seed % 2 == 0)
    view = build_view(load(text, source=f"synth-{era}"))
    assert view.family == ("ipv6" if ipv6 else "ipv4")
    assert view.random_fully == (seed % 2 == 0)
    assert view.masquerade_mark == "0x4000"
    assert view.pod_cidrs == (pod_cidr,) or not any(s.endpoints for s in services)
    by_label = {s.label: s for s in view.services}
    expected_labels = set()
    for svc in services:
        for p in svc.ports:
            label = _spn(svc, p)
            expected_labels.add(label)
            got = by_label.get(label)
            assert got is not None, f"{label} missing from the view ({sorted(by_label)})"
            _check_port(svc, p, got, era)
    assert set(by_label) == expected_labels


def _check_port(svc: ServiceSpec, p: PortSpec, got, era: str) -> None:
    label = got.label
    external = svc.type in ("NodePort", "LoadBalancer")
    eps = svc.endpoints
    local = [e for e in eps if e.local]
    assert got.protocol == p.protocol.lower(), label
    assert got.cluster_ip == svc.cluster_ip, label
    assert got.port == p.port, label
    assert got.node_port == (p.node_port if external else None), label
    hc = svc.health_check_node_port if svc.type == "LoadBalancer" and svc.external_traffic_policy == "Local" \
        else None
    assert got.health_check_node_port == hc, label
    if not eps:
        assert got.no_endpoints, label
        assert not got.endpoints
        # With no endpoints kube-proxy writes one REJECT per address that cannot say externalIP or LB IP.
        assert set(got.external_ips) | set(got.lb_ips) == set(svc.external_ips) | set(svc.lb_ips), label
        assert all(e.verdict == "REJECT" for e in got.entries if e.kind != "healthCheck"), label
        return
    assert not got.no_endpoints, label
    assert got.external_ips == tuple(svc.external_ips), label
    assert got.lb_ips == tuple(svc.lb_ips), label
    if got.endpoints:  # with iTP=Local and no local endpoint there is no chain to carry the affinity rules
        assert got.session_affinity_timeout == svc.session_affinity_timeout, label
    if svc.lb_ips:
        assert got.lb_source_ranges == tuple(svc.lb_source_ranges), label
    etp_local = external and svc.external_traffic_policy == "Local"
    externally = external or bool(svc.external_ips)
    if externally:
        assert got.external_traffic_policy == ("Local" if etp_local else "Cluster"), label
    else:
        assert got.external_traffic_policy is None, label
    itp_local = svc.internal_traffic_policy == "Local" and era != "xlb"  # the XLB era had no iTP
    if itp_local and not local:
        assert got.internal_traffic_policy == "Local" and got.no_local_endpoints, label
    else:
        assert got.internal_traffic_policy == ("Local" if itp_local else "Cluster"), label
    target = p.target_port or 0
    want = {(e.ip, target) for e in eps}
    want_local = {(e.ip, target) for e in local}
    cluster_chain_used = not itp_local or externally
    got_all = {(e.ip, e.port) for e in got.endpoints}
    got_local = {(e.ip, e.port) for e in got.endpoints if e.local}
    local_used = itp_local or etp_local
    if cluster_chain_used:
        assert got_all == want | (want_local if local_used else set()), label
        for e in got.endpoints:
            if e.in_cluster_chain:
                assert e.probability == pytest.approx(1 / len(eps), abs=1e-9), label
    if local_used:
        assert got_local == want_local, label
        for e in got.endpoints:
            if e.local:
                assert e.local_probability == pytest.approx(1 / len(local), abs=1e-9), label
    # Ways in.
    ci = next(e for e in got.entries if e.kind == "clusterIP")
    if itp_local:
        assert {r.endpoint for r in ci.reaches} == {_addr(*x) for x in want_local}, label
        if not local:
            assert ci.verdict == "DROP", label
    else:
        assert ci.verdict == "DNAT" and {r.endpoint for r in ci.reaches} == {_addr(*x) for x in want}, label
        assert ci.masquerade == MASQ_OFF_POD, label
    for entry in got.entries:
        if entry.kind not in ("nodePort", "externalIP", "loadBalancer"):
            continue
        if entry.kind == "externalIP" and not external:
            etp_here = False  # externalTrafficPolicy only applies to NodePort/LoadBalancer Services
        else:
            etp_here = etp_local
        if etp_here:
            if local:
                assert entry.verdict == "DNAT", (label, entry)
                assert {r.endpoint for r in entry.reaches} == {_addr(*x) for x in want_local}, (label, entry)
                assert entry.masquerade == MASQ_NEVER, (label, entry)
            elif era == "xlb" and entry.address is not None:
                # The KUBE-XLB era only marks the packet (KUBE-MARK-DROP); kubelet drops marked packets in INPUT
                # and OUTPUT, so an external/LB IP the node does not hold is forwarded, never DNATed.
                assert entry.verdict != "DNAT" and any("KUBE-MARK-DROP" in n for n in entry.notes), (label, entry)
            else:
                assert entry.verdict == "DROP", (label, entry)
            pod = next((pp for pp in entry.paths if pp.source == "pod"), None)
            firewalled = entry.kind == "loadBalancer" and svc.lb_source_ranges  # pods are filtered too
            assert pod is None or firewalled or {r.endpoint for r in pod.reaches} == {_addr(*x) for x in want}
        else:
            assert entry.verdict == "DNAT", (label, entry)
            assert {r.endpoint for r in entry.reaches} == {_addr(*x) for x in want}, (label, entry)
            if entry.kind == "externalIP" and era == "xlb":
                assert entry.masquerade == MASQ_OFF_POD, (label, entry)  # the XLB era masqueraded by CIDR
            else:
                assert entry.masquerade == MASQ_ALWAYS, (label, entry)
        if entry.kind == "loadBalancer" and svc.lb_source_ranges:
            outside = next(pp for pp in entry.paths if pp.source == "outside-source-ranges")
            if era == "xlb":  # marked for dropping only (see above)
                assert outside.verdict != "DNAT" and any("KUBE-MARK-DROP" in n for n in entry.notes), (label, entry)
            else:
                assert outside.verdict == "DROP", (label, entry)


def _addr(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


_COMMENT = re.compile(r' -m comment --comment (?:"(?:\\.|[^"\\])*"|\S+)')


@pytest.mark.parametrize("era", ["current", "xlb"])
def test_comment_less_dump_is_named_by_hash(era: str) -> None:
    services = random_services(7, False)
    text = _COMMENT.sub("", render(services, node_ips=[NODE_V4], pod_cidr="10.244.0.0/16", era=era))
    assert "--comment" not in text
    anonymous = build_view(load(text))
    with_endpoints = [s for s in services if s.endpoints]
    assert {s.identity for s in anonymous.services} <= {"chain"}
    # Named by their chain, or (no chain: no usable endpoint) by the address of their REJECT/DROP rule.
    assert all(s.namespace == "" and (s.name.startswith("KUBE-SVC-") or s.name.startswith("KUBE-SVL-")
                                      or s.no_endpoints or s.no_local_endpoints) for s in anonymous.services)
    named = build_view(load(text), cluster=_cluster(services))
    # Hash-named from their chains; those without chains (no usable endpoint) by address and port.
    assert {s.label for s in named.services if s.identity == "hash"} <= {
        _spn(s, p) for s in with_endpoints for p in s.ports}
    assert {s.identity for s in named.services} <= {"hash", "address"}
    assert {s.label for s in named.services} == {_spn(s, p) for s in services for p in s.ports}
    for s in named.services:
        if s.cluster_ip is not None:
            spec = next(x for x in services if x.namespace == s.namespace and x.name == s.name)
            assert s.cluster_ip == spec.cluster_ip
    # Chain labels cover every per-service chain, endpoint chains included.
    for s in named.services:
        for c in s.chains:
            assert named.chain_labels[c] == s.label
