"""Values as nft reads them, normalised by datatype: what makes `172.30.0.041`, `0x4000`, `6` and `10800s` of the
transaction text equal to the kernel's `172.30.0.33`, `0x00004000`, `tcp` and `3h`.

`normaliser(datatype)` returns a function str → value used once per value of the text forms; `from_json`
does the same for JSON values. Both raise ValueError with a reason the loader turns into a ParseError.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from functools import cache
from socket import AF_INET as _AF_INET
from socket import inet_pton as _pton

from iptrace.dataplane import PROTOCOL_NAMES
from iptrace.nftables.model import Flags, Prefix, Range, Scalar
from iptrace.nftables.vocabulary import BITMASK_TYPES, INTEGER_TYPES, SERVICES, STRING_TYPES

_CANONICAL_V4 = re.compile(r"(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)")
_ESCAPE = re.compile(r"\\(.)")
_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?(?:(\d+)ms)?")
_PROTOCOL_NAMES_NFT = {**PROTOCOL_NAMES, 58: "ipv6-icmp"}


def unquote(token: str) -> str:
    if len(token) >= 2 and token[0] == '"' and token[-1] == '"':
        return _ESCAPE.sub(r"\1", token[1:-1])
    return token


def quote(text: str) -> str:
    """`text` as a quoted string `unquote` gives back: a backslash, a quote and a carriage return (which a quoted
    string holds only escaped: grammars/nft.lark's STRING) escaped."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "\\\r") + '"'


def _inet_aton_part(part: str) -> int:
    """One dotted part as inet_aton(3) reads it (nft resolves addresses with it): 0x.. hex, 0.. octal."""
    if part[:2] in ("0x", "0X"):
        return int(part[2:], 16)
    if len(part) > 1 and part[0] == "0":
        return int(part[1:], 8)
    if not part.isdigit():
        raise ValueError
    return int(part)


def ipv4(text: str) -> str:
    """An IPv4 address in canonical form; `172.30.0.041` is octal like nft reads it (→ 172.30.0.33)."""
    if _CANONICAL_V4.fullmatch(text):
        return text
    parts = text.split(".")
    try:
        if len(parts) != 4 or not all(parts):
            raise ValueError
        numbers = [_inet_aton_part(p) for p in parts]
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 address") from None
    if any(n > 255 for n in numbers):
        raise ValueError(f"{text!r} is not an IPv4 address")
    return ".".join(str(n) for n in numbers)


@cache
def ipv6(text: str) -> str:
    try:
        return ipaddress.IPv6Address(text).compressed
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv6 address") from None


def _prefix(addr: Callable[[str], str], version: int) -> Callable[[str], object]:
    bits = 32 if version == 4 else 128
    prefixes: dict[str, Prefix] = {}  # a ruleset repeats a few (the pod CIDR in every service chain)

    def value(text: str) -> object:
        if version == 4:
            try:
                _pton(_AF_INET, text)  # accepts exactly the canonical dotted quad: the common case
                return text
            except OSError:
                pass
        if "/" in text:
            known = prefixes.get(text)
            if known is not None:
                return known
            host, _, length = text.partition("/")
            if not length.isdigit() or int(length) > bits:
                raise ValueError(f"{text!r}: prefix length must be 0-{bits}")
            net = ipaddress.ip_network(f"{addr(host)}/{length}", strict=False)
            if len(prefixes) < 4096:
                prefixes[text] = Prefix(str(net.network_address), int(length))
            return Prefix(str(net.network_address), int(length))
        if "-" in text:
            low, _, high = text.partition("-")
            return Range(addr(low), addr(high))
        return addr(text)

    return value


def integer(text: str) -> int:
    try:
        return int(text, 0) if text[:2].lower() in ("0x", "0o", "0b") else int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None


def _ranged(scalar: Callable[[str], Scalar]) -> Callable[[str], object]:
    def value(text: str) -> object:
        if text.isdigit():
            return scalar(text)
        low, sep, high = text.partition("-")
        if sep and low and high:
            return Range(scalar(low), scalar(high))
        return scalar(text)

    return value


def service(text: str) -> Scalar:
    if text.isdigit():
        port = int(text)
        if port > 65535:
            raise ValueError(f"port {port} is out of range (0-65535)")
        return port
    known = SERVICES.get(unquote(text))
    if known is not None:
        return known
    if text.startswith("$"):
        return text
    raise ValueError(f"{text!r} is not a port number")


# A bare word of nft's scanner (a symbol, a protocol name from /etc/protocols): no blanks, quotes or braces.
_WORD_RE = re.compile(r"[A-Za-z0-9_$][A-Za-z0-9_.\-/$:]*")
_COMMON_PROTOCOLS = {"tcp": "tcp", "udp": "udp", "sctp": "sctp", "icmp": "icmp"}


def protocol(text: str) -> Scalar:
    known = _COMMON_PROTOCOLS.get(text)
    if known is not None:
        return known
    lower = unquote(text).lower()
    if lower.isdigit():
        return _PROTOCOL_NAMES_NFT.get(int(lower), int(lower))
    if lower in ("icmpv6", "icmp6"):
        return "ipv6-icmp"
    if not _WORD_RE.fullmatch(lower):
        raise ValueError(f"{text!r} is not a protocol")
    return lower


def symbol(text: str) -> Scalar:
    """A symbolic constant (`new`, `local`, `echo-request`) or a number."""
    if text[:1].isdigit():
        try:
            return integer(text)
        except ValueError:
            return text
    if text[:1] != '"' and not _WORD_RE.fullmatch(text):
        raise ValueError(f"{text!r} is not a value")
    return unquote(text)


def duration_ms(text: str) -> int:
    """nft's time format (`3h`, `10800s`, `1m30s`, `500ms`, `2d`) or plain seconds → milliseconds."""
    if text.isdigit():
        return int(text) * 1000
    m = _DURATION.fullmatch(text)
    if not text or m is None or not any(m.groups()):
        raise ValueError(f"{text!r} is not a time (e.g. 10800s, 3h, 1m30s)")
    d, h, mi, s, ms = (int(g) if g else 0 for g in m.groups())
    return (((d * 24 + h) * 60 + mi) * 60 + s) * 1000 + ms


def format_duration(ms: int) -> str:
    """Milliseconds as nft prints them: 10800000 → `3h`, 90000 → `1m30s`."""
    if ms == 0:
        return "0s"
    out = []
    for unit, size in (("d", 86400000), ("h", 3600000), ("m", 60000), ("s", 1000), ("ms", 1)):
        n, ms = divmod(ms, size)
        if n:
            out.append(f"{n}{unit}")
    return "".join(out)


def _string(text: str) -> str:
    """A string (an interface name). A trailing `*` is a wildcard (nft compares the bytes before it), an escaped
    one a literal star: it stays `\\*`, as the JSON listing gives it (sets.covers and render.value read it so)."""
    body = unquote(text)
    if text.endswith('\\*"') and body.endswith("*"):
        return body[:-1] + "\\*"
    return body


def _ether(text: str) -> str:
    return text.lower()


def _bitmask(text: str) -> object:
    """A bitmask value: one symbol, or `(syn|ack)` / `syn|ack` (several bits, as after `&`)."""
    if "|" in text:
        names = text.strip("()").replace(" ", "").split("|")
        if all(names):
            return Flags(tuple(names))
    return symbol(text)


@cache
def normaliser(datatype: str) -> Callable[[str], object]:
    """The function that reads one value of `datatype` (as text) into the model's form."""
    if datatype in BITMASK_TYPES:
        return _bitmask
    if datatype == "ipv4_addr":
        fn = _prefix(ipv4, 4)
        fn.canonical_ipv4 = True  # type: ignore[attr-defined]  # shapes.py inlines its common case
        return fn
    if datatype == "ipv6_addr":
        return _prefix(ipv6, 6)
    if datatype == "inet_service":
        return _ranged(service)
    if datatype == "inet_proto":
        return protocol
    if datatype in INTEGER_TYPES:
        fn = _ranged(integer)
        fn.decimal_int = True  # type: ignore[attr-defined]  # shapes.py inlines the plain-decimal case
        return fn
    if datatype in STRING_TYPES:
        return _string
    if datatype == "ct_addr":
        return _address(datatype)
    if datatype == "ether_addr":
        return _ether
    return symbol


def flags(names: list[str]) -> Flags:
    return Flags(tuple(names))


def proto_name(value: object) -> object:
    """A JSON protocol (name or number) as the model keeps it."""
    if isinstance(value, int):
        return _PROTOCOL_NAMES_NFT.get(value, value)
    return protocol(str(value))


def _address(addr_type: str) -> Callable[[str], object]:
    if addr_type == "ct_addr":  # an inet table: the address says its family
        v4, v6 = normaliser("ipv4_addr"), normaliser("ipv6_addr")
        return lambda text: v6(text) if ":" in text else v4(text)
    return normaliser(addr_type)


@cache
def nat_target(addr_type: str) -> Callable[[str], tuple[object, object]]:
    """`10.0.0.1:80`, `[fd00::1]:80`, `1.2.3.4-1.2.3.9:1000-2000`, `:8080`, `fd00::1` → (address, port)."""
    address = _address(addr_type)
    port = _ranged(service)
    v4 = addr_type != "ipv6_addr"

    def target(text: str) -> tuple[object, object]:
        host, sep, number = text.partition(":")
        if sep and number.isdigit() and v4:
            p = int(number)
            if p < 65536:
                try:  # kube-proxy's endpoint `10.180.0.1:80`, canonical: one C call checks it
                    _pton(_AF_INET, host)
                    return host, p
                except OSError:
                    pass
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            return address(host), (port(rest[1:]) if rest.startswith(":") else None)
        if text.startswith(":"):
            return None, port(text[1:])
        if text.count(":") == 1:
            host, _, p = text.partition(":")
            return address(host), port(p)
        return address(text), None

    target.ipv4_port = v4  # type: ignore[attr-defined]  # shapes.py inlines `10.180.0.1:80`
    return target
