"""`iptrace parse` of an iptables dump: the summary (text) and the whole model (JSON). Returns data or str; no I/O."""

from __future__ import annotations

from typing import Any

from iptrace.iptables.era import Era
from iptrace.iptables.model import LoadWarning, Option, Rule, Ruleset


def _option_json(opt: Option) -> dict[str, Any]:
    return {"name": opt.name, "values": list(opt.values), "negated": opt.negated}


def rule_to_json(rule: Rule) -> dict[str, Any]:
    target = rule.target
    return {
        "line": rule.line,
        "counters": list(rule.counters) if rule.counters else None,
        "text": rule.to_save(),
        "matches": [{"module": m.module, "implicit": m.implicit, "options": [_option_json(o) for o in m.options]}
                    for m in rule.matches],
        "target": None if target is None else {"name": target.name, "goto": target.goto,
                                               "options": [_option_json(o) for o in target.options]},
    }


def era_to_json(era: Era) -> dict[str, Any]:
    return {"mode": era.name, "version_hint": era.version_hint, "evidence": list(era.evidence),
            "legacy_tables_present": era.legacy_tables_present, "nft_tables_present": era.nft_tables_present}


def ruleset_to_json(ruleset: Ruleset, era: Era) -> dict[str, Any]:
    return {
        "source": ruleset.source,
        "family": ruleset.family,
        "format": "iptables-save" if ruleset.format == "save" else "iptables -S",
        "kube_proxy": era_to_json(era),
        "rule_count": ruleset.rule_count,
        "tables": [
            {"name": t.name, "line": t.line, "comments": list(t.comments), "chains": [
                {"name": c.name, "builtin": c.builtin, "policy": c.policy,
                 "counters": list(c.counters) if c.counters else None, "line": c.line,
                 "rules": [rule_to_json(r) for r in c.rules]}
                for c in t.chains]}
            for t in ruleset.tables],
        "trailer": list(ruleset.trailer),
        "warnings": [{"line": w.line, "message": w.message} for w in ruleset.warnings],
        "skipped": [{"line": w.line, "message": w.message} for w in ruleset.skipped],
    }


def render_parse_summary(ruleset: Ruleset, era: Era) -> str:
    out: list[str] = []
    fmt = "iptables-save" if ruleset.format == "save" else "iptables -S listing"
    out.append(f"{ruleset.source}: {fmt}, {ruleset.family}, {len(ruleset.tables)} table"
               f"{'s' if len(ruleset.tables) != 1 else ''}, {_rules(ruleset.rule_count)}")
    hint = f" ({era.version_hint})" if era.version_hint else ""
    out.append(f"kube-proxy: {era.name}{hint}")
    for reason in era.evidence:
        out.append(f"  - {reason}")
    for t in ruleset.tables:
        builtin = [c for c in t.chains if c.builtin]
        user = [c for c in t.chains if not c.builtin]
        out.append("")
        out.append(f"*{t.name}  {_rules(t.rule_count)}, {len(builtin)} built-in and {len(user)} user "
                   f"chain{'s' if len(user) != 1 else ''}")
        for c in builtin:
            out.append(f"  {c.name:<12} policy {c.policy:<6} {_rules(len(c.rules)):>12}")
        if user:
            groups: dict[str, list[int]] = {}
            for c in user:
                groups.setdefault(_chain_family(c.name), []).append(len(c.rules))
            for family, counts in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
                label = family if len(counts) == 1 and not family.endswith("*") else f"{family} ×{len(counts)}"
                out.append(f"  {label:<32} {_rules(sum(counts)):>12}")
    out += _listed("warnings", ruleset.warnings)
    out += _listed("skipped with --lenient", ruleset.skipped)
    return "\n".join(out) + "\n"


def _listed(title: str, items: tuple[LoadWarning, ...], limit: int = 50) -> list[str]:
    if not items:
        return []
    out = ["", f"{title} ({len(items)}):"]
    out += [f"  line {w.line}: {w.message}" for w in items[:limit]]
    if len(items) > limit:
        out.append(f"  … and {len(items) - limit} more (see -o json)")
    return out


def _rules(n: int) -> str:
    return f"{n} rule" if n == 1 else f"{n} rules"


_FAMILY_PREFIXES = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-SEP-", "KUBE-EXT-", "KUBE-FW-", "KUBE-XLB-", "cali-",
                    "CILIUM_", "DOCKER-ISOLATION-STAGE-", "KUBE-ROUTER-", "WEAVE-NPC-", "f2b-")


def _chain_family(name: str) -> str:
    for prefix in _FAMILY_PREFIXES:
        if name.startswith(prefix):
            return prefix + "*"
    return name
