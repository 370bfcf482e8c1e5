"""kube-proxy's nftables mode, synthesized from the same ServiceSpec list as bench/synth.py (iptables mode).

`render_nft()` mirrors `syncProxyRules` / `writeServiceToEndpointRules` of kubernetes/kubernetes
pkg/proxy/nftables/proxier.go in the 1.34/1.35 layout (../shared/KUBE-PROXY-NFT-LAYOUT.md): one table per
family, pre-DNAT firewall chains, filter chains at priority 0, `mark-for-masquerade`, one `endpoint-…` chain
per endpoint. `form="transaction"` gives kube-proxy's transaction text (knftables' Fake.Dump(): declarations
first, so `nft -f` loads it as is); `form="list"` gives what `nft list ruleset` prints for it on a node (the
kernel's spellings, nesting and element wrapping; element order is the kernel's business and may differ).
Test and benchmark tooling: raises ValueError, does no I/O.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from bench.synth import ServiceSpec, _is_v6, _norm_cidr, _norm_ip, _service_ports, _ServicePort, categorize_endpoints

TABLE_COMMENT = "rules for kube-proxy"
MASQ_MARK = 0x4000


def name_base(text: str) -> str:
    """kube-proxy's servicePortChainNameBase / servicePortEndpointChainNameBase: hash prefix + readable name."""
    digest = base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:8]
    base = f"{digest}-{text}"
    return base if len(base) <= 240 else base[:237] + "..."


def _port_name(sp: _ServicePort) -> str:
    """"ns/svc/tcp/port-name" from the ServicePortName "ns/svc:port-name"."""
    svc, _, port = sp.name.partition(":")
    return f"{svc}/{sp.protocol}/{port}"


@dataclass
class _Table:
    """The table in the making: declarations, rules per chain, elements per set (all in creation order)."""

    family: str
    sets: dict[str, tuple[str, str, str | None]] = field(default_factory=dict)  # name -> (kind, type, comment)
    affinity: dict[str, int] = field(default_factory=dict)  # set name -> timeout seconds
    chains: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)  # name -> (base spec, comment)
    rules: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # chain -> [(transaction, listing)]
    # name -> key -> (value, comment): what the kernel holds; element_ops: kube-proxy's element commands, in order
    elements: dict[str, dict[str, tuple[str | None, str | None]]] = field(default_factory=dict)
    element_ops: list[tuple[str, str, str, str | None, str | None]] = field(default_factory=list)
    cluster_ips: set[str] = field(default_factory=set)

    def chain(self, name: str, base: str | None = None, comment: str | None = None) -> None:
        if name not in self.chains:
            self.chains[name] = (base, comment)
            self.rules[name] = []

    def rule(self, chain: str, tx: str, listed: str | None = None) -> None:
        self.rules[chain].append((tx, tx if listed is None else listed))

    def element(self, name: str, key: str, value: str | None = None, comment: str | None = None) -> None:
        """kube-proxy's ensureElem: a key it wrote already in this sync keeps its element when the value is the
        same, else the element is deleted and added again with the new value (two Services sharing an external
        IP and port: the last one written wins; the kernel refuses one key with two values)."""
        held = self.elements.setdefault(name, {})
        known = held.get(key)
        if known is not None:
            if known[0] == value:
                return
            self.element_ops.append(("delete", name, key, None, None))
        held[key] = (value, comment)
        self.element_ops.append(("add", name, key, value, comment))


_BASE_CHAINS = (  # name, type, hook, priority, the kernel's spelling of that priority (for output hooks too)
    ("filter-prerouting-pre-dnat", "filter", "prerouting", -110, "dstnat - 10"),
    ("filter-output-pre-dnat", "filter", "output", -110, "-110"),
    ("filter-forward", "filter", "forward", 0, "filter"),
    ("filter-input", "filter", "input", 0, "filter"),
    ("filter-output", "filter", "output", 0, "filter"),
    ("nat-output", "nat", "output", -100, "-100"),
    ("nat-postrouting", "nat", "postrouting", 100, "srcnat"),
    ("nat-prerouting", "nat", "prerouting", -100, "dstnat"),
)


