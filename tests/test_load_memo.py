"""loader.LoadMemo: what loading one node's dump learnt, used to load the next node of the same cluster (audit's
workers keep one). The Ruleset must be the one a load without it gives — rules, shapes, lines, warnings,
skipped lines, errors — whatever the memo saw before; and it must be used (the shape-key regex and lark are
skipped for rule specs and shapes seen before)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from bench import fleet, synth
from iptrace import dataplanes
from iptrace.errors import IptraceError
from iptrace.iptables import loader
from iptrace.iptables.loader import load
from iptrace.iptables.model import Ruleset, RuleShape
from iptrace.iptables.rule_shapes import LoadMemo

# An option iptrace does not know: each load must say so, even when the memo has seen the rule before.
ODD = "-A KUBE-FORWARD -m frobnicate --frob 3 -j ACCEPT\n"


def _services() -> list[synth.ServiceSpec]:
    return synth.scale(40, 3, 0)


def _node(i: int, extra: str = "") -> str:
    return fleet.node_dump(_services(), i, extra=extra)


def _shape(s: RuleShape | None) -> Any:
    """A shape's value (shapes compare by identity: each load builds its own)."""
    return None if s is None else (s.slots, s.target_index, s.goto, s.n_tokens, s.unknown_options, dict(s.first))


def _same(a: Ruleset, b: Ruleset) -> None:
    assert a.tables == b.tables
    assert [(r.line, _shape(r.shape)) for t in a.tables for c in t.chains for r in c.rules] == \
           [(r.line, _shape(r.shape)) for t in b.tables for c in t.chains for r in c.rules]
    assert (a.family, a.format, a.trailer, a.warnings, a.skipped) == \
           (b.family, b.format, b.trailer, b.warnings, b.skipped)


class _Counting:
    """Stands in for the loader's shape-key regex, counting its substitutions."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern
        self.calls = 0

    def sub(self, repl: str, text: str) -> str:
        self.calls += 1
        return self.pattern.sub(repl, text)


def test_nodes_loaded_with_a_memo_equal_nodes_loaded_without(monkeypatch: pytest.MonkeyPatch) -> None:
    memo = LoadMemo()
    texts = [_node(0), _node(1), _node(2, extra=ODD), _node(3, extra=ODD), _node(1)]
    for i, text in enumerate(texts):
        counting = _Counting(loader._SHAPE_KEY_RE)
        monkeypatch.setattr(loader, "_SHAPE_KEY_RE", counting)
        with_memo = load(text, source=f"node-{i}", memo=memo)
        monkeypatch.setattr(loader, "_SHAPE_KEY_RE", counting.pattern)
        _same(with_memo, load(text, source=f"node-{i}"))
        rules = sum(len(c.rules) for t in with_memo.tables for c in t.chains)
        if i == 0:
            assert counting.calls >= rules  # nothing known yet
        else:
            # Only the node's own rules (its pod CIDR's, its shuffled order changes nothing) are read anew.
            assert counting.calls < rules / 10
    assert any("frobnicate" in w.message or "--frob" in w.message for w in load(texts[3], memo=memo).warnings)


def test_a_memo_changes_no_error_and_no_lenient_skip() -> None:
    memo = LoadMemo()
    load(_node(0), memo=memo)
    bad = _node(1).replace("-j KUBE-MARK-MASQ", "-j", 1)
    with pytest.raises(IptraceError) as plain:
        load(bad, source="n1")
    with pytest.raises(IptraceError) as memoised:
        load(bad, source="n1", memo=memo)
    assert str(memoised.value) == str(plain.value)
    _same(load(bad, source="n1", lenient=True, memo=memo), load(bad, source="n1", lenient=True))


def test_dataplanes_keep_the_memo_per_dataplane() -> None:
    memo: dict[str, Any] = {}
    _dp, first = dataplanes.load(_node(0), memo=memo)
    assert isinstance(memo["iptables"], LoadMemo) and memo["iptables"].specs
    _dp, second = dataplanes.load(_node(1), memo=memo)
    _same(second, load(_node(1)))
    _same(first, load(_node(0)))


def test_lines_with_double_blanks_or_tabs_load_alike_when_the_memo_knows_their_spec() -> None:
    # The loader takes a remembered spec without looking for a double space or a tab in its line (a spec is kept
    # only from a clean line): the same rules written with extra blanks must still load as without a memo.
    memo = LoadMemo()
    text = _node(0)
    load(text, memo=memo)
    rules = [line for line in text.splitlines() if line.startswith("-A KUBE-SEP-")][:6]
    assert rules
    messy = text
    for k, line in enumerate(rules):
        chain, spec = line[3:].split(" ", 1)
        if k % 3 == 0:
            new = f"-A {chain}  {spec}"  # (the spec after a double space)
        elif k % 3 == 1:
            new = f"-A {chain} {spec.replace(' ', chr(9), 1)}"
        else:
            new = f"-A {chain} {spec.replace(' ', '  ', 1)}"
        messy = messy.replace(line + "\n", new + "\n", 1)
    assert messy != text
    _same(load(messy, source="messy", memo=memo), load(messy, source="messy"))
    _same(load(text, source="clean", memo=memo), load(text, source="clean"))
