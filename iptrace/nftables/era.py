"""Which kube-proxy wrote an nftables ruleset, and in which layout: the signs each era left (KUBE-PROXY-NFT-LAYOUT.md
"How it changed"). Never assumes a chain exists because one version wrote it: each sign is looked for.

Eras, newest first:
- DNAT in service chains (1.37 cycle): service chains DNAT themselves (`dnat ip to numgen … map { … }`), no
  `endpoint-…` chains.
- inline masquerade (~1.36): no `mark-for-masquerade` chain; the mark is set inline, hairpin in a set.
- pre-DNAT firewall (1.34/1.35): `filter-prerouting-pre-dnat`/`filter-output-pre-dnat`, filters at priority 0.
- filter before DNAT (1.29–1.33): filter base chains before DNAT (1.30–1.33: priority -110, `filter-prerouting`,
  `firewall-ips`, `cluster-ips-check`; 1.29 alpha: dstnat-1, the `firewall`/`firewall-allow` sets).
"""

from __future__ import annotations

from dataclasses import replace

from iptrace.layout import ONE_MODE_FIX, ProxyMode
from iptrace.nftables.model import Nat, Ruleset, Table
from iptrace.nftables.names import KUBE_PROXY_TABLE, split_chain
from iptrace.text import counted

DNAT_IN_SERVICE = "DNAT-in-service-chain layout"
INLINE_MASQ = "inline-masquerade layout"
PRE_DNAT = "pre-DNAT firewall layout"
FILTER_BEFORE_DNAT = "filter-before-DNAT layout"
EMPTY = "kube-proxy table without rules"
NONE = "no kube-proxy table"


def kube_table(ruleset: Ruleset, family: str) -> Table | None:
    return ruleset.table("ip6" if family == "ipv6" else "ip", KUBE_PROXY_TABLE)


def _dnats_in_service_chains(table: Table) -> bool | None:
    """Whether service chains DNAT themselves (True), jump to endpoint chains (False) or say nothing (None)."""
    for chain in table.chains:
        split = split_chain(chain.name) if chain.name.startswith(("service-", "local-", "svc-")) else None
        if split is None:
            continue
        for rule in chain.rules:
            if "dnat" in rule.text:
                return any(isinstance(i, Nat) and i.kind == "dnat" for i in rule.items)
            if "goto endpoint-" in rule.text or "jump endpoint-" in rule.text:
                return False
    return None


def iptables_mode_rules(ruleset: Ruleset, family: str) -> str:
    """kube-proxy's iptables-mode rules in `ruleset`, in a few words: its KUBE-SERVICES chain, with rules, in the
    `nat` table iptables-nft writes (an iptables-mode node's own listing, or leftovers of iptables mode beside the
    kube-proxy table); "" when there are none."""
    table = ruleset.table("ip6" if family == "ipv6" else "ip", "nat")
    services = table.chain("KUBE-SERVICES") if table is not None else None
    if table is None or services is None or not services.rule_count:
        return ""
    chains = sum(c.name.startswith("KUBE-SVC-") for c in table.chains)
    # (nft -j input has no lines: the chain's kernel handle says where, as its rules' do in a trace)
    where = (f" (line {services.line})" if services.line else
             f" (handle {services.handle})" if services.handle is not None else "")
    return (f"table {table.label} holds kube-proxy's iptables-mode rules, written through iptables-nft: KUBE-SERVICES"
            f"{where} with {counted(services.rule_count, 'rule')} and {counted(chains, 'KUBE-SVC- chain')}")


def proxy_mode(ruleset: Ruleset, family: str) -> ProxyMode:
    """kube-proxy's mode and era for one IP family of `ruleset`; `other_mode` names kube-proxy's iptables-mode
    rules beside it."""
    found = _proxy_mode(ruleset, family)
    other = iptables_mode_rules(ruleset, family)
    return replace(found, other_mode=other) if other else found


