"""Chain blocks read whole (iptrace/nftables/blocks.py): a chain matched by the template of the chains before it
must load exactly as the line loop reads it — same rules (items, comment, text, line, handle), same errors — for
every chain, template-shaped or not. The oracle is the same loader with templates never learnt."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iptrace.errors import IptraceError
from iptrace.nftables import blocks, loader

ENDPOINT = ("\t\tip saddr {a} jump mark-for-masquerade", "\t\tmeta l4proto tcp dnat to {a}:80")


def listing(bodies: list[list[str]], prefix: str = "endpoint") -> str:
    out = ["table ip kube-proxy {", "\tchain mark-for-masquerade {", "\t\tmeta mark set mark or 0x4000", "\t}"]
    for i, body in enumerate(bodies):
        out += ["", f"\tchain {prefix}-{i:04d}-ns/svc/tcp/p__10.1.{i // 250}.{i % 250}/80 {{", *body, "\t}"]
    return "\n".join([*out, "}", ""])


def alike(i: int) -> list[str]:
    a = f"10.1.{i // 250}.{i % 250}"
    return [line.format(a=a) for line in ENDPOINT]


def read(text: str, *, templates: bool = True, lenient: bool = False) -> tuple[Any, ...]:
    """Everything a load says: each rule's meaning and evidence, the references, warnings — or the error."""
    ld = loader.TextLoader(text, "<t>", lenient)
    if not templates:
        ld_learn = blocks.ChainShapes.learn
        blocks.ChainShapes.learn = lambda *a, **k: None  # type: ignore[method-assign]
    try:
        rs = ld.load()
    except IptraceError as exc:
        return ("error", str(exc))
    finally:
        if not templates:
            blocks.ChainShapes.learn = ld_learn  # type: ignore[method-assign]
    rules = tuple((t.name, c.name, c.line, tuple((r.text, r.line, r.handle, r.items, r.comment) for r in c.rules))
                  for t in rs.tables for c in t.chains)
    refs = tuple(sorted(r for t in ld.tables.values() for r in t.refs))
    return rules, refs, rs.warnings, rs.skipped


def test_alike_chains_are_read_whole_and_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    text = listing([alike(i) for i in range(40)])
    want = read(text, templates=False)
    hits = []
    _weakened(monkeypatch, lambda real: lambda *args: hits.append(real(*args)) or hits[-1])
    assert read(text) == want
    # Every chain but the first three: reading the first teaches the loader the word `mark-for-masquerade` (its rule
    # was keyed with a value there), the second's rules are keyed with the word, and the third, the second chain of
    # that block, makes it a template (a block seen once is not compiled: blocks.ChainShapes.learn).
    assert sum(chain is not None for chain in hits) == 37


# A later chain that is not quite like the ones before: each must be read as the line loop reads it.
ODD_BODIES: dict[str, list[str]] = {
    "known word at a value": ["\t\tip saddr 10.9.0.1 accept", "\t\tmeta l4proto tcp dnat to 10.9.0.1:80"],
    "bad address": ["\t\tip saddr 10.9.0.300 jump mark-for-masquerade", "\t\tmeta l4proto tcp dnat to 10.9.0.1:80"],
    "bad port": ["\t\tip saddr 10.9.0.1 jump mark-for-masquerade", "\t\tmeta l4proto tcp dnat to 10.9.0.1:99999"],
    "udp": ["\t\tip saddr 10.9.0.1 jump mark-for-masquerade", "\t\tmeta l4proto udp dnat to 10.9.0.1:80"],
    "one more rule": [*alike(900), "\t\tcounter"],
    "one rule less": alike(900)[:1],
    "no rules": [],
    "other indent": ["    ip saddr 10.9.0.1 jump mark-for-masquerade", "    meta l4proto tcp dnat to 10.9.0.1:80"],
    "trailing blank": ["\t\tip saddr 10.9.0.1 jump mark-for-masquerade ", "\t\tmeta l4proto tcp dnat to 10.9.0.1:80"],
    "double blank": ["\t\tip saddr  10.9.0.1 jump mark-for-masquerade", "\t\tmeta l4proto tcp dnat to 10.9.0.1:80"],
    "blank line inside": [alike(900)[0], "", alike(900)[1]],
    "handle comment": [alike(900)[0] + " # handle 7", alike(900)[1]],
    "carriage return": [alike(900)[0] + "\r", alike(900)[1]],
    "two statements": [alike(900)[0] + "; counter", alike(900)[1]],
    "chain option": ["\t\tpolicy accept", *alike(900)],
    "glued colon": ["\t\tip saddr 10.9.0.1: jump mark-for-masquerade", alike(900)[1]],
    "unknown chain": ["\t\tip saddr 10.9.0.1 jump nowhere-1", alike(900)[1]],
    "set reference": ["\t\tip saddr @s jump mark-for-masquerade", alike(900)[1]],
}


