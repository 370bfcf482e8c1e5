"""Nodes compared with each other where cluster data cannot say which is right: the value most nodes have
(with a tie, every node in the disagreement is told), and how each kind of client fares through each way in of
a Service port — what a node's own rules change (a host firewall, a CNI's rule, the order kube-proxy wrote an
address two Services share in), which the API does not know of, so it is compared with or without cluster data.
Pure: reads digests (iptrace.kube.digest).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any, NamedTuple

from iptrace.dataplane import join_host_port
from iptrace.kube.clients import CLIENT_WORDS
from iptrace.kube.compare import FORWARDING_DIFFERS, listing
from iptrace.kube.view import CLUSTER_IP, EXTERNAL, NODE, OUTSIDE_RANGES, POD


class ExplainAt(NamedTuple):
    """Where `iptrace explain` reads a node's rules as the audit read them (NodeResult.explain_at: its dump
    argument and --node-ip options, None when there is none to name) and the address its NodePorts were traced
    to in the family compared ("" when its addresses were unknown)."""

    dump: str | None
    node_address: str


def majority(values: Mapping[str, Any]) -> tuple[Any, bool]:
    """The value most nodes have, and whether it is a strict majority of the distinct groups."""
    counts = Counter(values.values())
    ranked = counts.most_common()
    if not ranked:
        return None, False
    top, n = ranked[0]
    return top, len(ranked) == 1 or n > ranked[1][1]


def ways_differ(key: str, ports: Mapping[str, Any], add: Any, layouts: Mapping[str, Any],
                at: Mapping[str, ExplainAt]) -> None:
    """A way in through which some kind of client fares otherwise on a node than on the others, among the nodes
    whose endpoints agree (where they do not, endpoints-differ says so): a rule of the node's own decides (a host
    firewall, a CNI's rule, the order kube-proxy wrote an address two Services share in). A Local traffic
    policy's clients are not compared: nodes without a local endpoint answer them otherwise by design; nor are
    nodes whose kube-proxy writes another layout of the same proxy mode (`layouts`: each node's mode and era;
    era-mismatch says so). Nodes of the other proxy mode are compared on whether a way in reaches the endpoints
    at all: how a packet that reaches none is answered differs between the modes by design (`iptrace diff`'s
    migration notes), reaching them or not does not. Each finding's fix is the `iptrace explain` command of its
    first way in on the node (`at`)."""
    if len({id(p.digest) for p in ports.values()}) <= 1:
        return  # (one digest object: nodes that program a port alike share it)
    era, _ = majority({n: layouts[n] for n in ports})
    sigs = {n: p.digest.signature for n, p in ports.items()}
    ref_sig, _strict = majority({n: sigs[n] for n in ports if layouts[n] == era})
    agree = {n: p for n, p in ports.items() if layouts[n] == era and sigs[n] == ref_sig}
    across = {n: p for n, p in ports.items() if layouts[n][0] != era[0] and sigs[n] == ref_sig}
    if len(agree) + len(across) < 2 or len({p.digest.ways for p in (*agree.values(), *across.values())}) <= 1:
        return
    fares: dict[tuple[Any, ...], dict[str, tuple[str, bool]]] = {}
    for n, p in (*agree.items(), *across.items()):
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
                # (kind left out: nftables mode writes an LB IP without source ranges like an externalIP)
                fares.setdefault((address, port, protocol, client), {})[n] = given.get(client, main)
    told: dict[str, list[str]] = {}
    for (address, port, protocol, client), values in fares.items():
        way = f"{join_host_port(address, port) if address else f'<node>:{port}'}" + (
            "" if protocol == "tcp" else f"/{protocol}")
        alike = {n: v for n, v in values.items() if n in agree}
        if len(set(alike.values())) > 1:
            ref, strict = majority(alike)
            for n, value in alike.items():
                if strict and value == ref:
                    continue
                there = "elsewhere" if not strict else (f"on {sum(v == ref for v in alike.values())} of "
                                                        f"{len(alike)} nodes")
                told.setdefault(n, []).append(f"{way} {CLIENT_WORDS[client]}: {_fare(value)} here, "
                                              f"{_fare(ref) if strict else 'otherwise'} {there}")
        if not across or len({_reaches(v) for v in alike.values()}) != 1:
            continue
        ref, _strict = majority(alike)
        for n, value in values.items():
            if n in across and _reaches(value) != _reaches(ref):
                told.setdefault(n, []).append(f"{way} {CLIENT_WORDS[client]}: {_fare(value)} here, {_fare(ref)} "
                                              f"on the {len(alike)} nodes in {era[0]} mode")
    for n, ways in told.items():
        port = ports[n]
        why = ("The Service's own rules agree with the other nodes', but on this node a rule of its own decides "
               "otherwise: a host firewall, a CNI's rule, or the order kube-proxy wrote an address two Services "
               "share in." if n in agree else
               f"This node runs kube-proxy in {layouts[n][0]} mode, most nodes in {era[0]} mode; both send the "
               "Service port to the same endpoints, yet here a way in reaches them where it does not there, or the "
               "reverse: kube-proxy's settings in one mode (--nodeport-addresses: nftables mode accepts NodePorts "
               "on the node's primary addresses only by default, and never on localhost) or a rule of the node's "
               "own.")
        add(n, FORWARDING_DIFFERS, "error", key, f"{key}: {ways[0]}" + (f" (and {len(ways) - 1} more)"
                                                                        if len(ways) > 1 else ""),
            f"{why} Ways in that differ: {listing(ways, 6)}.",
            f"explain it on this node's dump (`{_explain_command(ways[0].split()[0], at[n])}`): it names the rule "
            "that decides", port, port.head_lines)


def _explain_command(way: str, at: ExplainAt) -> str:
    """`iptrace explain` of a way in (`10.96.0.1:443`, `<node>:30080/udp`) on the node: with its dump and the
    address its NodePorts were traced to when the audit knows them, else the placeholders a person fills in."""
    dump = at.dump or "NODE"
    if not way.startswith("<node>:"):
        return f"iptrace explain {dump} --dst {way}"
    port = way.removeprefix("<node>:")
    if not at.node_address:  # (the audit had no address of it: explain needs one as well)
        return f"iptrace explain {dump} --node-ip NODE-IP --dst NODE-IP:{port}"
    # (a bare IPv6 address is bracketed before its port: join_host_port of `[fd00::1]:30080/udp`)
    number, slash, protocol = port.partition("/")
    return f"iptrace explain {dump} --dst {join_host_port(at.node_address, int(number))}{slash}{protocol}"


def _reaches(value: tuple[str, bool]) -> bool:
    """A way in's fare reaches the Service port's own endpoints."""
    return value == ("DNAT", True)


def _fare(value: tuple[str, bool]) -> str:
    verdict, own = value
    if verdict == "DNAT":
        return "DNAT to its endpoints" if own else "DNAT to another Service's endpoints"
    return {"CONTINUE": "no rule decides", "ACCEPT": "accepted, not DNATed"}.get(verdict, verdict)
