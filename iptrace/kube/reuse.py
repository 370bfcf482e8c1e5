"""Service port views reused across the nodes of one audit: nodes of a cluster program almost every Service
port alike, so a port worked out on one node need not be traced again on the next — when the rules its
traces would meet answer them alike there.

The key of a port is its layout (without line numbers) and the dataplane's footprint of the questions its
view asks (iptrace.dataplane.Footprint: every rule those traces could meet, how each would answer, the
packets with the node's own addresses and the clients named by role). Equal keys mean equal traces, hence an
equal view, once the other node's line numbers are put in position by position. The view builder says which
questions it will ask (no walk, no view built); a port is kept only when its real build asked exactly those
questions and its view spells none of the addresses named by role. Where the footprint has a loose key
(Footprint.loose: rules that differ per node, e.g. naming the node's own pod CIDR, left out), a view kept under it
is reused too when this node's rules answer alike what that view's traces decided (Footprint.agrees). A
dataplane without footprints gets no reuse. Dataplane-free and pure (a per-process cache, no I/O).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from operator import attrgetter
from typing import Any

from iptrace.dataplane import Packet, Trace
from iptrace.kube.view import EndpointView, EntryView, ServicePortView, SourcePath
from iptrace.layout import Layout, ServicePortLayout, WayIn
from iptrace.records import positional_new, positional_replace

# Views kept per process: a node has a few thousand Service ports; a fleet's nodes share most of them.
CACHE_SIZE = 30_000

# A port whose key missed the cache on this many of its nodes in a row (its rules differ on every node: a
# node-local endpoint, a per-node rule) is traced without a key for a while — 1, 2, 4, … nodes — so that a
# fleet that shares little pays little more than no reuse. A hit starts the count again.
MISSES = 4

# A view no node has reused within this many rounds (`services` calls: a node's family each) after it was kept is
# dropped: its rules were that node's own (a local endpoint, the node's pod CIDR in a CNI rule), and keeping it
# would make a worker's memory grow with the number of nodes it audits. A view reused once is kept (LRU).
PROBATION = 8

# Port layouts numbered (ViewReuse._ports), in CACHE_SIZEs, before those no key holds any more are forgotten: nodes of
# one cluster have the same ports, and a few their own.
PORTS = 4

# Views kept per loose key of a port (Footprint.loose): the traces of each decided what a node must answer alike to
# reuse it; a node's own rules (its local endpoints) make a few variants.
LOOSE = 4

# Where a view holds dump lines (tests/test_reuse.py checks these are all the fields there are).
LINE_FIELDS = {ServicePortView: ("lines",), EndpointView: ("line",), EntryView: ("lines",),
               SourcePath: ("decided_by",)}

Call = tuple[str | None, Packet]


class _Noting:
    """The real tracer, noting every question (a view is kept only when its build asked what `ask` said)."""

    def __init__(self, tracer: Any) -> None:
        self.tracer = tracer
        self.entry = tracer.entry
        self.calls: list[Call] = []
        self.clean = True

    def note(self, chain: str | None, packet: Packet, in_interface: str | None, assumptions: Sequence[str]) -> None:
        if in_interface is not None:
            packet = replace(packet, in_interface=in_interface)
        self.clean = self.clean and not assumptions
        self.calls.append((chain, packet))

    def trace(self, packet: Packet, *, in_interface: str | None = None, assumptions: Sequence[str] = ()) -> Trace:
        self.note(None, packet, in_interface, assumptions)
        return self.tracer.trace(packet, in_interface=in_interface, assumptions=assumptions)  # type: ignore[no-any-return]

    def trace_chain(self, chain: str, packet: Packet) -> Trace:
        self.note(chain, packet, None, ())
        return self.tracer.trace_chain(chain, packet)  # type: ignore[no-any-return]


@dataclass
class ReuseStats:
    ports: int = 0
    reused: int = 0
    stored: int = 0
    skipped: int = 0  # ports traced without a key: it kept missing (MISSES)
    dropped: int = 0  # views dropped unused (PROBATION)
    loose: int = 0  # of `reused`, those found by their footprint's loose key (Footprint.loose)

    @property
    def traced(self) -> int:
        return self.ports - self.reused


class ViewReuse:
    """A cache of Service port views, shared by every node analysed in one process."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self.stats = ReuseStats()
        self._views: OrderedDict[tuple[Any, ...], ServicePortView] = OrderedDict()
        self._unused: OrderedDict[tuple[Any, ...], int] = OrderedDict()  # views not reused yet → round kept
        self._misses: dict[int, tuple[int, int]] = {}  # port → (misses in a row, round of the last)
        self._round = 0  # calls of `services` (a node's family each)
        # (port, Footprint.loose) → (what the traces of a kept view decided, its key), newest last (LOOSE of them)
        self._loose: dict[tuple[Any, ...], list[tuple[Any, tuple[Any, ...]]]] = {}
        # (family, a port's layout without its lines: _port_values) → its number, which the keys above hold (a
        # layout's hash is worked out field by field each time, and a reused port's key is looked up four times)
        self._ports: dict[tuple[str, tuple[Any, ...]], int] = {}
        self._next_port = 0
        # The digest (iptrace.kube.digest) made last of a view of each key of _views (dropped with the view), and
        # the key of each view the last `services` gave from it or stored under it, by id (with the view, which
        # keeps the id its own): views of one key are alike but for their lines (see `origin`).
        self._digests: dict[tuple[Any, ...], Any] = {}
        self._origins: dict[int, tuple[ServicePortView, tuple[Any, ...]]] = {}

    def services(self, layout: Layout, tracer: Any, make: Callable[[Any], Callable[[ServicePortLayout],
                 ServicePortView]], ask: Callable[[ServicePortLayout], list[Call]]) -> list[ServicePortView]:
        """The view of every Service port of `layout`; `make(tracer)` is the view's own builder for one port
        with that tracer, `ask(port)` the traces it asks for."""
        footprint = getattr(tracer, "footprint", None)
        real = _Noting(tracer)
        build = make(real)
        if footprint is None:
            return [build(sp) for sp in layout.service_ports]
        out = []
        origins = self._origins
        origins.clear()
        self._round += 1
        self._drop_unused()
        misses = self._misses
        if len(misses) > self.size:
            misses.clear()
        if len(self._ports) > PORTS * self.size:
            self._forget_ports()
        ports, family = self._ports, layout.family
        for sp in layout.service_ports:
            self.stats.ports += 1
            named = (family, _port_values(sp))
            port = ports.get(named)
            if port is None:
                port = ports[named] = self._next_port
                self._next_port += 1
            missed, last = misses.get(port, (0, 0))
            if missed >= MISSES and self._round - last <= 1 << (missed - MISSES):
                self.stats.skipped += 1
                out.append(build(sp))
                continue
            calls = ask(sp)
            found = footprint(tuple(calls))
            if found is None:
                out.append(build(sp))
                continue
            key = (port, found.key)
            kept = self._views.get(key)
            loose = None if found.loose is None else (port, found.loose)
            if kept is None and loose is not None:
                key, kept = self._loosely(loose, found.agrees, key)
            if kept is not None:
                self._views.move_to_end(key)
                self._unused.pop(key, None)
                self.stats.reused += 1
                if missed:
                    del misses[port]
                view = _relined(kept, sp, _at(found.lines))
                origins[id(view)] = (view, key)
                out.append(view)
                continue
            misses[port] = (missed + 1, self._round)
            real.calls, real.clean = [], True
            done = found.watch() if loose is not None and found.watch is not None else None
            try:
                view = build(sp)
            finally:
                decided = done() if done is not None else None
            if real.clean and real.calls == calls and not _spells(view, found.abstracted):
                stored = _positional(view, sp, found.lines)
                if stored is not None:
                    self._views[key] = stored
                    self._digests.pop(key, None)
                    origins[id(view)] = (view, key)
                    self._unused[key] = self._round
                    self.stats.stored += 1
                    if len(self._views) > self.size:
                        dropped = self._views.popitem(last=False)[0]
                        self._unused.pop(dropped, None)
                        self._digests.pop(dropped, None)
                    if loose is not None and decided is not None:
                        self._keep_loose(loose, decided, key)
            out.append(view)
        done = getattr(tracer, "footprints_done", None)
        if done is not None:
            done()  # (~35 MB on a node whose ports were all traced: the node's digest is made next)
        return out

    def _loosely(self, loose: tuple[Any, ...], agrees: Callable[[Any], bool] | None, key: tuple[Any, ...],
                 ) -> tuple[tuple[Any, ...], ServicePortView | None]:
        """(its key, the view) kept under the loose key `loose` whose traces decided what this node's rules
        decide alike (`agrees`: Footprint.agrees); (`key`, None) when there is none."""
        found = self._loose.get(loose)
        if not found or agrees is None:
            return key, None
        views = self._views
        for decided, kept_key in reversed(found):
            view = views.get(kept_key)
            if view is not None and agrees(decided):
                self.stats.loose += 1
                return kept_key, view
        return key, None

    def _keep_loose(self, loose: tuple[Any, ...], decided: Any, key: tuple[Any, ...]) -> None:
        found = self._loose.get(loose)
        if found is None:
            if len(self._loose) > self.size:
                self._loose.clear()  # (its views may still be kept: they are then reused by their keys only)
            found = self._loose[loose] = []
        views = self._views
        found[:] = [item for item in found if item[1] in views][-(LOOSE - 1):]
        found.append((decided, key))

    def _forget_ports(self) -> None:
        """Forget the numbers of the ports no key holds any more (a port on a few nodes only)."""
        live = {key[0] for key in self._views} | self._misses.keys() | {key[0] for key in self._loose}
        self._ports = {named: port for named, port in self._ports.items() if port in live}

    def _drop_unused(self) -> None:
        """Drop the views kept more than PROBATION rounds ago that no node has reused since."""
        unused, views = self._unused, self._views
        while unused:
            key, kept = next(iter(unused.items()))
            if self._round - kept <= PROBATION:
                break
            del unused[key]
            views.pop(key, None)
            self._digests.pop(key, None)
            self.stats.dropped += 1

    def origin(self, view: ServicePortView) -> tuple[Any, ...] | None:
        """The cache's key of a view the last `services` call gave (reused or stored under it), else None. Every view
        of one key is alike but for the lines traces and its layout gave it (_relined changes nothing else), so
        what is made of those other fields is the same for all (iptrace.kube.digest keeps its digests by it)."""
        found = self._origins.get(id(view))
        return found[1] if found is not None and found[0] is view else None

    def digest(self, key: tuple[Any, ...]) -> Any:
        """The digest `keep_digest` kept for views of `key`, None when none is."""
        return self._digests.get(key)

    def keep_digest(self, key: tuple[Any, ...], digest: Any) -> None:
        if key in self._views:
            self._digests[key] = digest

    def node_done(self) -> None:
        """The node's views are done with: forget which keys they came from (and let them go)."""
        self._origins.clear()

    def __len__(self) -> int:
        return len(self._views)


