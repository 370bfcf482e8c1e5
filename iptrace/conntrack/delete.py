"""`conntrack -D` commands that delete exactly the given entries and nothing else.

conntrack deletes every entry that matches all the options it is given. A filter is only offered when, in the
table that was read, it matches exactly the entries to delete; and a filter on a reply source (an endpoint) is
only offered when the rules choose that endpoint for none of the flows that were traced, so that a flow the
rules start later cannot match it either. Otherwise each entry gets its own command naming its whole original
tuple, which identifies one entry (per zone) in the kernel's table.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from iptrace.conntrack.model import ConntrackEntry
from iptrace.dataplane import join_host_port


@dataclass(frozen=True, slots=True)
class DeleteFilter:
    """The options of one `conntrack -D` (None: not given)."""

    family: str
    proto: str
    orig_dst: str
    orig_dport: int | None
    orig_src: str | None = None
    orig_sport: int | None = None
    reply_src: str | None = None
    reply_sport: int | None = None
    zone: int | None = None

    def matches(self, e: ConntrackEntry) -> bool:
        """What conntrack -D would do with this entry: every given option must be equal."""
        o, r = e.original, e.reply
        return (e.family == self.family and e.proto == self.proto and o.dst == self.orig_dst
                and _same(self.orig_dport, o.dport) and _same(self.orig_src, o.src)
                and _same(self.orig_sport, o.sport) and _same(self.reply_src, r.src)
                and _same(self.reply_sport, r.sport) and _same(self.zone, e.zone or 0))

    def command(self) -> str:
        words = ["conntrack", "-D"]
        if self.family == "ipv6":
            words += ["-f", "ipv6"]
        words += ["-p", self.proto]
        for option, value in (("--orig-src", self.orig_src), ("--orig-dst", self.orig_dst),
                              ("--orig-port-src", self.orig_sport), ("--orig-port-dst", self.orig_dport),
                              ("--reply-src", self.reply_src), ("--reply-port-src", self.reply_sport),
                              ("--zone", self.zone)):
            if value is not None:
                words += [option, str(value)]
        return " ".join(words)


def _same(wanted: object, value: object) -> bool:
    return wanted is None or wanted == value


def _exact(f: DeleteFilter, targets: Collection[ConntrackEntry], universe: Sequence[ConntrackEntry]) -> bool:
    return {e.line for e in universe if f.matches(e)} == {e.line for e in targets}


def plan_deletion(targets: Sequence[ConntrackEntry], universe: Sequence[ConntrackEntry], *,
                  still_chosen: Collection[str] = (), orig_src: str | None = None) -> tuple[DeleteFilter, ...]:
    """The fewest filters that delete exactly `targets` out of `universe` (every entry the table holds for the
    targets' original destinations). `still_chosen`: destinations (ip:port) the rules choose today for some
    traced flow; `orig_src`: the question was about this client only, so every filter names it."""
    groups: dict[tuple[str, str, str, int | None, str, int | None], list[ConntrackEntry]] = {}
    for e in targets:
        key = (e.family, e.proto, e.original.dst, e.original.dport, e.reply.src, e.reply.sport)
        groups.setdefault(key, []).append(e)
    chosen_ips = {d.rsplit(":", 1)[0].strip("[]") for d in still_chosen}
    out: list[DeleteFilter] = []
    by_endpoint: dict[tuple[str, str, str, int | None, str], list[ConntrackEntry]] = {}
    for (family, proto, dst, dport, rsrc, _), entries in groups.items():
        by_endpoint.setdefault((family, proto, dst, dport, rsrc), []).extend(entries)
    for (family, proto, dst, dport, rsrc), entries in by_endpoint.items():
        coarse = DeleteFilter(family, proto, dst, dport, orig_src, reply_src=rsrc)
        if rsrc not in chosen_ips and _exact(coarse, entries, universe):
            out.append(coarse)
            continue
        for (fam, pro, d, dp, rs, rsp), same_port in groups.items():
            if (fam, pro, d, dp, rs) != (family, proto, dst, dport, rsrc):
                continue
            finer = DeleteFilter(family, proto, dst, dport, orig_src, reply_src=rsrc, reply_sport=rsp)
            if join_host_port(rs, rsp or 0) not in still_chosen and _exact(finer, same_port, universe):
                out.append(finer)
                continue
            out += [one(e) for e in same_port]
    return tuple(out)


def one(e: ConntrackEntry) -> DeleteFilter:
    """The filter of exactly this entry: its whole original tuple (and its zone when it has one)."""
    o, r = e.original, e.reply
    return DeleteFilter(e.family, e.proto, o.dst, o.dport, o.src, o.sport, r.src, r.sport,
                        e.zone if e.zone else None)
