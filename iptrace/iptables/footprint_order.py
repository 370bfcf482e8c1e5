"""Which of an indexed chain's rules a footprint (iptrace.iptables.footprint) keeps, and the order it lists them in: one
every node shares."""

from __future__ import annotations

from operator import itemgetter
from typing import Any

from iptrace.iptables.footprint_facts import Facts
from iptrace.iptables.index import ChainIndex


def by_destination(kept: list[tuple[Facts, int, tuple[str, str] | None]],
                   ) -> list[tuple[Facts, int, tuple[str, str] | None]]:
    """An indexed chain's kept rules in an order every node shares (kube-proxy writes KUBE-SERVICES in Go map
    order). A rule filed under a host (a definite `-d ADDR/32`) meets only packets to it, and a destination
    stays put along a chain (DNAT ends a nat chain's walk; REDIRECT, NETMAP give no footprint): two such rules
    for different hosts are never both met, so each run of them between other rules is sorted by host (stable:
    one host's rules keep their order). Likewise a rule filed under a protocol and port too (index.rule_key)
    matches no packet with another, and neither changes along a chain: one host's rules filed under different
    ports (a Service's ports on one address) are sorted by protocol and port, between the rules of that host
    filed under none, which keep their place. Lines go with their rules."""
    out: list[tuple[Facts, int, tuple[str, str] | None]] = []
    run: list[tuple[Facts, int, tuple[str, str] | None]] = []  # (rules filed under a host)
    for item in kept:
        if item[0].host is None:
            out += _sorted(run)
            out.append(item)
            run = []
        else:
            run.append(item)
    return out + _sorted(run)


def _sorted(run: list[tuple[Facts, int, Any]]) -> list[tuple[Facts, int, Any]]:
    """A run of rules filed under a host in by_destination's order."""
    if len(run) < 2:
        return run
    seen: dict[int, int] = {}  # host → rules of it filed under no port so far
    order: list[tuple[tuple[int, int, int, int], tuple[Facts, int, Any]]] = []
    for item in run:
        f = item[0]
        host = f.host or 0
        portless = seen.get(host, 0)
        if f.key is None:
            seen[host] = portless + 1
            order.append(((host, 2 * portless + 1, 0, 0), item))
        else:
            order.append(((host, 2 * portless, f.key[0], f.key[1]), item))
    order.sort(key=itemgetter(0))  # (stable)
    return [item for _key, item in order]


def positions(index: ChainIndex, hosts: set[int], ports: set[int], q: Any) -> list[int]:
    """The positions of the rules an indexed chain files under the question's keys (footprint._Question), in order;
    `hosts` and `ports` those the index files rules under (footprint._Node.index_keys)."""
    q.narrowed = True  # (the index left the others out)
    # (C-level: the question's few destinations and ports against the index's many hosts and ports)
    dsts = hosts & q.dsts
    wanted = ports & q.ports
    if not dsts and not wanted:
        return index.rest  # (ascending: the positions of the rules filed under no key, in chain order)
    found: set[int] = set(index.rest)
    for d in dsts:
        found.update(index.by_host.get(d, ()))
    by_port = index.by_port
    for proto in q.protos:
        for port in wanted:
            found.update(by_port.get((proto, port, None), ()))
            for d in dsts:
                found.update(by_port.get((proto, port, d), ()))
    return sorted(found)
