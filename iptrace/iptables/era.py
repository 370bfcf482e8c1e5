"""Which kube-proxy wrote these rules, and in which layout: the signs each era leaves in a dump.

Mirrors the history in KUBE-PROXY-LAYOUT.md. Pure: looks only at chain names, a few comments and the
dump's own warning lines.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from iptrace.iptables.comments import comment_lines
from iptrace.iptables.model import Chain, Rule, Ruleset, Table
from iptrace.layout import PARTIAL_DUMP, ProxyMode
from iptrace.text import listed

NONE = "none"
FIRST = "first iptables proxier"
XLB = "KUBE-XLB era"
EXT = "KUBE-EXT era"
IPVS = "IPVS mode"
NFTABLES = "nftables-managed"
USERSPACE = "userspace mode"

# kube-proxy 1.1's one masquerade mark ("MASQ"): its endpoint chains set it themselves and POSTROUTING masqueraded
# it; 1.2 moved to KUBE-MARK-MASQ/KUBE-POSTROUTING with --iptables-masquerade-bit and deleted the old rule.
FIRST_MASQUERADE_MARK = "0x4d415351"

LEGACY_WARNING = "iptables-legacy tables present"
NFT_INCOMPATIBLE = "incompatible, use 'nft' tool"


@dataclass(frozen=True, slots=True)
class Era:
    name: str  # one of NONE, FIRST, XLB, EXT, IPVS, NFTABLES, USERSPACE
    evidence: tuple[str, ...]  # short human-readable reasons
    version_hint: str = ""  # e.g. "~1.29+" (nfacct counters), "~1.24-1.28"
    legacy_tables_present: bool = False  # the nft backend said the legacy backend holds tables too
    nft_tables_present: bool = False  # the dump said some tables are nftables-only (kube-proxy nftables mode?)


def detect(ruleset: Ruleset) -> Era:
    """Guess the kube-proxy mode and era from what the dump contains."""
    nat = ruleset.table("nat")
    filt = ruleset.table("filter")
    tables = ruleset.tables
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

    # Every prefix is "KUBE-<word>-", so a chain name has it exactly when it starts with it: one join of the
    # 100,000 names, then a substring search per prefix.
    names = "\n" + "\n".join([c.name for t in tables for c in t.chains])
    has = {prefix: "\n" + prefix in names
           for prefix in ("KUBE-XLB-", "KUBE-EXT-", "KUBE-SVL-", "KUBE-SVC-", "KUBE-SEP-", "KUBE-FW-",
                          "KUBE-PORTALS-", "KUBE-NODEPORT-")}
    kube_services = nat is not None and "KUBE-SERVICES" in nat
    def has_chain(name: str) -> bool:
        return any(name in t for t in tables)

    if has_chain("KUBE-IPVS-FILTER") or has_chain("KUBE-LOAD-BALANCER") or _ipvs_sets(ruleset):
        evidence.append("IPVS-mode chains or ipsets (KUBE-LOAD-BALANCER, KUBE-CLUSTER-IP set matches)")
        return era(IPVS)
    if has["KUBE-PORTALS-"] or has["KUBE-NODEPORT-"]:
        evidence.append("KUBE-PORTALS-*/KUBE-NODEPORT-* chains (userspace proxier)")
        return era(USERSPACE, "≤1.25")
    if kube_services and (has["KUBE-SVC-"] or has["KUBE-SEP-"] or has["KUBE-XLB-"] or has["KUBE-EXT-"]
                          or (nat is not None and bool(nat.chain("KUBE-SERVICES").rules))):  # type: ignore[union-attr]
        if _first_proxier(nat):
            evidence.append(f"POSTROUTING masquerades the mark {FIRST_MASQUERADE_MARK} itself and there is no "
                            "KUBE-MARK-MASQ chain (kube-proxy 1.2 introduced KUBE-MARK-MASQ and KUBE-POSTROUTING)")
            return era(FIRST, "1.1")
        if has["KUBE-XLB-"]:
            evidence.append("KUBE-XLB-* chains (externalTrafficPolicy=Local before KEP-3178)")
            return era(XLB, "≤1.23")
        def ext() -> Era:
            nfacct = any("nfacct" in r.text for _, _, r in _kube_rules(ruleset, ("KUBE-NODEPORTS", "KUBE-FORWARD")))
            if nfacct:
                evidence.append("nfacct counters (~1.29+)")
            return era(EXT, "~1.29+" if nfacct else "~1.24-1.28")

        if has["KUBE-EXT-"] or has["KUBE-SVL-"] or (filt is not None and "KUBE-PROXY-FIREWALL" in filt):
            evidence.append("KUBE-EXT-*/KUBE-SVL-* chains or KUBE-PROXY-FIREWALL (KEP-3178 layout)")
            return ext()
        evidence.append("KUBE-SERVICES with KUBE-SVC/KUBE-SEP chains but no KUBE-EXT/KUBE-XLB/KUBE-PROXY-FIREWALL")
        nodeports = nat is not None and "KUBE-NODEPORTS" in nat and bool(nat.chain("KUBE-NODEPORTS").rules)  # type: ignore[union-attr]
        if nodeports or has["KUBE-FW-"]:
            # (since KEP-3178, ~1.24, a NodePort or LoadBalancer way in always goes through a KUBE-EXT chain)
            evidence.append("NodePort/LoadBalancer ways in without KUBE-EXT chains")
            return era(XLB, "≤1.23")
        masquerade = _cluster_ip_masquerade(nat)
        if masquerade == "KUBE-SVC":
            evidence.append("the cluster IPs' masquerade rules open the KUBE-SVC chains (KEP-3178 layout)")
            return ext()
        if masquerade == "KUBE-SERVICES":
            evidence.append("the cluster IPs' masquerade rules are in KUBE-SERVICES (before KEP-3178)")
            return era(XLB, "≤1.23")
        return era(XLB, "≤1.23, or newer with no NodePort or LoadBalancer Service to tell")
    if kube_services:
        evidence.append("an empty KUBE-SERVICES chain: kube-proxy runs but no Service has endpoints yet?")
        return era(EXT)
    cut = "" if legacy or nft else _cut_off(ruleset, nat)
    if cut:
        evidence.append(cut)
        return era(PARTIAL_DUMP)
    if has_chain("KUBE-KUBELET-CANARY") or has_chain("KUBE-FIREWALL"):
        evidence.append("kubelet's chains (KUBE-KUBELET-CANARY/KUBE-FIREWALL) but no KUBE-SERVICES: kube-proxy is "
                        "not in iptables mode here")
    if nft:
        return era(NFTABLES)
    return era(NONE)


# Chains only kube-proxy's iptables mode writes (kubelet wrote KUBE-MARK-*, KUBE-POSTROUTING and KUBE-FIREWALL
# too, up to 1.24, and writes KUBE-KUBELET-CANARY: those tell nothing of kube-proxy).
_PROXY_CHAINS = ("KUBE-NODEPORTS", "KUBE-FORWARD", "KUBE-PROXY-FIREWALL", "KUBE-EXTERNAL-SERVICES",
                 "KUBE-PROXY-CANARY")
_PROXY_PREFIXES = ("KUBE-SVC-", "KUBE-SEP-", "KUBE-EXT-", "KUBE-SVL-", "KUBE-FW-", "KUBE-XLB-")


def _cut_off(ruleset: Ruleset, nat: Table | None) -> str:
    """Why a dump without KUBE-SERVICES still shows kube-proxy in iptables mode (so the dump, not the node, lacks
    the Service rules), in a few words; "" when nothing in it is kube-proxy's alone. A rule's jump counts as a
    chain: a cut paste keeps rules whose chain declarations it lost."""
    seen: dict[str, None] = {}
    for table in ruleset.tables:
        for chain in table.chains:
            for name in (chain.name, *(r.target_name for r in chain.rules)):
                if name in _PROXY_CHAINS or name.startswith(_PROXY_PREFIXES):
                    seen[f"{table.name} {name}"] = None
    if not seen:
        return ""
    names = list(seen)
    found = listed(names[:3] + ([f"{len(names) - 3} more"] if len(names) > 3 else []))
    if nat is None:
        return (f"kube-proxy's chains ({found}) but no nat table, where kube-proxy writes its Service rules: the "
                "dump holds only part of the node's tables")
    return (f"kube-proxy's chains ({found}) but no KUBE-SERVICES chain in nat: the dump was cut before kube-proxy's "
            "Service rules")


def _first_proxier(nat: Table | None) -> bool:
    """kube-proxy 1.1's layout: its mark matched in POSTROUTING itself, and no KUBE-MARK-MASQ chain."""
    if nat is None or "KUBE-MARK-MASQ" in nat:
        return False
    postrouting = nat.chain("POSTROUTING")
    return postrouting is not None and any(
        "MASQUERADE" in r.text and f"--mark {FIRST_MASQUERADE_MARK}" in r.text for r in postrouting.rules)