# (a layout's fields but its lines, its ways in last, and a way's fields but its lines, as plain tuples: they hash
# and compare without a Python call per object, as the dataclasses' own __hash__ and __eq__ make)
_LAYOUT_VALUES = attrgetter(*(f.name for f in fields(ServicePortLayout) if f.name not in ("lines", "ways_in")))
_WAY_VALUES = attrgetter(*(f.name for f in fields(WayIn) if f.name != "lines"))


def _port_values(sp: ServicePortLayout) -> tuple[Any, ...]:
    """A value equal for two layouts exactly when they are equal but for their lines and their ways' lines."""
    return _LAYOUT_VALUES(sp), tuple(map(_WAY_VALUES, sp.ways_in))


def _positional(view: ServicePortView, sp: ServicePortLayout, lines: Sequence[int]) -> ServicePortView | None:
    """The view as the cache keeps it: the lines the layout gave it left out (the next node's layout gives its
    own), every line a trace gave it as its position in the footprint (+1; 0 stays 0). None when a line is
    not where that says."""
    if view.lines != sp.lines or len(view.entries) != len(sp.ways_in) or any(
            e.lines != w.lines for e, w in zip(view.entries, sp.ways_in, strict=False)):
        return None
    positions: dict[int, int] = {}
    for i, line in enumerate(lines, 1):
        positions.setdefault(line, i)
    traced = [ep.line for ep in view.endpoints if ep.line]
    traced += [p.decided_by for e in view.entries for p in e.paths if p.decided_by]
    if any(line not in positions for line in traced):
        return None
    stored = _relined(view, None, positions.__getitem__)
    return _with(stored, lines=())


