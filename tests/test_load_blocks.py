"""Blocks of lines read before (iptrace.iptables.blocks, kept by a LoadMemo): a dump loads with a memo that has read
other dumps as it loads without one — rules, shapes, line numbers of rules and chains, warnings, skipped lines, errors —
whatever the blocks it finds stand among: other tables, chains declared twice or not at all, built-in chains, commands
that edit a table, rules of a chain before or after its block, counters, blanks, jumps to chains declared later or
never. The dumps are drawn from a few chains and specs, so that blocks recur in other places."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from iptrace.errors import ParseError
from iptrace.iptables import blocks, load
from iptrace.iptables.model import Ruleset, RuleShape
from iptrace.iptables.rule_shapes import LoadMemo

_CHAINS = ("A", "B", "AB", "INPUT")
_SPECS = ("-j ACCEPT", "-s 10.0.0.1/32 -j RETURN", '-m comment --comment "a b" -j DROP', "-j B", "-j AB",
          "-p tcp --dport 80 -j A")
_RULE = st.tuples(st.sampled_from(_CHAINS), st.lists(st.sampled_from(_SPECS), min_size=1, max_size=3))
_OTHER = st.sampled_from(["-I A 1 -j RETURN", "-X AB", "-F B", ":B - [0:0]", ":INPUT ACCEPT [0:0]", ":C - [0:0]",
                          "[1:2] -A A -j ACCEPT", "-A A  -j ACCEPT", "", "-A B -j C", "# comment", "-A A -j"])
_BODY = st.lists(st.one_of(_RULE, _OTHER), max_size=8)
_TABLE = st.tuples(st.sampled_from(["filter", "nat"]), st.lists(st.sampled_from(_CHAINS[:3]), max_size=3), _BODY,
                   st.booleans())
_DUMP = st.lists(_TABLE, min_size=1, max_size=3)


def _text(tables: list[tuple[str, list[str], list[object], bool]]) -> str:
    lines = []
    for table, declared, body, commit in tables:
        lines += [f"*{table}", *(f":{chain} - [0:0]" for chain in declared)]
        for item in body:
            if isinstance(item, tuple):
                chain, specs = item
                lines += [f"-A {chain} {spec}" for spec in specs]
            else:
                lines.append(str(item))
        if commit:
            lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def _loaded(text: str, memo: LoadMemo | None, lenient: bool) -> object:
    try:
        r = load(text, source="t", memo=memo, lenient=lenient)
    except ParseError as exc:
        return type(exc), exc.line, re.sub(r"\s+", " ", exc.reason)
    return _value(r)


def _shape(s: RuleShape | None) -> object:
    return None if s is None else (s.slots, s.target_index, s.goto, s.n_tokens, s.unknown_options)


def _value(r: Ruleset) -> object:
    return (r.tables, [(c.name, c.line, c.policy, c.counters, [(x.line, _shape(x.shape)) for x in c.rules])
                       for t in r.tables for c in t.chains], r.warnings, r.skipped, r.family)


# (another dump of the same cluster: the first with lines put in, taken out, or tables swapped)
_CHANGE = st.tuples(st.sampled_from(["insert", "delete", "swap"]), st.integers(0, 40), st.one_of(_RULE, _OTHER))


def _changed(tables: list[tuple[str, list[str], list[object], bool]], changes: list[tuple[str, int, object]]
             ) -> list[tuple[str, list[str], list[object], bool]]:
    out = [(table, declared, list(body), commit) for table, declared, body, commit in tables]
    for kind, at, item in changes:
        body = out[at % len(out)][2]
        if kind == "insert":
            body.insert(at % (len(body) + 1), item)
        elif kind == "delete" and body:
            del body[at % len(body)]
        elif kind == "swap":
            out.append(out.pop(at % len(out)))
    return out


@settings(max_examples=400, deadline=None)
@given(_DUMP, st.lists(st.lists(_CHANGE, max_size=3), min_size=1, max_size=4), st.booleans())
def test_dumps_load_with_blocks_as_without(first: list[tuple[str, list[str], list[object], bool]],
                                           changes: list[list[tuple[str, int, object]]], lenient: bool) -> None:
    memo = LoadMemo()
    _loaded(_text(first), memo, lenient)
    for change in changes:
        text = _text(_changed(first, change))
        assert _loaded(text, memo, lenient) == _loaded(text, None, lenient)


def test_a_later_node_is_read_by_blocks() -> None:
    from bench import fleet, synth

    memo = LoadMemo()
    services = synth.scale(40, 3, 0)
    load(fleet.node_dump(services, 0), memo=memo)
    load(fleet.node_dump(services, 1), memo=memo)  # (which chains the nodes write otherwise: blocks of their own)
    text = fleet.node_dump(services, 2)
    _stream, known, _runs = blocks.plan(text, memo.blocks)
    covered = sum(b.line_count for b in known)
    assert covered > 0.8 * text.count("\n")
    assert any(b.counts is None for b in known) and any(b.counts is not None for b in known)
    assert _value(load(text, memo=memo)) == _value(load(text))


def test_a_block_with_more_rules_of_its_chain_after_or_before_it_is_read_line_by_line() -> None:
    head = "*filter\n:A - [0:0]\n:B - [0:0]\n"
    memo = LoadMemo()
    load(head + "-A A -j ACCEPT\n-A B -j DROP\nCOMMIT\n", memo=memo)
    assert ("filter", "A") in memo.blocks
    for text in (head + "-A A -j ACCEPT\n-A B -j DROP\n-A B -j RETURN\nCOMMIT\n",
                 head + "-A A -j RETURN\n-A A -j ACCEPT\n-A B -j DROP\nCOMMIT\n",
                 head + "-A B -j DROP\n-A A -j ACCEPT\n-A B -j DROP\nCOMMIT\n"):
        assert _value(load(text, memo=memo)) == _value(load(text))


_BASE = ("*raw\n:INPUT - [0:0]\n:A - [0:0]\nCOMMIT\n*filter\n:A - [0:0]\n:B - [0:0]\n:C - [0:0]\n-A A -j B\n-A A -s 10.0.0.1/32 -j RETURN\n-A B -j C\n"
         "-A C -j ACCEPT\nCOMMIT\n*nat\n:A - [0:0]\n:B - [0:0]\n:C - [0:0]\n-A A -j ACCEPT\nCOMMIT\n")
_DECLARED = ":A - [0:0]\n:B - [0:0]\n:C - [0:0]\n"
_RULES = "-A A -j B\n-A A -s 10.0.0.1/32 -j RETURN\n-A B -j C\n-A C -j ACCEPT\n"
# (the base's blocks where a line-by-line load reads them otherwise than the base's: every condition of replay)
_ELSEWHERE = {
    "other table": "*nat\n" + _DECLARED + _RULES + "COMMIT\n",
    "table the plan misreads": "*filter\n" + _DECLARED + " COMMIT\n *nat\n" + _DECLARED + _RULES + "COMMIT\n",
    "after a command": "*filter\n" + _DECLARED + "-I A 1 -j RETURN\n" + _RULES + "COMMIT\n",
    "chain holding rules": "*filter\n" + _DECLARED + "-A A -j DROP\n-A C -j DROP\n" + _RULES + "COMMIT\n",
    "target not declared": "*filter\n:A - [0:0]\n:B - [0:0]\n" + _RULES + ":C - [0:0]\nCOMMIT\n",
    "chain not declared": "*filter\n:B - [0:0]\n:C - [0:0]\n" + _RULES + "COMMIT\n",
    "outside a table": "*filter\n" + _DECLARED + "COMMIT\n" + _RULES + _DECLARED,
    "after a COMMIT the plan misreads": "*filter\n" + _DECLARED + " COMMIT\n" + _DECLARED + _RULES,
    "declared already": "*filter\n:B - [0:0]\n" + _DECLARED + _RULES + "COMMIT\n",
    "declared twice in one table": "*filter\n" + _DECLARED + _DECLARED + _RULES + "COMMIT\n",
    "built in where the plan misreads the table": "*raw\n COMMIT\n *filter\n:INPUT - [0:0]\n:A - [0:0]\nCOMMIT\n",
    "a blank in a declared name": "*filter\n" + _DECLARED + ":X Y - [0:0]\n:Z - [0:0]\n" + _RULES + "COMMIT\n",
    "an option read with a warning": "*filter\n" + _DECLARED + "-A A -m frobnicate --frob 3 -j ACCEPT\n-A B -j C\n"
                                     "COMMIT\n",
    "built-in chain": "*filter\n:INPUT - [0:0]\n" + _DECLARED + _RULES + "-A INPUT -j A\nCOMMIT\n",
}


def test_a_block_found_where_its_lines_read_otherwise_loads_as_its_lines() -> None:
    """Each condition of a block's replay broken once, and lines no block may hold: the block is found (its text, where
    the plan guesses its table), and the load is the one without a memo (errors, lenient skips, warnings, rules and
    lines), the first time and the next."""
    for why, text in _ELSEWHERE.items():
        for lenient in (False, True):
            memo = LoadMemo()
            load(_BASE, memo=memo)
            assert {("filter", ":A"), ("filter", "A")} <= set(memo.blocks)
            _stream, known, _runs = blocks.plan(text, memo.blocks)
            assert known, why
            assert _loaded(text, memo, lenient) == _loaded(text, None, lenient), why
            # (and again, with the blocks the first load kept)
            assert _loaded(text, memo, lenient) == _loaded(text, None, lenient), why


def test_two_ways_of_writing_one_cluster_s_chains_are_both_kept() -> None:
    """A node's IPv4 and IPv6 dumps (read with one memo) name the same chains with other rules: each dump's blocks
    are found again after the other's."""
    from bench import fleet, synth

    memo = LoadMemo()
    services = synth.scale(40, 3, 0)
    first = fleet.node_dump(services, 0)
    other = first.replace("10.", "11.")
    for text in (first, other, first, other):
        load(text, memo=memo)
    for text in (first, other):
        _stream, known, _runs = blocks.plan(text, memo.blocks)
        assert sum(b.line_count for b in known) > 0.9 * text.count("\n")
        assert _value(load(text, memo=memo)) == _value(load(text))
