"""The packet a trace follows: the first packet of a new connection, IPv4 or IPv6."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from iptrace.errors import InputError

# IP protocol numbers for the names iptables accepts after -p (and /etc/protocols spells).
PROTOCOL_NUMBERS: dict[str, int] = {
    "tcp": 6, "udp": 17, "sctp": 132, "icmp": 1, "ipv6-icmp": 58, "icmpv6": 58, "icmp6": 58,
    "udplite": 136, "dccp": 33, "esp": 50, "ah": 51, "gre": 47, "ipip": 4, "mh": 135, "ipv6-mh": 135,
}
PROTOCOL_NAMES: dict[int, str] = {6: "tcp", 17: "udp", 132: "sctp", 1: "icmp", 58: "ipv6-icmp", 136: "udplite",
                                  33: "dccp", 50: "esp", 51: "ah", 47: "gre", 4: "ipip", 135: "mh"}


def protocol_number(name: str) -> int | None:
    """`-p` value → protocol number; None for `all`/`0` (any protocol). Raises InputError when unknown."""
    text = name.lower()
    if text in ("all", "0"):
        return None
    if text.isdigit():
        return int(text)
    number = PROTOCOL_NUMBERS.get(text)
    if number is None:
        raise InputError(f"unknown protocol {name!r}; expected tcp, udp, sctp, icmp, a number or all")
    return number


@dataclass(frozen=True, slots=True)
class Packet:
    """One new connection's first packet. Addresses are normalised (`ipaddress` compressed form)."""

    src: str
    dst: str
    dport: int
    proto: str = "tcp"
    sport: int = 40000
    in_interface: str | None = None

    def __post_init__(self) -> None:
        try:
            src = ipaddress.ip_address(self.src.strip("[]"))
            dst = ipaddress.ip_address(self.dst.strip("[]"))
        except ValueError as exc:
            raise InputError(f"not an IP address: {exc}; expected e.g. 10.0.0.1 or fd00::1") from None
        if src.version != dst.version:
            raise InputError(f"source {src} and destination {dst} are of different IP versions")
        for name, port in (("destination", self.dport), ("source", self.sport)):
            if not 0 <= port <= 65535:
                raise InputError(f"{name} port {port} is out of range; expected 0-65535")
        proto = self.proto.lower()
        protocol_number(proto)
        object.__setattr__(self, "src", str(src))
        object.__setattr__(self, "dst", str(dst))
        object.__setattr__(self, "proto", proto)

    @property
    def version(self) -> int:
        """4 or 6."""
        return ipaddress.ip_address(self.src).version

    @property
    def proto_number(self) -> int:
        number = protocol_number(self.proto)
        return 0 if number is None else number


def join_host_port(ip: str, port: int) -> str:
    """`ip:port`, IPv6 as `[addr]:port`."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
