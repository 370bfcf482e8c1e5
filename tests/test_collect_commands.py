"""The node-side script (iptrace/collect/commands.py) run by the real /bin/sh with stand-in tools on its PATH:
every step's stdout comes back byte for byte, stderr and status beside it, plain or gzip+base64, and a cut
stream is told from a whole one. No root needed."""

from __future__ import annotations

import subprocess
from pathlib import Path

from iptrace.collect.commands import Invocation, StepClock, parse_batch

TOKEN = "iptrace-0123abcd"
# No final newline, a line that looks like a boundary of another run, and bytes that are not UTF-8.
TRICKY = b"*filter\n\niptrace-ffff status iptables-save 0\n\xff\xfe -A X\nCOMMIT"


def _tools(directory: Path, scripts: dict[str, str]) -> str:
    directory.mkdir()
    for name, text in scripts.items():
        (directory / name).write_text(text)
        (directory / name).chmod(0o755)
    return f"{directory}:/usr/bin:/bin"


def _run(path: str, invocation: Invocation) -> bytes:
    done = subprocess.run(invocation.argv(TOKEN), capture_output=True, env={"PATH": path}, check=True)
    return done.stdout


def test_every_step_comes_back_byte_for_byte(tmp_path: Path):
    (tmp_path / "dump").write_bytes(TRICKY)
    path = _tools(tmp_path / "bin", {
        "iptables": "#!/bin/sh\necho 'iptables v1.8.9 (nf_tables)'\n",
        "iptables-save": f"#!/bin/sh\ncat {tmp_path / 'dump'}\necho 'warning: one' >&2\necho 'two' >&2\n",
        "ip6tables-save": "#!/bin/sh\necho 'ip6tables-save: cannot initialize' >&2\nexit 3\n",
        "ip": "#!/bin/sh\nexit 127\n",
        "nft": "#!/bin/sh\n[ \"$1\" = --version ] && echo 'nftables v1.0.6' && exit 0\nkill -SEGV $$\n",
    })
    for compress in (False, True):
        batch = parse_batch(_run(path, Invocation(compress=compress)), TOKEN)
        assert (batch.encoding, batch.running, batch.cut) == ("gzip" if compress else "plain", None, False)
        steps = batch.steps
        assert steps["iptables-save"].stdout == TRICKY
        assert (steps["iptables-save"].status, steps["iptables-save"].stderr) == (0, "warning: one\ntwo")
        assert (steps["ip6tables-save"].status, steps["ip6tables-save"].stderr) == (3,
                                                                                  "ip6tables-save: cannot initialize")
        assert steps["iptables-version"].stdout == b"iptables v1.8.9 (nf_tables)\n"
        # `ip` failed, so the addresses are read from /proc instead.
        assert steps["addresses"].status == 127 and b"/32 host LOCAL" in steps["proc-addresses"].stdout
        assert steps["nft-version"].stdout == b"nftables v1.0.6\n"
        assert steps["nft"].status == 128 + 11
        # No conntrack on this PATH: said without running anything.
        assert (steps["conntrack-ipv4"].status, steps["conntrack-ipv4"].stderr) == (127, "conntrack: not found")


def test_a_cut_stream_is_told_from_a_whole_one(tmp_path: Path):
    path = _tools(tmp_path / "bin", {"iptables-save": "#!/bin/sh\nseq 1 200000\n"})
    whole = _run(path, Invocation(compress=True))
    assert parse_batch(whole, TOKEN).cut is False
    cut = parse_batch(whole[: len(whole) // 2], TOKEN)
    assert cut.cut is True and "conntrack-ipv6" not in cut.steps
    plain = _run(path, Invocation())
    stopped = parse_batch(plain[: plain.index(b"200000")], TOKEN)
    assert stopped.running == "iptables-save" and "iptables-save" not in stopped.steps
    assert parse_batch(b"sh: 1: something else\n", TOKEN).encoding is None


def test_the_step_clock_follows_the_stream():
    clock = StepClock(TOKEN, command_timeout=5, listing_timeout=120, now=0.0)
    assert clock.describe() == "the node's shell" and clock.deadline() == 5
    clock.feed(f"{TOKEN} plain\n\n{TOKEN} begin iptables-save\n*filter\n".encode(), now=1.0)
    assert (clock.step, clock.deadline(), clock.describe()) == ("iptables-save", 6.0, "`iptables-save`")
    # A marker split across two chunks is still seen.
    clock.feed(f"COMMIT\n\n{TOKEN} begin n".encode(), now=2.0)
    clock.feed(b"ft\n", now=3.0)
    assert (clock.step, clock.deadline()) == ("nft", 123.0)
