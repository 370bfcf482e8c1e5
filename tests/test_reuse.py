"""Service views reused across nodes (iptrace.kube.reuse, iptrace.iptables.footprint) are the views a node's
own traces give: fleets rendered by bench/fleet.py (kube-proxy's layout and flannel's rules, every node unique
in a few rules), with the differences that must *not* be reused — a rule of one node's firewall or CNI that
changes one Service's fate, a stale rule for an address another Service now has, an endpoint on the node's own
address, REDIRECT — each view compared with the view built without reuse."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import fleet, synth
from bench.synth import EndpointSpec, PortSpec, ServiceSpec
from iptrace.dataplane import Packet
from iptrace.iptables import DATAPLANE, load
from iptrace.kube.analysis import analyse
from iptrace.kube.reuse import LINE_FIELDS, ViewReuse
from iptrace.kube.sources import EXTERNAL_V4
from iptrace.kube.view import EndpointView, EntryView, ServicePortView, SourcePath
from tests.conftest import SAMPLES

CLIENT = EXTERNAL_V4[0]  # (the view's client from outside the cluster)


def services(n: int = 40, endpoints: int = 3, seed: int = 3) -> list[ServiceSpec]:
    specs = synth.scale(n, endpoints, seed)
    # Endpoints across 20 nodes' pod CIDRs (10.244.N.0/24): a few on each of the nodes rendered.
    for k, svc in enumerate(specs):
        for j, ep in enumerate(svc.endpoints):
            ep.ip = f"10.244.{(k * 3 + j) % 20}.{10 + k}"
    return specs


def check_fleet(texts: Sequence[tuple[str, str]], family: str = "ipv4") -> ViewReuse:
    """Every node's view, with one ViewReuse shared in node order, equals its view without reuse."""
    reuse = ViewReuse()
    for node_ip, text in texts:
        ruleset = load(text)
        plain = analyse(DATAPLANE, ruleset, family, node_ips=[node_ip]).view
        reused = analyse(DATAPLANE, ruleset, family, node_ips=[node_ip], reuse=reuse).view
        for a, b in zip(plain.services, reused.services, strict=True):
            assert a == b, f"{node_ip}: {a.label} differs with reuse:\n{a}\n{b}"
        assert plain == reused
    return reuse


def fleet_texts(specs: list[ServiceSpec], nodes: int, extra: dict[int, str] | None = None,
                **kwargs: Any) -> list[tuple[str, str]]:
    return [(fleet.node_ip(i), fleet.node_dump(specs, i, extra=(extra or {}).get(i, ""), **kwargs))
            for i in range(nodes)]


def test_a_fleet_reuses_most_ports_and_gets_the_same_views() -> None:
    reuse = check_fleet(fleet_texts(services(), 5))
    # Nodes 1-4 share most ports (node 0's pod client lies in its own pod CIDR, which its CNI rules name).
    assert reuse.stats.reused > reuse.stats.ports // 4, reuse.stats


@pytest.mark.parametrize("era", ["xlb", "ext"])
def test_older_layouts(era: str) -> None:
    reuse = check_fleet(fleet_texts(services(), 4, era=era))
    assert reuse.stats.reused > 0


def test_a_rule_of_one_node_that_changes_a_service_is_not_reused_over() -> None:
    specs = services()
    target = specs[5]
    endpoint = target.endpoints[0].ip
    extra = {
        2: f"*filter\n-I FORWARD -d {endpoint}/32 -j DROP\nCOMMIT\n",  # one endpoint unreachable through node 2
        3: f"*nat\n-I PREROUTING -d {target.cluster_ip}/32 -j ACCEPT\nCOMMIT\n",  # its ClusterIP not DNATed
        4: "*nat\n-I POSTROUTING -s 203.0.113.0/24 -j MASQUERADE\nCOMMIT\n",  # outside clients masqueraded
    }
    check_fleet(fleet_texts(specs, 5, extra))


