"""The nftables-mode samples (sample_dumps/*.nft and the JSON twin): they are what bench/make_samples_nft.py
makes today (as root: the kernel lists the same text again), scenarios.json and the README describe every one,
each gives back the Service ports it was generated from, the JSON twin answers as the text does, and the
golden outputs (services text/json/dot/mermaid per family, parse summary) hold."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bench.make_samples_nft import scenarios
from bench.synth import ServiceSpec
from iptrace import dataplanes
from iptrace.kube.analysis import analyse
from iptrace.render.graph import render_dot, render_mermaid
from iptrace.render.json import dumps
from iptrace.render.services import render_services_text, view_to_json
from tests.oracle.nft import requires_nft

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_dumps"
GOLDEN = Path(__file__).resolve().parent / "golden"
SCENARIOS: dict[str, Any] = json.loads((SAMPLES / "scenarios.json").read_text())
NFT_FILES = sorted(SAMPLES.glob("*.nft"))
FAMILIES = {"IPv4": "ipv4", "IPv6": "ipv6"}


def load(path: Path) -> tuple[Any, Any]:
    return dataplanes.load(path.read_text(), source=path.name)


def test_every_sample_is_described() -> None:
    readme = (SAMPLES / "README.md").read_text()
    made = {sc.file: sc for sc in scenarios()}
    assert {p.name for p in NFT_FILES} == set(made)
    for sc in made.values():
        entry = SCENARIOS[sc.file]
        assert entry["dataplane"] == "nftables" and f"`{sc.file}`" in readme
        assert [ServiceSpec.from_dict(s).to_dict() for s in entry["services"]] == [s.to_dict() for s in sc.services]
        if sc.json_twin:
            assert (SAMPLES / sc.json_twin).is_file() and f"`{sc.json_twin}`" in readme


@pytest.mark.root
@requires_nft()
def test_samples_are_what_the_kernel_lists_today() -> None:
    from bench.make_samples_nft import produce

    for sc in scenarios():
        listing, as_json = produce(sc)
        assert (SAMPLES / sc.file).read_text() == listing, f"{sc.file} is stale: python -m bench.make_samples"
        if sc.json_twin:
            assert json.loads((SAMPLES / sc.json_twin).read_text()) == json.loads(as_json or "")


@pytest.mark.parametrize("path", NFT_FILES, ids=lambda p: p.stem)
def test_sample_gives_back_its_scenario(path: Path) -> None:
    scenario = SCENARIOS[path.name]
    dataplane, ruleset = load(path)
    assert dataplane.name == "nftables"
    assert {FAMILIES[f] for f in scenario["families"]} <= set(ruleset.families)  # (flannel adds an ip6 table)
    for family_name, expected in scenario["service_ports"].items():
        view = analyse(dataplane, ruleset, FAMILIES[family_name], node_ips=scenario["node_ips"]).view
        assert view.proxy.dataplane == "nftables" and view.proxy.mode == "nftables"
        got = {s.label + ("" if s.protocol == "tcp" else f"/{s.protocol}"): s for s in view.services}
        want = {e["service_port"] + ("" if e["protocol"] == "tcp" else f"/{e['protocol']}"): e for e in expected}
        assert set(got) == set(want), path.name
        for key, exp in want.items():
            s, where = got[key], f"{path.name} {family_name} {key}"
            assert (s.protocol, s.cluster_ip, s.port, s.node_port) == (
                exp["protocol"], exp["cluster_ip"], exp["port"], exp["node_port"]), where
            # nftables mode writes a LoadBalancer IP without source ranges like an externalIP.
            assert set(s.external_ips) | set(s.lb_ips) == set(exp["external_ips"]) | set(exp["lb_ips"]), where
            assert s.health_check_node_port is None, where
            if not exp["has_endpoints"]:
                assert s.no_endpoints and not s.endpoints, where
                continue
            assert set(s.chains) >= set(exp["chains"].values()), where
            assert sorted(s.lb_source_ranges) == sorted(exp["lb_source_ranges"]), where
            assert s.session_affinity_timeout == exp["session_affinity_timeout"], where
            if s.node_port or s.lb_ips or s.external_ips:
                assert s.external_traffic_policy == exp["external_traffic_policy"], where
            in_cluster = sorted(e.address for e in s.endpoints if e.in_cluster_chain)
            if "svc" in exp["chains"]:
                assert in_cluster == sorted(e["endpoint"] for e in exp["endpoints"] if e["ready"]), where
                assert all(abs(e.probability - 1 / len(in_cluster)) < 1e-12 for e in s.endpoints
                           if e.in_cluster_chain), where  # numgen: exact 1/N
            assert sorted(e.address for e in s.endpoints if e.local) == sorted(
                e["endpoint"] for e in exp["endpoints"] if e["local"]
                and (exp["external_traffic_policy"] == "Local" or exp["internal_traffic_policy"] == "Local")), where


def test_the_json_twin_answers_as_the_text() -> None:
    for sc in scenarios():
        if not sc.json_twin:
            continue
        text_dp, text = load(SAMPLES / sc.file)
        json_dp, as_json = load(SAMPLES / sc.json_twin)
        assert json_dp.name == text_dp.name == "nftables"
        a = analyse(text_dp, text, "ipv4", node_ips=sc.node_ips).view
        b = analyse(json_dp, as_json, "ipv4", node_ips=sc.node_ips).view
        strip = {"lines": [], "line": 0, "source": ""}
        assert _without(view_to_json(a), strip) == _without(view_to_json(b), strip)


def _without(data: Any, keys: dict[str, Any]) -> Any:
    """`data` with the listed keys set to a fixed value everywhere (lines differ between text and JSON) and the
    kernel handles JSON input gives in their place left out."""
    if isinstance(data, dict):
        return {k: (keys[k] if k in keys else _without(v, keys)) for k, v in data.items()
                if k not in ("handle", "handles")}
    if isinstance(data, list):
        return [_without(v, keys) for v in data]
    return data


RENDERERS: dict[str, Callable[[Any], str]] = {
    "services.txt": render_services_text,
    "services.json": lambda v: dumps(view_to_json(v)),
    "services.dot": render_dot,
    "services.mmd": render_mermaid,
}


@pytest.mark.parametrize("path", NFT_FILES, ids=lambda p: p.stem)
def test_golden(path: Path, golden: Callable[[Path | str, str], None]) -> None:
    dataplane, ruleset = load(path)
    golden(GOLDEN / path.stem / "parse.txt", dataplane.summary(ruleset))
    for family in ruleset.families:
        view = analyse(dataplane, ruleset, family).view
        suffix = "" if family == ruleset.families[0] else f"-{family}"
        for file, render in RENDERERS.items():
            stem, ext = file.split(".")
            golden(GOLDEN / path.stem / f"{stem}{suffix}.{ext}", render(view))


def test_node_addresses_revealed_by_the_rules_are_the_nodes_own() -> None:
    """Without --node-ip the NodePorts are traced to the address @nodeport-ips reveals, and the tracer must take
    that address as the node's own: an outside client of an eTP=Local Service without a local endpoint is
    dropped at the node (nodeport-endpoints-check, what the kernel does), not forwarded on."""
    dataplane, ruleset = load(SAMPLES / "etp-local-no-local-endpoints-nft.nft")
    view = analyse(dataplane, ruleset, "ipv4").view
    port = next(s for s in view.services if s.label == "ingress-nginx/ingress-nginx-controller:http")
    node_port = next(e for e in port.entries if e.kind == "nodePort")
    assert node_port.verdict == "DROP", node_port


def test_the_json_twins_parse_summary(golden: Callable[[Path | str, str], None]) -> None:
    for sc in scenarios():
        if sc.json_twin:
            dataplane, ruleset = load(SAMPLES / sc.json_twin)
            golden(GOLDEN / Path(sc.json_twin).stem / "parse-json.txt", dataplane.summary(ruleset))


@pytest.mark.parametrize("sc", scenarios(), ids=lambda sc: sc.file)
def test_kube_proxys_transaction_answers_as_the_kernels_listing(sc: Any) -> None:
    """The text kube-proxy sends (its transaction) and what the kernel lists back describe one ruleset: the Service
    view of each family is the same, lines and source aside (the listing also holds the other tables)."""
    listed_dp, listed = load(SAMPLES / sc.file)
    tx_dp, tx = dataplanes.load(sc.transaction(), source=sc.file)
    strip = {"lines": [], "line": 0, "decided_by_line": 0, "source": ""}
    for family in tx.families:
        a = view_to_json(analyse(tx_dp, tx, family, node_ips=sc.node_ips).view)
        b = view_to_json(analyse(listed_dp, listed, family, node_ips=sc.node_ips).view)
        # (only the listing holds the other tables: kube-proxy's iptables-mode rules too, where the node has them)
        both = [w for w in b["warnings"] if w.startswith("kube-proxy's rules are here in both proxy modes")]
        assert bool(both) == ("KUBE-SERVICES" in sc.iptables and family == "ipv4"), (sc.file, family)
        b["warnings"] = [w for w in b["warnings"] if w not in both]
        assert _without(a, strip) == _without(b, strip), (sc.file, family)
