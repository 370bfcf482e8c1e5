"""What the nft layout reads of a rule (portrules.rule_reads: the chains it sends to, the named sets its matches
test, whether it reads fib) is read from a planned builder's values without building the rule's items; it must
be what the items say, on every rule of every nft sample, corpus fixture form and synthesized ruleset."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from iptrace.nftables import load, portrules
from iptrace.nftables.model import Chain, Match, Rule, SetRef
from tests import nft_corpus
from tests.test_nft_port_plans import _synthesized


def _rules(text: str) -> Iterator[Rule]:
    for table in load(text).tables:
        for chain in table.chains:
            yield from chain.rules


def _agree(text: str) -> int:
    """Every rule's reads equal its items', and every chain's (portrules.chain_reads, asked before its rules are
    made) its rules' items'; how many rules were read by plan."""
    planned = 0
    ruleset = load(text)
    for table in ruleset.tables:
        for chain in table.chains:
            reads = portrules.chain_reads(chain)
            assert reads == [portrules.items_reads(r.peek_items()) for r in chain.rules], chain.name
    for rule in (r for t in ruleset.tables for c in t.chains for r in c.rules):
        assert portrules.rule_reads(rule) == portrules.items_reads(rule.peek_items()), rule.text
        lazy = rule._lazy
        planned += lazy is not None and getattr(lazy[0], "layout_plan", None) is not None
    return planned


@pytest.mark.parametrize("form", ["list", "transaction"])
@pytest.mark.parametrize("affinity", [False, True])
def test_synthesized(form: str, affinity: bool) -> None:
    assert _agree(_synthesized(affinity, form=form)) > 100


def test_service_chains_of_a_listing_are_read_by_plan() -> None:
    """The rules the layout reads of each Service port (its service and external chains) have plans."""
    for table in load(_synthesized(True)).tables:
        for chain in table.chains:
            if chain.name.startswith(("service-", "external-")):
                for rule in chain.rules:
                    portrules.rule_reads(rule)
                    assert rule._lazy is not None and rule._lazy[0].layout_plan is not None, rule.text


@pytest.mark.parametrize("path", nft_corpus.SAMPLES, ids=lambda p: p.name)
def test_samples(path: Any) -> None:
    _agree(path.read_text(encoding="utf-8", errors="replace"))


@pytest.mark.parametrize("fixture", nft_corpus.FIXTURES, ids=lambda p: p.stem)
def test_corpus(fixture: Any) -> None:
    for text in nft_corpus.texts(nft_corpus.read(fixture)).values():
        _agree(text)


def test_a_value_that_is_a_set_reference_is_read_by_items() -> None:
    """A planned rule whose match's right side is a value holding a set reference (not what a listing's value
    is, but a plan must not assume it) is read by its items: the set's name is among its reads."""
    rules = [r for r in _rules(_synthesized(False)) if r.text.startswith("ip daddr 10.") and r._lazy is not None]
    for r in rules:
        portrules.rule_reads(r)
    rule = next(r for r in rules if r._lazy[0].layout_plan is not None and r._lazy[0].layout_plan[3])
    build, text, line, *values = rule._lazy  # type: ignore[misc]
    plan = build.layout_plan
    values[plan[3][0] - 3] = SetRef("affinity-x")
    odd = Rule.__new__(Rule)
    object.__setattr__(odd, "_lazy", (build, text, line, *values))
    object.__setattr__(odd, "line", line)
    assert any(type(i) is Match and i.right == SetRef("affinity-x") for i in odd.peek_items())
    assert portrules.rule_reads(odd) == portrules.items_reads(odd.peek_items())
    assert "affinity-x" in portrules.rule_reads(odd)[1]


def test_external_chains_of_a_listing_are_read_from_their_records() -> None:
    """The layout reads a listing's external chains (read whole by a template) without making their rules."""
    ruleset = load(_synthesized(True))
    chains = [c for t in ruleset.tables for c in t.chains if c.name.startswith("external-") and c._lazy is not None]
    assert len(chains) > 3
    for chain in chains:
        reads = portrules.chain_reads(chain)
        with pytest.raises(AttributeError):
            object.__getattribute__(chain, "rules")  # (not made)
        assert reads == [portrules.items_reads(r.peek_items()) for r in chain.rules]


def test_a_record_value_that_is_a_set_reference_is_read_by_items() -> None:
    """A chain record whose value a match's right side is holds a set reference (as in
    test_a_value_that_is_a_set_reference_is_read_by_items) is read by its rules' items."""
    ruleset = load(_synthesized(False))
    whole = [c for t in ruleset.tables for c in t.chains if c._lazy is not None]
    for c in whole:
        portrules.chain_reads(c)
    chain = next(c for c in whole if c._lazy[0].layout_plans is not None
                 and any(p[0][3] for p in c._lazy[0].layout_plans))
    maker, source, line, *values = chain._lazy  # type: ignore[misc]
    found, at = next(p for p in maker.layout_plans if p[0][3])
    values[at + found[3][0] - 6] = SetRef("affinity-x")
    odd = Chain.__new__(Chain)
    object.__setattr__(odd, "name", chain.name)
    object.__setattr__(odd, "_lazy", (maker, source, line, *values))
    reads = portrules.chain_reads(odd)
    assert reads == [portrules.items_reads(r.peek_items()) for r in odd.rules]
    assert any("affinity-x" in names for _, names, _ in reads)


def test_a_record_target_that_is_empty_is_left_out_as_items_leave_it() -> None:
    """A chain record's verdict target value that is empty is not among the chain's reads (read from the record by
    the template's generated function, as from the rules' items), and the other targets keep their order."""
    ruleset = load(_synthesized(False))
    whole = [c for t in ruleset.tables for c in t.chains if c._lazy is not None and c.name.startswith("service-")]
    for c in whole:
        portrules.chain_reads(c)
    chain = next(c for c in whole if c._lazy[0].layout_plans is not None
                 and sum(type(x) is int for p in c._lazy[0].layout_plans for x in p[0][0]) > 1)
    maker, source, line, *values = chain._lazy  # type: ignore[misc]
    found, at = next(p for p in maker.layout_plans if any(type(x) is int for x in p[0][0]))
    k = next(x for x in found[0] if type(x) is int)
    dropped = values[at + k - 6]
    values[at + k - 6] = ""
    odd = Chain.__new__(Chain)
    object.__setattr__(odd, "name", chain.name)
    object.__setattr__(odd, "_lazy", (maker, source, line, *values))
    reads = portrules.chain_reads(odd)
    assert reads == [portrules.items_reads(r.peek_items()) for r in odd.rules]
    assert all(dropped not in targets and "" not in targets for targets, _, _ in reads)
    assert reads != portrules.chain_reads(chain)
