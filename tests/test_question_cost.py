"""The shortcuts that keep one question cheap on a huge dump answer exactly as the plain readings they replace:
endpoint addresses looked for in the hairpin rules' text (and, past a few questions, from their set), the
per-Service-port chains listed by one regex pass, pod detection skipping the detector's repeated rule, the
KUBE-SERVICES index's reading of `-d a.b.c.d/32`, and a rule found by its line through its own table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from iptrace.iptables import load
from iptrace.iptables.comments import chain_key
from iptrace.iptables.facts import read
from iptrace.iptables.index import ChainIndex
from iptrace.iptables.kube_chains import KubeChains
from iptrace.iptables.layout import _Reader, read_layout
from iptrace.iptables.model import Ruleset
from iptrace.iptables.state import parse_net
from iptrace.layout import CLUSTER_IP
from tests.dumps import analysis

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = sorted((ROOT / "sample_dumps").glob("*.txt"))
LARGE = ROOT / "sample_dumps" / "large-cluster-no-comments.txt"


def _loaded(path: Path) -> Ruleset:
    return load(path.read_text(), source=path.name)


@pytest.mark.parametrize("path", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_service_chains_are_those_chain_key_names(path: Path) -> None:
    ruleset = _loaded(path)
    nat = ruleset.table("nat")
    want = {c.name: split for c in nat.chains if (split := chain_key(c.name)) is not None} if nat else {}
    got = KubeChains(ruleset).service_chains
    assert list(got.items()) == list(want.items())


def _hairpin_reference(ruleset: Ruleset) -> set[str]:
    nat = ruleset.table("nat")
    assert nat is not None
    out = set()
    for c in nat.chains:
        if c.name.startswith("KUBE-SEP-") and c.rules:
            found = re.match(r"-s ([^/ \n]+)", c.rules[0].text)
            if found is not None:
                out.add(found.group(1))
    return out


def test_endpoint_addresses_searched_then_from_their_set_answer_alike() -> None:
    ruleset = _loaded(LARGE)
    members = sorted(_hairpin_reference(ruleset))
    assert len(members) > 100
    # Members and near misses (a prefix of a member, a member with one more digit), past the searches' limit.
    asked = [x for ip in members[:40] for x in (ip, ip[:-1], ip + "7")] + ["", "1.2.3.4/32", "a b", members[0]]
    hairpins = KubeChains(ruleset).endpoint_ips
    assert [ip in hairpins for ip in asked] == [ip in set(members) for ip in asked]
    assert getattr(hairpins, "_set", None) is not None  # (the last ones came from the set)
    fresh = KubeChains(ruleset).endpoint_ips
    assert [ip in fresh for ip in asked[:10]] == [ip in set(members) for ip in asked[:10]]  # (searched)


def test_endpoint_addresses_are_found_in_kube_proxys_own_option_order() -> None:
    # kube-proxy's restore input writes the hairpin rule's comment before its -s (iptables-save prints -s first):
    # its endpoints are endpoints all the same, searched or from the set, and `explain` about one names its Service.
    text = (SAMPLES[0].parent / "nodeport-fb-backends.txt").read_text()
    moved = re.sub(r'^(-A KUBE-SEP-\S+) (-s \S+) (-m comment --comment "[^"]*")', r"\1 \3 \2", text, flags=re.M)
    assert '--comment "default/fb-backends:ka-port" -s 10.244.1.7/32' in moved
    ruleset = load(moved, source="moved.txt")
    members = _hairpin_reference(load(text))
    searched = KubeChains(ruleset).endpoint_ips
    assert all(ip in searched for ip in members) and "10.244.1.70" not in searched
    whole = KubeChains(ruleset).endpoint_ips
    assert [ip in whole for ip in [f"192.0.2.{i}" for i in range(40)]] == [False] * 40  # (past the searches)
    assert all(ip in whole for ip in members) and getattr(whole, "_set", None) is not None
    from iptrace.explain import Explainer

    report = Explainer(analysis(ruleset)).explain("10.244.1.7", 8001, proto="tcp")
    assert [d.id for e in report.explanations for d in e.diagnoses][:1] == ["not-a-service-address"]
    assert "an endpoint of default/fb-backends:ka-port" in report.explanations[0].diagnoses[0].summary


def _pod_detection_reference(r: _Reader) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """pod_detection reading every candidate rule (no shortcut)."""
    cidrs: list[str] = []
    ifaces: list[str] = []
    for chain in ("KUBE-SERVICES", *r.tables.service_chains):
        found = r.tables.nat_chains.get(chain)
        if found is None:
            continue
        short_circuit = chain.startswith(("KUBE-EXT-", "KUBE-XLB-"))
        for rule in found.rules:
            if "-j KUBE-SEP-" in rule.text or "-g KUBE-SEP-" in rule.text:
                break
            if "-s " not in rule.text and "-i " not in rule.text:
                continue
            f = read(rule)
            masq = f.target == "KUBE-MARK-MASQ"
            to_service = short_circuit and f.target.startswith("KUBE-SVC-")
            if f.src is not None and "/" in f.src and ((masq and f.src_neg) or (to_service and not f.src_neg)):
                if f.src not in cidrs and not f.src.startswith("127."):
                    cidrs.append(f.src)
            if f.in_iface is not None and ((masq and f.in_iface_neg) or (to_service and not f.in_iface_neg)):
                if f.in_iface not in ifaces:
                    ifaces.append(f.in_iface)
    return tuple(cidrs), tuple(ifaces)


POD_TEXT = """*nat
:KUBE-SERVICES - [0:0]
:KUBE-SVC-AAAAAAAAAAAAAAAA - [0:0]
:KUBE-SVC-BBBBBBBBBBBBBBBB - [0:0]
:KUBE-SVC-CCCCCCCCCCCCCCCC - [0:0]
:KUBE-EXT-CCCCCCCCCCCCCCCC - [0:0]
:KUBE-MARK-MASQ - [0:0]
-A KUBE-SVC-AAAAAAAAAAAAAAAA ! -s 10.244.0.0/16 -d 10.96.0.1/32 -p tcp -m tcp --dport 443 -j KUBE-MARK-MASQ
-A KUBE-SVC-BBBBBBBBBBBBBBBB ! -s 10.244.0.0/16 -d 10.96.0.2/32 -p tcp -m tcp --dport 80 ! -i cni0 -j KUBE-MARK-MASQ
-A KUBE-SVC-BBBBBBBBBBBBBBBB ! -s 10.244.0.0/16 -s 10.245.0.0/16 -d 10.96.0.2/32 -j KUBE-MARK-MASQ
-A KUBE-SVC-CCCCCCCCCCCCCCCC ! -s 10.244.0.0/16 ! --source 10.246.0.0/16 -d 10.96.0.3/32 -j KUBE-MARK-MASQ
-A KUBE-EXT-CCCCCCCCCCCCCCCC -s 10.244.0.0/16 -j KUBE-SVC-CCCCCCCCCCCCCCCC
-A KUBE-EXT-CCCCCCCCCCCCCCCC -s 10.247.0.0/16 -j KUBE-SVC-CCCCCCCCCCCCCCCC
COMMIT
"""


@pytest.mark.parametrize("path", [*SAMPLES, None], ids=[*(p.stem for p in SAMPLES), "repeated-options"])
def test_pod_detection_reads_what_every_rule_says(path: Path | None) -> None:
    ruleset = _loaded(path) if path is not None else load(POD_TEXT, source="pod.txt")
    r = _Reader(ruleset, ())
    assert r.pod_detection() == _pod_detection_reference(r)


def test_the_index_reads_a_host_as_parse_net_does() -> None:
    text = ("*nat\n:KUBE-SERVICES - [0:0]\n" + "".join(
        f"-A KUBE-SERVICES -d {d} -p tcp -m tcp --dport 80 -j ACCEPT\n"
        for d in ["10.0.0.1/32", "10.0.0.2/32", "300.0.0.1/32", "10.0.0.0/24", "010.0.0.3/32", "10.0.0.4",
                  "10.0.0.5/255.255.255.255", "10.0.0.6/32 -d 10.0.0.7/32", "10.0.0.8/32 -d 300.0.0.9/32"]
        * 2) + "COMMIT\n")
    rules = load(text, source="index.txt").chain("nat", "KUBE-SERVICES").rules  # type: ignore[union-attr]
    index = ChainIndex.build(rules, 4)
    assert index is not None
    for i, rule in enumerate(rules):
        hosts = [parse_net(t, 4) for t in re.findall(r"-d (\S+)", rule.text) if not t.startswith("300.")]
        want = hosts[-1][0] if hosts and hosts[-1] is not None and hosts[-1][1] == 0xFFFFFFFF else None
        filed = [key for key, positions in index.by_port.items() if i in positions]
        assert [k[2] for k in filed] == [want], rule.text


@pytest.mark.parametrize("path", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_a_rule_is_found_by_its_line(path: Path) -> None:
    ruleset = _loaded(path)
    by_line = {r.line: r for t in ruleset.tables for c in t.chains for r in c.rules}
    for line in [*by_line, 0, 1, max(by_line, default=0) + 1]:
        assert ruleset.rule_at(line) is by_line.get(line), line


def test_endpoint_keys_are_the_ports_sending_to_that_endpoint() -> None:
    ruleset = _loaded(LARGE)
    a = analysis(ruleset)
    layout = read_layout(ruleset)
    keys = [k for k, w in layout.ways if w.kind == CLUSTER_IP][:5]
    for key in keys:
        for ep in a.port_view(key).endpoints[:2]:
            got = layout.endpoint_keys(ep.ip)
            want = [k for k in layout.keys if any(e.ip == ep.ip for e in a.port_view(k).endpoints)]
            assert list(got) == want, ep.ip
