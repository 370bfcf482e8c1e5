"""`nft -j list ruleset` JSON → the same model as the text forms (lines are None, handles kept).

nft's JSON spells the kernel's bytecode: `"op": "in"` for an implicit bit test, marks as decimal numbers,
`reject` with its family default spelled out, timeouts in seconds, a rule's comment beside its `expr`. Each
is read into the text forms' normalised values. What iptrace does not know becomes `Unknown(form="json")`.
nftables 1.0.6 leaves some things out of its JSON (the `dynamic` set flag, a chain's device, a table's
comment; its table `flags` can be garbage): the model then says less, never something else.
"""

from __future__ import annotations

import json
import re
from typing import Any

from iptrace.errors import ParseError
from iptrace.nftables import render, values
from iptrace.nftables.build import ChainBuilder, Finisher, SetBuilder, TableBuilder, item_refs
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
    LoadWarning,
    Mangle,
    MapLookup,
    Match,
    Meta,
    NamedObject,
    Numgen,
    Payload,
    Prefix,
    Range,
    Reject,
    Rule,
    Ruleset,
    Selector,
    SetRef,
    SetUpdate,
    Unknown,
    Verdict,
    VerdictMap,
    Xt,
)
from iptrace.nftables.normalise import make_nat, make_statement, normalise_items
from iptrace.nftables.types import ANY, expr_type, is_bitmask, key_types
from iptrace.nftables.vocabulary import (
    CHAIN_TYPES,
    CHAIN_VERDICTS,
    CT,
    CT_DIRECTIONS,
    FIB_FLAGS,
    FIB_RESULTS,
    HOOKS,
    META,
    NUMGEN_MODES,
    PAYLOAD,
    POLICIES,
    REJECT_DEFAULT,
    REJECT_TYPES,
    VERDICT_WORDS,
)

_OBJECTS = ("counter", "quota", "limit", "secmark", "synproxy", "flowtable", "ct helper", "ct timeout",
            "ct expectation")
_BINOPS = ("&", "|", "^", "<<", ">>")
_MATCH_OPS = frozenset({"==", "!=", "<", ">", "<=", ">=", "in"})  # "in": a bit test, `ct state new`
_TABLE_FLAGS = frozenset({"dormant", "owner", "persist"})
_TYPE_RE = re.compile(r"[a-z][a-z0-9_]*")


class _Bad(Exception):
    pass


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)


def _target(body: Any) -> str:
    """A jump's or goto's chain: a name, as nft writes it (any other value is not a verdict nft lists)."""
    target = body["target"]
    if not isinstance(target, str) or not target:
        raise _Bad
    return target


def _integers(*found: Any) -> bool:
    return all(type(v) is int for v in found)


def _one(obj: Any) -> tuple[str, Any]:
    if not isinstance(obj, dict) or len(obj) != 1:
        raise _Bad
    return next(iter(obj.items()))


