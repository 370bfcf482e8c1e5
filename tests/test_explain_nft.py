"""explain on a node in nftables mode says what differs from iptables mode: the targetPort used on a ClusterIP is
refused at once by kube-proxy's own cluster-ips-check (not a hang, and not "a host firewall's rule"), and an
address of the service CIDR no Service has is dropped by kube-proxy (tests/test_trace_kernel_nft.py sees the
kernel do both)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.synth import PortSpec, ServiceSpec
from bench.synth_nft import render_nft
from iptrace.cli import main
from tests.conftest import SAMPLES

NFT = str(SAMPLES / "nodeport-fb-backends-nft.nft")


def explain(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["explain", NFT, "--node-ip", "192.168.49.2", *args])
    if "json" in args:
        return result.exit_code, result.output
    return result.exit_code, " ".join(result.output.split())  # the text wraps its paragraphs


def test_the_target_port_on_the_cluster_ip_is_refused_by_kube_proxy() -> None:
    code, text = explain("--dst", "10.101.234.168:8001")
    assert code == 3
    assert text.startswith("10.101.234.168:8001/tcp is refused")
    assert "[target-port-on-service-ip, error]" in text and "blocked-by-rule" not in text
    assert "In nftables mode kube-proxy rejects it itself (cluster-ips-check" in text
    assert "'connection refused' at once, not a hang" in text and "not kube-proxy's" not in text
    code, out = explain("--dst", "10.101.234.168:8001", "--src", "pod", "-o", "json")
    doc = json.loads(out)
    assert [d["id"] for d in doc["diagnoses"]] == ["target-port-on-service-ip"]
    assert {o["verdict"] for o in doc["trace"]["outcomes"]} == {"REJECT"}
    assert doc["trace"]["outcomes"][0]["decided_by"]["chain"] == "cluster-ips-check"


def test_a_host_firewall_dropping_every_endpoint_after_dnat_is_blocked_by_rule_only(tmp_path: Path) -> None:
    # kube-proxy DNATed the packet; a host table's forward chain drops it: never "not-forwarded".
    ruleset = tmp_path / "host-firewall.nft"
    ruleset.write_text(Path(NFT).read_text() + "table inet host {\n\tchain forward {\n\t\ttype filter hook forward "
                       "priority filter; policy drop;\n\t\tip daddr 10.244.0.0/16 drop\n\t}\n}\n")
    result = CliRunner().invoke(main, ["explain", str(ruleset), "--node-ip", "192.168.49.2", "--dst",
                                       "10.101.234.168:5001", "--src", "pod", "-o", "json"])
    doc = json.loads(result.output)
    assert result.exit_code == 3 and [d["id"] for d in doc["diagnoses"]] == ["blocked-by-rule"]
    assert doc["diagnoses"][0]["summary"].endswith("stops the packet after it was sent to 10.244.1.7:8001 or "
                                                   "10.244.2.3:8001")


def test_an_unallocated_service_address_is_dropped_by_kube_proxy() -> None:
    code, text = explain("--dst", "10.96.0.99:80", "--src", "external")
    assert code == 3 and "[not-a-service-address, error]" in text and "blocked-by-rule" not in text
    assert "In nftables mode kube-proxy drops it itself (cluster-ips-check" in text


def test_the_readmes_nftables_tour_is_what_iptrace_prints(monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (SAMPLES.parent / "README.md").read_text()
    blocks = re.findall(r"```\n\$ (iptrace [^\n]*-nft\.nft[^\n]*)\n(.*?)```", readme, re.S)
    assert len(blocks) == 3, [b[0] for b in blocks]
    monkeypatch.chdir(SAMPLES.parent)  # the README's paths are relative to the repository
    for command, shown in blocks:
        result = CliRunner().invoke(main, shlex.split(command)[1:])
        assert result.exit_code in (0, 3), result.output
        assert result.output == shown, command


def test_a_node_port_on_localhost_says_kube_proxy_does_not_open_it_there() -> None:
    # kube-proxy's nftables mode accepts NodePorts only on @nodeport-ips (192.168.49.2): 127.0.0.1:30904 is no
    # NodePort at all, not "a rule placed before kube-proxy's diverts it".
    code, text = explain("--dst", "127.0.0.1:30904", "--src", "node")
    assert code == 3 and "[node-port-not-on-address, error]" in text and "not-forwarded" not in text
    assert "NodePorts on 192.168.49.2" in text and "use 192.168.49.2:30904" in text
    # Near-miss: the node address @nodeport-ips holds is a NodePort that works.
    code, text = explain("--dst", "192.168.49.2:30904", "--src", "node")
    assert code == 0 and "node-port-not-on-address" not in text


def test_no_endpoints_evidence_names_the_services_element() -> None:
    """nftables mode's REJECT of a Service without endpoints is its element of @no-endpoint-services (naming the
    Service) then the shared reject-chain: the evidence showed only `line 117: reject`, which names nothing."""
    result = CliRunner().invoke(main, ["explain", str(SAMPLES / "no-endpoints-nft.nft"), "--dst", "10.98.7.10:8080",
                                       "--src", "external", "-o", "json"])
    (d,) = [d for d in json.loads(result.stdout)["diagnoses"] if d["id"] == "no-endpoints"]
    assert [e["line"] for e in d["evidence"]] == [32, 117], d["evidence"]
    assert 'comment "default/orders:http" : goto reject-chain' in d["evidence"][0]["rule"]


@pytest.mark.parametrize(("dump", "role"), [("etp-local-with-endpoints-nft.nft", "externalIP or LoadBalancer IP"),
                                            ("etp-local-with-endpoints.txt", "LoadBalancer IP")])
def test_an_address_nftables_mode_cannot_tell_is_named_as_either(dump: str, role: str) -> None:
    """nftables mode writes an LB IP without source ranges exactly like an externalIP (services says so): explain
    called the LoadBalancer's 192.168.49.240 'its externalIP'; it now names both, as the rules allow."""
    result = CliRunner().invoke(main, ["explain", str(SAMPLES / dump), "--dst", "192.168.49.240:31080",
                                       "--src", "external", "--node-ip", "192.168.49.2", "-o", "json"])
    (d,) = json.loads(result.stdout)["diagnoses"]
    assert d["summary"] == ("31080 is the nodePort of ingress-nginx/ingress-nginx-controller:http, used on its "
                            f"{role} 192.168.49.240"), d["summary"]


