"""Throw-away network namespaces for loading rulesets into a real kernel (root only).

Used by bench/make_samples.py and the synthesizer tests. Everything here runs inside namespaces it created
and deletes them again, even on failure; nothing touches the root namespace's rules.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

_counter = itertools.count()

# Creating nfacct objects needs a netlink socket opened inside the namespace; kube-proxy does the same
# through its nfacct runner. NETLINK_NETFILTER=12, NFNL_SUBSYS_ACCT=7, NFNL_MSG_ACCT_NEW=0, NFACCT_NAME=1.
_NFACCT_ADD = r"""
import socket, struct, sys
for name in sys.argv[1:]:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)
    s.bind((0, 0))
    payload = name.encode() + b"\0"
    attr = struct.pack("HH", 4 + len(payload), 1) + payload
    attr += b"\0" * (-len(attr) % 4)
    body = struct.pack("BBH", 0, 0, 0) + attr
    s.send(struct.pack("IHHII", 16 + len(body), 7 << 8, 0x1 | 0x4 | 0x400, 1, 0) + body)
    err = struct.unpack("i", s.recv(4096)[16:20])[0]
    s.close()
    if err not in (0, -17):
        sys.exit(f"nfacct {name}: errno {-err}")
"""


# ipset CREATE over netlink (NFNL_SUBSYS_IPSET=6, IPSET_CMD_CREATE=2), so that `-m set` rules load without
# the ipset tool; the newest type revision this kernel knows is used.
_IPSET_CREATE = r"""
import socket, struct, sys
def attr(kind, payload):
    a = struct.pack("HH", 4 + len(payload), kind) + payload
    return a + b"\0" * (-len(a) % 4)
family, typename = int(sys.argv[1]), sys.argv[2]
for name in sys.argv[3:]:
    for revision in range(10, -1, -1):
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)
        s.bind((0, 0))
        body = struct.pack("BBH", family, 0, 0) + attr(1, b"\x07") + attr(2, name.encode() + b"\0")
        body += attr(3, typename.encode() + b"\0") + attr(4, bytes([revision])) + attr(5, bytes([family]))
        body += attr(7 | 0x8000, b"")
        s.send(struct.pack("IHHII", 16 + len(body), (6 << 8) | 2, 0x1 | 0x4 | 0x400 | 0x200, 1, 0) + body)
        err = struct.unpack("i", s.recv(4096)[16:20])[0]
        s.close()
        if err == 0:
            break
    else:
        sys.exit(f"ipset {name} ({typename}): errno {-err}")
"""


def available() -> str | None:
    """None when namespaces can be used here, else why not (for pytest.skip)."""
    if os.geteuid() != 0:
        return "needs root (ip netns)"
    try:
        with netns():
            pass
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"ip netns add failed: {exc}"
    return None


@contextmanager
def netns(tag: str = "synth") -> Iterator[str]:
    name = f"ipt-{tag}-{os.getpid()}-{next(_counter)}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True)


def run(ns: str, argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], input=stdin, text=True, capture_output=True,
                          check=False)


def ensure_nfacct(ns: str, names: list[str]) -> None:
    result = run(ns, [sys.executable, "-c", _NFACCT_ADD, *names])
    if result.returncode:
        raise RuntimeError(result.stderr.strip())


def ensure_ipsets(ns: str, typename: str, names: list[str], *, ipv6: bool = False) -> None:
    """Create empty ipsets (e.g. "hash:net") so that rules matching them can be loaded."""
    result = run(ns, [sys.executable, "-c", _IPSET_CREATE, "10" if ipv6 else "2", typename, *names])
    if result.returncode:
        raise RuntimeError(result.stderr.strip())


def restore(ns: str, text: str, *, ipv6: bool = False, backend: str = "nft", test: bool = False,
            noflush: bool = False) -> None:
    """Load `text` with (ip6)tables-<backend>-restore; raises RuntimeError with iptables' message.
    noflush: keep what the tables already hold, as kube-proxy's own restores do."""
    tool = f"{'ip6tables' if ipv6 else 'iptables'}-{backend}-restore"
    flags = [*(["--test"] if test else []), *(["--noflush"] if noflush else [])]
    result = run(ns, [tool, *flags], stdin=text)
    if result.returncode:
        raise RuntimeError(f"{tool} failed: {result.stderr.strip()}")


def save(ns: str, *, ipv6: bool = False, backend: str = "nft") -> str:
    tool = f"{'ip6tables' if ipv6 else 'iptables'}-{backend}-save"
    result = run(ns, [tool])
    if result.returncode:
        raise RuntimeError(f"{tool} failed: {result.stderr.strip()}")
    return result.stdout
