"""What stale conntrack entries mean, why kube-proxy left them and the exact command that removes them: the
prose `explain` (diagnoses) and `audit` (findings) share. Pure: strings from judgements.

kube-proxy's side is mirrored from kubernetes/kubernetes pkg/proxy/conntrack/cleanup.go (CleanStaleEntries:
UDP only; entries to a Service IP:port or NodePort whose reply source is not a serving endpoint are deleted,
after every sync since v1.32) and the issues that describe where it fails (cited in the text so a reader can
follow them up).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from iptrace.conntrack.delete import plan_deletion
from iptrace.conntrack.stale import CURRENT, FINISHED, NOT_DNATED, STALE, UNCHANGED, Judgement
from iptrace.conntrack.table import FlowGroup
from iptrace.dataplane import Decision, Step

if TYPE_CHECKING:
    from iptrace.conntrack.model import ConntrackEntry

STALE_CONNTRACK = "stale-conntrack"
STALE_CONNTRACK_NO_DNAT = "stale-conntrack-no-dnat"
CONNTRACK_HEALTHY = "conntrack-healthy"

_FIRST_PACKET = ("The kernel applies the nat rules to the first packet of a flow only; every later packet follows "
                 "the flow's conntrack entry.")
_NOT_SYNCING = ("it is not running or not syncing (crash-looping, unable to reach the API server, or stopped "
                "while the endpoints changed: kubernetes/kubernetes#125467), or it has not caught up yet")


class Advice:
    """One finding about some entries: what, why, the fix, and what proves it (the entries' lines in the
    conntrack table, and the dump rules that decide these packets today). (A plain slots class: a frozen
    dataclass costs ~0.4 ms to create at import, and advice is read, never compared nor copied.)"""

    __slots__ = ("detail", "fix", "id", "lines", "rules", "severity", "summary")

    def __init__(self, id: str, severity: str, summary: str, detail: str, fix: str,
                 lines: tuple[int, ...], rules: tuple[Step, ...] = ()) -> None:
        self.id = id
        self.severity = severity
        self.summary = summary
        self.detail = detail
        self.fix = fix
        self.lines = lines
        self.rules = rules


def _lines(judgements: Sequence[Judgement]) -> tuple[int, ...]:
    return tuple(sorted(n for j in judgements for n in j.flows.lines))


def _entries(judgements: Sequence[Judgement]) -> int:
    return sum(j.count for j in judgements)


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def _listing(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _counted(judgements: Sequence[Judgement]) -> str:
    """Where these entries go, with how many go to each place when there are several."""
    counts: Counter[str] = Counter()
    for j in judgements:
        counts[j.reaches] += j.count
    if len(counts) == 1:
        return next(iter(counts))
    return _listing([f"{v} ({n})" for v, n in counts.most_common()])


def _now(j: Judgement, dst: str, them: str = "them") -> str:
    """Where the rules send this flow's first packet today."""
    if j.chosen:
        service = f" ({j.service})" if j.service else ""
        return f"the rules now send {them} to {_listing(list(j.chosen))}{service}"
    verdicts = {o.verdict for o in j.trace.outcomes}
    if "REJECT" in verdicts:
        return f"the rules now refuse new flows to {dst} (the Service has no endpoints)"
    if "DROP" in verdicts:
        return f"the rules now drop new flows to {dst}"
    return f"no rule rewrites {dst} any more (the Service or port is gone)"


def _rules(judgements: Sequence[Judgement]) -> tuple[Step, ...]:
    """The dump rules that decide the first judgement's packet today (its DNAT rules, or the rule that drops or
    rejects it)."""
    out: list[Step] = []
    for o in judgements[0].trace.outcomes:
        if o.decided_by is None or o.decided_by.line is None:
            continue
        out += [s for s in o.path if _decided(s, o.decided_by) and s not in out]
    return tuple(out)


def _decided(step: Step, by: Decision) -> bool:
    """Whether `step` is the rule `by` names: by its line, or without one (nft JSON input, where every step's line
    is 0) by its chain and kernel handle."""
    if by.line:
        return step.line == by.line
    return by.handle is not None and (step.table, step.chain, step.handle) == (by.table, by.chain, by.handle)