def _services_of(dump: str, tmp_path: Path) -> Path:
    """The scenario's Service objects as `kubectl get svc -A -o json` lists them."""
    from bench.make_samples_nft import scenarios
    from tests.test_compare import service_object

    (scenario,) = [s for s in scenarios() if s.file == dump]
    path = tmp_path / "services.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List",
                                "items": [service_object(s) for s in scenario.services]}))
    return path


@pytest.mark.parametrize(("dump", "answer"), [("etp-local-with-endpoints-nft.nft", "200 (this node runs 1 local"),
                                              ("etp-local-no-local-endpoints-nft.nft", "503 (this node runs no")])
def test_a_health_check_node_port_named_by_the_api_is_said_to_be_one(dump: str, answer: str, tmp_path: Path) -> None:
    """nftables mode writes no rule for a healthCheckNodePort: explain said 'no Service has nodePort 32101/tcp'
    (a warning) even when the Service objects given name 32101 as ingress-nginx-controller's health check."""
    args = ["explain", str(SAMPLES / dump), "--dst", "192.168.49.2:32101", "--src", "external", "-o", "json"]
    result = CliRunner().invoke(main, [*args, "--cluster", str(_services_of(dump, tmp_path))])
    assert result.exit_code == 0, result.output
    (d,) = [d for d in json.loads(result.stdout)["diagnoses"] if d["id"] == "not-a-service-address"]
    assert d["severity"] == "info", d
    assert d["summary"] == ("32101 is the health-check nodePort of ingress-nginx/ingress-nginx-controller: "
                            "kube-proxy's health server answers it, not a pod"), d["summary"]
    assert answer in d["detail"] and "nftables mode writes no rule for it" in d["detail"], d["detail"]
    assert "no Service has nodePort" not in d["detail"] and d["evidence"] == []
    # Near-miss: without the Service objects the rules cannot tell; the warning says what it might be.
    (d,) = json.loads(CliRunner().invoke(main, args).stdout)["diagnoses"]
    assert d["severity"] == "warning" and "no Service has nodePort 32101/tcp" in d["summary"], d
    assert "nftables mode writes no rule for a healthCheckNodePort" in d["detail"], d["detail"]
    # … nor is another port of the node a health check because the API names one.
    result = CliRunner().invoke(main, ["explain", str(SAMPLES / dump), "--dst", "192.168.49.2:32102", "-o", "json",
                                       "--src", "external", "--cluster", str(_services_of(dump, tmp_path))])
    (d,) = [d for d in json.loads(result.stdout)["diagnoses"] if d["id"] == "not-a-service-address"]
    assert d["severity"] == "warning" and "health-check" not in d["summary"], d


