"""Renders the kube-proxy view (`iptrace services`): a small flow per Service port for people, and one JSON
object per Service port for scripts (keys documented in the README's JSON reference). Returns str/data; no I/O."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from json.encoder import encode_basestring
from typing import TYPE_CHECKING, Any

from iptrace.dataplane import RuleAt
from iptrace.kube.view import (
    CLUSTER_IP,
    EXTERNAL_IP,
    HEALTH_CHECK,
    LOAD_BALANCER,
    MASQ_ALWAYS,
    MASQ_NEVER,
    MASQ_OFF_POD,
    NODE,
    NODE_PORT,
    OUTSIDE_RANGES,
    POD,
    EndpointView,
    EntryView,
    KubeView,
    ServicePortView,
    SourcePath,
)
from iptrace.render.json import _COMPACT, percent, share

if TYPE_CHECKING:
    from iptrace.render.prose import Prose

_KIND_NAMES = {CLUSTER_IP: "ClusterIP", NODE_PORT: "NodePort", EXTERNAL_IP: "externalIP",
               LOAD_BALANCER: "LoadBalancer IP", HEALTH_CHECK: "health check"}
_SOURCE_NAMES = {POD: "from a pod", NODE: "from the node itself",
                 OUTSIDE_RANGES: "from outside loadBalancerSourceRanges"}


# ------------------------------------------------------------------------------------------------ JSON


# A 5,000-Service dump renders ~100,000 endpoint objects: the loops below spell EndpointView.address inline,
# and read share() (a round to 12 decimals, ~0.2 us) from _SHARES, where the few shares a dump has
# (1/10, 1/9, …: every Service of ten endpoints has the same) are rounded once each.


class _Shares(dict[float, float]):
    """probability -> share(probability), filled as read (cleared when it grows large: shares of many
    different endpoint counts)."""

    __slots__ = ()

    def __missing__(self, probability: float) -> float:
        if len(self) >= _SHARES_LIMIT:
            self.clear()
        rounded = self[probability] = share(probability)
        return rounded


_SHARES_LIMIT = 4096
_SHARES = _Shares()


def _entry_json(e: EntryView, shares: _Shares = _SHARES) -> dict[str, Any]:
    return {
        "kind": e.kind,
        "address": e.address,
        "port": e.port,
        "protocol": e.protocol,
        "chain": e.chain or None,
        "verdict": e.verdict,
        "endpoints": [{"address": a, "probability": shares[p]} for a, p in e.reaches],
        "masquerade": e.masquerade,
        "masquerade_sources": list(e.masquerade_sources),
        "via": list(e.via),
        "other_sources": [_path_json(p) for p in e.paths] if e.paths else [],
        "notes": list(e.notes),
        "lines": list(e.lines),
    }


def _path_json(p: SourcePath, shares: _Shares = _SHARES) -> dict[str, Any]:
    return {
        "source": p.source,
        "verdict": p.verdict,
        "endpoints": [{"address": a, "probability": shares[q]} for a, q in p.reaches],
        "masquerade": p.masquerade,
        "via": list(p.via),
        **_decided_json(p.decided_by),
    }


def _decided_json(decided: int | RuleAt) -> dict[str, Any]:
    """`decided_by_line`; for input without lines (nft -j) null, and the rule's table, chain and kernel handle in
    `decided_by_rule`, as a trace's `decided_by` names it."""
    if type(decided) is int:
        return {"decided_by_line": decided or None}
    return {"decided_by_line": None,
            "decided_by_rule": {"table": decided.table, "chain": decided.chain, "handle": decided.handle}}