def _why_udp_left(judgements: Sequence[Judgement], version_hint: str) -> str:
    seen = f" (the rules look like kube-proxy {version_hint})" if version_hint else ""
    text = ("kube-proxy deletes UDP entries whose endpoint is no longer serving (CleanStaleEntries in "
            "pkg/proxy/conntrack/cleanup.go, after every sync since v1.32; on endpoint-removal events before), so "
            f"on this node it did not{seen}: {_NOT_SYNCING}")
    if all(not j.chosen for j in judgements):
        verdicts = {o.verdict for j in judgements for o in j.trace.outcomes}
        if "REJECT" in verdicts:
            text += ("; or it hit kubernetes/kubernetes#139628: since v1.32 it skips Services left with no serving "
                     "endpoint (fixed by kubernetes/kubernetes#139629)")
        elif not verdicts & {"DROP", "DNAT"}:
            text += "; or the Service was deleted, whose entries kube-proxy leaves (kubernetes/kubernetes#141371)"
    return text + "."


def deletion(targets: Sequence[Judgement], universe: Sequence[FlowGroup], entry_at: Callable[[int], ConntrackEntry],
             chosen: Sequence[str], orig_src: str | None) -> list[str]:
    """The `conntrack -D` commands that delete exactly these entries."""
    filters = plan_deletion([j.flows for j in targets], universe, entry_at, still_chosen=chosen, orig_src=orig_src)
    return [f.command() for f in filters]


def stale(judgements: Sequence[Judgement], universe: Sequence[FlowGroup], dst: str, *,
          entry_at: Callable[[int], ConntrackEntry], chosen: Sequence[str], version_hint: str = "",
          orig_src: str | None = None) -> Advice:
    """`stale-conntrack`: entries DNATed to endpoints the rules no longer choose for them."""
    assert judgements and all(j.status == STALE for j in judgements)
    first = judgements[0]
    proto = first.flows.proto
    old = _counted(judgements)
    n = _entries(judgements)
    endpoints = {j.reaches for j in judgements}
    which = "an endpoint" if len(endpoints) == 1 else "endpoints"
    summary = (f"{_plural(n, f'{proto.upper()} conntrack entry', f'{proto.upper()} conntrack entries')} to {dst} "
               f"still {'goes' if n == 1 else 'go'} to {old}, {which} the rules no longer choose")
    detail = [_FIRST_PACKET, f"{'This entry was' if n == 1 else 'These entries were'} DNATed to {old}; "
              f"{_now(first, dst, 'it' if n == 1 else 'them')}."]
    if proto == "udp":
        detail.append("A UDP entry lives as long as its client keeps sending from the same source port (every "
                      "packet renews its timeout: 30 s, 120 s once answered), so a long-lived socket (a DNS "
                      "resolver, statsd, syslog) keeps sending to the old endpoint, and if that pod is gone its "
                      "packets are lost.")
        detail.append(_why_udp_left(judgements, version_hint))
    else:
        detail.append(f"An established {proto.upper()} connection stays on the endpoint that accepted it until it "
                      "closes; if that pod is gone the connection hangs until the client gives up. kube-proxy "
                      "deletes only UDP entries: it leaves connections alone so that terminating pods can finish "
                      "them (kubernetes/kubernetes#102631).")
    commands = deletion(judgements, universe, entry_at, chosen, orig_src)
    verdicts = {o.verdict for o in first.trace.outcomes}
    if first.chosen:
        after = "DNATed by the current rules" if proto == "udp" else \
            "DNATed by the current rules, whose endpoint resets the connection so the client reconnects"
    elif "REJECT" in verdicts:
        after = "refused by the current rules, so the client gets an error at once instead of silence"
    else:
        after = "decided by the current rules like the first packet of a new flow"
    fix = (f"delete {'it' if n == 1 else 'them'} on this node (as root); the next packet of each flow is then "
           f"{after}:\n" + "\n".join(commands))
    return Advice(STALE_CONNTRACK, "error", summary, " ".join(detail), fix, _lines(judgements), _rules(judgements))


