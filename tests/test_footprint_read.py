"""The footprint's per-node reading of chains (iptrace.iptables.footprint._Node): the chains read at once when a
node's context is first built (`_prefill`, from what earlier nodes read alike) are read as `read_chain` reads
each on its own, and the key of every Service port's questions does not depend on which of the two read it."""

from __future__ import annotations

from typing import Any

from bench import fleet, synth
from iptrace.iptables import DATAPLANE, footprint, load
from iptrace.kube.analysis import analyse
from iptrace.kube.reuse import ViewReuse


def _nodes(count: int) -> list[tuple[Any, list[Any]]]:
    """(tracer, every Service port's questions) of the first `count` nodes of a small fleet, read in order with
    one ViewReuse (as an audit's worker reads them)."""
    specs = synth.scale(30, 3, 5)
    reuse = ViewReuse()
    out = []
    for i in range(count):
        asked: list[Any] = []
        real = reuse.services

        def noting(layout: Any, tracer: Any, make: Any, ask: Any, real: Any = real, asked: Any = asked) -> Any:
            asked.append((tracer, [tuple(ask(sp)) for sp in layout.service_ports]))
            return real(layout, tracer, make, ask)

        reuse.services = noting  # type: ignore[method-assign]
        view = analyse(DATAPLANE, load(fleet.node_dump(specs, i)), "ipv4", node_ips=[fleet.node_ip(i)], reuse=reuse).view
        assert view.services
        out.append(asked[0])
    return out


def test_chains_read_at_once_are_read_as_one_at_a_time() -> None:
    (_t0, _q0), (tracer, questions) = _nodes(2)
    tracer.footprints_done()
    node = footprint._node(tracer)
    node.context()
    prefilled = dict(node._chains_read)
    assert len(prefilled) > 50  # (most chains of node 1 were read alike on node 0)
    for key, read in prefilled.items():
        assert read == node.read_chain(key), key
    keys = [footprint.footprint(tracer, calls) for calls in questions]
    tracer.footprints_done()
    one_at_a_time = footprint._node(tracer)
    one_at_a_time._prefill = lambda table: None  # type: ignore[method-assign]
    assert [footprint.footprint(tracer, calls) for calls in questions] == keys
    assert sum(k is not None for k in keys) > len(keys) // 2