@pytest.mark.parametrize("lenient", [False, True])
@pytest.mark.parametrize("name", sorted(ODD_BODIES))
def test_a_chain_unlike_the_template_reads_as_the_line_loop_does(name: str, lenient: bool) -> None:
    bodies = [alike(i) for i in range(5)] + [ODD_BODIES[name]] + [alike(i) for i in range(5, 8)]
    text = listing(bodies)
    assert read(text, lenient=lenient) == read(text, templates=False, lenient=lenient)


def test_a_closing_brace_that_differs_is_not_read_whole() -> None:
    text = listing([alike(i) for i in range(6)]).replace("\t}\n\n\tchain endpoint-0004", "}\n\n\tchain endpoint-0004")
    assert read(text) == read(text, templates=False)


LINES = st.sampled_from([*ENDPOINT, *(b for body in ODD_BODIES.values() for b in body),
                         "\t\tnumgen random mod 2 vmap {{ 0 : goto endpoint-1, 1 : goto endpoint-1 }}",
                         "\t\tip saddr {a} goto endpoint-1", "\t\tmeta l4proto {{ tcp, udp }} accept",
                         "\t\tip daddr {a} counter packets 1 bytes 2 drop"])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(LINES, min_size=0, max_size=4), min_size=1, max_size=12),
       st.sampled_from(["endpoint", "service", "x"]), st.booleans())
def test_any_chains_read_as_the_line_loop_does(bodies: list[list[str]], prefix: str, lenient: bool) -> None:
    filled = [[line.format(a=f"10.2.0.{j}") for line in body] for j, body in enumerate(bodies)]
    text = listing(filled * 2, prefix)  # every body twice: the second time a template of it may exist
    assert read(text, lenient=lenient) == read(text, templates=False, lenient=lenient)


