"""compare_with_cluster on API data kube-proxy reads differently than a plain ClusterIP Service: Services that
became headless, ExternalName or of the other IP family (kube-proxy drops their rules though the port is still
in the spec), and cluster data collected without its EndpointSlices."""

from __future__ import annotations

from typing import Any

import pytest

from iptrace.kube.cluster import ClusterState
from iptrace.kube.cluster_json import state_from_objects
from tests.test_compare import api_objects, base_services, compare, dump, ids, show


def _state(objects: list[dict[str, Any]]) -> ClusterState:
    return state_from_objects(((o["kind"], o, f"test {o['kind']}") for o in objects), "test cluster")


def _web(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "web")


def _headless(spec: dict[str, Any]) -> None:
    spec.update(type="ClusterIP", clusterIP="None", clusterIPs=["None"])
    spec.pop("externalTrafficPolicy", None)
    for p in spec["ports"]:
        p.pop("nodePort", None)


def _external_name(spec: dict[str, Any]) -> None:
    for key in ("clusterIP", "clusterIPs", "externalTrafficPolicy", "ipFamilies", "ipFamilyPolicy"):
        spec.pop(key, None)
    spec.update(type="ExternalName", externalName="web.example.com")


def _ipv6_only(spec: dict[str, Any]) -> None:
    spec.update(clusterIP="fd00:10:96::a1", clusterIPs=["fd00:10:96::a1"], ipFamilies=["IPv6"])


@pytest.mark.parametrize(("change", "why"), [
    (_headless, "is headless (clusterIP None;"),
    (_external_name, "is of type ExternalName"),
    (_ipv6_only, "has no IPv4 ClusterIP"),
])
def test_rules_for_a_service_kube_proxy_no_longer_proxies_say_why(change: Any, why: str) -> None:
    services = base_services()
    objects = api_objects(services)
    change(_web(objects)["spec"])
    findings = compare(dump(services, "node-a"), _state(objects), "node-a")
    assert ("unknown-service", "warning", "default/web:http") in ids(findings), show(findings)
    detail = next(f for f in findings if f.id == "unknown-service").detail
    # The spec still has the TCP port named 'http': saying it has not sends the reader the wrong way.
    assert why in detail and "has no TCP port named" not in detail, detail


def test_cluster_data_without_endpointslices_does_not_call_every_endpoint_stale() -> None:
    # `--cluster services.json` alone (kubectl get --raw /api/v1/services): nothing says which endpoints the
    # Services have, so the node's endpoints cannot be judged; its other disagreements still can.
    services = base_services()
    objects = [o for o in api_objects(services) if o["kind"] != "EndpointSlice"]
    _web(objects)["spec"]["ports"][0]["nodePort"] = 30081
    findings = compare(dump(services, "node-a"), _state(objects), "node-a")
    assert ids(findings) == [("port-mismatch", "error", "default/web:http")], show(findings)


def test_data_of_one_namespace_says_nothing_of_the_others() -> None:
    # `--kubeconfig … --namespace kube-system` reads only kube-system's Services and EndpointSlices: the
    # node's Service ports of other namespaces are not "rules for a Service port the API does not have".
    services = base_services()
    objects = [o for o in api_objects(services)
               if o["kind"] == "Node" or o["metadata"].get("namespace") == "kube-system"]
    scoped = state_from_objects(((o["kind"], o, f"test {o['kind']}") for o in objects), "test cluster",
                                namespace="kube-system")
    assert compare(dump(services, "node-a"), scoped, "node-a") == []
    # A kube-system Service port the node has and the API no longer does is still said.
    objects = [o for o in objects if o["metadata"]["name"] != "kube-dns"]
    scoped = state_from_objects(((o["kind"], o, f"test {o['kind']}") for o in objects), "test cluster",
                                namespace="kube-system")
    findings = compare(dump(services, "node-a"), scoped, "node-a")
    assert {(f.id, f.service) for f in findings} == {("unknown-service", "kube-system/kube-dns:dns-tcp"),
                                                     ("unknown-service", "kube-system/kube-dns:dns/udp")}, \
        show(findings)


def test_same_node_hints_are_a_choice_kube_proxy_may_have_made() -> None:
    # trafficDistribution: PreferSameNode (beta, on by default since 1.34): the EndpointSlice controller gives
    # every endpoint a `hints.forNodes`, and kube-proxy balances over those hinted for its own node only.
    services = base_services()
    web = next(s for s in services if s.name == "web")
    objects = api_objects(services)
    for o in objects:
        if o["kind"] == "EndpointSlice" and o["metadata"]["labels"]["kubernetes.io/service-name"] == "web":
            for e in o["endpoints"]:
                e["hints"] = {"forNodes": [{"name": e["nodeName"]}]}
    node_a_only = [ep for ep in web.endpoints if ep.ip.startswith("10.244.1.")]
    assert node_a_only and len(node_a_only) < len(web.endpoints)
    web.endpoints = node_a_only
    findings = compare(dump(services, "node-a"), _state(objects), "node-a")
    assert findings == [], show(findings)
    # On a node no endpoint is hinted for, kube-proxy ignores the hints: the same rules are stale there.
    findings = compare(dump(services, "node-c"), _state(objects), "node-c")
    assert ("stale-endpoints", "warning", "default/web:http") in ids(findings), show(findings)
