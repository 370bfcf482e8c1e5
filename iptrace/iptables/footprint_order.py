"""Which of an indexed chain's rules a footprint (iptrace.iptables.footprint) keeps, and the order it lists them in: one
every node shares."""

from __future__ import annotations

from operator import itemgetter
from typing import Any

from iptrace.iptables.compile import ChainCode
from iptrace.iptables.footprint_facts import Facts


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


def positions(node: Any, code: ChainCode, q: Any) -> list[int]:
    """The positions of the rules an indexed chain files under the question's keys (footprint._Question; `node` its
    footprint._Node), in order."""
    index = code.index
    assert index is not None
    hosts, ports = node.index_keys(code)
    found: set[int] = set(index.rest)
    dsts = hosts & q.dsts  # (C-level: the question's few destinations against the index's many hosts)
    for d in dsts:
        found.update(index.by_host.get(d, ()))
    for proto in q.protos:
        for port in q.ports:
            if port not in ports:
                continue
            found.update(index.by_port.get((proto, port, None), ()))
            for d in dsts:
                found.update(index.by_port.get((proto, port, d), ()))
    q.narrowed = True  # (the index left the others out)
    return sorted(found)
