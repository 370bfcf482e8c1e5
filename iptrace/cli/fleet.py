"""The fleet commands: collect, audit."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from iptrace.cli import EXIT_ERROR, EXIT_FINDINGS, main, named
from iptrace.cli.common import (
    batch,
    check_ip,
    check_nodes,
    cluster_data,
    emit_json,
    emit_json_document,
    hold,
    lenient_option,
    namespace_option,
    note_no_services,
    one_stdin,
    output_option,
    split_sources,
    terminal_width,
)

# The collector pod's default image; written out here so that `--help` imports nothing of collect.
DEFAULT_IMAGE = "docker.io/library/busybox:1.36"
_SSH_ONLY = ("inventory", "user", "port", "identity_files", "known_hosts", "accept_new_host_keys", "jump",
             "ssh_config", "sudo")
_API_ONLY = ("pod_namespace", "image", "api_method")


def _collect_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--via", type=click.Choice(["ssh", "api"]), default="ssh", show_default=True,
                     help="How to reach the nodes: SSH, or the Kubernetes API (exec into kube-proxy, or a "
                          "collector pod) for clusters without SSH."),
        click.option("--inventory", type=click.Path(exists=True, dir_okay=False),
                     help="File with one node per line ([user@]host[:port], # comments; Ansible INI works)."),
        click.option("--kubeconfig", type=click.Path(dir_okay=False),
                     help="The cluster (like kubectl: else $KUBECONFIG, ~/.kube/config, in-cluster). With --via "
                          "ssh: take the nodes from it (their InternalIPs)."),
        click.option("--context", help="kubeconfig context."),
        click.option("-l", "--selector", "node_selector", metavar="LABELS",
                     help="Only nodes with these labels (e.g. node-role.kubernetes.io/worker)."),
        click.option("--pod-namespace", metavar="NS",
                     help="--via api: namespace of the collector pods (default: the context's); it must allow "
                          "privileged pods."),
        click.option("--image", default=DEFAULT_IMAGE, show_default=True, metavar="IMAGE",
                     help="--via api: image of the collector pods; it needs sh and nsenter."),
        click.option("--api-method", type=click.Choice(["auto", "exec", "pod"]), default="auto", show_default=True,
                     help="--via api: exec into the node's kube-proxy pod, a collector pod, or exec and fall back "
                          "to a pod."),
        click.option("--conntrack-max-entries", type=click.IntRange(min=0), default=100_000, show_default=True,
                     metavar="N",
                     help="Keep at most N conntrack entries per family (0: all)."),
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
                     help="Seconds to connect, per API request and per command (nft list ruleset and conntrack "
                          "-L get at least 180: they take a minute on huge nodes)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _targets(nodes: tuple[str, ...], inventory: str | None, kubeconfig: str | None, context: str | None,
             node_selector: str | None, via: str = "ssh") -> list[Any]:
    if via == "api":
        return list(nodes)  # node names; none means every node (or those matching -l)
    from iptrace.collect.ssh import NodeTarget, read_inventory

    targets: list[Any] = [NodeTarget.parse(n) for n in nodes]
    if inventory:
        targets += read_inventory(Path(inventory))
    if kubeconfig or context or node_selector:
        from iptrace.collect.cluster import load_cluster_live, node_addresses

        state = load_cluster_live(kubeconfig, context, None, node_selector=node_selector)
        targets += [NodeTarget.parse(ip if ":" not in ip else f"[{ip}]", name=name)
                    for name, ip in node_addresses(state, node_selector)]
    if not targets and inventory:
        raise click.UsageError(f"no nodes: {inventory} lists none (one [user@]host[:port] a line, # comments)")
    if not targets:
        raise click.UsageError("no nodes: give NODE arguments, --inventory FILE or --kubeconfig")
    return targets


def _check_via(opts: dict[str, Any]) -> None:
    wrong = _SSH_ONLY if opts["via"] == "api" else _API_ONLY
    for name in wrong:
        value = opts.get(name)
        if value and not (name == "image" and value == DEFAULT_IMAGE) and not (name == "api_method"
                                                                              and value == "auto"):
            flag = "-i" if name == "identity_files" else "--" + name.replace("_", "-")
            other = "ssh" if opts["via"] == "api" else "api"
            raise click.UsageError(f"{flag} applies to --via {other} only")


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (kill, a CI job's cancel) unwinds like Ctrl-C, so that the collector pods are deleted and the
    audit's workers ended."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interruptible(collect: Callable[..., list[Any]], done: str) -> Callable[..., list[Any]]:
    """`collect` with Ctrl-C (or SIGTERM) said in one line, exit status 130: `done` says what was cleaned up."""
    def run(names: list[Any], **kwargs: Any) -> list[Any]:
        with _terminate_as_interrupt():
            try:
                return collect(names, **kwargs)
            except KeyboardInterrupt:
                click.echo(f"Error: interrupted; {done}", err=True)
                raise click.exceptions.Exit(130) from None

    return run


def _run_collect(targets: list[Any], out: Path, opts: dict[str, Any]) -> list[Any]:
    if opts["via"] == "api":
        from iptrace.collect.api import collect_api

        collect = _interruptible(collect_api, "every collector pod iptrace created was deleted")
        kwargs: dict[str, Any] = {
            "out_dir": out, "kubeconfig": opts["kubeconfig"], "context": opts["context"],
            "selector": opts["node_selector"], "pod_namespace": opts["pod_namespace"], "image": opts["image"],
            "method": opts["api_method"], "parallel": opts["parallel"], "timeout": opts["timeout"],
            "conntrack_max_entries": opts["conntrack_max_entries"],
        }
    else:
        from iptrace.collect.ssh import collect as collect_ssh

        collect = _interruptible(collect_ssh, f"the commands running on the nodes were stopped; the nodes "
                                              f"collected before are in {out}")
        kwargs = {
            "out_dir": out, "user": opts["user"], "port": opts["port"], "identity_files": opts["identity_files"],
            "known_hosts": Path(opts["known_hosts"]) if opts["known_hosts"] else None,
            "accept_new_host_keys": opts["accept_new_host_keys"], "jump": opts["jump"], "sudo": opts["sudo"],
            "parallel": opts["parallel"], "connect_timeout": opts["timeout"], "command_timeout": opts["timeout"],
            "ssh_config": Path(opts["ssh_config"]) if opts["ssh_config"] else None,
            "conntrack_max_entries": opts["conntrack_max_entries"],
        }
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.markup import escape
        from rich.progress import Progress

        # (escape: an IPv6 node's name, `[fd00::5]:22`, is no rich markup)
        with Progress(console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task("collecting", total=len(targets))

            def tick(result: Any) -> None:
                bar.update(task, advance=1, description=f"collected {escape(result.node)}")

            return collect(targets, progress=tick, **kwargs)
    return collect(targets, **kwargs)


def _collect_table(results: list[Any]) -> str:
    width = max([len(r.node) for r in results] + [4])
    statuses = ["ok" if r.ok else r.error_kind or "failed" for r in results]
    status_width = max([len(s) for s in statuses] + [6])
    lines = [f"{'NODE':<{width}}  {'STATUS':<{status_width}}  TIME    DETAIL"]
    for r, status in zip(results, statuses, strict=True):
        detail = ", ".join(str(f.name) for f in r.files) if r.ok else (r.error or "")
        if r.warnings or r.notes:
            detail += "  (" + "; ".join((*r.warnings, *r.notes)) + ")"
        lines.append(f"{r.node:<{width}}  {status:<{status_width}}  {r.duration:5.1f}s  {detail}")
    ok = sum(r.ok for r in results)
    lines.append(f"{ok} of {len(results)} node{'s' if len(results) != 1 else ''} collected")
    return "\n".join(lines) + "\n"


@main.command()
@click.argument("nodes", nargs=-1)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory to write DIR/NODE/ into.")
@_collect_options
@output_option("text", "json")
def collect(nodes: tuple[str, ...], out: str, output: str, **opts: Any) -> None:
    """Fetch each node's rules (iptables-save, ip6tables-save, legacy tables, nft list ruleset), its addresses
    and its conntrack table, over SSH or through the Kubernetes API.

    With --via ssh (the default) NODE is [user@]host[:port] or a Host alias of ~/.ssh/config. With --via api
    NODE is a Kubernetes node name (none: every node, or those matching -l): iptrace execs into the node's
    kube-proxy pod, or runs one short-lived privileged pod per node and always deletes it. Each node gets
    DIR/NODE/ with iptables-save.txt, ip6tables-save.txt, nft-ruleset.txt, conntrack.txt and meta.json (0600
    files in 0700 directories, written atomically; a node's previous files are replaced only when its new
    collection succeeded). Exit status 1 if any node failed; the others' data is kept.

    \b
    Examples:
      iptrace collect node1 node2 admin@node3.example.com:2222 --out snap/
      iptrace collect --inventory nodes.txt --sudo --parallel 20 --out snap/
      iptrace collect --kubeconfig ~/.kube/config -l node-role.kubernetes.io/worker= --out snap/
      iptrace collect --via api --out snap/
      iptrace collect --via api worker-1 worker-2 --pod-namespace iptrace --api-method pod --out snap/
    """
    _check_via(opts)
    check_nodes(nodes, "collect")
    targets = _targets(nodes, opts["inventory"], opts["kubeconfig"], opts["context"], opts["node_selector"],
                       opts["via"])
    results = _run_collect(targets, Path(out), opts)
    if output == "json":
        emit_json([{"node": r.node, "ok": r.ok, "error_kind": r.error_kind, "error": r.error,
                     "files": [str(f) for f in r.files], "duration_s": round(r.duration, 3),
                     "warnings": list(r.warnings), "notes": list(r.notes)} for r in results])
    else:
        click.echo(_collect_table(results), nl=False)
    failed = [r for r in results if not r.ok]
    for r in failed:
        click.echo(named(f"Error: {r.error}"), err=True)
    if failed:
        raise click.exceptions.Exit(EXIT_ERROR)


def _audit_sources(sources: tuple[str, ...], node_ips: tuple[str, ...]) -> list[Any]:
    """Every node to audit: each collection directory's nodes, each plain dump file as one node."""
    from iptrace.collect.stream import sources as list_sources
    from iptrace.dumpfile import read_dump

    def stdin() -> tuple[str, str]:
        return read_dump("-")

    nodes = list_sources(sources, node_ips, stdin=stdin)
    for note in _given_again(sources):
        click.echo(note, err=True)
    paths: dict[str, list[str]] = {}
    for n in nodes:
        paths.setdefault(n.name, []).append(n.path or n.name)
    duplicates = sorted(name for name, where in paths.items() if len(where) > 1)
    if duplicates:
        name = duplicates[0]
        raise click.UsageError(f"two inputs are both called {name!r} ({', '.join(paths[name][:2])}); rename one "
                               "of them (a node directory is called what its meta.json's `node` says)")
    return nodes


