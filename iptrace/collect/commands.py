"""What every collection runs on a node, and how its output is framed — one script for SSH, for an exec into
kube-proxy's pod and for a collector pod, so the three ways in can never collect different things.

The script is POSIX sh and takes only our own constants as arguments; nothing a user or the cluster supplies
reaches it. Each step's stdout passes through untouched (dumps can be tens of MB); its stderr and exit status
follow it between boundary lines that carry a random token made per node, so no dump can forge a boundary.
Library code: no I/O here; the transports run the script and hand the bytes to `parse_batch`.
"""

from __future__ import annotations

import base64
import binascii
import re
import zlib
from dataclasses import dataclass

from iptrace.errors import printable

# How a collector pod reaches the node's own tools: every namespace of the host's PID 1.
NSENTER_HOST = ("nsenter", "-t", "1", "-m", "-u", "-i", "-n", "-p", "--")

# The steps, in the order the script runs them. `iptables-legacy-save` runs only when the nft backend is in use
# and legacy tables exist (the condition under which iptables-nft-save prints its warning); `proc-addresses` only
# when `ip` is missing (kube-proxy's image has no iproute2). Where the shell can tell a tool is missing without
# running anything (no sudo, no nsenter), its steps are reported as "not found" without a fork: every process
# counts when twenty nodes share a CPU with the collector.
STEPS = ("iptables-version", "iptables-save", "ip6tables-save", "iptables-legacy-save", "addresses",
         "proc-addresses", "routes", "nft-version", "nft", "conntrack-ipv4", "conntrack-ipv6")
COMMANDS: dict[str, tuple[str, ...]] = {
    "iptables-version": ("iptables", "--version"),
    "iptables-save": ("iptables-save",),
    "ip6tables-save": ("ip6tables-save",),
    "iptables-legacy-save": ("iptables-legacy-save",),
    "addresses": ("ip", "-o", "addr", "show"),
    "proc-addresses": ("cat", "/proc/net/fib_trie", "/proc/net/if_inet6"),
    # (the kernel's own listing, which every node has: kube-proxy's image has no `ip`)
    "routes": ("cat", "/proc/net/route", "/proc/net/ipv6_route"),
    "nft-version": ("nft", "--version"),
    # NOTE: never --terse: it drops set and map elements, and kube-proxy keeps its Services in map elements.
    "nft": ("nft", "list", "ruleset"),
    "conntrack-ipv4": ("conntrack", "-L", "-f", "ipv4"),
    "conntrack-ipv6": ("conntrack", "-L", "-f", "ipv6"),
}
# Listings that take a minute on huge nodes (an nftables ruleset of 5,000 Services, a full conntrack table).
LISTING_STEPS = frozenset({"nft", "conntrack-ipv4", "conntrack-ipv6"})
DEFAULT_LISTING_TIMEOUT = 180.0
# Each conntrack family keeps at most this many entries by default (~16 MB of text per 100,000).
DEFAULT_CONNTRACK_MAX_ENTRIES = 100_000

