"""Model → nft text, as the kernel lists it (`meta mark set meta mark | 0x00004000`, `priority dstnat - 10`).
Used by printer.py for whole rulesets and by the JSON reader for each rule's `text`. Pure: returns str."""

from __future__ import annotations

import re
from typing import Any

from iptrace.errors import IptraceError
from iptrace.nftables.model import (
    AnonSet,
    Binop,
    Concat,
    Counter,
    Ct,
    Element,
    Fib,
    Flags,
    Hash,
    Mangle,
    MapLookup,
    Match,
    Meta,
    Nat,
    Numgen,
    Payload,
    Prefix,
    Range,
    Reject,
    Rule,
    Selector,
    SetRef,
    SetUpdate,
    Statement,
    Unknown,
    Verdict,
    VerdictMap,
    Xt,
)
from iptrace.nftables.types import ANY, expr_type, is_bitmask, key_types
from iptrace.nftables.values import format_duration, quote
from iptrace.nftables.vocabulary import (
    HEX_TYPES,
    META_PRINTED_UNQUALIFIED,
    STRING_TYPES,
    priority_allowed,
    priority_names,
)

_BARE_RE = re.compile(r'[^\s"{};#,]+')


class UnwritableError(IptraceError):
    """Something of the model cannot be written as nft text (an expression only nft's JSON showed)."""


def name(text: str) -> str:
    """A chain/set/table name, quoted only when nft needs it."""
    return text if _BARE_RE.fullmatch(text) else quote(text)


def value(v: Any, dtype: str = ANY) -> str:
    if isinstance(v, int):
        width = HEX_TYPES.get(dtype)
        if width is not None:
            return f"0x{v:0{width}x}"
        return str(v)
    if isinstance(v, str):
        if dtype in STRING_TYPES and v.endswith("\\*"):  # a literal star (values._string), as nft lists it
            return quote(v[:-2])[:-1] + '\\*"'
        if dtype in STRING_TYPES or not _BARE_RE.fullmatch(v):
            return quote(v)
        return v
    if isinstance(v, Prefix):
        return f"{v.addr}/{v.length}"
    if isinstance(v, Range):
        return f"{value(v.low, dtype)}-{value(v.high, dtype)}"
    if isinstance(v, Flags):
        return ",".join(v.names)
    if isinstance(v, SetRef):
        return "@" + name(v.name)
    if isinstance(v, Verdict):
        return v.kind if v.target is None else f"{v.kind} {name(v.target)}"
    if isinstance(v, tuple):
        return " . ".join(value(p, _nth(dtype, i)) for i, p in enumerate(v))
    if isinstance(v, AnonSet):
        return anon_set(v, (dtype,), None)
    if isinstance(v, MapLookup):
        return map_lookup(v, (dtype,))
    if isinstance(v, (Payload, Meta, Ct, Fib, Numgen, Hash, Selector, Binop, Concat)):
        return expr(v)
    raise UnwritableError(f"cannot write {v!r} as nft text")


def _nth(dtype: Any, i: int) -> str:
    if isinstance(dtype, tuple):
        return dtype[i] if i < len(dtype) else ANY
    return dtype


def values_of(v: Any, dtypes: tuple[str, ...]) -> str:
    if isinstance(v, tuple):
        return " . ".join(value(p, dtypes[i] if i < len(dtypes) else ANY) for i, p in enumerate(v))
    return value(v, dtypes[0] if dtypes else ANY)


def element(e: Element, keys: tuple[str, ...], data: tuple[str, ...] | None) -> str:
    out = values_of(e.key, keys)
    if e.timeout_ms is not None:
        out += f" timeout {format_duration(e.timeout_ms)}"
    if e.comment is not None:
        out += f" comment {quote(e.comment)}"
    if e.data is not None:
        out += " : " + (value(e.data) if isinstance(e.data, Verdict) else values_of(e.data, data or ()))
    return out


def anon_set(s: AnonSet, keys: tuple[str, ...], data: tuple[str, ...] | None) -> str:
    return "{ " + ", ".join(element(e, keys, data) for e in s.elements) + " }"


def map_lookup(m: MapLookup, data: tuple[str, ...]) -> str:
    keys = key_types(m.key)
    target = m.map
    text = value(target) if isinstance(target, SetRef) else anon_set(target, keys, data)
    return f"{expr(m.key)} map {text}"


def expr(e: Any, family: str = "ip") -> str:
    if isinstance(e, Payload):
        return f"{e.protocol} {e.field}"
    if isinstance(e, Meta):
        return e.key if e.key in META_PRINTED_UNQUALIFIED else f"meta {e.key}"
    if isinstance(e, Ct):
        return " ".join(w for w in ("ct", e.direction, e.family, e.key) if w)
    if isinstance(e, Fib):
        return f"fib {' . '.join(e.flags)} {e.result}"
    if isinstance(e, Numgen):
        return f"numgen {e.mode} mod {e.modulus}" + (f" offset {e.offset}" if e.offset else "")
    if isinstance(e, Hash):
        out = e.kind + (f" {expr(e.expr)}" if e.expr is not None else "") + f" mod {e.modulus}"
        if e.seed is not None:
            out += f" seed 0x{e.seed:x}"
        return out + (f" offset {e.offset}" if e.offset else "")
    if isinstance(e, Selector):
        return " ".join(e.words)
    if isinstance(e, Binop):
        return f"{expr(e.left)} {e.op} {_operand(e.right, expr_type(e.left, family))}"
    if isinstance(e, Concat):
        return " . ".join(expr(p) for p in e.parts)
    if isinstance(e, MapLookup):
        return map_lookup(e, (ANY,))
    return value(e)


