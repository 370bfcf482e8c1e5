"""The analysis commands: parse, services, trace, explain."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import click

from iptrace.cli import EXIT_ERROR, EXIT_FINDINGS, main, named
from iptrace.cli.common import (
    analyses_of,
    analysis_of,
    analysis_options,
    batch,
    build_showing_progress,
    check_ip,
    check_source,
    cluster_data,
    emit_json,
    emit_json_items,
    hold,
    lenient_option,
    load_conntrack,
    load_dump,
    namespace_option,
    one_stdin,
    output_option,
    table_option,
    terminal_width,
)
from iptrace.text import counted


@main.command()
@click.argument("dump")
@output_option("text", "json")
@click.option("--save", "as_save", is_flag=True,
              help="Print the rules back in their own syntax (canonical iptables-save, or nft).")
@lenient_option
@table_option
def parse(dump: str, output: str, as_save: bool, lenient: bool, table: str | None) -> None:
    """Validate a dump and summarize it: tables, chains, rule counts, kube-proxy era, warnings.

    DUMP is a file, `-` for stdin, a .gz file or a collected node directory.

    \b
    Examples:
      iptrace parse node1.txt
      iptables-save | iptrace parse -
      iptrace parse --save node1.txt > canonical.txt
      iptrace parse --table nat eks-nat-S.txt -o json | jq '.tables[0].chains | length'
    """
    batch()
    dataplane, ruleset, _ = load_dump(dump, lenient=lenient, table=table, note=False)
    if as_save:
        click.echo(dataplane.save(ruleset), nl=False)
    elif output == "json":
        emit_json(dataplane.to_json(ruleset))
    else:
        click.echo(dataplane.summary(ruleset), nl=False)


@main.command()
@click.argument("dump")
@output_option("text", "json", "dot", "svg", "mermaid")
@click.option("--namespace", "-n", help="Only Services in this namespace.")
@click.option("--service", metavar="NS/NAME[:PORT]",
              help="Only this Service (or one named port of it); NAME.NAMESPACE[.svc…] also names it.")
@click.option("--address", callback=lambda c, p, v: check_ip(c, p, (v,))[0] if v else None, metavar="IP",
              help="Only Services reachable at this address (ClusterIP, externalIP, LB IP, endpoint).")
@analysis_options
def services(dump: str, output: str, namespace: str | None, service: str | None, address: str | None,
             node_ips: tuple[str, ...], cluster_files: tuple[str, ...], kubeconfig: str | None,
             context: str | None, routes_file: str | None, lenient: bool, table: str | None) -> None:
    """The kube-proxy view: every Service port the node forwards, every way in, every endpoint.

    \b
    Examples:
      iptrace services sample_dumps/nodeport-fb-backends.txt
      iptrace services node1.txt --namespace kube-system -o json | jq '.[].endpoints'
      iptrace services node1.txt --service default/fb-backends -o mermaid
      iptrace services node1.txt -o svg > services.svg
    """
    batch()
    one_stdin({"DUMP": dump, "--cluster": cluster_files, "--routes": routes_file})
    from iptrace.errors import InputError
    from iptrace.kube.select import select_ports
    from iptrace.render.services import iter_services_json, iter_services_json_texts, render_services_text

    if service is not None and "/" not in service:
        from iptrace.kube.names import service_ref

        # (its DNS name, as its clients know it: NAME.NAMESPACE[.svc…][:PORT-NAME])
        host, _, port = service.partition(":")
        ref = service_ref(host, port or "0")
        if ref is None or ref.namespace is None:
            raise click.BadParameter(f"{service!r}: expected NS/NAME or NAME.NAMESPACE, e.g. default/kubernetes",
                                     param_hint="--service")
        service = f"{ref.namespace}/{ref.name}" + (f":{port}" if port else "")
    if address is not None:
        from iptrace.dataplane import as_sent

        address, said = as_sent(address, "--address")
        for note in said:
            click.echo(f"note: {note}", err=True)
    cluster = cluster_data(cluster_files, kubeconfig, context, namespace)
    # One view per IP family kube-proxy programs (an nftables ruleset of a dual-stack node has both).
    pairs = []
    errors = []
    filtered = namespace is not None or service is not None or address is not None
    analyses = analyses_of(dump, node_ips=node_ips, cluster=cluster, lenient=lenient, table=table,
                           routes_file=routes_file)
    # Every port's JSON text, the ports of a shape met before written from its text (render.shaped): printed
    # compactly, a list longer than LARGE_LIST (a shorter one is indented, from the views' objects).
    from iptrace.render.json import LARGE_LIST

    compact = (output == "json" and cluster is None and not filtered
               and sum(len(a.layout.keys) for a in analyses) > LARGE_LIST)
    for analysis in analyses:
        if not filtered:
            build_showing_progress(analysis)
        if compact:
            continue
        try:
            pairs.append((analysis, select_ports(analysis, namespace=namespace, service=service, address=address,
                                                 source=analysis.ruleset.source)))
        except InputError as exc:  # a filter that matches only in the other family
            errors.append((analysis.family, exc))
    if compact:
        from iptrace.render.shaped import port_json_texts

        ports = hold([p for a in analyses for p in a.views.shaped()])  # (not freed one by one: see hold)
        emit_json_items((), len(ports), port_json_texts(ports))
        return
    if not pairs:
        # An address's own family says what is closest to it (the other family's view has none of its kind).
        asked = ("ipv6" if ":" in address else "ipv4") if address is not None else None
        raise next((exc for family, exc in errors if family == asked), errors[0][1])
    if len(pairs) > 1 and output not in ("text", "json"):
        first = pairs[0][1]
        pairs = [(pairs[0][0], replace(first, services=tuple(s for _, v in pairs for s in v.services),
                                       chain_labels={k: lab for _, v in pairs for k, lab in v.chain_labels.items()}))]
    findings = [f for a, v in pairs
                for f in (_cluster_findings(a, cluster, dump, v, filtered) if cluster is not None else [])]
    if output == "json":
        # Written as each Service port's object is made: a big node's whole answer is never held at once.
        items = (item for _, v in pairs for item in iter_services_json(v, cluster))
        if cluster is not None:
            by_label: dict[str, list[Any]] = {}
            for f in findings:
                by_label.setdefault(f.service or "", []).append(f)
            shown = {_json_label(s.label, s.protocol) for _, v in pairs for s in v.services}
            rest = sum(len(fs) for label, fs in by_label.items() if label not in shown)
            if rest:
                said = counted(rest, "finding concerns", "findings concern")
                click.echo(named(f"note: {said} Services this node has no rules for, or the node itself; see "
                                 f"`iptrace audit {dump} --cluster …`"), err=True)
            items = _with_findings(items, by_label)
        # (without cluster data, each object's text is written directly: the same bytes, ~half the cost)
        texts = (text for _, v in pairs for text in iter_services_json_texts(v)) if cluster is None else None
        emit_json_items(items, sum(len(v.services) for _, v in pairs), texts)
    elif output in ("dot", "svg", "mermaid"):
        from iptrace.render.graph import render_dot, render_mermaid  # (only here: text and json do not draw)

        if output == "dot":
            click.echo(render_dot(pairs[0][1]), nl=False)
        elif output == "svg":
            click.echo(_render_svg(render_dot(pairs[0][1])), nl=False)
        else:
            from iptrace.render.graph import mermaid_too_big

            text = render_mermaid(pairs[0][1])
            click.echo(text, nl=False)
            big = mermaid_too_big(text)
            if big is not None:
                click.echo(f"note: {big}", err=True)
    else:
        width = terminal_width()
        click.echo(named("\n".join(render_services_text(v, cluster, width=width, say=named) for _, v in pairs)),
                   nl=False)
        if cluster is not None:
            from iptrace.render.audit import render_findings_lines

            click.echo("")
            if findings:
                click.echo(f"Compared with the cluster ({getattr(cluster, 'source', '')}): "
                           f"{counted(len(findings), 'finding')}")
                click.echo(named("\n".join(render_findings_lines(findings, with_node=False,
                                                                  width=terminal_width(), say=named))))
            else:
                click.echo(f"Compared with the cluster ({getattr(cluster, 'source', '')}): the rules match "
                           "the API.")


def _json_label(service: str, protocol: str) -> str:
    """The label findings name a Service port by: its `service` label, and its protocol unless TCP."""
    return service + ("" if protocol == "tcp" else f"/{protocol}")


def _with_findings(items: Iterator[dict[str, Any]], by_label: dict[str, list[Any]]) -> Iterator[dict[str, Any]]:
    """Each object with the findings about its Service port (the first object of a label takes them all)."""
    for item in items:
        item["findings"] = [f.to_json() for f in by_label.pop(_json_label(item["service"], item["protocol"]), [])]
        yield item


def _cluster_findings(analysis: Any, cluster: Any, dump: str, view: Any, filtered: bool) -> list[Any]:
    """The API comparison for the Services shown (and, unfiltered, the Services the node lacks)."""
    from iptrace.collect.inputs import dump_node_name
    from iptrace.kube.audit import kube_node_for
    from iptrace.kube.compare import compare_with_cluster, view_service_label

    name = dump_node_name(dump)
    node_name = kube_node_for(name, analysis.node_ips, cluster)
    shown = {view_service_label(s) for s in view.services} if filtered else None
    return compare_with_cluster(analysis, cluster, node_name=node_name, node=name, labels=shown)


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


_DST_HELP = ("Destination of the new connection: IP:PORT or IP:PORT/proto, or a Service by name "
             "(kube-dns.kube-system:53, NS/NAME:PORT-NAME: its ClusterIP in these rules) (repeatable: every one "
             "answered after one load).")
_DST_FILE_HELP = ("File with one destination a line, as --dst takes it (IP:PORT, IP:PORT/proto or a Service by "
                  "name; # comments, blank lines; `-`: stdin): each "
                  "answered after one load. A bad line is an error (exit 1); the others are still answered.")
_MANY = ("With several destinations, -o json prints a JSON array of the one-destination objects in input order "
         "(an object with `error` for a bad line) and text a header line per destination.")


@main.command()
@click.argument("dump")
@click.option("--dst", "dsts", multiple=True, metavar="IP:PORT", help=_DST_HELP)
@click.option("--dst-file", type=click.Path(dir_okay=False, allow_dash=True), metavar="FILE", help=_DST_FILE_HELP)
@click.option("--src", default="external", show_default=True, metavar="IP|pod|node|external", help=_SRC_HELP)
@click.option("--proto", type=click.Choice(["tcp", "udp", "sctp"]), default="tcp", show_default=True,
              help="Protocol of a destination that names none.")
@click.option("--in-interface", metavar="IFACE", help="Interface the packet arrives on (for -i matches).")
@output_option("text", "json")
@analysis_options
@namespace_option
def trace(dump: str, dsts: tuple[str, ...], dst_file: str | None, src: str, proto: str, in_interface: str | None,
          output: str, node_ips: tuple[str, ...], cluster_files: tuple[str, ...], kubeconfig: str | None,
          context: str | None, routes_file: str | None, lenient: bool, table: str | None,
          namespace: str | None) -> None:
    """Simulate one new connection through the rules, exactly as the kernel would.

    Prints every outcome (DNAT to which endpoint, ACCEPT, DROP, REJECT, CONTINUE) with its exact probability,
    whether it is masqueraded, and the table, chain, line and text of every rule on its path. Exit status 0
    whatever the verdict; 1 when a destination could not be traced.

    \b
    Examples:
      iptrace trace sample_dumps/nodeport-fb-backends.txt --dst 10.101.234.168:5001 --src pod
      iptrace trace node1.txt --dst 192.168.49.2:30904 --node-ip 192.168.49.2 -o json | jq '.outcomes[].destination'
      iptrace trace snap/node1 --dst 10.96.0.10:53 --proto udp
      iptrace trace node1.txt --dst-file addresses.txt -o json | jq '.[].outcomes[0].verdict'
    """
    batch()
    from iptrace.cli.questions import answer_all, check_mapped_source, emit_answers, read_questions, resolved
    from iptrace.dataplane import Packet, as_sent, trace_to_json
    from iptrace.kube.sources import (
        Claimed,
        destination_note,
        of_family,
        pick_source,
        pod_interface,
        pod_interface_note,
    )
    from iptrace.render.trace import render_trace_text

    one_stdin({"DUMP": dump, "--dst-file": dst_file, "--cluster": cluster_files, "--routes": routes_file})
    questions = read_questions(dsts, dst_file, proto)
    check_source(src)
    given = src
    src, src_notes = as_sent(src, "source")
    cluster = cluster_data(cluster_files, kubeconfig, context, namespace)
    sources: dict[int, tuple[str, list[str], str | None]] = {}  # analysis -> (source, its notes, its interface)

    def analysis_for(family: str, hosts: Any) -> Any:
        return analysis_of(dump, node_ips=node_ips, cluster=cluster, lenient=lenient, table=table, hosts=hosts,
                           routes_file=routes_file)

    def answer(analysis: Any, q: Any) -> Any:
        check_mapped_source(given, src, q.host)
        picked = sources.get(id(analysis))
        if picked is None:
            layout = analysis.layout
            ips = of_family(analysis.node_ips, analysis.family) or of_family(layout.node_ips, analysis.family)
            if src in ("pod", "node", "external"):
                src_ip, note = pick_source(src, analysis.family, ips, layout.pod_cidrs, layout.endpoint_ips,
                                           layout.node_pod_cidrs, claimed=Claimed(layout))
                arrives = pod_interface(layout.pod_interfaces) if src == "pod" and in_interface is None else None
                notes = [note] if arrives is None else [note, pod_interface_note(arrives)]
                picked = sources[id(analysis)] = (src_ip, notes, arrives or in_interface)
            else:
                picked = sources[id(analysis)] = (src, list(src_notes), in_interface)
        about = destination_note(analysis.layout, analysis.node_ips, q.host, q.port, q.proto)
        return analysis.tracer.trace(Packet(picked[0], q.host, q.port, q.proto, in_interface=picked[2]),
                                     assumptions=[*picked[1], *q.notes, *([about] if about else [])])

    if len(questions) == 1 and questions[0].error is None and dst_file is None:
        q = questions[0]
        analysis = analysis_of(dump, node_ips=node_ips, cluster=cluster, lenient=lenient, table=table,
                               host=q.host or None, routes_file=routes_file)
        result = answer(analysis, resolved(q, analysis, cluster))
        if output == "json":
            emit_json(trace_to_json(result))
        else:
            click.echo(named(render_trace_text(result)), nl=False)
        return
    answers = answer_all(questions, analysis_for, answer, cluster)
    if len(questions) == 1 and dst_file is None:
        _single(answers[0], output, trace_to_json, render_trace_text)
        return
    if emit_answers(questions, answers, output, trace_to_json, render_trace_text):
        raise click.exceptions.Exit(EXIT_ERROR)


def _single(found: Any, output: str, to_json: Any, to_text: Any) -> None:
    """One --dst that could not be asked as it was given (a name the cluster data resolves): printed as a lone
    --dst is (an unusable one is an error). A --dst-file's answers are an array whatever its length, so that a
    script reads a file of one line as it reads one of ten."""
    from iptrace.errors import InputError

    if isinstance(found, str):
        raise InputError(found)
    if output == "json":
        emit_json(to_json(found))
    else:
        click.echo(named(to_text(found)), nl=False)


@main.command()
@click.argument("dump")
@click.option("--dst", "dsts", multiple=True, metavar="IP:PORT",
              help="The address that fails (or works): IP:PORT or IP:PORT/proto, or a Service by name "
                   "(kube-dns.kube-system:53, NS/NAME:PORT-NAME: its ClusterIP in these rules) (repeatable).")
@click.option("--dst-file", type=click.Path(dir_okay=False, allow_dash=True), metavar="FILE", help=_DST_FILE_HELP)
@click.option("--src", default=None, metavar="IP|pod|node|external",
              help=_SRC_HELP + " Default: explain from a pod, the node and an outside client, and compare.")
@click.option("--proto", type=click.Choice(["tcp", "udp", "sctp"]), default="tcp", show_default=True,
              help="Protocol of a destination that names none.")
@click.option("--in-interface", metavar="IFACE", help="Interface the packet arrives on (for -i matches).")
@click.option("--conntrack", "conntrack_file", type=click.Path(dir_okay=False, allow_dash=True), metavar="FILE",
              help="The node's `conntrack -L` (plain or -o extended) or /proc/net/nf_conntrack: also check the flows "
                   "that already exist (stale-conntrack, stale-conntrack-no-dnat). Default for DIR/NODE: its "
                   "conntrack.txt, if collected.")
@click.option("--verbose", "-v", is_flag=True,
              help="With a conntrack table: also say which entries agree with the rules.")
@output_option("text", "json")
@analysis_options
@namespace_option
def explain(dump: str, dsts: tuple[str, ...], dst_file: str | None, src: str | None, proto: str,
            in_interface: str | None, conntrack_file: str | None, verbose: bool, output: str,
            node_ips: tuple[str, ...], cluster_files: tuple[str, ...], kubeconfig: str | None, context: str | None,
            routes_file: str | None, lenient: bool, table: str | None, namespace: str | None) -> None:
    """Explain why a connection fails and what would work instead.

    With a conntrack table (--conntrack FILE, or a collected node's conntrack.txt), also the flows that already
    exist: entries that still go to an endpoint the rules no longer choose, and UDP entries never DNATed
    while the rules now DNAT them, with the `conntrack -D` command that deletes exactly those. Several
    destinations (--dst repeated, --dst-file) are answered after one load. Exit status: 1 when a destination
    could not be explained (a bad --dst-file line), else 3 when any diagnosis is an error (the connection does
    not reach an endpoint), else 0.

    \b
    Examples:
      iptrace explain sample_dumps/nodeport-fb-backends.txt --dst 10.101.234.168:8001
      iptrace explain node1.txt --dst 10.96.0.10:53 --proto udp --src pod
      iptrace explain snap/node1 --dst 192.168.49.2:30904 -o json | jq '.diagnoses[].id'
      iptrace explain node1.txt --dst 10.96.0.10:53 --proto udp --conntrack node1-conntrack.txt
      iptrace explain node1.txt --dst-file addresses.txt -o json | jq '.[] | [.destination, .verdict]'
    """
    batch()
    from iptrace.cli.questions import answer_all, check_mapped_source, emit_answers, read_questions, resolved
    from iptrace.dataplane import as_sent
    from iptrace.explain import Explainer
    from iptrace.render.explain import explain_to_json, render_explain_text

    width = terminal_width()

    def as_text(report: Any) -> str:
        return render_explain_text(report, width, named)

    one_stdin({"DUMP": dump, "--dst-file": dst_file, "--conntrack": conntrack_file, "--cluster": cluster_files,
               "--routes": routes_file})
    questions = read_questions(dsts, dst_file, proto)
    src_notes: tuple[str, ...] = ()
    given = src
    if src is not None:
        check_source(src)
        src, src_notes = as_sent(src, "source")
    cluster = cluster_data(cluster_files, kubeconfig, context, namespace)
    explainers: dict[int, Any] = {}
    flows: list[Any] = []

    def analysis_for(family: str, hosts: Any) -> Any:
        return analysis_of(dump, node_ips=node_ips, cluster=cluster, lenient=lenient, table=table, hosts=hosts,
                           routes_file=routes_file)

    def answer(analysis: Any, q: Any) -> Any:
        check_mapped_source(given, src, q.host)
        explainer = explainers.get(id(analysis))
        if explainer is None:
            explainer = explainers[id(analysis)] = Explainer(analysis, cluster=cluster)
            if not flows:
                flows.append(load_conntrack(conntrack_file, dump, lenient=lenient,
                                            focus=[(x.host, x.port, x.proto) for x in questions
                                                   if x.error is None]))
        report = explainer.explain(q.host, q.port, proto=q.proto, src=src, in_interface=in_interface,
                                   notes=(*src_notes, *q.notes))
        if flows[0] is not None:
            from iptrace.explain.conntrack import conntrack_diagnoses, with_conntrack

            report = with_conntrack(report, conntrack_diagnoses(
                explainer.tracer, explainer.analysis.ruleset, flows[0], q.host, q.port, proto=q.proto, src=src,
                verbose=verbose, version_hint=analysis.layout.proxy.version_hint))
        return report

    if len(questions) == 1 and questions[0].error is None and dst_file is None:
        q = questions[0]
        analysis = analysis_of(dump, node_ips=node_ips, cluster=cluster, lenient=lenient, table=table,
                               host=q.host or None, routes_file=routes_file)
        report = answer(analysis, resolved(q, analysis, cluster))
        reports = [report]
        if output == "json":
            emit_json(explain_to_json(report))
        else:
            click.echo(named(as_text(report)), nl=False)
    else:
        answers = answer_all(questions, analysis_for, answer, cluster)
        reports = [a for a in answers if not isinstance(a, str)]
        if len(questions) == 1 and dst_file is None:
            _single(answers[0], output, explain_to_json, as_text)
        elif emit_answers(questions, answers, output, explain_to_json, as_text):
            raise click.exceptions.Exit(EXIT_ERROR)
    if any(r.has_error for r in reports):
        raise click.exceptions.Exit(EXIT_FINDINGS)
