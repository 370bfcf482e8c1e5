"""`conntrack -D` commands that delete exactly the given entries and nothing else.

conntrack deletes every entry that matches all the options it is given. A filter is only offered when, in the
table that was read, it matches exactly the entries to delete; and a filter on a reply source (an endpoint) is
only offered when the rules choose that endpoint for none of the flows that were traced, so that a flow the
rules start later cannot match it either. Otherwise each entry gets its own command naming its whole original
tuple, which identifies one entry (per zone) in the kernel's table.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, NamedTuple

from iptrace.conntrack.table import FlowGroup
from iptrace.dataplane import join_host_port

if TYPE_CHECKING:
    from iptrace.conntrack.model import ConntrackEntry


# (Records here are NamedTuples: frozen values as a frozen dataclass is, made ~6x cheaper when the module is imported,
# which `explain --conntrack` does every run.)
class DeleteFilter(NamedTuple):
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

    def matches_flows(self, g: FlowGroup) -> bool:
        """The same for a group, for a filter that names no source port and no zone (a group has one of each
        entry's other fields)."""
        assert self.orig_sport is None and self.zone is None
        return (g.family == self.family and g.proto == self.proto and g.dst == self.orig_dst
                and _same(self.orig_dport, g.dport) and _same(self.orig_src, g.src)
                and _same(self.reply_src, g.reply_src) and _same(self.reply_sport, g.reply_sport))

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


def _exact(f: DeleteFilter, targets: Sequence[FlowGroup], universe: Sequence[FlowGroup]) -> bool:
    return {n for g in universe if f.matches_flows(g) for n in g.lines} == {n for g in targets for n in g.lines}


def plan_deletion(targets: Sequence[FlowGroup], universe: Sequence[FlowGroup],
                  entry_at: Callable[[int], ConntrackEntry], *, still_chosen: Collection[str] = (),
                  orig_src: str | None = None) -> tuple[DeleteFilter, ...]:
    """The fewest filters that delete exactly the entries of `targets` out of `universe` (every flow the table
    holds to the targets' protocol, destination and port: every filter names those). `still_chosen`:
    destinations (ip:port) the rules choose today for some traced flow; `orig_src`: the question was about
    this client only, so every filter names it. `entry_at` builds an entry when one needs its own command."""
    by_endpoint: dict[tuple[str, str, str, int | None, str], list[FlowGroup]] = {}
    for g in targets:
        by_endpoint.setdefault((g.family, g.proto, g.dst, g.dport, g.reply_src), []).append(g)
    chosen_ips = {d.rsplit(":", 1)[0].strip("[]") for d in still_chosen}
    out: list[DeleteFilter] = []
    for (family, proto, dst, dport, rsrc), groups in by_endpoint.items():
        coarse = DeleteFilter(family, proto, dst, dport, orig_src, reply_src=rsrc)
        if rsrc not in chosen_ips and _exact(coarse, groups, universe):
            out.append(coarse)
            continue
        by_port: dict[int | None, list[FlowGroup]] = {}
        for g in groups:
            by_port.setdefault(g.reply_sport, []).append(g)
        for rsport, same_port in by_port.items():
            finer = DeleteFilter(family, proto, dst, dport, orig_src, reply_src=rsrc, reply_sport=rsport)
            if join_host_port(rsrc, rsport or 0) not in still_chosen and _exact(finer, same_port, universe):
                out.append(finer)
            else:
                out += [one(entry_at(n)) for n in sorted(n for g in same_port for n in g.lines)]
    return tuple(out)


def one(e: ConntrackEntry) -> DeleteFilter:
    """The filter of exactly this entry: its whole original tuple (and its zone when it has one)."""
    o, r = e.original, e.reply
    return DeleteFilter(e.family, e.proto, o.dst, o.dport, o.src, o.sport, r.src, r.sport,
                        e.zone if e.zone else None)
