"""What changed between two dumps, at the level people think about: Service ports added or removed, their
ways in, policies and endpoints, how each kind of client fares through each way in, and — outside kube-proxy's
own chains — rules added or removed.

Both sides are iptrace.kube.analysis.Analysis objects, of the same dataplane or not: an iptables dump against an
nftables ruleset of the same cluster is the migration check, which says whether every Service port is forwarded
alike (`Diff.equivalent`) and notes what one mode cannot show (iptrace.kube.migration). Rules outside
kube-proxy's are compared as text (counters and line numbers ignored), in order, with difflib, and only between
dumps of one dataplane. Pure.
"""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from iptrace.dataplane import Trace, join_host_port
from iptrace.kube import migration
from iptrace.kube.compare import listing, view_service_label
from iptrace.kube.fleets import other_clusters
from iptrace.kube.sharing import shared_claims
from iptrace.kube.view import EXTERNAL, NODE, OUTSIDE_RANGES, POD, EntryView, ServicePortView
from iptrace.text import counted


@dataclass(frozen=True, slots=True)
class FieldChange:
    field: str  # e.g. "node_port", "external_traffic_policy"
    before: object
    after: object


@dataclass(frozen=True, slots=True)
class EndpointChange:
    endpoint: str  # ip:port
    change: str  # "added" | "removed" | "probability" | "locality"
    before: float | bool | None = None
    after: float | bool | None = None


@dataclass(frozen=True, slots=True)
class ForwardingChange:
    """One way in (present on both sides) through which one kind of client fares differently."""

    way: str  # "10.96.0.10:53/udp", "<node>:30080"
    client: str  # external | outside-source-ranges | pod | node
    before: str  # "DNAT to 10.244.1.7:8080 (masqueraded)", "DROP", "REJECT", "CONTINUE (no rule decides)"
    after: str
    node_address: bool = False  # a nodePort at a node address only one mode accepts nodePorts on (NodeAddressGap)


@dataclass(frozen=True, slots=True)
class NodeAddressGap:
    """Node addresses only one side accepts nodePorts on, at each of which the same Service ports fare otherwise
    from outside. A node lists every local address (cni0, docker0, …): text says this once, where each nodePort
    at each address would bury every other difference; JSON keeps each as a `forwarding` change of its own."""

    addresses: tuple[str, ...]
    accepting: str  # "a" | "b": the side whose rules accept every nodePort there
    elsewhere: tuple[str, ...]  # the node addresses the other side accepts nodePorts on (its --nodeport-addresses)
    services: tuple[str, ...]  # the Service ports whose nodePort fares otherwise there
    example: ForwardingChange  # one of them, traced (at the first address, the lowest nodePort)
    example_service: str
    family: str = ""


@dataclass(frozen=True, slots=True)
class ServiceChange:
    service: str  # ns/svc:port (with "/udp" etc. when not TCP)
    fields: tuple[FieldChange, ...]
    endpoints: tuple[EndpointChange, ...]
    forwarding: tuple[ForwardingChange, ...] = ()
    family: str = ""  # ipv4 | ipv6 (kube-proxy names a dual-stack Service's ports alike in both families)


@dataclass(frozen=True, slots=True)
class ServiceSide:
    """A Service port that exists on one side only."""

    service: str
    cluster_ip: str | None
    port: int | None
    node_port: int | None
    endpoints: tuple[str, ...]
    family: str = ""


@dataclass(frozen=True, slots=True)
class RuleChange:
    table: str
    chain: str
    change: str  # "added" | "removed" | "chain-added" | "chain-removed" | "policy"
    rule: str  # "-A CHAIN …" as iptables-save prints it, without counters (or the chain line)
    line: int  # line in A for removed, in B for added


