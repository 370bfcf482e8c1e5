"""The nft vocabulary as data: families, hooks and named priorities, the expressions a rule may test and their
datatypes, the statements and what they take. The grammar (grammars/nft.lark) knows none of these words; the
rule reader (reader.py) and the JSON reader look them up here. A new expression or statement keyword is a row
here, not a grammar change.

Names and numbers follow nftables' own tables (src/rule.c `std_prios`, src/proto.c, src/meta.c, src/ct.c).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

FAMILIES = ("ip", "ip6", "inet", "arp", "bridge", "netdev")
CHAIN_TYPES = ("filter", "nat", "route")
POLICIES = ("accept", "drop")

_INET_HOOKS = ("prerouting", "input", "forward", "output", "postrouting", "ingress")
HOOKS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "ip": _INET_HOOKS, "ip6": _INET_HOOKS, "inet": _INET_HOOKS,
    "arp": ("input", "output"),
    "bridge": ("prerouting", "input", "forward", "output", "postrouting"),
    "netdev": ("ingress", "egress"),
})

# Named base-chain priorities (nft's std_prios / bridge_std_prios) and where each name is allowed.
STD_PRIORITIES: tuple[tuple[str, int], ...] = (
    ("raw", -300), ("mangle", -150), ("dstnat", -100), ("filter", 0), ("security", 50), ("srcnat", 100))
BRIDGE_PRIORITIES: tuple[tuple[str, int], ...] = (
    ("dstnat", -300), ("filter", -200), ("out", 100), ("srcnat", 300))


def priority_allowed(name: str, family: str, hook: str) -> bool:
    """Whether nft accepts (and prints) the named priority `name` for a chain of `family` on `hook`
    (nft's std_prio_family_hook_compat / bridge_prio_family_hook_compat)."""
    if family == "bridge":
        return {"dstnat": hook == "prerouting", "filter": True, "out": hook == "output",
                "srcnat": hook == "postrouting"}.get(name, False)
    inet = family in ("ip", "ip6", "inet")
    if name == "filter":
        return family in ("ip", "ip6", "inet", "arp", "netdev")
    if name in ("raw", "mangle", "security"):
        return inet
    if name == "dstnat":
        return inet and hook == "prerouting"
    if name == "srcnat":
        return inet and hook == "postrouting"
    return False


def priority_names(family: str) -> tuple[tuple[str, int], ...]:
    return BRIDGE_PRIORITIES if family == "bridge" else STD_PRIORITIES


# ----------------------------------------------------------------------------------------------- datatypes
# Datatypes whose implicit relational operator is a bit test ("in" in nft's JSON): `ct state new`.
BITMASK_TYPES = frozenset({"ct_state", "ct_status", "tcp_flag", "ct_event", "fib_addrtype_bitmask"})
# Datatypes written as quoted strings.
STRING_TYPES = frozenset({"ifname", "string", "iface_index"})
# Datatypes whose values are numbers only (others take symbols too: `dscp cs1`, `skuid root`, `l3proto ipv4`).
INTEGER_TYPES = frozenset({"integer", "mark", "ct_mark", "ct_zone", "ct_id", "cpu", "ct_bytes", "ct_packets"})
# Integer types the kernel prints in hex (0x%08x for 32-bit ones).
HEX_TYPES: Mapping[str, int] = MappingProxyType({"mark": 8, "ct_mark": 8, "classid": 0})

# Well-known service names nft resolves (the kernel lists the numbers).
SERVICES: Mapping[str, int] = MappingProxyType({
    "ftp": 21, "ssh": 22, "telnet": 23, "smtp": 25, "domain": 53, "http": 80, "pop3": 110, "ntp": 123,
    "imap": 143, "snmp": 161, "bgp": 179, "ldap": 389, "https": 443, "smtps": 465, "submission": 587,
    "ldaps": 636, "imaps": 993, "pop3s": 995, "mysql": 3306, "postgresql": 5432, "kubernetes": 6443,
})

# ---------------------------------------------------------------------------------------------- expressions
# payload protocol -> field -> datatype. `th` is nft's "transport header" (any of tcp/udp/sctp/dccp ports).
PAYLOAD: Mapping[str, Mapping[str, str]] = MappingProxyType({
    "ip": {"version": "integer", "hdrlength": "integer", "dscp": "dscp", "ecn": "ecn", "length": "integer",
           "id": "integer", "frag-off": "integer", "ttl": "integer", "protocol": "inet_proto",
           "checksum": "integer", "saddr": "ipv4_addr", "daddr": "ipv4_addr"},
    "ip6": {"version": "integer", "dscp": "dscp", "ecn": "ecn", "flowlabel": "integer", "length": "integer",
            "nexthdr": "inet_proto", "hoplimit": "integer", "saddr": "ipv6_addr", "daddr": "ipv6_addr"},
    "tcp": {"sport": "inet_service", "dport": "inet_service", "sequence": "integer", "ackseq": "integer",
            "doff": "integer", "reserved": "integer", "flags": "tcp_flag", "window": "integer",
            "checksum": "integer", "urgptr": "integer"},
    "udp": {"sport": "inet_service", "dport": "inet_service", "length": "integer", "checksum": "integer"},
    "udplite": {"sport": "inet_service", "dport": "inet_service", "checksum": "integer"},
    "sctp": {"sport": "inet_service", "dport": "inet_service", "vtag": "integer", "checksum": "integer"},
    "dccp": {"sport": "inet_service", "dport": "inet_service", "type": "dccp_pkttype"},
    "th": {"sport": "inet_service", "dport": "inet_service"},
    "icmp": {"type": "icmp_type", "code": "icmp_code", "checksum": "integer", "id": "integer",
             "sequence": "integer", "gateway": "ipv4_addr", "mtu": "integer"},
    "icmpv6": {"type": "icmpv6_type", "code": "icmpv6_code", "checksum": "integer", "id": "integer",
               "sequence": "integer", "mtu": "integer", "max-delay": "integer", "taddr": "ipv6_addr",
               "daddr": "ipv6_addr", "parameter-problem": "integer", "packet-too-big": "integer"},
    "igmp": {"type": "igmp_type", "mrt": "integer", "checksum": "integer", "group": "ipv4_addr"},
    "ether": {"saddr": "ether_addr", "daddr": "ether_addr", "type": "ether_type"},
    "vlan": {"id": "integer", "cfi": "integer", "dei": "integer", "pcp": "integer", "type": "ether_type"},
    "arp": {"htype": "integer", "ptype": "ether_type", "hlen": "integer", "plen": "integer",
            "operation": "arp_op"},
    "ah": {"nexthdr": "inet_proto", "hdrlength": "integer", "reserved": "integer", "spi": "integer",
           "sequence": "integer"},
    "esp": {"spi": "integer", "sequence": "integer"},
    "comp": {"nexthdr": "inet_proto", "flags": "integer", "cpi": "integer"},
})

META: Mapping[str, str] = MappingProxyType({
    "length": "integer", "protocol": "ether_type", "nfproto": "nf_proto", "l4proto": "inet_proto",
    "priority": "classid", "mark": "mark", "iif": "iface_index", "iifname": "ifname", "iiftype": "iface_type",
    "oif": "iface_index", "oifname": "ifname", "oiftype": "iface_type", "skuid": "uid", "skgid": "gid",
    "nftrace": "integer", "rtclassid": "realm", "ibrname": "ifname", "obrname": "ifname",
    "ibriport": "ifname", "obriport": "ifname", "ibrvproto": "ether_type", "ibrpvid": "integer",
    "pkttype": "pkt_type", "cpu": "cpu", "iifgroup": "devgroup", "oifgroup": "devgroup", "cgroup": "integer",
    "random": "integer", "secpath": "boolean", "iifkind": "string", "oifkind": "string", "time": "time",
    "day": "day", "hour": "hour", "secmark": "integer", "sdif": "iface_index", "sdifname": "ifname",
    "broute": "boolean",
})
# Keys nft accepts without `meta` in front, and the ones it prints that way (src/meta.c).
META_UNQUALIFIED = frozenset({"mark", "iif", "iifname", "iiftype", "oif", "oifname", "oiftype", "skuid",
                              "skgid", "nftrace", "rtclassid", "ibriport", "obriport", "ibrname", "obrname",
                              "pkttype", "cpu", "iifgroup", "oifgroup", "cgroup"})
META_PRINTED_UNQUALIFIED = frozenset({"iif", "oif", "iifname", "oifname", "iifgroup", "oifgroup"})

CT: Mapping[str, str] = MappingProxyType({
    "state": "ct_state", "direction": "ct_dir", "status": "ct_status", "mark": "ct_mark",
    "expiration": "time", "helper": "string", "l3proto": "nf_proto", "protocol": "inet_proto",
    "saddr": "ipv4_addr", "daddr": "ipv4_addr", "proto-src": "inet_service", "proto-dst": "inet_service",
    "label": "ct_label", "bytes": "ct_bytes", "packets": "ct_packets", "avgpkt": "integer", "zone": "ct_zone",
    "event": "ct_event", "id": "ct_id", "secmark": "integer",
})
CT_DIRECTIONS = ("original", "reply")

FIB_FLAGS = ("saddr", "daddr", "mark", "iif", "oif")
FIB_RESULTS: Mapping[str, str] = MappingProxyType({"oif": "fib_oif", "oifname": "fib_oifname",
                                                   "type": "fib_addrtype"})
NUMGEN_MODES = ("random", "inc")

# Expressions iptrace keeps as their words (no evaluator models them): keyword -> how many words follow, or
# the words that may follow (read until a word not listed).
SELECTORS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "rt": ("ip", "ip6", "classid", "nexthop", "mtu", "ipsec"),
    "socket": ("transparent", "mark", "wildcard", "cgroupv2", "level"),
    "osf": ("ttl", "loose", "skip", "name", "version"),
    "ipsec": ("in", "out", "spnum", "reqid", "spi", "ip", "ip6", "saddr", "daddr"),
})
# The datatype of a selector's value (after its words).
SELECTOR_TYPES: Mapping[tuple[str, ...], str] = MappingProxyType({
    ("rt", "nexthop"): "ipv4_addr", ("rt", "ip", "nexthop"): "ipv4_addr", ("rt", "ip6", "nexthop"): "ipv6_addr",
    ("rt", "mtu"): "integer", ("socket", "transparent"): "integer", ("socket", "mark"): "mark",
    ("socket", "wildcard"): "integer", ("osf", "name"): "string", ("osf", "version"): "string",
})

