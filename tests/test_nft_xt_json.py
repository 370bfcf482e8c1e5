"""iptables-nft's rules in `nft -j list ruleset`: an xt match appears as its name only. `comment` is the one
whose meaning needs no arguments — it always matches — so a rule `-m comment --comment … -j CHAIN` still jumps.
(The text listing prints such a rule without the comment: ` counter packets 0 bytes 0 jump CNI-HOSTPORT-MASQ`.)
Found while checking the kernel oracle's JSON twin: nftables mode's own rules answer alike from JSON, but every
forwarded packet that reaches iptables-nft's `-A POSTROUTING -m comment … -j CNI-HOSTPORT-MASQ` takes another
path from JSON than from text."""

from __future__ import annotations

import json

from iptrace import dataplanes
from iptrace.dataplane import Packet

RULESET = {"nftables": [
    {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
    {"table": {"family": "ip", "name": "nat", "handle": 1}},
    {"chain": {"family": "ip", "table": "nat", "name": "POSTROUTING", "handle": 1, "type": "nat",
               "hook": "postrouting", "prio": 100, "policy": "accept"}},
    {"chain": {"family": "ip", "table": "nat", "name": "MASQ-ALL", "handle": 2}},
    {"rule": {"family": "ip", "table": "nat", "chain": "POSTROUTING", "handle": 3,
              "expr": [{"xt": {"type": "match", "name": "comment"}}, {"counter": {"packets": 0, "bytes": 0}},
                       {"jump": {"target": "MASQ-ALL"}}]}},
    {"rule": {"family": "ip", "table": "nat", "chain": "MASQ-ALL", "handle": 4,
              "expr": [{"counter": {"packets": 0, "bytes": 0}}, {"masquerade": None}]}},
]}


def test_an_xt_comment_match_always_matches() -> None:
    dataplane, ruleset = dataplanes.load(json.dumps(RULESET), source="xt.json")
    tracer = dataplane.tracer(ruleset, node_ips=["192.0.2.10"])
    (outcome,) = tracer.trace(Packet("203.0.113.1", "198.51.100.7", 80)).outcomes
    assert outcome.masquerade and [s.chain for s in outcome.path] == ["POSTROUTING", "MASQ-ALL"]