@dataclass(frozen=True, slots=True)
class Diff:
    a: str
    b: str
    era_a: str
    era_b: str
    added: tuple[ServiceSide, ...]
    removed: tuple[ServiceSide, ...]
    changed: tuple[ServiceChange, ...]
    rules: tuple[RuleChange, ...]
    mode_a: str = "iptables"  # kube-proxy's proxy mode on each side (iptables, nftables, …)
    mode_b: str = "iptables"
    notes: tuple[str, ...] = ()  # what one mode cannot show; never a Service-port difference
    warnings: tuple[str, ...] = ()  # what makes the comparison itself doubtful (two clusters' nodes)
    families: tuple[str, ...] = ()  # the IP families compared (ipv4, ipv6)
    node_address_gaps: tuple[NodeAddressGap, ...] = ()  # (their ways are `forwarding` changes, node_address=True)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.rules) and self.era_a == self.era_b

    @property
    def equivalent(self) -> bool:
        """Every Service port is forwarded alike on both sides (rules outside kube-proxy's and the layout's
        version aside)."""
        return not (self.added or self.removed or self.changed)


_FIELDS = ("cluster_ip", "port", "node_port", "external_ips", "lb_ips", "lb_source_ranges",
           "health_check_node_port", "external_traffic_policy", "internal_traffic_policy",
           "session_affinity_timeout", "no_endpoints", "no_local_endpoints")


def _side(sp: ServicePortView, family: str) -> ServiceSide:
    return ServiceSide(view_service_label(sp), sp.cluster_ip, sp.port, sp.node_port,
                       tuple(ep.address for ep in sp.endpoints), family)


def _service_change(a: ServicePortView, b: ServicePortView, notes: migration.Notes | None,
                    more: Callable[[ServicePortView, ServicePortView, bool], list[ForwardingChange]] | None = None,
                    ) -> ServiceChange | None:
    """`notes` is given for a cross-mode diff: then LB IPs and externalIPs are compared together (one field,
    `external_or_lb_ips`), a health check nodePort the nftables side cannot show is not compared, and ways in are
    matched by address, port and protocol. `more(a, b, compare_reach)`: ways in of the ports' own beyond their
    entries (a nodePort on a node address only one mode accepts them on)."""
    fields = []
    for name in _FIELDS:
        before, after = getattr(a, name), getattr(b, name)
        if notes is not None and name == "external_ips":
            continue  # (with the LB IPs, next)
        if notes is not None and name == "lb_ips":  # one change of both: one mode may read an LB IP as externalIP
            notes.lb_ips(a, b)
            name, before, after = "external_or_lb_ips", migration.ips(a), migration.ips(b)
        if isinstance(before, tuple):
            before, after = tuple(sorted(before)), tuple(sorted(after))
        if before == after:
            continue
        if notes is not None and name == "health_check_node_port" and (before is None or after is None):
            notes.health_check(a, before or after)
            continue
        if notes is not None and name == "lb_source_ranges" and a.no_endpoints and b.no_endpoints and not (
                before and after):
            notes.ranges_unseen(a, before or after)
            continue
        fields.append(FieldChange(name, before, after))
    ea = {ep.address: ep for ep in a.endpoints}
    eb = {ep.address: ep for ep in b.endpoints}
    endpoints = []
    for addr in sorted(ea.keys() | eb.keys()):
        x, y = ea.get(addr), eb.get(addr)
        if x is None:
            endpoints.append(EndpointChange(addr, "added", None, y.probability if y else None))
        elif y is None:
            endpoints.append(EndpointChange(addr, "removed", x.probability, None))
        else:
            gap = abs(x.probability - y.probability)
            if gap > migration.SHARE_TOLERANCE:
                endpoints.append(EndpointChange(addr, "probability", x.probability, y.probability))
            elif notes is not None and len(ea) > 1:  # (rounding: a changed split is a difference, not a note)
                notes.shares([gap])
            if x.local != y.local:
                endpoints.append(EndpointChange(addr, "locality", x.local, y.local))
    forwarding = _forwarding(a, b, notes, compare_reach=not endpoints)
    if more is not None:
        forwarding += more(a, b, not endpoints)
    if not fields and not endpoints and not forwarding:
        return None
    return ServiceChange(view_service_label(a), tuple(fields), tuple(endpoints), tuple(forwarding))


