"""The iptables grammar's parser is loaded as lark saved it (grammars/iptables_save.lark.parser) rather than built
at every start: it must be the one saved from the grammar as it is now, and answer every line as the parser built
from the grammar does — the same tree, or the same error."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lark import Lark, UnexpectedInput

from iptrace.iptables import grammar

ROOT = Path(__file__).resolve().parent.parent
SAVED = ROOT / "grammars" / grammar.SAVED_PARSER


def test_the_saved_parser_is_the_grammars() -> None:
    assert SAVED.is_file()
    import pickle

    key, _data = pickle.loads(SAVED.read_bytes())
    # (another lark version, as a fresh install may bring, only means the parser is built: the grammar text and
    # options are this project's to keep in step)
    assert key[1:] == grammar._saved_key()[1:], (
        "grammars/iptables_save.lark.parser was saved from another grammar: write it again with "
        "`python -c \"from pathlib import Path; from iptrace.iptables.grammar import save_parser, SAVED_PARSER; "
        "save_parser(Path('grammars') / SAVED_PARSER)\"`")


def test_a_stale_or_unreadable_saved_parser_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "bad.parser"
    bad.write_bytes(b"not a pickle")
    monkeypatch.setattr(grammar, "grammar_path", lambda name: bad)
    grammar.parser.cache_clear()
    try:
        assert _answer(grammar.parser(), "-A FOO -j BAR", "line") == _answer(_BUILT, "-A FOO -j BAR", "line")
    finally:
        grammar.parser.cache_clear()


@pytest.mark.parametrize("field", [0, 1, 2])  # lark's version, the options, the grammar text
def test_a_parser_saved_from_anything_else_is_built_instead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            field: int) -> None:
    import pickle

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
        assert _answer(saved, text, start) == _answer(_BUILT, text, start)
    else:
        for line in lines:
            assert _answer(saved, line, start) == _answer(_BUILT, line, start)


_PIECE = st.sampled_from(["-A", "KUBE-SVC-X", "-j", "!", '"a b"', '"x', "*nat", ":FOO", "-", "[0:0]", "ACCEPT",
                          "COMMIT", "#c", "-P", "-N", "-D", "--append", "[1:2]", "\\", '"', "-m", "tcp", "*", ":"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_PIECE, max_size=7), st.sampled_from(["line", "document"]))
def test_the_saved_parser_answers_any_line_as_the_built_one(pieces: list[str], start: str) -> None:
    text = " ".join(pieces)
    assert _answer(grammar.parser(), text, start) == _answer(_BUILT, text, start)
