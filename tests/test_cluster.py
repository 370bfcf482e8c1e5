"""Reading Services, EndpointSlices and Nodes: offline files of every accepted shape, and the live path
through the unmodified `kubernetes` client over real HTTP(S) and a real kubeconfig (tests/apiserver.py)."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from iptrace.collect.cluster import load_cluster_files, load_cluster_live, matches_label_selector, node_addresses
from iptrace.errors import ClusterError, InputError
from iptrace.kube.cluster import ClusterEndpoint, ClusterEndpointSlice, ClusterNode, ClusterState

try:
    from tests.apiserver import DATA, ApiServer, Grant, write_kubeconfig
except ImportError:  # pytest's rootdir is not on sys.path: tests/ itself is
    from apiserver import DATA, ApiServer, Grant, write_kubeconfig  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]
FB = ROOT / "sample_dumps" / "nodeport-fb-backends.txt"
LISTS = [DATA / "services.json", DATA / "endpointslices.json", DATA / "nodes.json"]
KUBECTL_LIST = DATA / "kubectl-get-all.json"

TOKENS = {
    "tok-admin": Grant("admin"),
    "tok-dev": Grant("system:serviceaccount:default:dev", namespaces=frozenset({"default"})),
    "tok-bob": Grant("bob", resources=frozenset({"services", "nodes"})),
}
USERS = {"admin": "tok-admin", "dev": "tok-dev", "bob": "tok-bob", "expired": "tok-expired"}


@pytest.fixture
def expected() -> ClusterState:
    return load_cluster_files(LISTS)


@pytest.fixture
def api():
    with ApiServer.from_data(TOKENS) as server:
        yield server


@pytest.fixture
def kubeconfig(api: ApiServer, tmp_path: Path) -> str:
    return str(write_kubeconfig(tmp_path / "kubeconfig", api.url, USERS))


def one_line(e: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(e.value)
    assert "\n" not in text
    return text


# --- offline files -------------------------------------------------------------------------------------


def test_the_spec_example_reads_as_written(expected: ClusterState) -> None:
    fb = expected.service("default", "fb-backends")
    assert fb is not None
    assert (fb.type, fb.cluster_ips, fb.headless) == ("NodePort", ("10.101.234.168",), False)
    (port,) = fb.ports
    assert (port.name, port.port, port.protocol, port.target_port, port.node_port) == (
        "ka-port", 5001, "TCP", 8001, 30904)
    assert fb.service_port_name(port) == "default/fb-backends:ka-port"
    assert [e.address for e in expected.endpoints_for("default", "fb-backends", "ka-port", "tcp")] == [
        "10.244.1.7:8001", "10.244.2.3:8001"]
    karma = expected.service("default", "karma-daemon")
    assert karma is not None
    assert [(p.port, p.node_port, p.protocol) for p in karma.ports] == [(80, 32488, "TCP"), (2121, 32461, "TCP")]
    dns = expected.service("kube-system", "kube-dns")
    assert dns is not None and dns.cluster_ips == ("10.96.0.10",)


def test_named_target_ports_resolve_per_endpoint_through_the_slice(expected: ClusterState) -> None:
    karma = expected.service("default", "karma-daemon")
    assert karma is not None and karma.port("http") is not None
    assert karma.port("http").target_port == "http"  # type: ignore[union-attr]
    assert [e.address for e in expected.endpoints_for("default", "karma-daemon", "http")] == ["10.244.1.9:8080"]
    assert [e.address for e in expected.endpoints_for("default", "karma-daemon", "ftp")] == ["10.244.1.9:2121"]
    shop = expected.service("default", "shop-lb")
    assert shop is not None and shop.ports[0].target_port == "http-web"
    (ep,) = expected.endpoints_for("default", "shop-lb", "http")
    assert (ep.port, ep.node_name, ep.zone, ep.zone_hints) == (8080, "minikube-m03", "zone-b", ("zone-b",))


def test_protocols_conditions_and_empty_slices(expected: ClusterState) -> None:
    udp = expected.endpoints_for("kube-system", "kube-dns", "dns", "UDP")
    assert [(e.address, e.protocol, e.ready, e.serving, e.terminating) for e in udp] == [
        ("10.244.0.2:53", "UDP", True, True, False), ("10.244.0.5:53", "UDP", False, True, True)]
    assert expected.endpoints_for("kube-system", "kube-dns", "dns", "TCP") == ()
    assert len(expected.endpoints_for("kube-system", "kube-dns", "dns-tcp", "TCP")) == 2
    # An unnamed port, and a slice the controller left empty ("endpoints": null).
    orphan = expected.service("default", "orphan")
    assert orphan is not None and orphan.ports[0].name == "" and orphan.service_port_name(orphan.ports[0]) == (
        "default/orphan")
    assert [s.name for s in expected.slices_for("default", "orphan")] == ["orphan-5v2wd"]
    assert expected.endpoints_for("default", "orphan", "") == ()
    assert expected.endpoints_for("default", "no-such-service", "") == ()


def test_load_balancer_headless_and_external_name(expected: ClusterState) -> None:
    shop = expected.service("default", "shop-lb")
    assert shop is not None
    assert shop.external_traffic_policy == "Local" and shop.health_check_node_port == 32001
    assert (shop.session_affinity, shop.affinity_timeout) == ("ClientIP", 600)
    assert shop.lb_source_ranges == ("203.0.113.0/24",) and shop.external_ips == ("192.0.2.50",)
    assert [(i.ip, i.ip_mode) for i in shop.lb_ips] == [("198.51.100.10", "VIP"), ("198.51.100.11", "Proxy")]
    # ipMode Proxy: the load balancer proxies, kube-proxy does not capture that address.
    assert shop.addresses == ("10.97.12.34", "192.0.2.50", "198.51.100.10")
    assert [s.name for s in expected.services_by_ip("198.51.100.10")] == ["shop-lb"]
    assert expected.services_by_ip("198.51.100.11") == ()
    headless = expected.service("default", "web-headless")
    assert headless is not None and headless.headless and headless.cluster_ips == ()
    ext = expected.service("default", "external-db")
    assert ext is not None and (ext.type, ext.external_name, ext.ports) == ("ExternalName", "db.example.com", ())
    names = {s.service_port_name(p) for s, p in expected.service_ports()}
    assert "default/web-headless:web" not in names and "default/fb-backends:ka-port" in names
    assert "kube-system/kube-dns:dns" in names and "default/orphan" in names
    dns = expected.service("kube-system", "kube-dns")
    assert dns is not None and dns.selector == (("k8s-app", "kube-dns"),) and dns.affinity_timeout is None


def test_nodes(expected: ClusterState) -> None:
    assert [n.name for n in expected.nodes] == ["minikube", "minikube-m02", "minikube-m03"]
    node = expected.node_by_ip("192.168.49.2")
    assert node is not None and node.name == "minikube" and node.pod_cidrs == ("10.244.0.0/24",)
    assert node.ready is True and node.label_map["node-role.kubernetes.io/control-plane"] == ""
    m02 = expected.node_by_ip("203.0.113.23")
    assert m02 is not None and m02.name == "minikube-m02"
    assert expected.node("minikube-m03") is not None and expected.node("minikube-m03").ready is False  # type: ignore[union-attr]
    assert expected.node_by_ip("10.244.0.2") is None


def test_both_file_shapes_give_the_same_state(expected: ClusterState, tmp_path: Path) -> None:
    from_kubectl = load_cluster_files([KUBECTL_LIST])
    assert from_kubectl == expected
    assert from_kubectl.source == str(KUBECTL_LIST)
    # A directory means its *.json files; overlapping files merge by namespace/name.
    assert load_cluster_files([DATA]) == expected
    # One object at a time, as `kubectl get svc NAME -o json` prints it.
    one = json.loads(KUBECTL_LIST.read_text())["items"][1]
    (tmp_path / "svc.json").write_text(json.dumps(one))
    single = load_cluster_files([tmp_path / "svc.json"])
    assert [s.name for s in single.services] == ["fb-backends"] and single.slices == () and single.nodes == ()


def test_stdin(monkeypatch: pytest.MonkeyPatch, expected: ClusterState) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(KUBECTL_LIST.read_bytes())))
    state = load_cluster_files(["-"])
    assert state == expected and state.source == "<stdin>"


def test_a_generic_list_skips_other_kinds(tmp_path: Path) -> None:
    doc = json.loads(KUBECTL_LIST.read_text())
    doc["items"].insert(0, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"}})
    (tmp_path / "all.json").write_text(json.dumps(doc))
    assert load_cluster_files([tmp_path / "all.json"]) == load_cluster_files(LISTS)


def test_v1beta1_slices_keep_node_and_zone_in_topology(tmp_path: Path) -> None:
    doc = {"apiVersion": "discovery.k8s.io/v1beta1", "kind": "EndpointSlice",
           "metadata": {"name": "a-1", "namespace": "ns", "labels": {"kubernetes.io/service-name": "a"}},
           "addressType": "IPv4", "ports": [{"name": "p", "port": 80, "protocol": "TCP"}],
           "endpoints": [{"addresses": ["10.0.0.1", "10.0.0.9"], "conditions": {"ready": True},
                          "topology": {"kubernetes.io/hostname": "n1", "topology.kubernetes.io/zone": "z"}}]}
    (tmp_path / "s.json").write_text(json.dumps(doc))
    (ep,) = load_cluster_files([tmp_path / "s.json"]).endpoints_for("ns", "a", "p")
    # kube-proxy uses only an endpoint's first address.
    assert (ep.address, ep.node_name, ep.zone) == ("10.0.0.1:80", "n1", "z")


def test_duplicate_endpoints_across_slices_are_merged_like_kube_proxy() -> None:
    def slice_(name: str, node: str | None, ready: bool) -> ClusterEndpointSlice:
        e = ClusterEndpoint("10.0.0.1", 80, "p", "TCP", ready=ready, node_name=node)
        return ClusterEndpointSlice("ns", name, "svc", "IPv4", (e,))

    state = ClusterState(slices=(slice_("svc-b", "n2", False), slice_("svc-a", None, True),
                                 ClusterEndpointSlice("ns", "svc-f", "svc", "FQDN", (
                                     ClusterEndpoint("db.example.com", 80, "p", "TCP"),))))
    (first,) = state.endpoints_for("ns", "svc", "p")
    assert first.ready is True  # slices are read in name order: svc-a first
    (local,) = state.endpoints_for("ns", "svc", "p", local_node="n2")
    assert local.node_name == "n2"


def test_ipv6_addresses() -> None:
    state = ClusterState(nodes=(ClusterNode("n", internal_ips=("fd00::0:1",)),), slices=(
        ClusterEndpointSlice("ns", "s-1", "s", "IPv6", (ClusterEndpoint("fd00:10::5", 443, "", "TCP"),)),))
    assert state.node_by_ip("fd00::1") is not None
    assert state.endpoints_for("ns", "s", "")[0].address == "[fd00:10::5]:443"


@pytest.mark.parametrize(("text", "message"), [
    ('{"kind": "ServiceList",\n  "items": [}\n', "invalid JSON at {f}:2:13: Expecting value; expected `kubectl"),
    ("", "{f}:1:1: the file is empty; expected `kubectl get --raw /api/v1/services`"),
    ("\n  \n", "{f}:1:1: the file is empty;"),
    ("apiVersion: v1\nitems:\n- kind: Service\nkind: List\n",
     "{f}:1:1: this is YAML (`kubectl get … -o yaml`?); iptrace reads the API's JSON: save it with `-o json`"),
    ("---\napiVersion: v1\nkind: Service\n", "{f}:1:1: this is YAML"),
    ('{"kind": "List", "items": [{"kind": "Service", "metadata": {"name": "a"',
     "invalid JSON at {f}:1:72: the file ends before its JSON does (Expecting ',' delimiter): it looks cut short"),
    ('{"kind": "List", "items": [{"kind": "Service", "metadata": {"name": "a',
     "invalid JSON at {f}:1:69: the file ends before its JSON does (Unterminated string starting at): it looks"),
    ('{"kind": "List",\n "items": [}\n', "invalid JSON at {f}:2:12: Expecting value; expected `kubectl"),
    ("[1, 2]", "{f}: the JSON is a list, not a Kubernetes object; expected `kubectl get --raw /api/v1/services`"),
    ('{"items": []}', "{f}: the JSON object has no `kind`; expected"),
    ('{"kind": "PodList", "items": []}', "{f}: got kind PodList; expected"),
    ('{"kind": "EndpointsList", "items": []}', "{f}: got EndpointsList (core/v1), which kube-proxy no longer reads;"),
    ('{"kind": "ServiceList", "items": {}}', "{f}: `items` of the ServiceList is an object, expected a list"),
    ('{"kind": "ServiceList", "items": [{"kind": "Node", "metadata": {"name": "n"}}]}',
     "{f}: items[0] is a Node inside a ServiceList"),
    ('{"kind": "List", "items": [{"metadata": {"name": "n"}}]}', "{f}: items[0] has no `kind`"),
    ('{"kind": "ServiceList", "items": [{"metadata": {"name": "x", "namespace": "d"}, '
     '"spec": {"ports": [{"port": "abc"}]}}]}',
     '{f}: items[0] (Service d/x): spec.ports[0].port: expected an integer, got a string "abc"'),
    ('{"kind": "NodeList", "items": [{"metadata": {}}]}', "{f}: items[0] (Node): metadata.name: missing"),
    ('{"kind": "EndpointSlice", "metadata": {"name": "e", "namespace": "d"}, "endpoints": [{"conditions": '
     '{"ready": "yes"}}]}', '{f} (EndpointSlice d/e): endpoints[0].conditions.ready: expected true or false'),
])
def test_bad_files_name_the_file_and_what_was_expected(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "cluster.json"
    path.write_text(text)
    with pytest.raises(ClusterError) as e:
        load_cluster_files([path])
    assert one_line(e).startswith(message.format(f=path))


def test_missing_file_and_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(ClusterError, match=r"nope\.json: no such file or directory$"):
        load_cluster_files([tmp_path / "nope.json"])
    with pytest.raises(ClusterError, match=r"the directory holds no \*\.json file"):
        load_cluster_files([tmp_path])


def test_every_hand_written_object_is_valid_for_the_api() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    objects = []
    for path, kind, api_version in ((LISTS[0], "Service", "v1"),
                                    (LISTS[1], "EndpointSlice", "discovery.k8s.io/v1"),
                                    (LISTS[2], "Node", "v1")):
        doc = json.loads(path.read_text())
        assert doc["kind"] == f"{kind}List"
        # List responses of the API server carry kind and apiVersion only on the list itself.
        objects += [{"apiVersion": api_version, "kind": kind, **item} for item in doc["items"]]
    objects += json.loads(KUBECTL_LIST.read_text())["items"]
    assert len(objects) == 2 * (8 + 7 + 3)
    for obj in objects:
        kubernetes_validate.validate(obj, "1.30.0", strict=True)
    # The check is live: an unknown field fails it.
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate({**objects[0], "spec": {"bogus": 1}}, "1.30.0", strict=True)


# --- label selectors and node discovery ---------------------------------------------------------------


@pytest.mark.parametrize(("selector", "names"), [
    (None, ["minikube", "minikube-m02", "minikube-m03"]),
    ("pool=workers", ["minikube-m02", "minikube-m03"]),
    ("pool==workers,kubernetes.io/hostname!=minikube-m03", ["minikube-m02"]),
    ("!node-role.kubernetes.io/control-plane", ["minikube-m02", "minikube-m03"]),
    ("node-role.kubernetes.io/control-plane", ["minikube"]),
    ("topology.kubernetes.io/zone in (zone-a, zone-c)", ["minikube"]),
    ("topology.kubernetes.io/zone notin (zone-a)", ["minikube-m02", "minikube-m03"]),
])
def test_node_addresses(expected: ClusterState, selector: str | None, names: list[str]) -> None:
    ips = {"minikube": "192.168.49.2", "minikube-m02": "192.168.49.3", "minikube-m03": "192.168.49.4"}
    assert node_addresses(expected, selector) == [(n, ips[n]) for n in names]


def test_node_addresses_fall_back_to_external_ip_then_hostname() -> None:
    state = ClusterState(nodes=(ClusterNode("a", external_ips=("203.0.113.5",)), ClusterNode("b", hostnames=("b",)),
                                ClusterNode("c")))
    assert node_addresses(state) == [("a", "203.0.113.5"), ("b", "b")]


def test_bad_selector() -> None:
    assert matches_label_selector("a in (x,y),b", {"a": "y", "b": ""})
    with pytest.raises(InputError, match="label selector 'a=b=c'"):
        matches_label_selector("a=b=c", {})


# --- live, through the unmodified client ---------------------------------------------------------------


def test_live_list_all(api: ApiServer, kubeconfig: str, expected: ClusterState) -> None:
    state = load_cluster_live(kubeconfig, None, None)
    assert state == expected
    assert state.source == f"kubeconfig {kubeconfig} at {api.url}"
    assert [(r.method, r.path, r.authorization) for r in api.requests] == [
        ("GET", "/api/v1/services", "Bearer tok-admin"),
        ("GET", "/apis/discovery.k8s.io/v1/endpointslices", "Bearer tok-admin"),
        ("GET", "/api/v1/nodes", "Bearer tok-admin"),
    ]


def test_live_namespaced(api: ApiServer, kubeconfig: str) -> None:
    state = load_cluster_live(kubeconfig, "dev", "default", include_nodes=False)
    assert state.source == f"kubeconfig {kubeconfig} context dev at {api.url}"
    assert {s.namespace for s in state.services} == {"default"} and len(state.services) == 7
    assert {s.namespace for s in state.slices} == {"default"} and state.nodes == ()
    assert [r.path for r in api.requests] == [
        "/api/v1/namespaces/default/services", "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"]
    admin = load_cluster_live(kubeconfig, "admin", "kube-system")
    assert [s.name for s in admin.services] == ["kube-dns"] and len(admin.nodes) == 3


def test_live_label_selectors(api: ApiServer, kubeconfig: str) -> None:
    state = load_cluster_live(kubeconfig, None, None, "tier=backend", node_selector="pool=workers")
    assert [s.name for s in state.services] == ["fb-backends", "karma-daemon"]
    assert [s.service for s in state.slices] == ["fb-backends", "karma-daemon"]
    assert [n.name for n in state.nodes] == ["minikube-m02", "minikube-m03"]
    assert [r.query.get("labelSelector") for r in api.requests] == [
        ["tier=backend"], ["tier=backend"], ["pool=workers"]]
    state = load_cluster_live(kubeconfig, None, None, "app in (shop,web)", include_nodes=False)
    assert [s.name for s in state.services] == ["shop-lb", "web-headless"]


def test_live_pagination(api: ApiServer, kubeconfig: str, expected: ClusterState) -> None:
    assert load_cluster_live(kubeconfig, None, None, page_size=3) == expected
    paths = [r.path for r in api.requests]
    assert paths.count("/api/v1/services") == 3  # 8 services: 3 + 3 + 2
    assert paths.count("/apis/discovery.k8s.io/v1/endpointslices") == 3  # 7 slices: 3 + 3 + 1
    assert paths.count("/api/v1/nodes") == 1
    services = [r for r in api.requests if r.path == "/api/v1/services"]
    assert all(r.query["limit"] == ["3"] for r in services)
    assert "continue" not in services[0].query
    token = json.loads(base64.b64decode(services[1].query["continue"][0]))
    assert token == {"v": "meta.k8s.io/v1", "rv": 48211, "start": "default/karma-daemon\x00"}


def test_the_fake_server_pages_like_kube_apiserver(api: ApiServer) -> None:
    def get(url: str) -> dict:
        request = urllib.request.Request(url, headers={"Authorization": "Bearer tok-admin"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    first = get(f"{api.url}/api/v1/services?limit=5")
    assert first["kind"] == "ServiceList" and len(first["items"]) == 5
    assert first["metadata"]["remainingItemCount"] == 3 and first["metadata"]["resourceVersion"] == "48211"
    assert "kind" not in first["items"][0]
    rest = get(f"{api.url}/api/v1/services?limit=5&continue={first['metadata']['continue']}")
    assert len(rest["items"]) == 3 and "continue" not in rest["metadata"]
    filtered = get(f"{api.url}/api/v1/services?limit=1&labelSelector=tier%3Dbackend")
    assert "remainingItemCount" not in filtered["metadata"] and "continue" in filtered["metadata"]


def test_forbidden_body_is_the_real_status_shape(api: ApiServer) -> None:
    request = urllib.request.Request(f"{api.url}/apis/discovery.k8s.io/v1/endpointslices",
                                     headers={"Authorization": "Bearer tok-bob"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(request, timeout=10)
    assert e.value.code == 403
    assert json.loads(e.value.read()) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'endpointslices.discovery.k8s.io is forbidden: User "bob" cannot list resource "endpointslices" '
                   'in API group "discovery.k8s.io" at the cluster scope',
        "reason": "Forbidden", "details": {"group": "discovery.k8s.io", "kind": "endpointslices"}, "code": 403}


def test_live_unauthorized(api: ApiServer, kubeconfig: str) -> None:
    with pytest.raises(ClusterError) as e:
        load_cluster_live(kubeconfig, "expired", None)
    assert one_line(e) == (f"unauthorized: the credentials in {kubeconfig} were rejected (expired token?) by "
                           f"{api.url}; log in again or choose another --context")


def test_a_failing_credential_plugin_is_said_as_such(api: ApiServer, tmp_path: Path) -> None:
    """A kubeconfig whose user is an exec credential plugin (aws eks get-token, gke-gcloud-auth-plugin) that fails:
    the client logged the failure on the root logger ('ERROR:root:exec: process returned 1', a stray line) and
    went on without credentials, so the error blamed an expired token. One line says it was the plugin."""
    plugin = tmp_path / "get-token"
    plugin.write_text("#!/bin/sh\necho 'error: SSO session expired' >&2\nexit 1\n")
    plugin.chmod(0o755)
    config = json.loads(write_kubeconfig(tmp_path / "kubeconfig", api.url, USERS).read_text())
    config["users"][0]["user"] = {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1",
                                           "command": str(plugin), "args": ["eks", "get-token"],
                                           "interactiveMode": "Never"}}
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(config))
    process = subprocess.run([sys.executable, "-m", "iptrace", "services", str(FB), "--kubeconfig",
                              str(path)], capture_output=True, text=True, cwd=ROOT)
    assert process.returncode == 1
    assert process.stderr == (f"Error: kubeconfig {path}: its credential plugin (the user's `exec` command) failed "
                              "(exec: process returned 1. error: SSO session expired); run it by hand to see why, or log in "
                              "again\n")


def test_a_kubeconfig_that_skips_tls_verification_prints_no_warning_per_request(tmp_path: Path) -> None:
    """`insecure-skip-tls-verify: true` (labs, kind, some VPN setups): urllib3 printed its two-line
    InsecureRequestWarning on stderr for every request (hundreds for a fleet). kubectl says nothing; nor does
    iptrace, and the answer is the same."""
    with ApiServer.from_data(TOKENS, tls=True) as server:
        path = write_kubeconfig(tmp_path / "kubeconfig", server.url, USERS)
        config = json.loads(path.read_text())
        config["clusters"][0]["cluster"]["insecure-skip-tls-verify"] = True
        path.write_text(json.dumps(config))
        process = subprocess.run([sys.executable, "-m", "iptrace", "services", str(FB), "--kubeconfig", str(path),
                                  "-o", "json"], capture_output=True, text=True, cwd=ROOT)
    assert process.returncode == 0 and json.loads(process.stdout)
    # (what is left is iptrace's own one-line note about the cluster's findings)
    assert [line for line in process.stderr.splitlines() if not line.startswith("note: ")] == [], process.stderr


def test_live_forbidden(api: ApiServer, kubeconfig: str) -> None:
    with pytest.raises(ClusterError) as e:
        load_cluster_live(kubeconfig, "bob", None)
    assert one_line(e) == (f"forbidden: list endpointslices.discovery.k8s.io at cluster scope for user bob at "
                           f"{api.url}; ask for that permission or limit to one --namespace")
    with pytest.raises(ClusterError) as e:
        load_cluster_live(kubeconfig, "dev", "kube-system")
    assert one_line(e) == (f"forbidden: list services in namespace kube-system for user "
                           f"system:serviceaccount:default:dev at {api.url}")
    with pytest.raises(ClusterError) as e:
        load_cluster_live(kubeconfig, "dev", "default")
    assert one_line(e) == (f"forbidden: list nodes at cluster scope for user system:serviceaccount:default:dev "
                           f"at {api.url}")


def test_live_not_found_on_a_cluster_without_endpointslices_v1(kubeconfig: str, api: ApiServer) -> None:
    api.missing_groups.add("discovery.k8s.io/v1")
    with pytest.raises(ClusterError) as e:
        load_cluster_live(kubeconfig, None, None)
    assert one_line(e) == (f"not found: GET /apis/discovery.k8s.io/v1/endpointslices at {api.url} answered 404 "
                           "(404 page not found); discovery.k8s.io/v1 EndpointSlices need Kubernetes 1.21 or newer")


def test_live_continue_token_expired(kubeconfig: str, api: ApiServer) -> None:
    api.expire_continue_after_first_page = True
    with pytest.raises(ClusterError) as e:
        load_cluster_live(kubeconfig, None, None, page_size=2)
    assert one_line(e) == (f"the list of services changed while it was read page by page (continue token expired) "
                           f"at {api.url}; run again")


def test_live_refused_connection_fails_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # The port is closed now: nothing listens there.
    config = write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{port}", {"admin": "tok-admin"})
    with pytest.raises(ClusterError) as e:
        load_cluster_live(str(config), None, None)
    assert one_line(e) == f"cannot reach the API server at http://127.0.0.1:{port}: connection refused"


def test_live_does_not_retry(tmp_path: Path) -> None:
    """A server that accepts and hangs up: the client must give up after the first connection."""
    accepted = []
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            accepted.append(conn)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        config = write_kubeconfig(tmp_path / "kubeconfig", url, {"admin": "tok-admin"})
        with pytest.raises(ClusterError) as e:
            load_cluster_live(str(config), None, None)
        assert one_line(e).startswith(f"cannot reach the API server at {url}: ")
        assert len(accepted) == 1
    finally:
        stop.set()
        thread.join()
        listener.close()


def test_live_silent_server_times_out_with_one_line(tmp_path: Path) -> None:
    """A server that accepts and never answers: the read timeout ends the call."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        config = write_kubeconfig(tmp_path / "kubeconfig", url, {"admin": "tok-admin"})
        with pytest.raises(ClusterError) as e:
            load_cluster_live(str(config), None, None, timeout=0.3)
    assert one_line(e).startswith(f"cannot reach the API server at {url}: read timed out")


