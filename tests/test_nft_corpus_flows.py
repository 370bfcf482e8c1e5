"""kube-proxy agrees, in nftables mode: every flow of every fixture in ../shared/corpus/kube-proxy-nft traces to
what kube-proxy's own test tracer (pkg/proxy/nftables/helpers_test.go, tracePacket) expects, on every form of the
ruleset: kube-proxy's transaction text, the kernel's listing (`nft list ruleset`) and its JSON (`nft -j`).

Compared as the corpus README says: the set of DNAT destinations and DROP/REJECT verdicts equals `output`, and
`masq` equals "some outcome is masqueraded". Fixtures whose test never spelled the ruleset out (`flows_only`) are
traced through the ruleset bench/synth_nft.py writes for their Services — checked here against every dump
kube-proxy did spell out — and, as root, through the kernel's own listings of it (loaded with `nft -f` into a
throwaway network namespace and listed back).

Where kube-proxy's simplified tracer and the kernel must differ, a test below shows why iptrace's answer is the
kernel's (`test_loopback_is_local_to_the_kernel`).
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

import pytest

from bench import netns
from iptrace.dataplane import Packet, Trace
from iptrace.nftables import DATAPLANE, load
from iptrace.nftables.walk import Tracer
from tests.nft_corpus import FIXTURES, read, synthesized, texts

NO_CORPUS = "kube-proxy nftables corpus not found (../shared/corpus/kube-proxy-nft)"
KERNEL_FORMS = ("kernel-listing", "kernel-json")


def _forms(path: Path) -> list[str]:
    data = read(path)
    own = list(texts(data))
    return own if data.get("dump") else [*own, *KERNEL_FORMS]


CASES = [(f, form) for f in FIXTURES for form in _forms(f)]


@lru_cache(maxsize=32)
def kernel_listings(transaction: str) -> tuple[str, str]:
    """(nft list ruleset, nft -j list ruleset) of `transaction` as the kernel lists it, from a network namespace
    created for it (and deleted)."""
    with netns.netns("nftcorpus") as ns:
        loaded = netns.run(ns, ["nft", "-f", "-"], stdin=transaction)
        if loaded.returncode:
            raise RuntimeError(f"nft -f refused the ruleset: {loaded.stderr.strip()}")
        listing = netns.run(ns, ["nft", "list", "ruleset"])
        as_json = netns.run(ns, ["nft", "-j", "list", "ruleset"])
    return listing.stdout, as_json.stdout


def ruleset_text(path: Path, form: str) -> str:
    data = read(path)
    if form in KERNEL_FORMS:
        why = netns.available()
        if why is not None:
            if os.environ.get("IPTRACE_ORACLE_REQUIRED") == "1":
                pytest.fail(f"IPTRACE_ORACLE_REQUIRED=1 but the kernel listing cannot be made: {why}")
            pytest.skip(f"the kernel's own listing needs network namespaces: {why}")
        listing, as_json = kernel_listings(synthesized(data, "transaction"))
        return listing if form == "kernel-listing" else as_json
    return texts(data)[form]


def observed(trace: Trace) -> tuple[list[str], bool]:
    """kube-proxy's `output` and `masq` for a trace: DNAT destinations and DROP/REJECT verdicts (its tracer has
    no ACCEPT: kube-proxy's nftables chains never accept, and a base chain's policy is not its answer)."""
    out: list[str] = []
    for o in trace.outcomes:
        item = o.destination if o.verdict == "DNAT" else o.verdict if o.verdict in ("DROP", "REJECT") else None
        if item and item not in out:
            out.append(item)
    return out, any(o.masquerade for o in trace.outcomes)


def describe(trace: Trace) -> str:
    lines = []
    for o in trace.outcomes:
        lines.append(f"{o.verdict} {o.destination} p={o.probability:.4f} masq={o.masquerade} by={o.decided_by}")
        lines.extend(f"    {s.table} {s.chain} {s.line} {s.rule}" for s in o.path)
    lines.extend(f"  assumes: {a}" for a in trace.assumptions)
    return "\n".join(lines)


@pytest.mark.skipif(not FIXTURES, reason=NO_CORPUS)
@pytest.mark.parametrize("path", [f for f in FIXTURES if read(f).get("dump") and read(f)["services"]],
                         ids=lambda p: p.stem)
def test_synthesizer_writes_what_kube_proxy_writes(path: Path) -> None:
    """bench/synth_nft.py, which stands in for kube-proxy where a fixture has no dump, writes exactly kube-proxy's
    ruleset (as a model: order-insensitive like kube-proxy's own comparison) for every fixture that has one."""
    data = read(path)
    want = load(data["dump"], source=path.name)
    assert load(synthesized(data, "transaction")) == want
    assert load(synthesized(data, "list")) == want
    assert load(data["nft_list"]) == want


@pytest.mark.skipif(not FIXTURES, reason=NO_CORPUS)
@pytest.mark.parametrize(("path", "form"), CASES, ids=[f"{p.stem}-{form}" for p, form in CASES])
def test_flows_match_kube_proxy(path: Path, form: str) -> None:
    data = read(path)
    ruleset = load(ruleset_text(path, form), source=f"{path.name} ({form})")
    tracer = Tracer(ruleset, node_ips=data["node_ips"])
    failures = []
    for flow in data["flows"]:
        trace = tracer.trace(Packet(flow["sourceIP"], flow["destIP"], int(flow["destPort"]),
                                    (flow["protocol"] or "TCP").lower()))
        assert sum(o.exact_probability for o in trace.outcomes) == 1
        expected = [x for x in flow["output"].split(", ") if x]
        got, masq = observed(trace)
        if (sorted(got), masq) != (sorted(expected), flow["masq"]):
            failures.append(f"flow {flow['name']!r}: expected {expected} masq={flow['masq']}, got {got} masq={masq}\n"
                            + describe(trace))
    assert not failures, f"{path.name} ({form}):\n" + "\n".join(failures)


@pytest.mark.skipif(not FIXTURES, reason=NO_CORPUS)
@pytest.mark.parametrize(("path", "form"), CASES, ids=[f"{p.stem}-{form}" for p, form in CASES])
def test_every_way_in_traces_to_shares_that_sum_to_one(path: Path, form: str) -> None:
    """Every way in the layout reads (ClusterIP, externalIP, LB IP, NodePort), from a pod, the node and outside:
    exact shares summing to 1, and the same outcomes from the transaction text as from this form."""
    data = read(path)
    ruleset = load(ruleset_text(path, form))
    reference = load(texts(data)["transaction"])
    for family in ruleset.families:
        layout = DATAPLANE.layout(ruleset, family)
        v6 = family == "ipv6"
        node = next(ip for ip in data["node_ips"] if (":" in ip) == v6)
        tracer, ref = Tracer(ruleset, node_ips=data["node_ips"]), Tracer(reference, node_ips=data["node_ips"])
        for _key, way in layout.ways:
            for src in (("fd00:10::2", "2001:db8:ff::9", node) if v6 else ("10.0.0.2", "203.0.113.9", node)):
                packet = Packet(src, way.address or node, way.port, way.protocol)
                trace = tracer.trace(packet)
                assert sum(o.exact_probability for o in trace.outcomes) == 1, describe(trace)
                other = ref.trace(packet)
                assert [(o.verdict, o.destination, o.exact_probability, o.masquerade, o.service)
                        for o in trace.outcomes] == [(o.verdict, o.destination, o.exact_probability, o.masquerade,
                                                      o.service) for o in other.outcomes], packet


@pytest.mark.skipif(not FIXTURES, reason=NO_CORPUS)
def test_loopback_is_local_to_the_kernel() -> None:
    """Where kube-proxy's tracer and the kernel part: its `fib … type local` is exactly `node_ips`; the kernel's
    includes loopback (127.0.0.0/8 is a local route), and a packet from 127.0.0.1 is the node's own.

    TestTracePacketV4's svc2 has externalTrafficPolicy=Local and no local endpoint: kube-proxy's tracer would send
    127.0.0.1 → NodePort 3001 to the `drop` of @no-endpoint-nodeports. In the kernel the packet leaves through
    output: nat-output → services → external-42NFTM6N, whose `fib saddr type local` rules hold for 127.0.0.1
    ("masquerade local traffic", "short-circuit local traffic"), so it is DNATed to svc2's endpoint and
    masqueraded — as a node process reaching an eTP=Local NodePort through loopback is.
    """
    path = next((f for f in FIXTURES if f.stem == "current-TestTracePacketV4"), None)
    if path is None:
        pytest.skip("current-TestTracePacketV4 is not in the corpus")
    data = read(path)
    for form in ("transaction", "listing", "json"):
        tracer = Tracer(load(texts(data)[form]), node_ips=data["node_ips"])
        trace = tracer.trace(Packet("127.0.0.1", "192.168.0.2", 3001))
        assert observed(trace) == (["10.180.0.2:80"], True), describe(trace)
        chains = [c for _, c in trace.outcomes[0].chains]
        assert chains[:2] == ["filter-output", "endpoints-check"] or "nat-output" in chains, chains
        rules = [s.rule for s in trace.outcomes[0].path]
        assert any("fib saddr type local goto service-42NFTM6N" in r for r in rules), rules


def test_kernel_json_is_read_like_the_listing() -> None:
    """`nft -j` of a ruleset: no lines (null in trace JSON), the kernel's handles instead."""
    path = next((f for f in FIXTURES if f.stem == "current-TestTracePacketV4"), None)
    if path is None:
        pytest.skip(NO_CORPUS)
    data = read(path)
    tracer = Tracer(load(json.dumps(data["nft_json"])), node_ips=data["node_ips"])
    trace = tracer.trace(Packet("10.0.0.2", "172.30.0.46", 80))
    outcome = trace.outcomes[0].to_json()
    assert outcome["verdict"] == "REJECT" and outcome["decided_by"]["line"] is None
    assert isinstance(outcome["decided_by"]["handle"], int)
    assert all(step["line"] is None for step in outcome["path"])
    assert [s.kind for s in trace.outcomes[0].path][-2:] == ["no-endpoints", "no-endpoints"]