def test_rules_of_one_shape_that_answer_for_other_clients() -> None:
    """Two nodes with `-s CIDR -j RETURN` atop a Service's chain, for outside clients on one and for pods
    on the other: the same rule but for its address, so the key holds how each address test answers."""
    specs = services()
    chain = synth.service_port_chain("KUBE-SVC-", f"{specs[4].namespace}/{specs[4].name}:http", "tcp")
    extra = {2: f"*nat\n-I {chain} -s 203.0.113.0/24 -j RETURN\nCOMMIT\n",
             3: f"*nat\n-I {chain} -s 10.244.0.0/16 -j RETURN\nCOMMIT\n"}
    check_fleet(fleet_texts(specs, 4, extra))


def test_the_pod_client_is_a_pod_of_each_node() -> None:
    """On a flannel fleet every node names its own pod subnet (FLANNEL-POSTRTG's `-s 10.244.N.0/24 -d
    10.244.0.0/16 -j RETURN`), so each node's view traces its pod client from inside it: flannel returns that
    client's traffic unmasqueraded on every node alike (a client picked in the cluster CIDR kube-proxy names
    would be node 0's pod, masqueraded as a stranger everywhere else). The views agree, and node 1 reuses most of
    node 0's."""
    specs = services()
    texts = fleet_texts(specs, 3)
    analyses = [analyse(DATAPLANE, load(text), "ipv4", node_ips=[ip]) for ip, text in texts]
    for i, a in enumerate(analyses):
        assert a.layout.node_pod_cidrs == (f"10.244.{i}.0/24",)
        assert a.view.clients is not None and a.view.clients.pod == f"10.244.{i}.2"
    views = [a.view for a in analyses]

    def masquerade(view: Any) -> list[tuple[str, str]]:
        return [(sp.label, e.masquerade) for sp in view.services for e in sp.entries]

    assert masquerade(views[0]) == masquerade(views[1]) == masquerade(views[2])
    assert any(m == "off-node/off-pod only" for _, m in masquerade(views[0]))
    reuse = ViewReuse()
    for (ip, text), plain in zip(texts, views, strict=True):
        before = reuse.stats.reused
        reused = analyse(DATAPLANE, load(text), "ipv4", node_ips=[ip], reuse=reuse).view
        assert reused == plain
        if ip != fleet.node_ip(0):
            assert reuse.stats.reused - before > len(plain.services) // 2  # the previous node's views fit


def test_the_order_of_kube_services_is_not_in_the_key() -> None:
    """kube-proxy writes KUBE-SERVICES in Go map order: a Service's ClusterIP and load-balancer rules come in
    another order on each node, which no walk can tell (a packet has one destination), so every port is
    reused."""
    specs = services()
    text = fleet.node_dump(specs, 1)
    other = fleet.shuffle_services(text, seed=99)
    assert other != text
    reuse = check_fleet([(fleet.node_ip(1), text), (fleet.node_ip(1), other)])
    assert reuse.stats.stored > len(specs) // 2 and reuse.stats.reused == reuse.stats.stored, reuse.stats


def test_a_services_ports_on_one_address_in_either_order() -> None:
    """A Service whose port 80 targets 8080, which it serves too: the question about port 80 meets both its rules
    in KUBE-SERVICES (the ClusterIP, port 80 and port 8080), which come in Go map order. No packet matches both
    (one port at a time), so their order is not in the key: every port is reused."""
    specs = services()
    specs.append(ServiceSpec("default", "two", "10.96.200.1", [PortSpec("http", 80, target_port=8080),
                                                             PortSpec("alt", 8080, target_port=9090)],
                             endpoints=[EndpointSpec("10.244.7.7", 8080)]))
    text = fleet.node_dump(specs, 1)
    lines = text.split("\n")
    at = [i for i, line in enumerate(lines) if line.startswith("-A KUBE-SERVICES -d 10.96.200.1/32 ")]
    assert len(at) == 2
    swapped = list(lines)
    swapped[at[0]], swapped[at[1]] = lines[at[1]], lines[at[0]]
    reuse = check_fleet([(fleet.node_ip(1), text), (fleet.node_ip(1), "\n".join(swapped))])
    assert reuse.stats.reused == reuse.stats.stored == len(specs) + 1, reuse.stats