@pytest.mark.parametrize("form", ["list", "transaction"])
def test_a_map_element_is_evidence_in_one_form(form: str) -> None:
    """One answer showed line 38 of the listing twice: as the trace's step `element ip kube-proxy service-ips
    { 10.101.234.168 . tcp . 5001 : goto service-… }` and, as a diagnosis's evidence, the listing's bare
    `10.101.234.168 . tcp . 5001 : goto service-…,` (which names neither map nor table). Both are the step's."""
    from bench.make_samples_nft import scenarios

    (scenario,) = [s for s in scenarios() if s.file == "nodeport-fb-backends-nft.nft"]
    text = (SAMPLES / scenario.file).read_text() if form == "list" else scenario.transaction()
    result = CliRunner().invoke(main, ["explain", "-", "--dst", "10.101.234.168:5001", "--dst", "10.101.234.168:8001",
                                       "--node-ip", "192.168.49.2", "--src", "external", "-o", "json"], input=text)
    healthy, target_port = json.loads(result.stdout)
    texts: dict[int, set[str]] = {}
    for answer in (healthy, target_port):
        for d in answer["diagnoses"]:
            for ev in d["evidence"]:
                texts.setdefault(ev["line"], set()).add(ev["rule"])
        for outcome in answer["trace"]["outcomes"]:
            for step in outcome["path"]:
                texts.setdefault(step["line"], set()).add(step["rule"])
    element = ("element ip kube-proxy service-ips { 10.101.234.168 . tcp . 5001 : goto "
               "service-SX2ZK5HK-default/fb-backends/tcp/ka-port }")
    (line,) = [n for n, found in texts.items() if element in found]
    assert texts[line] == {element}, texts[line]
    assert [ev["rule"] for d in target_port["diagnoses"] for ev in d["evidence"] if ev["line"] == line] == [element]


def test_a_line_of_several_elements_reads_as_them_and_other_lines_as_written() -> None:
    from iptrace import dataplanes

    text = (SAMPLES / "nodeport-fb-backends-nft.nft").read_text()
    _, ruleset = dataplanes.load(text, source="fb.nft")
    lines = text.split("\n")
    first = next(n for n, line in enumerate(lines, 1) if "elements = {" in line and "cluster-ips" in lines[n - 4])
    listed = lines[first - 1].split("{", 1)[1].strip().rstrip(",")
    shown = ruleset.evidence_text(first)
    assert shown == f"element ip kube-proxy cluster-ips {{ {listed} }}", (shown, lines[first - 1])
    rest = lines[first].strip().rstrip("}").strip()  # (the list's last line, closing it)
    assert ruleset.evidence_text(first + 1) == f"element ip kube-proxy cluster-ips {{ {rest} }}"
    for n in (first - 1, first - 3):
        assert ruleset.evidence_text(n) == ruleset.line_text(n) == lines[n - 1].strip()
    jump = next(n for n, line in enumerate(lines, 1) if "jump services" in line)
    assert ruleset.evidence_text(jump) == f"rule ip kube-proxy nat-output {lines[jump - 1].strip()}"


