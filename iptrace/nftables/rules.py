"""An nft rule compiled for the walk: the relational tests that lead it (definite ones first, so that an
assumption is recorded only when it decided whether the rule applies), then its remaining items as operations
the walk runs in order — later tests, verdict-map look-ups, NAT, mark and set updates, verdicts.

What is not modeled becomes an operation that records an assumption: an unknown expression or `xt match` fails
the rule (the packet is assumed not to have the property), an unknown statement is passed over, `queue` is
assumed to accept. Compiled lazily, rule by rule, the first time a packet reaches a rule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from iptrace.dataplane import HANDED_OFF_TARGETS, Decision
from iptrace.nftables.chance import Chance
from iptrace.nftables.evaluate import (
    NA,
    Context,
    Definite,
    Test,
    Unknown,
    address_equals,
    always_known,
    compile_match,
    getter,
    reads_oif,
    routed_notes,
)
from iptrace.nftables.model import (
    Concat,
    Counter,
    Ct,
    Hash,
    Mangle,
    MapLookup,
    Match,
    Meta,
    NamedObject,
    Nat,
    Numgen,
    Prefix,
    Range,
    Reject,
    Rule,
    SetRef,
    SetUpdate,
    Statement,
    Verdict,
    VerdictMap,
    Xt,
)
from iptrace.nftables.model import (
    Unknown as UnknownItem,
)
from iptrace.nftables.reads import forks
from iptrace.nftables.sets import SetIndex
from iptrace.nftables.state import State
from iptrace.nftables.values import unquote

# Operation codes.
TEST, VMAP, VERDICT, REJECT, NAT, MANGLE, UPDATE, NOTE, FAIL, QUEUE, NOTRACK, FORK = range(12)

Named = Callable[[str], tuple[SetIndex | None, str | None]]
_SHAREABLE = frozenset({TEST, VMAP, VERDICT, REJECT, MANGLE})  # operations whose code names no rule
# A VMAP operation: (VMAP, key getter, SetIndex, the named map or None, None or the note of a key the node's
# routes answered, by output interface).
# What a chance's FORK holds as its item's own operation (the walk runs none: the chance alone decides).
_HOLDS = (TEST, lambda s: True, None)


class CompiledRule:
    """`tests` (definite) and `assumed` come from the rule's leading relational items; `ops` is the rest."""

    __slots__ = ("acts", "assumed", "decision", "index", "ops", "rule", "tests", "verdict", "where")

    def __init__(self, rule: Rule, index: int, decision: Decision, where: str, tests: tuple[Definite, ...],
                 assumed: tuple[Test, ...], ops: tuple[tuple[Any, ...], ...]) -> None:
        self.rule = rule
        self.index = index
        self.decision = decision
        self.where = where
        self.tests = tests
        self.assumed = assumed
        self.ops = ops
        self.acts: tuple[tuple[Any, ...], list[Any]] | None = None  # (a draw's op, its verdicts: ChainWalker's)
        # A rule whose only operation is a verdict (`jump services`, `ct state new jump firewall-check`): the walk
        # takes it without running operations.
        self.verdict: tuple[str, str | None] | None = (ops[0][1], ops[0][2]) if len(ops) == 1 and \
            ops[0][0] == VERDICT else None


def compile_rule(rule: Rule, index: int, decision: Decision, where: str, ctx: Context, named: Named,
                 family: str, shared: dict[Any, Any] | None = None,
                 objects: tuple[NamedObject, ...] = ()) -> CompiledRule:
    """`shared`: what items equal to an earlier rule's compiled to, in the same table (`meta l4proto tcp`,
    `jump mark-for-masquerade`, a map look-up): reused, for items whose code names no rule (no assumption).
    `objects`: the table's named objects (`limit name "x"` reads its rate)."""
    items = rule.items
    tests: list[Definite] = []
    assumed: list[Test] = []
    cache = shared if shared is not None else {}
    k = 0
    n = len(items)
    while k < n and type(items[k]) is Match:
        item = items[k]
        definite = address_equals(item)  # one address: compiled at once, never shared (each rule has its own)
        if definite is not None:
            tests.append(definite)
            k += 1
            continue
        op = cache.get(item)  # (kept as the operation the same match compiles to after a statement)
        if op is None:
            if forks(item):
                break
            definite, test = compile_match(item, ctx, where, named)
            if definite is None:
                assumed.append(test)  # type: ignore[arg-type]
                k += 1
                continue
            cache[item] = (TEST, definite, None)
        else:
            definite = op[1]
        tests.append(definite)
        k += 1
    ops = []
    for item in items[k:]:
        op = cache.get(item)
        if op is None:
            op = _op(item, ctx, where, named, family, objects)
            # (not a look-up whose key may be unknown or routed: its notes name this rule)
            if op is not None and op[0] in _SHAREABLE and (op[0] != TEST or op[1] is not None) and (
                    op[0] != VMAP or always_known(item.key)):
                cache[item] = op
        if op is not None:
            ops.append(op)
    return CompiledRule(rule, index, decision, where, tuple(tests), tuple(assumed), tuple(ops))


