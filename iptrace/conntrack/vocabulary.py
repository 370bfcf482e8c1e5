"""conntrack's words as data: protocol names and numbers, the fields of each protocol's tuple, the fields and
flags an entry may carry, and what each value must look like.

Mirrors what prints them: libnetfilter_conntrack's `__snprintf_conntrack_default` (what `conntrack -L` prints)
and the kernel's `ct_seq_show` (net/netfilter/nf_conntrack_standalone.c, /proc/net/nf_conntrack). A field a new
version adds is a row here, not a grammar change.
"""

from __future__ import annotations

# Layer 3 names and numbers (`-o extended` and /proc print them first).
FAMILIES: dict[str, int] = {"ipv4": 2, "ipv6": 10}

# Layer 4 names (libnetfilter_conntrack's proto2str, the kernel's l4proto_name) and their IP protocol numbers.
# "unknown" is printed for every protocol conntrack has no tracker for, with its real number.
PROTOCOLS: dict[str, int | None] = {
    "tcp": 6, "udp": 17, "udplite": 136, "sctp": 132, "dccp": 33, "icmp": 1, "icmpv6": 58, "gre": 47,
    "unknown": None,
}

# Kinds of value: how `check_value` reads them.
ADDRESS, PORT, U8, U16, U32, U64, HEX16, TEXT = "address", "port", "u8", "u16", "u32", "u64", "hex16", "text"
U32_COMMA = "u32,"  # a number with the comma the kernel prints after it (GRE's `timeout=30,`)

_PORTS = (("sport", PORT), ("dport", PORT))
_ICMP = (("type", U8), ("code", U8), ("id", U16))
# The fields of a tuple after src= and dst=, in the order they are printed (__snprintf_proto).
TUPLE_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "tcp": _PORTS, "udp": _PORTS, "udplite": _PORTS, "sctp": _PORTS, "dccp": _PORTS,
    "icmp": _ICMP, "icmpv6": _ICMP,
    "gre": (("srckey", HEX16), ("dstkey", HEX16)),
    "unknown": (),
}
ADDRESS_FIELDS = (("src", ADDRESS), ("dst", ADDRESS))

# Fields a protocol's tracker prints between the timeout and the original tuple, in /proc/net/nf_conntrack only
# (the kernel's l4proto print_conntrack; `conntrack -L` never prints them): GRE's two timeouts, as in
# `ipv4 2 gre 47 29 timeout=30, stream_timeout=180 src=…`. Read and checked, not kept.
PROTO_INFO_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "gre": (("timeout", U32_COMMA), ("stream_timeout", U32)),
}

# Protocols whose entries print a state word after the timeout (ESTABLISHED, TIME_WAIT, COOKIE_WAIT, …).
STATEFUL: frozenset[str] = frozenset({"tcp", "sctp", "dccp"})

# Fields printed right after one direction's tuple, belonging to that direction (accounting, directional zones).
DIRECTION_FIELDS: dict[str, dict[str, str]] = {
    "original": {"packets": U64, "bytes": U64, "zone-orig": U16},
    "reply": {"packets": U64, "bytes": U64, "zone-reply": U16},
}

# Fields of the whole entry, printed after the reply tuple and its flags.
ENTRY_FIELDS: dict[str, str] = {
    "mark": U32, "secmark": U32, "secctx": TEXT, "zone": U16, "delta-time": U64, "helper": TEXT, "use": U32,
    "id": U32, "labels": TEXT,
}

# Status flags. [UNREPLIED] is printed between the two tuples, the others after the reply tuple.
FLAGS_BETWEEN_TUPLES: frozenset[str] = frozenset({"UNREPLIED"})
FLAGS_AFTER_REPLY: frozenset[str] = frozenset({"ASSURED", "OFFLOAD", "HW_OFFLOAD"})
# `-o ktimestamp` prints `[start=Mon Dec  2 11:06:00 2024] [stop=…]` after the entry's fields.
TIMESTAMP_FLAGS: tuple[str, ...] = ("start=", "stop=")

NUMBER_LIMITS = {U8: 0xFF, U16: 0xFFFF, PORT: 0xFFFF, U32: 0xFFFFFFFF, U64: 0xFFFFFFFFFFFFFFFF}
_KIND_WORDS = {ADDRESS: "an IPv4 or IPv6 address", PORT: "a port number (0-65535)", U8: "a number (0-255)",
               U16: "a number (0-65535)", U32: "a number", U64: "a number", HEX16: "a hex number such as 0x1f",
               TEXT: "text", U32_COMMA: "a number followed by a comma"}


def expected_value(kind: str) -> str:
    """How an error message names a value of this kind."""
    return _KIND_WORDS[kind]


def check_value(kind: str, text: str) -> bool:
    """Whether `text` is a value of this kind as conntrack prints it (addresses are checked by the reader)."""
    if kind == TEXT:
        return True
    if kind == U32_COMMA:
        return text[-1:] == "," and check_value(U32, text[:-1])
    if kind == HEX16:
        digits = text[2:]
        return text[:2] == "0x" and 0 < len(digits) <= 4 and all(c in "0123456789abcdef" for c in digits)
    return text.isascii() and text.isdigit() and len(text) <= 20 and int(text) <= NUMBER_LIMITS[kind]