def _given_again(sources: tuple[str, ...]) -> list[str]:
    """A note for each argument naming a node given before it (a dump file twice, a node directory and the
    collection holding it): stream.sources audits such a node once, where it first appears, and the report has
    one node fewer than the user counted."""
    from iptrace.collect.inputs import dump_node_name, node_directories
    from iptrace.collect.stream import node_name
    from iptrace.errors import IptraceError

    first: dict[str, str] = {}  # a node's real path -> the argument that named it first
    notes = []
    for path in sources:
        if path == "-":
            continue
        try:
            given = ([(os.path.realpath(d), node_name(d)) for d in node_directories(path)] if Path(path).is_dir()
                     else [(os.path.realpath(path), dump_node_name(path))])
        except IptraceError:
            continue  # (stream.sources said what is wrong with it)
        again = [(name, first[where]) for where, name in given if where in first]
        for where, _ in given:
            first.setdefault(where, path)
        if not again:
            continue
        where = ", ".join(sorted({*(by for _, by in again), path}, key=sources.index))
        if len(again) == 1:
            notes.append(f"note: node {again[0][0]} is given twice ({where}); it is audited once, where it first "
                         "appears")
        else:
            names = ", ".join(name for name, _ in again[:3]) + (", …" if len(again) > 3 else "")
            notes.append(f"note: {len(again)} nodes ({names}) are given twice ({where}); each is audited once, "
                         "where it first appears")
    return notes


