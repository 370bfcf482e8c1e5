"""Nodes of different clusters in one audit: told apart (other-cluster) and compared only within their own
cluster, while a node that merely lags behind stays with its cluster and keeps its findings."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

from iptrace.cli import main
from iptrace.kube.fleets import MIN_PORTS, cluster_groups

SAMPLE = Path(__file__).resolve().parent.parent / "sample_dumps" / "nodeport-fb-backends.txt"
REALWORLD = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus" / "realworld"


def _node(ports: dict[str, str]) -> Any:
    return SimpleNamespace(ports=[SimpleNamespace(key=k, cluster_ip=ip) for k, ip in ports.items()])


def _cluster(prefix: str, count: int, kubernetes: str | None = None) -> dict[str, str]:
    ports = {f"ns/svc{i}:http": f"{prefix}.{i}" for i in range(count)}
    if kubernetes is not None:
        ports["default/kubernetes:https"] = kubernetes
    return ports


def _groups(nodes: list[Any]) -> list[tuple[int, ...]]:
    return [g.members for g in cluster_groups(nodes, lambda n: n)]


def test_a_lagging_node_stays_with_its_cluster_another_cluster_does_not() -> None:
    a = _cluster("10.96.1", 20, "10.96.0.1")
    lagging = {k: v for k, v in list(a.items())[8:]}  # misses 8 Services…
    lagging["ns/svc10:http"] = "10.96.9.9"  # …and one was recreated with a new ClusterIP since
    other = _cluster("10.43.1", 20, "10.43.0.1")
    assert _groups([_node(a), _node(lagging), _node(other), _node(a)]) == [(0, 1, 3), (2,)]


def test_default_kubernetes_decides_and_few_ports_do_not_split() -> None:
    # The same Services with the same addresses but default/kubernetes elsewhere: another cluster.
    a = _cluster("10.96.1", 10, "10.96.0.1")
    b = {**a, "default/kubernetes:https": "10.100.0.1"}
    assert _groups([_node(a), _node(b)]) == [(0,), (1,)]
    # Kubeadm's defaults alike, every other Service different: another cluster too.
    assert _groups([_node(_cluster("10.96.1", 10, "10.96.0.1")),
                    _node(_cluster("10.97.1", 10, "10.96.0.1"))]) == [(0,), (1,)]
    # Fewer ports than MIN_PORTS: a Service recreated with a new ClusterIP looks the same; nodes stay together.
    small = MIN_PORTS - 1
    assert _groups([_node(_cluster("10.96.1", small)), _node(_cluster("10.97.1", small))]) == [(0, 1)]
    # A node without Service ports is no evidence either way.
    assert _groups([_node(a), _node({})]) == [(0, 1)]


def _another_cluster(text: str) -> str:
    """The sample node's rules as another cluster would write them: every Service address moved to 172.x."""
    return re.sub(r"-d 10\.(9[6-9]|10[0-9])\.", lambda m: f"-d 172.{m.group(1)}.", text)


def test_an_audit_of_two_clusters_compares_each_with_its_own(tmp_path: Path) -> None:
    text = SAMPLE.read_text()
    moved = _another_cluster(text)
    assert moved != text
    for name, content in (("a1.txt", text), ("a2.txt", text), ("b1.txt", moved)):
        (tmp_path / name).write_text(content)
    result = CliRunner().invoke(main, ["audit", "--jobs", "1", "-o", "json",
                                       *(str(tmp_path / n) for n in ("a1.txt", "a2.txt", "b1.txt"))])
    assert result.exit_code == 0, result.output
    findings = json.loads(result.stdout)["findings"]
    assert [(f["id"], f["node"]) for f in findings] == [("other-cluster", "b1")]
    assert "default/kubernetes at 172.96.0.1" in findings[0]["detail"]
    # Without b1's rules the comparison is the same (none): a1 and a2 are compared with each other only.
    alone = CliRunner().invoke(main, ["audit", "--jobs", "1", "-o", "json", str(tmp_path / "a1.txt"),
                                      str(tmp_path / "a2.txt")])
    assert json.loads(alone.stdout)["findings"] == []


@pytest.mark.skipif(not REALWORLD.is_dir(), reason="the shared corpus is not beside this checkout")
def test_real_dumps_of_three_clusters_are_not_compared_with_each_other() -> None:
    files = [str(REALWORLD / n) for n in ("012-k3s-counters-no-endpoints.txt", "017-kubeadm-flannel-kube-ext-master.txt",
                                          "034-eks-vpc-cni-iptables-S-format.txt")]
    result = CliRunner().invoke(main, ["audit", "--jobs", "1", "-o", "json", *files])
    findings = json.loads(result.stdout)["findings"]
    # k3s (10.43.0.1), kubeadm (10.96.0.1), EKS (10.100.0.1): no per-Service disagreement, no era mismatch
    # between clusters; two nodes are named as another cluster's.
    assert {f["id"] for f in findings} == {"other-cluster"}
    assert len(findings) == 2


def test_a_diff_of_two_clusters_says_so(tmp_path: Path) -> None:
    text = SAMPLE.read_text()
    (tmp_path / "a.txt").write_text(text)
    (tmp_path / "b.txt").write_text(_another_cluster(text))
    doc = json.loads(CliRunner().invoke(main, ["diff", str(tmp_path / "a.txt"), str(tmp_path / "b.txt"),
                                               "-o", "json"]).stdout)
    (warning,) = doc["warnings"]
    assert "different clusters (default/kubernetes:https is at 10.96.0.1 on one and at 172.96.0.1" in warning
    text_out = CliRunner().invoke(main, ["diff", str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]).stdout
    assert text_out.splitlines()[2].startswith("warning: the two dumps look like nodes of different clusters")
    # One cluster's node against itself: no warning.
    same = json.loads(CliRunner().invoke(main, ["diff", str(tmp_path / "a.txt"), str(tmp_path / "a.txt"),
                                                "-o", "json"]).stdout)
    assert same["warnings"] == []
