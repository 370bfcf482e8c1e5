"""Collect a node's rules over SSH (paramiko): connect like OpenSSH would (ssh_connect), run the shared
node-side script (commands) in one session, and store what it printed (gather, store). The remote command is
fixed argv constants joined with shlex; nothing a user or an inventory supplies ever reaches a remote shell.
Library code: no printing.
"""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
import shlex
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iptrace.collect import store
from iptrace.collect.commands import (
    DEFAULT_CONNTRACK_MAX_ENTRIES,
    DEFAULT_LISTING_TIMEOUT,
    Invocation,
    StepClock,
    StepOutput,
    parse_batch,
)
from iptrace.collect.gather import NodeResult, Runner, gather, needs_legacy_followup, stopped_early
from iptrace.collect.ssh_connect import (
    Hop,
    Settings,
    connect_chain,
    load_ssh_config,
    reason,
    resolve_chain,
    split_jumps,
)
from iptrace.collect.targets import USER_RE, NodeTarget, parse_target, read_inventory
from iptrace.collect.workers import run_parallel
from iptrace.errors import CollectError, InputError, printable

if TYPE_CHECKING:
    import paramiko

__all__ = ["ERROR_KINDS", "NodeResult", "NodeTarget", "collect", "parse_target", "read_inventory",
           "remote_command"]

ERROR_KINDS = ("auth", "host-key", "refused", "timeout", "permission", "command-missing", "sudo-password",
               "ssh")

# `sudo -n` never prompts: a password requirement is an error.
SUDO_ARGV = ("sudo", "-n")
SAVE_LEGACY_ARGV = ("iptables-legacy-save",)


# ----------------------------------------------------------------------------------------------- collect

def collect(targets: Iterable[NodeTarget | str], *, out_dir: Path, user: str | None = None,
            port: int | None = None, identity_files: Sequence[Path | str] = (),
            known_hosts: Path | None = None, accept_new_host_keys: bool = False, jump: str | None = None,
            sudo: bool = False, parallel: int = 10, connect_timeout: float = 10.0,
            command_timeout: float = 60.0, ssh_config: Path | None = None,
            progress: Callable[[NodeResult], None] | None = None, allow_agent: bool = True,
            listing_timeout: float = DEFAULT_LISTING_TIMEOUT,
            conntrack_max_entries: int = DEFAULT_CONNTRACK_MAX_ENTRIES) -> list[NodeResult]:
    """Collect every target into `out_dir/NODE/`, `parallel` nodes at a time. Returns one NodeResult per
    target, in the order given; a node's failure is in its result, never raised. Raises InputError only for
    unusable arguments (duplicate node names, a missing -i key, an unreadable ssh config, …).
    `progress` is called in the calling thread with each result as its node finishes. Each command may run
    `command_timeout` seconds, the slow listings (`nft list ruleset`, `conntrack -L`) `listing_timeout`;
    `conntrack_max_entries` caps each conntrack family (0: no cap)."""
    nodes = [t if isinstance(t, NodeTarget) else NodeTarget.parse(t) for t in targets]
    seen: dict[str, NodeTarget] = {}
    for node in nodes:
        if node.name in seen:
            raise InputError(f"node {node.name!r} is given twice ({seen[node.name]} and {node}); "
                             "each node needs its own directory name")
        seen[node.name] = node
    if parallel < 1:
        raise InputError(f"--parallel must be at least 1, not {parallel}")
    # (nan passes `<= 0` and inf overflows the socket timeouts)
    if not all(0 < t < math.inf for t in (connect_timeout, command_timeout, listing_timeout)):
        raise InputError("timeouts must be positive numbers of seconds")
    if conntrack_max_entries < 0:
        raise InputError(f"--conntrack-max-entries must be 0 (no cap) or more, not {conntrack_max_entries}")
    if port is not None and not 0 < port < 65536:
        raise InputError(f"bad --port {port}; expected 1-65535")
    if user is not None and not USER_RE.fullmatch(user):
        raise InputError(f"bad --user {user!r}")
    keys = []
    for key in identity_files:
        key_path = Path(key).expanduser()
        if not key_path.is_file():
            raise InputError(f"identity file {key_path} not found; check -i")
        keys.append(str(key_path))
    jumps = split_jumps(jump) if jump is not None else None
    settings = Settings(user=user, port=port, identity_files=tuple(keys),
                        known_hosts=Path(known_hosts).expanduser() if known_hosts else None,
                        accept_new=accept_new_host_keys, jump=jumps, sudo=sudo,
                        connect_timeout=float(connect_timeout), command_timeout=float(command_timeout),
                        allow_agent=allow_agent, config=load_ssh_config(ssh_config),
                        listing_timeout=float(listing_timeout), conntrack_cap=conntrack_max_entries)
    # paramiko logs each failed handshake with its traceback: with no handler of the application's, Python would
    # print those on stderr beside the one-line errors. (A handler the application adds still gets them.)
    paramiko_log = logging.getLogger("paramiko")
    if not any(isinstance(h, logging.NullHandler) for h in paramiko_log.handlers):
        paramiko_log.addHandler(logging.NullHandler())
    out_dir = Path(out_dir)
    try:
        store.ensure_private_dir(out_dir, tighten=False)
    except OSError as exc:
        raise InputError(f"{out_dir}: cannot create the output directory ({exc.strerror})") from exc
    if not nodes:
        return []
    return run_parallel(nodes, lambda node: _collect_node(node, out_dir, settings), parallel, settings.cancel,
                        progress, "iptrace-collect")



