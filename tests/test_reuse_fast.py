"""The fast paths of a reusing audit against the plain ones they stand for: a node's digests made from the reuse
cache's (iptrace.kube.digest, ViewReuse.origin) against digests made afresh, and the footprint's written-out tests
(footprint._bits, footprint_facts' plan of one -s network, footprint_order.positions' shortcut) against the
loops they replace."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import fleet
from iptrace.iptables import DATAPLANE, load
from iptrace.iptables.footprint import _any_passes, _bits
from iptrace.iptables.footprint_facts import Facts, _ask, src_test
from iptrace.iptables.footprint_order import positions
from iptrace.iptables.index import ChainIndex
from iptrace.kube.analysis import analyse
from iptrace.kube.digest import family_digest
from iptrace.kube.reuse import ViewReuse
from tests.conftest import SAMPLES
from tests.test_reuse import services


def _digests_alike(texts: list[tuple[str, str]]) -> ViewReuse:
    """Every node's digest, made with one ViewReuse in node order, equals the digest of its view made without."""
    reuse = ViewReuse()
    intern: dict[Any, Any] = {}
    for node_ip, text in texts:
        ruleset = load(text)
        plain = family_digest(analyse(DATAPLANE, ruleset, "ipv4", node_ips=[node_ip]))
        reused = family_digest(analyse(DATAPLANE, ruleset, "ipv4", node_ips=[node_ip], reuse=reuse), intern=intern)
        assert reused.ports == plain.ports, node_ip
        assert reused.lines == plain.lines, node_ip
        assert reused == plain
        reuse.node_done()
    return reuse


def test_a_fleets_digests_made_from_the_cache_are_the_digests_made_afresh() -> None:
    reuse = _digests_alike([(fleet.node_ip(i), fleet.node_dump(services(), i)) for i in range(4)])
    assert reuse.stats.reused > reuse.stats.stored  # (the digests of later nodes came from the cache)


def _wider(m: re.Match[str]) -> str:
    a, b, c, d = map(int, m.group(1).split("."))
    return f"-s {a}.{b}.{c}.{d & ~1}/31 -m comment"


def _not_from(cidr: str) -> Callable[[str], str]:
    """Every endpoint rule (a Service chain's jump to it, its DNAT) made to test `! -s cidr`."""
    return lambda text: re.sub(r" (-j (?:KUBE-SEP-\S+|DNAT))", rf" ! -s {cidr} \1", text)


@pytest.mark.parametrize(("cidr", "wider"), [("127.0.0.0/8", True), ("127.0.0.0/16", False)])
def test_a_rule_text_the_footprint_does_not_hold_makes_the_digest_again(cidr: str, wider: bool) -> None:
    """A node whose endpoints' rules name other networks that answer its questions alike — /31s in the masquerade
    rules, or another `! -s` network in the rules that lead to an endpoint —: the ports' views are reused (equal
    footprints), but the rules' texts, which the digests quote, are that node's own."""
    specs = services()
    texts = [(fleet.node_ip(i), _not_from("127.0.0.0/8")(fleet.node_dump(specs, i))) for i in range(3)]
    changed = _not_from(cidr)(fleet.node_dump(specs, 2))
    if wider:
        changed = re.sub(r"-s (\d+\.\d+\.\d+\.\d+)/32 -m comment", _wider, changed)
    assert changed != texts[2][1]
    texts[2] = (texts[2][0], changed)
    reuse = _digests_alike(texts)
    assert reuse.stats.reused > 60  # (most of the third node's ports too)


def test_views_of_a_node_are_let_go_when_it_is_done() -> None:
    reuse = ViewReuse()
    for i in range(2):
        view = analyse(DATAPLANE, load(fleet.node_dump(services(), i)), "ipv4", node_ips=[fleet.node_ip(i)],
                       reuse=reuse).view
        assert all(reuse.origin(sp) is not None for sp in view.services)
        reuse.node_done()
        assert all(reuse.origin(sp) is None for sp in view.services)


_ADDR = st.integers(0, 2**32 - 1)
_NET = st.tuples(_ADDR, st.integers(0, 32)).map(lambda t: (t[0] & ((2**32 - 1) << (32 - t[1])) % 2**32,
                                                           ((2**32 - 1) << (32 - t[1])) % 2**32))


def _plain_bits(spec: Any, addrs: list[int]) -> str:
    """footprint._bits as it was written: a loop."""
    _src, negated, nets = spec
    return "".join(["1" if any(a & m == n for n, m in nets) != negated else "0" for a in addrs])


@settings(max_examples=300, deadline=None)
@given(st.booleans(), st.booleans(), st.lists(_NET, min_size=1, max_size=3), st.lists(_ADDR, max_size=20))
def test_bits_are_the_loops(src: bool, negated: bool, nets: list[tuple[int, int]], addrs: list[int]) -> None:
    spec = (src, negated, tuple(nets))
    some = addrs + [n for n, _m in nets]  # (addresses in the networks too)
    assert _bits(spec, some) == _plain_bits(spec, some)


