"""How a Service port's shape (portshape.py) reads what its rules test, and its own rules read by *plan*.

A rule the loader read through a shape (shapes.compile_template) is built by one function from its values:
rules of one builder are the builder's template with their own values in its slots. `plan` abstracts a template
once: the template's items built with a `Hole` in each value's place, read the way `portshape._Port.item` reads
items, give the `_Port` calls (ops) such a rule makes, each on a constant of the template or on a value, and
are compiled into one function per builder. It writes a rule as (its builder, what those calls answer for its
values, in the same order), noting the same numbers, networks, jumps and sets `_Port.item` notes for its items,
without building them (a port's ~20 endpoint rules are most of what its shape reads). A plan is made only when
the template runs no function of a value but make_nat (whose DNAT target's parts the holes follow: another could
hide a value in what it makes) and every hole of the items is one a call reads (no value of the rule is left out
of its written form); otherwise, and for rules read alone or from JSON, `_Port.item` reads the items. Equal
builders and equal answers: equal items but for the port's values, in the same places.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable
from typing import Any

from iptrace.nftables.model import (
    AnonSet,
    Binop,
    Ct,
    Fib,
    Match,
    Meta,
    Nat,
    Numgen,
    Payload,
    SetRef,
    SetUpdate,
    Verdict,
    VerdictMap,
)
from iptrace.nftables.normalise import make_nat
from iptrace.nftables.shapes import Call

ADDR, PORT, LIT = "a", "p", "l"
_ADDRESS_FIELDS = ("saddr", "daddr")
_PORT_PROTOCOLS = ("th", "tcp", "udp", "sctp")
# Branch fields generic rules may read as literals (the same for every port's walks but for the questions' own
# protocol, source port and interface, which are in the key).
_LITERAL_META = frozenset({"l4proto", "mark", "nfproto", "protocol"})
MATCH_OPS = ("==", "!=", "in")


class Decline(Exception):
    """The walks read something a shape cannot hold: no shape."""


def kind(e: Any) -> str:
    """How a look-up or test reads what `e` gives: an address, a port, or something the questions fix (literal)."""
    t = type(e)
    if t is Payload:
        if e.protocol in ("ip", "ip6") and e.field in _ADDRESS_FIELDS:
            return ADDR
        if e.protocol in _PORT_PROTOCOLS and e.field == "dport":
            return PORT
        if e.protocol in ("ip", "ip6") and e.field in ("protocol", "nexthdr"):
            return LIT
        raise Decline
    if t is Meta and e.key in _LITERAL_META:
        return LIT
    if t is Ct and e.key == "state" and e.direction is None:
        return LIT
    if t is Binop and type(e.left) is Meta and e.left.key == "mark" and type(e.right) is int:
        return LIT
    raise Decline


def fib_ok(left: Fib) -> bool:
    return left.result == "type" and left.flags in (("saddr",), ("daddr",))


# -- plans ------------------------------------------------------------------------------------------------------

class Hole:
    """A value's place in a template (`lazy[k]`, or its `part`-th member: make_nat reads a DNAT target's address
    and port)."""

    __slots__ = ("k", "part")

    def __init__(self, k: int, part: int | None = None) -> None:
        self.k = k
        self.part = part

    def __getitem__(self, i: int) -> Hole:
        if self.part is not None or i not in (0, 1):
            raise IndexError(i)
        return Hole(self.k, i)


# The ops: (code, a, b), each answering one `_Port` call of `_Port.item` on its arguments (a Hole: the rule's value).
_VALUE, _FIB, _LITERAL, _VERDICT, _NAT, _OWN_SET = range(6)


def calls_only(node: Any, fn: Any) -> bool:
    """Whether every Call of a template (shapes.Call: a function of values, run when the rule is built) is `fn`
    (None: it has none)."""
    t = type(node)
    if t is Call:
        return node.fn is fn and calls_only(node.args, fn)  # type: ignore[no-any-return]
    if t is tuple:
        return all(calls_only(x, fn) for x in node)
    if hasattr(node, "__dataclass_fields__"):
        return all(calls_only(getattr(node, name), fn) for name in node.__dataclass_fields__)
    return True


def _holes(node: Any, into: Tally[tuple[int, int | None]]) -> None:
    t = type(node)
    if t is Hole:
        into[(node.k, node.part)] += 1
    elif t is tuple:
        for x in node:
            _holes(x, into)
    elif hasattr(node, "__dataclass_fields__"):
        for name in node.__dataclass_fields__:
            _holes(getattr(node, name), into)


class _Planner:
    def __init__(self) -> None:
        self.ops: list[tuple[int, Any, Any]] = []
        self.read: Tally[tuple[int, int | None]] = Tally()

    def op(self, code: int, a: Any, b: Any = None) -> None:
        for x in (a, b):
            if type(x) is Hole:
                self.read[(x.k, x.part)] += 1
        self.ops.append((code, a, b))

    def verdict(self, v: Any) -> None:
        if type(v) is not Verdict or type(v.kind) is not str:
            raise Decline
        if v.kind in ("jump", "goto"):
            self.op(_VERDICT, v.kind, v.target)

    def item(self, item: Any) -> None:
        """`_Port.item`'s calls on `item`, in its order (its checks of constants made here, once)."""
        t = type(item)
        if t is Match:
            left, right = item.left, item.right
            if item.op not in MATCH_OPS:
                raise Decline
            if type(left) is Fib:
                if not fib_ok(left):
                    raise Decline
                if type(right) is Hole:
                    self.op(_FIB, right)
                elif type(right) is not str:
                    raise Decline
                return
            k = kind(left)
            if type(right) is SetRef and type(right.name) is Hole:
                if k != ADDR:
                    raise Decline
                self.op(_OWN_SET, right.name)
            else:
                self.op(_VALUE, k, right)
        elif t is VerdictMap:
            key, found = item.key, item.map
            if type(key) is not Numgen or key.mode != "random" or type(found) is not AnonSet:
                raise Decline
            for x in (key.modulus, key.offset):
                if type(x) is Hole:
                    self.op(_LITERAL, x)
            for e in found.elements:
                if type(e.key) is Hole:
                    self.op(_LITERAL, e.key)
                self.verdict(e.data)
        elif t is Verdict:
            self.verdict(item)
        elif t is Nat:
            if item.kind != "dnat":
                raise Decline
            self.op(_NAT, item.addr, item.port)
        elif t is SetUpdate:
            if item.op not in ("add", "update") or kind(item.key) != ADDR:
                raise Decline
            self.op(_OWN_SET, item.set)
            if type(item.timeout_ms) is Hole:
                self.op(_LITERAL, item.timeout_ms)
        else:
            raise Decline  # (Mangle, Counter, Reject…: `_Port.item` keeps them whole)


