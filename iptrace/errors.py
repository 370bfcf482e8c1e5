"""The whole exception tree. Library layers raise these; only the cli package turns them into `Error: …` and exit 1."""

from __future__ import annotations


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
        where = f"{source}:{line}:{column}" if line else source
        super().__init__(f"{where}: {message}")

    def with_caret(self) -> str:
        """The message plus the offending line with a caret under the column (for humans)."""
        if not self.text:
            return str(self)
        col = max(self.column, 1)
        shown = self.text.rstrip("\r\n")
        return f"{self}\n  {shown}\n  {' ' * (col - 1)}^"


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
        super().__init__(message)
