"""Views reused by a footprint's loose key (iptrace.iptables.footprint_loose): nodes whose rules differ only in
how the chains before kube-proxy's dispatch (the hooks', the CNI's) answer their -s/-d tests reuse each other's
views when the traces never read the answers that differ — flannel's rules naming each node's own pod CIDR —
and never when they do. Every view is compared with the view built without reuse (tests/test_reuse.py's
check_fleet)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from bench import fleet
from iptrace.iptables import DATAPLANE, load
from iptrace.kube.analysis import analyse
from tests.test_reuse import check_fleet, fleet_texts, services


def test_nodes_that_differ_in_their_pod_cidr_rules_reuse_each_others_views() -> None:
    """Flannel's `-s|-d 10.244.N.0/24` rules answer an endpoint in node N's pod CIDR otherwise on node N than
    elsewhere, so such a port's key differs on node N; but flannel returns the traffic the view traces before
    it meets those rules (a masquerade mark, or a source in the node's own pod CIDR), so the view is reused."""
    specs = services()
    texts = fleet_texts(specs, 5)
    reuse = check_fleet(texts)
    assert reuse.stats.loose > 0, reuse.stats


def _rule_text(hook: str, flag: str, address: str, target: str, layout: str = "plain") -> str:
    """A chain every question meets (jumped to from `hook`) with the rule `flag address -j target`: alone
    ("plain"), after a jump to a chain that returns ("after-jump"), or met from nat PREROUTING (OUTPUT) and again
    from nat POSTROUTING, behind a RETURN for all but pods (the question's destination until its DNAT: "twice")."""
    table = "filter" if target == "DROP" else "nat"
    rule = f"-A CNI-TEST {flag} {address} -j {target}"
    if layout == "twice":
        return (f"*nat\n:CNI-TEST - [0:0]\n-I PREROUTING -j CNI-TEST\n-I OUTPUT -j CNI-TEST\n-I POSTROUTING -j CNI-TEST\n"
                f"-A CNI-TEST ! -d 10.244.0.0/16 -j RETURN\n{rule}\nCOMMIT\n")
    if layout == "after-jump":
        return (f"*{table}\n:CNI-TEST - [0:0]\n:CNI-NOOP - [0:0]\n-I {hook} -j CNI-TEST\n-A CNI-TEST -j CNI-NOOP\n"
                f"-A CNI-NOOP -p udp -j RETURN\n{rule}\nCOMMIT\n")
    return f"*{table}\n:CNI-TEST - [0:0]\n-I {hook} -j CNI-TEST\n{rule}\nCOMMIT\n"


def test_a_per_node_rule_the_traces_read_is_not_reused_over() -> None:
    """The same rule on two nodes but for its address: on node 2 it drops the traffic to one endpoint, on node 1
    it names an address no trace meets. The view of that endpoint's port differs, and is not handed over."""
    specs = services()
    endpoint = specs[5].endpoints[0].ip
    # (/31, not /32: a rule for one host is filed by its address, in the chains read per question)
    extra = {1: _rule_text("FORWARD", "-d", "10.99.0.0/31", "DROP"),
             2: _rule_text("FORWARD", "-d", f"{endpoint}/31", "DROP")}
    texts = fleet_texts(specs, 3, extra)[1:]
    views = [analyse(DATAPLANE, load(t), "ipv4", node_ips=[ip]).view for ip, t in texts]
    differs = [a.label for a, b in zip(views[0].services, views[1].services, strict=True) if a != b]
    assert any(specs[5].name in d for d in differs), differs
    reuse = check_fleet(texts)
    assert reuse.stats.reused > 0, reuse.stats


def test_a_chain_met_twice_is_read_as_far_as_either_walk_went() -> None:
    """A chain met from nat PREROUTING (OUTPUT) and again from nat POSTROUTING: the first walk leaves it at its first rule
    (a RETURN for all but pods), the second goes on to the rule whose address is each node's own, which on node 2
    spares one endpoint's traffic its masquerade. That endpoint's port differs, and is not handed over."""
    specs = services()
    endpoint = next(ep.ip for svc in specs for ep in svc.endpoints if not ep.ip.startswith(("10.244.1.", "10.244.2.")))
    extra = {i: _rule_text("POSTROUTING", "-d", address, "ACCEPT", "twice")
             for i, address in enumerate(["10.99.0.0/31", "10.99.0.0/31", f"{endpoint}/31", "10.99.0.0/31"])}
    texts = fleet_texts(specs, 4, extra)
    views = [analyse(DATAPLANE, load(t), "ipv4", node_ips=[ip]).view for ip, t in texts]
    svc = next(svc for svc in specs if any(ep.ip == endpoint for ep in svc.endpoints))

    def masquerade(view: Any) -> list[Any]:
        return [(e.masquerade, e.masquerade_sources) for sp in view.services if sp.name == svc.name for e in sp.entries]

    assert masquerade(views[1]) != masquerade(views[2])
    assert masquerade(views[1]) == masquerade(views[3])
    reuse = check_fleet(texts)
    assert reuse.stats.loose > 0, reuse.stats


@pytest.mark.parametrize("layout", ["plain", "after-jump", "twice"])
@pytest.mark.parametrize("flag", ["-s", "-d", "! -d"])
@pytest.mark.parametrize("where", [("POSTROUTING", "MASQUERADE"), ("POSTROUTING", "RETURN"),
                                   ("PREROUTING", "ACCEPT"), ("OUTPUT", "ACCEPT"), ("FORWARD", "DROP"),
                                   ("OUTPUT", "DROP")])
def test_a_context_rule_for_another_address_on_each_node(where: tuple[str, str], flag: str, layout: str) -> None:
    """Every node has the same rule in a chain every question meets, but for an address of its own: one of the
    Services' endpoints (/31: a rule for one host is filed by its address, in the chains read per question), an
    address no trace meets, the node's pod CIDR, a ClusterIP. Whatever they are, a reused view is the node's own."""
    specs = services(16, 2, seed=5)
    hook, target = where
    if layout == "twice" and target == "DROP":
        target = "ACCEPT"  # (nat: ACCEPT ends the table's walk, and a masquerade behind it with it)
    endpoints = [ep.ip for svc in specs for ep in svc.endpoints]
    picks = random.Random(f"{where}{flag}{layout}").sample(endpoints, 2)
    cluster_ip = specs[3].cluster_ip
    addresses = [f"{picks[0]}/31", "10.99.0.0/31", fleet.pod_cidr(2), f"{picks[1]}/31", f"{picks[0]}/31",
                 f"{cluster_ip}/31"]
    extra = {i: _rule_text(hook, flag, address, target, layout) for i, address in enumerate(addresses)}
    check_fleet(fleet_texts(specs, len(addresses), extra))
