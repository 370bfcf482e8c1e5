"""Where a finding's piece of evidence is: a line of the dump (0: not a dump line), or for input without lines
(nft -j) a set or map element's set (iptrace.dataplane.MapAt: table, name, kernel handle) or a rule's kernel
handle (RuleAt). Its JSON is explain's (`line` null, then `map` or `handle`), which a merge reads back. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from operator import attrgetter
from typing import Any, NamedTuple

from iptrace.dataplane import MapAt, RuleAt

EvidenceAt = int | MapAt | RuleAt
_LIMIT = 6  # (pieces of evidence of one finding)
_HANDLE = attrgetter("handle")


class Quoted(NamedTuple):
    """A piece of evidence found with its text: a set or map element (Ruleset.elements_at's)."""

    at: MapAt
    text: str


class Evidence:
    """Dump lines as their dataplane prints them (through iptrace.dataplane.Ruleset.line_text, as audit's port
    digests quote them: one form in an audit; explain shows findings' lines as its own evidence); for input without
    lines (nft -j), rules by kernel handle (RuleAt, Ruleset.handle_texts of the family's)."""

    def __init__(self, ruleset: Any, family: str = "ipv4") -> None:
        self._ruleset = ruleset
        self._family = family

    def __call__(self, lines: Iterable[int | RuleAt | Quoted],
                 limit: int = _LIMIT) -> tuple[tuple[EvidenceAt, str], ...]:
        found = {x for x in lines if x}
        quoted = [(q.at, q.text) for q in found if isinstance(q, Quoted)]
        rules = sorted((x for x in found if isinstance(x, RuleAt)), key=_HANDLE)[:limit - len(quoted)]
        if quoted or rules:
            texts = self._ruleset.handle_texts(self._family, {r.handle for r in rules})[1] if self._ruleset else {}
            return (*sorted(quoted, key=str)[:limit], *((r, texts.get(r.handle, "")) for r in rules))
        wanted = sorted(x for x in found if isinstance(x, int))[:limit]
        if not wanted or self._ruleset is None:
            return tuple((x, "") for x in wanted)
        return tuple((x, self._ruleset.line_text(x) or "") for x in wanted)


def endpoint_rules(sp: Any, endpoints: Sequence[Any]) -> list[int]:
    """Each endpoint's rule in a Service port view: its line, or for input without lines (nft -j) the kernel handle
    of its chain's DNAT rule (ServicePortView.dnat_handles); 0: none."""
    if not sp.handles:
        return [ep.line for ep in endpoints]
    dnat = dict(sp.dnat_handles)
    return [dnat.get(ep.chain, 0) for ep in endpoints]


def port_rules(sp: Any, endpoints: Sequence[Any] | None = None) -> list[int | RuleAt]:
    """Where a Service port view's rules are: its lines (with `endpoints`: those endpoints' rules'), or for input
    without lines (nft -j) its rules by kernel handle (RuleAt)."""
    if not sp.handles:
        return list(sp.lines) if endpoints is None else list(endpoint_rules(sp, endpoints))
    if endpoints is None:
        return [RuleAt("", "", h) for h in sp.handles]
    return [RuleAt("", ep.chain, h) if h else 0 for ep, h in zip(endpoints, endpoint_rules(sp, endpoints), strict=True)]


def evidence_json(at: EvidenceAt, rule: str) -> dict[str, Any]:
    if isinstance(at, MapAt):
        return {"line": None, "rule": rule, "map": at.to_json()}
    if isinstance(at, RuleAt):
        return {"line": None, "rule": rule, "handle": at.handle}
    return {"line": at, "rule": rule}


def evidence_where(at: EvidenceAt) -> str:
    """How text names where it is, before its rule: `line N: `, `handle N: ` (an element's set's, or a rule's),
    or nothing (not a dump line, or a set the JSON gave no handle)."""
    if isinstance(at, MapAt):
        return f"handle {at.handle}: " if at.handle is not None else ""
    if isinstance(at, RuleAt):
        return f"handle {at.handle}: "
    return f"line {at}: " if at else ""


def evidence_at(item: Mapping[str, Any]) -> EvidenceAt:
    """Where a piece of evidence of an audit's JSON is (evidence_json's, read back by a merge); raises
    KeyError, TypeError or ValueError for one not so written."""
    line = item["line"]
    if line is not None:
        return int(line)
    found = item.get("map")
    if found is not None:
        handle = found.get("handle")
        return MapAt(str(found["table"]), str(found["name"]), None if handle is None else int(handle))
    handle = item.get("handle")
    if handle is not None:
        return RuleAt("", "", int(handle))  # (the handle is what evidence_json and evidence_where say of it)
    return 0
