"""The kube-proxy ruleset synthesizer (bench/synth.py) against kube-proxy's own expectations and the kernel.

Fixture comparison: kube-proxy's tests compare restore text after sortIPTablesRules, which reorders the rules
of KUBE-SERVICES and KUBE-NODEPORTS (and, in practice, the filter chains fed from the same service loop) by
service name; kube-proxy itself writes them in Go map order. So those chains are compared as multisets, every
other chain rule for rule in order, and the chain declarations as sets. No deliberate differences remain.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import netns
from bench.synth import (
    EndpointSpec,
    PortSpec,
    ServiceSpec,
    canonical_rule,
    probability,
    render,
    scale,
)
from iptrace.iptables.hashes import endpoint_chain, service_port_chain

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus" / "kube-proxy"
FIXTURES = sorted(CORPUS.glob("*.json")) if CORPUS.is_dir() else []
UNORDERED = {"KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-EXTERNAL-SERVICES", "KUBE-PROXY-FIREWALL"}
NFACCT = ["localhost_nps_accepted_pkts", "ct_state_invalid_dropped_pkts"]


# ------------------------------------------------------------------------------------------------ hashes


def test_hash_vectors() -> None:
    assert service_port_chain("KUBE-SVC-", "ns1/svc1:p80", "tcp") == "KUBE-SVC-XPGD46QRK7WJZT7O"
    assert service_port_chain("KUBE-SVC-", "ns1/svc1:p80", "TCP") == "KUBE-SVC-XPGD46QRK7WJZT7O"
    assert endpoint_chain("ns1/svc1:p80", "tcp", "10.180.0.1:80") == "KUBE-SEP-SXIVWICOYRO3J4NJ"
    assert service_port_chain("KUBE-SVC-", "ns1/svc1", "tcp") == "KUBE-SVC-AQI2S6QIMU7PVVRP"
    assert service_port_chain("KUBE-FW-", "ns5/svc5:p80", "tcp") == "KUBE-FW-NUKIZ6OKUXPJNT4C"


def test_probability_text() -> None:
    assert [probability(n) for n in (2, 3, 10)] == ["0.5000000000", "0.3333333333", "0.1000000000"]


# ------------------------------------------------------------------------------------------------ fixtures


def fixture_services(data: dict) -> list[ServiceSpec]:
    slices: dict[tuple[str, str], list[dict]] = {}
    for sl in data["endpoints"]:
        slices.setdefault((sl["namespace"], sl["service"]), []).append(sl)
    services = []
    for s in data["services"]:
        endpoints = []
        for sl in slices.get((s["namespace"], s["name"]), []):
            ports = {p["name"]: p["port"] for p in sl["ports"]}
            for a in sl["addresses"]:
                endpoints.append(EndpointSpec(a["ip"], next(iter(ports.values())), local=a["isLocal"],
                                              ready=a["ready"], serving=a["serving"], terminating=a["terminating"],
                                              ports=ports))
        affinity = s["sessionAffinity"] == "ClientIP"
        services.append(ServiceSpec(
            s["namespace"], s["name"], s["clusterIP"],
            [PortSpec(p["name"], p["port"], p["protocol"], p["nodePort"], p["targetPort"]) for p in s["ports"]],
            type=s["type"], external_ips=s["externalIPs"], lb_ips=s["loadBalancerIPs"],
            lb_source_ranges=s["loadBalancerSourceRanges"],
            external_traffic_policy=s["externalTrafficPolicy"] or "Cluster",
            internal_traffic_policy=s["internalTrafficPolicy"] or "Cluster",
            session_affinity_timeout=(s["sessionAffinityTimeoutSeconds"] or 10800) if affinity else None,
            health_check_node_port=s["healthCheckNodePort"], endpoints=endpoints))
    return services


def render_fixture(path: Path) -> tuple[str, dict]:
    data = json.loads(path.read_text())
    detector = data["pod_cidr_or_local_detector"]
    cfg = data["proxier_config"]
    text = render(
        fixture_services(data), node_ips=data["node_ips"],
        pod_cidr=detector.split()[1] if detector.startswith("DetectLocalByCIDR") else None,
        era="current" if path.name.startswith("current-") else "ext",
        localhost_nodeports=cfg["localhostNodePorts"], nodeport_addresses=cfg["nodePortAddresses"],
        masquerade_all=cfg["masqueradeAll"], nfacct=cfg["nfacctCounters"],
        random_fully="randomFully_true" in path.name, full_dump=False, ipv6=data["ip_family"] == "IPv6")
    return text, data


def chains_of(text: str) -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = {}
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":"):
            out.setdefault((table, line[1:].split()[0]), [])
        elif line.startswith("-A "):
            out.setdefault((table, line.split()[1]), []).append(line)
    return out


@pytest.mark.skipif(not FIXTURES, reason="../shared/corpus/kube-proxy is absent")
@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_fragment_matches_kube_proxy(path: Path) -> None:
    data = json.loads(path.read_text())
    if not data["services"] and "TestMasqueradeRule" not in path.name:
        pytest.skip("hand-written ruleset, not generated from Services")
    text, data = render_fixture(path)
    mine, want = chains_of(text), chains_of(data["dump"])
    assert sorted(mine) == sorted(want), "chain declarations differ"
    for key, rules in want.items():
        if key[1] in UNORDERED:
            assert sorted(mine[key]) == sorted(rules), key
        else:
            assert mine[key] == rules, key
    nat_services = mine.get(("nat", "KUBE-SERVICES"), [])
    if nat_services:
        assert "NOTE: this must be the last rule" in nat_services[-1]


# ------------------------------------------------------------------------------------------------ behaviour

NODE = ["192.168.49.2"]
POD_CIDR = "10.244.0.0/16"


def sample_services() -> list[ServiceSpec]:
    """One of each shape: NodePort split, LB with ranges + affinity + UDP port with its own endpoint port,
    ETP=Local LB with a health check, a Service without endpoints, SCTP, and an ITP=Local one."""
    return [
        ServiceSpec("default", "fb-backends", "10.101.234.168", [PortSpec("ka-port", 5001, node_port=30904,
                                                                          target_port=8001)],
                    type="NodePort", endpoints=[EndpointSpec("10.244.1.7", 8001), EndpointSpec("10.244.2.3", 8001)]),
        ServiceSpec("ns2", "lb", "10.96.5.5", [PortSpec("https", 443, node_port=31443, target_port=8443),
                                               PortSpec("dns", 53, "UDP", node_port=31053)],
                    type="LoadBalancer", lb_ips=["203.0.113.10"], external_ips=["192.168.49.100"],
                    lb_source_ranges=["198.51.100.0/24", "192.168.49.0/24"], session_affinity_timeout=600,
                    endpoints=[EndpointSpec("10.244.1.8", 8443, ports={"dns": 5353}),
                               EndpointSpec("10.244.2.9", 8443, local=True, ports={"dns": 5353})]),
        ServiceSpec("ns3", "local", "10.96.6.6", [PortSpec("", 80, node_port=30080)], type="LoadBalancer",
                    lb_ips=["203.0.113.11"], external_traffic_policy="Local", health_check_node_port=32000,
                    endpoints=[EndpointSpec("10.244.1.10", 80), EndpointSpec("10.244.0.4", 80, local=True)]),
        ServiceSpec("ns4", "none", "10.96.7.7", [PortSpec("x", 80, node_port=30081)], type="NodePort",
                    external_ips=["192.168.49.101"]),
        ServiceSpec("ns5", "sctp", "10.96.8.8", [PortSpec("s", 3868, "SCTP")],
                    endpoints=[EndpointSpec("10.244.3.3", 3868)]),
        ServiceSpec("ns6", "itp", "10.96.9.9", [PortSpec("p", 80)], internal_traffic_policy="Local",
                    endpoints=[EndpointSpec("10.244.3.4", 80)]),
    ]


def sample_services_v6() -> list[ServiceSpec]:
    return [
        ServiceSpec("default", "web", "fd00:10:96::1a", [PortSpec("http", 80, node_port=30080, target_port=8080)],
                    type="LoadBalancer", lb_ips=["2001:db8:1::10"], lb_source_ranges=["2001:db8:2::/64"],
                    session_affinity_timeout=10800,
                    endpoints=[EndpointSpec("fd00:10:244:1::7", 8080), EndpointSpec("fd00:10:244:2::3", 8080)]),
        ServiceSpec("default", "none", "fd00:10:96::1b", [PortSpec("http", 80)]),
    ]


def rules(text: str, chain: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"-A {chain} ")]


def test_terminating_fallback_and_port_mapping() -> None:
    svc = ServiceSpec("ns", "t", "10.96.0.20", [PortSpec("a", 80), PortSpec("b", 81)], endpoints=[
        EndpointSpec("10.244.0.1", 8080, ready=False, serving=True, terminating=True, ports={"b": 9090}),
        EndpointSpec("10.244.0.2", 8080, ready=False, serving=False, terminating=True)])
    text = render([svc], node_ips=NODE, pod_cidr=POD_CIDR, full_dump=False)
    dnat = [line for line in text.splitlines() if "-j DNAT" in line]
    assert [line.rsplit(" ", 1)[1] for line in dnat] == ["10.244.0.1:8080", "10.244.0.1:9090"]


def test_large_cluster_mode_drops_only_endpoint_comments() -> None:
    services = scale(120, 10)
    text = render(services, node_ips=NODE, pod_cidr=POD_CIDR, full_dump=False)
    assert not any("-m comment" in line for line in text.splitlines() if line.startswith("-A KUBE-SEP-"))
    assert all('"' in line for line in rules(text, "KUBE-SERVICES"))
    forced = render(services, node_ips=NODE, pod_cidr=POD_CIDR, full_dump=False, comments=True)
    assert all("-m comment" in line for line in forced.splitlines() if line.startswith("-A KUBE-SEP-"))


def test_eras_differ_as_kube_proxy_did() -> None:
    services = sample_services()
    current = render(services, node_ips=NODE, pod_cidr=POD_CIDR, full_dump=False)
    ext = render(services, node_ips=NODE, pod_cidr=POD_CIDR, era="ext", full_dump=False)
    xlb = render(services, node_ips=NODE, pod_cidr=POD_CIDR, era="xlb", full_dump=False)
    assert "nfacct" in current and "127.0.0.0/8 --dport 30904" in current
    assert "nfacct" not in ext and "127.0.0.0/8 --dport" not in ext
    assert "KUBE-XLB-" in xlb and "KUBE-EXT-" not in xlb and "KUBE-SVL-" not in xlb
    assert "KUBE-MARK-DROP" in xlb and "KUBE-PROXY-FIREWALL" not in xlb
    masq = [line for line in rules(xlb, "KUBE-SERVICES") if "KUBE-MARK-MASQ" in line]
    assert masq and all("! -s 10.244.0.0/16" in line for line in masq)


def test_ipv6_has_no_localhost_nodeports() -> None:
    text = render(sample_services_v6(), node_ips=["2001:db8::2"], pod_cidr="fd00:10:244::/56", ipv6=True,
                  full_dump=False)
    assert "127.0.0.0/8" not in text and "KUBE-FIREWALL" not in text
    assert rules(text, "KUBE-SERVICES")[-1].endswith("--dst-type LOCAL ! -d ::1/128 -j KUBE-NODEPORTS")
    assert "--to-destination [fd00:10:244:1::7]:8080" in text


def test_full_dump_shape() -> None:
    text = render(sample_services(), node_ips=NODE, pod_cidr=POD_CIDR)
    lines = text.splitlines()
    assert lines[0].startswith("# Generated by iptables-nft-save")
    assert [line for line in lines if line.startswith("*")] == ["*mangle", "*raw", "*filter", "*nat"]
    assert lines.count("COMMIT") == 4
    assert rules(text, "INPUT") == [
        '-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" '
        "-j KUBE-PROXY-FIREWALL",
        '-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS',
        '-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" '
        "-j KUBE-EXTERNAL-SERVICES",
        "-A INPUT -j KUBE-FIREWALL",
    ]
    assert rules(text, "PREROUTING") == [
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES']
    assert ":KUBE-PROXY-CANARY - [0:0]" in lines and ":KUBE-KUBELET-CANARY - [0:0]" in lines
    assert "-A KUBE-SEP-" in text and "--probability 0.50000000000" in text


def test_canonical_rule_forms() -> None:
    assert canonical_rule("KUBE-SVC-X", ["-m", "comment", "--comment", '"a/b:c cluster IP"', "-m", "tcp", "-p",
                                         "tcp", "-d", "10.0.0.1", "--dport", "80", "!", "-s", "10.0.0.0/8", "-j",
                                         "KUBE-MARK-MASQ"]) == (
        '-A KUBE-SVC-X ! -s 10.0.0.0/8 -d 10.0.0.1/32 -p tcp -m comment --comment "a/b:c cluster IP" '
        "-m tcp --dport 80 -j KUBE-MARK-MASQ")
    assert canonical_rule("KUBE-MARK-MASQ", ["-j", "MARK", "--or-mark", "0x4000"]) == (
        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000")


def test_extra_rules_are_merged() -> None:
    extra = "*filter\n:FORWARD DROP [0:0]\n:DOCKER-USER - [0:0]\n-I FORWARD -j DOCKER-USER\n" \
            "-A FORWARD -o docker0 -j ACCEPT\n-A DOCKER-USER -j RETURN\nCOMMIT\n"
    text = render([], node_ips=NODE, pod_cidr=POD_CIDR, extra=extra)
    forward = rules(text, "FORWARD")
    assert forward[0] == "-A FORWARD -j DOCKER-USER" and forward[-1] == "-A FORWARD -o docker0 -j ACCEPT"
    assert ":FORWARD DROP [0:0]" in text


def test_scale_is_deterministic_and_mixed() -> None:
    a, b = scale(1000, 10, seed=3), scale(1000, 10, seed=3)
    assert a == b and a != scale(1000, 10, seed=4)
    types = [s.type for s in a]
    assert 0.15 < types.count("NodePort") / 1000 < 0.25
    assert 0.03 < types.count("LoadBalancer") / 1000 < 0.08
    assert any(s.lb_source_ranges for s in a) and any(len(s.ports) > 1 for s in a)
    assert 0.03 < sum(s.session_affinity_timeout is not None for s in a) / 1000 < 0.08
    text = render(a, node_ips=NODE, pod_cidr=POD_CIDR, comments=True)
    per_service = sum(line.startswith("-A ") for line in text.splitlines()) / 1000
    # 5,000 x 10 gives ~164,000 rules (SPEC.md): about 33 per service.
    assert 31 < per_service < 35.5


# ------------------------------------------------------------------------------------------------ the kernel

NETNS_PROBLEM = netns.available()
needs_netns = pytest.mark.skipif(NETNS_PROBLEM is not None, reason=NETNS_PROBLEM or "")


def strip_comments(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("#")]


@pytest.mark.root
@needs_netns
@pytest.mark.parametrize("backend", ["nft", "legacy"])
@pytest.mark.parametrize("era", ["current", "ext", "xlb"])
@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_full_dump_loads(backend: str, era: str, ipv6: bool) -> None:
    if ipv6:
        text = render(sample_services_v6(), node_ips=["2001:db8::2"], pod_cidr="fd00:10:244::/56", era=era,
                      ipv6=True)
    else:
        text = render(sample_services(), node_ips=NODE, pod_cidr=POD_CIDR, era=era, random_fully=True)
    with netns.netns() as ns:
        netns.ensure_nfacct(ns, NFACCT)
        netns.restore(ns, text, ipv6=ipv6, backend=backend, test=True)


@pytest.mark.root
@needs_netns
@pytest.mark.parametrize("era", ["current", "ext", "xlb"])
@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_full_dump_is_what_the_kernel_prints(era: str, ipv6: bool) -> None:
    """Loading the full dump and saving it back changes nothing, and kube-proxy's restore text loaded by
    itself is printed exactly as the full dump prints those chains: the canonical form is the kernel's."""
    if ipv6:
        kwargs: dict = {"node_ips": ["2001:db8::2"], "pod_cidr": "fd00:10:244::/56", "ipv6": True}
        services = sample_services_v6()
    else:
        kwargs = {"node_ips": NODE, "pod_cidr": POD_CIDR}
        services = sample_services()
    full = render(services, era=era, **kwargs)
    fragment = render(services, era=era, full_dump=False, **kwargs)
    with netns.netns() as ns:
        netns.ensure_nfacct(ns, NFACCT)
        netns.restore(ns, full, ipv6=ipv6)
        assert strip_comments(netns.save(ns, ipv6=ipv6)) == strip_comments(full)
    with netns.netns() as ns:
        netns.ensure_nfacct(ns, NFACCT)
        if era == "xlb":
            netns.restore(ns, "*nat\n:KUBE-MARK-DROP - [0:0]\nCOMMIT\n", ipv6=ipv6)
        netns.restore(ns, fragment, ipv6=ipv6, noflush=True)
        saved = chains_of(netns.save(ns, ipv6=ipv6))
    expected = chains_of(full)
    for key, lines in saved.items():
        if lines:
            assert lines == expected[key], key


