"""Sharing the walk of load-balancing chains written alike (iptrace/nftables/splits.py: kube-proxy's service and
local chains, equal but for the Service's address and the endpoint chains their numgen map goes to) changes
nothing: over the nft sample dumps, kube-proxy's own fixtures (../shared/corpus/kube-proxy-nft), synthesized
Services and hand-written rulesets that break the shape's conditions, every way in from every kind of client
(endpoints included) and every load-balancing chain entered directly traces the same with sharing as a tracer
with sharing off — path, chains and Service label of every outcome —, the whole Service view too; and the
sharing does happen (a later Service's chain replays a walk recorded on an earlier one)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import synth
from bench.synth_nft import render_nft
from iptrace.dataplane import Packet, Trace, trace_to_json
from iptrace.kube.analysis import Analysis, chain_labels
from iptrace.kube.view import view_node_ips
from iptrace.nftables import DATAPLANE, load, splits
from iptrace.nftables.model import Ruleset
from iptrace.nftables.state import State
from iptrace.nftables.walk import Tracer
from iptrace.render.services import services_to_json
from tests.nft_corpus import FIXTURES, NODE_IP, SAMPLES, read, sharing_probes, texts
from tests.nft_corpus import client_sources as _sources


def _doc(trace: Trace) -> str:
    """A trace as JSON, with each outcome's chains and Service label (which the JSON leaves out)."""
    return json.dumps([trace_to_json(trace), [(list(o.chains), o.service) for o in trace.outcomes]])


