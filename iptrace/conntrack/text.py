"""Entries back to text, as `conntrack -L` prints them (or `-o extended`, or /proc/net/nf_conntrack). The
benchmark synthesizes tables with it and the property tests round-trip through it."""

from __future__ import annotations

import ipaddress

from iptrace.conntrack import vocabulary as v
from iptrace.conntrack.model import ConntrackEntry, FlowTuple

# Entry fields printed before zone= (libnetfilter_conntrack prints mark, secmark, secctx, zone, then the rest).
_BEFORE_ZONE = frozenset({"secmark", "secctx"})


def _address(text: str, expanded: bool) -> str:
    return ipaddress.ip_address(text).exploded if expanded and ":" in text else text


def _flow(t: FlowTuple, expanded: bool) -> list[str]:
    words = [f"src={_address(t.src, expanded)}", f"dst={_address(t.dst, expanded)}"]
    if t.sport is not None:
        words.append(f"sport={t.sport}")
    if t.dport is not None:
        words.append(f"dport={t.dport}")
    words += [f"{k}={value}" for k, value in (*t.fields, *t.counters)]
    return words


def format_entry(entry: ConntrackEntry, *, extended: bool = False, proc: bool = False) -> str:
    """One line. `extended` adds the family (`-o extended`); `proc` writes /proc/net/nf_conntrack's form
    (family first, IPv6 addresses fully expanded)."""
    words: list[str] = []
    if extended or proc:
        words.append(f"{entry.family:<8} {v.FAMILIES[entry.family]}")
    words.append(f"{entry.proto:<8} {entry.proto_number}")
    if entry.timeout is not None:
        words.append(str(entry.timeout))
    if entry.state is not None:
        words.append(entry.state)
    words += _flow(entry.original, proc)
    words += [f"[{f}]" for f in entry.flags if f in v.FLAGS_BETWEEN_TUPLES]
    words += _flow(entry.reply, proc)
    words += [f"[{f}]" for f in entry.flags if f in v.FLAGS_AFTER_REPLY]
    if entry.mark is not None:
        words.append(f"mark={entry.mark}")
    zone_pending = entry.zone is not None
    for key, value in entry.fields:
        if zone_pending and key not in _BEFORE_ZONE:
            words.append(f"zone={entry.zone}")
            zone_pending = False
        words.append(f"{key}={value}")
    if zone_pending:
        words.append(f"zone={entry.zone}")
    words += [f"[{f}]" for f in entry.flags if f.startswith(v.TIMESTAMP_FLAGS)]
    return " ".join(words)


def format_table(entries: list[ConntrackEntry], *, extended: bool = False, trailer: bool = True) -> str:
    """A whole `conntrack -L` listing, with the closing line conntrack writes to stderr (as `2>&1` keeps it)."""
    lines = [format_entry(e, extended=extended) for e in entries]
    if trailer:
        lines.append(f"conntrack v1.4.7 (conntrack-tools): {len(entries)} flow entries have been shown.")
    return "\n".join(lines) + "\n"
