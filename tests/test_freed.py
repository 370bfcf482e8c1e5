"""A node's analysis is freed by reference counting: an audit drops each node's ruleset before the next, and a
reference cycle anywhere in its analysis would leave the whole ruleset (~10^6 objects on a big node) to the
cyclic collector, whose scan costs seconds per node (tests/test_reuse.py checks the same with view reuse)."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from iptrace import dataplanes
from iptrace.dataplane import Packet
from iptrace.kube.analysis import analyse

SAMPLES = ["flannel-and-kube-proxy.txt", "nodeport-fb-backends.txt"]


def _rules_left_to_the_collector(name: str) -> list[str]:
    dataplane, ruleset = dataplanes.load(Path("sample_dumps", name).read_text(), source=name)
    analysis = analyse(dataplane, ruleset, "ipv4")
    assert analysis.view.services
    analysis.tracer.trace(Packet("203.0.113.1", "10.96.0.1", 443))
    del analysis, ruleset
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return sorted({type(o).__qualname__ for o in gc.garbage if type(o).__qualname__ in ("Rule", "Chain", "Table")
                       and type(o).__module__.startswith("iptrace.")})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


@pytest.mark.parametrize("name", SAMPLES)
def test_no_cycle_holds_the_rules(name: str) -> None:
    enabled = gc.isenabled()
    gc.disable()
    try:
        gc.collect()
        assert _rules_left_to_the_collector(name) == []
    finally:
        if enabled:
            gc.enable()