def _weakened(monkeypatch: pytest.MonkeyPatch, change: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    real = blocks._reader
    monkeypatch.setattr(blocks, "_reader", lambda builders, *bound: change(real(builders, *bound)))


def test_a_template_that_ignores_known_words_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutation: a template that took a known word for a value (`accept` where the address was) would read
    `ip saddr 10.9.0.1 accept` as an unknown statement, not a verdict."""
    bodies = [[f"\t\tip saddr 10.9.0.{i} foo{i}"] for i in range(1, 5)] + [["\t\tip saddr 10.9.0.9 accept"]]
    text = listing(bodies)
    want = read(text, templates=False)
    assert read(text) == want
    real = blocks._reader
    monkeypatch.setattr(blocks, "_reader", lambda builders, known, *bound: real(builders, {}, *bound))
    assert read(text) != want


# What may stand between one chain read whole and the next header: the run of chains read without the line loop
# takes only a blank line and a header indented as the template's was; anything else is the line loop's.
SEPARATORS = {
    "one blank line": "\n\n\t", "no blank line": "\n\t", "two blank lines": "\n\n\n\t", "blank line of blanks": "\n \n\t",
    "other indent": "\n\n  ", "no indent": "\n\n", "carriage return": "\r\n\r\n\t", "comment line": "\n# x\n\t",
    "set between": "\n\n\tset s {\n\t\ttype ipv4_addr\n\t}\n\n\t",
}


@pytest.mark.parametrize("lenient", [False, True])
@pytest.mark.parametrize("name", sorted(SEPARATORS))
def test_chains_after_a_chain_read_whole_read_as_the_line_loop_does(name: str, lenient: bool) -> None:
    text = listing([alike(i) for i in range(8)])
    heads = [m.start() for m in re.finditer(r"\n\n\tchain ", text)]
    sep = SEPARATORS[name]
    for at in reversed(heads[3::2]):  # (chains 2, 4, 6: after chains read whole)
        text = text[:at] + sep + text[at + 3:]
    assert read(text, lenient=lenient) == read(text, templates=False, lenient=lenient)


@pytest.mark.parametrize("lenient", [False, True])
@pytest.mark.parametrize("which", [0, 3, 5, 7])
def test_a_name_declared_twice_in_a_run_reads_as_the_line_loop_does(which: int, lenient: bool) -> None:
    """The chain whose header repeats an earlier name ends the run: the line loop says it is declared twice."""
    text = listing([alike(i) for i in range(9)])
    names = re.findall(r"\tchain (endpoint-\S+) \{", text)
    text = text.replace(f"chain {names[8]} {{", f"chain {names[which]} {{")
    fast = read(text, lenient=lenient)
    assert fast == read(text, templates=False, lenient=lenient)
    assert fast[0] == "error" if not lenient else fast[3]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["", "\r", "é", "x" * 70, "\t# note", "\tset t {", "\t}", "\tchain c-1 {"]),
                max_size=6), st.integers(0, 7), st.booleans())
def test_chains_at_any_offset_read_as_the_line_loop_does(before: list[str], at: int, lenient: bool) -> None:
    """Chains are matched at their character offset, counted from the lines before them: lines of any length and
    characters (carriage returns, non-ASCII) before a chain read whole must not move where it is matched."""
    lines = listing([alike(i) for i in range(8)]).split("\n")
    heads = [i for i, line in enumerate(lines) if line.startswith("\tchain endpoint-")]
    lines[heads[at]:heads[at]] = before
    text = "\n".join(lines)
    assert read(text, lenient=lenient) == read(text, templates=False, lenient=lenient)


def test_a_run_reads_chains_without_the_line_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """(So the cases above test the run: after the template is learnt, each chain is read by it, in one run.)"""
    text = listing([alike(i) for i in range(40)])
    calls = []
    real = blocks.ChainShapes.read

    def counting(self: blocks.ChainShapes, *args: Any) -> tuple[int, int]:
        calls.append(real(self, *args))
        return calls[-1]

    monkeypatch.setattr(blocks.ChainShapes, "read", counting)
    loader.TextLoader(text, "<t>", False).load()
    assert [count for _, count in calls if count] == [37]


def test_a_rule_read_whole_keeps_one_line_number_object() -> None:
    """A rule keeps its line twice (its slot and its `_lazy`): one int object, as the line loop's builder call
    gives it (each `line + 1` written into a chain reader would make another, ~50,000 at 5,000 Services)."""
    text = listing([alike(i) for i in range(300, 400)])  # (lines past 256: ints Python does not share anyway)
    rs = loader.TextLoader(text, "<t>", False).load()
    rules = [r for c in rs.tables[0].chains for r in c.rules if c.name.startswith("endpoint-")]
    assert len(rules) == 200 and rules[-1].line > 256
    assert all(r.line is object.__getattribute__(r, "_lazy")[2] for r in rules)


def test_a_chain_read_whole_makes_its_rules_when_read() -> None:
    """A chain read whole keeps a record (model.Chain._lazy) and makes its rules on first use, as the line loop
    reads them; its rule count is the template's without making them."""
    text = listing([alike(i) for i in range(10)])
    rs = loader.TextLoader(text, "<t>", False).load()
    whole = [c for c in rs.tables[0].chains if c._lazy is not None]
    assert len(whole) == 7
    for c in whole:
        with pytest.raises(AttributeError):
            object.__getattribute__(c, "rules")
        assert c.rule_count == 2
    assert all(len(c.rules) == 2 and object.__getattribute__(c, "rules") is c.rules for c in whole)  # (kept)
    assert read(text) == read(text, templates=False)


# kube-proxy's service chains, listed after their endpoint chains: a verdict map's braces, commas and colons are
# words the line loop splits off (blocks._PUNCTUATION), so its template matches them in place.
def services_listing(n: int, vmap: str = "{{ 0 : goto {a}, 1 : goto {b} }}", masq: bool = True) -> str:
    """`n` Service ports: two endpoint chains each, then the service chain (`masq`: with its masquerade rule)."""
    out = ["table ip kube-proxy {", "\tchain mark-for-masquerade {", "\t\tmeta mark set mark or 0x4000", "\t}"]
    for i in range(n):
        names = [f"endpoint-{i:04d}{x}-ns/svc/tcp/p__10.1.{i}.{j}/80" for j, x in enumerate("ab")]
        for j, name in enumerate(names):
            out += ["", f"\tchain {name} {{", *[line.format(a=f"10.1.{i}.{j}") for line in ENDPOINT], "\t}"]
        out += ["", f"\tchain service-{i:04d}-ns/svc/tcp/p {{",
                *([f"\t\tip daddr 10.96.0.{i} ip saddr != 10.244.0.0/16 jump mark-for-masquerade"] if masq else []),
                "\t\tnumgen random mod 2 vmap " + vmap.format(a=names[0], b=names[1]), "\t}"]
    return "\n".join([*out, "}", ""])


@pytest.mark.parametrize("masq", [True, False])
def test_service_chains_are_read_whole_in_the_run_of_their_endpoint_chains(monkeypatch: pytest.MonkeyPatch,
                                                                           masq: bool) -> None:
    """Once both templates are learnt, endpoint and service chains are read in one run, each by its own template,
    the same as the line loop reads them (without `masq`, a service chain has one rule less than an endpoint chain:
    a run that counted lines by the wrong template would misnumber every rule after it)."""
    text = services_listing(30, masq=masq)
    want = read(text, templates=False)
    calls = []
    real = blocks.ChainShapes.read

    def counting(self: blocks.ChainShapes, *args: Any) -> tuple[int, int]:
        calls.append(real(self, *args))
        return calls[-1]

    monkeypatch.setattr(blocks.ChainShapes, "read", counting)
    assert read(text) == want
    assert max(count for _, count in calls) >= 3 * 28


VMAPS = {
    "kube-proxy's": "{{ 0 : goto {a}, 1 : goto {b} }}",
    "comma glued to the next": "{{ 0 : goto {a},1 : goto {b} }}",
    "comma alone": "{{ 0 : goto {a} , 1 : goto {b} }}",
    "colon glued": "{{ 0: goto {a}, 1 : goto {b} }}",
    "colon glued after": "{{ 0 :goto {a}, 1 : goto {b} }}",
    "brace glued": "{{0 : goto {a}, 1 : goto {b} }}",
    "closing brace glued": "{{ 0 : goto {a}, 1 : goto {b}}}",
    "comma before the brace": "{{ 0 : goto {a}, 1 : goto {b}, }}",
    "two commas": "{{ 0 : goto {a},, 1 : goto {b} }}",
    "one element": "{{ 0 : goto {a} }}",
    "three elements": "{{ 0 : goto {a}, 1 : goto {b}, 2 : goto {b} }}",
    "known word at a key": "{{ accept : goto {a}, 1 : goto {b} }}",
    "colon at the end": "{{ 0 : goto {a}, 1 : goto {b} }} :",
    "unclosed": "{{ 0 : goto {a}, 1 : goto {b}",
    "missing chain": "{{ 0 : goto {a}, 1 : goto {b}x }}",
}


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 11), st.sampled_from(sorted(VMAPS))), max_size=4), st.booleans(),
       st.booleans())