class JsonReader:
    def __init__(self, family: str) -> None:
        self.family = family

    # -- values ------------------------------------------------------------------------------------------
    def scalar(self, v: Any, dtype: str) -> Any:
        if isinstance(v, bool):
            return "exists" if v else "missing"
        if isinstance(v, int):
            return values.proto_name(v) if dtype == "inet_proto" else v
        if isinstance(v, str):
            return values.normaliser(dtype)(v)
        raise _Bad

    def value(self, v: Any, dtypes: tuple[str, ...], *, flags_ok: bool = False, collapse: bool = True) -> Any:
        dtype = dtypes[0] if dtypes else ANY
        if isinstance(v, list):
            if flags_ok:
                return Flags(tuple(self.scalar(x, dtype) for x in v))
            raise _Bad
        if not isinstance(v, dict):
            if isinstance(v, str) and v.startswith("@"):
                return SetRef(v[1:])
            return self.scalar(v, dtype)
        kind, body = _one(v)
        if kind == "prefix":
            addr = self.scalar(body["addr"], dtype)
            text = values.normaliser(dtype)(f"{addr}/{body['len']}")
            return text if isinstance(text, Prefix) else Prefix(str(addr), int(body["len"]))
        if kind == "range":
            return Range(self.scalar(body[0], dtype), self.scalar(body[1], dtype))
        if kind == "concat":
            return tuple(self.value(p, (dtypes[i] if i < len(dtypes) else ANY,)) for i, p in enumerate(body))
        if kind == "set":
            elements = tuple(self.element(e, dtypes, None) for e in (body if isinstance(body, list) else [body]))
            if collapse and len(elements) == 1 and elements[0] == Element(elements[0].key):
                return elements[0].key
            return AnonSet(elements)
        if kind == "map":
            return self.map_lookup(body, dtypes)
        return self.expr(v)

    def element(self, e: Any, keys: tuple[str, ...], data: tuple[str, ...] | None) -> Element:
        data_j = None
        if isinstance(e, list) and len(e) == 2 and data is not None:
            e, data_j = e
        timeout = expires = comment = counter = None
        if isinstance(e, dict) and "elem" in e:
            opts = e["elem"]
            e = opts["val"]
            comment = opts.get("comment")
            if not _integers(opts.get("timeout", 0), opts.get("expires", 0)) or not (
                    comment is None or isinstance(comment, str)):
                raise _Bad
            timeout = opts["timeout"] * 1000 if "timeout" in opts else None
            expires = opts["expires"] * 1000 if "expires" in opts else None
            c = opts.get("counter")
            if isinstance(c, dict):
                counter = (c.get("packets", 0), c.get("bytes", 0))
        key = self.value(e, keys)
        if data is not None and data_j is None:
            raise ValueError(f"map element {_compact(e)[:60]} has no value")
        value = None
        if data_j is not None:
            value = self.verdict(data_j) if data == ("verdict",) else self.value(data_j, data or (ANY,))
        for v, types in ((key, keys), (value, data)):
            if types is not None and types != ("verdict",) and ANY not in types \
                    and (len(v) if isinstance(v, tuple) else 1) != len(types):
                raise ValueError(f"element {_compact(e)[:60]} does not have the {len(types)} parts of its type")
        return Element(key, value, timeout, comment, expires, counter)

    def verdict(self, v: Any) -> Verdict:
        kind, body = _one(v)
        if kind in VERDICT_WORDS:
            return Verdict(kind)
        if kind in CHAIN_VERDICTS:
            return Verdict(kind, _target(body))
        raise _Bad

    def map_lookup(self, body: dict[str, Any], data: tuple[str, ...]) -> MapLookup:
        key = self.expr(body["key"])
        target = body["data"]
        if isinstance(target, str) and target.startswith("@"):
            return MapLookup(key, SetRef(target[1:]))
        _, elems = _one(target)
        return MapLookup(key, AnonSet(tuple(self.element(e, key_types(key, self.family), data) for e in elems)))

    # -- expressions -------------------------------------------------------------------------------------
    def expr(self, v: Any) -> Any:
        kind, body = _one(v)
        # Only what the text reader knows too (vocabulary.py), so that both forms read alike; the rest is
        # an Unknown of the rule.
        if kind == "payload" and body.get("field") in PAYLOAD.get(body.get("protocol"), ()):
            return Payload(body["protocol"], body["field"])
        if kind == "meta" and body.get("key") in META:
            return Meta(body["key"])
        if kind == "ct":
            key = body["key"]
            family = body.get("family")
            if " " in key:
                family, key = key.split(" ", 1)
            if key not in CT or family not in (None, "ip", "ip6") or body.get("dir") not in (None, *CT_DIRECTIONS):
                raise _Bad
            return Ct(key, body.get("dir"), family)
        if kind == "fib":
            flags = body.get("flags", [])
            flags = tuple([flags] if isinstance(flags, str) else flags)
            if body["result"] not in FIB_RESULTS or not flags or not all(f in FIB_FLAGS for f in flags):
                raise _Bad
            return Fib(flags, body["result"])
        if kind == "numgen":
            if body["mode"] not in NUMGEN_MODES or not _integers(body["mod"], body.get("offset", 0)):
                raise _Bad
            return Numgen(body["mode"], body["mod"], body.get("offset", 0))
        if kind in ("jhash", "symhash"):
            inner = self.expr(body["expr"]) if kind == "jhash" else None
            if not _integers(body["mod"], body.get("offset", 0), body.get("seed", 0)):
                raise _Bad
            return Hash(kind, inner, body["mod"], body.get("seed"), body.get("offset", 0))
        if kind in ("rt", "socket", "osf"):
            words = [kind, *([body["family"]] if "family" in body else []), body["key"]]
            return Selector(tuple(words))
        if kind in _BINOPS:
            left = self.expr(body[0])
            return Binop(kind, left, self.operand(body[1], expr_type(left, self.family)))
        if kind == "concat":
            return Concat(tuple(self.expr(p) for p in body))
        if kind == "map":
            return self.map_lookup(body, (ANY,))
        raise _Bad

    def operand(self, v: Any, dtype: str) -> Any:
        if isinstance(v, list):
            return Flags(tuple(str(x) for x in v))
        if isinstance(v, dict):
            try:
                return self.expr(v)
            except (_Bad, KeyError, TypeError):
                return self.value(v, (dtype,))
        return self.scalar(v, dtype)

    # -- statements --------------------------------------------------------------------------------------
    def item(self, stmt: Any) -> Any:
        try:
            return self._item(stmt)
        except (_Bad, KeyError, TypeError, ValueError, IndexError, AttributeError):
            return Unknown(_compact(stmt), "json")

    def _item(self, stmt: Any) -> Any:
        kind, body = _one(stmt)
        if kind == "match":
            left = self.expr(body["left"])
            dtypes = key_types(left, self.family)
            right = self.value(body["right"], dtypes, flags_ok=is_bitmask(left, self.family) or isinstance(
                left, Binop))
            if body["op"] not in _MATCH_OPS:
                raise _Bad
            return Match(left, body["op"], right)
        if kind in VERDICT_WORDS:
            return Verdict(kind)
        if kind in CHAIN_VERDICTS:
            return Verdict(kind, _target(body))
        if kind == "vmap":
            key = self.expr(body["key"])
            data = body["data"]
            if isinstance(data, str) and data.startswith("@"):
                return VerdictMap(key, SetRef(data[1:]))
            _, elems = _one(data)
            return VerdictMap(key, AnonSet(tuple(self.element(e, key_types(key, self.family), ("verdict",))
                                                 for e in elems)))
        if kind == "reject":
            body = body or {}
            rtype, code = body.get("type"), body.get("expr")
            if rtype is None or (rtype, code) == REJECT_DEFAULT.get(self.family):
                return Reject()
            if rtype == "tcp reset":
                return Reject(rtype)
            if rtype not in REJECT_TYPES or not isinstance(code, str):
                raise _Bad
            return Reject(rtype, code)
        if kind == "counter":
            if isinstance(body, str):
                return Counter(body)
            body = body or {}
            return Counter(None, body.get("packets"), body.get("bytes"))
        if kind == "mangle" and "tcp option" in body["key"]:  # (MSS clamping, as the text listing reads it)
            option, value = body["key"]["tcp option"], body["value"]
            setting = ["rt", "mtu"] if value == {"rt": {"key": "mtu"}} else [str(value)] if type(value) is int else []
            if not setting or "field" not in option:
                raise _Bad
            return make_statement("tcp", ("option", option["name"], option["field"], "set", *setting))
        if kind == "mangle":
            key = self.expr(body["key"])
            return Mangle(key, self.operand(body["value"], expr_type(key, self.family)))
        if kind in ("dnat", "snat", "masquerade", "redirect"):
            return self.nat(kind, body or {})
        if kind == "set":
            elem = body["elem"]
            timeout = None
            if isinstance(elem, dict) and "elem" in elem:
                timeout = elem["elem"].get("timeout")
                elem = elem["elem"]["val"]
            return SetUpdate(body["op"], body["set"].lstrip("@"), self.expr(elem),
                             timeout * 1000 if timeout is not None else None)
        if kind == "xt":
            return Xt(body["type"], body["name"])
        if kind in ("limit", "quota") and isinstance(body, str):  # a named object: `limit name "x"`
            return make_statement(kind, ("name", values.quote(body)))
        if kind in ("log", "limit", "notrack", "quota", "queue"):
            return make_statement(kind, tuple(self.statement_args(kind, body or {})))
        raise _Bad

    def nat(self, kind: str, body: dict[str, Any]) -> Any:
        family = body.get("family")
        addr_type = {"ip": "ipv4_addr", "ip6": "ipv6_addr"}.get(family or self.family, "ct_addr")
        addr = body.get("addr")
        if isinstance(addr, bool) or isinstance(body.get("port"), bool):
            raise _Bad  # (JSON's true/false are `exists`/`missing`: no address or port)
        if isinstance(addr, dict) and "map" in addr:
            elems = addr["map"]["data"]
            pairs = isinstance(elems, dict) and any(
                isinstance(e, list) and isinstance(e[1], dict) and "concat" in e[1] for e in elems.get("set", []))
            addr_value: Any = self.map_lookup(addr["map"], (addr_type, "inet_service") if pairs else (addr_type,))
        elif addr is None:
            addr_value = None
        else:
            addr_value = self.value(addr, (addr_type,))
        port = body.get("port")
        port_value = None if port is None else self.value(port, ("inet_service",))
        flags = body.get("flags", [])
        flags = [flags] if isinstance(flags, str) else list(flags)
        if family == self.family:
            family = None
        return make_nat(kind, family, (addr_value, port_value), tuple(flags))

    def statement_args(self, kind: str, body: dict[str, Any]) -> list[str]:
        args: list[str] = []
        if kind == "log":
            for key in ("prefix", "level", "group", "snaplen", "queue-threshold", "flags"):
                if key in body:
                    v = body[key]
                    args += [key, values.quote(v) if key == "prefix" else
                             ",".join(v) if isinstance(v, list) else str(v)]
        elif kind == "limit":
            unit = body.get("rate_unit", "packets")
            rate = f"{body['rate']}/{body.get('per', 'second')}" if unit == "packets" else \
                f"{body['rate']} {unit}/{body.get('per', 'second')}"
            args += ["rate", *(["over"] if body.get("inv") else []), rate]
            if "burst" in body:
                args += ["burst", str(body["burst"]), body.get("burst_unit", "packets")]
        elif kind == "quota":
            args += [*(["over"] if body.get("inv") else []), str(body["val"]), body.get("val_unit", "bytes")]
        elif kind == "queue":
            if "flags" in body:
                flags = body["flags"]
                args += ["flags", ",".join(flags) if isinstance(flags, list) else flags]
            if "num" in body:
                args += ["num", str(body["num"])]
        return args


