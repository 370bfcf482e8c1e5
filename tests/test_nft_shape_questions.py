"""nftables mode: the questions of a Service port's shape (portshape._Port.shape numbers their addresses and ports
inline, ~25,000 at 5,000 Services) are numbered exactly as `_Port.address` and `_Port.port` number them: every
question's chain, source, destination and port in the key, in order, the numbering going on into the port's own
rules. A numbering that drops one of them or gives two values one number is caught here (the view comparisons of
test_nft_port_shapes do not tell: the elements and classes parts of a key repeat most of what the questions say)."""

from __future__ import annotations

from typing import Any

import pytest

from bench import synth
from bench.synth_nft import render_nft
from iptrace.kube.analysis import analyse
from iptrace.nftables import DATAPLANE, load, portshape
from tests import nft_corpus

NODE = "192.168.0.10"


def _asked(shapes: Any, chains: tuple[str, ...], calls: list[Any]) -> tuple[tuple[Any, ...], dict[str, int],
                                                                               dict[int, int]]:
    """The questions as a fresh `_Port` numbers them with its own methods, and its numbering after them."""
    port = portshape._Port(shapes, chains)
    asked = tuple((None if chain is None else port.own[chain], port.address(p.src), port.address(p.dst),
                   port.port(p.dport), p.sport, p.proto, p.in_interface) for chain, p in calls)
    return asked, port.addresses, port.ports


def _check(text: str, node_ips: tuple[str, ...]) -> int:
    """Every port's shape key holds its questions as `_asked` numbers them, and its values start with theirs; how
    many ports have a shape."""
    analysis = analyse(DATAPLANE, load(text), "ipv4", node_ips=node_ips)
    builder = analysis.views._shapes.builder
    shaped = 0
    for sp in analysis.layout.service_ports:
        calls = builder.questions(sp)
        shape = builder.tracer.port_shape(calls, sp.chains)
        if shape is None:
            continue
        shaped += 1
        asked, addresses, ports = _asked(builder.tracer._port_shapes, tuple(sp.chains), calls)
        assert shape.key[1] == asked, sp.key
        assert shape.addresses[:len(addresses)] == tuple(addresses), sp.key
        assert shape.ports[:len(ports)] == tuple(ports), sp.key
    return shaped


def test_a_synthesized_ruleset() -> None:
    text = render_nft(synth.scale(40, 3, 7), node_ips=[NODE], pod_cidr="10.244.0.0/16",
                      service_cidrs=["10.96.0.0/12"])
    assert _check(text, (NODE,)) > 30


@pytest.mark.parametrize("path", nft_corpus.SAMPLES, ids=lambda p: p.name)
def test_samples(path: Any) -> None:
    _check(path.read_text(encoding="utf-8", errors="replace"), ("192.168.49.2",))

