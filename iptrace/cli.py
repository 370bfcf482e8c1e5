"""The command line: the only place that imports click, prints or exits.

Every command parses its options, calls the library and renders. Library errors (IptraceError) become one
`Error: …` line on stderr and exit status 1, here and nowhere else. Heavy modules (lark, paramiko,
kubernetes) are imported inside the commands so that `iptrace --help` stays fast.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from iptrace import __version__
from iptrace.errors import IptraceError, ParseError

EXIT_ERROR = 1
EXIT_FINDINGS = 3


def _fail(exc: IptraceError) -> NoReturn:
    if isinstance(exc, ParseError):
        click.echo(f"Error: {exc.with_caret()}", err=True)
    else:
        click.echo(f"Error: {exc}", err=True)
    raise click.exceptions.Exit(EXIT_ERROR)


class _Group(click.Group):
    """The single error boundary of the program."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except IptraceError as exc:
            _fail(exc)
        except BrokenPipeError:
            # `iptrace … | head`: the reader went away; that is not an error of ours.
            sys.stderr.close()
            raise click.exceptions.Exit(0) from None
        except (click.exceptions.Exit, click.ClickException, click.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:  # the last line of defence: a bug must still not print a traceback
            if os.environ.get("IPTRACE_DEBUG"):
                raise
            click.echo(f"Error: internal error ({type(exc).__name__}: {exc}); please report it with the "
                       "input that caused it (IPTRACE_DEBUG=1 shows the traceback)", err=True)
            raise click.exceptions.Exit(EXIT_ERROR) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, "--version", prog_name="iptrace")
def main() -> None:
    """Show how a Kubernetes node really forwards traffic, from its iptables rules.

    \b
    Examples:
      iptrace explain sample_dumps/nodeport-fb-backends.txt --dst 10.101.234.168:8001
      iptrace services node1.txt --namespace default
      iptrace trace node1.txt --dst 10.101.234.168:5001 --src pod
      iptrace parse node1.txt
    """


# -- shared option helpers ------------------------------------------------------------------------------

def _output_option(*choices: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option("-o", "--output", type=click.Choice(choices), default="text", show_default=True,
                        help="Output format; json goes to stdout undecorated so `| jq` works.")


_lenient_option = click.option("--lenient", is_flag=True,
                               help="Analyze what can be read and list what was skipped instead of failing.")
_table_option = click.option("--table", "table", type=click.Choice(["raw", "mangle", "nat", "filter", "security"]),
                             help="Table of an `iptables -S` listing when its chains do not tell.")


def _load(dump: str, *, lenient: bool = False, table: str | None = None,
          ipv6: bool = False) -> tuple[Any, list[str]]:
    """Load DUMP (a file, `-`, a .gz, or a collected node directory) → (Ruleset, node addresses).

    For a node directory the dump that answers the question is chosen: ip6tables-save.txt for an IPv6
    destination, and iptables-legacy-save.txt when kube-proxy's rules are only in the legacy backend.
    """
    from iptrace.parse import load, load_path

    path = Path(dump)
    if dump == "-" or not path.is_dir():
        return load_path(dump, lenient=lenient, table=table), []
    from iptrace.collect.store import read_node_dir
    from iptrace.kube.era import detect

    snapshot = read_node_dir(path)
    text, name = snapshot.dump_text, str(snapshot.dump_path)
    if ipv6 and snapshot.ip6_dump_text:
        text, name = snapshot.ip6_dump_text, str(path / "ip6tables-save.txt")
    ruleset = load(text, source=name, lenient=lenient, table=table)
    if snapshot.legacy_dump_text and not ipv6 and not detect(ruleset).has_iptables_rules:
        legacy = load(snapshot.legacy_dump_text, source=str(path / "iptables-legacy-save.txt"), lenient=lenient)
        if detect(legacy).has_iptables_rules:
            click.echo(f"note: {path.name}: kube-proxy's rules are in the legacy iptables backend; analyzing "
                       "iptables-legacy-save.txt", err=True)
            ruleset = legacy
    return ruleset, list(snapshot.addresses)


def _batch() -> None:
    """An analysis command builds millions of small acyclic objects and then exits: the cyclic garbage
    collector would only re-traverse them (it costs ~1 s of a 5,000-Service `services` run)."""
    import gc

    gc.disable()


def _emit_json(data: Any) -> None:
    from iptrace.render.json import dumps

    click.echo(dumps(data), nl=False)


# -- parse ----------------------------------------------------------------------------------------------

@main.command()
@click.argument("dump")
@_output_option("text", "json")
@click.option("--save", "as_save", is_flag=True, help="Print the dump back in canonical iptables-save form.")
@_lenient_option
@_table_option
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
    _batch()
    from iptrace.kube.era import detect
    from iptrace.parse import save
    from iptrace.render.parse import render_parse_summary, ruleset_to_json

    ruleset, _ = _load(dump, lenient=lenient, table=table)
    if as_save:
        click.echo(save(ruleset), nl=False)
        return
    era = detect(ruleset)
    if output == "json":
        _emit_json(ruleset_to_json(ruleset, era))
    else:
        click.echo(render_parse_summary(ruleset, era), nl=False)


# -- analysis commands ---------------------------------------------------------------------------------------

def _parse_destination(text: str) -> tuple[str, int]:
    """`IP:PORT` or `[IPv6]:PORT` → (ip, port)."""
    import ipaddress

    host, sep, port = text.rpartition(":")
    if text.startswith("[") and "]:" in text:
        host, port = text[1:].split("]:", 1)
    elif not sep or ":" in host:
        raise click.BadParameter(f"{text!r}: expected IP:PORT, e.g. 10.96.0.10:53 or [fd00::10]:53",
                                 param_hint="--dst")
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected IP:PORT, e.g. 10.96.0.10:53 or [fd00::10]:53",
                                 param_hint="--dst") from None
    if not 0 < number <= 65535:
        raise click.BadParameter(f"port {number} is out of range (1-65535)", param_hint="--dst")
    return host, number


