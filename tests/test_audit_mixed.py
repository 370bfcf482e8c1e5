"""audit over a fleet migrating between proxy modes: a collection directory whose nodes run kube-proxy in
iptables mode (iptables-save.txt) or nftables mode (iptables-save.txt with kubelet's chains only, plus
nft-ruleset.txt, as `iptrace collect` saves them). Nodes on another mode are named (proxy-mode-mismatch), and
their Service ports are still compared with the other nodes'."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from click.testing import CliRunner

from bench.make_samples import KUBELET_ONLY_NFT
from bench.synth import EndpointSpec, render
from bench.synth_nft import render_nft
from iptrace.cli import main
from iptrace.collect import store
from iptrace.collect.inputs import inputs_from_directory
from iptrace.kube.audit import PROXY_MODE_MISMATCH, AuditReport, audit
from iptrace.render.audit import audit_to_json, render_audit_text
from tests.test_compare import NODES, POD_CIDR, base_services, svc, with_local

SERVICE_CIDR = "10.96.0.0/12"


def write_node(snap: Path, node: str, mode: str, services: list[object]) -> None:
    specs = with_local(services, node)  # type: ignore[arg-type]
    meta = {"node": node, "host": node, "addresses": [NODES[node]]}
    if mode == "iptables":
        files = {store.DUMP_FILE: render(specs, node_ips=[NODES[node]], pod_cidr=POD_CIDR).encode()}
    else:
        nft = render_nft(specs, node_ips=[NODES[node]], pod_cidr=POD_CIDR, service_cidrs=[SERVICE_CIDR])
        files = {store.DUMP_FILE: KUBELET_ONLY_NFT.encode(), store.NFT_FILE: nft.encode()}
    store.write_node_dir(snap / node, files, meta)


def fleet(tmp_path: Path, modes: dict[str, str], changed: dict[str, list[object]] | None = None) -> Path:
    snap = tmp_path / "snap"
    for node, mode in modes.items():
        write_node(snap, node, mode, (changed or {}).get(node, base_services()))
    return snap


def run(snap: Path) -> AuditReport:
    return audit(inputs_from_directory(snap))


def ids(report: AuditReport) -> list[tuple[str, str, str | None]]:
    return [(f.node or "", f.id, f.service) for f in report.findings]


def test_an_nft_node_forwarding_alike_is_only_named(tmp_path: Path) -> None:
    report = run(fleet(tmp_path, {"node-a": "iptables", "node-b": "iptables", "node-c": "nftables"}))
    assert ids(report) == [("node-c", PROXY_MODE_MISMATCH, None)], render_audit_text(report, verbose=True)
    (finding,) = report.findings
    assert finding.severity == "warning"
    assert finding.summary == "node-c: kube-proxy runs in nftables mode here; 2 other nodes run it in iptables mode"
    assert "node-a, node-b" in finding.detail
    modes = {n.name: (n.mode, n.dataplane, n.status) for n in report.nodes}
    assert modes == {"node-a": ("iptables", "iptables", "ok"), "node-b": ("iptables", "iptables", "ok"),
                     "node-c": ("nftables", "nftables", "ok")}
    assert report.nodes[2].services == report.nodes[0].services
    text = render_audit_text(report)
    header = next(line for line in text.splitlines() if line.startswith("NODE"))
    assert header.split() == ["NODE", "STATUS", "MODE", "ERA", "SERVICES", "FINDINGS"]
    assert "era-mismatch" not in text


def test_service_ports_are_still_compared_across_modes(tmp_path: Path) -> None:
    stale = copy.deepcopy(base_services())
    svc(stale, "web").endpoints.append(EndpointSpec("10.244.2.99", 8080))
    snap = fleet(tmp_path, {"node-a": "iptables", "node-b": "iptables", "node-c": "nftables"}, {"node-c": stale})
    report = run(snap)
    got = ids(report)
    assert ("node-c", "endpoints-differ", "default/web:http") in got, render_audit_text(report, verbose=True)
    summary = next(f for f in report.findings if f.id == "kube-proxy-stale")
    assert summary.node == "node-c" and "another proxy mode (see proxy-mode-mismatch)" in summary.summary
    assert not [f for f in report.findings if f.node in ("node-a", "node-b")]


def test_the_iptables_node_is_the_odd_one_out_too(tmp_path: Path) -> None:
    report = run(fleet(tmp_path, {"node-a": "nftables", "node-b": "iptables", "node-c": "nftables"}))
    assert ids(report) == [("node-b", PROXY_MODE_MISMATCH, None)]
    assert "runs in iptables mode here; 2 other nodes run it in nftables mode" in report.findings[0].summary


def test_a_tie_names_every_node(tmp_path: Path) -> None:
    report = run(fleet(tmp_path, {"node-a": "iptables", "node-c": "nftables"}))
    assert sorted(ids(report)) == [("node-a", PROXY_MODE_MISMATCH, None), ("node-c", PROXY_MODE_MISMATCH, None)]


def test_cli_audit_of_a_mixed_collection(tmp_path: Path) -> None:
    snap = fleet(tmp_path, {"node-a": "iptables", "node-b": "iptables", "node-c": "nftables"})
    result = CliRunner().invoke(main, ["audit", str(snap), "-o", "json"])
    assert result.exit_code == 0, result.output  # a warning is no error
    doc = json.loads(result.output)
    assert [(n["name"], n["mode"]) for n in doc["nodes"]] == [
        ("node-a", "iptables"), ("node-b", "iptables"), ("node-c", "nftables")]
    assert [f["id"] for f in doc["findings"]] == [PROXY_MODE_MISMATCH]
    assert audit_to_json(run(snap))["findings"] == doc["findings"]


def test_with_cluster_data_every_node_is_compared_with_the_api(tmp_path: Path) -> None:
    from tests.test_compare import cluster_of

    snap = fleet(tmp_path, {"node-a": "iptables", "node-b": "iptables", "node-c": "nftables"})
    cluster = cluster_of(base_services(), extra=False)
    report = audit(inputs_from_directory(snap, cluster=cluster), cluster)
    assert ids(report) == [("node-c", PROXY_MODE_MISMATCH, None)], render_audit_text(report, verbose=True)
    stale = copy.deepcopy(base_services())
    svc(stale, "web").endpoints.append(EndpointSpec("10.244.2.99", 8080))
    snap = fleet(tmp_path / "stale", {"node-a": "iptables", "node-b": "iptables", "node-c": "nftables"},
                 {"node-c": stale})
    report = audit(inputs_from_directory(snap, cluster=cluster), cluster)
    assert ("node-c", "stale-endpoints", "default/web:http") in ids(report), render_audit_text(report, verbose=True)


def test_directories_saved_by_hand_are_nodes_whatever_dump_they_hold(tmp_path: Path) -> None:
    # A person who saved `iptables-save` on one node and `nft list ruleset` on another (no meta.json, no
    # kubelet-only iptables-save.txt) audits them as one fleet: no node is skipped for lack of a file.
    hand = tmp_path / "hand"
    for node, mode in {"node-a": "iptables", "node-c": "nftables"}.items():
        write_node(tmp_path / "snap", node, mode, base_services())
        (hand / node).mkdir(parents=True)
        name = store.DUMP_FILE if mode == "iptables" else store.NFT_FILE
        (hand / node / name).write_bytes((tmp_path / "snap" / node / name).read_bytes())
    (hand / "node-x").mkdir()
    (hand / "node-x" / store.META_FILE).write_text('{"node": "node-x"}')  # its dump lost: said, not skipped
    assert [store.is_node_dir(hand / n) for n in ("node-a", "node-c", "node-x")] == [True, True, False]
    result = CliRunner().invoke(main, ["audit", str(hand), "-o", "json"])
    assert result.exit_code == 3, result.output  # (an error finding: node-x's load-error)
    doc = json.loads(result.stdout)
    assert [(n["name"], n["status"], n["mode"]) for n in doc["nodes"]] == [
        ("node-a", "ok", "iptables"), ("node-c", "ok", "nftables"), ("node-x", "load-error", "-")]
    missing = next(f for f in doc["findings"] if f["node"] == "node-x")
    assert "iptables-save.txt: missing" in missing["detail"] and "nft-ruleset.txt" in missing["detail"]
    # One such directory alone is a node too, for audit as for services.
    alone = CliRunner().invoke(main, ["audit", str(hand / "node-c"), "-o", "json"])
    assert alone.exit_code == 0 and [n["mode"] for n in json.loads(alone.stdout)["nodes"]] == ["nftables"]
    services = CliRunner().invoke(main, ["services", str(hand / "node-c"), "-o", "json"])
    assert services.exit_code == 0 and len(json.loads(services.stdout)) == len(json.loads(
        CliRunner().invoke(main, ["services", str(tmp_path / "snap" / "node-c"), "-o", "json"]).stdout))


def test_an_nft_ruleset_without_ip_tables_is_a_node_without_kube_proxy(tmp_path: Path) -> None:
    """An empty `nft -j list ruleset` (no ip, ip6 or inet table) given to audit is read: the node has no kube-proxy
    rules, as `services` says of it, not a load error without a reason."""
    empty = tmp_path / "bare.json"
    empty.write_text('{"nftables": [{"metainfo": {"version": "1.0.9", "json_schema_version": 1}}]}')
    other = Path(__file__).parent.parent / "sample_dumps" / "nodeport-fb-backends-nft.nft"
    done = CliRunner().invoke(main, ["audit", str(empty), str(other), "--jobs", "1", "-o", "json"])
    assert done.exit_code == 3, done.output
    doc = json.loads(done.output)
    nodes = {n["name"]: (n["status"], n["dataplane"], n["error"]) for n in doc["nodes"]}
    assert nodes == {"bare.json": ("no-kube-proxy", "nftables", None),
                     "nodeport-fb-backends-nft.nft": ("ok", "nftables", None)}
    assert [(f["node"], f["id"]) for f in doc["findings"]] == [("bare.json", "no-kube-proxy-rules")]


def test_evidence_of_an_nft_listing_is_the_rule_without_the_listings_indentation(tmp_path: Path) -> None:
    stale = copy.deepcopy(base_services())
    svc(stale, "web").endpoints.append(EndpointSpec("10.244.2.99", 8080))
    snap = fleet(tmp_path, {"node-a": "nftables", "node-b": "nftables", "node-c": "nftables"}, {"node-c": stale})
    doc = audit_to_json(run(snap))
    evidence = [e for f in doc["findings"] for e in f["evidence"]]
    assert evidence and all(e["rule"] == e["rule"].strip() and e["line"] > 0 for e in evidence), evidence
    assert "dnat to 10.244.2.99:8080" in str(evidence)


def test_endpoints_differ_on_an_nft_node_names_no_iptables_chain(tmp_path: Path) -> None:
    stale = copy.deepcopy(base_services())
    svc(stale, "web").endpoints.append(EndpointSpec("10.244.2.99", 8080))
    report = run(fleet(tmp_path, {"node-a": "nftables", "node-b": "nftables", "node-c": "nftables"},
                       {"node-c": stale}))
    (finding,) = [f for f in report.findings if f.id == "endpoints-differ"]
    assert "service-… chain in nftables mode" in finding.detail, finding.detail


def test_a_node_differing_from_a_node_of_its_own_mode_is_stale_not_skewed(tmp_path: Path, monkeypatch) -> None:
    """Mid-migration, an nftables-mode node whose endpoints differ while another nftables-mode node forwards like
    the rest: the difference is not the mode's, so its kube-proxy looks stale and the fix is a restart (the summary
    blamed the proxy mode and said 'run the fleet's kube-proxy proxy mode on node-d')."""
    monkeypatch.setitem(NODES, "node-d", "192.168.49.5")
    stale = copy.deepcopy(base_services())
    svc(stale, "web").endpoints.append(EndpointSpec("10.244.2.99", 8080))
    report = run(fleet(tmp_path, {"node-a": "iptables", "node-b": "iptables", "node-c": "nftables",
                                  "node-d": "nftables"}, {"node-d": stale}))
    (summary,) = [f for f in report.findings if f.id == "kube-proxy-stale"]
    assert summary.node == "node-d", render_audit_text(report, verbose=True)
    assert "looks stale" in summary.summary and "proxy mode" not in summary.summary, summary.summary
    assert summary.fix.startswith("restart kube-proxy on node-d"), summary.fix


