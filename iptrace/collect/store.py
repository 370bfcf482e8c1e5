"""The on-disk layout of a collection: `DIR/NODE/{iptables-save.txt, ip6tables-save.txt,
iptables-legacy-save.txt, nft-ruleset.txt, conntrack.txt, routes.txt, meta.json}`. Writes are atomic and private
(0600 files in 0700 directories, because dumps describe the cluster's topology); reads never touch the network.

Each file holds a command's output byte for byte, whichever way it was collected (SSH or the Kubernetes API):
- `iptables-save.txt`, `ip6tables-save.txt`: `iptables-save`, `ip6tables-save`; `iptables-legacy-save.txt`
  only where iptables-nft warned that legacy tables are present.
- `nft-ruleset.txt`: `nft list ruleset` (never `--terse`: map elements hold kube-proxy's Services), where the
  node has `nft` and it listed without failing. meta.json `nft.status` says `ok`, `missing`, `failed` (not
  saved) or `misread` (saved, but nft said it could not decode some rules).
- `conntrack.txt`: the plain output of `conntrack -L -f ipv4` followed by that of `conntrack -L -f ipv6`, one
  entry a line, unchanged (no headers, no separator; the summary line conntrack prints goes to stderr and is
  not kept). A line's family is told by its addresses (`src=`/`dst=` hold `:` in IPv6 entries only). With
  `--conntrack-max-entries N` each family keeps its first N entries; meta.json `conntrack` then says
  `"capped": true` and `entries` counts what was kept per family.
- `routes.txt`: `cat /proc/net/route /proc/net/ipv6_route` (iptrace.routes reads it), where it read as routes;
  meta.json `routes.status` says `ok` or `failed` (not saved: `error` says why). A node collected before has
  none: its output interfaces stay unknown.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import stat
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from iptrace.dataplane import ip_address
from iptrace.errors import InputError
from iptrace.text import not_text

META_FILE = "meta.json"
DUMP_FILE = "iptables-save.txt"
IP6_DUMP_FILE = "ip6tables-save.txt"
LEGACY_DUMP_FILE = "iptables-legacy-save.txt"
NFT_FILE = "nft-ruleset.txt"
CONNTRACK_FILE = "conntrack.txt"
ROUTES_FILE = "routes.txt"
DUMP_FILES = (DUMP_FILE, IP6_DUMP_FILE, LEGACY_DUMP_FILE, NFT_FILE, CONNTRACK_FILE, ROUTES_FILE)
# Bumped when meta.json changes incompatibly; readers accept what they know.
META_FORMAT = 1

FILE_MODE = 0o600
DIR_MODE = 0o700


@dataclass(frozen=True, slots=True)
class NodeSnapshot:
    """One node's collected rules, as read back from `DIR/NODE`. The optional files are None where they were
    not collected; their paths are kept for evidence (`file:line`)."""

    node: str
    dump_path: Path
    dump_text: str
    ip6_dump_text: str | None
    legacy_dump_text: str | None
    addresses: tuple[str, ...]
    meta: dict[str, Any] = field(compare=False)
    nft_ruleset_text: str | None = None
    nft_ruleset_path: Path | None = None
    conntrack_text: str | None = None
    conntrack_path: Path | None = None


def is_node_dir(path: Path) -> bool:
    """True when `path` looks like one node of a collection: it holds the node's iptables-save.txt or, on a node
    in nftables mode saved by hand, only its nft-ruleset.txt (meta.json is optional, as read_node_dir reads it)."""
    return path.is_dir() and (_present(path / DUMP_FILE) or (path / NFT_FILE).is_file())


def read_node_dir(path: Path) -> NodeSnapshot:
    """Read `DIR/NODE`; raises InputError naming the file when something is missing or unreadable."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{path}: not a directory; expected a node directory written by `iptrace collect`")
    meta_path = path / META_FILE
    dump_path = path / DUMP_FILE
    if not dump_path.is_file() and (path / NFT_FILE).is_file():
        dump_path = path / NFT_FILE  # (a node in nftables mode whose ruleset alone was saved: it is the dump)
    if _present(dump_path) and not dump_path.is_file():  # (a directory, a FIFO, a dangling link: no "missing")
        what = ("a directory" if dump_path.is_dir() else "a dangling symbolic link" if not dump_path.exists() else
                _KINDS.get(stat.S_IFMT(dump_path.stat().st_mode), "a special file"))
        raise InputError(f"{dump_path}: {what}, not a file; expected the node's rules there, as `iptrace collect` "
                         "saves them")
    if not dump_path.is_file():
        raise InputError(f"{dump_path}: missing; {path} is not a collected node directory "
                         f"(run `iptrace collect` again for this node, or save its rules there as {DUMP_FILE} "
                         f"or {NFT_FILE})")
    meta = read_meta(path)
    addresses = meta.get("addresses", [])
    if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
        raise InputError(f"{meta_path}: `addresses` must be a list of strings; collect this node again")
    for address in addresses:
        try:
            ip_address(address.strip("[]"))  # (as kube.sources.of_family reads them)
        except ValueError:
            raise InputError(f"{meta_path}: `addresses` holds {address!r}, not an IP address; collect this node "
                             "again") from None
    node = meta.get("node") if isinstance(meta.get("node"), str) else path.name
    return NodeSnapshot(
        node=node,
        dump_path=dump_path,
        dump_text=_read_text(dump_path, text_only=True),
        ip6_dump_text=_read_optional(path / IP6_DUMP_FILE),
        legacy_dump_text=_read_optional(path / LEGACY_DUMP_FILE),
        addresses=tuple(addresses),
        meta=meta,
        nft_ruleset_text=_read_optional(path / NFT_FILE),
        nft_ruleset_path=path / NFT_FILE if (path / NFT_FILE).is_file() else None,
        conntrack_text=_read_optional(path / CONNTRACK_FILE),
        conntrack_path=path / CONNTRACK_FILE if (path / CONNTRACK_FILE).is_file() else None,
    )


