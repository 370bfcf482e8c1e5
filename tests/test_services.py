"""`iptrace services`: the kube-proxy view against kube-proxy's own test objects (../shared/corpus), against the
Services each sample dump was generated from (sample_dumps/scenarios.json), golden text/json/dot/mermaid per
sample dump, and the small pieces (comments, filters, escaping, nodes without kube-proxy)."""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bench.synth import EndpointSpec, PortSpec, ServiceSpec, expected_service_ports
from iptrace.iptables import era as era_mod
from iptrace.iptables import load
from iptrace.iptables.comments import parse_comment
from iptrace.kube.select import filter_view
from iptrace.kube.view import split_service_port_name
from iptrace.render.graph import render_dot, render_mermaid
from iptrace.render.json import dumps
from iptrace.render.services import render_services_text, services_to_json, view_to_json
from tests.dumps import build_view

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_dumps"
GOLDEN = Path(__file__).resolve().parent / "golden"
CORPUS = ROOT.parent / "shared" / "corpus" / "kube-proxy"
FIXTURES = sorted(CORPUS.glob("*.json")) if CORPUS.is_dir() else []
SAMPLE_FILES = sorted(SAMPLES.glob("*.txt"))
SCENARIOS: dict[str, Any] = (json.loads((SAMPLES / "scenarios.json").read_text())
                             if (SAMPLES / "scenarios.json").exists() else {})


def _ip(text: str) -> str:
    """Normalized like kube-proxy's ParseIPSloppy (the BadIPs fixture writes 172.30.0.041)."""
    text = text.strip()
    if ":" in text:
        return str(ipaddress.ip_address(text))
    return ".".join(str(int(o)) for o in text.split("."))


def _cidr(text: str) -> str:
    addr, _, prefix = text.strip().partition("/")
    return str(ipaddress.ip_network(f"{_ip(addr)}/{prefix}", strict=False))


