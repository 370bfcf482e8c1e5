"""compare_with_cluster: node dumps rendered by bench/synth.py (kube-proxy's own layout) against API objects
shaped like `kubectl get --raw` output (checked with kubernetes-validate), disagreeing in each way kube-proxy
can fall behind: endpoints, Services, ports, addresses, policies, and its node name."""

from __future__ import annotations

import copy
import re
from dataclasses import replace
from typing import Any

import pytest

from bench.synth import EndpointSpec, PortSpec, ServiceSpec, render
from iptrace.iptables import load
from iptrace.iptables.model import Ruleset
from iptrace.kube.cluster import ClusterState
from iptrace.kube.cluster_json import state_from_objects
from iptrace.kube.compare import Finding, compare_with_cluster
from tests.dumps import analysis

NODES = {"node-a": "192.168.49.2", "node-b": "192.168.49.3", "node-c": "192.168.49.4"}
ZONES = {"node-a": "zone-a", "node-b": "zone-b", "node-c": "zone-a"}
POD_CIDR = "10.244.0.0/16"


# ------------------------------------------------------------------------------------------------ the cluster


def base_services() -> list[ServiceSpec]:
    """Six Service kinds; `local` on the endpoints is filled in per node by `dump`."""
    return [
        ServiceSpec("default", "web", "10.96.10.1", [PortSpec("http", 80, node_port=30080, target_port=8080)],
                    type="NodePort", endpoints=[EndpointSpec("10.244.1.5", 8080), EndpointSpec("10.244.2.5", 8080)]),
        ServiceSpec("default", "local-lb", "10.96.10.2",
                    [PortSpec("https", 443, node_port=30443, target_port=8443)], type="LoadBalancer",
                    lb_ips=["203.0.113.10"], external_traffic_policy="Local", health_check_node_port=32000,
                    endpoints=[EndpointSpec("10.244.1.7", 8443), EndpointSpec("10.244.2.7", 8443)]),
        ServiceSpec("kube-system", "kube-dns", "10.96.0.10",
                    [PortSpec("dns", 53, "UDP", target_port=53), PortSpec("dns-tcp", 53, "TCP", target_port=53)],
                    endpoints=[EndpointSpec("10.244.1.2", 53), EndpointSpec("10.244.3.2", 53)]),
        ServiceSpec("default", "affine", "10.96.10.4", [PortSpec("", 80, target_port=9376)],
                    session_affinity_timeout=600, endpoints=[EndpointSpec("10.244.2.9", 9376)]),
        ServiceSpec("default", "fw", "10.96.10.5", [PortSpec("http", 80, node_port=30085, target_port=8080)],
                    type="LoadBalancer", lb_ips=["203.0.113.11"], lb_source_ranges=["198.51.100.0/24"],
                    endpoints=[EndpointSpec("10.244.3.4", 8080)]),
        ServiceSpec("default", "itp", "10.96.10.6", [PortSpec("http", 80, target_port=8080)],
                    internal_traffic_policy="Local", endpoints=[EndpointSpec("10.244.1.8", 8080)]),
    ]


def node_of(ip: str) -> str:
    """Pod IPs 10.244.N.x (fd00:244:N::x) run on the N-th node (the usual per-node pod CIDRs)."""
    if ":" in ip:
        return {"1": "node-a", "2": "node-b", "3": "node-c"}[ip.split(":")[2]]
    return {"1": "node-a", "2": "node-b", "3": "node-c"}[ip.split(".")[2]]


def _port_of(spec: ServiceSpec, port: PortSpec, ep: EndpointSpec) -> int:
    if ep.ports is not None and port.name in ep.ports:
        return ep.ports[port.name]
    return port.target_port if isinstance(port.target_port, int) else ep.port


