"""What an iptables dump reveals of the node around it: its pod CIDRs, its own addresses and the endpoints'
addresses (iptrace.kube.sources picks a traced packet's source address from these)."""

from __future__ import annotations

import ipaddress

from iptrace.iptables.model import Ruleset


def _version(ruleset: Ruleset) -> int:
    return 6 if ruleset.family == "ipv6" else 4


def infer_pod_cidrs(ruleset: Ruleset) -> list[str]:
    """Pod CIDRs from kube-proxy's local-traffic detection: `! -s CIDR -j KUBE-MARK-MASQ` (cluster IP
    masquerading), `-s CIDR -j KUBE-SVC-…` in KUBE-EXT/KUBE-XLB ("pod traffic", "Redirect pods …")."""
    found: list[str] = []
    nat = ruleset.table("nat")
    if nat is None:
        return found
    for chain in nat.chains:
        ext = chain.name.startswith(("KUBE-EXT-", "KUBE-XLB-"))
        if not (ext or chain.name.startswith(("KUBE-SVC-", "KUBE-SVL-")) or chain.name == "KUBE-SERVICES"):
            continue
        for rule in chain.rules:
            opt = rule.option("-s")
            if opt is None or "/" not in opt.value:
                continue
            target = rule.target_name
            if (opt.negated and target == "KUBE-MARK-MASQ") or (
                    ext and not opt.negated and target.startswith(("KUBE-SVC-", "KUBE-SVL-"))):
                try:
                    cidr = str(ipaddress.ip_network(opt.value, strict=False))
                except ValueError:
                    continue
                if cidr not in found and not cidr.endswith(("/32", "/128")):
                    found.append(cidr)
    return found


def infer_node_ips(ruleset: Ruleset) -> list[str]:
    """Node addresses the rules name: `-d IP -j KUBE-NODEPORTS` in nat KUBE-SERVICES (kube-proxy's
    --nodeport-addresses form). Loopback is always local and not listed. (The kubernetes Service's
    endpoints are control-plane addresses, not necessarily this node's, so they are not used.)"""
    found: list[str] = []
    chain = ruleset.chain("nat", "KUBE-SERVICES")
    if chain is None:
        return found
    for rule in chain.rules:
        if rule.target_name != "KUBE-NODEPORTS":
            continue
        opt = rule.option("-d")
        if opt is None or opt.negated:
            continue
        try:
            net = ipaddress.ip_network(opt.value, strict=False)
        except ValueError:
            continue
        if net.num_addresses == 1 and not net.network_address.is_loopback:
            ip = str(net.network_address)
            if ip not in found:
                found.append(ip)
    return found


def endpoint_ips(ruleset: Ruleset) -> set[str]:
    """Addresses of endpoints: the `-s EP` of the hairpin rule that starts every KUBE-SEP chain (read from the
    rule's text: a big dump has ~10^5 endpoint chains)."""
    out: set[str] = set()
    nat = ruleset.table("nat")
    if nat is None:
        return out
    for chain in nat.chains:
        if chain.name.startswith("KUBE-SEP-"):
            for rule in chain.rules:
                text = rule.text
                if text.startswith("-s "):
                    out.add(text[3:].split(None, 1)[0].split("/")[0])
    return out
