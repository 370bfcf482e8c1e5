"""Ways in that several Service ports claim: the same address, port and protocol as a ClusterIP, externalIP or
LoadBalancer address of more than one (the API allows the same externalIP on two Services, or another's
ClusterIP; kube-proxy writes a rule for each, and the order it writes them in decides). One index for the
view's notes, the audit's findings and diff's warning. Pure."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import TypeVar

from iptrace.layout import CLUSTER_IP, EXTERNAL_IP, LOAD_BALANCER

# The kinds of way in another Service port can claim too, as a person names them.
KIND_NAMES = {CLUSTER_IP: "ClusterIP", EXTERNAL_IP: "externalIP", LOAD_BALANCER: "LoadBalancer IP"}
ADDRESS_KINDS = frozenset(KIND_NAMES)

Owner = TypeVar("Owner", bound=Hashable)
Where = tuple[str, int, str]  # (address, port, protocol)


def shared_claims(ways: Iterable[tuple[Owner, str, str | None, int, str]]) -> dict[Where, list[Owner]]:
    """(owner, kind, address, port, protocol) of ways in -> each (address, port, protocol) that more than one
    owner claims as a ClusterIP, externalIP or LoadBalancer address, with its owners in the order met."""
    index: dict[Where, dict[Owner, None]] = {}
    for owner, kind, address, port, protocol in ways:
        if kind in ADDRESS_KINDS and address:
            index.setdefault((address, port, protocol), {})[owner] = None
    return {where: list(owners) for where, owners in index.items() if len(owners) > 1}