def _fares(entry: EntryView, compare_reach: bool) -> dict[str, str]:
    """How each kind of client fares through a way in, in words (masquerade only for DNATed traffic)."""
    def words(verdict: str, reaches: tuple[str, ...], masq: bool) -> str:
        if verdict != "DNAT":
            return "CONTINUE (no rule decides)" if verdict == "CONTINUE" else verdict
        text = "DNAT" + (f" to {', '.join(sorted(reaches))}" if compare_reach else "")
        return text + (" (masqueraded)" if masq else "")

    main = tuple(r.endpoint for r in entry.reaches)
    out = {EXTERNAL: words(entry.verdict, main, EXTERNAL in entry.masquerade_sources)}
    paths = {p.source: p for p in entry.paths}
    for kind in (OUTSIDE_RANGES, POD, NODE):
        p = paths.get(kind)
        if p is not None:
            out[kind] = words(p.verdict, tuple(r.endpoint for r in p.reaches), p.masquerade)
        elif kind != OUTSIDE_RANGES:
            out[kind] = words(entry.verdict, main, kind in entry.masquerade_sources)
    return out


def _forwarding(a: ServicePortView, b: ServicePortView, notes: migration.Notes | None,
                compare_reach: bool) -> list[ForwardingChange]:
    """Ways in present on both sides through which some kind of client fares differently. Across modes, traffic
    that reaches no endpoint on either side and is refused or dropped on one but left to no rule on the other is
    what one mode cannot show (iptables mode hooks no "has no endpoints" rule for the node's own connections to
    an externalIP): a note, not a difference."""
    def key(e: EntryView) -> tuple[object, ...]:
        return migration.way_key(e.kind, e.address, e.port, e.protocol, notes is not None)

    eb = {key(e): e for e in migration.comparable_entries(b.entries)}
    out = []
    for x in migration.comparable_entries(a.entries):
        y = eb.get(key(x))
        if y is None:
            continue
        fa, fb = _fares(x, compare_reach), _fares(y, compare_reach)
        way = x.label + ("" if x.protocol == "tcp" else f"/{x.protocol}")
        for kind in fa:
            if kind not in fb or fa[kind] == fb[kind]:
                continue
            if notes is not None and migration.undecided_versus_refused(fa[kind], fb[kind]):
                notes.unanswered(view_service_label(a), way, kind, fa[kind], fb[kind])
                continue
            if notes is not None and a.no_endpoints and b.no_endpoints and {fa[kind], fb[kind]} == {"REJECT", "DROP"}:
                notes.refused_or_dropped(view_service_label(a), way, kind, fa[kind], fb[kind])
                continue
            out.append(ForwardingChange(way, kind, fa[kind], fb[kind]))
    return out


def _trace_fares(trace: Trace, compare_reach: bool) -> str:
    """What an outside client's traced connection gets, in _fares' words."""
    verdicts = sorted({o.verdict for o in trace.outcomes})
    if verdicts != ["DNAT"]:
        return " or ".join("CONTINUE (no rule decides)" if v == "CONTINUE" else v for v in verdicts)
    reaches = sorted({o.destination for o in trace.outcomes if o.destination})
    return ("DNAT" + (f" to {', '.join(reaches)}" if compare_reach else "")
            + (" (masqueraded)" if any(o.masquerade for o in trace.outcomes) else ""))


