"""Sharing the walk of chains written alike (iptrace/nftables/skeleton.py: kube-proxy's endpoint chains, equal
but for the endpoint's address and port) changes nothing: over the nft sample dumps, kube-proxy's own fixtures
(../shared/corpus/kube-proxy-nft) and synthesized Services, every way in from every kind of client, and every
load-balancing chain entered directly, traces the same with sharing as a tracer with sharing off, path for path
— and the sharing does happen (a later endpoint chain replays a walk recorded on an earlier one)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import synth
from bench.synth_nft import render_nft
from iptrace.dataplane import trace_to_json
from iptrace.nftables import DATAPLANE, load
from iptrace.nftables.model import Ruleset
from iptrace.nftables.skeleton import parameters
from iptrace.nftables.walk import Tracer
from tests.nft_corpus import FIXTURES, NODE_IP, SAMPLES, read, sharing_probes, texts


def _compare(ruleset: Ruleset, node_ips: list[str]) -> int:
    """Every way in and load-balancing chain, shared against unshared; the number of skeleton replays."""
    shared, plain = Tracer(ruleset, node_ips=node_ips), Tracer(ruleset, node_ips=node_ips, share=False)
    compared = 0
    for family in ruleset.families:
        layout = DATAPLANE.layout(ruleset, family)
        v6 = family == "ipv6"
        node = next((ip for ip in node_ips if (":" in ip) == v6), "fd00::10" if v6 else NODE_IP)
        endpoints = [w.address for _k, w in layout.ways if w.address][:3]
        for chain, packet in sharing_probes(layout, v6, node, endpoints):
            if chain is None:
                assert json.dumps(trace_to_json(shared.trace(packet))) == \
                    json.dumps(trace_to_json(plain.trace(packet))), packet
                compared += 1
            else:
                assert json.dumps(trace_to_json(shared.trace_chain(chain, packet))) == \
                    json.dumps(trace_to_json(plain.trace_chain(chain, packet))), (chain, packet)
    assert compared
    return sum(len(sk.memo) for sk in shared._skeletons._by_signature.values() if sk is not None)


@pytest.mark.parametrize("path", SAMPLES, ids=[p.name for p in SAMPLES])
def test_sample_dumps_trace_the_same_with_and_without_sharing(path: Path) -> None:
    ruleset = load(path.read_text(), source=str(path))
    _compare(ruleset, [NODE_IP])


@pytest.mark.skipif(not FIXTURES, reason="kube-proxy nftables corpus not found (../shared/corpus/kube-proxy-nft)")
@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_corpus_fixtures_trace_the_same_with_and_without_sharing(path: Path) -> None:
    data = read(path)
    for text in texts(data).values():
        _compare(load(text), list(data["node_ips"]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_synthesized_services_share_endpoint_walks_and_trace_the_same(seed: int) -> None:
    specs = synth.scale(30, 4, seed=seed)
    text = render_nft(specs, node_ips=[NODE_IP], pod_cidr="10.244.0.0/16", service_cidrs=["10.96.0.0/12"],
                      form="list")
    recorded = _compare(load(text), [NODE_IP])
    endpoint_chains = sum(len(s.endpoints) for s in specs for _ in s.ports)
    assert 0 < recorded < endpoint_chains  # walks recorded once per skeleton and key, replayed on the others


def _read_from_items(walker: Tracer, code: object) -> object:
    """What Skeletons.of answers when a chain's skeleton is read from its rules' items alone."""
    sk = walker._skeletons._by_items(code)
    return None if sk is None else (sk, *parameters(code.chain.rules))  # type: ignore[attr-defined]


@pytest.mark.parametrize("path", [*SAMPLES, None], ids=[*(p.name for p in SAMPLES), "synthesized"])
def test_skeleton_read_from_shapes_is_the_one_read_from_items(path: Path | None) -> None:
    """A chain's skeleton read from its rules' shapes and values (the loader's lazy rules) is the one its items
    give: the same Skeleton object, the same parameter tests and DNATs, or none for both."""
    if path is None:
        text = render_nft(synth.scale(30, 4, seed=3), node_ips=[NODE_IP], pod_cidr="10.244.0.0/16",
                          service_cidrs=["10.96.0.0/12"], form="list")
        ruleset = load(text)
    else:
        ruleset = load(path.read_text(), source=str(path))
    walker = Tracer(ruleset, node_ips=[NODE_IP])
    quick = 0
    for table in ruleset.tables:
        table_code = walker._tables[(table.family, table.name)]
        for chain in table.chains:
            code = walker._chain(table_code, chain.name)
            assert code is not None
            lazy = bool(chain.rules) and all(r._lazy is not None for r in chain.rules)
            built = lazy and any(_has_items(r) for r in chain.rules)
            found = walker._skeletons.of(code)
            if lazy and not built and found is not None and not any(_has_items(r) for r in chain.rules):
                quick += 1  # read without building the items
            expected = _read_from_items(walker, code)
            if found is None or expected is None:
                assert found is expected, chain.name
            else:
                assert found[0] is expected[0] and tuple(found[1:]) == tuple(expected[1:]), chain.name  # type: ignore[index]
    if path is None:
        assert quick  # the endpoint chains after the first of their shape


def _has_items(rule: object) -> bool:
    try:
        object.__getattribute__(rule, "items")
    except AttributeError:
        return False
    return True
