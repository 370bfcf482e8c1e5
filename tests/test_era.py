"""Naming the kube-proxy that wrote an iptables dump: kube-proxy 1.1's first iptables proxier, which set its one
masquerade mark (0x4d415351) in the endpoint chains and masqueraded it in POSTROUTING, before 1.2's
KUBE-MARK-MASQ/KUBE-POSTROUTING."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.synth import EndpointSpec, PortSpec, ServiceSpec, render
from iptrace.cli import main
from iptrace.iptables import load
from iptrace.iptables.era import EXT, FIRST, NONE, XLB, no_rules_warnings, proxy_mode
from iptrace.iptables.layout import read_layout
from iptrace.layout import PARTIAL_DUMP
from tests.dumps import build_view

# As kube-proxy 1.1's syncProxyRules wrote a ClusterIP Service with two endpoints (the shape of the 2015 dump in
# kubernetes#18259).
FIRST_PROXIER = """*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-SEP-AAAAAAAAAAAAAAAA - [0:0]
:KUBE-SEP-BBBBBBBBBBBBBBBB - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-CCCCCCCCCCCCCCCC - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -m mark --mark 0x4d415351 -j MASQUERADE
-A KUBE-SEP-AAAAAAAAAAAAAAAA -s 172.20.37.2/32 -m comment --comment "default/web:" -j MARK --set-xmark 0x4d415351/0xffffffff
-A KUBE-SEP-AAAAAAAAAAAAAAAA -p tcp -m comment --comment "default/web:" -m tcp -j DNAT --to-destination 172.20.37.2:80
-A KUBE-SEP-BBBBBBBBBBBBBBBB -s 172.20.38.2/32 -m comment --comment "default/web:" -j MARK --set-xmark 0x4d415351/0xffffffff
-A KUBE-SEP-BBBBBBBBBBBBBBBB -p tcp -m comment --comment "default/web:" -m tcp -j DNAT --to-destination 172.20.38.2:80
-A KUBE-SERVICES -d 10.0.0.10/32 -p tcp -m comment --comment "default/web: cluster IP" -m tcp --dport 80 -j KUBE-SVC-CCCCCCCCCCCCCCCC
-A KUBE-SVC-CCCCCCCCCCCCCCCC -m comment --comment "default/web:" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-AAAAAAAAAAAAAAAA
-A KUBE-SVC-CCCCCCCCCCCCCCCC -m comment --comment "default/web:" -j KUBE-SEP-BBBBBBBBBBBBBBBB
COMMIT
"""


def test_kube_proxy_1_1_is_named_and_analysed_as_iptables_mode() -> None:
    ruleset = load(FIRST_PROXIER)
    mode = proxy_mode(ruleset)
    assert (mode.name, mode.mode, mode.version_hint) == (FIRST, "iptables", "1.1")
    assert any("0x4d415351" in e and "KUBE-MARK-MASQ" in e for e in mode.evidence)
    (port,) = build_view(ruleset).services
    assert sorted((e.ip, e.port, e.probability) for e in port.endpoints) == [
        ("172.20.37.2", 80, 0.5), ("172.20.38.2", 80, 0.5)]


@pytest.mark.parametrize("change", [
    # 1.2 and later mark through KUBE-MARK-MASQ (it kept the old rule until it cleaned it up)
    lambda t: t.replace(":KUBE-NODEPORTS - [0:0]\n", ":KUBE-NODEPORTS - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n"),
    # another mark masqueraded in POSTROUTING is not kube-proxy 1.1's
    lambda t: t.replace("--mark 0x4d415351 -j MASQUERADE", "--mark 0x4000/0x4000 -j MASQUERADE"),
    # the mark matched but not masqueraded
    lambda t: t.replace("--mark 0x4d415351 -j MASQUERADE", "--mark 0x4d415351 -j ACCEPT"),
])
def test_only_its_own_signs_name_it(change) -> None:
    assert proxy_mode(load(change(FIRST_PROXIER))).name == XLB


def test_the_2015_dump_from_an_issue_thread(corpus: Path) -> None:
    dump = corpus / "realworld" / "019-issue-k8s-18259-2015-old-masq-mark.txt"
    if not dump.exists():
        pytest.skip(f"{dump} absent")
    assert proxy_mode(load(dump.read_text(), lenient=True)).name == FIRST


CLUSTER_IPS_ONLY = [ServiceSpec("default", "web", "10.96.10.20", [PortSpec("http", 80, target_port=8080)],
                                endpoints=[EndpointSpec("10.244.1.5", 8080), EndpointSpec("10.244.2.6", 8080)])]


@pytest.mark.parametrize(("era", "named", "hint"), [
    # Since KEP-3178 (~1.24) the cluster IP's masquerade rule is the first rule of KUBE-SVC (k3s of July 2022,
    # corpus 012, was named 'KUBE-XLB era (≤1.23, or newer …)'); before, it sat in KUBE-SERVICES before the jump.
    ("current", EXT, "~1.29+"),
    ("ext", EXT, "~1.24-1.28"),
    ("xlb", XLB, "≤1.23"),
])
def test_cluster_ips_only_are_named_by_where_the_cluster_ip_masquerade_rule_is(era: str, named: str,
                                                                                hint: str) -> None:
    def dump(**options: object) -> str:
        # without KUBE-PROXY-FIREWALL, as 1.24 wrote (corpus 012): the chains alone do not tell
        text = render(CLUSTER_IPS_ONLY, node_ips=["192.168.49.2"], era=era, **options)  # type: ignore[arg-type]
        return "".join(line for line in text.splitlines(keepends=True) if "KUBE-PROXY-FIREWALL" not in line)

    for masquerade_all in (False, True):
        mode = proxy_mode(load(dump(pod_cidr="10.244.0.0/16", masquerade_all=masquerade_all)))
        assert (mode.name, mode.version_hint) == (named, hint), masquerade_all
    # Without a masquerade rule (no local-traffic detector) nothing tells.
    bare = proxy_mode(load(dump(pod_cidr=None)))
    assert (bare.name, bare.version_hint) == (XLB, "≤1.23, or newer with no NodePort or LoadBalancer Service to tell")


@pytest.mark.parametrize(("name", "shows"), [
    # issue k8s#89632: filter only (cut), FORWARD DROP and kube-proxy's KUBE-FORWARD
    ("024-issue-k8s-89632-2020-forward-drop-filter.txt", "filter KUBE-FORWARD) but no nat table"),
    # issue k8s#37628: the paste starts in KUBE-NODEPORTS (jumps to KUBE-SVC chains) and ends before KUBE-SERVICES
    ("033-issue-k8s-37628-blank-line-mangled.txt", "nat KUBE-NODEPORTS, nat KUBE-SVC-FHMNESDVRD4ZENCX"),
])
def test_a_cut_dump_of_an_iptables_mode_node_is_not_called_a_node_without_kube_proxy(
        corpus: Path, name: str, shows: str) -> None:
    dump = corpus / "realworld" / name
    if not dump.exists():
        pytest.skip(f"{dump} absent")
    mode = proxy_mode(load(dump.read_text(), lenient=True))
    assert (mode.name, mode.mode) == (PARTIAL_DUMP, "none")
    assert shows in mode.evidence[-1]
    warnings = no_rules_warnings(mode)
    assert "whole `iptables-save`" in warnings[0] and not any("not in iptables mode" in w for w in warnings)


# kubelet's chains and a kube-proxy chain (as a paste cut before KUBE-SERVICES leaves them), in nat or filter.
KUBELET_ONLY = """*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-MARK-DROP - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
-A INPUT -j KUBE-FIREWALL
COMMIT
"""


@pytest.mark.parametrize(("change", "name"), [
    (lambda t: t, NONE),  # kubelet's chains alone say nothing of kube-proxy
    (lambda t: t.replace(":KUBE-KUBELET-CANARY - [0:0]\n", ":KUBE-KUBELET-CANARY - [0:0]\n:KUBE-FORWARD - [0:0]\n"),
     PARTIAL_DUMP),
    (lambda t: t.replace(":KUBE-POSTROUTING - [0:0]\n", ":KUBE-POSTROUTING - [0:0]\n:KUBE-SEP-AAAAAAAAAAAAAAAA - [0:0]\n"),
     PARTIAL_DUMP),
    # a jump to a kube-proxy chain whose declaration the paste lost
    (lambda t: t.replace("-A INPUT -j KUBE-FIREWALL\n", "-A INPUT -j KUBE-FIREWALL\n-A INPUT -j KUBE-PROXY-FIREWALL\n"),
     PARTIAL_DUMP),
    # the dump's own warning names another backend: that is where kube-proxy's rules are, not a cut paste
    (lambda t: t.replace(":KUBE-KUBELET-CANARY - [0:0]\n", ":KUBE-KUBELET-CANARY - [0:0]\n:KUBE-FORWARD - [0:0]\n")
     + "# Warning: iptables-legacy tables present, use iptables-legacy-save to see them\n", NONE),
])
def test_only_a_chain_kube_proxy_alone_writes_makes_a_dump_partial(change, name: str) -> None:
    mode = proxy_mode(load(change(KUBELET_ONLY), lenient=True))
    assert mode.name == name, mode.evidence


def test_explain_of_a_cut_paste_asks_for_the_whole_dump_instead_of_blaming_kube_proxy(corpus: Path) -> None:
    # The poster of k8s#37628 said NodePorts work: "kube-proxy is not running in iptables mode, every nodePort
    # connection fails here" was wrong, and its fix (check kube-proxy) did not apply to that node.
    dump = corpus / "realworld" / "033-issue-k8s-37628-blank-line-mangled.txt"
    if not dump.exists():
        pytest.skip(f"{dump} absent")
    result = CliRunner().invoke(main, ["explain", str(dump), "--lenient", "--dst", "10.0.0.1:30500", "-o", "json"])
    (diagnosis,) = json.loads(result.stdout)["diagnoses"]
    assert (diagnosis["id"], diagnosis["severity"]) == ("no-kube-proxy-rules", "warning")
    assert "kube-proxy runs in iptables mode" in diagnosis["detail"] and "fails here" not in diagnosis["detail"]
    assert "whole `iptables-save`" in diagnosis["fix"]


def test_a_dump_cut_inside_a_table_warns_that_missing_ways_in_may_be_cut_off() -> None:
    # kubernetes#18259 and #34563 (corpus 019, 021) end mid-table, before KUBE-SERVICES' rules: every Service port
    # shows "no way in" and NodePorts "not reachable", which the node never said.
    cut = FIRST_PROXIER[:FIRST_PROXIER.index("-A KUBE-SERVICES")]
    layout = read_layout(load(cut, lenient=True))
    assert [w for w in layout.warnings if "the part that was cut" in w] == [
        "the dump ends inside table nat (no COMMIT): a Service port with no way in, endpoints missing, or "
        "NodePorts said not reachable may only have lost their rules in the part that was cut"]
    assert not [w for w in read_layout(load(FIRST_PROXIER)).warnings if "the part that was cut" in w]
