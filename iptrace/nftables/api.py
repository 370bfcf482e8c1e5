"""`load` and `load_path`: nft text (listing or transaction) or nft's JSON → Ruleset, chosen by content."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from iptrace.dumpfile import read_bytes
from iptrace.nftables.sniff import json_value
from iptrace.text import decode_input

if TYPE_CHECKING:
    from iptrace.nftables.model import Ruleset


def load(text: str | bytes, *, source: str = "<ruleset>", lenient: bool = False) -> Ruleset:
    """Parse `nft list ruleset` text, `nft -j list ruleset` JSON or kube-proxy's transaction text. Raises
    ParseError (DumpSemanticError for inconsistencies) naming file:line:column, unless `lenient`: then what
    cannot be read is skipped and listed in `Ruleset.skipped`."""
    if isinstance(text, bytes):
        text = decode_input(text)
    # (each reader imported when its input comes: a listing's run never needs the JSON reader, nor JSON's the
    # text reader and lark)
    if text.lstrip("\ufeff \t\r\n")[:1] in ("{", "[") or json_value(text):
        from iptrace.nftables.json_loader import load_json

        return load_json(text, source=source, lenient=lenient)
    from iptrace.nftables.loader import load_text

    return load_text(text, source=source, lenient=lenient)


def read_ruleset(path: str | Path) -> tuple[str, str]:
    """A ruleset file (`-` = stdin, `.gz` decompressed) as text, with its display name."""
    data, name = read_bytes(path, "an nft ruleset file")
    return decode_input(data), name


def load_path(path: str | Path, *, lenient: bool = False) -> Ruleset:
    text, name = read_ruleset(path)
    return load(text, source=name, lenient=lenient)
