"""The command line: the only layer that imports click, prints or exits.

Every command parses its options, calls the library and renders. Library errors (IptraceError) become one
`Error: …` line on stderr and exit status 1, here and nowhere else. Heavy modules (lark, paramiko,
kubernetes) are imported inside the commands so that `iptrace --help` stays fast.
"""

from __future__ import annotations

import errno
import inspect
import os
import re
import sys
from typing import Any, NoReturn

import click

from iptrace import __version__
from iptrace.errors import IptraceError, ParseError, lenient_hint

EXIT_ERROR = 1
EXIT_FINDINGS = 3


def _program(ctx: click.Context | None) -> str | None:
    """The name the program was called by when it is not plain `iptrace` (`kubectl iptrace`, `python -m
    iptrace`), else None."""
    prog = ctx.find_root().info_name if ctx is not None else None
    return prog if prog and prog != "iptrace" and prog.endswith(" iptrace") else None


def named(text: str, ctx: click.Context | None = None) -> str:
    """`text` (an error or a note) with the commands it suggests (`iptrace audit DIR`) spelled as the program was
    called, as its help spells them: a kubectl plugin's user types `kubectl iptrace audit DIR`."""
    ctx = ctx or click.get_current_context(silent=True)
    prog = _program(ctx)
    if prog is None or ctx is None or "iptrace " not in text:
        return text
    commands = "|".join(map(re.escape, getattr(ctx.find_root().command, "commands", {})))
    # (a command already named so is left alone: text wrapped to a terminal was named before it was wrapped)
    named_so = re.escape(prog.removesuffix("iptrace"))
    return re.sub(rf"(?<![\w./-])(?<!{named_so})iptrace (?=(?:{commands})\b)", f"{prog} ", text) if commands else text


def _fail(exc: IptraceError, ctx: click.Context) -> NoReturn:
    message = str(exc)
    # (a parse error's quoted dump line and caret are the dump's text, never renamed)
    shown = exc.with_caret() if isinstance(exc, ParseError) else message
    click.echo(f"Error: {named(message + lenient_hint(exc), ctx)}{shown.removeprefix(message)}", err=True)
    raise click.exceptions.Exit(EXIT_ERROR)


# An example line of a command's help: `  iptrace …`, `… | iptrace …` or `… && iptrace …`.
_EXAMPLE = re.compile(r"(^[ \t]+|\| |&& )iptrace (?=\S)", re.MULTILINE)


class _ProgramNamedHelp:
    """Help whose examples use the name the program was called by: `kubectl iptrace …` as a kubectl plugin,
    `python -m iptrace …` as a module. (click already puts that name in the usage line.)"""

    help: str | None

    def format_help_text(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        prog = _program(ctx)
        if not self.help or prog is None:
            super().format_help_text(ctx, formatter)  # type: ignore[misc]
            return
        text = inspect.cleandoc(self.help).partition("\f")[0]
        formatter.write_paragraph()
        with formatter.indentation():
            formatter.write_text(_EXAMPLE.sub(lambda m: f"{m.group(1)}{prog} ", text))


class _Command(_ProgramNamedHelp, click.Command):
    pass


class _Group(_ProgramNamedHelp, click.Group):
    """The single error boundary of the program."""

    command_class = _Command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except IptraceError as exc:
            _fail(exc, ctx)
        except BrokenPipeError:
            # `iptrace … | head`: the reader went away; that is not an error of ours.
            sys.stderr.close()
            raise click.exceptions.Exit(0) from None
        except (click.exceptions.Exit, click.ClickException, click.Abort, KeyboardInterrupt):
            raise
        except OSError as exc:
            if exc.errno not in _WRITE_ERRNOS:
                _internal(exc)
            _cannot_write(exc)
        except Exception as exc:  # the last line of defence: a bug must still not print a traceback
            _internal(exc)


# A write that failed for want of room (`iptrace services … > /dev/full`, a full disk or quota): the machine's
# trouble, not a bug to report.
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def _cannot_write(exc: OSError) -> NoReturn:
    try:
        click.echo(f"Error: cannot write the output: {exc.strerror or exc}", err=True)
    except OSError:
        pass
    raise click.exceptions.Exit(EXIT_ERROR) from None


def _internal(exc: Exception) -> NoReturn:
    if os.environ.get("IPTRACE_DEBUG"):
        raise exc
    click.echo(f"Error: internal error ({type(exc).__name__}: {exc}); please report it with the "
               "input that caused it (IPTRACE_DEBUG=1 shows the traceback)", err=True)
    raise click.exceptions.Exit(EXIT_ERROR) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, "--version", prog_name="iptrace")
def main() -> None:
    """Show how a Kubernetes node really forwards traffic, from the rules kube-proxy wrote (iptables-save output,
    or nft list ruleset in nftables mode).

    \b
    Examples:
      iptrace explain sample_dumps/nodeport-fb-backends.txt --dst 10.101.234.168:8001
      iptrace services node1.txt --namespace default
      iptrace trace node1.txt --dst 10.101.234.168:5001 --src pod
      iptrace services node1.nft                    # nftables mode: `nft list ruleset`
      iptrace collect node1 node2 --out fleet/ && iptrace audit fleet/
      iptrace parse node1.txt
    """


def run(prog_name: str | None = None) -> NoReturn:
    """The program (the `iptrace` executable, `python -m iptrace`): `main`, ended by a fast exit once an analysis
    command built something (cli.common.hold): its output flushed, the process ends without freeing ~10^6
    objects one by one (~0.5 s after a 5,000-Service dump), as mypy ends. Other commands (collect, --help) and
    a run under a tracer or profiler end the usual way."""
    from iptrace.cli.common import hold_for_fast_exit, holding

    hold_for_fast_exit()
    try:
        main(prog_name=prog_name)
        code: Any = 0
    except SystemExit as exc:
        code = exc.code
    if code is None:
        code = 0
    if not isinstance(code, int) or not holding() or sys.gettrace() is not None or sys.getprofile() is not None:
        raise SystemExit(code)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError as exc:
            if exc.errno in _WRITE_ERRNOS and stream is sys.stdout:
                try:
                    sys.stderr.write(f"Error: cannot write the output: {exc.strerror or exc}\n")
                    sys.stderr.flush()
                except (OSError, ValueError):
                    pass
                code = code or EXIT_ERROR
            # (else a reader that went away, `| head`: no error of ours)
        except ValueError:  # (a stream closed on a broken pipe)
            pass
    os._exit(code)


def kubectl_plugin() -> None:
    """The `kubectl-iptrace` executable: the same program, named as kubectl users call it. kubectl runs a
    plugin with the arguments after its name and passes none of its own flags, so `--kubeconfig`,
    `--context` and `-n` are iptrace's own options."""
    run(prog_name="kubectl iptrace")


# -- shared option helpers ------------------------------------------------------------------------------


# The commands register themselves on `main` (each module is small enough to read in one sitting).
from iptrace.cli import analysis, diff, fleet  # noqa: E402

__all__ = ["analysis", "diff", "fleet", "kubectl_plugin", "main"]
