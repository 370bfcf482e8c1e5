"""`iptrace parse` of an nftables ruleset: the summary (text) and the whole model (JSON-ready data), with
kube-proxy's mode and era per IP family. Written by the parser's author as iptrace/render/nft_parse.py and moved
here (render may not import a dataplane). Returns data or str; no I/O."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from iptrace.layout import ProxyMode
from iptrace.nftables.era import proxy_mode
from iptrace.nftables.model import Chain, LoadWarning, Rule, Ruleset, Set, Table

FORMAT_NAMES = {"nft-list": "nft list ruleset", "nft-json": "nft -j list ruleset",
                "nft-transaction": "kube-proxy nft transaction"}
HOOK_ORDER = ("ingress", "prerouting", "input", "forward", "output", "postrouting", "egress")
KUBE_PROXY_TABLE = "kube-proxy"
# kube-proxy's per-Service chains (service-ULMVA6XW-ns1/svc1/tcp/p80) and iptables' (KUBE-SVC-…), grouped.
_GROUP_RE = re.compile(r"((?:service|local|external|endpoint|firewall|affinity|svc)-)[A-Z2-7]{8}-"
                       r"|(KUBE-(?:SVC|SVL|SEP|EXT|FW|XLB)-|cali-|CILIUM_)")
# Fields whose tuple values are concatenations (`a . b`); elsewhere a tuple is a list of things.
_VALUE_FIELDS = frozenset({"key", "data", "right", "value", "addr", "port", "low", "high", "left"})


def _listed(title: str, items: tuple[LoadWarning, ...], limit: int = 50) -> list[str]:
    if not items:
        return []
    out = ["", f"{title} ({len(items)}):"]
    out += [f"  line {w.line}: {w.message}" if w.line else f"  {w.message}" for w in items[:limit]]
    if len(items) > limit:
        out.append(f"  … and {len(items) - limit} more (see -o json)")
    return out


def modes(ruleset: Ruleset) -> dict[str, ProxyMode]:
    """kube-proxy's mode and era for each IP family the ruleset answers for."""
    return {family: proxy_mode(ruleset, family) for family in ruleset.families}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def has_kube_proxy(ruleset: Ruleset) -> bool:
    return any(t.name == KUBE_PROXY_TABLE and t.family in ("ip", "ip6") for t in ruleset.tables)


def _group(name: str) -> str:
    m = _GROUP_RE.match(name)
    return (m.group(1) or m.group(2)) + "*" if m else name


def render_nft_summary(ruleset: Ruleset) -> str:
    tables = ruleset.tables
    sets = [s for t in tables for s in t.sets]
    maps = sum(1 for s in sets if s.is_map)
    elements = sum(len(s.elements) for s in sets)
    out = [f"{ruleset.source}: {FORMAT_NAMES.get(ruleset.format, ruleset.format)}, {_plural(len(tables), 'table')}, "
           f"{_plural(ruleset.rule_count, 'rule')}, {_plural(len(sets) - maps, 'set')} and {_plural(maps, 'map')} "
           f"({_plural(elements, 'element')})"]
    found = modes(ruleset)
    if not any(m.has_rules for m in found.values()):
        out.append("kube-proxy: no kube-proxy table (table ip kube-proxy / ip6 kube-proxy): not in nftables mode")
    for family, mode in found.items():
        if not mode.has_rules:
            continue
        hint = f" ({mode.version_hint})" if mode.version_hint else ""
        out.append(f"kube-proxy {family}: nftables mode, {mode.name}{hint}")
        out += [f"  - {reason}" for reason in mode.evidence]
    for t in tables:
        out += ["", *_table_summary(t)]
    out += _listed("warnings", ruleset.warnings)
    out += _listed("skipped with --lenient", ruleset.skipped)
    return "\n".join(out) + "\n"


def _columns(rows: list[list[str]], indent: str = "    ") -> list[str]:
    """Rows of cells, each column as wide as its widest cell (the last one as it is)."""
    if not rows:
        return []
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in rows]