def service_object(spec: ServiceSpec) -> dict[str, Any]:
    ports = []
    for p in spec.ports:
        entry: dict[str, Any] = {"protocol": p.protocol, "port": p.port,
                                 "targetPort": p.target_port if p.target_port is not None else p.port}
        if p.name:
            entry["name"] = p.name
        if p.node_port and spec.type in ("NodePort", "LoadBalancer"):
            entry["nodePort"] = p.node_port
        ports.append(entry)
    spec_obj: dict[str, Any] = {
        "ports": ports, "selector": {"app": spec.name}, "clusterIP": spec.cluster_ip,
        "clusterIPs": [spec.cluster_ip], "type": spec.type,
        "sessionAffinity": "ClientIP" if spec.session_affinity_timeout is not None else "None",
        "ipFamilies": ["IPv6" if ":" in spec.cluster_ip else "IPv4"], "ipFamilyPolicy": "SingleStack",
        "internalTrafficPolicy": spec.internal_traffic_policy,
    }
    if spec.session_affinity_timeout is not None:
        spec_obj["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": spec.session_affinity_timeout}}
    if spec.type in ("NodePort", "LoadBalancer"):
        spec_obj["externalTrafficPolicy"] = spec.external_traffic_policy
    if spec.external_ips:
        spec_obj["externalIPs"] = list(spec.external_ips)
    if spec.lb_source_ranges:
        spec_obj["loadBalancerSourceRanges"] = list(spec.lb_source_ranges)
    if spec.health_check_node_port and spec.type == "LoadBalancer" and spec.external_traffic_policy == "Local":
        spec_obj["healthCheckNodePort"] = spec.health_check_node_port
    status: dict[str, Any] = {"loadBalancer": {}}
    if spec.lb_ips:
        status["loadBalancer"]["ingress"] = [{"ip": ip, "ipMode": "VIP"} for ip in spec.lb_ips]
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": spec.name, "namespace": spec.namespace, "resourceVersion": "1000",
                         "uid": f"00000000-0000-4000-8000-{abs(hash(spec.name)) % 10**12:012d}",
                         "labels": {"app": spec.name}},
            "spec": spec_obj, "status": status}


def slice_objects(spec: ServiceSpec) -> list[dict[str, Any]]:
    """EndpointSlices as the controller writes them: one per distinct set of endpoint ports."""
    groups: dict[tuple[tuple[str, str, int], ...], list[EndpointSpec]] = {}
    for ep in spec.endpoints:
        key = tuple((p.name, p.protocol, _port_of(spec, p, ep)) for p in spec.ports)
        groups.setdefault(key, []).append(ep)
    out = []
    for i, (ports, eps) in enumerate(sorted(groups.items())):
        out.append({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{spec.name}-{i:05d}", "namespace": spec.namespace,
                         "generateName": f"{spec.name}-", "resourceVersion": "1001",
                         "labels": {"kubernetes.io/service-name": spec.name,
                                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
            "addressType": "IPv6" if ":" in spec.cluster_ip else "IPv4",
            "endpoints": [{"addresses": [ep.ip],
                           "conditions": {"ready": ep.ready, "serving": ep.serving, "terminating": ep.terminating},
                           "nodeName": node_of(ep.ip), "zone": ZONES[node_of(ep.ip)],
                           "targetRef": {"kind": "Pod", "namespace": spec.namespace,
                                         "name": f"{spec.name}-{ep.ip.replace('.', '-')}"}}
                          for ep in eps],
            "ports": [{"name": name, "protocol": proto, "port": port} for name, proto, port in ports],
        })
    return out


def node_objects() -> list[dict[str, Any]]:
    return [{"apiVersion": "v1", "kind": "Node",
             "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name,
                                                   "topology.kubernetes.io/zone": ZONES[name]}},
             "spec": {"podCIDR": f"10.244.{i + 1}.0/24", "podCIDRs": [f"10.244.{i + 1}.0/24"]},
             "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
                        "conditions": [{"type": "Ready", "status": "True"}]}}
            for i, (name, ip) in enumerate(NODES.items())]


