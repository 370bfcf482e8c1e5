"""The node's routes file (iptrace.routes: `cat /proc/net/route /proc/net/ipv6_route`): read exactly, errors named
file:line:column, --lenient reads past a bad line; `--routes` (and a node directory's routes.txt) answers the rules
that test the output interface, and says so. The kernel's own listings are checked in test_routes_kernel.py."""

from __future__ import annotations

import json
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from iptrace import dataplanes
from iptrace.cli import main
from iptrace.collect.commands import Batch, StepOutput
from iptrace.collect.gather import Gathered, Runner, gather
from iptrace.dataplane import Packet
from iptrace.errors import ParseError
from iptrace.routes import parse_routes

SAMPLES = Path(__file__).resolve().parent.parent / "sample_dumps"
HEADER = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT"


def v4(iface: str, dest: str, mask: str, flags: str = "0001", metric: int = 0, gateway: str = "00000000") -> str:
    return f"{iface}\t{dest}\t{gateway}\t{flags}\t0\t0\t{metric}\t{mask}\t0\t0\t0" + " " * 40


# A flannel node on a little-endian machine: its pods behind cni0, other nodes' through flannel.1, a default
# route through eth0 (metric 100) and a worse one through eth1, and an unreachable route.
NODE = "\n".join([
    HEADER,
    v4("eth0", "00000000", "00000000", "0003", 100, "0100A8C0"),
    v4("eth1", "00000000", "00000000", "0003", 200, "0101A8C0"),
    v4("cni0", "0000F40A", "00FFFFFF"),
    v4("flannel.1", "0001F40A", "00FFFFFF", "0003"),
    v4("*", "0002F40A", "00FFFFFF", "0201"),
    v4("eth0", "0500F40A", "FFFFFFFF", "0005"),
    "fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 "
    "00000100 00000001 00000000 00000001     eth0",
    "fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 "
    "00000400 00000001 00000000 00000001     eth1",
    "fd00000000000000000000000000aa00 78 00000000000000000000000000000000 00 00000000000000000000000000000000 "
    "00000100 00000001 00000000 00000001     cni0",
    # source-specific: not modeled, left out
    "fd00000000000000000000000000bb00 78 fd000000000000000000000000000000 40 00000000000000000000000000000000 "
    "00000100 00000001 00000000 00000001     bad0",
    "00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 "
    "ffffffff 00000001 00000000 00200200       lo",
]) + "\n"


def device(text: str, ip: str) -> str | None:
    routes = parse_routes(text, source="routes.txt")
    address = ip_address(ip)
    table = routes.table(address.version)
    assert table is not None
    return table.device(int(address))


@pytest.mark.parametrize(("ip", "iface"), [
    ("10.244.0.7", "cni0"), ("10.244.1.7", "flannel.1"), ("10.244.2.7", None), ("8.8.8.8", "eth0"),
    ("10.244.0.5", "eth0"), ("fd00::1", "eth0"), ("fd00::aa01", "cni0"), ("fd00::bb01", "eth0"), ("2001:db8::1", None),
])
def test_longest_prefix_then_lowest_metric(ip: str, iface: str | None) -> None:
    assert device(NODE, ip) == iface


def test_a_big_endian_machine_writes_its_masks_the_other_way() -> None:
    text = "\n".join([HEADER, v4("cni0", "0AF40000", "FFFFFF00"), v4("eth0", "00000000", "00000000", "0003")])
    assert device(text, "10.244.0.9") == "cni0" and device(text, "10.9.0.1") == "eth0"


def test_a_family_the_file_does_not_list_is_unknown_not_unrouted() -> None:
    only_v4 = parse_routes(HEADER + "\n" + v4("eth0", "00000000", "00000000") + "\n")
    assert only_v4.v4 is not None and only_v4.v6 is None
    assert parse_routes("").v4 is None


@pytest.mark.parametrize(("line", "column", "reason"), [
    (v4("eth0", "0000F40Z", "00FFFFFF"), 6, "destination '0000F40Z' is not 8 hexadecimal digits"),
    (v4("eth0", "0000F40A", "00FF00FF"), 35, "mask '00FF00FF' is not a network mask"),
    (v4("eth0", "0000F40A", "00FFFFFF", metric="x"), 33, "metric 'x' is not a number"),
    ("default via 192.168.0.1 dev eth0", 1, "not a route of /proc/net/route"),
])
def test_errors_name_file_line_and_column(line: str, column: int, reason: str) -> None:
    with pytest.raises(ParseError) as caught:
        parse_routes(f"{HEADER}\n{line}\n", source="routes.txt")
    assert (caught.value.line, caught.value.column) == (2, column), caught.value
    assert str(caught.value).startswith(f"routes.txt:2:{column}: {reason}")


