"""One engine per dataplane: the Service view's verdicts, endpoints, shares and masquerading are what a trace of
a representative packet gives — for every way in of every Service port, every kind of client, every sample
dump and every corpus dump, iptables and nftables (every form of every nft fixture, every IP family). The traces
here come from a *fresh* tracer with memoisation off, so the view's shared walks (chainmemo, memo; nftables'
memo.py) and its aggregation are checked against the plain walk."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from iptrace.dataplane import Packet, Trace
from iptrace.errors import IptraceError
from iptrace.iptables import load
from iptrace.iptables.walk import Tracer
from iptrace.kube import shapes
from iptrace.kube.view import EXTERNAL, KubeView, view_node_ips
from iptrace.layout import HEALTH_CHECK
from iptrace.nftables import load as load_nft
from iptrace.nftables.model import Ruleset as NftRuleset
from iptrace.nftables.walk import Tracer as NftTracer
from tests.dumps import analysis
from tests.nft_corpus import FIXTURES as NFT_FIXTURES
from tests.nft_corpus import read as read_nft
from tests.nft_corpus import texts as nft_texts

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = sorted((ROOT / "sample_dumps").glob("*.txt"))
CORPUS = ROOT.parent / "shared" / "corpus"
FIXTURES = sorted((CORPUS / "kube-proxy").glob("*.json"))
REALWORLD = sorted((CORPUS / "realworld").glob("*.txt"))


@pytest.fixture(autouse=True)
def _shapes_from_the_first_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """Views are built from their ports' shapes wherever a dataplane gives one (iptrace.kube.shapes), from the
    first port on, not only after the first few: the plain walk checks those views too."""
    monkeypatch.setattr(shapes, "AFTER", 0)


def _summary(trace: Trace) -> tuple[str, dict[str, float], bool]:
    dnat = [o for o in trace.outcomes if o.verdict == "DNAT"]
    if dnat:
        shares: dict[str, float] = {}
        for o in dnat:
            shares[str(o.destination)] = shares.get(str(o.destination), 0.0) + o.probability
        return "DNAT", shares, any(o.masquerade for o in dnat)
    if not trace.outcomes:
        return "CONTINUE", {}, False
    return max(trace.outcomes, key=lambda o: o.probability).verdict, {}, False


def fresh_tracer(ruleset: Any, node_ips: list[str], pod_cidrs: tuple[str, ...]) -> Any:
    """A tracer of the ruleset's own dataplane with its sharing of walks (memo) off."""
    if isinstance(ruleset, NftRuleset):
        return NftTracer(ruleset, node_ips=node_ips, pod_cidrs=pod_cidrs, share=False)
    return Tracer(ruleset, node_ips=node_ips, pod_cidrs=pod_cidrs, share=False)


def check_view_against_traces(ruleset: Any, node_ips: list[str], family: str | None = None) -> int:
    """Every way in × kind of client of the view against a plain trace; returns how many were compared."""
    a = analysis(ruleset, node_ips=node_ips, family=family)
    view: KubeView = a.view
    assert view.clients is not None or not view.services
    fresh = fresh_tracer(ruleset, view_node_ips(a.layout, node_ips), a.layout.pod_cidrs)
    compared = 0
    for sp in view.services:
        for e in sp.entries:
            if e.kind == HEALTH_CHECK:
                continue
            assert view.clients is not None
            dst, sources = view.clients.packets(e, sp.lb_source_ranges, view.family)  # type: ignore[arg-type]
            others = {p.source: p for p in e.paths}
            for kind, src in sources:
                verdict, shares, masq = _summary(fresh.trace(Packet(src, dst, e.port, e.protocol)))
                where = f"{ruleset.source}: {sp.label} {e.kind} {e.label} from {kind} ({src})"
                if kind == EXTERNAL:
                    assert e.verdict == verdict, where
                    assert {r.endpoint: r.probability for r in e.reaches} == pytest.approx(shares), where
                elif kind in others:
                    p = others[kind]
                    assert p.verdict == verdict, where
                    assert {r.endpoint: r.probability for r in p.reaches} == pytest.approx(shares), where
                else:  # listed only when it fares differently: same verdict and endpoints as the main client
                    assert e.verdict == verdict and {r.endpoint for r in e.reaches} == set(shares), where
                if verdict == "DNAT" and kind != "outside-source-ranges":
                    assert (kind in e.masquerade_sources) == masq, where
                compared += 1
    # The endpoint list is the cluster chain's own split (the local chain's for local-only endpoints).
    by_chain = {c: sp for sp in view.services for c in sp.chains}
    for lp in a.layout.service_ports:
        for chain, local in ((lp.cluster_chain, False), (lp.local_chain, True)):
            if chain is None or chain not in by_chain:
                continue
            sp = by_chain[chain]
            probe = Packet(view.clients.external, view.clients.node_address, 1, lp.protocol)  # type: ignore[union-attr]
            _, shares, _ = _summary(fresh.trace_chain(chain, probe))
            listed = {ep.address: (ep.local_probability if local else ep.probability) for ep in sp.endpoints
                      if (ep.local if local else ep.in_cluster_chain)}
            assert listed == pytest.approx(shares), f"{ruleset.source}: {sp.label} endpoints of {chain}"
    return compared


