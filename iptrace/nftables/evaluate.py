"""What an nft expression reads from a packet, and whether a relational test holds, with the kernel's semantics
for a new connection's first packet.

Each expression compiles once into a getter `State -> value`. A getter returns NA when the expression does not
apply to the packet at all (nft's implicit dependency fails: `tcp dport` of a UDP packet, `ip saddr` of an IPv6
packet in an inet table), which fails the test whatever its operator. It returns an `Unknown` (with the reason)
when the packet's property cannot be known from the rules (an interface not given, the sending socket's owner,
an L2 header): the packet is then assumed not to have the property — `==` fails, `!=` holds — and the test
records that assumption. Nothing unknown is silently treated as a match.

The model of a first packet (documented once, here): ct state new (untracked after notrack; invalid in a chain
hooked before conntrack, where the packet has no connection yet and every other ct key fails, as for an
untracked packet); ct status dnat/snat once this trace rewrote the destination/source; mark and ct mark 0 until a
rule sets them; tcp flags SYN; fib type local = the node's addresses and loopback; dynamic sets (session affinity)
hold no entry for the packet unless this trace added it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from iptrace.dataplane import IN_HOW, OUT_HOW
from iptrace.nftables.model import (
    AnonSet,
    Binop,
    Concat,
    Ct,
    Fib,
    Flags,
    Hash,
    MapLookup,
    Match,
    Meta,
    Numgen,
    Payload,
    Prefix,
    Range,
    Selector,
    SetRef,
)
from iptrace.nftables.sets import SetIndex, _order, covers
from iptrace.nftables.state import BITS, State, ip_int, is_loopback, prefix_bounds
from iptrace.nftables.types import expr_type
from iptrace.routes import Routes, routed_note


class _NotApplicable:
    def __repr__(self) -> str:
        return "NA"


NA: Any = _NotApplicable()


class Unknown:
    """A property of the packet the rules cannot tell; `note` says what was assumed."""

    __slots__ = ("note",)

    def __init__(self, note: str) -> None:
        self.note = note


Getter = Callable[[State], Any]
# A test that may need an assumption answers (holds, assumption text or None); a definite one just holds.
Test = Callable[[State], tuple[bool, str | None]]
Definite = Callable[[State], bool]

_PORT_PROTOS = frozenset({"tcp", "udp", "sctp", "dccp", "udplite"})
_ICMP = {"icmp": "icmp", "icmpv6": "ipv6-icmp", "igmp": "igmp", "ah": "ah", "esp": "esp", "comp": "comp"}
_SYN = frozenset({"syn"})


class Context:
    """What the evaluator knows about the node: its local addresses (fib type local), and how to find a table's
    named sets."""

    def __init__(self, local: frozenset[str], routes: Routes | None = None) -> None:
        self.local = local
        self.routes = routes  # the node's (None: the interface a packet leaves by is unknown)

    def out_iface(self, ip: str, version: int) -> str | None:
        """The interface a packet for `ip` leaves by, when known: lo for the node's own addresses, else the
        route's (None without routes for the version, or without a route for it; BLACKHOLE for a
        blackhole route)."""
        if ip in self.local or is_loopback(ip):
            return "lo"
        table = self.routes.table(version) if self.routes is not None else None
        return table.device(ip_int(ip)) if table is not None else None

    def addrtype(self, ip: str) -> str:
        if ip in self.local or is_loopback(ip):
            return "local"
        if ip == "255.255.255.255":
            return "broadcast"
        first = ip.split(".", 1)[0] if "." in ip and ":" not in ip else ""
        if (first.isdigit() and 224 <= int(first) <= 239) or ip.lower().startswith("ff"):
            return "multicast"
        return "unicast"


def _unknown(where: str, what: str) -> Unknown:
    return Unknown(f"{where}: {what} is not known from the rules: assumed the packet does not have it")


def getter(e: Any, ctx: Context, where: str, bind: dict[int, int] | None = None) -> Getter:
    """The function reading expression `e` from a branch; `where` names the rule for assumptions."""
    if isinstance(e, Payload):
        return _payload(e, where)
    if isinstance(e, Meta):
        return _meta(e, where)
    if isinstance(e, Ct):
        return _ct(e, where)
    if isinstance(e, Fib):
        return _fib(e, ctx, where)
    if isinstance(e, (Numgen, Hash)):
        key = id(e)
        return lambda s: s.bind[key]  # type: ignore[attr-defined]
    if isinstance(e, Binop):
        return _binop(e, ctx, where)
    if isinstance(e, Concat):
        parts = [getter(p, ctx, where) for p in e.parts]
        if len(parts) == 3:
            return _concat3(*parts)

        def concat(s: State) -> Any:
            out = []
            for g in parts:
                v = g(s)
                if v is NA or isinstance(v, Unknown):
                    return v
                out.append(v)
            return tuple(out)
        return concat
    if isinstance(e, Selector):
        found = _unknown(where, " ".join(e.words))
        return lambda s: found
    if isinstance(e, MapLookup) and isinstance(e.map, AnonSet):
        key = getter(e.key, ctx, where)
        index = SetIndex.of(e.map)

        def lookup(s: State) -> Any:
            k = key(s)
            if k is NA or isinstance(k, Unknown):
                return k
            found = index.find(k)
            return NA if found is None else found.data
        return lookup
    constant = e
    return lambda s: constant


def _concat3(g0: Getter, g1: Getter, g2: Getter) -> Getter:
    """`ip daddr . meta l4proto . th dport` (kube-proxy's every Service map is keyed so), spelled out."""

    def concat(s: State) -> Any:
        a = g0(s)
        if a is NA or isinstance(a, Unknown):
            return a
        b = g1(s)
        if b is NA or isinstance(b, Unknown):
            return b
        c = g2(s)
        if c is NA or isinstance(c, Unknown):
            return c
        return (a, b, c)
    return concat


def _payload(e: Payload, where: str) -> Getter:
    proto, name = e.protocol, e.field
    if proto in ("ip", "ip6"):
        version = 4 if proto == "ip" else 6
        if name == "saddr":
            return lambda s: s.src if s.version == version else NA
        if name == "daddr":
            return lambda s: s.dst if s.version == version else NA
        if name in ("protocol", "nexthdr"):
            return lambda s: s.proto if s.version == version else NA
        if name == "version":
            return lambda s: version if s.version == version else NA
        found = _unknown(where, f"{proto} {name}")
        return lambda s: found if s.version == version else NA
    if proto == "th":
        if name == "dport":
            return lambda s: s.dport if s.proto in _PORT_PROTOS else NA
        if name == "sport":
            return lambda s: s.sport if s.proto in _PORT_PROTOS else NA
    if proto in _PORT_PROTOS:
        if name == "dport":
            return lambda s: s.dport if s.proto == proto else NA
        if name == "sport":
            return lambda s: s.sport if s.proto == proto else NA
        if proto == "tcp" and name == "flags":
            return lambda s: _SYN if s.proto == "tcp" else NA
        found = _unknown(where, f"{proto} {name}")
        return lambda s: found if s.proto == proto else NA
    if proto in _ICMP:
        wanted = _ICMP[proto]
        found = _unknown(where, f"{proto} {name}")
        return lambda s: found if s.proto == wanted else NA
    found = _unknown(where, f"the {proto} header ({proto} {name})")
    return lambda s: found


def _meta(e: Meta, where: str) -> Getter:
    key = e.key
    if key == "l4proto":
        return lambda s: s.proto
    if key == "nfproto":
        return lambda s: "ipv4" if s.version == 4 else "ipv6"
    if key == "protocol":
        return lambda s: "ip" if s.version == 4 else "ip6"
    if key == "mark":
        return lambda s: s.mark
    if key == "nftrace":
        return lambda s: 0
    if key in ("iifname", "oifname", "iif", "oif"):
        # (iif/oif compare the interface's index; a listing names the interface that holds it: compared by name)
        inbound = key[0] == "i"
        note = f"{where}: the {'input' if inbound else 'output'} interface is not known " \
               f"({IN_HOW if inbound else OUT_HOW}): assumed none of the names this rule tests"
        def iface(s: State) -> Any:
            name = s.in_iface if inbound else s.out_iface
            return name if name is not None else Unknown(note)
        return iface
    if key == "pkttype":
        return lambda s: ("broadcast" if s.dst == "255.255.255.255" else
                          "multicast" if s.dst.startswith(("224.", "225.", "226.", "227.", "228.", "229.", "23",
                                                           "ff")) else "host")
    found = _unknown(where, f"meta {key}")
    return lambda s: found


_NEW = frozenset({"new"})  # a first packet's `ct state` (one value for every branch: it runs for every rule testing it)
_UNTRACKED = frozenset({"untracked"})
_INVALID = frozenset({"invalid"})


def _ct(e: Ct, where: str) -> Getter:
    """`ct state` of a packet without a connection (State.notrack None: before the conntrack hook) reads invalid;
    every other key of it, or of an untracked packet, fails whatever the operator (nft_ct_get_eval's NFT_BREAK)."""
    if e.key == "state":
        return lambda s: _NEW if s.notrack is False else _UNTRACKED if s.notrack else _INVALID
    found = _ct_key(e, where)
    return lambda s: found(s) if s.notrack is False else NA


def _ct_key(e: Ct, where: str) -> Getter:
    key, direction = e.key, e.direction
    if key == "status":
        return lambda s: frozenset(n for n, on in (("dnat", s.dnat_by is not None), ("snat", s.snat)) if on)
    if key == "mark":
        return lambda s: s.ct_mark
    if key == "direction":
        return lambda s: "original"
    if key == "l3proto":
        return lambda s: "ipv4" if s.version == 4 else "ipv6"
    if key == "protocol":
        return lambda s: s.proto
    if key == "zone":
        return lambda s: 0
    reply = direction == "reply"
    if key == "saddr":
        return (lambda s: s.dst) if reply else (lambda s: s.src)
    if key == "daddr":
        return (lambda s: s.src) if reply else (lambda s: s.orig_dst)
    if key == "proto-dst":
        return (lambda s: s.sport) if reply else (lambda s: s.orig_dport)
    if key == "proto-src":
        return (lambda s: s.dport) if reply else (lambda s: s.sport)
    found = _unknown(where, f"ct {key}")
    return lambda s: found


def _fib(e: Fib, ctx: Context, where: str) -> Getter:
    if e.result == "type" and ("daddr" in e.flags or "saddr" in e.flags):
        dest = "daddr" in e.flags
        return (lambda s: ctx.addrtype(s.dst)) if dest else (lambda s: ctx.addrtype(s.src))
    # `fib saddr . iif oif missing drop` (reverse-path filtering): a route exists, but which interface it
    # uses is not in the rules.
    found = Unknown(f"{where}: the route lookup (fib {' . '.join(e.flags)} {e.result}) is assumed to find a "
                    "route, through an interface the rules do not name")
    return lambda s: found


def _bits(dtype: str, value: Any) -> Any:
    """A bitmask value (name, Flags, `(a|b)` text or int) as the set of flag names."""
    table = BITS.get(dtype)
    if table is None:
        return value
    if isinstance(value, Flags):
        return frozenset(value.names)
    if isinstance(value, str):
        return frozenset(value.strip("()").split("|")) if "|" in value or value.startswith("(") else \
            frozenset({value})
    if isinstance(value, int):
        return frozenset(n for n, bit in table.items() if value & bit)
    return value


_BINOPS: dict[str, Callable[[Any, Any], Any]] = {
    "&": lambda a, b: a & b, "|": lambda a, b: a | b, "^": lambda a, b: a ^ b,
    "<<": lambda a, b: a << b, ">>": lambda a, b: a >> b}


def _binop(e: Binop, ctx: Context, where: str) -> Getter:
    left = getter(e.left, ctx, where)
    dtype = expr_type(e.left)
    if isinstance(e.right, (Payload, Meta, Ct, Fib, Numgen, Hash, Binop, Concat)):
        right = getter(e.right, ctx, where)
    else:
        constant = _bits(dtype, e.right)
        return _binop_constant(left, e.op, constant)
    apply = _BINOPS[e.op]

    def binop(s: State) -> Any:
        a = left(s)
        if a is NA or isinstance(a, Unknown):
            return a
        b = right(s)
        if b is NA or isinstance(b, Unknown):
            return b
        if isinstance(a, frozenset) and e.op == "^":
            return a ^ b
        return apply(a, b)
    return binop


def _binop_constant(left: Getter, op: str, constant: Any) -> Getter:
    """`meta mark & 0x00004000` (kube-proxy's masquerade test and mark updates): a constant right operand."""
    apply = _BINOPS[op]
    flip = op == "^"

    def binop(s: State) -> Any:
        a = left(s)
        if a is NA or isinstance(a, Unknown):
            return a
        if flip and isinstance(a, frozenset):
            return a ^ constant
        return apply(a, constant)
    return binop


def _compare(op: str, value: Any, right: Any, dtype: str) -> bool:
    if dtype in BITS:
        value, right = _bits(dtype, value), _bits(dtype, right)
        if op == "in":
            return bool(value & right) if isinstance(right, frozenset) else value == right
        return (value == right) != (op == "!=")
    if op in ("==", "in"):
        return covers(right, value)
    if op == "!=":
        return not covers(right, value)
    if isinstance(right, (Prefix, Range, tuple)):
        return False
    a, b = _order(value), _order(right)
    try:
        return bool({"<": a < b, ">": a > b, "<=": a <= b, ">=": a >= b}[op])
    except TypeError:
        return False


def compile_match(m: Match, ctx: Context, where: str,
                  named: Callable[[str], tuple[SetIndex | None, str | None]]) -> tuple[Definite | None, Test | None]:
    """The test of one relational item: (definite test, None) when the packet always tells, else (None, a test
    that may record an assumption)."""
    fast = address_equals(m)
    if fast is not None:
        return fast, None
    if ctx.routes is not None and reads_oif(m.left):
        # (the test itself is the one without routes: the walk set the interface it reads; only the note differs)
        return None, _routed(compile_match(m, Context(ctx.local), where, named), where)
    if isinstance(m.left, Fib) and "iif" in m.left.flags and m.left.result == "type":
        return None, _on_iif(m, ctx, where, named)
    get = getter(m.left, ctx, where)
    dtype = expr_type(m.left)
    negated = m.op == "!="
    right = m.right
    if isinstance(right, (SetRef, AnonSet)):
        if isinstance(right, SetRef):
            index, problem = named(right.name)
        else:
            index, problem = SetIndex.of(right), None
            if dtype in BITS:
                index = SetIndex(tuple(type(e)(_bits(dtype, e.key)) for e in right.elements))  # type: ignore[call-arg]
        if index is None:
            note = f"{where}: {problem}: assumed the packet is not in it"
            return None, (lambda s: (negated, note))
        if index.dynamic:
            return None, _dynamic_lookup(get, index, negated, where)
        if always_known(m.left):
            if not index.ranged:
                exact = index.exact
                return (lambda s: (v := get(s)) is not NA and (v in exact) != negated), None
            find = index.find
            return (lambda s: (v := get(s)) is not NA and (find(v) is not None) != negated), None

        def member(s: State) -> tuple[bool, str | None]:
            v = get(s)
            if v is NA:
                return False, None
            if isinstance(v, Unknown):
                return negated, v.note
            return (index.find(v) is not None) != negated, None
        return None, member
    if always_known(m.left):
        return _definite_compare(get, m.op, right, dtype), None

    def compare(s: State) -> tuple[bool, str | None]:
        v = get(s)
        if v is NA:
            return False, None
        if isinstance(v, Unknown):
            return negated, v.note
        return _compare(m.op, v, right, dtype), None
    return None, compare


def reads_oif(e: Any) -> bool:
    """Whether a test's left side reads the output interface: `oifname`, `oif`, or a concatenation holding one
    (`ip daddr . oifname @set`, `iifname . oifname { … }`)."""
    if isinstance(e, Concat):
        return any(reads_oif(part) for part in e.parts)
    return isinstance(e, Meta) and e.key in ("oifname", "oif")


def routed_notes(where: str) -> Callable[[str], str]:
    """The note of a rule at `where` answered by the route out of an interface, made once per interface."""
    notes: dict[str, str] = {}

    def note(iface: str) -> str:
        found = notes.get(iface)
        if found is None:
            found = notes[iface] = routed_note(where, iface)
        return found
    return note


def _routed(compiled: tuple[Definite | None, Test | None], where: str) -> Test:
    """A test of the output interface answered by the node's routes (the walk sets it from them), with a note
    that says so; lo (the node's own address) and an unknown interface as without routes."""
    definite, test = compiled
    note = routed_notes(where)

    def routed(s: State) -> tuple[bool, str | None]:
        held, why = (definite(s), None) if definite is not None else test(s)  # type: ignore[misc]
        current = s.out_iface
        if current is None or current == "lo":
            return held, why
        return held, note(current)
    return routed


def _on_iif(m: Match, ctx: Context, where: str, named: Callable[[str], tuple[SetIndex | None, str | None]]) -> Test:
    """`fib daddr . iif type local`: local only on the interface the packet came in on (a node address another
    interface holds is unicast there). Which interface holds which address the rules do not say: assumed its own."""
    flags = m.left.flags
    definite, test = compile_match(Match(Fib(tuple(f for f in flags if f != "iif"), "type"), m.op, m.right), ctx,
                                   where, named)
    note = f"{where}: fib {' . '.join(flags)} type: assumed the node address is on the interface the packet came in on"

    def on_iif(s: State) -> tuple[bool, str | None]:
        held, why = (definite(s), None) if definite is not None else test(s)  # type: ignore[misc]
        return held, why or (note if (s.dst if "daddr" in flags else s.src) in ctx.local else None)
    return on_iif


def address_equals(m: Match) -> Definite | None:
    """`ip saddr 10.180.0.1` (kube-proxy's hairpin rule in every endpoint chain), `ip daddr 172.30.0.41`: the
    commonest test, compiled without the general machinery."""
    left, right = m.left, m.right
    if type(left) is not Payload or type(right) is not str or m.op != "==" or left.protocol not in ("ip", "ip6"):
        return None
    version = 4 if left.protocol == "ip" else 6
    if left.field == "saddr":
        return lambda s: s.src == right and s.version == version
    if left.field == "daddr":
        return lambda s: s.dst == right and s.version == version
    return None


def _definite_compare(get: Getter, op: str, right: Any, dtype: str) -> Definite:
    """A definite comparison, specialised for the shapes rulesets are made of (one value, a prefix, flags)."""
    if dtype in BITS:
        bits = _bits(dtype, right)
        if op == "in" and isinstance(bits, frozenset):
            return lambda s: (v := get(s)) is not NA and bool(v & bits)
        equal = op != "!="
        return lambda s: (v := get(s)) is not NA and (v == bits) == equal
    if isinstance(right, Prefix):
        net, mask = prefix_bounds(right.addr, right.length)
        v6 = ":" in right.addr
        inside = op in ("==", "in")
        if op in ("==", "in", "!="):
            return lambda s: (v := get(s)) is not NA and isinstance(v, str) and (":" in v) == v6 and \
                ((ip_int(v) & mask) == net) == inside
    if isinstance(right, (str, int)) and not isinstance(right, bool):
        if op in ("==", "in"):
            return lambda s: get(s) == right
        if op == "!=":
            return lambda s: (v := get(s)) is not NA and v != right
    return lambda s: (v := get(s)) is not NA and _compare(op, v, right, dtype)


def _dynamic_lookup(get: Getter, index: SetIndex, negated: bool, where: str) -> Test:
    """A set the packet path fills (session affinity): empty for a first packet, unless this trace added the
    key itself. Entries a listing shows were made by earlier connections."""
    name = index.name or "?"

    def lookup(s: State) -> tuple[bool, str | None]:
        v = get(s)
        if v is NA:
            return False, None
        if isinstance(v, Unknown):
            return negated, v.note
        if any(u[1] == name and u[2] == v for u in s.updates):
            return not negated, None
        listed = index.find(v) is not None
        note = (f"{where}: @{name} is filled by the packet path (session affinity): a first connection from "
                f"{v if not isinstance(v, tuple) else ' . '.join(map(str, v))} has no entry in it"
                + (" (the listing holds one from an earlier connection)" if listed else ""))
        return negated, note
    lookup.dynamic = True  # type: ignore[attr-defined]  # memo.py: its note names the packet
    return lookup


def always_known(e: Any) -> bool:
    """Whether an expression's value is always known for a first packet (its getter never returns Unknown)."""
    if isinstance(e, Payload):
        return (e.protocol in ("ip", "ip6") and e.field in ("saddr", "daddr", "protocol", "nexthdr", "version")) \
            or ((e.protocol in _PORT_PROTOS or e.protocol == "th") and e.field in ("dport", "sport")) \
            or (e.protocol == "tcp" and e.field == "flags")
    if isinstance(e, Meta):
        return e.key in ("l4proto", "nfproto", "protocol", "mark", "nftrace", "pkttype")
    if isinstance(e, Ct):
        return e.key in ("state", "status", "mark", "direction", "l3proto", "protocol", "zone", "saddr", "daddr",
                         "proto-dst", "proto-src")
    if isinstance(e, Fib):
        return e.result == "type" and ("daddr" in e.flags or "saddr" in e.flags)
    if isinstance(e, Binop):
        return always_known(e.left) and (not isinstance(e.right, (Payload, Meta, Ct, Fib, Binop, Concat))
                                      or always_known(e.right))
    if isinstance(e, Concat):
        return all(always_known(p) for p in e.parts)
    if isinstance(e, (Numgen, Hash)):
        return True
    return False