@pytest.mark.parametrize("form", ["list", "transaction", "json"])
def test_an_endpoints_rules_as_evidence_name_their_chain(form: str) -> None:
    """A hairpin's evidence is its endpoint chain's rules: a listing's `meta l4proto tcp dnat to 10.244.1.7:8001`
    alone named no chain (iptables' `-A KUBE-SEP-… -j DNAT` does), nor did JSON input's. Each is named as nft
    names a rule, `rule ip kube-proxy endpoint-… STATEMENT`, in every input form; a transaction's line is its
    own `add rule ip kube-proxy endpoint-… …`."""
    from bench.make_samples_nft import scenarios

    (scenario,) = [s for s in scenarios() if s.file == "nodeport-fb-backends-nft.nft"]
    text = {"list": (SAMPLES / scenario.file).read_text(), "transaction": scenario.transaction(),
            "json": (SAMPLES / "nodeport-fb-backends-nft.json").read_text()}[form]
    result = CliRunner().invoke(main, ["explain", "-", "--dst", "10.101.234.168:5001", "--src", "10.244.1.7",
                                       "-o", "json"], input=text)
    (hairpin,) = [d for d in json.loads(result.stdout)["diagnoses"] if d["id"] == "hairpin"]
    chain = "ip kube-proxy endpoint-3U7NEUMW-default/fb-backends/tcp/ka-port__10.244.1.7/8001"
    named = "add rule" if form == "transaction" else "rule"
    assert [e["rule"] for e in hairpin["evidence"]] == [f"{named} {chain} ip saddr 10.244.1.7 jump mark-for-masquerade",
                                                        f"{named} {chain} meta l4proto tcp dnat to 10.244.1.7:8001"]


@pytest.mark.parametrize("form", ["list", "transaction", "json"])
def test_the_rule_that_refuses_names_its_chain_in_every_input_form(form: str) -> None:
    """The targetPort on the ClusterIP, refused by cluster-ips-check: its evidence quoted `ip daddr @cluster-ips
    reject …` alone in a listing, a transaction and JSON input (by handle) alike, where the trace's path names the
    chain beside it. Each names its table and chain as nft does a rule (a transaction's line is its own)."""
    from bench.make_samples_nft import scenarios

    (scenario,) = [s for s in scenarios() if s.file == "nodeport-fb-backends-nft.nft"]
    text = {"list": (SAMPLES / scenario.file).read_text(), "transaction": scenario.transaction(),
            "json": (SAMPLES / "nodeport-fb-backends-nft.json").read_text()}[form]
    result = CliRunner().invoke(main, ["explain", "-", "--dst", "10.101.234.168:8001", "--src", "pod", "-o", "json"],
                                input=text)
    (target,) = [d for d in json.loads(result.stdout)["diagnoses"] if d["id"] == "target-port-on-service-ip"]
    named = "add rule" if form == "transaction" else "rule"
    assert [e["rule"] for e in target["evidence"] if "@cluster-ips" in e["rule"]] == [
        f'{named} ip kube-proxy cluster-ips-check ip daddr @cluster-ips reject comment "Reject traffic to invalid '
        'ports of ClusterIPs"'], target["evidence"]


@pytest.mark.parametrize("dst", ["10.101.234.168:8001", "10.101.234.168:30904", "10.101.234.168:5001/udp",
                                 "10.106.199.236:8080", "10.101.234.168:5002"])