def test_a_v4_route_before_the_header_is_an_error() -> None:
    with pytest.raises(ParseError, match=r"routes\.txt:1:1: not a route"):
        parse_routes(v4("eth0", "00000000", "00000000") + "\n", source="routes.txt")


def test_lenient_reads_past_bad_lines() -> None:
    text = "\n".join([HEADER, v4("cni0", "0000F40A", "00FFFFFF"), "garbage", v4("eth0", "0000F40A", "00FF00FF")])
    routes = parse_routes(text, source="r", lenient=True)
    assert [s.line for s in routes.skipped] == [3, 4]
    assert routes.v4 is not None and routes.v4.device(int(ip_address("10.244.0.1"))) == "cni0"


DOCKER_ROUTES = "\n".join([HEADER, v4("eth0", "00000000", "00000000", "0003"), v4("docker0", "000011AC", "0000FFFF")])


def test_trace_answers_docker_s_output_interface_rules_with_the_routes(tmp_path: Path) -> None:
    routes = tmp_path / "routes.txt"
    routes.write_text(DOCKER_ROUTES)
    base = ["trace", str(SAMPLES / "no-kube-proxy.txt"), "--dst", "172.17.0.3:5432", "--src", "10.0.0.5", "-o",
            "json"]
    without = json.loads(CliRunner().invoke(main, base).output)
    routed = json.loads(CliRunner().invoke(main, [*base, "--routes", str(routes)]).output)
    assert [o["verdict"] for o in routed["outcomes"]] == ["ACCEPT"]
    # (line 24: `-d 172.17.0.3/32 ! -i docker0 -o docker0 … --dport 5432 -j ACCEPT`, now reached)
    assert [s["line"] for s in routed["outcomes"][0]["path"]][-1] == 24, routed
    assert [s["line"] for s in without["outcomes"][0]["path"]] != [s["line"] for s in routed["outcomes"][0]["path"]]
    assert any("output interface docker0, by the node's routes" in a for a in routed["assumptions"]), routed
    assert not any("output interface docker0, by the node" in a for a in without["assumptions"]), without


def test_the_sample_docker_host_s_published_port_is_reached_with_its_routes() -> None:
    """The README's example: sample_dumps/routes/no-kube-proxy.txt is the kernel's listing of that host."""
    base = ["trace", str(SAMPLES / "no-kube-proxy.txt"), "--dst", "172.17.0.3:5432", "--src", "192.168.1.7", "-o",
            "json"]
    routes = str(SAMPLES / "routes" / "no-kube-proxy.txt")
    for given, verdict in (([], "DROP"), (["--routes", routes], "ACCEPT")):
        done = CliRunner().invoke(main, [*base, *given])
        assert [o["verdict"] for o in json.loads(done.output)["outcomes"]] == [verdict], done.output


def test_a_collected_node_directory_s_routes_are_read_and_a_bad_file_is_named(tmp_path: Path) -> None:
    node = tmp_path / "node1"
    node.mkdir()
    (node / "iptables-save.txt").write_text((SAMPLES / "no-kube-proxy.txt").read_text())
    args = ["trace", str(node), "--dst", "172.17.0.3:5432", "--src", "10.0.0.5"]
    assert "by the node's routes" not in CliRunner().invoke(main, args).output
    (node / "routes.txt").write_text(DOCKER_ROUTES)
    assert "output interface docker0, by the node's routes" in CliRunner().invoke(main, args).output
    (node / "routes.txt").write_text(DOCKER_ROUTES + "\nnonsense\n")
    failed = CliRunner().invoke(main, args)
    assert failed.exit_code != 0 and f"{node / 'routes.txt'}:4:1: not a route" in failed.output, failed.output
    lenient = CliRunner().invoke(main, [*args, "--lenient"])
    assert lenient.exit_code == 0, lenient.output
    assert "read with --lenient past 1 line that is no route (the first, line 4" in lenient.output


