"""Base chains of equal priority on one hook run the newest first (the kernel's nf_hook_entries_grow inserts a
new hook before its equals; tests/test_trace_kernel_nft.py sees it on a real node). A listing shows tables in
the order they were created, so on a node whose kube-proxy started after kubelet (iptables-nft's tables) and
flannel, kube-proxy's chains run before theirs at the same priority — and decide a NodePort that is also a
hostPort."""

from __future__ import annotations

from iptrace import dataplanes
from iptrace.dataplane import Packet
from tests.conftest import SAMPLES

NODE = "192.168.49.2"

OLDER_AND_NEWER = """table ip older {
	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		tcp dport 8080 dnat to 10.0.0.1:80
	}
	chain fwd {
		type filter hook forward priority filter; policy accept;
		tcp dport 80 accept
	}
}
table ip newer {
	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		tcp dport 8080 dnat to 10.0.0.2:80
	}
	chain fwd {
		type filter hook forward priority filter; policy accept;
		tcp dport 80 drop
	}
}
"""


def test_the_newer_of_two_equal_chains_runs_first() -> None:
    dataplane, ruleset = dataplanes.load(OLDER_AND_NEWER, source="order.nft")
    tracer = dataplane.tracer(ruleset, node_ips=[NODE])
    (outcome,) = tracer.trace(Packet("203.0.113.1", "192.0.2.50", 8080)).outcomes
    assert outcome.verdict == "DROP" and outcome.decided_by is not None
    assert outcome.decided_by.table == "ip newer"
    assert [(s.table, s.chain) for s in outcome.path] == [("ip newer", "pre"), ("ip newer", "fwd")]


def test_kube_proxy_runs_before_the_older_tables_of_a_node() -> None:
    dataplane, ruleset = dataplanes.load((SAMPLES / "flannel-and-kube-proxy-nft.nft").read_text(), source="s")
    tracer = dataplane.tracer(ruleset, node_ips=[NODE])
    # From a pod: kube-proxy does not masquerade it, so every postrouting NAT chain is consulted in turn.
    outcome = tracer.trace(Packet("10.244.1.5", "10.101.234.168", 5001)).outcomes[0]
    tables = [s.table for s in outcome.path if s.chain in ("filter-forward", "forward", "nat-postrouting",
                                                           "postrtg", "POSTROUTING")]
    assert tables == ["ip kube-proxy", "ip kube-proxy", "ip flannel-ipv4", "ip kube-proxy", "ip flannel-ipv4",
                      "ip nat"], outcome.path
