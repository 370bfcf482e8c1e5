"""Port views shared by shape across the nodes of one audit process (iptrace.kube.shapes.ShapeMemo.share, by
iptrace.kube.carried): a later node's traced ports take the views of an earlier node's ports of their shape when the
nodes' contexts (iptrace.iptables.carry's fingerprint) are the same. Every node's result equals that of a worker
that traces every port; and each condition of the sharing, left out on purpose, makes a fleet's results differ."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from iptrace.collect.stream import Worker
from iptrace.iptables import portshape
from iptrace.kube import carried, shapes, view
from tests.test_carried import SCENARIOS, _audit, _first_rule, _svc_rule, _texts, _write


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's views shared among its own nodes only; no digest kept, so that every node traces every port (on
    these small fleets a later node traces hardly any: its ports' digests are an earlier node's)."""
    monkeypatch.setattr(shapes, "_SHARED", {})
    monkeypatch.setattr(carried.Carried, "_keep", lambda *args: None)


def _taken(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many views each node's ShapeMemo took from another node's (one count a node)."""
    counts: list[int] = []
    real_share = view.ViewBuilder.share_shapes
    real_get = dict.get

    def share(self: view.ViewBuilder, context: Any) -> None:
        counts.append(0)
        real_share(self, context)

    class Shared(dict):  # type: ignore[type-arg]
        def get(self, key: Any, default: Any = None) -> Any:
            found = real_get(self, key, default)
            if found is not None:
                counts[-1] += 1
            return found

    monkeypatch.setattr(view.ViewBuilder, "share_shapes", share)
    monkeypatch.setattr(shapes, "_SHARED", Shared())
    return counts


def _views(sources: list[Any], monkeypatch: pytest.MonkeyPatch) -> tuple[dict[Any, Any], dict[Any, Any]]:
    """The port views a worker that carries digests built (by dump and port) and those of a worker that traces every
    port, for the ports the first built; their results compared too."""
    built: dict[Any, Any] = {}
    real = view.ViewBuilder.port

    def port(self: view.ViewBuilder, key: str) -> Any:
        found = built[(self.source, key)] = real(self, key)
        return found

    monkeypatch.setattr(view.ViewBuilder, "port", port)
    carrying = Worker(None, False, False, True)
    got = [carrying.run(s) for s in sources]
    shared, built = built, {}
    plain = [Worker(None, False, False, False).run(s) for s in sources]
    assert got == plain
    return shared, {where: built[where] for where in shared}


def test_a_later_node_builds_views_from_earlier_nodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    taken = _taken(monkeypatch)
    got, plain, _worker = _audit(_write(tmp_path, _texts(4)))
    assert got == plain
    assert len(taken) == 4 and taken[0] == 0 and sum(taken[1:]) > 0, taken


def _weakened_context(monkeypatch: pytest.MonkeyPatch) -> None:
    real = view.ViewBuilder.share_shapes
    monkeypatch.setattr(view.ViewBuilder, "share_shapes", lambda self, context: real(self, b"every node's"))


def test_views_are_shared_only_between_nodes_of_one_context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Node 2 drops every TCP packet in mangle PREROUTING (a context rule): its views are its own. Shared under one
    context whatever the nodes' rules, node 2 takes the earlier nodes' views."""
    texts = SCENARIOS["context rule"](_texts(4))
    got, plain, _worker = _audit(_write(tmp_path, texts))
    assert got == plain
    monkeypatch.setattr(shapes, "_SHARED", {})
    _weakened_context(monkeypatch)
    got, plain, _worker = _audit(_write(tmp_path / "weak", texts))
    assert got != plain


def _dropped_at_another_line(texts: list[str]) -> list[str]:
    """Every node drops its pods' TCP packets: a rule at the end of mangle PREROUTING, which node i writes i lines
    lower (blank lines before it): the pod client's path (its verdict not the external client's) names the line it
    is decided by, which the shape does not hold and which differs by node."""
    out = []
    for i, text in enumerate(texts):
        start = text.index("\n*mangle\n")
        end = text.index("\nCOMMIT", start)
        out.append(text[:end] + "\n" * (i + 1) + "-A PREROUTING -s 10.244.0.0/16 -p tcp -j DROP" + text[end:])
    return out


def test_a_view_naming_a_context_rules_line_is_not_shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    texts = _dropped_at_another_line(_texts(4))
    shared, traced = _views(_write(tmp_path, texts), monkeypatch)
    assert shared == traced
    monkeypatch.setattr(shapes, "_SHARED", {})
    monkeypatch.setattr(shapes, "_own_lines", lambda kept: True)
    shared, traced = _views(_write(tmp_path / "weak", texts), monkeypatch)
    assert shared != traced


_ELSEWHERE = "KUBE-SVL-ZZZZZZZZZZZZZZZZ"  # (a chain of another Service port, as its name says)


def _enters_another_ports_chain(texts: list[str]) -> list[str]:
    """One port's service chain first jumps to another port's chain, which returns on nodes 0, 1 and 3 and marks the
    packet for masquerading on node 2 (then returns): the first port's traces read that chain, whose rules are no
    part of its shape's key (nor of the fingerprint), and no line of it is in their views."""
    out = []
    chain = _svc_rule(texts[0]).group(4)  # (one port on every node: each writes KUBE-SERVICES in its own order)
    for i, text in enumerate(texts):
        text = text.replace("\n*nat\n", f"\n*nat\n:{_ELSEWHERE} - [0:0]\n", 1)
        first = re.search(rf"^-A {chain} ", text, re.MULTILINE)
        assert first is not None
        text = text[:first.start()] + f"-A {chain} -j {_ELSEWHERE}\n" + text[first.start():]
        out.append(_first_rule(text, "nat", f"-A {_ELSEWHERE} -j {'KUBE-MARK-MASQ' if i == 2 else 'RETURN'}"))
    return out


def test_a_shape_whose_traces_enter_another_ports_chain_is_not_shared(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    texts = _enters_another_ports_chain(_texts(4))
    shared, traced = _views(_write(tmp_path, texts), monkeypatch)
    assert shared == traced
    monkeypatch.setattr(shapes, "_SHARED", {})
    monkeypatch.setattr(portshape, "OWN", ("\0",))  # (no chain is another port's: every shape portable)
    shared, traced = _views(_write(tmp_path / "weak", texts), monkeypatch)
    assert shared != traced


def _portable(text: str) -> list[bool]:
    """PortShape.portable of each port of node 0's `text` that has a shape."""
    from bench import fleet
    from iptrace import dataplanes
    from iptrace.kube.analysis import analyse

    dataplane, ruleset = dataplanes.load(text)
    a = analyse(dataplane, ruleset, "ipv4", node_ips=[fleet.node_ip(0)])
    found = []
    for key in a.layout.keys:
        sp = a.layout.service_port(key)
        shape = a.tracer.port_shape(a.views._builder.questions(sp), sp.chains)
        if shape is not None:
            found.append(shape.portable)
    return found


def test_no_shape_is_portable_where_an_exact_rule_adds_a_network() -> None:
    """A shape's `held` says which networks of the node's rules hold each of its addresses, by their places in the
    order found: a node's own exact rules (which another node writes otherwise) could put the context's networks at
    other places, so a node where one adds a network shares no shape; one that tests a network the context's rules
    test too adds none."""
    text = _texts(1)[0]
    assert all(_portable(text))
    exact = "-A PREROUTING -s {} -d 10.96.99.99/32 -p tcp -j ACCEPT"
    assert not any(_portable(_first_rule(text, "mangle", exact.format("172.16.0.0/12"))))
    assert all(_portable(_first_rule(text, "mangle", exact.format("10.244.0.0/16"))))
