"""The examples of `--help` work when pasted: each example of the commands that read one dump (parse, services,
trace, explain) is run by bash as written (its `| jq …` by the real jq), with node1.txt the bundled minikube
node (192.168.49.2), snap/node1 the same node as `collect` writes it, and addresses.txt a file of
destinations. Each must succeed (explain: 0 or 3) and print no `null` where it promised a value."""

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
    text = CliRunner().invoke(main, [command, "--help"]).output
    block = text.split("Examples:\n", 1)[1].split("\n\n", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip()]


# (not runnable here: they read the machine's own rules, or an `iptables -S` listing of EKS)
SKIPPED = re.compile(r"^iptables-save \||eks-nat-S\.txt")


@needs_jq
@pytest.mark.parametrize("command", ["parse", "services", "trace", "explain"])
def test_the_examples_of_help_work_when_pasted(command: str, tmp_path: Path) -> None:
    snap = tmp_path / "snap"
    store.write_node_dir(snap / "node1", {store.DUMP_FILE: (SAMPLES / "nodeport-fb-backends.txt").read_bytes()},
                         {"node": "node1", "host": "node1", "addresses": ["192.168.49.2"]})
    (tmp_path / "node1.txt").write_bytes((SAMPLES / "nodeport-fb-backends.txt").read_bytes())
    (tmp_path / "node1-conntrack.txt").write_bytes((SAMPLES / "conntrack" / "nodeport-fb-backends.txt").read_bytes())
    (tmp_path / "addresses.txt").write_text("10.101.234.168:5001\n10.96.0.10:53/udp\n")
    (tmp_path / "sample_dumps").symlink_to(SAMPLES)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    ran = 0
    for example in examples(command):
        if SKIPPED.search(example):
            continue
        done = subprocess.run(["bash", "-o", "pipefail", "-c", example], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120, check=False)
        assert done.returncode in ((0, 3) if command == "explain" else (0,)), (example, done.stderr)
        assert "null" not in done.stdout.split(), (example, done.stdout)
        ran += 1
    assert ran >= 2