@pytest.mark.parametrize("portless", [False, True])
@pytest.mark.parametrize("after", [False, True])
def test_rules_for_one_address_keep_their_order(after: bool, portless: bool) -> None:
    """A RETURN for a ClusterIP (and its port, or any) before its Service's rule stops it being DNATed; after
    it, it changes nothing: the two nodes' views differ, so neither is handed to the other."""
    specs = services()
    text = fleet.node_dump(specs, 1)
    cip = specs[6].cluster_ip
    lines = text.split("\n")
    at = next(i for i, line in enumerate(lines) if line.startswith(f"-A KUBE-SERVICES -d {cip}/32 "))
    ret = (f"-A KUBE-SERVICES -d {cip}/32 -p tcp -j RETURN" if portless else
           f"-A KUBE-SERVICES -d {cip}/32 -p tcp -m tcp --dport {specs[6].ports[0].port} -j RETURN")
    before = "\n".join([*lines[:at], ret, *lines[at:]])
    behind = "\n".join([*lines[:at + 1], ret, *lines[at + 1:]])
    texts = [(fleet.node_ip(1), before), (fleet.node_ip(1), behind)]
    if after:
        texts.reverse()
    views = [analyse(DATAPLANE, load(t), "ipv4", node_ips=[ip]).view for ip, t in texts]
    assert views[0] != views[1]
    check_fleet(texts)


def test_a_port_that_differs_on_every_node_stops_being_keyed_for_a_while() -> None:
    """A Service whose chain has a rule of its own on every node misses the cache on every node: after MISSES
    misses in a row it is traced without a key, for 1, then 2, … nodes; every view stays its own."""
    from iptrace.kube.reuse import MISSES

    specs = services(12)
    chain = synth.service_port_chain("KUBE-SVC-", f"{specs[4].namespace}/{specs[4].name}:http", "tcp")
    nodes = MISSES + 4
    extra = {i: f"*nat\n-I {chain} -s {CLIENT}/32 -m comment --comment node-{i} -j RETURN\nCOMMIT\n"
             for i in range(nodes)}  # (the outside client's traffic returns, by a rule that is each node's own)
    reuse = check_fleet(fleet_texts(specs, nodes, extra))
    # That port: keyed on nodes 0..MISSES-1 and MISSES+1, skipped on MISSES, MISSES+2 and MISSES+3.
    assert reuse.stats.skipped >= 3, reuse.stats


def test_views_no_node_reuses_are_dropped_so_the_cache_does_not_grow_with_the_nodes() -> None:
    """Every node has a rule of its own in one Service's chain: that port's view is kept on every node but never
    reused, and is dropped PROBATION rounds later; the views nodes share stay. The cache then holds as many views
    after many nodes as after a few, and every view is still the node's own."""
    from iptrace.kube.reuse import PROBATION

    specs = services(12)
    chain = synth.service_port_chain("KUBE-SVC-", f"{specs[4].namespace}/{specs[4].name}:http", "tcp")
    nodes = PROBATION + 6
    extra = {i: f"*nat\n-I {chain} -s {CLIENT}/32 -m comment --comment node-{i} -j RETURN\nCOMMIT\n"
             for i in range(nodes)}  # (the outside client's traffic returns, by a rule that is each node's own)
    texts = fleet_texts(specs, nodes, extra)
    reuse = ViewReuse()
    sizes = []
    for node_ip, text in texts:
        ruleset = load(text)
        plain = analyse(DATAPLANE, ruleset, "ipv4", node_ips=[node_ip]).view
        assert analyse(DATAPLANE, ruleset, "ipv4", node_ips=[node_ip], reuse=reuse).view == plain
        sizes.append(len(reuse))
    assert reuse.stats.dropped > 0 and reuse.stats.reused > 0, reuse.stats
    # (it grows while the first nodes' own views wait out their rounds, then grows no more)
    assert max(sizes[PROBATION + 2:]) <= sizes[PROBATION + 2] < max(sizes), sizes