def test_help_says_routes() -> None:
    for command in ("trace", "explain", "services"):
        said = CliRunner().invoke(main, [command, "--help"]).output
        assert "--routes FILE" in said and "/proc/net/route" in said, command


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_the_memos_replay_routed_walks_as_walked(mode: str) -> None:
    """With routes, the walks after DNAT replayed from the memos (keyed by the output interface) give the traces
    a walk without sharing gives, for endpoints behind different interfaces."""
    from bench.synth import EndpointSpec, PortSpec, ServiceSpec, render
    from bench.synth_nft import render_nft
    from iptrace.iptables.walk import PLAN_STAGES_AFTER

    services = [ServiceSpec("ns", f"s{i}", f"10.96.0.{i}", [PortSpec("p", 80, target_port=8080)],
                            endpoints=[EndpointSpec(f"10.244.{i % 3}.{i}", 8080)]) for i in range(1, 60)]
    assert len(services) > PLAN_STAGES_AFTER
    if mode == "iptables":
        text = render(services, node_ips=["192.168.0.10"], pod_cidr="10.244.0.0/16")
        text = text.replace("COMMIT", "-A POSTROUTING -s 10.244.0.0/16 ! -o cni0 -j MASQUERADE\nCOMMIT", 1)
        text = text.replace(":FORWARD ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]\n-A FORWARD -o flannel.1 -j DROP", 1)
    else:
        text = render_nft(services, node_ips=["192.168.0.10"], pod_cidr="10.244.0.0/16") + """
table ip routed {
  chain forwarding { type filter hook forward priority 0; oifname "flannel.1" drop; }
  chain postnat { type nat hook postrouting priority 100; ip saddr 10.244.0.0/16 oifname != "cni0" masquerade; }
}
"""
    dataplane, ruleset = dataplanes.load(text)
    routes = parse_routes(NODE)
    tracer = type(dataplane.tracer(ruleset))
    shared = tracer(ruleset, node_ips=["192.168.0.10"], routes=routes)
    walked = tracer(ruleset, node_ips=["192.168.0.10"], routes=routes, share=False)
    seen = set()
    for spec in services * 2:
        for src in ("10.244.0.3", "192.168.5.5"):
            packet = Packet(src, spec.cluster_ip, 80, in_interface="eth0")
            a, b = shared.trace(packet), walked.trace(packet)
            assert [(o.verdict, o.destination, o.masquerade, o.assumptions) for o in a.outcomes] == [
                (o.verdict, o.destination, o.masquerade, o.assumptions) for o in b.outcomes], packet
            seen.update((o.verdict, o.masquerade) for o in a.outcomes)
    assert {("DROP", False), ("DNAT", True)} <= seen, seen


def _gathered(routes: StepOutput) -> Gathered:
    save = StepOutput("iptables-save", 0, (SAMPLES / "no-kube-proxy.txt").read_bytes(), "")
    return gather(Batch({"iptables-save": save, "routes": routes}, "plain"), "n1", Runner("ssh"))


def test_collect_keeps_the_routes_and_a_failure_to_read_them_loses_nothing_else() -> None:
    listed = NODE.encode()
    kept = _gathered(StepOutput("routes", 0, listed, ""))
    assert kept.dumps["routes.txt"] == listed and kept.meta["routes"] == {"status": "ok", "error": None}
    assert "routes.txt" in kept.meta["files"] and kept.warnings == []
    # A node without IPv6 has no /proc/net/ipv6_route: `cat` fails, its IPv4 routes are kept all the same.
    v4_only = (HEADER + "\n" + v4("eth0", "00000000", "00000000") + "\n").encode()
    no_six = _gathered(StepOutput("routes", 1, v4_only, "cat: /proc/net/ipv6_route: No such file or directory"))
    assert no_six.dumps["routes.txt"] == v4_only and no_six.warnings == []
    for step, said in ((StepOutput("routes", 1, b"", "cat: /proc/net/route: Permission denied"), "Permission denied"),
                       (StepOutput("routes", 0, b"hello\n", ""), "not routes as /proc lists them")):
        failed = _gathered(step)
        assert "routes.txt" not in failed.dumps and "iptables-save.txt" in failed.dumps
        assert failed.meta["routes"]["status"] == "failed" and said in failed.meta["routes"]["error"]
        [warning] = failed.warnings
        assert warning.startswith("cat /proc/net/route /proc/net/ipv6_route: ") and said in warning, warning


@pytest.mark.parametrize("dump", ["nodeport-fb-backends.txt", "nodeport-fb-backends-nft.nft",
                                  "nodeport-fb-backends-nft.json"])
