"""Which kube-proxy wrote these rules, and in which layout: the signs each era leaves in a dump.

Mirrors the history in KUBE-PROXY-LAYOUT.md. Pure: looks only at chain names, a few comments and the
dump's own warning lines.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from iptrace.iptables.model import Chain, Rule, Ruleset, Table

NONE = "none"
XLB = "KUBE-XLB era"
EXT = "KUBE-EXT era"
IPVS = "IPVS mode"
NFTABLES = "nftables-managed"
USERSPACE = "userspace mode"

LEGACY_WARNING = "iptables-legacy tables present"
NFT_INCOMPATIBLE = "incompatible, use 'nft' tool"


@dataclass(frozen=True, slots=True)
class Era:
    name: str  # one of NONE, XLB, EXT, IPVS, NFTABLES, USERSPACE
    evidence: tuple[str, ...]  # short human-readable reasons
    version_hint: str = ""  # e.g. "~1.29+" (nfacct counters), "~1.24-1.28"
    legacy_tables_present: bool = False  # the nft backend said the legacy backend holds tables too
    nft_tables_present: bool = False  # the dump said some tables are nftables-only (kube-proxy nftables mode?)

    @property
    def has_iptables_rules(self) -> bool:
        return self.name in (XLB, EXT, USERSPACE)


def detect(ruleset: Ruleset) -> Era:
    """Guess the kube-proxy mode and era from what the dump contains."""
    nat = ruleset.table("nat")
    filt = ruleset.table("filter")
    chains = {c.name for t in ruleset.tables for c in t.chains}
    comments = " ".join(ruleset.comments)
    legacy = LEGACY_WARNING in comments
    nft = NFT_INCOMPATIBLE in comments
    evidence: list[str] = []
    if legacy:
        evidence.append("the dump warns that iptables-legacy tables are present (the other backend has rules)")
    if nft:
        evidence.append("the dump warns that some tables are managed by nftables directly")

    def era(name: str, hint: str = "") -> Era:
        return Era(name, tuple(evidence), hint, legacy, nft)

    # Every prefix is "KUBE-<word>-": one pass collects the prefix of each chain name instead of one scan of
    # 100,000 names per prefix.
    heads = {c[:c.find("-", 5) + 1] for c in chains if c.startswith("KUBE-")}
    has = {prefix: prefix in heads
           for prefix in ("KUBE-XLB-", "KUBE-EXT-", "KUBE-SVL-", "KUBE-SVC-", "KUBE-SEP-", "KUBE-FW-",
                          "KUBE-PORTALS-", "KUBE-NODEPORT-")}
    kube_services = nat is not None and "KUBE-SERVICES" in nat
    if "KUBE-IPVS-FILTER" in chains or "KUBE-LOAD-BALANCER" in chains or _ipvs_sets(ruleset):
        evidence.append("IPVS-mode chains or ipsets (KUBE-LOAD-BALANCER, KUBE-CLUSTER-IP set matches)")
        return era(IPVS)
    if has["KUBE-PORTALS-"] or has["KUBE-NODEPORT-"]:
        evidence.append("KUBE-PORTALS-*/KUBE-NODEPORT-* chains (userspace proxier)")
        return era(USERSPACE, "≤1.25")
    if kube_services and (has["KUBE-SVC-"] or has["KUBE-SEP-"] or has["KUBE-XLB-"] or has["KUBE-EXT-"]
                          or (nat is not None and any(c.rules for c in nat.chains if c.name == "KUBE-SERVICES"))):
        if has["KUBE-XLB-"]:
            evidence.append("KUBE-XLB-* chains (externalTrafficPolicy=Local before KEP-3178)")
            return era(XLB, "≤1.23")
        if has["KUBE-EXT-"] or has["KUBE-SVL-"] or (filt is not None and "KUBE-PROXY-FIREWALL" in filt):
            nfacct = any("nfacct" in r.text for _, _, r in _kube_rules(ruleset, ("KUBE-NODEPORTS", "KUBE-FORWARD")))
            evidence.append("KUBE-EXT-*/KUBE-SVL-* chains or KUBE-PROXY-FIREWALL (KEP-3178 layout)")
            if nfacct:
                evidence.append("nfacct counters (~1.29+)")
            return era(EXT, "~1.29+" if nfacct else "~1.24-1.28")
        evidence.append("KUBE-SERVICES with KUBE-SVC/KUBE-SEP chains but no KUBE-EXT/KUBE-XLB/KUBE-PROXY-FIREWALL")
        return era(XLB, "≤1.23 (no externalTrafficPolicy=Local services seen)")
    if kube_services:
        evidence.append("an empty KUBE-SERVICES chain: kube-proxy runs but no Service has endpoints yet?")
        return era(EXT)
    if "KUBE-KUBELET-CANARY" in chains or "KUBE-FIREWALL" in chains:
        evidence.append("kubelet's chains (KUBE-KUBELET-CANARY/KUBE-FIREWALL) but no KUBE-SERVICES: kube-proxy is "
                        "not in iptables mode here")
    if nft:
        return era(NFTABLES)
    return era(NONE)


def _kube_rules(ruleset: Ruleset, chains: tuple[str, ...]) -> Iterator[tuple[Table, Chain, Rule]]:
    for t in ruleset.tables:
        for c in t.chains:
            if c.name in chains:
                for r in c.rules:
                    yield t, c, r


def _ipvs_sets(ruleset: Ruleset) -> bool:
    nat = ruleset.table("nat")
    if nat is None:
        return False
    services = nat.chain("KUBE-SERVICES")
    if services is None:
        return False
    return any("KUBE-CLUSTER-IP" in r.text for r in services.rules[:50])