def test_a_stale_rule_for_an_address_another_service_now_has() -> None:
    """kube-proxy's stale rules for a deleted Service whose ClusterIP was given to a new one: which rule comes
    first in KUBE-SERVICES decides, and the order differs from node to node."""
    specs = services()
    new = specs[7]
    old = ServiceSpec("default", "gone", new.cluster_ip, [PortSpec("http", new.ports[0].port, target_port=9999)],
                      endpoints=[EndpointSpec("10.244.9.9", 9999)])
    stale = fleet.node_dump([*specs, old], 2)
    texts = fleet_texts(specs, 4)
    texts[2] = (fleet.node_ip(2), stale)
    texts.append((fleet.node_ip(4), fleet.node_dump([*specs, old], 4, seed=1)))
    check_fleet(texts)


def test_an_endpoint_on_the_nodes_own_address() -> None:
    """The API server's endpoints are control-plane nodes' addresses: on those nodes the view names the node's
    own address, which the footprint names by role, so such a view is never handed to another node."""
    specs = services()
    specs.append(ServiceSpec("default", "kubernetes", "10.96.0.1", [PortSpec("https", 443, target_port=6443)],
                             endpoints=[EndpointSpec(fleet.node_ip(i), 6443) for i in range(3)]))
    check_fleet(fleet_texts(specs, 4))


def test_redirect_and_unknown_ipsets() -> None:
    specs = services()
    extra = {1: f"*nat\n-I PREROUTING -d {specs[3].cluster_ip}/32 -p tcp -j REDIRECT --to-ports 8080\nCOMMIT\n",
             2: "*filter\n-I FORWARD -m set --match-set blocked src -j DROP\nCOMMIT\n"}
    check_fleet(fleet_texts(specs, 4, extra))


def test_ipv6_fleet() -> None:
    specs = [ServiceSpec("default", f"svc-{k}", f"fd00:10:96::{k + 1:x}",
                         [PortSpec("http", 80, node_port=30000 + k if k % 3 == 0 else None, target_port=8080)],
                         type="NodePort" if k % 3 == 0 else "ClusterIP",
                         endpoints=[EndpointSpec(f"fd00:10:244:{(k + j) % 3}::{k + 5:x}", 8080) for j in range(2)])
             for k in range(12)]
    texts = []
    for i in range(3):
        ip = f"fd00:1::{i + 10:x}"
        for s in specs:
            for ep in s.endpoints:
                ep.local = ep.ip.startswith(f"fd00:10:244:{i}::")
        text = synth.render(specs, node_ips=[ip], pod_cidr="fd00:10:244::/56", ipv6=True, comments=True)
        texts.append((ip, fleet.shuffle_services(text, i)))
    reuse = check_fleet(texts, "ipv6")
    assert reuse.stats.reused > 0


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from(["drop-endpoint", "accept-ip", "masq-pods",
                                                               "local-policy", "stale-endpoint", "none"]),
                          st.integers(0, 1000)), min_size=1, max_size=4))