def load_json(text: str, *, source: str = "<ruleset>", lenient: bool = False) -> Ruleset:
    skipped: list[LoadWarning] = []
    try:
        doc = json.loads(text)
        if isinstance(doc, list):  # the document's list alone (`nft -j list ruleset | jq .nftables`)
            doc = {"nftables": doc}
    except json.JSONDecodeError as exc:
        line_text = text.split("\n")[exc.lineno - 1] if exc.lineno >= 1 else ""
        unterminated = exc.msg.startswith("Unterminated string")  # (json names where the string starts)
        why = "a string starts here and never ends" if unterminated else exc.msg
        cut = (" (the file ends in the middle of the document: it looks truncated)"
               if unterminated or not text[exc.pos:].strip() else "")
        error = ParseError(f"not valid JSON: {why}; expected the output of `nft -j list ruleset`{cut}",
                           source=source, line=exc.lineno, column=exc.colno, text=line_text)
        read = _whole_objects(text) if lenient else None
        if read is None:
            raise error from None
        doc = {"nftables": read}
        skipped.append(LoadWarning(exc.lineno, f"column {exc.colno}: {error.reason}; read up to the last whole "
                                               "object before it"))
    if not isinstance(doc, dict):  # (a lone value: `null` is what `jq .x` prints of a document without `x`)
        raise ParseError(f"the JSON value {json.dumps(doc)[:40]}, not a ruleset; expected the output of "
                         "`nft -j list ruleset`", source=source, line=1, column=1)
    if not isinstance(doc.get("nftables"), list):
        raise ParseError('JSON without an "nftables" list; expected the output of `nft -j list ruleset`',
                         source=source, line=1, column=1)
    if not skipped and not any(isinstance(o, dict) and o for o in doc["nftables"]):
        # (nft always lists its metainfo: `[]` is some other tool's empty answer, not an empty ruleset)
        raise ParseError('JSON with no nftables objects (no "metainfo", no table); expected the output of '
                         '`nft -j list ruleset`', source=source, line=1, column=1)
    warnings: list[LoadWarning] = []

    def fail(exc: ParseError) -> None:
        if not lenient:
            exc.skippable = True
            raise exc
        skipped.append(LoadWarning(None, exc.reason))

    tables: dict[tuple[str, str], TableBuilder] = {}
    for index, obj in enumerate(doc["nftables"]):
        where = f"nftables[{index}]"
        try:
            _read_object(obj, tables, warnings)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, _Bad) as exc:
            detail = f"missing {exc}" if isinstance(exc, KeyError) else str(exc) or type(exc).__name__
            fail(ParseError(f"{where}: cannot read {_compact(obj)[:120]} ({detail}); expected an object of "
                            "`nft -j list ruleset`", source=source))
    finisher = Finisher(source, fail, warnings)
    out = [finisher.table(t, lambda line: "") for t in tables.values()]
    return Ruleset(tuple(t for t in out if t is not None), source, "nft-json", tuple(warnings), tuple(skipped))


