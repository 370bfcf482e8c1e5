"""What the commands share: output and input options, loading a DUMP argument, cluster data, JSON output."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from iptrace.cli import named


def output_option(*choices: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option("-o", "--output", type=click.Choice(choices), default="text", show_default=True,
                        help="Output format; json goes to stdout undecorated so `| jq` works.")


lenient_option = click.option("--lenient", is_flag=True,
                               help="Analyze what can be read and list what was skipped instead of failing.")
routes_option = click.option(
    "--routes", "routes_file", type=click.Path(dir_okay=False, allow_dash=True), metavar="FILE",
    help="The node's routes, as `cat /proc/net/route /proc/net/ipv6_route` prints them: they answer the rules that "
         "test the interface a packet leaves by (-o, oifname). Default for DIR/NODE: its routes.txt, if collected.")
table_option = click.option("--table", "table", type=click.Choice(["raw", "mangle", "nat", "filter", "security"]),
                             help="Table of an `iptables -S` listing when its chains do not tell.")


def load_dump(dump: str, *, lenient: bool = False, table: str | None = None, family: str = "ipv4",
              note: bool = True, extras: bool = True) -> tuple[Any, Any, list[str]]:
    """Load DUMP (a file, `-`, a .gz, or a collected node directory) → (dataplane, its ruleset, node addresses).

    The dataplane is recognised by content (iptables-save, `iptables -S`, nft list ruleset, nft -j, kube-proxy's
    nft transaction). For a node directory the dump that answers is chosen (collect.inputs.choose_dump):
    ip6tables-save.txt for IPv6, the legacy backend's or the nftables ruleset when kube-proxy's rules are there.
    `note`: say on stderr what --lenient read past (`parse` lists it all itself). `extras`: say which of the node
    directory's other dumps cannot be read (the nft ruleset beside an iptables-mode dump), as audit's load-error
    warning does.
    """
    from iptrace import dataplanes
    from iptrace.dumpfile import read_dump

    path = Path(dump)
    if dump == "-" or not path.is_dir():
        text, source = read_dump(dump)
        dataplane, ruleset = dataplanes.load(text, source=source, lenient=lenient, table=table)
        pasted = dataplanes.paste_note(text)
        if pasted is not None:
            click.echo(f"note: {source}: {pasted}", err=True)
        if note:
            note_skipped_rules(dump, ruleset)
        return dataplane, hold(ruleset), []
    from iptrace.collect.store import read_node_dir

    return node_dump(read_node_dir(path), dump, family=family, lenient=lenient, note=note, extras=extras)


def node_dump(snapshot: Any, dump: str, *, family: str = "ipv4", lenient: bool = False, note: bool = True,
              extras: bool = True) -> tuple[Any, Any, list[str]]:
    """load_dump of a collected node directory already read (collect.store.read_node_dir), for `family`."""
    from iptrace.collect.inputs import choose_dump, misfiled, misread_nft, unread_nft
    from iptrace.collect.store import failed_attempt_note
    from iptrace.kube.digest import NFT_MISREAD_SAID

    chosen = choose_dump(snapshot, family, lenient=lenient)
    misread = misread_nft(snapshot, chosen)
    # (a failed later collection is said once, with the first family's dump: `extras`)
    failed = failed_attempt_note(snapshot.node, snapshot.meta) if extras else None
    for said in (chosen.note, chosen.split, misread and f"{snapshot.node}: {NFT_MISREAD_SAID}: {misread}", failed,
                 misfiled(snapshot, chosen, family)):
        if said:
            click.echo(named(f"note: {said}"), err=True)
    problem = unread_nft(snapshot, chosen) if extras else None
    if problem is not None:
        click.echo(f"note: {snapshot.node}: {problem}; analyzing {Path(chosen.ruleset.source).name} without it",
                   err=True)
    if note:
        note_skipped_rules(dump, chosen.ruleset)
    return chosen.dataplane, hold(chosen.ruleset), list(snapshot.addresses)


_SKIPPED_SHOWN = 3


def note_skipped_rules(dump: str, ruleset: Any) -> None:
    """--lenient: what the analysis left out of the dump, on stderr (stdout stays the answer, `| jq` works):
    how many lines, the first few with their reasons, and the command that lists them all."""
    skipped = ruleset.skipped
    if not skipped:
        return
    many = "s" if len(skipped) != 1 else ""
    click.echo(f"note: {ruleset.source}: read with --lenient past {len(skipped)} problem{many} (what each names is "
               "left out or assumed):", err=True)
    for s in skipped[:_SKIPPED_SHOWN]:
        click.echo(f"  line {s.line}: {s.message}" if s.line else f"  {s.message}", err=True)
    if len(skipped) > _SKIPPED_SHOWN:
        click.echo(named(f"  … and {len(skipped) - _SKIPPED_SHOWN} more (iptrace parse --lenient {dump} lists them "
                         "all)"), err=True)


def analysis_of(dump: str, *, node_ips: tuple[str, ...] = (), cluster: Any = None, lenient: bool = False,
                table: str | None = None, host: str | None = None, hosts: Sequence[str] = (),
                note: bool = True, routes_file: str | None = None) -> Any:
    """DUMP loaded and analysed (iptrace.kube.analysis.Analysis: the layout, the tracer and the Service view)
    for the family of `host` when given, else for the dump's first. Node addresses: --node-ip, else those
    collected with a node directory; routes: --routes, else a node directory's (load_routes). `hosts`: with
    several questions, every address they ask about (all of `host`'s family): the analysis answers for each of
    them. `note`: as load_dump's."""
    from iptrace.kube.analysis import analyse

    host = host or (hosts[0] if hosts else None)
    family = ("ipv6" if ":" in host else "ipv4") if host else "ipv4"
    dataplane, ruleset, collected = load_dump(dump, lenient=lenient, table=table, family=family, note=note)
    if host is None:
        family = first_family(ruleset)
    elif family not in ruleset.families:
        from iptrace.errors import InputError

        # An IPv6 question to an iptables-save dump (or the reverse) has no answer in it: say which dump would.
        have = first_family(ruleset)
        node_dir = dump != "-" and Path(dump).is_dir()
        nft_source = ruleset.source if dataplane.name == "nftables" else None
        if nft_source is None and node_dir:
            from iptrace.collect.inputs import holds_kube_proxy_table
            from iptrace.collect.store import NFT_FILE, read_node_dir

            if holds_kube_proxy_table(read_node_dir(Path(dump))):  # (nftables mode: its ruleset, not iptables, says)
                nft_source = str(Path(dump) / NFT_FILE)
        if nft_source is not None:
            table = "ip6" if family == "ipv6" else "ip"
            # (a node's whole ruleset may have other tables of the family, iptables-nft's: kube-proxy's is the one)
            raise InputError(f"{host} is an {family.replace('ip', 'IP')} address but {nft_source} has no " + (
                f"`table {table} kube-proxy`: kube-proxy (nftables mode) programs no "
                f"{family.replace('ip', 'IP')} Services on this node" if node_dir else
                f"{table} or inet table: if it is the node's whole `nft list ruleset`, kube-proxy (nftables mode) "
                f"programs no {family.replace('ip', 'IP')} Services on this node; else give that"))
        tool = "ip6tables-save" if family == "ipv6" else "iptables-save"
        if node_dir and family == "ipv6" and not (Path(dump) / f"{tool}.txt").exists():
            # (a node directory is not replaced by another dump: its IPv6 rules go beside its IPv4 ones)
            raise InputError(f"{host} is an IPv6 address but {dump} has no {tool}.txt ({ruleset.source} is an "
                             f"{have.replace('ip', 'IP')} dump); save the node's `{tool}` output there as "
                             f"{tool}.txt (iptrace collect does)")
        raise InputError(f"{host} is an {family.replace('ip', 'IP')} address but {ruleset.source} is an "
                         f"{have.replace('ip', 'IP')} dump; give the node's {tool} output instead")
    return hold(analyse(dataplane, ruleset, family, node_ips=list(node_ips) or collected, cluster=cluster,
                        routes=load_routes(routes_file, dump, lenient=lenient, note=note)))


def analyses_of(dump: str, *, node_ips: tuple[str, ...] = (), cluster: Any = None, lenient: bool = False,
                table: str | None = None, routes_file: str | None = None) -> list[Any]:
    """DUMP analysed for every IP family kube-proxy has rules for in it (an nftables ruleset holds `ip` and `ip6`
    kube-proxy tables on a dual-stack node; a node directory may hold ip6tables-save.txt); the first family alone
    when none has."""
    from iptrace.errors import IptraceError
    from iptrace.kube.analysis import analyse

    snapshot = None
    if dump != "-" and Path(dump).is_dir():
        from iptrace.collect.store import read_node_dir  # (only here: a dump file's run does not import it)

        snapshot = read_node_dir(Path(dump))
    if snapshot is None:
        dataplane, ruleset, collected = load_dump(dump, lenient=lenient, table=table)
    else:
        dataplane, ruleset, collected = node_dump(snapshot, dump, lenient=lenient)
    ips = list(node_ips) or collected
    routes = load_routes(routes_file, dump, lenient=lenient)
    loads = [(dataplane, ruleset, ruleset.families)]
    if "ipv6" not in ruleset.families and snapshot is not None and snapshot.ip6_dump_text:
        # (a node directory's IPv6 rules are in its ip6tables-save.txt: all of them on an IPv6-only node; the
        # directory is read once for both families)
        try:
            v6_dataplane, v6_ruleset, _ = node_dump(snapshot, dump, family="ipv6", lenient=lenient, extras=False)
            loads.append((v6_dataplane, v6_ruleset, ("ipv6",)))
        except IptraceError as exc:  # (as audit's load-error warning: what the IPv4 dump holds is still shown)
            click.echo(named(f"note: {exc}; analyzing {Path(ruleset.source).name} without it"), err=True)
    found = []
    for dp, rs, families in loads:
        for family in families:
            a = analyse(dp, rs, family, node_ips=ips, cluster=cluster, routes=routes)
            if a.layout.proxy.has_rules:
                found.append(a)
    return hold(found or [analyse(dataplane, ruleset, first_family(ruleset), node_ips=ips, cluster=cluster,
                                  routes=routes)])


def first_family(ruleset: Any) -> str:
    """The dump's first IP family as it is analysed (dataplanes.analysed_families)."""
    from iptrace.dataplanes import analysed_families

    return analysed_families(ruleset)[0]


_NODE_FORMS = "[user@]host[:port] or a Host alias of ~/.ssh/config"


def looks_like_path(arg: str) -> bool:
    """An argument meant as a file or directory, never as a node: it has a '/' or a dump file's suffix."""
    return "/" in arg or arg.endswith((".txt", ".gz", ".nft", ".json"))


def split_sources(sources: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """audit's SOURCES → (paths, nodes): existing files and directories (and `-`) are read, other words are
    nodes to collect from; a path that does not exist is an error rather than a host name to resolve."""
    from iptrace.errors import InputError

    paths, nodes = [], []
    for source in sources:
        if source == "-" or Path(source).exists():
            paths.append(source)
        elif looks_like_path(source):
            raise InputError(f"{source}: no such file or directory")
        else:
            nodes.append(source)
    return tuple(paths), tuple(nodes)


def one_stdin(inputs: dict[str, str | tuple[str, ...] | None]) -> None:
    """At most one input may be `-`: the first read takes all of stdin and a second would read nothing (an empty
    conntrack table is silently no flow at all). `inputs`: option or argument name → its value(s)."""
    on_stdin = [name for name, value in inputs.items() if value is not None
                for v in ((value,) if isinstance(value, str) else value) if v == "-"]
    if len(on_stdin) > 1:
        names = list(dict.fromkeys(on_stdin))
        others = "the others as files" if len(on_stdin) > 2 else "the other as a file"
        listed = f"{', '.join(names[:-1])} and {names[-1]}" if len(names) > 1 else names[0]
        raise click.UsageError(f"only one of {listed} can be read from stdin (-); give {others}")


def check_nodes(nodes: tuple[str, ...], command: str) -> None:
    """NODE arguments of a command that only collects: a path among them is a mistake worth naming."""
    from iptrace.errors import InputError

    for node in nodes:
        if not looks_like_path(node):
            continue
        path = Path(node)
        if not path.exists():
            raise InputError(f"{node}: no such file or directory; {command} takes nodes ({_NODE_FORMS})")
        kind = "a directory" if path.is_dir() else "a file"
        raise InputError(f"{node}: {kind}, not a node; {command} takes nodes ({_NODE_FORMS}); to analyze "
                         f"what was collected or saved: iptrace audit {node}")


CONNTRACK_FILE = "conntrack.txt"


def load_conntrack(path: str | None, dump: str, *, lenient: bool = False,
                   focus: Iterable[tuple[str, int, str]] = ()) -> Any:
    """The conntrack table `explain` checks: --conntrack FILE, else DIR/NODE/conntrack.txt when DUMP is a
    collected node directory that has one (None without either). Skipped lines (--lenient) are noted on stderr.
    `focus`: the (address, port, protocol) the questions ask about (see iptrace.conntrack.load)."""
    if path is None:
        node = Path(dump)
        if dump == "-" or not node.is_dir() or not (node / CONNTRACK_FILE).is_file():
            return None
        path = str(node / CONNTRACK_FILE)
        from iptrace.collect.store import conntrack_notes, read_meta

        for partial in conntrack_notes(node, read_meta(node)):
            click.echo(named(partial), err=True)
    from iptrace.conntrack import load, read_file  # (only when there is a table: an explain without one needs none)

    data, name = read_file(path)
    table = hold(load(data, source=name, lenient=lenient, focus=focus))
    note_skipped(name, table)
    return table


def load_routes(path: str | None, dump: str, *, lenient: bool = False, note: bool = True) -> Any:
    """The node's routes (iptrace.routes.Routes): --routes FILE, else DIR/NODE/routes.txt when DUMP is a collected
    node directory that has one (None without either: the output interface stays unknown, as it always was).
    --lenient: the lines read past are said on stderr (`note`)."""
    if path is None:
        node = Path(dump)
        if dump == "-" or not node.is_dir():
            return None
        from iptrace.collect.store import ROUTES_FILE  # (only for a node directory: a dump file's run needs none)

        if not (node / ROUTES_FILE).is_file():
            return None
        path = str(node / ROUTES_FILE)
    from iptrace.collect.inputs import read_routes

    routes = read_routes(path, lenient=lenient)
    name = routes.source
    if note and routes.skipped:
        first = routes.skipped[0]
        many = len(routes.skipped)
        lines = f"{many} line that is" if many == 1 else f"{many} lines that are"
        click.echo(f"note: {name}: read with --lenient past {lines} no route (the first, line {first.line}: "
                   f"{first.message})", err=True)
    return hold(routes)


def note_skipped(name: str, table: Any) -> None:
    """--lenient: say how many conntrack lines were left out, and the first reason."""
    from iptrace.conntrack.table import skipped_notes

    for note in skipped_notes(name, table):
        click.echo(named(note), err=True)


def batch() -> None:
    """An analysis command builds millions of small acyclic objects and then exits: the cyclic garbage
    collector would only re-traverse them (it costs ~1 s of a 5,000-Service `services` run), and so would the
    interpreter's last collection at exit, over whatever is still alive (~1 s after one question on a
    700,000-line dump): the objects are frozen out of it (as mypy's fast exit does; the process ends anyway)."""
    import atexit
    import gc

    gc.disable()
    if gc.freeze not in _AT_EXIT:
        _AT_EXIT.append(gc.freeze)
        atexit.register(gc.freeze)


_AT_EXIT: list[Any] = []

# What the analysis commands built (rulesets, analyses with their tracers and views, conntrack tables), held
# until the program ends when it ends by a fast exit (iptrace.cli.run): freeing ~10^6 objects one by one as the
# command returns costs ~0.5 s after a 5,000-Service dump, for a process that is about to end anyway. Nothing
# is held for in-process callers (tests, click's CliRunner): `_HOLDING` is set by the program's entry point only.
_HELD: list[Any] = []
_HOLDING: list[bool] = []


T = TypeVar("T")


def hold(obj: T) -> T:
    """`obj`, kept alive until a fast exit when the program ends by one (see _HELD)."""
    if _HOLDING:
        _HELD.append(obj)
    return obj


def hold_for_fast_exit() -> None:
    """Called by the program's entry point before it runs a command: hold what analysis commands build."""
    if not _HOLDING:
        _HOLDING.append(True)


def holding() -> bool:
    """Whether an analysis command built something that a fast exit would leave unfreed."""
    return bool(_HELD)


# Characters written at a time: the stream encodes what it is given in one piece, and a 20 MB document
# encoded whole would be one more copy of it.
_WRITE_CHARS = 1 << 20


def terminal_width() -> int | None:
    """The width of the terminal stdout is on (COLUMNS, else the terminal's own), None on a pipe or a file:
    prose is wrapped to fit a terminal, and printed as documented everywhere else."""
    if not sys.stdout.isatty():
        return None
    import shutil

    return max(shutil.get_terminal_size().columns, 40)


def emit_json(data: Any, paths: Any = None) -> None:
    """Print `data` as JSON (iptrace.render.json.dumps; `paths`: the PathTexts its answers' paths went to)."""
    from iptrace.render.json import dumps_text_pieces

    for text in dumps_text_pieces(data, paths):
        for start in range(0, len(text), _WRITE_CHARS):
            click.echo(text[start:start + _WRITE_CHARS], nl=False)


def emit_json_document(data: Any) -> None:
    """Print a document as emit_json does, its CompactItems (iptrace.render.json) one compact item a line, as its
    pieces are made: a big audit's document is never held whole as text."""
    from iptrace.render.json import document_pieces

    parts: list[str] = []
    size = 0
    for piece in document_pieces(data):
        parts.append(piece)
        size += len(piece)
        if size >= _WRITE_CHARS:
            click.echo("".join(parts), nl=False)
            parts, size = [], 0
    if parts:
        click.echo("".join(parts), nl=False)


def emit_json_items(items: Iterable[Any], count: int, texts: Iterable[str] | None = None) -> None:
    """A JSON list of `count` items, exactly as emit_json(list(items)) prints it, written as the items come:
    neither the items nor the text are held whole. `texts`: the items' compact JSON texts, in the same order,
    printed instead when the list is large enough to be printed compactly (`items` is then not read)."""
    from iptrace.render.json import LARGE_LIST, dumps_pieces, encoded_pieces

    pieces = encoded_pieces(texts, count) if texts is not None and count > LARGE_LIST else dumps_pieces(items, count)
    for piece in pieces:
        # (color=True: JSON text holds no ANSI code for click to strip off a pipe — the encoder writes ESC, as every
        # control character, escaped — and stripping scans every piece: ~10 ms of a 25 MB answer)
        click.echo(piece, nl=False, color=True)


def ipv6_without_port(text: str) -> str | None:
    """What is wrong with a destination that is an IPv6 address with no port it can be told by (`fd00::10:53`, where
    `:53` reads as part of the address; `[fd00::10]`; `fd00::10`), with how to write it; None for anything else."""
    from iptrace.dataplane import ip_address

    body = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        if ip_address(body).version != 6:
            return None
    except ValueError:
        return None
    if body != text:
        return f"no port after the IPv6 address; write [{body}]:PORT"
    head, _, last = body.rpartition(":")
    suggestion = f"[{body}]:PORT"
    if head and last.isdigit() and not head.endswith(":"):
        suggestion = f"[{head}]:{last} if {last} is the port, else [{body}]:PORT"
    return f"an IPv6 address with no port (an IPv6 address's port is written after brackets); write {suggestion}"


def parse_destination(text: str) -> tuple[str, int]:
    """`IP:PORT` or `[IPv6]:PORT` → (ip, port)."""
    from iptrace.dataplane import ip_address

    host, sep, port = text.rpartition(":")
    if text.startswith("[") and "]:" in text:
        host, port = text[1:].split("]:", 1)
    elif not sep or ":" in host:
        why = ipv6_without_port(text) or "expected IP:PORT, e.g. 10.96.0.10:53 or [fd00::10]:53"
        raise click.BadParameter(f"{text!r}: {why}", param_hint="--dst")
    try:
        ip_address(host)
        number = int(port)
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected IP:PORT, e.g. 10.96.0.10:53 or [fd00::10]:53",
                                 param_hint="--dst") from None
    if not 0 < number <= 65535:
        raise click.BadParameter(f"port {number} is out of range (1-65535)", param_hint="--dst")
    return host, number


def check_ip(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    from iptrace.dataplane import ip_address

    for value in values:
        try:
            ip_address(value)
        except ValueError:
            raise click.BadParameter(f"{value!r} is not an IP address", ctx=ctx, param=param) from None
    return values


SOURCE_KINDS = ("pod", "node", "external")


def check_source(src: str) -> None:
    """--src: an IP address or a kind of client."""
    from iptrace.dataplane import ip_address

    if src in SOURCE_KINDS:
        return
    try:
        ip_address(src)
    except ValueError:
        raise click.BadParameter(f"{src!r}: expected an IP address or one of {', '.join(SOURCE_KINDS)}",
                                 param_hint="--src") from None


def analysis_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options every analysis command shares: node addresses and cluster data."""
    options = [
        click.option("--node-ip", "node_ips", multiple=True, callback=check_ip, metavar="IP",
                     help="The node's own address (repeatable); taken from a collected node directory's "
                          "metadata when DUMP is one."),
        click.option("--cluster", "cluster_files", multiple=True, type=click.Path(dir_okay=True),
                     help="Services/EndpointSlices/Nodes JSON (`kubectl get --raw …` or `kubectl get … -o json`)."),
        click.option("--kubeconfig", type=click.Path(dir_okay=False),
                     help="Read Services/EndpointSlices/Nodes live (read-only) with this kubeconfig."),
        click.option("--context", help="kubeconfig context to use with --kubeconfig."),
        routes_option,
        lenient_option,
        table_option,
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


namespace_option = click.option(
    "--namespace", "-n", metavar="NS",
    help="Only this namespace's Services and EndpointSlices (read with --kubeconfig, kept from --cluster files); "
         "the rules are compared with the API for that namespace's Service ports only.")


def cluster_data(cluster_files: tuple[str, ...], kubeconfig: str | None, context: str | None,
             namespace: str | None = None) -> Any:
    if cluster_files:
        from iptrace.collect.cluster import load_cluster_files

        state = load_cluster_files(list(cluster_files))
        if state.services and not state.slices:
            click.echo(f"note: the cluster data ({state.source}) has Services but no EndpointSlice, so the "
                       "endpoints are not compared; add `kubectl get --raw "
                       "/apis/discovery.k8s.io/v1/endpointslices` to compare them", err=True)
        # (a file without Services is wrong data even when -n asks about one namespace of it)
        if note_no_services(state) is None:
            return None
        return state.scoped(namespace) if namespace else state
    if kubeconfig or context:
        from iptrace.collect.cluster import load_cluster_live

        return note_no_services(load_cluster_live(kubeconfig, context, namespace))
    return None


def note_no_services(state: Any) -> Any:
    """`state`, or None (after a note on stderr) when it was read for every namespace and holds no Service: a
    cluster always has default/kubernetes, so it was read from the wrong place (`kubectl get svc -n other -o
    json`, a NodeList alone) and says nothing of the node's Service ports; compared with it, every one of them
    would be an unknown-service and the audit's headline would claim an agreement with the API."""
    if state.services or state.namespace is not None:
        return state
    from iptrace.explain.phrases import plural

    held = [plural(n, kind) for n, kind in ((len(state.slices), "EndpointSlice"), (len(state.nodes), "Node")) if n]
    click.echo(f"note: the cluster data ({state.source}) holds no Service ("
               + (f"only {' and '.join(held)}" if held else "nor any EndpointSlice or Node")
               + "; a cluster always has default/kubernetes), so it is not used; read the Services of every "
               "namespace: `kubectl get svc,endpointslices,nodes -A -o json`", err=True)
    return None


# A node with this many Service ports shows a progress bar on a terminal while its view is built (~1 s a thousand).
_PROGRESS_PORTS = 1000


def build_showing_progress(analysis: Any) -> None:
    """The whole view, with a progress bar on a terminal (never on a pipe) for a big node."""
    total = len(analysis.layout.keys)
    if total < _PROGRESS_PORTS or not sys.stderr.isatty():
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("tracing every way in of every Service port"), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("", total=total)
        analysis.views.view(progress=lambda done: bar.update(task, completed=done))
