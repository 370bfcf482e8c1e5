"""kube-proxy agrees: every flow of every fixture in ../shared/corpus/kube-proxy traces to what kube-proxy's
own test tracer (pkg/proxy/iptables/proxier_test.go, tracePacket) expects, under the comparison described in
the corpus README.

Where iptrace's answer differs in form because it models the kernel more faithfully, the comparison says
why (see `observed`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iptrace.dataplane import Packet, Trace
from iptrace.iptables import load
from iptrace.iptables.walk import Tracer

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus" / "kube-proxy"
FIXTURES = sorted(CORPUS.glob("*.json")) if CORPUS.is_dir() else []
FLOWS = [(f, i) for f in FIXTURES for i in range(len(json.loads(f.read_text())["flows"]))]


def observed(trace: Trace) -> tuple[list[str], bool]:
    """kube-proxy's `output` and `masq` for an iptrace trace.

    - DNAT outcomes give their destinations; DROP/REJECT/ACCEPT decided by a rule give the verdict.
    - An ACCEPT decided by a built-in chain's *policy* is reported as "" (nothing decided): kube-proxy's
      tracer does not model built-in chains' policies (current-TestTracePacket declares them as `-`, which
      iptables-restore keeps as ACCEPT), while iptrace, like the kernel, lets the policy decide.
    """
    out: list[str] = []
    for o in trace.outcomes:
        if o.verdict == "DNAT":
            item = o.destination or ""
        elif o.verdict in ("DROP", "REJECT") or (o.verdict == "ACCEPT" and o.decided_by is not None
                                                  and o.decided_by.policy is None):
            item = o.verdict
        else:
            continue
        if item not in out:
            out.append(item)
    return out, any(o.masquerade for o in trace.outcomes)


def describe(trace: Trace) -> str:
    lines = [f"entry={trace.entry}"]
    for o in trace.outcomes:
        lines.append(f"{o.verdict} {o.destination} p={o.probability:.4f} masq={o.masquerade} by={o.decided_by}")
        lines.extend(f"    {s.table:6} {s.line:4} {s.rule}" for s in o.path)
    lines.extend(f"  assumes: {a}" for a in trace.assumptions)
    return "\n".join(lines)


@pytest.mark.skipif(not FIXTURES, reason=f"kube-proxy corpus not found at {CORPUS} (a plain clone has no ../shared)")
@pytest.mark.parametrize(("fixture", "index"), FLOWS, ids=[f"{f.stem}[{i}]" for f, i in FLOWS])
def test_flow_matches_kube_proxy(fixture: Path, index: int) -> None:
    data = json.loads(fixture.read_text())
    flow = data["flows"][index]
    # The tracer's LOCAL addresses (corpus README): 127.0.0.1, ::1 and node_ips (v1.28: tracer_local_ips).
    local = data.get("tracer_local_ips") or data["node_ips"]
    tracer = Tracer(load(data["dump"], source=fixture.name), node_ips=local)
    trace = tracer.trace(Packet(flow["sourceIP"], flow["destIP"], int(flow["destPort"]), flow["protocol"].lower()))
    expected = [x for x in flow["output"].split(", ") if x] if flow["output"] else []
    got, masq = observed(trace)
    assert (sorted(got), masq) == (sorted(expected), flow["masq"]), (
        f"{fixture.name} flow {flow['name']!r}: expected {expected} masq={flow['masq']}, got {got} masq={masq}\n"
        + describe(trace))


@pytest.mark.skipif(not FIXTURES, reason=f"kube-proxy corpus not found at {CORPUS}")
@pytest.mark.parametrize("fixture", FIXTURES, ids=[f.stem for f in FIXTURES])
def test_every_fixture_traces_every_service_address(fixture: Path) -> None:
    """Fixtures without flows still trace cleanly: every `-d IP --dport P` of nat KUBE-SERVICES, from a pod
    and from outside, gives outcomes whose probabilities sum to 1."""
    data = json.loads(fixture.read_text())
    ruleset = load(data["dump"], source=fixture.name)
    tracer = Tracer(ruleset, node_ips=data.get("tracer_local_ips") or data["node_ips"])
    chain = ruleset.chain("nat", "KUBE-SERVICES")
    assert chain is not None
    v6 = ruleset.family == "ipv6"
    for rule in chain.rules:
        dst, dport = rule.option("-d"), rule.option("--dport")
        if dst is None or dport is None:
            continue
        for src in (("fd00:10::2", "2001:db8:ff::1") if v6 else ("10.0.0.2", "203.0.113.2")):
            proto = (rule.option("-p").value if rule.option("-p") else "tcp")  # type: ignore[union-attr]
            trace = tracer.trace(Packet(src, dst.value.split("/")[0], int(dport.value), proto))
            assert abs(sum(o.probability for o in trace.outcomes) - 1) < 1e-9, describe(trace)
