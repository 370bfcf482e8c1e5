"""The mutable state a loader fills (tables, chains, sets in the making) and its end: checking references and
freezing it into the model.

Both text forms and the JSON reader use it. A transaction is order-insensitive for objects (a rule may name a
chain declared further down), so references are collected while loading and checked once at the end; rule
order within a chain is kept, and the transaction's flush/delete/insert/replace apply in input order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from sys import intern
from typing import Any

from iptrace.errors import DumpSemanticError, ParseError
from iptrace.nftables.elements import ElementReader
from iptrace.nftables.model import (
    AnonSet,
    BaseChain,
    Chain,
    Element,
    LoadWarning,
    MapLookup,
    Match,
    NamedObject,
    Nat,
    Rule,
    Set,
    SetRef,
    SetUpdate,
    Table,
    Verdict,
    VerdictMap,
)
from iptrace.nftables.normalise import normalise_set
from iptrace.nftables.shapes import draft_class, fast_constructor

_make_chain = fast_constructor(Chain)
_make_set = fast_constructor(Set)  # (a listing declares a set for each endpoint with affinity)
_ChainDraft = draft_class(Chain)


def plain_chain(name: str, rules: tuple[Rule, ...], line: int | None) -> Chain:
    """A chain without base, comment or handle (those stay unset, read as None)."""
    chain = _ChainDraft()
    chain.name = name
    chain.rules = rules
    # `base` is set (None): every chain's is read several times a run (the era, the hooks, the walker's shapes),
    # and an unset slot is read through an AttributeError and Chain.__getattr__, ~10x slower.
    chain.base = None
    chain.line = line
    chain._lazy = None  # (read as often as `base`: set for the same reason)
    chain.__class__ = Chain
    return chain


class ChainBuilder:
    """A chain in the making (a plain class, its rarely set attributes defaulted on the class: a listing
    declares tens of thousands of chains)."""

    type: str | None = None
    hook: str | None = None
    priority: int | None = None
    policy: str | None = None
    devices: tuple[str, ...] = ()
    comment: str | None = None

    def __init__(self, name: str, line: int | None, declared: bool, handle: int | None = None,
                 first_use: int | None = None) -> None:
        self.name = intern(name)  # shared with the rules' values that name the chain (shapes.py)
        self.line = line
        self.declared = declared
        self.handle = handle
        self.first_use = first_use  # line of the first rule added before any declaration
        self.rules: list[Rule] = []

    @classmethod
    def thawed(cls, chain: Chain) -> ChainBuilder:
        """The builder of a chain read whole (`plain_chain`), for what changes it after its block."""
        c = cls(chain.name, chain.line, True)
        c.rules = list(chain.rules)
        return c

    def freeze(self) -> Chain:
        if self.hook is None and self.comment is None and self.handle is None:
            return plain_chain(self.name, tuple(self.rules), self.line)
        base = None
        if self.hook is not None:
            base = BaseChain(self.type or "filter", self.hook, self.priority or 0, self.policy or "accept",
                             self.devices)
        return _make_chain(self.name, tuple(self.rules), base, self.comment, self.line, self.handle, None)


@dataclass
class SetBuilder:
    name: str
    kind: str
    line: int | None
    declared: bool
    handle: int | None = None
    key_type: tuple[str, ...] = ()
    data_type: tuple[str, ...] | None = None
    flags: tuple[str, ...] = ()
    timeout_ms: int | None = None
    gc_interval_ms: int | None = None
    size: int | None = None
    policy: str | None = None
    comment: str | None = None
    counter: bool = False
    auto_merge: bool = False
    typeof: str | None = None
    # ("add" | "delete" | "destroy", element text, line, column) or ("flush", "", line, 0), applied in order at the end;
    # or ready Elements (JSON).
    ops: list[tuple[str, str, int, int]] = field(default_factory=list)
    elements: dict[Any, Element] = field(default_factory=dict)
    first_use: int | None = None


class ObjectBuilder:
    """A stateful object or flowtable of a table (model.NamedObject): its statements kept as written."""

    def __init__(self, kind: str, name: str, line: int) -> None:
        self.kind, self.name, self.line = kind, name, line
        self.body: list[str] = []

    def freeze(self) -> NamedObject:
        return NamedObject(self.kind, self.name, tuple(self.body), self.line)


@dataclass
class TableBuilder:
    family: str
    name: str
    line: int | None
    declared: bool
    handle: int | None = None
    flags: tuple[str, ...] = ()
    comment: str | None = None
    # A chain the text loader read whole (blocks.py) is kept frozen (a Chain) until something changes it: a
    # listing's ~50,000 endpoint chains never make a builder. `builder` thaws one.
    chains: dict[str, ChainBuilder | Chain] = field(default_factory=dict)
    sets: dict[str, SetBuilder] = field(default_factory=dict)
    objects: list[NamedObject] = field(default_factory=list)
    # chain names, "@set" names rules refer to and "+set" names of sets rules add elements to
    refs: set[str] = field(default_factory=set)
    first_use: int | None = None
    shapes: dict[str, Any] = field(default_factory=dict)  # shape key -> (builder, references); see loader
    chain_shapes: Any = None  # blocks.ChainShapes, made by the text loader

    def chain(self, name: str, line: int | None) -> ChainBuilder:
        c = self.chains.get(name)
        if c is None:
            c = self.chains[name] = ChainBuilder(name, line, False, None, line)
        elif isinstance(c, Chain):
            c = self.chains[name] = ChainBuilder.thawed(c)
        return c

    def builder(self, name: str) -> ChainBuilder | None:
        """The builder of chain `name` (thawed when it was read whole), None when the table has no such chain."""
        c = self.chains.get(name)
        if isinstance(c, Chain):
            c = self.chains[name] = ChainBuilder.thawed(c)
        return c

    def builders(self) -> list[ChainBuilder]:
        """Every chain's builder (those read whole thawed)."""
        return [self.chain(name, None) for name in list(self.chains)]

    def set(self, name: str, kind: str, line: int | None) -> SetBuilder:
        s = self.sets.get(name)
        if s is None:
            s = self.sets[name] = SetBuilder(name, kind, line, False, first_use=line)
        return s


