"""What the nft text loader leaves ready for the walk: the slots every run reads of tens of thousands of chains and
rules (a chain's `base`, a rule's `handle`) set rather than left to __getattr__ (an AttributeError each read)."""

from __future__ import annotations

from pathlib import Path

from iptrace.nftables import load
from iptrace.nftables.model import Chain, Rule

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