_LIST_START = re.compile(r'(?:\{\s*"nftables"\s*:\s*)?\[')


def _whole_objects(text: str) -> list[Any] | None:
    """--lenient: the objects of a JSON document's "nftables" list that are whole before where it cannot be read
    (a listing cut short), None when it has none."""
    start = _LIST_START.match(text.lstrip())
    if start is None:
        return None
    decoder = json.JSONDecoder()
    at = len(text) - len(text.lstrip()) + start.end()
    found: list[Any] = []
    while True:
        while at < len(text) and text[at] in " \t\r\n,":
            at += 1
        try:
            obj, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            return found or None
        found.append(obj)


def _name(body: dict[str, Any], key: str) -> str:
    """An object's family, table, chain or name: a word (what nft lists; anything else names nothing)."""
    found = body[key]
    if not isinstance(found, str) or not found:
        raise ValueError(f"its {key} {_compact(found)[:40]} is not a name")
    return found


def _table(tables: dict[tuple[str, str], TableBuilder], body: dict[str, Any]) -> TableBuilder:
    key = (_name(body, "family"), _name(body, "table"))
    t = tables.get(key)
    if t is None:
        raise ValueError(f"table {key[0]} {key[1]} is not listed before its objects")
    return t


def _read_object(obj: Any, tables: dict[tuple[str, str], TableBuilder], warnings: list[LoadWarning]) -> None:
    kind, body = _one(obj)
    if kind == "metainfo":
        return
    if kind == "table":
        t = TableBuilder(_name(body, "family"), _name(body, "name"), None, True, body.get("handle"))
        flags = body.get("flags", [])
        flags = [flags] if isinstance(flags, str) else flags
        t.flags = tuple(sorted(f for f in flags if f in _TABLE_FLAGS))
        t.comment = body.get("comment")
        tables[(t.family, t.name)] = t
    elif kind == "chain":
        t = _table(tables, body)
        c = ChainBuilder(_name(body, "name"), None, True, body.get("handle"))
        c.type, c.hook, c.priority, c.policy = body.get("type"), body.get("hook"), body.get("prio"), body.get(
            "policy")
        _check_base_chain(c, t.family)
        dev = body.get("dev", body.get("devices"))
        c.devices = tuple([dev] if isinstance(dev, str) else dev or ())
        c.comment = body.get("comment")
        t.chains[c.name] = c
    elif kind in ("set", "map"):
        t = _table(tables, body)
        s = SetBuilder(_name(body, "name"), kind, None, True, body.get("handle"))
        s.key_type = _types(body["type"])
        if kind == "map":
            s.data_type = _types(body["map"])
        flags = body.get("flags", [])
        s.flags = tuple(sorted([flags] if isinstance(flags, str) else flags))
        s.timeout_ms = body["timeout"] * 1000 if "timeout" in body else None
        s.gc_interval_ms = body["gc-interval"] * 1000 if "gc-interval" in body else None
        s.size, s.policy, s.comment = body.get("size"), body.get("policy"), body.get("comment")
        s.counter = any("counter" in st for st in body.get("stmt", []) if isinstance(st, dict))
        reader = JsonReader(t.family)
        for e in body.get("elem", []):
            element = reader.element(e, s.key_type, s.data_type)
            known = s.elements.setdefault(element.key, element)
            if known is not element and known.data != element.data:
                raise ValueError(f"{kind} {s.name!r} lists the key {_compact(e)[:60]} twice with different values; "
                                 "the kernel never holds both (nft refuses the second: \"File exists\")")
            if isinstance(element.data, Verdict) and element.data.target is not None:
                t.refs.add(element.data.target)
        t.sets[s.name] = s
    elif kind == "rule":
        t = _table(tables, body)
        c = t.chains.get(_name(body, "chain"))
        if c is None:
            raise ValueError(f"chain {body['chain']!r} is not listed before its rules")
        reader = JsonReader(t.family)
        items = normalise_items(tuple(reader.item(e) for e in body["expr"]))
        rule = Rule(items, body.get("comment"), "", None, body.get("handle"))
        text = render.rule(rule, t.family, verbatim=True)
        c.rules.append(Rule(items, rule.comment, text, None, rule.handle))
        t.refs.update(item_refs(items))
    elif kind in _OBJECTS:
        t = _table(tables, body)
        t.objects.append(NamedObject(kind, _name(body, "name"), _object_body(kind, body)))
    else:
        warnings.append(LoadWarning(None, f"JSON object {kind!r} not read (iptrace does not know it)"))


