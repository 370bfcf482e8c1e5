"""dataplane.packet_of (the Service view's packets) builds without Packet's `__init__` when the values are already as
it makes them: whatever the values, it gives the packet `Packet(...)` gives, or raises the error it raises."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from iptrace.dataplane import Packet, packet_of
from iptrace.errors import InputError

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
