"""Nodes compared with each other where cluster data cannot say which is right: the value most nodes have
(with a tie, every node in the disagreement is told), and how each kind of client fares through each way in of
a Service port — what a node's own rules change (a host firewall, a CNI's rule, the order kube-proxy wrote an
address two Services share in), which the API does not know of, so it is compared with or without cluster data.
Pure: reads digests (iptrace.kube.digest).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from iptrace.dataplane import join_host_port
from iptrace.kube.clients import CLIENT_WORDS
from iptrace.kube.compare import FORWARDING_DIFFERS, listing
from iptrace.kube.view import CLUSTER_IP, EXTERNAL, NODE, OUTSIDE_RANGES, POD


def majority(values: Mapping[str, Any]) -> tuple[Any, bool]:
    """The value most nodes have, and whether it is a strict majority of the distinct groups."""
    counts = Counter(values.values())
    ranked = counts.most_common()
    if not ranked:
        return None, False
    top, n = ranked[0]
    return top, len(ranked) == 1 or n > ranked[1][1]


def ways_differ(key: str, ports: Mapping[str, Any], add: Any, layouts: Mapping[str, Any]) -> None:
    """A way in through which some kind of client fares otherwise on a node than on the others, among the nodes
    whose endpoints agree (where they do not, endpoints-differ says so): a rule of the node's own decides (a host
    firewall, a CNI's rule, the order kube-proxy wrote an address two Services share in). A Local traffic
    policy's clients are not compared: nodes without a local endpoint answer them otherwise by design; nor are
    nodes whose kube-proxy writes another layout (`layouts`: each node's mode and era; era-mismatch says so)."""
    if len({id(p.digest) for p in ports.values()}) <= 1:
        return  # (one digest object: nodes that program a port alike share it)
    era, _ = majority({n: layouts[n] for n in ports})
    ports = {n: p for n, p in ports.items() if layouts[n] == era}
    sigs = {n: p.digest.signature for n, p in ports.items()}
    ref_sig, _strict = majority(sigs)
    agree = {n: p for n, p in ports.items() if sigs[n] == ref_sig}
    if len(agree) < 2 or len({p.digest.ways for p in agree.values()}) <= 1:
        return
    fares: dict[tuple[Any, ...], dict[str, tuple[str, bool]]] = {}
    for n, p in agree.items():
        d = p.digest
        for kind, address, port, protocol, clients in d.ways:
            main = clients[0][1:]
            given = {c: (v, o) for c, v, o in clients}
            for client in (EXTERNAL, OUTSIDE_RANGES, POD, NODE):
                if (d.internal_traffic_policy == "Local" and kind == CLUSTER_IP) or (
                        d.external_traffic_policy == "Local" and kind != CLUSTER_IP
                        and client in (EXTERNAL, OUTSIDE_RANGES)):
                    continue
                if client == OUTSIDE_RANGES and client not in given:
                    continue
                fares.setdefault((kind, address, port, protocol, client), {})[n] = given.get(client, main)
    told: dict[str, list[str]] = {}
    for (_kind, address, port, protocol, client), values in fares.items():
        if len(set(values.values())) <= 1:
            continue
        ref, strict = majority(values)
        way = f"{join_host_port(address, port) if address else f'<node>:{port}'}" + (
            "" if protocol == "tcp" else f"/{protocol}")
        for n, value in values.items():
            if strict and value == ref:
                continue
            there = "elsewhere" if not strict else (f"on {sum(v == ref for v in values.values())} of "
                                                    f"{len(values)} nodes")
            told.setdefault(n, []).append(f"{way} {CLIENT_WORDS[client]}: {_fare(value)} here, "
                                          f"{_fare(ref) if strict else 'otherwise'} {there}")
    for n, ways in told.items():
        port = ports[n]
        add(n, FORWARDING_DIFFERS, "error", key, f"{key}: {ways[0]}" + (f" (and {len(ways) - 1} more)"
                                                                        if len(ways) > 1 else ""),
            "The Service's own rules agree with the other nodes', but on this node a rule of its own decides "
            f"otherwise: a host firewall, a CNI's rule, or the order kube-proxy wrote an address two Services share "
            f"in. Ways in that differ: {listing(ways, 6)}.",
            f"explain it on this node's dump (iptrace explain NODE --dst "
            f"{ways[0].split()[0].replace('<node>', 'NODE-IP')}): it names the rule that decides", port,
            port.head_lines)


def _fare(value: tuple[str, bool]) -> str:
    verdict, own = value
    if verdict == "DNAT":
        return "DNAT to its endpoints" if own else "DNAT to another Service's endpoints"
    return {"CONTINUE": "no rule decides", "ACCEPT": "accepted, not DNATed"}.get(verdict, verdict)
