"""`meta random` matches (iptables-nft's form of `-m statistic --mode random`) split the walk with their exact
share, and an iptables-mode node's own `nft list ruleset` is said to be one (the kernel's side of both:
tests/test_trace_kernel_mode_split.py)."""

from __future__ import annotations

import json
import random
from fractions import Fraction
from pathlib import Path

import pytest
from click.testing import CliRunner

from iptrace.cli import main
from iptrace.dataplane import Packet
from iptrace.nftables import load
from iptrace.nftables.chance import _submasks_below, chance
from iptrace.nftables.model import Binop, Match, Meta
from iptrace.nftables.walk import Tracer

SAMPLE = Path(__file__).resolve().parent.parent / "sample_dumps" / "mode-split-nft.nft"


def test_submasks_below_counts_as_brute_force_does() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        mask, t = rng.getrandbits(9), rng.randint(-3, 600)
        assert _submasks_below(mask, t) == sum(1 for v in range(512) if v & ~mask == 0 and v < t), (mask, t)


@pytest.mark.parametrize(("op", "right", "share"), [
    ("<", 1073741824, Fraction(1, 2)),  # --probability 0.5
    ("<", 715827883, Fraction(715827883, 2**31)),  # --probability 0.33333333349
    ("<=", 0, Fraction(1, 2**31)), (">=", 0, Fraction(1)), ("<", 0, Fraction(0)), (">", 2**31 - 1, Fraction(0)),
    ("==", 5, Fraction(1, 2**31)), ("!=", 5, 1 - Fraction(1, 2**31)), ("==", 2**31, Fraction(0)),
])
def test_the_share_of_a_masked_random_match(op: str, right: int, share: Fraction) -> None:
    found = chance(Match(Binop("&", Meta("random"), 2**31 - 1), op, right))
    assert found is not None and Fraction(found.num, found.den) == share


def test_an_unmasked_random_and_other_matches() -> None:
    found = chance(Match(Meta("random"), ">", 2**32 - 2))
    assert found is not None and Fraction(found.num, found.den) == Fraction(1, 2**32)
    assert chance(Match(Meta("mark"), "<", 5)) is None
    assert chance(Match(Binop("|", Meta("random"), 1), "<", 5)) is None


STATISTIC = """table ip nat {
	chain PREROUTING {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr 198.19.0.20 tcp dport 80 jump KUBE-SVC-X
	}
	chain KUBE-SVC-X {
		meta random & 2147483647 < 715827883 counter packets 0 bytes 0 jump KUBE-SEP-A
		meta random & 2147483647 < 1073741824 counter packets 0 bytes 0 jump KUBE-SEP-B
		counter packets 0 bytes 0 jump KUBE-SEP-C
	}
	chain KUBE-SEP-A {
		meta l4proto tcp dnat to 198.18.128.20:8080
	}
	chain KUBE-SEP-B {
		meta l4proto tcp dnat to 198.18.128.21:8080
	}
	chain KUBE-SEP-C {
		meta l4proto tcp dnat to 198.18.128.22:8080
	}
}
"""


def test_statistic_rules_split_with_iptables_shares() -> None:
    trace = Tracer(load(STATISTIC)).trace(Packet("203.0.113.1", "198.19.0.20", 80))
    shares = {o.destination: o.exact_probability for o in trace.outcomes}
    first = Fraction(715827883, 2**31)
    assert shares == {"198.18.128.20:8080": first, "198.18.128.21:8080": (1 - first) / 2,
                      "198.18.128.22:8080": (1 - first) / 2}
    assert not [a for a in trace.assumptions if "random" in a]


def _iptables_mode_only() -> str:
    """The sample's listing without kube-proxy's nftables-mode table: an iptables-mode node's own listing."""
    text = SAMPLE.read_text()
    return text[:text.index("table ip kube-proxy {")]


def test_an_iptables_mode_nodes_listing_is_said_to_be_one(tmp_path: Path) -> None:
    dump = tmp_path / "node.nft"
    dump.write_text(_iptables_mode_only())
    args = [str(dump), "--node-ip", "192.168.49.2", "--dst", "10.101.234.168:5001", "-o", "json"]
    traced = CliRunner().invoke(main, ["trace", *args])
    assert traced.exit_code == 0, traced.output
    outcomes = {o["destination"]: o["probability"] for o in json.loads(traced.stdout)["outcomes"]}
    assert outcomes == {"10.244.1.4:8001": 0.5, "10.244.2.6:8001": 0.5}
    explained = CliRunner().invoke(main, ["explain", *args])
    assert explained.exit_code == 0, explained.output
    said = {d["id"]: d for d in json.loads(explained.stdout)["diagnoses"]}["no-kube-proxy-rules"]
    assert said["severity"] == "warning" and "iptables-save" in said["fix"]
    assert "every ClusterIP and nodePort connection fails" not in said["detail"]
    services = CliRunner().invoke(main, ["services", str(dump), "--node-ip", "192.168.49.2"])
    assert "kube-proxy runs in iptables mode on this node" in services.output and "iptables-save" in services.output
