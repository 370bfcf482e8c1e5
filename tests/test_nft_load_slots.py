"""What the nft text loader leaves ready for the walk: every line's start known from the lines it split
(SourceText.know_lines, the same as finding every newline again), and the slots every run reads of tens of
thousands of chains and rules (a chain's `base`, a rule's `handle`) set rather than left to __getattr__."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from iptrace.nftables import load
from iptrace.nftables.model import Chain, Rule, SourceText

ROOT = Path(__file__).resolve().parent.parent


def _found_again(text: str) -> list[int]:
    source = SourceText(text)
    return list(source.starts())


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab \t\r\n{}", max_size=60))
def test_line_starts_from_the_lines_are_those_found_in_the_text(text: str) -> None:
    known = SourceText(text)
    known.know_lines(text.split("\n"))
    assert known._starts is not None
    assert list(known.starts()) == _found_again(text)
    for n in range(0, len(known) + 2):
        assert known.line(n) == SourceText(text).line(n)


def test_lines_of_another_text_are_not_taken() -> None:
    source = SourceText("a\nbb\n")
    source.know_lines(["a", "b", ""])  # (not this text's: the starts are found in the text instead)
    assert source._starts is None
    assert list(source.starts()) == [0, 2, 5]


def test_a_loaded_listing_knows_its_line_starts_and_sets_base_and_handle() -> None:
    for path in sorted((ROOT / "sample_dumps").glob("*-nft.nft")):
        text = path.read_text(encoding="utf-8")
        ruleset = load(text, source=str(path))
        assert ruleset.source_text is not None
        assert list(ruleset.source_text.starts()) == _found_again(text), path
        for table in ruleset.tables:
            for chain in table.chains:
                Chain.base.__get__(chain, Chain)  # (raises AttributeError when the slot is unset)
                for rule in chain.rules:
                    assert Rule.handle.__get__(rule, Rule) is None, (path, rule.text)
                    if rule._lazy is not None and rule._lazy[1] is ruleset.source_text:  # (its text read from there)
                        assert rule.text == ruleset.source_text.line(rule.line).strip()  # type: ignore[arg-type]