def plan(build: Any, size: int) -> Callable[[Any, tuple[Any, ...]], tuple[Any, ...]] | None:
    """The function writing a rule `build` makes (its `_lazy` `size` long) for a port (`_compile`), or None when
    such rules' items are read."""
    ops = _ops(build, size)
    return None if ops is None else _compile([(ops, "lazy[0]", "lazy[{}]".format)], "lazy")


def chain_plan(rules: Any) -> Callable[[Any, tuple[Any, ...]], tuple[Any, ...]] | None:
    """The function writing the rules of a chain read by a template (model.Chain._lazy: `rules` its maker,
    blocks.py) for a port from the chain's record, each as `plan`'s function writes it, without making them; None
    when a rule's builder has no plan (the chain's rules are then made and read one by one)."""
    parts = []
    for j, (build, at, size) in enumerate(rules.builds):
        ops = _ops(build, 3 + size)
        if ops is None:
            return None
        # (the rule's `_lazy[k]`, k >= 3, is the record's `at + k - 3`-th item; its builder a constant)
        parts.append((ops, f"b{j}", lambda k, at=at: f"record[{at + k - 3}]"))
    return _compile(parts, "record", {f"b{j}": build for j, (build, _, _) in enumerate(rules.builds)}, True)


def _ops(build: Any, size: int) -> list[tuple[int, Any, Any]] | None:
    """The `_Port` calls (ops) of the rules `build` makes (their `_lazy` `size` long), or None (see the module's
    doc)."""
    template = getattr(build, "template", None)
    if template is None or not calls_only(template[0], make_nat):
        return None  # (a function of a value other than make_nat could hide it from the items built with holes)
    try:
        items = build((build, None, None, *[Hole(k) for k in range(3, size)]))[0]
        planner = _Planner()
        for item in items:
            planner.item(item)
        holes: Tally[tuple[int, int | None]] = Tally()
        _holes(items, holes)
    except (Decline, TypeError, AttributeError, IndexError, KeyError, ValueError):
        # (a builder given holes fails where it reads a value's parts make_nat does not: its items are read)
        return None
    if holes != planner.read:
        return None
    return planner.ops