def not_dnated(judgements: Sequence[Judgement], universe: Sequence[FlowGroup], dst: str, *,
               entry_at: Callable[[int], ConntrackEntry], chosen: Sequence[str],
               orig_src: str | None = None) -> Advice:
    """`stale-conntrack-no-dnat`: UDP entries that were never DNATed while the rules now DNAT them."""
    assert judgements and all(j.status == NOT_DNATED for j in judgements)
    n = _entries(judgements)
    first = judgements[0]
    address = first.flows.dst
    summary = (f"{_plural(n, 'UDP conntrack entry', 'UDP conntrack entries')} to {dst} "
               f"{'was' if n == 1 else 'were'} never DNATed: {'its' if n == 1 else 'their'} packets go to "
               f"{address} itself, not to an endpoint")
    service = f" of {first.service}" if first.service else ""
    detail = " ".join([
        _FIRST_PACKET,
        f"{'This flow' if n == 1 else 'These flows'} started while no rule rewrote {dst}: before kube-proxy wrote "
        "the Service's rules (a node reboot, a kube-proxy restart, the rules flushed, a Service just created; a "
        "Service without endpoints leaves no such entry, its REJECT refuses the flow before conntrack records "
        f"it). conntrack recorded {'it' if n == 1 else 'them'} untranslated, so as long as a client keeps sending "
        f"from the same source port it never reaches the endpoints the rules now choose: "
        f"{_listing(list(first.chosen))}{service}.",
        "kube-proxy must delete such entries when the Service gets endpoints (kubernetes/kubernetes#48370; since "
        "v1.32 CleanStaleEntries in pkg/proxy/conntrack/cleanup.go deletes every UDP entry to a Service port whose "
        f"reply does not come from a serving endpoint); on this node it did not: {_NOT_SYNCING}.",
    ])
    commands = deletion(judgements, universe, entry_at, chosen, orig_src)
    fix = (f"delete {'it' if n == 1 else 'them'} on this node (as root); the next packet of each flow is then "
           "DNATed to an endpoint:\n" + "\n".join(commands))
    return Advice(STALE_CONNTRACK_NO_DNAT, "error", summary, detail, fix, _lines(judgements), _rules(judgements))


def healthy(judgements: Sequence[Judgement], dst: str, *, source: str, total: int) -> Advice:
    """`conntrack-healthy` (info, on request): the entries to `dst` the rules would decide the same way."""
    current = [j for j in judgements if j.status == CURRENT]
    finished = [j for j in judgements if j.status == FINISHED]
    others = [j for j in judgements if j.status == UNCHANGED and not j.chosen]
    retried = [j for j in judgements if j.status == UNCHANGED and j.chosen]
    if not judgements:
        return Advice(CONNTRACK_HEALTHY, "info", f"no conntrack entry goes to {dst}",
                      f"{source} holds {_plural(total, 'entry', 'entries')}; none has this original destination.",
                      "nothing to do", ())
    parts = []
    if current:
        k = _entries(current)
        parts.append(f"{_plural(k, 'entry', 'entries')} reach{'es' if k == 1 else ''} {_counted(current)}, where "
                     "the rules still send new flows")
    if finished:
        k = _entries(finished)
        states = ", ".join(sorted({str(j.flows.state) for j in finished}))
        parts.append(f"{_plural(k, 'entry', 'entries')} of closed connections ({states}) still "
                     f"name{'s' if k == 1 else ''} {_counted(finished)}; {'it expires' if k == 1 else 'they expire'},"
                     " and a new connection on the same ports is decided by the rules again")
    if others:
        k = _entries(others)
        parts.append(f"{_plural(k, 'entry', 'entries')} {'was' if k == 1 else 'were'} not DNATed, and the rules "
                     f"would not DNAT a new flow of {'it' if k == 1 else 'them'} either")
    if retried:
        k = _entries(retried)
        parts.append(f"{_plural(k, 'entry', 'entries')} of connections begun before the rules DNATed {dst} "
                     f"{'was' if k == 1 else 'were'} not DNATed; a new connection is")
    n = _entries(judgements)
    summary = f"{_plural(n, 'conntrack entry', 'conntrack entries')} to {dst} {'agrees' if n == 1 else 'agree'} " \
              "with the rules"
    detail = f"{_FIRST_PACKET} Of the entries to {dst} in {source}: " + "; ".join(parts) + "."
    return Advice(CONNTRACK_HEALTHY, "info", summary, detail, "nothing to do: existing and new flows go to the same "
                  "places", _lines(judgements))
