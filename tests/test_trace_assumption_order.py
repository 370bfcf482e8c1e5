"""A trace's assumptions come in the order the packet met them, whichever of its branches met them: the branches
of a draw share the walk up to it and each lists its own in order, but the trace listed them outcome by outcome,
so a rule only the second endpoint's branch meets (here in chain CNI-A, met first) was listed after one both meet
later (in CNI-B). Two rules answered by assumption (`-o` / `oifname` without the node's routes) in two chains."""

from __future__ import annotations

import pytest

from iptrace import dataplanes
from iptrace.dataplane import Packet

IPTABLES = """*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -m statistic --mode random --probability 0.5 -j DNAT --to-destination 10.244.1.5:80
-A PREROUTING -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.244.1.6:80
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:CNI-A - [0:0]
:CNI-B - [0:0]
-A FORWARD -d 10.244.1.6/32 -j CNI-A
-A FORWARD -j CNI-B
-A CNI-A -o weave -j DROP
-A CNI-B -o cni0 -j DROP
COMMIT
"""

NFT = """table ip t {
  chain pre {
    type nat hook prerouting priority -100;
    ip daddr 10.96.0.10 tcp dport 80 dnat to numgen random mod 2 map { 0 : 10.244.1.5, 1 : 10.244.1.6 }
  }
  chain f {
    type filter hook forward priority 0;
    ip daddr 10.244.1.6 jump cni-a
    jump cni-b
  }
  chain cni-a {
    oifname "weave" drop
  }
  chain cni-b {
    oifname "cni0" drop
  }
}
"""


@pytest.mark.parametrize(("text", "first", "second"), [(IPTABLES, "line 17:", "line 18:"),
                                                        (NFT, "line 12:", "line 15:")], ids=["iptables", "nftables"])
def test_assumptions_come_in_the_order_the_packet_met_them(text: str, first: str, second: str) -> None:
    dataplane, ruleset = dataplanes.load(text)
    tracer = dataplane.tracer(ruleset, node_ips=["10.0.0.1"])
    for _ in range(3):  # (the first walk, then walks replayed from memos)
        trace = tracer.trace(Packet("192.168.1.5", "10.96.0.10", 80))
        by_outcome = [[a.split(" ")[0] + " " + a.split(" ")[1] for a in o.assumptions if a.startswith("line ")]
                      for o in trace.outcomes]
        assert sorted(by_outcome, key=len) == [[second], [first, second]], trace.outcomes
        met = [a for a in trace.assumptions if a.startswith("line ")]
        assert [a.split(" ")[0] + " " + a.split(" ")[1] for a in met] == [first, second], trace.assumptions


def test_a_branch_s_own_order_is_kept_where_branches_meet_rules_apart() -> None:
    """Two branches that each meet a rule of their own before a shared one: each own one before the shared."""
    from iptrace.text import met_order

    assert met_order([("c", "x"), ("a", "b", "x"), ("b", "x")], ["first"]) == ["c", "a", "b", "x"]
    assert met_order([("y",), ("x", "y")], []) == ["x", "y"]
    assert met_order([("a", "b"), ("b", "a")], []) == ["a", "b"]  # (met in both orders: as first listed)
    assert met_order([("first", "a")], ["first"]) == ["a"]
