"""The fleet commands: collect, audit, diff."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from iptrace.cli import EXIT_ERROR, EXIT_FINDINGS, main
from iptrace.cli.common import (
    batch,
    check_ip,
    cluster_data,
    emit_json,
    lenient_option,
    load_dump,
    output_option,
    table_option,
)


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
@output_option("text", "json")
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
        emit_json([{"node": r.node, "ok": r.ok, "error_kind": r.error_kind, "error": r.error,
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
    from iptrace.iptables import load_path
    from iptrace.kube.compare import NodeInput, inputs_from_directory

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
@click.option("--node-ip", "node_ips", multiple=True, callback=check_ip, metavar="IP",
              help="Addresses of a node given as a plain dump file.")
@click.option("--verbose", "-v", is_flag=True, help="Show each finding's detail and evidence lines.")
@output_option("text", "json")
@lenient_option
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
    batch()
    import tempfile

    from iptrace.cli.flows import audit_conntrack
    from iptrace.kube.compare import audit as run_audit
    from iptrace.render.audit import audit_to_json, render_audit_text

    discover = not sources and not inventory and bool(kubeconfig or context or node_selector)
    if not sources and not inventory and not discover:
        raise click.UsageError("nothing to audit: give a collection DIR, dump files, nodes, --inventory FILE, "
                               "or --kubeconfig to take the nodes from the cluster")
    cluster = cluster_data(cluster_files, kubeconfig, context, namespace)
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
            paths += collected
        inputs = _audit_inputs(paths, node_ips, lenient)
        report = run_audit(inputs, cluster)
        report = audit_conntrack(report, inputs, paths, lenient=lenient)
    if output == "json":
        emit_json(audit_to_json(report))
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
@output_option("text", "json")
@click.option("--cluster", "cluster_files", multiple=True, type=click.Path(),
              help="Services/EndpointSlices JSON, to name comment-less chains on both sides.")
@lenient_option
@table_option
def diff(a: str, b: str, output: str, cluster_files: tuple[str, ...], lenient: bool, table: str | None) -> None:
    """Service-level difference between two dumps (or two nodes of a collection).

    Services added or removed, endpoints and ports changed, and rules changed outside kube-proxy's chains.

    \b
    Examples:
      iptrace diff before.txt after.txt
      iptrace diff snap/node1 snap/node2 -o json | jq '.services'
    """
    batch()
    from iptrace.kube.diff import diff as run_diff
    from iptrace.render.audit import diff_to_json, render_diff_text

    left, _ = load_dump(a, lenient=lenient, table=table)
    right, _ = load_dump(b, lenient=lenient, table=table)
    cluster = cluster_data(cluster_files, None, None)
    result = run_diff(left, right, cluster=cluster)
    if output == "json":
        emit_json(diff_to_json(result))
    else:
        click.echo(render_diff_text(result), nl=False)


if __name__ == "__main__":  # pragma: no cover
    main()
