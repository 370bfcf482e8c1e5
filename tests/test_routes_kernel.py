"""Rules that test the interface a packet leaves by (`-o cni0`, `oifname "cni0"`), answered with the node's routes
(iptrace.routes, `--routes`) and checked against the kernel: the oracle's `node` namespace routes its pods out of
an interface named cni0 (the pod-side veth) and the client's network out of eth0, and a route sends 198.19.5.0/24
out of eth0, so a Service address there is DNATed to a pod behind cni0: its route before DNAT is not its route
after. The routes are the namespace's own, read from its /proc/net/route and /proc/net/ipv6_route.

Without routes iptrace assumes every such rule does not match (and says so); for a packet to a pod that is wrong
(weave's `-o weave -j DROP`, flannel's `! -o cni0 -j MASQUERADE`, Docker's bridge used as the CNI bridge): these
tests show the kernel disagreeing with that answer and agreeing with the routed one.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from iptrace import dataplanes
from iptrace.cli import main
from iptrace.dataplane import Packet
from iptrace.routes import BLACKHOLE, parse_routes
from tests.oracle import CLIENT_IP, NODE_IP, Topology
from tests.oracle.nft import json_listing, list_ruleset, load_nft, requires_nft

pytestmark = [pytest.mark.root, requires_nft()]

POD = "198.18.128.10"
PORT = 8080
# Routed out of eth0 (towards the client) before DNAT; DNATed to POD, behind cni0.
SERVICE = "198.19.5.10"
SERVICE_ROUTE = "198.19.5.0/24 via 198.18.0.2 dev eth0"


def _routes(topo: Topology) -> str:
    return subprocess.run(["ip", "netns", "exec", topo.node, "cat", "/proc/net/route", "/proc/net/ipv6_route"],
                          capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    with Topology("nft") as t:
        t.add_pod_ip(POD)
        t._ip(t.node, f"route add {SERVICE_ROUTE}")
        t.start_server(tcp_ports=[PORT])
        yield t


IPTABLES = {
    # weave: forwarded traffic out of its bridge is dropped unless an earlier rule let it through
    "forward-drop": """*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -d 198.19.5.10/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 198.18.128.10:8080
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -o cni0 -j DROP
COMMIT
""",
    # flannel: what leaves by any interface but the pods' bridge is masqueraded
    "masquerade": """*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -s 198.18.0.0/24 ! -o cni0 -j MASQUERADE
COMMIT
""",
    # the node's own connections: filter OUTPUT sees the route taken before nat OUTPUT's DNAT (the hook's output
    # device is fixed when the hook starts), POSTROUTING the one after it
    "output": """*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A OUTPUT -d 198.19.5.10/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 198.18.128.10:8080
-A POSTROUTING -o cni0 -j MASQUERADE
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A OUTPUT -o cni0 -p tcp -m tcp --dport 8080 -j REJECT --reject-with icmp-port-unreachable
COMMIT
""",
}

NFT = {
    "forward-drop": """table ip routed {
  chain prenat { type nat hook prerouting priority -100; ip daddr 198.19.5.10 tcp dport 80 dnat to 198.18.128.10:8080; }
  chain forwarding { type filter hook forward priority 0; oifname "cni0" drop; }
}
""",
    "masquerade": """table ip routed {
  chain postnat { type nat hook postrouting priority 100; ip saddr 198.18.0.0/24 oifname != "cni0" masquerade; }
}
""",
    "output": """table ip routed {
  chain outnat { type nat hook output priority -100; ip daddr 198.19.5.10 tcp dport 80 dnat to 198.18.128.10:8080; }
  chain outfilter { type filter hook output priority 0; oifname "cni0" tcp dport 8080 reject; }
  chain postnat { type nat hook postrouting priority 100; oifname "cni0" masquerade; }
}
""",
}


def _load(topo: Topology, mode: str, name: str) -> Any:
    """The rules loaded into the kernel, and iptrace's ruleset of them as the kernel lists them."""
    subprocess.run(["ip", "netns", "exec", topo.node, "nft", "flush", "ruleset"], check=True)
    if mode == "iptables":
        topo.load(IPTABLES[name])
        return dataplanes.load(topo.save(), source="iptables-save")
    load_nft(topo, NFT[name])
    return dataplanes.load(list_ruleset(topo), source="nft list ruleset")


