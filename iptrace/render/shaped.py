"""`services -o json` text of the Service ports whose views are an earlier port's of their shape with their own
values (iptrace.kube.shapes.Shaped), written from the shape's text without making the view.

A kept view (shapes._kept) holds every value of its shape by number: an address, port, own chain or line of the
port. Its text is the same for every port of the shape but for those values, and for what the port's layout gives
(its identity, ways in and lines): the text is compiled once per kept view into its constant pieces and *slots*,
each the text of one of the port's values, and a port's text is its pieces joined with its own values' texts. The
pieces mirror render.services' writers of the view `_view` would make (`_endpoints_text`, `_entry_text`,
`_path_text`), piece by piece; a port the pieces do not cover (input without lines, nft -j: kernel handles; a
line that is not a number) is written from its view. tests/test_shaped_json.py compares each port's text with its
view's, port by port.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from operator import itemgetter
from typing import Any

from iptrace.dataplane import join_host_port
from iptrace.kube.shapes import Shaped
from iptrace.kube.view import ServicePortView
from iptrace.render.services import (
    _SHARE_TEXTS,
    _decided_text,
    _entry_text,
    _strings,
    _text,
    port_json_text,
    service_json_text,
    way_text,
)

_SLOT_KINDS = ("a", "p", "e", "c", "l", "w", "s", "h")  # (the order of `_Template.text`'s value texts)
# Compiled kept views, by id (the kept view held, so that its id is not reused): a node has a few hundred.
_TEMPLATES: dict[int, tuple[tuple[Any, ...], _Template | None]] = {}
_TEMPLATES_LIMIT = 4096


class _Unwritten(Exception):
    """A kept view holds what the pieces do not write: its ports are written from their views."""


class _Template:
    """A kept view's text: `pieces` (the constants, then a slot's index for each of the port's value texts, in
    the order the slots below list them), and the slots: addresses, ports, endpoint addresses (address, port),
    chains and lines by number, and per way in the text before its verdict and its lines (or, for a health check,
    its whole entry)."""

    __slots__ = ("addresses", "chains", "checks", "constants", "endpoints", "getters", "lines", "ports", "ways")

    def __init__(self, kept: tuple[Any, ...]) -> None:
        self.constants: list[str] = []
        self.addresses: list[int] = []
        self.ports: list[int] = []
        self.endpoints: list[tuple[int, int]] = []
        self.chains: list[int] = []
        self.lines: list[int] = []
        self.ways: list[int] = []
        self.checks: list[int] = []
        pieces: list[str | tuple[str, Any]] = []  # a constant, or a slot
        endpoints, entries = kept

        def slot(kind: str, value: Any) -> None:
            pieces.append((kind, value))

        def const(text: str) -> None:
            pieces.append(text)

        def chain(value: int | str) -> None:
            if type(value) is str:
                const(_text(value))
            elif type(value) is int:
                slot("c", value)
            else:
                raise _Unwritten

        def reaches(refs: tuple[tuple[Any, float], ...]) -> None:
            if not refs:
                const("[]")
                return
            const("[")
            for i, ((a, p), probability) in enumerate(refs):
                const(', {"address": ' if i else '{"address": ')
                slot("e", (a, p))
                const(f', "probability": {_SHARE_TEXTS[probability]}}}')
            const("]")

        def strings(values: tuple[int | str, ...]) -> None:  # (`_strings` of chains by number or name)
            if not values:
                const("[]")
                return
            const("[")
            for i, value in enumerate(values):
                if i:
                    const(", ")
                chain(value)
            const("]")

        # `_endpoints_text` (without handles: a port with them is written from its view)
        if not endpoints:
            const("[]")
        else:
            const("[")
            for i, (ip, port, probability, local, at, local_probability, _in_cluster, line) in enumerate(endpoints):
                const(', {"ip": ' if i else '{"ip": ')
                slot("a", ip)
                if port is None:
                    const(', "port": null, "address": ')
                    slot("a", ip)
                else:
                    const(', "port": ')
                    slot("p", port)
                    const(', "address": ')
                    slot("e", (ip, port))
                const(f', "probability": {_SHARE_TEXTS[probability]}, "local": {"true" if local else "false"}, '
                      f'"local_probability": {"null" if local_probability is None else _SHARE_TEXTS[local_probability]}'
                      ', "chain": ')
                chain(at)
                const(', "line": ')
                if type(line) is not int:
                    raise _Unwritten
                if line < 0:
                    slot("l", -1 - line)
                else:
                    const(repr(line) if line else "null")
                const("}")
            const("]")
        split = len(pieces)  # (the endpoints' pieces, then the entries')
        # `_entry_text` of each entry, `_path_text` of each of its paths
        if not entries:
            const("[]")
        else:
            const("[")
            for w, e in enumerate(entries):
                if w:
                    const(", ")
                if e is None:
                    slot("h", w)
                    continue
                verdict, refs, masq, masq_sources, via, paths, notes = e
                slot("w", w)
                const(f'"verdict": {_text(verdict)}, "endpoints": ')
                reaches(refs)
                const(f', "masquerade": {_text(masq)}, "masquerade_sources": {_strings(masq_sources)}, "via": ')
                strings(via)
                const(', "other_sources": ')
                if not paths:
                    const("[]")
                else:
                    const("[")
                    for i, (source, path_verdict, path_via, path_refs, path_masq, decided) in enumerate(paths):
                        const(f'{", " if i else ""}{{"source": {_text(source)}, "verdict": {_text(path_verdict)}, '
                              '"endpoints": ')
                        reaches(path_refs)
                        const(f', "masquerade": {"true" if path_masq else "false"}, "via": ')
                        strings(path_via)
                        const(", ")
                        if type(decided) is int and decided < 0:
                            const('"decided_by_line": ')
                            slot("l", -1 - decided)
                        else:
                            const(_decided_text(decided))
                        const("}")
                    const("]")
                const(f', "notes": {_strings(notes)}, "lines": ')
                slot("s", w)
                const("}")
            const("]")
        # The slots, each once, in the order `text` writes the value texts; the constants after them.
        found: dict[str, list[Any]] = {kind: [] for kind in _SLOT_KINDS}
        for piece in pieces:
            if type(piece) is tuple and piece[1] not in found[piece[0]]:
                found[piece[0]].append(piece[1])
        if found["w"] != found["s"]:
            raise _Unwritten
        self.addresses, self.ports, self.endpoints = found["a"], found["p"], found["e"]
        self.chains, self.lines, self.ways, self.checks = found["c"], found["l"], found["w"], found["h"]
        at = {(kind, value): i for i, (kind, value) in enumerate((k, v) for k in _SLOT_KINDS for v in found[k])}
        self.getters = (self._getter(pieces[:split], at), self._getter(pieces[split:], at))

    def _getter(self, pieces: list[str | tuple[str, Any]], at: dict[tuple[str, Any], int]) -> Any:
        """The pieces as indices into the value texts and constants (adjacent constants joined), read by one
        itemgetter."""
        merged: list[str | int] = []
        for piece in pieces:
            if type(piece) is tuple:
                merged.append(at[piece])
            elif merged and type(merged[-1]) is str:
                merged[-1] += piece  # type: ignore[operator]
            else:
                merged.append(piece)
        order = []
        for piece in merged:
            if type(piece) is str:
                order.append(len(at) + len(self.constants))  # (the constants follow the value texts)
                self.constants.append(piece)
            else:
                order.append(piece)
        return itemgetter(*order) if len(order) > 1 else lambda values: (values[order[0]],)

    def texts(self, p: Shaped) -> tuple[str, str]:
        """The port's endpoints' and entries' texts."""
        shape = p.shape
        addresses, ports, chains, lines = shape.addresses, shape.ports, shape.chains, shape.lines
        values = [_text(addresses[i]) for i in self.addresses]
        values += [repr(ports[i]) for i in self.ports]
        values += [_text(join_host_port(addresses[i], ports[j])) for i, j in self.endpoints]
        values += [_text(chains[i]) for i in self.chains]
        values += [int.__repr__(lines[i]) if lines[i] else "null" for i in self.lines]  # (a RuleAt: TypeError)
        ways = p.sp.ways_in
        values += [way_text(ways[w]) for w in self.ways]
        values += [repr(list(ways[w].lines)) for w in self.ways]
        values += [_entry_text(p.health_check(ways[w])) for w in self.checks]
        values += self.constants
        endpoints, entries = self.getters
        return "".join(endpoints(values)), "".join(entries(values))


def shaped_json_text(p: Shaped) -> str:
    """service_json_text of the port's view, written from its kept view's template."""
    kept = p.kept
    found = _TEMPLATES.get(id(kept))
    if found is None or found[0] is not kept:
        try:
            template: _Template | None = _Template(kept)
        except _Unwritten:
            template = None
        if len(_TEMPLATES) >= _TEMPLATES_LIMIT:
            _TEMPLATES.clear()
        found = _TEMPLATES[id(kept)] = (kept, template)
    template = found[1]
    # (a port of a kept view has its ways in of the same kinds, in the same order: the shape's key holds them)
    if template is None or p.sp.handles:
        return service_json_text(p.view())
    try:
        endpoints, entries = template.texts(p)
    except TypeError:  # (a line that is a kernel handle's RuleAt)
        return service_json_text(p.view())
    return port_json_text(p.shell, endpoints, entries)


def port_json_texts(ports: Iterable[ServicePortView | Shaped]) -> Iterator[str]:
    """Each port's service_json_text (a Shaped one's, of the view it stands for)."""
    for p in ports:
        yield shaped_json_text(p) if type(p) is Shaped else service_json_text(p)  # type: ignore[arg-type]