def _check_base_chain(c: ChainBuilder, family: str) -> None:
    """What the text grammar and commands.py check of a base chain, for the JSON's free-form strings."""
    if c.type is not None and c.type not in CHAIN_TYPES:
        raise ValueError(f"chain type {c.type!r}; expected {', '.join(CHAIN_TYPES)}")
    if c.hook is not None and c.hook not in HOOKS.get(family, ()):
        raise ValueError(f"hook {c.hook!r} does not exist in family {family}; expected "
                         f"{', '.join(HOOKS.get(family, ()))}")
    if c.policy is not None and c.policy not in POLICIES:
        raise ValueError(f"policy {c.policy!r}; expected accept or drop")
    if c.priority is not None and not isinstance(c.priority, int):
        raise ValueError(f"priority {c.priority!r}; expected a number")


def _types(v: Any) -> tuple[str, ...]:
    parts = v if isinstance(v, list) else v.split(" . ") if isinstance(v, str) else None
    if not parts or not all(isinstance(p, str) and _TYPE_RE.fullmatch(p) for p in parts):
        raise ValueError(f"set type {v!r}")
    return tuple(parts)


def _object_body(kind: str, body: dict[str, Any]) -> tuple[str, ...]:
    if kind == "counter":
        return (f"packets {body.get('packets', 0)} bytes {body.get('bytes', 0)}",)
    if kind == "quota":
        return (f"{'over ' if body.get('inv') else ''}{body.get('bytes', 0)} bytes",)
    if kind == "ct helper":
        return (f"type {values.quote(body.get('type', ''))} protocol {body.get('protocol', 'tcp')}",)
    if kind == "limit":  # (as the text listing writes it: `limit name "x"` reads whether it is `over`)
        unit = "" if body.get("unit", "packets") == "packets" else f" {body.get('rate_unit', 'bytes')}"
        return (f"rate {'over ' if body.get('inv') else ''}{body.get('rate', 0)}{unit}/{body.get('per', 'second')}",)
    return ()
