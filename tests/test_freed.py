"""An audit frees each node's rules before the next by reference counting alone: a reference cycle anywhere in a
node's analysis would leave the whole ruleset (~10^6 objects on a big node) to the cyclic collector, whose scan
costs seconds per node."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from iptrace.collect.stream import Worker, sources

SAMPLES = ["flannel-and-kube-proxy.txt", "nodeport-fb-backends.txt", "flannel-and-kube-proxy-nft.nft",
           "nodeport-fb-backends-nft.nft", "nodeport-fb-backends-nft.json", "dual-stack-nft.nft"]


@pytest.mark.parametrize("name", SAMPLES)
def test_an_audited_node_leaves_no_rules_to_the_cyclic_collector(name: str) -> None:
    enabled = gc.isenabled()
    gc.disable()
    try:
        gc.collect()
        worker = Worker(None, False, False, True)
        [source] = sources([str(Path("sample_dumps", name))])
        result = worker._run(source)  # (run() would collect the garbage itself)
        assert result.error is None and result.families
        del result, worker
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left = sorted({type(o).__qualname__ for o in gc.garbage if type(o).__qualname__ in ("Rule", "Chain", "Table")
                       and type(o).__module__.startswith("iptrace.")})
        assert left == []
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if enabled:
            gc.enable()