def conntrack_notes(node_dir: Path, meta: dict[str, Any]) -> list[str]:
    """Notes when the node's conntrack.txt holds only part of its table: the first entries of each family
    (collect's --conntrack-max-entries), or one family only (the other's `conntrack -L` failed). The flows left
    out were not checked, so a stale one among them goes unsaid."""
    table = meta.get("conntrack")
    if not isinstance(table, dict):
        return []
    notes = []
    if table.get("capped") is True:
        notes.append(f"note: {node_dir / CONNTRACK_FILE}: holds only the first {table.get('max_entries')} conntrack "
                     "entries of each family (collect --conntrack-max-entries); the flows beyond them were not checked")
    entries = table.get("entries")
    if table.get("status") == "failed" and isinstance(entries, dict) and entries:
        missing = [f for f in ("ipv4", "ipv6") if f not in entries]
        if missing:
            said = table.get("error")
            said = said if isinstance(said, str) else f"`conntrack -L -f {missing[0]}` failed"
            names = " or ".join(f.replace("ipv", "IPv") for f in missing)
            notes.append(f"note: {node_dir / CONNTRACK_FILE}: holds no {names} entries: {said} when the node was "
                         "collected; those flows were not checked")
    return notes


def mark_failed(out_dir: Path, node: str, error: str) -> None:
    """A new collection of a node failed: its directory keeps the earlier collection's files (never half of a new
    one), and its meta.json now says so (`failed_attempt`: when, and why), so that whoever reads the directory
    later is told these rules are older than the attempt. Nothing when the node has no earlier collection or its
    meta.json cannot be read or written (the failure itself is reported by the collector)."""
    path = Path(out_dir) / node
    if "/" in node or node in (".", "..") or not (path / META_FILE).is_file():
        return
    with contextlib.suppress(OSError, InputError):
        meta = read_meta(path)
        meta["failed_attempt"] = {"at": datetime.now(UTC).isoformat(timespec="seconds"),
                                  "error": error.removeprefix(f"{node}: ")}
        write_atomic(path / META_FILE, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())


def failed_attempt_note(node: str, meta: dict[str, Any]) -> str | None:
    """What a node's meta.json says of a later collection that failed (mark_failed), for readers of the
    directory: the files are older than that attempt."""
    attempt = meta.get("failed_attempt")
    if not isinstance(attempt, dict):
        return None
    at, error, before = attempt.get("at"), attempt.get("error"), meta.get("collected_at")
    return (f"{node}: its last collection{f' ({at})' if isinstance(at, str) else ''} failed"
            f"{f' ({error})' if isinstance(error, str) else ''}; its files are from an earlier one"
            f"{f' ({before})' if isinstance(before, str) else ''} and may no longer be the node's rules")


