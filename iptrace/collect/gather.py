"""Turn what the node printed (commands.parse_batch) into the files of `DIR/NODE/` and the node's half of
meta.json — the same for every way in (SSH, exec into kube-proxy, a collector pod). Only iptables-save is
vital (or, on a node without iptables, `nft list ruleset`); every other command that fails is named in the result
and in meta.json, and nothing else is lost.
Library code: no I/O.
"""

from __future__ import annotations

import ipaddress
import re
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iptrace.collect import store
from iptrace.collect.commands import COMMANDS, STEPS, Batch, StepOutput
from iptrace.errors import CollectError

# iptables-nft prints this when the legacy backend also holds tables (e.g. an old kube-proxy image);
# the rules that matter may then live only in the legacy tables.
LEGACY_WARNING = "# Warning: iptables-legacy tables present"
IP6_LEGACY_WARNING = "# Warning: ip6tables-legacy tables present"

_VERSION_RE = re.compile(r"v(\d[\w.]*)(?:\s+\(([\w-]+)\))?")
# What an nft shows when it cannot decode what a newer nft (or kernel) wrote: the listing is then not the truth.
_NFT_MISREAD = ("unknown expression", "[invalid type]", "unknown operation", "unsupported expression",
                "netlink: error", "# unknown")


@dataclass(frozen=True, slots=True)
class NodeResult:
    """What happened on one node. `files` are the paths written (empty on failure, when the node's previous
    files, if any, were left untouched). `warnings` name commands that failed without failing the node;
    `notes` say what was not there to collect or was cut (a missing `conntrack`, a capped table)."""

    node: str
    ok: bool
    error_kind: str | None
    error: str | None
    files: tuple[Path, ...]
    duration: float
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    target: Any = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Runner:
    """Who ran the commands, for the hints in messages: `via` is ssh, exec or pod."""

    via: str
    sudo: bool = False
    user: str | None = None

    @property
    def failure_kind(self) -> str:
        return "ssh" if self.via == "ssh" else "command"


@dataclass
class Gathered:
    dumps: dict[str, bytes]
    meta: dict[str, Any]
    warnings: list[str]
    notes: list[str]


def needs_legacy_followup(batch: Batch) -> bool:
    """iptables-save warned about legacy tables but the script could not tell (e.g. a sudo rule that allows
    iptables-save but not reading /proc): the caller runs iptables-legacy-save itself."""
    save = batch.steps.get("iptables-save")
    return (save is not None and save.status == 0 and "iptables-legacy-save" not in batch.steps
            and LEGACY_WARNING.encode() in save.stdout)


# The steps every run reaches (the others run only on some nodes: legacy tables, no `ip`).
_ALWAYS_RUN = tuple(s for s in STEPS if s not in ("iptables-legacy-save", "proc-addresses"))


def stopped_early(batch: Batch, node: str, why: str, kind: str) -> Batch:
    """A run that stopped while `batch.running` ran (`why`: "did not finish within 30s; it was stopped",
    "stopped: the connection closed while it ran"). Raises CollectError when iptables-save itself is not
    complete; otherwise that step and the steps never reached become failed steps, so that each is named as cut
    or not run (not as a missing command) and everything complete is kept."""
    running = batch.running
    assert running is not None
    command = f"`{' '.join(COMMANDS.get(running, (running,)))}`"
    if "iptables-save" not in batch.steps:
        raise CollectError(f"{node}: {command} {why}", kind=kind, node=node)
    steps = dict(batch.steps)
    steps[running] = StepOutput(running, -1, b"", why)
    for step in _ALWAYS_RUN:
        steps.setdefault(step, StepOutput(step, -1, b"", f"not run: the node's run ended at {command}"))
    return Batch(steps, batch.encoding)