def service_to_json(s: ServicePortView, shares: _Shares = _SHARES) -> dict[str, Any]:
    """One Service port as a JSON object (see the README's JSON reference for every key)."""
    out = {
        "service": s.label,
        "namespace": s.namespace,
        "name": s.name,
        "port_name": s.port_name,
        "protocol": s.protocol,
        "type": s.type,
        "identity": s.identity,
        "cluster_ip": s.cluster_ip,
        "port": s.port,
        "node_port": s.node_port,
        "external_ips": list(s.external_ips),
        "lb_ips": list(s.lb_ips),
        "lb_source_ranges": list(s.lb_source_ranges),
        "health_check_node_port": s.health_check_node_port,
        "external_traffic_policy": s.external_traffic_policy,
        "internal_traffic_policy": s.internal_traffic_policy,
        "session_affinity": "ClientIP" if s.session_affinity_timeout is not None else "None",
        "session_affinity_timeout": s.session_affinity_timeout,
        "no_endpoints": s.no_endpoints,
        "no_local_endpoints": s.no_local_endpoints,
        "endpoints": [
            {"ip": ep.ip, "port": ep.port,
             "address": ep.ip if ep.port is None else f"[{ep.ip}]:{ep.port}" if ":" in ep.ip else f"{ep.ip}:{ep.port}",
             "probability": shares[ep.probability], "local": ep.local,
             "local_probability": None if ep.local_probability is None else shares[ep.local_probability],
             "chain": ep.chain, "line": ep.line or None}
            for ep in s.endpoints
        ],
        "entries": [_entry_json(e) for e in s.entries],
        "chains": list(s.chains),
        "lines": list(s.lines),
        "notes": list(s.notes),
    }
    if s.handles:  # (input without lines, nft -j: the kernel's rule handles say which rules, as in a trace)
        dnat = dict(s.dnat_handles)
        for ep, doc in zip(s.endpoints, out["endpoints"], strict=True):
            if ep.chain in dnat:
                doc["handle"] = dnat[ep.chain]
        out = {**{k: v for k, v in out.items() if k != "notes"}, "handles": list(s.handles), "notes": out["notes"]}
    return out


# ------------------------------------------------------------------------------------------------ JSON text

# service_to_json's object as the compact encoder prints it (render.json._COMPACT), written directly: a 5,000-Service
# answer is ~10^6 values, and the pieces that repeat are printed once — every float share (a few distinct values a
# dump), each entry's endpoint list (one tuple for every way in and kind of client that reaches the same endpoints,
# see iptrace.kube.view._reaches). Exactly the encoder's text (tests/test_services_json_text.py compares them).
_text = encode_basestring  # (the C encoder's own function for a str, ensure_ascii=False)


class _ShareTexts(dict[float, str]):
    """probability -> its share as JSON prints it (the repr of share(probability)); cleared when it grows large."""

    __slots__ = ()

    def __missing__(self, probability: float) -> str:
        if len(self) >= _SHARES_LIMIT:
            self.clear()
        text = self[probability] = _COMPACT.encode(_SHARES[probability])
        return text


_SHARE_TEXTS = _ShareTexts()
# id(reaches tuple) -> (the tuple, kept alive so that its id is not reused; its "endpoints" list as JSON text)
_REACH_TEXTS: dict[int, tuple[tuple[Any, ...], str]] = {}
_REACH_TEXTS_LIMIT = 4096


def _strings(values: Sequence[str]) -> str:
    """A list of strings as JSON text."""
    return "[" + ", ".join(map(_text, values)) + "]" if values else "[]"


def _reaches_text(reaches: tuple[tuple[str, float], ...]) -> str:
    found = _REACH_TEXTS.get(id(reaches))
    if found is not None and found[0] is reaches:
        return found[1]
    if not reaches:
        return "[]"
    shares = _SHARE_TEXTS
    text = "[" + ", ".join([f'{{"address": {_text(a)}, "probability": {shares[p]}}}' for a, p in reaches]) + "]"
    if len(_REACH_TEXTS) >= _REACH_TEXTS_LIMIT:
        _REACH_TEXTS.clear()
    _REACH_TEXTS[id(reaches)] = (reaches, text)
    return text


# (Below, a field typed `int | None` prints as "null" or its repr, one typed `str | None` as "null" or _text, a
# tuple of ints as the repr of a list of them.)


