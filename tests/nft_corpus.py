"""kube-proxy's nftables-mode fixtures (../shared/corpus/kube-proxy-nft) as rulesets to trace.

A fixture with a `dump` gives it in three forms: kube-proxy's transaction text, the kernel's listing (`nft_list`)
and its JSON (`nft_json`). Most fixtures are `flows_only` (`dump: null`): kube-proxy's test traced packets through
rules it never spelled out. For those the rules are synthesized from the fixture's Services and EndpointSlices by
bench/synth_nft.py — the synthesizer kube-proxy's own dumps check (tests/test_nft_corpus_flows.py compares it with
every fixture that has a dump) — as transaction text and as the kernel would list it.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.synth import EndpointSpec, PortSpec, ServiceSpec
from bench.synth_nft import render_nft
from iptrace.dataplane import Packet

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus" / "kube-proxy-nft"
FIXTURES = sorted(CORPUS.glob("*.json")) if CORPUS.is_dir() else []
FORMS = ("transaction", "listing", "json")
# The bundled nftables-mode samples, and the node address the sharing tests trace them for.
SAMPLES = sorted(p for p in Path(__file__).resolve().parents[1].joinpath("sample_dumps").glob("*nft*")
                 if p.suffix in (".nft", ".json"))
NODE_IP = "192.168.0.10"


def client_sources(v6: bool, node: str) -> tuple[str, ...]:
    """Clients the sharing tests trace from: a pod, an address elsewhere, outside, loopback and the node."""
    if v6:
        return ("fd00:10::2", "2001:db8:ff::9", "::1", node)
    return ("10.244.3.3", "10.0.0.2", "203.0.113.9", "127.0.0.1", node)


def sharing_probes(layout: Any, v6: bool, node: str, extra: Sequence[str] = (),
                   ) -> Iterator[tuple[str | None, Packet]]:
    """What the sharing tests trace, shared against unshared: (None, packet) for every way in of `layout` from
    each client (and each `extra` source of the family), (chain, packet) for each load-balancing chain entered
    directly from each client."""
    for _key, way in layout.ways:
        for src in (*client_sources(v6, node), *extra):
            if (":" in src) == v6:
                yield None, Packet(src, way.address or node, way.port, way.protocol)
    for sp in layout.service_ports:
        probe = next((w for w in sp.ways_in if w.address), None)
        if probe is None:
            continue
        for chain in (sp.cluster_chain, sp.local_chain):
            if chain is not None:
                for src in client_sources(v6, node):
                    yield chain, Packet(src, probe.address, probe.port, sp.protocol)


def read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def fixture_services(data: dict[str, Any]) -> list[ServiceSpec]:
    slices: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for sl in data["endpoints"]:
        slices.setdefault((sl["namespace"], sl["service"]), []).append(sl)
    services = []
    for s in data["services"]:
        endpoints = []
        for sl in slices.get((s["namespace"], s["name"]), []):
            ports = {p["name"]: p["port"] for p in sl["ports"]}
            for a in sl["addresses"]:
                endpoints.append(EndpointSpec(a["ip"], next(iter(ports.values())), local=a["isLocal"],
                                              ready=a["ready"], serving=a["serving"], terminating=a["terminating"],
                                              ports=ports))
        affinity = s["sessionAffinity"] == "ClientIP"
        services.append(ServiceSpec(
            s["namespace"], s["name"], s["clusterIP"],
            [PortSpec(p["name"], p["port"], p["protocol"], p["nodePort"], p["targetPort"]) for p in s["ports"]],
            type=s["type"] or "ClusterIP", external_ips=s["externalIPs"] or [], lb_ips=s["loadBalancerIPs"] or [],
            lb_source_ranges=s["loadBalancerSourceRanges"] or [],
            external_traffic_policy=s["externalTrafficPolicy"] or "Cluster",
            internal_traffic_policy=s["internalTrafficPolicy"] or "Cluster",
            session_affinity_timeout=(s["sessionAffinityTimeoutSeconds"] or 10800) if affinity else None,
            health_check_node_port=s["healthCheckNodePort"], endpoints=endpoints))
    return services


def _nodeport_ips(data: dict[str, Any], v6: bool) -> list[str]:
    """The node addresses kube-proxy puts in @nodeport-ips: those inside --nodeport-addresses, primary first."""
    cidrs = [ipaddress.ip_network(c, strict=False) for c in data["proxier_config"]["nodePortAddresses"]]
    out = []
    for ip in [data["node_ip"], *data["node_ips"]]:
        addr = ipaddress.ip_address(ip)
        if (addr.version == 6) == v6 and any(addr.version == n.version and addr in n for n in cidrs) \
                and ip not in out:
            out.append(ip)
    return out


def synthesized(data: dict[str, Any], form: str) -> str:
    """The ruleset kube-proxy wrote for a fixture, from its Services and EndpointSlices (`list` or `transaction`)."""
    cfg = data["proxier_config"]
    v6 = data["ip_family"] == "IPv6"
    detector = data["pod_cidr_or_local_detector"]
    cidrs = cfg.get("serviceCIDRs") or ""
    service_cidrs = [c.strip() for c in (cidrs.split(",") if isinstance(cidrs, str) else cidrs) if c.strip()]
    return render_nft(fixture_services(data), node_ips=_nodeport_ips(data, v6),
                      pod_cidr=detector.split()[1] if detector.startswith("DetectLocalByCIDR") else None,
                      service_cidrs=service_cidrs, ipv6=v6, masquerade_all=bool(cfg.get("masqueradeAll")),
                      form=form)


def texts(data: dict[str, Any]) -> dict[str, str]:
    """form → ruleset text: kube-proxy's own dump and the kernel's listings where the fixture has them, else the
    synthesized transaction and listing."""
    if data.get("dump"):
        out = {"transaction": data["dump"]}
        if data.get("nft_list"):
            out["listing"] = data["nft_list"]
        if data.get("nft_json"):
            out["json"] = json.dumps(data["nft_json"])
        return out
    return {"transaction": synthesized(data, "transaction"), "listing": synthesized(data, "list")}


def dumped_texts(forms: Sequence[str], json_indent: int | None = None) -> list[str]:
    """The texts in `forms` (of FORMS) of every fixture kube-proxy dumped, fixture by fixture; the JSON one written
    with `json_indent` (line by line mutations then meet its parts one at a time)."""
    out: list[str] = []
    for path in FIXTURES:
        data = read(path)
        if data.get("dump"):
            found = texts(data)
            if "json" in found and json_indent is not None:
                found["json"] = json.dumps(data["nft_json"], indent=json_indent)
            out += [found[form] for form in forms if form in found]
    return out
