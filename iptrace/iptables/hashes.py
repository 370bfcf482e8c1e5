"""kube-proxy's chain-name hashes (pkg/proxy/iptables/proxier.go: portProtoHash, servicePortEndpointChainName).

Pure functions, no iptrace imports: the service view, the synthesizer and the tests all name chains the same way.
"""

from __future__ import annotations

import hashlib

# Every per-service chain kube-proxy has ever written in iptables mode; KUBE-XLB- is pre-1.24.
SERVICE_PORT_CHAIN_PREFIXES: tuple[str, ...] = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-XLB-")
ENDPOINT_CHAIN_PREFIX = "KUBE-SEP-"


_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


def _hash16(text: str) -> str:
    # The first 16 base32 characters encode exactly the first 10 digest bytes (80 bits); encoding only
    # those is what keeps naming 100,000 endpoint chains fast (base64.b32encode is pure Python).
    bits = int.from_bytes(hashlib.sha256(text.encode()).digest()[:10], "big")
    return "".join(_B32[(bits >> shift) & 31] for shift in range(75, -1, -5))


def service_port_chain(prefix: str, service_port_name: str, protocol: str) -> str:
    """`prefix` + the 16-character hash of "ns/svc:port" (or "ns/svc" for an unnamed port) + protocol.

    The protocol is lower-cased as kube-proxy does ("TCP" and "tcp" name the same chain).
    """
    return prefix + _hash16(service_port_name + protocol.lower())


def endpoint_chain(service_port_name: str, protocol: str, endpoint: str) -> str:
    """KUBE-SEP- chain of one endpoint; `endpoint` is "ip:port", or "[ipv6]:port"."""
    return ENDPOINT_CHAIN_PREFIX + _hash16(service_port_name + protocol.lower() + endpoint)