def test_random_differences_between_nodes(changes: list[tuple[int, str, int]]) -> None:
    """Whatever few rules set the nodes apart, a reused view is the node's own."""
    base = services(16, 2, seed=11)
    extras: dict[int, str] = {}
    per_node: dict[int, list[ServiceSpec]] = {}
    for node, kind, pick in changes:
        rng = random.Random(pick)
        specs = per_node.setdefault(node, [dataclasses.replace(s, endpoints=[dataclasses.replace(e) for e in
                                                                              s.endpoints]) for s in base])
        svc = specs[rng.randrange(len(specs))]
        if kind == "drop-endpoint" and svc.endpoints:
            extras[node] = extras.get(node, "") + f"*filter\n-I FORWARD -d {svc.endpoints[0].ip}/32 -j DROP\nCOMMIT\n"
        elif kind == "accept-ip":
            extras[node] = extras.get(node, "") + f"*nat\n-I PREROUTING -d {svc.cluster_ip}/32 -j RETURN\nCOMMIT\n"
        elif kind == "masq-pods":
            extras[node] = extras.get(node, "") + "*nat\n-I POSTROUTING -s 10.244.0.0/24 -j MASQUERADE\nCOMMIT\n"
        elif kind == "local-policy" and svc.type != "ClusterIP":
            svc.external_traffic_policy = "Local"
        elif kind == "stale-endpoint":
            svc.endpoints.append(EndpointSpec(f"10.244.{pick % 4}.{200 + pick % 50}", svc.endpoints[0].port
                                              if svc.endpoints else 8080))
    texts = [(fleet.node_ip(i), fleet.node_dump(per_node.get(i, base), i, extra=extras.get(i, "")))
             for i in range(4)]
    check_fleet(texts)


def test_the_cache_knows_every_field_that_holds_a_dump_line() -> None:
    """A new field holding a line number must be relined too (kube/reuse.py LINE_FIELDS)."""
    for cls in (ServicePortView, EndpointView, EntryView, SourcePath):
        lines = {f.name for f in dataclasses.fields(cls) if "line" in f.name or f.name == "decided_by"}
        assert lines == set(LINE_FIELDS[cls]), cls


def test_no_footprint_for_what_the_key_cannot_name() -> None:
    text = fleet.node_dump(services(), 1, extra="*nat\n-I PREROUTING -p tcp -j REDIRECT --to-ports 15001\nCOMMIT\n")
    ruleset = load(text)
    tracer = DATAPLANE.tracer(ruleset, node_ips=[fleet.node_ip(1)])
    packet = Packet("203.0.113.1", "10.96.0.5", 80)
    assert tracer.footprint([(None, packet)]) is None
    plain = DATAPLANE.tracer(load(fleet.node_dump(services(), 1)), node_ips=[fleet.node_ip(1)])
    found = plain.footprint([(None, packet)])
    assert found is not None and found.abstracted == ("203.0.113.1",)
    moved = DATAPLANE.tracer(load(fleet.node_dump(services(), 2)), node_ips=[fleet.node_ip(2)])
    other = moved.footprint([(None, Packet("203.0.113.1", "10.96.0.5", 80))])
    assert other is not None and other.key == found.key and other.lines != found.lines


def test_a_node_is_freed_without_the_cyclic_collector() -> None:
    """An audit frees each node's rules before the next: with reuse the tracer also holds the footprint's view of
    its rules, which must not hold the tracer back (a cycle would leave a whole ruleset, ~10^6 objects, to the
    cyclic collector's scan — seconds per node)."""
    import gc
    import weakref

    specs = services()
    (ip, text), = fleet_texts(specs, 1)
    reuse = ViewReuse()
    enabled = gc.isenabled()
    gc.disable()
    try:
        analysis = analyse(DATAPLANE, load(text), "ipv4", node_ips=[ip], reuse=reuse)
        assert analysis.view.services
        assert reuse.stats.stored  # the footprints were read
        # ... and what they read of the rules went with the view built (the node's digest is made next)
        assert not hasattr(analysis.tracer, "_footprint_node")
        tracer = weakref.ref(analysis.tracer)
        del analysis
        assert tracer() is None
    finally:
        if enabled:
            gc.enable()


