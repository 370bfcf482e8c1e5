"""`iptrace collect --via api` and `iptrace audit --via api` through the CLI: bad input is one line and exit 1
with nothing written; options of the other way in are usage errors; a real collection and audit of a fake
cluster whose nodes are network namespaces (tests/apicluster.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from iptrace.cli import main
from tests.apicluster import FakeCluster, can_make_nodes

needs_nodes = pytest.mark.skipif(can_make_nodes() is not None, reason=str(can_make_nodes()))


@pytest.fixture
def cluster(tmp_path: Path):
    fake = FakeCluster(tmp_path)
    try:
        yield fake
        if fake.server is not None:
            assert fake.leftovers() == []
    finally:
        fake.stop()


def _run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_bad_input_is_one_line_exit_1_and_nothing_written(cluster: FakeCluster):
    cluster.add_node("node-a", netns=False)
    cluster.start()
    out = cluster.root / "snap"
    base = ["collect", "--via", "api", "--kubeconfig", str(cluster.kubeconfig), "--out", str(out)]
    url = cluster.server.url  # type: ignore[union-attr]
    for extra, line in (
        (["--context", "nope"], f"Error: kubeconfig {cluster.kubeconfig} has no context 'nope'; see kubectl config "
                                "get-contexts"),
        (["node-z"], f"Error: node 'node-z' is not a node of the cluster at {url} (its nodes: node-a); see kubectl "
                     "get nodes"),
        (["--pod-namespace", "nope"], f"Error: namespace 'nope' does not exist in the cluster at {url} "
                                      "(--pod-namespace); create it or pass another"),
        (["--pod-namespace", "Not_A_Namespace"], "Error: bad --pod-namespace 'Not_A_Namespace'; a namespace is a DNS "
                                                 "label (a-z, 0-9, -)"),
    ):
        result = _run(*base, *extra)
        assert (result.exit_code, result.stderr) == (1, line + "\n"), result.output
        assert result.stdout == ""
        assert not out.exists()
    missing = cluster.root / "missing-kubeconfig"
    result = _run("collect", "--via", "api", "--kubeconfig", str(missing), "--out", str(out))
    assert (result.exit_code, result.stderr) == (1, f"Error: kubeconfig {missing} does not exist; pass --kubeconfig "
                                                    "PATH or set KUBECONFIG\n")
    assert not out.exists()


def test_options_of_the_other_way_in_are_usage_errors(tmp_path: Path):
    out = str(tmp_path / "o")
    result = _run("collect", "--via", "api", "--sudo", "--out", out)
    assert result.exit_code == 2 and "Error: --sudo applies to --via ssh only" in result.stderr
    result = _run("collect", "--via", "api", "-i", "key", "--out", out)
    assert result.exit_code == 2 and "Error: -i applies to --via ssh only" in result.stderr
    result = _run("collect", "node1", "--pod-namespace", "iptrace", "--out", out)
    assert result.exit_code == 2 and "Error: --pod-namespace applies to --via api only" in result.stderr
    result = _run("collect", "node1", "--api-method", "pod", "--out", out)
    assert result.exit_code == 2 and "Error: --api-method applies to --via api only" in result.stderr


def test_the_cli_default_image_is_the_librarys():
    from iptrace.cli.fleet import DEFAULT_IMAGE
    from iptrace.collect.api_pod import DEFAULT_IMAGE as LIBRARY_DEFAULT

    assert DEFAULT_IMAGE == LIBRARY_DEFAULT


SERVICE = {"metadata": {"name": "svc1", "namespace": "ns1"},
           "spec": {"type": "ClusterIP", "clusterIP": "198.19.0.10", "clusterIPs": ["198.19.0.10"],
                    "ports": [{"name": "p80", "port": 80, "protocol": "TCP", "targetPort": 80}]}}
SLICE = {"metadata": {"name": "svc1-abcde", "namespace": "ns1", "labels": {"kubernetes.io/service-name": "svc1"}},
         "addressType": "IPv4", "ports": [{"name": "p80", "port": 80, "protocol": "TCP"}],
         "endpoints": [{"addresses": ["198.18.128.1"], "conditions": {"ready": True}}]}


@needs_nodes
def test_collect_and_audit_via_api(cluster: FakeCluster):
    cluster.add_node("node-a")
    cluster.add_node("node-b", kube_proxy=False)
    server = cluster.start()
    server.objects["Service"] = [SERVICE]
    server.objects["EndpointSlice"] = [SLICE]
    out = cluster.root / "snap"
    result = _run("collect", "--via", "api", "--kubeconfig", str(cluster.kubeconfig), "--out", str(out),
                  "-o", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["node"], r["ok"]) for r in rows] == [("node-a", True), ("node-b", True)]
    assert rows[1]["notes"] == ["collected with a collector pod: no running kube-proxy pod (k8s-app=kube-proxy in "
                                "kube-system) on the node"]
    assert sorted(p.name for p in (out / "node-b").iterdir()) == [
        "conntrack.txt", "ip6tables-save.txt", "iptables-save.txt", "meta.json", "nft-ruleset.txt", "routes.txt"]

    # The text table says how each node was reached when it had to fall back.
    result = _run("collect", "--via", "api", "node-b", "--kubeconfig", str(cluster.kubeconfig), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1].startswith("node-b  ok    ")
    assert "(collected with a collector pod: no running kube-proxy pod" in result.stdout

    # audit --via api collects the same way, then compares with the same cluster's Services.
    result = _run("audit", "--via", "api", "--kubeconfig", str(cluster.kubeconfig), "-o", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [(n["name"], n["status"], n["kube_node"]) for n in report["nodes"]] == [
        ("node-a", "ok", "node-a"), ("node-b", "ok", "node-b")]
    assert not [f for f in report["findings"] if f["severity"] == "error"], report["findings"]
    # (collected into a temporary directory, gone with the audit: no finding's fix names it)
    assert [n["explain_at"] for n in report["merge"]["nodes"]] == [None, None]

    # What the README tells a user to run to find leftovers, with the real kubectl against the same server.
    if shutil.which("kubectl"):
        listed = subprocess.run(["kubectl", "--kubeconfig", str(cluster.kubeconfig), "get", "pods", "-A", "-l",
                                 "app.kubernetes.io/name=iptrace-collector"], capture_output=True, text=True)
        assert (listed.returncode, listed.stdout, listed.stderr) == (0, "", "No resources found\n")


@needs_nodes
def test_a_node_the_audit_could_not_collect_is_named_so_with_no_ssh_advice(cluster: FakeCluster):
    """`audit --via api` where PodSecurity refuses the collector pod of a node without a kube-proxy pod: its
    load-error said "its rules could not be read" and advised re-collecting with `iptrace collect` (SSH, the
    default, where SSH is closed); it says the node could not be collected, and why, and to audit again once
    that is fixed. Its merged shard says the same."""
    cluster.add_node("node-a")
    cluster.add_node("node-b", kube_proxy=False)
    cluster.start(namespaces={"default": {"pod-security.kubernetes.io/enforce": "baseline"}, "kube-system": {}})
    result = _run("audit", "--via", "api", "--kubeconfig", str(cluster.kubeconfig), "-o", "json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    [lost] = [f for f in report["findings"] if f["id"] == "load-error"]
    assert (lost["node"], lost["summary"]) == ("node-b", "node-b: could not be collected")
    assert lost["detail"].startswith("could not be collected: PodSecurity admission rejected the collector pod")
    assert "iptrace collect" not in lost["fix"] and "audit again" in lost["fix"]
    shard = cluster.root / "shard.json"
    shard.write_text(result.stdout)
    merged = _run("audit", "--merge", str(shard))
    assert merged.exit_code == 1
    assert "✗ [node-b] could not be collected   (load-error)" in merged.stdout, merged.stdout
    assert "iptrace collect" not in merged.stdout


def test_audit_via_api_without_the_right_to_list_services_says_how_to_audit_without_them(cluster: FakeCluster):
    """RBAC for `collect --via api` alone (no list services): `audit --via api` stopped at "forbidden: list services"
    with the advice to ask for it or give --namespace, though collect then audit DIR works with what was granted."""
    from tests.apiserver import Grant

    cluster.add_node("node-a", netns=False)
    server = cluster.start(tokens={"t": Grant("alice", denied=frozenset({("list", "services")}))})
    result = _run("audit", "--via", "api", "--kubeconfig", str(cluster.kubeconfig))
    assert result.exit_code == 1
    assert result.stderr == (f"Error: forbidden: list services at cluster scope for user alice at {server.url}; ask for "
                             "that permission or limit to one --namespace; or audit the nodes without the API's "
                             "Services: `iptrace collect --via api --out DIR`, then `iptrace audit DIR`\n"), \
        result.stderr
    assert server.kubelet.created == []  # type: ignore[union-attr]