def _at(lines: Sequence[int]) -> Callable[[int], int]:
    """The line at a position of the footprint as _positional numbers them (from 1; a C-level getter: _relined
    moves ~10 lines a port)."""
    return (0, *lines).__getitem__


def _relined(view: ServicePortView, sp: ServicePortLayout | None, move: Callable[[int], int]) -> ServicePortView:
    """The view with the lines traces gave it moved by `move` (0 stays 0), and those its layout gave it taken
    from `sp` (None: kept)."""
    endpoints = tuple([_endpoint_line(ep, move(ep.line)) if ep.line else ep for ep in view.endpoints])
    entries = []
    for i, e in enumerate(view.entries):
        paths = e.paths
        if any(p.decided_by for p in paths):
            paths = tuple([_path_decided_by(p, move(p.decided_by)) if p.decided_by else p for p in paths])
        if sp is not None:
            e = _entry_paths_lines(e, paths, sp.ways_in[i].lines)
        elif paths != e.paths:
            e = _entry_paths(e, paths)
        entries.append(e)
    if sp is not None:
        return _view_relined(view, endpoints, tuple(entries), sp.lines)
    return _view_moved(view, endpoints, tuple(entries))


def _replacer(cls: type, names: Sequence[str]) -> Callable[..., Any]:
    """`replace(obj, *values)`: `_with(obj, **dict(zip(names, values)))` for a frozen slots dataclass, its other
    fields read by name (made once per class and fields: _relined runs for every port a node reuses)."""
    return positional_replace(cls, [f.name for f in fields(cls)], names)


