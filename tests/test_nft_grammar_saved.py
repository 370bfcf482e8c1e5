"""The nft grammar's parser, loaded as lark saved it (grammars/nft.lark.parser; the mechanism is tested for both
grammars in tests/test_grammar_saved.py), answers every statement, from every start symbol, as the parser built
from the grammar does — the same tree, or the same error."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iptrace.nftables import grammar
from tests.test_grammar_saved import parse_answer

ROOT = Path(__file__).resolve().parent.parent


_BUILT = grammar.build_parser()


def _samples() -> list[str]:
    out = []
    for path in sorted((ROOT / "sample_dumps").glob("*nft*")):
        if path.suffix != ".json":
            out.append(path.read_text(encoding="utf-8"))
    return out


def _lines() -> list[str]:
    return list(dict.fromkeys(line.strip() for text in _samples() for line in text.split("\n")[:600]))


def test_the_saved_parser_reads_the_sample_rulesets_as_the_built_one() -> None:
    saved = grammar.parser()
    for text in _samples():
        assert parse_answer(saved, text, "document") == parse_answer(_BUILT, text, "document")


@pytest.mark.parametrize("start", [s for s in grammar.STARTS if s != "document"])
def test_the_saved_parser_reads_every_sample_line_as_the_built_one(start: str) -> None:
    saved = grammar.parser()
    for line in _lines():
        assert parse_answer(saved, line, start) == parse_answer(_BUILT, line, start)


_PIECE = st.sampled_from(["table", "ip", "kube-proxy", "{", "}", "chain", "services", "type", "filter", "hook",
                          "prerouting", "priority", "-100", ";", "policy", "accept", "ip", "daddr", "10.0.0.1",
                          ".", "meta", "l4proto", "th", "dport", "vmap", "@service-ips", ":", ",", "goto", "numgen",
                          "random", "mod", "2", "dnat", "to", "10.0.0.2:80", '"c"', '"x', "set", "elements", "=",
                          "\n", "#", "comment", "!=", "map", "flags", "timeout", "3h", "add", "rule"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_PIECE, max_size=9), st.sampled_from(grammar.STARTS))
def test_the_saved_parser_answers_any_statement_as_the_built_one(pieces: list[str], start: str) -> None:
    text = " ".join(pieces)
    assert parse_answer(grammar.parser(), text, start) == parse_answer(_BUILT, text, start)
