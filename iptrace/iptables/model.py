"""The frozen ruleset model: Ruleset → Table → Chain → Rule, and a rule's Matches, Options and Target.

A Rule keeps its argument text exactly as the dump wrote it (so `save` reproduces it token for token) plus a
shared `RuleShape` that says which token is which; Matches and the Target are derived from those on demand,
because a 160,000-rule dump must load in about a second and most rules are never looked at in detail.
Source positions (`line`) are evidence only and stay out of equality.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import chain as chained
from itertools import compress
from operator import attrgetter, itemgetter
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from iptrace.dataplane import MapAt, Step

TOKEN_RE = re.compile(r'"(?:\\.|[^"\\])*"|\S+')
_UNESCAPE_RE = re.compile(r"\\(.)")
_RULES = attrgetter("rules")  # (a Chain's)
_LINE = itemgetter(3)  # (a Rule's line)

TABLES = ("raw", "mangle", "nat", "filter", "security")
BUILTIN_CHAINS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "raw": ("PREROUTING", "OUTPUT"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "security": ("INPUT", "FORWARD", "OUTPUT"),
})


def unquote(token: str) -> str:
    """The value of a token as iptables sees it: quotes removed, `\\"` `\\'` `\\\\` unescaped."""
    if len(token) >= 2 and token[0] == '"' and token[-1] == '"':
        return _UNESCAPE_RE.sub(r"\1", token[1:-1])
    return token


@dataclass(frozen=True, slots=True)
class Option:
    """One option of a match or target, e.g. `--dport 80` or `! -s 10.0.0.0/8`; `values` are unquoted."""

    name: str
    values: tuple[str, ...]
    negated: bool = False

    @property
    def value(self) -> str:
        return self.values[0] if self.values else ""


@dataclass(frozen=True, slots=True)
class Match:
    """A match module with its options. `module` is "" for the basic matches (-s -d -p -i -o -f), and the
    protocol name with `implicit=True` for protocol options written without `-m` (`-p tcp --dport 80`)."""

    module: str
    options: tuple[Option, ...]
    implicit: bool = False


@dataclass(frozen=True, slots=True)
class Target:
    """What a matching rule does: a built-in or extension target, or a user chain (`goto` for -g)."""

    name: str
    options: tuple[Option, ...] = ()
    goto: bool = False

    def option(self, name: str) -> Option | None:
        for opt in self.options:
            if opt.name == name:
                return opt
        return None


# A shape slot: ("match", module_or_None, module_token_index, implicit) opens a match; ("opt", name, negated,
# arg_indices) is an option of the open match (or of the target after "target"); ("target", index, goto).
Slot = tuple


@dataclass(frozen=True, slots=True, eq=False)
class RuleShape:
    """How to read every rule whose tokens have this layout (the same option words in the same places).

    Built once per distinct layout by the loader (a kube-proxy dump has a few hundred) and shared.
    """

    slots: tuple[Slot, ...]
    target_index: int  # token index of the target name, -1 when the rule has none
    goto: bool
    n_tokens: int
    unknown_options: tuple[str, ...] = ()
    # option name -> slot index of its first occurrence, for O(1) `Rule.option()`.
    first: Mapping[str, int] = field(default_factory=dict)


class Rule(tuple):  # type: ignore[type-arg]
    """One `-A CHAIN …` line. `text` is the rule's arguments after the chain name, as written.

    Immutable (a tuple underneath, because a dump holds ~10^5 of them and a tuple is 5x cheaper to build
    than a frozen dataclass); equality and hashing use chain, text and counters — not `line` or `shape`.
    """

    __slots__ = ()

    def __new__(cls, chain: str, text: str, counters: tuple[int, int] | None = None, line: int = 0,
                shape: RuleShape | None = None) -> Rule:
        return tuple.__new__(cls, (chain, text, counters, line, shape))

    chain: str = property(itemgetter(0))  # type: ignore[assignment]
    text: str = property(itemgetter(1))  # type: ignore[assignment]
    counters: tuple[int, int] | None = property(itemgetter(2))  # type: ignore[assignment]
    line: int = property(itemgetter(3))  # type: ignore[assignment]
    shape: RuleShape | None = property(itemgetter(4))  # type: ignore[assignment]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Rule):
            return NotImplemented
        return self[0] == other[0] and self[1] == other[1] and self[2] == other[2]

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    def __hash__(self) -> int:
        return hash((self[0], self[1], self[2]))

    def __repr__(self) -> str:
        return f"Rule(chain={self[0]!r}, text={self[1]!r}, counters={self[2]!r}, line={self[3]!r})"

    def __getnewargs__(self) -> tuple:  # type: ignore[override]
        return tuple(self)

    @property
    def tokens(self) -> list[str]:
        return TOKEN_RE.findall(self.text)

    @property
    def target(self) -> Target | None:
        shape = self.shape
        if shape is None or shape.target_index < 0:
            return None
        tokens = self.tokens
        return Target(tokens[shape.target_index], self._options(tokens, target=True), shape.goto)

    @property
    def target_name(self) -> str:
        """The target (or jump chain) name without building anything else; "" when there is none."""
        shape = self.shape
        if shape is None or shape.target_index < 0:
            return ""
        if shape.target_index == shape.n_tokens - 1:
            return self.text.rsplit(None, 1)[-1]
        return self.tokens[shape.target_index]

    @property
    def matches(self) -> tuple[Match, ...]:
        shape = self.shape
        if shape is None:
            return ()
        tokens = self.tokens
        out: list[Match] = []
        module = ""
        implicit = False
        opts: list[Option] = []
        started = False
        for slot in shape.slots:
            kind = slot[0]
            if kind == "match":
                if started:
                    out.append(Match(module, tuple(opts), implicit))
                started, opts = True, []
                module = slot[1] if slot[2] < 0 else tokens[slot[2]]
                implicit = slot[3]
            elif kind == "opt":
                opts.append(Option(slot[1], tuple(unquote(tokens[i]) for i in slot[3]), slot[2]))
            else:  # "target": everything after belongs to the target
                break
        if started:
            out.append(Match(module, tuple(opts), implicit))
        return tuple(out)

    def _options(self, tokens: list[str], *, target: bool) -> tuple[Option, ...]:
        assert self.shape is not None
        opts: list[Option] = []
        in_target = False
        for slot in self.shape.slots:
            if slot[0] == "target":
                in_target = True
            elif slot[0] == "opt" and in_target == target:
                opts.append(Option(slot[1], tuple(unquote(tokens[i]) for i in slot[3]), slot[2]))
            elif slot[0] == "match" and in_target:
                in_target = False
        return tuple(opts)

    def option(self, name: str) -> Option | None:
        """The first match option called `name` (`-d`, `--dport`, `--comment`, …), or None. Cheap."""
        shape = self.shape
        if shape is None:
            return None
        index = shape.first.get(name)
        if index is None:
            return None
        slot = shape.slots[index]
        tokens = self.tokens
        return Option(slot[1], tuple(unquote(tokens[i]) for i in slot[3]), slot[2])

    def options(self, name: str) -> Iterator[Option]:
        """Every match option called `name`, in order."""
        if self.shape is None:
            return
        tokens = self.tokens
        for slot in self.shape.slots:
            if slot[0] == "target":
                return
            if slot[0] == "opt" and slot[1] == name:
                yield Option(slot[1], tuple(unquote(tokens[i]) for i in slot[3]), slot[2])

    @property
    def comment(self) -> str | None:
        opt = self.option("--comment")
        return " ".join(opt.values) if opt is not None else None

    def to_save(self) -> str:
        """The rule as iptables-save prints it."""
        prefix = f"[{self.counters[0]}:{self.counters[1]}] " if self.counters is not None else ""
        return f"{prefix}-A {self.chain} {self.text}" if self.text else f"{prefix}-A {self.chain}"


@dataclass(frozen=True, slots=True)
class Chain:
    """A chain: built-in ones have a policy (ACCEPT/DROP), user chains have `policy=None`."""

    name: str
    policy: str | None
    rules: tuple[Rule, ...] = ()
    counters: tuple[int, int] | None = None
    line: int = field(default=0, compare=False)

    @property
    def builtin(self) -> bool:
        return self.policy is not None


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    chains: tuple[Chain, ...]
    comments: tuple[str, ...] = ()  # comment lines that stood before the table header
    line: int = field(default=0, compare=False)
    _index: Mapping[str, Chain] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {c.name: c for c in self.chains})

    def chain(self, name: str) -> Chain | None:
        return self._index.get(name)

    @property
    def by_name(self) -> Mapping[str, Chain]:
        """Every chain by name (read-only; built with the table)."""
        return self._index

    def __contains__(self, name: object) -> bool:
        return name in self._index

    @property
    def rule_count(self) -> int:
        return sum(len(c.rules) for c in self.chains)


@dataclass(frozen=True, slots=True)
class LoadWarning:
    line: int
    message: str


@dataclass(frozen=True, slots=True)
class Ruleset:
    """A whole dump. `family` is "ipv4" or "ipv6" (from the header or the addresses); `format` is "save" for
    iptables-save text and "S" for `iptables -S` listings."""

    tables: tuple[Table, ...]
    family: str = "ipv4"
    format: str = field(default="save", compare=False)
    trailer: tuple[str, ...] = ()  # comment lines after the last COMMIT (e.g. the legacy-tables warning)
    source: str = field(default="<dump>", compare=False)
    warnings: tuple[LoadWarning, ...] = field(default=(), compare=False)
    skipped: tuple[LoadWarning, ...] = field(default=(), compare=False)
    _index: Mapping[str, Table] = field(default_factory=dict, compare=False, repr=False)
    # (table, block) of each block read in an earlier dump that gave its chains all their rules
    # (iptrace.iptables.blocks: Block.content_ids name them without reading them)
    replayed: tuple[tuple[str, Any], ...] = field(default=(), compare=False, repr=False)
    _by_line: dict[int, Rule] = field(default_factory=dict, compare=False, repr=False)
    _spans: list[tuple[int, tuple[Rule, ...]]] = field(default_factory=list, compare=False, repr=False)
    _table_spans: dict[str, list[tuple[int, tuple[Rule, ...]]]] = field(default_factory=dict, compare=False,
                                                                       repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {t.name: t for t in self.tables})

    @property
    def families(self) -> tuple[str, ...]:
        """The IP family this dump answers for (iptables-save and ip6tables-save are separate dumps)."""
        return (self.family,)

    def rule_at(self, line: int) -> Rule | None:
        """The rule written on input line `line`: found through the chains' first lines (a chain's rules are in
        input order, one block in an iptables-save dump) of the table whose block holds the line (the last whose
        header is above it: a question's evidence in a small table never lists the big one's chains), else of
        every table, else through an index of every line."""
        owner: Table | None = None
        for t in self.tables:
            if 0 < t.line < line and (owner is None or t.line > owner.line):
                owner = t
        if owner is not None:
            spans = self._table_spans.get(owner.name)
            if spans is None:
                spans = self._table_spans[owner.name] = _spans(owner.chains)
            found = _rule_in(spans, line)
            if found is not None:
                return found
        spans = self._spans
        if not spans:
            spans.extend(_spans(c for t in self.tables for c in t.chains))
        found = _rule_in(spans, line)
        if found is not None:
            return found
        # Not found that way (a restore file's `-I` puts a later line first, or its chains interleave).
        by_line = self._by_line
        if not by_line:
            by_line.update({r[3]: r for t in self.tables for c in t.chains for r in c.rules})
        return by_line.get(line)

    def line_text(self, line: int) -> str | None:
        """The rule on input line `line` as iptables-save prints it (evidence), or None."""
        rule = self.rule_at(line)
        return rule.to_save() if rule is not None else None

    def evidence_text(self, line: int) -> str | None:
        """The rule on input line `line` as a trace's path shows it (iptrace.iptables.compile's steps): as
        iptables-save prints it without its packet counters (`iptables-save -c`), one form of a rule in one answer."""
        rule = self.rule_at(line)
        return None if rule is None else f"-A {rule.chain} {rule.text}".rstrip()

    def step_text(self, step: Step) -> str:
        """The step's rule as iptables-save prints it (its chain in its `-A`)."""
        return (self.evidence_text(step.line) if step.line else None) or step.rule

    def elements_at(self, address: str, port: int, protocol: str) -> tuple[tuple[MapAt, str], ...]:
        """None: iptables has no sets of Service addresses, and a dump has its lines."""
        return ()

    def handle_texts(self, family: str, handles: Collection[int]) -> tuple[str, dict[int, str]]:
        """Nothing: iptables rules have no kernel handles in a dump (its lines say where)."""
        return "", {}

    def line_texts(self, lines: Collection[int]) -> dict[int, str | None]:
        """`line_text` of each of `lines` (a Service view's evidence: ~10^4 lines of one node), in one pass over
        the rules. When no two rules share a line, each of `rule_at`'s ways finds the one rule on it (or none),
        so the pass finds the same; when two do, `rule_at` says which, line by line."""
        found: dict[int, Rule] = {}
        for t in self.tables:
            # (the rules on those lines picked out at C level: a node's ~10^5 rules, ~10^4 of them wanted)
            rules = list(chained.from_iterable(map(_RULES, t.chains)))
            for r in compress(rules, map(lines.__contains__, map(_LINE, rules))):
                line = r[3]
                if line in found:
                    return {x: self.line_text(x) for x in lines}
                found[line] = r
        # (to_save's text written out for a rule without counters: ~10^4 of them)
        return {x: None if (r := found.get(x)) is None else f"-A {r[0]} {r[1]}" if r[2] is None and r[1] else
                r.to_save() for x in lines}

    def table(self, name: str) -> Table | None:
        return self._index.get(name)

    def chain(self, table: str, name: str) -> Chain | None:
        t = self._index.get(table)
        return t.chain(name) if t is not None else None

    @property
    def comments(self) -> tuple[str, ...]:
        return tuple(c for t in self.tables for c in t.comments) + self.trailer

    @property
    def rule_count(self) -> int:
        return sum(t.rule_count for t in self.tables)

    def rules(self) -> Iterator[tuple[Table, Chain, Rule]]:
        for t in self.tables:
            for c in t.chains:
                for r in c.rules:
                    yield t, c, r


def _spans(chains: Iterable[Chain]) -> list[tuple[int, tuple[Rule, ...]]]:
    """(first line, rules) of every chain with rules, by first line."""
    return sorted((c.rules[0][3], c.rules) for c in chains if c.rules)


def _rule_in(spans: list[tuple[int, tuple[Rule, ...]]], line: int) -> Rule | None:
    """The rule on `line` in the chain whose span starts last at or before it, if it is there."""
    at = bisect_right(spans, line, key=itemgetter(0)) - 1
    if at >= 0:
        rules = spans[at][1]
        i = bisect_left(rules, line, key=itemgetter(3))
        if i < len(rules) and rules[i][3] == line:
            return rules[i]
    return None
