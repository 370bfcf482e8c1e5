"""Service port views built from the view of an earlier port of the same *shape*, without tracing.

kube-proxy writes thousands of Service ports as the same rules but for addresses, ports, chain names and lines.
A dataplane that can say so (`Tracer.port_shape(calls, chains)`, optional: iptrace.iptables.portshape and
iptrace.nftables.portshape) gives the shape of the traces a port's view asks for: a key, and the port's addresses,
ports, own chains and lines by number (for input without lines, nft -j, its rules' handles: each one's RuleAt).
Ports with equal keys have the same traces but for those values, so the view of the second is the view of the
first with each value put back by its number: every endpoint address and port, chain crossed and rule line (or
handle) of the traced fields; the rest (identity, ways in, lines, notes of the layout) is the port's own layout,
as `_Builder.service` writes it. A view is kept only when every such value of it is one of its shape's (else it is
built, not kept). An audit's worker also shares views between its nodes whose contexts are the same
(ShapeMemo.share). Dataplane-free and pure (a cache per ViewBuilder, and one per process for those shared).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, NamedTuple

from iptrace.dataplane import RuleAt
from iptrace.kube import view as views  # (read when used: the view module builds its ports with this one)
from iptrace.kube.names import split_destination
from iptrace.layout import HEALTH_CHECK, ServicePortLayout, WayIn

# Views kept per builder (a node has a few shapes per endpoint count and way-in kinds; a cap for the odd dump).
LIMIT = 4096
# Off only to check that shapes change nothing (tests).
ENABLED = True
# Ports built before shapes are asked for: a question about a few ports (explain, a filtered `services`) would pay
# for reading the dispatch chains' rules (Tracer.port_shape: ~35 ms at 5,000 Services) and reuse nothing.
AFTER = 8
# Views kept for the nodes one process reads after (ShapeMemo.share: an audit's worker), by the node's context and
# shape key: a later node of a fleet traces the ~190 ports no earlier node gave a digest for (their endpoints are
# its own pods'), of ~50 shapes, most of them an earlier node's. ~10 KB each with its key (a 5,000-Service fleet's
# first node keeps ~100, each later one ~20-30): started again when full.
_SHARED: dict[tuple[Hashable, tuple[Any, ...]], tuple[Any, ...]] = {}
SHARED_LIMIT = 1024


class _Values:
    """A kept view's values as numbers: a line of the shape (-1 - its number) or another (itself), an own chain
    (its number) or another (its name), addresses and ports (their numbers)."""

    __slots__ = ("addresses", "chains", "lines", "ports", "seen", "texts")

    def __init__(self, shape: Any) -> None:
        self.seen: dict[int, tuple[Any, Any]] = {}  # id(reaches) → (them, as numbers)
        self.addresses = {a: i for i, a in enumerate(shape.addresses)}
        self.ports = {p: i for i, p in enumerate(shape.ports)}
        self.chains = {c: i for i, c in enumerate(shape.chains)}
        self.lines = {line: i for i, line in enumerate(shape.lines)}
        self.texts = (*shape.addresses, *shape.chains)

    def line(self, line: int | RuleAt) -> int | RuleAt:
        found = self.lines.get(line)
        return line if found is None else -1 - found

    def chain(self, chain: str) -> int | str:
        found = self.chains.get(chain)
        return chain if found is None else found

    def endpoint(self, text: str) -> tuple[int, int | None]:
        ip, port = split_destination(text)
        if port is None or (f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}") != text:
            raise LookupError(text)
        return self.addresses[ip], self.ports[port]

    def reaches(self, reaches: Sequence[views.Reach]) -> tuple[tuple[Any, float], ...]:
        found = self.seen.get(id(reaches))  # (a view's ways in and kinds of client share their reaches: one object)
        if found is None:
            found = self.seen[id(reaches)] = (reaches, tuple([(self.endpoint(r.endpoint), r.probability)
                                                              for r in reaches]))
        return found[1]  # type: ignore[no-any-return]

    def notes(self, notes: tuple[str, ...]) -> tuple[str, ...]:
        if any(t in note for note in notes for t in self.texts):
            raise LookupError("a note names a value")
        return notes


class _Put:
    """The values of a port's shape, to put back by number."""

    __slots__ = ("addresses", "chains", "lines", "made", "ports")

    def __init__(self, shape: Any) -> None:
        self.made: dict[int, tuple[views.Reach, ...]] = {}  # id(reaches as numbers: the kept view holds them) → them
        self.addresses = shape.addresses
        self.ports = shape.ports
        self.chains = shape.chains
        self.lines = shape.lines

    def line(self, line: int | RuleAt) -> int | RuleAt:
        # (a rule of input without lines, nft -j, is its RuleAt: the shape's own, by number, or another's)
        return self.lines[-1 - line] if type(line) is int and line < 0 else line  # type: ignore[no-any-return]

    def chain(self, chain: int | str) -> str:
        return chain if type(chain) is str else self.chains[chain]  # type: ignore[no-any-return,index]

    def endpoint(self, ref: tuple[int, int]) -> str:
        ip = self.addresses[ref[0]]
        return f"[{ip}]:{self.ports[ref[1]]}" if ":" in ip else f"{ip}:{self.ports[ref[1]]}"

    def reaches(self, refs: tuple[tuple[Any, float], ...]) -> tuple[views.Reach, ...]:
        found = self.made.get(id(refs))  # (one object for the reaches a kept view shares: `_Values.reaches`)
        if found is None:
            new, reach = views._new_reach, views.Reach
            found = self.made[id(refs)] = tuple([new(reach, (self.endpoint(ref), p)) for ref, p in refs])
        return found