def _op(item: Any, ctx: Context, where: str, named: Named, family: str,
        objects: tuple[NamedObject, ...]) -> tuple[Any, ...] | None:
    drawn = forks(item)
    if drawn and type(drawn[0]) is Chance:
        return (FORK, tuple(drawn), _HOLDS, True)  # (the chance alone decides: chains.Walker._fork)
    if drawn:
        inner = _plain_op(item, ctx, where, named, family, objects)
        return (FORK, tuple(drawn), inner, _draw_only(item)) if inner is not None else None
    return _plain_op(item, ctx, where, named, family, objects)


def _plain_op(item: Any, ctx: Context, where: str, named: Named, family: str,
              objects: tuple[NamedObject, ...]) -> tuple[Any, ...] | None:
    if isinstance(item, Match):
        return (TEST, *compile_match(item, ctx, where, named))
    if isinstance(item, VerdictMap):
        key = getter(item.key, ctx, where)
        # (a key that reads the output interface, answered by the node's routes: the walk says so, as for a test)
        routed = routed_notes(where) if ctx.routes is not None and reads_oif(item.key) else None
        if isinstance(item.map, SetRef):
            index, problem = named(item.map.name)
            if index is None:
                return (FAIL, f"{where}: {problem}: assumed no element matches")
            return (VMAP, key, index, item.map.name, routed)
        return (VMAP, key, SetIndex.of(item.map), None, routed)
    if isinstance(item, Verdict):
        return (VERDICT, item.kind, item.target)
    if isinstance(item, Reject):
        return (REJECT,)
    if isinstance(item, Nat):
        return _nat(item, ctx, where, named, family)
    if isinstance(item, Mangle):
        return _mangle(item, ctx, where)
    if isinstance(item, SetUpdate):
        key = getter(item.key, ctx, where)
        return (UPDATE, item.op, item.set, key)
    if isinstance(item, Counter):
        return None
    if isinstance(item, Statement):
        return _statement(item, where, objects)
    if isinstance(item, Xt):
        if item.kind in ("match", None, "") and item.name == "comment":
            return None  # `-m comment` always matches (the text listing leaves it out altogether)
        if item.kind in ("match", None, ""):
            return (FAIL, f"{where}: iptables extension `xt match \"{item.name}\"` is not visible in an nft listing: "
                          "assumed it does not match")
        if item.kind == "watcher":
            return None
        if item.name == "REJECT":  # (its ICMP type is not shown, but iptables' REJECT always ends the packet's path)
            return (REJECT,)
        if item.name in HANDED_OFF_TARGETS:  # (iptables' target ends the chain, as `queue` does)
            return (QUEUE, f"{where}: iptables extension `xt target \"{item.name}\"`: "
                           f"{HANDED_OFF_TARGETS[item.name]}; assumed it lets the connection through")
        return (NOTE, f"{where}: iptables extension `xt target \"{item.name}\"` is not modeled: assumed it does not "
                      "change the packet or decide")
    if isinstance(item, UnknownItem):
        return (FAIL, f"{where}: `{item.text}` is not understood: assumed the rule does not match")
    return (FAIL, f"{where}: {type(item).__name__} is not modeled: assumed the rule does not match")


def _looked_up(m: MapLookup, ctx: Context, where: str, named: Named) -> Callable[[State], Any] | str:
    """The value a NAT map gives a packet (NA when it holds no element for it), or why it cannot be looked up."""
    key = getter(m.key, ctx, where)
    if isinstance(m.map, SetRef):
        index, problem = named(m.map.name)
        if index is None:
            return f"{where}: {problem}: assumed no element matches"
    else:
        index = SetIndex.of(m.map)

    def found(s: State) -> Any:
        k = key(s)
        if k is NA or isinstance(k, Unknown):
            return NA
        element = index.find(k)
        return NA if element is None else element.data
    return found