def _addr(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


# ------------------------------------------------------------------------------------------------ corpus


def _fixture_expectations(fx: dict[str, Any]) -> list[dict[str, Any]]:
    """One expectation per service port of the fixture's objects, in kube-proxy's own terms."""
    out = []
    for svc in fx["services"]:
        for p in svc["ports"]:
            name = f"{svc['namespace']}/{svc['name']}" + (f":{p['name']}" if p["name"] else "")
            target = p["targetPort"] or p["port"]
            endpoints: list[dict[str, Any]] = []
            for sl in fx["endpoints"]:
                if sl["namespace"] != svc["namespace"] or sl["service"] != svc["name"]:
                    continue
                port = next((x["port"] for x in sl["ports"] if x["name"] == p["name"]), None)
                if port is None:
                    continue
                endpoints += [dict(a, port=port) for a in sl["addresses"]]
            out.append({"name": name, "svc": svc, "port": p, "target": target, "endpoints": endpoints})
    return out


@pytest.mark.skipif(not FIXTURES, reason=f"conformance corpus not found at {CORPUS}")
@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_corpus_fixture_services_match_the_objects(path: Path) -> None:
    fx = json.loads(path.read_text())
    view = build_view(load(fx["dump"], source=path.name))
    got = {s["service"]: s for s in services_to_json(view)}
    expectations = _fixture_expectations(fx)
    if not fx["services"]:
        # TestTracePacket's ruleset is hand-written (no objects to compare with: its flows are checked
        # below); MasqueradeRule has no Service at all.
        assert bool(got) == ("TracePacket" in path.name)
        return
    assert set(got) == {e["name"] for e in expectations}
    for exp in expectations:
        s, svc, p = got[exp["name"]], exp["svc"], exp["port"]
        where = f"{path.name} {exp['name']}"
        assert s["protocol"] == p["protocol"].lower(), where
        assert s["cluster_ip"] == _ip(svc["clusterIP"]), where
        assert s["port"] == p["port"], where
        ready = [e for e in exp["endpoints"] if e["ready"] is not False]
        serving_terminating = [e for e in exp["endpoints"] if e["serving"] and e["terminating"]]
        has_endpoints = bool(ready or serving_terminating)
        external = svc["type"] in ("NodePort", "LoadBalancer")
        # A nodePort of 0 in the test object means "none allocated": kube-proxy writes no rule for it.
        assert s["node_port"] == ((p["nodePort"] or None) if external else None), where
        etp_local = external and svc["externalTrafficPolicy"] == "Local"
        hc = svc["healthCheckNodePort"] if svc["type"] == "LoadBalancer" and etp_local else None
        assert s["health_check_node_port"] == hc, where
        ext_ips = [_ip(x) for x in svc["externalIPs"]]
        lb_ips = [_ip(x) for x in svc["loadBalancerIPs"]] if svc["type"] == "LoadBalancer" else []
        if not has_endpoints:
            # kube-proxy's choice: without endpoints it writes one REJECT per address, and the same rule for
            # an externalIP as for a LoadBalancer IP, so the view cannot tell which one it is; no chain
            # carries the policies or the affinity either.
            assert s["no_endpoints"], where
            assert set(s["external_ips"]) | set(s["lb_ips"]) == set(ext_ips) | set(lb_ips), where
            assert s["endpoints"] == [], where
            assert all(e["verdict"] in ("REJECT", "ACCEPT") for e in s["entries"]), where
            continue
        assert s["external_ips"] == ext_ips, where
        assert s["lb_ips"] == lb_ips, where
        assert s["lb_source_ranges"] == [_cidr(r) for r in svc["loadBalancerSourceRanges"]], where
        if external or ext_ips:
            assert s["external_traffic_policy"] == ("Local" if etp_local else "Cluster"), where
        itp_local = svc["internalTrafficPolicy"] == "Local"
        assert s["internal_traffic_policy"] == ("Local" if itp_local else "Cluster"), where
        affinity = svc["sessionAffinityTimeoutSeconds"] if svc["sessionAffinity"] == "ClientIP" else None
        local_ready = [e for e in ready if e["isLocal"]]
        if not (itp_local and not local_ready):
            assert s["session_affinity_timeout"] == affinity, where
        # Endpoints kube-proxy uses: the ready ones; only when none is ready, the serving-terminating ones
        # (kube-proxy's choice: terminating endpoints are a fallback, never mixed with ready ones).
        used = ready or serving_terminating
        want = {_addr(_ip(e["ip"]), e["port"]) for e in used}
        if itp_local and not external:
            want = {_addr(_ip(e["ip"]), e["port"]) for e in used if e["isLocal"]}
        got_eps = {e["address"] for e in s["endpoints"]}
        if etp_local and not local_ready:
            # Local fallback to serving-terminating local endpoints joins them to the local chain.
            want |= {_addr(_ip(e["ip"]), e["port"]) for e in serving_terminating if e["isLocal"]}
        assert got_eps == want, where
        for e in s["endpoints"]:
            assert e["local"] == any(_addr(_ip(x["ip"]), x["port"]) == e["address"] and x["isLocal"]
                                     for x in exp["endpoints"]) or not (etp_local or itp_local), where
        in_cluster = next(e for e in view.services if e.label == exp["name"]).endpoints
        if any(e.in_cluster_chain for e in in_cluster):
            total = sum(e.probability for e in in_cluster if e.in_cluster_chain)
            assert total == pytest.approx(1.0, abs=1e-9), where


@pytest.mark.skipif(not FIXTURES, reason=f"conformance corpus not found at {CORPUS}")
def test_corpus_masquerade_and_flows_agree_with_kube_proxys_tracer() -> None:
    """Every fixture flow whose destination is a service entry: the view's endpoints for that entry are the
    tracer's DNAT set, and a DROP/REJECT in the tracer is a DROP/REJECT entry."""
    checked = 0
    for path in FIXTURES:
        fx = json.loads(path.read_text())
        view = build_view(load(fx["dump"], source=path.name))
        node_ips = set(fx.get("node_ips") or []) | set(fx.get("tracer_local_ips") or [])
        for flow in fx["flows"]:
            dst, port = _ip(flow["destIP"]), int(flow["destPort"])
            src = flow["sourceIP"]
            if src.startswith("10.") or _ip(src) in node_ips or src.startswith("127.") or src == "::1":
                continue  # pod and node clients: see test_trace (the view describes outside clients)
            entries = [e for s in view.services for e in s.entries
                       if e.port == port and (e.address == dst or (e.address is None and dst in node_ips))]
            if len(entries) != 1:
                continue
            entry, output = entries[0], flow["output"]
            if output in ("DROP", "REJECT", "ACCEPT"):
                assert entry.verdict == output, (path.name, flow)
            elif output:
                want = {x.strip() for x in output.split(",")}
                assert {r.endpoint for r in entry.reaches} == want, (path.name, flow)
                assert entry.masquerade != "never" or not flow["masq"], (path.name, flow)
            checked += 1
    assert checked >= 5


# ------------------------------------------------------------------------------------------------ sample dumps


def _spec(obj: dict[str, Any]) -> ServiceSpec:
    fields = {k: v for k, v in obj.items() if k in ServiceSpec.__dataclass_fields__}
    fields["ports"] = [PortSpec(**p) for p in obj["ports"]]
    fields["endpoints"] = [EndpointSpec(**e) for e in obj["endpoints"]]
    return ServiceSpec(**fields)


# The iptables samples (the nftables ones, *.nft, are checked in tests/test_samples_nft.py).
SCENARIO_NAMES = sorted(n for n, s in SCENARIOS.items() if s.get("dataplane", "iptables") == "iptables")


@pytest.mark.skipif(not SCENARIOS, reason="sample_dumps/scenarios.json not found")
@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_sample_dump_gives_back_its_scenario(name: str) -> None:
    scenario = SCENARIOS[name]
    view = build_view(load((SAMPLES / name).read_text(), source=name))
    if not scenario["kube_proxy"]:
        assert view.services == ()
        assert view.era.name in (era_mod.NONE, era_mod.NFTABLES, era_mod.IPVS)
        assert view.warnings  # says what the node has instead
        return
    services = [_spec(s) for s in scenario["services"]]
    ipv6 = scenario["family"] == "IPv6"
    expected = expected_service_ports(services, ipv6=ipv6, era=scenario["era"])
    comments = scenario.get("render_options", {}).get("comments", True)
    got = {s.label: s for s in view.services}
    if comments is False:
        # Large-cluster mode keeps the KUBE-SERVICES comments: names still come from them.
        assert all(s.identity == "comment" for s in view.services)
    assert set(got) == {e["service_port"] for e in expected}
    for exp in expected:
        s = got[exp["service_port"]]
        where = f"{name} {exp['service_port']}"
        assert (s.protocol, s.cluster_ip, s.port) == (exp["protocol"], exp["cluster_ip"], exp["port"]), where
        assert s.node_port == exp["node_port"], where
        assert s.health_check_node_port == exp["health_check_node_port"], where
        assert set(s.chains) >= set(exp["chains"].values()), where
        if not exp["has_endpoints"]:
            assert s.no_endpoints, where
            assert set(s.external_ips) | set(s.lb_ips) == set(exp["external_ips"]) | set(exp["lb_ips"]), where
            continue
        assert list(s.external_ips) == exp["external_ips"] and list(s.lb_ips) == exp["lb_ips"], where
        assert list(s.lb_source_ranges) == exp["lb_source_ranges"], where
        assert s.session_affinity_timeout == exp["session_affinity_timeout"], where
        if s.node_port or s.lb_ips or s.external_ips:
            assert s.external_traffic_policy == exp["external_traffic_policy"], where
        in_cluster = [e.address for e in s.endpoints if e.in_cluster_chain]
        assert in_cluster == exp["cluster_endpoints"] or "svc" not in exp["chains"], where
        assert sorted(e.address for e in s.endpoints if e.local) == sorted(
            exp["local_endpoints"]) or (not exp["local_endpoints"] and not any(e.local for e in s.endpoints)), where


def test_the_spec_example_reads_as_the_issue_shows_it() -> None:
    path = SAMPLES / "nodeport-fb-backends.txt"
    if not path.exists():
        pytest.skip("sample_dumps/nodeport-fb-backends.txt not generated yet")
    view = filter_view(build_view(load(path.read_text(), source=path.name)), service="default/fb-backends")
    (s,) = view.services
    assert (s.label, s.type, s.cluster_ip, s.port, s.node_port) == (
        "default/fb-backends:ka-port", "NodePort", "10.101.234.168", 5001, 30904)
    assert {(e.address, e.probability) for e in s.endpoints} == {("10.244.1.7:8001", 0.5), ("10.244.2.3:8001", 0.5)}
    text = render_services_text(view)
    assert "default/fb-backends:ka-port  tcp  NodePort  externalTrafficPolicy=Cluster" in text
    assert "10.101.234.168:5001" in text and "<node>:30904" in text
    assert "10.244.1.7:8001  50%" in text and "10.244.2.3:8001  50%" in text


RENDERERS: dict[str, Callable[[Any], str]] = {
    "services.txt": render_services_text,
    "services.json": lambda v: dumps(view_to_json(v)),
    "services.dot": render_dot,
    "services.mmd": render_mermaid,
}


@pytest.mark.skipif(not SAMPLE_FILES, reason="sample_dumps/*.txt not generated yet")
@pytest.mark.parametrize("dump", SAMPLE_FILES, ids=[p.stem for p in SAMPLE_FILES])
def test_golden(dump: Path, golden: Callable[[Path | str, str], None]) -> None:
    view = build_view(load(dump.read_text(), source=dump.name))
    for file, render in RENDERERS.items():
        golden(GOLDEN / dump.stem / file, render(view))


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz not installed")
@pytest.mark.skipif(not SAMPLE_FILES, reason="sample_dumps/*.txt not generated yet")
def test_dot_output_is_valid_graphviz() -> None:
    for dump in SAMPLE_FILES:
        view = build_view(load(dump.read_text(), source=dump.name))
        done = subprocess.run(["dot", "-Tsvg"], input=render_dot(view), capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 0, (dump.name, done.stderr)
        assert "<svg" in done.stdout


# ------------------------------------------------------------------------------------------------ units


@pytest.mark.parametrize(("comment", "expected"), [
    ("ns1/svc1:p80 cluster IP", ("ns1/svc1:p80", "clusterIP")),
    ("ns1/svc1 external IP", ("ns1/svc1", "externalIP")),
    ("ns5/svc5:p80 traffic not accepted by KUBE-FW-NUKIZ6OKUXPJNT4C", ("ns5/svc5:p80", "firewall")),
    ("masquerade LOCAL traffic for ns2/svc2:p80 external destinations", ("ns2/svc2:p80", "ext")),
    ("route LOCAL traffic for ns2/svc2:p80 LB IP to service chain", ("ns2/svc2:p80", "ext")),
    ("Balancing rule 0 for ns2/svc2:p80", ("ns2/svc2:p80", "endpoint")),
    ("ns4/svc4:p80 -> 10.180.0.5:80", ("ns4/svc4:p80", "endpoint")),
    ("default/nginx2:", ("default/nginx2:", "plain")),
    ("kubernetes service nodeports; NOTE: this must be the last rule in this chain", None),
    ("10.0.0.0/8", None),
])
def test_parse_comment(comment: str, expected: tuple[str, str] | None) -> None:
    assert parse_comment(comment) == expected


def test_split_service_port_name() -> None:
    assert split_service_port_name("ns/svc:http") == ("ns", "svc", "http")
    assert split_service_port_name("ns/svc") == ("ns", "svc", "")
    assert split_service_port_name("default/nginx2:") == ("default", "nginx2", "")


_XLB_2015 = """*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-SEP-CT24JF4JAT2YBPCZ - [0:0]
:KUBE-SEP-VMOA3QYF6HZH36PJ - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-4N57TFCL4MD7ZTDA - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -m mark --mark 0x4d415351 -j MASQUERADE
-A KUBE-NODEPORTS -p tcp -m comment --comment "default/nginx2:" -m tcp --dport 30061 -j MARK --set-xmark 0x4d415351/0xffffffff
-A KUBE-NODEPORTS -p tcp -m comment --comment "default/nginx2:" -m tcp --dport 30061 -j KUBE-SVC-4N57TFCL4MD7ZTDA
-A KUBE-SEP-CT24JF4JAT2YBPCZ -s 172.20.37.2/32 -m comment --comment "default/nginx2:" -j MARK --set-xmark 0x4d415351/0xffffffff
-A KUBE-SEP-CT24JF4JAT2YBPCZ -p tcp -m comment --comment "default/nginx2:" -m tcp -j DNAT --to-destination 172.20.37.2:80
-A KUBE-SEP-VMOA3QYF6HZH36PJ -s 172.20.14.3/32 -m comment --comment "default/nginx2:" -j MARK --set-xmark 0x4d415351/0xffffffff
-A KUBE-SEP-VMOA3QYF6HZH36PJ -p tcp -m comment --comment "default/nginx2:" -m tcp -j DNAT --to-destination 172.20.14.3:80
-A KUBE-SERVICES -d 10.0.0.233/32 -p tcp -m comment --comment "default/nginx2: cluster IP" -m tcp --dport 80 -j KUBE-SVC-4N57TFCL4MD7ZTDA
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-SVC-4N57TFCL4MD7ZTDA -m comment --comment "default/nginx2:" -m statistic --mode random --probability 0.25 -j KUBE-SEP-CT24JF4JAT2YBPCZ
-A KUBE-SVC-4N57TFCL4MD7ZTDA -m comment --comment "default/nginx2:" -j KUBE-SEP-VMOA3QYF6HZH36PJ
COMMIT
"""


def test_2015_format_and_probabilities_as_written() -> None:
    """The first iptables proxier: masquerading by a MARK value in POSTROUTING, "ns/svc:" comments; and a
    split that is not 1/n is reported as written (0.25, then 0.75 of the rest)."""
    view = build_view(load(_XLB_2015, source="2015"))
    assert view.masquerade_mark == "0x4d415351"
    (s,) = view.services
    assert (s.namespace, s.name, s.port_name, s.cluster_ip, s.port, s.node_port) == (
        "default", "nginx2", "", "10.0.0.233", 80, 30061)
    assert [(e.address, e.probability) for e in s.endpoints] == [("172.20.37.2:80", 0.25), ("172.20.14.3:80", 0.75)]
    node_port = next(e for e in s.entries if e.kind == "nodePort")
    assert node_port.masquerade == "always"
    cluster = next(e for e in s.entries if e.kind == "clusterIP")
    assert cluster.masquerade == "never"


def test_filter_view() -> None:
    if not (SAMPLES / "nodeport-fb-backends.txt").exists():
        pytest.skip("sample dump missing")
    view = build_view(load((SAMPLES / "nodeport-fb-backends.txt").read_text()))
    assert {s.namespace for s in filter_view(view, namespace="kube-system").services} == {"kube-system"}
    assert [s.label for s in filter_view(view, address="10.101.234.168").services] == ["default/fb-backends:ka-port"]
    assert [s.label for s in filter_view(view, address="10.101.234.168:5001").services] == [
        "default/fb-backends:ka-port"]
    assert filter_view(view, address="10.101.234.168:8001").services == ()  # the targetPort is no way in
    assert [s.label for s in filter_view(view, address="10.244.1.7").services] == ["default/fb-backends:ka-port"]
    karma = filter_view(view, service="default/karma-daemon").services
    assert len(karma) == 2 and all(s.name == "karma-daemon" for s in karma)
    narrowed = filter_view(view, service="default/fb-backends")
    assert set(narrowed.chain_labels.values()) == {"default/fb-backends:ka-port"}


def test_no_kube_proxy_says_what_the_node_has() -> None:
    ipvs = """*nat
:PREROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-LOAD-BALANCER - [0:0]
:KUBE-MARK-MASQ - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-SERVICES -m comment --comment "Kubernetes service cluster ip + port for masquerade purpose" -m set --match-set KUBE-CLUSTER-IP src,dst -j KUBE-MARK-MASQ
COMMIT
"""
    view = build_view(load(ipvs, source="ipvs"))
    assert view.era.name == era_mod.IPVS and view.services == ()
    assert "IPVS" in view.warnings[0]
    text = render_services_text(view)
    assert "IPVS mode" in text and "ipvsadm" in text
    assert services_to_json(view) == []
    assert "flowchart LR" in render_mermaid(view)


def test_mermaid_escapes_labels() -> None:
    view = build_view(load(_XLB_2015, source='say "hi" <b>'))
    out = render_mermaid(view)
    assert "<node>" not in out and "#lt;node#gt;" in out
    dot = render_dot(view)
    assert 'say \\"hi\\"' in dot


def test_a_mermaid_diagram_too_big_for_mermaid_says_so_on_stderr() -> None:
    """Mermaid (GitHub's) draws at most 500 edges and 50,000 characters: a bigger diagram is still written, and
    stderr says why it will not be drawn and what to do; a small one says nothing."""
    from click.testing import CliRunner

    from iptrace.cli import main
    from iptrace.render.graph import MERMAID_MAX_EDGES, mermaid_too_big

    big = CliRunner().invoke(main, ["services", str(SAMPLES / "large-cluster-no-comments.txt"), "-o", "mermaid"])
    assert big.exit_code == 0 and big.stdout.startswith("flowchart LR")
    edges = big.stdout.count(" -->")
    assert edges > MERMAID_MAX_EDGES
    assert big.stderr == f"note: {mermaid_too_big(big.stdout)}\n"
    assert f"has {edges:,} edges and {len(big.stdout):,} characters" in big.stderr and "-o svg" in big.stderr
    small = CliRunner().invoke(main, ["services", str(SAMPLES / "nodeport-fb-backends.txt"), "-o", "mermaid"])
    assert small.exit_code == 0 and small.stderr == ""
    assert mermaid_too_big("flowchart LR\n" + "  a --> b\n" * MERMAID_MAX_EDGES) is None
    assert mermaid_too_big("flowchart LR\n" + "  a --> b\n" * (MERMAID_MAX_EDGES + 1)) is not None


def test_json_is_stable_and_documented() -> None:
    """Every key services_to_json prints is documented in the README's JSON reference."""
    view = build_view(load(_XLB_2015, source="2015"))
    (obj,) = services_to_json(view)
    readme = (ROOT / "README.md").read_text()
    start = readme.index("### `iptrace services -o json`")
    doc = readme[start:readme.index("\n### ", start)]
    keys = set(obj) | set(obj["endpoints"][0]) | {k for e in obj["entries"] for k in e}
    keys |= {k for e in obj["entries"] for p in e["other_sources"] for k in p}
    missing = sorted(k for k in keys if f"`{k}`" not in doc)
    assert not missing, f"undocumented JSON keys: {missing}"
    assert json.loads(dumps(services_to_json(view))) == services_to_json(view)


REALWORLD = sorted((ROOT.parent / "shared" / "corpus" / "realworld").glob("*.txt"))


@pytest.mark.skipif(not REALWORLD, reason="realworld corpus not found")
@pytest.mark.parametrize("path", REALWORLD, ids=[p.stem for p in REALWORLD])
def test_realworld_dumps_render_without_error(path: Path) -> None:
    """Posted dumps, complete or not: the view and every renderer work on whatever could be read."""
    from iptrace.errors import IptraceError

    try:
        ruleset = load(path.read_text(errors="replace"), source=path.name, lenient=True)
    except IptraceError:
        pytest.skip("not loadable even leniently (the parser's tests cover the message)")
    view = build_view(ruleset)
    for render in RENDERERS.values():
        assert render(view)
    if "kubeadm-flannel" in path.name:
        jtest = next(s for s in view.services if s.label == "default/jtest")
        assert jtest.node_port == 31455 and len(jtest.endpoints) == 2


def test_mermaid_escapes_its_own_entity_sign() -> None:
    # Mermaid reads `#word;` in a label as the entity &word;: a literal `#` must be escaped too (#35;), or
    # "node#amp;1" would be drawn as "node&1".
    out = render_mermaid(build_view(load("*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n", source="node#amp;1 #lt;x")))
    assert "node#35;amp;1 #35;lt;x" in out and "node#amp;1" not in out


def test_a_nodeport_marked_for_drop_is_not_said_to_depend_on_the_node_holding_its_address() -> None:
    """A KUBE-XLB-era nodePort without a local endpoint, in a nat-only listing (kubelet's KUBE-FIREWALL is in
    filter): a nodePort is addressed to the node itself, so the note says kubelet's KUBE-FIREWALL drops it; it
    said it drops it 'only if this node itself holds 192.0.2.10', the stand-in a nodePort is traced to."""
    text = (SAMPLES / "xlb-era.txt").read_text()
    nat = text[text.index("*nat"):]
    nat = nat[:nat.index("COMMIT") + len("COMMIT\n")]
    view = build_view(load(nat))
    (port,) = [p for p in view.services if (p.namespace, p.name) == ("monitoring", "grafana")]
    (entry,) = [e for e in port.entries if e.kind == "nodePort"]
    assert not any("192.0.2.10" in n or "only if this node itself holds" in n for n in entry.notes), entry.notes
    assert any("KUBE-MARK-DROP" in n and "addressed to the node itself" in n for n in entry.notes), entry.notes
    (lb,) = [e for e in port.entries if e.kind == "loadBalancer"]
    assert any("only if this node itself holds 52.14.88.202" in n for n in lb.notes), lb.notes
    assert "192.0.2.10" not in render_services_text(view)
