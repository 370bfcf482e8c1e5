"""Collect `iptables-save` dumps and node addresses over SSH (paramiko), the way OpenSSH would connect:
~/.ssh/config, the agent, known_hosts verification, ProxyJump. Remote commands are fixed argv constants joined
with shlex; nothing a user or an inventory supplies ever reaches a remote shell. Library code: no printing.
"""

from __future__ import annotations

import contextlib
import getpass
import ipaddress
import os
import re
import secrets
import shlex
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iptrace.collect import store
from iptrace.errors import CollectError, InputError

if TYPE_CHECKING:
    import paramiko

ERROR_KINDS = ("auth", "host-key", "refused", "timeout", "permission", "command-missing", "sudo-password",
               "ssh")

# The only commands ever run remotely. `sudo -n` never prompts: a password requirement is an error.
SAVE_ARGV = ("iptables-save",)
SAVE6_ARGV = ("ip6tables-save",)
SAVE_LEGACY_ARGV = ("iptables-legacy-save",)
VERSION_ARGV = ("iptables", "--version")
ADDRESSES_ARGV = ("ip", "-o", "addr", "show")
SUDO_ARGV = ("sudo", "-n")

# iptables-nft prints this when the legacy backend also holds tables (e.g. an old kube-proxy image);
# the rules that matter may then live only in the legacy tables.
LEGACY_WARNING = "# Warning: iptables-legacy tables present"
IP6_LEGACY_WARNING = "# Warning: ip6tables-legacy tables present"

DEFAULT_SSH_PORT = 22
MAX_JUMP_DEPTH = 8

_NAME_RE = re.compile(r"[A-Za-z0-9_\[][A-Za-z0-9_.:%@\[\]-]*")
_HOST_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:%-]*")
_USER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.$-]*")
_VERSION_RE = re.compile(r"v(\d[\w.]*)(?:\s+\(([\w-]+)\))?")


# --------------------------------------------------------------------------------------------- targets