def test_service_chains_of_any_verdict_map_read_as_the_line_loop_does(changes: list[tuple[int, str]], masq: bool,
                                                                      lenient: bool) -> None:
    lines = services_listing(12, masq=masq).split("\n")
    at = [i for i, line in enumerate(lines) if "numgen" in line]
    for which, kind in changes:
        a, b = (f"endpoint-{which:04d}{x}-ns/svc/tcp/p__10.1.{which}.{j}/80" for j, x in enumerate("ab"))
        lines[at[which]] = "\t\tnumgen random mod 2 vmap " + VMAPS[kind].format(a=a, b=b)
    text = "\n".join(lines)
    assert read(text, lenient=lenient) == read(text, templates=False, lenient=lenient)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["endpoint", "service", "local"]),
                          st.lists(LINES, min_size=0, max_size=3)), min_size=1, max_size=10), st.booleans())
def test_chains_of_several_templates_read_as_the_line_loop_does(chains: list[tuple[str, list[str]]],
                                                                lenient: bool) -> None:
    """Runs that go from one template to another (by each header's name prefix) read as the line loop does."""
    out = ["table ip kube-proxy {", "\tchain mark-for-masquerade {", "\t\tmeta mark set mark or 0x4000", "\t}",
           "\tchain endpoint-1 {", "\t}"]
    for i, (prefix, body) in enumerate(chains * 3):  # (each chain three times: learnt, then read whole in runs)
        out += ["", f"\tchain {prefix}-{i:04d}-ns/svc/tcp/p {{", *[line.format(a=f"10.2.0.{i % 250}") for line in body],
                "\t}"]
    text = "\n".join([*out, "}", ""])
    assert read(text, lenient=lenient) == read(text, templates=False, lenient=lenient)


