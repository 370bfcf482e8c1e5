"""Addresses claimed by several Service ports (two Services listing the same externalIP, kubernetes#69599; an
externalIP that is another Service's ClusterIP, CVE-2020-8554). The rule that comes first in KUBE-SERVICES takes
the packet: explain names every claimant and which one takes it here (address-conflict), services notes it on the
way in, diff warns, and audit reports it per node with the Service port that takes it there.
tests/test_explain_kernel.py has the kernel send the packet where explain says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.synth import EndpointSpec, PortSpec, ServiceSpec, render
from bench.synth_nft import render_nft
from iptrace.cli import main
from iptrace.iptables import load
from iptrace.nftables import load as load_nft
from tests.dumps import explainer

NODE = "192.168.0.10"


def specs(first: str = "blog", second: str = "shop", *, second_port: int = 80, second_proto: str = "TCP",
          capture: bool = False) -> list[ServiceSpec]:
    out = [
        ServiceSpec(first, "web", "10.96.0.20", [PortSpec("http", 80, target_port=8080)], external_ips=["198.18.5.5"],
                    endpoints=[EndpointSpec("10.244.1.5", 8080)]),
        ServiceSpec(second, "web", "10.96.0.21", [PortSpec("http", second_port, second_proto, target_port=9090)],
                    external_ips=["198.18.5.5"], endpoints=[EndpointSpec("10.244.2.6", 9090)]),
        ServiceSpec("default", "kubernetes", "10.96.0.1", [PortSpec("https", 443, target_port=6443)],
                    endpoints=[EndpointSpec(NODE, 6443)]),
    ]
    if capture:
        out.append(ServiceSpec("evil", "mitm", "10.96.0.22", [PortSpec("https", 443, target_port=8443)],
                               external_ips=["10.96.0.1"], endpoints=[EndpointSpec("10.244.3.7", 8443)]))
    return out


def dump(**kwargs: object) -> str:
    return render(specs(**kwargs), node_ips=[NODE], pod_cidr="10.244.0.0/16")  # type: ignore[arg-type]


def conflicts(text: str, dst: str, port: int, *, proto: str = "tcp", nft: bool = False) -> list[object]:
    ruleset = load_nft(text) if nft else load(text)
    report = explainer(ruleset, node_ips=[NODE]).explain(dst, port, proto=proto)
    return [(e.source_kind, d) for e in report.explanations for d in e.diagnoses if d.id == "address-conflict"]


@pytest.mark.parametrize(("first", "second"), [("blog", "shop"), ("shop", "blog")])
def test_two_services_on_one_external_ip_name_both_and_the_one_that_takes_it(first: str, second: str) -> None:
    text = dump(first=first, second=second)
    found = conflicts(text, "198.18.5.5", 80)
    assert [kind for kind, _ in found] == ["pod", "node", "external"]
    winner = "blog/web:http"  # (the synthesizer writes Services in name order: blog's rule comes first)
    loser = "shop/web:http"
    lines = {n for n, line in enumerate(text.splitlines(), 1) if "-d 198.18.5.5/32" in line}
    for _kind, d in found:
        assert d.severity == "error"
        assert d.summary == ("198.18.5.5:80/tcp is claimed by 2 Service ports: blog/web:http (externalIP), "
                             "shop/web:http (externalIP)")
        assert f"here {winner} takes the packet (line {min(lines)})" in d.detail
        assert f"may put {loser} first" in d.detail and "kubernetes#69599" in d.detail
        assert "CVE-2020-8554" not in d.detail
        assert {e.line for e in d.evidence} == lines
        assert "blog/web or shop/web" in d.fix and "DenyServiceExternalIPs" in d.fix


def test_an_external_ip_that_is_another_services_cluster_ip_can_capture_it() -> None:
    (_, d), = conflicts(dump(capture=True), "10.96.0.1", 443)[:1]
    assert "evil/mitm:https (externalIP)" in d.summary and "default/kubernetes:https (ClusterIP)" in d.summary
    assert "evil/mitm:https claims default/kubernetes:https's ClusterIP" in d.detail
    assert "CVE-2020-8554" in d.detail
    assert "of evil/mitm;" in d.fix  # (a ClusterIP cannot move)


@pytest.mark.parametrize("kwargs", [{"second_port": 81}, {"second_proto": "UDP"}])
def test_other_ports_or_protocols_on_one_address_are_no_conflict(kwargs: dict[str, object]) -> None:
    text = dump(**kwargs)
    assert conflicts(text, "198.18.5.5", 80) == []
    ids = [d.id for e in explainer(load(text), node_ips=[NODE]).explain("198.18.5.5", 80).explanations
           for d in e.diagnoses]
    assert set(ids) == {"healthy"}


def test_nftables_mode_holds_one_service_per_map_key_so_there_is_none_to_see() -> None:
    text = render_nft(specs(), node_ips=[NODE], pod_cidr="10.244.0.0/16")
    assert conflicts(text, "198.18.5.5", 80, nft=True) == []


def test_cli_exit_status_and_json() -> None:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "node.txt"
        path.write_text(dump())
        result = CliRunner().invoke(main, ["explain", str(path), "--dst", "198.18.5.5:80", "--src", "pod",
                                           "--node-ip", NODE, "-o", "json"])
    assert result.exit_code == 3, result.output
    doc = json.loads(result.output)
    assert [d["id"] for d in doc["diagnoses"]] == ["address-conflict"]
    assert [e["line"] for e in doc["diagnoses"][0]["evidence"]] == sorted(e["line"] for e in
                                                                         doc["diagnoses"][0]["evidence"])


def _notes(text: str, label: str, address: str) -> list[str]:
    from tests.dumps import build_view

    view = build_view(load(text), node_ips=[NODE])
    (svc,) = [s for s in view.services if s.label == label]
    return [n for e in svc.entries if e.address == address for n in e.notes]


def test_services_says_on_each_claimed_way_in_who_else_claims_it_and_who_takes_it_here() -> None:
    text = dump(capture=True)
    (loser,) = _notes(text, "shop/web:http", "198.18.5.5")
    assert loser.startswith("also claimed by blog/web:http: the first rule for 198.18.5.5:80 wins (here "
                            "blog/web:http's: this way in reaches its pods)")
    assert loser.endswith("(iptrace explain --dst 198.18.5.5:80/tcp)")
    (winner,) = _notes(text, "blog/web:http", "198.18.5.5")
    assert winner.startswith("also claimed by shop/web:http: the first rule for 198.18.5.5:80 wins (here this "
                             "Service port's)")
    (cluster_ip,) = [n for n in _notes(text, "default/kubernetes:https", "10.96.0.1") if "claimed" in n]
    assert cluster_ip.startswith("also claimed by evil/mitm:https")
    assert not [n for n in _notes(text, "shop/web:http", "10.96.0.20") if "claimed" in n]
    assert not [n for n in _notes(dump(second_port=81), "shop/web:http", "198.18.5.5") if "claimed" in n]


def test_the_services_note_names_the_command_as_the_program_was_called(tmp_path: Path) -> None:
    # `kubectl iptrace services` printed the note's command as `iptrace explain …` (its text was not named)
    path = tmp_path / "node.txt"
    path.write_text(dump(capture=True))
    shown = CliRunner().invoke(main, ["services", str(path), "--node-ip", NODE], prog_name="kubectl iptrace").output
    assert "(kubectl iptrace explain --dst 198.18.5.5:80/tcp)" in shown, shown
    assert "(iptrace explain" not in shown


def _swapped(text: str) -> str:
    """The same rules with the two externalIP rules of 198.18.5.5 in the other order (another node, or another
    sync: kube-proxy writes its Services in Go's random map order)."""
    lines = text.splitlines(keepends=True)
    at = [i for i, line in enumerate(lines) if "-d 198.18.5.5/32" in line]
    assert len(at) == 2
    lines[at[0]], lines[at[1]] = lines[at[1]], lines[at[0]]
    return "".join(lines)


@pytest.mark.parametrize("other", ["iptables, the rules in another order", "nftables"])
def test_diff_warns_that_a_shared_address_can_differ_with_nothing_changed(other: str) -> None:
    from iptrace.kube.diff import diff
    from tests.dumps import analysis

    text = dump()
    if other == "nftables":
        b = analysis(load_nft(render_nft(specs(), node_ips=[NODE], pod_cidr="10.244.0.0/16")), node_ips=[NODE])
    else:
        b = analysis(load(_swapped(text)), node_ips=[NODE])
    d = diff(analysis(load(text), node_ips=[NODE]), b)
    assert "shop/web:http" in {c.service for c in d.changed} or "blog/web:http" in {c.service for c in d.changed}
    (warning,) = [w for w in d.warnings if "claimed by several Service ports" in w]
    assert warning.startswith("1 address of changed Service ports is claimed by several Service ports (e.g. "
                              "198.18.5.5:80/tcp: blog/web:http, shop/web:http)")
    # Without the shared address, the same kind of comparison warns of nothing.
    plain = dump(second_port=81)
    assert not diff(analysis(load(plain), node_ips=[NODE]), analysis(load(plain), node_ips=[NODE])).warnings


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_audit_reports_the_conflict_per_node_with_the_service_that_takes_it_there(tmp_path: object,
                                                                                   jobs: str) -> None:
    from pathlib import Path

    root = Path(str(tmp_path))
    (root / "node-a.txt").write_text(dump())
    (root / "node-b.txt").write_text(_swapped(dump()))
    result = CliRunner().invoke(main, ["audit", str(root / "node-a.txt"), str(root / "node-b.txt"),
                                       "--node-ip", NODE, "--jobs", jobs, "-o", "json"])
    assert result.exit_code in (0, 3), result.output
    doc = json.loads(result.output)
    found = {(f["node"], f["service"]): f for f in doc["findings"] if f["id"] == "address-conflict"}
    assert set(found) == {("node-a", "blog/web:http"), ("node-b", "shop/web:http")}
    for (_node, winner), f in found.items():
        assert f["severity"] == "error"
        assert f["summary"] == ("198.18.5.5:80/tcp is claimed by 2 Service ports: blog/web:http (externalIP), "
                                f"shop/web:http (externalIP); on this node {winner} takes it")
        assert [e["rule"] for e in f["evidence"]] and all("198.18.5.5" in e["rule"] for e in f["evidence"])
    # Audits of one node each, merged (`audit --merge`, as shards of a fleet are): the same findings.
    shards = []
    for name in ("node-a", "node-b"):
        shard = CliRunner().invoke(main, ["audit", str(root / f"{name}.txt"), "--node-ip", NODE, "-o", "json"])
        (root / f"{name}.json").write_text(shard.output)
        shards.append(str(root / f"{name}.json"))
    merged = json.loads(CliRunner().invoke(main, ["audit", "--merge", *shards, "-o", "json"]).output)
    assert sorted((f["node"], f["service"], f["summary"]) for f in merged["findings"] if f["id"] == "address-conflict") \
        == sorted((f["node"], f["service"], f["summary"]) for f in found.values())
    # A fleet without shared addresses has none.
    (root / "node-a.txt").write_text(dump(second_port=81))
    result = CliRunner().invoke(main, ["audit", str(root / "node-a.txt"), "--node-ip", NODE, "-o", "json"])
    assert not [f for f in json.loads(result.output)["findings"] if f["id"] == "address-conflict"]


def test_a_load_balancer_whose_source_ranges_fall_through_to_another_shares_its_clients() -> None:
    """The first Service's firewall passes its source ranges and lets the rest fall through to the second's rule:
    each takes some clients on this node."""
    from iptrace.kube.claims import claim_findings
    from tests.dumps import build_view

    specs = [ServiceSpec(ns, "lb", ip, [PortSpec("http", 80, node_port=np, target_port=8080)], type="LoadBalancer",
                         lb_ips=["198.18.7.7"], lb_source_ranges=ranges, endpoints=[EndpointSpec(ep, 8080)])
             for ns, ip, np, ranges, ep in (("alpha", "10.96.0.30", 30030, ["198.51.100.0/24"], "10.244.1.30"),
                                            ("beta", "10.96.0.31", 30031, [], "10.244.2.31"))]
    ruleset = load(render(specs, node_ips=[NODE], pod_cidr="10.244.0.0/16"))
    (finding,) = claim_findings(build_view(ruleset, node_ips=[NODE]), "n", ruleset.line_texts)
    assert finding.summary.endswith("on this node alpha/lb:http and beta/lb:http each take some clients (the first "
                                    "rule that matches a client wins)")
