"""One node's rules analysed for one IP family: the dataplane's layout and tracer, and the Service view built
from them. The dataplane object is passed in (iptrace.dataplanes picks it from the input); nothing here knows
which one it is."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from iptrace.dataplane import Dataplane, KnownServicePort, Layout, Tracer
from iptrace.kube.view import KubeView, PortFacts, ServicePortView, ViewBuilder, chain_labels, view_node_ips


class Analysis:
    """The dataplane, its ruleset, the layout, the tracer and the Service view of one node for one family. The
    view is built when first read (`view`), one Service port at a time when only some are asked for
    (`port_view`): a question about one address never pays for the whole dump."""

    def __init__(self, dataplane: Dataplane, ruleset: Any, family: str, layout: Layout, tracer: Tracer,
                 node_ips: Sequence[str], view_ips: Sequence[str], *, reuse: Any = None) -> None:
        self.dataplane = dataplane
        self.ruleset = ruleset  # the dataplane's own model, read through iptrace.dataplane.Ruleset
        self.family = family
        self.layout = layout
        self.tracer = tracer  # knows the node addresses (and a placeholder when none is known: view_node_ips)
        self.node_ips = tuple(node_ips)  # as given (or collected); empty when unknown
        self.node_ips_given = bool(node_ips)
        self.views = ViewBuilder(layout, tracer, source=ruleset.source, node_ips=view_ips, reuse=reuse)

    @property
    def view(self) -> KubeView:
        return self.views.view()

    def port_view(self, key: str) -> ServicePortView:
        return self.views.port(key)

    def port_facts(self, key: str) -> ServicePortView | PortFacts:
        """What explain reads of a port: its view when built, else the same values without tracing its ways in."""
        return self.views.port_facts(key)


def known_ports(cluster: Any, family: str) -> tuple[KnownServicePort, ...]:
    """The API's Service ports (an iptrace.kube.cluster.ClusterState) as a dataplane can use them to name
    comment-less rules."""
    if cluster is None:
        return ()
    out = []
    for svc, port in cluster.service_ports():
        addresses = tuple(a for a in (*svc.cluster_ips, *svc.external_ips, *(i.ip for i in svc.lb_ips if i.ip))
                          if a and a != "None" and (":" in a) == (family == "ipv6"))
        out.append(KnownServicePort(svc.service_port_name(port), port.protocol.lower(), port.port, addresses,
                                    port.node_port or None))
    return tuple(out)


def analyse(dataplane: Dataplane, ruleset: Any, family: str | None = None, *, node_ips: Sequence[str] = (),
            cluster: Any = None, reuse: Any = None, layout: Layout | None = None) -> Analysis:
    """Layout, tracer and view of `ruleset` for `family` (default: its first). `reuse`: an
    iptrace.kube.reuse.ViewReuse shared by the nodes of one audit; `layout`: the layout already read for this
    family and cluster data."""
    family = family or ruleset.families[0]
    layout = layout or dataplane.layout(ruleset, family, known=known_ports(cluster, family))
    view_ips = view_node_ips(layout, node_ips)
    tracer = dataplane.tracer(ruleset, node_ips=view_ips, pod_cidrs=layout.pod_cidrs, names=chain_labels(layout))
    return Analysis(dataplane, ruleset, family, layout, tracer, node_ips, view_ips, reuse=reuse)