# kube-proxy's session affinity: a set for each endpoint, updated by its endpoint chain and looked up by its service
# chain. Those lines reference a set (`@`): the line loop keys them by MASK_RE (make_rule), and so may a template.
AFFINITY_SET = "affinity-{h}-ns/svc/tcp/p__{a}/80"
AFFINITY = ("\t\tip saddr {a} jump mark-for-masquerade", "\t\tupdate @" + AFFINITY_SET + " {{ ip saddr }}",
            "\t\tmeta l4proto tcp dnat to {a}:80")
# Lines with a set reference that are not quite kube-proxy's: each must be read as the line loop reads it.
MASKED = ["\t\tupdate @" + AFFINITY_SET + " {{ ip saddr }}", "\t\tip saddr @" + AFFINITY_SET + " goto target-{h}",
          "\t\tupdate @affinity-x {{ ip saddr }}", "\t\tupdate @AFFINITY {{ ip saddr }}", "\t\tupdate @a1 {{ ip daddr }}",
          "\t\tupdate @" + AFFINITY_SET + "{{ ip saddr }}", "\t\tupdate @ " + AFFINITY_SET + " {{ ip saddr }}",
          "\t\tupdate @" + AFFINITY_SET + ": {{ ip saddr }}", "\t\tupdate @a1:b2 {{ ip saddr }}",
          "\t\tupdate @a1@b2 {{ ip saddr }}", "\t\tupdate @a1/b {{ ip saddr }}", "\t\tupdate @/b {{ ip saddr }}",
          "\t\tupdate @a1,b2 {{ ip saddr }}", "\t\tupdate @a1 {{ ip saddr }} comment \"x1\"", "\t\tupdate @a1 {{ ip saddr",
          "\t\tupdate @a1 {{ ip saddr }} # handle 3", "\t\tip6 saddr @a1 goto target-{h}", "\t\tip saddr @a1 accept",
          "\t\tip saddr @a1 goto A1", "\t\tip saddr @a1 goto target-{h} counter", "\t\tip saddr @@a1 accept",
          "\t\tip saddr @a1 jump mark-for-masquerade", "\t\tip saddr @ a1 accept", "\t\tip saddr @a1  accept",
          "\t\tip saddr @undeclared1 accept", "\t\tip saddr @" + AFFINITY_SET + " goto target-{h}x"]


