"""The kernel as oracle: load an iptables dump into a throwaway network namespace and watch real packets.

A `Topology` builds three namespaces, `client` ↔ veth ↔ `node` ↔ veth ↔ `pods`, loads a dump into `node` and
answers "which endpoint did the kernel choose, which source did the pod see, which rules did the packet hit".
Test traffic stays inside those namespaces and inside 198.18.0.0/15 (or loopback): the probe helpers refuse
any other destination. Nothing here touches the root namespace's rules, routes or interfaces.

Address plan (TESTING.md's ranges; IPv6 mirrors it in a ULA assigned only inside the namespaces):
    client eth0   198.18.0.2/24            fd00:198:18::2/64      extra clients via add_client_ip()
    node   eth0   198.18.0.1/24            fd00:198:18::1/64      extra node addresses via add_node_ip()
    node   cni0   198.18.128.1/17          fd00:198:18:8000::1/64 (the pod-side veth; named like a bridge so
                                                                   `-i cni0` local-detection rules match)
    pods   eth0   pod IPs, /32 each        /128 each              via add_pod_ip()
    services      198.19.0.0/16            fd00:198:19::/64       routed by the node into a silent sink

Fidelity notes. All pod IPs share one namespace, but a policy rule sends pod-originated traffic for test
addresses through the node, so pod → service → other pod crosses the node's rules as in a cluster, and a pod
reaching itself through a service without masquerade is dropped (as the kernel drops a martian source in a
real pod). A pod probing its own IP directly is not modeled. `path_of` lists rules in dump order, and the
order of tables in a dump differs by backend (nft: filter first; legacy: nat first).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import ipaddress
import itertools
import json
import os
import re
import select
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from types import TracebackType
from typing import Any, Literal, NamedTuple, TypeVar

Backend = Literal["nft", "legacy"]
Source = Literal["client", "node", "pod"]
Outcome = Literal["connected", "refused", "timeout", "unreachable"]

NODES_V4 = ipaddress.ip_network("198.18.0.0/24")
PODS_V4 = ipaddress.ip_network("198.18.128.0/17")
SERVICES_V4 = ipaddress.ip_network("198.19.0.0/16")
NODES_V6 = ipaddress.ip_network("fd00:198:18::/64")
PODS_V6 = ipaddress.ip_network("fd00:198:18:8000::/64")
SERVICES_V6 = ipaddress.ip_network("fd00:198:19::/64")

NODE_IP = "198.18.0.1"
NODE_POD_SIDE_IP = "198.18.128.1"
CLIENT_IP = "198.18.0.2"
NODE_IP6 = "fd00:198:18::1"
NODE_POD_SIDE_IP6 = "fd00:198:18:8000::1"
CLIENT_IP6 = "fd00:198:18::2"

# The only places a probe may go (TESTING.md's network rule).
_PROBE_ALLOWED = (
    ipaddress.ip_network("198.18.0.0/15"),
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("fd00:198:18::/47"),
    ipaddress.ip_network("::1/128"),
    # (the unspecified address: Linux connects a socket addressed to it to its own loopback)
    ipaddress.ip_network("0.0.0.0/32"),
    ipaddress.ip_network("::/128"),
)

# Packets for an un-DNATed service address are forwarded to this neighbour: the pods namespace owns its MAC
# but not the address and does not forward, so the packet vanishes without an ICMP error — a real hang.
_SINK_V4 = "198.18.255.254"
_SINK_V6 = "fd00:198:18:8000::fffe"
_POD_SIDE_MAC = "02:00:c6:12:80:02"

_TABLES_V4 = ("raw", "mangle", "nat", "filter", "security")
_CLONE_NEWNET = 0x40000000
_UNREACHABLE_ERRNOS = {113, 101, 112, 100}  # EHOSTUNREACH, ENETUNREACH, EHOSTDOWN, ENETDOWN
_NAME_RE = re.compile(r"^ipt-(\d+)-\d+-(client|node|pods)$")
_ECHO_SERVER = FsPath(__file__).with_name("echo_server.py")

_counter = itertools.count()
_reaped = False
_T = TypeVar("_T")


class OracleError(RuntimeError):
    """A namespace command failed; the message carries the command and its stderr."""


class ProbeResult(NamedTuple):
    outcome: Outcome
    endpoint: tuple[str, int] | None = None
    """Where the connection landed (the server's getsockname()): the endpoint the kernel's DNAT chose."""
    seen_source: str | None = None
    """The source address the server saw: differs from the probe's own address when the node masqueraded."""
    source: tuple[str, int] | None = None
    """The probe socket's own address, to find its conntrack entry."""


class PathStep(NamedTuple):
    table: str
    chain: str
    rule: str
    """The rule as `iptables-save` prints it, without counters: `-A CHAIN ...`."""
    index: int
    """1-based position of the rule in its chain."""
    packets: int


class Path(list[PathStep]):
    """The rules a probe hit, in dump order; `result` is what the probe function returned."""

    result: Any = None


@dataclass(frozen=True, slots=True)
class ConntrackEntry:
    proto: str
    src: str
    dst: str
    sport: int
    dport: int
    reply_src: str
    reply_dst: str
    reply_sport: int
    reply_dport: int
    flags: tuple[str, ...] = field(default=())

    @property
    def endpoint(self) -> tuple[str, int]:
        """Where the kernel sent the connection: the reply tuple's source."""
        return (self.reply_src, self.reply_sport)

    @property
    def masqueraded(self) -> bool:
        return self.reply_dst != self.src


# --- namespaces from Python ------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if hasattr(os, "setns"):  # Python >= 3.12
        os.setns(fd, _CLONE_NEWNET)
        return
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def run_in_netns(netns: str, fn: Callable[[], _T]) -> _T:
    """Run `fn` in a throwaway thread that has joined the named namespace.

    setns(2) changes only the calling thread, and the thread dies afterwards, so the test process never ends
    up in the wrong namespace. Sockets created by `fn` keep the namespace they were created in.
    """
    box: dict[str, Any] = {}
    target = f"/run/netns/{netns}"

    def work() -> None:
        try:
            fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(fd)
            finally:
                os.close(fd)
            # Refuse to do anything if the switch did not happen: fn must never run in the root namespace.
            if os.stat("/proc/thread-self/ns/net").st_ino != os.stat(target).st_ino:
                raise OracleError(f"setns into {netns} did not take effect")
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    worker = threading.Thread(target=work, name=f"netns-{netns}", daemon=True)
    worker.start()
    worker.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def socket_in(netns: str, family: int, kind: int) -> socket.socket:
    return run_in_netns(netns, lambda: socket.socket(family, kind))


def _write_sysctls(netns: str, values: dict[str, str], optional: Iterable[str] = ()) -> None:
    maybe_missing = set(optional)

    def work() -> None:
        for key, value in values.items():
            path = "/proc/sys/" + key.replace(".", "/")
            try:
                with open(path, "w") as fh:
                    fh.write(value)
            except OSError:
                # Some knobs are per-namespace only on newer kernels; without them probes are just slower.
                if key not in maybe_missing:
                    raise

    run_in_netns(netns, work)


def _run(argv: list[str], *, stdin: str | None = None, timeout: float = 30.0) -> str:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise OracleError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _ip_batch(netns: str, commands: list[str], *, v6: bool = False) -> None:
    argv = ["ip"] + (["-6"] if v6 else []) + ["-n", netns, "-batch", "-"]
    _run(argv, stdin="\n".join(commands) + "\n")


def _check_allowed(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    addr = ipaddress.ip_address(ip)
    if not any(addr in net for net in _PROBE_ALLOWED):
        raise ValueError(f"{ip} is outside the test ranges (198.18.0.0/15, fd00:198:18::/47, loopback)")
    return addr


def _tools(backend: Backend, v6: bool = False) -> tuple[str, str, str]:
    base = "ip6tables" if v6 else "iptables"
    return (f"{base}-{backend}", f"{base}-{backend}-save", f"{base}-{backend}-restore")


# --- skipping --------------------------------------------------------------------------------------------

@functools.cache
def oracle_unavailable(backend: Backend | None = None) -> str | None:
    """Why the kernel oracle cannot run here (None when it can)."""
    if sys.platform != "linux":
        return "the kernel oracle needs Linux network namespaces"
    if os.geteuid() != 0:
        return "the kernel oracle needs root (network namespaces, iptables-restore)"
    for be in (backend,) if backend else ("nft", "legacy"):
        for tool in _tools(be):
            if shutil.which(tool) is None:
                return f"{tool} is not installed (apt-get install iptables)"
    if shutil.which("ip") is None:
        return "ip (iproute2) is not installed"
    name = f"ipt-{os.getpid()}-check"
    try:
        _run(["ip", "netns", "add", name])
    except (OracleError, OSError) as exc:
        return f"ip netns add fails here: {exc}"
    with contextlib.suppress(OracleError, OSError):
        _run(["ip", "netns", "del", name])
    return None


def requires_root_netns(backend: Backend | None = None) -> Any:
    """A pytest mark that skips a test (or module, via pytestmark) when the oracle cannot run.

    With IPTRACE_ORACLE_REQUIRED=1 (set it in CI, which runs as root) an unavailable oracle is an error
    instead of a silent skip.
    """
    import pytest

    reason = oracle_unavailable(backend)
    if reason and os.environ.get("IPTRACE_ORACLE_REQUIRED") == "1":
        raise OracleError(f"IPTRACE_ORACLE_REQUIRED=1 but the kernel oracle cannot run: {reason}")
    return pytest.mark.skipif(reason is not None, reason=reason or "")


def skip_unless_oracle(backend: Backend | None = None) -> None:
    """The imperative form of requires_root_netns(), for fixtures."""
    import pytest

    reason = oracle_unavailable(backend)
    if reason:
        if os.environ.get("IPTRACE_ORACLE_REQUIRED") == "1":
            pytest.fail(f"IPTRACE_ORACLE_REQUIRED=1 but the kernel oracle cannot run: {reason}")
        pytest.skip(reason)


def reap_stale_namespaces() -> list[str]:
    """Delete namespaces an earlier, killed run of this library left behind (its pid no longer exists)."""
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for name in sorted(os.listdir("/run/netns")):
            match = _NAME_RE.match(name)
            if not match or int(match.group(1)) == os.getpid():
                continue
            try:
                os.kill(int(match.group(1)), 0)
                continue
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
            with contextlib.suppress(OracleError):
                _run(["ip", "netns", "del", name])
                removed.append(name)
    return removed


# --- the topology ----------------------------------------------------------------------------------------

class Topology:
    """client ↔ node ↔ pods in fresh namespaces; load a dump into `node`, then probe it.

    Use as a context manager; everything it created is gone after the `with` block, also on failure.
    """

    def __init__(self, backend: Backend = "nft", *, ipv6: bool = False, route_localnet: bool = True) -> None:
        if backend not in ("nft", "legacy"):
            raise ValueError(f"backend must be 'nft' or 'legacy', not {backend!r}")
        self.backend: Backend = backend
        self.ipv6 = ipv6
        self.route_localnet = route_localnet
        base = f"ipt-{os.getpid()}-{next(_counter)}"
        self.client = f"{base}-client"
        self.node = f"{base}-node"
        self.pods = f"{base}-pods"
        self.node_ip = NODE_IP
        self.client_ip = CLIENT_IP
        self.node_ip6 = NODE_IP6
        self.client_ip6 = CLIENT_IP6
        self.pod_ips: list[str] = []
        self.client_ips: list[str] = [CLIENT_IP] + ([CLIENT_IP6] if ipv6 else [])
        self.node_ips: list[str] = [NODE_IP, NODE_POD_SIDE_IP]
        if ipv6:
            self.node_ips += [NODE_IP6, NODE_POD_SIDE_IP6]
        self._created: list[str] = []
        self._server: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        # UDP probes take their source ports in turn: a random ephemeral port could repeat a tuple whose
        # conntrack entry (and so its DNAT decision) is still alive, and the probe would not be a new flow.
        self._udp_ports = itertools.cycle(range(20000, 60000))
        self._udp_lock = threading.Lock()

    # context management

    def __enter__(self) -> Topology:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def namespaces(self) -> tuple[str, str, str]:
        return (self.client, self.node, self.pods)

    def _build(self) -> None:
        global _reaped
        if not _reaped:
            _reaped = True
            reap_stale_namespaces()
        for name in self.namespaces:
            _run(["ip", "netns", "add", name])
            self._created.append(name)

        # Defaults first: interfaces created afterwards inherit conf/default.
        common = {"net.ipv4.conf.all.rp_filter": "0", "net.ipv4.conf.default.rp_filter": "0",
                  "net.ipv4.conf.all.accept_redirects": "0", "net.ipv4.conf.default.accept_redirects": "0"}
        if self.ipv6:
            common |= {"net.ipv6.conf.all.accept_dad": "0", "net.ipv6.conf.default.accept_dad": "0",
                       "net.ipv6.conf.all.accept_ra": "0", "net.ipv6.conf.default.accept_ra": "0"}
        else:
            common |= {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"}
        # Without icmp_ratelimit=0 a REJECT of forwarded traffic is rate-limited into a timeout (TESTING.md).
        node = common | {
            "net.ipv4.ip_forward": "1", "net.ipv4.icmp_ratelimit": "0",
            "net.ipv4.icmp_msgs_per_sec": "1000000", "net.ipv4.icmp_msgs_burst": "1000000",
            # Hairpin traffic leaves cni0 the way it came in; a redirect would teach `pods` to skip the node.
            "net.ipv4.conf.all.send_redirects": "0", "net.ipv4.conf.default.send_redirects": "0",
            # kube-proxy sets this so that 127.0.0.1:<nodePort> works (localhost NodePorts).
            "net.ipv4.conf.all.route_localnet": "1" if self.route_localnet else "0",
        }
        if self.ipv6:
            node |= {"net.ipv6.conf.all.forwarding": "1", "net.ipv6.icmp.ratelimit": "0"}
        # Every pod IP lives in one namespace, yet pods must reach each other through the node like separate
        # hosts: accept packets whose source is one of our own addresses (see also the routing rule below).
        pods = common | {"net.ipv4.conf.all.accept_local": "1"}
        optional = ("net.ipv4.icmp_msgs_per_sec", "net.ipv4.icmp_msgs_burst")
        _write_sysctls(self.node, node, optional)
        _write_sysctls(self.pods, pods)
        _write_sysctls(self.client, common)

        _ip_batch(self.node, [
            f"link add eth0 type veth peer name eth0 netns {self.client}",
            f"link add cni0 type veth peer name eth0 address {_POD_SIDE_MAC} netns {self.pods}",
            "link set lo up", "link set eth0 up", "link set cni0 up",
            f"addr add {NODE_IP}/24 dev eth0",
            f"addr add {NODE_POD_SIDE_IP}/17 dev cni0",
            f"neigh replace {_SINK_V4} lladdr {_POD_SIDE_MAC} dev cni0 nud permanent",
            # src: node-originated traffic to a service address leaves with the node IP, as it would through a
            # real node's default route.
            f"route add {SERVICES_V4} via {_SINK_V4} dev cni0 src {NODE_IP}",
        ])
        _ip_batch(self.client, [
            "link set lo up", "link set eth0 up",
            f"addr add {CLIENT_IP}/24 dev eth0",
            f"route add default via {NODE_IP}",
        ])
        _ip_batch(self.pods, [
            "link set lo up", "link set eth0 up",
            f"route add default via {NODE_POD_SIDE_IP} dev eth0 onlink",
            # Traffic a pod sends to another test address (even one of the pods' own) goes through the node,
            # as it would from a separate pod namespace: look it up in table 100 before the local table.
            f"route add default via {NODE_POD_SIDE_IP} dev eth0 onlink table 100",
            "rule add pref 10 iif lo to 198.18.0.0/15 lookup 100",
            "rule add pref 100 lookup local",
            "rule del pref 0 lookup local",
        ])
        if self.ipv6:
            self._build_v6()

    def _build_v6(self) -> None:
        _ip_batch(self.node, [
            f"addr add {NODE_IP6}/64 dev eth0 nodad",
            f"addr add {NODE_POD_SIDE_IP6}/64 dev cni0 nodad",
            f"neigh replace {_SINK_V6} lladdr {_POD_SIDE_MAC} dev cni0 nud permanent",
            f"route add {SERVICES_V6} via {_SINK_V6} dev cni0 src {NODE_IP6}",
        ])
        _ip_batch(self.client, [
            f"addr add {CLIENT_IP6}/64 dev eth0 nodad",
            f"route add default via {NODE_IP6}",
        ])
        _ip_batch(self.pods, [
            f"route add default via {NODE_POD_SIDE_IP6} dev eth0 onlink",
            f"route add default via {NODE_POD_SIDE_IP6} dev eth0 onlink table 100",
            "rule add pref 10 iif lo to fd00:198:18::/47 lookup 100",
            "rule add pref 100 lookup local",
            "rule del pref 0 lookup local",
        ], v6=True)

    def close(self) -> None:
        """Stop the server and delete the namespaces (their veths go with them). Safe to call twice."""
        self.stop_server()
        for name in reversed(self._created):
            with contextlib.suppress(OracleError, OSError, subprocess.TimeoutExpired):
                _run(["ip", "netns", "del", name])
        self._created.clear()

    # addresses

    def add_pod_ip(self, *ips: str) -> None:
        """Give the pods namespace more pod IPs (each acts as its own pod: its traffic goes via the node)."""
        if not ips:
            return
        node_cmds, pod_cmds, drop_rules = [], [], {4: [], 6: []}
        for ip in ips:
            addr = _check_allowed(ip)
            v6 = addr.version == 6
            pod_cmds.append(f"addr add {addr}/{128 if v6 else 32} dev eth0" + (" nodad" if v6 else ""))
            if addr not in (PODS_V6 if v6 else PODS_V4):
                node_cmds.append(f"route add {addr}/{128 if v6 else 32} dev cni0")
            # A real pod drops a packet that claims to come from itself (martian source): so does this one,
            # so a hairpin that kube-proxy forgot to masquerade fails here as it does in a cluster.
            plen = 128 if v6 else 32
            drop_rules[addr.version].append(f"-A INPUT -s {addr}/{plen} -d {addr}/{plen} -i eth0 -j DROP")
            self.pod_ips.append(str(addr))
        _ip_batch(self.pods, pod_cmds)
        if node_cmds:
            _ip_batch(self.node, node_cmds)
        for version, rules in drop_rules.items():
            if rules:
                restore = _tools(self.backend, v6=version == 6)[2]
                _run(["ip", "netns", "exec", self.pods, restore, "--noflush"],
                     stdin="*filter\n" + "\n".join(rules) + "\nCOMMIT\n")

    def add_client_ip(self, ip: str) -> None:
        """Another source address in `client` (an "outside" client, a source-range test)."""
        addr = _check_allowed(ip)
        v6 = addr.version == 6
        if v6:
            on_link = addr in NODES_V6
            self._ip(self.client, f"addr add {addr}/{64 if on_link else 128} dev eth0 nodad")
            if not on_link:
                self._ip(self.node, f"route add {addr}/128 via {CLIENT_IP6}")
        else:
            on_link = addr in NODES_V4
            self._ip(self.client, f"addr add {addr}/{24 if on_link else 32} dev eth0")
            if not on_link:
                self._ip(self.node, f"route add {addr}/32 via {CLIENT_IP}")
        self.client_ips.append(str(addr))

    def add_node_ip(self, ip: str, dev: str = "eth0") -> None:
        """Another local address of the node (an externalIP or LoadBalancer IP that is local)."""
        addr = _check_allowed(ip)
        plen = 128 if addr.version == 6 else 32
        self._ip(self.node, f"addr add {addr}/{plen} dev {dev}" + (" nodad" if addr.version == 6 else ""))
        self.node_ips.append(str(addr))

    def _ip(self, netns: str, command: str) -> None:
        _ip_batch(netns, [command])

    # rules

    def load(self, dump_text: str, *, ipv6: bool = False, noflush: bool = False,
             flush_conntrack: bool = True) -> None:
        """iptables-restore the dump into `node` with this topology's backend.

        Existing conntrack entries keep the NAT decisions of the rules they were made under, so by default
        they are flushed: every later probe is a new connection under the new rules.
        """
        restore = _tools(self.backend, v6=ipv6)[2]
        argv = ["ip", "netns", "exec", self.node, restore] + (["--noflush"] if noflush else [])
        # kube-proxy (1.29+) creates its nfacct counters before restoring rules that name them; without the
        # objects the restore fails, so the oracle plays that part of kube-proxy.
        self.add_nfacct(*dict.fromkeys(_NFACCT_NAME.findall(dump_text)))
        _run(argv, stdin=dump_text)
        if flush_conntrack:
            self.flush_conntrack()

    def save(self, counters: bool = False, *, ipv6: bool = False) -> str:
        save = _tools(self.backend, v6=ipv6)[1]
        return _run(["ip", "netns", "exec", self.node, save] + (["-c"] if counters else []))

    def iptables(self, *args: str, ipv6: bool = False) -> str:
        """Run iptables (this backend) inside `node`, e.g. `iptables("-t", "nat", "-S")`."""
        return _run(["ip", "netns", "exec", self.node, _tools(self.backend, v6=ipv6)[0], *args])

    def zero_counters(self, *, ipv6: bool = False) -> None:
        tool = _tools(self.backend, v6=ipv6)[0]
        for table in _tables_in(self.save(ipv6=ipv6)):
            _run(["ip", "netns", "exec", self.node, tool, "-t", table, "-Z"])

    def path_of(self, probe_fn: Callable[[], Any], *, ipv6: bool = False, settle: float = 0.02) -> Path:
        """Zero every counter in `node`, run one probe, return the rules whose packet counters moved.

        Counters count every packet of the connection that crossed a rule (SYN, replies, FIN), but nat rules
        see only the first packet. `settle` lets packets of an earlier connection drain first (no assertion
        depends on it).
        """
        with self._lock:
            time.sleep(settle)
            self.zero_counters(ipv6=ipv6)
            result = probe_fn()
            time.sleep(settle)
            path = Path(_hit_rules(self.save(counters=True, ipv6=ipv6)))
            path.result = result
            return path

    def add_nfacct(self, *names: str) -> None:
        """Create nfacct objects in `node` (what `nfacct add NAME` does), ignoring ones that exist."""
        if names:
            run_in_netns(self.node, lambda: _nfacct_add(names))

    # conntrack

    def conntrack(self) -> list[ConntrackEntry]:
        """The node's conntrack table (IPv4 and IPv6 entries with ports)."""
        return run_in_netns(self.node, _read_conntrack)

    def conntrack_dnat(self, dst_ip: str, dst_port: int, proto: str = "tcp") -> list[tuple[str, int]]:
        """Endpoints the node chose for connections originally sent to dst_ip:dst_port."""
        dst = str(ipaddress.ip_address(dst_ip))
        return [e.endpoint for e in self.conntrack()
                if e.proto == proto and e.dst == dst and e.dport == dst_port]

    def flush_conntrack(self) -> None:
        if shutil.which("conntrack") is None:
            raise OracleError("conntrack is not installed (apt-get install conntrack)")
        _run(["ip", "netns", "exec", self.node, "conntrack", "-F"])

    # the pod server

    def start_server(self, tcp_ports: Iterable[int] = (), udp_ports: Iterable[int] = (),
                     timeout: float = 10.0) -> None:
        """Serve every pod IP (also ones added later) on these ports; each answer names endpoint and peer."""
        self.stop_server()
        argv = ["ip", "netns", "exec", self.pods, sys.executable, str(_ECHO_SERVER),
                "--parent", str(os.getpid())]
        argv += [a for p in tcp_ports for a in ("--tcp", str(int(p)))]
        argv += [a for p in udp_ports for a in ("--udp", str(int(p)))]
        if self.ipv6:
            argv.append("--ipv6")
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._server = proc
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline() if ready else ""
        if line.strip() != "ready":
            self.stop_server()
            stderr = proc.stderr.read() if proc.stderr else ""
            raise OracleError(f"echo server in {self.pods} did not start: {stderr.strip() or 'no answer'}")

    def stop_server(self) -> None:
        proc, self._server = self._server, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()

    # probes

    def namespace_of(self, src: Source) -> str:
        return {"client": self.client, "node": self.node, "pod": self.pods}[src]

    def probe(self, src: Source, dst_ip: str, dst_port: int, proto: Literal["tcp", "udp"] = "tcp",
              src_ip: str | None = None, timeout: float = 1.0, sport: int = 0) -> ProbeResult:
        """One new connection (or one datagram) from `src` to dst_ip:dst_port, bounded by `timeout`. `sport`
        fixes a TCP probe's source port (so that a packet trace can find it even when nothing answers)."""
        dst = _check_allowed(dst_ip)
        if src == "pod" and src_ip is None:
            candidates = [ip for ip in self.pod_ips if ipaddress.ip_address(ip).version == dst.version]
            if not candidates:
                raise ValueError("probe from 'pod' needs a pod IP: call add_pod_ip() first")
            src_ip = candidates[0]
        family = socket.AF_INET6 if dst.version == 6 else socket.AF_INET
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        sock = socket_in(self.namespace_of(src), family, kind)
        with sock:
            if proto == "udp":
                self._bind_next_udp_port(sock, src_ip or ("::" if dst.version == 6 else "0.0.0.0"))
            elif src_ip is not None or sport:
                sock.bind((src_ip or ("::" if dst.version == 6 else "0.0.0.0"), sport))
            if proto == "tcp":
                return _probe_tcp(sock, (str(dst), dst_port), timeout)
            if proto == "udp":
                return _probe_udp(sock, (str(dst), dst_port), timeout)
            raise ValueError(f"proto must be 'tcp' or 'udp', not {proto!r}")

    def _bind_next_udp_port(self, sock: socket.socket, ip: str) -> None:
        for _ in range(100):
            with self._udp_lock:  # (probe_each probes from several threads)
                port = next(self._udp_ports)
            try:
                sock.bind((ip, port))
                return
            except OSError as exc:
                if exc.errno != 98:  # EADDRINUSE
                    raise
        sock.bind((ip, 0))

    def probe_many(self, count: int, src: Source, dst_ip: str, dst_port: int,
                   **kwargs: Any) -> list[ProbeResult]:
        return [self.probe(src, dst_ip, dst_port, **kwargs) for _ in range(count)]

    def probe_each(self, probes: Iterable[tuple[Source, str, int]], **kwargs: Any) -> list[ProbeResult]:
        """`probe(src, dst_ip, dst_port, **kwargs)` of each at once, the results in order: a probe the node drops
        waits its whole timeout, and the waits of several overlap instead of adding up. Each probe is a new
        connection of its own, so this suits probes whose flows do not depend on one another (not path_of's)."""
        todo = list(probes)
        if len(todo) < 2:
            return [self.probe(*args, **kwargs) for args in todo]
        with ThreadPoolExecutor(max_workers=len(todo), thread_name_prefix="probe") as pool:
            return list(pool.map(lambda args: self.probe(*args, **kwargs), todo))


def _outcome_of(exc: OSError) -> Outcome:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if exc.errno in _UNREACHABLE_ERRNOS:
        return "unreachable"
    raise exc


def _answer_of(data: bytes) -> tuple[tuple[str, int] | None, str | None]:
    try:
        answer = json.loads(data.decode())
        return (answer["local"][0], int(answer["local"][1])), answer["peer"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        return None, None


def _probe_tcp(sock: socket.socket, dst: tuple[str, int], timeout: float) -> ProbeResult:
    deadline = time.monotonic() + timeout
    v6 = sock.family == socket.AF_INET6
    # Queue ICMP errors on the socket: an error that arrives while connect() still holds the socket (here the
    # whole round trip through the veths can run inside that call) is otherwise only counted as
    # LockDroppedIcmps, and the connection would look like a timeout though the node refused it.
    sock.setsockopt(socket.IPPROTO_IPV6 if v6 else socket.IPPROTO_IP, _IPV6_RECVERR if v6 else _IP_RECVERR, 1)
    sock.settimeout(timeout)
    try:
        sock.connect(dst)
    except OSError as exc:
        outcome = _outcome_of(exc)
        if outcome == "timeout" and _queued_errno(sock) == errno.ECONNREFUSED:
            outcome = "refused"
        return ProbeResult(outcome)
    source = sock.getsockname()[:2]
    data = b""
    try:
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass  # connected is already proven; something other than our server may be listening
    # Close with RST: no FIN/TIME_WAIT packets linger to show up in the next probe's counters.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    endpoint, seen = _answer_of(data)
    return ProbeResult("connected", endpoint, seen, source)


_IP_RECVERR, _IPV6_RECVERR = 11, 25
_SOCK_EXTENDED_ERR = struct.Struct("=IBBBBII")  # ee_errno, ee_origin, ee_type, ee_code, ee_pad, ee_info, ee_data


def _queued_errno(sock: socket.socket) -> int | None:
    """The errno of the first ICMP error queued on `sock` (IP_RECVERR), None when there is none.

    Read without waiting: an error that came while connect() waited is queued already. (A socket with a timeout
    makes Python poll for it before every call, MSG_DONTWAIT or not: a probe that timed out waited its whole
    timeout a second time here, for an error that does not come.)"""
    sock.setblocking(False)
    try:
        _data, ancillary, _flags, _addr = sock.recvmsg(512, 1024, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
    except OSError:
        return None
    for _level, _kind, payload in ancillary:
        if len(payload) >= _SOCK_EXTENDED_ERR.size:
            return int(_SOCK_EXTENDED_ERR.unpack_from(payload)[0])
    return None


def _probe_udp(sock: socket.socket, dst: tuple[str, int], timeout: float) -> ProbeResult:
    sock.settimeout(timeout)
    try:
        # connect() so that an ICMP error comes back to this socket as ECONNREFUSED/EHOSTUNREACH.
        sock.connect(dst)
        source = sock.getsockname()[:2]
        sock.send(b"probe\n")
        data = sock.recv(4096)
    except OSError as exc:
        return ProbeResult(_outcome_of(exc))
    endpoint, seen = _answer_of(data)
    return ProbeResult("connected", endpoint, seen, source)


def _tables_in(save_text: str) -> list[str]:
    return [line[1:].strip() for line in save_text.splitlines() if line.startswith("*")]


_COUNTED_RULE = re.compile(r"^\[(\d+):(\d+)\] (-A (\S+)(?: .*)?)$")


def _hit_rules(save_text: str) -> Iterator[PathStep]:
    table = ""
    position: dict[str, int] = {}
    for line in save_text.splitlines():
        if line.startswith("*"):
            table, position = line[1:].strip(), {}
            continue
        match = _COUNTED_RULE.match(line)
        if not match:
            continue
        chain = match.group(4)
        position[chain] = position.get(chain, 0) + 1
        packets = int(match.group(1))
        if packets:
            yield PathStep(table, chain, match.group(3), position[chain], packets)


_NFACCT_NAME = re.compile(r"--nfacct-name\s+\"?([^\s\"]+)")


def _nfacct_add(names: Iterable[str]) -> None:
    # nfnetlink_acct: NFNL_SUBSYS_ACCT (7) << 8 | NFNL_MSG_ACCT_NEW (0), one NFACCT_NAME (1) attribute.
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12) as nl:  # NETLINK_NETFILTER
        nl.bind((0, 0))
        nl.settimeout(5.0)
        for seq, name in enumerate(names, start=1):
            value = name.encode() + b"\0"
            attr = struct.pack("=HH", 4 + len(value), 1) + value
            attr += b"\0" * (-len(attr) % 4)
            body = struct.pack("=BBH", socket.AF_UNSPEC, 0, 0) + attr
            flags = 0x1 | 0x4 | 0x400  # NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE
            nl.send(struct.pack("=IHHII", 16 + len(body), 7 << 8, flags, seq, 0) + body)
            reply = nl.recv(65536)
            msg_type = struct.unpack_from("=H", reply, 4)[0]
            error = struct.unpack_from("=i", reply, 16)[0] if msg_type == 2 else 0  # NLMSG_ERROR
            if error not in (0, -16):  # EBUSY: the object exists already
                raise OracleError(f"nfacct add {name} failed: {os.strerror(-error)}")


_CT_FIELD = re.compile(r"(\w+)=(\S+)")


def _parse_conntrack_line(line: str) -> ConntrackEntry | None:
    words = line.split()
    if len(words) < 4:
        return None
    proto = words[2]
    pairs = _CT_FIELD.findall(line)
    src = [v for k, v in pairs if k == "src"]
    dst = [v for k, v in pairs if k == "dst"]
    sport = [v for k, v in pairs if k == "sport"]
    dport = [v for k, v in pairs if k == "dport"]
    if len(src) < 2 or len(sport) < 2:
        return None
    flags = tuple(w.strip("[]") for w in words if w.startswith("["))
    return ConntrackEntry(proto, str(ipaddress.ip_address(src[0])), str(ipaddress.ip_address(dst[0])),
                          int(sport[0]), int(dport[0]), str(ipaddress.ip_address(src[1])),
                          str(ipaddress.ip_address(dst[1])), int(sport[1]), int(dport[1]), flags)


def _read_conntrack() -> list[ConntrackEntry]:
    try:
        with open("/proc/thread-self/net/nf_conntrack") as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError:
        # Kernels without CONFIG_NF_CONNTRACK_PROCFS: the conntrack tool runs in our (setns'd) thread's
        # namespace because a child inherits the calling thread's namespaces.
        lines = subprocess.run(["conntrack", "-L", "-o", "extended"], capture_output=True, text=True,
                               check=False, timeout=10).stdout.splitlines()
    return [entry for line in lines if (entry := _parse_conntrack_line(line))]
