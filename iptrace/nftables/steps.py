"""The steps of a trace's path as the layers above read them: each rule (as nft prints it) or map element that
matched, with what it is to kube-proxy (Step.kind) and the Service port it belongs to.

kube-proxy's pieces (in its own `kube-proxy` tables only): an element of `service-ips`/`service-nodeports` is the
dispatch; rules of `endpoint-…` chains (or, in the 1.37 layout, the service chain's own DNAT) are the endpoint;
an element of `no-endpoint-services`/`no-endpoint-nodeports` says no-endpoints (`goto reject-chain`, and so does
the `reject` it leads to) or no-local-endpoints (`drop`); a `firewall-…` chain's drop is the firewall;
`cluster-ips-check` rejects a ClusterIP's unserved port (invalid-port) and drops an unallocated address of the
service CIDR (unallocated). Built only when a path is read.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from iptrace.dataplane import Decision, MapAt, Step
from iptrace.nftables import render
from iptrace.nftables.lines import ElementLines
from iptrace.nftables.model import Element, Nat, Reject, Ruleset, Table, Verdict
from iptrace.nftables.names import (
    CLUSTER_IPS_CHECK,
    FIREWALL_ALLOW_CHECK,
    FIREWALL_IPS,
    KUBE_PROXY_FAMILIES,
    KUBE_PROXY_TABLE,
    NO_ENDPOINT_NODEPORTS,
    NO_ENDPOINT_SERVICES,
    REJECT_CHAIN,
    SERVICE_IPS,
    SERVICE_NODEPORTS,
    split_chain,
)
from iptrace.nftables.values import unquote

INVALID_PORT = "invalid-port"
UNALLOCATED = "unallocated"


def _verdict_of(items: Sequence[Any]) -> str:
    for item in items:
        if isinstance(item, Reject):
            return "reject"
        if isinstance(item, Verdict) and item.kind in ("drop", "accept"):
            return item.kind
        if isinstance(item, Nat) and item.kind == "dnat":
            return "dnat"
    return ""


def element_text(table: Table, set_name: str, elements: Sequence[Element]) -> str:
    """Elements of a set or map as a path shows them, whatever the input's form: `element ip kube-proxy
    service-ips { 10.96.0.10 . udp . 53 : goto service-… }` (nft's own syntax for them; a listing's element line
    alone names neither its set nor its table)."""
    s = table.set(set_name)
    keys = s.key_type if s is not None else ()
    data = s.data_type if s is not None else None
    listed = ", ".join(render.element(e, keys, data) for e in elements)
    return f"element {table.label} {render.name(set_name)} {{ {listed} }}"


def evidence_text(ruleset: Ruleset, lines: ElementLines, line: int) -> str | None:
    """Input line `line` in the form a path shows it (Ruleset.evidence_text): a line of set or map elements as
    its elements (element_text); a listing's rule as `rule ip kube-proxy CHAIN STATEMENT` (nft's syntax for a
    rule: the path's chain column says which chain, the line alone does not, as an element's line names no set,
    and `ip saddr != 198.51.100.0/24 drop` or `reject` alone names no Service); any other line (a transaction's
    `add rule ip kube-proxy CHAIN …` names its chain) as the ruleset's own text."""
    found = lines.at_line(line)
    if found is None:
        text = ruleset.line_text(line)
        chain = _rule_chain(ruleset, line) if text else None
        return rule_in_chain(*chain, text) if chain is not None and text else text
    table, s, elements = found
    return element_text(table, s.name, elements)


def elements_at(ruleset: Ruleset, address: str, port: int, protocol: str) -> tuple[tuple[MapAt, str], ...]:
    """The elements of kube-proxy's sets and maps keyed on `address . protocol . port` (the ways in kube-proxy
    writes there: service-ips, firewall-ips, no-endpoint-services…), by their sets, as element_text shows them:
    for input without lines, the evidence a listing's element lines are."""
    out = []
    for table in ruleset.tables:
        if table.name != KUBE_PROXY_TABLE or table.family not in KUBE_PROXY_FAMILIES:
            continue
        for s in table.sets:
            found = [e for e in s.elements if isinstance(e.key, tuple) and len(e.key) == 3
                     and (e.key[0], str(e.key[1]), e.key[2]) == (address, protocol, port)]
            if found:
                at = MapAt(table.label, s.name, s.handle)
                out.extend((at, element_text(table, s.name, (e,))) for e in found)
    return tuple(out)


def handle_texts(ruleset: Ruleset, family: str, handles: Collection[int]) -> tuple[str, dict[int, str]]:
    """The label of kube-proxy's table of `family` (`ip kube-proxy`) and its rules of these kernel handles, each as
    step_text names a rule without a line (rule_in_chain): for input without lines, the evidence a listing's rule
    lines are. Handles are unique in a table."""
    from iptrace.nftables.era import kube_table

    table = kube_table(ruleset, family)
    if table is None or not handles:
        return "", {}
    label = table.label
    return label, {r.handle: rule_in_chain(label, c.name, r.text) for c in table.chains for r in c.rules
                   if r.handle in handles}


def rule_in_chain(table: str, chain: str, text: str) -> str:
    """A rule standing alone, named by its table (`ip kube-proxy`) and chain as nft's syntax for a rule does."""
    return f"rule {table} {render.name(chain)} {text}"


def _rule_chain(ruleset: Ruleset, line: int) -> tuple[str, str] | None:
    """(`ip kube-proxy`, chain) when input line `line` of a listing holds a rule, else None (a transaction's
    `add rule` line names its chain). The chain is the block the line is in, found by reading up to its header (a
    chain's rules are a few lines below it; a search of every chain by line would read 55,000 chains at 5,000
    Services)."""
    source = ruleset.source_text
    if ruleset.format != "nft-list" or source is None:
        return None
    for at in range(line - 1, 0, -1):
        header = source.line(at).strip()
        if header.startswith("chain "):
            break
        if header.startswith(("table ", "set ", "map ")):
            return None
    else:
        return None
    name = header[len("chain "):].rstrip("{").strip()
    name = unquote(name) if name.startswith('"') else name
    for table in ruleset.tables:
        chain = table.chain(name)
        if chain is not None and chain.line == at:
            return (table.label, name) if any(r.line == line for r in chain.rules) else None
    return None


class StepMaker:
    """Turns path entries (chain code, compiled rule, set name or None, element or None) into Steps."""

    def __init__(self, ruleset: Ruleset, names: Mapping[str, str] | None) -> None:
        self.ruleset = ruleset
        self.names = names
        self.lines = ElementLines(ruleset)
        self._texts: dict[int, str] = {}
        self._decisions: dict[tuple[str, str, str, Any], Decision] = {}

    def label(self, chain: str) -> str | None:
        if self.names is not None:
            found = self.names.get(chain)
            if found:
                return str(found)
        found = split_chain(chain)
        return found[2] if found is not None else None

    def element_line(self, code: Any, set_name: str, element: Element) -> int:
        table = code.table.table
        s = table.set(set_name)
        return self.lines.line(table.family, table.name, s, element) if s is not None else 0

    def element_of(self, code: Any, set_name: str, line: int) -> MapAt | None:
        """Where an element is without a line (nft -j input): its set, by table, name and kernel handle."""
        if line:
            return None
        s = code.table.table.set(set_name)
        return MapAt(code.table.label, set_name, s.handle if s is not None else None)

    def element_decision(self, code: Any, set_name: str, element: Element) -> Decision:
        """Who decided when an element's verdict (drop, accept) ends the packet: the element itself."""
        key = (code.table.label, code.name, set_name, element.key)
        found = self._decisions.get(key)
        if found is None:
            line = self.element_line(code, set_name, element)
            found = self._decisions[key] = Decision(code.table.label, code.name, line,
                                                    element_of=self.element_of(code, set_name, line))
        return found

    def _rule_text(self, code: Any, c: Any) -> str:
        # Keyed by the rule's id, not its compiled form's: the walker drops the code of chains it has not met
        # lately (chains.CODES_SIZE), and a rule lives as long as its ruleset, so its id is never reused.
        rule = c.rule
        found = self._texts.get(id(rule))
        if found is None:
            # A kernel listing's rule as the kernel printed it (it keeps e.g. a protocol match iptables-nft
            # wrote that nft's own rules leave implied); a transaction's or JSON's as nft would list it.
            listed = rule.text if self.ruleset.format == "nft-list" else ""
            found = self._texts[id(rule)] = listed or render.rule(rule, code.table.family, verbatim=True)
        return found

    def steps(self, hits: list[Any]) -> tuple[Step, ...]:
        out: list[Step] = []
        context: tuple[str, str | None] | None = None  # (kind, service) a no-endpoints element passes on
        for code, c, set_name, element in hits:
            table = code.table.table
            kube = table.name == KUBE_PROXY_TABLE and table.family in KUBE_PROXY_FAMILIES
            chain = code.name
            if element is not None:
                text = element_text(table, set_name, (element,))
                kind, service = "", element.comment
                if kube:
                    target = element.data.target if isinstance(element.data, Verdict) else None
                    if set_name in (SERVICE_IPS, SERVICE_NODEPORTS):
                        kind = "dispatch"
                        service = self.label(target) if target else service
                    elif set_name in (NO_ENDPOINT_SERVICES, NO_ENDPOINT_NODEPORTS):
                        verdict = element.data.kind if isinstance(element.data, Verdict) else ""
                        kind = "no-local-endpoints" if verdict == "drop" else "no-endpoints"
                        context = (kind, service)
                    elif set_name == FIREWALL_IPS:
                        service = service or (self.label(target) if target else None)
                line = self.element_line(code, set_name, element)
                out.append(Step(table.label, chain, line, text, kind, service,
                                element_of=self.element_of(code, set_name, line)))
                continue
            rule = c.rule
            kind, service = "", None
            if kube:
                kind, service = self._kube_kind(chain, rule.items, context)
            out.append(Step(table.label, chain, rule.line or 0, self._rule_text(code, c), kind, service,
                            handle=rule.handle))
        return tuple(out)

    def _kube_kind(self, chain: str, items: Sequence[Any], context: tuple[str, str | None] | None
                   ) -> tuple[str, str | None]:
        verdict = _verdict_of(items)
        if chain == REJECT_CHAIN:
            return context if context is not None else ("no-endpoints", None)
        if chain == CLUSTER_IPS_CHECK:
            return {"reject": INVALID_PORT, "drop": UNALLOCATED}.get(verdict, ""), None
        if chain == FIREWALL_ALLOW_CHECK:
            return ("firewall" if verdict == "drop" else ""), None
        found = split_chain(chain)
        if found is None:
            return "", None
        word = found[0]
        service = self.label(chain)
        if word == "endpoint" or (word in ("service", "svc", "local") and verdict == "dnat"):
            return "endpoint", service
        if word == "firewall" and verdict == "drop":
            return "firewall", service
        return "", service

    def service(self, hits: list[Any]) -> str | None:
        """The Service port an outcome belongs to: the first step that names one."""
        for step in self.steps(hits):
            if step.service:
                return step.service
        return None