@pytest.mark.parametrize("name", ["nodeport-fb-backends.txt", "flannel-and-kube-proxy.txt", "xlb-era.txt",
                                  "loadbalancer-source-ranges.txt", "session-affinity.txt", "ipv6.txt",
                                  "flannel-and-kube-proxy-nft.nft", "dual-stack-nft.nft"])
def test_the_questions_a_view_says_it_asks_are_the_ones_it_asks(name: str) -> None:
    """Reuse keys a port by the traces `_Builder.questions` lists (without building the view): they must be
    exactly those the build then asks, in order, for every port of every sample (else nothing is reused)."""
    from pathlib import Path

    from iptrace.dataplanes import load as load_any
    from iptrace.kube.reuse import _Noting
    from iptrace.kube.view import _Builder

    dataplane, ruleset = load_any(Path("sample_dumps", name).read_text(), source=name)
    for family in ruleset.families:
        analysis = analyse(dataplane, ruleset, family)
        noting = _Noting(analysis.tracer)
        builder = _Builder(analysis.layout, noting, analysis.views.clients)
        for sp in analysis.layout.service_ports:
            noting.calls = []
            builder.service(sp)
            assert noting.calls == builder.questions(sp), sp.key


def test_a_port_whose_questions_meet_another_services_endpoints_has_a_footprint() -> None:
    """Two load balancers given one address (each Service's questions meet the other's rules for it, and the
    index leaves rules out before the other's ten endpoints are met): one walk gathers every endpoint it meets,
    so such a port is keyed and reused like any other (walking again per endpoint ran out of walks), and its
    reused views are the nodes' own."""
    from iptrace.kube.view import _Builder

    specs = services()
    for k in range(2):
        specs.append(ServiceSpec("default", f"shared-{k}", f"10.96.9.{k + 1}",
                                 [PortSpec("http", 80, node_port=31990 + k, target_port=8080)], type="LoadBalancer",
                                 lb_ips=["203.0.113.99"], session_affinity_timeout=10800,
                                 endpoints=[EndpointSpec(f"10.244.{100 + j}.{7 + k}", 8080) for j in range(10)]))
    texts = fleet_texts(specs, 3)
    ip, text = texts[0]
    analysis = analyse(DATAPLANE, load(text), "ipv4", node_ips=[ip])
    builder = _Builder(analysis.layout, analysis.tracer, analysis.views.clients)
    for sp in analysis.layout.service_ports:
        if sp.name.startswith("default/shared-"):
            assert analysis.tracer.footprint(tuple(builder.questions(sp))) is not None, sp.name
    before = check_fleet(texts[:1]).stats.ports
    reuse = check_fleet(texts)
    assert reuse.stats.reused > reuse.stats.ports - 2 * before, reuse.stats


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([4, 6]), st.booleans(), st.integers(0, 2 ** 32 - 1),
       st.lists(st.integers(0, 2 ** 32 - 1), max_size=4), st.lists(st.integers(0, 2 ** 32 - 1), max_size=4),
       st.sampled_from([0x7F000001, 0xE0000001, 0xFFFFFFFF, 0, None]))
def test_the_kind_of_an_address_that_is_not_the_nodes_own_is_the_same_on_every_node(
        version: int, known: bool, addr: int, mine: list[int], theirs: list[int], special: int | None) -> None:
    """footprint.py keeps the header line of an address that is none of the node's own across nodes
    (_FOREIGN_LINES, by IP version and whether the node's addresses are known): what -m addrtype and the routing
    decision see of it must not read anything else of the node (its addresses, its ipsets)."""
    from iptrace.iptables.match_modules import _address_types
    from iptrace.iptables.state import Context

    if special is not None:
        addr = special if version == 4 else {0x7F000001: 1, 0xE0000001: 0xFF << 120, 0xFFFFFFFF: 2, 0: 0}[special]
    a = Context(version, frozenset(mine) - {addr}, known, {})
    b = Context(version, frozenset(theirs) - {addr}, known, {"allowed": ((addr, (1 << 32) - 1),)})
    assert _address_types(addr, a) == _address_types(addr, b)
    assert a.is_local(addr) == b.is_local(addr)


