"""What the commands share: output and input options, loading a DUMP argument, cluster data, JSON output."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click


def output_option(*choices: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option("-o", "--output", type=click.Choice(choices), default="text", show_default=True,
                        help="Output format; json goes to stdout undecorated so `| jq` works.")


lenient_option = click.option("--lenient", is_flag=True,
                               help="Analyze what can be read and list what was skipped instead of failing.")
table_option = click.option("--table", "table", type=click.Choice(["raw", "mangle", "nat", "filter", "security"]),
                             help="Table of an `iptables -S` listing when its chains do not tell.")


def load_dump(dump: str, *, lenient: bool = False, table: str | None = None,
          ipv6: bool = False) -> tuple[Any, list[str]]:
    """Load DUMP (a file, `-`, a .gz, or a collected node directory) → (Ruleset, node addresses).

    For a node directory the dump that answers the question is chosen: ip6tables-save.txt for an IPv6
    destination, and iptables-legacy-save.txt when kube-proxy's rules are only in the legacy backend.
    """
    from iptrace.iptables import load, load_path

    path = Path(dump)
    if dump == "-" or not path.is_dir():
        return load_path(dump, lenient=lenient, table=table), []
    from iptrace.collect.store import read_node_dir
    from iptrace.iptables.era import detect

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


CONNTRACK_FILE = "conntrack.txt"


def load_conntrack(path: str | None, dump: str, *, lenient: bool = False) -> Any:
    """The conntrack table `explain` checks: --conntrack FILE, else DIR/NODE/conntrack.txt when DUMP is a
    collected node directory that has one (None without either). Skipped lines (--lenient) are noted on stderr."""
    from iptrace.conntrack import load, read_file

    if path is None:
        node = Path(dump)
        if dump == "-" or not node.is_dir() or not (node / CONNTRACK_FILE).is_file():
            return None
        path = str(node / CONNTRACK_FILE)
    data, name = read_file(path)
    table = load(data, source=name, lenient=lenient)
    note_skipped(name, table)
    return table


def note_skipped(name: str, table: Any) -> None:
    """--lenient: say how many conntrack lines were left out, and the first reason."""
    if table.skipped:
        first = table.skipped[0]
        click.echo(f"note: {name}: skipped {len(table.skipped)} unreadable line{'s' if len(table.skipped) != 1 else ''}"
                   f" (first: line {first.line}: {first.reason})", err=True)
    for w in table.warnings:
        click.echo(f"note: {name}:{w.line}: {w.reason}", err=True)


def batch() -> None:
    """An analysis command builds millions of small acyclic objects and then exits: the cyclic garbage
    collector would only re-traverse them (it costs ~1 s of a 5,000-Service `services` run)."""
    import gc

    gc.disable()


def emit_json(data: Any) -> None:
    from iptrace.render.json import dumps

    click.echo(dumps(data), nl=False)




def parse_destination(text: str) -> tuple[str, int]:
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


def check_ip(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    import ipaddress

    for value in values:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise click.BadParameter(f"{value!r} is not an IP address", ctx=ctx, param=param) from None
    return values


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
        lenient_option,
        table_option,
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def cluster_data(cluster_files: tuple[str, ...], kubeconfig: str | None, context: str | None,
             namespace: str | None = None) -> Any:
    if cluster_files:
        from iptrace.collect.cluster import load_cluster_files

        return load_cluster_files(list(cluster_files))
    if kubeconfig or context:
        from iptrace.collect.cluster import load_cluster_live

        return load_cluster_live(kubeconfig, context, namespace)
    return None


def same_family(ruleset: Any, host: str) -> None:
    """An IPv6 question to an iptables-save dump (or the reverse) has no answer in it: say which dump would."""
    from iptrace.errors import InputError

    wanted = "ipv6" if ":" in host else "ipv4"
    if ruleset.family != wanted:
        tool = "ip6tables-save" if wanted == "ipv6" else "iptables-save"
        raise InputError(f"{host} is an {wanted.replace('ip', 'IP')} address but {ruleset.source} is an "
                         f"{ruleset.family.replace('ip', 'IP')} dump; give the node's {tool} output instead")


def node_ips_or(given: tuple[str, ...], collected: list[str]) -> list[str]:
    return list(given) or collected