def gather(batch: Batch, node: str, runner: Runner, *, conntrack_cap: int = 0) -> Gathered:
    """Files and metadata from one node's batch; raises CollectError when iptables-save itself failed."""
    steps = batch.steps
    save = steps.get("iptables-save")
    if save is None:
        raise CollectError(f"{node}: the node's shell did not run the commands; is `sh` a POSIX shell there?",
                           kind=runner.failure_kind, node=node)
    warnings: list[str] = []
    notes: list[str] = []
    dumps: dict[str, bytes] = {}
    listing = steps.get("nft")
    if is_missing(save) and listing is not None and listing.status == 0:
        # A node without iptables (kube-proxy in nftables mode needs none on the host): its nft ruleset is the
        # node's rules, read as its dump (store.read_node_dir), and nothing vital is missing.
        notes.append(f"no `iptables-save` {_where(runner)}: the node's rules are its `nft list ruleset` "
                     f"({store.NFT_FILE})")
    else:
        error = command_error(save, node, runner)
        if error is not None:
            raise error
        dumps[store.DUMP_FILE] = save.stdout
    save_text = save.stdout.decode("utf-8", "replace")
    no_iptables = store.DUMP_FILE not in dumps  # (then its other commands are missing too: the note says it)
    six = steps.get("ip6tables-save")
    if six is not None and (six_error := command_error(six, node, runner)) is None:
        dumps[store.IP6_DUMP_FILE] = six.stdout
        if IP6_LEGACY_WARNING.encode() in six.stdout:
            warnings.append("ip6tables-legacy tables are present too; they were not collected")
    elif six is not None and not (no_iptables and is_missing(six)):
        warnings.append(f"ip6tables-save: {_strip_node(str(six_error), node)}")
    if LEGACY_WARNING in save_text:
        legacy = steps.get("iptables-legacy-save")
        if legacy is None:
            warnings.append("iptables-save warns that legacy tables are present, but they could not be collected")
        elif (legacy_error := command_error(legacy, node, runner)) is not None:
            raise CollectError(f"{legacy_error} (the node has legacy iptables tables, which may hold "
                               "kube-proxy's rules)", kind=legacy_error.kind, node=node)
        else:
            dumps[store.LEGACY_DUMP_FILE] = legacy.stdout
    version, backend = None, None
    version_output = steps.get("iptables-version")
    if version_output is not None and version_output.status == 0:
        version, backend = parse_iptables_version(version_output.stdout.decode("utf-8", "replace"))
    elif version_output is not None and not (no_iptables and is_missing(version_output)):
        warnings.append(f"iptables --version: {_warning(version_output, node, runner)}")
    if version is None:
        version, backend = parse_iptables_version(save_text.partition("\n")[0])
    details = _addresses(steps, node, runner, warnings, notes)
    nft_meta = _nft(steps, node, runner, dumps, warnings, notes)
    conntrack_meta = _conntrack(steps, node, runner, dumps, warnings, notes, conntrack_cap)
    routes_meta = _routes(steps, node, runner, dumps, warnings)
    meta: dict[str, Any] = {
        "format": store.META_FORMAT,
        "node": node,
        "addresses": list(dict.fromkeys(d["address"] for d in details)),
        "interfaces": details,
        "iptables_version": version,
        "backend": backend,
        "nft": nft_meta,
        "conntrack": conntrack_meta,
        "routes": routes_meta,
        "files": sorted(dumps),
        "errors": warnings,
        "notes": notes,
    }
    return Gathered(dumps, meta, warnings, notes)


def _addresses(steps: dict[str, StepOutput], node: str, runner: Runner, warnings: list[str],
               notes: list[str]) -> list[dict[str, Any]]:
    ip = steps.get("addresses")
    if ip is not None and ip.status == 0:
        return parse_ip_addr(ip.stdout.decode("utf-8", "replace"))
    proc = steps.get("proc-addresses")
    if proc is not None and proc.stdout:
        notes.append("no `ip` command: addresses read from /proc/net/fib_trie and /proc/net/if_inet6")
        return parse_proc_addresses(proc.stdout.decode("utf-8", "replace"))
    if ip is not None:
        warnings.append(f"ip -o addr show: {_warning(ip, node, runner)}")
    return []


def _nft(steps: dict[str, StepOutput], node: str, runner: Runner, dumps: dict[str, bytes], warnings: list[str],
         notes: list[str]) -> dict[str, Any]:
    listing = steps.get("nft")
    version_output = steps.get("nft-version")
    version = None
    if version_output is not None and version_output.status == 0:
        match = re.search(r"v(\d[\w.]*)", version_output.stdout.decode("utf-8", "replace"))
        version = match.group(1) if match else None
    meta: dict[str, Any] = {"version": version, "status": "ok", "error": None}
    if listing is None:
        meta.update(status="missing", error="not run")
        return meta
    if is_missing(listing):
        meta["status"] = "missing"
        notes.append(f"no `nft` {_where(runner)}: {store.NFT_FILE} not collected")
        return meta
    if listing.status != 0:
        problem = _failure(listing, node, runner)
        meta.update(status="failed", error=problem)
        warnings.append(f"nft list ruleset: {problem}; {store.NFT_FILE} not saved")
        return meta
    shown = listing.stdout.decode("utf-8", "replace").lower()
    said = listing.stderr.lower()
    misread = [m for m in _NFT_MISREAD if m in shown] + (["error"] if "error" in said else [])
    dumps[store.NFT_FILE] = listing.stdout
    if misread:
        first = listing.stderr.splitlines()[0][:300] if listing.stderr else f"the listing shows {misread[0]!r}"
        problem = (f"nft{' v' + version if version else ''} could not read every rule ({first}); an nft older "
                   "than the one that wrote the rules misreads them — the listing may be wrong")
        meta.update(status="misread", error=problem)
        warnings.append(f"nft list ruleset: {problem}")
    return meta