# ----------------------------------------------------------------------------------------------- operators
RELATIONAL_OPS: Mapping[str, str] = MappingProxyType({
    "==": "==", "eq": "==", "!=": "!=", "ne": "!=", "<": "<", "lt": "<", ">": ">", "gt": ">",
    "<=": "<=", "le": "<=", ">=": ">=", "ge": ">="})
BINARY_OPS: Mapping[str, str] = MappingProxyType({
    "&": "&", "and": "&", "|": "|", "or": "|", "^": "^", "xor": "^", "<<": "<<", "lshift": "<<",
    ">>": ">>", "rshift": ">>"})

# ---------------------------------------------------------------------------------------------- statements
VERDICT_WORDS = frozenset({"accept", "drop", "continue", "return"})
CHAIN_VERDICTS = frozenset({"jump", "goto"})
NAT_WORDS = frozenset({"dnat", "snat", "masquerade", "redirect"})
NAT_FLAGS = frozenset({"random", "fully-random", "persistent", "netmap", "prefix"})
SET_STATEMENT_OPS = frozenset({"add", "update", "delete"})
REJECT_TYPES = ("icmp", "icmpv6", "icmpx")
# `reject` without `with` rejects with port-unreachable of the family's ICMP (the kernel prints it bare).
REJECT_DEFAULT: Mapping[str, tuple[str, str]] = MappingProxyType({
    "ip": ("icmp", "port-unreachable"), "ip6": ("icmpv6", "port-unreachable"),
    "inet": ("icmpx", "port-unreachable"), "bridge": ("icmpx", "port-unreachable"),
    "netdev": ("icmpx", "port-unreachable")})

