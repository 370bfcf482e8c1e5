"""The match modules: one function each turns a rule's options into tests on a branch `State` (the model they
implement is documented in matchers.py). `MATCHERS` maps a module name to its function; a new module is one
function and one row there."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from fractions import Fraction

from iptrace.dataplane import IN_HOW, OUT_HOW, protocol_number
from iptrace.errors import TraceError
from iptrace.iptables.matchers import (
    MatchPlan,
    Opt,
    Test,
    address_test,
    mark_value,
    unmodeled,
)
from iptrace.iptables.state import Context, State, parse_net
from iptrace.routes import routed_note

_PORT_PROTOCOLS = frozenset({6, 17, 132, 136, 33})
_MODULE_PROTOCOL = {"tcp": 6, "udp": 17, "sctp": 132, "udplite": 136, "dccp": 33, "icmp": 1, "icmp6": 58,
                    "icmpv6": 58, "ipv6-icmp": 58}
# The TCP options a Linux SYN carries: MSS, window scale, SACK permitted, timestamps.
_SYN_TCP_OPTIONS = frozenset({2, 3, 4, 8})
_TCP_FLAGS = {"FIN": 0x01, "SYN": 0x02, "RST": 0x04, "PSH": 0x08, "ACK": 0x10, "URG": 0x20, "ECE": 0x40,
              "CWR": 0x80, "ALL": 0xFF, "NONE": 0}
_SYN = 0x02
_ICMP_TYPES = {"echo-request": 8, "echo-reply": 0, "destination-unreachable": 3, "time-exceeded": 11,
               "any": -1}
_ICMP6_TYPES = {"echo-request": 128, "echo-reply": 129, "destination-unreachable": 1, "packet-too-big": 2,
                "time-exceeded": 3, "neighbour-solicitation": 135, "neighbor-solicitation": 135,
                "neighbour-advertisement": 136, "neighbor-advertisement": 136, "any": -1}
_ASSUMED_TTL = 64
_ASSUMED_LENGTH = {4: 60, 6: 80}  # a TCP SYN with Linux's options


def _ports(text: str) -> list[tuple[int, int]]:
    """`80`, `80:90`, `:90`, `80:` and comma lists (multiport) → inclusive ranges."""
    out = []
    for part in text.split(","):
        lo, sep, hi = part.partition(":")
        try:
            low = int(lo) if lo else 0
            high = (int(hi) if hi else 65535) if sep else low
        except ValueError:
            raise TraceError(f"cannot read port {part!r}; expected a number or a range a:b") from None
        out.append((low, high))
    return out


def _port_test(ranges: list[tuple[int, int]], negated: bool, attr: str) -> Test:
    if len(ranges) == 1:
        lo, hi = ranges[0]
        if lo == hi:
            if attr == "dport":
                return (lambda s: s.dport != lo) if negated else (lambda s: s.dport == lo)
            return (lambda s: s.sport != lo) if negated else (lambda s: s.sport == lo)
    if attr == "dport":
        return lambda s: any(a <= s.dport <= b for a, b in ranges) != negated
    if attr == "sport":
        return lambda s: any(a <= s.sport <= b for a, b in ranges) != negated
    return lambda s: any(a <= s.sport <= b or a <= s.dport <= b for a, b in ranges) != negated


def _addr_test(values: str, negated: bool, attr: str, ctx: Context, plan: MatchPlan) -> None:
    test = address_test(values, negated, attr, ctx.version)
    if test is not None:
        plan.tests.append(test)
    elif not negated:
        plan.never = True


def _iface_matches(pattern: str, name: str) -> bool:
    return name.startswith(pattern[:-1]) if pattern.endswith("+") else name == pattern


def _require_protocol(module: str, plan: MatchPlan) -> None:
    number = _MODULE_PROTOCOL.get(module)
    if number is not None:
        plan.tests.append(lambda s: s.proto == number)


def match_basic(opts: Sequence[Opt], ctx: Context, plan: MatchPlan, where: str) -> None:
    """-s -d -p -i -o -f, each with `!`."""
    for opt in opts:
        name, neg = opt.name, opt.negated
        if name in ("-s", "-d"):
            _addr_test(opt.value, neg, "src" if name == "-s" else "dst", ctx, plan)
        elif name == "-p":
            number = protocol_number(opt.value)
            if number is None:
                if neg:
                    plan.never = True
                continue
            plan.tests.append((lambda s, n=number: s.proto != n) if neg else (lambda s, n=number: s.proto == n))
        elif name in ("-i", "-o"):
            pattern = opt.value
            attr = "in_iface" if name == "-i" else "out_iface"
            text = (f"{where}: {'input' if name == '-i' else 'output'} interface unknown: assumed not "
                    f"{pattern} ({IN_HOW if name == '-i' else OUT_HOW})")

            def iface(s: State, attr: str = attr, pattern: str = pattern, neg: bool = neg,
                      text: str = text) -> tuple[bool, str | None]:
                current = getattr(s, attr)
                if current is None:
                    return neg, text
                return _iface_matches(pattern, current) != neg, None

            plan.assumed.append(_routed(pattern, neg, where) if name == "-o" and ctx.routes is not None else iface)
        elif name == "-f":
            # A first packet is never a non-first fragment.
            if not neg:
                plan.never = True


def _routed(pattern: str, neg: bool, where: str) -> Callable[[State], tuple[bool, str | None]]:
    """`-o` answered by the node's routes (the walk sets the output interface from them), and a note that says
    so; without a route for the destination, assumed not the interface, as without routes (the walk says the
    route is missing)."""
    unknown = f"{where}: output interface unknown (the node's routes have no route for the destination): " \
              f"assumed not {pattern}"
    notes: dict[str, str] = {}

    def iface(s: State) -> tuple[bool, str | None]:
        current = s.out_iface
        if current is None:
            return neg, unknown
        if current == "lo":  # (the node's own address: delivered locally, routes or not)
            return _iface_matches(pattern, current) != neg, None
        note = notes.get(current)
        if note is None:
            note = notes[current] = routed_note(where, current)
        return _iface_matches(pattern, current) != neg, note
    return iface


def match_ports(module: str) -> Callable[[Sequence[Opt], Context, MatchPlan, str], None]:
    def handler(opts: Sequence[Opt], ctx: Context, plan: MatchPlan, where: str) -> None:
        _require_protocol(module, plan)
        for opt in opts:
            name = opt.name
            if name in ("--dport", "--destination-port"):
                plan.tests.append(_port_test(_ports(opt.value), opt.negated, "dport"))
            elif name in ("--sport", "--source-port"):
                plan.tests.append(_port_test(_ports(opt.value), opt.negated, "sport"))
            elif name == "--syn":
                # The first packet of a TCP connection is a bare SYN.
                if opt.negated:
                    plan.never = True
            elif name == "--tcp-flags":
                mask = sum(_TCP_FLAGS.get(f, 0) for f in opt.values[0].split(","))
                comp = sum(_TCP_FLAGS.get(f, 0) for f in opt.values[1].split(",")) if len(opt.values) > 1 else 0
                if ((_SYN & mask) == comp) == opt.negated:
                    plan.never = True
            elif name == "--tcp-option":
                present = int(opt.value) in _SYN_TCP_OPTIONS
                text = f"{where}: the SYN is assumed to carry Linux's TCP options (MSS, wscale, SACK, timestamps)"
                result = present != opt.negated
                plan.assumed.append(lambda s, r=result, t=text: (r, t))
            else:
                unmodeled(f"{module} {name}", [], plan, where)
    return handler


def match_multiport(opts: Sequence[Opt], ctx: Context, plan: MatchPlan, where: str) -> None:
    plan.tests.append(lambda s: s.proto in _PORT_PROTOCOLS)
    for opt in opts:
        attr = {"--dports": "dport", "--destination-ports": "dport", "--sports": "sport",
                "--source-ports": "sport", "--ports": "either"}.get(opt.name)
        if attr is None:
            unmodeled(f"multiport {opt.name}", [], plan, where)
            continue
        plan.tests.append(_port_test(_ports(opt.value), opt.negated, attr))


def match_icmp(module: str) -> Callable[[Sequence[Opt], Context, MatchPlan, str], None]:
    types = _ICMP_TYPES if module == "icmp" else _ICMP6_TYPES
    echo = 8 if module == "icmp" else 128

    def handler(opts: Sequence[Opt], ctx: Context, plan: MatchPlan, where: str) -> None:
        _require_protocol(module, plan)
        for opt in opts:
            head = opt.value.split("/")[0]
            wanted = types.get(head, int(head) if head.isdigit() else -2)
            result = (wanted in (-1, echo)) != opt.negated
            text = f"{where}: an ICMP packet is assumed to be an echo request"
            plan.assumed.append(lambda s, r=result, t=text: (r, t))
    return handler


def match_nothing(opts: Sequence[Opt], ctx: Context, plan: MatchPlan, where: str) -> None:
    """comment, nfacct: always match."""


def _address_types(addr: int, ctx: Context) -> tuple[set[str], bool]:
    """The addrtype of an address, and whether that answer rests on unknown node addresses."""
    if ctx.is_loopback(addr) or addr in ctx.local_addresses:
        return {"LOCAL"}, False
    if ctx.version == 4:
        if addr >> 28 == 0xE:
            return {"MULTICAST"}, False
        if addr == 0xFFFFFFFF:
            return {"BROADCAST"}, False
        if addr == 0:
            return {"UNSPEC"}, False
    else:
        if addr >> 120 == 0xFF:
            return {"MULTICAST"}, False
        if addr == 0:
            return {"UNSPEC"}, False
    return {"UNICAST"}, not ctx.node_ips_known


_ROUTE_ONLY_TYPES = frozenset({"ANYCAST", "BLACKHOLE", "UNREACHABLE", "PROHIBIT", "THROW", "NAT", "XRESOLVE"})


def match_addrtype(opts: Sequence[Opt], ctx: Context, plan: MatchPlan, where: str) -> None:
    for opt in opts:
        if opt.name in ("--limit-iface-in", "--limit-iface-out"):
            text = f"{where}: addrtype {opt.name} assumed not to change the address type"
            plan.assumed.append(lambda s, t=text: (True, t))
            continue
        attr = "src" if opt.name == "--src-type" else "dst"
        wanted = frozenset(opt.value.upper().split(","))
        neg = opt.negated
        route_only = bool(wanted & _ROUTE_ONLY_TYPES)

        def addrtype(s: State, attr: str = attr, wanted: frozenset[str] = wanted, neg: bool = neg,
                     route_only: bool = route_only, opt_name: str = opt.name) -> tuple[bool, str | None]:
            types, unsure = _address_types(s.src if attr == "src" else s.dst, ctx)
            result = bool(types & wanted) != neg
            if unsure:
                return result, ("node addresses unknown: only loopback counts as --dst-type/--src-type LOCAL "
                                "(pass --node-ip)")
            if route_only:
                return result, f"{where}: {opt_name} {','.join(sorted(wanted))} needs the routing table: " \
                               "assumed a plain unicast route"
            return result, None

        plan.assumed.append(addrtype)


def match_conntrack(opts: Sequence[Opt], ctx: Context, plan: MatchPlan, where: str) -> None:
    """A packet without a connection (State.notrack None in raw, before conntrack: INVALID; True: UNTRACKED) is
    judged by its state alone: the match holds when it has a --ctstate and that holds (conntrack_mt returns
    before looking at the other criteria), so each other criterion then answers whether there is a --ctstate."""
    with_state = any(o.name in ("--ctstate", "--state") for o in opts)

    def other(test: Callable[[State], bool]) -> None:
        plan.tests.append(lambda s: test(s) if s.notrack is False else with_state)

    for opt in opts:
        name, neg = opt.name, opt.negated
        if name in ("--ctstate", "--state"):
            wanted = frozenset(opt.value.upper().split(","))
            new, dnat, snat, untracked, invalid = ("NEW" in wanted, "DNAT" in wanted, "SNAT" in wanted,
                                                   "UNTRACKED" in wanted, "INVALID" in wanted)

            def ctstate(s: State, new: bool = new, dnat: bool = dnat, snat: bool = snat,
                        untracked: bool = untracked, invalid: bool = invalid, neg: bool = neg) -> bool:
                if s.notrack is not False:
                    return (untracked if s.notrack else invalid) != neg
                return (new or (dnat and s.dnat) or (snat and s.snat)) != neg

            plan.tests.append(ctstate)
        elif name == "--ctproto":
            number = protocol_number(opt.value)
            other(lambda s, p=number, n=neg: (p is None or s.proto == p) != n)
        elif name in ("--ctorigsrc", "--ctorigdst", "--ctreplsrc", "--ctrepldst"):
            nets = [x for x in (parse_net(v, ctx.version) for v in opt.value.split(",")) if x is not None]
            getter: Callable[[State], int] = {
                "--ctorigsrc": lambda s: s.src, "--ctorigdst": lambda s: s.orig_dst,
                "--ctreplsrc": lambda s: s.dst, "--ctrepldst": lambda s: s.src}[name]
            other(lambda s, g=getter, ns=nets, n=neg: any(g(s) & m == x for x, m in ns) != n)
        elif name in ("--ctorigsrcport", "--ctorigdstport", "--ctreplsrcport", "--ctrepldstport"):
            ranges = _ports(opt.value)
            port: Callable[[State], int] = {
                "--ctorigsrcport": lambda s: s.sport, "--ctorigdstport": lambda s: s.orig_dport,
                "--ctreplsrcport": lambda s: s.dport, "--ctrepldstport": lambda s: s.sport}[name]
            other(lambda s, p=port, r=ranges, n=neg: any(a <= p(s) <= b for a, b in r) != n)
        elif name == "--ctstatus":
            # The match holds when the connection has one of the listed status bits (NONE names none). A first
            # packet has none of EXPECTED, SEEN_REPLY, ASSURED, CONFIRMED (confirmed after the last hook): only
            # the negated form holds, also `! --ctstatus NONE`, while `--ctstatus NONE` never does.
            other(lambda s, r=neg: r)
        elif name == "--ctdir":
            result = (opt.value.upper() == "ORIGINAL") != neg
            other(lambda s, r=result: r)
        else:
            text = f"{where}: conntrack {name} {opt.value} assumed to match a new connection"
            plan.assumed.append(lambda s, t=text: (True, t) if s.notrack is False else (with_state, None))


def match_mark(attr: str) -> Callable[[Sequence[Opt], Context, MatchPlan, str], None]:
    def handler(opts: Sequence[Opt], ctx: Context, plan: MatchPlan, where: str) -> None:
        for opt in opts:
            if opt.name != "--mark":
                unmodeled(f"mark {opt.name}", [], plan, where)
                continue
            value, mask = mark_value(opt.value)
            neg = opt.negated
            if attr == "mark":
                plan.tests.append(lambda s, v=value, m=mask, n=neg: (s.mark & m == v) != n)
            else:
                # (no connection, or an untracked packet: connmark_mt fails, negated or not)
                plan.tests.append(lambda s, v=value, m=mask, n=neg: s.notrack is False and (s.ctmark & m == v) != n)
    return handler


@functools.lru_cache(maxsize=4096)
def kernel_probability(text: str) -> Fraction:
    """xt_statistic's probability: iptables stores lround(p·2³¹); the kernel matches when 31 random bits are
    below it. So the exact probability is that integer over 2³¹ (0.5 stays 1/2)."""
    try:
        p = Fraction(text)
    except ValueError:
        raise TraceError(f"cannot read probability {text!r}") from None
    scaled = p * 0x80000000
    rounded = int(scaled + Fraction(1, 2)) if scaled >= 0 else -int(-scaled + Fraction(1, 2))
    return Fraction(min(max(rounded, 0), 0x80000000), 0x80000000)


def match_statistic(opts: Sequence[Opt], ctx: Context, plan: MatchPlan, where: str) -> None:
    by_name = {o.name: o for o in opts}
    mode = by_name.get("--mode")
    if mode is not None and mode.value == "nth":
        every = by_name.get("--every")
        n = int(every.value) if every is not None else 1
        p = Fraction(1, max(n, 1))
        if every is not None and every.negated:
            p = 1 - p
        text = (f"{where}: -m statistic --mode nth: the position of this connection in the rule's packet "
                f"counter is unknown; modeled as a branch with probability 1/{n}")
        plan.assumed.append(lambda s, t=text: (True, t))
    else:
        prob = by_name.get("--probability")
        p = kernel_probability(prob.value) if prob is not None else Fraction(1)
        if prob is not None and prob.negated:
            p = 1 - p
    plan.probability = p if plan.probability is None else plan.probability * p


def match_recent(opts: Sequence[Opt], ctx: Context, plan: MatchPlan, where: str) -> None:
    by_name = {o.name: o for o in opts}
    name = by_name["--name"].value if "--name" in by_name else "DEFAULT"
    rdest = "--rdest" in by_name
    mask_opt = by_name.get("--mask")
    bits = 32 if ctx.version == 4 else 128
    mask = parse_net(f"{mask_opt.value}", ctx.version) if mask_opt is not None else None
    addr_mask = mask[0] if mask is not None else (1 << bits) - 1
    hitcount = int(by_name["--hitcount"].value) if "--hitcount" in by_name else 1

    def key(s: State) -> tuple[str, int]:
        return name, (s.dst if rdest else s.src) & addr_mask

    for command in ("--set", "--rcheck", "--update", "--remove"):
        opt = by_name.get(command)
        if opt is None:
            continue
        neg = opt.negated
        if command == "--set":
            plan.effects.append(lambda s: setattr(s, "recent", s.recent | {key(s)}))
            if neg:
                plan.never = True
            break
        text = (f"{where}: no entry in recent list {name!r} yet (first connection from this client: "
                "e.g. session affinity not established)")

        def check(s: State, neg: bool = neg, text: str = text) -> tuple[bool, str | None]:
            if key(s) in s.recent and hitcount <= 1:
                return not neg, None
            return neg, text

        plan.assumed.append(check)
        if command == "--remove":
            plan.effects.append(lambda s: setattr(s, "recent", s.recent - {key(s)}))
        break


def match_set(opts: Sequence[Opt], ctx: Context, plan: MatchPlan, where: str) -> None:
    for opt in opts:
        if opt.name not in ("--match-set", "--set"):
            text = f"{where}: set {opt.name} counters assumed to match"
            plan.assumed.append(lambda s, t=text: (True, t))
            continue
        set_name = opt.values[0]
        flags = opt.values[1].split(",") if len(opt.values) > 1 else ["src"]
        neg = opt.negated
        members = ctx.ipsets.get(set_name)
        if members is not None and len(flags) == 1:
            src = flags[0] == "src"
            plan.tests.append(lambda s, ms=members, src=src, n=neg:
                              any(((s.src if src else s.dst) & m) == x for x, m in ms) != n)
            continue
        text = (f"{where}: ipset {set_name!r} membership unknown (iptables-save does not hold it; `ipset list "
                f"{set_name}` on the node does): assumed the packet's {','.join(flags)} is not in it")
        plan.assumed.append(lambda s, n=neg, t=text: (n, t))


def _assumed_true(what: str) -> Callable[[Sequence[Opt], Context, MatchPlan, str], None]:
    def handler(opts: Sequence[Opt], ctx: Context, plan: MatchPlan, where: str) -> None:
        text = f"{where}: {what}"
        result = not any(o.negated for o in opts)
        plan.assumed.append(lambda s: (result, text))
    return handler


def match_hashlimit(opts: Sequence[Opt], ctx: Context, plan: MatchPlan, where: str) -> None:
    above = any(o.name == "--hashlimit-above" for o in opts)
    text = f"{where}: hashlimit assumed under its rate limit"
    plan.assumed.append(lambda s: (not above, text))


def match_connlimit(opts: Sequence[Opt], ctx: Context, plan: MatchPlan, where: str) -> None:
    result = True
    for opt in opts:
        if opt.name == "--connlimit-upto":
            result = result and int(opt.value) >= 1
        elif opt.name == "--connlimit-above":
            result = result and (int(opt.value) < 1) != opt.negated
    text = f"{where}: connlimit counts only this connection"
    plan.assumed.append(lambda s: (result, text))


def match_rpfilter(opts: Sequence[Opt], ctx: Context, plan: MatchPlan, where: str) -> None:
    invert = any(o.name == "--invert" for o in opts)
    text = f"{where}: the packet is assumed to pass the reverse-path check"
    plan.assumed.append(lambda s: (not invert, text))


def _ranged(value: str) -> tuple[int, int]:
    lo, sep, hi = value.partition(":")
    return int(lo or 0), int(hi) if sep and hi else (int(lo) if not sep else 65535)


def match_length(opts: Sequence[Opt], ctx: Context, plan: MatchPlan, where: str) -> None:
    length = _ASSUMED_LENGTH[ctx.version]
    for opt in opts:
        lo, hi = _ranged(opt.value)
        result = (lo <= length <= hi) != opt.negated
        text = f"{where}: the packet is assumed {length} bytes long (a TCP SYN)"
        plan.assumed.append(lambda s, r=result, t=text: (r, t))


def match_ttl(opts: Sequence[Opt], ctx: Context, plan: MatchPlan, where: str) -> None:
    """The packet is assumed sent with TTL (hop limit) 64; a forwarded one has one less in FORWARD and
    POSTROUTING (ip_forward / ip6_forward decrement it before the FORWARD hook)."""
    for opt in opts:
        value = int(opt.value)
        kind = opt.name.rsplit("-", 1)[-1]
        held = {seen: {"eq": seen == value, "gt": seen > value, "lt": seen < value}[kind] != opt.negated
                for seen in (_ASSUMED_TTL, _ASSUMED_TTL - 1)}
        text = f"{where}: the packet is assumed sent with TTL/hop limit {_ASSUMED_TTL} (one less once forwarded)"

        def ttl(s: State, held: dict[int, bool] = held, text: str = text) -> tuple[bool, str]:
            forwarded = s.hook in ("FORWARD", "POSTROUTING") and not s.local_origin
            return held[_ASSUMED_TTL - 1 if forwarded else _ASSUMED_TTL], text

        plan.assumed.append(ttl)


def match_zero_field(what: str) -> Callable[[Sequence[Opt], Context, MatchPlan, str], None]:
    """tos/dscp: a new connection's packets normally carry 0."""
    def handler(opts: Sequence[Opt], ctx: Context, plan: MatchPlan, where: str) -> None:
        for opt in opts:
            head = opt.value.split("/")[0]
            zero = (head.isdigit() and int(head) == 0) or head.lower() in ("0x00", "0x0", "cs0", "be")
            text = f"{where}: the packet's {what} is assumed 0"
            plan.assumed.append(lambda s, r=zero != opt.negated, t=text: (r, t))
    return handler