def _table_summary(t: Table) -> list[str]:
    base = [c for c in t.chains if c.base is not None]
    maps = sum(1 for s in t.sets if s.is_map)
    flags = f" (flags {','.join(t.flags)})" if t.flags else ""
    out = [f"table {t.label}{flags}: {_plural(len(t.chains), 'chain')} ({len(base)} base), "
           f"{_plural(t.rule_count, 'rule')}, {_plural(len(t.sets) - maps, 'set')}, {_plural(maps, 'map')}, "
           f"{_plural(sum(len(s.elements) for s in t.sets), 'element')}"]
    if base:
        order = {h: i for i, h in enumerate(HOOK_ORDER)}
        rows = []
        for c in sorted(base, key=lambda c: (order.get(c.base.hook, 99), c.base.priority)):
            b = c.base
            device = f" device {','.join(b.devices)}" if b.devices else ""
            rows.append([c.name, b.type, b.hook + device, f"priority {b.priority}", f"policy {b.policy}",
                         _plural(len(c.rules), "rule")])
        out += ["  base chains, in hook and priority order:", *_columns(rows)]
    groups: dict[str, list[int]] = {}
    for c in t.chains:
        if c.base is None:
            groups.setdefault(_group(c.name), []).append(len(c.rules))
    if groups:
        rows = [[f"{label} ×{len(counts)}" if len(counts) > 1 or label.endswith("*") else label,
                 _plural(sum(counts), "rule")]
                for label, counts in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))]
        out += ["  chains:", *_columns(rows)]
    if t.sets:
        # kube-proxy's per-endpoint affinity sets are one row
        kinds: dict[tuple[str, str, str], list[int]] = {}
        for s in t.sets:
            typ = " . ".join(s.key_type) + (f" : {' . '.join(s.data_type)}" if s.data_type else "")
            kinds.setdefault(("map" if s.is_map else "set", _group(s.name), typ), []).append(len(s.elements))
        rows = [[f"{kind} {label}" + (f" ×{len(counts)}" if label.endswith("*") else ""), typ,
                 _plural(sum(counts), "element")] for (kind, label, typ), counts in kinds.items()]
        out += ["  sets and maps:", *_columns(rows)]
    return out


# ---------------------------------------------------------------------------------------------------- JSON


def _json(v: Any, *, as_value: bool) -> Any:
    if isinstance(v, tuple):
        items = [_json(x, as_value=as_value) for x in v]
        return {"concat": items} if as_value else items
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        out: dict[str, Any] = {"type": re.sub(r"(?<!^)(?=[A-Z])", "_", type(v).__name__).lower()}
        for f in dataclasses.fields(v):
            if f.name.startswith("_"):
                continue
            out[f.name] = _json(getattr(v, f.name), as_value=f.name in _VALUE_FIELDS)
        return out
    return v


def rule_to_json(rule: Rule) -> dict[str, Any]:
    return {"line": rule.line, "handle": rule.handle, "text": rule.text, "comment": rule.comment,
            "items": [_json(i, as_value=False) for i in rule.items]}


def chain_to_json(c: Chain) -> dict[str, Any]:
    base = None if c.base is None else {"type": c.base.type, "hook": c.base.hook, "priority": c.base.priority,
                                         "policy": c.base.policy, "devices": list(c.base.devices)}
    return {"name": c.name, "line": c.line, "handle": c.handle, "base": base, "comment": c.comment,
            "rules": [rule_to_json(r) for r in c.rules]}


def set_to_json(s: Set) -> dict[str, Any]:
    return {"name": s.name, "kind": "map" if s.is_map else "set", "line": s.line, "handle": s.handle,
            "key_type": list(s.key_type), "data_type": list(s.data_type) if s.data_type else None,
            "typeof": s.typeof, "flags": list(s.flags), "timeout_ms": s.timeout_ms,
            "gc_interval_ms": s.gc_interval_ms, "size": s.size, "policy": s.policy, "comment": s.comment,
            "counter": s.counter, "auto_merge": s.auto_merge,
            "elements": [_json(e, as_value=False) for e in s.elements]}


def nft_ruleset_to_json(ruleset: Ruleset) -> dict[str, Any]:
    return {
        "source": ruleset.source,
        "format": ruleset.format,
        "families": list(ruleset.families),
        "kube_proxy_table": has_kube_proxy(ruleset),
        "kube_proxy": {family: {"mode": m.mode, "era": m.name, "version_hint": m.version_hint,
                                "evidence": list(m.evidence)} for family, m in modes(ruleset).items()},
        "rule_count": ruleset.rule_count,
        "tables": [{"family": t.family, "name": t.name, "line": t.line, "handle": t.handle, "flags": list(t.flags),
                    "comment": t.comment, "chains": [chain_to_json(c) for c in t.chains],
                    "sets": [set_to_json(s) for s in t.sets],
                    "objects": [{"kind": o.kind, "name": o.name, "body": list(o.body), "line": o.line}
                                for o in t.objects]}
                   for t in ruleset.tables],
        "warnings": [{"line": w.line, "message": w.message} for w in ruleset.warnings],
        "skipped": [{"line": w.line, "message": w.message} for w in ruleset.skipped],
    }
