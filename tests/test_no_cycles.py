"""Generated code leaves no reference cycles behind: an audit worker frees each node by reference counting, and
its garbage collection between nodes (which scans everything the worker keeps) must find nothing to do. A
function kept in the namespace it was exec'd in is such a cycle."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest

from iptrace.dataplanes import load
from iptrace.iptables.memo import _key_function
from iptrace.kube.analysis import analyse

SAMPLES = Path(__file__).resolve().parent.parent / "sample_dumps"


def test_a_stage_plans_key_function_is_freed_without_a_collection() -> None:
    enabled = gc.isenabled()
    gc.disable()
    try:
        key = _key_function(frozenset({1}), frozenset({(6, 80)}), [((), (), False)] * 4)
        assert key.__globals__["hosts"] == frozenset({1})
        gone = weakref.ref(key)
        del key
        assert gone() is None
    finally:
        if enabled:
            gc.enable()


def _analyse(dump: Path, memo: dict[str, object]) -> int:
    """Service ports viewed in every family, as an audit worker reads and views a node (with its load memo)."""
    dataplane, ruleset = load(dump.read_text(), source=str(dump), memo=memo)
    return sum(len(analyse(dataplane, ruleset, family).view.services) for family in ruleset.families)


@pytest.mark.parametrize("name", ["nodeport-fb-backends.txt", "xlb-era.txt", "calico-and-kube-proxy.txt",
                                  "large-cluster-no-comments.txt"])
def test_an_iptables_node_analysed_again_leaves_no_cyclic_garbage(name: str) -> None:
    memo: dict[str, object] = {}
    assert _analyse(SAMPLES / name, memo)  # (once: grammars, generated readers and caches made for good)
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        assert _analyse(SAMPLES / name, memo)
        assert gc.collect() == 0
    finally:
        if enabled:
            gc.enable()
