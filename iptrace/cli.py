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


def _load(dump: str, *, lenient: bool = False, table: str | None = None) -> tuple[Any, list[str]]:
    """Load DUMP (a file, `-`, a .gz, or a collected node directory) → (Ruleset, node addresses)."""
    from iptrace.parse import load_path

    path = Path(dump)
    if dump != "-" and path.is_dir():
        from iptrace.collect.store import read_node_dir

        snapshot = read_node_dir(path)
        return load_path(snapshot.dump_path, lenient=lenient, table=table), list(snapshot.addresses)
    return load_path(dump, lenient=lenient, table=table), []


def _emit_json(data: Any) -> None:
    import json

    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


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


if __name__ == "__main__":  # pragma: no cover
    main()
