"""compare_with_cluster for some Service ports (`labels`): what `explain --cluster` and a filtered
`services --cluster` ask for, building only the views of those ports. Its findings must be exactly the whole
comparison's findings about them — on a node that disagrees with the API in every way at once (stale and new
endpoints, a missing, a deleted and a renumbered Service, a protocol change, an added address, policies), in
each era, with and without comments — and `explain` with it must answer as with the whole comparison."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from bench.synth import EndpointSpec, PortSpec, ServiceSpec
from iptrace.explain import Explainer
from iptrace.iptables import load
from iptrace.kube.compare import compare_with_cluster, view_service_label
from iptrace.render.explain import explain_to_json
from tests.dumps import analysis
from tests.test_compare import NODES, base_services, cluster_of, dump_text, svc


def _messy() -> tuple[list[ServiceSpec], list[ServiceSpec]]:
    """(what the node's rules were written from, what the API says now)."""
    old = base_services()
    old.append(ServiceSpec("default", "gone", "10.96.10.30", [PortSpec("http", 80, target_port=8080)],
                           endpoints=[EndpointSpec("10.244.2.50", 8080)]))
    new = copy.deepcopy(base_services())
    svc(new, "web").endpoints = [EndpointSpec("10.244.1.5", 8080), EndpointSpec("10.244.3.5", 8080)]
    svc(new, "web").ports[0].node_port = 30081
    svc(new, "local-lb").external_traffic_policy = "Cluster"
    svc(new, "affine").session_affinity_timeout = None
    svc(new, "fw").external_ips = ["198.51.100.77"]
    svc(new, "kube-dns").ports[1].protocol = "SCTP"
    new.append(ServiceSpec("default", "fresh", "10.96.10.20", [PortSpec("http", 80, target_port=8080)],
                           endpoints=[EndpointSpec("10.244.2.40", 8080)]))
    new.append(ServiceSpec("other", "reuse", "10.96.10.30", [PortSpec("web", 80, target_port=80)],
                           endpoints=[EndpointSpec("10.244.3.60", 80)]))
    return old, new


def _cases() -> list[tuple[str, str, bool]]:
    return [(era, node, comments) for era in ("current", "ext", "xlb") for node in ("node-a", "node-b")
            for comments in (True, False)]


def _text(era: str, node: str, comments: bool) -> str:
    old, _new = _messy()
    text = dump_text(old, node, era=era)
    return text if comments else re.sub(r' -m comment --comment (?:"[^"]*"|\S+)', "", text)


@pytest.mark.parametrize(("era", "node", "comments"), _cases())
def test_findings_about_some_ports_are_the_whole_comparisons(era: str, node: str, comments: bool) -> None:
    text = _text(era, node, comments)
    _old, new = _messy()
    cluster = cluster_of(new)
    ruleset = load(text, source=f"{node}.txt")
    whole = analysis(ruleset, cluster=cluster, node_ips=[NODES[node]])
    findings = compare_with_cluster(whole, cluster, node_name=node)
    assert len({f.id for f in findings}) >= 4, [f.id for f in findings]
    labels = sorted({f.service for f in findings if f.service} | {view_service_label(s) for s in whole.view.services}
                    | {"default/nope:http"})
    for label in labels:
        lazy = analysis(ruleset, cluster=cluster, node_ips=[NODES[node]])
        got = compare_with_cluster(lazy, cluster, node_name=node, labels={label})
        assert got == [f for f in findings if f.service == label], label
        assert len(lazy.views._ports) <= 2, (label, len(lazy.views._ports))  # (the port, a fragment at most)
    assert compare_with_cluster(analysis(ruleset, cluster=cluster, node_ips=[NODES[node]]), cluster,
                                node_name=node, labels=[f.service for f in findings if f.service]) == [
        f for f in findings if f.service]


def _questions(view: Any) -> list[tuple[str, int, str]]:
    out = [(s.cluster_ip, s.port, s.protocol) for s in view.services if s.cluster_ip and s.port]
    out += [(ip, s.port, s.protocol) for s in view.services for ip in (*s.external_ips, *s.lb_ips) if s.port]
    return [*sorted(set(out)), ("10.96.10.20", 80, "tcp"), ("10.96.10.30", 80, "tcp"), ("198.51.100.77", 80, "tcp")]


def test_explain_compares_only_what_a_question_concerns_and_answers_alike() -> None:
    _old, new = _messy()
    cluster = cluster_of(new)
    ruleset = load(_text("current", "node-a", True), source="node-a.txt")
    whole = analysis(ruleset, cluster=cluster, node_ips=[NODES["node-a"]])
    findings = compare_with_cluster(whole, cluster, node_name="node-a")
    eager = Explainer(analysis(ruleset, cluster=cluster, node_ips=[NODES["node-a"]]), cluster=cluster,
                      findings=findings)
    lazy_analysis = analysis(ruleset, cluster=cluster, node_ips=[NODES["node-a"]])
    lazy = Explainer(lazy_analysis, cluster=cluster)
    seen = set()
    for host, port, proto in _questions(whole.view):
        got = explain_to_json(lazy.explain(host, port, proto=proto))
        want = explain_to_json(eager.explain(host, port, proto=proto))
        assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True), (host, port, proto)
        seen |= {d["id"] for d in got["diagnoses"]}
    assert {"stale-endpoints", "missing-service", "unknown-service", "address-mismatch"} <= seen, seen
    assert len(lazy_analysis.views._ports) < len(whole.view.services)