def _compile(parts: list[tuple[list[tuple[int, Any, Any]], str, Callable[[int], str]]], arg: str,
             consts: dict[str, Any] | None = None, whole: bool = False) -> Callable[[Any, tuple[Any, ...]],
                                                                                   tuple[Any, ...]]:
    """resolve(port, `arg`): each rule of `parts` (its ops, its builder's expression, where its value k is)
    written for `port` (a portshape._Port), as its builder and the answers of its ops for its values (see the
    module's doc); one rule's tuple, or (`whole`) the tuple of them all. Generated code, one function per builder
    or chain template: it runs for every own rule of every port, so the `_Port` calls that number an address or
    port are inline, and what a constant of the template answers is found here, once."""
    ns: dict[str, Any] = {"Decline": Decline, "_ADDR": ADDR, "_PORT": PORT, **(consts or {})}
    lines: list[str] = []
    used: set[str] = set()  # which of the port's tables the code reads
    rules: list[str] = []

    def const(x: Any) -> str:
        name = f"c{len(ns)}"
        ns[name] = x
        return name

    def number(table: str, v: str, into: str, indent: str = "    ") -> None:
        """`into` = `v`'s number in the port's `table` (addresses or ports), numbered now if new: _Port.address
        and _Port.port, inline."""
        used.add(table)
        lines.append(f"{indent}{into} = {table}.get({v})\n{indent}if {into} is None:\n"
                     f"{indent}    {into} = {table}[{v}] = len({table})")

    for j, (ops, builder, slot) in enumerate(parts):
        out = [builder]

        def get(x: Any, into: str, check: str | None = None, slot: Callable[[int], str] = slot) -> None:
            """`into` = the value `x` stands for (a constant, or the rule's), of type `check` when given."""
            if type(x) is not Hole:
                lines.append(f"    {into} = {const(x)}")
                if check is not None and type(x) is not {"str": str}[check]:
                    lines.append("    raise Decline")  # (a constant of another type: every rule of the builder)
                return
            lines.append(f"    {into} = {slot(x.k)}")
            if x.part is not None:
                lines.append(f"    if type({into}) is not tuple or len({into}) != 2:\n        raise Decline")
                lines.append(f"    {into} = {into}[{x.part}]")
            if check is not None:
                lines.append(f"    if type({into}) is not {check}:\n        raise Decline")

        for i, (code, a, b) in enumerate(ops):
            x = f"x{j}_{i}"
            if code == _VALUE:
                if a == LIT and type(b) in (str, int):
                    lines.append(f"    {x} = {const(b)}")  # (_Port.value of a literal constant: the constant itself)
                    out.append(x)
                    continue
                get(b, "v")
                if a in (ADDR, PORT):  # (_Port.value of an address or port, the common case inline)
                    table, kind, t = ("addresses", "_ADDR", "str") if a == ADDR else ("ports", "_PORT", "int")
                    lines.append(f"    if type(v) is {t}:")
                    number(table, "v", "n", "        ")
                    lines.append(f"        {x} = ({kind}, n)\n    else:\n        {x} = port.value({kind}, v)")
                else:
                    lines.append(f"    {x} = port.value({const(a)}, v)")
            elif code == _VERDICT:
                get(b, "v", "str")
                used.update(("own", "jumps"))
                lines.append(f"    n = own.get(v)\n    if n is None:\n        jumps.add(v)\n"
                             f"        {x} = ({const(a)}, v)\n    else:\n        {x} = ({const(a)}, n)")
            elif code == _NAT:
                get(a, "v", "str")
                get(b, "p")
                lines.append("    if p is not None and type(p) is not int:\n        raise Decline")
                number("addresses", "v", "n")  # (the address first, as _Port.item numbers them)
                lines.append(f"    if p is None:\n        {x} = (n, None)\n    else:")
                number("ports", "p", "m", "        ")
                lines.append(f"        {x} = (n, m)")
            elif code == _FIB:
                get(a, x, "str")
            elif code == _LITERAL:
                get(a, x)
                lines.append(f"    hash({x})")
            else:
                get(a, "v", "str")
                lines.append(f"    {x} = port.own_set(v)")
            out.append(x)
        rules.append(f"({', '.join(out)},)")
    prologue = "".join(f"    {name} = port.{name}\n" for name in sorted(used))
    body = "\n".join(lines)
    result = f"({''.join(r + ', ' for r in rules)})" if whole else rules[0]
    exec(f"def resolve(port, {arg}):\n{prologue}{body}\n    return {result}\n", ns)
    return ns["resolve"]  # type: ignore[no-any-return]


