"""The loader's fast path for `-A` lines keeps the last line's chain (a dump writes a chain's rules in a row): whatever
the order of tables, chains (some names prefixes of others), rules and iptables-restore commands, a dump loads as it
does when every `-A` line is read the slow way (add_rule: two blanks after the chain name send a line there)."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from iptrace.errors import ParseError
from iptrace.iptables import load

_CHAINS = ("A", "AB", "A-B", "B")
_SPECS = ("-j ACCEPT", "-s 10.0.0.1/32 -j RETURN", '-m comment --comment "a b" -j DROP', "-j B", "-j AB")
_LINES = st.one_of(
    st.tuples(st.just("-A"), st.sampled_from(_CHAINS), st.sampled_from(_SPECS)),
    st.tuples(st.just("-I"), st.sampled_from(_CHAINS), st.sampled_from(_SPECS)),
    st.tuples(st.sampled_from(["-X", "-F"]), st.sampled_from(_CHAINS), st.just("")),
)
_TABLES = st.lists(st.tuples(st.sampled_from(["filter", "nat", "mangle"]), st.lists(_LINES, max_size=14)),
                   min_size=1, max_size=3)


def _dump(tables: list[tuple[str, list[tuple[str, str, str]]]], slow: bool) -> str:
    lines = []
    for table, body in tables:
        lines += [f"*{table}", *(f":{chain} - [0:0]" for chain in _CHAINS)]
        for command, chain, spec in body:
            if command == "-A":
                lines.append(f"-A {chain}{'  ' if slow else ' '}{spec}")
            elif command == "-I":
                lines.append(f"-I {chain} 1 {spec}")
            else:
                lines.append(f"{command} {chain}")
        lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def _loaded(text: str) -> object:
    try:
        return load(text, source="t")
    except ParseError as exc:
        return type(exc), exc.line, re.sub(r"\s+", " ", exc.reason)


@settings(max_examples=400, deadline=None)
@given(_TABLES)
def test_a_dump_loads_as_it_does_the_slow_way(tables: list[tuple[str, list[tuple[str, str, str]]]]) -> None:
    assert _loaded(_dump(tables, slow=False)) == _loaded(_dump(tables, slow=True))


def test_a_chain_of_each_table_gets_its_own_rules() -> None:
    text = "*filter\n:A - [0:0]\n:AB - [0:0]\n-A A -j ACCEPT\n-A AB -j DROP\n-A A -j RETURN\nCOMMIT\n" \
           "*nat\n:A - [0:0]\n-A A -j RETURN\n-A A -j ACCEPT\nCOMMIT\n"
    r = load(text)
    rules = {(t.name, c.name): [rule.text for rule in c.rules] for t in r.tables for c in t.chains}
    assert rules == {("filter", "A"): ["-j ACCEPT", "-j RETURN"], ("filter", "AB"): ["-j DROP"],
                     ("nat", "A"): ["-j RETURN", "-j ACCEPT"]}


def test_a_rule_after_a_command_keeps_count_of_its_jump() -> None:
    # (once a command counted a table's references, -A lines go through add_rule, which keeps the count: -X of a
    # chain in use fails)
    text = "*filter\n:A - [0:0]\n:B - [0:0]\n:C - [0:0]\n-A A -j ACCEPT\n-X C\n-A A -j B\n-X B\nCOMMIT\n"
    assert _loaded(text) == _loaded(text.replace("-A A -j B", "-A A  -j B"))
    assert isinstance(_loaded(text), tuple)


def test_a_tab_in_a_rule_is_a_blank() -> None:
    # (a tab inside what the shape key reads as one value: the key of another rule's shape, but one token more)
    text = "*filter\n:A - [0:0]\n-A A -s 10.0.0.1/32 -j RETURN\n-A A -s 10.0.0.2/32\tx -j RETURN\nCOMMIT\n"
    assert load(text) == load(text.replace("\t", " "))
