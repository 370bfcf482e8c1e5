"""The kernel as oracle for tests: real namespaces, real iptables-restore, real packets (see netns.py)."""

from .netns import (
    CLIENT_IP,
    NODE_IP,
    NODE_POD_SIDE_IP,
    ConntrackEntry,
    OracleError,
    Path,
    PathStep,
    ProbeResult,
    Topology,
    oracle_unavailable,
    reap_stale_namespaces,
    requires_root_netns,
    run_in_netns,
    skip_unless_oracle,
)

__all__ = [
    "CLIENT_IP",
    "NODE_IP",
    "NODE_POD_SIDE_IP",
    "ConntrackEntry",
    "OracleError",
    "Path",
    "PathStep",
    "ProbeResult",
    "Topology",
    "oracle_unavailable",
    "reap_stale_namespaces",
    "requires_root_netns",
    "run_in_netns",
    "skip_unless_oracle",
]
