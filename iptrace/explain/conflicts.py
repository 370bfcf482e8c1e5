"""`address-conflict`: one address, port and protocol claimed by several Service ports.

The API lets two Services list the same externalIP (or an externalIP that is another Service's ClusterIP or
LoadBalancer IP). kube-proxy then writes a rule for each in iptables mode, and a packet takes the first that
matches; kube-proxy writes its Services in Go's random map order, so which one comes first differs between nodes
and between full syncs of one node (kubernetes#69599). An externalIP equal to another Service's ClusterIP
captures that Service's traffic (CVE-2020-8554). In nftables mode the Services share one map element, which
holds one value: the last Service kube-proxy wrote takes it, and a listing shows no trace of the other.
Pure: reads the question's trace and the Facts' index of ways in.
"""

from __future__ import annotations

from typing import Any

from iptrace.explain.diagnosis import Diagnosis
from iptrace.explain.facts import Case, label
from iptrace.explain.phrases import service_name
from iptrace.kube.claims import capture_sentence, conflict_fix


def claimants(case: Case) -> list[tuple[Any, str]]:
    """The Service ports whose ways in are this question's address, port and protocol, with how they name it
    ("ClusterIP", "externalIP", "LoadBalancer IP"), one entry per Service port, in the rules' order."""
    proto = case.proto.lower()
    return [(svc, kind) for svc, kind in case.facts.by_address.get(case.dst, [])
            if svc.port == case.dport and svc.protocol.lower() == proto]


def address_conflict(case: Case) -> Diagnosis | None:
    claims = claimants(case)
    if len({label(svc) for svc, _ in claims}) < 2:
        return None
    facts = case.facts
    names = [label(svc) for svc, _ in claims]
    listed = ", ".join(f"{name} ({kind})" for name, (_, kind) in zip(names, claims, strict=True))
    taken = [name for name in dict.fromkeys(o.service for o in case.trace.outcomes if o.service) if name in names]
    lines = {name: facts.rules_for(svc, case.dst) for name, (svc, _) in zip(names, claims, strict=True)}
    by_lines = any(lines.values())
    if taken:
        first = lines.get(taken[0]) or []
        where = f" (line {min(first)})" if first else ""
        if not by_lines:  # (input without lines, nft -j: the taker's first element, quoted)
            found = facts.claim_evidence([svc for name, (svc, _) in zip(names, claims, strict=True)
                                          if name == taken[0]], case.dst)
            where = f" ({found[0].rule})" if found else ""
        here = (f"here {taken[0]} takes the packet{where}" if len(taken) == 1 else
                f"here {' and '.join(taken)} each take some of its outcomes{where}")
    else:
        here = "here none of them forwards this packet"
    others = [name for name in names if name not in taken]
    target = f"{case.target}/{case.proto}"
    detail = (f"kube-proxy writes a rule for each of them, and a packet takes the first that matches: {here}. "
              "kube-proxy writes its Services in random (Go map) order, so another node, or this one after its "
              f"next full sync, may put {' or '.join(others) if taken else 'another'} first: clients of "
              f"{target} then reach the other Service's pods, and which Service answers differs from node to "
              "node (kubernetes#69599). The API does not refuse the same externalIP on two Services.")
    owner = next((name for name, (_, kind) in zip(names, claims, strict=True) if kind == "ClusterIP"), None)
    if owner is not None:
        detail += capture_sentence([n for n, (_, kind) in zip(names, claims, strict=True) if kind != "ClusterIP"],
                                   owner)
    # (a ClusterIP cannot move: the Services that claim it as an externalIP or LoadBalancer address must)
    fix = conflict_fix(service_name(svc) for svc, kind in claims if kind != "ClusterIP")
    evidence = (facts.evidence([n for name in names for n in lines[name]], limit=max(4, len(names))) if by_lines
                else facts.claim_evidence([svc for svc, _ in claims], case.dst)[:max(4, len(names))])
    return Diagnosis("address-conflict", "error",
                     f"{target} is claimed by {len(claims)} Service ports: {listed}", detail, fix, evidence)