def extra_api_objects() -> list[dict[str, Any]]:
    """Services kube-proxy writes no rules for: headless, ExternalName, and an LB IP in ipMode Proxy."""
    headless = service_object(ServiceSpec("default", "db", "None", [PortSpec("pg", 5432, target_port=5432)]))
    headless["spec"]["clusterIP"] = "None"
    headless["spec"]["clusterIPs"] = ["None"]
    db_slice = slice_objects(ServiceSpec("default", "db", "10.0.0.1", [PortSpec("pg", 5432, target_port=5432)],
                                         endpoints=[EndpointSpec("10.244.2.20", 5432)]))
    external = {"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "ext", "namespace": "default"},
                "spec": {"type": "ExternalName", "externalName": "db.example.com", "sessionAffinity": "None"},
                "status": {"loadBalancer": {}}}
    proxy_lb = service_object(ServiceSpec("default", "proxy-lb", "10.96.10.9",
                                          [PortSpec("http", 80, node_port=30089, target_port=8080)],
                                          type="LoadBalancer", lb_ips=["203.0.113.99"]))
    proxy_lb["status"]["loadBalancer"]["ingress"] = [{"ip": "203.0.113.99", "ipMode": "Proxy"}]
    proxy_slice = slice_objects(ServiceSpec("default", "proxy-lb", "10.96.10.9",
                                            [PortSpec("http", 80, target_port=8080)],
                                            endpoints=[EndpointSpec("10.244.1.30", 8080)]))
    return [headless, *db_slice, external, proxy_lb, *proxy_slice]


def api_objects(services: list[ServiceSpec], *, extra: bool = True) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for spec in services:
        objects.append(service_object(spec))
        objects += slice_objects(spec)
    objects += node_objects()
    if extra:
        objects += extra_api_objects()
    return objects


def cluster_of(services: list[ServiceSpec], *, extra: bool = True) -> ClusterState:
    return state_from_objects(((o["kind"], o, f"test {o['kind']}") for o in api_objects(services, extra=extra)),
                              "test cluster")


def with_local(services: list[ServiceSpec], node: str) -> list[ServiceSpec]:
    """The same Services, with `local` set on the endpoints that run on `node` (what its kube-proxy sees)."""
    out = copy.deepcopy(services)
    for s in out:
        for ep in s.endpoints:
            ep.local = node_of(ep.ip) == node
    return out


def dump_text(services: list[ServiceSpec], node: str, *, era: str = "current", proxy_lb: bool = True,
              extra: str = "") -> str:
    """The node's dump; `extra`: iptables-save text merged in (rules of the node's own, e.g. a host firewall)."""
    specs = with_local(services, node)
    if proxy_lb:
        # ipMode Proxy: kube-proxy programs the Service but not its LB IP.
        specs.append(ServiceSpec("default", "proxy-lb", "10.96.10.9",
                                 [PortSpec("http", 80, node_port=30089, target_port=8080)], type="LoadBalancer",
                                 endpoints=[EndpointSpec("10.244.1.30", 8080, local=node == "node-a")]))
    return render(specs, node_ips=[NODES[node]], pod_cidr=POD_CIDR, era=era, extra=extra)


def dump(services: list[ServiceSpec], node: str, **kwargs: Any) -> Ruleset:
    return load(dump_text(services, node, **kwargs), source=f"{node}.txt")


def compare(ruleset: Ruleset, cluster: ClusterState, node: str | None) -> list[Finding]:
    return compare_with_cluster(analysis(ruleset, cluster=cluster), cluster, node_name=node)


def svc(services: list[ServiceSpec], name: str) -> ServiceSpec:
    return next(s for s in services if s.name == name)


def show(findings: list[Finding]) -> str:
    return "\n".join(f"{f.severity} {f.id} {f.service}: {f.summary} | {f.detail} | {f.fix}" for f in findings)


def ids(findings: list[Finding]) -> list[tuple[str, str, str | None]]:
    return [(f.id, f.severity, f.service) for f in findings]


# ------------------------------------------------------------------------------------------------ tests


def test_api_objects_are_real_shaped() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for obj in api_objects(base_services()):
        kubernetes_validate.validate(obj, "1.30.0", strict=True)


@pytest.mark.parametrize("node", sorted(NODES))
@pytest.mark.parametrize("era", ["current", "ext", "xlb"])
def test_a_synced_node_agrees_with_the_api(node: str, era: str) -> None:
    services = base_services()
    cluster = cluster_of(services)
    findings = compare(dump(services, node, era=era), cluster, node)
    assert findings == [], show(findings)


