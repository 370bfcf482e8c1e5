"""Ruleset → iptables-save text, the inverse of `load`: `load(save(r)) == r` and every rule keeps its tokens."""

from __future__ import annotations

from iptrace.iptables.model import Ruleset


def save(ruleset: Ruleset) -> str:
    out: list[str] = []
    for table in ruleset.tables:
        out.extend(table.comments)
        out.append(f"*{table.name}")
        for chain in table.chains:
            packets, octets = chain.counters or (0, 0)
            out.append(f":{chain.name} {chain.policy or '-'} [{packets}:{octets}]")
        for chain in table.chains:
            out.extend(rule.to_save() for rule in chain.rules)
        out.append("COMMIT")
    out.extend(ruleset.trailer)
    return "\n".join(out) + "\n"