def test_nft_json_input_quotes_the_same_evidence_as_its_listing(dst: str) -> None:
    """The same node's `nft -j list ruleset` and `nft list ruleset`: the targetPort, a nodePort or another
    protocol on a ClusterIP were explained alike, but from JSON without the Service's `element ip kube-proxy
    service-ips { … }` (its way in, found by input line, which JSON has none of): no evidence at all but the
    reject. Now both quote the same rules and elements (JSON's rules by kernel handle, not line)."""
    def evidence(dump: str) -> list[tuple[str, list[str]]]:
        result = CliRunner().invoke(main, ["explain", str(SAMPLES / dump), "--dst", dst, "--node-ip", "192.168.49.2",
                                           "-o", "json"])
        return [(d["id"], [e["rule"] for e in d["evidence"]]) for answer in json.loads(result.stdout)["sources"].values()
                for d in answer["diagnoses"]]

    listing = evidence("nodeport-fb-backends-nft.nft")
    assert any(rule.startswith("element ip kube-proxy service-ips {") for _, rules in listing for rule in rules)
    assert evidence("nodeport-fb-backends-nft.json") == listing


@pytest.mark.parametrize("dump", sorted(p.name for p in SAMPLES.glob("*-nft.nft")))
def test_every_rule_as_evidence_names_its_chain(dump: str) -> None:
    """evidence_text names the table and chain of every rule of a listing, in any table (kube-proxy's, iptables-
    nft's, a CNI's): only an endpoint chain's rules and kube-proxy's DNATs were named, so a firewall chain's `ip
    saddr != 198.51.100.0/24 drop` or reject-chain's `reject` stood alone, naming no Service, where iptables'
    evidence is `-A KUBE-FW-… …`. Other lines (elements aside) read as listed, and line_text (what audit quotes and
    compares across nodes) never changes."""
    from iptrace import dataplanes

    text = (SAMPLES / dump).read_text()
    _, ruleset = dataplanes.load(text, source=dump)
    lines = text.split("\n")
    named = 0
    for n, listed in enumerate(lines, 1):
        shown = ruleset.evidence_text(n)
        assert ruleset.line_text(n) == listed.strip()
        if shown is None or shown.startswith("element "):
            continue
        block = next((x.split() for x in reversed(lines[:n - 1]) if x.strip().startswith(("chain ", "set ", "map "))),
                     ["", ""])
        chain = block[1] if block[0] == "chain" else ""
        rule = listed.strip() not in ("", "}") and not listed.strip().startswith(
            ("chain ", "type ", "policy ", "comment ", "set ", "map ", "table "))
        table = " ".join(next(x.split()[1:3] for x in reversed(lines[:n]) if x.startswith("table ")))
        if chain and rule:
            assert shown == f"rule {table} {chain} {listed.strip()}", (n, shown)
            named += 1
        else:
            assert shown == listed.strip(), (n, shown)
    assert named


def test_the_apis_findings_beside_explains_evidence_read_alike(tmp_path: Path) -> None:
    """explain --cluster of an nft node whose fb-backends has another nodePort in the API: the port-mismatch
    finding's evidence was the listing's bare `elements = { tcp . 30904 : goto external-…,` while explain's own
    evidence and the trace show that element as `element ip kube-proxy service-nodeports { … }`."""
    from bench.make_samples_nft import scenarios
    from tests.test_compare import service_object

    (scenario,) = [s for s in scenarios() if s.file == "nodeport-fb-backends-nft.nft"]
    objects = [service_object(s) for s in scenario.services]
    (fb,) = [o for o in objects if o["metadata"]["name"] == "fb-backends"]
    fb["spec"]["ports"][0]["nodePort"] = 30905
    cluster = tmp_path / "services.json"
    cluster.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
    result = CliRunner().invoke(main, ["explain", NFT, "--dst", "192.168.49.2:30904", "--src", "external",
                                       "--cluster", str(cluster), "-o", "json"])
    answer = json.loads(result.stdout)
    (finding,) = [d for d in answer["diagnoses"] if d["id"] == "port-mismatch"]
    element = ("element ip kube-proxy service-nodeports { tcp . 30904 : goto "
               "external-SX2ZK5HK-default/fb-backends/tcp/ka-port }")
    assert [e["rule"] for e in finding["evidence"]] == [element], finding["evidence"]
    assert element in {s["rule"] for o in answer["trace"]["outcomes"] for s in o["path"]}


