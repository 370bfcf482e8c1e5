"""loader.LoadMemo: what loading one node's dump learnt, used to load the next node of the same cluster (audit's
workers keep one). The Ruleset must be the one a load without it gives — rules, shapes, lines, warnings,
skipped lines, errors — whatever the memo saw before; and it must be used (the shape-key regex and lark are
skipped for blocks of lines and shapes seen before)."""

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
            # Only the node's own rules (its pod CIDR's, and the chains its shuffled order writes otherwise:
            # KUBE-SERVICES, KUBE-NODEPORTS) are read anew, once a later node has taught the memo which chains the
            # nodes write otherwise (the first node's blocks hold several chains each).
            assert counting.calls < rules / (2 if i == 1 else 5)
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
    assert isinstance(memo["iptables"], LoadMemo) and memo["iptables"].shapes
    assert memo["iptables"].blocks
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


def _load_both(text: str, memo: LoadMemo, lenient: bool) -> None:
    """`text` loads with `memo` as without it: the same Ruleset, or the same error."""
    try:
        plain = load(text, source="n", lenient=lenient)
    except IptraceError as exc:
        with pytest.raises(IptraceError) as memoised:
            load(text, source="n", lenient=lenient, memo=memo)
        assert str(memoised.value) == str(exc)
        return
    _same(load(text, source="n", lenient=lenient, memo=memo), plain)


def _mutated(text: str, kind: str, pick: int) -> str:
    lines = text.split("\n")
    rules = [i for i, line in enumerate(lines) if line.startswith("-A ")]
    at = rules[pick % len(rules)]
    line = lines[at]
    chain = line.split()[1]
    if kind == "other-table":  # (a line seen in nat, here in filter, where its chain is not declared)
        lines.insert(lines.index("*filter") + 1, line)
    elif kind == "before-declaration":  # (its chain declared after it)
        lines.insert(next(i for i, x in enumerate(lines) if x.startswith(f":{chain} ")), line)
    elif kind == "target-undeclared":  # (the chain it jumps to is not declared any more)
        declared = set(lines)
        jumps = [i for i in rules if f":{lines[i].split()[-1]} - [0:0]" in declared]
        target = lines[jumps[pick % len(jumps)]].split()[-1]
        lines = [x for x in lines if x != f":{target} - [0:0]"]
    elif kind == "after-command":  # (a command edited the table first: its -A lines are counted one by one)
        lines.insert(at, f"-I {chain} 1 -j RETURN")
    elif kind == "twice":
        lines.insert(at, line)
    elif kind == "blanks":
        lines[at] = line.replace(" ", "  ", 2)
    elif kind == "outside-table":
        lines.insert(len(lines) - 1, line)
    elif kind == "interleaved":  # (its chain's block of lines split by a rule of another chain)
        other = next((i for i in rules if i > at and lines[i].split()[1] != chain), None)
        assert other is not None
        lines.insert(other + 1, line)
        del lines[at]
    elif kind == "across-tables":  # (a table's last rule, again as the first line of the next table)
        ends = [i for i, x in enumerate(lines) if x == "COMMIT" and lines[i - 1].startswith("-A ")]
        end = ends[pick % len(ends)]
        last = lines[end - 1]
        start = next((i for i in range(end, len(lines)) if lines[i].startswith("*")), len(lines) - 1)
        lines.insert(start + 1, last)
    return "\n".join(lines)


def test_a_line_read_before_loads_as_the_line_does_wherever_it_is() -> None:
    """Lines read before (blocks of them: LoadMemo.blocks) are taken whole: in another table, before their chain's declaration,
    jumping to a chain no longer declared, after a command, twice, with blanks, outside a table, between another
    chain's rules, as the first of the next table (after a table's last rule of the same chain) — each load with
    the memo gives what a load without one gives (rules, lines, errors, lenient skips)."""
    memo = LoadMemo()
    load(_node(0), memo=memo)
    load(_node(1), memo=memo)
    assert memo.blocks
    text = _node(2)
    for kind in ("other-table", "before-declaration", "target-undeclared", "after-command", "twice", "blanks",
                 "outside-table", "interleaved", "across-tables"):
        for pick in (0, 7, 61, 333):
            mutated = _mutated(text, kind, pick)
            assert mutated != text
            for lenient in (False, True):
                _load_both(mutated, memo, lenient)


def test_blocks_are_kept_with_their_memo() -> None:
    memo = LoadMemo()
    load(_node(0), memo=memo)
    assert len(memo.blocks) > 10
    other = LoadMemo()
    load(_node(1), memo=other)  # (a new memo starts again: what it keeps is its own)
    assert len(other.blocks) > 10 and not set(map(id, memo.blocks.values())) & set(map(id, other.blocks.values()))


def test_a_block_found_under_another_key_loads_as_its_lines() -> None:
    """A block is found by its table and first chain, then compared with the text: every key given another block (of
    another chain, another table, a declarations' block for rules and the other way round) loads as without a memo."""
    memo = LoadMemo()
    load(_node(0), memo=memo)
    load(_node(1), memo=memo)
    text = _node(2)
    keys, found = list(memo.blocks), list(memo.blocks.values())
    assert len(keys) > 10
    for shift in (1, 2, 97):
        memo.blocks.clear()
        memo.blocks.update(zip(keys, found[shift:] + found[:shift], strict=True))
        _same(load(text, source="n2", memo=memo), load(text, source="n2"))
    memo.blocks.clear()
    for (_table, name), kept in zip(keys, found, strict=True):  # (each block under every table's key)
        for other in ("filter", "nat", "mangle"):
            memo.blocks[(other, name)] = (*memo.blocks.get((other, name), ()), *kept)
    _same(load(text, source="n2", memo=memo), load(text, source="n2"))


def test_chain_names_are_one_string_across_loads() -> None:
    """Declared chain names are interned: two nodes' rulesets (and what caches keep of either) share one string a
    name, whatever memo read them."""
    first, second = load(_node(0)), load(_node(1), memo=LoadMemo())
    names = {c.name: c.name for t in first.tables for c in t.chains}
    shared = [c.name for t in second.tables for c in t.chains if c.name in names]
    assert len(shared) > 100 and all(names[n] is n for n in shared)
    assert all(r.chain is c.name for t in second.tables for c in t.chains for r in c.rules)
