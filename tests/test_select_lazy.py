"""`services --namespace/--service/--address` builds only the Service ports that may match (their layouts say who
they are and where they are reached; the layout's endpoint index which have an endpoint at an address). The
answer must equal the whole view narrowed by the same filters — a view, or the same refusal — for every sample
and corpus dump (iptables, and every form of every nftables fixture), for every namespace, Service, Service
port, address and address:port the view has, for combinations of them, and for names and addresses it has
not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from iptrace import dataplanes
from iptrace.errors import InputError
from iptrace.iptables import load
from iptrace.kube.select import select, select_ports
from tests.dumps import analysis
from tests.nft_corpus import FIXTURES as NFT_FIXTURES
from tests.nft_corpus import read as read_nft
from tests.nft_corpus import texts as nft_texts

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = sorted(p for p in (ROOT / "sample_dumps").iterdir() if p.suffix in (".txt", ".nft", ".json")
                 and p.name not in ("scenarios.json", "README.md"))
FIXTURES = sorted((ROOT.parent / "shared" / "corpus" / "kube-proxy").glob("*.json"))


def _filters(view: Any) -> list[dict[str, str]]:
    out: list[dict[str, str]] = [{"namespace": "nope"}, {"service": "default/nope"}, {"service": "nope"},
                                 {"address": "198.51.100.77"}, {"address": "2001:db8:77::9"}]
    for s in view.services:
        out += [{"namespace": s.namespace}, {"service": f"{s.namespace}/{s.name}"}, {"service": s.name},
                {"service": f"{s.namespace}/{s.name}:{s.port_name}"}, {"service": f"{s.namespace}/{s.name}:nope"}]
        for e in s.entries:
            if e.address:
                out += [{"address": e.address}, {"address": f"{e.address}:{e.port}"},
                        {"address": e.address, "namespace": s.namespace},
                        {"address": e.address, "service": "default/kubernetes"}]
        for ep in s.endpoints[:2]:
            out += [{"address": ep.ip}, {"address": f"{ep.ip}:{ep.port}"},
                    {"address": ep.ip, "service": f"{s.namespace}/{s.name}"}]
    unique = {json.dumps(f, sort_keys=True): f for f in out}
    return list(unique.values())[:120]


def _answer(fn: Any, subject: Any, filters: dict[str, str]) -> Any:
    try:
        return fn(subject, source="d", **filters)
    except InputError as exc:
        return str(exc)


def check(ruleset: Any, node_ips: list[str], family: str | None = None) -> None:
    full = analysis(ruleset, node_ips=node_ips, family=family)
    for filters in _filters(full.view):
        lazy = analysis(ruleset, node_ips=node_ips, family=family)
        got = _answer(select_ports, lazy, filters)
        want = _answer(select, full.view, filters)
        assert got == want, filters
        if not isinstance(got, str):
            assert got.warnings == full.view.warnings


@pytest.mark.parametrize("path", SAMPLES, ids=[p.name for p in SAMPLES])
def test_filters_on_samples_build_only_what_may_match_and_answer_alike(path: Path) -> None:
    scenarios = json.loads((ROOT / "sample_dumps" / "scenarios.json").read_text())
    _dataplane, ruleset = dataplanes.load(path.read_text(), source=path.name)
    for family in ruleset.families:
        ips = [ip for ip in scenarios.get(path.name, {}).get("node_ips", []) if (":" in ip) == (family == "ipv6")]
        check(ruleset, ips, family)


@pytest.mark.skipif(not FIXTURES, reason="kube-proxy corpus not found (../shared/corpus)")
@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_filters_on_kube_proxy_fixtures_answer_alike(path: Path) -> None:
    fx = json.loads(path.read_text())
    if not fx.get("dump"):
        pytest.skip("fixture without a dump")
    ruleset = load(fx["dump"], source=path.name)
    check(ruleset, [ip for ip in fx.get("node_ips") or [] if (":" in ip) == (ruleset.family == "ipv6")])


NFT_CASES = [(f, form) for f in NFT_FIXTURES for form in nft_texts(read_nft(f))]


@pytest.mark.skipif(not NFT_CASES, reason="kube-proxy nftables corpus not found (../shared/corpus/kube-proxy-nft)")
@pytest.mark.parametrize(("path", "form"), NFT_CASES, ids=[f"{p.stem}-{form}" for p, form in NFT_CASES])
def test_filters_on_kube_proxy_nft_fixtures_answer_alike(path: Path, form: str) -> None:
    data = read_nft(path)
    _dataplane, ruleset = dataplanes.load(nft_texts(data)[form], source=path.name)
    for family in ruleset.families:
        check(ruleset, [ip for ip in data["node_ips"] if (":" in ip) == (family == "ipv6")], family)


def test_one_service_builds_only_its_ports() -> None:
    path = ROOT / "sample_dumps" / "large-cluster-no-comments.txt"
    a = analysis(load(path.read_text(), source=path.name))
    some = a.layout.service_port(a.layout.keys[7])
    chain = some.cluster_chain or some.chains[0]
    narrowed = select_ports(a, service=chain)  # (no comments: a Service port is named by its chain)
    assert [s.chains for s in narrowed.services] == [some.chains]
    assert len(a.views._ports) == 1
    address = next(w.address for w in some.ways_in if w.address)
    assert select_ports(a, address=address).services
    assert len(a.views._ports) <= 3, len(a.views._ports)