def test_comment_less_dump_is_named_by_hash() -> None:
    services = base_services()
    cluster = cluster_of(services)
    text = re.sub(r' -m comment --comment (?:"[^"]*"|\S+)', "", dump_text(services, "node-a"))
    ruleset = load(text)
    anonymous = analysis(ruleset)  # no cluster data: chain-named service ports
    assert any(not sp.namespace for sp in anonymous.view.services)
    findings = compare_with_cluster(anonymous, cluster, node_name="node-a")
    assert [f for f in findings if f.id in ("unknown-service", "missing-service")] == [], show(findings)


def test_stale_endpoint_still_dnated_is_an_error_with_the_dnat_rule_as_evidence() -> None:
    old = base_services()
    new = copy.deepcopy(old)
    svc(new, "web").endpoints = [EndpointSpec("10.244.1.5", 8080)]  # 10.244.2.5's pod is gone
    findings = compare(dump(old, "node-a"), cluster_of(new), "node-a")
    assert ids(findings) == [("stale-endpoints", "error", "default/web:http")], show(findings)
    f = findings[0]
    assert "10.244.2.5:8080 (no longer in any EndpointSlice)" in f.summary
    assert "not syncing" in f.detail or "not applied" in f.detail
    assert any("--to-destination 10.244.2.5:8080" in rule and line > 0 for line, rule in f.evidence), f.evidence


def test_new_endpoint_not_yet_programmed_is_a_warning() -> None:
    old = base_services()
    new = copy.deepcopy(old)
    svc(new, "web").endpoints.append(EndpointSpec("10.244.3.5", 8080))
    findings = compare(dump(old, "node-a"), cluster_of(new), "node-a")
    assert ids(findings) == [("stale-endpoints", "warning", "default/web:http")], show(findings)
    assert "misses 10.244.3.5:8080" in findings[0].summary


def test_endpoint_that_became_not_ready_is_named_so() -> None:
    old = base_services()
    new = copy.deepcopy(old)
    svc(new, "web").endpoints[1].ready = False
    findings = compare(dump(old, "node-a"), cluster_of(new), "node-a")
    assert ids(findings) == [("stale-endpoints", "error", "default/web:http")], show(findings)
    assert "10.244.2.5:8080 (listed but not ready)" in findings[0].summary


def test_node_rejects_a_service_the_api_has_endpoints_for() -> None:
    new = base_services()
    old = copy.deepcopy(new)
    svc(old, "web").endpoints = []
    findings = compare(dump(old, "node-a"), cluster_of(new), "node-a")
    assert ids(findings) == [("stale-endpoints", "error", "default/web:http")], show(findings)
    assert "REJECTs" in findings[0].summary


def test_terminating_fallback_and_its_absence_both_agree() -> None:
    services = base_services()
    for ep in svc(services, "web").endpoints:
        ep.ready, ep.serving, ep.terminating = False, True, True
    cluster = cluster_of(services)
    # Current kube-proxy DNATs to serving+terminating endpoints when none is ready …
    assert compare(dump(services, "node-a"), cluster, "node-a") == []
    # … kube-proxy before ProxyTerminatingEndpoints REJECTs: also what it should have done.
    before = copy.deepcopy(services)
    svc(before, "web").endpoints = []
    assert compare(dump(before, "node-a"), cluster, "node-a") == []


def test_missing_service_but_not_headless_externalname_or_proxy_mode_ip() -> None:
    old = base_services()
    new = copy.deepcopy(old)
    new.append(ServiceSpec("default", "fresh", "10.96.10.20", [PortSpec("http", 80, target_port=8080)],
                           endpoints=[EndpointSpec("10.244.2.40", 8080)]))
    new.append(ServiceSpec("default", "idle", "10.96.10.21", [PortSpec("http", 80, target_port=8080)]))
    findings = compare(dump(old, "node-a"), cluster_of(new), "node-a")
    assert ids(findings) == [("missing-service", "error", "default/fresh:http"),
                             ("missing-service", "warning", "default/idle:http")], show(findings)
    assert "KUBE-SVC-" in findings[0].detail and "10.96.10.20:80" in findings[0].summary


