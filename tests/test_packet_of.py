"""dataplane.packet_of (the Service view's packets) builds without Packet's `__init__` when the values are already as
it makes them: whatever the values, it gives the packet `Packet(...)` gives, or raises the error it raises."""

from __future__ import annotations

import ipaddress
from socket import AF_INET, inet_pton

from hypothesis import given, settings
from hypothesis import strategies as st

from iptrace.dataplane import Packet, _address, packet_of
from iptrace.errors import InputError
from iptrace.iptables.state import ip_int

_ADDRESSES = st.sampled_from(["10.0.0.1", "10.96.0.10", "192.168.0.10", "fd00::1", "fd00:0::1", "FD00::1",
                              "2001:db8::10", "[fd00::1]", "010.0.0.1", "not-an-ip", "::ffff:10.0.0.1"])
_PROTOCOLS = st.sampled_from(["tcp", "udp", "sctp", "TCP", "Udp", "all", "0", "6", "icmp", "bogus", "ipv6-icmp"])
_PORTS = st.one_of(st.integers(min_value=-2, max_value=3), st.integers(min_value=65533, max_value=65537),
                   st.sampled_from([80, 443, 30080]))


def _made(make: object, *args: object) -> tuple[str, object]:
    try:
        packet = make(*args)  # type: ignore[operator]
    except InputError as exc:
        return "error", str(exc)
    return "packet", (type(packet), packet, hash(packet),
                      tuple(getattr(packet, f) for f in ("src", "dst", "dport", "proto", "sport", "in_interface")))


@settings(max_examples=400, deadline=None)
@given(_ADDRESSES, _ADDRESSES, _PORTS, _PROTOCOLS)
def test_packet_of_is_packet(src: str, dst: str, dport: int, proto: str) -> None:
    assert _made(packet_of, src, dst, dport, proto) == _made(Packet, src, dst, dport, proto)


_OCTETS = st.one_of(st.integers(0, 300).map(str), st.integers(0, 99).map(lambda n: f"0{n}"),
                    st.sampled_from(["", "+1", " 1", "1_0", "0x1", "\u0663", "1\x00"]))
_QUADS = st.lists(_OCTETS, min_size=3, max_size=5).map(".".join)


@settings(max_examples=400, deadline=None)
@given(_QUADS)
def test_a_dotted_quad_the_c_library_reads_is_its_address_text(text: str) -> None:
    """The shortcut of dataplane._address, state.ip_int and the port shapes (socket.inet_pton) reads only texts
    ipaddress reads as the same address, and writes back as they are (four decimal numbers 0-255, no leading
    zeros): _address answers as ipaddress does, ip_int as int() of each number does."""
    try:
        packed = inet_pton(AF_INET, text)
    except (OSError, ValueError):
        packed = None
    if packed is not None:
        address = ipaddress.ip_address(text)
        assert str(address) == text and int(address) == int.from_bytes(packed, "big")
        assert ip_int.__wrapped__(text) == (4, int(address))
    try:
        expected: object = (str(ipaddress.ip_address(text)), 4)
    except ValueError:
        expected = InputError
    try:
        found: object = _address.__wrapped__(text)
    except InputError:
        found = InputError
    assert found == expected
