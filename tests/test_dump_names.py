"""A dump file given to `audit` is one node named after the file the user gave (`n.nft.gz` was called `n.nft`, a
file that does not exist); iptables-save's `.txt` (`.txt.gz`) is dropped, as it always was (`n.txt.gz` is `n`).
`services --cluster` names the node of its findings the same way."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from iptrace.cli import main
from iptrace.collect.inputs import dump_node_name
from tests.conftest import SAMPLES


@pytest.mark.parametrize(("path", "name"), [
    ("n.nft.gz", "n.nft.gz"), ("n.txt.gz", "n"), ("dir/n.nft", "n.nft"), ("n.json", "n.json"), ("n.txt", "n"),
    ("node.example.com.txt", "node.example.com"), ("n.gz", "n.gz"), (".txt", ".txt"), ("-", "stdin")])
def test_a_dump_files_node_name(path: str, name: str) -> None:
    assert dump_node_name(path) == name


def test_audit_names_gzipped_nft_and_iptables_dumps_alike(tmp_path: Path) -> None:
    nft = tmp_path / "node-a.nft.gz"
    nft.write_bytes(gzip.compress((SAMPLES / "nodeport-fb-backends-nft.nft").read_bytes()))
    ipt = tmp_path / "node-b.txt.gz"
    ipt.write_bytes(gzip.compress((SAMPLES / "nodeport-fb-backends.txt").read_bytes()))
    cut = tmp_path / "node-c.nft.gz"
    cut.write_bytes(gzip.compress((SAMPLES / "nodeport-fb-backends-nft.nft").read_bytes()[:3000]))
    result = CliRunner().invoke(main, ["audit", str(nft), str(ipt), str(cut), "-o", "json"])
    assert result.exit_code == 3, result.output
    doc = json.loads(result.stdout)
    assert [(n["name"], n["status"]) for n in doc["nodes"]] == [
        ("node-a.nft.gz", "ok"), ("node-b", "ok"), ("node-c.nft.gz", "load-error")]
    error = next(f for f in doc["findings"] if f["id"] == "load-error")
    assert error["node"] == "node-c.nft.gz" and error["detail"].startswith(f"{cut}:90:20: ")
    text = CliRunner().invoke(main, ["audit", str(nft), str(cut)]).output
    assert "[node-c.nft.gz] its rules could not be read" in text and "node-a.nft " not in text
