"""What a trace found: one Outcome per branch, each with its exact path, and the assumptions made.

`trace_to_json` is the stable `trace -o json` shape of SPEC.md; the other fields (exact probability, chains
crossed, original vs final destination, per-branch assumptions) are for `explain` and renderers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

from iptrace.trace.packet import Packet

Verdict = Literal["DNAT", "ACCEPT", "DROP", "REJECT", "CONTINUE"]
VERDICTS: tuple[str, ...] = ("DNAT", "ACCEPT", "DROP", "REJECT", "CONTINUE")
Entry = Literal["hooks", "kube-proxy"]


@dataclass(frozen=True, slots=True)
class Step:
    """One rule that matched, in the order the packet met it. `rule` is the rule as iptables-save prints it
    (without counters): `-A CHAIN args…`."""

    table: str
    chain: str
    line: int
    rule: str

    def to_json(self) -> dict[str, Any]:
        return {"table": self.table, "chain": self.chain, "line": self.line, "rule": self.rule}


@dataclass(frozen=True, slots=True)
class Decision:
    """Who decided an outcome: a rule (`line` set) or a built-in chain's policy (`policy` set)."""

    table: str
    chain: str
    line: int | None = None
    policy: str | None = None

    def to_json(self) -> dict[str, Any]:
        if self.policy is not None:
            return {"policy": self.policy, "table": self.table, "chain": self.chain}
        return {"table": self.table, "chain": self.chain, "line": self.line}


@dataclass(frozen=True, slots=True)
class Outcome:
    """One branch of the trace. `probability` is the float of `exact_probability` (a Fraction)."""

    verdict: Verdict
    destination: str | None
    probability: float
    masquerade: bool
    service: str | None
    decided_by: Decision | None
    path: tuple[Step, ...]
    exact_probability: Fraction = field(default=Fraction(1), compare=False)
    original_destination: str = ""
    final_destination: str = ""
    chains: frozenset[tuple[str, str]] = frozenset()  # (table, chain) of every chain the packet entered
    assumptions: tuple[str, ...] = ()  # those made on this branch

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "destination": self.destination,
            "probability": self.probability,
            "masquerade": self.masquerade,
            "service": self.service,
            "decided_by": self.decided_by.to_json() if self.decided_by is not None else None,
            "path": [step.to_json() for step in self.path],
        }


@dataclass(frozen=True, slots=True)
class Trace:
    packet: Packet
    entry: Entry
    outcomes: tuple[Outcome, ...]
    assumptions: tuple[str, ...]

    @property
    def verdicts(self) -> frozenset[str]:
        return frozenset(o.verdict for o in self.outcomes)


def trace_to_json(trace: Trace) -> dict[str, Any]:
    """The `trace -o json` document (SPEC.md "trace -o json shape")."""
    p = trace.packet
    return {
        "packet": {"src": p.src, "dst": p.dst, "dport": p.dport, "proto": p.proto},
        "entry": trace.entry,
        "outcomes": [o.to_json() for o in trace.outcomes],
        "assumptions": list(trace.assumptions),
    }
