"""`iptables -S` listings: where one table's listing ends and the next begins, and which table a listing
belongs to when its chains do not say. Pure functions for the loader."""

from __future__ import annotations

import re

from iptrace.errors import ParseError
from iptrace.iptables.model import BUILTIN_CHAINS, TABLES

_S_TABLE_HINT_RE = re.compile(r"(?:-t|--table)[ =]?(raw|mangle|nat|filter|security)\b")
_NAT_ONLY_TARGETS = frozenset({"DNAT", "SNAT", "MASQUERADE", "REDIRECT", "NETMAP", "KUBE-MARK-MASQ"})
_FILTER_ONLY_TARGETS = frozenset({"REJECT"})
_MANGLE_ONLY_TARGETS = frozenset({"TPROXY", "TCPMSS", "CHECKSUM", "DSCP", "TOS", "TTL", "HL", "ECN"})
_RAW_ONLY_TARGETS = frozenset({"CT", "NOTRACK"})
# The first line of listings people give for a dump that are not a form iptables-restore reads, and what to run
# instead. `iptables -L` prints `Chain NAME (policy …)` or `Chain NAME (N references)`, then its column header.
_FOREIGN = (
    (re.compile(r"Chain \S+ \((?:policy \S+|\d+ references)"),
     "this is an `iptables -L` listing (a table for people, not a save format); expected iptables-save output: "
     "run `iptables-save` (or `iptables -S`) on the node"),
    (re.compile(r"IP Virtual Server version "),
     "this is `ipvsadm -Ln` output (kube-proxy's IPVS mode); iptrace reads rules, not IPVS virtual servers: "
     "give the node's `iptables-save`, where IPVS mode keeps its KUBE- chains"),
)


def foreign_format(line: str) -> str | None:
    """What a dump's first line shows the text to be, when it is a listing iptrace does not read (and what to give
    instead); None for any other line."""
    for pattern, why in _FOREIGN:
        if pattern.match(line):
            return why
    return None


def split_sections(lines: list[str]) -> list[tuple[str | None, list[tuple[int, str]]]]:
    """An `iptables -S` file may hold several listings (`iptables -S` then `iptables -t nat -S`): a new
    one starts at a comment naming a table or at a `-P` line after rules."""
    sections: list[tuple[str | None, list[tuple[int, str]]]] = []
    hint: str | None = None
    body: list[tuple[int, str]] = []
    seen_rules = False
    for line_no, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            m = _S_TABLE_HINT_RE.search(line)
            if m or "-S" in line:
                if body:
                    sections.append((hint, body))
                hint, body, seen_rules = (m.group(1) if m else None), [], False
            continue
        if line.startswith("-P ") and seen_rules:
            sections.append((hint, body))
            hint, body, seen_rules = None, [], False
        if not line.startswith("-P "):
            seen_rules = True
        body.append((line_no, line))
    if body:
        sections.append((hint, body))
    return sections


def infer_table(body: list[tuple[int, str]], hint: str | None, source: str) -> str:
    """Which table a listing of one table belongs to: from its policies and targets, else `hint`."""
    policies = {line.split()[1] for _, line in body if line.startswith("-P ") and len(line.split()) > 1}
    targets: set[str] = set()
    for _, line in body:
        if line.startswith("-A "):
            for j in ("-j ", "-g "):
                k = line.rfind(j)
                if k >= 0:
                    targets.add(line[k + 3:].split(" ", 1)[0])
    candidates = [name for name in TABLES if policies <= set(BUILTIN_CHAINS[name])]
    votes = {
        "nat": bool(targets & _NAT_ONLY_TARGETS) or any(t.startswith(("KUBE-SEP-", "KUBE-SVC-"))
                                                      for t in targets),
        "filter": bool(targets & _FILTER_ONLY_TARGETS),
        "mangle": bool(targets & _MANGLE_ONLY_TARGETS),
        "raw": bool(targets & _RAW_ONLY_TARGETS),
    }
    voted = [name for name in candidates if votes.get(name)]
    if len(voted) == 1:
        return voted[0]
    if hint:
        return hint
    if policies == {"INPUT", "FORWARD", "OUTPUT"} and not voted:
        return "filter"
    if len(candidates) == 1:
        return candidates[0]
    if policies == {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"}:
        return "nat"
    if policies == set(BUILTIN_CHAINS["mangle"]):
        return "mangle"
    first_line = body[0][0]
    raise ParseError("cannot tell which table this 'iptables -S' listing belongs to; pass --table NAME "
                     "(e.g. --table nat)", source=source, line=first_line, column=1, text=body[0][1])