_SCRIPT = r"""b=$1 h=$2 s=$3 m=$4 z=$5
nl='
'
run() {
  n=$1; shift
  printf '\n%s begin %s\n' "$b" "$n"
  e=$("$@" 2>&1 1>&3 3>&-; printf '\n%s' "$?")
  r=${e##*"$nl"}; e=${e%"$nl$r"}
  printf '\n%s status %s %s\n%s\n%s end\n' "$b" "$n" "$r" "$e" "$b"
}
cap() {
  n=$1; shift
  printf '\n%s begin %s\n' "$b" "$n"
  e=$(exec 4>&1; { "$@" 2>&4 3>&- 4>&-; printf '\n%s' "$?" >&4; } | head -n "$m" >&3 4>&-)
  r=${e##*"$nl"}; e=${e%"$nl$r"}
  printf '\n%s status %s %s\n%s\n%s end\n' "$b" "$n" "$r" "$e" "$b"
}
gone() {
  printf '\n%s begin %s\n\n%s status %s 127\n%s: not found\n%s end\n' "$b" "$1" "$b" "$1" "$2" "$b"
}
have() { [ -n "$h$s" ] || command -v "$1" >/dev/null 2>&1; }
t= L=
if [ -z "$s" ]; then { read -r t < /proc/net/ip_tables_names; } 2>/dev/null
else t=$($h $s cat /proc/net/ip_tables_names 2>/dev/null); fi
if [ -n "$t" ]; then case $($h iptables --version 2>/dev/null) in *nf_tables*) L=1;; esac; fi
c=run
[ "$m" -gt 0 ] 2>/dev/null && command -v head >/dev/null 2>&1 && c=cap
batch() {
  run iptables-version $h iptables --version
  run iptables-save $h $s iptables-save
  run ip6tables-save $h $s ip6tables-save
  [ -z "$L" ] || run iptables-legacy-save $h $s iptables-legacy-save
  run addresses $h ip -o addr show
  [ "$r" = 0 ] || run proc-addresses $h cat /proc/net/fib_trie /proc/net/if_inet6
  run routes $h cat /proc/net/route /proc/net/ipv6_route
  if have nft; then
    run nft-version $h nft --version
    run nft $h $s nft list ruleset
  else gone nft-version nft; gone nft nft; fi
  if have conntrack; then
    $c conntrack-ipv4 $h $s conntrack -L -f ipv4
    $c conntrack-ipv6 $h $s conntrack -L -f ipv6
  else gone conntrack-ipv4 conntrack; gone conntrack-ipv6 conntrack; fi
}
if [ -n "$h" ]; then $h true || exit; fi
if [ -n "$z" ] && command -v gzip >/dev/null 2>&1 && command -v base64 >/dev/null 2>&1; then
  printf '%s gzip\n' "$b"; batch 3>&1 | gzip -c | base64
else
  printf '%s plain\n' "$b"; batch 3>&1
fi
"""


@dataclass(frozen=True, slots=True)
class Invocation:
    """How the script is told where it runs. `host` prefixes every command (nsenter from a collector pod),
    `privileged` the ones that need root (`sudo -n` over SSH); `conntrack_cap` caps each family's entries
    (0: no cap); `compress` asks for gzip+base64 output when the shell has both (pod logs are rotated by
    the kubelet at 10 MiB by default, and a compressed dump is ~10× smaller)."""

    host: tuple[str, ...] = ()
    privileged: tuple[str, ...] = ()
    conntrack_cap: int = 0
    compress: bool = False

    def argv(self, boundary: str) -> tuple[str, ...]:
        """`sh -c SCRIPT` with its arguments; `boundary` is our own random token."""
        if not re.fullmatch(r"[A-Za-z0-9-]+", boundary):
            raise ValueError("boundary must be a plain token")
        # head -n CAP+1: one line more than kept tells the reader the table was cut.
        lines = str(self.conntrack_cap + 1) if self.conntrack_cap > 0 else "0"
        return ("sh", "-c", _SCRIPT, "iptrace", boundary, " ".join(self.host), " ".join(self.privileged),
                lines, "1" if self.compress else "")


@dataclass(frozen=True, slots=True)
class StepOutput:
    """One step as the node ran it: stdout byte for byte, stderr as text, exit status."""

    step: str
    status: int
    stdout: bytes
    stderr: str


@dataclass(frozen=True, slots=True)
class Batch:
    """The parsed output of one run: the steps that reported their status, by name. `encoding` is "plain" or
    "gzip" (the header line; None when the script never started), `running` names a step that began but never
    reported (the output stops there), `cut` says a compressed stream ended early (a rotated pod log)."""

    steps: dict[str, StepOutput]
    encoding: str | None
    running: str | None = None
    cut: bool = False


