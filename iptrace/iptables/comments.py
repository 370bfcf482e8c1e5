"""What kube-proxy's comments say: the Service port a rule belongs to and what the rule is for (pkg/proxy/iptables
proxier.go writes them; they are dropped above 1000 endpoints), and where the comment lines of a dump sit."""

from __future__ import annotations

import re
from functools import lru_cache

from iptrace.iptables.hashes import SERVICE_PORT_CHAIN_PREFIXES
from iptrace.iptables.model import Ruleset
from iptrace.layout import CLUSTER_IP, EXTERNAL_IP, HEALTH_CHECK, LOAD_BALANCER

_PORT_NAME = r"[^\s/]+/[^\s/:]+(?::\S*)?"
_COMMENT_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p), kind) for p, kind in (
        (rf"(?P<n>{_PORT_NAME}) cluster IP", CLUSTER_IP),
        (rf"(?P<n>{_PORT_NAME}) external IP", EXTERNAL_IP),
        (rf"(?P<n>{_PORT_NAME}) loadbalancer IP", LOAD_BALANCER),
        (rf"(?P<n>{_PORT_NAME}) has no endpoints", "no-endpoints"),
        (rf"(?P<n>{_PORT_NAME}) has no local endpoints", "no-local-endpoints"),
        (rf"(?P<n>{_PORT_NAME}) health check node port", HEALTH_CHECK),
        (rf"(?P<n>{_PORT_NAME}) traffic not accepted by \S+", "firewall"),
        (rf"(?P<n>{_PORT_NAME}) -> \S+", "endpoint"),
        (rf"(?:masquerade|pod|route) (?:LOCAL )?traffic for (?P<n>{_PORT_NAME}) (?:external destinations|LB IP"
         r"(?: to service chain)?)", "ext"),
        (rf"other traffic to (?P<n>{_PORT_NAME}) will be dropped by KUBE-PROXY-FIREWALL", "firewall"),
        (rf"Balancing rule \d+ for (?P<n>{_PORT_NAME})", "endpoint"),
        (rf"portal for (?P<n>{_PORT_NAME})", "portal"),
        (rf"(?P<n>{_PORT_NAME})", "plain"),
    ))


@lru_cache(maxsize=65536)
def parse_comment(comment: str) -> tuple[str, str] | None:
    """(service port name, kind) from one of kube-proxy's comments, or None."""
    patterns = _COMMENT_PATTERNS if " " in comment else _COMMENT_PATTERNS[-1:]
    for pattern, kind in patterns:
        m = pattern.fullmatch(comment)
        if m is not None:
            name = m.group("n")
            # "10.0.0.0/8" would read as a name: a namespace never starts with a digit-dot address.
            head = name.split("/", 1)[0]
            if head.replace(".", "").isdigit() or ":" in head:
                return None
            return name, kind
    return None


def comment_lines(ruleset: Ruleset) -> dict[str, int]:
    """Dump line of every comment line the loader kept (the legacy-tables warning is one).

    The model keeps comments without positions; in iptables-save text they sit right before a table header
    or right after the last COMMIT, so the positions follow from the table's header line and its size.
    """
    out: dict[str, int] = {}
    end = 0
    for table in ruleset.tables:
        if not table.line:
            return out
        for i, text in enumerate(table.comments):
            out.setdefault(text, table.line - len(table.comments) + i)
        end = table.line + len(table.chains) + table.rule_count + 1  # the COMMIT line
    if end and ruleset.format == "save":
        for i, text in enumerate(ruleset.trailer):
            out.setdefault(text, end + 1 + i)
    return out


_PREFIXES = frozenset(SERVICE_PORT_CHAIN_PREFIXES)


def chain_key(name: str) -> tuple[str, str] | None:
    """("KUBE-SVC-", "<H>") for a per-service-port chain, else None."""
    # Every prefix is "KUBE-<word>-": one find instead of a startswith per prefix (run over every chain name).
    if not name.startswith("KUBE-"):
        return None
    prefix = name[:name.find("-", 5) + 1]
    return (prefix, name[len(prefix):]) if prefix in _PREFIXES else None
