"""Addresses claimed by several Service ports on one node: the same externalIP (or LoadBalancer address) and
port on two Services, or an externalIP that is another Service's ClusterIP. The API allows it; kube-proxy writes
a rule for each, and the first one takes the packet (iptables mode) — in the order it writes its Services, Go's
random map order, so nodes of one cluster can send the address to different Services (kubernetes#69599). An
audit reports each such address per node with the Service port that takes it there. Pure, dataplane-free.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from iptrace.dataplane import join_host_port
from iptrace.kube.compare import Finding, view_service_label
from iptrace.kube.evidence import EvidenceAt
from iptrace.kube.sharing import KIND_NAMES, shared_claims
from iptrace.kube.view import CLUSTER_IP, EntryView, KubeView

ADDRESS_CONFLICT = "address-conflict"


def claimed(view: KubeView) -> dict[tuple[str, int, str], list[tuple[str, EntryView]]]:
    """(address, port, protocol) -> [(Service port label, its way in)] where several Service ports claim it."""
    entries: dict[tuple[str, tuple[str, int, str]], EntryView] = {}
    ways = []
    for sp in view.services:
        label = view_service_label(sp)
        for e in sp.entries:
            ways.append((label, e.kind, e.address, e.port, e.protocol))
            entries.setdefault((label, (e.address or "", e.port, e.protocol)), e)
    return {where: [(label, entries[(label, where)]) for label in labels]
            for where, labels in shared_claims(ways).items()}


def capture_sentence(capturers: Iterable[str], owner: str) -> str:
    """What it means when Service ports claim another's ClusterIP as their own address."""
    return (f" {' and '.join(capturers)} claims {owner}'s ClusterIP as its own address, which lets it capture "
            f"{owner}'s traffic (CVE-2020-8554).")


def conflict_fix(movers: Iterable[str]) -> str:
    """The fix of an address several Service ports claim (`movers`: those that can move: not a ClusterIP)."""
    return ("give each Service port its own address or port: change spec.externalIPs (or the LoadBalancer "
            f"address) of {' or '.join(dict.fromkeys(movers))}; the DenyServiceExternalIPs admission plugin (or an "
            "admission policy that restricts externalIPs) keeps it from happening again")


Claims = list[tuple[tuple[str, int, str], list[tuple[str, EntryView]]]]


def claims_of(view: KubeView) -> Claims:
    """`claimed`, in the order the findings list them."""
    return sorted(claimed(view).items())


def claim_lines(found: Claims) -> set[int]:
    """The lines the findings of `found` (claims_of) quote."""
    return {n for _, claims in found for _, e in claims for n in e.lines}


# For input without lines (nft -j): the elements keyed on an address, port and protocol (Ruleset.elements_at).
Elements = Callable[[str, int, str], tuple[tuple[EvidenceAt, str], ...]]


def claim_findings(view: KubeView, node: str, line_texts: Callable[[Iterable[int]], dict[int, str | None]],
                   found: Claims | None = None, elements: Elements | None = None) -> list[Finding]:
    """An `address-conflict` finding per address several Service ports claim on this node, naming the one that
    takes a client's packet here (the one whose own chains its way in crosses). `found`: claims_of(view), when
    worked out already; `elements` (the ruleset's elements_at): the evidence of claims whose ways in have no
    lines, by the sets of the elements that write them."""
    if found is None:
        found = claims_of(view)
    if not found:
        return []
    # (one look-up for every line: an iptables ruleset finds lines in one pass over its rules)
    texts = line_texts(claim_lines(found))
    out = []
    for (address, port, protocol), claims in found:
        target = f"{join_host_port(address, port)}/{protocol}"
        names = [f"{label} ({KIND_NAMES[e.kind]})" for label, e in claims]
        winners = [label for label, e in claims if e.verdict == "DNAT" and e.via]
        if len(winners) == 1:
            here = f"on this node {winners[0]} takes it"
        elif winners:
            here = (f"on this node {' and '.join(winners)} each take some clients (the first rule that matches a "
                    "client wins)")
        else:
            here = "on this node none of them forwards it"
        lines = sorted({n for _, e in claims for n in e.lines})
        capture = [label for label, e in claims if e.kind != CLUSTER_IP]
        owner = next((label for label, e in claims if e.kind == CLUSTER_IP), None)
        detail = ("kube-proxy writes a rule for each of them, and the first one takes the packet; it writes its "
                  "Services in random (Go map) order, so other nodes, and this one after its next full sync, may "
                  "send this address to another of them (kubernetes#69599). Compare this finding across nodes.")
        if owner is not None:
            detail += capture_sentence(capture, owner)
        evidence: tuple[tuple[EvidenceAt, str], ...] = tuple((n, texts.get(n) or "") for n in lines)
        if not evidence and elements is not None:
            evidence = elements(address, port, protocol)
        out.append(Finding(
            ADDRESS_CONFLICT, "error", node, winners[0] if winners else claims[0][0],
            f"{target} is claimed by {len(claims)} Service ports: {', '.join(names)}; {here}", detail,
            conflict_fix(capture), evidence))
    return out