# ------------------------------------------------------------------------------------------------ samples

SAMPLES = Path(__file__).resolve().parents[1] / "sample_dumps"


def test_sample_dumps_are_current() -> None:
    """Every sample is what make_samples renders (the kernel's save adds only its header lines), and
    scenarios.json describes every file and rebuilds the same Services."""
    from bench.make_samples import dump_text, scenarios

    described = json.loads((SAMPLES / "scenarios.json").read_text())
    readme = (SAMPLES / "README.md").read_text()
    for sc in scenarios():
        saved = (SAMPLES / sc.file).read_text()
        assert strip_comments(saved) == strip_comments(dump_text(sc)), f"{sc.file} is stale: make_samples"
        assert sc.file in described and f"`{sc.file}`" in readme
        entry = described[sc.file]
        if entry["kube_proxy"]:
            rebuilt = [ServiceSpec.from_dict(s) for s in entry["services"]]
            assert render(rebuilt, node_ips=entry["node_ips"], pod_cidr=entry["pod_cidr"], era=entry["era"],
                          ipv6=entry["family"] == "IPv6", **entry["render_options"],
                          extra=sc.options.get("extra", "")) == dump_text(sc)
    split = (SAMPLES / "legacy-split-nft.txt").read_text()
    assert split.rstrip().endswith("use iptables-legacy-save to see them") and "KUBE-SERVICES" not in split


def test_expected_service_ports_name_the_declared_chains() -> None:
    import re

    from bench.make_samples import dump_text, scenarios
    from bench.synth import expected_service_ports

    for sc in scenarios():
        if sc.handwritten:
            continue
        declared = set(re.findall(r"^:(KUBE-(?:SVC|SVL|EXT|FW|XLB)-\w+)", dump_text(sc), re.M))
        ports = expected_service_ports(sc.services, ipv6=sc.ipv6, era=sc.options.get("era", "current"))
        assert declared == {c for p in ports for c in p["chains"].values()}, sc.file


def test_fb_backends_sample_is_the_spec_example() -> None:
    text = (SAMPLES / "nodeport-fb-backends.txt").read_text()
    assert "-d 10.101.234.168/32 -p tcp -m comment --comment \"default/fb-backends:ka-port cluster IP\" " \
           "-m tcp --dport 5001" in text
    assert "--dport 30904" in text and "--to-destination 10.244.1.7:8001" in text
    assert "--to-destination 10.244.2.3:8001" in text
    assert "--dport 32488" in text and "--dport 32461" in text and "10.106.199.236/32" in text
