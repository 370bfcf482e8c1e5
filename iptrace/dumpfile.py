"""Reading a dump file as the command line names it (`-` = stdin, `.gz` decompressed) into text, below both
dataplanes: the CLI and collection read any dump with it before a dataplane is chosen by its content, and the
iptables loader's load_path reads its file with it; the nft and conntrack readers read their files' bytes with
`read_bytes`."""

from __future__ import annotations

import sys
from pathlib import Path

from iptrace.errors import InputError
from iptrace.text import decode_input, not_text


def read_bytes(path: str | Path, expected: str, text: str | None = None) -> tuple[bytes, str]:
    """A file's bytes as the command line names it (`-` = stdin, `.gz` decompressed) and its display name; an
    InputError naming it when it cannot be read (`expected`: what a directory there should have been) or, given
    `text` (what it should hold), when it is no text (parsed, its bytes would be quoted back to the terminal as the
    offending text)."""
    name = str(path)
    try:
        if name == "-":
            data = sys.stdin.buffer.read()
            name = "<stdin>"
        else:
            p = Path(path)
            if p.is_dir():
                raise InputError(f"{name}: is a directory; expected {expected}")
            data = p.read_bytes()
        if data[:2] == b"\x1f\x8b":
            import gzip  # (only for a gzip file: every run reads its dump here, few read one)

            data = gzip.decompress(data)
    except FileNotFoundError:
        raise InputError(f"{name}: no such file or directory") from None
    except OSError as exc:  # (gzip.BadGzipFile too: it is an OSError)
        raise InputError(f"{name}: cannot read: {exc.strerror or exc}") from None
    except EOFError as exc:
        raise InputError(f"{name}: not a readable gzip file ({exc})") from None
    kind = None if text is None else not_text(data[:8192])
    if kind is not None:
        raise InputError(f"{name}: {kind}; expected {text}")
    return data, name


def read_dump(path: str | Path) -> tuple[str, str]:
    """Read a dump file (`-` = stdin, `.gz` decompressed) as text; returns (text, display name).

    Bytes that are not UTF-8 are replaced, never fatal; the first such line becomes a load warning.
    """
    data, name = read_bytes(path, "an iptables-save dump file (or a collected node directory holding "
                                  "iptables-save.txt)", "a dump as text: iptables-save output or an nft ruleset")
    return decode_input(data), name
