"""A Service port's ways in are made once per layout (iptrace.iptables.layout._Reader.ways_in: the layout's index
lists them and the port's layout holds them): the layouts of the sample dumps, the corpus's and a fleet node's read
as when each asks its group's seeds anew."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import fleet, synth
from iptrace.errors import IptraceError
from iptrace.iptables import layout as layout_module
from iptrace.iptables import load
from iptrace.iptables.layout import read_layout

ROOT = Path(__file__).resolve().parent.parent
DUMPS = sorted((ROOT / "sample_dumps").glob("*.txt"))
CORPUS = ROOT.parent / "shared" / "corpus"
FIXTURES = sorted((CORPUS / "kube-proxy").glob("*.json"))
REALWORLD = sorted((CORPUS / "realworld").glob("*.txt"))


def _read(text: str) -> tuple[Any, ...] | None:
    try:
        layout = read_layout(load(text, lenient=True))
    except IptraceError:
        return None
    return layout.ways, layout.service_ports


def _both(text: str) -> None:
    made_once = _read(text)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(layout_module._Reader, "ways_in", lambda self, g: g.seeds.ways())
        anew = _read(text)
    assert made_once == anew


@pytest.mark.parametrize("path", DUMPS, ids=lambda p: p.name)
def test_sample_dumps(path: Path) -> None:
    _both(path.read_text(encoding="utf-8", errors="replace"))


def test_corpus() -> None:
    if not FIXTURES and not REALWORLD:
        pytest.skip("no conformance corpus beside the repository (../shared/corpus)")
    dumps = [json.loads(p.read_text()).get("dump") for p in FIXTURES]
    for text in [*(d for d in dumps if d), *(p.read_text(encoding="utf-8", errors="replace") for p in REALWORLD)]:
        _both(text)


def test_a_fleet_node() -> None:
    text = fleet.node_dump(synth.scale(30, 3, 2), 1)
    ways, ports = _read(text) or ((), ())
    assert ways and ports
    _both(text)
    # (the index's ways and the ports' are the same objects: made once)
    by_port = {p.key: p.ways_in for p in ports}
    assert all(any(w is x for x in by_port[key]) for key, w in ways)