def _kept(view: views.ServicePortView, sp: ServicePortLayout, shape: Any) -> tuple[Any, ...] | None:
    """`view`'s traced fields with its shape's values as numbers, or None when one is not among them."""
    v = _Values(shape)
    try:
        endpoints = tuple([(v.addresses[e.ip], None if e.port is None else v.ports[e.port], e.probability, e.local,
                            v.chain(e.chain), e.local_probability, e.in_cluster_chain, v.line(e.line))
                           for e in view.endpoints])
        entries: list[Any] = []
        for way, e in zip(sp.ways_in, view.entries, strict=True):
            if way.kind == HEALTH_CHECK:
                entries.append(None)
                continue
            if (e.kind, e.address, e.port, e.protocol, e.chain, e.lines) != (
                    way.kind, way.address, way.port, way.protocol, way.chain, way.lines):
                return None
            paths = tuple([(p.source, p.verdict, tuple(map(v.chain, p.via)), v.reaches(p.reaches), p.masquerade,
                            v.line(p.decided_by)) for p in e.paths])
            entries.append((e.verdict, v.reaches(e.reaches), e.masquerade, e.masquerade_sources,
                            tuple(map(v.chain, e.via)), paths, v.notes(e.notes)))
    except LookupError:
        return None
    return endpoints, tuple(entries)


def _view(kept: tuple[Any, ...], sp: ServicePortLayout, shape: Any, builder: Any) -> views.ServicePortView:
    """The view `kept` stands for, with this port's values and layout."""
    put = _Put(shape)
    # (the records' positional constructors, without their frozen dataclass __init__)
    new_endpoint, new_entry, new_path = views._new_endpoint, views._new_entry, views._new_path
    addresses, ports, chains, lines = put.addresses, put.ports, put.chains, put.lines  # (_Put.chain and .line, inline)
    endpoints = [new_endpoint(addresses[ip], None if port is None else ports[port], probability, local,
                              chain if type(chain) is str else chains[chain], local_probability, in_cluster,
                              line if line >= 0 else lines[-1 - line])
                 for ip, port, probability, local, chain, local_probability, in_cluster, line in kept[0]]
    entries = []
    for way, e in zip(sp.ways_in, kept[1], strict=True):
        if e is None:
            entries.append(builder.entry(sp, way, frozenset()))
            continue
        verdict, reaches, masq, masq_sources, via, paths, notes = e
        entries.append(new_entry(
            way.kind, way.address, way.port, way.protocol, way.chain, verdict, put.reaches(reaches), masq,
            masq_sources, tuple(map(put.chain, via)),
            tuple([new_path(source, path_verdict, tuple(map(put.chain, path_via)), put.reaches(path_reaches),
                              path_masq, put.line(line))
                   for source, path_verdict, path_via, path_reaches, path_masq, line in paths]),
            notes, way.lines))
    return views.port_view(sp, endpoints, entries)


class Shaped(NamedTuple):
    """A port whose view is an earlier port's of its shape with its own values and layout, unmade: what `_view`
    makes it of (`kept`, the port's `shape` and layout `sp`, the view builder), and its view's other fields
    (`shell`: view.port_shell, no endpoints or entries)."""

    sp: ServicePortLayout
    kept: tuple[Any, ...]
    shape: Any
    builder: Any
    shell: views.ServicePortView

    @property
    def sort_key(self) -> tuple[str, str, str, str]:
        return self.shell.sort_key

    def view(self) -> views.ServicePortView:
        return _view(self.kept, self.sp, self.shape, self.builder)

    def health_check(self, way: WayIn) -> views.EntryView:
        """The entry of a health check way in of the port (its view's, built as `_view` builds it)."""
        return self.builder.entry(self.sp, way, frozenset())  # type: ignore[no-any-return]


