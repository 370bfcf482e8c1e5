"""The migration check: `iptrace diff IPTABLES_DUMP NFT_RULESET` of the same cluster. The same ServiceSpecs
rendered by bench/synth.py (iptables mode, as iptables-nft-save prints it) and bench/synth_nft.py (nftables mode,
as `nft list ruleset` prints it) are equivalent, with notes for what one mode cannot show; a changed endpoint,
nodePort or traffic policy is named."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.synth import EndpointSpec, PortSpec, ServiceSpec, render
from bench.synth_nft import render_nft
from iptrace import dataplanes
from iptrace.cli import main
from iptrace.collect import store
from iptrace.kube.analysis import analyse
from iptrace.kube.diff import Diff, FieldChange, diff
from iptrace.render.audit import diff_to_json, render_diff_text
from tests.test_compare import NODES, POD_CIDR, base_services, svc, with_local

NODE = "node-a"
SERVICE_CIDR = "10.96.0.0/12"


def services() -> list[ServiceSpec]:
    """base_services (NodePort, eTP=Local LB with a health check, DNS over UDP and TCP, affinity, LB with source
    ranges, iTP=Local) plus what the notes are about: an LB IP without source ranges, an externalIP, a
    three-way split, a Service without endpoints."""
    return [*base_services(),
            ServiceSpec("default", "plain-lb", "10.96.10.7", [PortSpec("http", 80, node_port=30087, target_port=8080)],
                        type="LoadBalancer", lb_ips=["203.0.113.12"], external_ips=["192.168.49.100"],
                        endpoints=[EndpointSpec(f"10.244.{n}.11", 8080) for n in (1, 2, 3)]),
            ServiceSpec("default", "empty", "10.96.10.8", [PortSpec("http", 80, node_port=30088)], type="NodePort")]


def iptables_text(specs: list[ServiceSpec]) -> str:
    return render(with_local(specs, NODE), node_ips=[NODES[NODE]], pod_cidr=POD_CIDR)


def nft_text(specs: list[ServiceSpec], form: str = "list") -> str:
    return render_nft(with_local(specs, NODE), node_ips=[NODES[NODE]], pod_cidr=POD_CIDR,
                      service_cidrs=[SERVICE_CIDR], form=form)


def analysis(text: str, source: str) -> object:
    dataplane, ruleset = dataplanes.load(text, source=source)
    return analyse(dataplane, ruleset, node_ips=[NODES[NODE]])


def migration(a: list[ServiceSpec], b: list[ServiceSpec], form: str = "list") -> Diff:
    return diff(analysis(iptables_text(a), "iptables-save.txt"), analysis(nft_text(b, form), "nft-ruleset.txt"))


@pytest.mark.parametrize("form", ["list", "transaction"])
def test_the_same_services_are_equivalent(form: str) -> None:
    d = migration(services(), services(), form)
    assert (d.mode_a, d.mode_b) == ("iptables", "nftables")
    assert d.equivalent, render_diff_text(d)
    assert not d.added and not d.removed and not d.changed and not d.rules
    text = render_diff_text(d)
    assert "equivalent: every Service port is forwarded alike in iptables and nftables mode" in text
    notes = "\n".join(d.notes)
    assert "healthCheckNodePort not compared" in notes and "default/local-lb:https (32000)" in notes
    assert "LoadBalancer IPs compared together with externalIPs" in notes and "203.0.113.12" in notes
    assert "203.0.113.11" not in notes  # an LB IP with source ranges is one in both modes
    assert "endpoint shares compared within 1e-06" in notes
    unserved = next(n for n in d.notes if n.startswith("a ClusterIP's unserved port"))
    assert "iptables (a) leaves it unanswered" in unserved and "nftables (b) REJECTs it (connection refused)" in unserved
    assert "Reject traffic to invalid ports of ClusterIPs" in unserved
    unallocated = next(n for n in d.notes if n.startswith("an address no Service has"))
    assert "nftables (b) DROPs it" in unallocated and "Drop traffic to unallocated ClusterIPs" in unallocated


def test_the_other_way_round_is_equivalent_too() -> None:
    d = diff(analysis(nft_text(services()), "nft"), analysis(iptables_text(services()), "ipt"))
    assert d.equivalent and (d.mode_a, d.mode_b) == ("nftables", "iptables")
    assert any("nftables (a) REJECTs it" in n for n in d.notes)


def test_a_changed_endpoint_nodeport_and_policy_are_named() -> None:
    b = copy.deepcopy(services())
    svc(b, "web").endpoints[1] = EndpointSpec("10.244.2.6", 8080)
    svc(b, "plain-lb").ports[0].node_port = 30097
    svc(b, "fw").external_traffic_policy = "Local"
    d = migration(services(), b)
    assert not d.equivalent
    changed = {c.service: c for c in d.changed}
    assert set(changed) == {"default/web:http", "default/plain-lb:http", "default/fw:http"}, render_diff_text(d)
    assert [(e.endpoint, e.change) for e in changed["default/web:http"].endpoints] == [
        ("10.244.2.5:8080", "removed"), ("10.244.2.6:8080", "added")]
    assert changed["default/plain-lb:http"].fields == (FieldChange("node_port", 30087, 30097),)
    fw = changed["default/fw:http"]
    assert FieldChange("external_traffic_policy", "Cluster", "Local") in fw.fields
    # Outside clients now reach no endpoint of this node (its only one runs on node-c): the way in says so.
    assert any(f.client == "external" and f.before.startswith("DNAT") and f.after == "DROP" for f in fw.forwarding)
    text = render_diff_text(d)
    assert "not equivalent: 3 Service ports differ" in text
    assert "    node_port: 30087 -> 30097" in text
    assert "    - endpoint 10.244.2.5:8080" in text and "    + endpoint 10.244.2.6:8080" in text
    assert "    external_traffic_policy: Cluster -> Local" in text


def test_json_keeps_its_keys_and_adds_the_verdict() -> None:
    doc = diff_to_json(migration(services(), services()))
    assert list(doc) == ["format", "a", "b", "era", "services_added", "services_removed", "services_changed",
                         "rules", "mode", "equivalent", "notes", "warnings"]
    assert doc["mode"] == {"a": "iptables", "b": "nftables"} and doc["equivalent"] is True
    assert doc["notes"] and all(isinstance(n, str) for n in doc["notes"])
    assert json.loads(json.dumps(doc)) == doc


def test_cli_diff_of_an_iptables_dump_and_an_nft_ruleset(tmp_path: Path) -> None:
    a, b = tmp_path / "iptables-save.txt", tmp_path / "ruleset.nft"
    a.write_text(iptables_text(services()))
    b.write_text(nft_text(services()))
    result = CliRunner().invoke(main, ["diff", str(a), str(b), "--node-ip", NODES[NODE]])
    assert result.exit_code == 0, result.output
    assert "equivalent: every Service port is forwarded alike in iptables and nftables mode" in result.output
    assert "notes (what one mode cannot show; no Service-port difference):" in result.output
    result = CliRunner().invoke(main, ["diff", str(a), str(b), "--node-ip", NODES[NODE], "-o", "json"])
    assert json.loads(result.output)["equivalent"] is True


def test_the_node_addresses_one_side_names_serve_both_sides() -> None:
    """iptables matches the node's addresses by addrtype, an nft ruleset lists them for its NodePorts: without
    --node-ip the migration check takes them from the side that names them (so that an endpoint on the node's
    own address is local on both sides), and says so on stderr; --node-ip needs no note."""
    samples = Path(__file__).resolve().parent.parent / "sample_dumps"
    a, b = str(samples / "nodeport-fb-backends.txt"), str(samples / "nodeport-fb-backends-nft.nft")
    for args in ([a, b], [b, a]):
        result = CliRunner().invoke(main, ["diff", *args])
        assert result.exit_code == 0, result.output
        assert "equivalent: every Service port is forwarded alike" in result.stdout, result.output
        assert result.stderr.startswith(f"note: {a} does not name the node's own addresses; 192.168.49.2 from {b} "
                                        "used for both sides"), result.stderr
    result = CliRunner().invoke(main, ["diff", a, b, "--node-ip", "192.168.49.2"])
    assert result.exit_code == 0 and not result.stderr and "equivalent:" in result.stdout


SAMPLE_PAIRS = [("nodeport-fb-backends.txt", "nodeport-fb-backends-nft.nft"),
                ("nodeport-fb-backends.txt", "nodeport-fb-backends-nft.json"),
                ("nodeport-fb-backends.txt", "flannel-and-kube-proxy-nft.nft"),
                ("etp-local-with-endpoints.txt", "etp-local-with-endpoints-nft.nft"),
                ("etp-local-no-local-endpoints.txt", "etp-local-no-local-endpoints-nft.nft"),
                ("no-endpoints.txt", "no-endpoints-nft.nft")]


@pytest.mark.parametrize(("iptables", "nftables"), SAMPLE_PAIRS, ids=lambda p: p)
def test_the_kernel_listings_of_both_modes_are_equivalent(iptables: str, nftables: str) -> None:
    """The sample dumps: iptables-nft-save of a node in iptables mode and `nft list ruleset` (or `-j`) of the same
    cluster in nftables mode, both as the kernel printed them."""
    samples = Path(__file__).resolve().parent.parent / "sample_dumps"
    a = dataplanes.load((samples / iptables).read_text(), source=iptables)
    b = dataplanes.load((samples / nftables).read_text(), source=nftables)
    d = diff(analyse(*a, node_ips=["192.168.49.2"]), analyse(*b, node_ips=["192.168.49.2"]))
    assert d.equivalent, render_diff_text(d)
    if iptables == "no-endpoints.txt":  # the node's own connection to an externalIP without endpoints
        assert any("192.168.49.50:80 from the node: iptables ACCEPT, nftables REJECT" in n for n in d.notes)


def _walled_without_endpoints() -> ServiceSpec:
    return ServiceSpec("default", "walled-empty", "10.96.10.9", [PortSpec("http", 80, node_port=30089)],
                       type="LoadBalancer", lb_ips=["203.0.113.19"], lb_source_ranges=["198.51.100.0/24"])


@pytest.mark.parametrize("iptables_first", [True, False])
def test_source_ranges_of_a_service_without_endpoints_are_a_note(iptables_first: bool) -> None:
    """iptables mode writes no firewall for a Service without endpoints (every client is refused); nftables mode
    still drops clients outside the ranges before it rejects the rest: no endpoint is reached either way."""
    specs = [*services(), _walled_without_endpoints()]
    sides = [analysis(iptables_text(specs), "ipt"), analysis(nft_text(specs), "nft")]
    d = diff(*(sides if iptables_first else sides[::-1]))
    assert d.equivalent, render_diff_text(d)
    unseen = next(n for n in d.notes if n.startswith("loadBalancerSourceRanges not compared"))
    assert "default/walled-empty:http (198.51.100.0/24)" in unseen
    refused = next(n for n in d.notes if n.startswith("reaching no endpoint in either mode, refused by one"))
    assert "default/walled-empty:http 203.0.113.19:80 from a pod" in refused
    # With endpoints, the same ranges are compared (and equal): no note.
    walled = _walled_without_endpoints()
    walled.endpoints = [EndpointSpec("10.244.2.19", 80)]
    d = migration([*services(), walled], [*services(), walled])
    assert d.equivalent and not any("walled" in n for n in d.notes if "ranges" in n or "refused by one" in n)


def test_a_synthesized_cluster_of_hundreds_of_services_is_equivalent_in_both_modes() -> None:
    """bench.synth's realistic mix (NodePorts, LoadBalancers with and without source ranges, Local policies,
    affinity, multi-port, no endpoints), each LB IP its own (as a controller allocates them)."""
    from bench.synth import scale

    specs = scale(600, 3, seed=7)
    lb_ips = [ip for s in specs for ip in s.lb_ips]
    assert len(lb_ips) == len(set(lb_ips)) > 20
    d = diff(analysis(render(specs, node_ips=[NODES[NODE]], pod_cidr=POD_CIDR), "ipt"),
             analysis(render_nft(specs, node_ips=[NODES[NODE]], pod_cidr=POD_CIDR, service_cidrs=[SERVICE_CIDR]),
                      "nft"))
    assert d.equivalent, render_diff_text(d)
    assert len({c.split()[0] for c in d.notes}) >= 4


def test_both_families_of_a_dual_stack_ruleset_are_compared(tmp_path: Path) -> None:
    """A dual-stack node's nft ruleset holds `ip` and `ip6 kube-proxy`: a change in its IPv6 table alone is a
    difference (not "equivalent" from the IPv4 table alone), and against a one-family dump the matching family
    is compared and the other said to be compared on one side only."""
    samples = Path(__file__).resolve().parent.parent / "sample_dumps"
    dual = samples / "dual-stack-nft.nft"
    text = dual.read_text()
    old = "fd00:10:96::a . tcp . 9153 : goto"
    assert text.count(old) == 1
    changed = tmp_path / "changed.nft"
    changed.write_text(text.replace(old, "fd00:10:96::a . tcp . 9154 : goto"))
    result = CliRunner().invoke(main, ["diff", str(dual), str(changed), "-o", "json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert not doc["equivalent"]
    assert [c["service"] for c in doc["services_changed"]] == ["kube-system/kube-dns:metrics"]
    assert doc["services_changed"][0]["fields"] == [{"field": "port", "a": 9153, "b": 9154}]
    assert CliRunner().invoke(main, ["diff", str(dual), str(dual), "-o", "json"]).stdout.count('"equivalent": true')
    only_v4 = tmp_path / "v4.nft"  # (the same node's IPv4 table alone)
    only_v4.write_text(text[:text.index("table ip6 kube-proxy")])
    doc = json.loads(CliRunner().invoke(main, ["diff", str(dual), str(only_v4), "-o", "json"]).stdout)
    assert doc["equivalent"]
    assert any("IPv6" in w and "only" in w for w in doc["warnings"]), doc["warnings"]


def test_a_changed_lb_ip_is_one_change_across_modes() -> None:
    """nftables mode writes an LB IP without source ranges like an externalIP: a changed LB IP is one change of
    the addresses compared together, not an LB IP removed and an externalIP added."""
    b = copy.deepcopy(services())
    svc(b, "plain-lb").lb_ips = ["203.0.113.99"]
    d = migration(services(), b)
    assert [c.service for c in d.changed] == ["default/plain-lb:http"], render_diff_text(d)
    assert d.changed[0].fields == (FieldChange("external_or_lb_ips", ("192.168.49.100", "203.0.113.12"),
                                               ("192.168.49.100", "203.0.113.99")),)
    assert any(n.startswith("LoadBalancer IPs compared together with externalIPs") for n in d.notes)


def test_stdin_is_one_side_at_most() -> None:
    """`diff - -` cannot read stdin twice: a usage error, not 'no rules found' in an empty second read."""
    result = CliRunner().invoke(main, ["diff", "-", "-"], input=iptables_text(services()))
    assert result.exit_code == 2
    assert "only one side of a diff can be read from stdin" in result.stderr


def test_text_counts_endpoints_and_writes_flags_as_services_json_does() -> None:
    # '(1 endpoint(s))' and 'no_local_endpoints: False -> True' (Python's spelling of a JSON field's value).
    samples = Path(__file__).resolve().parent.parent / "sample_dumps"

    def text(a: str, b: str) -> str:
        return CliRunner().invoke(main, ["diff", str(samples / a), str(samples / b)]).stdout

    out = text("nodeport-fb-backends.txt", "no-kube-proxy.txt")
    assert "- service default/kubernetes:https 10.96.0.1:443 (1 endpoint)\n" in out, out
    assert "(2 endpoints)" in out and "(s)" not in out, out
    out = text("etp-local-with-endpoints.txt", "etp-local-no-local-endpoints.txt")
    assert "    no_local_endpoints: false -> true\n" in out, out


def test_a_ruleset_that_still_holds_iptables_modes_rules_is_warned_of() -> None:
    """The nft side of a node that moved modes but kept the old rules (sample_dumps/mode-split-nft.nft): its
    nftables-mode Services equal the iptables dump's, yet the old rules still DNAT (a deleted Service's ClusterIP):
    equivalent, with a warning that the comparison read one mode's rules of two."""
    samples = Path(__file__).resolve().parent.parent / "sample_dumps"
    a, b = str(samples / "nodeport-fb-backends.txt"), str(samples / "mode-split-nft.nft")
    result = CliRunner().invoke(main, ["diff", a, b, "--node-ip", "192.168.49.2", "-o", "json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["equivalent"] is True
    assert [w for w in doc["warnings"] if w.startswith(f"{b}: table ip nat holds kube-proxy's iptables-mode rules")
            and "this comparison reads the nftables-mode rules only" in w]


def test_localhost_nodeports_that_only_iptables_mode_accepts_are_a_note() -> None:
    """iptables mode (IPv4, without --nodeport-addresses) accepts a nodePort on 127.0.0.1 from the node itself;
    nftables mode never does: a process on the node using localhost:NODEPORT stops working after the move (the
    migration check said 'equivalent' and nothing of it)."""
    d = migration(services(), services())
    assert d.equivalent
    (note,) = [n for n in d.notes if n.startswith("localhost NodePorts")]
    assert "iptables (a) accepts" in note and "nftables (b) does not" in note and "127.0.0.1:30080" in note, note
    back = diff(analysis(nft_text(services()), "nft"), analysis(iptables_text(services()), "ipt"))
    assert any("nftables (a) does not" in n and "iptables (b) accepts" in n for n in back.notes), back.notes
    same = diff(analysis(iptables_text(services()), "a"), analysis(iptables_text(services()), "b"))
    assert not [n for n in same.notes if n.startswith("localhost NodePorts")]


def test_a_single_localhost_nodeport_is_the_only_one() -> None:
    """One nodePort: '(e.g. 127.0.0.1:30080, the only nodePort)', not 'one of 1 nodePort'."""
    samples = Path(__file__).resolve().parent.parent / "sample_dumps"
    result = CliRunner().invoke(main, ["diff", str(samples / "no-endpoints.txt"),
                                       str(samples / "no-endpoints-nft.nft"), "--node-ip", "192.168.49.2"])
    assert "(e.g. 127.0.0.1:30080, the only nodePort)" in result.stdout, result.stdout
    assert "one of 1 " not in result.stdout


@pytest.mark.parametrize("cut", ["b", "a"])
def test_a_side_read_past_problems_is_warned_of_in_the_json_too(cut: str, tmp_path: Path) -> None:
    """`diff --lenient` of a complete iptables dump and an nft listing cut in half said 'not equivalent: 10
    Service ports differ' with the lenient reading named only on stderr: `-o json` had "warnings": [], so a
    script saw ten Service ports gone, not a truncated file."""
    a, b = tmp_path / "iptables-save.txt", tmp_path / "ruleset.nft"
    a.write_text(iptables_text(services()))
    listing = nft_text(services()).split("\n")
    b.write_text("\n".join(listing[:len(listing) // 2]) + "\n")
    sides = [str(a), str(b)] if cut == "b" else [str(b), str(a)]
    result = CliRunner().invoke(main, ["diff", *sides, "--node-ip", NODES[NODE], "--lenient", "-o", "json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["equivalent"] is False
    (warning,) = [w for w in doc["warnings"] if "--lenient" in w]
    assert warning.startswith(f"{b}: read with --lenient past "), warning
    assert "is not closed (the listing looks truncated)" in warning, warning
    assert "the Service ports it lacks or shows otherwise may be in what could not be read" in warning, warning
    text = CliRunner().invoke(main, ["diff", *sides, "--node-ip", NODES[NODE], "--lenient"]).stdout
    assert f"warning: {warning}\n" in text
    # Near-miss: --lenient over two whole files warns of nothing.
    b.write_text(nft_text(services()))
    doc = json.loads(CliRunner().invoke(main, ["diff", *sides, "--node-ip", NODES[NODE], "--lenient",
                                               "-o", "json"]).stdout)
    assert doc["equivalent"] is True and not [w for w in doc["warnings"] if "--lenient" in w], doc["warnings"]


def test_the_shares_note_reports_rounding_not_a_changed_split() -> None:
    """A Service port whose endpoint went away (one of two: 0.5 -> 1) is a difference; the note on iptables'
    10-decimal probabilities said 'largest gap seen: 0.5', that very difference, as if it were rounding."""
    b = copy.deepcopy(services())
    svc(b, "web").endpoints.pop()
    d = migration(services(), b)
    (web,) = [c for c in d.changed if c.service == "default/web:http"]
    assert [e.change for e in web.endpoints] == ["probability", "removed"], web.endpoints
    (note,) = [n for n in d.notes if n.startswith("endpoint shares compared within 1e-06")]
    gap = float(note.rsplit("largest gap seen: ", 1)[1].rstrip(")")) if "largest gap" in note else 0.0
    assert gap < 1e-6, note


def test_each_family_of_a_dual_stack_diff_is_named(tmp_path: Path) -> None:
    """kube-proxy runs one proxier per family and names both families' Service ports alike: a dual-stack diff
    whose kube-dns:metrics changed in both tables said '~ service kube-system/kube-dns:metrics' twice, 'not
    equivalent: 1 Service port differs', and repeated each note once a family without saying which."""
    samples = Path(__file__).resolve().parent.parent / "sample_dumps"
    dual = samples / "dual-stack-nft.nft"
    text = dual.read_text()
    changed = tmp_path / "changed.nft"
    changed.write_text(text.replace("10.96.0.10 . tcp . 9153 :", "10.96.0.10 . tcp . 9154 :")
                       .replace("fd00:10:96::a . tcp . 9153 :", "fd00:10:96::a . tcp . 9154 :"))
    ipt = tmp_path / "iptables-save.txt"  # (notes: the migration check of its IPv4 table)
    result = CliRunner().invoke(main, ["diff", str(dual), str(changed)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "not equivalent: 2 Service ports differ" in out, out
    assert "~ service kube-system/kube-dns:metrics (IPv4)\n    port: 9153 -> 9154\n" in out, out
    assert "~ service kube-system/kube-dns:metrics (IPv6)\n    port: 9153 -> 9154\n" in out, out
    doc = json.loads(CliRunner().invoke(main, ["diff", str(dual), str(changed), "-o", "json"]).stdout)
    assert [(c["service"], c["family"]) for c in doc["services_changed"]] == [
        ("kube-system/kube-dns:metrics", "ipv4"), ("kube-system/kube-dns:metrics", "ipv6")]
    # The migration check of a dual-stack node: each note says its family (both tables have notes).
    from bench.make_samples_nft import scenarios

    (scenario,) = [s for s in scenarios() if s.file == "dual-stack-nft.nft"]
    ipt.write_text(render(scenario.services, node_ips=scenario.node_ips, pod_cidr=scenario.pod_cidrs[0]))
    ip6 = tmp_path / "ip6tables-save.txt"
    ip6.write_text(render(scenario.services, node_ips=scenario.node_ips, pod_cidr=scenario.pod_cidrs[1], ipv6=True))
    for side in (ipt, ip6):
        doc = json.loads(CliRunner().invoke(main, ["diff", str(side), str(dual), "-o", "json"]).stdout)
        assert doc["equivalent"], doc
        assert doc["notes"] and not [n for n in doc["notes"] if n.startswith(("IPv4: ", "IPv6: "))], doc["notes"]
    node = tmp_path / "snap" / "node-a"  # (both families of the node in iptables mode, as collect saves them)
    store.write_node_dir(node, {store.DUMP_FILE: ipt.read_bytes(), store.IP6_DUMP_FILE: ip6.read_bytes()},
                         {"node": "node-a", "host": "node-a", "addresses": scenario.node_ips})
    doc = json.loads(CliRunner().invoke(main, ["diff", str(node), str(dual), "-o", "json"]).stdout)
    assert doc["equivalent"] and doc["a"] == f"{node / store.DUMP_FILE}, {node / store.IP6_DUMP_FILE}", doc["a"]
    for family in ("IPv4", "IPv6"):
        notes = [n for n in doc["notes"] if n.startswith(f"{family}: ")]
        assert [n for n in notes if "endpoint shares compared" in n], doc["notes"]
    assert all(n.startswith(("IPv4: ", "IPv6: ")) for n in doc["notes"]), doc["notes"]
    # Near-miss: one family on each side: no family in the text, though the JSON says it.
    only_v4 = tmp_path / "v4.nft"
    only_v4.write_text(changed.read_text()[:changed.read_text().index("table ip6 kube-proxy")])
    out = CliRunner().invoke(main, ["diff", str(ipt), str(only_v4), "--node-ip", "192.168.49.2"]).stdout
    assert "~ service kube-system/kube-dns:metrics\n" in out and "(IPv4)" not in out, out


def test_a_side_without_kube_proxy_rules_is_warned_of() -> None:
    """The iptables-save of a node whose kube-proxy wrote through iptables-legacy holds no kube-proxy rule: the
    migration check said 'not equivalent: 7 Service ports differ' and listed them all as added, the header's
    'kube-proxy mode: none -> nftables' being all there was to tell that the wrong file was compared."""
    samples = Path(__file__).resolve().parent.parent / "sample_dumps"
    split, nft = str(samples / "legacy-split-nft.txt"), str(samples / "nodeport-fb-backends-nft.nft")
    for a, b, what in ((split, nft, "added"), (nft, split, "removed")):
        doc = json.loads(CliRunner().invoke(main, ["diff", a, b, "-o", "json"]).stdout)
        assert not doc["equivalent"]
        (warning,) = [w for w in doc["warnings"] if w.startswith(f"{split} holds no kube-proxy rules to compare")]
        assert "look at `iptables-legacy-save` from this node" in warning, warning
        assert f"every Service port of {nft} counts as {what}" in warning, warning
    out = CliRunner().invoke(main, ["diff", split, str(samples / "no-kube-proxy.txt")]).stdout
    assert out.count(" holds no kube-proxy rules to compare") == 2 and "counts as" not in out, out
    # Near-miss: both sides hold kube-proxy's rules.
    doc = json.loads(CliRunner().invoke(main, ["diff", str(samples / "nodeport-fb-backends.txt"), nft,
                                               "-o", "json"]).stdout)
    assert doc["equivalent"] and doc["warnings"] == [], doc["warnings"]


def test_sides_of_different_families_are_warned_of() -> None:
    """An IPv4 ruleset against an IPv6 dump compared the one's IPv4 Service ports with the other's IPv6 ones, and
    warned only that the dumps looked like two clusters' nodes."""
    samples = Path(__file__).resolve().parent.parent / "sample_dumps"
    a, b = str(samples / "nodeport-fb-backends-nft.nft"), str(samples / "ipv6.txt")
    doc = json.loads(CliRunner().invoke(main, ["diff", a, b, "-o", "json"]).stdout)
    assert any(w.startswith(f"no IP family in common: {a} has kube-proxy rules for IPv4 only, {b} for IPv6 only")
               for w in doc["warnings"]), doc["warnings"]
    doc = json.loads(CliRunner().invoke(main, ["diff", b, b, "-o", "json"]).stdout)
    assert doc["warnings"] == []


def test_a_way_whose_masquerading_alone_changed_says_so_once() -> None:
    """kube-proxy with --masquerade-all on one side: each way in printed its whole DNAT twice, '10.96.10.4:80 from
    a pod: DNAT to 10.244.2.9:9376 (masqueraded) -> DNAT to 10.244.2.9:9376', the change a suffix to spot in
    a line that lists every endpoint twice. The text says the DNAT once, then what changed; JSON is unchanged."""
    specs = with_local(services(), NODE)
    a = analysis(render(specs, node_ips=[NODES[NODE]], pod_cidr=POD_CIDR, masquerade_all=True), "ipt")
    d = diff(a, analysis(nft_text(services()), "nft"))
    text = render_diff_text(d)
    assert "    ~ 10.96.10.4:80 from a pod: DNAT to 10.244.2.9:9376; masqueraded -> not masqueraded\n" in text, text
    assert "(masqueraded) -> DNAT" not in text, text
    (affine,) = [c for c in d.changed if c.service == "default/affine"]
    (pod,) = [f for f in affine.forwarding if f.client == "pod"]
    assert (pod.before, pod.after) == ("DNAT to 10.244.2.9:9376 (masqueraded)", "DNAT to 10.244.2.9:9376")
    # Near-miss: a way whose destination changed as well keeps both sides whole.
    b = copy.deepcopy(services())
    svc(b, "fw").external_traffic_policy = "Local"
    text = render_diff_text(migration(services(), b))
    assert "~ <node>:30085 from outside: DNAT to 10.244.3.4:8080 (masqueraded) -> DROP" in text, text


def test_the_node_addresses_taken_from_the_other_side_are_said_once(tmp_path: Path) -> None:
    """A dual-stack node's iptables-save.txt and ip6tables-save.txt, collected without its addresses, against its
    nft ruleset (which names them): the note that the ruleset's addresses stand for both sides came once a family,
    the same addresses in another order."""
    from bench.make_samples_nft import scenarios

    (scenario,) = [s for s in scenarios() if s.file == "dual-stack-nft.nft"]
    node = tmp_path / "snap" / "node-a"
    store.write_node_dir(node, {
        store.DUMP_FILE: render(scenario.services, node_ips=scenario.node_ips,
                                pod_cidr=scenario.pod_cidrs[0]).encode(),
        store.IP6_DUMP_FILE: render(scenario.services, node_ips=scenario.node_ips, pod_cidr=scenario.pod_cidrs[1],
                                    ipv6=True).encode()}, {"node": "node-a", "host": "node-a"})
    dual = Path(__file__).resolve().parent.parent / "sample_dumps" / "dual-stack-nft.nft"
    result = CliRunner().invoke(main, ["diff", str(node), str(dual)])
    assert result.exit_code == 0, result.output
    assert "equivalent: every Service port is forwarded alike" in result.stdout, result.stdout
    assert result.stderr.count("does not name the node's own addresses") == 1, result.stderr


def test_a_node_address_only_iptables_mode_accepts_nodeports_on_is_a_difference() -> None:
    """iptables mode accepts nodePorts on every local address, nftables mode on the node's primary ones
    (--nodeport-addresses). A client of a second node address reaches a NodePort Service in iptables mode only: it
    breaks with the migration, so the Service ports are not forwarded alike (SPEC: 'equivalent' when every Service
    port is forwarded alike; a note is for what one mode cannot show). It was a note, and 'equivalent'. Each
    nodePort at that address is traced on both sides, as a way in of its own."""
    second = "192.0.2.77"
    ips = [NODES[NODE], second]

    def of(text: str, source: str) -> object:
        dataplane, ruleset = dataplanes.load(text, source=source)
        return analyse(dataplane, ruleset, node_ips=ips)

    d = diff(of(iptables_text(services()), "iptables-save.txt"), of(nft_text(services()), "nft-ruleset.txt"))
    assert not d.equivalent and not d.added and not d.removed
    ways = {c.service: [(f.way, f.client, f.before, f.after) for f in c.forwarding] for c in d.changed}
    assert ways["default/web:http"] == [(f"{second}:30080", "external",
                                         "DNAT to 10.244.1.5:8080, 10.244.2.5:8080 (masqueraded)", "ACCEPT")]
    assert all(not c.fields and not c.endpoints for c in d.changed)
    assert {way for found in ways.values() for way, *_ in found} == {
        f"{second}:{port}" for port in (30080, 30085, 30087, 30443)}
    assert not [n for n in d.notes if n.startswith("NodePorts on ")]
    # (a Service without endpoints: refused in iptables mode, no rule in nftables mode: a note, as elsewhere)
    assert any(f"default/empty:http {second}:30088 from outside: iptables REJECT, nftables ACCEPT" in n
               for n in d.notes), d.notes
    assert "not equivalent" in render_diff_text(d) and f"{second}:30080 from outside" in render_diff_text(d)
    # (the text says what ACCEPT means there: the node takes the packet itself, nothing forwards it)
    assert (f"{second}:30080 from outside: DNAT to 10.244.1.5:8080, 10.244.2.5:8080 (masqueraded) -> ACCEPT (not "
            "forwarded: the node itself receives it)") in render_diff_text(d)
    back = diff(of(nft_text(services()), "nft"), of(iptables_text(services()), "ipt"))
    assert [(f.before, f.after) for c in back.changed for f in c.forwarding if c.service == "default/web:http"] == [
        ("ACCEPT", "DNAT to 10.244.1.5:8080, 10.244.2.5:8080 (masqueraded)")]
    # The primary address alone (both accept it), and two dumps of one mode: no such difference.
    assert migration(services(), services()).equivalent
    same = diff(of(nft_text(services()), "a"), of(nft_text(services()), "b"))
    assert same.equivalent


def test_node_addresses_only_one_mode_accepts_nodeports_on_are_said_once_in_text() -> None:
    """A collected node lists every local address (cni0, docker0, …): each nodePort at each address only iptables
    mode accepts nodePorts on is a difference, but the text says it once per set of addresses alike (which,
    what each mode accepts there, how many Service ports, one traced example, the fix) so that it buries no other
    difference; a Service port's other differences show as before, and JSON keeps each way as its own change."""
    extra = ["192.0.2.77", "198.51.100.9"]
    ips = [NODES[NODE], *extra]

    def of(text: str, source: str) -> object:
        dataplane, ruleset = dataplanes.load(text, source=source)
        return analyse(dataplane, ruleset, node_ips=ips)

    b = copy.deepcopy(services())
    svc(b, "web").endpoints[1] = EndpointSpec("10.244.2.6", 8080)
    d = diff(of(iptables_text(services()), "iptables-save.txt"), of(nft_text(b), "nft-ruleset.txt"))
    nodeports = (30080, 30085, 30087, 30443)
    ways = {f.way for c in d.changed for f in c.forwarding}
    assert ways >= {f"{ip}:{port}" for ip in extra for port in nodeports}
    doc = diff_to_json(d)
    assert {f["way"] for c in doc["services_changed"] for f in c["forwarding"]} == ways
    assert all(set(f) == {"way", "client", "a", "b"} for c in doc["services_changed"] for f in c["forwarding"])
    text = render_diff_text(d)
    lines = text.splitlines()
    assert "not equivalent: 4 Service ports differ" in lines
    (summary,) = [line for line in lines if line.startswith("~ nodePorts at ")]
    assert summary.startswith("~ nodePorts at 192.0.2.77, 198.51.100.9: iptables mode (a) accepts every nodePort "
                              "there, nftables mode (b) none (it accepts them only on 192.168.49.2: its "
                              "--nodeport-addresses): 4 Service ports differ there from outside"), summary
    assert summary.endswith("e.g. default/web:http at 192.0.2.77:30080 from outside: DNAT (masqueraded) -> ACCEPT "
                            "(not forwarded: the node itself receives it)"), summary
    fix = lines[lines.index(summary) + 1]
    assert "set nftables mode's --nodeport-addresses to cover them, or have the clients use 192.168.49.2" in fix
    differences = lines[:lines.index("notes (what one mode cannot show; no Service-port difference):")]
    # (no line per nodePort and address: the summary alone names them)
    assert not [line for line in differences if line != summary and any(ip in line for ip in extra)], text
    # The Service port with another difference still shows it; its ways at those addresses are in the summary.
    web = lines.index("~ service default/web:http")
    assert lines[web + 1:web + 3] == ["    - endpoint 10.244.2.5:8080 (p=0.5)", "    + endpoint 10.244.2.6:8080 (p=0.5)"]
    assert "~ service default/local-lb:https" not in lines  # (its nodePort at those addresses only)
