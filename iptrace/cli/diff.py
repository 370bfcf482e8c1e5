"""`diff`: two dumps (or two nodes of a collection, or one node in two proxy modes) compared Service by Service."""

from __future__ import annotations

from typing import Any

import click

from iptrace.cli import main, named
from iptrace.cli.common import (
    analyses_of,
    analysis_of,
    batch,
    build_showing_progress,
    check_ip,
    cluster_data,
    emit_json,
    lenient_option,
    namespace_option,
    one_stdin,
    output_option,
    table_option,
    terminal_width,
)


@main.command()
@click.argument("a")
@click.argument("b")
@output_option("text", "json")
@click.option("--cluster", "cluster_files", multiple=True, type=click.Path(),
              help="Services/EndpointSlices JSON, to name comment-less chains on both sides.")
@click.option("--kubeconfig", type=click.Path(dir_okay=False),
              help="Read the Services/EndpointSlices live (read-only) instead of --cluster.")
@click.option("--context", help="kubeconfig context to use with --kubeconfig.")
@click.option("--node-ip", "node_ips", multiple=True, callback=check_ip, metavar="IP",
              help="The node's own address (repeatable), for both sides; a collected node directory's own "
                   "addresses otherwise.")
@namespace_option
@lenient_option
@table_option
def diff(a: str, b: str, output: str, cluster_files: tuple[str, ...], kubeconfig: str | None, context: str | None,
         node_ips: tuple[str, ...], namespace: str | None, lenient: bool, table: str | None) -> None:
    """Service-level difference between two dumps (or two nodes of a collection).

    Services added or removed, endpoints and ports changed, how each kind of client fares through each way in,
    and rules changed outside kube-proxy's chains. Given an iptables dump and an nft ruleset of the same node,
    it is the migration check: "equivalent" when both modes forward every Service port alike, with notes on
    what one mode cannot show.

    \b
    Examples:
      iptrace diff before.txt after.txt
      iptrace diff snap/node1 snap/node2 -o json | jq '.services_changed'
      iptrace diff iptables-save.txt nft-ruleset.txt --node-ip 192.168.49.2
    """
    batch()
    if a == b == "-":
        raise click.UsageError("only one side of a diff can be read from stdin (-); give the other as a file")
    one_stdin({"A": a, "B": b, "--cluster": cluster_files})
    from iptrace.kube.diff import combined, family_pairs
    from iptrace.kube.diff import diff as run_diff
    from iptrace.render.audit import diff_to_json, render_diff_text

    cluster = cluster_data(cluster_files, kubeconfig, context, namespace)
    lefts = analyses_of(a, node_ips=node_ips, cluster=cluster, lenient=lenient, table=table)
    rights = analyses_of(b, node_ips=node_ips, cluster=cluster, lenient=lenient, table=table)
    diffs = []
    noted: set[str] = set()
    for left, right in family_pairs(lefts, rights):
        if not node_ips and left.dataplane.name != right.dataplane.name:
            left, right = _one_node(a, b, left, right, cluster, lenient, table, noted)
        build_showing_progress(left)  # (both whole views are compared: a big node's takes seconds)
        build_showing_progress(right)
        diffs.append(run_diff(left, right))
    result = combined(diffs, lefts, rights)
    if output == "json":
        emit_json(diff_to_json(result))
    else:
        click.echo(named(render_diff_text(result, width=terminal_width(), say=named)), nl=False)


def _one_node(a: str, b: str, left: Any, right: Any, cluster: Any, lenient: bool, table: str | None,
              noted: set[str]) -> tuple[Any, Any]:
    """The migration check compares one node in two modes: when only one side's rules (or collection) name the
    node's addresses (an nft ruleset lists them for its NodePorts; iptables matches them by addrtype), the other
    side is analysed with them too, so that traffic to the node's own address is local on both sides. Said on
    stderr, once a dump (`noted`: the dumps said so far; a dual-stack node's families each redo theirs). (Sides
    of two families share no address.)"""
    from iptrace.kube.sources import of_family

    def known(analysis: Any) -> tuple[str, ...]:
        return analysis.node_ips or tuple(of_family(analysis.layout.node_ips, analysis.family))

    found_left, found_right = known(left), known(right)
    if bool(found_left) == bool(found_right) or left.family != right.family:
        return left, right
    ips, (dump, other) = (found_left, (b, a)) if found_left else (found_right, (a, b))
    if dump not in noted:
        noted.add(dump)
        click.echo(f"note: {dump} does not name the node's own addresses; {', '.join(ips)} from {other} used for "
                   "both sides (the migration check compares one node; --node-ip sets them)", err=True)
    redone = analysis_of(dump, node_ips=ips, cluster=cluster, lenient=lenient, table=table, host=ips[0], note=False)
    return (left, redone) if found_left else (redone, right)
