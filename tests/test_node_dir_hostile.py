"""A collected node directory whose files are not what `iptrace collect` saves: a FIFO (reading it, or opening it
to size the audit's workers, waited for ever), a gzip file cut short (read as text: "unexpected '\\udc8b…'", and
its last 4 bytes taken for a size of up to 4 GB made the audit run one worker), a meta.json that is not JSON
(now at file:line:column). Each is that node's one-line error; the other nodes are still audited."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from iptrace.collect import store
from iptrace.collect.stream import Source, dump_bytes
from iptrace.errors import InputError
from tests.conftest import ROOT, SAMPLES

FB = (SAMPLES / "nodeport-fb-backends.txt").read_bytes()
META = {"node": "n", "addresses": ["192.168.49.2"]}


def _node(root: Path, name: str) -> Path:
    node = root / name
    store.write_node_dir(node, {store.DUMP_FILE: FB}, {**META, "node": name})
    return node


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    # (in a process of its own, with a timeout: a read that waits fails the test instead of hanging it)
    return subprocess.run([sys.executable, "-m", "iptrace", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.mark.parametrize("name", [store.IP6_DUMP_FILE, store.CONNTRACK_FILE, store.META_FILE])
def test_a_fifo_is_named_not_waited_on(tmp_path: Path, name: str) -> None:
    node = _node(tmp_path, "n")
    (node / name).unlink(missing_ok=True)
    os.mkfifo(node / name)
    with pytest.raises(InputError, match=rf"^{node / name}: not a regular file \(a FIFO\); expected a file saved by"):
        store.read_node_dir(node)
    result = _run("services", str(node))
    assert result.returncode == 1
    assert result.stderr.startswith(f"Error: {node / name}: not a regular file (a FIFO)")


def test_an_audit_with_a_fifo_in_a_node_audits_the_others(tmp_path: Path) -> None:
    snap = tmp_path / "snap"
    _node(snap, "a")
    os.mkfifo(_node(snap, "b") / store.IP6_DUMP_FILE)
    result = _run("audit", str(snap), "-o", "json")
    doc = json.loads(result.stdout)
    assert [(n["name"], n["status"]) for n in doc["nodes"]] == [("a", "ok"), ("b", "load-error")]


def test_gzip_dumps_are_read_and_a_cut_one_is_named(tmp_path: Path) -> None:
    whole = _node(tmp_path, "whole")
    (whole / store.DUMP_FILE).write_bytes(gzip.compress(FB))
    assert store.read_node_dir(whole).dump_text == store.read_node_dir(_node(tmp_path, "plain")).dump_text
    cut = _node(tmp_path, "cut")
    (cut / store.DUMP_FILE).write_bytes(gzip.compress(FB)[:2000])
    with pytest.raises(InputError, match=r"a gzip file that cannot be decompressed \(.*\): it looks cut short"):
        store.read_node_dir(cut)


def test_a_cut_gzip_is_not_sized_by_its_last_bytes(tmp_path: Path) -> None:
    dump = tmp_path / "cut.txt"
    dump.write_bytes(gzip.compress(FB)[:1000] + b"\xff\xff\xff\xff")  # (ISIZE would say 4 GB)
    assert dump_bytes(Source("cut", str(dump))) == 1032 * 1004
    whole = tmp_path / "whole.txt"
    whole.write_bytes(gzip.compress(FB))
    assert dump_bytes(Source("whole", str(whole))) == len(FB)


def test_meta_json_that_is_not_json_is_named_at_its_line_and_column(tmp_path: Path) -> None:
    node = _node(tmp_path, "n")
    (node / store.META_FILE).write_text('{"node": "n",\n "addresses": [1.2.3]}\n')
    with pytest.raises(InputError, match=rf"^{node / store.META_FILE}:2:19: unreadable metadata \(Expecting ','"):
        store.read_node_dir(node)


@pytest.mark.parametrize("kind", ["a directory", "a FIFO", "a dangling symbolic link"])
def test_a_main_dump_that_is_no_file_is_named_as_what_it_is(tmp_path: Path, kind: str) -> None:
    """iptables-save.txt that is a directory (or a FIFO, or a link to nothing) was 'missing' to `services DIR/NODE`
    and the node was left out of `audit DIR` without a word; now it is said as what it is, the node's load-error."""
    node = tmp_path / "snap" / "n"
    node.mkdir(parents=True)
    dump = node / store.DUMP_FILE
    {"a directory": dump.mkdir, "a FIFO": lambda: os.mkfifo(dump),
     "a dangling symbolic link": lambda: dump.symlink_to(tmp_path / "nowhere")}[kind]()
    _node(tmp_path / "snap", "m")
    # (run as `python -m iptrace`, which the commands it suggests are spelled as)
    said = f"{dump}: {kind}, not a file; expected the node's rules there, as `python -m iptrace collect` saves them"
    result = _run("services", str(node))
    assert result.returncode == 1 and result.stderr == f"Error: {said}\n"
    result = _run("audit", str(tmp_path / "snap"), "-o", "json")
    doc = json.loads(result.stdout)
    assert [(n["name"], n["status"]) for n in doc["nodes"]] == [("m", "ok"), ("n", "load-error")]
    assert [n["error"] for n in doc["nodes"] if n["name"] == "n"] == [said.replace("python -m iptrace", "iptrace")]


def test_meta_json_that_is_no_text_or_a_directory_is_said_in_words(tmp_path: Path) -> None:
    """Not Python's exception text ("'utf-8' codec can't decode byte 0x9f in position 1…", "[Errno 21] …")."""
    node = _node(tmp_path, "n")
    (node / store.META_FILE).write_bytes(b"{\x9f}")
    with pytest.raises(InputError) as caught:
        store.read_node_dir(node)
    assert str(caught.value) == (f"{node / store.META_FILE}: unreadable metadata (not UTF-8 text: byte 0x9f at "
                                 "offset 1); collect this node again")
    (node / store.META_FILE).unlink()
    (node / store.META_FILE).mkdir()
    with pytest.raises(InputError) as caught:
        store.read_node_dir(node)
    assert str(caught.value) == f"{node / store.META_FILE}: unreadable metadata (Is a directory); collect this node again"


def test_a_directory_of_dump_files_is_no_collection_and_the_error_says_what_to_do(tmp_path: Path) -> None:
    """`audit sample_dumps/` advised `run iptrace collect … first` of a directory that holds dumps: it names them
    and says to audit the files themselves; an empty directory still gets the collect advice."""
    (tmp_path / "dumps").mkdir()
    for name in ("b.txt", "a.txt", "c.nft", "d.txt"):
        (tmp_path / "dumps" / name).write_bytes(FB)
    result = _run("audit", str(tmp_path / "dumps"))
    assert result.returncode == 1 and result.stderr == (
        f"Error: {tmp_path / 'dumps'}: no node directories (NODE/iptables-save.txt or NODE/nft-ruleset.txt) found; it "
        "holds dump files (a.txt, b.txt, c.nft, …): audit the files themselves, e.g. `python -m iptrace audit "
        f"{tmp_path / 'dumps' / '*'}.txt`\n")
    (tmp_path / "empty").mkdir()
    assert _run("audit", str(tmp_path / "empty")).stderr.endswith("found; run `python -m iptrace collect NODE... "
                                                                   "--out DIR` first\n")
