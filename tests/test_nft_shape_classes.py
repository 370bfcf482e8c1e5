"""nftables mode: the address classes of Service port shapes (generic.Shapes.classes) kept per IPv4 /24 are those
of each address computed alone (Shapes.address_class), whatever the generic networks and hosts, the node's own
addresses and a port's own networks; the check that a /24 is alike throughout (Shapes._uniform) is what makes them
so: without it, these tests fail."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iptrace.nftables.evaluate import Context
from iptrace.nftables.generic import Shapes
from iptrace.nftables.state import prefix_bounds

# Addresses clustered in a few /24s (and the broadcast /24, loopback and multicast), so that /24s are met again.
_BLOCKS = [0x0AF40000, 0x0AF40100, 0x0A600400, 0x7F000000, 0xE0000100, 0xFFFFFF00, 0xC0A80000]
_ADDRESS = st.builds(lambda block, low: block | low, st.sampled_from(_BLOCKS), st.integers(0, 255))
_NETWORK = st.tuples(_ADDRESS, st.integers(8, 32))


def _text(value: int) -> str:
    return str(ipaddress.IPv4Address(value))


def _shapes(networks: list[tuple[int, int]], hosts: list[int], local: list[int]) -> Shapes:
    tracer = type("T", (), {"ruleset": None, "ctx": Context(frozenset(map(_text, local))),
                            "local": frozenset(map(_text, local))})()
    shapes = Shapes(tracer)
    for value, length in networks:
        shapes.networks.append((*prefix_bounds(_text(value), length), False))
    shapes.networks.append((*prefix_bounds("fd00::", 8), True))
    shapes.hosts.extend(dict.fromkeys(map(_text, hosts)))
    return shapes


def _alone(shapes: Shapes, address: str, own: list[tuple[int, int, bool]]) -> Any:
    seen, value = shapes.address_class(address)
    return seen, tuple([(":" in address) == n6 and value & mask == net for net, mask, n6 in own])


@settings(max_examples=300, deadline=None)
@given(st.lists(_NETWORK, max_size=5), st.lists(_ADDRESS, max_size=3), st.lists(_ADDRESS, max_size=2),
       st.lists(_NETWORK, max_size=2), st.lists(st.lists(_ADDRESS, min_size=1, max_size=12), min_size=1, max_size=4))
def test_classes_kept_per_block_are_each_address_own(networks: list[tuple[int, int]], hosts: list[int],
                                                      local: list[int], own: list[tuple[int, int]],
                                                      ports: list[list[int]]) -> None:
    """Port after port (the memo filling up), every address's class is the one it has alone."""
    shapes = _shapes(networks, hosts, local)
    own_networks = [(*prefix_bounds(_text(v), length), False) for v, length in own]
    for addresses in ports:
        texts = [_text(a) for a in addresses]
        assert shapes.classes(texts, own_networks) == tuple([_alone(shapes, a, own_networks) for a in texts])


def _told_apart(networks: list[tuple[int, int]], hosts: list[int], local: list[int], own: list[tuple[int, int]],
                first: int, second: int) -> bool:
    """Whether `second`'s class, asked after `first`'s (same /24), is its own."""
    shapes = _shapes(networks, hosts, local)
    own_networks = [(*prefix_bounds(_text(v), length), False) for v, length in own]
    shapes.classes([_text(first)], own_networks)
    return shapes.classes([_text(second)], own_networks)[0] == _alone(shapes, _text(second), own_networks)


@pytest.mark.parametrize("case", ["generic-network", "own-network", "broadcast", "host", "local"])
def test_a_weakened_block_check_is_caught(case: str) -> None:
    """Each thing that tells two addresses of a /24 apart is checked: with _uniform always true, the second address
    of the /24 gets the first's class."""
    args: dict[str, tuple[Any, ...]] = {
        "generic-network": ([(0x0AF40080, 25)], [], [], [], 0x0AF40001, 0x0AF40081),
        "own-network": ([], [], [], [(0x0AF40080, 30)], 0x0AF40001, 0x0AF40081),
        "broadcast": ([], [], [], [], 0xFFFFFF01, 0xFFFFFFFF),
        "host": ([], [0x0AF40005], [], [], 0x0AF40001, 0x0AF40005),
        "local": ([], [], [0x0AF40005], [], 0x0AF40001, 0x0AF40005),
    }[case]
    with pytest.MonkeyPatch.context() as m:
        assert _told_apart(*args)
        m.setattr(Shapes, "_uniform", lambda self, block, own: True)
        assert not _told_apart(*args)


def test_a_weakened_block_check_fails_the_property() -> None:
    """The property above, with _uniform always true, finds a counterexample."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(Shapes, "_uniform", lambda self, block, own: True)
        with pytest.raises(AssertionError):
            test_classes_kept_per_block_are_each_address_own()


def _one_block(text: str, kind: str, pick: int) -> str:
    """`text` with every endpoint moved into 10.244.250.0/24 (one address each, 5 apart in the text's order), and a
    generic rule in filter-forward that tells the `pick`th endpoint from others of that /24: a drop of it alone
    (`host`) or of the half /25 holding it (`network`)."""
    import re

    endpoints = list(dict.fromkeys(re.findall(r"dnat to (\d+\.\d+\.\d+\.\d+):", text)))
    assert len(endpoints) <= 50
    moved = {ip: f"10.244.250.{i * 5 + 1}" for i, ip in enumerate(endpoints)}
    text = re.sub(r"(?<![\d.])(\d+\.\d+\.\d+\.\d+)(?![\d.])", lambda m: moved.get(m.group(1), m.group(1)), text)
    target = pick * 5 + 1
    test = f"10.244.250.{target}" if kind == "host" else f"10.244.250.{target & 128}/25"
    lines = text.split("\n")
    at = next(i for i, line in enumerate(lines) if line.strip().startswith("chain filter-forward "))
    lines.insert(at + 2, f"\t\tip daddr {test} drop")
    return "\n".join(lines)


@pytest.mark.parametrize("kind", ["host", "network"])
def test_endpoints_of_one_block_told_apart_by_a_generic_rule(kind: str) -> None:
    """Views built with shapes stay those built by tracing when a generic rule tells one endpoint of a /24 from the
    others; with _uniform always true, some port's view is built from another's (and differs)."""
    from tests.test_nft_port_shapes import _ruleset, check

    base = _ruleset(16, 2, seed=7)
    texts = [_one_block(base, kind, pick) for pick in (1, 5, 30, 35)]
    for text in texts:
        check(text)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(Shapes, "_uniform", lambda self, block, own: True)
        failed = 0
        for text in texts:
            try:
                check(text)
            except AssertionError:
                failed += 1
        assert failed