def test_an_address_the_node_holds_is_never_read_as_another_nodes_endpoint() -> None:
    """Node 1's address is an endpoint on node 0 (a foreign address, its header line kept across nodes) and
    node 1's own there: node 1's footprint names it by role, the same as with nothing kept from node 0."""
    from iptrace.iptables import footprint

    specs = services()
    specs.append(ServiceSpec("default", "kubernetes", "10.96.0.1", [PortSpec("https", 443, target_port=6443)],
                             endpoints=[EndpointSpec(fleet.node_ip(1), 6443)]))
    texts = fleet_texts(specs, 2)
    packet = Packet("10.244.0.9", "10.96.0.1", 443)
    keys = []
    for warm in (True, False):
        footprint._FOREIGN_LINES.clear()
        if warm:
            zero = DATAPLANE.tracer(load(texts[0][1]), node_ips=[texts[0][0]])
            assert zero.footprint([(None, packet)]) is not None
        one = DATAPLANE.tracer(load(texts[1][1]), node_ips=[texts[1][0]])
        found = one.footprint([(None, packet)])
        assert found is not None
        keys.append(found.key)
    assert keys[0] == keys[1]
    check_fleet(texts)


def test_a_chains_plan_for_one_questions_sources_is_not_used_for_anothers() -> None:
    """A chain read once (footprint._CHAINS, its plan made once) answers each question's -s tests anew: a question
    from an endpoint (its hairpin rule met) and one from another pod of its node, asked in turn of one chain
    read, each get what a fresh read gives them."""
    from iptrace.iptables import footprint

    specs = services()
    svc = specs[0]
    (ip, text), = fleet_texts(specs, 1)
    endpoint = svc.endpoints[0].ip
    hairpin = next(n for n, line in enumerate(text.splitlines(), 1)
                   if line.startswith("-A KUBE-SEP-") and f"-s {endpoint}/32" in line)
    port = svc.ports[0].port
    packets = [Packet(endpoint, svc.cluster_ip, port), Packet(endpoint[:endpoint.rindex(".")] + ".99",
                                                              svc.cluster_ip, port)]

    def fresh(packet: Packet) -> Any:
        footprint._CHAINS.clear()
        return DATAPLANE.tracer(load(text), node_ips=[ip]).footprint([(None, packet)])

    expected = [fresh(p) for p in packets]
    assert hairpin in expected[0].lines and hairpin not in expected[1].lines
    tracer = DATAPLANE.tracer(load(text), node_ips=[ip])
    for i in (0, 1, 0, 1):
        found = tracer.footprint([(None, packets[i])])
        assert found is not None and (found.key, found.lines) == (expected[i].key, expected[i].lines)


