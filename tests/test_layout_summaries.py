"""The layout's per-chain summaries, kept across dumps by their rule texts (iptrace.iptables.kube_chains._SUMMARIES):
a dump read after another, whose Service chains differ in one rule, reads every Service port as a fresh read does
— nothing of the first dump's chains is taken for the second's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from iptrace.errors import IptraceError
from iptrace.iptables import kube_chains as summaries_module
from iptrace.iptables import load
from iptrace.iptables.layout import read_layout

SAMPLES = Path(__file__).resolve().parent.parent / "sample_dumps"
_SERVICE_RULE = re.compile(r"^-A (KUBE-(?:SVC|SVL|EXT|FW|XLB)-\S+) ", re.M)

# One change a rule at a time, each to a value a Service port reads: the affinity timeout, a firewall source, a
# comment (the port's name), the protocol, the endpoint chain jumped to, an addrtype test (KUBE-EXT's Local).
MUTATIONS = [
    (r"--seconds (\d+)", lambda m: f"--seconds {int(m.group(1)) + 1}"),
    (r"-s (\d+\.\d+\.\d+)\.\d+/(\d+)", lambda m: f"-s {m.group(1)}.7/{m.group(2)}"),
    (r'--comment "([^"]*)"', lambda m: '--comment "other/name:port"'),
    (r"-p tcp", lambda m: "-p udp"),
    (r"-j KUBE-SEP-(\S+)", lambda m: "-j KUBE-MARK-MASQ"),
    (r"-m addrtype --src-type LOCAL ", lambda m: ""),
    (r"-j KUBE-SVL-", lambda m: "-j KUBE-SVC-"),
]


def ports(text: str) -> tuple[object, ...]:
    return read_layout(load(text)).service_ports


def fresh_ports(text: str) -> tuple[object, ...]:
    saved = dict(summaries_module._SUMMARIES)
    summaries_module._SUMMARIES.clear()
    try:
        return ports(text)
    finally:
        summaries_module._SUMMARIES.clear()
        summaries_module._SUMMARIES.update(saved)


def variants(text: str) -> list[str]:
    """The dump with one Service chain rule changed, per mutation that applies (the first rule it applies to)."""
    out = []
    lines = text.split("\n")
    for pattern, change in MUTATIONS:
        for i, line in enumerate(lines):
            if _SERVICE_RULE.match(line) and re.search(pattern, line):
                changed = re.sub(pattern, change, line, count=1)
                variant = "\n".join([*lines[:i], changed, *lines[i + 1:]])
                try:
                    load(variant)
                except IptraceError:  # (a jump to a chain this dump does not have)
                    continue
                out.append(variant)
                break
    return out


@pytest.mark.parametrize("name", sorted(p.name for p in SAMPLES.glob("*.txt")
                                        if "KUBE-SVC-" in p.read_text(encoding="utf-8")))
def test_a_chain_that_differs_in_one_rule_is_read_again(name: str) -> None:
    text = (SAMPLES / name).read_text(encoding="utf-8")
    found = variants(text)
    assert found
    for variant in found:
        ports(text)  # (its chains' summaries kept)
        assert ports(variant) == fresh_ports(variant)
        assert ports(text) == fresh_ports(text)


def test_summaries_are_kept_by_content_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (SAMPLES / "session-affinity.txt").read_text(encoding="utf-8")
    summaries_module._SUMMARIES.clear()
    first = ports(text)
    kept = len(summaries_module._SUMMARIES)
    assert kept
    assert ports(text) == first
    assert len(summaries_module._SUMMARIES) == kept  # (read again, nothing new: the same texts)
    monkeypatch.setattr(summaries_module, "SUMMARIES_LIMIT", 2)
    summaries_module._SUMMARIES.clear()
    assert ports(text) == first
    assert len(summaries_module._SUMMARIES) <= 2