def _tracers(topo: Topology, loaded: Any) -> tuple[Any, Any]:
    """iptrace's tracers of the loaded rules: without routes (today's answer), and with the namespace's."""
    dataplane, ruleset = loaded
    routes = parse_routes(_routes(topo), source="routes")
    return (dataplane.tracer(ruleset, node_ips=topo.node_ips),
            dataplane.tracer(ruleset, node_ips=topo.node_ips, routes=routes))


MODES = ("iptables", "nftables")


def test_the_namespace_routes_read_back(topo: Topology) -> None:
    routes = parse_routes(_routes(topo), source="routes")
    assert routes.v4 is not None
    device = routes.v4.device
    from ipaddress import ip_address

    assert device(int(ip_address(POD))) == "cni0"
    assert device(int(ip_address(CLIENT_IP))) == "eth0"
    assert device(int(ip_address(SERVICE))) == "eth0"
    assert device(int(ip_address("198.19.0.10"))) == "cni0"  # (the oracle's own service sink)
    assert device(int(ip_address("10.1.2.3"))) is None  # (no default route in the namespace)


@pytest.mark.parametrize("mode", MODES)
def test_a_forwarded_packet_to_a_pod_meets_the_rule_on_its_route_after_dnat(topo: Topology, mode: str) -> None:
    unrouted, routed = _tracers(topo, _load(topo, mode, "forward-drop"))
    targets = ((POD, PORT), (SERVICE, 80))
    kernel = topo.probe_each(("client", dst, port) for dst, port in targets)
    for (dst, port), result in zip(targets, kernel, strict=True):
        assert result.outcome == "timeout", dst  # the kernel: dropped out of cni0
        packet = Packet(CLIENT_IP, dst, port, in_interface="eth0")
        before = unrouted.trace(packet)
        assert [o.verdict for o in before.outcomes] == ["DNAT" if dst == SERVICE else "ACCEPT"], before
        assert any(("output interface" in a and "not known" in a) or "output interface unknown" in a
                   for a in before.assumptions), before.assumptions
        after = routed.trace(packet)
        assert [o.verdict for o in after.outcomes] == ["DROP"], after
        assert any("output interface cni0, by the node's routes" in a for a in after.assumptions), after.assumptions
        if mode == "nftables":  # (the kernel's JSON listing of the same rules, `nft -j list ruleset`)
            listed = json_listing(topo)
            tracer = dataplanes.by_name("nftables").tracer(listed, node_ips=topo.node_ips,
                                                            routes=parse_routes(_routes(topo)))
            assert [o.verdict for o in tracer.trace(packet).outcomes] == ["DROP"]


@pytest.mark.parametrize("mode", MODES)
def test_a_forwarded_packet_to_a_pod_is_not_masqueraded_out_of_its_bridge(topo: Topology, mode: str) -> None:
    unrouted, routed = _tracers(topo, _load(topo, mode, "masquerade"))
    result = topo.probe("client", POD, PORT)
    assert result.outcome == "connected" and result.seen_source == CLIENT_IP, result  # the kernel: no masquerade
    packet = Packet(CLIENT_IP, POD, PORT, in_interface="eth0")
    assert [o.masquerade for o in unrouted.trace(packet).outcomes] == [True]
    assert [o.masquerade for o in routed.trace(packet).outcomes] == [False]


@pytest.mark.parametrize("mode", MODES)
def test_the_node_own_connection_meets_output_on_the_first_route_and_postrouting_on_the_second(
        topo: Topology, mode: str) -> None:
    unrouted, routed = _tracers(topo, _load(topo, mode, "output"))
    # Straight to the pod: out of cni0 from the start, rejected in filter OUTPUT.
    assert topo.probe("node", POD, PORT).outcome == "refused"
    packet = Packet(NODE_IP, POD, PORT)
    assert [o.verdict for o in unrouted.trace(packet).outcomes] == ["ACCEPT"]
    assert [o.verdict for o in routed.trace(packet).outcomes] == ["REJECT"]
    # Through the Service address routed out of eth0: filter OUTPUT still sees eth0 (not rejected); postrouting,
    # after the reroute to the pod, cni0 (masqueraded to the node's cni0 address).
    result = topo.probe("node", SERVICE, 80)
    assert result.outcome == "connected" and result.seen_source == "198.18.128.1", result
    traced = routed.trace(Packet(NODE_IP, SERVICE, 80))
    assert [(o.verdict, o.destination, o.masquerade) for o in traced.outcomes] == [
        ("DNAT", f"{POD}:{PORT}", True)], traced
    assert [(o.verdict, o.masquerade) for o in unrouted.trace(Packet(NODE_IP, SERVICE, 80)).outcomes] == [
        ("DNAT", False)]