def _check_ip(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    import ipaddress

    for value in values:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise click.BadParameter(f"{value!r} is not an IP address", ctx=ctx, param=param) from None
    return values


def _analysis_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options every analysis command shares: node addresses and cluster data."""
    options = [
        click.option("--node-ip", "node_ips", multiple=True, callback=_check_ip, metavar="IP",
                     help="The node's own address (repeatable); taken from a collected node directory's "
                          "metadata when DUMP is one."),
        click.option("--cluster", "cluster_files", multiple=True, type=click.Path(dir_okay=True),
                     help="Services/EndpointSlices/Nodes JSON (`kubectl get --raw …` or `kubectl get … -o json`)."),
        click.option("--kubeconfig", type=click.Path(dir_okay=False),
                     help="Read Services/EndpointSlices/Nodes live (read-only) with this kubeconfig."),
        click.option("--context", help="kubeconfig context to use with --kubeconfig."),
        _lenient_option,
        _table_option,
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _cluster(cluster_files: tuple[str, ...], kubeconfig: str | None, context: str | None,
             namespace: str | None = None) -> Any:
    if cluster_files:
        from iptrace.collect.cluster import load_cluster_files

        return load_cluster_files(list(cluster_files))
    if kubeconfig or context:
        from iptrace.collect.cluster import load_cluster_live

        return load_cluster_live(kubeconfig, context, namespace)
    return None


def _same_family(ruleset: Any, host: str) -> None:
    """An IPv6 question to an iptables-save dump (or the reverse) has no answer in it: say which dump would."""
    from iptrace.errors import InputError

    wanted = "ipv6" if ":" in host else "ipv4"
    if ruleset.family != wanted:
        tool = "ip6tables-save" if wanted == "ipv6" else "iptables-save"
        raise InputError(f"{host} is an {wanted.replace('ip', 'IP')} address but {ruleset.source} is an "
                         f"{ruleset.family.replace('ip', 'IP')} dump; give the node's {tool} output instead")


def _node_ips(given: tuple[str, ...], collected: list[str]) -> list[str]:
    return list(given) or collected


@main.command()
@click.argument("dump")
@_output_option("text", "json", "dot", "svg", "mermaid")
@click.option("--namespace", "-n", help="Only Services in this namespace.")
@click.option("--service", metavar="NS/NAME", help="Only this Service.")
@click.option("--address", callback=lambda c, p, v: _check_ip(c, p, (v,))[0] if v else None, metavar="IP",
              help="Only Services reachable at this address (ClusterIP, externalIP, LB IP, endpoint).")
@_analysis_options
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
    _batch()
    from iptrace.kube.view import build_view, filter_view
    from iptrace.render.graph import render_dot, render_mermaid
    from iptrace.render.services import render_services_text, services_to_json

    if service is not None and "/" not in service:
        raise click.BadParameter(f"{service!r}: expected NS/NAME, e.g. default/kubernetes", param_hint="--service")
    ruleset, collected = _load(dump, lenient=lenient, table=table)
    cluster = _cluster(cluster_files, kubeconfig, context, namespace)
    full = build_view(ruleset, cluster=cluster)
    view = filter_view(full, namespace=namespace, service=service, address=address)
    findings = _cluster_findings(full, ruleset, cluster, dump, _node_ips(node_ips, collected), view) \
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
        _emit_json(data)
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
@_output_option("text", "json")
@_analysis_options
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
    _batch()
    from iptrace.kube.view import build_view
    from iptrace.render.trace import render_trace_text
    from iptrace.trace.packet import Packet
    from iptrace.trace.result import trace_to_json
    from iptrace.trace.sources import infer_node_ips, infer_pod_cidrs, pick_source
    from iptrace.trace.walk import Tracer

    host, port = _parse_destination(dst)
    ruleset, collected = _load(dump, lenient=lenient, table=table, ipv6=":" in host)
    _same_family(ruleset, host)
    cluster = _cluster(cluster_files, kubeconfig, context)
    view = build_view(ruleset, cluster=cluster)
    ips = _node_ips(node_ips, collected) or infer_node_ips(ruleset)
    pods = infer_pod_cidrs(ruleset)
    if src in ("pod", "node", "external"):
        src_ip, note = pick_source(src, ruleset, ips, pods)  # type: ignore[arg-type]
        notes = [note]
    else:
        src_ip, notes = _check_ip(click.get_current_context(), click.Option(["--src"]), (src,))[0], []
    tracer = Tracer(ruleset, node_ips=ips, pod_cidrs=pods, names=view.chain_labels)
    result = tracer.trace(Packet(src_ip, host, port, proto, in_interface=in_interface), assumptions=notes)
    if output == "json":
        _emit_json(trace_to_json(result))
    else:
        click.echo(render_trace_text(result), nl=False)


@main.command()
@click.argument("dump")
@click.option("--dst", required=True, metavar="IP:PORT", help="The address that fails (or works).")
@click.option("--src", default=None, metavar="IP|pod|node|external",
              help=_SRC_HELP + " Default: explain from a pod, the node and an outside client, and compare.")
@click.option("--proto", type=click.Choice(["tcp", "udp", "sctp"]), default="tcp", show_default=True)
@click.option("--in-interface", metavar="IFACE", help="Interface the packet arrives on (for -i matches).")
@_output_option("text", "json")
@_analysis_options
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
    _batch()
    from iptrace.explain import Explainer
    from iptrace.render.explain import explain_to_json, render_explain_text

    host, port = _parse_destination(dst)
    if src is not None and src not in ("pod", "node", "external"):
        _check_ip(click.get_current_context(), click.Option(["--src"]), (src,))
    ruleset, collected = _load(dump, lenient=lenient, table=table, ipv6=":" in host)
    _same_family(ruleset, host)
    cluster = _cluster(cluster_files, kubeconfig, context)
    explainer = Explainer(ruleset, node_ips=_node_ips(node_ips, collected), cluster=cluster)
    report = explainer.explain(host, port, proto=proto, src=src, in_interface=in_interface)
    if output == "json":
        _emit_json(explain_to_json(report))
    else:
        click.echo(render_explain_text(report), nl=False)
    if report.has_error:
        raise click.exceptions.Exit(EXIT_FINDINGS)


# -- fleet ----------------------------------------------------------------------------------------------------

def _collect_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--inventory", type=click.Path(exists=True, dir_okay=False),
                     help="File with one node per line ([user@]host[:port], # comments; Ansible INI works)."),
        click.option("--kubeconfig", type=click.Path(dir_okay=False),
                     help="Take the nodes from the cluster (their InternalIPs), read-only."),
        click.option("--context", help="kubeconfig context for --kubeconfig."),
        click.option("-l", "--selector", "node_selector", metavar="LABELS",
                     help="With --kubeconfig: only nodes with these labels (e.g. node-role.kubernetes.io/worker)."),
        click.option("--user", help="SSH user (default: ~/.ssh/config, then the local user)."),
        click.option("--port", type=int, help="SSH port (default: ~/.ssh/config, then 22)."),
        click.option("-i", "identity_files", multiple=True, type=click.Path(dir_okay=False),
                     help="Private key (repeatable); the agent and ~/.ssh/config keys are tried too."),
        click.option("--known-hosts", type=click.Path(dir_okay=False), help="known_hosts file to verify hosts."),
        click.option("--accept-new-host-keys", is_flag=True,
                     help="Accept and record unknown host keys (never changed ones), like "
                          "StrictHostKeyChecking=accept-new."),
        click.option("--jump", metavar="[USER@]HOST[:PORT]", help="Jump host, like ssh -J."),
        click.option("--ssh-config", type=click.Path(dir_okay=False),
                     help="ssh_config to use (default ~/.ssh/config)."),
        click.option("--sudo", is_flag=True, help="Run iptables-save with `sudo -n` (a password prompt is an error)."),
        click.option("--parallel", type=int, default=10, show_default=True, help="Nodes collected at once."),
        click.option("--timeout", type=float, default=30.0, show_default=True,
                     help="Seconds to connect, and per command."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _targets(nodes: tuple[str, ...], inventory: str | None, kubeconfig: str | None, context: str | None,
             node_selector: str | None) -> list[Any]:
    from iptrace.collect.ssh import NodeTarget, read_inventory

    targets: list[Any] = [NodeTarget.parse(n) for n in nodes]
    if inventory:
        targets += read_inventory(Path(inventory))
    if kubeconfig or context or node_selector:
        from iptrace.collect.cluster import load_cluster_live, node_addresses

        state = load_cluster_live(kubeconfig, context, None, node_selector=node_selector)
        targets += [NodeTarget.parse(ip if ":" not in ip else f"[{ip}]", name=name)
                    for name, ip in node_addresses(state, node_selector)]
    if not targets:
        raise click.UsageError("no nodes: give NODE arguments, --inventory FILE or --kubeconfig")
    return targets


def _run_collect(targets: list[Any], out: Path, opts: dict[str, Any]) -> list[Any]:
    from iptrace.collect.ssh import collect

    kwargs: dict[str, Any] = {
        "out_dir": out, "user": opts["user"], "port": opts["port"], "identity_files": opts["identity_files"],
        "known_hosts": Path(opts["known_hosts"]) if opts["known_hosts"] else None,
        "accept_new_host_keys": opts["accept_new_host_keys"], "jump": opts["jump"], "sudo": opts["sudo"],
        "parallel": opts["parallel"], "connect_timeout": opts["timeout"], "command_timeout": opts["timeout"],
        "ssh_config": Path(opts["ssh_config"]) if opts["ssh_config"] else None,
    }
    if sys.stderr.isatty():
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task("collecting", total=len(targets))

            def tick(result: Any) -> None:
                bar.update(task, advance=1, description=f"collected {result.node}")

            return collect(targets, progress=tick, **kwargs)
    return collect(targets, **kwargs)


def _collect_table(results: list[Any]) -> str:
    width = max([len(r.node) for r in results] + [4])
    lines = [f"{'NODE':<{width}}  STATUS  TIME    DETAIL"]
    for r in results:
        status = "ok" if r.ok else r.error_kind or "failed"
        detail = ", ".join(str(f.name) for f in r.files) if r.ok else (r.error or "")
        if r.warnings:
            detail += "  (" + "; ".join(r.warnings) + ")"
        lines.append(f"{r.node:<{width}}  {status:<6}  {r.duration:5.1f}s  {detail}")
    ok = sum(r.ok for r in results)
    lines.append(f"{ok} of {len(results)} node{'s' if len(results) != 1 else ''} collected")
    return "\n".join(lines) + "\n"


@main.command()
@click.argument("nodes", nargs=-1)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory to write DIR/NODE/ into.")
@_collect_options
@_output_option("text", "json")
def collect(nodes: tuple[str, ...], out: str, output: str, inventory: str | None, kubeconfig: str | None,
            context: str | None, node_selector: str | None, **opts: Any) -> None:
    """Fetch iptables-save (and ip6tables-save, legacy tables, addresses) from many nodes over SSH.

    NODE is [user@]host[:port] or a Host alias of ~/.ssh/config. Each node gets DIR/NODE/ with
    iptables-save.txt, ip6tables-save.txt and meta.json (0600 files in 0700 directories, written atomically;
    a node's previous files are replaced only when its new collection succeeded). Exit status 1 if any node
    failed; the others' data is kept.

    \b
    Examples:
      iptrace collect node1 node2 admin@node3.example.com:2222 --out snap/
      iptrace collect --inventory nodes.txt --sudo --parallel 20 --out snap/
      iptrace collect --kubeconfig ~/.kube/config -l node-role.kubernetes.io/worker= --out snap/
    """
    targets = _targets(nodes, inventory, kubeconfig, context, node_selector)
    results = _run_collect(targets, Path(out), opts)
    if output == "json":
        _emit_json([{"node": r.node, "ok": r.ok, "error_kind": r.error_kind, "error": r.error,
                     "files": [str(f) for f in r.files], "duration_s": round(r.duration, 3),
                     "warnings": list(r.warnings)} for r in results])
    else:
        click.echo(_collect_table(results), nl=False)
    failed = [r for r in results if not r.ok]
    for r in failed:
        click.echo(f"Error: {r.error}", err=True)
    if failed:
        raise click.exceptions.Exit(EXIT_ERROR)


def _audit_inputs(sources: tuple[str, ...], node_ips: tuple[str, ...], lenient: bool) -> list[Any]:
    """NodeInputs from collected directories (DIR or DIR/NODE) and plain dump files."""
    from iptrace.errors import IptraceError
    from iptrace.kube.compare import NodeInput, inputs_from_directory
    from iptrace.parse import load_path

    inputs: list[Any] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            inputs += inputs_from_directory(path, lenient=lenient)
            continue
        name = path.name.removesuffix(".gz").removesuffix(".txt") if source != "-" else "stdin"
        try:
            inputs.append(NodeInput(name, load_path(source, lenient=lenient), addresses=node_ips))
        except IptraceError as exc:
            inputs.append(NodeInput(name, None, str(exc)))
    names = [i.name for i in inputs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise click.UsageError(f"two inputs are both called {duplicates[0]!r}; rename one of them")
    return inputs


@main.command()
@click.argument("sources", nargs=-1, metavar="DIR|DUMP|NODE...")
@click.option("--collect", "collect_first", is_flag=True,
              help="Treat every SOURCE as a node ([user@]host[:port]) to collect over SSH first, even if a "
                   "file of that name exists. Without it, SOURCES that are not existing paths are nodes.")
@click.option("--out", type=click.Path(file_okay=False),
              help="With --collect: where to keep the collection (default: a temporary directory).")
@click.option("--cluster", "cluster_files", multiple=True, type=click.Path(),
              help="Services/EndpointSlices/Nodes JSON to compare every node with.")
@click.option("--namespace", "-n", help="With --kubeconfig: only this namespace's Services.")
@click.option("--node-ip", "node_ips", multiple=True, callback=_check_ip, metavar="IP",
              help="Addresses of a node given as a plain dump file.")
@click.option("--verbose", "-v", is_flag=True, help="Show each finding's detail and evidence lines.")
@_output_option("text", "json")
@_lenient_option
@_collect_options
def audit(sources: tuple[str, ...], collect_first: bool, out: str | None, cluster_files: tuple[str, ...],
          namespace: str | None, node_ips: tuple[str, ...], verbose: bool, output: str, lenient: bool,
          inventory: str | None, kubeconfig: str | None, context: str | None, node_selector: str | None,
          **opts: Any) -> None:
    """Analyze every node of a collection and compare them with each other and with the cluster.

    Finds Services missing or forwarded differently on some nodes (differences that traffic policy Local
    explains are not findings), stale kube-proxies, nodes without kube-proxy rules, backend splits and, with
    --cluster/--kubeconfig, every disagreement between a node's rules and the API. Exit status 3 when any
    finding is an error.

    \b
    Examples:
      iptrace audit snap/
      iptrace audit snap/ --cluster services.json --cluster endpointslices.json -o json | jq '.findings[].id'
      iptrace audit node1 node2 admin@node3:2222 --sudo --kubeconfig ~/.kube/config
      iptrace audit node1.txt node2.txt
    """
    _batch()
    import tempfile

    from iptrace.kube.compare import audit as run_audit
    from iptrace.render.audit import audit_to_json, render_audit_text

    discover = not sources and not inventory and bool(kubeconfig or context or node_selector)
    if not sources and not inventory and not discover:
        raise click.UsageError("nothing to audit: give a collection DIR, dump files, nodes, --inventory FILE, "
                               "or --kubeconfig to take the nodes from the cluster")
    cluster = _cluster(cluster_files, kubeconfig, context, namespace)
    failures: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="iptrace-audit-") as tmp:
        nodes = sources if collect_first else tuple(x for x in sources if x != "-" and not Path(x).exists())
        paths = () if collect_first else tuple(x for x in sources if x not in nodes)
        if nodes or inventory or discover:
            targets = _targets(nodes, inventory, kubeconfig if discover else None, context if discover else None,
                               node_selector if discover else None)
            where = Path(out) if out else Path(tmp)
            results = _run_collect(targets, where, opts)
            failures = [r for r in results if not r.ok]
            collected = tuple(str(where / r.node) for r in results if r.ok)
            if not collected and not paths:
                for r in failures:
                    click.echo(f"Error: {r.error}", err=True)
                raise click.exceptions.Exit(EXIT_ERROR)
            inputs = _audit_inputs(paths + collected, node_ips, lenient)
        else:
            inputs = _audit_inputs(paths, node_ips, lenient)
        report = run_audit(inputs, cluster)
    if output == "json":
        _emit_json(audit_to_json(report))
    else:
        click.echo(render_audit_text(report, verbose=verbose), nl=False)
    for r in failures:
        click.echo(f"Error: {r.error}", err=True)
    if report.has_error:
        raise click.exceptions.Exit(EXIT_FINDINGS)
    if failures:
        raise click.exceptions.Exit(EXIT_ERROR)


@main.command()
@click.argument("a")
@click.argument("b")
@_output_option("text", "json")
@click.option("--cluster", "cluster_files", multiple=True, type=click.Path(),
              help="Services/EndpointSlices JSON, to name comment-less chains on both sides.")
@_lenient_option
@_table_option
def diff(a: str, b: str, output: str, cluster_files: tuple[str, ...], lenient: bool, table: str | None) -> None:
    """Service-level difference between two dumps (or two nodes of a collection).

    Services added or removed, endpoints and ports changed, and rules changed outside kube-proxy's chains.

    \b
    Examples:
      iptrace diff before.txt after.txt
      iptrace diff snap/node1 snap/node2 -o json | jq '.services'
    """
    _batch()
    from iptrace.kube.diff import diff as run_diff
    from iptrace.render.audit import diff_to_json, render_diff_text

    left, _ = _load(a, lenient=lenient, table=table)
    right, _ = _load(b, lenient=lenient, table=table)
    cluster = _cluster(cluster_files, None, None)
    result = run_diff(left, right, cluster=cluster)
    if output == "json":
        _emit_json(diff_to_json(result))
    else:
        click.echo(render_diff_text(result), nl=False)


if __name__ == "__main__":  # pragma: no cover
    main()
