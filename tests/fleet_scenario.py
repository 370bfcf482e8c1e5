"""One audit scenario shared by the report tests: four nodes rendered by bench/synth.py (kube-proxy's own
layout) against API objects shaped like `kubectl get --raw` output (tests/test_compare.py).

- node-a, node-c: in sync with the API;
- node-b: a stale kube-proxy: default/web:http still DNATs to a deleted pod, rules for a deleted Service
  (default/gone:http) and for a Service whose name carries markup (its rule comments are attacker-controlled
  text: the report must show them, never run them);
- node-d: a node without kube-proxy rules (sample_dumps/no-kube-proxy.txt).
Written either as NodeInputs (for the renderer) or as a collection directory plus cluster JSON files (for the
CLI, exactly what `iptrace collect` and `kubectl get -o json` leave)."""

from __future__ import annotations

import json
from pathlib import Path

from bench.synth import EndpointSpec, PortSpec, ServiceSpec
from iptrace.collect import store
from iptrace.iptables import load
from iptrace.kube.cluster import ClusterState
from tests.conftest import SAMPLES
from tests.dumps import Dumped
from tests.test_compare import NODES, api_objects, base_services, cluster_of, dump_text, svc

# kube-proxy's comment patterns allow neither `/` nor spaces in a name; this one opens a script element that
# would swallow the page up to the report's own </script> if it were not escaped.
HOSTILE = "<script>alert(1);<!--"
NO_KUBE_PROXY = "node-d"


def services() -> tuple[list[ServiceSpec], list[ServiceSpec]]:
    """(what the stale node-b still has, what the API and the other nodes have now)."""
    new = base_services()
    old = base_services()
    svc(old, "web").endpoints.append(EndpointSpec("10.244.2.99", 8080))
    old.append(ServiceSpec("default", "gone", "10.96.10.30", [PortSpec("http", 80, target_port=8080)],
                           endpoints=[EndpointSpec("10.244.3.50", 8080)]))
    old.append(ServiceSpec("default", HOSTILE, "10.96.10.31", [PortSpec("http", 80, target_port=8080)],
                           endpoints=[EndpointSpec("10.244.3.51", 8080)]))
    return old, new


def dumps() -> dict[str, str]:
    old, new = services()
    return {"node-a": dump_text(new, "node-a"), "node-b": dump_text(old, "node-b"),
            "node-c": dump_text(new, "node-c"), NO_KUBE_PROXY: (SAMPLES / "no-kube-proxy.txt").read_text()}


def inputs() -> tuple[list[Dumped], ClusterState]:
    out = []
    for name, text in dumps().items():
        addresses = (NODES[name],) if name in NODES else ("192.168.49.5",)
        out.append(Dumped(name, load(text, source=f"{name}/iptables-save.txt"), addresses))
    return out, cluster_of(services()[1])


def write(root: Path) -> tuple[Path, list[Path]]:
    """The collection directory and the cluster files (`--cluster` arguments)."""
    snap = root / "snap"
    for name, text in dumps().items():
        addresses = [NODES[name]] if name in NODES else ["192.168.49.5"]
        store.write_node_dir(snap / name, {store.DUMP_FILE: text.encode()},
                             {"node": name, "host": name, "addresses": addresses})
    objects = api_objects(services()[1])
    files = []
    for kind, list_kind in (("Service", "ServiceList"), ("EndpointSlice", "EndpointSliceList"),
                            ("Node", "NodeList")):
        path = root / f"{kind.lower()}s.json"
        api_version = "discovery.k8s.io/v1" if kind == "EndpointSlice" else "v1"
        path.write_text(json.dumps({"apiVersion": api_version, "kind": list_kind, "metadata": {},
                                    "items": [o for o in objects if o["kind"] == kind]}))
        files.append(path)
    return snap, files