class _NodeAddressWays:
    """The ways in at the node addresses only one mode accepts nodePorts on (migration.nodeport_addresses_apart):
    each Service port's nodePort there, traced from an outside client on both sides. A client of such an address
    breaks (or starts to work) with the migration: a difference, as any way in that forwards otherwise (but, as
    there, reaching no endpoint in either mode, refused in one and left to no rule in the other, is a note).
    Called as _service_change's `more`; then gaps() groups what it found by address."""

    def __init__(self, a: Any, b: Any, notes: migration.Notes) -> None:
        self.a, self.b, self.notes = a, b, notes
        self.addresses = migration.nodeport_addresses_apart(a, b)
        self.found: dict[str, list[tuple[int, str, ForwardingChange]]] = {}  # address: (nodePort, Service port, …)

    def __call__(self, x: ServicePortView, y: ServicePortView, compare_reach: bool) -> list[ForwardingChange]:
        if not x.node_port or x.node_port != y.node_port or x.protocol != y.protocol:
            return []
        out = []
        for address in self.addresses:
            traces = [migration.trace_from_outside(side, address, x.node_port, x.protocol) for side in (self.a, self.b)]
            if traces[0] is None or traces[1] is None:
                continue
            before, after = (_trace_fares(t, compare_reach) for t in traces)
            if before == after:
                continue
            way = join_host_port(address, x.node_port) + ("" if x.protocol == "tcp" else f"/{x.protocol}")
            if migration.undecided_versus_refused(before, after):
                self.notes.unanswered(view_service_label(x), way, EXTERNAL, before, after)
            else:
                change = ForwardingChange(way, EXTERNAL, before, after, node_address=True)
                self.found.setdefault(address, []).append((x.node_port, view_service_label(x), change))
                out.append(change)
        return out

    def gaps(self) -> tuple[NodeAddressGap, ...]:
        """The addresses that differ alike (the side accepting nodePorts there, the Service ports concerned),
        grouped; in address order."""
        groups: dict[tuple[str, tuple[str, ...]], list[str]] = {}
        for address in sorted(self.found, key=ipaddress.ip_address):
            side = "a" if self.a.view.node_port_addresses.accepts(address) else "b"
            groups.setdefault((side, tuple(sorted({s for _, s, _ in self.found[address]}))), []).append(address)
        out = []
        for (side, services), addresses in groups.items():
            other = (self.b if side == "a" else self.a).view.node_port_addresses
            elsewhere = tuple(x for x in migration.node_addresses(self.a, self.b) if other.accepts(x))
            _, label, example = min(self.found[addresses[0]], key=lambda found: (found[0], found[1]))
            out.append(NodeAddressGap(tuple(addresses), side, elsewhere, services, example, label, self.a.family))
        return tuple(out)


def _other_rules(a: Any, b: Any) -> list[RuleChange]:
    """Rules of the chains kube-proxy did not write, rule by rule as text (one dataplane on both sides)."""
    out: list[RuleChange] = []
    if a.dataplane.name != b.dataplane.name:
        return out
    chains_a = {(c.table, c.name): c for c in a.dataplane.foreign_chains(a.ruleset)}
    chains_b = {(c.table, c.name): c for c in b.dataplane.foreign_chains(b.ruleset)}
    for key in list(chains_a) + [k for k in chains_b if k not in chains_a]:
        tname, cname = key
        ca, cb = chains_a.get(key), chains_b.get(key)
        if ca is None and cb is not None:
            out.append(RuleChange(tname, cname, "chain-added", cb.header, cb.line))
        elif cb is None and ca is not None:
            out.append(RuleChange(tname, cname, "chain-removed", ca.header, ca.line))
        elif ca is not None and cb is not None and ca.header != cb.header:
            out.append(RuleChange(tname, cname, "policy", f"{ca.header} -> {cb.header.split()[-1]}", cb.line))
        ra = list(ca.rules) if ca is not None else []
        rb = list(cb.rules) if cb is not None else []
        texts_a = [r[0] for r in ra]
        texts_b = [r[0] for r in rb]
        if texts_a == texts_b:
            continue
        matcher = difflib.SequenceMatcher(a=texts_a, b=texts_b, autojunk=False)
        for op, i1, i2, j1, j2 in matcher.get_opcodes():
            if op == "equal":
                continue
            for text, line in ra[i1:i2]:
                out.append(RuleChange(tname, cname, "removed", text, line))
            for text, line in rb[j1:j2]:
                out.append(RuleChange(tname, cname, "added", text, line))
    return out


