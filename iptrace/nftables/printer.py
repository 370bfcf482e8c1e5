"""Ruleset → text in the layout `nft list ruleset` prints, which `nft -f` loads back (the kernel-oracle tests
hold it to that) and `iptrace parse --save` shows. Pure: returns str."""

from __future__ import annotations

from iptrace.nftables import render
from iptrace.nftables.model import Chain, NamedObject, Ruleset, Set, Table
from iptrace.nftables.values import format_duration, quote


def save(ruleset: Ruleset) -> str:
    return "".join(table(t) for t in ruleset.tables)


def table(t: Table) -> str:
    head = [f"table {t.family} {render.name(t.name)} {{"]
    if t.flags:
        head.append(f"\tflags {','.join(t.flags)}")
    if t.comment is not None:
        head.append(f"\tcomment {quote(t.comment)}")
    blocks = [_object(o) for o in t.objects] + [_set(s) for s in t.sets] + [_chain(c, t.family) for c in t.chains]
    return "\n".join(head) + ("\n" if blocks else "") + "\n\n".join(blocks) + "\n}\n"


def _set(s: Set) -> str:
    lines = [f"\t{'map' if s.is_map else 'set'} {render.name(s.name)} {{"]
    if s.typeof is not None:
        lines.append(f"\t\ttypeof {s.typeof}")
    else:
        data = f" : {' . '.join(s.data_type)}" if s.data_type is not None else ""
        lines.append(f"\t\ttype {' . '.join(s.key_type)}{data}")
    if s.policy is not None:
        lines.append(f"\t\tpolicy {s.policy}")
    if s.size is not None:
        lines.append(f"\t\tsize {s.size}")
    if s.flags:
        lines.append(f"\t\tflags {','.join(s.flags)}")
    if s.timeout_ms is not None:
        lines.append(f"\t\ttimeout {format_duration(s.timeout_ms)}")
    if s.gc_interval_ms is not None:
        lines.append(f"\t\tgc-interval {format_duration(s.gc_interval_ms)}")
    if s.auto_merge:
        lines.append("\t\tauto-merge")
    if s.counter:
        lines.append("\t\tcounter")
    if s.comment is not None:
        lines.append(f"\t\tcomment {quote(s.comment)}")
    if s.elements:
        keys, data_types = s.key_type, s.data_type
        lines.append("\t\telements = { " + ",\n\t\t\t     ".join(
            render.element(e, keys, data_types) for e in s.elements) + " }")
    lines.append("\t}")
    return "\n".join(lines)


def _chain(c: Chain, family: str) -> str:
    lines = [f"\tchain {render.name(c.name)} {{"]
    b = c.base
    if b is not None:
        device = ""
        if len(b.devices) == 1:
            device = f" device {quote(b.devices[0])}"
        elif b.devices:
            device = " devices = { " + ", ".join(quote(d) for d in b.devices) + " }"
        prio = render.priority(b.priority, family, b.hook)
        lines.append(f"\t\ttype {b.type} hook {b.hook}{device} priority {prio}; policy {b.policy};")
    if c.comment is not None:
        lines.append(f"\t\tcomment {quote(c.comment)}")
    lines.extend(f"\t\t{render.rule(r, family)}" for r in c.rules)
    lines.append("\t}")
    return "\n".join(lines)


def _object(o: NamedObject) -> str:
    return "\n".join([f"\t{o.kind} {render.name(o.name)} {{", *(f"\t\t{line}" for line in o.body), "\t}"])
