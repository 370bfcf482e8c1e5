"""`audit`'s nodes analysed as a stream: each node read, parsed and analysed on its own — in `jobs` worker
processes (iptrace.collect.nodeprocs), each taking one node at a time — and only its digest
(iptrace.kube.digest.NodeResult) kept, so that memory does not grow with the nodes' rules. A worker reads a node's
rules with what reading its earlier nodes learnt (dataplanes.load's memo: nodes of one cluster share almost every
rule), and takes the digest of a Service port whose rules an earlier node wrote alike from that node
(iptrace.kube.carried). A node that cannot be read is a NodeResult with its error; it never stops the others.
Results come back in input order whatever the number of workers. The I/O side of `audit` (files, processes).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
import shlex
from array import array
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from iptrace.collect import store
from iptrace.collect.inputs import dump_input, dump_node_name, node_directories, node_input
from iptrace.errors import IptraceError
from iptrace.kube.carried import Carried
from iptrace.kube.compare import LOAD_ERROR, Finding
from iptrace.kube.digest import NodeResult, ShiftedLines, node_result

CONNTRACK_FILE = "conntrack.txt"
LOAD_WAIT = 30.0  # seconds a worker waits for another's load (Worker.loading) before loading anyway


@dataclass(frozen=True, slots=True)
class Source:
    """One node to audit: a collected node directory, a dump file, or a dump read already (stdin)."""

    name: str
    path: str | None = None
    directory: bool = False
    text: str | None = None
    node_ips: tuple[str, ...] = ()


def node_name(node_dir: Path) -> str:
    """The name an audit gives a collected node (collect.store: meta.json's `node`, else the directory's)."""
    meta_path = node_dir / store.META_FILE
    if not meta_path.is_file():  # (nor a FIFO, whose reading would block: read_meta names it)
        return node_dir.name
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return node_dir.name
    name = meta.get("node") if isinstance(meta, dict) else None
    return name if isinstance(name, str) else node_dir.name


def sources(paths: Sequence[str], node_ips: Sequence[str] = (), *, stdin: Callable[[], tuple[str, str]] | None = None
            ) -> list[Source]:
    """Every node of `paths`: each collection directory's nodes (sorted), each dump file as one node (named
    after the file), `-` as the node "stdin" (read through `stdin`). A node given twice (a node directory and
    the collection holding it, as `audit snap/node-1 snap`) is audited once, where it first appears. Raises
    InputError for a directory that holds no node."""
    out: list[Source] = []
    seen: set[str] = set()

    def add(source: Source) -> None:
        where = os.path.realpath(source.path) if source.path and source.path != "<stdin>" else None
        if where is None or where not in seen:
            out.append(source)
            if where is not None:
                seen.add(where)

    for path in paths:
        p = Path(path)
        if path != "-" and p.is_dir():
            for d in node_directories(p):
                add(Source(node_name(d), str(d), True))
        elif path == "-":
            text = stdin() if stdin is not None else None
            out.append(Source("stdin", "<stdin>", False, text[0] if text else None, tuple(node_ips)))
        else:
            add(Source(dump_node_name(path), path, False, None, tuple(node_ips)))
    return out


# A worker's peak memory: an interpreter with iptrace loaded, and about this many bytes per byte of the dumps of
# the node it analyses (measured: auditing 100 nodes of 5,000 Services × 10 endpoints, 25.5 MB dumps, a worker
# peaks at ~330 MB with the digests it carries (iptrace.kube.carried); one node's 14.6 MB nftables listing of the
# same cluster, ~205 MB).
WORKER_BYTES = 60 * 2**20
BYTES_PER_DUMP_BYTE = 11
_DEFLATE_RATIO = 1032
_DUMP_FILES = (store.DUMP_FILE, store.IP6_DUMP_FILE, store.LEGACY_DUMP_FILE, store.NFT_FILE)


def dump_bytes(source: Source) -> int:
    """How many bytes of rules a worker reads for this node (a gzip file's text, by its trailer): every dump of a
    node directory it may load, or the dump file."""
    if source.text is not None:
        return len(source.text)
    if source.path is None or source.path == "-":
        return 0
    path = Path(source.path)
    files = [path / name for name in _DUMP_FILES] if source.directory else [path]
    total = 0
    for f in files:
        if not f.is_file():
            continue  # (not there, or a FIFO that opening would wait on: the worker says what it is)
        try:
            with f.open("rb") as fh:
                size = fh.seek(0, 2)
                if size >= 18:
                    fh.seek(0)
                    if fh.read(2) == b"\x1f\x8b":
                        fh.seek(-4, 2)
                        # (ISIZE: the text's size mod 2^32; a file cut short ends in any 4 bytes, up to 4 GB, but
                        # deflate makes no text more than 1032 times its size)
                        size = max(size, min(int.from_bytes(fh.read(4), "little"), size * _DEFLATE_RATIO))
        except OSError:
            continue  # (a file that is not there, or not readable: the worker says so)
        total += size
    return total


def available_memory() -> int | None:
    """MemAvailable of /proc/meminfo in bytes, None where there is none."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def default_jobs(nodes: Sequence[Source], cpus: int, available: int | None) -> tuple[int, str | None]:
    """`audit`'s worker count when --jobs is not given: one per CPU, but no more than the nodes, and no more than
    fit in four fifths of the `available` memory with the biggest node's dumps (workers that do not fit would
    swap or be killed). With a note for stderr when memory is what limits them."""
    jobs = max(1, min(cpus, len(nodes)))
    if available is None or jobs == 1:
        return jobs, None
    need = WORKER_BYTES + BYTES_PER_DUMP_BYTE * max(dump_bytes(n) for n in nodes)
    fit = max(1, int(available * 0.8) // need)
    if fit >= jobs:
        return jobs, None
    return fit, (f"note: auditing with {fit} worker process{'es' if fit > 1 else ''}, not one per CPU ({cpus}): "
                 f"each may need ~{need / 2**20:,.0f} MB for these nodes' rules and "
                 f"{available / 2**30:.1f} GB of memory are available; --jobs N chooses")


class Worker:
    """Analyses nodes one after the other, reading each with what reading the others learnt (`memo`)."""

    def __init__(self, cluster: Any, lenient: bool, pictures: bool, memo: bool, load_lock: Any = None) -> None:
        self.cluster = cluster
        self.lenient = lenient
        self.pictures = pictures
        # What loading a node learnt that helps read the next (dataplanes.load's memo): nodes of one cluster
        # share almost every rule.
        self.load_memo: dict[str, Any] | None = {} if memo else None
        # Service port digests of earlier nodes, by content key (iptrace.kube.carried): likewise.
        self.carried = Carried() if memo else None
        self.intern: dict[Any, Any] = {}
        self.load_lock = load_lock  # shared by the workers of one audit (see loading)
        self.loads = 0  # (nodes this worker began to load)

    @contextmanager
    def loading(self) -> Iterator[None]:
        """Reading and parsing a node's dump, one worker at a time: the text (and its bytes while decoded) beside
        the rules being made are a worker's brief peak, ~50 MB above what it holds between nodes, and the
        workers' peaks add up when they meet. Only a smoothing: waited for LOAD_WAIT seconds at most. Not for a
        worker's first node: it holds nothing yet between nodes (no memo, no digests), so its peak is below a later
        node's, and the workers all start at once: each would wait for the others' first loads (~1.7 s a worker
        at 5,000 Services, measured as the second worker's first wait)."""
        lock = self.load_lock if self.loads else None
        self.loads += 1
        got = lock is not None and lock.acquire(timeout=LOAD_WAIT)
        try:
            yield
        finally:
            if got:
                lock.release()

    def run(self, source: Source) -> NodeResult:
        try:
            return self._run(source)
        except IptraceError as exc:
            return NodeResult(source.name, str(exc), source.node_ips)
        finally:
            import gc

            gc.collect()  # the node's rules are garbage now: give their memory back before the next node
            if len(self.intern) > 200_000:
                self.intern.clear()
            # (and the pages malloc's heap holds free between what lives on, ~15 MB after a 5,000-Service node: the
            # next node's dump text and its bytes are mapped on their own, above what the heap keeps; ~2 ms)
            _heap_returned()
            # What survives a node (the load memo, interned digests, per-process caches) lives on: frozen,
            # later collects do not scan it again (it is freed by reference counting when dropped; the serial
            # path unfreezes it when the audit ends).
            gc.freeze()

    def _run(self, source: Source) -> NodeResult:
        from iptrace.dumpfile import read_dump

        if not source.directory:
            with self.loading():
                if source.text is not None:
                    text, where = source.text, source.path or "<stdin>"
                else:
                    text, where = read_dump(source.path or "")
                node = dump_input(text, where, node_ips=source.node_ips, cluster=self.cluster,
                                  lenient=self.lenient, name=source.name, memo=self.load_memo)
                del text
            return self._result(node, explain_at=explain_at(source))
        path = Path(source.path or "")
        with self.loading():
            snapshot = store.read_node_dir(path)
            node = node_input(snapshot, cluster=self.cluster, lenient=self.lenient, memo=self.load_memo)
            partial = store.conntrack_notes(path, snapshot.meta)
            del snapshot
        extra: list[Finding] = []
        notes: list[str] = []
        if node.analyses and (path / CONNTRACK_FILE).is_file():
            extra, notes = conntrack(node.name, path / CONNTRACK_FILE, node.analyses, lenient=self.lenient)
            notes += partial
        return self._result(node, extra, notes, explain_at(source))

    def _result(self, node: Any, extra: Sequence[Finding] = (), notes: Sequence[str] = (),
                explain_at: str | None = None) -> NodeResult:
        carried = self.carried if self.cluster is None and not self.pictures else None
        if carried is None:
            _tracing_done(node)  # (carried: only the ports no earlier node had are traced, one at a time)
        return node_result(node, self.cluster, pictures=self.pictures, intern=self.intern, extra=extra, notes=notes,
                           carried=carried, explain_at=explain_at)


def explain_at(source: Source) -> str | None:
    """How `iptrace explain` reads the node's rules as the audit does (NodeResult.explain_at): its directory, or
    its dump file with the addresses the audit was given for it; None for stdin."""
    if source.path is None or source.text is not None:
        return None
    return " ".join([shlex.quote(source.path), *(f"--node-ip {ip}" for ip in source.node_ips)])


def _tracing_done(node: Any) -> None:
    """Each family's view built and its tracer let go before the digest (Analysis.tracing_done), which reads the
    views and the rules only: the worker's peak is then its view's, not its view's and digest's together."""
    for analysis in node.analyses.values():
        analysis.tracing_done()


def conntrack(name: str, path: Path, analyses: Any, *, lenient: bool) -> tuple[list[Finding], list[str]]:
    """A node's stale-conntrack findings (a table that cannot be read is a load-error), and the notes reading it
    made (lines skipped with --lenient)."""
    from iptrace.conntrack import load, read_file
    from iptrace.conntrack.table import skipped_notes
    from iptrace.kube.conntrack import conntrack_findings

    try:
        data, where = read_file(str(path))
        table = load(data, source=where, lenient=lenient)
    except IptraceError as exc:
        return [Finding(LOAD_ERROR, "error", name, None, f"{name}: its conntrack table could not be read", str(exc),
                        "collect this node again (or audit with --lenient to skip the bad lines)")], []
    # The same tracers the node's Service view was built with: one engine per dataplane.
    tracers = {family: a.tracer for family, a in analyses.items()}
    hint = next(iter(analyses.values())).layout.proxy.version_hint
    return conntrack_findings(name, table, tracers, version_hint=hint), skipped_notes(where, table)


# ------------------------------------------------------------------------------------------------ processes

# glibc's mallopt parameters, and the size from which a block is mapped on its own (and unmapped when freed).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MAPPED = 1 << 20


def _big_blocks_returned() -> None:
    """In a process that analyses node after node: glibc's malloc maps every block of _MAPPED bytes or more on its
    own, and gives back the top of its heap once that much is free there. Left to itself, it raises that threshold
    to the biggest mapped block freed (a node's dump text, ~25 MB) and keeps twice as much free on its heap; a
    worker then holds ~20 MB more between nodes (the time is the same, measured). Nothing where there is no glibc."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        mallopt, trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, _MAPPED)
    mallopt(_M_TRIM_THRESHOLD, _MAPPED)
    _TRIM[:] = [trim]


_TRIM: list[Callable[[int], int]] = []  # glibc's malloc_trim, once _big_blocks_returned has found it


def _heap_returned() -> None:
    """Every page free in the heap given back, not only its top (glibc's malloc_trim; nothing without glibc): the
    parent's, after a result whose packed digests were known (_Interner.kept drops ~11 MB of them); a worker's, after
    each node (Worker.run)."""
    for trim in _TRIM:
        trim(0)


_WORKER: Worker | None = None


class _Sender:
    """A worker's record of the Service port digests it has sent: each crosses to the parent once, and later
    results name it by its number in this worker's sending order (nodes share almost all of them: a result of a
    5,000-Service node is then a few hundred KB instead of ~12 MB, which the parent had to unpickle and then
    mostly drop, the churn leaving ~30 MB a node of holes in its heap). A digest crosses packed (_packed), so that
    the parent unpickles only those no other worker sent before: each worker's first node sends them all."""

    LIMIT = 300_000  # digests numbered before both sides start again (`reset`)

    def __init__(self) -> None:
        # id of a digest sent → (its number, the digest, which the entry keeps alive so that its id is not
        # another's). By identity, not equality: the worker's digests are interned (Worker.intern), so an equal
        # one is the same object (an equal copy made after Worker.intern started again is sent once more, and
        # the parent's _Interner keeps one); hashing a digest is a Python call through its whole structure.
        self.sent: dict[int, tuple[int, Any]] = {}

    def encode(self, result: NodeResult) -> tuple[bool, NodeResult]:
        """(whether the numbering starts again, the result with every digest sent before as its number)."""
        reset = len(self.sent) > self.LIMIT
        if reset:
            self.sent.clear()
        sent = self.sent
        families = []
        for fam in result.families:
            ports: list[Any] = []
            for p in fam.ports:
                known = sent.get(id(p))
                if known is None:
                    sent[id(p)] = (len(sent), p)
                    ports.append(_packed(p))
                else:
                    ports.append(known[0])
            families.append(replace(fam, ports=tuple(ports)))
        return reset, replace(result, families=tuple(families))


_KEY_BYTES = 16  # (a packed digest's key: blake2b of its pickle)


def _packed(digest: Any) -> bytes:
    """A digest as it crosses to the parent: its pickle after a key of it. Equal digests of two workers pickle
    alike, so the parent knows one sent before by its key and drops the bytes (the parent's heap gives back
    what a bytes object held; a digest unpickled and then dropped as a duplicate leaves holes among the kept
    ones, ~30 MB of a 5,000-Service node's)."""
    data = pickle.dumps(digest, protocol=pickle.HIGHEST_PROTOCOL)
    return hashlib.blake2b(data, digest_size=_KEY_BYTES).digest() + data


_SENDER: _Sender | None = None


def _init(cluster: Any, lenient: bool, pictures: bool, memo: bool, load_lock: Any) -> None:
    global _WORKER, _SENDER
    import gc

    gc.disable()  # a node's analysis builds ~10^6 acyclic objects; Worker.run collects once per node
    _big_blocks_returned()
    _WORKER = Worker(cluster, lenient, pictures, memo, load_lock)
    _SENDER = _Sender()


def _run(item: tuple[int, Source]) -> tuple[int, int, bool, NodeResult]:
    """(index, this worker's id, _Sender.encode's reset and result) of one node."""
    import os

    assert _WORKER is not None and _SENDER is not None
    reset, result = _SENDER.encode(_WORKER.run(item[1]))
    return item[0], os.getpid(), reset, result


class _Interner:
    """Keeps one copy of each digest (and picture) the workers send: nodes share almost all of them; and each
    node's lines as the first node's of its family moved (ShiftedLines), where they lie so: the only thing the
    parent keeps per node (~0.3 MB a 5,000-Service node as an array, ~30 MB at 100 nodes, ~3 so). A digest a
    worker sent packed (_packed) is kept so, as its bytes, until the audit's nodes are all in (`unpacked`): ~2 KB
    instead of ~6 KB of objects, while the workers hold their nodes beside this process."""

    def __init__(self) -> None:
        self.seen: dict[Any, Any] = {}
        self.packed: dict[bytes, bytes] = {}  # a packed digest's key (_packed) → the packed digest kept
        self.bases: dict[str, Any] = {}  # family → the lines others are kept as moved (ShiftedLines.base)

    def kept(self, data: bytes) -> bytes:
        """The packed digest kept for `data`: the first one any worker sent with its key."""
        return self.packed.setdefault(data[:_KEY_BYTES], data)

    def __call__(self, result: NodeResult, sent: list[Any] | None = None) -> NodeResult:
        """`sent`: the digests the worker that made `result` sent before, in order (_Sender), when it names them
        by number (its new ones packed: _packed); its new ones are added. The ports of a result so sent are
        packed digests until `unpacked`."""
        seen = self.seen
        families = []
        for fam in result.families:
            ports: tuple[Any, ...]
            if sent is None:
                ports = tuple(seen.setdefault(p, p) for p in fam.ports)
            else:
                got = []
                for p in fam.ports:
                    if isinstance(p, int):
                        p = sent[p]
                    else:
                        p = self.kept(p)
                        sent.append(p)
                    got.append(p)
                ports = tuple(got)
            pictures = None if fam.pictures is None else tuple(
                (k, seen.setdefault(v, v)) for k, v in fam.pictures)
            lines = fam.lines
            if isinstance(lines, array):
                base = self.bases.setdefault(fam.family, lines)
                lines = lines if base is lines else ShiftedLines.of(lines, base) or lines
            families.append(replace(fam, ports=ports, lines=lines, pictures=pictures))
        return replace(result, families=tuple(families))

    def unpacked(self, results: Sequence[NodeResult]) -> list[NodeResult]:
        """`results` with every packed digest unpickled, once for all the nodes that have it (one copy of equal
        digests kept); the packed ones are let go."""
        seen = self.seen
        digests: dict[bytes, Any] = {}
        for key, data in self.packed.items():
            digest = pickle.loads(memoryview(data)[_KEY_BYTES:])
            digests[key] = seen.setdefault(digest, digest)
        self.packed.clear()
        out = []
        for r in results:
            if any(type(p) is bytes for f in r.families for p in f.ports[:1]):
                r = replace(r, families=tuple(replace(f, ports=tuple([
                    digests[p[:_KEY_BYTES]] if type(p) is bytes else p for p in f.ports])) for f in r.families))
            out.append(r)
        return out


# What the caller gives analyse_nodes to run each node's analysis through: the result, or the exception (a bug)
# the analysis raised, returned rather than raised (the CLI's error boundary; a library layer catches no bug).
Contain = Callable[[Callable[[], NodeResult]], "NodeResult | Exception"]


def analyse_nodes(nodes: Sequence[Source], *, cluster: Any = None, lenient: bool = False, pictures: bool = False,
                  jobs: int = 1, memo: bool = True, progress: Callable[[NodeResult], None] | None = None,
                  contain: Contain | None = None) -> list[NodeResult]:
    """Every node's NodeResult, in the order of `nodes`. `jobs` > 1: that many worker processes (fresh ones:
    the parent holds no rules), each analysing one node at a time; a node whose worker died is a NodeResult with
    that error (iptrace.collect.nodeprocs). `progress` is called as each node is done, with its result (whose
    digests may be packed still: its name and error are what it is for). A bug met on a node is raised, or with
    `contain`, that node's NodeResult naming it (the other nodes analysed as without it), whatever `jobs`."""
    results: list[NodeResult | None] = [None] * len(nodes)
    keep = _Interner()
    for i, result, sent in _results(nodes, cluster, lenient, pictures, jobs, memo, contain):
        result = results[i] = keep(result, sent)
        if sent is not None:
            _heap_returned()
        if progress is not None:
            progress(result)
    return keep.unpacked([r for r in results if r is not None])


def _bug(source: Source, exc: Exception) -> NodeResult:
    """The result of a node whose analysis met a bug, in the CLI's words for an internal error."""
    return NodeResult(source.name, f"internal error while analysing this node ({type(exc).__name__}: {exc}); please "
                      "report it with the input that caused it (IPTRACE_DEBUG=1 shows the traceback)", source.node_ips)


def _raised(exc: Exception) -> NodeResult:
    """A worker's analysis that raised `exc`, as `contain` runs it."""
    raise exc


def _results(nodes: Sequence[Source], cluster: Any, lenient: bool, pictures: bool, jobs: int,
             memo: bool, contain: Contain | None) -> Iterator[tuple[int, NodeResult, list[Any] | None]]:
    """(index, result, the digests its worker sent before when the result names them by number) of each node."""
    if len(nodes) > 1:
        _big_blocks_returned()  # (this process reads node after node too, or their results)
    if jobs <= 1 or len(nodes) <= 1:
        import gc

        # (one node: no other node reads with its memo, so it is not kept)
        worker = Worker(cluster, lenient, pictures, memo and len(nodes) > 1)
        try:
            for i, source in enumerate(nodes):
                if contain is None:
                    yield i, worker.run(source), None
                    continue
                got = contain(functools.partial(worker.run, source))
                if isinstance(got, Exception):
                    # (what the node left in the worker's memo half made is not read again, as a new worker
                    # process starts without it)
                    worker = Worker(cluster, lenient, pictures, memo)
                    got = _bug(source, got)
                yield i, got, None
        finally:
            gc.unfreeze()  # this process's own objects: collectable again once the audit is over
        return
    from iptrace.collect.nodeprocs import answers

    # A worker's results come in the order it sent them (one pipe), so its numbering is followed as sent.
    received: dict[int, list[Any]] = {}
    for i, answer, died in answers(list(enumerate(nodes)), (cluster, lenient, pictures, memo), jobs):
        if answer is None:
            source = nodes[i]
            if isinstance(died, Exception):
                if contain is None:
                    raise died
                got = contain(functools.partial(_raised, died))
                yield i, _bug(source, got) if isinstance(got, Exception) else got, None
                continue
            yield i, NodeResult(source.name, f"the worker process analysing it {died}; the other nodes' results "
                                "are kept (audit this node alone to see why)", source.node_ips), None
            continue
        _i, worker_id, reset, result = answer
        sent = received.setdefault(worker_id, [])
        if reset:
            sent.clear()
        yield i, result, sent