def test_rules_for_a_deleted_service() -> None:
    old = base_services()
    old.append(ServiceSpec("default", "gone", "10.96.10.30", [PortSpec("http", 80, target_port=8080)],
                           endpoints=[EndpointSpec("10.244.2.50", 8080)]))
    new = base_services()
    findings = compare(dump(old, "node-a"), cluster_of(new), "node-a")
    assert ids(findings) == [("unknown-service", "warning", "default/gone:http")], show(findings)
    assert findings[0].evidence
    # Its ClusterIP now belongs to another Service: the stale rule can steal that Service's traffic.
    new.append(ServiceSpec("other", "reuse", "10.96.10.30", [PortSpec("web", 80, target_port=80)],
                           endpoints=[EndpointSpec("10.244.3.60", 80)]))
    findings = compare(dump(old, "node-a"), cluster_of(new), "node-a")
    assert ("unknown-service", "error", "default/gone:http") in ids(findings), show(findings)
    assert "other/reuse" in next(f for f in findings if f.id == "unknown-service").detail


@pytest.mark.parametrize(("change", "summary"), [
    ("node_port", "nodePort is 30081 in the API, 30080 in the rules"),
    ("port", "the rules forward port 80, the API says port 8000"),
    ("target_port", "the rules DNAT to port 8080, the EndpointSlices say 9090"),
    ("protocol", "protocol is UDP in the API, TCP in the rules"),
])
def test_port_mismatches(change: str, summary: str) -> None:
    old = base_services()
    new = copy.deepcopy(old)
    web = svc(new, "web")
    if change == "node_port":
        web.ports[0].node_port = 30081
    elif change == "port":
        web.ports[0].port = 8000
    elif change == "target_port":
        web.ports[0].target_port = 9090
    else:
        web.ports[0].protocol = "UDP"
    findings = compare(dump(old, "node-a"), cluster_of(new), "node-a")
    label = "default/web:http/udp" if change == "protocol" else "default/web:http"
    assert ids(findings) == [("port-mismatch", "error", label)], show(findings)
    assert summary in findings[0].summary
    if change == "node_port":  # (it said 'kube-proxy sends tcp port 30081 …', what the rules do not do)
        assert "kube-proxy sends" not in findings[0].detail, findings[0].detail
        assert ("its rules forward <node>:30080 instead; kube-proxy would send tcp port 30081 of the node's "
                "addresses to KUBE-EXT-") in findings[0].detail, findings[0].detail


def test_external_ip_added_in_the_api() -> None:
    old = base_services()
    new = copy.deepcopy(old)
    svc(new, "web").external_ips = ["198.51.100.77"]
    findings = compare(dump(old, "node-a"), cluster_of(new), "node-a")
    assert ids(findings) == [("address-mismatch", "error", "default/web:http")], show(findings)
    assert "198.51.100.77" in findings[0].summary


def test_policy_mismatches() -> None:
    old = base_services()
    new = copy.deepcopy(old)
    svc(new, "local-lb").external_traffic_policy = "Cluster"
    svc(new, "affine").session_affinity_timeout = None
    svc(new, "fw").lb_source_ranges = ["198.51.100.0/24", "192.0.2.0/28"]
    # node-c has no local-lb endpoint: under the stale Local policy it DROPs what the API lets through.
    findings = compare(dump(old, "node-c"), cluster_of(new), "node-c")
    got = ids(findings)
    assert ("policy-mismatch", "error", "default/local-lb:https") in got, show(findings)
    assert ("policy-mismatch", "error", "default/fw:http") in got, show(findings)
    assert ("policy-mismatch", "warning", "default/affine") in got, show(findings)
    assert {f.id for f in findings} <= {"policy-mismatch", "stale-endpoints"}, show(findings)
    # On node-a (a local endpoint) the stale Local policy still delivers: a warning.
    findings = compare(dump(old, "node-a"), cluster_of(new), "node-a")
    assert ("policy-mismatch", "warning", "default/local-lb:https") in ids(findings), show(findings)


