"""The iptables dataplane: everything that knows iptables-save text, its model, the netfilter walk over it and how
kube-proxy lays out its rules there. Imports only `iptrace.errors`, `iptrace.dataplane`, `iptrace.layout` and its own
modules; lark only in grammar.py and loader.py. `DATAPLANE` is what the layers above use."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iptrace.dataplane import ForeignChain
from iptrace.dumpfile import read_dump
from iptrace.iptables.sniff import sniff
from iptrace.layout import KnownServicePort, Layout
from iptrace.routes import Routes

if TYPE_CHECKING:
    from iptrace.iptables.model import Ruleset
    from iptrace.iptables.rule_shapes import LoadMemo

__all__ = ["DATAPLANE", "IptablesDataplane", "load", "load_path", "read_dump", "save", "sniff"]

# The loader and the printer are imported on first use: every run imports this package to sniff its input
# (iptrace.dataplanes), and an nftables ruleset's never needs them (~6 ms of imports: the model, the loader).


def load(text: str | bytes, *, source: str = "<dump>", lenient: bool = False, table: str | None = None,
         memo: LoadMemo | None = None) -> Ruleset:
    """iptrace.iptables.loader.load: iptables-save text (or an `iptables -S` listing) -> Ruleset."""
    from iptrace.iptables import loader

    return loader.load(text, source=source, lenient=lenient, table=table, memo=memo)


def load_path(path: str | Path, *, lenient: bool = False, table: str | None = None) -> Ruleset:
    """iptrace.iptables.loader.load_path: a dump file -> Ruleset."""
    from iptrace.iptables import loader

    return loader.load_path(path, lenient=lenient, table=table)


def save(ruleset: Ruleset) -> str:
    """iptrace.iptables.printer.save: the ruleset as iptables-save prints it."""
    from iptrace.iptables import printer

    return printer.save(ruleset)


class IptablesDataplane:
    """The `iptrace.dataplane.Dataplane` of iptables-save / ip6tables-save / `iptables -S` input."""

    name = "iptables"

    def sniff(self, text: str) -> bool:
        return sniff(text)

    def load(self, text: str | bytes, *, source: str = "<dump>", lenient: bool = False,
             table: str | None = None, memo: Any = None) -> Any:
        """`memo`: a rule_shapes.LoadMemo kept across the dumps of one cluster (the same Ruleset either way)."""
        ruleset = load(text, source=source, lenient=lenient, table=table, memo=memo)
        if not lenient:
            return ruleset
        from iptrace.iptables.lenient import without_refused_values

        return without_refused_values(text, ruleset, source=source, table=table, memo=memo)

    def layout(self, ruleset: Any, family: str, *, known: Sequence[KnownServicePort] = ()) -> Layout:
        from iptrace.iptables.layout import read_layout

        return read_layout(ruleset, family, known=known)

    def tracer(self, ruleset: Any, *, node_ips: Sequence[str] = (), pod_cidrs: Sequence[str] = (),
               names: Mapping[str, str] | None = None, routes: Routes | None = None) -> Any:
        from iptrace.iptables.walk import Tracer

        return Tracer(ruleset, node_ips=node_ips, pod_cidrs=pod_cidrs, names=names, routes=routes)

    def port_keys(self, ruleset: Any, layout: Layout, node_ips: Sequence[str], others: Sequence[str] = (),
                  tracer: Any = None) -> Any:
        """Content keys of the Service ports (carry.py) for `tracer`'s walks, None where there are none."""
        from iptrace.iptables.carry import node_keys

        # (with the node's routes, its keys hold where the tracer's own lookup sends each address)
        return node_keys(ruleset, layout, node_ips, others, tracer.ctx.out_iface if getattr(tracer, "routed", False)
                         else None)

    def service_chain(self, role: str, service_port_name: str, protocol: str) -> str:
        from iptrace.iptables.hashes import service_port_chain

        prefix = {"cluster": "KUBE-SVC-", "local": "KUBE-SVL-", "external": "KUBE-EXT-", "firewall": "KUBE-FW-"}
        return service_port_chain(prefix[role], service_port_name, protocol)

    def summary(self, ruleset: Any) -> str:
        from iptrace.iptables.era import detect
        from iptrace.iptables.summary import render_parse_summary

        return render_parse_summary(ruleset, detect(ruleset))

    def to_json(self, ruleset: Any) -> dict[str, Any]:
        from iptrace.iptables.era import detect
        from iptrace.iptables.summary import ruleset_to_json

        return ruleset_to_json(ruleset, detect(ruleset))

    def save(self, ruleset: Any) -> str:
        return save(ruleset)

    def foreign_chains(self, ruleset: Any) -> list[ForeignChain]:
        return [ForeignChain(table.name, chain.name, f":{chain.name} {chain.policy or '-'}", chain.line,
                             tuple((f"-A {chain.name} {r.text}".rstrip(), r.line) for r in chain.rules))
                for table in ruleset.tables for chain in table.chains if not chain.name.startswith("KUBE-")]


DATAPLANE = IptablesDataplane()