def _cluster_ip_masquerade(nat: Table | None) -> str | None:
    """Where a cluster IP's masquerade rule (`-d <clusterIP> … -j KUBE-MARK-MASQ`) is: in KUBE-SERVICES before
    the jump up to ~1.23, the first rule of the KUBE-SVC chain since KEP-3178; None when no Service has one
    (no local-traffic detector and no masqueradeAll)."""
    if nat is None:
        return None
    services = nat.chain("KUBE-SERVICES")
    if services is not None and any(r.text.endswith("-j KUBE-MARK-MASQ") and " -d " in f" {r.text}"
                                    for r in services.rules):
        return "KUBE-SERVICES"
    for chain in nat.chains:
        if chain.name.startswith("KUBE-SVC-") and chain.rules:
            text = chain.rules[0].text
            if text.endswith("-j KUBE-MARK-MASQ") and " -d " in f" {text}":
                return "KUBE-SVC"
    return None


def _kube_rules(ruleset: Ruleset, chains: tuple[str, ...]) -> Iterator[tuple[Table, Chain, Rule]]:
    for t in ruleset.tables:
        for c in filter(None, map(t.chain, chains)):  # (by name: not a scan of every chain)
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


def proxy_mode(ruleset: Ruleset) -> ProxyMode:
    """kube-proxy's mode and era as this dump shows them (era.py)."""
    detected = detect(ruleset)
    mode = {FIRST: "iptables", XLB: "iptables", EXT: "iptables", IPVS: "ipvs", NFTABLES: "nftables",
            USERSPACE: "userspace"}.get(detected.name, "none")
    warning = None
    if detected.legacy_tables_present:
        warning = next(((line, text) for text, line in comment_lines(ruleset).items()
                        if LEGACY_WARNING in text), None)
    return ProxyMode("iptables", mode, detected.name, detected.evidence, detected.version_hint,
                     detected.legacy_tables_present, detected.nft_tables_present, warning,
                     itp_filters_cluster_chain=detected.name in (FIRST, XLB))