# Statements iptrace keeps as keyword + arguments. The value says which option words the statement takes and
# how many values each has; None: the statement reads words until one that starts another statement or
# expression (its syntax is free-form: `limit rate over 10/second burst 5 packets`).
OPTION_STATEMENTS: Mapping[str, Mapping[str, int] | None] = MappingProxyType({
    "log": {"prefix": 1, "level": 1, "group": 1, "snaplen": 1, "queue-threshold": 1, "flags": 1},
    "limit": None, "quota": None, "queue": None, "notrack": {}, "dup": None, "fwd": None, "tproxy": None,
    "synproxy": None, "flow": None, "meter": None, "last": None, "secmark": None, "synproxy-name": None,
})
# Defaults the kernel leaves out when it lists a statement: `limit rate 10/second burst 5 packets` is listed
# `limit rate 10/second`.
STATEMENT_DEFAULTS: Mapping[str, tuple[tuple[str, ...], ...]] = MappingProxyType({
    "limit": (("burst", "5", "packets"),),
})
ELEMENT_OPTIONS = frozenset({"timeout", "expires", "comment", "counter"})

# Words that start an expression in a rule.
EXPRESSION_WORDS = frozenset({*PAYLOAD, "meta", "ct", "fib", "numgen", "jhash", "symhash", *SELECTORS,
                              "exthdr", "tcp", "ip", "sctp"}) | META_UNQUALIFIED
STATEMENT_WORDS = frozenset({*VERDICT_WORDS, *CHAIN_VERDICTS, *NAT_WORDS, *SET_STATEMENT_OPS, "reject",
                             "counter", "comment", "xt", *OPTION_STATEMENTS})
ITEM_WORDS = EXPRESSION_WORDS | STATEMENT_WORDS

# Every word the rule reader may treat as structure (the shape key keeps these, see reader.py).
VOCABULARY: frozenset[str] = frozenset(
    ITEM_WORDS
    | {f for fields in PAYLOAD.values() for f in fields} | set(META) | set(CT) | set(CT_DIRECTIONS)
    | set(FIB_FLAGS) | set(FIB_RESULTS) | set(NUMGEN_MODES) | {w for ws in SELECTORS.values() for w in ws}
    | set(RELATIONAL_OPS) | set(BINARY_OPS) | NAT_FLAGS | set(REJECT_TYPES)
    | {"set", "map", "vmap", "to", "with", "mod", "offset", "seed", "addr", "port", "type", "reset", "tcp",
       ".", "/", "-", "packets", "bytes", "name", "match", "target", "watcher", "ip", "ip6", "timeout", "option"}
)