def test_live_other_api_errors_quote_the_status_message(api: ApiServer, kubeconfig: str) -> None:
    with pytest.raises(ClusterError) as e:
        load_cluster_live(kubeconfig, None, None, "=broken")
    assert one_line(e) == (f"API error 400 Bad Request for GET /api/v1/services at {api.url}: "
                           "unable to parse requirement: =broken")


@pytest.mark.parametrize(("content", "context", "message"), [
    (None, None, "kubeconfig {p} does not exist; pass --kubeconfig PATH or set KUBECONFIG"),
    ("clusters: [oops\n", None, "kubeconfig {p}:2:1 is not valid YAML: expected ',' or ']', but got '<stream end>'"),
    ("just text\n", None, "kubeconfig {p} cannot be used: TypeError:"),
    ("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n", None,
     "kubeconfig {p} sets no current-context; pass --context NAME"),
    ("", None, "kubeconfig {p} is empty; pass --kubeconfig PATH or set KUBECONFIG"),
])
def test_bad_kubeconfig(tmp_path: Path, content: str | None, context: str | None, message: str) -> None:
    path = tmp_path / "kubeconfig"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ClusterError) as e:
        load_cluster_live(str(path), context, None)
    assert one_line(e).startswith(message.format(p=path))


def test_a_kubeconfig_of_binary_data_is_said_in_words(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_bytes(b"\xba\x00\x01binary")
    with pytest.raises(ClusterError) as e:
        load_cluster_live(str(path), None, None)
    assert one_line(e) == (f"kubeconfig {path} is not UTF-8 text (byte 0xba at offset 0); expected the YAML of a "
                           "kubeconfig")


def test_unknown_context(kubeconfig: str) -> None:
    with pytest.raises(ClusterError) as e:
        load_cluster_live(kubeconfig, "prod", None)
    assert one_line(e) == f"kubeconfig {kubeconfig} has no context 'prod'; see kubectl config get-contexts"


def test_kubeconfig_from_the_environment(monkeypatch: pytest.MonkeyPatch, kubeconfig: str,
                                         expected: ClusterState) -> None:
    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    state = load_cluster_live(None, None, None)
    assert state == expected and state.source.startswith(f"kubeconfig {kubeconfig} at ")


def test_live_over_tls(tmp_path: Path, expected: ClusterState) -> None:
    with ApiServer.from_data(TOKENS, tls=True) as server:
        config = write_kubeconfig(tmp_path / "kubeconfig", server.url, USERS, ca_pem=server.ca_pem)
        assert server.url.startswith("https://")
        assert load_cluster_live(str(config), None, None) == expected


def test_importing_the_collector_does_not_import_kubernetes() -> None:
    code = "import sys, iptrace.collect.cluster; sys.exit('kubernetes' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent).returncode == 0


# --- kubectl against the same server -------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("kubectl") is None,
                    reason="kubectl is not installed (Debian's kubernetes-client package provides it)")