def _operand(v: Any, dtype: str) -> str:
    if isinstance(v, Flags):
        return "(" + "|".join(v.names) + ")"
    if isinstance(v, (Payload, Meta, Ct, Fib, Numgen, Hash, Selector, Binop, Concat)):
        return expr(v)
    return value(v, dtype)


def _nat_target(n: Nat, family: str) -> str:
    port = "" if n.port is None else map_lookup(n.port, ("inet_service",)) if isinstance(
        n.port, MapLookup) else value(n.port, "inet_service")
    if isinstance(n.addr, MapLookup):
        fam = n.family or ("ip" if family == "ip" else "ip6" if family == "ip6" else None)
        addr_type = "ipv6_addr" if fam == "ip6" else "ipv4_addr"
        data = _map_data(n.addr)
        return map_lookup(n.addr, (addr_type, "inet_service") if data else (addr_type,)) + (
            f":{port}" if port else "")
    addr = "" if n.addr is None else value(n.addr)
    if port:
        if ":" in addr and not isinstance(n.addr, Range):
            addr = f"[{addr}]"
        return f"{addr}:{port}"
    return addr


def _map_data(m: MapLookup) -> bool:
    """Whether a nat map gives address . port pairs (kube-proxy's `dnat ip addr . port to numgen …`)."""
    return isinstance(m.map, AnonSet) and any(isinstance(e.data, tuple) for e in m.map.elements)


def item(i: Any, family: str = "ip", *, verbatim: bool = False) -> str:
    """One item as nft text. `verbatim`: an Unknown from JSON is shown as its JSON (for evidence) instead of
    refusing (for save)."""
    if isinstance(i, Match):
        return _match(i, family)
    if isinstance(i, VerdictMap):
        keys = key_types(i.key, family)
        target = value(i.map) if isinstance(i.map, SetRef) else anon_set(i.map, keys, ("verdict",))
        return f"{expr(i.key)} vmap {target}"
    if isinstance(i, Verdict):
        return value(i)
    if isinstance(i, Reject):
        if i.kind is None:
            return "reject"
        if i.kind == "tcp reset":
            return "reject with tcp reset"
        return f"reject with {i.kind} {i.code}" if i.code is not None else f"reject with {i.kind}"
    if isinstance(i, Nat):
        out = i.kind
        if i.family is not None:
            out += f" {i.family}"
        if isinstance(i.addr, MapLookup) and _map_data(i.addr):
            out += " addr . port"
        target = _nat_target(i, family)
        if target:
            out += f" to {target}"
        if i.flags:
            out += " " + ",".join(i.flags)
        return out
    if isinstance(i, Mangle):
        dtype = expr_type(i.key, family)
        v = i.value
        if isinstance(v, MapLookup):
            return f"{expr(i.key)} set {map_lookup(v, (dtype,))}"
        return f"{expr(i.key)} set {_operand(v, dtype) if not isinstance(v, Binop) else expr(v, family)}"
    if isinstance(i, SetUpdate):
        timeout = f" timeout {format_duration(i.timeout_ms)}" if i.timeout_ms is not None else ""
        return f"{i.op} @{name(i.set)} {{ {expr(i.key)}{timeout} }}"
    if isinstance(i, Counter):
        if i.name is not None:
            return f"counter name {quote(i.name)}"
        return "counter" if i.packets is None else f"counter packets {i.packets} bytes {i.bytes or 0}"
    if isinstance(i, Statement):
        return " ".join((i.keyword, *i.args))
    if isinstance(i, Xt):
        return f"xt {i.kind or 'match'} {quote(i.name)}"
    if isinstance(i, Unknown):
        if i.form != "nft" and not verbatim:
            raise UnwritableError(f"cannot write this expression of nft's JSON output as nft text: {i.text}")
        return i.text
    raise UnwritableError(f"cannot write {i!r} as nft text")


def _match(m: Match, family: str) -> str:
    left = m.left
    dtypes = key_types(left, family)
    if isinstance(left, Binop) and left.op == "&" and isinstance(left.right, Flags) and m.op == "==" \
            and is_bitmask(left.left, family):
        # (flags & mask) == value is listed `tcp flags syn / syn,ack`
        return f"{expr(left.left)} {value(m.right)} / {value(left.right)}"
    right = m.right
    if isinstance(right, AnonSet):
        rtext = anon_set(right, dtypes, None)
    elif isinstance(right, (SetRef, Flags)):
        rtext = value(right)
    else:
        rtext = values_of(right, dtypes)
    implicit = m.op == "in" or (m.op == "==" and not isinstance(left, Binop) and (
        not is_bitmask(left, family) or isinstance(right, (SetRef, AnonSet))))
    if implicit:
        return f"{expr(left)} {rtext}"
    return f"{expr(left)} {m.op} {rtext}"


def rule(r: Rule, family: str = "ip", *, verbatim: bool = False) -> str:
    text = " ".join(item(i, family, verbatim=verbatim) for i in r.items)
    if r.comment is not None:
        text += f" comment {quote(r.comment)}"
    return text


def priority(prio: int, family: str, hook: str) -> str:
    """A base chain priority as nft prints it (prio2str): the nearest allowed name within 10, else a number."""
    for label, base in priority_names(family):
        if priority_allowed(label, family, hook) and abs(prio - base) <= 10:
            offset = prio - base
            return label if offset == 0 else f"{label} {'+' if offset > 0 else '-'} {abs(offset)}"
    return str(prio)