def match_pkttype(opts: Sequence[Opt], ctx: Context, plan: MatchPlan, where: str) -> None:
    for opt in opts:
        wanted = opt.value.lower()

        def pkttype(s: State, wanted: str = wanted, neg: bool = opt.negated) -> bool:
            types, _ = _address_types(s.dst, ctx)
            kind = "multicast" if "MULTICAST" in types else "broadcast" if "BROADCAST" in types else "unicast"
            return (kind == wanted) != neg

        plan.tests.append(pkttype)


def match_iprange(opts: Sequence[Opt], ctx: Context, plan: MatchPlan, where: str) -> None:
    for opt in opts:
        lo_text, _, hi_text = opt.value.partition("-")
        lo = parse_net(lo_text, ctx.version)
        hi = parse_net(hi_text or lo_text, ctx.version)
        if lo is None or hi is None:
            if not opt.negated:
                plan.never = True
            continue
        a, b = lo[0], hi[0]
        if opt.name == "--src-range":
            plan.tests.append(lambda s, a=a, b=b, n=opt.negated: (a <= s.src <= b) != n)
        else:
            plan.tests.append(lambda s, a=a, b=b, n=opt.negated: (a <= s.dst <= b) != n)


def match_policy(opts: Sequence[Opt], ctx: Context, plan: MatchPlan, where: str) -> None:
    pol = next((o for o in opts if o.name == "--pol"), None)
    result = pol is not None and pol.value == "none"
    if pol is not None and pol.negated:
        result = not result
    text = f"{where}: no IPsec policy is assumed to apply to the packet"
    plan.assumed.append(lambda s: (result, text))


