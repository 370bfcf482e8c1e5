"""What kube-proxy writes for a Service port, in the words of the node's proxy mode: the API comparison's details
name the rule, element, chain or set a node lacks or still holds, and an nftables-mode node has no KUBE-SERVICES
rule, KUBE-FW- chain or `-m recent` match. Dataplane-free and pure."""

from __future__ import annotations

from iptrace.dataplane import join_host_port


def dispatch(nft: bool) -> str:
    """What captures a Service's address and port."""
    return "service-ips element" if nft else "KUBE-SERVICES rule"


def firewall(nft: bool) -> str:
    """Where loadBalancerSourceRanges are checked."""
    return "its firewall-… chain" if nft else "KUBE-FW-/KUBE-PROXY-FIREWALL"


def affinity(nft: bool) -> str:
    """What keeps ClientIP session affinity."""
    return "affinity-… sets (`ip saddr @affinity-…`)" if nft else "`-m recent` affinity rules"


def missing(nft: bool, family: str, ip: str, port: int, proto: str, chain: str | None) -> str:
    """The dispatch kube-proxy would have written for a Service port this node has no rules for: to `chain` (its
    cluster or local chain), to a REJECT when it has no endpoints (`chain` None), or either ("" : the cluster data
    has no EndpointSlices to tell)."""
    if chain == "":
        return f"a {dispatch(nft)} for {join_host_port(ip, port)}/{proto}"
    if nft:
        table = "ip6 kube-proxy" if family == "ipv6" else "ip kube-proxy"
        if chain is None:
            return (f"the element `{ip} . {proto} . {port} : goto reject-chain` of {table}'s no-endpoint-services "
                    "map (\"has no endpoints\")")
        return f"the element `{ip} . {proto} . {port} : goto {chain}` of {table}'s service-ips map"
    if chain is None:
        return f"a filter `KUBE-SERVICES ... -d {ip} --dport {port} -j REJECT` (\"has no endpoints\")"
    return f"`-A KUBE-SERVICES -d {ip} -p {proto} --dport {port} -j {chain}`"