def _path_text(p: SourcePath) -> str:
    return (f'{{"source": {_text(p.source)}, "verdict": {_text(p.verdict)}, "endpoints": {_reaches_text(p.reaches)}, '
            f'"masquerade": {"true" if p.masquerade else "false"}, "via": {_strings(p.via)}, '
            f'{_decided_text(p.decided_by)}}}')


def _decided_text(decided: int | RuleAt) -> str:
    """`_decided_json(decided)`'s keys, as `_path_text` writes them."""
    if type(decided) is int:
        return f'"decided_by_line": {repr(decided) if decided else "null"}'
    return (f'"decided_by_line": null, "decided_by_rule": {{"table": {_text(decided.table)}, '
            f'"chain": {_text(decided.chain)}, "handle": {decided.handle!r}}}')


def way_text(e: Any) -> str:
    """The beginning of an entry's text: what its way in (or the entry, which has its way's) says."""
    address = e.address
    return (f'{{"kind": {_text(e.kind)}, "address": {"null" if address is None else _text(address)}, '
            f'"port": {e.port!r}, "protocol": {_text(e.protocol)}, "chain": {_text(e.chain) if e.chain else "null"}, ')


def _entry_text(e: EntryView) -> str:
    return (f'{way_text(e)}"verdict": {_text(e.verdict)}, "endpoints": {_reaches_text(e.reaches)}, '
            f'"masquerade": {_text(e.masquerade)}, "masquerade_sources": {_strings(e.masquerade_sources)}, '
            f'"via": {_strings(e.via)}, '
            f'"other_sources": {"[" + ", ".join(map(_path_text, e.paths)) + "]" if e.paths else "[]"}, '
            f'"notes": {_strings(e.notes)}, "lines": {list(e.lines)!r}}}')


def _endpoints_text(endpoints: Sequence[EndpointView], dnat: dict[str, int] | None = None) -> str:
    if not endpoints:
        return "[]"
    shares = _SHARE_TEXTS
    out = []
    for ep in endpoints:
        handle = f', "handle": {dnat[ep.chain]!r}' if dnat and ep.chain in dnat else ""
        ip, port, local = ep.ip, ep.port, ep.local_probability
        if port is None:
            address, port_text = ip, "null"
        else:
            address, port_text = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}", repr(port)
        out.append(f'{{"ip": {_text(ip)}, "port": {port_text}, "address": {_text(address)}, '
                   f'"probability": {shares[ep.probability]}, "local": {"true" if ep.local else "false"}, '
                   f'"local_probability": {"null" if local is None else shares[local]}, '
                   f'"chain": {_text(ep.chain)}, "line": {repr(ep.line) if ep.line else "null"}{handle}}}')
    return "[" + ", ".join(out) + "]"


_CLIENT_IP, _NONE = _text("ClientIP"), _text("None")


def service_json_text(s: ServicePortView) -> str:
    """`_COMPACT.encode(service_to_json(s))`, written directly."""
    return port_json_text(s, _endpoints_text(s.endpoints, dict(s.dnat_handles) if s.handles else None),
                          "[" + ", ".join(map(_entry_text, s.entries)) + "]" if s.entries else "[]")


