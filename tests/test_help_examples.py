"""The examples of `--help` (and the README's shell lines) work when pasted: each example of the commands that
read dumps (parse, services, trace, explain, diff, audit, and `iptrace --help`'s own) is run by bash as written
(its `| jq …` by the real jq), with node1.txt the bundled minikube node (192.168.49.2), snap/node1 the same node
as `collect` writes it, addresses.txt a file of destinations, node2.txt/after.txt and snap/node2 the node with
one endpoint moved, the node's nft ruleset, the cluster's JSON and two audit shards. Each must succeed (explain
and audit: 0 or 3) and print no `null` where it promised a value (diff's JSON has one by design: the side an
endpoint is missing from)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from iptrace.cli import main
from iptrace.collect import store
from tests.conftest import SAMPLES

BIN = Path(sys.executable).parent
needs_jq = pytest.mark.skipif(shutil.which("jq") is None or not (BIN / "iptrace").exists(),
                              reason="needs jq and the installed iptrace executable")


def examples(command: str) -> list[str]:
    text = CliRunner().invoke(main, [command, "--help"] if command else ["--help"]).output
    block = text.split("Examples:\n", 1)[1].split("\n\n", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip()]


# (not runnable here: they read the machine's own rules, an `iptables -S` listing of EKS, or reach nodes or a
# cluster's API)
SKIPPED = re.compile(r"^iptables-save \||eks-nat-S\.txt|iptrace collect|--kubeconfig|--via api|admin@")
CLUSTER = Path(__file__).parent / "data" / "cluster"


def _workdir(tmp_path: Path) -> None:
    """The files the examples name, in tmp_path."""
    dump = (SAMPLES / "nodeport-fb-backends.txt").read_bytes()
    moved = dump.replace(b"--to-destination 10.244.2.3:8001", b"--to-destination 10.244.2.4:8001")
    assert moved != dump
    snap = tmp_path / "snap"
    for node, rules in (("node1", dump), ("node2", moved)):
        store.write_node_dir(snap / node, {store.DUMP_FILE: rules},
                             {"node": node, "host": node, "addresses": ["192.168.49.2"]})
    for name, rules in (("node1.txt", dump), ("before.txt", dump), ("iptables-save.txt", dump),
                        ("node2.txt", moved), ("after.txt", moved)):
        (tmp_path / name).write_bytes(rules)
    nft = (SAMPLES / "nodeport-fb-backends-nft.nft").read_bytes()
    (tmp_path / "nft-ruleset.txt").write_bytes(nft)
    (tmp_path / "node1.nft").write_bytes(nft)
    (tmp_path / "node1-conntrack.txt").write_bytes((SAMPLES / "conntrack" / "nodeport-fb-backends.txt").read_bytes())
    (tmp_path / "addresses.txt").write_text("10.101.234.168:5001\n10.96.0.10:53/udp\n")
    for name in ("services.json", "endpointslices.json"):
        (tmp_path / name).write_bytes((CLUSTER / name).read_bytes())
    for node, rules in (("node-01", dump), ("node-11", moved)):  # (the README's shards: snap/node-0*, snap/node-1*)
        store.write_node_dir(snap / node, {store.DUMP_FILE: rules},
                             {"node": node, "host": node, "addresses": ["192.168.49.2"]})
    (tmp_path / "cluster.json").write_bytes((CLUSTER / "kubectl-get-all.json").read_bytes())
    for shard, node in (("shard-a.json", "node1"), ("shard-b.json", "node2")):
        done = CliRunner().invoke(main, ["audit", str(snap / node), "-o", "json"])
        assert done.exit_code in (0, 3), done.output
        (tmp_path / shard).write_text(done.stdout)
    (tmp_path / "sample_dumps").symlink_to(SAMPLES)


@needs_jq
@pytest.mark.parametrize("command", ["", "parse", "services", "trace", "explain", "diff", "audit"])
def test_the_examples_of_help_work_when_pasted(command: str, tmp_path: Path) -> None:
    _workdir(tmp_path)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    ran = 0
    for example in examples(command):
        if SKIPPED.search(example):
            continue
        done = subprocess.run(["bash", "-o", "pipefail", "-c", example], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120, check=False)
        # (explain and audit exit 3 when they find an error; a diff's endpoint added or removed has a null side)
        gates = example.split()[1] in ("explain", "audit")
        assert done.returncode in ((0, 3) if gates else (0,)), (example, done.stderr)
        assert command == "diff" or "null" not in done.stdout.split(), (example, done.stdout)
        ran += 1
    assert ran >= 2


def readme_examples() -> list[str]:
    """The command lines of the README's ```sh blocks that run iptrace on files (in order: a later one may read
    what an earlier one wrote)."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    lines = [line for block in re.findall(r"```sh\n(.*?)```", readme, re.S) for line in block.splitlines()]
    return [line for line in lines if line.startswith("iptrace ") and not SKIPPED.search(line)]


@needs_jq
def test_the_readmes_examples_work_when_pasted(tmp_path: Path) -> None:
    """Each `iptrace …` line of the README's shell blocks (those that read no node, cluster or API), with the same
    files as the --help examples, in one directory and in order."""
    _workdir(tmp_path)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    ran = readme_examples()
    for example in ran:
        done = subprocess.run(["bash", "-o", "pipefail", "-c", example], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120, check=False)
        gates = example.split()[1] in ("explain", "audit")
        assert done.returncode in ((0, 3) if gates else (0,)), (example, done.stderr)
    assert len(ran) >= 10 and (tmp_path / "report.html").stat().st_size > 0, ran