def test_local_policies_are_judged_with_this_nodes_endpoints_only() -> None:
    services = base_services()
    cluster = cluster_of(services)
    # node-c has no local-lb or itp endpoint: DROP rules there are what kube-proxy writes.
    assert compare(dump(services, "node-c"), cluster, "node-c") == []
    # Without the node's name the local sets cannot be judged, and nothing is invented.
    assert compare(dump(services, "node-c"), cluster, None) == []


def test_wrong_hostname_override_is_named() -> None:
    services = base_services()
    cluster = cluster_of(services)
    # node-a's kube-proxy believes it is node-b: it treats node-b's pods as local.
    ruleset = load(render(with_local(services, "node-b"), node_ips=[NODES["node-a"]], pod_cidr=POD_CIDR))
    findings = compare(ruleset, cluster, "node-a")
    local_lb = [f for f in findings if f.service == "default/local-lb:https"]
    assert [(f.id, f.severity) for f in local_lb] == [("stale-endpoints", "error")], show(findings)
    assert "node-b" in local_lb[0].detail and "hostname-override" in local_lb[0].fix
    assert "'node-a'" in local_lb[0].fix
    itp = [f for f in findings if f.service == "default/itp:http"]
    assert itp and itp[0].severity == "error" and "hostname-override" in itp[0].fix, show(findings)


def test_topology_hints_subset_is_accepted() -> None:
    services = base_services()
    objects = api_objects(services)
    for o in objects:
        if o["kind"] == "EndpointSlice" and o["metadata"]["name"].startswith("web-"):
            for e in o["endpoints"]:
                e["hints"] = {"forZones": [{"name": e["zone"]}]}
    cluster = state_from_objects(((o["kind"], o, "t") for o in objects), "t")
    hinted = copy.deepcopy(services)
    svc(hinted, "web").endpoints = [EndpointSpec("10.244.1.5", 8080)]  # node-a is in zone-a
    assert compare(dump(hinted, "node-a"), cluster, "node-a") == []
    assert compare(dump(services, "node-a"), cluster, "node-a") == []


def test_findings_are_ordered_by_severity_and_to_json_is_stable() -> None:
    old = base_services()
    new = copy.deepcopy(old)
    svc(new, "web").endpoints.append(EndpointSpec("10.244.3.5", 8080))  # warning
    svc(new, "affine").session_affinity_timeout = 60  # warning
    new = [s for s in new if s.name != "fw"]  # unknown-service (warning)
    new.append(ServiceSpec("default", "fresh", "10.96.10.20", [PortSpec("http", 80, target_port=8080)],
                           endpoints=[EndpointSpec("10.244.2.40", 8080)]))  # error
    findings = compare(dump(old, "node-a"), cluster_of(new), "node-a")
    severities = [f.severity for f in findings]
    assert severities == sorted(severities, key=["error", "warning", "info"].index)
    assert findings[0].id == "missing-service"
    assert list(findings[0].to_json()) == ["id", "severity", "node", "service", "summary", "detail", "fix",
                                           "evidence"]


def test_nothing_for_a_node_without_kube_proxy_rules() -> None:
    ruleset = load("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n")
    cluster = cluster_of(base_services())
    assert compare_with_cluster(analysis(ruleset), cluster, node_name="node-a") == []


def test_ipv6_view_is_compared_with_ipv6_services_only() -> None:
    v6 = [ServiceSpec("default", "web6", "fd00:10::1", [PortSpec("http", 80, target_port=8080)],
                      endpoints=[EndpointSpec("fd00:244:1::5", 8080)])]
    services = base_services()
    cluster = state_from_objects(((o["kind"], o, "t") for o in api_objects(services + v6)), "t")
    text6 = render(v6, node_ips=["fd00:49::2"], pod_cidr="fd00:244::/48", ipv6=True)
    findings = compare(load(text6), cluster, None)
    assert findings == [], show(findings)
    findings = compare(load(render([replace(v6[0], endpoints=[])], node_ips=["fd00:49::2"],
                                   pod_cidr="fd00:244::/48", ipv6=True)), cluster, None)
    assert ids(findings) == [("stale-endpoints", "error", "default/web6:http")], show(findings)
