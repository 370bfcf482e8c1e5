"""`audit` as a stream of nodes: one worker or several, a load memo or none, one audit or shards merged —
the same report, identical to iptrace.kube.audit.audit of every node analysed whole; a node that cannot be read
is one load-error and never stops the others; progress shows on a terminal only. The fleet is bench/fleet.py's
(kube-proxy's layout and flannel's rules, every node unique in a few rules) plus a stale node, a node in
another kube-proxy era, a node whose dump does not parse and a node with a conntrack table."""

from __future__ import annotations

import copy
import json
import os
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bench import fleet, synth
from bench.synth import EndpointSpec, PortSpec, ServiceSpec
from iptrace.cli import main
from iptrace.collect import store
from iptrace.collect.inputs import inputs_from_directory
from iptrace.collect.stream import analyse_nodes, conntrack, sources
from iptrace.kube.audit import audit, combine
from iptrace.kube.merge import merge, merge_json
from iptrace.render.audit import audit_to_json, render_audit_text
from tests import fleet_scenario
from tests.conftest import SAMPLES
from tests.sshd import free_port
from tests.terminal import on_a_terminal

ROOT = Path(__file__).resolve().parent.parent


def specs() -> list[ServiceSpec]:
    out = synth.scale(16, 3, seed=5)
    for k, svc in enumerate(out):
        for j, ep in enumerate(svc.endpoints):
            ep.ip = f"10.244.{(k * 3 + j) % 12}.{20 + k}"
    return out