class ShapeMemo:
    """`service(sp)`: a port's view, from an earlier port of its shape when there is one, else built by
    `builder` (a view._Builder) and kept for the next ports of its shape."""

    def __init__(self, builder: Any) -> None:
        self.builder = builder
        self.shape = getattr(builder.tracer, "port_shape", None) if ENABLED else None
        self.kept: dict[tuple[Any, ...], tuple[Any, ...] | None] = {}
        self.hits = 0
        self.built = 0  # (ports built before shapes were asked for: AFTER)
        self.context: Hashable | None = None  # (see share)

    def every_port(self) -> None:
        """Every port will be built (ViewBuilder.view): shapes pay from the first one on."""
        self.built = max(self.built, AFTER)

    def share(self, context: Hashable) -> None:
        """Views of portable shapes (PortShape.portable) kept for, and taken from, the other nodes of this process
        whose `context` is the same: the fingerprint of the node's context rules (the dataplane's port_keys, e.g.
        iptrace.iptables.carry.NodeKeys.fingerprint: every chain but the ports' own, written by role, with how the
        values its rules name meet the node's own, and the layout's node-wide facts). Equal keys on two nodes of
        equal fingerprints give the same traces but for the shape's values: what else the traces read is the
        context (a portable shape's walks enter no other port's chain), and how the node's own values (by number in
        the key: the questions' sources and destinations) meet the context's is in the key (their kinds and the
        networks holding them). A kept view names no value of its shape but by number, and its notes name none
        (_Values.notes; its ways' notes are in the key); one that names a line of a rule not the shape's (a
        context rule's: another node writes it at another line) is not shared. Shapes pay from the first port on:
        a later node's ports are mostly earlier nodes' shapes."""
        self.context = context
        self.every_port()

    def service(self, sp: ServicePortLayout) -> views.ServicePortView:
        found = self.find(sp)
        return self.made(found, sp) if type(found) is tuple else found  # type: ignore[return-value]

    def made(self, found: tuple[tuple[Any, ...], Any], sp: ServicePortLayout) -> views.ServicePortView:
        """The view of `sp` that `find` gave unmade (its kept view and shape)."""
        return _view(found[0], sp, found[1], self.builder)

    def find(self, sp: ServicePortLayout) -> views.ServicePortView | tuple[tuple[Any, ...], Any]:
        """`service(sp)`, or for a port of a kept shape what its view is made of, unmade: (the kept view, the
        port's shape)."""
        builder = self.builder
        if self.shape is None or self.built < AFTER:
            self.built += 1
            return builder.service(sp)  # type: ignore[no-any-return]
        kinds: list[tuple[str, ...]] = []
        calls = builder.questions(sp, kinds)
        ways = [(way.kind, way.protocol, way.notes, clients) for way, clients in zip(sp.ways_in, kinds, strict=True)]
        shape = self.shape(calls, sp.chains)
        if shape is None:
            return builder.service(sp)  # type: ignore[no-any-return]
        key = (shape.key, tuple(ways), sp.cluster_chain is None, sp.local_chain is None)  # (which chain is which)
        kept = self.kept.get(key)
        shared = self.context is not None and shape.portable
        if kept is None and shared:
            kept = _SHARED.get((self.context, key))
        if kept is not None:
            self.hits += 1
            return kept, shape
        view: views.ServicePortView = builder.service(sp)
        if key not in self.kept:
            if len(self.kept) >= LIMIT:
                self.kept.clear()
            kept = self.kept[key] = _kept(view, sp, shape)
            if shared and kept is not None and _own_lines(kept):
                if len(_SHARED) >= SHARED_LIMIT:
                    _SHARED.clear()
                _SHARED[(self.context, key)] = kept
        return view


def _own_lines(kept: tuple[Any, ...]) -> bool:
    """Whether a kept view names no line but its shape's (by number) or none (0): its endpoints' and paths'."""
    endpoints, entries = kept
    lines = [e[7] for e in endpoints] + [p[5] for e in entries if e is not None for p in e[5]]
    return all(type(line) is int and line <= 0 for line in lines)
