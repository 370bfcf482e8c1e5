"""The nft grammar's parser is loaded as lark saved it (grammars/nft.lark.parser) rather than built at every start:
it must be the one saved from the grammar as it is now, and answer every statement, from every start symbol, as
the parser built from the grammar does — the same tree, or the same error."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lark import Lark, UnexpectedInput

from iptrace.nftables import grammar

ROOT = Path(__file__).resolve().parent.parent
SAVED = ROOT / "grammars" / grammar.SAVED_PARSER


def test_the_saved_parser_is_the_grammars() -> None:
    assert SAVED.is_file()
    key, _data = pickle.loads(SAVED.read_bytes())
    # (another lark version, as a fresh install may bring, only means the parser is built: the grammar text and
    # options are this project's to keep in step)
    assert key[1:] == grammar._saved_key()[1:], (
        "grammars/nft.lark.parser was saved from another grammar: write it again with "
        "`python -c \"from pathlib import Path; from iptrace.nftables.grammar import save_parser, SAVED_PARSER; "
        "save_parser(Path('grammars') / SAVED_PARSER)\"`")


def test_the_saved_parser_is_the_one_used() -> None:
    grammar.parser.cache_clear()
    try:
        saved = grammar.parser()
        assert saved is not _BUILT and _answer(saved, "ip daddr 10.0.0.1 accept", "rule") == _answer(
            _BUILT, "ip daddr 10.0.0.1 accept", "rule")
    finally:
        grammar.parser.cache_clear()


def test_a_stale_or_unreadable_saved_parser_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "bad.parser"
    bad.write_bytes(b"not a pickle")
    monkeypatch.setattr(grammar, "grammar_path", lambda name: bad)
    built: list[Lark] = []
    monkeypatch.setattr(grammar, "build_parser", lambda: built.append(_BUILT) or _BUILT)
    grammar.parser.cache_clear()
    try:
        assert grammar.parser() is _BUILT and len(built) == 1
    finally:
        grammar.parser.cache_clear()


@pytest.mark.parametrize("field", [0, 1, 2])  # lark's version, the options, the grammar text
def test_a_parser_saved_from_anything_else_is_built_instead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            field: int) -> None:
    key, data = pickle.loads(SAVED.read_bytes())
    other = tmp_path / "other.parser"
    other.write_bytes(pickle.dumps((tuple(v + " changed" if i == field else v for i, v in enumerate(key)), data)))
    built: list[Lark] = []
    monkeypatch.setattr(grammar, "grammar_path", lambda name: other)
    monkeypatch.setattr(grammar, "build_parser", lambda: built.append(_BUILT) or _BUILT)
    grammar.parser.cache_clear()
    try:
        assert grammar.parser() is _BUILT and len(built) == 1
    finally:
        grammar.parser.cache_clear()


_BUILT = grammar.build_parser()


def _answer(parser: Lark, text: str, start: str) -> object:
    try:
        return ("tree", parser.parse(text, start=start))
    except UnexpectedInput as exc:
        return ("error", type(exc).__name__, getattr(exc, "column", None), getattr(exc, "pos_in_stream", None),
                sorted(getattr(exc, "expected", None) or getattr(exc, "allowed", None) or ()),
                str(getattr(exc, "token", "")))


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
        assert _answer(saved, text, "document") == _answer(_BUILT, text, "document")


@pytest.mark.parametrize("start", [s for s in grammar.STARTS if s != "document"])
def test_the_saved_parser_reads_every_sample_line_as_the_built_one(start: str) -> None:
    saved = grammar.parser()
    for line in _lines():
        assert _answer(saved, line, start) == _answer(_BUILT, line, start)


_PIECE = st.sampled_from(["table", "ip", "kube-proxy", "{", "}", "chain", "services", "type", "filter", "hook",
                          "prerouting", "priority", "-100", ";", "policy", "accept", "ip", "daddr", "10.0.0.1",
                          ".", "meta", "l4proto", "th", "dport", "vmap", "@service-ips", ":", ",", "goto", "numgen",
                          "random", "mod", "2", "dnat", "to", "10.0.0.2:80", '"c"', '"x', "set", "elements", "=",
                          "\n", "#", "comment", "!=", "map", "flags", "timeout", "3h", "add", "rule"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_PIECE, max_size=9), st.sampled_from(grammar.STARTS))
def test_the_saved_parser_answers_any_statement_as_the_built_one(pieces: list[str], start: str) -> None:
    text = " ".join(pieces)
    assert _answer(grammar.parser(), text, start) == _answer(_BUILT, text, start)
