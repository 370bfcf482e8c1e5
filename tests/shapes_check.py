"""What both dataplanes' port-shape tests check: a ruleset's views built with shapes (iptrace.kube.shapes, from the
first port on) equal those built by tracing every port, port by port."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from iptrace.errors import IptraceError
from iptrace.kube import shapes
from iptrace.kube.analysis import analyse


def _views(load: Callable[..., Any], dataplane: Any, text: str, enabled: bool,
           node_ips: tuple[str, ...]) -> tuple[Any, int]:
    """(the view of every family of the ruleset, or the error it raised; how many ports were built from another)."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(shapes, "ENABLED", enabled)
        m.setattr(shapes, "AFTER", 0)
        try:
            ruleset = load(text, lenient=True)
            out, hits = [], 0
            for family in ruleset.families:
                analysis = analyse(dataplane, ruleset, family, node_ips=node_ips)
                out.append(analysis.view)
                hits += analysis.views._shapes.hits
            return out, hits
        except IptraceError as exc:
            return f"{type(exc).__name__}: {exc}", 0


def check_views(load: Callable[..., Any], dataplane: Any, text: str, node_ips: tuple[str, ...]) -> int:
    """Views with and without shapes are equal, port by port; how many ports were built from another."""
    plain, _ = _views(load, dataplane, text, False, node_ips)
    shaped, hits = _views(load, dataplane, text, True, node_ips)
    if isinstance(plain, str) or isinstance(shaped, str):
        assert plain == shaped
        return 0
    for a, b in zip(plain, shaped, strict=True):
        for x, y in zip(a.services, b.services, strict=True):
            assert x == y, f"{x.label} differs when built from its shape:\n{x}\n{y}"
        assert a == b
    return hits


# An IPv6-only nft ruleset of 12 Services (a nodePort on every third) and the node address it is read with.
IPV6_NODE = "fd00:1::10"


def ipv6_nft_ruleset() -> str:
    from bench.synth import EndpointSpec, PortSpec, ServiceSpec
    from bench.synth_nft import render_nft

    specs = [ServiceSpec("default", f"svc-{k}", f"fd00:10:96::{k + 1:x}",
                         [PortSpec("http", 80, node_port=30000 + k if k % 3 == 0 else None, target_port=8080)],
                         type="NodePort" if k % 3 == 0 else "ClusterIP",
                         endpoints=[EndpointSpec(f"fd00:10:244:{(k + j) % 3}::{k + 5:x}", 8080) for j in range(2)])
             for k in range(12)]
    return render_nft(specs, node_ips=[IPV6_NODE], pod_cidr="fd00:10:244::/56", service_cidrs=["fd00:10:96::/108"],
                      ipv6=True)
