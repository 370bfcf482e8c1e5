"""A node whose `nft list ruleset` collect marked as misread (an nft older than the kernel's rules: "the listing
may be wrong", meta.json nft.status) and whose analysis reads that listing: audit, services, trace and explain
say so (collect's table said it once; a later `iptrace audit snap/` said 'no findings — every node forwards every
Service the same way', and the report too, with nothing of the doubtful listing)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from iptrace.cli import main
from iptrace.collect import store

SAMPLES = Path(__file__).resolve().parent.parent / "sample_dumps"
PROBLEM = ("nft v0.9.8 could not read every rule (unsupported expression); an nft older than the one that wrote "
           "the rules misreads them — the listing may be wrong")


def collection(tmp_path: Path, nft_only: bool = True) -> Path:
    for node, status in (("node-1", "ok"), ("node-2", "misread")):
        files = {store.NFT_FILE: (SAMPLES / "nodeport-fb-backends-nft.nft").read_bytes()}
        if not nft_only:
            files[store.DUMP_FILE] = (SAMPLES / "nodeport-fb-backends.txt").read_bytes()
        store.write_node_dir(tmp_path / node, files, {
            "node": node, "addresses": ["192.168.49.2"],
            "nft": {"status": status, "version": "0.9.8", "error": PROBLEM if status == "misread" else None}})
    return tmp_path


def test_audit_names_the_node_whose_analysed_listing_may_be_misread(tmp_path: Path) -> None:
    snap = collection(tmp_path)
    result = CliRunner().invoke(main, ["audit", str(snap), "-o", "json"])
    found = [f for f in json.loads(result.stdout)["findings"] if f["node"] == "node-2"]
    assert [(f["id"], f["severity"]) for f in found] == [("load-error", "warning")], found
    assert "0.9.8" in found[0]["detail"] and "nft-ruleset.txt" in found[0]["summary"], found[0]
    assert not [f for f in json.loads(result.stdout)["findings"] if f["node"] == "node-1"]


def test_services_of_the_node_says_so(tmp_path: Path) -> None:
    snap = collection(tmp_path)
    result = CliRunner().invoke(main, ["services", str(snap / "node-2"), "-o", "json"])
    assert result.exit_code == 0 and "0.9.8" in result.stderr and "may be wrong" in result.stderr, result.stderr
    assert CliRunner().invoke(main, ["services", str(snap / "node-1")]).stderr == ""


def test_a_misread_listing_another_dump_answers_for_says_nothing(tmp_path: Path) -> None:
    snap = collection(tmp_path, nft_only=False)
    (snap / "node-2" / store.NFT_FILE).write_text("table ip nat {\n}\n")  # (iptables-nft's: no kube-proxy table)
    result = CliRunner().invoke(main, ["audit", str(snap), "-o", "json"])
    assert not [f for f in json.loads(result.stdout)["findings"] if f["id"] == "load-error"], result.stdout