def _conntrack(steps: dict[str, StepOutput], node: str, runner: Runner, dumps: dict[str, bytes],
               warnings: list[str], notes: list[str], cap: int) -> dict[str, Any]:
    meta: dict[str, Any] = {"status": "ok", "entries": {}, "capped": False, "max_entries": cap or None,
                            "error": None}
    outputs = [steps.get(f"conntrack-{family}") for family in ("ipv4", "ipv6")]
    if all(o is None or is_missing(o) for o in outputs):
        meta["status"] = "missing"
        hint = "; --api-method pod runs the node's own" if runner.via == "exec" else ""
        notes.append(f"no `conntrack` {_where(runner)}: {store.CONNTRACK_FILE} not collected{hint}")
        return meta
    parts: list[bytes] = []
    for family, output in zip(("ipv4", "ipv6"), outputs, strict=True):
        if output is None or is_missing(output):
            continue
        lines = output.stdout.splitlines(keepends=True)
        capped = cap > 0 and len(lines) > cap
        # A capped listing is stopped by `head` (SIGPIPE): that is no failure.
        if output.status != 0 and not (capped and output.status in (128 + signal.SIGPIPE, -signal.SIGPIPE)):
            problem = _failure(output, node, runner)
            meta.update(status="failed", error=problem)
            warnings.append(f"conntrack -L -f {family}: {problem}")
            continue
        if capped:
            lines = lines[:cap]
            meta["capped"] = True
        if lines and not lines[-1].endswith(b"\n"):
            lines[-1] += b"\n"
        meta["entries"][family] = len(lines)
        parts.extend(lines)
    if meta["entries"]:
        dumps[store.CONNTRACK_FILE] = b"".join(parts)
    if meta["capped"]:
        notes.append(f"{store.CONNTRACK_FILE} capped at {cap} entries per family (--conntrack-max-entries)")
    return meta


def _routes(steps: dict[str, StepOutput], node: str, runner: Runner, dumps: dict[str, bytes],
            warnings: list[str]) -> dict[str, Any]:
    """The node's routes (routes.txt), kept only when they read as routes (an analysis of the node reads them
    whenever they are there); a failure is named, and nothing else of the node is lost. A node without IPv6
    has no /proc/net/ipv6_route: its IPv4 routes are kept all the same."""
    output = steps.get("routes")
    if output is None:  # (a script that did not run it: nothing to say beyond the step that stopped it)
        return {"status": "missing", "error": None}
    from iptrace.errors import ParseError
    from iptrace.routes import parse_routes

    problem = None
    try:
        routes = parse_routes(output.stdout.decode("utf-8", "replace"), source=store.ROUTES_FILE)
    except ParseError as exc:
        routes, problem = None, f"not routes as /proc lists them ({exc})"
    if routes is not None and routes.v4 is None:
        problem = _failure(output, node, runner) if output.status != 0 else "/proc/net/route listed nothing"
    if problem is not None:
        warnings.append(f"cat /proc/net/route /proc/net/ipv6_route: {problem}")
        return {"status": "failed", "error": problem}
    dumps[store.ROUTES_FILE] = output.stdout
    return {"status": "ok", "error": None}


def _where(runner: Runner) -> str:
    return "in kube-proxy's image" if runner.via == "exec" else "on the node"


def is_missing(output: StepOutput) -> bool:
    """The command does not exist where it ran (sh, sudo, nsenter and the container runtime each say so
    differently)."""
    text = output.stderr.lower()
    return output.status == 127 or (output.status != 0 and (
        "command not found" in text or text.endswith("not found") or ": not found" in text
        or ("failed to execute" in text and "no such file" in text)
        or "executable file not found" in text))


def _failure(output: StepOutput, node: str, runner: Runner) -> str:
    if output.status > 128 and output.status - 128 in _SIGNALS:
        name = _SIGNALS[output.status - 128]
        detail = f": {output.stderr.splitlines()[-1][:300]}" if output.stderr else ""
        return f"crashed ({name}{detail})"
    return _strip_node(str(command_error(output, node, runner)), node)


_SIGNALS = {s.value: s.name for s in (signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGILL,
                                       signal.SIGFPE, signal.SIGKILL, signal.SIGTERM, signal.SIGPIPE)}