def _contained(run: Callable[[], Any]) -> Any:
    """One node's analysis for the audit (stream.analyse_nodes' `contain`): a bug met there is returned, to be that
    node's load-error, so that one node's bug costs the fleet's other results nothing; IPTRACE_DEBUG=1 raises it
    (this program's one error boundary then shows the traceback)."""
    try:
        return run()
    except Exception as exc:
        if os.environ.get("IPTRACE_DEBUG"):
            raise
        return exc


def _analyse(nodes: list[Any], cluster: Any, lenient: bool, pictures: bool, jobs: int | None) -> list[Any]:
    """Every node's digest, with a progress bar on a terminal (nodes done / total, rate, time left). `jobs`
    None: stream.default_jobs (one per CPU, as many as fit in memory)."""
    from iptrace.collect.stream import available_memory, default_jobs

    if jobs is None:
        jobs, note = default_jobs(nodes, os.cpu_count() or 1, available_memory())
        if note is not None:
            click.echo(named(note), err=True)
    kwargs: dict[str, Any] = {"cluster": cluster, "lenient": lenient, "pictures": pictures, "jobs": jobs,
                              "contain": _contained}
    # SIGTERM (a cancelled Job or CI job) unwinds as Ctrl-C does, through analyse_nodes ending its workers: else
    # they would outlive the audit, analysing for no one.
    with _terminate_as_interrupt():
        try:
            return _analysed(nodes, kwargs)
        except KeyboardInterrupt:
            click.echo("Error: interrupted; the audit's workers were ended, no report was written", err=True)
            raise click.exceptions.Exit(130) from None