def _node_ips(ruleset: Any, ips: list[str]) -> list[str]:
    family_v6 = ruleset.family == "ipv6"
    return [ip for ip in ips if (":" in ip) == family_v6]


@pytest.mark.skipif(not SAMPLES, reason="sample_dumps/*.txt not generated yet")
@pytest.mark.parametrize("path", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_view_equals_traces_on_samples(path: Path) -> None:
    scenarios = json.loads((ROOT / "sample_dumps" / "scenarios.json").read_text())
    node_ips = scenarios.get(path.name, {}).get("node_ips", [])
    ruleset = load(path.read_text(), source=path.name)
    compared = check_view_against_traces(ruleset, _node_ips(ruleset, list(node_ips)))
    assert compared or not analysis(ruleset).view.services


@pytest.mark.skipif(not FIXTURES, reason="kube-proxy corpus not found (../shared/corpus)")
@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_view_equals_traces_on_kube_proxy_fixtures(path: Path) -> None:
    fx = json.loads(path.read_text())
    if not fx.get("dump"):
        pytest.skip("fixture without a dump")
    ruleset = load(fx["dump"], source=path.name)
    check_view_against_traces(ruleset, _node_ips(ruleset, fx.get("node_ips") or fx.get("tracer_local_ips") or []))


@pytest.mark.skipif(not REALWORLD, reason="realworld corpus not found (../shared/corpus)")
@pytest.mark.parametrize("path", REALWORLD, ids=[p.stem for p in REALWORLD])
def test_view_equals_traces_on_realworld_dumps(path: Path) -> None:
    try:
        ruleset = load(path.read_text(errors="replace"), source=path.name, lenient=True)
    except IptraceError:
        pytest.skip("not readable even leniently (tests/test_services.py checks the error)")
    check_view_against_traces(ruleset, [])


NFT_CASES = [(f, form) for f in NFT_FIXTURES for form in nft_texts(read_nft(f))]


@pytest.mark.skipif(not NFT_CASES, reason="kube-proxy nftables corpus not found (../shared/corpus/kube-proxy-nft)")
@pytest.mark.parametrize(("path", "form"), NFT_CASES, ids=[f"{p.stem}-{form}" for p, form in NFT_CASES])
def test_view_equals_traces_on_kube_proxy_nft_fixtures(path: Path, form: str) -> None:
    data = read_nft(path)
    ruleset = load_nft(nft_texts(data)[form], source=path.name)
    compared = 0
    for family in ruleset.families:
        ips = [ip for ip in data["node_ips"] if (":" in ip) == (family == "ipv6")]
        compared += check_view_against_traces(ruleset, ips, family)
    assert compared or not any(analysis(ruleset, family=f).view.services for f in ruleset.families)


@pytest.mark.parametrize("name", ["nodeport-fb-backends.txt", "flannel-and-kube-proxy.txt", "xlb-era.txt",
                                  "loadbalancer-source-ranges.txt", "session-affinity.txt", "ipv6.txt",
                                  "etp-local-no-local-endpoints.txt", "no-endpoints.txt",
                                  "large-cluster-no-comments.txt", "flannel-and-kube-proxy-nft.nft",
                                  "dual-stack-nft.nft", "etp-local-with-endpoints-nft.nft"])
def test_port_facts_are_the_views_values(name: str) -> None:
    """explain reads a port's PortFacts where its view is not built: every value they have is the view's, and
    their ways in are the view's entries but for the traces."""
    from dataclasses import fields as dataclass_fields

    from iptrace.dataplanes import load as load_any
    from iptrace.kube.analysis import analyse
    from iptrace.kube.view import PortFacts

    dataplane, ruleset = load_any(Path("sample_dumps", name).read_text(), source=name)
    for family in ruleset.families:
        facts_of = analyse(dataplane, ruleset, family).port_facts
        analysis = analyse(dataplane, ruleset, family)
        for key in analysis.layout.keys:
            facts, view = facts_of(key), analysis.port_view(key)
            assert isinstance(facts, PortFacts)
            for f in dataclass_fields(PortFacts):
                if f.name not in ("entries", "_endpoints"):
                    assert getattr(facts, f.name) == getattr(view, f.name), (key, f.name)
            assert facts.endpoints == view.endpoints, key
            assert facts.label == view.label
            assert [(w.kind, w.address, w.port, w.lines) for w in facts.entries] == \
                [(e.kind, e.address, e.port, e.lines) for e in view.entries]


@pytest.mark.parametrize("name", ["nodeport-fb-backends.txt", "etp-local-with-endpoints-nft.nft"])
def test_port_facts_walk_for_their_endpoints_when_read(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A port's PortFacts walk its chains for its endpoints on their first read, once, not when made (most
    explain questions read a Service's port and protocol only)."""
    from iptrace.dataplanes import load as load_any
    from iptrace.kube.analysis import analyse

    dataplane, ruleset = load_any(Path("sample_dumps", name).read_text(), source=name)
    analysis = analyse(dataplane, ruleset)
    walked: list[str] = []
    real = type(analysis.tracer).trace_chain

    def counted(tracer: Any, chain: str, *args: Any, **kwargs: Any) -> Trace:
        walked.append(chain)
        return real(tracer, chain, *args, **kwargs)

    monkeypatch.setattr(type(analysis.tracer), "trace_chain", counted)
    keys = [k for k in analysis.layout.keys if analysis.layout.service_port(k).cluster_chain]
    assert keys
    facts = [analysis.port_facts(k) for k in keys]
    assert walked == []
    first = [f.endpoints for f in facts]
    assert walked and any(first)
    count = len(walked)
    assert [f.endpoints for f in facts] == first and len(walked) == count
    assert first == [analysis.port_view(k).endpoints for k in keys]


def test_packet_cache_is_bounded_and_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The view's packets are shared process-wide by (source, destination, port, protocol): a view built with a
    cache that keeps starting again equals one built with a fresh cache, and the cache never outgrows its limit."""
    from iptrace.kube import view as view_module

    path = ROOT / "sample_dumps" / "loadbalancer-source-ranges.txt"
    monkeypatch.setattr(view_module, "_PACKETS", {})
    fresh = analysis(load(path.read_text(), source=path.name)).view
    assert view_module._PACKETS, "the view's packets went through the cache"
    packet = next(iter(view_module._PACKETS.values()))
    shared = SimpleNamespace(_own_addresses=frozenset())  # (a builder of a node whose own addresses it is not)
    assert view_module._Builder.packet(shared, packet.src, packet.dst, packet.dport, packet.proto) is packet  # type: ignore[arg-type]
    monkeypatch.setattr(view_module, "_PACKETS", {})
    monkeypatch.setattr(view_module, "PACKETS_LIMIT", 3)
    again = analysis(load(path.read_text(), source=path.name)).view
    assert len(view_module._PACKETS) <= 3
    assert again.services == fresh.services


def test_packets_of_a_nodes_own_addresses_stay_with_its_view(monkeypatch: pytest.MonkeyPatch) -> None:
    """A packet from or to the node's own address (its NodePorts, its node client) is kept by that node's view, not
    process-wide: another node of a fleet never asks for it; the view is the one built with every packet shared."""
    from bench import fleet, synth
    from iptrace import dataplanes
    from iptrace.kube import view as view_module
    from iptrace.kube.analysis import analyse

    text = fleet.node_dump(synth.scale(20, 2, 0), 0)
    own = fleet.node_ip(0)

    def view(own_kept: bool) -> Any:
        if not own_kept:
            monkeypatch.setattr(view_module._Builder, "packet", _shared_packet)
        dataplane, ruleset = dataplanes.load(text)
        return analyse(dataplane, ruleset, node_ips=[own]).view

    monkeypatch.setattr(view_module, "_PACKETS", {})
    got = view(True)
    assert view_module._PACKETS
    assert not any(own in key[:2] for key in view_module._PACKETS)
    monkeypatch.setattr(view_module, "_PACKETS", {})
    shared = view(False)
    assert any(own in key[:2] for key in view_module._PACKETS)
    assert got.services == shared.services


def _shared_packet(self: Any, src: str, dst: str, port: int, proto: str) -> Packet:
    from iptrace.kube import view as view_module

    return view_module._PACKETS.setdefault((src, dst, port, proto), view_module.packet_of(src, dst, port, proto))
