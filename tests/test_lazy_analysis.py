"""One question looks only at what its address touches: `explain` builds the views of the Service ports its
address, port and path meet, not the whole dump's. Its answers must equal those of the full analysis — for every
sample and corpus dump (iptables, and every form of every nftables fixture), every way in (and a targetPort, a nodePort on the ClusterIP, a service port on the
node, an endpoint and a stranger) from every kind of client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from iptrace.explain import Explainer
from iptrace.iptables import load
from iptrace.layout import HEALTH_CHECK
from iptrace.nftables import load as load_nft
from iptrace.render.explain import explain_to_json
from tests.dumps import analysis
from tests.nft_corpus import FIXTURES as NFT_FIXTURES
from tests.nft_corpus import read as read_nft
from tests.nft_corpus import texts as nft_texts

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = sorted((ROOT / "sample_dumps").glob("*.txt"))
FIXTURES = sorted((ROOT.parent / "shared" / "corpus" / "kube-proxy").glob("*.json"))


def _questions(full: Any) -> list[tuple[str, int, str]]:
    view = full.view
    out: list[tuple[str, int, str]] = []
    node = next(iter(full.node_ips), None) or next(iter(full.layout.node_ips), None)
    for sp in view.services:
        for e in sp.entries:
            if e.kind == HEALTH_CHECK:
                continue
            host = e.address or node
            if host is not None:
                out.append((host, e.port, e.protocol))
        if sp.cluster_ip:
            for ep in sp.endpoints[:1]:
                if ep.port:
                    out.append((sp.cluster_ip, ep.port, sp.protocol))  # a targetPort on the ClusterIP
                    out.append((ep.ip, ep.port, sp.protocol))  # an endpoint itself
            if sp.node_port:
                out.append((sp.cluster_ip, sp.node_port, sp.protocol))
            if sp.port and node is not None:
                out.append((node, sp.port, sp.protocol))  # a service port on the node
    family_v6 = view.family == "ipv6"
    out.append(("2001:db8:77::9" if family_v6 else "198.51.100.77", 8080, "tcp"))  # in no rule at all
    return sorted(set(out))[:60]


def _answers(a: Any, questions: list[tuple[str, int, str]]) -> list[Any]:
    explainer = Explainer(a)
    return [explain_to_json(explainer.explain(host, port, proto=proto)) for host, port, proto in questions]


def check(ruleset: Any, node_ips: list[str], family: str | None = None) -> None:
    full = analysis(ruleset, node_ips=node_ips, family=family)
    questions = _questions(full)
    # The index of ways in (dispatch rules only) is what each port's full layout says.
    layout = full.layout
    for key in layout.keys:
        assert tuple(w for k, w in layout.ways if k == key) == layout.service_port(key).ways_in, key
    lazy = analysis(ruleset, node_ips=node_ips, family=family)
    got = _answers(lazy, questions)
    assert len(lazy.views._ports) <= len(layout.keys)
    want = _answers(full, questions)  # `full` built its whole view above
    assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)


@pytest.mark.skipif(not SAMPLES, reason="sample_dumps/*.txt not generated yet")
@pytest.mark.parametrize("path", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_explain_on_samples_reads_only_what_it_needs_and_answers_alike(path: Path) -> None:
    scenarios = json.loads((ROOT / "sample_dumps" / "scenarios.json").read_text())
    ruleset = load(path.read_text(), source=path.name)
    ips = [ip for ip in scenarios.get(path.name, {}).get("node_ips", []) if (":" in ip) == (ruleset.family == "ipv6")]
    check(ruleset, ips)


@pytest.mark.skipif(not FIXTURES, reason="kube-proxy corpus not found (../shared/corpus)")
@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_explain_on_kube_proxy_fixtures_answers_alike(path: Path) -> None:
    fx = json.loads(path.read_text())
    if not fx.get("dump"):
        pytest.skip("fixture without a dump")
    ruleset = load(fx["dump"], source=path.name)
    ips = [ip for ip in fx.get("node_ips") or [] if (":" in ip) == (ruleset.family == "ipv6")]
    check(ruleset, ips)


NFT_CASES = [(f, form) for f in NFT_FIXTURES for form in nft_texts(read_nft(f))]


@pytest.mark.skipif(not NFT_CASES, reason="kube-proxy nftables corpus not found (../shared/corpus/kube-proxy-nft)")
@pytest.mark.parametrize(("path", "form"), NFT_CASES, ids=[f"{p.stem}-{form}" for p, form in NFT_CASES])
def test_explain_on_kube_proxy_nft_fixtures_answers_alike(path: Path, form: str) -> None:
    data = read_nft(path)
    ruleset = load_nft(nft_texts(data)[form], source=path.name)
    for family in ruleset.families:
        check(ruleset, [ip for ip in data["node_ips"] if (":" in ip) == (family == "ipv6")], family)


def test_one_question_builds_only_the_ports_it_meets() -> None:
    path = ROOT / "sample_dumps" / "large-cluster-no-comments.txt"
    a = analysis(load(path.read_text(), source=path.name))
    some = next(w for _k, w in a.layout.ways if w.kind == "clusterIP")
    Explainer(a).explain(str(some.address), some.port, proto=some.protocol)
    assert len(a.views._ports) <= 3, len(a.views._ports)
    assert len(a.layout._ports) < len(a.layout.keys) / 10
