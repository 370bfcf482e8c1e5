"""Sharing the walk after NAT between branches the rules there cannot tell apart.

Once a packet is DNATed, what is left (forward and postrouting, or input, or postrouting after output) is the
same few chains for every branch of every trace: a numgen split sends ten branches through them, which differ
only by their endpoint address. A `Plan` lists every test and look-up those chains can make (the closure of the
hooks' base chains: jumps, gotos and verdict-map targets). The key of a branch is what each of them answers for
it, plus the fields the chains may read raw (marks, conntrack status, interfaces): two branches with the same key
take the same path through those chains, so the second replays the first's recorded walk (path, chains,
assumptions and the fields it wrote) instead of walking again. A rule that reads only fields the key holds is
not asked (its answers follow from them), and the answers of the rules that read the destination are kept by
the values they read (_key_function).

A closure that rewrites addresses or ports (DNAT), draws numbers (numgen), or writes packet-dependent values into
sets has no plan: it is walked every time. The replay must give what the walk gives — tests/test_nft_properties
checks it against the tracer with sharing off.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from operator import attrgetter
from typing import Any

from iptrace.nftables.reads import reads
from iptrace.nftables.rules import FORK, MANGLE, NAT, TEST, UPDATE, VMAP, CompiledRule
from iptrace.nftables.state import Segment, State, cons_list

MAX_CLOSURE_RULES = 400
_EVERYTHING = {"src", "dst", "sport", "dport", "proto", "orig_dst", "orig_dport", "mark", "ct_mark", "notrack",
               "dnat_by", "snat", "in_iface", "out_iface", "updates", "local_origin"}
MEMO_SIZE = 8192
_UNCHANGED = object()


class Plan:
    __slots__ = ("by_value", "key", "memo", "raw", "redirects")

    def __init__(self, direct: Asked, address: Asked, address_fields: set[str], fields: set[str],
                 redirects: bool, caches: dict[Any, Any] | None = None) -> None:
        self.redirects = redirects  # a `redirect` goes to loopback for the node's own packets
        self.memo: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}
        # The same branch seen again (another client of the same endpoint): found by the fields the closure reads
        # (and those the replay restores) before the answer of every test is computed.
        self.by_value: dict[Any, list[tuple[Any, ...]]] = {}
        # (`updates` is never read: a closure that looks into a set the packet path fills has no plan.)
        # (and the IP version, which `reads` leaves out: a chain of an inet table meets both)
        names = sorted((fields | {"mark", "ct_mark", "notrack", "snat", "masq", "in_iface", "out_iface", "proto",
                                  "version"}
                        | ({"local_origin"} if redirects else set())) - {"dnat_by", "updates"})
        getter = attrgetter(*names)
        if "dnat_by" in fields:
            self.raw: Callable[[State], Any] = lambda s: (getter(s), s.dnat_by is None)
        else:
            self.raw = getter
        # key(s): what each test and look-up answers for branch `s`, plus the fields the chains read raw.
        self.key: Callable[[State], tuple[Any, ...]] = _key_function(direct, address, address_fields, redirects,
                                                                      caches)


# A closure's tests, look-ups and values: (definite tests, tests that may assume, (getter, index) look-ups, values).
Asked = tuple[list[Callable[[State], Any]], list[Callable[[State], Any]], list[tuple[Callable[[State], Any], Any]],
              list[Callable[[State], Any]]]
# The fields a Plan's key holds as they are (see _key_function): a rule that reads no other asks nothing more.
_KEYED = frozenset({"proto", "mark", "ct_mark", "notrack", "snat", "masq", "dnat_by", "in_iface", "out_iface"})


def _key_function(direct: Asked, address: Asked, address_fields: set[str], redirects: bool,
                  caches: dict[Any, Any] | None = None) -> Callable[[State], tuple[Any, ...]]:
    """A Plan's key function written out as one tuple expression (generated code, as iptables/memo.py's: this
    runs for most branches of every trace after its DNAT). It holds the IP version (which `reads` leaves out:
    every ip/ip6 expression, `meta nfproto`, reads it) and the fields in _KEYED (`dnat_by` only as whether the
    branch is DNATed: all a rule reads of it is `ct status dnat`), so the rules that read nothing else are not
    asked. The rules that read other fields too (the destination: kube-proxy's no-endpoint map,
    ClusterIP set and service CIDR in the hooks after DNAT) answer by those fields' values, kept: a Service's
    branches differ by their endpoint, met again by every way in and kind of client. A test met more than once
    in the closure (rules compiled alike share their code: `ct state new`, `meta l4proto tcp`) is asked once:
    the same function answers the same. A look-up answers which element it finds (or the kind of value it found
    none for). Rules whose reads are not known are asked every time. `caches`: the walker's answers by value,
    shared by its plans that ask the same (the hooks after routing and output's filter chains after its NAT
    both look an endpoint up in kube-proxy's no-endpoint map, ClusterIP set and service CIDR)."""
    namespace: dict[str, Any] = {"_find": _find, "_size": MEMO_SIZE}
    parts = ["s.version", "s.proto", "s.mark", "s.ct_mark", "s.notrack", "s.snat", "s.masq", "s.dnat_by is None",
             "s.local_origin" if redirects else "None", "s.in_iface", "s.out_iface"]

    def bind(f: Any) -> str:
        name = f"f{len(namespace)}"
        namespace[name] = f
        return name

    def asked(group: Asked) -> list[str]:
        out = []
        seen: set[int] = set()
        definite, assumed, lookups, values = group
        for f in (*definite, *assumed, *values):
            if id(f) not in seen:
                seen.add(id(f))
                out.append(f"{bind(f)}(s)")
        for get, index in lookups:
            out.append(f"_find({bind(index)}, {bind(get)}(s))")
        return out

    parts.extend(asked(direct))
    # (in one order whatever the closure's: plans that ask the same share their answers)
    definite, assumed, lookups, values = address
    ordered = sorted({id(f): f for f in (*definite, *assumed, *values)}.items())
    ordered_lookups = sorted({(id(index), id(get)): (get, index) for get, index in lookups}.items())
    by_address = asked(([f for _, f in ordered], [], [pair for _, pair in ordered_lookups], []))
    fields = tuple(sorted(address_fields | {"version"}))
    identity = (fields, tuple(k for k, _ in ordered), tuple(k for k, _ in ordered_lookups))
    if caches is None:
        caches = {}
    # (the functions kept with their answers: their ids are not reused while the walker holds the cache)
    found = caches.get(identity)
    if found is None:
        found = caches[identity] = (ordered, ordered_lookups, {})
    namespace["_cache"] = found[2]
    if not by_address:
        exec(f"def key(s):\n    return ({', '.join(parts)},)\n", namespace)
        return namespace["key"]  # type: ignore[no-any-return]
    namespace["_fields"] = attrgetter(*fields)
    exec("def key(s):\n"
         "    v = _fields(s)\n"
         "    a = _cache.get(v)\n"
         "    if a is None:\n"
         "        if len(_cache) >= _size:\n"
         "            _cache.clear()\n"
         f"        a = _cache[v] = ({', '.join(by_address)},)\n"
         f"    return ({', '.join(parts)}, a)\n", namespace)
    return namespace["key"]  # type: ignore[no-any-return]


def _find(index: Any, v: Any) -> Any:
    """What a look-up answers in a key: the element found (by identity), or the kind of value found nothing."""
    try:
        found = index.find(v)
    except TypeError:
        found = None
    return id(found) if found is not None else v.__class__


def make_plan(codes: Iterable[Any], compiled: Callable[[Any, int], CompiledRule],
              targets: Callable[[Any, CompiledRule], list[Any]], *, chains: bool = False,
              min_rules: int = 0, caches: dict[Any, Any] | None = None) -> Plan | None:
    """The plan of the closure of `codes` (chain codes), or None when it cannot be shared. `chains`: a closure
    entered by a jump (a Service port's chains) may also draw numbers and DNAT to addresses the packet does not
    choose (constants, or a numgen map): its replay restores each branch's share and destination. A closure of
    fewer than `min_rules` rules without a draw walks faster than its key is computed."""
    direct: Asked = ([], [], [], [])
    address: Asked = ([], [], [], [])
    address_fields: set[str] = set()
    fields: set[str] = set()
    seen: set[Any] = set()
    todo = list(codes)
    count = 0
    draws = redirects = dynamic = False
    while todo:
        code = todo.pop()
        if code.key in seen:
            continue
        seen.add(code.key)
        count += len(code.compiled)
        if count > MAX_CLOSURE_RULES:
            return None
        for i in range(len(code.compiled)):
            c = code.compiled[i] or compiled(code, i)
            read: set[str] | None = set()
            for item in c.rule.items:
                found = reads(item)
                fields |= found if found is not None else _EVERYTHING
                read = None if found is None or read is None else read | found
            # (`updates`: only a set the packet path fills is read through it, and such a closure has no plan)
            read = None if read is None else read - {"updates"}
            group = direct if read is None else address
            if read is not None and read <= _KEYED:
                group = ([], [], [], [])  # (asked for nothing: the key's own fields tell its answers)
            elif read is not None:
                address_fields |= read
            definite, assumed, lookups, values = group
            definite.extend(c.tests)
            assumed.extend(c.assumed)
            dynamic = dynamic or any(getattr(t, "dynamic", False) for t in c.assumed)
            for op in c.ops:
                kind = op[0]
                if kind == FORK:
                    # A draw replays with its share; what the packet could change in it must not (a hash of its
                    # fields, a map keyed by its address and the draw).
                    if not chains or not op[3]:
                        return None
                    draws = True
                    continue
                if kind == UPDATE:
                    return None
                if kind == NAT and op[1] not in ("snat", "masquerade") and (not chains or op[6]):
                    return None
                redirects = redirects or (kind == NAT and op[1] == "redirect")
                if kind == TEST:
                    if op[1] is not None:
                        definite.append(op[1])
                    else:
                        assumed.append(op[2])
                        dynamic = dynamic or getattr(op[2], "dynamic", False)
                elif kind == VMAP:
                    lookups.append((op[1], op[2]))
                elif kind == MANGLE:
                    values.append(op[2])
            todo.extend(targets(code, c))
    if dynamic:
        return None
    if count < min_rules and not draws:
        return None
    return Plan(direct, address, address_fields, fields, redirects, caches)


def record(results: list[tuple[State, Any]], before: tuple[Any, Any]) -> list[tuple[Any, ...]]:
    """What each branch of a walk added: the walk started with path, chains, assumptions and share emptied,
    `before` = its (accept, dnat_by) then (the start state itself may be one of the branches by now)."""
    accepted, nat_before = before
    out = []
    for s, term in results:
        path = cons_list(s.path)
        chains = cons_list(s.chains)
        # Pushed onto a branch's cons lists as one cell each (state.cons_list unfolds them when a path is read).
        path_cell = Segment(path) if len(path) > 1 else (path[0] if path else None)
        chain_cell = Segment(chains) if len(chains) > 1 else (chains[0] if chains else None)
        accept = s.accept if s.accept is not accepted else _UNCHANGED
        nat = (s.dst, s.dport, s.dnat_by) if s.dnat_by is not nat_before else _UNCHANGED
        out.append((term, path_cell, chain_cell, s.assumptions, s.mark, s.ct_mark, s.notrack, s.snat, s.masq,
                    accept, s.hook, s.in_iface, s.out_iface, s.num, s.den, nat))
    return out


def replay(recorded: list[tuple[Any, ...]], s: State) -> list[tuple[State, Any]]:
    if len(recorded) == 1:  # (the commonest case: the hooks after DNAT do not split; `s` itself)
        return [replay_one(recorded[0], s)]
    last = len(recorded) - 1
    return [replay_one(walk, s if i == last else s.copy()) for i, walk in enumerate(recorded)]


def replay_one(recorded: tuple[Any, ...], s: State) -> tuple[State, Any]:
    """One recorded branch on `s` itself (spelled out: it runs for every branch of every trace)."""
    (term, path, chains, notes, s.mark, s.ct_mark, s.notrack, s.snat, s.masq, accept, s.hook, s.in_iface,
     s.out_iface, num, den, nat) = recorded
    if path is not None:
        s.path = (path, s.path)
    if chains is not None:
        s.chains = (chains, s.chains)
    for note in notes:
        s.assume(note)
    if accept is not _UNCHANGED:
        s.accept = accept
    if num != 1 or den != 1:
        s.num *= num
        s.den *= den
    if nat is not _UNCHANGED:
        s.dst, s.dport, s.dnat_by = nat
    return s, term
