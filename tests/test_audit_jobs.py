"""`audit`'s worker count when --jobs is not given: one per CPU, no more than the nodes, and no more than fit in
the memory available with the biggest node's dumps (stream.default_jobs) — said on stderr when memory limits
them; the report is the same whatever the count."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from click.testing import CliRunner

from iptrace.cli import main
from iptrace.collect import store, stream
from iptrace.collect.stream import BYTES_PER_DUMP_BYTE, WORKER_BYTES, Source, default_jobs, dump_bytes, sources
from tests.conftest import SAMPLES

BIG = (SAMPLES / "large-cluster-no-comments.txt").read_bytes()
SMALL = (SAMPLES / "nodeport-fb-backends.txt").read_bytes()


@pytest.fixture()
def snap(tmp_path: Path) -> Path:
    root = tmp_path / "snap"
    for i, data in enumerate((SMALL, BIG, SMALL)):
        store.write_node_dir(root / f"node-{i}", {store.DUMP_FILE: data},
                             {"node": f"node-{i}", "addresses": ["192.168.49.2"]})
    (root / "node-1" / store.NFT_FILE).write_bytes(b"table ip t {\n}\n")
    return root


def test_what_a_worker_reads_of_a_node(snap: Path, tmp_path: Path) -> None:
    nodes = sources([str(snap)])
    assert [dump_bytes(n) for n in nodes] == [len(SMALL), len(BIG) + len(b"table ip t {\n}\n"), len(SMALL)]
    packed = tmp_path / "big.txt.gz"
    packed.write_bytes(gzip.compress(BIG))
    assert dump_bytes(sources([str(packed)])[0]) == len(BIG)  # the text, not the file
    assert dump_bytes(Source("stdin", "<stdin>", False, "x" * 1234)) == 1234


def test_one_per_cpu_as_many_as_fit(snap: Path) -> None:
    nodes = sources([str(snap)])
    need = WORKER_BYTES + BYTES_PER_DUMP_BYTE * dump_bytes(nodes[1])  # the biggest node's
    assert default_jobs(nodes, 8, None) == (3, None)  # no more than the nodes
    assert default_jobs(nodes, 2, 100 * need) == (2, None)
    assert default_jobs(nodes[:1], 8, 1) == (1, None)  # one node: one process, nothing to say
    jobs, note = default_jobs(nodes, 8, int(2.6 * need))
    assert jobs == 2 and note is not None
    assert "not one per CPU (8)" in note and "--jobs N" in note
    assert default_jobs(nodes, 8, 10)[0] == 1  # never none


def test_the_cli_says_when_memory_limits_the_workers(snap: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = CliRunner().invoke(main, ["audit", str(snap), "-j", "1", "-o", "json"])
    monkeypatch.setattr(stream, "available_memory", lambda: 1)
    monkeypatch.setattr("os.cpu_count", lambda: 4)  # (whatever this machine has)
    limited = CliRunner().invoke(main, ["audit", str(snap), "-o", "json"])
    assert limited.exit_code == plain.exit_code
    assert limited.stdout == plain.stdout
    assert "note: auditing with 1 worker process, not one per CPU (4)" in limited.stderr
    given = CliRunner().invoke(main, ["audit", str(snap), "-j", "2", "-o", "json"])  # --jobs is obeyed, silently
    assert given.stdout == plain.stdout and "note:" not in given.stderr


_BIG_BLOCKS = """
import sys
from pathlib import Path
from iptrace.collect import stream
def rss(): return int(Path("/proc/self/statm").read_text().split()[1]) * 4096
if sys.argv[1] == "tuned":
    stream._big_blocks_returned()
before = rss()
for _ in range(3):
    text = "x" * (30 << 20)  # (a node's dump text, read node after node)
    del text
print((rss() - before) >> 20)
"""


@pytest.mark.skipif(not Path("/proc/self/statm").is_file(), reason="needs /proc")
def test_a_process_that_reads_node_after_node_gives_back_a_dump_text_once_freed() -> None:
    """stream._big_blocks_returned (audit's workers, and its parent): a dump text's memory goes back to the system
    when it is freed, also after the first one (glibc would otherwise raise its threshold to that size and keep
    the block on its heap)."""
    import ctypes
    import subprocess
    import sys

    try:
        glibc = hasattr(ctypes.CDLL("libc.so.6"), "mallopt")
    except OSError:
        glibc = False
    if not glibc:
        pytest.skip("no glibc")
    kept = {mode: int(subprocess.run([sys.executable, "-c", _BIG_BLOCKS, mode], check=True, capture_output=True,
                                     text=True, cwd=Path(__file__).parent.parent).stdout)
            for mode in ("default", "tuned")}
    assert kept["tuned"] < 5 < kept["default"], kept
