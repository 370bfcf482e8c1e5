"""Where a finding's piece of evidence is: a line of the dump (0: not a dump line), or for input without lines
(nft -j) a set or map element's set (iptrace.dataplane.MapAt: table, name, kernel handle) or a rule's kernel
handle (RuleAt). Its JSON is explain's (`line` null, then `map` or `handle`), which a merge reads back. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from iptrace.dataplane import MapAt, RuleAt

EvidenceAt = int | MapAt | RuleAt


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