def _proxy_mode(ruleset: Ruleset, family: str) -> ProxyMode:
    table = kube_table(ruleset, family)
    if table is None:
        other = [t.label for t in ruleset.tables if t.name == KUBE_PROXY_TABLE]
        why = (f"kube-proxy has a table for the other IP family ({', '.join(other)})",) if other else ()
        return ProxyMode("nftables", "none", NONE, why)
    names = {c.name for c in table.chains}
    evidence: list[str] = [f"table {table.label}"]
    bases = {c.name: c.base for c in table.chains if c.base is not None}
    pre_dnat = [n for n in ("filter-prerouting-pre-dnat", "filter-output-pre-dnat") if n in names]
    direct = _dnats_in_service_chains(table)
    endpoint_chains = any(n.startswith("endpoint-") for n in names)
    if not bases and not table.sets:
        return ProxyMode("nftables", "nftables", EMPTY, (*evidence, "no base chains, sets or maps"))
    if direct:
        evidence.append("service chains DNAT themselves (numgen map), no endpoint- chains")
        return ProxyMode("nftables", "nftables", DNAT_IN_SERVICE, tuple(evidence), "1.37 cycle")
    if pre_dnat and "mark-for-masquerade" not in names:
        evidence.append(f"{', '.join(pre_dnat)} and no mark-for-masquerade chain (the mark is set inline)")
        if table.set("hairpin-connections") is not None:
            evidence.append("hairpin connections tracked in @hairpin-connections")
        if endpoint_chains:
            evidence.append("endpoint- chains")
        return ProxyMode("nftables", "nftables", INLINE_MASQ, tuple(evidence), "~1.36")
    if pre_dnat:
        evidence.append(f"pre-DNAT filter chains {', '.join(pre_dnat)}")
        if "endpoints-check" in names:
            evidence.append("a single endpoints-check chain (an older name: hand-written or mixed rules?)")
        return ProxyMode("nftables", "nftables", PRE_DNAT, tuple(evidence), "~1.34-1.35")
    filters = sorted({b.priority for b in bases.values() if b.type == "filter"})
    if filters:
        evidence.append("filter base chains at priority " + ", ".join(map(str, filters)) + " (before DNAT)")
    if table.set("firewall-allow") is not None or (filters and max(filters) == -101):
        evidence.append("LoadBalancerSourceRanges in the @firewall/@firewall-allow sets" if
                        table.set("firewall-allow") is not None else "filter chains at dstnat-1")
        return ProxyMode("nftables", "nftables", FILTER_BEFORE_DNAT, tuple(evidence), "1.29 (alpha)")
    if "service-endpoints-check" in names:
        evidence.append("service-endpoints-check / nodeport-endpoints-check")
        hint = "~1.31-1.33"
    else:
        hint = "~1.30" if "endpoints-check" in names else "~1.30-1.33"
    return ProxyMode("nftables", "nftables", FILTER_BEFORE_DNAT, tuple(evidence), hint)


def no_rules_warnings(proxy: ProxyMode, family: str) -> list[str]:
    version = "IPv6" if family == "ipv6" else "IPv4"
    if proxy.name == NONE and proxy.other_mode:
        return [f"no kube-proxy table for {version} (table {'ip6' if family == 'ipv6' else 'ip'} kube-proxy), but "
                f"{proxy.other_mode}: kube-proxy runs in iptables mode on this node. Traces run through those rules "
                f"as nft lists them; for kube-proxy's Service view give iptrace the node's "
                f"`{'ip6tables-save' if family == 'ipv6' else 'iptables-save'}` output", *proxy.evidence]
    if proxy.name == NONE:
        return [f"no kube-proxy table for {version} (table {'ip6' if family == 'ipv6' else 'ip'} kube-proxy): "
                "kube-proxy is not running in nftables mode for this family on this node (iptables or IPVS mode, "
                "or a replacement such as Cilium); traces still run through the tables there are",
                *proxy.evidence]
    return [f"kube-proxy's {version} table has no rules yet", *proxy.evidence]


def mode_split_warning(proxy: ProxyMode, table: str) -> str:
    """What kube-proxy's rules in both proxy modes in one ruleset mean (proxy.other_mode set, `table` kube-proxy's
    own)."""
    return (f"kube-proxy's rules are here in both proxy modes: {proxy.other_mode}, beside table {table} "
            "(nftables mode). The kernel runs both: every packet passes both tables' chains, and at each hook the "
            "first DNAT decides. Traces follow the kernel's order (by priority; of equal priorities, the chain "
            f"created later runs first). {ONE_MODE_FIX[0].upper()}{ONE_MODE_FIX[1:]}")