def cut_warnings(ruleset: Ruleset) -> list[str]:
    """A dump read with --lenient past its end in the middle of a table (a paste cut short): what the view says
    is missing may only be in the part that was cut."""
    return [f"the dump ends inside table {w.message.split()[1]} (no COMMIT): a Service port with no way in, "
            "endpoints missing, or NodePorts said not reachable may only have lost their rules in the part that was "
            "cut" for w in ruleset.skipped if "has no COMMIT (the dump looks truncated)" in w.message][:1]


def no_rules_warnings(proxy: ProxyMode) -> list[str]:
    what = {
        "ipvs": "kube-proxy runs in IPVS mode: Services live in IPVS virtual servers (ipvsadm -Ln) and ipsets, "
                "not in iptables chains",
        "nftables": "no kube-proxy iptables rules; the dump says some tables are managed by nftables "
                    "(kube-proxy nftables mode? see `nft list table ip kube-proxy`)",
        "userspace": "kube-proxy runs in userspace mode: it picks endpoints itself; iptables only redirect "
                     "Service traffic to its local proxy ports",
        "none": "no kube-proxy iptables rules (no KUBE-SERVICES chain): kube-proxy is not running in iptables "
                "mode on this node, or a replacement (Cilium, kube-router IPVS, …) handles Services",
    }
    if proxy.name == PARTIAL_DUMP:
        what["none"] = ("kube-proxy's Service rules are not in this dump (no KUBE-SERVICES chain), though it runs in "
                        "iptables mode: give iptrace the node's whole `iptables-save` output")
    out = [what.get(proxy.mode, f"kube-proxy mode {proxy.name}: no iptables service rules"), *proxy.evidence]
    if proxy.legacy_tables_present:
        out.append("kube-proxy may have written its rules through the other backend: look at "
                   "`iptables-legacy-save` from this node")
    return out
