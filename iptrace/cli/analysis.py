"""The analysis commands: parse, services, trace, explain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from iptrace.cli import EXIT_FINDINGS, main
from iptrace.cli.common import (
    analysis_options,
    batch,
    check_ip,
    cluster_data,
    emit_json,
    lenient_option,
    load_dump,
    node_ips_or,
    output_option,
    parse_destination,
    same_family,
    table_option,
)


@main.command()
@click.argument("dump")
@output_option("text", "json")
@click.option("--save", "as_save", is_flag=True, help="Print the dump back in canonical iptables-save form.")
@lenient_option
@table_option
def parse(dump: str, output: str, as_save: bool, lenient: bool, table: str | None) -> None:
    """Validate a dump and summarize it: tables, chains, rule counts, kube-proxy era, warnings.

    DUMP is a file, `-` for stdin, a .gz file or a collected node directory. iptables-save output, `iptables -S`
    listings and nftables rulesets (`nft list ruleset`, `nft -j list ruleset`, kube-proxy's nft transaction
    text) are told apart by their content.

    \b
    Examples:
      iptrace parse node1.txt
      iptables-save | iptrace parse -
      nft list ruleset | iptrace parse -
      iptrace parse --save node1.txt > canonical.txt
      iptrace parse --table nat eks-nat-S.txt -o json | jq '.tables[0].chains | length'
    """
    batch()
    from iptrace.iptables import load, save
    from iptrace.iptables.era import detect
    from iptrace.iptables.loader import read_dump
    from iptrace.nftables import sniff
    from iptrace.render.parse import render_parse_summary, ruleset_to_json

    if dump != "-" and Path(dump).is_dir():
        ruleset, _ = load_dump(dump, lenient=lenient, table=table)
    else:
        text, name = read_dump(dump)
        if sniff(text):
            _parse_nft(text, name, output, as_save, lenient)
            return
        ruleset = load(text, source=name, lenient=lenient, table=table)
    if as_save:
        click.echo(save(ruleset), nl=False)
        return
    era = detect(ruleset)
    if output == "json":
        emit_json(ruleset_to_json(ruleset, era))
    else:
        click.echo(render_parse_summary(ruleset, era), nl=False)


def _parse_nft(text: str, name: str, output: str, as_save: bool, lenient: bool) -> None:
    from iptrace.nftables import load, save
    from iptrace.render.nft_parse import nft_ruleset_to_json, render_nft_summary

    ruleset = load(text, source=name, lenient=lenient)
    if as_save:
        click.echo(save(ruleset), nl=False)
    elif output == "json":
        emit_json(nft_ruleset_to_json(ruleset))
    else:
        click.echo(render_nft_summary(ruleset), nl=False)


@main.command()
@click.argument("dump")
@output_option("text", "json", "dot", "svg", "mermaid")
@click.option("--namespace", "-n", help="Only Services in this namespace.")
@click.option("--service", metavar="NS/NAME", help="Only this Service.")
@click.option("--address", callback=lambda c, p, v: check_ip(c, p, (v,))[0] if v else None, metavar="IP",
              help="Only Services reachable at this address (ClusterIP, externalIP, LB IP, endpoint).")
@analysis_options
def services(dump: str, output: str, namespace: str | None, service: str | None, address: str | None,
             node_ips: tuple[str, ...], cluster_files: tuple[str, ...], kubeconfig: str | None,
             context: str | None, lenient: bool, table: str | None) -> None:
    """The kube-proxy view: every Service port the node forwards, every way in, every endpoint.

    \b
    Examples:
      iptrace services sample_dumps/nodeport-fb-backends.txt
      iptrace services node1.txt --namespace kube-system -o json | jq '.[].endpoints'
      iptrace services node1.txt --service default/fb-backends -o mermaid
      iptrace services node1.txt -o svg > services.svg
    """
    batch()
    from iptrace.kube.view import build_view, filter_view
    from iptrace.render.graph import render_dot, render_mermaid
    from iptrace.render.services import render_services_text, services_to_json

    if service is not None and "/" not in service:
        raise click.BadParameter(f"{service!r}: expected NS/NAME, e.g. default/kubernetes", param_hint="--service")
    ruleset, collected = load_dump(dump, lenient=lenient, table=table)
    cluster = cluster_data(cluster_files, kubeconfig, context, namespace)
    full = build_view(ruleset, cluster=cluster)
    view = filter_view(full, namespace=namespace, service=service, address=address)
    findings = _cluster_findings(full, ruleset, cluster, dump, node_ips_or(node_ips, collected), view) \
        if cluster is not None else []
    if output == "json":
        data = services_to_json(view, cluster)
        if cluster is not None:
            by_label: dict[str, list[Any]] = {}
            for f in findings:
                by_label.setdefault(f.service or "", []).append(f)
            for item in data:
                label = item["service"] + ("" if item["protocol"] == "tcp" else f"/{item['protocol']}")
                item["findings"] = [f.to_json() for f in by_label.pop(label, [])]
            rest = sum(len(v) for v in by_label.values())
            if rest:
                click.echo(f"note: {rest} finding(s) concern Services this node has no rules for, or the node "
                           f"itself; see `iptrace audit {dump} --cluster …`", err=True)
        emit_json(data)
    elif output == "dot":
        click.echo(render_dot(view), nl=False)
    elif output == "svg":
        click.echo(_render_svg(render_dot(view)), nl=False)
    elif output == "mermaid":
        click.echo(render_mermaid(view), nl=False)
    else:
        click.echo(render_services_text(view, cluster), nl=False)
        if cluster is not None:
            from iptrace.render.audit import render_findings_lines

            click.echo("")
            if findings:
                click.echo(f"Compared with the cluster ({getattr(cluster, 'source', '')}): {len(findings)} "
                           "finding(s)")
                click.echo("\n".join(render_findings_lines(findings, with_node=False)))
            else:
                click.echo(f"Compared with the cluster ({getattr(cluster, 'source', '')}): the rules match "
                           "the API.")


def _cluster_findings(full: Any, ruleset: Any, cluster: Any, dump: str, node_ips: list[str], view: Any) -> list[Any]:
    """The API comparison for the Services shown (and, unfiltered, the Services the node lacks)."""
    from iptrace.kube.compare import compare_with_cluster, kube_node_for, view_service_label

    name = Path(dump).name if dump != "-" else "stdin"
    node_name = kube_node_for(name, node_ips, cluster)
    findings = compare_with_cluster(full, cluster, node_name=node_name, ruleset=ruleset, node=name)
    if len(view.services) == len(full.services):
        return findings
    shown = {view_service_label(s) for s in view.services}
    return [f for f in findings if f.service in shown]


def _render_svg(dot: str) -> str:
    import shutil
    import subprocess

    from iptrace.errors import InputError

    exe = shutil.which("dot")
    if exe is None:
        raise InputError("-o svg needs Graphviz's `dot` (apt-get install graphviz); -o dot prints its input")
    done = subprocess.run([exe, "-Tsvg"], input=dot, capture_output=True, text=True, check=False, timeout=120)
    if done.returncode != 0:
        raise InputError(f"Graphviz failed: {done.stderr.strip().splitlines()[-1] if done.stderr else 'no output'}")
    return done.stdout


_SRC_HELP = ("Where the connection comes from: an IP, or `pod` (an address in the pod CIDR), `node` (a node "
             "address) or `external` (an address outside both).")


@main.command()
@click.argument("dump")
@click.option("--dst", required=True, metavar="IP:PORT", help="Destination of the new connection.")
@click.option("--src", default="external", show_default=True, metavar="IP|pod|node|external", help=_SRC_HELP)
@click.option("--proto", type=click.Choice(["tcp", "udp", "sctp"]), default="tcp", show_default=True)
@click.option("--in-interface", metavar="IFACE", help="Interface the packet arrives on (for -i matches).")
@output_option("text", "json")
@analysis_options
def trace(dump: str, dst: str, src: str, proto: str, in_interface: str | None, output: str,
          node_ips: tuple[str, ...], cluster_files: tuple[str, ...], kubeconfig: str | None, context: str | None,
          lenient: bool, table: str | None) -> None:
    """Simulate one new connection through the rules, exactly as the kernel would.

    Prints every outcome (DNAT to which endpoint, ACCEPT, DROP, REJECT, CONTINUE) with its exact probability,
    whether it is masqueraded, and the table, chain, line and text of every rule on its path.

    \b
    Examples:
      iptrace trace sample_dumps/nodeport-fb-backends.txt --dst 10.101.234.168:5001 --src pod
      iptrace trace node1.txt --dst 192.168.49.2:30904 --src external -o json | jq '.outcomes[].destination'
      iptrace trace snap/node1 --dst 10.96.0.10:53 --proto udp
    """
    batch()
    from iptrace.dataplane import Packet, trace_to_json
    from iptrace.iptables.sources import infer_node_ips, infer_pod_cidrs, pick_source
    from iptrace.iptables.walk import Tracer
    from iptrace.kube.view import build_view
    from iptrace.render.trace import render_trace_text

    host, port = parse_destination(dst)
    ruleset, collected = load_dump(dump, lenient=lenient, table=table, ipv6=":" in host)
    same_family(ruleset, host)
    cluster = cluster_data(cluster_files, kubeconfig, context)
    view = build_view(ruleset, cluster=cluster)
    ips = node_ips_or(node_ips, collected) or infer_node_ips(ruleset)
    pods = infer_pod_cidrs(ruleset)
    if src in ("pod", "node", "external"):
        src_ip, note = pick_source(src, ruleset, ips, pods)  # type: ignore[arg-type]
        notes = [note]
    else:
        src_ip, notes = check_ip(click.get_current_context(), click.Option(["--src"]), (src,))[0], []
    tracer = Tracer(ruleset, node_ips=ips, pod_cidrs=pods, names=view.chain_labels)
    result = tracer.trace(Packet(src_ip, host, port, proto, in_interface=in_interface), assumptions=notes)
    if output == "json":
        emit_json(trace_to_json(result))
    else:
        click.echo(render_trace_text(result), nl=False)


@main.command()
@click.argument("dump")
@click.option("--dst", required=True, metavar="IP:PORT", help="The address that fails (or works).")
@click.option("--src", default=None, metavar="IP|pod|node|external",
              help=_SRC_HELP + " Default: explain from a pod, the node and an outside client, and compare.")
@click.option("--proto", type=click.Choice(["tcp", "udp", "sctp"]), default="tcp", show_default=True)
@click.option("--in-interface", metavar="IFACE", help="Interface the packet arrives on (for -i matches).")
@output_option("text", "json")
@analysis_options
def explain(dump: str, dst: str, src: str | None, proto: str, in_interface: str | None, output: str,
            node_ips: tuple[str, ...], cluster_files: tuple[str, ...], kubeconfig: str | None,
            context: str | None, lenient: bool, table: str | None) -> None:
    """Explain why a connection fails and what would work instead.

    Exit status 3 when any diagnosis is an error (the connection does not reach an endpoint), 0 otherwise.

    \b
    Examples:
      iptrace explain sample_dumps/nodeport-fb-backends.txt --dst 10.101.234.168:8001
      iptrace explain node1.txt --dst 10.96.0.10:53 --proto udp --src pod
      iptrace explain snap/node1 --dst 192.168.49.2:30904 -o json | jq '.diagnoses[].id'
    """
    batch()
    from iptrace.explain import Explainer
    from iptrace.render.explain import explain_to_json, render_explain_text

    host, port = parse_destination(dst)
    if src is not None and src not in ("pod", "node", "external"):
        check_ip(click.get_current_context(), click.Option(["--src"]), (src,))
    ruleset, collected = load_dump(dump, lenient=lenient, table=table, ipv6=":" in host)
    same_family(ruleset, host)
    cluster = cluster_data(cluster_files, kubeconfig, context)
    explainer = Explainer(ruleset, node_ips=node_ips_or(node_ips, collected), cluster=cluster)
    report = explainer.explain(host, port, proto=proto, src=src, in_interface=in_interface)
    if output == "json":
        emit_json(explain_to_json(report))
    else:
        click.echo(render_explain_text(report), nl=False)
    if report.has_error:
        raise click.exceptions.Exit(EXIT_FINDINGS)