def test_routes_change_nothing_where_no_rule_tests_the_output_interface(dump: str, tmp_path: Path) -> None:
    """kube-proxy's own rules never test the output interface: with routes that route every address (a default
    route) `services` says exactly what it says without them, and keeps its port shapes. Routes without a route for
    some endpoint do change it: the kernel sends a packet for it nowhere (test_routes_kernel.py)."""
    routes = tmp_path / "routes.txt"
    routes.write_text("\n".join([HEADER, v4("cni0", "0000F40A", "00FFFFFF"),
                                 v4("eth0", "00000000", "00000000", "0003", 100, "0100A8C0")]) + "\n")
    base = ["services", str(SAMPLES / dump), "-o", "json"]
    without, routed = (CliRunner().invoke(main, [*base, *given]) for given in ([], ["--routes", str(routes)]))
    assert routed.exit_code == 0 and routed.output == without.output
    dataplane, ruleset = dataplanes.load((SAMPLES / dump).read_text())
    assert dataplane.tracer(ruleset, routes=parse_routes(routes.read_text())).ctx.routes is None
    # Without the default route: the Services' endpoints outside 10.244.0.0/24 are not sent on.
    routes.write_text("\n".join([HEADER, v4("cni0", "0000F40A", "00FFFFFF")]) + "\n")
    unrouted = CliRunner().invoke(main, [*base, "--routes", str(routes)])
    assert unrouted.exit_code == 0 and unrouted.output != without.output and '"REJECT"' in unrouted.output
    assert "from outside the cluster: the node's routes have no way out for 10.244.1.7" in unrouted.output
    assert dataplane.tracer(ruleset, routes=parse_routes(routes.read_text())).ctx.routes is not None


def _le(net: str) -> tuple[str, str]:
    """A network's address and mask as /proc/net/route writes them (little-endian hex)."""
    network = ip_network(net)
    return (int(network.network_address).to_bytes(4, "little").hex().upper(),
            int(network.netmask).to_bytes(4, "little").hex().upper())


def _flannel_routes(i: int) -> str:
    """Node i of the bench fleet: its pods behind cni0, the other nodes' through flannel.1, a default via eth0."""
    from bench import fleet

    return "\n".join([HEADER, v4("eth0", "00000000", "00000000", "0003", 100, "0100A8C0"),
                      v4("flannel.1", *_le(fleet.CLUSTER_CIDR), "0001"), v4("cni0", *_le(fleet.pod_cidr(i)))]) + "\n"


def _fleet_with_routes(root: Path, nodes: int, routes: bool, extra: str = "") -> list[Any]:
    """A fleet whose nodes drop what they forward to the other nodes' pods (`-A FORWARD -o flannel.1 -j DROP`, as
    weave's rule reads), with each node's routes.txt when `routes`."""
    from tests.test_carried import _texts, _write

    texts = [t.replace("\n-A FORWARD ", "\n-A FORWARD -o flannel.1 -j DROP\n-A FORWARD ", 1) for t in _texts(nodes)]
    sources = _write(root, texts)
    if routes:
        for i, source in enumerate(sources):
            (Path(source.path) / "routes.txt").write_text(_flannel_routes(i) + extra)
    return sources


def test_audit_reads_a_node_directory_s_routes_and_carries_ports_across_nodes_only_where_they_route_alike(
        tmp_path: Path) -> None:
    """`audit` answers the output-interface rules with each node's routes.txt as `trace` does (here a rule that drops
    what a node forwards to the other nodes' pods: its ports differ from what they are without routes), and a worker that carries ports across nodes gives what one that traces every port gives."""
    from iptrace.collect.stream import Worker

    routed = _fleet_with_routes(tmp_path / "routed", 3, True)
    plain = _fleet_with_routes(tmp_path / "plain", 3, False)
    carrying, tracing = Worker(None, False, False, True), Worker(None, False, False, False)
    carried, traced = [carrying.run(s) for s in routed], [tracing.run(s) for s in routed]
    without = [tracing.run(s) for s in plain]
    assert carried == traced and carrying.carried is not None and carrying.carried.carried > 0
    assert all(r.error is None and not r.load_warnings for r in carried)
    for a, b in zip(carried, without, strict=True):
        assert {p.key for p in a.families[0].ports} == {p.key for p in b.families[0].ports}
        assert a.families[0].ports != b.families[0].ports  # (some port's ways read the routes)


def test_audit_names_a_routes_file_it_cannot_read_and_analyses_the_node_without_it(tmp_path: Path) -> None:
    from iptrace.collect.stream import Worker

    sources = _fleet_with_routes(tmp_path, 1, True, extra="nonsense\n")
    result = Worker(None, False, False, False).run(sources[0])
    assert result.error is None and result.families
    assert any("routes.txt:5:1: not a route" in w and "without the node's routes" in w
               for w in result.load_warnings), result.load_warnings


