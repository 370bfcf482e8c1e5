"""diff: two dumps of kube-proxy nodes (bench/synth.py renders), service-level changes and the rules changed
outside kube-proxy's chains; JSON shape and text."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from bench.synth import EndpointSpec, PortSpec, ServiceSpec, render
from iptrace.iptables import load
from iptrace.kube import diff as diff_module
from iptrace.kube.diff import Diff, EndpointChange, FieldChange
from iptrace.render.audit import diff_to_json, render_diff_text
from tests.conftest import SAMPLES
from tests.dumps import analysis
from tests.test_compare import NODES, POD_CIDR, base_services, dump, dump_text, svc, with_local

CALICO = """\
*filter
:cali-INPUT - [0:0]
-I INPUT -m comment --comment "cali:Cz_u1IQiXIMmKD4c" -j cali-INPUT
-A cali-INPUT -p udp -m udp --dport 4789 -j ACCEPT
COMMIT
"""


def diff(a: Any, b: Any) -> Diff:
    return diff_module.diff(analysis(a), analysis(b))


def test_identical_dumps_have_no_diff() -> None:
    services = base_services()
    d = diff(dump(services, "node-a"), dump(services, "node-a"))
    assert d.empty
    assert "no differences" in render_diff_text(d)


def test_counters_and_line_numbers_do_not_count() -> None:
    services = base_services()
    text = dump_text(services, "node-a")
    counted = text.replace(":INPUT ACCEPT [0:0]", ":INPUT ACCEPT [1234:98765]")
    shifted = "# a comment moves every line\n" + counted
    assert diff(load(text), load(shifted)).empty


def test_services_and_endpoints_changed() -> None:
    a = base_services()
    b = copy.deepcopy(a)
    b = [s for s in b if s.name != "affine"]
    b.append(ServiceSpec("default", "fresh", "10.96.10.20", [PortSpec("http", 80, target_port=8080)],
                         endpoints=[EndpointSpec("10.244.2.40", 8080)]))
    web = svc(b, "web")
    web.ports[0].node_port = 30081
    web.endpoints = [EndpointSpec("10.244.1.5", 8080), EndpointSpec("10.244.3.5", 8080),
                     EndpointSpec("10.244.3.6", 8080)]
    svc(b, "fw").lb_source_ranges = ["192.0.2.0/28"]
    d = diff(dump(a, "node-a"), dump(b, "node-a"))
    assert [s.service for s in d.added] == ["default/fresh:http"]
    assert [s.service for s in d.removed] == ["default/affine"]
    changed = {c.service: c for c in d.changed}
    assert set(changed) == {"default/web:http", "default/fw:http"}
    assert changed["default/web:http"].fields == (FieldChange("node_port", 30080, 30081),)
    web_eps = changed["default/web:http"].endpoints
    assert [(e.endpoint, e.change) for e in web_eps] == [
        ("10.244.1.5:8080", "probability"), ("10.244.2.5:8080", "removed"), ("10.244.3.5:8080", "added"),
        ("10.244.3.6:8080", "added")]
    assert web_eps[0].before == 0.5 and web_eps[0].after == pytest.approx(1 / 3, abs=1e-6)
    assert web_eps[1] == EndpointChange("10.244.2.5:8080", "removed", 0.5, None)
    assert changed["default/fw:http"].fields == (
        FieldChange("lb_source_ranges", ("198.51.100.0/24",), ("192.0.2.0/28",)),)
    text = render_diff_text(d)
    assert "+ service default/fresh:http 10.96.10.20:80 (1 endpoint)" in text
    assert "- service default/affine 10.96.10.4:80 (1 endpoint)" in text
    assert "    node_port: 30080 -> 30081" in text
    assert "    - endpoint 10.244.2.5:8080 (p=0.5)" in text
    assert "    ~ endpoint 10.244.1.5:8080 probability 0.5 -> 0.3333" in text


def test_local_endpoints_differ_between_nodes() -> None:
    services = base_services()
    d = diff(dump(services, "node-a"), dump(services, "node-b"))
    changed = {c.service: c for c in d.changed}
    lb = changed["default/local-lb:https"]
    assert ("10.244.1.7:8443", "locality") in [(e.endpoint, e.change) for e in lb.endpoints]
    assert ("10.244.2.7:8443", "locality") in [(e.endpoint, e.change) for e in lb.endpoints]


def test_rules_outside_kube_proxy_chains() -> None:
    services = base_services()
    plain = render(with_local(services, "node-a"), node_ips=[NODES["node-a"]], pod_cidr=POD_CIDR)
    calico = render(with_local(services, "node-a"), node_ips=[NODES["node-a"]], pod_cidr=POD_CIDR, extra=CALICO)
    d = diff(load(plain), load(calico))
    assert not d.added and not d.removed and not d.changed
    got = [(r.table, r.chain, r.change, r.rule) for r in d.rules]
    assert got == [
        ("filter", "INPUT", "added", '-A INPUT -m comment --comment "cali:Cz_u1IQiXIMmKD4c" -j cali-INPUT'),
        ("filter", "cali-INPUT", "chain-added", ":cali-INPUT -"),
        ("filter", "cali-INPUT", "added", "-A cali-INPUT -p udp -m udp --dport 4789 -j ACCEPT"),
    ], got
    assert all(r.line > 0 for r in d.rules)
    back = diff(load(calico), load(plain))
    assert [r.change for r in back.rules] == ["removed", "chain-removed", "removed"]
    text = render_diff_text(d)
    assert "rules outside kube-proxy's chains:" in text
    assert "  + [filter] -A cali-INPUT -p udp -m udp --dport 4789 -j ACCEPT" in text


def test_json_shape() -> None:
    a = base_services()
    b = copy.deepcopy(a)
    svc(b, "web").endpoints.pop()
    doc = diff_to_json(diff(dump(a, "node-a"), dump(b, "node-a")))
    assert list(doc) == ["format", "a", "b", "era", "services_added", "services_removed", "services_changed",
                         "rules", "mode", "equivalent", "notes", "warnings"]
    assert (doc["mode"], doc["equivalent"], doc["notes"], doc["warnings"]) == (
        {"a": "iptables", "b": "iptables"}, False, [], [])
    assert doc["a"] == "node-a.txt"
    (web,) = doc["services_changed"]
    assert web["service"] == "default/web:http"
    assert {"endpoint": "10.244.2.5:8080", "change": "removed", "a": 0.5, "b": None} in web["endpoints"]
    assert json.loads(json.dumps(doc)) == doc


def test_an_ipv6_service_port_added_or_removed_is_written_with_brackets() -> None:
    # `fd00:10:96::7d:8080` reads as an address; the port of an IPv6 ClusterIP is `[fd00:10:96::7d]:8080`.
    text = (SAMPLES / "ipv6.txt").read_text()
    without = "\n".join(line for line in text.splitlines() if "default/orders" not in line) + "\n"
    d = diff(load(text, source="a.txt"), load(without, source="b.txt"))
    assert "- service default/orders:http [fd00:10:96::7d]:8080 (0 endpoints)" in render_diff_text(d)
    d = diff(load(without, source="b.txt"), load(text, source="a.txt"))
    assert "+ service default/orders:http [fd00:10:96::7d]:8080 (0 endpoints)" in render_diff_text(d)