def parse_batch(data: bytes, boundary: str) -> Batch:
    """Cut the script's output at its boundary lines; everything else is the steps' own bytes. Lines before
    the header (a container runtime's or a login shell's chatter) are skipped."""
    token = boundary.encode()
    if data.startswith(token + b" "):
        header = 0
    else:
        header = data.find(b"\n" + token + b" ") + 1
        if header == 0:
            return Batch({}, None)
    header_end = data.find(b"\n", header)
    if header_end < 0:
        return Batch({}, None)
    encoding = data[header + len(token) + 1:header_end].decode("ascii", "replace")
    body = data[header_end + 1:]
    cut = False
    if encoding == "gzip":
        body, cut = _inflate(body)
    batch = _steps(body, token)
    return Batch(batch.steps, encoding, batch.running, cut)


def _inflate(text: bytes) -> tuple[bytes, bool]:
    """base64 of a gzip stream → (what could be decompressed, whether the stream was cut short)."""
    compact = b"".join(text.split())
    compact = compact[:len(compact) - len(compact) % 4]
    try:
        raw = base64.b64decode(compact)
    except binascii.Error:
        return b"", True
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(raw)
    except zlib.error:
        return b"", True
    return data, not inflater.eof


def _steps(body: bytes, token: bytes) -> Batch:
    begin = b"\n" + token + b" begin "
    status_mark = b"\n" + token + b" status "
    end_mark = b"\n" + token + b" end\n"
    steps: dict[str, StepOutput] = {}
    position = 0
    while True:
        found = body.find(begin, position)
        if found < 0:
            return Batch(steps, "plain")
        name_end = body.find(b"\n", found + len(begin))
        if name_end < 0:
            return Batch(steps, "plain")
        name = body[found + len(begin):name_end].decode("ascii", "replace")
        status_at = body.find(status_mark, name_end)
        line_end = body.find(b"\n", status_at + len(status_mark)) if status_at >= 0 else -1
        err_end = body.find(end_mark, line_end) if line_end >= 0 else -1
        if err_end < 0:
            return Batch(steps, "plain", name)
        code = body[status_at + len(status_mark):line_end].decode("ascii", "replace").rpartition(" ")[2]
        stderr = printable(body[line_end + 1:err_end].decode("utf-8", "replace")).strip()
        steps[name] = StepOutput(name, int(code) if code.isdigit() else -1, body[name_end + 1:status_at], stderr)
        position = err_end + len(end_mark)


class StepClock:
    """Follows a streamed run and says how long the step now running may still take: each step gets the
    command timeout, listings (LISTING_STEPS) at least the listing timeout. Feed it the stdout as it arrives."""

    def __init__(self, boundary: str, command_timeout: float, listing_timeout: float, now: float) -> None:
        self._begin = b"\n" + boundary.encode() + b" begin "
        self._tail = b""
        self.step: str | None = None
        self.command_timeout = command_timeout
        self.listing_timeout = max(listing_timeout, command_timeout)
        self.started = now

    def feed(self, chunk: bytes, now: float) -> None:
        data = self._tail + chunk
        found = data.rfind(self._begin)
        if found >= 0:
            name_end = data.find(b"\n", found + len(self._begin))
            if name_end >= 0:
                self.step = data[found + len(self._begin):name_end].decode("ascii", "replace")
                self.started = now
                data = data[name_end:]
            else:
                data = data[found:]
        self._tail = data[-(len(self._begin) + 64):]

    def allowance(self) -> float:
        return self.listing_timeout if self.step in LISTING_STEPS else self.command_timeout

    def deadline(self) -> float:
        return self.started + self.allowance()

    def describe(self) -> str:
        """The command that is (or was, at a timeout) running, for messages."""
        return f"`{' '.join(COMMANDS[self.step])}`" if self.step in COMMANDS else "the node's shell"


def worst_case_seconds(command_timeout: float, listing_timeout: float) -> float:
    """How long the whole script may take when every step uses its full allowance (a pod's deadline)."""
    listing = max(listing_timeout, command_timeout)
    return sum(listing if step in LISTING_STEPS else command_timeout for step in STEPS)