@settings(max_examples=300, deadline=None)
@given(st.booleans(), st.lists(_NET, min_size=1, max_size=2), st.booleans(), st.lists(_ADDR, max_size=4))
def test_a_plans_source_network_answers_as_can_match(negated: bool, nets: list[tuple[int, int]], src: bool,
                                                     sources: list[int]) -> None:
    """A rule whose only test is one -s: the plan's written-out test (a network, `_ask`) where it gives one, and
    what can_match reads of the rule (its one test over the question's sources) agree."""
    spec = (src, negated, tuple(nets))
    f = Facts("x", (spec,), None, None, False, 0, None, False, False)
    ask = _ask(f)
    if ask is True:
        assert not (src and not negated and len(nets) == 1)
        return
    assert ask == nets[0] and src and not negated
    some = [*sources, nets[0][0]] if sources and sources[0] % 2 else sources
    assert src_test(ask, some) == _any_passes(spec, some)


class _Q:
    def __init__(self, dsts: set[int], ports: set[int], protos: set[int]) -> None:
        self.dsts, self.ports, self.protos, self.narrowed = dsts, ports, protos, False


def _plain_positions(index: ChainIndex, q: _Q) -> list[int]:
    found = set(index.rest)
    for d in q.dsts:
        found.update(index.by_host.get(d, ()))
    for proto in q.protos:
        for port in q.ports:
            found.update(index.by_port.get((proto, port, None), ()))
            for d in q.dsts:
                found.update(index.by_port.get((proto, port, d), ()))
    return sorted(found)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10**6), st.integers(0, 60), st.sets(st.integers(0, 8), max_size=4),
       st.sets(st.integers(0, 6), max_size=3), st.sets(st.sampled_from([6, 17]), min_size=1))
def test_positions_are_the_rules_filed_under_the_questions_keys(seed: int, n: int, dsts: set[int], ports: set[int],
                                                               protos: set[int]) -> None:
    rng = random.Random(seed)
    index = ChainIndex()
    for i in range(n):
        kind = rng.randrange(4)
        if kind == 0:
            index.rest.append(i)
        elif kind == 1:
            index.by_host.setdefault(rng.randrange(8), []).append(i)
        else:
            key = (rng.choice([6, 17]), rng.randrange(6), rng.randrange(8) if kind == 2 else None)
            index.by_port.setdefault(key, []).append(i)
    q = _Q(dsts, ports, protos)
    hosts = set(index.by_host) | {k[2] for k in index.by_port if k[2] is not None}
    got = positions(index, hosts, {k[1] for k in index.by_port}, q)
    assert list(got) == _plain_positions(index, q)
    assert q.narrowed


def test_address_reads_kept_per_structure_are_the_rules_own() -> None:
    """footprint_facts keeps _address_reads' answer per rule structure (shared by the rules of one shape): every
    rule of the samples, -m recent's among them, gets the answer its own tokens give."""
    from iptrace.iptables.footprint_facts import _address_reads, _address_reads_of
    from iptrace.iptables.matchers import fast_tokens, rule_structure

    seen_recent = False
    for path in sorted(SAMPLES.glob("*.txt")):
        ruleset = load(path.read_text())
        version = 6 if "ipv6" in ruleset.families and "ipv4" not in ruleset.families else 4
        cache: dict[object, Any] = {}
        for t in ruleset.tables:
            for c in t.chains:
                for rule in c.rules:
                    tokens = fast_tokens(rule.text)
                    structure = rule_structure(rule, tokens, cache)
                    seen_recent = seen_recent or any(m == "recent" for m, _s in structure[0])
                    for _twice in range(2):
                        assert _address_reads_of(structure, tokens, version) == _address_reads(structure, tokens,
                                                                                               version)
    assert seen_recent


def test_a_replacer_copies_every_other_field() -> None:
    """reuse's replacers (records.positional_replace) make what dataclasses.replace makes, of the same class."""
    import dataclasses

    from iptrace.kube.reuse import _endpoint_line, _entry_paths_lines, _path_decided_by, _view_relined

    view = analyse(DATAPLANE, load(fleet.node_dump(services(), 0)), "ipv4", node_ips=[fleet.node_ip(0)]).view
    checked = 0
    for sp in view.services:
        for ep in sp.endpoints:
            got = _endpoint_line(ep, ep.line + 7)
            assert type(got) is type(ep) and got == dataclasses.replace(ep, line=ep.line + 7)
        for e in sp.entries:
            got = _entry_paths_lines(e, e.paths[::-1], (1, 2))
            assert type(got) is type(e) and got == dataclasses.replace(e, paths=e.paths[::-1], lines=(1, 2))
            for p in e.paths:
                assert _path_decided_by(p, 3) == dataclasses.replace(p, decided_by=3)
        got = _view_relined(sp, sp.endpoints[::-1], sp.entries, (5,))
        assert type(got) is type(sp) and got == dataclasses.replace(sp, endpoints=sp.endpoints[::-1], lines=(5,))
        checked += 1
    assert checked > 10