def _analysed(nodes: list[Any], kwargs: dict[str, Any]) -> list[Any]:
    """analyse_nodes of `nodes` (with `kwargs`), its progress on a terminal, each node's notes on stderr."""
    from iptrace.collect.stream import analyse_nodes

    if sys.stderr.isatty() and len(nodes) > 1:
        from rich.console import Console
        from rich.markup import escape
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[rate]}"), TimeRemainingColumn())
        with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task("auditing", total=len(nodes), rate="")

            def tick(result: Any) -> None:
                bar.advance(task)
                done = bar.tasks[0]
                rate = done.speed
                bar.update(task, description=f"audited {escape(result.name)}",
                           rate=f"{rate * 60:.1f} nodes/min" if rate else "")

            results = analyse_nodes(nodes, progress=tick, **kwargs)
    else:
        results = analyse_nodes(nodes, **kwargs)
    for r in results:
        for note in r.notes:
            click.echo(named(note), err=True)
    return hold(results)  # (a fleet's digests: not freed one by one at the end, see common.hold)


def _merged(documents: tuple[str, ...]) -> tuple[list[Any], str | None, bool]:
    """The nodes of several `audit -o json` documents (--merge)."""
    import json

    from iptrace.errors import InputError
    from iptrace.kube.merge import merge
    from iptrace.text import decode_input

    loaded = []
    for name in documents:
        try:
            text = decode_input(sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes())
        except FileNotFoundError:
            raise InputError(f"{name}: no such file or directory") from None
        except OSError as exc:
            raise InputError(f"{name}: cannot read ({exc.strerror or exc})") from None
        if not text.strip():  # (a shard's `audit -o json > FILE` that failed leaves FILE empty)
            raise InputError(f"{name}: empty; expected the output of `iptrace audit -o json` (did the audit that "
                             "should have written it fail?)")
        try:
            loaded.append((name, json.loads(text)))
        except json.JSONDecodeError as exc:
            # (the decoder meets the end of the text: after the last value read, or in a string never closed)
            cut = not text[exc.pos:].strip() or exc.msg.startswith("Unterminated string")
            why = "the file ends before its JSON does: it looks cut short" if cut else exc.msg
            raise InputError(f"{'<stdin>' if name == '-' else name}:{exc.lineno}:{exc.colno}: not JSON ({why}); "
                             "expected the output of `iptrace audit -o json`") from None
    return merge(loaded, _here())


def _here() -> str | None:
    """The working directory, which an audit's relative paths are relative to (None when it was removed)."""
    try:
        return os.getcwd()
    except OSError:
        return None


@main.command()
@click.argument("sources", nargs=-1, metavar="DIR|DUMP|NODE...")
@click.option("--collect", "collect_first", is_flag=True,
              help="Treat every SOURCE as a node ([user@]host[:port]) to collect over SSH first, even if a "
                   "file of that name exists. Without it, SOURCES that are not existing paths are nodes (one "
                   "with a '/' or a .txt/.gz name is always a path).")
@click.option("--out", type=click.Path(file_okay=False),
              help="With --collect: where to keep the collection (default: a temporary directory).")
@click.option("--cluster", "cluster_files", multiple=True, type=click.Path(),
              help="Services/EndpointSlices/Nodes JSON to compare every node with.")
@namespace_option
@click.option("--node-ip", "node_ips", multiple=True, callback=check_ip, metavar="IP",
              help="Addresses of a node given as a plain dump file.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None, metavar="N",
              help="Worker processes analysing nodes (default: the number of CPUs, as many as fit in memory).")
