"""bench/synth_nft.py writes what kube-proxy's nftables proxier writes: its transaction text equals the corpus'
expected rulesets (kube-proxy's own tests), and as root the kernel loads it and lists it as `form="list"`
says (up to the order of set elements, which is the kernel's business)."""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path

import pytest

from bench import netns
from bench.synth import EndpointSpec, PortSpec, ServiceSpec
from bench.synth_nft import render_nft
from tests.oracle.nft import requires_nft
from tests.test_synth import fixture_services

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus" / "kube-proxy-nft"
DUMPS = sorted(p for p in CORPUS.glob("current-*.json")
               if json.loads(p.read_text())["kind"] != "flows_only" and "TracePacket" not in p.name) \
    if CORPUS.is_dir() else []


def _lines(text: str) -> list[str]:
    return sorted(line for line in text.splitlines() if line.strip() and not line.startswith("#"))


@pytest.mark.skipif(not DUMPS, reason=f"conformance corpus not found at {CORPUS}")
@pytest.mark.parametrize("path", DUMPS, ids=lambda p: p.stem)
def test_transaction_is_kube_proxys(path: Path) -> None:
    data = json.loads(path.read_text())
    cfg = data["proxier_config"]
    nets = [ipaddress.ip_network(c) for c in cfg["nodePortAddresses"]]
    node_ips = [ip for ip in data["node_ips"] if any(ipaddress.ip_address(ip) in n for n in nets)]
    text = render_nft(fixture_services(data), node_ips=node_ips,
                      pod_cidr=data["pod_cidr_or_local_detector"].split()[1], service_cidrs=[cfg["serviceCIDRs"]],
                      ipv6=data["ip_family"] == "IPv6", form="transaction")
    assert _lines(text) == _lines(data["dump"])


SERVICES = [
    ServiceSpec("shop", "web", "198.19.0.10", [PortSpec("http", 80, node_port=30080, target_port=8080),
                                               PortSpec("alt", 81, target_port=8081)],
                type="NodePort", external_ips=["198.19.200.10"],
                endpoints=[EndpointSpec("198.18.128.10", 8080, ports={"alt": 8081}),
                           EndpointSpec("198.18.128.11", 8080, ports={"alt": 8081})]),
    ServiceSpec("shop", "lb", "198.19.0.12", [PortSpec("https", 443, node_port=30443, target_port=8443)],
                type="LoadBalancer", lb_ips=["198.19.201.12"], lb_source_ranges=["198.18.64.0/24", "198.18.0.0/24"],
                external_traffic_policy="Local", session_affinity_timeout=600,
                endpoints=[EndpointSpec("198.18.128.13", 8443, local=True), EndpointSpec("198.18.128.14", 8443)]),
    ServiceSpec("shop", "empty", "198.19.0.15", [PortSpec("http", 80, node_port=30085)], type="NodePort"),
]


def _sorted_elements(listing: str) -> str:
    """The listing with the items of each `elements = { … }` block and of each anonymous set sorted: the kernel
    orders a set's elements its own way (by hash, or by address for an interval set)."""
    def sort(match: re.Match[str]) -> str:
        items = sorted(i.strip() for i in match.group(2).split(",\n") for i in i.split(", ") if i.strip())
        return match.group(1) + "{ " + ", ".join(items) + " }"
    return re.sub(r"(elements = |!= |saddr |daddr )\{ (.*?) \}", sort, listing, flags=re.S)


@pytest.mark.root
@requires_nft()
def test_the_kernel_lists_it_as_form_list() -> None:
    for ipv6 in (False, True):
        services = SERVICES if not ipv6 else [ServiceSpec(
            "shop", "web6", "fd00:198:19::a", [PortSpec("http", 80, node_port=30080, target_port=8080)],
            type="NodePort", endpoints=[EndpointSpec("fd00:198:18:8000::a", 8080)])]
        kw = dict(node_ips=["198.18.0.1", "fd00:198:18::1"], pod_cidr="fd00:198:18:8000::/64" if ipv6
                  else "198.18.128.0/17", service_cidrs=["198.19.0.0/17", "fd00:198:19::/112"], ipv6=ipv6)
        with netns.netns("synthnft") as ns:
            loaded = netns.run(ns, ["nft", "-f", "-"], stdin=render_nft(services, form="transaction", **kw))
            assert loaded.returncode == 0, loaded.stderr
            listed = netns.run(ns, ["nft", "list", "ruleset"]).stdout
        assert _sorted_elements(listed) == _sorted_elements(render_nft(services, form="list", **kw))