# -- what the layout reads of a rule ----------------------------------------------------------------------------

# What PortReader.service_port reads of a rule: the chains it sends to (verdicts, and the verdicts of an anonymous
# verdict map's elements, in order, each that is set), the names of the named sets its matches test against (in
# order), whether a match reads fib.
Reads = tuple[tuple[str, ...], tuple[str, ...], bool]


def items_reads(items: tuple[Any, ...]) -> Reads:
    """`Reads` of a rule's items."""
    targets: list[str] = []
    names: list[str] = []
    fib = False
    for item in items:
        if isinstance(item, Verdict):
            if item.target:
                targets.append(item.target)
        elif isinstance(item, VerdictMap):
            if isinstance(item.map, AnonSet):
                for e in item.map.elements:
                    if isinstance(e.data, Verdict) and e.data.target:
                        targets.append(e.data.target)
        elif isinstance(item, Match):
            if isinstance(item.right, SetRef):
                names.append(item.right.name)
            fib = fib or isinstance(item.left, Fib)
    return tuple(targets), tuple(names), fib


def rule_reads(rule: Any) -> Reads:
    """`Reads` of a rule. One a shape's builder made (a planned builder, as `plan`'s: no function of a value but
    make_nat) is read from its values, by where its template puts them, without building its items: the layout
    reads every service chain of a listing (5,000 verdict maps of 10 elements at 5,000 Services) and a trace
    only a few. Any other rule, or one whose value could be a set reference where a match's right side is, by
    its items."""
    lazy = rule._lazy
    if lazy is not None:
        build = lazy[0]
        try:
            found = build.layout_plan
        except AttributeError:
            found = build.layout_plan = _reads_plan(build, len(lazy))
        if found is not None:
            reads = _planned(found, lazy, 0)
            if reads is not None:
                return reads
    return items_reads(rule.items)


def chain_reads(chain: Any) -> list[Reads]:
    """`Reads` of each rule of a chain, in order. A chain read by a template (model.Chain._lazy) whose rules'
    builders all have `rule_reads`' plans is read from its record without making its rules: the layout reads
    the external chain of every Service port with a NodePort, externalIP or LB IP (~1,000 at 5,000 Services)
    and a trace only a few."""
    record = chain._lazy
    if record is not None:
        maker = record[0]
        try:
            read = maker.layout_reads
        except AttributeError:
            found = [(_reads_plan(build, 3 + size), at) for build, at, size in maker.builds]
            plans = maker.layout_plans = None if any(p is None for p, _ in found) else found
            read = maker.layout_reads = None if plans is None else _compile_reads(plans)  # type: ignore[arg-type]
        if read is not None:
            reads = read(record)
            if reads is not None:
                return reads  # type: ignore[no-any-return]
    return [rule_reads(r) for r in chain.rules]


