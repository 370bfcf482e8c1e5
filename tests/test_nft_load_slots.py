"""What the nft text loader leaves ready for the walk: the slots every run reads of tens of thousands of chains and
rules (a chain's `base`, a rule's `handle`) set rather than left to __getattr__ (an AttributeError each read)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from iptrace.nftables import load
from iptrace.nftables.model import Chain, Element, Rule, Verdict
from iptrace.nftables.shapes import fast_constructor

ROOT = Path(__file__).resolve().parent.parent


def test_a_loaded_listing_sets_base_and_handle() -> None:
    for path in sorted((ROOT / "sample_dumps").glob("*-nft.nft")):
        text = path.read_text(encoding="utf-8")
        ruleset = load(text, source=str(path))
        assert ruleset.source_text is not None
        for table in ruleset.tables:
            for chain in table.chains:
                Chain.base.__get__(chain, Chain)  # (raises AttributeError when the slot is unset)
                for rule in chain.rules:
                    assert Rule.handle.__get__(rule, Rule) is None, (path, rule.text)
                    if rule._lazy is not None and rule._lazy[1] is ruleset.source_text:  # (its text read from there)
                        assert rule.text == ruleset.source_text.line(rule.line).strip()  # type: ignore[arg-type]


def test_objects_built_as_drafts_are_the_frozen_class_itself() -> None:
    """shapes.draft_class: what fast_constructor and the rule builders make is an instance of the model class
    itself (not of its draft), equal to what the dataclass makes, and as frozen."""
    verdict = fast_constructor(Verdict)("goto", "endpoint-1")
    assert type(verdict) is Verdict and verdict == Verdict("goto", "endpoint-1")
    assert hash(verdict) == hash(Verdict("goto", "endpoint-1"))
    element = fast_constructor(Element)("10.0.0.1", verdict, None, None, None, None)
    assert type(element) is Element and element == Element("10.0.0.1", verdict)
    with pytest.raises(dataclasses.FrozenInstanceError):
        verdict.kind = "jump"  # type: ignore[misc]
    rule = load("table ip t {\n\tchain c {\n\t\tip saddr 10.0.0.1 accept\n\t}\n}\n").tables[0].chains[0].rules[0]
    chain = load("table ip t {\n\tchain c {\n\t\tip saddr 10.0.0.1 accept\n\t}\n}\n").tables[0].chains[0]
    assert type(rule) is Rule and type(chain) is Chain
    assert rule == Rule(rule.items, None) and chain == Chain("c", (rule,))
    with pytest.raises(dataclasses.FrozenInstanceError):
        rule.line = 3  # type: ignore[misc]
