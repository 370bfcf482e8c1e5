"""`audit` given node directories and collection directories together (`audit old/node-1 snap/`) audits every
node they name once, in the order given; a node directory given directly is read as it is inside a collection
(meta.json alone: a load-error of that node, the others audited); two different nodes of one name are a usage
error."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from iptrace.cli import main
from iptrace.collect import store
from tests.conftest import SAMPLES

IPT = (SAMPLES / "nodeport-fb-backends.txt").read_bytes()


def node(root: Path, name: str, address: str) -> Path:
    store.write_node_dir(root / name, {store.DUMP_FILE: IPT}, {"node": name, "addresses": [address]})
    return root / name


def audit(*args: str) -> tuple[int, list[tuple[str, str]], str]:
    result = CliRunner().invoke(main, ["audit", *args, "-o", "json", "--jobs", "1"])
    if result.exit_code == 2:
        return 2, [], result.output
    nodes = [(n["name"], n["status"]) for n in json.loads(result.stdout)["nodes"]]
    return result.exit_code, nodes, result.stderr


def test_a_node_directory_beside_a_collection(tmp_path: Path) -> None:
    lone = node(tmp_path / "old", "node-a", "192.168.49.5")
    for name, ip in (("node-x", "192.168.49.2"), ("node-y", "192.168.49.3")):
        node(tmp_path / "snap", name, ip)
    code, nodes, _ = audit(str(lone), str(tmp_path / "snap"))
    assert code == 0 and nodes == [("node-a", "ok"), ("node-x", "ok"), ("node-y", "ok")]


def test_a_node_given_again_in_its_collection_is_audited_once(tmp_path: Path) -> None:
    for name, ip in (("node-x", "192.168.49.2"), ("node-y", "192.168.49.3")):
        node(tmp_path / "snap", name, ip)
    code, nodes, _ = audit(str(tmp_path / "snap" / "node-y"), str(tmp_path / "snap"), f"{tmp_path}/snap/./node-y/")
    assert code == 0 and nodes == [("node-y", "ok"), ("node-x", "ok")]


def test_a_node_directory_without_its_dump_is_one_load_error(tmp_path: Path) -> None:
    broken = tmp_path / "old" / "node-m"
    broken.mkdir(parents=True)
    (broken / store.META_FILE).write_text(json.dumps({"node": "node-m", "addresses": ["192.168.49.9"]}))
    node(tmp_path / "snap", "node-x", "192.168.49.2")
    code, nodes, _ = audit(str(broken), str(tmp_path / "snap"))
    assert code == 3 and nodes == [("node-m", "load-error"), ("node-x", "ok")]


def test_two_nodes_of_one_name_are_a_usage_error(tmp_path: Path) -> None:
    a = node(tmp_path / "old", "node-x", "192.168.49.2")
    node(tmp_path / "snap", "node-x", "192.168.49.2")
    code, _, output = audit(str(a), str(tmp_path / "snap"))
    assert code == 2 and "two inputs are both called 'node-x'" in output