def test_a_way_in_reaching_the_endpoints_in_one_mode_only_is_a_finding(tmp_path: Path) -> None:
    """An nftables-mode node whose kube-proxy accepts NodePorts on another address than the one it is reached at
    (--nodeport-addresses; nftables mode's default is the primary address) forwards to the same endpoints as the
    iptables-mode nodes, but its nodePorts reach none: a finding, as `iptrace diff` of the two nodes says (the
    audit compared ways in among nodes of the majority's mode only, and proxy-mode-mismatch said 'none means it
    forwards every one as they do')."""
    snap = fleet(tmp_path, {"node-a": "iptables", "node-b": "iptables"})
    specs = with_local(base_services(), "node-c")  # type: ignore[arg-type]
    nft = render_nft(specs, node_ips=["172.16.0.4"], pod_cidr=POD_CIDR, service_cidrs=[SERVICE_CIDR])
    store.write_node_dir(snap / "node-c", {store.DUMP_FILE: KUBELET_ONLY_NFT.encode(), store.NFT_FILE: nft.encode()},
                         {"node": "node-c", "host": "node-c", "addresses": [NODES["node-c"]]})
    report = run(snap)
    differs = [f for f in report.findings if f.id == "forwarding-differs"]
    assert {(f.node, f.service) for f in differs} >= {("node-c", "default/web:http")}, render_audit_text(report)
    web = next(f for f in differs if f.service == "default/web:http")
    assert "<node>:30080" in web.summary and "nftables" in web.detail, (web.summary, web.detail)
    assert not [f for f in report.findings if f.node in ("node-a", "node-b") and f.id != PROXY_MODE_MISMATCH]
    diff = CliRunner().invoke(main, ["diff", str(snap / "node-a"), str(snap / "node-c")])
    assert "<node>:30080" in diff.output, diff.output


def test_an_nft_nodes_findings_quote_a_line_in_one_form(tmp_path: Path) -> None:
    """Audit quotes each line as its port digests do (the line as listed, compared across nodes): the findings
    the API comparison makes say an nft map element's line the same way as the findings between nodes."""
    from tests.test_compare import cluster_of

    moved = copy.deepcopy(base_services())
    svc(moved, "web").ports[0].node_port = 30081
    snap = fleet(tmp_path, {"node-a": "nftables", "node-b": "nftables", "node-c": "nftables"}, {"node-c": moved})
    cluster = cluster_of(base_services(), extra=False)
    doc = audit_to_json(audit(inputs_from_directory(snap, cluster=cluster), cluster))
    quoted: dict[int, set[str]] = {}
    for f in doc["findings"]:
        if f["node"] == "node-c" or "node-c" in str(f.get("nodes", "")):
            for e in f["evidence"]:
                quoted.setdefault(e["line"], set()).add(e["rule"])
    listed = (snap / "node-c" / store.NFT_FILE).read_text().split("\n")
    element = [n for n, rules in quoted.items() if any("30081" in r for r in rules)]
    assert element, doc["findings"]
    for n in element:
        assert quoted[n] == {listed[n - 1].strip()}, (n, quoted[n])