def test_a_port_is_carried_only_to_a_node_that_routes_its_addresses_alike(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Node 2 sends the other nodes' pods out of eth0, not flannel.1: the rule that drops what leaves by flannel.1
    spares them there, so no port whose endpoints are there is carried to it from node 1 (its keys say which
    interface each address leaves by); without that part of the key, some are, wrongly."""
    from iptrace.collect.stream import Worker
    from iptrace.iptables import carry

    sources = _fleet_with_routes(tmp_path, 3, True)
    (Path(sources[2].path) / "routes.txt").write_text(_flannel_routes(2).replace("flannel.1", "eth0"))

    def audits() -> tuple[list[Any], list[Any]]:
        carrying, tracing = Worker(None, False, False, True), Worker(None, False, False, False)
        return [carrying.run(s) for s in sources], [tracing.run(s) for s in sources]

    carried, traced = audits()
    assert carried == traced
    monkeypatch.setattr(carry.NodeKeys, "_devices", lambda self, addresses: ())
    carried, traced = audits()
    assert carried != traced


def test_a_family_the_routes_file_does_not_list_is_routed_as_without_routes() -> None:
    """A routes file of IPv4 only (no /proc/net/ipv6_route): the node's own IPv6 packet DNATed by output is traced
    on as without routes (not taken for one the node has no way out for), its IPv4 twin without a route is not."""
    ruleset_text = """table inet routed {
  chain outnat { type nat hook output priority -100; ip6 daddr fd00::10 tcp dport 80 dnat ip6 to [fd00::20]:8080; ip daddr 10.96.0.10 tcp dport 80 dnat ip to 10.244.0.20:8080; }
  chain postnat { type nat hook postrouting priority 100; oifname "cni0" masquerade; }
}
"""
    dataplane, ruleset = dataplanes.load(ruleset_text)
    routes = parse_routes("\n".join([HEADER, v4("cni0", "0000F40A", "00FFFFFF")]) + "\n")
    assert routes.v6 is None
    tracer = dataplane.tracer(ruleset, node_ips=["fd00::1", "10.0.0.1"], routes=routes)
    [six] = tracer.trace(Packet("fd00::1", "fd00::10", 80)).outcomes
    assert (six.verdict, six.destination) == ("DNAT", "[fd00::20]:8080"), six
    [four] = tracer.trace(Packet("10.0.0.1", "10.96.0.10", 80)).outcomes
    assert four.verdict == "REJECT" and four.decided_by is None, four


def test_routed_notes_of_a_concatenation_are_the_same_replayed_as_walked() -> None:
    """`iifname . oifname { … }` and `ip daddr . oifname @set` answered by the routes say so on exactly the branches
    that met them, whether the walks after the split are shared (replayed) or each walked (a note made while the
    shared walk's key was read would land on branches that never met the rule)."""
    from iptrace.nftables.walk import Tracer

    routes = parse_routes("\n".join([HEADER, v4("cni0", "0000F40A", "00FFFFFF"),
                                     v4("flannel.1", "0001F40A", "00FFFFFF", "0003")]) + "\n")
    _, ruleset = dataplanes.load("""table ip t {
 set s { type ipv4_addr . ifname; elements = { 10.244.0.5 . "cni0", 10.244.1.5 . "flannel.1" } }
 chain pre { type nat hook prerouting priority -100; ip daddr 10.96.0.1 tcp dport 80 dnat to numgen random mod 4 map { 0 : 10.244.0.5, 1 : 10.244.1.5, 2 : 10.244.2.5, 3 : 10.244.0.6 }; }
 chain f { type filter hook forward priority 0; iifname . oifname { "eth0" . "cni0" } jump c; iifname . oifname { "eth0" . "flannel.1" } accept; }
 chain c { ip daddr . oifname @s drop; }
 chain post { type nat hook postrouting priority 100; oifname != "cni0" masquerade; }
}
""")
    packet = Packet("192.168.1.5", "10.96.0.1", 80, in_interface="eth0")
    shared, walked = (Tracer(ruleset, node_ips=["10.0.0.1"], routes=routes, share=share) for share in (True, False))
    for _ in range(3):  # (the first walks and records, the next replay)
        got, want = ([(o.verdict, o.destination, o.masquerade, o.assumptions) for o in t.trace(packet).outcomes]
                     for t in (shared, walked))
        assert got == want
    assert [(verdict, len([a for a in notes if "by the node's routes" in a])) for verdict, _, _, notes in got] == [
        ("DROP", 2), ("DNAT", 2), ("REJECT", 0), ("DNAT", 3)]


def test_a_throw_route_is_named_beside_the_blackhole_it_reads_as() -> None:
    """/proc/net/route shows an IPv4 throw route as it shows a blackhole (device `*`, flags 0001: the kernel's
    fib_flag_trans sets the reject flag for unreachable and prohibit only), /proc/net/ipv6_route shows it as an
    unreachable one (lo, reject flag); the kernel answers a packet through a throw route in the main table as one
    without a route (ICMP network unreachable forwarded, connect() fails), a blackhole's forwarded packet it drops
    silently (test_routes_kernel.py). So the note of a `*` route names both and what the kernel does with each,
    and the IPv6 note names throw among the routes it cannot tell apart."""
    routes = parse_routes("\n".join([
        HEADER, v4("eth0", "00000000", "00000000", "0003", 100, "0100A8C0"), v4("*", "0007F40A", "00FFFFFF"),
        "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 "
        "00000400 00000001 00000000 00000003     eth0",
        # (the kernel lists a reject route without the up flag: read as none, the wider route around it answered)
        "20010db8000700000000000000000000 30 00000000000000000000000000000000 00 00000000000000000000000000000000 "
        "00000400 00000002 00000000 00200200       lo"]) + "\n")
    dataplane, ruleset = dataplanes.load("table inet filter {\n chain forward { type filter hook forward priority 0; "
                                         "policy accept; }\n}\n")
    for version, dst, verdict, said in (
            (4, "10.244.7.5", "DROP", ("send 10.244.7.5 to a blackhole or a throw route",
                                       "/proc/net/route shows them alike",
                                       "the kernel drops it silently if it is a blackhole",
                                       "through a throw route it answers ICMP destination unreachable, as with "
                                       "no route")),
            (6, "2001:db8:7::5", "REJECT", ("no way out for 2001:db8:7::5 (no route, or an unreachable, prohibit "
                                            "or throw route)",))):
        tracer = dataplane.tracer(ruleset, node_ips=["10.0.0.1" if version == 4 else "fd00::1"], routes=routes)
        [outcome] = tracer.trace(Packet("192.168.1.5" if version == 4 else "fd00::9", dst, 80,
                                        in_interface="eth0")).outcomes
        assert outcome.verdict == verdict and outcome.decided_by is None, outcome
        assert any(all(part in a for part in said) for a in outcome.assumptions), outcome.assumptions


def test_routed_notes_of_a_verdict_map_are_the_same_replayed_as_walked() -> None:
    """`oifname vmap { … }` answered by the routes says so on the branches that met it, whether the walks after
    a draw are shared (replayed) or each walked; the same map in two rules of a table names each rule's line."""
    from iptrace.nftables.walk import Tracer

    routes = parse_routes("\n".join([HEADER, v4("cni0", "0000F40A", "00FFFFFF"),
                                     v4("flannel.1", "0001F40A", "00FFFFFF", "0003")]) + "\n")
    _, ruleset = dataplanes.load("""table ip t {
 chain pre { type nat hook prerouting priority -100; ip daddr 10.96.0.1 tcp dport 80 dnat to numgen random mod 3 map { 0 : 10.244.0.5, 1 : 10.244.1.5, 2 : 10.244.2.5 }; }
 chain f {
  type filter hook forward priority 0;
  oifname vmap { "flannel.1" : accept }
  oifname vmap { "cni0" : jump c }
 }
 chain c {
  oifname vmap { "flannel.1" : accept }
  ip daddr . oifname vmap { 10.244.0.5 . "cni0" : drop }
 }
}
""")
    packet = Packet("192.168.1.5", "10.96.0.1", 80, in_interface="eth0")
    shared, walked = (Tracer(ruleset, node_ips=["10.0.0.1"], routes=routes, share=share) for share in (True, False))
    for _ in range(3):  # (the first walks and records, the next replay)
        got, want = ([(o.verdict, o.destination, o.assumptions) for o in t.trace(packet).outcomes]
                     for t in (shared, walked))
        assert got == want
    assert [(verdict, [a.split(":")[0] for a in notes if "by the node's routes" in a]) for verdict, _, notes in got] \
        == [("DROP", ["line 5", "line 6", "line 9", "line 10"]), ("DNAT", ["line 5"]), ("REJECT", [])]