def _compile_reads(plans: list[tuple[tuple[tuple[int | str, ...], tuple[int | str, ...], bool, tuple[int, ...]],
                                     int]]) -> Callable[[tuple[Any, ...]], list[Reads] | None]:
    """read(record): `[_planned(p, record, at - 3) for p, at in plans]`, or None where one is None, as one
    generated function per chain template (the layout reads a listing's ~6,000 service and external chains, each
    of a few rules whose targets are ten endpoint chains)."""
    ns: dict[str, Any] = {"SetRef": SetRef}
    checks: list[str] = []
    rules: list[str] = []

    def at(k: int, off: int) -> str:
        return f"record[{off + k}]"  # (the rule's `_lazy[k]`, k >= 3, is the record's `at + k - 3`-th item)

    def const(x: Any) -> str:
        name = f"c{len(ns)}"
        ns[name] = x
        return name

    for (targets, names, fib, rights), start in plans:
        off = start - 3
        checks.extend(f"type({at(k, off)}) is SetRef" for k in rights)
        if any(type(x) is int for x in targets):  # (a value may be empty: `_planned` leaves it out)
            parts = [at(x, off) if type(x) is int else const(x) for x in targets]
            target_text = f"tuple([x for x in ({''.join(p + ', ' for p in parts)}) if x])"
        else:
            target_text = const(tuple([x for x in targets if x]))
        name_text = f"({''.join((at(x, off) if type(x) is int else const(x)) + ', ' for x in names)})"
        rules.append(f"({target_text}, {name_text}, {fib!r})")
    check = f"    if {' or '.join(checks)}:\n        return None\n" if checks else ""
    exec(f"def read(record):\n{check}    return [{', '.join(rules)}]\n", ns)
    return ns["read"]  # type: ignore[no-any-return]


def _planned(found: tuple[tuple[int | str, ...], tuple[int | str, ...], bool, tuple[int, ...]],
             values: tuple[Any, ...], off: int) -> Reads | None:
    """`Reads` of a rule by its builder's plan (`_reads_plan`), its value k at `values[off + k]`; None when a value
    a match's right side is holds a set reference (its items are read)."""
    targets, names, fib, rights = found
    if any(type(values[off + k]) is SetRef for k in rights):
        return None
    return (tuple([x for x in [values[off + x] if type(x) is int else x for x in targets] if x]),
            tuple([values[off + x] if type(x) is int else x for x in names]), fib)


def _slot(x: Any) -> int | str:
    """A read value of a template built with holes: its place in `_lazy`, or the constant itself (a str)."""
    if type(x) is Hole:
        if x.part is not None:
            raise Decline
        return x.k
    if type(x) is not str:
        raise Decline
    return x


def _reads_plan(build: Any, size: int) -> tuple[tuple[int | str, ...], tuple[int | str, ...], bool,
                                                 tuple[int, ...]] | None:
    """Where `items_reads` finds its answers in the rules `build` makes (`rule_reads`): (targets, set names, fib,
    the places of the values a match's right side is), or None when such rules are read by their items."""
    template = getattr(build, "template", None)
    if template is None or not calls_only(template[0], make_nat):
        return None
    try:
        items = build((build, None, None, *[Hole(k) for k in range(3, size)]))[0]
        targets: list[int | str] = []
        names: list[int | str] = []
        rights: list[int] = []
        fib = False
        for item in items:
            if isinstance(item, Verdict):
                if type(item.target) is Hole or item.target:
                    targets.append(_slot(item.target))
            elif isinstance(item, VerdictMap):
                if type(item.map) is Hole:
                    raise Decline
                if isinstance(item.map, AnonSet):
                    for e in item.map.elements:
                        if type(e) is Hole or type(e.data) is Hole:
                            raise Decline
                        if isinstance(e.data, Verdict) and (type(e.data.target) is Hole or e.data.target):
                            targets.append(_slot(e.data.target))
            elif isinstance(item, Match):
                right = item.right
                if type(right) is Hole:
                    rights.append(_slot(right))  # type: ignore[arg-type]
                elif isinstance(right, SetRef):
                    names.append(_slot(right.name))
                if type(item.left) is Hole:
                    raise Decline
                fib = fib or isinstance(item.left, Fib)
            elif type(item) is Hole:
                raise Decline
    except (Decline, TypeError, AttributeError, IndexError, KeyError, ValueError):
        return None
    return tuple(targets), tuple(names), fib, tuple(rights)
