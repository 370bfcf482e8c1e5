"""The layout's per-chain summaries, kept across dumps by their rule texts (iptrace.iptables.kube_chains._SUMMARIES):
a dump read after another, whose Service chains differ in one rule, reads every Service port as a fresh read does
— nothing of the first dump's chains is taken for the second's."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iptrace.errors import IptraceError
from iptrace.iptables import kube_chains as summaries_module
from iptrace.iptables import load
from iptrace.iptables.layout import read_layout
from iptrace.iptables.model import Rule

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


# ------------------------------------------------------------------------------------------------ fast summaries
# A chain's summary reads only the rules that can add to it (kube_chains._summary): the rest give their target from
# their text. The same summary as reading every rule (_slow_summary, below), for every chain of the sample and corpus dumps
# and for made-up chains of the rules a Service chain holds, in any order, with any comments.

REALWORLD = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus" / "realworld"
SUMMARY_DUMPS = sorted([*SAMPLES.glob("*.txt"), *(REALWORLD.glob("*.txt") if REALWORLD.is_dir() else [])])


@pytest.mark.parametrize("path", SUMMARY_DUMPS, ids=[p.name for p in SUMMARY_DUMPS])
def test_the_summary_of_every_chain_is_the_summary_of_every_rule_read(path: Path) -> None:
    ruleset = load(path.read_text(encoding="utf-8"), lenient=True)
    for table in ruleset.tables:
        for chain in table.chains:
            assert summaries_module._summary(chain.rules) == _slow_summary(chain.rules)


_COMMENT = st.sampled_from(["ns/svc:http", "ns/svc:http has no local endpoints", "masquerade traffic",
                            "ns/svc:p cluster IP", 'a \\"quoted\\" word', "x y", ""])
_TARGET = st.sampled_from(["KUBE-SEP-AAAA", "KUBE-SEP-BBBB", "KUBE-SVL-AAAA", "KUBE-SVC-AAAA", "KUBE-EXT-AAAA",
                           "KUBE-MARK-DROP", "KUBE-MARK-MASQ", "KUBE-FW-AAAA", "ACCEPT"])
_RULE = st.tuples(
    st.none() | _COMMENT, st.none() | st.sampled_from(["tcp", "udp", "UDP"]),
    st.none() | st.sampled_from(["-s 10.0.0.0/8", "! -s 10.0.0.0/8", "-s 1.2.3.4/32"]),
    st.booleans(), st.none() | st.sampled_from(["--rcheck --seconds 10800", "--rcheck --seconds x", "--set"]),
    st.none() | st.sampled_from(["--mode random --probability 0.5", "--mode nth --every 2 --packet 0"]),
    _TARGET, st.booleans())


def _rule_text(spec: tuple[object, ...]) -> str:
    comment, proto, src, src_type, recent, statistic, target, last_comment = spec
    parts = []
    if src:
        parts.append(src)
    if proto:
        parts.append(f"-p {proto}")
    if comment is not None and not last_comment:
        parts.append(f'-m comment --comment "{comment}"')
    if src_type:
        parts.append("-m addrtype --src-type LOCAL")
    if recent:
        parts.append(f"-m recent {recent} --name KUBE-SEP-AAAA --mask 255.255.255.255 --rsource")
    if statistic:
        parts.append(f"-m statistic {statistic}")
    if comment is not None and last_comment:
        parts.append(f'-m comment --comment "{comment}"')
    return " ".join([*parts, "-j", str(target)])


@settings(max_examples=300, deadline=None)
@given(st.lists(_RULE, max_size=8))
def test_the_summary_of_any_chain_is_the_summary_of_every_rule_read(specs: list[tuple[object, ...]]) -> None:
    targets = ["KUBE-SEP-AAAA", "KUBE-SEP-BBBB", "KUBE-SVL-AAAA", "KUBE-SVC-AAAA", "KUBE-EXT-AAAA", "KUBE-FW-AAAA",
               "KUBE-MARK-DROP", "KUBE-MARK-MASQ"]
    text = "\n".join(["*nat", *(f":{t} - [0:0]" for t in [*targets, "KUBE-TEST"]),
                      *(f"-A KUBE-TEST {_rule_text(spec)}" for spec in specs), "COMMIT", ""])
    rules = load(text).chain("nat", "KUBE-TEST").rules  # type: ignore[union-attr]
    assert summaries_module._summary(rules) == _slow_summary(rules)


def _slow_summary(rules: Sequence[Rule]) -> summaries_module.ChainSummary:
    """kube_chains._summary with every rule read: the reference it is compared with."""
    facts = [summaries_module.read(r) for r in rules]
    name = next((parsed[0] for f in facts if f.comment
                 for parsed in (summaries_module.parse_comment(f.comment),) if parsed is not None), None)
    affinity = next((a for f in facts if f.recent_check and f.seconds is not None
                     for a in (summaries_module._number(f.seconds),) if a is not None), None)
    return summaries_module.ChainSummary(
        name,
        any(f.target == summaries_module.DROP_CHAIN and f.comment and "has no local endpoints" in f.comment for f in facts),
        next((f.proto.lower() for f in facts if f.proto), None),
        tuple(dict.fromkeys(f.target for f in facts if f.target.startswith(summaries_module.SEP))),
        tuple(f.src for f in facts if f.src is not None and not f.src_neg
              and f.target.startswith(("KUBE-EXT-", "KUBE-SVC-", "KUBE-XLB-"))),
        any(f.target.startswith("KUBE-SVL-") or f.src_type is not None for f in facts),
        affinity)