@dataclass(frozen=True, slots=True)
class NodeTarget:
    """One node to collect from. `host` may be an ~/.ssh/config alias; `name` names the node's directory
    (default: `host`, or `host:port` / `[v6]:port` when a port was given)."""

    host: str
    user: str | None = None
    port: int | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if not _HOST_RE.fullmatch(self.host):
            raise InputError(f"bad node host {self.host!r}; expected a host name, an alias or an address")
        if self.user is not None and not _USER_RE.fullmatch(self.user):
            raise InputError(f"bad user name {self.user!r} for node {self.host}")
        if self.port is not None and not 0 < self.port < 65536:
            raise InputError(f"bad port {self.port} for node {self.host}; expected 1-65535")
        if not self.name:
            object.__setattr__(self, "name", self._default_name())
        if not _NAME_RE.fullmatch(self.name):
            raise InputError(f"bad node name {self.name!r}; it names a directory, so it may hold letters, "
                             "digits and . _ - : @ [ ] % and must not start with '.'")

    def _default_name(self) -> str:
        if self.port is None:
            return self.host
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str, *, name: str = "") -> NodeTarget:
        """`[user@]host[:port]`, with IPv6 as `[addr]:port` (a bare IPv6 address has no port)."""
        spec = text.strip()
        if spec.startswith("ssh://"):
            spec = spec[len("ssh://"):].rstrip("/")
        user: str | None = None
        if "@" in spec:
            user, _, spec = spec.rpartition("@")
        port_text: str | None = None
        if spec.startswith("["):
            host, bracket, rest = spec[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                raise InputError(f"bad node {text!r}; expected [user@]host[:port] or [user@][ipv6]:port")
            port_text = rest[1:] if rest else None
        elif spec.count(":") == 1:
            host, _, port_text = spec.partition(":")
        else:
            host = spec
        port: int | None = None
        if port_text is not None:
            if not port_text.isdigit():
                raise InputError(f"bad port {port_text!r} in node {text!r}; expected a number 1-65535")
            port = int(port_text)
        if not host:
            raise InputError(f"bad node {text!r}; expected [user@]host[:port]")
        return cls(host=host, user=user or None, port=port, name=name)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and self.port is not None else self.host
        return (f"{self.user}@" if self.user else "") + host + (f":{self.port}" if self.port else "")


def parse_target(text: str) -> NodeTarget:
    """A command-line NODE argument."""
    return NodeTarget.parse(text)


def read_inventory(path: Path) -> list[NodeTarget]:
    """One node per line: `[user@]host[:port] [name=NAME]`; `#` starts a comment. Ansible-style INI is also
    read: `[group]` headers are skipped, `[group:vars]`/`[group:children]` sections ignored, and
    `NAME ansible_host=H ansible_user=U ansible_port=P` gives a node named NAME."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read inventory ({exc})") from exc
    targets: list[NodeTarget] = []
    in_hosts_section = True
    for number, raw in enumerate(lines, start=1):
        line = re.sub(r"(^|\s)[#;].*$", "", raw).strip()
        if not line:
            continue
        is_address = re.fullmatch(r"\[[0-9a-fA-F:.]+\](:\d+)?", line) is not None
        if line.startswith("[") and line.endswith("]") and not is_address:
            in_hosts_section = ":" not in line
            continue
        if not in_hosts_section:
            continue
        first, *options = line.split()
        fields: dict[str, str] = {}
        for option in options:
            key, eq, value = option.partition("=")
            if not eq or not value:
                raise InputError(f"{path}:{number}: unexpected {option!r}; expected key=value after the node")
            fields[key] = value
        unknown = [k for k in fields if k not in ("name", "ansible_host", "ansible_ssh_host", "ansible_user",
                                                  "ansible_ssh_user", "ansible_port", "ansible_ssh_port")
                   and not k.startswith("ansible_")]
        if unknown:
            raise InputError(f"{path}:{number}: unknown option {unknown[0]!r}; "
                             "known: name=, ansible_host=, ansible_user=, ansible_port=")
        try:
            address = fields.get("ansible_host") or fields.get("ansible_ssh_host")
            if address:
                target = NodeTarget.parse(address)
                user = fields.get("ansible_user") or fields.get("ansible_ssh_user") or target.user
                port_text = fields.get("ansible_port") or fields.get("ansible_ssh_port")
                if port_text is not None and not port_text.isdigit():
                    raise InputError(f"bad port {port_text!r}")
                port = int(port_text) if port_text is not None else target.port
                targets.append(NodeTarget(host=target.host, user=user, port=port,
                                          name=fields.get("name", first)))
            else:
                targets.append(NodeTarget.parse(first, name=fields.get("name", "")))
        except InputError as exc:
            raise InputError(f"{path}:{number}: {exc}") from exc
    return targets


# --------------------------------------------------------------------------------------------- results

@dataclass(frozen=True, slots=True)
class NodeResult:
    """What happened on one node. `files` are the paths written (empty on failure, when the node's previous
    files, if any, were left untouched)."""

    node: str
    ok: bool
    error_kind: str | None
    error: str | None
    files: tuple[Path, ...]
    duration: float
    warnings: tuple[str, ...] = ()
    target: NodeTarget | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class _Hop:
    """One SSH connection of a chain, resolved through ssh_config like OpenSSH would."""

    label: str
    hostname: str
    port: int
    user: str
    identity_files: tuple[str, ...]
    look_for_keys: bool
    known_hosts_files: tuple[Path, ...]
    host_key_name: str
    accept_new: bool
    hash_known_hosts: bool
    jumps: tuple[str, ...]
    proxy_command: str | None = None

    def __str__(self) -> str:
        host = f"[{self.hostname}]" if ":" in self.hostname else self.hostname
        return f"{self.user}@{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class _Settings:
    user: str | None
    port: int | None
    identity_files: tuple[str, ...]
    known_hosts: Path | None
    accept_new: bool
    jump: tuple[str, ...] | None
    sudo: bool
    connect_timeout: float
    command_timeout: float
    allow_agent: bool
    config: paramiko.SSHConfig | None


@dataclass(frozen=True, slots=True)
class _Output:
    argv: tuple[str, ...]
    status: int
    stdout: bytes
    stderr: str


# ----------------------------------------------------------------------------------------------- collect

def collect(targets: Iterable[NodeTarget | str], *, out_dir: Path, user: str | None = None,
            port: int | None = None, identity_files: Sequence[Path | str] = (),
            known_hosts: Path | None = None, accept_new_host_keys: bool = False, jump: str | None = None,
            sudo: bool = False, parallel: int = 10, connect_timeout: float = 10.0,
            command_timeout: float = 60.0, ssh_config: Path | None = None,
            progress: Callable[[NodeResult], None] | None = None,
            allow_agent: bool = True) -> list[NodeResult]:
    """Collect every target into `out_dir/NODE/`, `parallel` nodes at a time. Returns one NodeResult per
    target, in the order given; a node's failure is in its result, never raised. Raises InputError only for
    unusable arguments (duplicate node names, a missing -i key, an unreadable ssh config, …).
    `progress` is called in the calling thread with each result as its node finishes."""
    nodes = [t if isinstance(t, NodeTarget) else NodeTarget.parse(t) for t in targets]
    seen: dict[str, NodeTarget] = {}
    for node in nodes:
        if node.name in seen:
            raise InputError(f"node {node.name!r} is given twice ({seen[node.name]} and {node}); "
                             "each node needs its own directory name")
        seen[node.name] = node
    if parallel < 1:
        raise InputError(f"--parallel must be at least 1, not {parallel}")
    if connect_timeout <= 0 or command_timeout <= 0:
        raise InputError("timeouts must be positive numbers of seconds")
    if port is not None and not 0 < port < 65536:
        raise InputError(f"bad --port {port}; expected 1-65535")
    if user is not None and not _USER_RE.fullmatch(user):
        raise InputError(f"bad --user {user!r}")
    keys = []
    for key in identity_files:
        key_path = Path(key).expanduser()
        if not key_path.is_file():
            raise InputError(f"identity file {key_path} not found; check -i")
        keys.append(str(key_path))
    jumps = _split_jumps(jump) if jump is not None else None
    settings = _Settings(user=user, port=port, identity_files=tuple(keys),
                         known_hosts=Path(known_hosts).expanduser() if known_hosts else None,
                         accept_new=accept_new_host_keys, jump=jumps, sudo=sudo,
                         connect_timeout=float(connect_timeout), command_timeout=float(command_timeout),
                         allow_agent=allow_agent, config=_load_ssh_config(ssh_config))
    out_dir = Path(out_dir)
    try:
        store.ensure_private_dir(out_dir, tighten=False)
    except OSError as exc:
        raise InputError(f"{out_dir}: cannot create the output directory ({exc.strerror})") from exc
    if not nodes:
        return []
    results: dict[str, NodeResult] = {}
    workers = min(parallel, len(nodes))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="iptrace-collect") as pool:
        futures = {pool.submit(_collect_node, node, out_dir, settings): node for node in nodes}
        for future in as_completed(futures):
            result = future.result()
            results[result.node] = result
            if progress is not None:
                progress(result)
    return [results[node.name] for node in nodes]


def _collect_node(target: NodeTarget, out_dir: Path, settings: _Settings) -> NodeResult:
    started = time.monotonic()
    try:
        chain = _resolve_chain(target, settings)
        clients = _connect_chain(chain, settings, target.name)
        try:
            dumps, meta, warnings = _gather(clients[-1], chain[-1], target, settings)
        finally:
            for client in reversed(clients):
                client.close()
        duration = time.monotonic() - started
        meta["duration_s"] = round(duration, 3)
        files = store.write_node_dir(out_dir / target.name, dumps, meta)
    except CollectError as exc:
        return NodeResult(target.name, False, exc.kind, str(exc), (), time.monotonic() - started,
                          target=target)
    except OSError as exc:
        # Only the local write can get here (remote OSErrors are classified in _connect_chain/_gather).
        message = f"{target.name}: cannot write {exc.filename or out_dir}: {exc.strerror}"
        return NodeResult(target.name, False, "ssh", message, (), time.monotonic() - started, target=target)
    return NodeResult(target.name, True, None, None, tuple(files), time.monotonic() - started,
                      tuple(warnings), target=target)


# ------------------------------------------------------------------------------------ ssh_config, chains

def _load_ssh_config(path: Path | None) -> paramiko.SSHConfig | None:
    import paramiko

    explicit = path is not None
    config_path = Path(path).expanduser() if path is not None else Path("~/.ssh/config").expanduser()
    if not config_path.is_file():
        if explicit:
            raise InputError(f"ssh config {config_path} not found")
        return None
    try:
        return paramiko.SSHConfig.from_path(str(config_path))
    except (OSError, UnicodeDecodeError, paramiko.SSHException) as exc:
        raise InputError(f"{config_path}: cannot read ssh config ({exc})") from exc


def _lookup(settings: _Settings, alias: str) -> dict[str, Any]:
    if settings.config is None:
        return {}
    import paramiko

    try:
        return dict(settings.config.lookup(alias))
    except (paramiko.SSHException, ImportError, OSError) as exc:
        # `Match exec` needs the optional `invoke` package; other failures are config mistakes.
        raise CollectError(f"{alias}: cannot apply ssh config ({exc})", kind="ssh", node=alias) from exc


def _split_jumps(text: str) -> tuple[str, ...]:
    text = text.strip()
    if not text or text.lower() == "none":
        return ()
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _resolve_hop(alias: str, user: str | None, port: int | None, settings: _Settings,
                 *, is_target: bool) -> _Hop:
    options = _lookup(settings, alias)
    hostname = options.get("hostname", alias)
    if is_target:
        user = user or settings.user
        port = port or settings.port
    user = user or options.get("user") or _local_user(alias)
    try:
        port = port or int(options.get("port", DEFAULT_SSH_PORT))
    except ValueError as exc:
        raise CollectError(f"{alias}: bad Port {options.get('port')!r} in ssh config", kind="ssh",
                           node=alias) from exc
    config_keys = tuple(str(Path(p).expanduser()) for p in options.get("identityfile", []))
    # OpenSSH skips configured identity files that do not exist (the defaults usually do not).
    identity_files = settings.identity_files + tuple(
        k for k in config_keys if Path(k).is_file() and k not in settings.identity_files)
    identities_only = str(options.get("identitiesonly", "no")).lower() == "yes"
    look_for_keys = not identity_files and not identities_only
    if settings.known_hosts is not None:
        known_hosts: tuple[Path, ...] = (settings.known_hosts,)
    elif options.get("userknownhostsfile"):
        known_hosts = tuple(Path(p).expanduser() for p in str(options["userknownhostsfile"]).split())
    else:
        known_hosts = (Path("~/.ssh/known_hosts").expanduser(), Path("~/.ssh/known_hosts2").expanduser())
    strict = str(options.get("stricthostkeychecking", "ask")).lower()
    # NOTE: `StrictHostKeyChecking no` is deliberately read as accept-new: a changed host key is never
    # accepted silently, whatever the config says.
    accept_new = settings.accept_new or strict in ("accept-new", "no", "off")
    alias_key = options.get("hostkeyalias")
    if alias_key:
        host_key_name = alias_key
    elif port == DEFAULT_SSH_PORT:
        host_key_name = hostname
    else:
        host_key_name = f"[{hostname}]:{port}"
    if is_target and settings.jump is not None:
        jumps = settings.jump
    else:
        jumps = _split_jumps(str(options.get("proxyjump", "")))
    # The user's own ProxyCommand (trusted like the rest of their config); ProxyJump takes precedence.
    proxy_command = options.get("proxycommand")
    if jumps or not proxy_command or str(proxy_command).lower() == "none":
        proxy_command = None
    return _Hop(label=alias, hostname=hostname, port=port, user=user, identity_files=identity_files,
                look_for_keys=look_for_keys, known_hosts_files=known_hosts, host_key_name=host_key_name,
                accept_new=accept_new, jumps=jumps, proxy_command=proxy_command,
                hash_known_hosts=str(options.get("hashknownhosts", "no")).lower() == "yes")


def _local_user(alias: str) -> str:
    """OpenSSH's default remote user is the local one."""
    try:
        return getpass.getuser()
    except (KeyError, OSError) as exc:
        raise CollectError(f"{alias}: cannot tell the local user name to log in as; pass --user",
                           kind="ssh", node=alias) from exc


def _resolve_chain(target: NodeTarget, settings: _Settings) -> list[_Hop]:
    """Hops in connection order, ending with the target. Mirrors OpenSSH: `ProxyJump A,B` reaches B through A
    (B's own ProxyJump is then ignored) and A through A's own ProxyJump."""
    dest = _resolve_hop(target.host, target.user, target.port, settings, is_target=True)
    return _expand(dest, dest.jumps, settings, depth=0, node=target.name)


def _expand(hop: _Hop, jumps: tuple[str, ...], settings: _Settings, *, depth: int, node: str) -> list[_Hop]:
    if not jumps:
        return [hop]
    if depth >= MAX_JUMP_DEPTH:
        raise CollectError(f"{node}: more than {MAX_JUMP_DEPTH} ProxyJump hops (a loop in ssh config?)",
                           kind="ssh", node=node)
    try:
        last = NodeTarget.parse(jumps[-1])
    except InputError as exc:
        raise CollectError(f"{node}: bad jump host {jumps[-1]!r}: {exc}", kind="ssh", node=node) from exc
    jump_hop = _resolve_hop(last.host, last.user, last.port, settings, is_target=False)
    before = jumps[:-1] if len(jumps) > 1 else jump_hop.jumps
    return [*_expand(jump_hop, before, settings, depth=depth + 1, node=node), hop]


# ------------------------------------------------------------------------------------------- connecting

_known_hosts_lock = threading.Lock()


def _fingerprint(key: paramiko.PKey) -> str:
    return key.fingerprint  # "SHA256:…", as OpenSSH prints it


def _host_key_policy(hop: _Hop, node: str) -> paramiko.MissingHostKeyPolicy:
    import paramiko

    class Policy(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
            where = " ".join(str(p) for p in hop.known_hosts_files)
            if not hop.accept_new:
                raise CollectError(
                    f"{node}: host key of {hostname} ({key.get_name()} {_fingerprint(key)}) is not in "
                    f"known_hosts ({where}); verify it and add it (ssh-keyscan), or pass "
                    "--accept-new-host-keys", kind="host-key", node=node)
            _append_known_host(hop, hostname, key, node)
            client.get_host_keys().add(hostname, key.get_name(), key)

    return Policy()


def _append_known_host(hop: _Hop, hostname: str, key: paramiko.PKey, node: str) -> None:
    import paramiko

    path = hop.known_hosts_files[0]
    name = paramiko.HostKeys.hash_host(hostname) if hop.hash_known_hosts else hostname
    line = f"{name} {key.get_name()} {key.get_base64()}\n"
    with _known_hosts_lock:
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            existing = path.read_bytes() if path.exists() else b""
            with open(path, "a", encoding="utf-8", opener=_private_opener) as handle:
                if existing and not existing.endswith(b"\n"):
                    handle.write("\n")
                handle.write(line)
        except OSError as exc:
            raise CollectError(f"{node}: cannot record the new host key of {hostname} in {path} "
                               f"({exc.strerror})", kind="host-key", node=node) from None


def _private_opener(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


class _QuickAckSocket(socket.socket):
    """A TCP socket that acknowledges every read at once. Right after authentication sshd sends a small
    SSH_MSG_DEBUG packet ("key options: …") and then, under Nagle, holds back the channel confirmation until
    that packet is acknowledged; with Linux's delayed ACK that is a 40 ms stall per node. Forcing the ACK
    (TCP_QUICKACK is reset by the kernel, hence after every recv) removes it."""

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        if _TCP_QUICKACK is not None:
            with contextlib.suppress(OSError):
                self.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        return data


def _tcp_connect(hop: _Hop, timeout: float) -> socket.socket:
    last: OSError | None = None
    for family, kind, proto, _, address in socket.getaddrinfo(hop.hostname, hop.port, type=socket.SOCK_STREAM):
        sock = _QuickAckSocket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        # paramiko leaves Nagle on, which costs ~45 ms per command round trip.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise last if last is not None else OSError(f"no address for {hop.hostname}")


def _connect_chain(chain: list[_Hop], settings: _Settings, node: str) -> list[paramiko.SSHClient]:
    import paramiko

    clients: list[paramiko.SSHClient] = []
    try:
        sock: Any = None
        for index, hop in enumerate(chain):
            via = f" via {chain[index - 1]}" if index else ""
            try:
                if sock is None and hop.proxy_command:
                    sock = paramiko.ProxyCommand(hop.proxy_command)
                    sock.settimeout(settings.connect_timeout)
                elif sock is None:
                    sock = _tcp_connect(hop, settings.connect_timeout)
                clients.append(_handshake(hop, sock, settings, node))
            except CollectError:
                raise
            except (paramiko.SSHException, OSError, EOFError, ValueError) as exc:
                agent_used = settings.allow_agent and bool(os.environ.get("SSH_AUTH_SOCK"))
                raise _classify_connect_error(exc, hop, node, via, agent_used) from None
            if index + 1 < len(chain):
                nxt = chain[index + 1]
                transport = clients[-1].get_transport()
                assert transport is not None
                try:
                    sock = transport.open_channel("direct-tcpip", (nxt.hostname, nxt.port), ("127.0.0.1", 0),
                                                  timeout=settings.connect_timeout)
                except (paramiko.SSHException, OSError, EOFError) as exc:
                    kind = "timeout" if isinstance(exc, TimeoutError) else "refused"
                    raise CollectError(f"{node}: jump host {hop} could not open a connection to "
                                       f"{nxt.hostname}:{nxt.port} ({_reason(exc)})", kind=kind,
                                       node=node) from None
    except BaseException:
        for client in reversed(clients):
            client.close()
        raise
    return clients


def _handshake(hop: _Hop, sock: Any, settings: _Settings, node: str) -> paramiko.SSHClient:
    import paramiko

    client = paramiko.SSHClient()
    try:
        for path in hop.known_hosts_files:
            if path.is_file():
                client.get_host_keys().load(str(path))
        global_file = Path("/etc/ssh/ssh_known_hosts")
        if global_file.is_file():
            client.load_system_host_keys(str(global_file))
    except (OSError, UnicodeDecodeError, paramiko.SSHException, ValueError) as exc:
        client.close()
        raise CollectError(f"{node}: cannot read known_hosts ({exc})", kind="host-key", node=node) from exc
    client.set_missing_host_key_policy(_host_key_policy(hop, node))
    host_key_port = DEFAULT_SSH_PORT if not hop.host_key_name.startswith("[") else hop.port
    host_key_host = hop.host_key_name if not hop.host_key_name.startswith("[") else hop.hostname
    try:
        client.connect(hostname=host_key_host, port=host_key_port, username=hop.user,
                       key_filename=list(hop.identity_files) or None, allow_agent=settings.allow_agent,
                       look_for_keys=hop.look_for_keys, sock=sock, timeout=settings.connect_timeout,
                       banner_timeout=settings.connect_timeout, auth_timeout=settings.connect_timeout,
                       channel_timeout=settings.command_timeout)
    except BaseException:
        client.close()
        raise
    return client


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip()
    return text or type(exc).__name__


def _classify_connect_error(exc: BaseException, hop: _Hop, node: str, via: str,
                            agent_used: bool) -> CollectError:
    import paramiko

    where = f"{hop}{via}"
    if isinstance(exc, paramiko.BadHostKeyException):
        files = " ".join(str(p) for p in hop.known_hosts_files)
        return CollectError(
            f"{node}: host key of {where} has CHANGED: known_hosts ({files}) has "
            f"{_fingerprint(exc.expected_key)}, the server offered {exc.key.get_name()} "
            f"{_fingerprint(exc.key)}; if the node was reinstalled, remove the old entry with "
            f"`ssh-keygen -R '{hop.host_key_name}'`", kind="host-key", node=node)
    if isinstance(exc, paramiko.PasswordRequiredException):
        return CollectError(f"{node}: authentication failed for {where}: the private key is encrypted; "
                            "load it into ssh-agent (ssh-add) first", kind="auth", node=node)
    if isinstance(exc, paramiko.AuthenticationException):
        tried = ", ".join(hop.identity_files) or ("default keys" if hop.look_for_keys else "no key files")
        agent = " and the agent" if agent_used else ""
        return CollectError(f"{node}: authentication failed for {where} (tried {tried}{agent}); "
                            "check --user and -i", kind="auth", node=node)
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError | ConnectionRefusedError):
        return CollectError(f"{node}: connection to {where} refused; is sshd listening on port {hop.port}?",
                            kind="refused", node=node)
    if isinstance(exc, TimeoutError | socket.timeout):
        return CollectError(f"{node}: {where} did not answer within the connect timeout", kind="timeout",
                            node=node)
    if isinstance(exc, socket.gaierror):
        return CollectError(f"{node}: cannot resolve {hop.hostname} ({exc.strerror})", kind="ssh", node=node)
    if isinstance(exc, OSError) and not isinstance(exc, ConnectionResetError | BrokenPipeError):
        return CollectError(f"{node}: cannot connect to {where} ({_reason(exc)})", kind="refused", node=node)
    text = _reason(exc)
    # paramiko's start_client() gives up silently at its timeout; the next step then finds "No existing
    # session". Either way the server did not finish the handshake in time.
    if any(s in text.lower() for s in ("banner", "timed out", "timeout", "no existing session")):
        return CollectError(f"{node}: {where} accepted the connection but did not speak SSH within the "
                            f"connect timeout ({text})", kind="timeout", node=node)
    if isinstance(exc, EOFError | ConnectionResetError | BrokenPipeError):
        text = "connection closed by the server during the handshake"
    return CollectError(f"{node}: SSH to {where} failed ({text})", kind="ssh", node=node)


# ----------------------------------------------------------------------------------------- remote commands

# One session runs the batch below through `sh -c`, whatever the login shell is (fish and csh pass a quoted
# word through unchanged). Each command's stdout and stderr are followed by a boundary line that carries its
# exit status; the boundary is a random token made here for each node, so a dump cannot forge one. One
# session instead of one per command saves a round trip per command and a login shell per command on the node.
BATCH = (SAVE_ARGV, SAVE6_ARGV, VERSION_ARGV, ADDRESSES_ARGV)
_BATCH_SCRIPT = (
    'b=$1; if [ -n "$2" ]; then s="sudo -n"; else s=; fi; '
    'run() { "$@"; r=$?; printf "\\n%s %s\\n" "$b" "$r"; printf "\\n%s\\n" "$b" >&2; }; '
    "run $s iptables-save; run $s ip6tables-save; run iptables --version; run ip -o addr show")


def remote_command(argv: Sequence[str], *, sudo: bool) -> str:
    """The exact string sent to the node for one command; argv entries are our constants, quoted anyway."""
    return shlex.join((*SUDO_ARGV, *argv) if sudo else argv)


def batch_command(boundary: str, *, sudo: bool) -> str:
    """The string that runs BATCH on the node (`boundary` is our own random token)."""
    if not re.fullmatch(r"[A-Za-z0-9-]+", boundary):
        raise ValueError("boundary must be a plain token")
    return shlex.join(("sh", "-c", _BATCH_SCRIPT, "iptrace", boundary, "1" if sudo else ""))


def _run(client: paramiko.SSHClient, command: str, settings: _Settings, node: str,
         on_timeout: Callable[[bytes], str]) -> tuple[bytes, bytes, int]:
    """Run one remote command to its end: (stdout, stderr, exit status). A command still running at the
    command timeout is stopped; `on_timeout(stdout so far)` names what hung."""
    import paramiko

    transport = client.get_transport()
    assert transport is not None
    deadline = time.monotonic() + settings.command_timeout
    out: list[bytes] = []
    err: list[bytes] = []
    channel = None
    try:
        channel = transport.open_session(timeout=settings.command_timeout)
        channel.exec_command(command)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            channel.settimeout(remaining)
            data = channel.recv(1 << 20)
            # Drained as we go: paramiko stops granting window when a stream is not read.
            while channel.recv_stderr_ready():
                err.append(channel.recv_stderr(1 << 16))
            if not data:
                break
            out.append(data)
        while channel.recv_stderr_ready():
            err.append(channel.recv_stderr(1 << 16))
        if not channel.status_event.wait(max(deadline - time.monotonic(), 0)):
            raise TimeoutError
        return b"".join(out), b"".join(err), channel.recv_exit_status()
    except TimeoutError:
        if channel is not None:
            _kill(channel)
        raise CollectError(f"{node}: {on_timeout(b''.join(out))} did not finish within "
                           f"{settings.command_timeout:g}s; it was stopped", kind="timeout",
                           node=node) from None
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise CollectError(f"{node}: running commands failed ({_reason(exc)})", kind="ssh",
                           node=node) from None
    finally:
        if channel is not None:
            channel.close()


def _kill(channel: Any) -> None:
    """Ask sshd to SIGKILL the command's process group (RFC 4254 §6.9 "signal"): closing the channel alone
    can leave a hung command running on the node. paramiko has no public call for it. sshd refuses it for
    sessions without privilege separation (e.g. root logins); closing the channel is then all we can do."""
    import paramiko
    from paramiko.common import cMSG_CHANNEL_REQUEST

    message = paramiko.Message()
    message.add_byte(cMSG_CHANNEL_REQUEST)
    message.add_int(channel.remote_chanid)
    message.add_string("signal")
    message.add_boolean(False)
    message.add_string("KILL")
    with contextlib.suppress(paramiko.SSHException, OSError, EOFError):
        channel.transport._send_user_message(message)


def _run_batch(client: paramiko.SSHClient, settings: _Settings, node: str) -> dict[tuple[str, ...], _Output]:
    boundary = f"iptrace-{secrets.token_hex(16)}"

    def hung(stdout: bytes) -> str:
        done = stdout.count(f"\n{boundary} ".encode())
        return f"`{shlex.join(BATCH[min(done, len(BATCH) - 1)])}`"

    stdout, stderr, status = _run(client, batch_command(boundary, sudo=settings.sudo), settings, node, hung)
    outs = _split_batch(stdout, boundary, with_status=True)
    errs = _split_batch(stderr, boundary, with_status=False)
    if len(outs) < len(BATCH):
        detail = stderr.decode("utf-8", "replace").strip().splitlines()
        raise CollectError(f"{node}: the node's shell did not run the commands (exit status {status}"
                           f"{': ' + detail[0][:300] if detail else ''}); is `sh` its /bin/sh?", kind="ssh",
                           node=node)
    results = {}
    for index, argv in enumerate(BATCH):
        text, code = outs[index]
        err_text = errs[index][0] if index < len(errs) else b""
        results[argv] = _Output(argv, code, text, err_text.decode("utf-8", "replace").strip())
    return results


def _split_batch(data: bytes, boundary: str, *, with_status: bool) -> list[tuple[bytes, int]]:
    """Cut a batch stream at its boundary lines: `\\nBOUNDARY STATUS\\n` on stdout, `\\nBOUNDARY\\n` on
    stderr (the leading newline is ours, so output without a final newline comes back byte for byte)."""
    marker = f"\n{boundary}".encode()
    parts: list[tuple[bytes, int]] = []
    position = 0
    while True:
        found = data.find(marker, position)
        if found < 0:
            return parts
        line_end = data.find(b"\n", found + len(marker))
        if line_end < 0:
            return parts
        tail = data[found + len(marker):line_end]
        code = int(tail) if with_status and tail.strip().isdigit() else 0
        parts.append((data[position:found], code))
        position = line_end + 1


_SUDO_PASSWORD = ("a password is required", "a terminal is required", "no tty present", "askpass")
_SUDO_DENIED = ("not in the sudoers", "is not allowed to execute", "may not run sudo", "not allowed to run")
_PERMISSION = ("permission denied", "you must be root", "operation not permitted")
_SUDO_MISSING = re.compile(r"\bsudo: (?:command )?not found")


def _command_error(output: _Output, node: str, sudo: bool, user: str) -> CollectError | None:
    if output.status == 0:
        return None
    command = shlex.join(output.argv)
    lowered = output.stderr.lower()
    detail = output.stderr.splitlines()[0][:300] if output.stderr else f"exit status {output.status}"
    if sudo and _SUDO_MISSING.search(lowered):
        return CollectError(f"{node}: `sudo` not found on the node; drop --sudo or connect as root",
                            kind="command-missing", node=node)
    if sudo and any(s in lowered for s in _SUDO_PASSWORD):
        return CollectError(f"{node}: `sudo -n {command}` needs a password ({detail}); allow it without a "
                            f"password for {user} (NOPASSWD in sudoers) or connect as root",
                            kind="sudo-password", node=node)
    if sudo and any(s in lowered for s in _SUDO_DENIED):
        return CollectError(f"{node}: {user} may not run `{command}` with sudo ({detail})", kind="permission",
                            node=node)
    if output.status == 127 or "command not found" in lowered or lowered.endswith("not found"):
        hint = "" if sudo or user == "root" else " (it is often only in root's PATH: try --sudo)"
        return CollectError(f"{node}: `{command}` not found on the node{hint}", kind="command-missing",
                            node=node)
    if any(s in lowered for s in _PERMISSION):
        hint = "" if sudo else "; try --sudo"
        return CollectError(f"{node}: `{command}` was denied ({detail}){hint}", kind="permission", node=node)
    return CollectError(f"{node}: `{command}` failed ({detail})", kind="ssh", node=node)


def _gather(client: paramiko.SSHClient, hop: _Hop, target: NodeTarget,
            settings: _Settings) -> tuple[dict[str, bytes], dict[str, Any], list[str]]:
    node = target.name
    collected_at = datetime.now(UTC).isoformat(timespec="seconds")
    outputs = _run_batch(client, settings, node)
    error = _command_error(outputs[SAVE_ARGV], node, settings.sudo, hop.user)
    if error is not None:
        raise error
    warnings: list[str] = []
    save_text = outputs[SAVE_ARGV].stdout.decode("utf-8", "replace")
    dumps = {store.DUMP_FILE: outputs[SAVE_ARGV].stdout}
    six = outputs[SAVE6_ARGV]
    six_error = _command_error(six, node, settings.sudo, hop.user)
    if six_error is None:
        dumps[store.IP6_DUMP_FILE] = six.stdout
        if IP6_LEGACY_WARNING in six.stdout.decode("utf-8", "replace"):
            warnings.append("ip6tables-legacy tables are present too; they were not collected")
    else:
        warnings.append(f"ip6tables-save: {_strip_node(str(six_error), node)}")
    if LEGACY_WARNING in save_text:
        # Only now: running iptables-legacy-save where no legacy tables exist would load the legacy
        # modules and create them, changing the node it is auditing.
        command = remote_command(SAVE_LEGACY_ARGV, sudo=settings.sudo)
        stdout, stderr, status = _run(client, command, settings, node,
                                      lambda _: f"`{shlex.join(SAVE_LEGACY_ARGV)}`")
        legacy = _Output(SAVE_LEGACY_ARGV, status, stdout, stderr.decode("utf-8", "replace").strip())
        legacy_error = _command_error(legacy, node, settings.sudo, hop.user)
        if legacy_error is not None:
            raise CollectError(f"{legacy_error} (the node has legacy iptables tables, which may hold "
                               "kube-proxy's rules)", kind=legacy_error.kind, node=node)
        dumps[store.LEGACY_DUMP_FILE] = legacy.stdout
    version, backend = None, None
    version_output = outputs[VERSION_ARGV]
    if version_output.status == 0:
        version, backend = parse_iptables_version(version_output.stdout.decode("utf-8", "replace"))
    else:
        warnings.append(f"iptables --version: {_warning(version_output, node, hop.user)}")
    if version is None:
        version, backend = parse_iptables_version(save_text.partition("\n")[0])
    address_output = outputs[ADDRESSES_ARGV]
    details: list[dict[str, Any]] = []
    if address_output.status == 0:
        details = parse_ip_addr(address_output.stdout.decode("utf-8", "replace"))
    else:
        warnings.append(f"ip -o addr show: {_warning(address_output, node, hop.user)}")
    addresses = list(dict.fromkeys(d["address"] for d in details))
    meta: dict[str, Any] = {
        "format": store.META_FORMAT,
        "node": node,
        "target": str(target),
        "host": hop.hostname,
        "port": hop.port,
        "user": hop.user,
        "sudo": settings.sudo,
        "collected_at": collected_at,
        "addresses": addresses,
        "interfaces": details,
        "iptables_version": version,
        "backend": backend,
        "files": sorted(dumps),
        "errors": warnings,
    }
    return dumps, meta, warnings


def _warning(output: _Output, node: str, user: str) -> str:
    return _strip_node(str(_command_error(output, node, False, user)), node)


def _strip_node(message: str, node: str) -> str:
    prefix = f"{node}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def parse_iptables_version(text: str) -> tuple[str | None, str | None]:
    """`iptables v1.8.9 (nf_tables)` → ("1.8.9", "nf_tables"); before 1.8 there was no suffix and only the
    legacy backend existed. Also reads an iptables-save header (`# Generated by iptables-save v1.8.9 …`)."""
    match = _VERSION_RE.search(text)
    if match is None:
        return None, None
    backend = match.group(2)
    if backend not in ("nf_tables", "legacy"):
        backend = "legacy"
    return match.group(1), backend


def parse_ip_addr(text: str) -> list[dict[str, Any]]:
    """`ip -o addr show` → [{"interface", "family", "address", "prefixlen", "scope"}], in the node's order."""
    entries: list[dict[str, Any]] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4 or parts[2] not in ("inet", "inet6"):
            continue
        address, _, prefix = parts[3].partition("/")
        try:
            ip = ipaddress.ip_address(address.partition("%")[0])
        except ValueError:
            continue
        scope = parts[parts.index("scope") + 1] if "scope" in parts[:-1] else None
        entries.append({"interface": parts[1].rstrip(":").partition("@")[0],
                        "family": "ipv4" if ip.version == 4 else "ipv6", "address": str(ip),
                        "prefixlen": int(prefix) if prefix.isdigit() else None, "scope": scope})
    return entries
