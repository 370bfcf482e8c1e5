"""A dump that is not text — compressed other than with gzip, or binary — is said to be what it is, in one line
naming the file (and the command that decompresses it), never parsed: its bytes were quoted back to the terminal
as the offending text of a parse error at 1:1. Text in UTF-16 (PowerShell's `>`) and gzip are still read."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from iptrace.cli import main
from iptrace.collect import store
from tests.conftest import SAMPLES

TEXT = (SAMPLES / "nodeport-fb-backends.txt").read_bytes()


def _zip(data: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("iptables-save.txt", data)
    return out.getvalue()


@pytest.mark.parametrize(("data", "said"), [
    (lzma.compress(TEXT), "xz-compressed data, which iptrace does not read (only text, and gzip): decompress it "
                          "first (`xz -d`)"),
    (bz2.compress(TEXT), "bzip2-compressed data, which iptrace does not read (only text, and gzip): decompress it "
                         "first (`bunzip2`)"),
    (b"\x28\xb5\x2f\xfd" + bytes(range(256)), "zstd-compressed data, which iptrace does not read (only text, and "
                                               "gzip): decompress it first (`zstd -d`)"),
    (_zip(TEXT), "a zip archive, which iptrace does not read (only text, and gzip): decompress it first (`unzip`)"),
    (bytes(range(256)) * 4, "binary data, not text"),
])
def test_data_that_is_no_text_is_named(tmp_path: Path, data: bytes, said: str) -> None:
    dump = tmp_path / "node1.txt"
    dump.write_bytes(data)
    for args in (["services", str(dump)], ["trace", str(dump), "--dst", "10.96.0.1:443"], ["parse", "-"]):
        result = CliRunner().invoke(main, args, input=data if args[1] == "-" else None)
        name = "<stdin>" if args[1] == "-" else str(dump)
        assert result.exit_code == 1 and result.stderr == (
            f"Error: {name}: {said}; expected a dump as text: iptables-save output or an nft ruleset\n"), result.stderr
    node = tmp_path / "node-1"
    store.write_node_dir(node, {store.DUMP_FILE: data}, {"node": "node-1", "addresses": []})
    result = CliRunner().invoke(main, ["services", str(node)])
    assert result.exit_code == 1 and result.stderr == (
        f"Error: {node / store.DUMP_FILE}: {said}; expected the text `iptrace collect` saves there\n"), result.stderr
    result = CliRunner().invoke(main, ["trace", str(SAMPLES / "nodeport-fb-backends.txt"), "--dst-file", str(dump)])
    assert result.exit_code == 1 and result.stderr == (
        f"Error: {dump}: {said}; expected one IP:PORT or IP:PORT/proto a line\n"), result.stderr
    result = CliRunner().invoke(main, ["explain", str(SAMPLES / "nodeport-fb-backends.txt"), "--dst", "10.96.0.10:53",
                                       "--conntrack", str(dump)])
    assert result.exit_code == 1 and result.stderr == (
        f"Error: {dump}: {said}; expected the output of `conntrack -L` (or /proc/net/nf_conntrack)\n"), result.stderr


@pytest.mark.parametrize("data", [gzip.compress(TEXT), TEXT.decode().encode("utf-16"), b"\xef\xbb\xbf" + TEXT])
def test_text_and_gzip_are_read(tmp_path: Path, data: bytes) -> None:
    dump = tmp_path / "node1.txt"
    dump.write_bytes(data)
    result = CliRunner().invoke(main, ["services", str(dump)])
    assert result.exit_code == 0 and "default/fb-backends:ka-port" in result.stdout


def test_a_gzip_dst_file_is_read_as_the_message_for_other_compressions_says() -> None:
    """'which iptrace does not read (only text, and gzip)' held for dumps and conntrack tables, but a gzip
    --dst-file was refused as 'binary data, not text': it is read through the dumps' reader now."""
    asked = gzip.compress(b"10.101.234.168:5001\n10.96.0.10:53/udp\n")
    for command in ("trace", "explain"):
        result = CliRunner().invoke(main, [command, str(SAMPLES / "nodeport-fb-backends.txt"), "--dst-file", "-",
                                           "-o", "json"], input=asked)
        assert result.exit_code == 0, result.stderr
        assert [len(answer) > 0 for answer in json.loads(result.stdout)] == [True, True]


def test_an_extra_file_of_binary_data_spoils_only_itself(tmp_path: Path) -> None:
    """Only the node's main dump is refused at once: a binary ip6tables-save.txt or conntrack.txt is still that
    file's own warning (audit: load-error), and the node's rules are analysed."""
    for extra in (store.IP6_DUMP_FILE, store.CONNTRACK_FILE):
        node = tmp_path / extra / "node-1"
        store.write_node_dir(node, {store.DUMP_FILE: TEXT, extra: bytes(range(256))},
                             {"node": "node-1", "addresses": ["192.168.49.2"]})
        result = CliRunner().invoke(main, ["audit", str(node), "-o", "json"])
        doc = json.loads(result.stdout)
        assert [(n["name"], n["status"], n["services"]) for n in doc["nodes"]] == [("node-1", "ok", 7)], doc["nodes"]
        assert [f["id"] for f in doc["findings"]] == ["load-error"]