def _setup(t: _Table, ipx: str, addr: str, service_cidrs: list[str], node_ips: list[str]) -> None:
    """setupNFTables: the sets, maps and chains every sync writes."""
    t.sets["cluster-ips"] = ("set", addr, "Active ClusterIPs")
    t.sets["nodeport-ips"] = ("set", addr, "IPs that accept NodePort traffic")
    key = f"{addr} . inet_proto . inet_service : verdict"
    t.sets["firewall-ips"] = ("map", key, "destinations that are subject to LoadBalancerSourceRanges")
    t.sets["no-endpoint-nodeports"] = ("map", "inet_proto . inet_service : verdict",
                                       "vmap to drop or reject packets to service nodeports with no endpoints")
    t.sets["no-endpoint-services"] = ("map", key, "vmap to drop or reject packets to services with no endpoints")
    t.sets["service-ips"] = ("map", key, "ClusterIP, ExternalIP and LoadBalancer IP traffic")
    t.sets["service-nodeports"] = ("map", "inet_proto . inet_service : verdict", "NodePort traffic")
    for ip in node_ips:
        t.element("nodeport-ips", ip)
    t.chain("cluster-ips-check")
    t.rule("cluster-ips-check", f'{ipx} daddr @cluster-ips reject comment "Reject traffic to invalid ports of '
                                'ClusterIPs"')
    if service_cidrs:
        cidrs = ", ".join(service_cidrs)
        listed = cidrs if len(service_cidrs) == 1 else f"{{ {cidrs} }}"
        t.rule("cluster-ips-check", f'{ipx} daddr {{ {cidrs} }} drop comment "Drop traffic to unallocated '
                                    'ClusterIPs"',
               f'{ipx} daddr {listed} drop comment "Drop traffic to unallocated ClusterIPs"')
    for name, ctype, hook, prio, listed in _BASE_CHAINS:
        t.chain(name, f"{ctype}|{hook}|{prio}|{listed}")
    for name in ("filter-prerouting-pre-dnat", "filter-output-pre-dnat"):
        t.rule(name, "ct state new jump firewall-check")
    t.rule("filter-forward", "ct state new jump service-endpoints-check")
    t.rule("filter-forward", "ct state new jump cluster-ips-check")
    t.rule("filter-input", "ct state new jump nodeport-endpoints-check")
    t.rule("filter-input", "ct state new jump service-endpoints-check")
    t.rule("filter-output", "ct state new jump service-endpoints-check")
    t.rule("filter-output", "ct state new jump cluster-ips-check")
    t.chain("firewall-check")
    t.rule("firewall-check", f"{ipx} daddr . meta l4proto . th dport vmap @firewall-ips")
    t.chain("mark-for-masquerade")
    t.rule("mark-for-masquerade", f"mark set mark or {MASQ_MARK:#x}", f"meta mark set meta mark | {MASQ_MARK:#010x}")
    t.chain("masquerading")
    t.rule("masquerading", f"mark and {MASQ_MARK:#x} == 0 return",
           f"meta mark & {MASQ_MARK:#010x} == 0x00000000 return")
    t.rule("masquerading", f"mark set mark xor {MASQ_MARK:#x}", f"meta mark set meta mark ^ {MASQ_MARK:#010x}")
    t.rule("masquerading", "masquerade fully-random")
    t.rule("nat-output", "jump services")
    t.rule("nat-postrouting", "jump masquerading")
    t.rule("nat-prerouting", "jump services")
    t.chain("nodeport-endpoints-check")
    t.rule("nodeport-endpoints-check",
           f"{ipx} daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports")
    t.chain("reject-chain", comment="helper for @no-endpoint-services / @no-endpoint-nodeports")
    t.rule("reject-chain", "reject")
    t.chain("services")
    t.rule("services", f"{ipx} daddr . meta l4proto . th dport vmap @service-ips")
    t.rule("services", f"{ipx} daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports")
    t.chain("service-endpoints-check")
    t.rule("service-endpoints-check", f"{ipx} daddr . meta l4proto . th dport vmap @no-endpoint-services")


