"""The grammars' parsers are loaded as lark saved them (grammars/*.lark.parser) rather than built at every start:
each must be the one saved from its grammar as it is now (else it is built); the iptables one must answer every
line as the parser built from the grammar does — the same tree, or the same error (tests/test_nft_grammar_saved.py
says the same of the nft one)."""

from __future__ import annotations

import pickle
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lark import Lark, UnexpectedInput

from iptrace import grammars
from iptrace.iptables import grammar
from iptrace.nftables import grammar as nft_grammar

ROOT = Path(__file__).resolve().parent.parent


# Both grammars' parsers are saved and loaded by the one mechanism (iptrace.grammars.saved_parser).
_MODULES = {"iptables": (grammar, "-A FOO -j BAR", "line"), "nft": (nft_grammar, "ip daddr 10.0.0.1 accept", "rule")}


@pytest.fixture(params=sorted(_MODULES))
def saved(request: pytest.FixtureRequest) -> tuple[ModuleType, Lark, str, str]:
    """A grammar module, its parser built from the grammar, and a statement of it with its start symbol."""
    module, text, start = _MODULES[request.param]
    return module, _built(module), text, start


@cache
def _built(module: ModuleType) -> Lark:
    return module.build_parser()


def test_the_saved_parser_is_the_grammars(saved: tuple[ModuleType, Lark, str, str]) -> None:
    module = saved[0]
    path = ROOT / "grammars" / module.SAVED_PARSER
    assert path.is_file()
    key, _data = pickle.loads(path.read_bytes())
    # (another lark version, as a fresh install may bring, only means the parser is built: the grammar text and
    # options are this project's to keep in step)
    assert key[1:] == module._saved_key()[1:], (
        f"grammars/{module.SAVED_PARSER} was saved from another grammar: write it again with "
        f"`python -c \"from pathlib import Path; from {module.__name__} import save_parser, SAVED_PARSER; "
        "save_parser(Path('grammars') / SAVED_PARSER)\"`")


def test_the_saved_parser_is_the_one_used(saved: tuple[ModuleType, Lark, str, str]) -> None:
    module, built, text, start = saved
    module.parser.cache_clear()
    try:
        loaded = module.parser()
        assert loaded is not built and parse_answer(loaded, text, start) == parse_answer(built, text, start)
    finally:
        module.parser.cache_clear()


def test_a_stale_or_unreadable_saved_parser_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        saved: tuple[ModuleType, Lark, str, str]) -> None:
    module, built, _text, _start = saved
    bad = tmp_path / "bad.parser"
    bad.write_bytes(b"not a pickle")
    _assert_built_instead(module, built, bad, monkeypatch)


@pytest.mark.parametrize("field", [0, 1, 2])  # lark's version, the options, the grammar text
def test_a_parser_saved_from_anything_else_is_built_instead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            saved: tuple[ModuleType, Lark, str, str],
                                                            field: int) -> None:
    module, built, _text, _start = saved
    key, data = pickle.loads((ROOT / "grammars" / module.SAVED_PARSER).read_bytes())
    other = tmp_path / "other.parser"
    other.write_bytes(pickle.dumps((tuple(v + " changed" if i == field else v for i, v in enumerate(key)), data)))
    _assert_built_instead(module, built, other, monkeypatch)


def _assert_built_instead(module: ModuleType, built: Lark, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Lark] = []
    monkeypatch.setattr(grammars, "grammar_path", lambda name: path)
    monkeypatch.setattr(module, "build_parser", lambda: calls.append(built) or built)
    module.parser.cache_clear()
    try:
        assert module.parser() is built and len(calls) == 1
    finally:
        module.parser.cache_clear()


_BUILT = _built(grammar)


def parse_answer(parser: Lark, text: str, start: str) -> object:
    try:
        return ("tree", parser.parse(text, start=start))
    except UnexpectedInput as exc:
        return ("error", type(exc).__name__, getattr(exc, "column", None), getattr(exc, "pos_in_stream", None),
                sorted(getattr(exc, "expected", None) or getattr(exc, "allowed", None) or ()),
                str(getattr(exc, "token", "")))


def _lines() -> list[str]:
    out = []
    for path in sorted((ROOT / "sample_dumps").glob("*.txt")):
        out.extend(path.read_text(encoding="utf-8").split("\n")[:400])
    return out


@pytest.mark.parametrize("start", ["line", "document"])
def test_the_saved_parser_reads_the_sample_dumps_as_the_built_one(start: str) -> None:
    saved = grammar.parser()
    lines = _lines()
    if start == "document":
        text = "\n".join(lines[:2000]) + "\n"
        assert parse_answer(saved, text, start) == parse_answer(_BUILT, text, start)
    else:
        for line in lines:
            assert parse_answer(saved, line, start) == parse_answer(_BUILT, line, start)


_PIECE = st.sampled_from(["-A", "KUBE-SVC-X", "-j", "!", '"a b"', '"x', "*nat", ":FOO", "-", "[0:0]", "ACCEPT",
                          "COMMIT", "#c", "-P", "-N", "-D", "--append", "[1:2]", "\\", '"', "-m", "tcp", "*", ":"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_PIECE, max_size=7), st.sampled_from(["line", "document"]))
def test_the_saved_parser_answers_any_line_as_the_built_one(pieces: list[str], start: str) -> None:
    text = " ".join(pieces)
    assert parse_answer(grammar.parser(), text, start) == parse_answer(_BUILT, text, start)