def test_a_filtered_services_compares_the_ports_shown_as_the_whole_comparison_does(tmp_path: Any) -> None:
    from click.testing import CliRunner

    from iptrace.cli import main
    from tests.test_compare import api_objects

    old, new = _messy()
    dump = tmp_path / "node-a.txt"
    dump.write_text(dump_text(old, "node-a"))
    api = tmp_path / "cluster.json"
    api.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": api_objects(new)}))
    args = ["services", str(dump), "--cluster", str(api), "--node-ip", NODES["node-a"], "-o", "json"]
    whole = {(o["service"], o["protocol"]): o["findings"] for o in json.loads(CliRunner().invoke(main, args).stdout)}
    assert sum(map(len, whole.values())) >= 4
    for service in ("default/web", "default/gone", "kube-system/kube-dns", "default/fw"):
        result = CliRunner().invoke(main, [*args, "--service", service])
        assert result.exit_code == 0, result.output
        got = {(o["service"], o["protocol"]): o["findings"] for o in json.loads(result.stdout)}
        assert got and got == {k: v for k, v in whole.items() if k in got}, service


def test_one_comparison_answers_a_batch_pairing_the_node_once(monkeypatch: Any) -> None:
    import iptrace.kube.compare as compare

    _old, new = _messy()
    cluster = cluster_of(new)
    ruleset = load(_text("current", "node-a", True), source="node-a.txt")
    whole = compare_with_cluster(analysis(ruleset, cluster=cluster), cluster, node_name="node-a")
    plans = []
    real_plan = compare._Comparer.plan
    monkeypatch.setattr(compare._Comparer, "plan", lambda self: plans.append(1) or real_plan(self))
    one = compare.ClusterComparison(analysis(ruleset, cluster=cluster), cluster, node_name="node-a")
    labels = sorted({f.service for f in whole if f.service})
    for label in labels:  # one at a time, then all again (said once each), then everything
        assert one.findings({label}) == [f for f in whole if f.service == label]
    assert one.findings(labels) == [f for f in whole if f.service in labels]
    assert one.findings() == whole and plans == [1]
    # explain --dst-file --cluster: one Explainer, one pairing, however many questions.
    explainer = Explainer(analysis(ruleset, cluster=cluster), cluster=cluster)
    for host, port, proto in _questions(analysis(ruleset, cluster=cluster).view):
        explainer.explain(host, port, proto=proto)
    assert plans == [1, 1]
