"""The frozen nftables model: Ruleset → Table → Chain (→ Rule → items) and Set (→ Element), built for evaluation.

A rule is a sequence of items, left to right as the kernel runs them: `Match` (a relational test), `VerdictMap`,
statements (`Verdict`, `Reject`, `Nat`, `Mangle`, `SetUpdate`, `Counter`, `Statement`, `Xt`) and `Unknown` for
what iptrace does not understand (kept verbatim, never a silent match). Values are normalised by datatype so
that the kernel's listing, its JSON and kube-proxy's transaction text of one ruleset give equal models:
addresses canonical, ports/marks/numbers `int`, protocols by name, timeouts in milliseconds, a concatenation
is a plain `tuple` (so it can key a dict), a one-element anonymous set is its element.

Equality is about meaning: lines, handles, counters' values and rule text are kept as evidence outside it;
chains, sets and tables compare as collections (order-insensitive), rules in chain order, elements as sets.
Pure data: no parsing here (loader.py, json_loader.py), no printing (render.py, printer.py).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import InitVar, dataclass, field
from typing import TYPE_CHECKING, Any

from iptrace.nftables.source import SourceText

if TYPE_CHECKING:
    from iptrace.dataplane import MapAt, Step

# ------------------------------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class Prefix:
    """`10.0.0.0/8`: the network (host bits cleared, as the kernel keeps it) and its length."""

    addr: str
    length: int


@dataclass(frozen=True, slots=True)
class Range:
    """`1000-2000`, `10.0.0.1-10.0.0.9` (inclusive)."""

    low: Scalar
    high: Scalar


@dataclass(frozen=True, slots=True)
class Flags:
    """`established,related`: several symbolic values of a bitmask type (sorted)."""

    names: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(sorted(self.names)))


@dataclass(frozen=True, slots=True)
class SetRef:
    """`@name`: a named set or map of the same table."""

    name: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """accept, drop, continue, return, jump CHAIN, goto CHAIN (a statement, or the data of a vmap element)."""

    kind: str
    target: str | None = None


@dataclass(frozen=True, slots=True)
class Element:
    """One element of a set or map: `key` (a scalar, Prefix, Range, or a tuple for a concatenation), `data` for
    maps (a Verdict for vmaps). `expires` (runtime) and the element counter are evidence only."""

    key: Value
    data: Value | None = None
    timeout_ms: int | None = None
    comment: str | None = None
    expires_ms: int | None = field(default=None, compare=False)
    counter: tuple[int, int] | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True, eq=False)
class AnonSet:
    """`{ a, b }` / `{ 0 : goto x, 1 : goto y }` written inside a rule. Compared as a set of elements."""

    elements: tuple[Element, ...]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AnonSet):
            return NotImplemented
        return self.elements == other.elements or frozenset(self.elements) == frozenset(other.elements)

    def __hash__(self) -> int:
        return hash(frozenset(self.elements))


# ------------------------------------------------------------------------------------------- expressions


@dataclass(frozen=True, slots=True)
class Payload:
    """A packet header field: `ip saddr`, `tcp dport`, `th dport` (any transport), `ether type`."""

    protocol: str
    field: str


@dataclass(frozen=True, slots=True)
class Meta:
    """`meta KEY` (also written bare: `mark`, `iifname`): l4proto, mark, iifname, nfproto, …"""

    key: str


@dataclass(frozen=True, slots=True)
class Ct:
    """Connection tracking: `ct state`, `ct mark`, `ct original ip saddr` (direction, family)."""

    key: str
    direction: str | None = None
    family: str | None = None


@dataclass(frozen=True, slots=True)
class Fib:
    """`fib daddr type`, `fib saddr . iif oif`: a route lookup keyed by `flags`, returning `result`."""

    flags: tuple[str, ...]
    result: str


@dataclass(frozen=True, slots=True)
class Numgen:
    """`numgen random mod N [offset M]`: a number in [offset, offset+N)."""

    mode: str
    modulus: int
    offset: int = 0


@dataclass(frozen=True, slots=True)
class Hash:
    """`jhash EXPR mod N [seed S] [offset M]` / `symhash mod N [offset M]`."""

    kind: str
    expr: Expr | None
    modulus: int
    seed: int | None = None
    offset: int = 0


@dataclass(frozen=True, slots=True)
class Selector:
    """An expression iptrace knows by name but does not model (`rt mtu`, `socket transparent`): its words."""

    words: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Binop:
    """`meta mark & 0x4000`, `meta mark | 0x4000`: a bitwise operation (&, |, ^, <<, >>)."""

    op: str
    left: Expr | Value
    right: Expr | Value


@dataclass(frozen=True, slots=True)
class Concat:
    """`ip daddr . meta l4proto . th dport`: expressions concatenated into one key."""

    parts: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class MapLookup:
    """`KEY map @m` / `KEY map { k : v, … }` used as a value (dnat address, mark to set)."""

    key: Expr
    map: SetRef | AnonSet


# ---------------------------------------------------------------------------------------------------- items


@dataclass(frozen=True, slots=True)
class Match:
    """A relational test `left op right`. `op` is ==, !=, <, >, <=, >=, or "in" (the implicit bit test of a
    bitmask type: `ct state new` = state & new != 0). `right` is a value, Prefix, Range, Flags, a tuple (for
    a concatenated left), SetRef (`@set` lookup) or AnonSet."""

    left: Expr
    op: str
    right: Value


@dataclass(frozen=True, slots=True)
class VerdictMap:
    """`KEY vmap @map` / `KEY vmap { k : verdict, … }`: look KEY up and run the element's verdict; no element
    means the rule does not match."""

    key: Expr
    map: SetRef | AnonSet


@dataclass(frozen=True, slots=True)
class Reject:
    """`reject` (kind None: the family's port-unreachable), `reject with icmpx admin-prohibited`,
    `reject with tcp reset` (kind "tcp reset"; it implies `meta l4proto tcp`, which the kernel may print)."""

    kind: str | None = None
    code: str | None = None


@dataclass(frozen=True, slots=True)
class Nat:
    """dnat / snat / masquerade / redirect. `family` is the `ip`/`ip6` after dnat/snat (inet tables); `addr` a
    value, Range, Prefix or MapLookup (whose data may be `(addr, port)` tuples: kube-proxy's
    `dnat ip addr . port to numgen … map { … }`); `port` an int or Range; `flags` fully-random, persistent, …"""

    kind: str
    family: str | None = None
    addr: Value | None = None
    port: Value | None = None
    flags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Mangle:
    """`KEY set VALUE`: `meta mark set meta mark | 0x4000`, `ct mark set meta mark`, `meta nftrace set 1`."""

    key: Expr
    value: Expr | Value


@dataclass(frozen=True, slots=True)
class SetUpdate:
    """`update @set { ip saddr }` / `add @set { ip saddr timeout 10s }` / `delete @set { … }` from the packet
    path (kube-proxy's session affinity)."""

    op: str
    set: str
    key: Expr
    timeout_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Counter:
    """`counter` (values are evidence, not meaning) or a named counter `counter name "x"`."""

    name: str | None = None
    packets: int | None = field(default=None, compare=False)
    bytes: int | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Statement:
    """A statement iptrace keeps as its keyword and arguments (log, limit, notrack, queue, quota, …)."""

    keyword: str
    args: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Xt:
    """An iptables extension iptables-nft put in the rule (`xt match "conntrack"`, old nft's `# xt_conntrack`):
    nft cannot show what it tests."""

    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class Unknown:
    """What iptrace does not understand, kept verbatim: nft text, or (`form` "json") the compact JSON of an
    expression of `nft -j` output. An evaluator must record an assumption for it."""

    text: str
    form: str = "nft"


Scalar = str | int
# A tuple value is a concatenation (`172.30.0.41 . tcp . 80` → ("172.30.0.41", "tcp", 80)).
Value = Scalar | Prefix | Range | Flags | SetRef | AnonSet | Verdict | MapLookup | Binop | tuple
Expr = Payload | Meta | Ct | Fib | Numgen | Hash | Selector | Binop | Concat | MapLookup
Item = Match | VerdictMap | Verdict | Reject | Nat | Mangle | SetUpdate | Counter | Statement | Xt | Unknown


# ------------------------------------------------------------------------------------------------ objects


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule: its items and comment (the meaning), the text as read with spacing normalised (`text`), its
    input line and kernel handle (evidence).

    A rule the text loader read through a shape (loader.py) holds its normalised values and builds `items` and
    `comment` on first use: a 5,000-Service listing has 120,000 rules and one trace looks at a handful. Its
    values were checked when it was read; building cannot fail."""

    items: tuple[Item, ...]
    comment: str | None = None
    text: str = field(default="", compare=False)
    line: int | None = field(default=None, compare=False)
    handle: int | None = field(default=None, compare=False)
    _lazy: tuple[Any, ...] | None = field(default=None, compare=False, repr=False)

    def __getattr__(self, name: str) -> Any:
        # Called only for a slot not set yet. A rule read through a shape has `_lazy` (its builder, text, line,
        # normalised values…) instead of its items and comment; its line and handle are set, its text when it
        # is its own str (not the listing's, source.SourceText).
        lazy = object.__getattribute__(self, "_lazy")
        if lazy is None:
            raise AttributeError(name)
        if name == "text":
            # A rule of a listing read line by line keeps the listing's text (SourceText) instead of its own
            # copy of the line: the same characters, once.
            text = lazy[1]
            return text if type(text) is str else text.line(lazy[2]).strip()
        if name == "line":
            return lazy[2]
        if name not in ("items", "comment"):
            raise AttributeError(name)
        items, comment = lazy[0](lazy)
        object.__setattr__(self, "items", items)
        object.__setattr__(self, "comment", comment)
        return items if name == "items" else comment

    def peek_items(self) -> tuple[Item, ...]:
        """`items`, not kept when they were not built yet: for a reader that looks at each of ~10^5 rules once
        (port shapes), which would otherwise hold every rule's items built (~1x the listing's size)."""
        try:
            return object.__getattribute__(self, "items")  # type: ignore[no-any-return]
        except AttributeError:
            lazy = object.__getattribute__(self, "_lazy")
            if lazy is None:
                raise
            return lazy[0](lazy)[0]  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class BaseChain:
    """What makes a chain a base chain: it is attached to `hook` (prerouting, input, …, ingress) with `type`
    (filter, nat, route) at `priority` (a number: nft's names resolved, `dstnat - 10` → -110); `policy` is what
    happens to a packet that leaves it without a verdict; `devices` for netdev/ingress chains."""

    type: str
    hook: str
    priority: int
    policy: str = "accept"
    devices: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Chain:
    """A chain: its rules in order; `base` set for a base chain (None for a chain reached by jump/goto)."""

    name: str
    rules: tuple[Rule, ...] = ()
    base: BaseChain | None = None
    comment: str | None = None
    line: int | None = field(default=None, compare=False)
    handle: int | None = field(default=None, compare=False)
    # A chain the loader read whole by a template (blocks.py) holds (its rules' maker, the listing, its line,
    # its rules' normalised values…) instead of its rules, made on first use: most of a listing's ~50,000
    # endpoint chains are only ever read through this record (port shapes, lines) or not at all.
    _lazy: tuple[Any, ...] | None = field(default=None, compare=False, repr=False)

    def __getattr__(self, name: str) -> Any:
        # Called only for a slot not set yet. The loader leaves the comment, handle and record of its ~50,000
        # plain chains unset: they read as None (their base is set: build.ChainBuilder.freeze).
        if name in ("comment", "handle", "_lazy"):
            return None
        if name == "rules":
            lazy = self._lazy
            if lazy is not None:
                rules = lazy[0](lazy)
                object.__setattr__(self, "rules", rules)
                return rules
        raise AttributeError(name)

    @property
    def rule_count(self) -> int:
        lazy = self._lazy
        return lazy[0].count if lazy is not None else len(self.rules)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True, eq=False)
class Set:
    """A named set (`data_type` None) or map. `key_type` is a tuple of datatypes (several for a concatenation:
    `("ipv4_addr", "inet_proto", "inet_service")`); `data_type` `("verdict",)` for a verdict map. `typeof` keeps
    the expressions a set was declared with (for writing it back)."""

    name: str
    key_type: tuple[str, ...]
    data_type: tuple[str, ...] | None = None
    flags: tuple[str, ...] = ()
    timeout_ms: int | None = None
    gc_interval_ms: int | None = None
    size: int | None = None
    policy: str | None = None
    comment: str | None = None
    counter: bool = False
    auto_merge: bool = False
    elements: tuple[Element, ...] = ()
    typeof: str | None = None
    line: int | None = None
    handle: int | None = None

    @property
    def is_map(self) -> bool:
        return self.data_type is not None

    @property
    def is_vmap(self) -> bool:
        return self.data_type == ("verdict",)

    def _meaning(self) -> tuple:
        return (self.name, self.key_type, self.data_type, self.flags, self.timeout_ms, self.gc_interval_ms,
                self.size, self.policy, self.comment, self.counter, self.auto_merge)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Set):
            return NotImplemented
        return self._meaning() == other._meaning() and (
            self.elements == other.elements or frozenset(self.elements) == frozenset(other.elements))

    def __hash__(self) -> int:
        return hash((self.name, self.key_type, self.data_type))


@dataclass(frozen=True, slots=True)
class NamedObject:
    """A stateful object or flowtable of a table (`counter NAME { … }`, `quota`, `ct helper`, `flowtable`):
    kind and name are its meaning; `body` (its statements as written) is evidence."""

    kind: str
    name: str
    body: tuple[str, ...] = field(default=(), compare=False)
    line: int | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True, eq=False)
class Table:
    family: str
    name: str
    chains: tuple[Chain, ...] = ()
    sets: tuple[Set, ...] = ()
    objects: tuple[NamedObject, ...] = ()
    flags: tuple[str, ...] = ()
    comment: str | None = None
    line: int | None = None
    handle: int | None = None
    _chains: Mapping[str, Chain] = field(default_factory=dict, repr=False)
    _sets: Mapping[str, Set] = field(default_factory=dict, repr=False)
    # The loader's own name -> chain dict of exactly `chains`, in their order (55,000 chains at 5,000 Services: a
    # dict copy instead of a comprehension). Not kept: `dataclasses.replace` passes the class's None and the
    # index is rebuilt from the chains it was given.
    index: InitVar[dict[str, Chain] | None] = None

    def __post_init__(self, index: dict[str, Chain] | None) -> None:
        object.__setattr__(self, "_chains", {c.name: c for c in self.chains} if index is None else dict(index))
        object.__setattr__(self, "_sets", {s.name: s for s in self.sets})

    def chain(self, name: str) -> Chain | None:
        return self._chains.get(name)

    def chains_named(self, names: Iterable[str]) -> list[Chain | None]:
        """`chain` of each name, in order (a Service port's dozen chains, for each of 5,000 ports)."""
        return list(map(self._chains.get, names))

    def set(self, name: str) -> Set | None:
        return self._sets.get(name)

    @property
    def label(self) -> str:
        """`ip kube-proxy`: how nft and traces name a table."""
        return f"{self.family} {self.name}"

    @property
    def rule_count(self) -> int:
        return sum(c.rule_count for c in self.chains)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Table):
            return NotImplemented
        return (self.family, self.name, self.flags, self.comment) == (
            other.family, other.name, other.flags, other.comment) and self._chains == other._chains \
            and self._sets == other._sets and {(o.kind, o.name) for o in self.objects} == {
                (o.kind, o.name) for o in other.objects}

    def __hash__(self) -> int:
        return hash((self.family, self.name))


@dataclass(frozen=True, slots=True)
class LoadWarning:
    line: int | None
    message: str


# The IP families ("ipv4", "ipv6") a table of each nft family can answer for.
_TABLE_IP_FAMILIES: Mapping[str, tuple[str, ...]] = {"ip": ("ipv4",), "ip6": ("ipv6",), "inet": ("ipv4", "ipv6"),
                                                     "bridge": ("ipv4", "ipv6"), "netdev": ("ipv4", "ipv6")}


@dataclass(frozen=True, slots=True, eq=False)
class Ruleset:
    """A whole nft ruleset (implements `iptrace.dataplane.Ruleset`). `format` is "nft-list" (kernel listing),
    "nft-json" or "nft-transaction". Tables compare as a collection keyed by (family, name); source, format,
    warnings and the input text are not part of equality."""

    tables: tuple[Table, ...]
    source: str = "<ruleset>"
    format: str = "nft-list"
    warnings: tuple[LoadWarning, ...] = ()
    skipped: tuple[LoadWarning, ...] = ()
    text: str | None = field(default=None, repr=False)
    source_text: SourceText | None = field(default=None, repr=False)  # of `text` (the loader's, shared)
    _tables: Mapping[tuple[str, str], Table] = field(default_factory=dict, repr=False)
    _evidence: dict[str, Any] = field(default_factory=dict, repr=False)  # (what evidence_text read of the text)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_tables", {(t.family, t.name): t for t in self.tables})
        if self.text is not None and (self.source_text is None or self.source_text.text is not self.text):
            object.__setattr__(self, "source_text", SourceText(self.text))

    def table(self, family: str, name: str) -> Table | None:
        return self._tables.get((family, name))

    @property
    def families(self) -> tuple[str, ...]:
        seen = {f for t in self.tables for f in _TABLE_IP_FAMILIES.get(t.family, ())}
        return tuple(f for f in ("ipv4", "ipv6") if f in seen)

    def line_text(self, line: int) -> str | None:
        """Input line `line` as evidence: the statement without the listing's indentation (a listing nests rules
        and elements two tabs deep), as iptables' evidence is the rule alone."""
        if self.source_text is None or line < 1 or line > len(self.source_text):
            return None
        return self.source_text.line(line).strip()

    def line_texts(self, lines: Collection[int]) -> dict[int, str | None]:
        return {x: self.line_text(x) for x in lines}  # (each line is found in the kept text directly)

    def evidence_text(self, line: int) -> str | None:
        """Input line `line` as a trace's path shows it: a listing's or transaction's line of set or map elements
        as `element ip kube-proxy service-ips { … }` (the line alone names neither set nor table), a listing's
        rule as `rule ip kube-proxy CHAIN STATEMENT` (nor its chain), any other as line_text."""
        from iptrace.nftables.lines import ElementLines
        from iptrace.nftables.steps import evidence_text

        return evidence_text(self, ElementLines(self, self._evidence), line)

    def step_text(self, step: Step) -> str:
        """evidence_text of the step's line; with none (JSON input), a rule (one with a kernel handle; an element
        reads as its set's already) named as evidence_text names one."""
        from iptrace.nftables.steps import rule_in_chain

        if step.line:
            return self.evidence_text(step.line) or step.rule
        return rule_in_chain(step.table, step.chain, step.rule) if step.handle is not None else step.rule

    def elements_at(self, address: str, port: int, protocol: str) -> tuple[tuple[MapAt, str], ...]:
        """For JSON input: kube-proxy's elements keyed on the address, port and protocol (steps.elements_at)."""
        from iptrace.nftables.steps import elements_at

        return elements_at(self, address, port, protocol) if self.format == "nft-json" else ()

    def handle_texts(self, family: str, handles: Collection[int]) -> tuple[str, dict[int, str]]:
        """For JSON input: kube-proxy's table of the family and its rules of these handles (steps.handle_texts)."""
        from iptrace.nftables.steps import handle_texts

        return handle_texts(self, family, handles)

    @property
    def rule_count(self) -> int:
        return sum(t.rule_count for t in self.tables)

    def rules(self) -> Iterator[tuple[Table, Chain, Rule]]:
        for t in self.tables:
            for c in t.chains:
                for r in c.rules:
                    yield t, c, r

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ruleset):
            return NotImplemented
        return self._tables == other._tables

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._tables)))