def test_a_source_outside_the_ranges_is_dropped_by_the_firewall_chains_own_rule() -> None:
    """nftables mode drops it by a rule of the firewall-… chain (`ip saddr != RANGES drop`); explain said the
    packet "falls through the Service's firewall chain", as an iptables KUBE-FW chain lets it."""
    result = CliRunner().invoke(main, ["explain", str(SAMPLES / "dual-stack-nft.nft"), "--dst", "203.0.113.50:80",
                                       "--src", "192.0.2.9"])
    assert result.exit_code == 3
    text = " ".join(result.output.split())
    assert "[source-range-blocked, error]" in text and "falls through" not in text
    assert ("192.0.2.9 is not in those ranges, so the Service's firewall chain "
            "firewall-SUSTUHLJ-default/web/tcp/http drops it: the connection hangs until it times out.") in text
    assert ("Evidence: line 178: rule ip kube-proxy firewall-SUSTUHLJ-default/web/tcp/http ip saddr != "
            "198.51.100.0/24 drop") in text


def test_a_source_outside_the_ranges_of_a_service_without_endpoints_is_told_it_is_dropped(tmp_path: Path) -> None:
    """nftables mode filters a LoadBalancer IP by its source ranges before @no-endpoint-services: a client
    outside them is dropped by the firewall-… chain (a timeout), one inside is refused (the kernel does both:
    198.18.0.2 timed out, 198.18.64.5 was refused, on this transaction loaded with `nft -f`). explain said
    no-endpoints there, "this packet leaves the node itself, so it is not rewritten and it goes on to … unchanged",
    for a pod, the node and an outside client alike."""
    services = [ServiceSpec("apps", "api", "10.96.10.102", [PortSpec("http", 80, node_port=32738, target_port=8080)],
                            type="LoadBalancer", lb_ips=["203.0.123.102"], lb_source_ranges=["198.51.100.0/24"])]
    ruleset = tmp_path / "ruleset.nft"
    ruleset.write_text(render_nft(services, node_ips=["192.168.49.2"], pod_cidr="10.244.0.0/16",
                                  service_cidrs=["10.96.0.0/12"], form="list"))
    for src in ("pod", "node", "external", "192.0.2.9"):
        result = CliRunner().invoke(main, ["explain", str(ruleset), "--dst", "203.0.123.102:80", "--src", src,
                                           "-o", "json"])
        assert result.exit_code == 3, result.output
        doc = json.loads(result.stdout)
        assert {o["verdict"] for o in doc["trace"]["outcomes"]} == {"DROP"}
        (diagnosis,) = doc["diagnoses"]
        assert diagnosis["id"] == "source-range-blocked", diagnosis
        assert "drops it: the connection hangs until it times out" in diagnosis["detail"]
        assert diagnosis["fix"].endswith(
            "; from there it is refused as long as the Service has no ready endpoints: check "
            "`kubectl -n apps get endpointslices -l kubernetes.io/service-name=api`")
    inside = CliRunner().invoke(main, ["explain", str(ruleset), "--dst", "203.0.123.102:80", "--src", "198.51.100.7",
                                       "-o", "json"])
    doc = json.loads(inside.stdout)
    assert {o["verdict"] for o in doc["trace"]["outcomes"]} == {"REJECT"}
    assert [d["id"] for d in doc["diagnoses"]] == ["no-endpoints"]
    assert "connection refused' at once" in doc["diagnoses"][0]["detail"]


def test_an_ipv6_question_to_an_ipv4_only_listing_says_what_it_means_if_the_listing_is_whole() -> None:
    # The file may be `nft list table ip kube-proxy` or the node's whole ruleset: the advice was to "give the
    # node's whole `nft list ruleset`" even when it already was that.
    result = CliRunner().invoke(main, ["explain", NFT, "--dst", "[fd00::1]:80"])
    assert result.exit_code == 1
    assert result.output.splitlines()[0] == (
        f"Error: fd00::1 is an IPv6 address but {NFT} has no ip6 or inet table: if it is the node's whole `nft list "
        "ruleset`, kube-proxy (nftables mode) programs no IPv6 Services on this node; else give that")