def _service_port(t: _Table, sp: _ServicePort, ipx: str, pod_cidr: str | None, masquerade_all: bool,
                  node_ip: str | None) -> None:
    base = name_base(_port_name(sp))
    svc_chain, local_chain, ext_chain, fw_chain = (f"{p}-{base}" for p in ("service", "local", "external",
                                                                            "firewall"))
    cluster, local, reachable, has_any = categorize_endpoints(sp)
    ep_base = {e.text: name_base(f"{_port_name(sp)}__{e.ip.replace(':', '.')}/{e.port}") for e in sp.endpoints}
    uses_cluster = bool(cluster) and sp.uses_cluster_endpoints
    uses_local = bool(local) and sp.uses_local_endpoints
    internal_chain, has_internal = svc_chain, has_any
    if sp.internal_policy_local:
        internal_chain, has_internal = local_chain, has_any and bool(local)
    external_policy_chain, has_external = svc_chain, has_any
    if sp.external_policy_local:
        external_policy_chain, has_external = local_chain, has_any and bool(local)
    uses_external = has_any and sp.externally_accessible
    internal_verdict = external_verdict = "goto reject-chain" if not has_any else None
    if has_any:
        internal_verdict = None if has_internal else "drop"
        external_verdict = None if has_external else "drop"
    key = f"{sp.protocol} . {sp.port}"
    if sp.cluster_ip not in t.cluster_ips:  # the ClusterIP, with or without endpoints
        t.cluster_ips.add(sp.cluster_ip)
        t.element("cluster-ips", sp.cluster_ip)
    for e in reachable:
        t.chain(f"endpoint-{ep_base[e.text]}")
    if uses_cluster:
        t.chain(svc_chain)
    if uses_local:
        t.chain(local_chain)
    if uses_external:
        t.chain(ext_chain)
    if has_internal:
        t.element("service-ips", f"{sp.cluster_ip} . {key}", f"goto {internal_chain}")
    else:
        t.element("no-endpoint-services", f"{sp.cluster_ip} . {key}", internal_verdict, sp.name)
    for ip in sp.external_ips:
        if has_any:
            t.element("service-ips", f"{ip} . {key}", f"goto {ext_chain}")
        if not has_external:
            t.element("no-endpoint-services", f"{ip} . {key}", external_verdict, sp.name)
    uses_fw = bool(sp.lb_ips) and bool(sp.source_ranges)
    if uses_fw:
        t.chain(fw_chain)
        sources = list(sp.source_ranges)
        if node_ip is not None and any(_contains(r, node_ip) for r in sp.source_ranges):
            sources += sp.lb_ips
        listed = sources[0] if len(sources) == 1 else "{ " + ", ".join(sources) + " }"
        t.rule(fw_chain, f"{ipx} saddr != {{ {', '.join(sources)} }} drop", f"{ipx} saddr != {listed} drop")
    for ip in sp.lb_ips:
        if has_any:
            t.element("service-ips", f"{ip} . {key}", f"goto {ext_chain}")
        if uses_fw:
            t.element("firewall-ips", f"{ip} . {key}", f"goto {fw_chain}")
    if not has_external:
        for ip in sp.lb_ips:
            t.element("no-endpoint-services", f"{ip} . {key}", external_verdict, sp.name)
    if sp.node_port:
        if has_any:
            t.element("service-nodeports", f"{sp.protocol} . {sp.node_port}", f"goto {ext_chain}")
        if not has_external:
            t.element("no-endpoint-nodeports", f"{sp.protocol} . {sp.node_port}", external_verdict, sp.name)
    if has_internal:
        if masquerade_all:
            t.rule(internal_chain, f"{ipx} daddr {sp.cluster_ip} jump mark-for-masquerade")
        elif pod_cidr:
            t.rule(internal_chain, f"{ipx} daddr {sp.cluster_ip} {ipx} saddr != {pod_cidr} jump mark-for-masquerade")
    if uses_external:
        if not sp.external_policy_local:
            t.rule(ext_chain, "jump mark-for-masquerade")
        else:
            if pod_cidr:
                t.rule(ext_chain, f'{ipx} saddr {pod_cidr} goto {svc_chain} comment "short-circuit pod traffic"')
            t.rule(ext_chain, 'fib saddr type local jump mark-for-masquerade comment "masquerade local traffic"')
            t.rule(ext_chain, f'fib saddr type local goto {svc_chain} comment "short-circuit local traffic"')
        if has_external:
            t.rule(ext_chain, f"goto {external_policy_chain}")
    if sp.affinity_seconds is not None:
        for e in reachable:
            t.affinity[f"affinity-{ep_base[e.text]}"] = sp.affinity_seconds
    for chain, eps, used in ((svc_chain, cluster, uses_cluster), (local_chain, local, uses_local)):
        if not used:
            continue
        if sp.affinity_seconds is not None:
            for e in eps:
                t.rule(chain, f"{ipx} saddr @affinity-{ep_base[e.text]} goto endpoint-{ep_base[e.text]}")
        targets = [f"{i} : goto endpoint-{ep_base[e.text]}" for i, e in enumerate(eps)]
        t.rule(chain, f"numgen random mod {len(eps)} vmap {{ {' , '.join(targets)} }}",
               f"numgen random mod {len(eps)} vmap {{ {', '.join(targets)} }}")
    for e in reachable:
        chain = f"endpoint-{ep_base[e.text]}"
        t.rule(chain, f"{ipx} saddr {e.ip} jump mark-for-masquerade")
        if sp.affinity_seconds is not None:
            t.rule(chain, f"update @affinity-{ep_base[e.text]} {{ {ipx} saddr }}")
        t.rule(chain, f"meta l4proto {sp.protocol} dnat to {e.text}")


def _contains(cidr: str, ip: str) -> bool:
    import ipaddress

    return ipaddress.ip_address(ip) in ipaddress.ip_network(cidr, strict=False)


