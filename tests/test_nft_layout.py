"""kube-proxy's nftables layouts as iptrace reads them: every era named from the signs it left, the same Service
ports read out of each (ways in, endpoints, policies, pod CIDR, mark), and traced through each the way the
kernel would — including what an era got wrong (1.29's source ranges checked after DNAT).

The rulesets are written here, era by era, after KUBE-PROXY-NFT-LAYOUT.md "How it changed" and the pull
requests it names; the chain names carry kube-proxy's real hashes (names.py)."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest

from bench.synth import EndpointSpec, PortSpec, ServiceSpec
from bench.synth_nft import render_nft
from iptrace.dataplane import Packet
from iptrace.layout import CLUSTER_IP, LOAD_BALANCER, NODE_PORT
from iptrace.nftables import DATAPLANE, load
from iptrace.nftables.era import DNAT_IN_SERVICE, FILTER_BEFORE_DNAT, INLINE_MASQ, NONE, PRE_DNAT
from iptrace.nftables.names import endpoint_base, service_chain, service_port_base, split_chain
from tests.dumps import analysis

NODE = "192.168.0.10"
WEB = service_port_base("default/web:http", "tcp")  # ULMVA6XW-like base of default/web port "http"
LB = service_port_base("default/lb:http", "tcp")
EPS = ("10.244.1.5", "10.244.2.6")
LB_EP = "10.244.3.7"


def _ep(service: str, ip: str) -> str:
    return "endpoint-" + endpoint_base(service, "tcp", ip, 8080)


MASQ_CHAIN = "jump mark-for-masquerade"
MASQ_INLINE = "meta mark set meta mark | 0x00004000"


def era_ruleset(era: str) -> str:
    """default/web (ClusterIP 10.96.0.20:80 → two endpoints, NodePort 30080), default/empty (no endpoints:
    10.96.0.30:80) and default/lb (LB IP 198.51.100.10:80 with source range 203.0.113.0/25 → one endpoint),
    as kube-proxy of `era` writes them: "1.29", "1.30", "1.33", "1.34", "1.36" or "1.37"."""
    inline = era in ("1.36", "1.37")
    masq = MASQ_INLINE if inline else MASQ_CHAIN
    base: list[tuple[str, str, str, str, list[str]]] = []  # name, type, hook, priority, rules
    if era == "1.29":
        filters = [("filter-input", "input"), ("filter-forward", "forward"), ("filter-output", "output")]
        base += [(n, "filter", h, "-101", ["ct state new jump firewall-check",
                                           "ct state new jump endpoints-check"]) for n, h in filters]
    elif era in ("1.30", "1.33"):
        check = "service-endpoints-check" if era == "1.33" else "endpoints-check"
        base += [("filter-prerouting", "filter", "prerouting", "dstnat - 10", ["ct state new jump firewall-check"]),
                 ("filter-input", "filter", "input", "-110", [f"ct state new jump {check}"]),
                 ("filter-forward", "filter", "forward", "-110",
                  [f"ct state new jump {check}", "ct state new jump cluster-ips-check"]),
                 ("filter-output", "filter", "output", "-110", [f"ct state new jump {check}"]),
                 ("filter-output-post-dnat", "filter", "output", "-90", ["ct state new jump cluster-ips-check"])]
    else:
        base += [("filter-prerouting-pre-dnat", "filter", "prerouting", "dstnat - 10",
                  ["ct state new jump firewall-check"]),
                 ("filter-output-pre-dnat", "filter", "output", "-110", ["ct state new jump firewall-check"]),
                 ("filter-input", "filter", "input", "filter", ["ct state new jump nodeport-endpoints-check",
                                                                "ct state new jump service-endpoints-check"]),
                 ("filter-forward", "filter", "forward", "filter", ["ct state new jump service-endpoints-check",
                                                                    "ct state new jump cluster-ips-check"]),
                 ("filter-output", "filter", "output", "filter", ["ct state new jump service-endpoints-check",
                                                                  "ct state new jump cluster-ips-check"])]
    base += [("nat-prerouting", "nat", "prerouting", "dstnat", ["jump services"]),
             ("nat-output", "nat", "output", "-100", ["jump services"]),
             ("nat-postrouting", "nat", "postrouting", "srcnat", ["jump masquerading"])]
    chains: dict[str, list[str]] = {}
    services = ["ip daddr . meta l4proto . th dport vmap @service-ips",
                "ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports"]
    if inline:
        services.insert(0, f"ip daddr @cluster-ips ip saddr != 10.244.0.0/16 {MASQ_INLINE} "
                           'comment "masquerade clusterIP traffic from outside cluster"')
    chains["services"] = services
    if inline:
        chains["masquerading"] = ["meta mark & 0x00004000 != 0x00000000 meta mark set meta mark ^ 0x00004000 "
                                  "masquerade fully-random"]
    else:
        chains["mark-for-masquerade"] = [MASQ_INLINE]
        chains["masquerading"] = ["meta mark & 0x00004000 == 0x00000000 return",
                                  "meta mark set meta mark ^ 0x00004000", "masquerade fully-random"]
    if era == "1.37":
        chains["masquerading"].append("ct status dnat ip saddr . ip daddr . meta l4proto . th dport "
                                      "@hairpin-connections masquerade fully-random")
    chains["reject-chain"] = ["reject"]
    no_endpoints = "ip daddr . meta l4proto . th dport vmap @no-endpoint-services"
    nodeports = "ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports"
    if era in ("1.29", "1.30"):
        chains["endpoints-check"] = [no_endpoints, nodeports]
    else:
        chains["service-endpoints-check"] = [no_endpoints]
        chains["nodeport-endpoints-check"] = [nodeports]
    if era != "1.29":
        chains["cluster-ips-check"] = ['ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of '
                                       'ClusterIPs"', 'ip daddr 10.96.0.0/12 drop comment "Drop traffic to '
                                                      'unallocated ClusterIPs"']
    if era == "1.29":
        chains["firewall-check"] = ["ip daddr . meta l4proto . th dport @firewall jump firewall-allow-check"]
        chains["firewall-allow-check"] = ["ip daddr . meta l4proto . th dport . ip saddr @firewall-allow return",
                                          "drop"]
    else:
        chains["firewall-check"] = ["ip daddr . meta l4proto . th dport vmap @firewall-ips"]
        chains[f"firewall-{LB}"] = ["ip saddr != 203.0.113.0/25 drop"]
    # default/web: masquerade off-pod clients of the ClusterIP, balance over two endpoints.
    port_test = " tcp dport 80" if era in ("1.30", "1.33") else ""
    web_masq = f"ip daddr 10.96.0.20{port_test} ip saddr != 10.244.0.0/16 {masq}"
    for svc, ips, cip in (("default/web:http", EPS, "10.96.0.20"), ("default/lb:http", (LB_EP,), "10.96.0.40")):
        base_ = service_port_base(svc, "tcp")
        rules = [web_masq] if svc == "default/web:http" else \
            [f"ip daddr {cip}{port_test} ip saddr != 10.244.0.0/16 {masq}"]
        if era == "1.37":
            targets = ", ".join(f"{i} : {ip} . 8080" for i, ip in enumerate(ips))
            rules.append(f"meta l4proto tcp dnat ip to numgen random mod {len(ips)} map {{ {targets} }}"
                         if len(ips) > 1 else f"meta l4proto tcp dnat to {ips[0]}:8080")
        else:
            targets = ", ".join(f"{i} : goto {_ep(svc, ip)}" for i, ip in enumerate(ips))
            rules.append(f"numgen random mod {len(ips)} vmap {{ {targets} }}")
            for ip in ips:
                chains[_ep(svc, ip)] = [f"ip saddr {ip} {masq}", f"meta l4proto tcp dnat to {ip}:8080"]
        chains[f"service-{base_}"] = rules
        chains[f"external-{base_}"] = [masq, f"goto service-{base_}"]
    sets = [("set", "cluster-ips", "ipv4_addr", "10.96.0.20, 10.96.0.30, 10.96.0.40"),
            ("set", "nodeport-ips", "ipv4_addr", NODE),
            ("map", "service-ips", "ipv4_addr . inet_proto . inet_service : verdict",
             f"10.96.0.20 . tcp . 80 : goto service-{WEB}, 10.96.0.40 . tcp . 80 : goto service-{LB}, "
             f"198.51.100.10 . tcp . 80 : goto external-{LB}"),
            ("map", "service-nodeports", "inet_proto . inet_service : verdict", f"tcp . 30080 : goto external-{WEB}"),
            ("map", "no-endpoint-services", "ipv4_addr . inet_proto . inet_service : verdict",
             '10.96.0.30 . tcp . 80 comment "default/empty:http" : goto reject-chain'),
            ("map", "no-endpoint-nodeports", "inet_proto . inet_service : verdict", "")]
    if era == "1.29":
        sets += [("set", "firewall", "ipv4_addr . inet_proto . inet_service", "198.51.100.10 . tcp . 80"),
                 ("set", "firewall-allow", "ipv4_addr . inet_proto . inet_service . ipv4_addr",
                  "198.51.100.10 . tcp . 80 . 203.0.113.0/25")]
    else:
        sets.append(("map", "firewall-ips", "ipv4_addr . inet_proto . inet_service : verdict",
                     f"198.51.100.10 . tcp . 80 : goto firewall-{LB}"))
    if era == "1.37":
        sets.append(("set", "hairpin-connections", "ipv4_addr . ipv4_addr . inet_proto . inet_service",
                     ", ".join(f"{ip} . {ip} . tcp . 8080" for ip in (*EPS, LB_EP))))
    out = ["table ip kube-proxy {", '\tcomment "rules for kube-proxy"']
    for kind, name, typ, elements in sets:
        flags = "\t\tflags interval\n" if name == "firewall-allow" else ""
        body = f"\t\telements = {{ {elements} }}\n" if elements else ""
        out.append(f"\t{kind} {name} {{\n\t\ttype {typ}\n{flags}{body}\t}}")
    for name, ctype, hook, prio, rules in base:
        out.append(f"\tchain {name} {{\n\t\ttype {ctype} hook {hook} priority {prio}; policy accept;\n"
                   + "".join(f"\t\t{r}\n" for r in rules) + "\t}")
    for name, rules in chains.items():
        out.append(f"\tchain {name} {{\n" + "".join(f"\t\t{r}\n" for r in rules) + "\t}")
    return "\n".join(out) + "\n}\n"


ERAS = {"1.29": (FILTER_BEFORE_DNAT, "1.29 (alpha)"), "1.30": (FILTER_BEFORE_DNAT, "~1.30"),
        "1.33": (FILTER_BEFORE_DNAT, "~1.31-1.33"), "1.34": (PRE_DNAT, "~1.34-1.35"),
        "1.36": (INLINE_MASQ, "~1.36"), "1.37": (DNAT_IN_SERVICE, "1.37 cycle")}


def test_names_carry_kube_proxys_hashes() -> None:
    assert service_chain("cluster", "ns1/svc1:p80", "tcp") == "service-ULMVA6XW-ns1/svc1/tcp/p80"
    assert service_chain("external", "ns1/svc1", "TCP") == "external-6KJ5P52A-ns1/svc1/tcp/"
    assert endpoint_base("ns1/svc1:p80", "tcp", "fd00:10:180::1", 80).startswith("ZVRFLKHO-")
    assert DATAPLANE.service_chain("firewall", "ns5/svc5:p80", "tcp") == "firewall-HVFWP5L3-ns5/svc5/tcp/p80"
    assert split_chain("endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80") == (
        "endpoint", "ULMVA6XW-ns1/svc1/tcp/p80", "ns1/svc1:p80", "tcp")
    assert split_chain("services") is None


@pytest.mark.parametrize("era", ERAS)
def test_every_era_is_named_from_its_own_signs(era: str) -> None:
    proxy = DATAPLANE.layout(load(era_ruleset(era)), "ipv4").proxy
    assert (proxy.dataplane, proxy.mode, proxy.name, proxy.version_hint) == ("nftables", "nftables", *ERAS[era])
    assert proxy.evidence


@pytest.mark.parametrize("era", ERAS)
def test_every_era_reads_the_same_service_ports(era: str) -> None:
    ruleset = load(era_ruleset(era), source=f"era {era}")
    layout = DATAPLANE.layout(ruleset, "ipv4")
    assert layout.pod_cidrs == ("10.244.0.0/16",)
    assert layout.masquerade_mark == "0x4000" and layout.random_fully
    assert layout.node_ips == (NODE,) and layout.node_port_addresses.addresses == (NODE,)
    ports = {p.name: p for p in layout.service_ports}
    assert set(ports) == {"default/web:http", "default/empty:http", "default/lb:http"}
    web, empty, lb = ports["default/web:http"], ports["default/empty:http"], ports["default/lb:http"]
    assert [(w.kind, w.address, w.port) for w in web.ways_in] == [(CLUSTER_IP, "10.96.0.20", 80),
                                                                  (NODE_PORT, None, 30080)]
    assert (web.cluster_chain, web.external_traffic_policy, web.internal_traffic_policy) == (
        f"service-{WEB}", "Cluster", "Cluster")
    assert empty.no_endpoints and [(w.kind, w.address) for w in empty.ways_in] == [(CLUSTER_IP, "10.96.0.30")]
    assert (LOAD_BALANCER, "198.51.100.10") in [(w.kind, w.address) for w in lb.ways_in]
    assert lb.lb_source_ranges == ("203.0.113.0/25",)
    assert set(web.chains) >= {f"service-{WEB}", f"external-{WEB}"}
    assert ("10.244.1.5" in layout.endpoint_ips) and layout.endpoint_keys("10.244.2.6") == (WEB,)
    view = analysis(ruleset, node_ips=[NODE]).view
    shown = {s.label: s for s in view.services}
    assert {e.address: e.probability for e in shown["default/web:http"].endpoints} == {
        "10.244.1.5:8080": 0.5, "10.244.2.6:8080": 0.5}


@pytest.mark.parametrize("era", ERAS)
def test_every_era_traces_as_the_kernel_would(era: str) -> None:
    tracer = DATAPLANE.tracer(load(era_ruleset(era)), node_ips=[NODE])
    half = Fraction(1, 2)

    def outcomes(src: str, dst: str, port: int) -> list[tuple[str, str | None, Fraction, bool]]:
        return [(o.verdict, o.destination, o.exact_probability, o.masquerade)
                for o in tracer.trace(Packet(src, dst, port)).outcomes]

    assert outcomes("10.244.0.2", "10.96.0.20", 80) == [
        ("DNAT", "10.244.1.5:8080", half, False), ("DNAT", "10.244.2.6:8080", half, False)]
    assert outcomes("203.0.113.1", NODE, 30080) == [
        ("DNAT", "10.244.1.5:8080", half, True), ("DNAT", "10.244.2.6:8080", half, True)]
    assert outcomes(NODE, "10.96.0.20", 80) == [
        ("DNAT", "10.244.1.5:8080", half, True), ("DNAT", "10.244.2.6:8080", half, True)]
    # A pod reaching itself through its Service is masqueraded (the hairpin rule, or 1.37's hairpin set).
    assert outcomes("10.244.1.5", "10.96.0.20", 80) == [
        ("DNAT", "10.244.1.5:8080", half, True), ("DNAT", "10.244.2.6:8080", half, False)]
    assert outcomes("10.244.0.2", "10.96.0.30", 80)[0][0] == "REJECT"
    if era == "1.29":
        # No cluster-ips-check yet: an unserved port of a ClusterIP is routed on, unanswered.
        assert outcomes("10.244.0.2", "10.96.0.20", 8080)[0][0] == "ACCEPT"
        # The alpha's source-range check ran in input/forward/output, after DNAT: it never saw the LB IP, so
        # a client outside loadBalancerSourceRanges got through (fixed in 1.30 by #122614).
        assert outcomes("198.51.100.99", "198.51.100.10", 80)[0][:2] == ("DNAT", f"{LB_EP}:8080")
    else:
        assert outcomes("10.244.0.2", "10.96.0.20", 8080)[0][0] == "REJECT"  # cluster-ips-check
        assert outcomes("10.244.0.2", "10.100.0.1", 80)[0][0] == "DROP"  # unallocated
        assert outcomes("198.51.100.99", "198.51.100.10", 80) == [("DROP", None, 1, False)]
    assert outcomes("203.0.113.7", "198.51.100.10", 80) == [("DNAT", f"{LB_EP}:8080", 1, True)]


def test_a_ruleset_without_kube_proxy_says_so_and_still_traces() -> None:
    text = """table ip filter {
\tchain FORWARD {
\t\ttype filter hook forward priority filter; policy drop;
\t\tip daddr 10.0.0.0/8 tcp dport 443 counter packets 0 bytes 0 accept
\t}
}
table ip nat {
\tchain KUBE-SERVICES {
\t\tip daddr 10.96.0.1 tcp dport 443 xt match "comment" counter packets 0 bytes 0 jump KUBE-SVC-X
\t}
\tchain KUBE-SVC-X {
\t}
}
"""
    ruleset = load(text, source="iptables-nft")
    layout = DATAPLANE.layout(ruleset, "ipv4")
    assert (layout.proxy.mode, layout.proxy.name) == ("none", NONE)
    assert any("no kube-proxy table for IPv4" in w for w in layout.warnings)
    tracer = DATAPLANE.tracer(ruleset, node_ips=[NODE])
    ok = tracer.trace(Packet("203.0.113.1", "10.0.0.5", 443))
    assert [(o.verdict, o.decided_by.line) for o in ok.outcomes] == [("ACCEPT", 4)]  # type: ignore[union-attr]
    dropped = tracer.trace(Packet("203.0.113.1", "10.0.0.5", 80)).outcomes[0]
    assert dropped.verdict == "DROP" and dropped.decided_by.policy == "drop"  # type: ignore[union-attr]
    assert [c.name for c in DATAPLANE.foreign_chains(ruleset)] == ["FORWARD", "KUBE-SERVICES", "KUBE-SVC-X"]
    assert "kube-proxy: no kube-proxy table" in DATAPLANE.summary(ruleset)


def test_a_dual_stack_ruleset_answers_for_both_families() -> None:
    specs = [ServiceSpec("default", "web", "10.96.0.20", [PortSpec("http", 80, "TCP", 30080, 8080)], type="NodePort",
                         endpoints=[EndpointSpec("10.244.1.5", 8080)]),
             ServiceSpec("default", "web6", "fd00:96::20", [PortSpec("http", 80, "TCP", 30081, 8080)],
                         type="NodePort", endpoints=[EndpointSpec("fd00:244::5", 8080)])]
    kw: dict[str, Any] = {"node_ips": [NODE, "2001:db8::10"], "form": "list"}
    text = (render_nft(specs, pod_cidr="10.244.0.0/16", service_cidrs=["10.96.0.0/12"], **kw)
            + render_nft(specs, pod_cidr="fd00:244::/56", service_cidrs=["fd00:96::/108"], ipv6=True, **kw))
    ruleset = load(text, source="dual")
    assert ruleset.families == ("ipv4", "ipv6")
    assert all(DATAPLANE.layout(ruleset, f).proxy.mode == "nftables" for f in ruleset.families)
    assert [(w.kind, w.address) for _, w in DATAPLANE.layout(ruleset, "ipv6").ways] == [
        (CLUSTER_IP, "fd00:96::20"), (NODE_PORT, None)]
    tracer = DATAPLANE.tracer(ruleset, node_ips=[NODE, "2001:db8::10"])
    assert [o.destination for o in tracer.trace(Packet("2001:db8:ff::1", "2001:db8::10", 30081)).outcomes] == [
        "[fd00:244::5]:8080"]
    assert [o.destination for o in tracer.trace(Packet("203.0.113.1", NODE, 30080)).outcomes] == ["10.244.1.5:8080"]


def test_the_nodes_own_pod_subnet_from_the_cnis_table() -> None:
    """flannel's own nft table names this node's subnet (`ip saddr 10.244.1.0/24 ip daddr 10.244.0.0/16 return`):
    the view's pod client is a pod of this node, whose traffic flannel returns unmasqueraded."""
    from pathlib import Path

    from iptrace.kube.analysis import analyse

    ruleset = load(Path("sample_dumps/flannel-and-kube-proxy-nft.nft").read_text())
    a = analyse(DATAPLANE, ruleset, "ipv4")
    assert a.layout.pod_cidrs == ("10.244.0.0/16",) and a.layout.node_pod_cidrs == ("10.244.1.0/24",)
    assert a.view.clients is not None and a.view.clients.pod == "10.244.1.2"
    out = a.tracer.trace(Packet("10.244.1.2", "10.244.2.9", 80))
    assert [o.masquerade for o in out.outcomes] == [False]
    assert analyse(DATAPLANE, load(Path("sample_dumps/nodeport-fb-backends-nft.nft").read_text()),
                   "ipv4").layout.node_pod_cidrs == ()