def test_an_output_interface_in_a_key_is_answered_by_the_routes_and_said(topo: Topology) -> None:
    """nftables: `oifname` in a concatenation matched against an anonymous set and a named set of concatenations
    is answered by the node's routes as a plain `oifname` test is, and the trace says so (it said nothing, though
    the verdict rested on the route)."""
    subprocess.run(["ip", "netns", "exec", topo.node, "nft", "flush", "ruleset"], check=True)
    load_nft(topo, """table ip routed {
  set pods { type ipv4_addr . ifname; elements = { 198.18.128.10 . "cni0" } }
  chain forwarding { type filter hook forward priority 0; iifname . oifname { "eth0" . "cni0" } jump topods; }
  chain topods { ip daddr . oifname @pods drop; }
}
""")
    _, routed = _tracers(topo, dataplanes.load(list_ruleset(topo), source="nft list ruleset"))
    assert topo.probe("client", POD, PORT).outcome == "timeout"  # the kernel: dropped out of cni0
    traced = routed.trace(Packet(CLIENT_IP, POD, PORT, in_interface="eth0"))
    assert [o.verdict for o in traced.outcomes] == ["DROP"], traced
    notes = [a for a in traced.assumptions if "output interface cni0, by the node's routes" in a]
    assert len({n.split(":")[0] for n in notes}) == 2, traced.assumptions  # (the anonymous set's rule, the set's)



def test_a_verdict_map_keyed_on_the_output_interface_says_what_answered_it(topo: Topology) -> None:
    """nftables: `oifname vmap { … }` and a verdict map keyed on `ip daddr . oifname`, as the kernel lists them:
    answered by the node's routes, each says so as a plain `oifname` test does (they said nothing, though the
    verdict rested on the route), each naming its own line (two rules of one table with the same map must not share
    one compiled look-up whose note names the first rule's line); without routes, each says what it assumed."""
    subprocess.run(["ip", "netns", "exec", topo.node, "nft", "flush", "ruleset"], check=True)
    maps = ('oifname vmap { "eth0" : accept }', 'oifname vmap { "eth0" : accept, "cni0" : jump topods }',
            'ip daddr . oifname vmap { 198.18.128.10 . "cni0" : drop }')
    load_nft(topo, f"""table ip routed {{
  chain forwarding {{ type filter hook forward priority 0; {maps[0]}; {maps[1]}; }}
  chain topods {{ {maps[0]}; {maps[2]}; }}
}}
""")
    listing = list_ruleset(topo)
    unrouted, routed = _tracers(topo, dataplanes.load(listing, source="nft list ruleset"))
    lines = [number for number, text in enumerate(listing.splitlines(), 1) if text.strip() in maps]
    assert len(lines) == 4, listing
    assert topo.probe("client", POD, PORT).outcome == "timeout"  # the kernel: dropped out of cni0
    traced = routed.trace(Packet(CLIENT_IP, POD, PORT, in_interface="eth0"))
    assert [o.verdict for o in traced.outcomes] == ["DROP"], traced
    notes = [a.split(":")[0] for a in traced.assumptions if "output interface cni0, by the node's routes" in a]
    assert notes == [f"line {n}" for n in lines], traced.assumptions
    # Without routes each look-up met is assumed to find nothing (the interface is not known), and says so.
    traced = unrouted.trace(Packet(CLIENT_IP, POD, PORT, in_interface="eth0"))
    assert [o.verdict for o in traced.outcomes] == ["ACCEPT"], traced
    unknown = [a.split(":")[0] for a in traced.assumptions if "the output interface is not known" in a]
    assert unknown == [f"line {n}" for n in lines[:2]], traced.assumptions