def diff(a: Any, b: Any) -> Diff:
    """The difference from `a` to `b` (iptrace.kube.analysis.Analysis of one family each; build both with the
    same cluster data so that comment-less chains are named alike)."""
    va, vb = a.view, b.view
    notes = migration.Notes(a, b) if migration.cross_mode(a, b) else None
    sa = {view_service_label(sp): sp for sp in va.services}
    sb = {view_service_label(sp): sp for sp in vb.services}
    added = tuple(_side(sb[k], a.family) for k in sorted(sb.keys() - sa.keys()))
    removed = tuple(_side(sa[k], a.family) for k in sorted(sa.keys() - sb.keys()))
    changed = []
    more = _NodeAddressWays(a, b, notes) if notes is not None else None
    for k in sorted(sa.keys() & sb.keys()):
        change = _service_change(sa[k], sb[k], notes, more)
        if change is not None:
            changed.append(replace(change, family=a.family))
    mode_a, mode_b = migration.modes(a, b)
    why = other_clusters(*({(k, sp.cluster_ip) for k, sp in side.items() if sp.cluster_ip} for side in (sa, sb)))
    warnings: tuple[str, ...] = () if why is None else (
        f"the two dumps look like nodes of different clusters ({why}): their Services differ as a whole; diff "
        "two nodes of one cluster, or one node before and after a change",)
    warnings += shared_addresses({c.service for c in changed}, sa, sb)
    warnings += tuple(_read_past(x.ruleset) for x in (a, b) if x.ruleset.skipped)
    warnings += tuple(_no_rules(x, other, what) for x, other, what in ((a, b, "added"), (b, a, "removed"))
                      if not x.view.era.has_rules)
    warnings += tuple(
        f"{x.ruleset.source}: {v.era.other_mode}, beside kube-proxy's {v.era.mode}-mode rules: the kernel runs "
        f"both (the first DNAT decides); this comparison reads the {v.era.mode}-mode rules only, `iptrace trace` "
        "follows both" for x, v in ((a, va), (b, vb)) if v.era.has_rules and v.era.other_mode)
    return Diff(a.ruleset.source, b.ruleset.source, va.era.name, vb.era.name, added, removed, tuple(changed),
                tuple(_other_rules(a, b)), mode_a, mode_b, notes.texts(a, b) if notes is not None else (), warnings,
                (a.family,), more.gaps() if more is not None else ())


def _no_rules(x: Any, other: Any, counted_as: str) -> str:
    """A side without kube-proxy's rules (the wrong file, or another backend's): the diff is no comparison."""
    why = "; ".join(x.layout.warnings) or "no kube-proxy table or chain"
    text = f"{x.ruleset.source} holds no kube-proxy rules to compare ({why})"
    if other.view.era.has_rules:
        text += f": every Service port of {other.ruleset.source} counts as {counted_as}"
    return text


def _read_past(ruleset: Any) -> str:
    """A side --lenient read past problems (a truncated file): its differences may be what was not read."""
    skipped = ruleset.skipped
    where = f"line {skipped[0].line}: " if skipped[0].line else ""
    return (f"{ruleset.source}: read with --lenient past {counted(len(skipped), 'problem')} (first: {where}"
            f"{skipped[0].message}): the Service ports it lacks or shows otherwise may be in what could not be read")


def family_pairs(lefts: Sequence[Any], rights: Sequence[Any]) -> list[tuple[Any, Any]]:
    """The analyses to compare, one pair per IP family both sides have kube-proxy rules for (a dual-stack node's
    nft ruleset has both; an iptables dump one); each side's first family when they share none."""
    by_family = {r.family: r for r in rights}
    return [(x, by_family[x.family]) for x in lefts if x.family in by_family] or [(lefts[0], rights[0])]


