"""A Service port's own rules written by plan (portrules._compile: generated code, one function per builder) note
what `portshape._Port.item` notes reading the rules' items — the same addresses, ports, jumps, sets and own
networks, numbered in the same order — and tell rules apart exactly as the items do: on every own rule of the
nft samples, corpus forms and synthesized listings (session affinity, NodePorts, IPv6)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest

from bench import synth
from bench.synth import EndpointSpec, PortSpec, ServiceSpec
from bench.synth_nft import render_nft
from iptrace.nftables import load, portrules
from iptrace.nftables.model import Rule
from iptrace.nftables.portshape import _Port
from tests import nft_corpus

_OWN = ("service-", "svc-", "local-", "external-", "firewall-", "endpoint-")


def _own_rules(text: str) -> Iterator[tuple[tuple[str, ...], list[Rule]]]:
    """(the names of a table's chains, the rules of its Service ports' own chains)."""
    for table in load(text).tables:
        yield (tuple(c.name for c in table.chains),
               [rule for chain in table.chains if chain.name.startswith(_OWN) for rule in chain.rules])


def _noted(port: _Port) -> tuple[Any, ...]:
    return (list(port.addresses.items()), list(port.ports.items()), sorted(port.jumps), list(port.sets.items()),
            port.own_networks)


def _agree(text: str) -> int:
    """Every planned rule's answers and notes agree with its items'; how many rules were planned."""
    planned = 0
    by_builder: dict[Any, set[tuple[Any, Any]]] = defaultdict(set)
    for names, rules in _own_rules(text):
        own = names[::2]  # (some chains own, others not: jumps to both are written; numbers grow over the table)
        by_plan, by_items = _Port(None, own), _Port(None, own)  # type: ignore[arg-type]
        for rule in rules:
            lazy = rule._lazy
            if lazy is None:
                continue
            ops = portrules.plan(lazy[0], len(lazy))
            if ops is None:
                continue
            planned += 1
            try:
                answer = ops(by_plan, lazy)
            except portrules.Decline:
                answer = portrules.Decline
            try:
                items = tuple([by_items.item(i) for i in rule.peek_items()])
            except portrules.Decline:
                items = portrules.Decline
            assert (answer is portrules.Decline) == (items is portrules.Decline), rule.text
            assert _noted(by_plan) == _noted(by_items), rule.text
            by_builder[lazy[0]].add((answer, items))
    for pairs in by_builder.values():  # (equal answers exactly when equal items)
        assert len({a for a, _ in pairs}) == len(pairs) == len({i for _, i in pairs})
    return planned


def _synthesized(affinity: bool, **kwargs: Any) -> str:
    specs = synth.scale(30, 3, 5)
    if affinity:
        for spec in specs:
            spec.session_affinity_timeout = 10800
    return render_nft(specs, node_ips=["192.168.0.10"], pod_cidr="10.244.0.0/16", service_cidrs=["10.96.0.0/12"],
                      **kwargs)


@pytest.mark.parametrize("form", ["list", "transaction"])
@pytest.mark.parametrize("affinity", [False, True])
def test_synthesized(form: str, affinity: bool) -> None:
    assert _agree(_synthesized(affinity, form=form)) > 100


def test_ipv6() -> None:
    specs = [ServiceSpec("default", f"svc-{k}", f"fd00:10:96::{k + 1:x}",
                         [PortSpec("http", 80, node_port=30000 + k, target_port=8080)], type="NodePort",
                         endpoints=[EndpointSpec(f"fd00:10:244:{j}::{k + 5:x}", 8080) for j in range(2)])
             for k in range(6)]
    assert _agree(render_nft(specs, node_ips=["fd00:1::10"], pod_cidr="fd00:10:244::/56",
                             service_cidrs=["fd00:10:96::/108"], ipv6=True)) > 10


@pytest.mark.parametrize("path", nft_corpus.SAMPLES, ids=lambda p: p.name)
def test_samples(path: Any) -> None:
    _agree(path.read_text(encoding="utf-8", errors="replace"))


@pytest.mark.parametrize("fixture", nft_corpus.FIXTURES, ids=lambda p: p.stem)
def test_corpus(fixture: Any) -> None:
    for text in nft_corpus.texts(nft_corpus.read(fixture)).values():
        _agree(text)
