"""The netfilter walk: one new connection through a Ruleset, hook by hook and rule by rule, as the kernel does.

Pure functions over the frozen model: no I/O, no printing. Every probabilistic rule splits the trace into
branches with exact probabilities, and every guess (conntrack state, ipset membership, interfaces) is
recorded as an assumption on the Trace instead of being made silently.
"""

from iptrace.trace.packet import Packet
from iptrace.trace.result import Outcome, Step, Trace, trace_to_json
from iptrace.trace.sources import infer_node_ips, infer_pod_cidrs, pick_source
from iptrace.trace.walk import Tracer, trace

__all__ = [
    "Outcome", "Packet", "Step", "Trace", "Tracer", "infer_node_ips", "infer_pod_cidrs", "pick_source",
    "trace", "trace_to_json",
]