def combined(diffs: Sequence[Diff], lefts: Sequence[Any], rights: Sequence[Any]) -> Diff:
    """One diff of the families' diffs (of family_pairs(lefts, rights)): each Service port of each family, notes
    (each family's said to be its own, when there are two) and warnings once, and a warning for a family only
    one side has rules for. Rules outside kube-proxy's are the same rulesets' in every family's diff: the
    first's hold them all."""
    compared = {x.family for x in lefts} & {y.family for y in rights}
    families = tuple(f for d in diffs for f in d.families)
    warnings = [w for d in diffs for w in d.warnings]
    if not compared:  # (family_pairs compared the sides' first families: Service ports of two families)
        def having(analyses: Sequence[Any]) -> str:
            return " and ".join(family_name(x.family) for x in analyses)

        warnings.insert(0, f"no IP family in common: {lefts[0].ruleset.source} has kube-proxy rules for "
                           f"{having(lefts)} only, {rights[0].ruleset.source} for {having(rights)} only: their "
                           "Service ports cannot match; diff the same family of both (a node's iptables-save with "
                           "another's iptables-save, ip6tables-save with ip6tables-save)")
    for side, analyses in (("a", lefts), ("b", rights)):
        warnings.extend(f"{family_name(x.family)} not compared: only {side} ({x.ruleset.source}) has "
                        "kube-proxy rules for it; diff it with the node's rules of that family (its "
                        "ip6tables-save or iptables-save output, or its whole `nft list ruleset`)"
                        for x in analyses if compared and x.family not in compared)
    return replace(diffs[0], a=", ".join(dict.fromkeys(d.a for d in diffs)),  # (a node's two dumps, when read)
                   b=", ".join(dict.fromkeys(d.b for d in diffs)), added=tuple(s for d in diffs for s in d.added),
                   removed=tuple(s for d in diffs for s in d.removed),
                   changed=tuple(c for d in diffs for c in d.changed),
                   notes=tuple(dict.fromkeys(n if len(diffs) == 1 else f"{family_name(d.families[0])}: {n}"
                                             for d in diffs for n in d.notes)),
                   warnings=tuple(dict.fromkeys(warnings)), families=families,
                   node_address_gaps=tuple(g for d in diffs for g in d.node_address_gaps))


def family_name(family: str) -> str:
    """ipv4 -> IPv4, as people write it."""
    return family.replace("ip", "IP")


def shared_addresses(changed: set[str], *sides: dict[str, ServicePortView]) -> tuple[str, ...]:
    """A warning when changed Service ports have an address, port and protocol another Service port claims too
    (the same externalIP on two Services): which of them takes the packet depends on the order kube-proxy wrote
    them in (iptables mode: the first rule, in Go's random map order; nftables mode: the element written last),
    so such an address can differ between two dumps without any change to the Services."""
    claims = shared_claims((label, e.kind, e.address, e.port, e.protocol)
                           for side in sides for label, sp in side.items() for e in sp.entries)
    shared = {where: labels for where, labels in claims.items() if changed.intersection(labels)}
    if not shared:
        return ()
    (address, port, protocol), labels = min(shared.items(), key=lambda kv: str(kv[0]))
    where = f"{join_host_port(address, port)}/{protocol}"
    involved = sorted({label for labels in shared.values() for label in labels} & changed)
    return (f"{len(shared)} address{'es' if len(shared) != 1 else ''} of changed Service ports "
            f"{'are' if len(shared) != 1 else 'is'} claimed by several Service ports (e.g. {where}: "
            f"{', '.join(sorted(labels))}): the first rule kube-proxy wrote for it takes the packet in iptables "
            "mode, the last element it wrote in nftables mode, and it writes them in random order, so such an "
            "address can go to another Service on each side with nothing changed; give each Service its own "
            f"address (iptrace explain --dst {where}). Service ports concerned: {listing(involved, 8)}",)