def port_json_text(s: ServicePortView, endpoints: str, entries: str) -> str:
    """service_json_text(s) with its endpoints' and entries' texts given (render.shaped writes them)."""
    timeout, cluster_ip, port, node_port = s.session_affinity_timeout, s.cluster_ip, s.port, s.node_port
    check, etp, itp = s.health_check_node_port, s.external_traffic_policy, s.internal_traffic_policy
    handles = f'"handles": {list(s.handles)!r}, ' if s.handles else ""
    return (
        f'{{"service": {_text(s.label)}, "namespace": {_text(s.namespace)}, "name": {_text(s.name)}, '
        f'"port_name": {_text(s.port_name)}, "protocol": {_text(s.protocol)}, "type": {_text(s.type)}, '
        f'"identity": {_text(s.identity)}, "cluster_ip": {"null" if cluster_ip is None else _text(cluster_ip)}, '
        f'"port": {"null" if port is None else repr(port)}, '
        f'"node_port": {"null" if node_port is None else repr(node_port)}, '
        f'"external_ips": {_strings(s.external_ips)}, '
        f'"lb_ips": {_strings(s.lb_ips)}, "lb_source_ranges": {_strings(s.lb_source_ranges)}, '
        f'"health_check_node_port": {"null" if check is None else repr(check)}, '
        f'"external_traffic_policy": {"null" if etp is None else _text(etp)}, '
        f'"internal_traffic_policy": {"null" if itp is None else _text(itp)}, '
        f'"session_affinity": {_NONE if timeout is None else _CLIENT_IP}, '
        f'"session_affinity_timeout": {"null" if timeout is None else repr(timeout)}, '
        f'"no_endpoints": {"true" if s.no_endpoints else "false"}, '
        f'"no_local_endpoints": {"true" if s.no_local_endpoints else "false"}, '
        f'"endpoints": {endpoints}, "entries": {entries}, '
        f'"chains": {_strings(s.chains)}, "lines": {list(s.lines)!r}, {handles}"notes": {_strings(s.notes)}}}')


def services_to_json(view: KubeView, cluster: Any = None) -> list[dict[str, Any]]:
    """`iptrace services -o json`: one object per Service port, sorted by (namespace, name, port, protocol).
    With cluster data each object also has `api`: what the API says of that Service port (or null)."""
    return list(iter_services_json(view, cluster))


def iter_services_json(view: KubeView, cluster: Any = None) -> Iterator[dict[str, Any]]:
    """services_to_json's objects one at a time (`len(view.services)` of them), for output that is written as
    it is made."""
    for s in view.services:
        item = service_to_json(s)
        if cluster is not None:
            item["api"] = api_facts(s, cluster)
        yield item


def iter_services_json_texts(view: KubeView) -> Iterator[str]:
    """iter_services_json's objects (without cluster data) as the compact encoder prints them, written directly."""
    for s in view.services:
        yield service_json_text(s)


def api_facts(s: ServicePortView, cluster: Any) -> dict[str, Any] | None:
    """The API's side of one Service port (a `model.cluster.ClusterState`): type, selector, the targetPort as
    written (a name is resolved through the EndpointSlices) and the node of every endpoint; None when the API
    has no such Service port."""
    svc = cluster.service(s.namespace, s.name)
    if svc is None:
        return None
    port = svc.port(s.port_name, s.protocol)
    endpoints = cluster.endpoints_for(s.namespace, s.name, s.port_name, s.protocol.upper()) if port else ()
    nodes = {e.ip: e.node_name for e in endpoints}
    target = port.target_port if port is not None else None
    resolved = sorted({e.port for e in endpoints}) if isinstance(target, str) else []
    return {
        "type": svc.type,
        "selector": dict(svc.selector) if svc.selector is not None else None,
        "target_port": target,
        "target_port_resolved": resolved,
        "endpoint_nodes": {ep.address: nodes.get(ep.ip) for ep in s.endpoints},
    }


def _api_text(s: ServicePortView, cluster: Any) -> list[str]:
    facts = api_facts(s, cluster)
    if facts is None:
        return ["  API: no such Service port in the cluster data"]
    parts = [f"type {facts['type']}"]
    if facts["selector"]:
        parts.append("selector " + ",".join(f"{k}={v}" for k, v in facts["selector"].items()))
    elif facts["selector"] is None:
        parts.append("no selector (endpoints managed by hand)")
    target = facts["target_port"]
    if isinstance(target, str):
        ports = "/".join(str(p) for p in facts["target_port_resolved"]) or "unresolved"
        parts.append(f"targetPort {target} (= {ports})")
    elif target is not None:
        parts.append(f"targetPort {target}")
    out = ["  API: " + " · ".join(parts)]
    placed = [f"{address} on {node}" for address, node in facts["endpoint_nodes"].items() if node]
    if placed:
        out.append("  endpoint nodes: " + ", ".join(placed))
    return out