def _nat(item: Nat, ctx: Context, where: str, named: Named, family: str) -> tuple[Any, ...]:
    version = {"ip": 4, "ip6": 6}.get(item.family or "") or {"ip": 4, "ip6": 6}.get(family)
    addr: Any = item.addr
    note = None
    if isinstance(addr, MapLookup):
        target = _looked_up(addr, ctx, where, named)
        if isinstance(target, str):
            return (FAIL, target)
    elif isinstance(addr, (Range, Prefix)):
        low = addr.low if isinstance(addr, Range) else addr.addr
        note = f"{where}: {item.kind} to an address range: the kernel picks one per connection; shown as {low}"
        target = lambda s: low  # noqa: E731
    else:
        target = lambda s: addr  # noqa: E731
    port: Any = item.port
    if isinstance(port, Range):
        note = f"{where}: {item.kind} to a port range: the kernel picks one per connection; shown as {port.low}"
        port = port.low
    elif isinstance(port, MapLookup):  # `dnat to … map { … }:tcp dport map { … }`
        if item.kind == "redirect":
            return (FAIL, f"{where}: redirect to a port a map chooses is not modeled: assumed the rule does not match")
        port_of, address = _looked_up(port, ctx, where, named), target
        if isinstance(port_of, str):
            return (FAIL, port_of)

        def target(s: State) -> Any:  # (address, port): what an `addr . port` map gives
            a, p = address(s), port_of(s)  # type: ignore[operator]
            return NA if a is NA or p is NA else (a[0] if isinstance(a, tuple) else a, p)
        port = None
    # Whether the packet chooses the address or port (a map keyed by its fields; memo.py cannot share such a walk).
    chosen = (isinstance(addr, MapLookup) and not all(isinstance(e, (Numgen, Hash)) for e in _parts(addr.key))) or (
        isinstance(item.port, MapLookup) and not all(isinstance(e, (Numgen, Hash)) for e in _parts(item.port.key)))
    return (NAT, item.kind, version, target, port, note, chosen)


def _parts(e: Any) -> tuple[Any, ...]:
    return e.parts if isinstance(e, Concat) else (e,)


def _draw_only(item: Any) -> bool:
    """Whether an item with a numgen/hash draw depends on the draw alone (not on the packet's fields)."""
    if isinstance(item, VerdictMap):
        key = item.key
    elif isinstance(item, Nat) and isinstance(item.addr, MapLookup):
        key = item.addr.key
    elif isinstance(item, Mangle):
        key = item.value.key if isinstance(item.value, MapLookup) else item.value
    elif isinstance(item, Match):
        key = item.left
    else:
        return False
    return all(isinstance(p, Numgen) for p in _parts(key))


def _mangle(item: Mangle, ctx: Context, where: str) -> tuple[Any, ...] | None:
    key = item.key
    get = getter(item.value, ctx, where)
    if isinstance(key, Meta) and key.key == "mark":
        return (MANGLE, "mark", get)
    if isinstance(key, Ct) and key.key == "mark":
        return (MANGLE, "ct_mark", get)
    if isinstance(key, Meta) and key.key == "nftrace":
        return None
    return (NOTE, f"{where}: setting {type(key).__name__.lower()} {getattr(key, 'key', '')} is not modeled: assumed "
                  "it does not change where the packet goes")


def _statement(item: Statement, where: str, objects: tuple[NamedObject, ...]) -> tuple[Any, ...] | None:
    word = item.keyword
    if word in ("log", "last", "secmark", "flow", "dup", "tcp"):  # (`tcp option … set`: the MSS, not the path)
        return None
    if word == "notrack":
        return (NOTRACK,)
    if word in ("limit", "quota"):
        if item.args[:1] == ("name",) and len(item.args) == 2:  # a named object: `over` is in its declaration
            body = [o.body for o in objects if o.kind == word and o.name == unquote(item.args[1])]
            if not body:
                return (FAIL, f"{where}: {word} {item.args[1]} is not declared in the table: assumed it does not "
                              "match")
            over = any("over" in part.split() for part in body[0])
            return (FAIL if over else NOTE, f"{where}: {word} {' '.join(item.args)} ({'; '.join(body[0])}): "
                                           "assumed under the limit (a first packet)")
        if "over" in item.args:
            return (FAIL, f"{where}: {word} {' '.join(item.args)}: assumed under the limit (a first packet)")
        return (NOTE, f"{where}: {word} {' '.join(item.args)}: assumed under the limit (a first packet)")
    if word in ("queue", "fwd"):
        return (QUEUE, f"{where}: `{word} {' '.join(item.args)}` hands the packet over: assumed it is accepted")
    return (NOTE, f"{where}: `{word} {' '.join(item.args)}` is not modeled: assumed it does not change where the "
                  "packet goes")

