"""rule_words reads a rule line without lark: wherever it gives an answer, lark parses the line and gives the same
arguments (terminal, text, column), so a dump it reads loads as before and a line it refuses still gets lark's
error. It reads every rule line kube-proxy's dumps hold, so loading one does not import lark."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from iptrace.errors import ParseError
from iptrace.iptables import grammar
from iptrace.iptables.rule_words import rule_args

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus"


def lark_args(line: str) -> list[tuple[str, str, int]] | None:
    try:
        tree = grammar.parse_line(line, source="<t>", line_no=1)
    except ParseError:
        return None
    if tree.children[0].data != "rule":
        return None
    return grammar.rule_arg_tokens(tree)[0]


def agrees(line: str) -> bool:
    """Whether rule_args read `line` (and if so, as lark does: a mismatch fails the test)."""
    fast = rule_args(line)
    if fast is not None:
        assert lark_args(line) == fast, line
    return fast is not None


_WORDS = st.sampled_from(['-A', '!', '"', '\\', '"a b"', '"a\\" b"', '"x"y', 'x"y', '!x', '-j', 'KUBE-SVC-X', '[1:2]',
                          '*', ':', '[', 'COMMIT', '-m', '--comment', '""', '"\\\\"', 'é'])
_BLANKS = st.sampled_from([" ", " ", " ", "  ", "\t", "\x0b", "\xa0", "", " \r"])


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.tuples(_WORDS, _BLANKS), min_size=1, max_size=8), st.booleans())
@example([("-A", " "), ("X", " "), ("!", "")], False)
@example([("-A", " "), ("X", " "), ('"a b"', "  "), ("!x", "")], True)
def test_agrees_with_lark_on_made_up_lines(parts: list[tuple[str, str]], counters: bool) -> None:
    line = ("[3:4] " if counters else "") + "".join(word + blank for word, blank in parts)
    agrees(line)
    agrees("-A KUBE " + line)


@pytest.mark.parametrize("word", ['*', ':', '[', '"', '!', '!x', 'x"y', '"a"', '[1:2]', 'KUBE-SVC-X', '-j', 'COMMIT'])
def test_agrees_with_lark_on_chain_names_and_arguments(word: str) -> None:
    assert agrees(f"-A C {word} -j X") == (word[0] != '"' or word == '"a"')
    agrees(f"-A {word} -j X")
    agrees(f"-A {word}")
    agrees(f"[0:0] -A {word} {word}")


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet=' \t"\\!-A[]:*01xé\r', max_size=24))
def test_agrees_with_lark_on_any_text(text: str) -> None:
    agrees(text)
    agrees("-A C " + text)


def test_refuses_what_it_does_not_read() -> None:
    assert rule_args("-A C -j X") == [("WORD", "-j", 6), ("WORD", "X", 9)]
    assert rule_args('[0:0] -A C ! -s "a b"  x') == [("NEG", "!", 12), ("WORD", "-s", 14), ("QUOTED", '"a b"', 17),
                                                     ("WORD", "x", 24)]
    for line in ("-A C\t-j X", "-A C -j X ", '-A C "a"b', "-I C 1 -j X", " -A C", "-A C \"a", "-AC"):
        assert rule_args(line) is None, line


def _dump_lines() -> list[str]:
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in sorted((ROOT / "sample_dumps").glob("*.txt"))]
    texts += [p.read_text(encoding="utf-8", errors="replace") for p in sorted((CORPUS / "realworld").glob("*.txt"))]
    texts += [json.loads(p.read_text())["dump"] for p in sorted((CORPUS / "kube-proxy").glob("*.json"))]
    return [line.strip() for text in texts for line in text.splitlines()]


def test_agrees_with_lark_on_every_dump_line() -> None:
    lines = [line for line in _dump_lines() if "-A" in line]
    assert len(lines) > 1000
    read = sum(agrees(line) for line in lines)
    assert read > 0.95 * len(lines)


def test_kube_proxy_dump_loads_without_lark() -> None:
    dump = ROOT / "sample_dumps" / "etp-local-with-endpoints.txt"
    code = ("import sys; from iptrace.iptables.loader import load_path; "
            f"r = load_path({str(dump)!r}); print(r.rule_count > 0, "
            "'lark' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "False"]


@pytest.mark.parametrize("line", ["-A C -j X\t", '-A C "open', "-A C -j X Y\x0b", "-A C -j X Y", '-A C -m "x"y',
                                  "-A C -m comment --comment", "-A C ! ! -j X", "-A C -j X \xa0"])
def test_loads_as_through_lark(line: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loader reads a dump, good or bad, as it does when every new rule shape goes through lark."""
    from iptrace.iptables import loader

    def load() -> str:
        try:
            ruleset = loader.load(f"*nat\n:C - [0:0]\n{line}\nCOMMIT\n", source="d")
        except ParseError as exc:
            return f"error {exc}"
        return repr([(r, r.line, r.shape) for _, _, r in ruleset.rules()]) + repr(ruleset.warnings)

    fast = load()
    monkeypatch.setattr(loader, "rule_args", lambda line: None)
    assert load() == fast
