"""kube/facts.py: the per-shape readers the service view uses agree with the model's own reading of each rule
(`Rule.matches`, `Rule.target`), on every sample dump and on rules written to trip them up (quotes, escapes,
negations, host prefixes, a module the view does not model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from iptrace.iptables import load
from iptrace.iptables.facts import RuleFacts, read
from iptrace.iptables.model import Rule

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_FILES = sorted((ROOT / "sample_dumps").glob("*.txt"))

# RuleFacts attribute -> the match option that sets it (its first occurrence decides).
_MATCH_FIELDS = {"src": "-s", "dst": "-d", "proto": "-p", "in_iface": "-i", "out_iface": "-o", "dport": "--dport",
                 "comment": "--comment", "src_type": "--src-type", "dst_type": "--dst-type",
                 "probability": "--probability", "mode": "--mode", "every": "--every", "seconds": "--seconds",
                 "ctstate": "--ctstate", "mark": "--mark"}
_TARGET_FIELDS = {"to_destination": "--to-destination", "reject_with": "--reject-with", "to_ports": "--to-ports"}


def _expected(rule: Rule) -> dict[str, object]:
    """What the view should read, from the model's slower, general reading of the rule."""
    out: dict[str, object] = {}
    for match in rule.matches:
        for opt in match.options:
            name = "-s" if opt.name == "--source" else "-d" if opt.name == "--destination" else opt.name
            for attr, option in _MATCH_FIELDS.items():
                if option == name and attr not in out and opt.values:
                    value = opt.values[0]
                    if attr in ("src", "dst") and value.endswith(("/32", "/128")) and '"' not in value:
                        value = value[: value.rindex("/")]
                    out[attr] = value
                    out[attr + "_neg"] = opt.negated
    target = rule.target
    if target is not None:
        out["target"] = target.name
        out["goto"] = target.goto
        for attr, option in _TARGET_FIELDS.items():
            opt = target.option(option)
            if opt is not None and opt.values:
                out[attr] = opt.values[0]
    return out


def _check(rule: Rule) -> None:
    facts = read(rule)
    assert isinstance(facts, RuleFacts)
    assert facts.line == rule.line and facts.rule is rule
    for attr, value in _expected(rule).items():
        if attr.endswith("_neg") and not hasattr(RuleFacts, attr):
            continue
        assert getattr(facts, attr) == value, (attr, rule.to_save())


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: p.name)
def test_reader_agrees_with_the_model_on_sample_dumps(path: Path) -> None:
    ruleset = load(path.read_text())
    rules = [r for t in ruleset.tables for c in t.chains for r in c.rules if r.shape is not None]
    assert rules
    for rule in rules:
        _check(rule)


DUMP = """*nat
:PREROUTING ACCEPT [0:0]
:KUBE-SVC-X - [0:0]
:KUBE-SEP-A - [0:0]
:KUBE-MARK-MASQ - [0:0]
-A KUBE-SVC-X ! -s 10.244.0.0/16 -d 10.96.0.1/32 -p tcp -m comment --comment "ns/a:http cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-X -m comment --comment "ns/a:http -> 10.0.0.1:80" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-A
-A KUBE-SVC-X -m comment --comment "say \\"hi\\" -> 10.0.0.1:80" -j KUBE-SEP-A
-A KUBE-SVC-X -s 10.0.0.7/32 -m comment --comment "two words" -g KUBE-SEP-A
-A KUBE-SVC-X -m recent --rcheck --seconds 10800 --reap --name KUBE-SEP-A --mask 255.255.255.255 --rsource -j KUBE-SEP-A
-A KUBE-SVC-X -m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-SEP-A
-A KUBE-SEP-A -p tcp -m comment --comment "ns/a:http" -m tcp -j DNAT --to-destination 10.0.0.1:80
-A PREROUTING -d 10.96.0.2 -j KUBE-SVC-X
COMMIT
"""


def test_reader_on_quotes_escapes_flags_and_unknown_modules() -> None:
    ruleset = load(DUMP)
    rules = [r for c in ruleset.table("nat").chains for r in c.rules]  # type: ignore[union-attr]
    for rule in rules:
        _check(rule)
    masq, split, escaped, goto, affinity, ipset, dnat, jump = (read(r) for r in sorted(rules, key=lambda r: r.line))
    assert masq.src_neg and masq.src == "10.244.0.0/16" and masq.dst == "10.96.0.1" and not masq.dst_neg
    assert split.mode == "random" and split.probability == "0.50000000000" and split.target == "KUBE-SEP-A"
    assert escaped.comment == 'say "hi" -> 10.0.0.1:80'
    assert goto.goto and goto.src == "10.0.0.7" and goto.comment == "two words"
    assert affinity.recent_check and affinity.seconds == "10800" and affinity.unknown is None
    assert ipset.unknown == "--match-set"  # the first thing the view does not model
    assert dnat.target == "DNAT" and dnat.to_destination == "10.0.0.1:80" and dnat.proto == "tcp"
    assert jump.dst == "10.96.0.2" and jump.target == "KUBE-SVC-X"