def view_to_json(view: KubeView) -> dict[str, Any]:
    """The whole view, node-level facts included (for `audit` and scripts that want the era too)."""
    npa = view.node_port_addresses
    return {
        "source": view.source,
        "mode": view.era.name,
        "version_hint": view.era.version_hint,
        "evidence": list(view.era.evidence),
        "family": view.family,
        "node_port_addresses": {"mode": npa.mode, "addresses": list(npa.addresses),
                                "excluded": list(npa.excluded), "localhost": npa.localhost,
                                "lines": list(npa.lines)},
        "pod_cidrs": list(view.pod_cidrs),
        "pod_interfaces": list(view.pod_interfaces),
        "masquerade_mark": view.masquerade_mark,
        "random_fully": view.random_fully,
        "warnings": list(view.warnings),
        "services": services_to_json(view),
    }


# ------------------------------------------------------------------------------------------------ text


def render_services_text(view: KubeView, cluster: Any = None, *, width: int | None = None,
                         say: Callable[[str], str] | None = None) -> str:
    """A small flow per Service port: every way in on the left, the chain that balances, every endpoint with
    its share on the right; then what other clients get and who is masqueraded. With cluster data, what the
    API says of each (type, selector, targetPort, endpoint nodes). `width`: the terminal's (None on a pipe),
    which the header's notes, the notes under each flow and the warnings are wrapped to when it is narrower
    than they are (the flows are pictures: never wrapped); `say`: iptrace.render.prose.Prose's."""
    from iptrace.render.prose import Prose  # (imported here: `-o json`, a big node's usual form, wraps no text)

    prose = Prose(width, None, say)
    out: list[str] = [*(line for text in _summary(view) for line in prose.line(text, "  ")), ""]
    if not view.services and view.era.has_rules:
        out.extend(["no Service ports", ""])
    narrow = prose if prose.narrow else None  # (on a pipe, the flows' lines are made as they always were)
    for s in view.services:
        out.extend(_service_text(s, view, narrow))
        if cluster is not None:
            out.extend(_api_text(s, cluster))
        out.append("")
    if view.warnings:
        out.append("warnings:")
        out.extend(line for w in view.warnings for line in prose.wrap(w, "  ", "    "))
    return "\n".join(out).rstrip("\n") + "\n"


def _summary(view: KubeView) -> list[str]:
    era = view.era
    if not era.has_rules:
        return [f"{view.source}: {era.name}: no kube-proxy {era.dataplane} service rules"]
    hint = f" ({era.version_hint})" if era.version_hint else ""
    parts = [f"{view.source}: kube-proxy {era.mode} mode, {era.name}{hint}", view.family,
             f"{len(view.services)} service port{'s' if len(view.services) != 1 else ''}"]
    lines = [" · ".join(parts), view.node_port_addresses.describe()]
    extra = []
    if view.pod_cidrs:
        extra.append("pod CIDR " + ", ".join(view.pod_cidrs))
    if view.pod_interfaces:
        extra.append("pod interfaces " + ", ".join(view.pod_interfaces))
    if view.masquerade_mark:
        extra.append(f"masquerade mark {view.masquerade_mark}" + (" (--random-fully)" if view.random_fully else ""))
    if extra:
        lines.append(" · ".join(extra))
    clients = view.clients
    if clients is not None and clients.node_unknown and view.services:
        # (clients.node_address is a documentation stand-in, not the node's: never printed, a reader would copy it)
        lines.append("node addresses unknown (pass --node-ip IP, the node's own address): NodePorts (<node>:PORT) are "
                     "traced to a stand-in address, and an endpoint on the node itself is taken for another machine")
    elif clients is not None and view.services and view.node_port_addresses.mode != "none" and (
            not view.node_port_addresses.accepts(clients.node_address)):
        lines.insert(2, f"<node> is {clients.node_address}, where the rules accept no NodePort: no nodePort reaches "
                        "a Service there (kube-proxy's --nodeport-addresses; if the node has an address they "
                        "accept, pass it with --node-ip)")
    return lines