def affinity_listing(bodies: list[list[str]], prefix: str = "endpoint") -> str:
    """Each body as chain `{prefix}-H-…` (its lines formatted with its address `a` and hash `h`), with every set and
    chain the bodies may name declared."""
    out = ["table ip kube-proxy {", "\tchain mark-for-masquerade {", "\t\tmeta mark set mark or 0x4000", "\t}"]
    for name in ("affinity-x", "AFFINITY", "a1", "a1:b2", "a1@b2", "a1/b", "/b", "a1,b2"):
        out += [f"\tset {name} {{", "\t\ttype ipv4_addr", "\t\tflags dynamic,timeout", "\t}"]
    chains = []
    for i, body in enumerate(bodies):
        a, h = f"10.1.{i // 250}.{i % 250}", f"H{i:04d}"
        out += [f"\tset {AFFINITY_SET.format(a=a, h=h)} {{", "\t\ttype ipv4_addr", "\t\tsize 65535",
                "\t\tflags dynamic,timeout", "\t\ttimeout 3h", "\t}"]
        chains += ["", f"\tchain {prefix}-{h}-ns/svc/tcp/p__{a}/80 {{", *(line.format(a=a, h=h) for line in body), "\t}",
                   "", f"\tchain target-{h} {{", "\t}"]
    return "\n".join([*out, *chains, "}", ""])


def test_affinity_chains_are_read_whole_and_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    text = affinity_listing([list(AFFINITY)] * 30)
    want = read(text, templates=False)
    hits = []
    _weakened(monkeypatch, lambda real: lambda *args: hits.append(real(*args)) or hits[-1])
    assert want[0] != "error" and read(text) == want
    assert sum(chain is not None for chain in hits) >= 27


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.sampled_from([*AFFINITY, *MASKED, *ENDPOINT]), min_size=1, max_size=4), min_size=1,
                max_size=8), st.sampled_from(["endpoint", "service"]), st.booleans())
def test_chains_with_set_references_read_as_the_line_loop_does(bodies: list[list[str]], prefix: str,
                                                               lenient: bool) -> None:
    text = affinity_listing(bodies * 3, prefix)  # (each body three times: learnt, then read whole)
    assert read(text, lenient=lenient) == read(text, templates=False, lenient=lenient)


@pytest.mark.parametrize("line", MASKED[2:])
def test_a_set_reference_unlike_the_template_reads_as_the_line_loop_does(line: str) -> None:
    learnt = [AFFINITY[0], MASKED[0].replace("ip saddr", "ip daddr") if "ip daddr" in line else MASKED[0]]
    bodies = [learnt] * 4 + [[AFFINITY[0], line]] + [learnt] * 2
    text = affinity_listing(bodies)
    assert read(text) == read(text, templates=False)
    assert read(text, lenient=True) == read(text, templates=False, lenient=True)


def test_chains_of_two_templates_of_one_prefix_in_turn_are_read_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """Endpoint chains with and without affinity, a few of each in turn (as kube-proxy lists them, Service by
    Service): each kind's template is kept for the prefix, so only the first chains of each kind take the line
    loop (with one template a prefix, every change of kind did)."""
    text = affinity_listing(([list(ENDPOINT)] * 3 + [list(AFFINITY)] * 3) * 5)
    want = read(text, templates=False)
    hits = []
    _weakened(monkeypatch, lambda real: lambda *args: hits.append(real(*args)) or hits[-1])
    assert want[0] != "error" and read(text) == want
    assert sum(chain is not None for chain in hits) >= 25


def test_a_block_seen_once_is_not_compiled(monkeypatch: pytest.MonkeyPatch) -> None:
    """A template costs its regexes and reader: a chain unlike any other (a base chain, a helper) makes none; the
    second chain of a block makes its template."""
    made = []
    real = blocks._reader
    monkeypatch.setattr(blocks, "_reader", lambda *args: made.append(args) or real(*args))
    read(listing([alike(0), alike(1), ["\t\tcounter"], ["\t\tip saddr 10.9.0.1 accept"]]))
    assert made == []
    read(listing([alike(0), alike(1), alike(2)]))
    assert len(made) == 1