MatchHandler = Callable[[Sequence[Opt], Context, MatchPlan, str], None]

MATCHERS: dict[str, MatchHandler] = {
    "": match_basic,
    "tcp": match_ports("tcp"),
    "udp": match_ports("udp"),
    "udplite": match_ports("udplite"),
    "sctp": match_ports("sctp"),
    "dccp": match_ports("dccp"),
    "multiport": match_multiport,
    "icmp": match_icmp("icmp"),
    "icmp6": match_icmp("icmp6"),
    "icmpv6": match_icmp("icmp6"),
    "ipv6-icmp": match_icmp("icmp6"),
    "comment": match_nothing,
    "nfacct": match_nothing,
    "addrtype": match_addrtype,
    "conntrack": match_conntrack,
    "state": match_conntrack,
    "mark": match_mark("mark"),
    "connmark": match_mark("ctmark"),
    "statistic": match_statistic,
    "recent": match_recent,
    "set": match_set,
    "limit": _assumed_true("-m limit assumed under its rate limit"),
    "hashlimit": match_hashlimit,
    "connlimit": match_connlimit,
    "quota": _assumed_true("-m quota assumed not used up"),
    "rpfilter": match_rpfilter,
    "length": match_length,
    "ttl": match_ttl,
    "hl": match_ttl,
    "tos": match_zero_field("TOS"),
    "dscp": match_zero_field("DSCP"),
    "pkttype": match_pkttype,
    "iprange": match_iprange,
    "policy": match_policy,
}
