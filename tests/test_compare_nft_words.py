"""The API comparison of an nftables-mode node in its own words: what kube-proxy would have written there is a
service-ips element, a firewall-… chain, an affinity-… set, not iptables' `-A KUBE-SERVICES …`, KUBE-FW- or
`-m recent` (a missing-service said `-A KUBE-SERVICES -d 10.96.10.99 … -j service-…-default/new/tcp/http`, a
rule neither mode writes). And loadBalancerSourceRanges the API no longer has but the node's firewall-… chain
still checks are a policy-mismatch, as in iptables mode (the check looked for a KUBE-FW- chain only)."""

from __future__ import annotations

import copy

from bench.synth import EndpointSpec, PortSpec, ServiceSpec
from bench.synth_nft import render_nft
from iptrace import dataplanes
from iptrace.kube.analysis import analyse
from iptrace.kube.compare import compare_with_cluster
from tests.test_compare import NODES, POD_CIDR, base_services, cluster_of, dump, node_of, show, svc, with_local

NODE = "node-a"
IPTABLES_WORDS = ("KUBE-", "-m recent", "-A ", "-j ")


def findings(old: list[ServiceSpec], new: list[ServiceSpec]) -> list:  # type: ignore[type-arg]
    text = render_nft(with_local(old, NODE), node_ips=[NODES[NODE]], pod_cidr=POD_CIDR,
                      service_cidrs=["10.96.0.0/12"])
    dataplane, ruleset = dataplanes.load(text, source="nft-ruleset.txt")
    cluster = cluster_of(new)
    return compare_with_cluster(analyse(dataplane, ruleset, node_ips=[NODES[NODE]], cluster=cluster), cluster,
                                node_name=NODE)


def changed() -> tuple[list[ServiceSpec], list[ServiceSpec]]:
    old = base_services()
    new = copy.deepcopy(old)
    new.append(ServiceSpec("default", "new", "10.96.10.99", [PortSpec("http", 80, target_port=8080)],
                           endpoints=[EndpointSpec("10.244.2.77", 8080)]))
    svc(new, "web").cluster_ip = "10.96.10.77"
    svc(new, "affine").session_affinity_timeout = None
    svc(new, "fw").lb_source_ranges = []
    local = svc(new, "local-lb")
    local.endpoints = [ep for ep in local.endpoints if node_of(ep.ip) != NODE]  # (its local endpoint is gone)
    return old, new


def test_findings_about_an_nft_node_name_what_nftables_mode_writes() -> None:
    found = findings(*changed())
    got = {(f.id, f.service) for f in found}
    assert {("missing-service", "default/new:http"), ("address-mismatch", "default/web:http"),
            ("policy-mismatch", "default/affine")} <= got, show(found)
    assert ("stale-endpoints", "default/local-lb:https") in got, show(found)
    for f in found:
        assert not [w for w in IPTABLES_WORDS if w in f.summary + f.detail], (f.id, f.summary, f.detail)
    (missing,) = [f for f in found if f.id == "missing-service" and f.service == "default/new:http"]
    assert "10.96.10.99 . tcp . 80 : goto service-" in missing.detail and "service-ips" in missing.detail, missing


def test_source_ranges_the_api_dropped_are_a_mismatch_in_nftables_mode_too() -> None:
    old, new = changed()
    found = findings(old, new)
    assert ("policy-mismatch", "default/fw:http") in {(f.id, f.service) for f in found}, show(found)
    iptables = compare_with_cluster_iptables(old, new)
    assert ("policy-mismatch", "default/fw:http") in {(f.id, f.service) for f in iptables}, show(iptables)


def compare_with_cluster_iptables(old: list[ServiceSpec], new: list[ServiceSpec]) -> list:  # type: ignore[type-arg]
    from tests.test_compare import compare

    return compare(dump(old, NODE), cluster_of(new), NODE)


def test_an_address_the_api_has_but_this_node_does_not_is_said_so(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """nftables mode drops an unallocated service-CIDR address; with cluster data naming a Service there,
    not-a-service-address said 'no Service has the address' beside missing-service's 'the API has this Service
    port', and told to use the --cluster just given."""
    import json

    from click.testing import CliRunner

    from iptrace.cli import main
    from tests.test_compare import api_objects

    old, new = changed()
    nft = tmp_path / "nft-ruleset.txt"
    nft.write_text(render_nft(with_local(old, NODE), node_ips=[NODES[NODE]], pod_cidr=POD_CIDR,
                              service_cidrs=["10.96.0.0/12"]))
    cluster = tmp_path / "cluster.json"
    cluster.write_text(json.dumps({"kind": "List", "apiVersion": "v1", "items": list(api_objects(new))}))
    result = CliRunner().invoke(main, ["explain", str(nft), "--dst", "10.96.10.99:80", "--src", "pod",
                                       "--cluster", str(cluster), "-o", "json"])
    found = {d["id"]: d for d in json.loads(result.stdout)["diagnoses"]}
    assert "missing-service" in found, found
    assert "on this node" in found["not-a-service-address"]["summary"], found["not-a-service-address"]
    assert "--cluster" not in found["not-a-service-address"]["fix"], found["not-a-service-address"]