_SUDO_PASSWORD = ("a password is required", "a terminal is required", "no tty present", "askpass")
# `Defaults requiretty` in sudoers (the default on older RHEL/CentOS): sudo refuses a session without a terminal,
# which collect never asks for (-n and no pty, so that no password prompt can ever hang it).
_SUDO_TTY = ("must have a tty",)
_SUDO_DENIED = ("not in the sudoers", "is not allowed to execute", "may not run sudo", "not allowed to run")
_PERMISSION = ("permission denied", "you must be root", "operation not permitted")
_SUDO_MISSING = re.compile(r"\bsudo: (?:command )?not found")


def command_error(output: StepOutput, node: str, runner: Runner) -> CollectError | None:
    """None when the step succeeded, else a CollectError whose kind and hint fit who ran it."""
    if output.status == 0:
        return None
    command = " ".join(COMMANDS.get(output.step, (output.step,)))
    lowered = output.stderr.lower()
    detail = output.stderr.splitlines()[0][:300] if output.stderr else f"exit status {output.status}"
    sudo, user = runner.sudo, runner.user or "root"
    if sudo and _SUDO_MISSING.search(lowered):
        return CollectError(f"{node}: `sudo` not found on the node; drop --sudo or connect as root",
                            kind="command-missing", node=node)
    if sudo and any(s in lowered for s in _SUDO_TTY):
        return CollectError(f"{node}: sudo on the node insists on a terminal (`Defaults requiretty` in its sudoers: "
                            f"{detail}); exempt {user} (`Defaults:{user} !requiretty`)"
                            f"{'' if user == 'root' else ' or connect as root'}",
                            kind="permission", node=node)
    if sudo and any(s in lowered for s in _SUDO_PASSWORD):
        return CollectError(f"{node}: `sudo -n {command}` needs a password ({detail}); allow it without a "
                            f"password for {user} (NOPASSWD in sudoers) or connect as root",
                            kind="sudo-password", node=node)
    if sudo and any(s in lowered for s in _SUDO_DENIED):
        return CollectError(f"{node}: {user} may not run `{command}` with sudo ({detail})", kind="permission",
                            node=node)
    if is_missing(output):
        hint = ""
        if runner.via == "ssh" and not sudo and user != "root":
            hint = " (it is often only in root's PATH: try --sudo)"
        elif runner.via == "exec":
            hint = " in kube-proxy's image (--api-method pod runs the node's own)"
        return CollectError(f"{node}: `{command}` not found{'' if runner.via == 'exec' else ' on the node'}{hint}",
                            kind="command-missing", node=node)
    if any(s in lowered for s in _PERMISSION):
        hint = "; try --sudo" if runner.via == "ssh" and not sudo else ""
        return CollectError(f"{node}: `{command}` was denied ({detail}){hint}", kind="permission", node=node)
    return CollectError(f"{node}: `{command}` failed ({detail})", kind=runner.failure_kind, node=node)


def _warning(output: StepOutput, node: str, runner: Runner) -> str:
    return _strip_node(str(command_error(output, node, Runner(runner.via, False, runner.user))), node)


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


_IF_INET6_SCOPES = {0x00: "global", 0x10: "host", 0x20: "link", 0x40: "site"}


def parse_proc_addresses(text: str) -> list[dict[str, Any]]:
    """The node's addresses where there is no `ip` (kube-proxy's image): IPv4 from /proc/net/fib_trie (every
    `/32 host LOCAL` leaf; the interface is not shown there), IPv6 from /proc/net/if_inet6, in that order."""
    entries: list[dict[str, Any]] = []
    seen: set[str] = set()
    leaf: str | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|-- "):
            leaf = stripped[4:]
        elif leaf is not None and stripped.startswith("/32 host LOCAL"):
            if leaf not in seen:
                seen.add(leaf)
                entries.append({"interface": None, "family": "ipv4", "address": leaf, "prefixlen": None,
                                "scope": "host" if leaf.startswith("127.") else "global"})
        else:
            fields = stripped.split()
            if len(fields) == 6 and len(fields[0]) == 32 and all(len(f) <= 8 for f in fields[1:5]):
                try:
                    ip = ipaddress.IPv6Address(bytes.fromhex(fields[0]))
                    prefix, scope = int(fields[2], 16), int(fields[3], 16)
                except ValueError:
                    continue
                entries.append({"interface": fields[5], "family": "ipv6", "address": str(ip),
                                "prefixlen": prefix, "scope": _IF_INET6_SCOPES.get(scope, str(scope))})
    return entries