def test_kubectl_output_of_both_shapes_reads_like_the_live_state(tmp_path: Path) -> None:
    with ApiServer.from_data(TOKENS, tls=True) as server:
        # kubectl sends a bearer token only over https.
        config = write_kubeconfig(tmp_path / "kubeconfig", server.url, USERS, ca_pem=server.ca_pem)
        live = load_cluster_live(str(config), None, None)

        def kubectl(*args: str) -> Path:
            out = tmp_path / f"{len(list(tmp_path.iterdir()))}.json"
            done = subprocess.run(["kubectl", "--kubeconfig", str(config), "--cache-dir", str(tmp_path / "cache"),
                                   *args], capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
            out.write_text(done.stdout)
            return out

        raw = [kubectl("get", "--raw", p) for p in
               ("/api/v1/services", "/apis/discovery.k8s.io/v1/endpointslices", "/api/v1/nodes")]
        listed = kubectl("get", "svc,endpointslices,nodes", "-A", "-o", "json")
    assert load_cluster_files(raw) == live
    assert load_cluster_files([listed]) == live
    assert json.loads(listed.read_text()) == json.loads(KUBECTL_LIST.read_text())


@pytest.mark.parametrize("names", [["gone"], ["gone", "also-gone"]])
def test_missing_kubeconfig_from_the_environment_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                       names: list[str]) -> None:
    # KUBECONFIG naming no file that exists is the same mistake as `--kubeconfig /missing`, and says the same.
    shown = os.pathsep.join(str(tmp_path / n) for n in names)
    monkeypatch.setenv("KUBECONFIG", shown)
    with pytest.raises(ClusterError) as e:
        load_cluster_live(None, None, None)
    assert one_line(e) == f"kubeconfig {shown} does not exist; pass --kubeconfig PATH or set KUBECONFIG"


def test_cluster_files_read_for_one_namespace() -> None:
    # `-n NS --cluster FILE`: only that namespace's Services and EndpointSlices (Nodes are cluster-scoped).
    everything = load_cluster_files([DATA / "kubectl-get-all.json"])
    state = everything.scoped("kube-system")
    assert state.namespace == "kube-system" and state.nodes == everything.nodes
    assert {s.key for s in state.services} == {s.key for s in everything.services if s.namespace == "kube-system"}
    assert state.services and all(s.namespace == "kube-system" for s in state.slices) and state.slices