@click.option("--merge", "merge_documents", is_flag=True,
              help="SOURCES are `audit -o json` documents of shards of the fleet: merge them into the audit one "
                   "run over all their nodes gives (nodes sorted by name; no pictures in -o html).")
@click.option("--verbose", "-v", is_flag=True, help="Show each finding's detail and evidence lines.")
@output_option("text", "json", "html")
@lenient_option
@_collect_options
def audit(sources: tuple[str, ...], collect_first: bool, out: str | None, cluster_files: tuple[str, ...],
          namespace: str | None, node_ips: tuple[str, ...], jobs: int | None, merge_documents: bool, verbose: bool,
          output: str, lenient: bool, **opts: Any) -> None:
    """Analyze every node of a collection and compare them with each other and with the cluster.

    Finds Services missing or forwarded differently on some nodes (differences that traffic policy Local
    explains are not findings), stale kube-proxies and ones not running (--via api), nodes without kube-proxy
    rules or in another proxy mode, addresses two Services claim, backend and mode splits, conntrack entries the
    rules no longer decide (a collected conntrack.txt) and, with --cluster/--kubeconfig, every disagreement
    between a node's rules and the API (the README lists every finding id). Nodes are analysed one at a
    time in --jobs worker processes, so memory does not grow with the fleet; a progress bar shows on a
    terminal. Exit status 1 when a node could not be collected (it is also in the report, as a load-error), else
    3 when any finding is an error.

    \b
    Examples:
      iptrace audit snap/
      iptrace audit snap/ --cluster services.json --cluster endpointslices.json -o json | jq '.findings[].id'
      iptrace audit snap/ --kubeconfig ~/.kube/config -o html > report.html
      iptrace audit node1 node2 admin@node3:2222 --sudo --kubeconfig ~/.kube/config
      iptrace audit --via api --kubeconfig ~/.kube/config
      iptrace audit node1.txt node2.txt
      iptrace audit --merge shard-a.json shard-b.json -o html > report.html
    """
    batch()

    from iptrace.kube.audit import combine
    from iptrace.kube.digest import NOT_COLLECTED
    from iptrace.kube.merge import merge_json
    from iptrace.render.audit import audit_to_json, render_audit_text
    from iptrace.render.json import CompactItems

    _check_via(opts)
    one_stdin({"SOURCES": sources, "--cluster": cluster_files})
    cluster: Any = None
    if merge_documents:
        if not sources:
            raise click.UsageError("--merge needs the `audit -o json` documents to merge")
        _check_merge_options()
        results, cluster_source, cluster_nodes = _merged(sources)
        for r in results:  # (what each shard's audit said on stderr of its nodes, as one audit says it)
            for note in r.notes:
                click.echo(named(note), err=True)
        report = combine(results, cluster_source=cluster_source, cluster_nodes=cluster_nodes)
        # A shard's node that could not be collected fails the merge as it failed the shard's audit.
        failed = [f"{r.name}: {r.error.removeprefix(NOT_COLLECTED)}" for r in results
                  if r.error is not None and r.error.startswith(NOT_COLLECTED)]
    else:
        results, cluster, collection = _audit_nodes(sources, collect_first, out, cluster_files, namespace, node_ips,
                                                  jobs, output == "html", lenient, opts)
        failed = [f"{r.node}: {_why_not_collected(r)}" for r in collection if not r.ok]
        cluster_source = cluster.compared if cluster is not None else None
        cluster_nodes = bool(cluster.nodes) if cluster is not None else False
        report = combine(results, cluster)
    if output == "json":
        doc = audit_to_json(report)
        doc["merge"] = merge_json(results, cluster_source=cluster_source, cluster_nodes=cluster_nodes,
                                  items=CompactItems, directory=_here())
        emit_json_document(doc)
    elif output == "html":
        from iptrace.render.html import render_audit_html

        click.echo(render_audit_html(report, cluster, say=named), nl=False)
    else:
        click.echo(named(render_audit_text(report, verbose=verbose, width=terminal_width(), say=named)), nl=False)
    for line in failed:
        click.echo(named(f"Error: {line}"), err=True)
    if failed:  # (the audit is incomplete: as a destination that could not be answered, that wins over 3)
        raise click.exceptions.Exit(EXIT_ERROR)
    if report.has_error:
        raise click.exceptions.Exit(EXIT_FINDINGS)


# What --merge reads besides the documents: how to print the report. --jobs changes no result, so a script
# that passes it to every audit may pass it here too.
_MERGE_OPTIONS = frozenset({"sources", "merge_documents", "output", "verbose", "jobs"})