def _duration(seconds: int) -> str:
    out = ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        n, seconds = divmod(seconds, size)
        if n:
            out += f"{n}{unit}"
    return out or "0s"


# Per element datatype, how many elements nft prints on one line (src/expression.c calculate_delim).
def _per_line(set_type: str) -> int:
    if ":" in set_type or " . " in set_type:
        return 1
    return 2 if set_type in ("ipv4_addr", "ipv6_addr") else 5


def _element_text(key: str, value: str | None, comment: str | None) -> str:
    text = key + (f' comment "{comment}"' if comment else "")
    return text + (f" : {value}" if value else "")


def _listing(t: _Table) -> str:
    out = [f"table {t.family} kube-proxy {{", f'\tcomment "{TABLE_COMMENT}"']
    blocks: list[str] = []
    for name, (kind, typ, comment) in t.sets.items():
        lines = [f"\t{kind} {name} {{", f"\t\ttype {typ}", f'\t\tcomment "{comment}"']
        elements = t.elements.get(name, {})
        if elements:
            per = _per_line(typ)
            texts = [_element_text(key, *e) for key, e in elements.items()]
            rows = [", ".join(texts[i:i + per]) for i in range(0, len(texts), per)]
            lines.append("\t\telements = { " + ",\n\t\t\t     ".join(rows) + " }")
        blocks.append("\n".join([*lines, "\t}"]))
    for name, seconds in t.affinity.items():
        blocks.append(f"\tset {name} {{\n\t\ttype {'ipv6_addr' if t.family == 'ip6' else 'ipv4_addr'}\n"
                      f"\t\tsize 65535\n\t\tflags dynamic,timeout\n\t\ttimeout {_duration(seconds)}\n\t}}")
    for name, (base, comment) in t.chains.items():
        lines = [f"\tchain {name} {{"]
        if base is not None:
            ctype, hook, _, listed = base.split("|")
            lines.append(f"\t\ttype {ctype} hook {hook} priority {listed}; policy accept;")
        if comment:
            lines.append(f'\t\tcomment "{comment}"')
        lines += [f"\t\t{listed}" for _, listed in t.rules[name]]
        blocks.append("\n".join([*lines, "\t}"]))
    return "\n".join(out) + "\n" + "\n\n".join(blocks) + "\n}\n"


def _transaction(t: _Table) -> str:
    fam = f"{t.family} kube-proxy"
    out = [f'add table {fam} {{ comment "{TABLE_COMMENT}" ; }}']
    for name, (kind, typ, comment) in t.sets.items():
        out.append(f'add {kind} {fam} {name} {{ type {typ} ; comment "{comment}" ; }}')
    for name, seconds in t.affinity.items():
        addr = "ipv6_addr" if t.family == "ip6" else "ipv4_addr"
        out.append(f"add set {fam} {name} {{ type {addr} ; flags dynamic,timeout ; timeout {seconds}s ; }}")
    for name, (base, comment) in t.chains.items():
        body = ""
        if base is not None:
            ctype, hook, prio, _ = base.split("|")
            body = f" {{ type {ctype} hook {hook} priority {prio} ; }}"
        elif comment:
            body = f' {{ comment "{comment}" ; }}'
        out.append(f"add chain {fam} {name}{body}")
    for name, rules in t.rules.items():
        out += [f"add rule {fam} {name} {tx}" for tx, _ in rules]
    for verb, name, key, value, comment in t.element_ops:
        out.append(f"{verb} element {fam} {name} {{ {_element_text(key, value, comment)} }}")
    return "\n".join(out) + "\n"


def render_nft(services: Iterable[ServiceSpec], *, node_ips: list[str], pod_cidr: str | None,
               service_cidrs: list[str] | None = None, ipv6: bool = False, masquerade_all: bool = False,
               form: str = "list") -> str:
    """kube-proxy's nftables table for one family: "list" (the kernel's listing) or "transaction"."""
    if form not in ("list", "transaction"):
        raise ValueError(f"unknown form {form!r}; expected list or transaction")
    family = "ip6" if ipv6 else "ip"
    t = _Table(family)
    family_ips = [_norm_ip(ip) for ip in node_ips if _is_v6(ip) == ipv6]
    cidrs = [_norm_cidr(c) for c in (service_cidrs or []) if _is_v6(c) == ipv6]
    _setup(t, family, "ipv6_addr" if ipv6 else "ipv4_addr", cidrs, family_ips)
    pod = _norm_cidr(pod_cidr) if pod_cidr and _is_v6(pod_cidr) == ipv6 else None
    for sp in _service_ports(services, ipv6):
        _service_port(t, sp, family, pod, masquerade_all, family_ips[0] if family_ips else None)
    return _listing(t) if form == "list" else _transaction(t)
