"""Input files saved on Windows: a UTF-8 byte order mark (an editor), UTF-16 with one (PowerShell 5's `>`). Every
reader answers as for the plain file."""

from __future__ import annotations

import codecs
import gzip
from pathlib import Path

import pytest
from click.testing import CliRunner

from iptrace.cli import main
from iptrace.text import decode_input, utf8_input

SAMPLES = Path(__file__).resolve().parent.parent / "sample_dumps"
QUESTION = ["--dst", "10.96.0.10:53", "--proto", "udp", "--node-ip", "192.168.49.2", "-o", "json"]

ENCODINGS = {
    "utf-8-bom": lambda t: codecs.BOM_UTF8 + t.encode(),
    "utf-16-le": lambda t: t.encode("utf-16"),  # (Python writes the machine's order: little-endian here, with a BOM)
    "utf-16-be": lambda t: codecs.BOM_UTF16_BE + t.encode("utf-16-be"),
    "utf-16-gzip": lambda t: gzip.compress(t.encode("utf-16")),
}


def test_decoding() -> None:
    text = "*nat\n# é\n"
    for encode in ENCODINGS.values():
        data = encode(text)
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        assert decode_input(data) == text
        assert utf8_input(data) == text.encode()
    plain = text.encode()
    assert utf8_input(plain) is plain  # (no copy of a 16 MB table that needs none)
    assert decode_input(b"\xff*nat") == "\ufffd*nat"  # (not UTF-8, no BOM: replaced, never fatal)


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("sample", ["nodeport-fb-backends.txt", "nodeport-fb-backends-nft.nft",
                                    "nodeport-fb-backends-nft.json"])
def test_every_dump_format_answers_alike(tmp_path: Path, sample: str, encoding: str) -> None:
    plain = SAMPLES / sample
    saved = tmp_path / sample
    saved.write_bytes(ENCODINGS[encoding](plain.read_text()))
    want = CliRunner().invoke(main, ["explain", str(plain), *QUESTION])
    got = CliRunner().invoke(main, ["explain", str(saved), *QUESTION])
    assert got.exit_code == want.exit_code == 0, got.output
    assert got.stdout.replace(str(saved), str(plain)) == want.stdout


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_conntrack_table_answers_alike(tmp_path: Path, encoding: str) -> None:
    dump = SAMPLES / "nodeport-fb-backends.txt"
    table = SAMPLES / "conntrack" / "nodeport-fb-backends.txt"
    saved = tmp_path / "conntrack.txt"
    saved.write_bytes(ENCODINGS[encoding](table.read_text()))
    want = CliRunner().invoke(main, ["explain", str(dump), *QUESTION, "--conntrack", str(table)])
    got = CliRunner().invoke(main, ["explain", str(dump), *QUESTION, "--conntrack", str(saved)])
    assert got.exit_code == want.exit_code == 3, got.output  # (the sample table has stale entries)
    assert got.stdout.replace(str(saved), str(table)) == want.stdout


def test_a_dst_file_and_merged_audits_saved_on_windows(tmp_path: Path) -> None:
    dump = SAMPLES / "nodeport-fb-backends.txt"
    questions = tmp_path / "questions.txt"
    questions.write_bytes(codecs.BOM_UTF8 + b"10.96.0.10:53/udp\r\n10.101.234.168:5001\r\n")
    result = CliRunner().invoke(main, ["trace", str(dump), "--dst-file", str(questions), "-o", "json"])
    assert result.exit_code == 0, result.output
    assert "10.96.0.10" in result.stdout and "10.101.234.168" in result.stdout
    # `iptrace audit … -o json > shard.json` in PowerShell 5 writes UTF-16: --merge reads it.
    shard = CliRunner().invoke(main, ["audit", "--jobs", "1", "-o", "json", str(dump)])
    saved = tmp_path / "shard.json"
    saved.write_bytes(shard.stdout.encode("utf-16"))
    merged = CliRunner().invoke(main, ["audit", "--merge", str(saved), "-o", "json"])
    assert merged.exit_code == 0, merged.output
    plain = CliRunner().invoke(main, ["audit", "--merge", "-", "-o", "json"], input=shard.stdout)
    assert merged.stdout.replace(str(saved), "-") == plain.stdout


def test_cluster_data_and_an_inventory_saved_on_windows(tmp_path: Path) -> None:
    from iptrace.collect.cluster import load_cluster_files
    from iptrace.collect.targets import read_inventory

    data = Path(__file__).resolve().parent / "data" / "cluster" / "kubectl-get-all.json"
    saved = tmp_path / "cluster.json"  # (`kubectl get svc,endpointslices,nodes -A -o json > cluster.json`)
    saved.write_bytes(data.read_text().encode("utf-16"))
    got = load_cluster_files([saved])
    want = load_cluster_files([data])
    assert got.services == want.services and got.slices == want.slices and got.nodes == want.nodes
    inventory = tmp_path / "nodes"
    inventory.write_bytes(codecs.BOM_UTF8 + b"node1\r\nroot@10.0.0.2:2222\r\n")
    assert [(n.host, n.user, n.port) for n in read_inventory(inventory)] == [("node1", None, None),
                                                                         ("10.0.0.2", "root", 2222)]