def _header(s: ServicePortView) -> str:
    kind = s.type + (" + externalIPs" if s.external_ips else "")
    parts = [s.label, s.protocol, kind]
    if s.external_traffic_policy is not None:
        parts.append(f"externalTrafficPolicy={s.external_traffic_policy}")
    if s.internal_traffic_policy == "Local":
        parts.append("internalTrafficPolicy=Local")
    if s.session_affinity_timeout is not None:
        parts.append(f"sessionAffinity=ClientIP ({s.session_affinity_timeout}s)")
    return "  ".join(parts)


def _entry_label(e: EntryView) -> str:
    label = e.label
    if e.kind == EXTERNAL_IP:
        label += " (externalIP)"
    elif e.kind == LOAD_BALANCER:
        label += " (LB)"
    # Every chain of one service port shares the hash: show it once, on the chain that balances.
    return "".join([label, *(f" ─▶ {_role(c)}" for c in e.via[:-1])])


def _role(chain: str) -> str:
    """A chain without the part it shares with the chain that balances: `KUBE-EXT-…` → `KUBE-EXT`; nftables
    mode's `external-SX2ZK5HK-default/fb-backends/tcp/ka-port` → `external-SX2ZK5HK`."""
    if "/" in chain:
        return "-".join(chain.split("-", 2)[:2])
    return chain.rsplit("-", 1)[0]


def _verdict_text(s: ServicePortView, verdict: str) -> str:
    if verdict == "REJECT" and s.no_endpoints:
        return "REJECT  has no endpoints"
    if verdict == "DROP" and s.no_local_endpoints:
        return "DROP  no local endpoints"
    if verdict == "CONTINUE":
        return "not DNATed (no rule decides)"
    return verdict


def _endpoint_texts(s: ServicePortView, reaches: tuple[tuple[str, float], ...]) -> list[str]:
    local = {ep.address for ep in s.endpoints if ep.local}
    width = max((len(a) for a, _ in reaches), default=0)
    return [f"{a:<{width}}  {percent(p)}" + ("  (local)" if a in local else "") for a, p in reaches]


def _block(lefts: list[str], middle: str, rights: list[str]) -> list[str]:
    width = max(len(x) for x in lefts)
    mid = f"─▶ {middle} " if middle else ""
    n, m = len(lefts), len(rights)
    rows: list[str] = []
    for i in range(max(n, m)):
        if i < n:
            left = lefts[i] + " " + "─" * (width - len(lefts[i]) + 1)
            left += "─" if n == 1 else ("┬" if i == 0 else ("┘" if i == n - 1 else "┤"))
        else:
            left = " " * (width + 3)
        center = mid if i == 0 else " " * len(mid)
        if i < m:
            right = ("─" if m == 1 else ("┬" if i == 0 else ("└" if i == m - 1 else "├"))) + "─▶ " + rights[i]
        else:
            right = ""
        rows.append(("  " + left + center + right).rstrip())
    return rows