class _Counting:
    """Counts walks replayed on another member than the one they were recorded on (splits.record/replay)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.by: dict[int, Any] = {}
        self.kept: list[Any] = []
        self.across = 0
        record, replay = splits.record, splits.replay

        def counted_record(results: Any, before: Any, member: Any, codes: Any) -> Any:
            found = record(results, before, member, codes)
            if found is not None:
                self.by[id(found)] = member
                self.kept.append(found)
            return found

        def counted_replay(found: Any, s: Any, member: Any, codes: Any, ref: Any) -> Any:
            if self.by.get(id(found), member) is not member:
                self.across += 1
            return replay(found, s, member, codes, ref)

        monkeypatch.setattr(splits, "record", counted_record)
        monkeypatch.setattr(splits, "replay", counted_replay)


def _endpoints(tracer: Tracer, layout: Any) -> list[str]:
    """A few endpoint addresses (clients that hairpin), read off the first load-balancing chains."""
    out: list[str] = []
    for sp in layout.service_ports:
        probe = next((w for w in sp.ways_in if w.address), None)
        if sp.cluster_chain is None or probe is None:
            continue
        for o in tracer.trace_chain(sp.cluster_chain, Packet(probe.address, probe.address, probe.port,
                                                              sp.protocol)).outcomes:
            if o.destination is not None:
                out.append(o.destination.rsplit(":", 1)[0].strip("[]"))
        if len(out) >= 4:
            break
    return out[:4]


def _compare(ruleset: Ruleset, node_ips: list[str]) -> None:
    """Every way in (from every kind of client and some endpoints) and every load-balancing chain entered
    directly, twice over, shared against unshared."""
    shared, plain = Tracer(ruleset, node_ips=node_ips), Tracer(ruleset, node_ips=node_ips, share=False)
    compared = 0
    for _ in range(2):
        for family in ruleset.families:
            layout = DATAPLANE.layout(ruleset, family)
            v6 = family == "ipv6"
            node = next((ip for ip in node_ips if (":" in ip) == v6), "fd00::10" if v6 else NODE_IP)
            for chain, packet in sharing_probes(layout, v6, node, _endpoints(plain, layout)):
                if chain is None:
                    assert _doc(shared.trace(packet)) == _doc(plain.trace(packet)), packet
                    compared += 1
                else:
                    assert _doc(shared.trace_chain(chain, packet)) == _doc(plain.trace_chain(chain, packet)), \
                        (chain, packet)
    assert compared


def _view_json(ruleset: Ruleset, node_ips: list[str], share: bool) -> Any:
    family = ruleset.families[0]
    layout = DATAPLANE.layout(ruleset, family)
    view_ips = view_node_ips(layout, node_ips)
    tracer = Tracer(ruleset, node_ips=view_ips, pod_cidrs=layout.pod_cidrs, names=chain_labels(layout),
                    share=share)
    return services_to_json(Analysis(DATAPLANE, ruleset, family, layout, tracer, node_ips, view_ips).view)


@pytest.mark.parametrize("path", SAMPLES, ids=[p.name for p in SAMPLES])
def test_sample_dumps_trace_the_same_with_and_without_sharing(path: Path) -> None:
    ruleset = load(path.read_text(), source=str(path))
    _compare(ruleset, [NODE_IP])
    assert _view_json(ruleset, [NODE_IP], True) == _view_json(ruleset, [NODE_IP], False)


@pytest.mark.skipif(not FIXTURES, reason="kube-proxy nftables corpus not found (../shared/corpus/kube-proxy-nft)")
@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_corpus_fixtures_trace_the_same_with_and_without_sharing(path: Path) -> None:
    data = read(path)
    for text in texts(data).values():
        ruleset = load(text)
        _compare(ruleset, list(data["node_ips"]))
        assert _view_json(ruleset, list(data["node_ips"]), True) == \
            _view_json(ruleset, list(data["node_ips"]), False)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_synthesized_services_share_split_walks_and_trace_the_same(seed: int, monkeypatch: pytest.MonkeyPatch
                                                                  ) -> None:
    """~30 Services of every kind (affinity's dynamic sets and updates among them: those are walked), with a
    few endpoints each: the service chains of one shape replay walks recorded on the first."""
    specs = synth.scale(30, 3, seed=seed)
    text = render_nft(specs, node_ips=[NODE_IP], pod_cidr="10.244.0.0/16", service_cidrs=["10.96.0.0/12"],
                      form="list")
    ruleset = load(text)
    counting = _Counting(monkeypatch)
    _compare(ruleset, [NODE_IP])
    assert counting.across > 0
    assert _view_json(ruleset, [NODE_IP], True) == _view_json(ruleset, [NODE_IP], False)


def test_a_service_chain_entered_by_an_endpoint_replays_its_hairpin() -> None:
    """A client that is one of the Service's own endpoints (kube-proxy's hairpin: `ip saddr EP jump
    mark-for-masquerade`) keys differently from one that is not, for every member of the shape."""
    specs = synth.scale(12, 3, seed=5)
    ruleset = load(render_nft(specs, node_ips=[NODE_IP], pod_cidr="10.244.0.0/16", service_cidrs=["10.96.0.0/12"],
                              form="list"))
    shared, plain = Tracer(ruleset, node_ips=[NODE_IP]), Tracer(ruleset, node_ips=[NODE_IP], share=False)
    clients = [e.ip for s in specs for e in s.endpoints]
    for s in specs:
        if not s.cluster_ip:
            continue
        for p in s.ports:
            for src in clients[:6] + [e.ip for e in s.endpoints]:
                packet = Packet(src, s.cluster_ip, p.port, p.protocol.lower())
                assert _doc(shared.trace(packet)) == _doc(plain.trace(packet)), packet


_TABLE = """table ip t {{
    chain pre {{
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr 10.96.0.1 jump svc-a
        ip daddr 10.96.0.2 jump svc-b
        ip daddr 10.96.0.3 jump svc-c
    }}
    chain post {{
        type nat hook postrouting priority srcnat; policy accept;
        meta mark & 0x00004000 == 0x00004000 masquerade
    }}
    chain mark {{
        meta mark set meta mark | 0x00004000
    }}
{chains}
}}
"""


def _endpoint(name: str, addr: str, extra: str = "") -> str:
    return (f"    chain {name} {{\n        ip saddr {addr} jump mark\n{extra}"
            f"        meta l4proto tcp dnat to {addr}:8080\n    }}\n")


def _service(name: str, addr: str, targets: list[str], first: str = "") -> str:
    elements = ", ".join(f"{i} : goto {t}" for i, t in enumerate(targets))
    return (f"    chain {name} {{\n{first}        ip daddr {addr} ip saddr != 10.244.0.0/16 jump mark\n"
            f"        numgen random mod {len(targets)} vmap {{ {elements} }}\n    }}\n")


_RULESETS = {
    # three services of one shape: the second and third replay the first's walks
    "alike": "".join([
        _endpoint("ep-a1", "10.244.1.1"), _endpoint("ep-a2", "10.244.1.2"),
        _endpoint("ep-b1", "10.244.2.1"), _endpoint("ep-b2", "10.244.2.2"),
        _endpoint("ep-c1", "10.244.3.1"), _endpoint("ep-c2", "10.244.3.2"),
        _service("svc-a", "10.96.0.1", ["ep-a1", "ep-a2"]), _service("svc-b", "10.96.0.2", ["ep-b1", "ep-b2"]),
        _service("svc-c", "10.96.0.3", ["ep-c1", "ep-c2"])]),
    # an endpoint chain jumped to by a rule of the service chain too: no shape
    "target reached otherwise": "".join([
        _endpoint("ep-a1", "10.244.1.1"), _endpoint("ep-a2", "10.244.1.2"),
        _endpoint("ep-b1", "10.244.2.1"), _endpoint("ep-b2", "10.244.2.2"),
        _endpoint("ep-c1", "10.244.3.1"), _endpoint("ep-c2", "10.244.3.2"),
        _service("svc-a", "10.96.0.1", ["ep-a1", "ep-a2"], "        ip saddr 10.0.0.9 jump ep-a1\n"),
        _service("svc-b", "10.96.0.2", ["ep-b1", "ep-b2"], "        ip saddr 10.0.0.9 jump ep-a1\n"),
        _service("svc-c", "10.96.0.3", ["ep-c1", "ep-c2"], "        ip saddr 10.0.0.9 jump ep-a1\n")]),
    # an endpoint chain whose walk assumes (an interface not given): walked every time
    "assumption": "".join([
        _endpoint("ep-a1", "10.244.1.1", '        iifname "eth9" drop\n'),
        _endpoint("ep-a2", "10.244.1.2", '        iifname "eth9" drop\n'),
        _endpoint("ep-b1", "10.244.2.1", '        iifname "eth9" drop\n'),
        _endpoint("ep-b2", "10.244.2.2", '        iifname "eth9" drop\n'),
        _endpoint("ep-c1", "10.244.3.1"), _endpoint("ep-c2", "10.244.3.2"),
        _service("svc-a", "10.96.0.1", ["ep-a1", "ep-a2"]), _service("svc-b", "10.96.0.2", ["ep-b1", "ep-b2"]),
        _service("svc-c", "10.96.0.3", ["ep-c1", "ep-c2"])]),
    # one endpoint chain shared by two services, one service whose draw goes to the same chain twice
    "shared endpoints": "".join([
        _endpoint("ep-a1", "10.244.1.1"), _endpoint("ep-a2", "10.244.1.2"), _endpoint("ep-c1", "10.244.3.1"),
        _service("svc-a", "10.96.0.1", ["ep-a1", "ep-a2"]), _service("svc-b", "10.96.0.2", ["ep-a2", "ep-a1"]),
        _service("svc-c", "10.96.0.3", ["ep-c1", "ep-c1"])]),
    # endpoint chains of different skeletons (one drops from a source) at one position
    "mixed skeletons": "".join([
        _endpoint("ep-a1", "10.244.1.1"), _endpoint("ep-a2", "10.244.1.2"),
        _endpoint("ep-b1", "10.244.2.1", "        ip saddr 203.0.113.9 drop\n"), _endpoint("ep-b2", "10.244.2.2"),
        _endpoint("ep-c1", "10.244.3.1"), _endpoint("ep-c2", "10.244.3.2"),
        _service("svc-a", "10.96.0.1", ["ep-a1", "ep-a2"]), _service("svc-b", "10.96.0.2", ["ep-b1", "ep-b2"]),
        _service("svc-c", "10.96.0.3", ["ep-c1", "ep-c2"])]),
}


@pytest.mark.parametrize("name", list(_RULESETS))
def test_hand_written_splits_trace_the_same_with_and_without_sharing(name: str, monkeypatch: pytest.MonkeyPatch
                                                                     ) -> None:
    counting = _Counting(monkeypatch)
    ruleset = load(_TABLE.format(chains=_RULESETS[name]))
    shared, plain = Tracer(ruleset, node_ips=[NODE_IP]), Tracer(ruleset, node_ips=[NODE_IP], share=False)
    sources = ["10.244.1.1", "10.244.2.2", "10.244.3.1", "10.244.9.9", "10.0.0.9", "203.0.113.9", NODE_IP]
    for _ in range(2):
        for dst in ("10.96.0.1", "10.96.0.2", "10.96.0.3"):
            for src in sources:
                packet = Packet(src, dst, 80, "tcp")
                assert _doc(shared.trace(packet)) == _doc(plain.trace(packet)), packet
                for chain in ("svc-a", "svc-b", "svc-c"):
                    assert _doc(shared.trace_chain(chain, packet)) == _doc(plain.trace_chain(chain, packet)), \
                        (chain, packet)
    if name in ("alike", "mixed skeletons"):
        assert counting.across > 0  # recorded on one member, replayed on the others
    if name == "assumption":  # (svc-a and svc-b: their endpoint chains test an interface the trace does not know)
        member = next(c.split for c in shared._codes.values() if c is not None and c.name == "svc-a")
        assert member.shape.memo and all(found is None for found in member.shape.memo.values())
    if name == "target reached otherwise":
        assert all(code.split is None for code in shared._codes.values()
                   if code is not None and code.name.startswith("svc-"))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 50), n=st.integers(1, 15), endpoints=st.integers(1, 6), keep=st.sampled_from([3, 8192]),
       data=st.data())
def test_random_services_and_clients_trace_the_same_with_and_without_sharing(seed: int, n: int, endpoints: int,
                                                                            keep: int, data: Any) -> None:
    """Synthesized Services of every kind, traced in a random order by random clients (pods, the node, outside
    clients, the Services' own endpoints), through every way in and through their load-balancing chains
    directly; the walker keeping few chain codes or many (splits' members and shapes outlive their codes)."""
    specs = synth.scale(n, endpoints, seed=seed)
    ruleset = load(render_nft(specs, node_ips=[NODE_IP], pod_cidr="10.244.0.0/16", service_cidrs=["10.96.0.0/12"],
                              form=data.draw(st.sampled_from(["list", "transaction"]))))
    shared, plain = Tracer(ruleset, node_ips=[NODE_IP]), Tracer(ruleset, node_ips=[NODE_IP], share=False)
    shared.codes_size = keep
    layout = DATAPLANE.layout(ruleset, "ipv4")
    clients = [*_sources(False, NODE_IP), *(e.ip for s in specs for e in s.endpoints[:2])]
    asks = [(None, w.address or NODE_IP, w.port, w.protocol) for _k, w in layout.ways]
    for sp in layout.service_ports:
        probe = next((w for w in sp.ways_in if w.address), None)
        if probe is not None:
            asks.extend((chain, probe.address, probe.port, sp.protocol) for chain in (sp.cluster_chain, sp.local_chain)
                        if chain is not None)
    picks = data.draw(st.lists(st.tuples(st.sampled_from(asks), st.sampled_from(clients)), min_size=1, max_size=30))
    for (chain, dst, port, proto), src in picks * 2:
        packet = Packet(src, dst, port, proto)
        if chain is None:
            assert _doc(shared.trace(packet)) == _doc(plain.trace(packet)), packet
        else:
            assert _doc(shared.trace_chain(chain, packet)) == _doc(plain.trace_chain(chain, packet)), (chain, packet)


def test_a_branch_is_a_copy_with_the_restored_fields() -> None:
    """State.branch (a replayed split's branches) sets every slot as copy() does but for the restored ones."""
    s = State(6, "fd00::1", "fd00::2", 1234, 80, "tcp", "eth0")
    for i, name in enumerate(State.__slots__):
        setattr(s, name, ("value", i))  # every slot distinct, so that a slot copied from the wrong one shows
    restored = ("mark", "ct_mark", "notrack", "snat", "masq", "hook", "in_iface", "out_iface")
    values = tuple(("restored", name) for name in restored)
    made = s.branch(*values)
    expected = s.copy()
    for name, value in zip(restored, values, strict=True):
        setattr(expected, name, value)
    assert made is not s
    assert {n: getattr(made, n) for n in State.__slots__} == {n: getattr(expected, n) for n in State.__slots__}
