"""One node's rules analysed for one IP family: the dataplane's layout and tracer, and the Service view built
from them. The dataplane object is passed in (iptrace.dataplanes picks it from the input); nothing here knows
which one it is."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from iptrace.dataplane import Dataplane, Tracer
from iptrace.kube.sources import reachable_first
from iptrace.kube.view import KubeView, PortFacts, ServicePortView, ViewBuilder, view_node_ips
from iptrace.layout import KnownServicePort, Layout
from iptrace.routes import Routes


class ChainLabels(Mapping[str, str]):
    """chain -> "ns/svc:port" (what a trace says an outcome belongs to), resolved one chain at a time through
    the layout, so that tracing one packet reads only the Service ports it meets."""

    def __init__(self, layout: Layout) -> None:
        self._layout = layout
        self._known: dict[str, str | None] = {}

    def get(self, chain: str, default: Any = None) -> Any:
        if chain not in self._known:
            key = self._layout.chain_key(chain)
            if key is None:
                self._known[chain] = None
            else:
                sp = self._layout.service_port(key)
                self._known[chain] = sp.name or sp.cluster_chain or sp.key
        found = self._known[chain]
        return default if found is None else found

    def __getitem__(self, chain: str) -> str:
        found = self.get(chain)
        if found is None:
            raise KeyError(chain)
        return str(found)

    def __iter__(self) -> Iterator[str]:
        for sp in self._layout.service_ports:
            yield from sp.chains

    def __len__(self) -> int:
        return sum(len(sp.chains) for sp in self._layout.service_ports)


def chain_labels(layout: Layout) -> ChainLabels:
    return ChainLabels(layout)


class Analysis:
    """The dataplane, its ruleset, the layout, the tracer and the Service view of one node for one family. The
    view is built when first read (`view`), one Service port at a time when only some are asked for
    (`port_view`): a question about one address never pays for the whole dump."""

    def __init__(self, dataplane: Dataplane, ruleset: Any, family: str, layout: Layout, tracer: Tracer,
                 node_ips: Sequence[str], view_ips: Sequence[str]) -> None:
        self.dataplane = dataplane
        self.ruleset = ruleset  # the dataplane's own model, read through iptrace.dataplane.Ruleset
        self.family = family
        self.layout = layout
        self.tracer = tracer  # knows the node addresses (and a placeholder when none is known: view_node_ips)
        self.node_ips = tuple(node_ips)  # as given (or collected); empty when unknown
        self.node_ips_given = bool(node_ips)
        self.view_ips = tuple(view_ips)  # the addresses the tracer and the view take for the node's own
        self.views = ViewBuilder(layout, tracer, source=ruleset.source, node_ips=view_ips)

    @property
    def view(self) -> KubeView:
        return self.views.view()

    def port_view(self, key: str) -> ServicePortView:
        return self.views.port(key)

    def port_facts(self, key: str) -> ServicePortView | PortFacts:
        """What explain reads of a port: its view when built, else the same values without tracing its ways in."""
        return self.views.port_facts(key)

    def tracing_done(self) -> None:
        """Build the view, then let the tracer go with all it compiled and kept of the rules, for a caller that
        reads only the views, the layout and the ruleset afterwards (audit's worker, for the node's digest). On a
        node whose every Service port was traced (a worker's first), that is ~85 MB of a 5,000-Service node that
        lived through the digest, at the worker's peak. Tracing afterwards is an error (no `tracer`)."""
        self.views.tracing_done()
        del self.tracer


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
            cluster: Any = None, layout: Layout | None = None, routes: Routes | None = None) -> Analysis:
    """Layout, tracer and view of `ruleset` for `family` (default: its first). `layout`: the layout already read
    for this family and cluster data; `routes`: the node's, for the rules that test the output interface."""
    family = family or ruleset.families[0]
    layout = layout or dataplane.layout(ruleset, family, known=known_ports(cluster, family))
    node_ips = reachable_first(node_ips, layout.node_ips, layout.pod_cidrs)  # (a collected node's start with lo's)
    view_ips = view_node_ips(layout, node_ips)
    tracer = dataplane.tracer(ruleset, node_ips=view_ips, pod_cidrs=layout.pod_cidrs, names=chain_labels(layout),
                              routes=routes)
    return Analysis(dataplane, ruleset, family, layout, tracer, node_ips, view_ips)
