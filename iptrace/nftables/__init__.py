"""The nftables dataplane: everything that knows nft's ruleset text and JSON, the model of tables, chains, sets and
rules they describe, the nft evaluator (walk.py: hooks, sets, maps, vmaps, numgen, fib, marks) and kube-proxy's nft
layout (layout.py). Imports only `iptrace.errors`, `iptrace.dataplane`, `iptrace.layout` and its own modules; lark
only in grammar.py, loader.py and commands.py. `DATAPLANE` is what the layers above use."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iptrace.dataplane import ForeignChain
from iptrace.layout import KnownServicePort, Layout
from iptrace.nftables.sniff import detect_format, sniff
from iptrace.routes import Routes

if TYPE_CHECKING:
    from iptrace.nftables.model import Ruleset

__all__ = ["DATAPLANE", "NftablesDataplane", "detect_format", "load", "load_path", "save", "sniff"]

# The readers and the printer are imported on first use: every run imports this package to sniff its input
# (iptrace.dataplanes), and an iptables dump's never needs them (~40 ms of imports: the model, lark's grammar).


def load(text: str | bytes, *, source: str = "<ruleset>", lenient: bool = False) -> Ruleset:
    """iptrace.nftables.api.load: nft text (listing or transaction) or nft's JSON -> Ruleset."""
    from iptrace.nftables import api

    return api.load(text, source=source, lenient=lenient)


def load_path(path: str | Path, *, lenient: bool = False) -> Ruleset:
    """iptrace.nftables.api.load_path: a ruleset file -> Ruleset."""
    from iptrace.nftables import api

    return api.load_path(path, lenient=lenient)


def save(ruleset: Ruleset) -> str:
    """iptrace.nftables.printer.save: the ruleset as `nft list ruleset` prints it (which `nft -f` loads back)."""
    from iptrace.nftables import printer

    return printer.save(ruleset)


class NftablesDataplane:
    """The `iptrace.dataplane.Dataplane` of `nft list ruleset`, `nft -j list ruleset` and kube-proxy's nft
    transaction text. One ruleset answers for every IP family it has tables for."""

    name = "nftables"

    def sniff(self, text: str) -> bool:
        return sniff(text)

    def load(self, text: str | bytes, *, source: str = "<dump>", lenient: bool = False) -> Any:
        return load(text, source=source, lenient=lenient)

    def layout(self, ruleset: Any, family: str, *, known: Sequence[KnownServicePort] = ()) -> Layout:
        from iptrace.nftables.layout import read_layout

        return read_layout(ruleset, family, known=known)

    def tracer(self, ruleset: Any, *, node_ips: Sequence[str] = (), pod_cidrs: Sequence[str] = (),
               names: Mapping[str, str] | None = None, routes: Routes | None = None) -> Any:
        from iptrace.nftables.walk import Tracer

        return Tracer(ruleset, node_ips=node_ips, pod_cidrs=pod_cidrs, names=names, routes=routes)

    def service_chain(self, role: str, service_port_name: str, protocol: str) -> str:
        from iptrace.nftables.names import service_chain

        return service_chain(role, service_port_name, protocol)

    def summary(self, ruleset: Any) -> str:
        from iptrace.nftables.summary import render_nft_summary

        return render_nft_summary(ruleset)

    def to_json(self, ruleset: Any) -> dict[str, Any]:
        from iptrace.nftables.summary import nft_ruleset_to_json

        return nft_ruleset_to_json(ruleset)

    def save(self, ruleset: Any) -> str:
        return save(ruleset)

    def foreign_chains(self, ruleset: Any) -> list[ForeignChain]:
        """Every chain outside kube-proxy's own tables, as `nft list` prints it (for node-to-node diffs)."""
        from iptrace.nftables import render
        from iptrace.nftables.names import KUBE_PROXY_FAMILIES, KUBE_PROXY_TABLE

        out = []
        for table in ruleset.tables:
            if table.name == KUBE_PROXY_TABLE and table.family in KUBE_PROXY_FAMILIES:
                continue
            for chain in table.chains:
                header = f"chain {render.name(chain.name)}"
                if chain.base is not None:
                    b = chain.base
                    header += (f" {{ type {b.type} hook {b.hook} priority "
                               f"{render.priority(b.priority, table.family, b.hook)}; policy {b.policy}; }}")
                out.append(ForeignChain(table.label, chain.name, header, chain.line or 0,
                                        tuple((render.rule(r, table.family, verbatim=True), r.line or 0)
                                              for r in chain.rules)))
        return out


DATAPLANE = NftablesDataplane()