def test_port_numbers_no_key_holds_are_forgotten_and_the_rest_still_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each node has a Service of its own beside the fleet's. The numbers of ports (ViewReuse._ports) are forgotten
    when there are more than PORTS cache sizes of them — here at every node —, only those no key holds (a kept
    view, a miss count, a loose key): the nodes reuse the same ports as when nothing is forgotten, and every view is
    the node's own."""
    from iptrace.kube import reuse as module

    shared = services(12)
    nodes = 12

    def run(ports: float) -> tuple[list[int], ViewReuse]:
        reuse = ViewReuse(size=40)
        monkeypatch.setattr(module, "PORTS", ports)
        per_node = []
        for i in range(nodes):
            own = ServiceSpec("default", f"only-on-{i}", f"10.96.200.{i + 1}", [PortSpec("http", 80, target_port=8080)],
                              endpoints=[EndpointSpec(f"10.244.{i}.77", 8080)])
            ruleset = load(fleet.node_dump([*shared, own], i))
            plain = analyse(DATAPLANE, ruleset, "ipv4", node_ips=[fleet.node_ip(i)]).view
            before = reuse.stats.reused
            assert analyse(DATAPLANE, ruleset, "ipv4", node_ips=[fleet.node_ip(i)], reuse=reuse).view == plain
            per_node.append(reuse.stats.reused - before)
            held = {key[0] for key in reuse._views} | set(reuse._misses) | {key[0] for key in reuse._loose}
            assert held <= set(reuse._ports.values())
        return per_node, reuse

    kept, _ = run(4)
    forgetting, reuse = run(0.01)
    assert forgetting == kept and sum(kept[2:]) >= (len(shared) - 1) * (nodes - 2), kept
    # Once the misses and loose keys are gone and views dropped, only the kept views' numbers stay.
    reuse._misses.clear()
    reuse._loose.clear()
    for key in list(reuse._views)[: len(reuse._views) // 2]:
        del reuse._views[key]
    reuse._forget_ports()
    assert set(reuse._ports.values()) == {key[0] for key in reuse._views}


def _without_lines(sp: Any) -> Any:
    """A port's layout without its lines and its ways' lines (what ViewReuse keys a port by)."""
    return dataclasses.replace(sp, lines=(), ways_in=tuple(dataclasses.replace(w, lines=()) for w in sp.ways_in))


def test_a_ports_values_are_equal_exactly_when_its_layouts_without_lines_are() -> None:
    """reuse._port_values, which numbers a port: equal for two layouts exactly when they are equal but for lines —
    every pair of ports of fleet nodes (each node's rules at other lines, one with a rule of its own) and of the
    sample dumps."""
    from iptrace.iptables.layout import read_layout
    from iptrace.kube.reuse import _port_values

    specs = services(20)
    chain = synth.service_port_chain("KUBE-SVC-", f"{specs[3].namespace}/{specs[3].name}:http", "tcp")
    texts = [fleet.node_dump(specs, 1), fleet.node_dump(specs, 2),
             fleet.node_dump(specs, 3, extra=f"*nat\n-I {chain} -s {CLIENT}/32 -j RETURN\nCOMMIT\n"),
             *(p.read_text() for p in sorted(SAMPLES.glob("*.txt")))]
    ports = [sp for text in texts for sp in read_layout(load(text, lenient=True)).service_ports]
    assert len(ports) > 60
    plain = [_without_lines(sp) for sp in ports]
    values = [_port_values(sp) for sp in ports]
    for i in range(len(ports)):
        for j in range(len(ports)):
            assert (values[i] == values[j]) == (plain[i] == plain[j]), (ports[i], ports[j])
    assert len(set(values)) == len(set(plain)) < len(ports)  # (the fleet nodes share ports, at other lines)


def test_a_line_at_the_footprints_first_position_is_kept_with_the_view() -> None:
    """The cache keeps a view's traced lines as positions in its footprint (0: no line): the footprint's first
    line, too, comes back as that line, not as "no line"."""
    from iptrace.kube.reuse import _at, _positional, _relined

    ruleset = load((SAMPLES / "nodeport-fb-backends.txt").read_text())
    a = analyse(DATAPLANE, ruleset, "ipv4", node_ips=["192.168.49.2"])
    checked = 0
    for key in a.layout.keys:
        view, sp = a.port_view(key), a.layout.service_port(key)
        traced = [ep.line for ep in view.endpoints if ep.line]
        traced += [p.decided_by for e in view.entries for p in e.paths if p.decided_by]
        for first in dict.fromkeys(traced):
            lines = [first, *(n for n in traced if n != first), 999_999]
            stored = _positional(view, sp, lines)
            assert stored is not None
            assert _relined(stored, sp, _at(lines)) == view, key
            checked += 1
    assert checked >= 5
