"""Connecting over SSH the way OpenSSH would: ~/.ssh/config (Host, HostName, User, Port, IdentityFile,
ProxyJump, ProxyCommand, UserKnownHostsFile), the agent, known_hosts verification (accept-new at most, never a
changed key), jump-host chains. Every failure becomes a CollectError with a kind and a hint.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iptrace.collect.targets import NodeTarget
from iptrace.errors import CollectError, InputError

if TYPE_CHECKING:
    import paramiko

DEFAULT_SSH_PORT = 22
MAX_JUMP_DEPTH = 8


@dataclass(frozen=True, slots=True)
class Hop:
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
class Settings:
    """Everything `collect` was asked for that applies to every node."""

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
    listing_timeout: float
    conntrack_cap: int
    # Set when the caller is interrupted: running commands are stopped, nodes not connected yet are not.
    cancel: threading.Event = field(default_factory=threading.Event, compare=False)


# ------------------------------------------------------------------------------------ ssh_config, chains

def load_ssh_config(path: Path | None) -> paramiko.SSHConfig | None:
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


def _lookup(settings: Settings, alias: str) -> dict[str, Any]:
    if settings.config is None:
        return {}
    import paramiko

    try:
        return dict(settings.config.lookup(alias))
    except (paramiko.SSHException, ImportError, OSError) as exc:
        # `Match exec` needs the optional `invoke` package; other failures are config mistakes.
        raise CollectError(f"{alias}: cannot apply ssh config ({exc})", kind="ssh", node=alias) from exc


def split_jumps(text: str) -> tuple[str, ...]:
    text = text.strip()
    if not text or text.lower() == "none":
        return ()
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _resolve_hop(alias: str, user: str | None, port: int | None, settings: Settings,
                 *, is_target: bool) -> Hop:
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
        jumps = split_jumps(str(options.get("proxyjump", "")))
    # The user's own ProxyCommand (trusted like the rest of their config); ProxyJump takes precedence.
    proxy_command = options.get("proxycommand")
    if jumps or not proxy_command or str(proxy_command).lower() == "none":
        proxy_command = None
    return Hop(label=alias, hostname=hostname, port=port, user=user, identity_files=identity_files,
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


def resolve_chain(target: NodeTarget, settings: Settings) -> list[Hop]:
    """Hops in connection order, ending with the target. Mirrors OpenSSH: `ProxyJump A,B` reaches B through A
    (B's own ProxyJump is then ignored) and A through A's own ProxyJump."""
    dest = _resolve_hop(target.host, target.user, target.port, settings, is_target=True)
    return _expand(dest, dest.jumps, settings, depth=0, node=target.name)


def _expand(hop: Hop, jumps: tuple[str, ...], settings: Settings, *, depth: int, node: str) -> list[Hop]:
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


def _host_key_policy(hop: Hop, node: str, revoked: set[tuple[str, str]]) -> paramiko.MissingHostKeyPolicy:
    import paramiko

    class Policy(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
            if (key.get_name(), key.get_base64()) in revoked:
                raise _revoked_error(hostname, key, hop, node)
            where = " ".join(str(p) for p in hop.known_hosts_files)
            if not hop.accept_new:
                raise CollectError(
                    f"{node}: host key of {hostname} ({key.get_name()} {_fingerprint(key)}) is not in "
                    f"known_hosts ({where}); verify it and add it (ssh-keyscan), or pass "
                    "--accept-new-host-keys", kind="host-key", node=node)
            _append_known_host(hop, hostname, key, node)
            client.get_host_keys().add(hostname, key.get_name(), key)

    return Policy()


def _append_known_host(hop: Hop, hostname: str, key: paramiko.PKey, node: str) -> None:
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


def _tcp_connect(hop: Hop, timeout: float) -> socket.socket:
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


def connect_chain(chain: list[Hop], settings: Settings, node: str) -> list[paramiko.SSHClient]:
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
                                       f"{nxt.hostname}:{nxt.port} ({reason(exc)})", kind=kind,
                                       node=node) from None
    except BaseException:
        for client in reversed(clients):
            client.close()
        raise
    return clients


def _handshake(hop: Hop, sock: Any, settings: Settings, node: str) -> paramiko.SSHClient:
    import paramiko

    client = paramiko.SSHClient()
    revoked: set[tuple[str, str]] = set()
    try:
        for path in hop.known_hosts_files:
            if path.is_file():
                revoked |= _load_known_hosts(client.get_host_keys(), path)
        global_file = Path("/etc/ssh/ssh_known_hosts")
        if global_file.is_file():
            revoked |= _load_known_hosts(client.get_system_host_keys(), global_file)
    except (OSError, UnicodeDecodeError) as exc:
        client.close()
        raise CollectError(f"{node}: cannot read known_hosts ({exc})", kind="host-key", node=node) from exc
    client.set_missing_host_key_policy(_host_key_policy(hop, node, revoked))
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
    transport = client.get_transport()
    offered = transport.get_remote_server_key() if transport is not None else None
    if offered is not None and (offered.get_name(), offered.get_base64()) in revoked:
        # (a revoked key that is also listed as the host's: paramiko accepted it without asking the policy)
        client.close()
        raise _revoked_error(hop.host_key_name, offered, hop, node)
    return client


def _load_known_hosts(keys: paramiko.HostKeys, path: Path) -> set[tuple[str, str]]:
    """Read one known_hosts file into `keys` the way ssh reads it, and return its `@revoked` keys (type, base64):
    those are refused for every host (OpenSSH matches their host patterns; paramiko knows no patterns, and a
    revoked key is not to be trusted anywhere). `@cert-authority` lines are skipped (paramiko verifies no host
    certificates: such a host stays unknown, so refused), and so is a line that holds no key, as ssh skips it;
    paramiko's own loader stops at the first of either."""
    import paramiko
    from paramiko.hostkeys import HostKeyEntry, InvalidHostKey

    revoked: set[tuple[str, str]] = set()
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("@"):
            fields = line.split()
            if fields[0] == "@revoked" and len(fields) >= 4:
                revoked.add((fields[2], fields[3]))
            continue
        try:
            entry = HostKeyEntry.from_line(line, number)
        except (InvalidHostKey, paramiko.SSHException, ValueError):  # (not base64; no key of its type)
            continue
        if entry is not None:
            for name in entry.hostnames:
                if keys.lookup(name) is None or entry.key.get_name() not in keys.lookup(name):
                    keys.add(name, entry.key.get_name(), entry.key)
    return revoked


def _revoked_error(hostname: str, key: paramiko.PKey, hop: Hop, node: str) -> CollectError:
    files = " ".join(str(p) for p in hop.known_hosts_files)
    return CollectError(f"{node}: host key of {hostname} ({key.get_name()} {_fingerprint(key)}) is REVOKED in "
                        f"known_hosts ({files} or /etc/ssh/ssh_known_hosts); it is never accepted",
                        kind="host-key", node=node)


# What paramiko says of a key file it cannot read as a private key (a .pub, a truncated or foreign file).
_KEY_UNREADABLE = re.compile(r"private key file|invalid key|no lines in", re.IGNORECASE)


def reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip()
    return text or type(exc).__name__


def _classify_connect_error(exc: BaseException, hop: Hop, node: str, via: str,
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
    if isinstance(exc, paramiko.SSHException) and _KEY_UNREADABLE.search(reason(exc)):
        # (paramiko tries every key; this is the last one's, raised when none could be used)
        tried = ", ".join(hop.identity_files) or "default keys"
        return CollectError(f"{node}: authentication failed for {where} (tried {tried}): a key file is not a "
                            f"private key ({reason(exc)}); give -i the private key, not its .pub",
                            kind="auth", node=node)
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError | ConnectionRefusedError):
        return CollectError(f"{node}: connection to {where} refused; is sshd listening on port {hop.port}?",
                            kind="refused", node=node)
    if isinstance(exc, TimeoutError | socket.timeout):
        return CollectError(f"{node}: {where} did not answer within the connect timeout", kind="timeout",
                            node=node)
    if isinstance(exc, socket.gaierror):
        return CollectError(f"{node}: cannot resolve {hop.hostname} ({exc.strerror})", kind="ssh", node=node)
    if isinstance(exc, OSError) and not isinstance(exc, ConnectionResetError | BrokenPipeError):
        return CollectError(f"{node}: cannot connect to {where} ({reason(exc)})", kind="refused", node=node)
    text = reason(exc)
    # paramiko's start_client() gives up silently at its timeout; the next step then finds "No existing
    # session". Either way the server did not finish the handshake in time.
    if any(s in text.lower() for s in ("banner", "timed out", "timeout", "no existing session")):
        return CollectError(f"{node}: {where} accepted the connection but did not speak SSH within the "
                            f"connect timeout ({text})", kind="timeout", node=node)
    if isinstance(exc, EOFError | ConnectionResetError | BrokenPipeError):
        text = "connection closed by the server during the handshake"
    return CollectError(f"{node}: SSH to {where} failed ({text})", kind="ssh", node=node)