UNROUTED = "198.18.64.10"  # (in no route of the node's: between its eth0 /24 and its cni0 /17)
NO_ROUTE_IPTABLES = """*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -d 198.19.5.10/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 198.18.64.10:8080
-A PREROUTING -d 198.19.5.12/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 198.18.64.40:8080
-A PREROUTING -d 198.19.5.13/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 198.18.64.50:8080
-A OUTPUT -d 198.19.5.11/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 198.18.128.10:8080
-A OUTPUT -d 198.18.128.10/32 -p tcp -m tcp --dport 81 -j DNAT --to-destination 198.18.64.10:8080
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -d 198.18.64.0/24 -j DROP
-A OUTPUT -d 198.18.64.10/32 -j REJECT --reject-with icmp-port-unreachable
COMMIT
"""
NO_ROUTE_NFT = """table ip routed {
  chain prenat { type nat hook prerouting priority -100; ip daddr 198.19.5.10 tcp dport 80 dnat to 198.18.64.10:8080; ip daddr 198.19.5.12 tcp dport 80 dnat to 198.18.64.40:8080; ip daddr 198.19.5.13 tcp dport 80 dnat to 198.18.64.50:8080; }
  chain outnat { type nat hook output priority -100; ip daddr 198.19.5.11 tcp dport 80 dnat to 198.18.128.10:8080; ip daddr 198.18.128.10 tcp dport 81 dnat to 198.18.64.10:8080; }
  chain forwarding { type filter hook forward priority 0; ip daddr 198.18.64.0/24 drop; }
  chain outfilter { type filter hook output priority 0; ip daddr 198.18.64.10 reject; }
}
"""


@pytest.mark.parametrize(("backend", "mode"), [("nft", "iptables"), ("legacy", "iptables"), ("nft", "nftables")])
def test_a_destination_without_a_route_is_not_sent_on_as_the_kernel_does(backend: Any, mode: str,
                                                                          tmp_path: Path) -> None:
    """A node without a default route (nor one for its Service range): the kernel sends a packet for a destination
    its routes do not hold nowhere, whatever the rules after the routing decision say. Forwarded (after
    PREROUTING's DNAT): ICMP network unreachable, FORWARD never sees it; the node's own: connect() fails before
    OUTPUT (the classic ClusterIP from a node without a default route, though its endpoint is routed); DNATed by
    nat OUTPUT to such a destination: dropped where the nat hook routes it again, filter OUTPUT never sees it."""
    if backend == "legacy" and shutil.which("iptables-legacy-restore") is None:
        pytest.skip("iptables-legacy is not installed")
    with Topology(backend) as topo:
        topo.add_pod_ip(POD)
        topo.start_server(tcp_ports=[PORT])
        topo._ip(topo.node, "route del 198.19.0.0/16")
        topo._ip(topo.node, "route add blackhole 198.18.64.40/32")
        topo._ip(topo.node, "route add unreachable 198.18.64.50/32")
        if mode == "iptables":
            topo.load(NO_ROUTE_IPTABLES)
            dataplane, ruleset = dataplanes.load(topo.save(), source="iptables-save")
        else:
            load_nft(topo, NO_ROUTE_NFT)
            dataplane, ruleset = dataplanes.load(list_ruleset(topo), source="nft list ruleset")
        routes = parse_routes(_routes(topo), source="routes")
        assert routes.v4 is not None and not routes.v4.routes_all
        tracer = dataplane.tracer(ruleset, node_ips=topo.node_ips, routes=routes)
        cases = (
            ("client", "198.19.5.10", 80, "unreachable", "REJECT", (f"no way out for {UNROUTED} (no route",
                                                                     "answers ICMP destination unreachable")),
            # an IPv4 blackhole route: dropped silently; an unreachable one: answered
            ("client", "198.19.5.12", 80, "timeout", "DROP", ("send 198.18.64.40 to a blackhole",
                                                              "drops it silently")),
            ("client", "198.19.5.13", 80, "unreachable", "REJECT", ("no way out for 198.18.64.50",)),
            ("node", "198.19.5.11", 80, "unreachable", "REJECT", ("no way out for 198.19.5.11",
                                                                  "the kernel does not send it")),
            ("node", POD, 81, "timeout", "DROP", (f"no way out for {UNROUTED} (no route, or an unreachable or "
                                                  "prohibit route), where output's DNAT sends it",)),
            ("node", POD, PORT, "connected", "ACCEPT", ()))
        probed = topo.probe_each((src, dst, port) for src, dst, port, *_ in cases)
        for (src, dst, port, kernel, verdict, said), result in zip(cases, probed, strict=True):
            assert result.outcome == kernel, (src, dst, port)
            packet = Packet(CLIENT_IP if src == "client" else NODE_IP, dst, port,
                            in_interface="eth0" if src == "client" else None)
            [outcome] = tracer.trace(packet).outcomes
            assert outcome.verdict == verdict, (src, dst, port, outcome, outcome.assumptions)
            if said:
                assert outcome.decided_by is None and any(all(part in a for part in said)
                                                          for a in outcome.assumptions), outcome.assumptions
        # What trace and explain print of it, from the files (the node's routes as its /proc lists them).
        dump, routes_file = tmp_path / "rules.txt", tmp_path / "routes.txt"
        dump.write_text(topo.save() if mode == "iptables" else list_ruleset(topo))
        routes_file.write_text(_routes(topo))
        base = [str(dump), "--dst", "198.19.5.11:80", "--src", NODE_IP, "--node-ip", NODE_IP, "--routes",
                str(routes_file)]
        traced = CliRunner().invoke(main, ["trace", *base])
        assert traced.exit_code == 0 and "REJECT   (by the node's routes: no way out for its destination)" in \
            traced.output, traced.output
        explained = CliRunner().invoke(main, ["explain", *base])
        assert "198.19.5.11:80/tcp is not sent: the node's routes have no way out for where it goes" in \
            explained.output, explained.output
        assert explained.exit_code == 3 and "198.19.5.11: the kernel sends the packet nowhere   [no-route, error]" \
            in explained.output, explained.output


