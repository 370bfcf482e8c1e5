"""What `explain` says: diagnoses with stable ids, and the answer for one source or several."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from iptrace.dataplane import MapAt, PathEncoder, Trace, trace_to_json

Severity = Literal["error", "warning", "info"]
SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


@dataclass(frozen=True, slots=True)
class Evidence:
    """A line of the dump (`rule`: its text), or of another file, `source` (a conntrack table). `line` 0: the dump
    has no lines (nft JSON input), where `handle` is the rule's kernel handle (None for a set or map element,
    whose set `element_of` names); JSON prints such a line as null, as trace's path does (SPEC.md)."""

    line: int
    rule: str
    source: str = ""
    handle: int | None = None
    element_of: MapAt | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"line": self.line or None, "rule": self.rule}
        if self.handle is not None:
            out["handle"] = self.handle
        if self.element_of is not None:
            out["map"] = self.element_of.to_json()
        if self.source:
            out["source"] = self.source
        return out

    @property
    def where(self) -> str:
        """`line N: ` (`SOURCE:N: ` for another file's), or without a line (nft -j) `handle N: ` (the rule's, or
        an element's set's), or nothing where the input says nothing."""
        if self.source:
            return f"{self.source}:{self.line}: "
        if self.line:
            return f"line {self.line}: "
        handle = self.handle if self.handle is not None else (
            self.element_of.handle if self.element_of is not None else None)
        return f"handle {handle}: " if handle is not None else ""


@dataclass(frozen=True, slots=True)
class Suggestion:
    """An address the `fix` names that does reach the Service, and from where (`pod`, `node`, `external`, or the
    source range a load-balancer IP accepts clients from)."""

    address: str
    port: int
    proto: str
    source: str


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """One finding. `summary` is one line; `detail` says why in plain words; `fix` what would work instead.

    `instead` repeats the addresses of `fix` in structured form (for callers and the kernel proof); it is
    not part of the JSON, whose shape SPEC.md fixes.
    """

    id: str
    severity: Severity
    summary: str
    detail: str
    fix: str
    evidence: tuple[Evidence, ...] = ()
    instead: tuple[Suggestion, ...] = field(default=(), compare=False)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "severity": self.severity, "summary": self.summary, "detail": self.detail,
                "fix": self.fix, "evidence": [e.to_json() for e in self.evidence]}


@dataclass(frozen=True, slots=True)
class Explanation:
    """The answer for one source: the trace and what it means."""

    source_kind: str  # "pod", "node", "external" or "given"
    trace: Trace
    verdict: str
    headline: str  # one sentence: what happens to the connection
    diagnoses: tuple[Diagnosis, ...]

    @property
    def has_error(self) -> bool:
        return any(d.severity == "error" for d in self.diagnoses)

    def to_json(self, paths: PathEncoder | None = None) -> dict[str, Any]:
        return {"verdict": self.verdict, "headline": self.headline,
                "diagnoses": [d.to_json() for d in self.diagnoses], "trace": trace_to_json(self.trace, paths)}


@dataclass(frozen=True, slots=True)
class Report:
    """`explain` without --src: one Explanation per kind of client, and where they differ."""

    destination: str
    proto: str
    explanations: tuple[Explanation, ...]
    differences: tuple[str, ...] = field(default=())

    @property
    def has_error(self) -> bool:
        return any(e.has_error for e in self.explanations)

    def to_json(self, paths: PathEncoder | None = None) -> dict[str, Any]:
        merged: dict[str, Diagnosis] = {}
        for e in self.explanations:
            for d in e.diagnoses:
                merged.setdefault(d.id, d)
        verdicts = {e.verdict for e in self.explanations}
        return {
            "destination": self.destination,
            "proto": self.proto,
            "verdict": verdicts.pop() if len(verdicts) == 1 else None,
            "diagnoses": [d.to_json() for d in sorted(merged.values(), key=lambda d: SEVERITY_ORDER[d.severity])],
            "sources": {e.source_kind: {"src": e.trace.packet.src, **e.to_json(paths)} for e in self.explanations},
            "differences": list(self.differences),
        }
