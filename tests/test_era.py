"""Naming the kube-proxy that wrote an iptables dump: kube-proxy 1.1's first iptables proxier, which set its one
masquerade mark (0x4d415351) in the endpoint chains and masqueraded it in POSTROUTING, before 1.2's
KUBE-MARK-MASQ/KUBE-POSTROUTING."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.synth import EndpointSpec, PortSpec, ServiceSpec, render
from iptrace.iptables import load
from iptrace.iptables.era import EXT, FIRST, XLB, proxy_mode
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