def _service_text(s: ServicePortView, view: KubeView, prose: Prose | None = None) -> list[str]:
    """The Service port's flow and its notes; `prose` (a narrow terminal's) wraps the header and the notes."""
    out = [_header(s)] if prose is None else prose.line(_header(s), "  ")
    groups: dict[tuple[Any, ...], list[EntryView]] = {}
    for e in s.entries:
        if e.kind == HEALTH_CHECK:
            continue
        key = (e.verdict, e.via[-1:], tuple((r.endpoint, r.probability) for r in e.reaches))
        groups.setdefault(key, []).append(e)
    if not groups and not s.entries:
        out.append("  (no way in: no KUBE-SERVICES or KUBE-NODEPORTS rule leads here)")
    for (verdict, via, reaches), entries in groups.items():
        lefts = [_entry_label(e) for e in entries]
        if verdict == "DNAT":
            rights = _endpoint_texts(s, reaches)
        else:
            rights = [_verdict_text(s, verdict)]
        out.extend(_block(lefts, via[0] if via else "", rights))
        per_entry = [[*_other_sources(s, [e]), *e.notes] for e in entries]
        shared = [t for t in per_entry[0] if all(t in texts for texts in per_entry[1:])]
        notes = [*shared, *(f"{e.label}: {t}" for e, texts in zip(entries, per_entry, strict=True)
                             for t in texts if t not in shared)]
        out.extend(_notes(notes, "    ", prose))
    for e in s.entries:
        if e.kind == HEALTH_CHECK:
            out.append(f"  health check: {e.label}/tcp ─▶ ACCEPT (kube-proxy's health server)")
    said = []
    if s.lb_source_ranges:
        said.append("loadBalancerSourceRanges: " + ", ".join(s.lb_source_ranges))
    masq = _masquerade_text(s, view)
    if masq:
        said.append(f"masquerade: {masq}")
    said.extend(f"note: {n}" for n in s.notes)
    out.extend(_notes(said, "  ", prose))
    return out


def _notes(texts: Sequence[str], indent: str, prose: Prose | None) -> list[str]:
    """Notes under a flow, each at `indent`; wrapped (its later lines indented two more) by a narrow terminal's
    `prose`."""
    if prose is None:
        return [indent + t for t in texts]
    return [line for t in texts for line in prose.wrap(t, indent, indent + "  ")]


def _other_sources(s: ServicePortView, entries: list[EntryView]) -> list[str]:
    seen: dict[tuple[Any, ...], list[str]] = {}
    for e in entries:
        for p in e.paths:
            key = (p.verdict, p.via, tuple(r.endpoint for r in p.reaches), p.decided_by)
            names = seen.setdefault(key, [])
            if p.source not in names:
                names.append(p.source)
    lines = []
    all_endpoints = {ep.address for ep in s.endpoints if ep.in_cluster_chain}
    for (verdict, via, reached, line), sources in seen.items():
        who = " or ".join(_SOURCE_NAMES.get(x, x) for x in sources)
        if verdict == "DNAT":
            what = ("every endpoint" if set(reached) == all_endpoints and all_endpoints
                    else ", ".join(reached))
            chain = f" through {via[-1]}" if via else ""
            lines.append(f"{who}: {what}{chain}")
        else:
            # (input without lines, nft -j: the rule's chain and kernel handle, as a trace's path shows it)
            at = (f" (line {line})" if type(line) is int else f" ({line.table} {line.chain} handle {line.handle})"
                  ) if line else ""
            lines.append(f"{who}: {_verdict_text(s, verdict)}{at}")
    return lines


_NODE_ONLY = "node-only"


def _masquerade_text(s: ServicePortView, view: KubeView) -> str:
    by_value: dict[str, list[str]] = {}
    for e in s.entries:
        if e.kind == HEALTH_CHECK or e.verdict != "DNAT":
            continue
        name = _KIND_NAMES[e.kind]
        # (outside clients keep their address, but the node's own connections are masqueraded: an endpoint on
        # the node itself, say; the entry's note says it too)
        value = _NODE_ONLY if e.masquerade == MASQ_NEVER and NODE in e.masquerade_sources else e.masquerade
        names = by_value.setdefault(value, [])
        if name not in names:
            names.append(name)
    if not by_value:
        return ""
    pods = f" (sources outside {', '.join(view.pod_cidrs)})" if view.pod_cidrs else ""
    words = {
        MASQ_ALWAYS: "always",
        MASQ_OFF_POD: f"off-node/off-pod clients only{pods}",
        MASQ_NEVER: "never (the client's address is kept)",
        _NODE_ONLY: "only the node's own connections (other clients' addresses are kept)",
    }
    if len(by_value) == 1:
        return words[next(iter(by_value))]
    return "; ".join(f"{'/'.join(names)}: {words[value]}" for value, names in by_value.items())