@pytest.fixture(scope="module")
def snap(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fleet") / "snap"
    base = specs()
    for i in range(5):
        fleet.write_node(root, base, i)
    stale = specs()
    stale[3].endpoints.append(EndpointSpec("10.244.9.99", stale[3].endpoints[0].port))
    stale.append(ServiceSpec("default", "gone", "10.96.200.1", [PortSpec("http", 80, target_port=8080)],
                             endpoints=[EndpointSpec("10.244.9.98", 8080)]))
    fleet.write_node(root, stale, 5)
    store.write_node_dir(root / "node-006", {store.DUMP_FILE: fleet.node_dump(base, 6, era="xlb").encode()},
                         {"node": "node-006", "addresses": [fleet.node_ip(6)]})
    store.write_node_dir(root / "node-007", {store.DUMP_FILE: b"*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j\n"},
                         {"node": "node-007", "addresses": [fleet.node_ip(7)]})
    # The article's node, with its conntrack table (stale flows to kube-dns).
    store.write_node_dir(root / "node-008", {store.DUMP_FILE: (SAMPLES / "nodeport-fb-backends.txt").read_bytes(),
                                             store.CONNTRACK_FILE: (SAMPLES / "conntrack" /
                                                                    "nodeport-fb-backends.txt").read_bytes()},
                         {"node": "node-008", "addresses": ["192.168.49.2"]})
    return root


def reference(snap: Path) -> dict[str, Any]:
    """What audit() of every node analysed whole (the reference implementation) reports, conntrack included."""
    inputs = inputs_from_directory(snap)
    extra = []
    for node in inputs:
        path = snap / node.name / "conntrack.txt"
        if node.analyses and path.is_file():
            extra += conntrack(node.name, path, node.analyses, lenient=False)[0]
    from iptrace.kube.conntrack import add_findings

    return audit_to_json(add_findings(audit(inputs), extra))


def test_the_stream_reports_what_the_reference_audit_does(snap: Path) -> None:
    results = analyse_nodes(sources([str(snap)]), jobs=1)
    doc = audit_to_json(combine(results))
    assert doc == reference(snap)
    found = {(f["node"], f["id"]) for f in doc["findings"]}
    assert {("node-005", "endpoints-differ"), ("node-005", "service-only-on-node"), ("node-006", "era-mismatch"),
            ("node-007", "load-error"), ("node-008", "stale-conntrack")} <= found, sorted(found)
    assert [n["status"] for n in doc["nodes"]] == ["ok"] * 7 + ["load-error", "ok"]


def test_nodes_with_one_set_of_ports_are_compared_as_key_by_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    """The comparison's shortcut for nodes with the same Service ports at the same places (audit._alike: the ports that
    differ found a place at a time across the nodes) reports what comparing them key by key does: here one node's
    Service port has an endpoint the others lack and another's port has lost one."""
    from iptrace.kube import audit as audit_module

    root = tmp_path / "snap"
    for i in range(4):
        fleet.write_node(root, specs(), i)
    stale = specs()
    stale[3].endpoints.append(EndpointSpec("10.244.9.99", stale[3].endpoints[0].port))
    fleet.write_node(root, stale, 4)
    short = specs()
    short[6].endpoints.pop()
    fleet.write_node(root, short, 5)
    results = analyse_nodes(sources([str(root)]), jobs=1)
    alike = audit_module._alike
    taken: list[set[str] | None] = []
    monkeypatch.setattr(audit_module, "_alike", lambda by_node: taken.append(alike(by_node)) or taken[-1])
    fast = audit_to_json(combine(results))
    assert taken and all(t is not None for t in taken)  # (the shortcut was taken)
    monkeypatch.setattr(audit_module, "_alike", lambda by_node: None)
    assert fast == audit_to_json(combine(results))
    found = {(f["node"], f["id"]) for f in fast["findings"]}
    assert {("node-004", "endpoints-differ"), ("node-005", "endpoints-differ")} <= found, sorted(found)


def test_one_worker_or_several_memo_or_not_the_same_results(snap: Path) -> None:
    nodes = sources([str(snap)])
    one = analyse_nodes(nodes, jobs=1, pictures=True)
    assert analyse_nodes(nodes, jobs=1, pictures=True, memo=False) == one
    # Several workers, and another order: each node the same result whatever its worker saw before.
    order = list(range(len(nodes)))
    random.Random(7).shuffle(order)
    shuffled = analyse_nodes([nodes[i] for i in order], jobs=3, pictures=True)
    assert [shuffled[order.index(i)] for i in range(len(nodes))] == one


def test_digests_sent_once_then_by_number(snap: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a worker sends (stream._Sender: a digest sent before goes as its number, the numbering starting
    again past LIMIT) is what the parent rebuilds (stream._Interner with that worker's list), node after node."""
    from iptrace.collect import stream

    one = analyse_nodes(sources([str(snap)]), jobs=1)
    distinct = {p for r in one for f in r.families for p in f.ports}
    monkeypatch.setattr(stream._Sender, "LIMIT", len(distinct) - 1)  # (a reset as the second round starts)
    sender, keep, sent = stream._Sender(), stream._Interner(), []
    resets = numbered = 0
    kept = []
    for result in one + one:
        reset, encoded = sender.encode(result)
        if reset:
            resets += 1
            sent.clear()
        numbered += sum(isinstance(p, int) for f in encoded.families for p in f.ports)
        kept.append(keep(encoded, sent))
    assert keep.unpacked(kept) == one + one
    assert resets == 1 and numbered


def test_an_equal_copy_of_a_digest_sent_before_goes_in_full(snap: Path) -> None:
    """_Sender knows the digests it sent by identity (the worker interns them): an equal copy, as made after
    Worker.intern starts again, is sent whole, and the parent rebuilds the same result from it."""
    import copy

    from iptrace.collect import stream

    one = analyse_nodes(sources([str(snap)]), jobs=1)
    sender, keep, sent = stream._Sender(), stream._Interner(), []
    _, first = sender.encode(one[0])
    again = copy.deepcopy(one[0])
    _, same = sender.encode(one[0])
    _, copied = sender.encode(again)
    assert all(isinstance(p, int) for f in same.families for p in f.ports)
    assert not any(isinstance(p, int) for f in copied.families for p in f.ports)
    rebuilt = keep.unpacked([keep(first, sent), keep(same, sent), keep(copied, sent)])
    assert rebuilt == [one[0], one[0], again] and again == one[0]


def test_a_digest_another_worker_sent_is_not_unpickled_again(snap: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each worker sends its new digests packed (stream._packed); the parent unpickles a digest only the first
    time any worker sends it, and both workers' results are rebuilt equal, sharing the one copy kept."""
    import copy
    import pickle

    from iptrace.collect import stream

    one = analyse_nodes(sources([str(snap)]), jobs=1)
    distinct = {p for r in one for f in r.families for p in f.ports}
    loads = []
    real_loads = pickle.loads

    def counting(data: bytes) -> object:
        loads.append(1)
        return real_loads(data)

    monkeypatch.setattr(stream.pickle, "loads", counting)
    keep = stream._Interner()
    rebuilt = []
    for worker in range(2):
        sender, sent = stream._Sender(), []
        for result in one if worker == 0 else copy.deepcopy(one):  # (the second worker's digests: equal copies)
            _, encoded = sender.encode(result)
            assert all(isinstance(p, (int, bytes)) for f in encoded.families for p in f.ports)
            rebuilt.append(keep(encoded, sent))
    assert len(keep.packed) == len(distinct) and not loads  # (kept packed until every node is in)
    rebuilt = keep.unpacked(rebuilt)
    assert rebuilt == one + one
    assert len(loads) == len(distinct) and not keep.packed
    first, second = rebuilt[:len(one)], rebuilt[len(one):]
    assert all(a is b for r1, r2 in zip(first, second, strict=True) for f1, f2 in zip(r1.families, r2.families,
                                                                                       strict=True)
               for a, b in zip(f1.ports, f2.ports, strict=True))


def test_the_cli_is_deterministic_whatever_jobs(snap: Path) -> None:
    outputs = set()
    for jobs in ("1", "3"):
        result = CliRunner().invoke(main, ["audit", str(snap), "-j", jobs, "-o", "json"])
        assert result.exit_code == 3, result.output
        outputs.add(result.stdout)
    assert len(outputs) == 1
    text = CliRunner().invoke(main, ["audit", str(snap), "-j", "2"])
    assert text.stderr == "" and text.stdout == render_audit_text(combine(analyse_nodes(sources([str(snap)]))))


def test_an_unreadable_node_never_stops_the_others(snap: Path, tmp_path: Path) -> None:
    dumps = []
    for i in (0, 1):
        dumps.append(tmp_path / f"n{i}.txt")
        dumps[-1].write_bytes((snap / f"node-00{i}" / "iptables-save.txt").read_bytes())
    broken = tmp_path / "broken.txt.gz"
    broken.write_bytes(b"\x1f\x8bnot gzip at all")
    result = CliRunner().invoke(main, ["audit", str(dumps[0]), str(broken), str(dumps[1]), str(snap / "node-007"),
                                       "-j", "2", "-o", "json"])
    assert result.exit_code == 3, result.output
    doc = json.loads(result.stdout)
    assert [(n["name"], n["status"]) for n in doc["nodes"]] == [
        ("n0", "ok"), ("broken", "load-error"), ("n1", "ok"), ("node-007", "load-error")]
    errors = [f for f in doc["findings"] if f["id"] == "load-error"]
    assert [(f["node"], f["detail"].split(":")[0]) for f in errors] == [
        ("broken", str(broken)), ("node-007", str(snap / "node-007" / "iptables-save.txt"))]
    assert "cannot read" in errors[0]["detail"]


def test_a_node_given_twice_is_audited_once_and_said_so(snap: Path, tmp_path: Path) -> None:
    """`audit A A` (or `./A` after `A`, or a node directory and the collection holding it) audited the node once
    without a word: the report counted one node fewer than the user gave. stderr says which node was given
    twice and that it is audited once."""
    dump = tmp_path / "n0.txt"
    dump.write_bytes((snap / "node-000" / "iptables-save.txt").read_bytes())
    once = CliRunner().invoke(main, ["audit", str(dump), "-o", "json"])
    assert once.stderr == ""
    twice = CliRunner().invoke(main, ["audit", str(dump), str(dump), "-o", "json"])
    assert json.loads(twice.stdout) == json.loads(once.stdout)
    assert twice.stderr == f"note: node n0 is given twice ({dump}); it is audited once, where it first appears\n"
    inner = CliRunner().invoke(main, ["audit", str(snap / "node-001"), str(snap / "node-000"), str(snap), "-o",
                                      "json"])
    assert inner.stderr.startswith(f"note: 2 nodes (node-000, node-001) are given twice ({snap / 'node-001'}, "
                                   f"{snap / 'node-000'}, {snap}); each is audited once, where it first appears\n")
    assert [n["name"] for n in json.loads(inner.stdout)["nodes"]][:3] == ["node-001", "node-000", "node-002"]


def test_merged_shards_are_the_audit_of_all_nodes(snap: Path, tmp_path: Path) -> None:
    """Shards as a fleet would cut them (by label selector: any subset), each audited on its own, then merged."""
    names = sorted(p.name for p in snap.iterdir())
    whole = CliRunner().invoke(main, ["audit", str(snap), "-j", "1", "-o", "json"])
    rng = random.Random(3)
    for attempt in range(2):
        shards: dict[int, list[str]] = {}
        for name in names:
            shards.setdefault(rng.randrange(3), []).append(str(snap / name))
        docs = []
        for k, members in sorted(shards.items()):
            result = CliRunner().invoke(main, ["audit", *members, "-j", "1", "-o", "json"])
            assert result.exit_code in (0, 3), result.output
            docs.append(tmp_path / f"try{attempt}-shard{k}.json")
            docs[-1].write_text(result.stdout)
        merged = CliRunner().invoke(main, ["audit", "--merge", *map(str, reversed(docs)), "-o", "json"])
        assert merged.exit_code == whole.exit_code == 3
        assert json.loads(merged.stdout) == json.loads(whole.stdout)
    text = CliRunner().invoke(main, ["audit", "--merge", *map(str, docs)])
    assert text.stdout == CliRunner().invoke(main, ["audit", str(snap), "-j", "1"]).stdout



def test_a_node_a_shard_could_not_collect_fails_the_merge_as_the_whole_audit(snap: Path, tmp_path: Path) -> None:
    """A shard that could not collect one of its nodes exits 1 (the audit is incomplete, README); the merge of
    it and the other shards is that audit too: exit 1 and the same error line, not 3 as if complete."""
    dead = f"127.0.0.1:{free_port()}"  # (nothing listens: the connection is refused at once)
    timeout = ["--timeout", "5"]
    shard = CliRunner().invoke(main, ["audit", str(snap / "node-000"), dead, *timeout, "-o", "json"])
    assert shard.exit_code == 1, shard.output
    (tmp_path / "a.json").write_text(shard.stdout)
    (tmp_path / "b.json").write_text(CliRunner().invoke(main, ["audit", str(snap / "node-001"), "-o", "json"]).stdout)
    whole = CliRunner().invoke(main, ["audit", dead, str(snap / "node-000"), str(snap / "node-001"), *timeout,
                                      "-o", "json"])
    merged = CliRunner().invoke(main, ["audit", "--merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                                       "-o", "json"])

    def by_name(doc: dict[str, Any]) -> dict[str, Any]:  # (a merge sorts the nodes by name)
        for nodes in (doc["nodes"], doc["merge"]["nodes"]):
            nodes.sort(key=lambda n: n["name"])
        return doc

    assert by_name(json.loads(merged.stdout)) == by_name(json.loads(whole.stdout))
    assert (merged.exit_code, merged.stderr) == (whole.exit_code, whole.stderr) == (1, whole.stderr)
    assert whole.stderr.startswith(f"Error: {dead}: connection to "), whole.stderr


def test_a_shards_notes_are_said_by_the_merge_as_by_the_whole_audit(snap: Path, tmp_path: Path) -> None:
    """A dump read with --lenient past problems is noted on stderr only (its findings leave that out): the shard's
    JSON carries the note, so the merge says it as the audit of all the nodes does, not a clean stderr."""
    cut = tmp_path / "cut.txt"
    cut.write_text((snap / "node-002" / "iptables-save.txt").read_text()[:20_000])
    (tmp_path / "a.json").write_text(CliRunner().invoke(main, ["audit", str(cut), str(snap / "node-000"),
                                                               "--lenient", "-o", "json"]).stdout)
    (tmp_path / "b.json").write_text(CliRunner().invoke(main, ["audit", str(snap / "node-001"), "-o", "json"]).stdout)
    whole = CliRunner().invoke(main, ["audit", str(cut), str(snap / "node-000"), str(snap / "node-001"),
                                      "--lenient", "-o", "json"])
    assert whole.stderr.startswith(f"note: cut: {cut} read with --lenient past "), whole.stderr
    merged = CliRunner().invoke(main, ["audit", "--merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                                       "-o", "json"])
    assert (merged.exit_code, merged.stderr) == (whole.exit_code, whole.stderr)
    again = tmp_path / "merged.json"
    again.write_text(merged.stdout)
    assert CliRunner().invoke(main, ["audit", "--merge", str(again)]).stderr == whole.stderr

def test_merged_shards_with_cluster_data(tmp_path: Path) -> None:
    snap, files = fleet_scenario.write(tmp_path)
    cluster = [x for f in files for x in ("--cluster", str(f))]
    docs = []
    for k, group in enumerate((["node-a", "node-d"], ["node-b", "node-c"])):
        result = CliRunner().invoke(main, ["audit", *(str(snap / n) for n in group), *cluster, "-o", "json"])
        docs.append(tmp_path / f"shard{k}.json")
        docs[-1].write_text(result.stdout)
    merged = CliRunner().invoke(main, ["audit", "--merge", *map(str, docs), "-o", "json"])
    whole = CliRunner().invoke(main, ["audit", str(snap), *cluster, "-o", "json"])
    assert merged.exit_code == whole.exit_code == 3
    assert json.loads(merged.stdout) == json.loads(whole.stdout)
    assert json.loads(whole.stdout)["cluster"].endswith("nodes.json")
    # A shard audited without the cluster data cannot join: its findings would be of another kind.
    plain = tmp_path / "plain.json"
    plain.write_text(CliRunner().invoke(main, ["audit", str(snap / "node-a"), "-o", "json"]).stdout)
    result = CliRunner().invoke(main, ["audit", "--merge", str(docs[1]), str(plain)])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: the audits were made against different cluster data (")
    # The same cluster data, once with its Nodes listed and once without (e.g. no permission to list them): the
    # message tells the two apart rather than naming the same source twice.
    without = json.loads(docs[1].read_text())
    without["merge"]["cluster"]["nodes"] = False
    (tmp_path / "without.json").write_text(json.dumps(without))
    result = CliRunner().invoke(main, ["audit", "--merge", str(docs[0]), str(tmp_path / "without.json")])
    source = json.loads(whole.stdout)["cluster"]
    assert result.stderr == (f"Error: the audits were made against different cluster data ({docs[0]}: cluster data "
                             f"{source!r} with its Nodes; {tmp_path / 'without.json'}: cluster data {source!r} "
                             "without Nodes); expected every shard audited with the same --cluster/--kubeconfig and -n\n")


def test_shards_of_ci_jobs_whose_kubeconfigs_lie_elsewhere_merge(tmp_path: Path) -> None:
    """Each CI job (or Kubernetes Job) audits its node pool with the cluster's kubeconfig at a path of its own (a
    runner's temporary file, named by time): the shards were compared with the same API server, but --merge
    refused them as "audited against different cluster data". Shards of another API server still are."""
    from tests.apiserver import ApiServer, Grant, write_kubeconfig
    from tests.test_compare import api_objects

    snap, _ = fleet_scenario.write(tmp_path)
    objects: dict[str, list[dict[str, Any]]] = {}
    for o in api_objects(fleet_scenario.services()[1]):
        objects.setdefault(o["kind"], []).append(o)
    with ApiServer(objects=objects, tokens={"t": Grant("admin")}) as api, \
            ApiServer(objects=copy.deepcopy(objects), tokens={"t": Grant("admin")}) as other:
        url, docs = api.url, []
        for k, group in enumerate((["node-a", "node-d"], ["node-b", "node-c"])):
            (tmp_path / f"job{k}").mkdir()
            config = write_kubeconfig(tmp_path / f"job{k}" / f"kubeconfig_17333892001{k}", api.url, {"admin": "t"})
            result = CliRunner().invoke(main, ["audit", *(str(snap / n) for n in group), "--kubeconfig", str(config),
                                               "-o", "json"])
            docs.append(tmp_path / f"shard{k}.json")
            docs[-1].write_text(result.stdout)
        whole = CliRunner().invoke(main, ["audit", str(snap), "--kubeconfig", str(config), "-o", "json"])
        elsewhere = write_kubeconfig(tmp_path / "elsewhere", other.url, {"admin": "t"})
        foreign = tmp_path / "foreign.json"
        foreign.write_text(CliRunner().invoke(main, ["audit", str(snap / "node-a"), "--kubeconfig", str(elsewhere),
                                                     "-o", "json"]).stdout)
    merged = CliRunner().invoke(main, ["audit", "--merge", *map(str, docs), "-o", "json"])
    assert merged.exit_code == whole.exit_code == 3, merged.output
    doc, one = json.loads(merged.stdout), json.loads(whole.stdout)
    assert (doc["findings"], doc["nodes"]) == (one["findings"], one["nodes"])
    assert doc["cluster"] == f"kubeconfig {tmp_path / 'job0' / 'kubeconfig_173338920010'} at {url}"
    refused = CliRunner().invoke(main, ["audit", "--merge", str(docs[1]), str(foreign)])
    assert refused.exit_code == 1
    assert refused.stderr.startswith("Error: the audits were made against different cluster data (")
    # Files are compared by what was read (their names), an in-cluster service account by its server.
    from iptrace.kube.merge import _same_data

    assert _same_data("services.json, endpointslices.json") == "services.json, endpointslices.json"
    assert _same_data("in-cluster service account at https://10.96.0.1:443") == "the API server at " \
        "https://10.96.0.1:443"


def test_an_audit_of_one_namespace_says_so_and_merges_only_with_that_namespace(tmp_path: Path) -> None:
    """`-n default` compares only default's Service ports with the API: the audit said "every node forwards every
    Service the same way the API asks" as of the whole cluster, and --merge took its shard with a shard compared
    in every namespace as one audit."""
    from tests.apiserver import ApiServer, Grant, write_kubeconfig
    from tests.test_compare import api_objects

    snap, _ = fleet_scenario.write(tmp_path)
    objects: dict[str, list[dict[str, Any]]] = {}
    for o in api_objects(fleet_scenario.services()[1]):
        objects.setdefault(o["kind"], []).append(o)
    with ApiServer(objects=objects, tokens={"t": Grant("admin")}) as api:
        config = str(write_kubeconfig(tmp_path / "kubeconfig", api.url, {"admin": "t"}))
        scoped = CliRunner().invoke(main, ["audit", str(snap / "node-a"), str(snap / "node-c"), "--kubeconfig",
                                           config, "-n", "kube-system"])
        assert scoped.stdout.startswith(f"Audit of 2 nodes against kubeconfig {config} at {api.url} (namespace "
                                        "kube-system only): "), scoped.stdout
        (tmp_path / "a.json").write_text(CliRunner().invoke(main, ["audit", str(snap / "node-a"), "--kubeconfig",
                                                                   config, "-n", "kube-system", "-o", "json"]).stdout)
        (tmp_path / "b.json").write_text(CliRunner().invoke(main, ["audit", str(snap / "node-b"), "--kubeconfig",
                                                                   config, "-o", "json"]).stdout)
        (tmp_path / "c.json").write_text(CliRunner().invoke(main, ["audit", str(snap / "node-c"), "--kubeconfig",
                                                                   config, "-n", "kube-system", "-o", "json"]).stdout)
    refused = CliRunner().invoke(main, ["audit", "--merge", str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    assert refused.exit_code == 1
    assert "(namespace kube-system only)'; " in refused.stderr and refused.stderr.endswith(
        "expected every shard audited with the same --cluster/--kubeconfig and -n\n"), refused.stderr
    merged = CliRunner().invoke(main, ["audit", "--merge", str(tmp_path / "a.json"), str(tmp_path / "c.json")])
    assert merged.stdout == scoped.stdout, merged.output


def test_merge_errors_say_what_was_found_and_expected(tmp_path: Path, snap: Path) -> None:
    doc = json.loads(CliRunner().invoke(main, ["audit", str(snap / "node-000"), "-o", "json"]).stdout)
    good = tmp_path / "a.json"
    good.write_text(json.dumps(doc))

    def error(*docs: object) -> str:
        paths = []
        for i, d in enumerate(docs):
            if isinstance(d, Path):
                paths.append(str(d))
                continue
            p = tmp_path / f"doc{i}.json"
            p.write_text(d if isinstance(d, str) else json.dumps(d))
            paths.append(str(p))
        result = CliRunner().invoke(main, ["audit", "--merge", *paths])
        assert result.exit_code == 1, result.output
        return result.stderr.strip()

    assert error(good, good) == f"Error: {good}: node 'node-000' is also in {good}; expected each node in one " \
                                "audit only (shard the nodes, e.g. by label selector)"
    newer = json.loads(json.dumps(doc))
    newer["merge"]["version"] = 99
    assert "merge.version: found 99; expected 2 (written by another iptrace version" in error(newer)
    assert error("{not json").startswith(f"Error: {tmp_path}/doc0.json:1:2: not JSON (")
    # (a shard's document cut short, at the line and column where it ends; a file that is a directory)
    cut = json.dumps(doc, indent=2)[:500]
    said = error(cut)
    assert said.startswith(f"Error: {tmp_path}/doc0.json:{cut.count(chr(10)) + 1}:") and said.endswith(
        ": not JSON (the file ends before its JSON does: it looks cut short); expected the output of `iptrace audit "
        "-o json`"), said
    assert CliRunner().invoke(main, ["audit", "--merge", str(tmp_path)]).stderr == (
        f"Error: {tmp_path}: cannot read (Is a directory)\n")
    del newer["merge"]
    assert error(newer).endswith("the document: found an object without 'merge' (keys: 'cluster', 'counts', "
                                 "'findings', 'format', 'nodes', 'ok'); expected an object with 'merge'")
    assert error({}).endswith("the document: found an object without 'merge' (an empty object); expected an "
                              "object with 'merge'")
    broken = json.loads(json.dumps(doc))
    broken["merge"]["nodes"][0]["families"][0]["lines"].pop()
    assert "merge.nodes[0].families[0].lines: found" in error(broken)
    assert CliRunner().invoke(main, ["audit", "--merge"]).exit_code == 2


def test_an_empty_shard_document_says_its_audit_wrote_nothing(tmp_path: Path, snap: Path) -> None:
    """A shard's `audit -o json > c.json` that failed (a selector matching no node) leaves c.json empty: the merge
    names it as empty, not as JSON that ends at line 1 column 1."""
    good = tmp_path / "a.json"
    good.write_text(CliRunner().invoke(main, ["audit", str(snap / "node-000"), "-o", "json"]).stdout)
    empty = tmp_path / "c.json"
    empty.write_text("\n")
    result = CliRunner().invoke(main, ["audit", "--merge", str(good), str(empty)])
    assert result.exit_code == 1
    assert result.stderr == (f"Error: {empty}: empty; expected the output of `iptrace audit -o json` (did the "
                             "audit that should have written it fail?)\n")


@pytest.mark.parametrize("option", [["--cluster", "services.json"], ["--kubeconfig", "kubeconfig"],
                                    ["-n", "default"], ["-l", "zone=a"], ["--node-ip", "192.0.2.1"], ["--lenient"],
                                    ["--via", "api"], ["--context", "prod"]])
def test_merge_refuses_an_option_it_would_not_use(tmp_path: Path, snap: Path, option: list[str]) -> None:
    """--merge reads audits already made: cluster data, a selector or a namespace given with it would be
    silently unused (the report then looks compared with the API while it is not), so they are a usage error."""
    good = tmp_path / "a.json"
    good.write_text(CliRunner().invoke(main, ["audit", str(snap / "node-000"), "-o", "json"]).stdout)
    result = CliRunner().invoke(main, ["audit", "--merge", str(good), *option])
    assert result.exit_code == 2, result.output
    named = result.stderr.split("--merge reads audits already made: ")[1].split(" is not used there; give it to "
                                                                           "each shard's audit instead")[0]
    assert option[0] in named.split("/"), result.stderr
    for fine in (["-j", "3"], ["-v"], ["-o", "json"]):
        assert CliRunner().invoke(main, ["audit", "--merge", str(good), *fine]).exit_code == 0


@pytest.mark.parametrize(("where", "value", "said"), [
    ("family", "ipv9", "merge.nodes[0].families[0].family: found 'ipv9'; expected 'ipv4' or 'ipv6'"),
    ("proxy", {"mode": None}, "merge.nodes[0].families[0].proxy: found"),
    ("lines", [-5], "merge.nodes[0].families[0].lines: found"),
    ("ports", [-1], "merge.nodes[0].families[0].ports: found"),
])
def test_a_hand_edited_merge_key_is_a_one_line_error(snap: Path, tmp_path: Path, where: str, value: Any,
                                                     said: str) -> None:
    """An edited family, proxy mode, evidence line or digest index is refused where it is (not an internal
    error, nor a negative index silently read from the end of the digests)."""
    doc = json.loads(CliRunner().invoke(main, ["audit", str(snap / "node-000"), "-o", "json"]).stdout)
    fam = doc["merge"]["nodes"][0]["families"][0]
    if isinstance(value, dict):
        fam[where].update(value)
    elif isinstance(value, list):
        fam[where][:1] = value
    else:
        fam[where] = value
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(doc))
    result = CliRunner().invoke(main, ["audit", "--merge", str(path)])
    assert result.exit_code == 1, result.output
    assert said in result.stderr and "internal error" not in result.stderr, result.stderr


@pytest.mark.parametrize(("field", "value", "said"), [
    (1, ["10.96.0.1"], "merge.digests[0][1]: found ['10.96.0.1']; expected a string or null (the port's cluster_ip)"),
    (2, "443", "merge.digests[0][2]: found '443'; expected a whole number or null (the port's port)"),
    (4, "10.0.0.1", "merge.digests[0][4]: found '10.0.0.1'; expected a list of strings (the port's ips)"),
    (5, {"Local": 1}, "merge.digests[0][5]: found {'Local': 1}; expected a string or null (the port's "
                      "external_traffic_policy)"),
    (9, True, "merge.digests[0][9]: found True; expected a whole number or null (the port's health_check_node_port)"),
])
def test_a_hand_edited_digest_value_is_a_one_line_error(snap: Path, tmp_path: Path, field: int, value: Any,
                                                        said: str) -> None:
    """A Service port digest's plain values are checked where they are read: an address edited into a list was an
    internal error (unhashable), a port edited into a string went into the report as it was."""
    doc = json.loads(CliRunner().invoke(main, ["audit", str(snap / "node-000"), "-o", "json"]).stdout)
    doc["merge"]["digests"][0][field] = value
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(doc))
    for output in ("text", "json"):
        result = CliRunner().invoke(main, ["audit", "--merge", str(path), "-o", output])
        assert (result.exit_code, result.stderr) == (1, f"Error: {path}: {said}\n"), result.output


def test_merge_round_trip_keeps_every_result(snap: Path) -> None:
    results = analyse_nodes(sources([str(snap)]), jobs=1)
    doc = json.loads(json.dumps(merge_json(results, cluster_source=None, cluster_nodes=False)))
    back, source, nodes = merge([("x.json", {"merge": doc})])
    assert source is None and not nodes
    strip = [r for r in results]
    assert [(r.name, r.families and [(f.ports, list(f.lines), f.compared) for f in r.families], r.extra)
            for r in back] == [(r.name, r.families and [(f.ports, list(f.lines), f.compared) for f in r.families],
                                r.extra) for r in sorted(strip, key=lambda r: r.name)]


def test_merge_key_writes_equal_digests_once_whatever_their_objects(snap: Path) -> None:
    """merge_json indexes digests by identity, then by value once per object: results whose equal digests are
    distinct objects (not interned) give the document the interned ones give."""
    results = analyse_nodes(sources([str(snap)]), jobs=1)
    copies = [replace(r, families=tuple(replace(f, ports=tuple(copy.copy(p) for p in f.ports)) for f in r.families))
              for r in results]
    assert any(p is not q for r, c in zip(results, copies, strict=True) for f, g in zip(r.families, c.families,
                                                                                        strict=True)
               for p, q in zip(f.ports, g.ports, strict=True))
    doc = merge_json(results, cluster_source=None, cluster_nodes=False)
    assert merge_json(copies, cluster_source=None, cluster_nodes=False) == doc
    assert len(doc["digests"]) == len({p for r in results for f in r.families for p in f.ports})


def test_the_merge_key_prints_a_node_a_line(snap: Path) -> None:
    """A 5,000-Service node's merge object is ~0.5 MB of JSON: each node's (and each digest) is one compact line,
    made as it is printed; the document is the one merge_json describes."""
    result = CliRunner().invoke(main, ["audit", str(snap), "-j", "1", "-o", "json"])
    doc = json.loads(result.stdout)
    results = analyse_nodes(sources([str(snap)]), jobs=1)
    assert doc["merge"] == json.loads(json.dumps(merge_json(results, cluster_source=None, cluster_nodes=False,
                                                            directory=os.getcwd())))
    lines = result.stdout.split("\n")
    for key in ("digests", "nodes"):
        start = lines.index(f'    "{key}": [')
        items = doc["merge"][key]
        assert [json.loads(line.rstrip(",")) for line in lines[start + 1:start + 1 + len(items)]] == items
        assert lines[start + 1 + len(items)] in ("    ],", "    ]")


def test_a_worker_reads_later_nodes_with_what_the_first_taught_it(snap: Path) -> None:
    """The load memo a worker keeps: the rules a later node shares with an earlier one are found there, not
    read again (iptables loader: the blocks of lines seen), and the results are those of a worker without it."""
    from iptrace.collect.stream import Worker
    nodes = sources([str(snap)])[:3]
    plain = Worker(None, False, False, False)
    assert plain.load_memo is None
    worker = Worker(None, False, False, True)
    assert [worker.run(n) for n in nodes] == [plain.run(n) for n in nodes]
    memo = worker.load_memo["iptables"] if worker.load_memo else None
    assert memo is not None and len(memo.blocks) > 10  # (the fleet's shared chains, by block)


def test_progress_on_a_terminal_never_on_a_pipe(snap: Path) -> None:
    assert CliRunner().invoke(main, ["audit", str(snap), "-j", "1", "-o", "json"]).stderr == ""
    code, out, shown = on_a_terminal(["audit", str(snap), "-j", "2", "-o", "json"], timeout=60)
    assert code == 3
    json.loads(out)  # stdout stays clean JSON
    assert "/9" in shown and "audited node-" in shown, shown[-500:]


@pytest.mark.parametrize("sample", ["nodeport-fb-backends.txt", "etp-local-with-endpoints.txt", "ipv6.txt",
                                    "nodeport-fb-backends-nft.nft", "dual-stack-nft.nft"])
def test_tracing_done_lets_the_tracer_go_and_keeps_the_view(sample: str) -> None:
    """Analysis.tracing_done (audit's worker, before the digest): the tracer is freed, every port's view and the
    node's digest are those of an analysis that kept it."""
    import gc
    import weakref

    from iptrace import dataplanes
    from iptrace.kube.analysis import analyse
    from iptrace.kube.audit import NodeInput
    from iptrace.kube.digest import node_result

    text = (SAMPLES / sample).read_text()
    ips = ("192.168.0.10",)

    def analyses() -> dict[str, Any]:
        dataplane, ruleset = dataplanes.load(text, source=sample)
        return {f: analyse(dataplane, ruleset, f, node_ips=ips) for f in ruleset.families}

    kept = analyses()
    done = analyses()
    tracers = [weakref.ref(a.tracer) for a in done.values()]
    for a in done.values():
        a.tracing_done()
    gc.collect()
    assert all(t() is None for t in tracers)
    for family, a in done.items():
        assert not hasattr(a, "tracer")
        assert a.view == kept[family].view
        assert [a.port_view(k) for k in a.layout.keys] == [kept[family].port_view(k) for k in a.layout.keys]
    assert (node_result(NodeInput("n", done, None, ips), None, pictures=True)
            == node_result(NodeInput("n", kept, None, ips), None, pictures=True))


def test_progress_shows_a_node_name_with_brackets_as_it_is(tmp_path: Path) -> None:
    """An IPv6 node's directory is called `[fd00::5]:2200`: the progress line named it ':2200', the brackets read
    as rich markup."""
    snap = tmp_path / "snap"
    for name in ("[fd00::5]:2200", "[fd00::6]:2200"):
        (snap / name).mkdir(parents=True)
        (snap / name / "iptables-save.txt").write_text((SAMPLES / "nodeport-fb-backends.txt").read_text())
    code, _, shown = on_a_terminal(["audit", str(snap), "-j", "1", "-o", "json"], timeout=60)
    assert code == 0, shown
    assert "audited [fd00::" in shown and "audited :2200" not in shown, shown[-500:]


def test_a_worker_gives_its_heaps_free_pages_back_after_each_node(snap: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After each node a worker asks malloc to give back every free page of its heap (not only its top: ~15 MB between
    what lives on after a 5,000-Service node), a node that cannot be read too."""
    from iptrace.collect import stream

    trimmed: list[int] = []
    monkeypatch.setattr(stream, "_TRIM", [trimmed.append])
    worker = stream.Worker(None, False, False, True)
    nodes = sources([str(snap)])
    for source in nodes:
        worker.run(source)
    assert trimmed == [0] * len(nodes)
