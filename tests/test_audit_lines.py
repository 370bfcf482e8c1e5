"""An audit's parent keeps each node's lines as another node's moved (ShiftedLines): the lines read back are the
node's, every one, whatever lies elsewhere, and the stream's results keep them so."""

from __future__ import annotations

from array import array
from dataclasses import replace
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from iptrace.collect.stream import analyse_nodes, sources
from iptrace.kube.digest import FamilyDigest, ShiftedLines
from tests.test_audit_stream import snap  # noqa: F401  (the fleet fixture)

LINES = st.lists(st.integers(min_value=0, max_value=2**32 - 1), min_size=1, max_size=60)


@given(LINES, st.integers(min_value=-1000, max_value=1000), st.data())
def test_the_lines_read_back_are_the_nodes(base: list[int], shift: int, data: st.DataObject) -> None:
    moved = [min(max(x + shift, 0), 2**32 - 1) for x in base]
    for i in data.draw(st.lists(st.integers(min_value=0, max_value=len(base) - 1), max_size=len(base))):
        moved[i] = data.draw(st.integers(min_value=0, max_value=2**32 - 1))
    lines = array("I", moved)
    kept = ShiftedLines.of(lines, array("I", base))
    if kept is None:  # (more than a quarter elsewhere: kept as they came)
        return
    assert kept.array() == lines and list(kept) == moved and kept.tolist() == moved and len(kept) == len(moved)
    assert kept == lines and kept == ShiftedLines(kept.base, kept.shift, kept.at, kept.values)
    start = data.draw(st.integers(min_value=0, max_value=len(base)))
    stop = data.draw(st.integers(min_value=start, max_value=len(base)))
    assert kept.window(start, stop) == lines[start:stop]  # (what the comparison reads of one port)


def test_lines_mostly_elsewhere_or_of_another_length_stay_an_array() -> None:
    base = array("I", range(100, 140))
    assert ShiftedLines.of(array("I", range(200, 239)), base) is None
    assert ShiftedLines.of(array("I", [7] * 40), base) is None
    assert ShiftedLines.of(array("I"), array("I")) is None
    one_off = array("I", [x + 5 for x in base])
    one_off[3] = 0  # (below the base: its place moved back, not forward)
    kept = ShiftedLines.of(one_off, base)
    assert kept is not None and list(kept.at) == [3] and kept.array() == one_off


def test_the_stream_keeps_later_nodes_lines_moved_and_reads_them_back(snap: Path) -> None:  # noqa: F811
    nodes = sources([str(snap)])
    results = analyse_nodes(nodes, jobs=1)
    families = [f for r in results for f in r.families]
    assert sum(isinstance(f.lines, ShiftedLines) for f in families) >= 2  # (the small fleet: 4 of 9)
    plain = [analyse_nodes([n], jobs=1, memo=False)[0] for n in nodes]
    for r, alone in zip(results, plain, strict=True):
        for f, g in zip(r.families, alone.families, strict=True):
            assert isinstance(g.lines, array) and list(f.lines) == list(g.lines)
            assert [(p, list(x)) for p, x in f.port_lines()] == [(p, list(x)) for p, x in g.port_lines()]
            assert f == g and isinstance(f, FamilyDigest)


def test_the_comparison_reads_each_ports_lines(snap: Path) -> None:  # noqa: F811
    """audit._NodePorts: a port's lines found by its key, without an object per port, are FamilyDigest.port_lines'
    (a node's lines kept moved or as they came; the last port of a key, as the comparison reads a view)."""
    from iptrace.kube.audit import _NodePorts

    results = analyse_nodes(sources([str(snap)]), jobs=1)
    families = [f for r in results for f in r.families]
    positions = list(range(max(len(f.ports) for f in families)))
    for f in families:
        ports = _NodePorts(f, positions)
        expected = {p.key: (p, list(x)) for p, x in f.port_lines()}
        assert set(ports.index) == set(expected)
        for key, (digest, lines) in expected.items():
            port = ports.port(key)
            assert port.digest is digest and list(port.lines) == lines
    first = families[0]
    doubled = replace(first, ports=first.ports * 2, lines=array("I", [*first.lines, *(x + 1 for x in first.lines)]))
    ports = _NodePorts(doubled, list(range(len(doubled.ports))))
    assert all(list(ports.lines(k)) == x for k, (_p, x) in {p.key: (p, list(x)) for p, x in doubled.port_lines()}
               .items())