def _collect_node(target: NodeTarget, out_dir: Path, settings: Settings) -> NodeResult:
    started = time.monotonic()
    try:
        if settings.cancel.is_set():
            raise CollectError(f"{target.name}: interrupted before it was reached", kind="cancelled",
                               node=target.name)
        chain = resolve_chain(target, settings)
        clients = connect_chain(chain, settings, target.name)
        try:
            dumps, meta, warnings, notes = _gather(clients[-1], chain[-1], target, settings)
        finally:
            for client in reversed(clients):
                client.close()
        duration = time.monotonic() - started
        meta["duration_s"] = round(duration, 3)
        files = store.write_node_dir(out_dir / target.name, dumps, meta)
    except CollectError as exc:
        if exc.kind != "cancelled":
            store.mark_failed(out_dir, target.name, str(exc))
        return NodeResult(target.name, False, exc.kind, str(exc), (), time.monotonic() - started,
                          target=target)
    except OSError as exc:
        # Only the local write can get here (remote OSErrors are classified in connect_chain/_gather).
        message = f"{target.name}: cannot write {exc.filename or out_dir}: {exc.strerror}"
        return NodeResult(target.name, False, "ssh", message, (), time.monotonic() - started, target=target)
    return NodeResult(target.name, True, None, None, tuple(files), time.monotonic() - started,
                      tuple(warnings), tuple(notes), target=target)


# ----------------------------------------------------------------------------------------- remote commands

def remote_command(argv: Sequence[str], *, sudo: bool) -> str:
    """The exact string sent to the node for one command; argv entries are our constants, quoted anyway."""
    return shlex.join((*SUDO_ARGV, *argv) if sudo else argv)