def _check_merge_options() -> None:
    """A usage error for an option given with --merge that says what to audit or compare with: the shards were
    audited already, and cluster data given here would go unused while the report looks compared with it."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    for param in ctx.command.params:
        if param.name not in _MERGE_OPTIONS and ctx.get_parameter_source(param.name or "") \
                == ParameterSource.COMMANDLINE:
            raise click.UsageError(f"--merge reads audits already made: {'/'.join(param.opts)} is not used "
                                   "there; give it to each shard's audit instead")


def _audit_nodes(sources: tuple[str, ...], collect_first: bool, out: str | None, cluster_files: tuple[str, ...],
                 namespace: str | None, node_ips: tuple[str, ...], jobs: int | None, pictures: bool, lenient: bool,
                 opts: dict[str, Any]) -> tuple[list[Any], Any, list[Any]]:
    """Collect what must be collected, then analyse every node: (results, cluster data, the collection's results)."""
    import tempfile

    via, inventory, kubeconfig, context = opts["via"], opts["inventory"], opts["kubeconfig"], opts["context"]
    node_selector = opts["node_selector"]
    discover = not sources and not inventory and (via == "api" or bool(kubeconfig or context or node_selector))
    if not sources and not inventory and not discover:
        raise click.UsageError("nothing to audit: give a collection DIR, dump files, nodes, --inventory FILE, "
                               "or --kubeconfig to take the nodes from the cluster")
    if collect_first:
        check_nodes(sources, "audit --collect")
        paths, nodes = (), sources
    else:
        paths, nodes = split_sources(sources)
    if via == "api" and not cluster_files:
        from iptrace.collect.cluster import load_cluster_live
        from iptrace.errors import ClusterError

        # The cluster the nodes were collected from is the one to compare them with.
        try:
            cluster = note_no_services(load_cluster_live(kubeconfig, context, namespace))
        except ClusterError as e:
            if not str(e).startswith("forbidden: ") or str(e).startswith("forbidden: list nodes "):
                raise
            # (collect lists no Services or EndpointSlices: the nodes can still be audited, with each other)
            raise ClusterError(f"{e}; or audit the nodes without the API's Services: `iptrace collect --via api "
                               "--out DIR`, then `iptrace audit DIR`") from None
    else:
        cluster = cluster_data(cluster_files, kubeconfig, context, namespace)
    collection: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="iptrace-audit-") as tmp:
        if nodes or inventory or discover:
            if via == "api":
                targets = _targets(nodes, None, None, None, None, via)
            else:
                targets = _targets(nodes, inventory, kubeconfig if discover else None,
                                   context if discover else None, node_selector if discover else None)
            where = Path(out) if out else Path(tmp)
            collection = _run_collect(targets, where, opts)
            collected = tuple(str(where / r.node) for r in collection if r.ok)
            if not collected and not paths:
                for r in collection:
                    click.echo(named(f"Error: {r.error}"), err=True)
                raise click.exceptions.Exit(EXIT_ERROR)
            paths += collected
        results = _analyse(_audit_sources(paths, node_ips), cluster, lenient, pictures, jobs)
    if collection and not out:  # (its directory is gone with the audit: no `iptrace explain` can read it)
        from dataclasses import replace

        gone = {r.node for r in collection if r.ok}
        results = [replace(r, explain_at=None) if r.name in gone else r for r in results]
    return _with_uncollected(results, collection), cluster, collection


def _why_not_collected(result: Any) -> str:
    return str(result.error).removeprefix(f"{result.node}: ")


def _with_uncollected(results: list[Any], collection: list[Any]) -> list[Any]:
    """The audit's node results with each node that could not be collected in its place among the collected
    ones (`collection`: the collection's results, in the order of the nodes given), as a node whose rules could
    not be read (its load-error says why): the report must not say every node is fine without it."""
    from iptrace.kube.digest import NOT_COLLECTED, NodeResult

    ok = {r.node for r in collection if r.ok}
    by_name = {r.name: r for r in results if r.name in ok}
    placed = [r for r in results if r.name not in ok]
    for r in collection:
        if not r.ok:
            placed.append(NodeResult(r.node, NOT_COLLECTED + _why_not_collected(r)))
        elif r.node in by_name:
            placed.append(by_name.pop(r.node))
    return [*placed, *by_name.values()]  # (a node its meta.json names otherwise: last, never lost)


if __name__ == "__main__":  # pragma: no cover
    main()
