"""The whole exception tree. Library layers raise these; only the cli package turns them into `Error: …` and exit 1."""

from __future__ import annotations

import re


class IptraceError(Exception):
    """Base of every error iptrace reports to a user. str(e) is the one-line message."""


class ParseError(IptraceError):
    """The dump's text cannot be read: names file:line:column, the offending text and what was expected."""

    def __init__(self, message: str, *, source: str = "<dump>", line: int = 0, column: int = 0,
                 text: str = "") -> None:
        self.source = source
        self.line = line
        self.column = column
        self.text = text
        self.reason = message
        # (a reader that would have skipped this line with --lenient sets it: the CLI says so — `lenient_hint`)
        self.skippable = False
        where = f"{source}:{line}:{column}" if line else source
        super().__init__(f"{where}: {message}")

    def with_caret(self) -> str:
        """The message plus the offending line with a caret under the column (for humans). A long line (the JSON
        of `nft -j list ruleset` is one line of megabytes) is shown as the stretch around the column; tabs
        before the column are kept in the caret's line, so that the caret stands under it as the terminal
        expands them."""
        if not self.text:
            return str(self)
        shown = self.text.rstrip("\r\n")
        col = min(max(self.column, 1), len(shown) + 1)
        start, before, after = 0, "", ""
        if len(shown) > _LONG_LINE:
            start = max(0, min(col - 1 - _WINDOW // 2, len(shown) - _WINDOW))
            before = "…" if start else ""
            after = "…" if start + _WINDOW < len(shown) else ""
            shown = shown[start:start + _WINDOW]
        # A hostile or binary dump's control characters (terminal escapes) never reach the terminal: one
        # replacement character each keeps the caret under its column.
        shown = _CONTROL.sub("\ufffd", shown)
        pad = "".join(c if c == "\t" else " " for c in before + shown[:col - 1 - start])
        return f"{self}\n  {before}{shown}{after}\n  {pad}^"


_LONG_LINE = 200  # longer offending lines are shown as a window of _WINDOW characters around the column
_WINDOW = 160
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")  # (all but the tab)
_CONTROL_IN_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # (all but the tab and the newline)


def printable(text: str) -> str:
    """`text` (what a node printed) with each control character but tab and newline replaced by U+FFFD, so that
    a terminal escape in it never reaches the person's terminal (a title, a cleared screen, a clipboard write)."""
    return _CONTROL_IN_LINES.sub("\ufffd", text.replace("\r\n", "\n"))


def lenient_hint(exc: IptraceError) -> str:
    """What to add to `exc`'s message for a person: that --lenient reads past it, when it would."""
    return " (--lenient reads past it and analyses the rest)" if isinstance(exc, ParseError) and exc.skippable else ""


class DumpSemanticError(ParseError):
    """The text is well-formed but inconsistent: a jump to an undefined chain, a missing COMMIT, …"""


class TraceError(IptraceError):
    """A trace cannot be computed (a jump loop, an unknown address form, …)."""


class InputError(IptraceError):
    """A command-line value or an input file is not usable (bad address, missing file, …)."""


class ClusterError(IptraceError):
    """Reading Services/EndpointSlices/Nodes failed (API errors, bad kubeconfig, bad JSON file)."""


class CollectError(IptraceError):
    """Collecting from a node failed; `kind` is one of auth, host-key, refused, timeout, permission,
    command-missing, sudo-password, ssh."""

    def __init__(self, message: str, *, kind: str = "ssh", node: str = "") -> None:
        self.kind = kind
        self.node = node
        # (one line, and what a node or a cluster said in it never reaches a terminal as escapes)
        super().__init__(_CONTROL.sub("\ufffd", message))
