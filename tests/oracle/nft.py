"""The kernel as oracle for nftables rulesets: load a ruleset with `nft -f` into a Topology's `node` namespace,
list it back (the exact text iptrace is then given) and watch which rules a probe's first packet matched with
`nft monitor trace`.

Tracing: a table of our own (`iptrace-oracle`, hooks prerouting and output at priority -500, before anything
kube-proxy writes) sets `meta nftrace set 1` on every packet; `nft monitor trace`, running in `node`, reports
every rule each traced packet matched, hook by hook. The oracle keeps the events of the probe's SYN only (found
by its fixed source port, then followed by its IP id, which NAT does not change). A fence packet after each
probe (UDP from `client` to the node on a port of its own) proves every earlier event was read: netlink
delivers them in order. The oracle table is added after the ruleset is listed, so iptrace never sees it.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.oracle.netns import NODE_IP, OracleError, ProbeResult, Topology, _run, oracle_unavailable, socket_in

ORACLE_TABLE = "iptrace-oracle"
_TRACE_TABLE = """table {family} iptrace-oracle {{
	chain pre {{
		type filter hook prerouting priority -500; policy accept;
		meta nftrace set 1
	}}
	chain out {{
		type filter hook output priority -500; policy accept;
		meta nftrace set 1
	}}
}}
"""
_EVENT = re.compile(r"^trace id (\w+) (\w+) (\S+) (\S+) (packet|rule|verdict|policy):? ?(.*)$")
_FENCE_PORT = 9  # discard: nothing listens, the node answers port-unreachable, which is all a fence needs


@dataclass(frozen=True, slots=True)
class KernelStep:
    """A rule the kernel reported matching: `table` as iptrace names nft tables ("ip kube-proxy")."""

    table: str
    chain: str
    rule: str
    verdict: str


def requires_nft() -> Any:
    """A pytest mark: skip when the oracle cannot run or `nft` is missing (an error under
    IPTRACE_ORACLE_REQUIRED=1, as for requires_root_netns)."""
    import pytest

    reason = oracle_unavailable("nft") or (None if shutil.which("nft") else "nft is not installed "
                                                                               "(apt-get install nftables)")
    if reason and os.environ.get("IPTRACE_ORACLE_REQUIRED") == "1":
        raise OracleError(f"IPTRACE_ORACLE_REQUIRED=1 but the nftables oracle cannot run: {reason}")
    return pytest.mark.skipif(reason is not None, reason=reason or "")


def load_nft(topo: Topology, text: str) -> None:
    """`nft -f` the ruleset into `node` (the ruleset's own tables only) and forget earlier connections."""
    _run(["ip", "netns", "exec", topo.node, "nft", "-f", "-"], stdin=text)
    topo.flush_conntrack()


def restore_iptables_nft(topo: Topology, text: str) -> None:
    """iptables-nft-restore into `node` (iptables-nft's own `ip filter`/`ip nat`/… tables)."""
    _run(["ip", "netns", "exec", topo.node, "iptables-nft-restore", "--noflush"], stdin=text)


def list_ruleset(topo: Topology) -> str:
    """`nft list ruleset` in `node`: the kernel's listing, as a node shows it."""
    return _run(["ip", "netns", "exec", topo.node, "nft", "list", "ruleset"])


def nft(topo: Topology, *args: str) -> str:
    return _run(["ip", "netns", "exec", topo.node, "nft", *args])


def json_listing(topo: Topology) -> Any:
    """`nft -j list ruleset` in `node`, read as iptrace reads it (the JSON form of list_ruleset's listing)."""
    from iptrace import dataplanes

    return dataplanes.load(nft(topo, "-j", "list", "ruleset"), source="nft -j list ruleset")[1]


def listing_tracers(topo: Topology) -> list[Any]:
    """iptrace's tracers of `node`'s ruleset as the kernel lists it: the text listing's, then the JSON one's."""
    from iptrace.nftables import load
    from iptrace.nftables.walk import Tracer

    return [Tracer(load(list_ruleset(topo)), node_ips=topo.node_ips), Tracer(json_listing(topo), node_ips=topo.node_ips)]


def _packet_fields(text: str) -> dict[str, str]:
    words = text.split()
    out: dict[str, str] = {}
    for i, w in enumerate(words[:-1]):
        if w in ("saddr", "daddr", "sport", "dport", "id") and words[i - 1] in ("ip", "ip6", "tcp", "udp"):
            out[f"{words[i - 1]} {w}"] = words[i + 1]
        elif w == "flags" and words[i - 1] == "tcp":
            out["tcp flags"] = " ".join(words[i + 1:i + 3])
    return out


class NftTracer:
    """`nft monitor trace` in `node`, read by a thread; `path_of` runs one probe and returns its SYN's rules."""

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self._ports = itertools.cycle(range(21000, 59000))
        self._fences = itertools.cycle(range(61000, 64000))
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> NftTracer:
        families = ["ip"] + (["ip6"] if self.topo.ipv6 else [])
        _run(["ip", "netns", "exec", self.topo.node, "nft", "-f", "-"],
             stdin="".join(_TRACE_TABLE.format(family=f) for f in families))
        self._proc = subprocess.Popen(["ip", "netns", "exec", self.topo.node, "nft", "monitor", "trace"],
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._reader = threading.Thread(target=self._read, name="nft-monitor", daemon=True)
        self._reader.start()
        # The monitor subscribes a moment after it starts: fence until a fence shows up.
        deadline = time.monotonic() + 10
        while not self._fence(wait=0.2):
            if time.monotonic() > deadline:
                self.close()
                raise OracleError("nft monitor trace reported nothing within 10 s")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            if proc.stdout:
                proc.stdout.close()
        for family in ["ip"] + (["ip6"] if self.topo.ipv6 else []):
            subprocess.run(["ip", "netns", "exec", self.topo.node, "nft", "delete", "table", family, ORACLE_TABLE],
                           capture_output=True, check=False)

    def _read(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        for line in proc.stdout:
            with self._cond:
                self._lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def _fence(self, wait: float = 5.0) -> bool:
        """Send a fence datagram and wait until its trace is read (so is everything before it)."""
        port = next(self._fences)
        sock = socket_in(self.topo.client, socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            sock.bind(("0.0.0.0", port))
            sock.sendto(b"fence", (NODE_IP, _FENCE_PORT))
        mark = f"udp sport {port} "
        with self._cond:
            return self._cond.wait_for(lambda: any(mark in line for line in self._lines[-50:]), timeout=wait)

    def path_of(self, probe: Callable[[int], ProbeResult]) -> tuple[ProbeResult, list[KernelStep]]:
        """Run `probe(sport)` and return its result with the rules its first packet (the SYN) matched, in the
        order the kernel reported them."""
        with self._cond:
            self._lines.clear()
        sport = next(self._ports)
        result = probe(sport)
        if not self._fence():
            raise OracleError("the fence packet's trace never arrived")
        with self._cond:
            lines = list(self._lines)
        return result, syn_path(lines, sport)


def syn_path(lines: list[str], sport: int) -> list[KernelStep]:
    """The rule events of the SYN sent from `sport`. Each base chain prints the packet as it enters; a packet
    line with our source port and the SYN flag alone is our SYN (NAT changes the source port only after
    nat-postrouting printed it). A second visit of a base chain is a retransmission: it ends the path."""
    ours: dict[str, bool] = {}  # trace id -> whether the packet it now describes is our first SYN
    visited: set[tuple[str, str, str]] = set()
    done = False
    steps: list[KernelStep] = []
    for line in lines:
        match = _EVENT.match(line)
        if not match:
            continue
        trace_id, family, table, chain, kind, rest = match.groups()
        if kind == "packet":
            fields = _packet_fields(rest)
            syn = fields.get("tcp sport") == str(sport) and fields.get("tcp flags") == "== syn"
            if syn and (family, table, chain) in visited:
                done = True
            if syn:
                visited.add((family, table, chain))
            ours[trace_id] = syn and not done
            continue
        if kind == "rule" and ours.get(trace_id) and table != ORACLE_TABLE:
            rule, _, verdict = rest.rpartition(" (verdict ")
            steps.append(KernelStep(f"{family} {table}", chain, rule.strip(), verdict.rstrip(")")))
    return steps