def item_refs(items: tuple[Any, ...]) -> list[str]:
    """Chain names and "@set" names a rule's items refer to (for rules not read through a shape)."""
    out: list[str] = []

    def value(v: Any) -> None:
        if isinstance(v, SetRef):
            out.append("@" + v.name)
        elif isinstance(v, AnonSet):
            for e in v.elements:
                value(e.data)
        elif isinstance(v, Verdict) and v.target is not None:
            out.append(v.target)
        elif isinstance(v, MapLookup):
            value(v.map)

    for item in items:
        if isinstance(item, Verdict):
            value(item)
        elif isinstance(item, Match):
            value(item.right)
        elif isinstance(item, VerdictMap):
            value(item.map)
        elif isinstance(item, SetUpdate):
            out += ("@" + item.set, "+" + item.set)
        elif isinstance(item, Nat):
            value(item.addr)
    return out


class Finisher:
    """Checks what the loaded text refers to and freezes it. `fail` raises or (lenient) records."""

    def __init__(self, source: str, fail: Callable[[ParseError], None], warnings: list[LoadWarning]) -> None:
        self.source = source
        self.fail = fail
        self.warnings = warnings

    def semantic(self, why: str, line: int | None, text: str = "", column: int = 1) -> None:
        self.fail(DumpSemanticError(why, source=self.source, line=line or 0, column=column, text=text))

    def elements(self, t: TableBuilder, s: SetBuilder, line_text: Callable[[int], str]) -> None:
        """Apply the set's element operations in order (into `s.elements`)."""
        if not s.ops:
            return
        reader = ElementReader(s.key_type, s.data_type, t.family)
        out = s.elements

        def error(why: str, line: int, column: int) -> ParseError:
            return ParseError(why, source=self.source, line=line, column=column, text=line_text(line))

        for op, body, line, column in s.ops:
            if op == "flush":
                out.clear()
                continue
            if op == "add":
                # (into the set itself: an element whose key it holds with another value is an error where
                # it is written, as nft says "File exists")
                try:
                    reader.read(body, line=line, column=column, error=error, out=out)
                except ParseError as exc:
                    self.fail(exc)
                continue
            gone: dict[Any, Element] = {}
            where: dict[Any, tuple[int, int]] = {}
            try:
                reader.read(body, line=line, column=column, error=error, out=gone, keys_only=True, positions=where)
            except ParseError as exc:
                self.fail(exc)
            for key in gone:
                if out.pop(key, None) is None and op == "delete":  # (destroy: whether it is there or not)
                    at_line, at_column = where[key]
                    self.semantic(f"delete of an element that {s.kind} {s.name!r} does not hold (nft: \"No such "
                                  "file or directory\"; `destroy element` deletes it only when it is there)",
                                  at_line, line_text(at_line), at_column)
        if reader.vmap:
            t.refs.update([e.data.target for e in out.values() if e.data.target is not None])

    def table(self, t: TableBuilder, line_text: Callable[[int], str]) -> Table | None:
        if not t.declared:
            self.semantic(f"table {t.family} {t.name} is used but never declared; expected an "
                          f"'add table {t.family} {t.name}' line or a 'table {t.family} {t.name} {{' block",
                          t.first_use, line_text(t.first_use or 0))
        for name, c in t.chains.items():
            if type(c) is not Chain and not c.declared:  # (a chain read whole was declared by its block)
                self.semantic(f"rule for chain {name!r}, which table {t.family} {t.name} does not declare; "
                              f"expected an 'add chain {t.family} {t.name} {name}' line", c.first_use,
                              line_text(c.first_use or 0))
                # lenient: the chain exists, its declaration was cut off
                self.warnings.append(LoadWarning(c.first_use, f"chain {name!r} used without a declaration; "
                                                              "assumed to exist"))
        for name, s in list(t.sets.items()):
            if s.declared and not s.key_type:
                self.semantic(f"{s.kind} {name!r} has no type; expected 'type …' or 'typeof …' in its declaration",
                              s.line, line_text(s.line or 0))
                del t.sets[name]
                continue
            if not s.declared:
                self.semantic(f"element for set {name!r}, which table {t.family} {t.name} does not declare; "
                              f"expected an 'add set' or 'add map' line for it", s.first_use,
                              line_text(s.first_use or 0))
                del t.sets[name]
                continue
            self.elements(t, s, line_text)
        updated = self.check_refs(t, line_text)
        sets = tuple([normalise_set(_make_set(
            s.name, s.key_type, s.data_type, tuple(sorted(s.flags)), s.timeout_ms, s.gc_interval_ms, s.size,
            s.policy, s.comment, s.counter, s.auto_merge, tuple(s.elements.values()), s.typeof, s.line, s.handle),
            updated=s.name in updated) for s in t.sets.values()])
        index = t.chains
        for name, c in index.items():
            if type(c) is not Chain:
                index[name] = c.freeze()  # (a value replaced, the dict's size unchanged: iterating goes on)
        return Table(t.family, t.name, tuple(index.values()), sets, tuple(t.objects), t.flags, t.comment, t.line,
                     t.handle, index=index)

    def check_refs(self, t: TableBuilder, line_text: Callable[[int], str]) -> set[str]:
        """Reports what the rules name but the table lacks; returns the sets rules add elements to."""
        known = set(t.chains) | {"@" + s for s in t.sets}
        unknown = t.refs - known  # every "+set" (an updated set) is here too: never a chain or "@" name
        updated = {r[1:] for r in unknown if r[0] == "+"}
        missing = {r for r in unknown if r[0] != "+"}
        if not missing:
            return updated
        # Slow path, only on error: find the rules (or elements) that name them.
        for c in t.builders():
            keep = []
            for rule in c.rules:
                bad = [r for r in item_refs(rule.items) if r in missing]
                if not bad:
                    keep.append(rule)
                    continue
                what = bad[0]
                text = line_text(rule.line or 0)
                col = text.find(what.lstrip("@")) + 1 if text else 1
                if what.startswith("@"):
                    why = (f"rule refers to set {what[1:]!r}, which table {t.family} {t.name} does not declare; "
                           "expected a set or map of that name")
                else:
                    why = (f"rule jumps to chain {what!r}, which table {t.family} {t.name} does not declare; "
                           "expected a chain of that name")
                self.semantic(why, rule.line, text, max(col, 1))
            c.rules = keep
        for s in t.sets.values():
            for key, e in list(s.elements.items()):
                if isinstance(e.data, Verdict) and e.data.target in missing:
                    # the first element operation that names it (elements keep no line of their own)
                    line = next((op[2] for op in s.ops if e.data.target in op[1]), s.line)
                    text = line_text(line or 0)
                    self.semantic(f"element of map {s.name!r} jumps to chain {e.data.target!r}, which table "
                                  f"{t.family} {t.name} does not declare; expected a chain of that name", line,
                                  text, max(text.find(e.data.target) + 1, 1))
                    del s.elements[key]
        return updated