def read_meta(node_dir: Path) -> dict[str, Any]:
    """A node directory's meta.json ({} when there is none); raises InputError when it cannot be read."""
    meta_path = Path(node_dir) / META_FILE
    if not _present(meta_path):
        return {}
    try:
        _check_regular(meta_path)
        loaded = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{meta_path}:{exc.lineno}:{exc.colno}: unreadable metadata ({exc.msg}); collect this node "
                         "again") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{meta_path}: unreadable metadata (not UTF-8 text: byte {exc.object[exc.start]:#04x} at "
                         f"offset {exc.start}); collect this node again") from None
    except OSError as exc:
        raise InputError(f"{meta_path}: unreadable metadata ({exc.strerror or exc}); collect this node again") from None
    if not isinstance(loaded, dict):
        raise InputError(f"{meta_path}: metadata is not a JSON object; collect this node again")
    return loaded


def list_snapshot(directory: Path) -> list[NodeSnapshot]:
    """Every node directory under a collection directory, sorted by directory name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{directory}: not a directory; expected the --out directory of `iptrace collect`")
    return [read_node_dir(child) for child in sorted(directory.iterdir(), key=lambda p: p.name)
            if not child.name.startswith(".") and is_node_dir(child)]


def _read_text(path: Path, *, text_only: bool = False) -> str:
    """A node's file as text (universal newlines, as read_text gives it); gzip-compressed by hand, decompressed.
    Raises InputError for what is not a saved output: a FIFO or device would block or never end; with
    `text_only` (the node's main dump, without which nothing of the node is read), data that is no text. (An
    extra dump or conntrack table is read as it is: its reader's error is then a warning of that file only.)"""
    try:
        _check_regular(path)
        with path.open("rb") as f:
            head = f.read(8192)
        gzipped = head[:2] == b"\x1f\x8b"
        if not gzipped:
            kind = not_text(head) if text_only else None
            if kind is not None:
                raise InputError(f"{path}: {kind}; expected the text `iptrace collect` saves there")
            return path.read_text(encoding="utf-8", errors="surrogateescape")
        data = gzip.decompress(path.read_bytes())
    except (EOFError, gzip.BadGzipFile) as exc:
        raise InputError(f"{path}: a gzip file that cannot be decompressed ({exc}): it looks cut short; "
                         "collect this node again") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from exc
    return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="surrogateescape").read()


def _check_regular(path: Path) -> None:
    """Raises InputError when `path` is a FIFO, socket or device (a directory is left to open, which names it)."""
    mode = path.stat().st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise InputError(f"{path}: not a regular file ({_KINDS.get(stat.S_IFMT(mode), 'a special file')}); "
                         "expected a file saved by `iptrace collect`")


_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device"}


def _present(path: Path) -> bool:
    """An optional file is there: a file, or something in its place that reading then names (a directory is no
    file to skip silently)."""
    return path.exists() or path.is_symlink()


def _read_optional(path: Path) -> str | None:
    return _read_text(path) if _present(path) else None


def ensure_private_dir(path: Path, *, tighten: bool = True) -> None:
    """Create `path` (and parents) as 0700. `tighten` also chmods an existing directory: right for a node's
    own directory, wrong for an --out directory the user made (it may be `.`)."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if tighten:
        os.chmod(path, DIR_MODE)


def write_atomic(path: Path, data: bytes) -> None:
    """Write through a temporary file in the same directory and os.replace it, so a reader (or a crash)
    sees either the old file or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_node_dir(path: Path, dumps: dict[str, bytes], meta: dict[str, Any]) -> list[Path]:
    """Replace a node's files with a new, complete collection. Dumps first and meta.json last, so meta.json
    (the list of files) never names a file that is not there yet; stale dumps of the previous collection
    (e.g. a legacy dump, or an nft ruleset that failed this time) are removed at the end."""
    ensure_private_dir(path)
    written: list[Path] = []
    for name, data in dumps.items():
        if name not in DUMP_FILES:
            raise ValueError(f"unexpected dump file name {name!r}")
        target = path / name
        write_atomic(target, data)
        written.append(target)
    meta_path = path / META_FILE
    write_atomic(meta_path, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    written.append(meta_path)
    for name in DUMP_FILES:
        if name not in dumps:
            with contextlib.suppress(FileNotFoundError):
                (path / name).unlink()
    return written
