"""kube-proxy's nftables names: its table, its fixed chains, sets and maps, and the per-Service-port chain names
(`service-ULMVA6XW-ns1/svc1/tcp/p80`), which carry the Service port's own name after a hash.

Mirrors `servicePortChainNameBase` / `servicePortEndpointChainNameBase` and the constants of kubernetes/kubernetes
pkg/proxy/nftables/proxier.go. Pure functions over strings.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import lru_cache

KUBE_PROXY_TABLE = "kube-proxy"
KUBE_PROXY_FAMILIES = ("ip", "ip6")  # one table per IP family; kube-proxy never writes an inet table

# Dispatch, refusal and masquerading pieces every layout names the same way.
SERVICES_CHAIN = "services"
SERVICE_IPS = "service-ips"
SERVICE_NODEPORTS = "service-nodeports"
FIREWALL_IPS = "firewall-ips"
NO_ENDPOINT_SERVICES = "no-endpoint-services"
NO_ENDPOINT_NODEPORTS = "no-endpoint-nodeports"
NODEPORT_IPS = "nodeport-ips"
CLUSTER_IPS = "cluster-ips"
CLUSTER_IPS_CHECK = "cluster-ips-check"
REJECT_CHAIN = "reject-chain"
MARK_FOR_MASQUERADE = "mark-for-masquerade"
MASQUERADING = "masquerading"
FIREWALL_CHECK = "firewall-check"
# 1.29 (alpha): LoadBalancerSourceRanges as two sets checked by one chain.
FIREWALL_SET = "firewall"
FIREWALL_ALLOW_SET = "firewall-allow"
FIREWALL_ALLOW_CHECK = "firewall-allow-check"
HAIRPIN_CONNECTIONS = "hairpin-connections"

# Per-Service-port chain prefixes (roles), and the per-endpoint ones. `svc-` is a 1.37-cycle spelling.
CLUSTER_PREFIX = "service-"
LOCAL_PREFIX = "local-"
EXTERNAL_PREFIX = "external-"
FIREWALL_PREFIX = "firewall-"
ENDPOINT_PREFIX = "endpoint-"
AFFINITY_PREFIX = "affinity-"
ROLE_PREFIXES = {"cluster": CLUSTER_PREFIX, "local": LOCAL_PREFIX, "external": EXTERNAL_PREFIX,
                 "firewall": FIREWALL_PREFIX}

_NAMED_RE = re.compile(r"(service|svc|local|external|firewall|endpoint|affinity)-([A-Z2-7]{8})-(.+)")


def hash_base(text: str) -> str:
    """`HASH-text`: the first 8 characters of base32(sha256(text)), then the text itself, cut to 240 characters
    as kube-proxy cuts it (only long IPv6 endpoint names reach that)."""
    # base32 turns each 5 bytes into 8 characters on their own: the first 8 characters are those of 5 bytes.
    digest = base64.b32encode(hashlib.sha256(text.encode()).digest()[:5]).decode()
    base = f"{digest}-{text}"
    return base if len(base) <= 240 else base[:237] + "..."


@lru_cache(maxsize=16384)
def _port_base(port_part: str) -> str:
    """hash_base of a Service port's text, which every endpoint chain of the port recomputes (split_chain)."""
    return hash_base(port_part)


def port_text(service_port_name: str, protocol: str) -> str:
    """"ns/svc:port" + "tcp" → "ns/svc/tcp/port" ("ns/svc" → "ns/svc/tcp/")."""
    svc, _, port = service_port_name.partition(":")
    return f"{svc}/{protocol.lower()}/{port}"


def service_port_base(service_port_name: str, protocol: str) -> str:
    """The name base every chain of one Service port shares: `ULMVA6XW-ns1/svc1/tcp/p80`."""
    return hash_base(port_text(service_port_name, protocol))


def endpoint_base(service_port_name: str, protocol: str, ip: str, port: int) -> str:
    """The name base of one endpoint's chain and affinity set (`:` of an IPv6 address written as `.`)."""
    return hash_base(f"{port_text(service_port_name, protocol)}__{ip.replace(':', '.')}/{port}")


def service_chain(role: str, service_port_name: str, protocol: str) -> str:
    """kube-proxy's chain for one Service port: role cluster | local | external | firewall."""
    return ROLE_PREFIXES[role] + service_port_base(service_port_name, protocol)


def chain_parts(name: str) -> tuple[str, str, str, list[str]] | None:
    """A per-Service-port or per-endpoint chain name → (prefix word, hash, port text, its four `/` parts) without
    hashing anything; None for any other name (split_chain; whether an endpoint chain names a Service port)."""
    m = _NAMED_RE.fullmatch(name)
    if m is None:
        return None
    word, digest, rest = m.groups()
    port_part = rest.split("__", 1)[0]
    parts = port_part.split("/")
    if len(parts) != 4 or not parts[0] or not parts[1] or not parts[2]:
        return None
    return word, digest, port_part, parts


def split_chain(name: str) -> tuple[str, str, str, str] | None:
    """A per-Service-port or per-endpoint chain (or affinity set) name → (prefix word, base, "ns/svc:port",
    protocol); None for any other name. `base` is the hash and the port text (without the endpoint part), the
    key every chain of one Service port shares."""
    found = chain_parts(name)
    if found is None:
        return None
    word, digest, port_part, (ns, svc, proto, port) = found
    if word in ("endpoint", "affinity"):
        # The endpoint's hash covers its address too: the Service port's own base is recomputed.
        base = _port_base(port_part)
    else:
        base = f"{digest}-{port_part}"
    return word, base, f"{ns}/{svc}:{port}" if port else f"{ns}/{svc}", proto


def service_label(chain: str) -> str | None:
    """"ns/svc:port" for a chain kube-proxy named after a Service port, else None."""
    found = split_chain(chain)
    return found[2] if found is not None else None