def _gather(client: paramiko.SSHClient, hop: Hop, target: NodeTarget,
            settings: Settings) -> tuple[dict[str, bytes], dict[str, Any], list[str], list[str]]:
    node = target.name
    collected_at = datetime.now(UTC).isoformat(timespec="seconds")
    # One session runs the whole script through `sh -c`, whatever the login shell is (fish and csh pass a
    # quoted word through unchanged): a round trip and a login shell per command saved.
    boundary = f"iptrace-{secrets.token_hex(16)}"
    invocation = Invocation(privileged=SUDO_ARGV if settings.sudo else (), conntrack_cap=settings.conntrack_cap)
    clock = StepClock(boundary, settings.command_timeout, settings.listing_timeout, time.monotonic())
    stdout, stderr, status, timed_out = _run(client, shlex.join(invocation.argv(boundary)), settings, node, clock,
                                             salvage=True)
    batch = parse_batch(stdout, boundary)
    if batch.running is not None:
        # Cut in the middle of a step: what was complete is kept (stopped_early names the rest). A channel that
        # closes without an exit status is a connection that went away (the transport saved why before it closed
        # its channels), or a shell killed by a signal while the connection stays up (paramiko keeps no
        # exit-signal).
        transport = client.get_transport()
        alive = transport is not None and transport.saved_exception is None and transport.is_active()
        ended = (f"the node's shell exited with status {status}" if status != -1
                 else "the node's shell was killed" if alive else "the connection closed")
        why = timed_out or f"stopped: {ended} while it ran"
        batch = stopped_early(batch, node, why, "timeout" if timed_out else "ssh")
    elif timed_out:
        raise CollectError(f"{node}: {clock.describe()} {timed_out}", kind="timeout", node=node)
    if batch.encoding is None:
        detail = stderr.decode("utf-8", "replace").strip().splitlines()
        raise CollectError(f"{node}: the node's shell did not run the commands (exit status {status}"
                           f"{': ' + detail[0][:300] if detail else ''}); is `sh` its /bin/sh?", kind="ssh",
                           node=node)
    if needs_legacy_followup(batch):
        # Only now: running iptables-legacy-save where no legacy tables exist would load the legacy
        # modules and create them, changing the node it is auditing.
        legacy = StepClock(boundary, settings.command_timeout, settings.listing_timeout, time.monotonic())
        legacy.step = "iptables-legacy-save"
        out, err, code, _ = _run(client, remote_command(SAVE_LEGACY_ARGV, sudo=settings.sudo), settings, node,
                                 legacy)
        batch.steps["iptables-legacy-save"] = StepOutput("iptables-legacy-save", code, out,
                                                         printable(err.decode("utf-8", "replace")).strip())
    gathered = gather(batch, node, Runner("ssh", settings.sudo, hop.user), conntrack_cap=settings.conntrack_cap)
    meta: dict[str, Any] = {
        **gathered.meta,
        "via": "ssh",
        "target": str(target),
        "host": hop.hostname,
        "port": hop.port,
        "user": hop.user,
        "sudo": settings.sudo,
        "collected_at": collected_at,
    }
    return gathered.dumps, meta, gathered.warnings, gathered.notes


def _run(client: paramiko.SSHClient, command: str, settings: Settings, node: str, clock: StepClock, *,
         salvage: bool = False) -> tuple[bytes, bytes, int, str | None]:
    """Run one remote command to its end: (stdout, stderr, exit status, None). `clock` follows the script's steps
    through stdout; a step still running when its time is up is stopped, and named (a CollectError); with
    `salvage` the output so far is returned instead, with exit status -1 and why it stopped."""
    import paramiko

    transport = client.get_transport()
    assert transport is not None
    out: list[bytes] = []
    err: list[bytes] = []
    channel = None
    try:
        channel = transport.open_session(timeout=settings.command_timeout)
        channel.exec_command(command)
        cancel = settings.cancel
        while True:
            remaining = clock.deadline() - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            # Short waits: an interrupted collect stops the node's command within a fraction of a second.
            channel.settimeout(min(remaining, _WATCH))
            try:
                data = channel.recv(1 << 20)
            except TimeoutError:
                if cancel.is_set():
                    raise _Cancelled from None
                continue
            # Drained as we go: paramiko stops granting window when a stream is not read.
            while channel.recv_stderr_ready():
                err.append(channel.recv_stderr(1 << 16))
            if not data:
                break
            clock.feed(data, time.monotonic())
            out.append(data)
        while channel.recv_stderr_ready():
            err.append(channel.recv_stderr(1 << 16))
        while not channel.status_event.wait(min(max(clock.deadline() - time.monotonic(), 0), _WATCH)):
            if cancel.is_set():
                raise _Cancelled
            if time.monotonic() >= clock.deadline():
                raise TimeoutError
        return b"".join(out), b"".join(err), channel.recv_exit_status(), None
    except _Cancelled:
        if channel is not None:
            _kill(channel)
        raise CollectError(f"{node}: interrupted; {clock.describe()} was stopped", kind="cancelled",
                           node=node) from None
    except TimeoutError:
        if channel is not None:
            _kill(channel)
        if salvage:
            return b"".join(out), b"".join(err), -1, f"did not finish within {clock.allowance():g}s; it was stopped"
        raise CollectError(f"{node}: {clock.describe()} did not finish within {clock.allowance():g}s; it was "
                           "stopped", kind="timeout", node=node) from None
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise CollectError(f"{node}: running commands failed ({reason(exc)})", kind="ssh", node=node) from None
    finally:
        if channel is not None:
            channel.close()


# How often a command's wait looks whether the collect was interrupted (seconds).
_WATCH = 0.2


class _Cancelled(Exception):
    """The collect was interrupted while a node's command ran."""


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