_endpoint_line = _replacer(EndpointView, ("line",))
_path_decided_by = _replacer(SourcePath, ("decided_by",))
_entry_paths_lines = _replacer(EntryView, ("paths", "lines"))
_entry_paths = _replacer(EntryView, ("paths",))
_view_relined = _replacer(ServicePortView, ("endpoints", "entries", "lines"))
_view_moved = _replacer(ServicePortView, ("endpoints", "entries"))


# Per class: a maker from every field's value (not through __init__), a getter of them all, each field's position.
_COPIERS: dict[type, tuple[Callable[..., Any], Callable[[Any], Any], dict[str, int]]] = {}


def _with(obj: Any, **changes: Any) -> Any:
    """`dataclasses.replace(obj, **changes)` for a frozen slots dataclass, without its __init__ (a node's view
    is ~10^5 of these): its values read in one call, and stored the way view.py makes them."""
    cls = type(obj)
    found = _COPIERS.get(cls)
    if found is None:
        names = [f.name for f in fields(cls)]
        assert len(names) > 1  # (attrgetter of one name gives the value, not a tuple)
        found = _COPIERS[cls] = (positional_new(cls, names), attrgetter(*names), {n: i for i, n in enumerate(names)})
    new, values_of, at = found
    values = list(values_of(obj))
    for name, value in changes.items():
        values[at[name]] = value
    return new(*values)


_BOUNDARY = r"(?<![0-9A-Fa-f.:]){}(?![0-9A-Fa-f]|\.[0-9]|:[0-9A-Fa-f]*:)"


def _spells(view: ServicePortView, addresses: Sequence[str]) -> bool:
    """Whether the view names one of `addresses` (they differ from node to node, so such a view is not kept)."""
    if not addresses:
        return False
    text = repr(view)
    # (a plain substring test first: most views hold none of them, and the boundary search costs ~50 µs a view)
    return any(a in text and re.search(_BOUNDARY.format(re.escape(a)), text) for a in addresses)
