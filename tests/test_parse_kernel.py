"""What real nodes print: dumps loaded into a fresh network namespace with iptables-restore (nft and legacy
backends, separately) and saved back by the kernel's own iptables-save must parse and round-trip."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench import netns
from iptrace.iptables import load, save
from tests.dumps import rule_tokens
from tests.oracle import requires_root_netns

pytestmark = [pytest.mark.root, requires_root_netns()]

SAMPLES = Path(__file__).resolve().parent.parent / "sample_dumps"
NFACCT_RE = re.compile(r"--nfacct-name\s+(\S+)")
IPSET_RE = re.compile(r"--match-set\s+(\S+)")


def _samples() -> list[Path]:
    return sorted(p for p in SAMPLES.glob("*.txt"))


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_samples_through_the_kernel(backend: str) -> None:
    samples = _samples()
    assert samples, "sample_dumps/ is empty"
    for sample in samples:
        text = sample.read_text()
        ipv6 = load(text).family == "ipv6"
        tool = ("ip6tables" if ipv6 else "iptables") + f"-{backend}"
        with netns.netns("parse") as ns:
            names = sorted(set(NFACCT_RE.findall(text)))
            if names:
                netns.ensure_nfacct(ns, names)
            sets = sorted(set(IPSET_RE.findall(text)))
            if sets:
                netns.ensure_ipsets(ns, "hash:net", sets, ipv6=ipv6)
            restored = netns.run(ns, [f"{tool}-restore"], stdin=text)
            assert restored.returncode == 0, f"{sample.name}: {restored.stderr}"
            for counters in (False, True):
                saved = netns.run(ns, [f"{tool}-save", *(["-c"] if counters else [])])
                assert saved.returncode == 0, saved.stderr
                kernel = saved.stdout
                r = load(kernel, source=f"{sample.name} via {tool}-save")
                assert load(save(r)) == r, sample.name
                assert rule_tokens(save(r)) == rule_tokens(kernel), sample.name
                # the kernel's text means the same rules as the sample (it may normalise spelling)
                assert r.rule_count == load(text).rule_count, sample.name
