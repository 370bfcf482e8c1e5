"""Properties of the nftables walk and layout (hypothesis), on rulesets bench/synth_nft.py writes for
kube-proxy's Services (bench.synth.scale: ClusterIP, NodePort, LoadBalancer with and without source ranges,
traffic policies, affinity, services without endpoints):

- outcome probabilities are exact and sum to 1;
- kube-proxy's transaction text and the kernel's listing of the same ruleset give the same answers: every trace
  (its JSON without line numbers) and the whole `services` JSON (without lines);
- sharing walks between branches and traces (memo.py) changes nothing: every trace equals a fresh tracer's with
  sharing off, path for path.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import synth
from bench.synth_nft import render_nft
from iptrace.dataplane import Packet, trace_to_json
from iptrace.nftables import DATAPLANE, load
from iptrace.nftables.model import Ruleset
from iptrace.nftables.walk import Tracer
from iptrace.render.services import services_to_json
from tests.dumps import analysis

NODE_IP = "192.168.0.10"
POD_CIDR = "10.244.0.0/16"
_LINE_RE = re.compile(r"line \d+")
SOURCES = ("10.244.3.3", NODE_IP, "127.0.0.1", "203.0.113.1", "198.51.100.7", "192.0.2.20")


@lru_cache(maxsize=32)
def forms(seed: int, n: int, endpoints: int) -> tuple[Ruleset, Ruleset, tuple[tuple[str, int, str], ...]]:
    """The transaction and the listing of one synthesized ruleset, and every (address, port, protocol) in it."""
    specs = synth.scale(n, endpoints, seed=seed)
    kw: dict[str, Any] = {"node_ips": [NODE_IP], "pod_cidr": POD_CIDR, "service_cidrs": ["10.96.0.0/12"]}
    tx = load(render_nft(specs, form="transaction", **kw), source="transaction")
    listing = load(render_nft(specs, form="list", **kw), source="listing")
    targets = []
    for s in specs:
        for p in s.ports:
            for ip in (s.cluster_ip, *s.external_ips, *s.lb_ips):
                targets.extend([(ip, p.port, p.protocol.lower()), (ip, p.port + 1, "tcp"), (ip, p.port, "udp")])
            if p.node_port:
                targets.append((NODE_IP, p.node_port, p.protocol.lower()))
        for e in s.endpoints[:1]:
            targets.append((e.ip, e.port, "tcp"))
    targets.append(("10.100.200.1", 80, "tcp"))  # unallocated, inside the service CIDR
    return tx, listing, tuple(targets)


def _without_lines(data: Any) -> Any:
    """JSON without line numbers (also those an assumption names: "line 12: …")."""
    if isinstance(data, dict):
        return {k: _without_lines(v) for k, v in data.items() if k not in ("line", "lines", "decided_by_line")}
    if isinstance(data, list):
        return [_without_lines(v) for v in data]
    if isinstance(data, str):
        return _LINE_RE.sub("line N", data)
    return data


@lru_cache(maxsize=32)
def tracers(seed: int, n: int, endpoints: int) -> tuple[Tracer, Tracer, Tracer]:
    tx, listing, _ = forms(seed, n, endpoints)
    return (Tracer(tx, node_ips=[NODE_IP]), Tracer(listing, node_ips=[NODE_IP]),
            Tracer(tx, node_ips=[NODE_IP], share=False))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 7), n=st.integers(1, 20), endpoints=st.integers(1, 5), data=st.data())
def test_traces_sum_to_one_and_agree_across_forms_and_sharing(seed: int, n: int, endpoints: int, data: Any) -> None:
    _, _, targets = forms(seed, n, endpoints)
    shared, listed, plain = tracers(seed, n, endpoints)
    picks = data.draw(st.lists(st.tuples(st.sampled_from(targets), st.sampled_from(SOURCES)), min_size=1,
                               max_size=12))
    for (ip, port, proto), src in picks:
        packet = Packet(src, ip, port, proto)
        trace = shared.trace(packet)
        assert sum(o.exact_probability for o in trace.outcomes) == 1
        assert abs(sum(o.probability for o in trace.outcomes) - 1) < 1e-9
        as_json = trace_to_json(trace)
        assert json.dumps(as_json) == json.dumps(trace_to_json(plain.trace(packet))), packet
        assert _without_lines(as_json) == _without_lines(trace_to_json(listed.trace(packet))), packet


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 7), n=st.integers(1, 12), endpoints=st.integers(1, 5), data=st.data())
def test_chain_plans_made_at_once_change_nothing(seed: int, n: int, endpoints: int, data: Any) -> None:
    """A chain's plan is normally made after many entries (chains.PLAN_AFTER); made at the second entry, every
    Service chain a trace meets is replayed from then on, and every trace still equals the unshared walk."""
    tx, _, targets = forms(seed, n, endpoints)
    eager = Tracer(tx, node_ips=[NODE_IP])
    eager.plan_after = 1
    plain = tracers(seed, n, endpoints)[2]
    picks = data.draw(st.lists(st.tuples(st.sampled_from(targets), st.sampled_from(SOURCES)), min_size=4,
                               max_size=24))
    for (ip, port, proto), src in picks * 2:
        packet = Packet(src, ip, port, proto)
        assert json.dumps(trace_to_json(eager.trace(packet))) == json.dumps(trace_to_json(plain.trace(packet))), \
            packet


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 7), n=st.integers(1, 12), endpoints=st.integers(1, 5), keep=st.integers(1, 6),
       data=st.data())
def test_chain_codes_dropped_and_made_again_change_nothing(seed: int, n: int, endpoints: int, keep: int,
                                                           data: Any) -> None:
    """The walker keeps the code of the chains it met lately only (chains.CODES_SIZE); keeping a handful, codes
    are dropped within a trace and made again in the next, and every trace (its steps' rule texts too) and
    the whole `services` JSON still equal those of the walk that keeps them all."""
    tx, listing, targets = forms(seed, n, endpoints)
    for rules, plain in ((tx, tracers(seed, n, endpoints)[2]), (listing, tracers(seed, n, endpoints)[1])):
        forgetful = Tracer(rules, node_ips=[NODE_IP])
        forgetful.codes_size = keep
        forgetful.plan_after = data.draw(st.sampled_from([1, 16]))
        picks = data.draw(st.lists(st.tuples(st.sampled_from(targets), st.sampled_from(SOURCES)), min_size=4,
                                   max_size=16))
        for (ip, port, proto), src in picks * 2:
            packet = Packet(src, ip, port, proto)
            assert json.dumps(trace_to_json(forgetful.trace(packet))) == \
                json.dumps(trace_to_json(plain.trace(packet))), packet
    whole = analysis(listing, node_ips=[NODE_IP])
    small = analysis(listing, node_ips=[NODE_IP])
    small.tracer.codes_size = keep
    assert json.dumps(services_to_json(small.view)) == json.dumps(services_to_json(whole.view))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 7), n=st.integers(1, 25), endpoints=st.integers(1, 4))
def test_services_json_is_the_same_for_transaction_and_listing(seed: int, n: int, endpoints: int) -> None:
    tx, listing, _ = forms(seed, n, endpoints)
    a = services_to_json(analysis(tx, node_ips=[NODE_IP]).view)
    b = services_to_json(analysis(listing, node_ips=[NODE_IP]).view)
    assert _without_lines(a) == _without_lines(b)
    assert len(a) == sum(len(s.ports) for s in synth.scale(n, endpoints, seed=seed) if s.cluster_ip)


def test_the_layout_names_every_service_port_by_its_chains() -> None:
    """nftables mode needs no cluster data to name a Service port: the chain names spell it out."""
    tx, _, _ = forms(3, 40, 3)
    layout = DATAPLANE.layout(tx, "ipv4")
    ports = layout.service_ports
    assert ports and all(p.name is not None and p.identity == "comment" for p in ports)
    want = {f"{s.namespace}/{s.name}:{p.name}" for s in synth.scale(40, 3, seed=3) for p in s.ports}
    assert {p.name for p in ports} == want


def test_endpoint_chains_that_dnat_only_the_port_are_walked_as_the_unshared_walk() -> None:
    # `meta l4proto tcp dnat to :8001` (nft loads it: the port changes, the address stays) in endpoint chains
    # like kube-proxy's: no address to replay them with, so their walks are never shared (one crashed).
    text = re.sub(r"dnat to [0-9.]+:", "dnat to :", render_nft(synth.scale(6, 3), node_ips=[NODE_IP],
                                                                 pod_cidr="10.244.0.0/16", form="list"))
    assert "dnat to :" in text
    ruleset = load(text)
    shared, plain = Tracer(ruleset, node_ips=[NODE_IP]), Tracer(ruleset, node_ips=[NODE_IP], share=False)
    targets = [(w.address or NODE_IP, w.port, w.protocol)
               for sp in DATAPLANE.layout(ruleset, "ipv4").service_ports for w in sp.ways_in]
    assert targets
    for ip, port, proto in targets:
        for src in SOURCES:
            packet = Packet(src, ip, port, proto)
            assert json.dumps(trace_to_json(shared.trace(packet))) == json.dumps(trace_to_json(plain.trace(packet)))