@pytest.mark.parametrize("mode", MODES)
def test_trace_takes_the_routes_file(topo: Topology, mode: str, tmp_path: Path) -> None:
    _load(topo, mode, "forward-drop")
    dump = tmp_path / "rules.txt"
    dump.write_text(topo.save() if mode == "iptables" else list_ruleset(topo))
    routes = tmp_path / "routes.txt"
    routes.write_text(_routes(topo))
    base = ["trace", str(dump), "--dst", f"{POD}:{PORT}", "--src", CLIENT_IP, "--node-ip", NODE_IP,
            "--in-interface", "eth0"]
    without = CliRunner().invoke(main, base)
    assert without.exit_code == 0 and "ACCEPT" in without.output, without.output
    routed = CliRunner().invoke(main, [*base, "--routes", str(routes)])
    assert routed.exit_code == 0, routed.output
    assert "DROP" in routed.output and "output interface cni0, by the node's routes" in routed.output, routed.output


POD6 = "fd00:198:18:8000::10"
CLIENT6 = "fd00:198:18::2"


def test_ipv6_routes_answer_ip6tables_as_the_kernel_does() -> None:
    """/proc/net/ipv6_route (every table, one line a route) read back: the node namespace's pods behind cni0, its
    clients on eth0; ip6tables' `-o cni0 -j DROP` drops what the kernel forwards to a pod."""
    with Topology("nft", ipv6=True) as topo:
        topo.add_pod_ip(POD6)
        topo.start_server(tcp_ports=[PORT])
        routes = parse_routes(_routes(topo), source="routes")
        assert routes.v6 is not None
        from ipaddress import ip_address

        assert [routes.v6.device(int(ip_address(ip))) for ip in (POD6, CLIENT6, "fd00:198:19::10", "2001:db8::1")] \
            == ["cni0", "eth0", "cni0", None]
        assert topo.probe("client", POD6, PORT).outcome == "connected"
        topo.load("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                  "-A FORWARD -o cni0 -j DROP\nCOMMIT\n", ipv6=True)
        assert topo.probe("client", POD6, PORT).outcome == "timeout"
        dataplane, ruleset = dataplanes.load(topo.save(ipv6=True), source="ip6tables-save")
        packet = Packet(CLIENT6, POD6, PORT, in_interface="eth0")
        assert [o.verdict for o in dataplane.tracer(ruleset, node_ips=topo.node_ips).trace(packet).outcomes] == [
            "ACCEPT"]
        routed = dataplane.tracer(ruleset, node_ips=topo.node_ips, routes=routes)
        assert [o.verdict for o in routed.trace(packet).outcomes] == ["DROP"]
        # An address no route holds (the namespace has no default route): forwarded, ICMPv6 no route; the node's
        # own, connect() fails.
        for src, source in (("client", CLIENT6), ("node", "fd00:198:18::1")):
            assert topo.probe(src, "fd00:198:18:4000::10", PORT).outcome == "unreachable", src
            traced = routed.trace(Packet(source, "fd00:198:18:4000::10", PORT,
                                         in_interface="eth0" if src == "client" else None))
            assert [o.verdict for o in traced.outcomes] == ["REJECT"], traced
            assert any("no way out for fd00:198:18:4000::10" in a for a in traced.assumptions), traced.assumptions


def test_the_route_lookup_is_the_kernels() -> None:
    """Longest prefix, then the lowest metric (a reject route that wins by metric is no way out), an IPv4 blackhole
    told from the rest: RouteTable.device against `ip route get` in the namespace whose /proc was read."""
    with Topology("nft") as topo:
        for route in ("198.18.64.0/24 dev eth0 metric 200", "198.18.64.0/24 dev cni0 metric 100",
                      "unreachable 198.18.65.0/24 metric 10", "198.18.65.0/24 dev cni0 metric 100",
                      "198.18.66.0/23 dev eth0", "198.18.66.128/25 dev cni0", "blackhole 198.18.68.0/24",
                      "prohibit 198.18.69.0/24"):
            topo._ip(topo.node, f"route add {route}")
        table = parse_routes(_routes(topo), source="routes").v4
        assert table is not None
        from ipaddress import ip_address

        for address in ("198.18.64.1", "198.18.65.1", "198.18.66.200", "198.18.67.1", "198.18.68.1", "198.18.69.1",
                        "198.18.70.1", POD, CLIENT_IP):
            got = subprocess.run(["ip", "netns", "exec", topo.node, "ip", "route", "get", address],
                                 capture_output=True, text=True)
            words = got.stdout.split()  # (a blackhole: "Invalid argument"; unreachable, prohibit, none: errors too)
            kernel = (words[words.index("dev") + 1] if "dev" in words
                      else BLACKHOLE if "Invalid argument" in got.stderr else None)
            assert table.device(int(ip_address(address))) == kernel, (address, got.stdout, got.stderr)


def test_a_throw_route_reads_as_a_blackhole_and_the_kernel_answers_it_as_no_route() -> None:
    """`ip route add throw` in the main table: /proc/net/route lists it exactly as a blackhole (`*`, flags 0001) and
    /proc/net/ipv6_route as an unreachable route (lo, reject flag, and no up flag: one that was read as no route at
    all, so the wider route around it answered). The kernel sends a packet through it nowhere, as with no route:
    forwarded, ICMP network unreachable (a blackhole's it drops silently); the node's own connect() fails. iptrace
    names the throw route beside the blackhole it cannot tell it from, and rejects what an IPv6 one holds."""
    with Topology("nft", ipv6=True) as topo:
        topo.add_pod_ip(POD)
        topo.start_server(tcp_ports=[PORT])
        # (inside the Service range, which the node routes to its sink: a wider route than these)
        topo._ip(topo.node, "route add throw 198.19.7.0/24")
        topo._ip(topo.node, "route add blackhole 198.19.10.0/24")
        topo._ip(topo.node, "route add throw fd00:198:19::20/128")
        listed = _routes(topo)
        lines = {line.split("\t")[1]: line.split("\t")[0] + "\t" + "\t".join(line.split("\t")[2:]).rstrip()
                 for line in listed.splitlines() if line.startswith("*\t")}
        assert lines["000713C6"] == lines["000A13C6"] and "\t0001\t" in lines["000713C6"], listed
        [six] = [line for line in listed.splitlines() if line.startswith("fd000198001900000000000000000020")]
        assert six.split()[8] == "00200200" and six.split()[9] == "lo", six
        expected = (("client", "198.19.7.1", "unreachable"), ("client", "198.19.10.1", "timeout"),
                    ("client", "fd00:198:19::20", "unreachable"), ("node", "198.19.7.1", "unreachable"),
                    ("client", "fd00:198:19::21", "timeout"))
        probed = topo.probe_each((src, dst, 80) for src, dst, _ in expected)
        for (src, dst, kernel), result in zip(expected, probed, strict=True):
            assert result.outcome == kernel, (src, dst)
        routes = parse_routes(listed, source="routes")
        for ipv6 in (False, True):
            topo.load("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n", ipv6=ipv6)
        for dst, verdict, said in (
                ("198.19.7.1", "DROP", ("to a blackhole or a throw route", "through a throw route it answers "
                                        "ICMP destination unreachable, as with no route")),
                ("fd00:198:19::20", "REJECT", ("no way out for fd00:198:19::20 (no route, or an unreachable, "
                                               "prohibit or throw route)",)),
                ("fd00:198:19::21", "ACCEPT", ())):
            version = 6 if ":" in dst else 4
            dataplane, ruleset = dataplanes.load(topo.save(ipv6=version == 6), source="iptables-save")
            tracer = dataplane.tracer(ruleset, node_ips=topo.node_ips, routes=routes)
            [outcome] = tracer.trace(Packet(CLIENT6 if version == 6 else CLIENT_IP, dst, 80,
                                            in_interface="eth0")).outcomes
            assert outcome.verdict == verdict, (dst, outcome)
            assert not said or any(all(part in a for part in said) for a in outcome.assumptions), outcome.assumptions
