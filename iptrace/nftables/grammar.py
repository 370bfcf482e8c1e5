"""Loads grammars/nft.lark once and turns lark's errors into iptrace's one-line ParseErrors.

The only module of the nftables package (with the loader, through it) that imports lark. The loader asks lark
about single statements (one per new rule shape, every structural statement the fast paths do not read);
`document` parses a whole file and is the reference the tests hold the loader to.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import lark
from lark import Lark, Tree, UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from iptrace.errors import ParseError
from iptrace.grammars import describe_expected, saved_parser, unexpected_character
from iptrace.grammars import grammar_text as _grammar_file
from iptrace.grammars import save_parser as _save_parser

_GRAMMAR_NAME = "nft.lark"
STARTS = ("document", "top_line", "table_line", "chain_line", "set_line", "object_line", "rule", "set_literal")

_EXPECTED_NAMES = {
    "WORD": "a word", "STRING": "a quoted string", "_NL": "end of line", "$END": "end of line",
    "_SEMI": '";"', "LBRACE": '"{"', "RBRACE": '"}"', "COMMA": '","', "COLON": '":"', "EQUAL": '"="',
    "XT_COMMENT": "an xt statement", "PLUS": '"+"', "MINUS": '"-"',
}


def grammar_text() -> str:
    return _grammar_file(_GRAMMAR_NAME)


_OPTIONS: dict[str, Any] = {"parser": "lalr", "start": list(STARTS), "maybe_placeholders": False,
                            "propagate_positions": False}
# The parser as lark saves it (Lark.save), as iptables/grammar.py keeps its own: building the LALR tables of this
# grammar costs ~60 ms of CPU at every start (~5% of a 1,000-Service `services` run, which asks the grammar
# about a few dozen statements); loading them, a few. Used only when saved from this very grammar text, with
# these options, by this lark version; else the parser is built. Written by save_parser()
# (tests/test_nft_grammar_saved.py says when it must be written again).
SAVED_PARSER = "nft.lark.parser"


def build_parser() -> Lark:
    """The parser, built from the grammar."""
    return Lark(grammar_text(), **_OPTIONS)


def _saved_key() -> tuple[str, str, str]:
    return (lark.__version__, repr(sorted(_OPTIONS.items())), grammar_text())


@cache
def parser() -> Lark:
    return saved_parser(SAVED_PARSER, _saved_key(), Lark.load, build_parser)


def save_parser(path: Path) -> None:
    """Write the built parser where parser() loads it from (grammars/SAVED_PARSER in a checkout)."""
    _save_parser(path, _saved_key(), build_parser().save)


def _describe_expected(expected: set[str] | frozenset[str]) -> str:
    return describe_expected(expected, _EXPECTED_NAMES, parser().get_terminal)


def error_from_lark(exc: UnexpectedInput, *, source: str, line_no: int, column0: int, text: str,
                    full_line: str) -> ParseError:
    """A ParseError for lark's failure on `text`, which starts at (1-based) column `column0 + 1` of the input
    line `full_line` (line `line_no`). Multi-line statements report the line the error is on."""
    pos = getattr(exc, "pos_in_stream", None)
    if isinstance(exc, UnexpectedToken) and exc.token.type != "$END":
        pos = exc.token.start_pos
    if pos is None or pos < 0:
        pos = len(text.rstrip())
    line_no += text.count("\n", 0, pos)
    line_start = text.rfind("\n", 0, pos) + 1
    if line_start:
        full_line = text[line_start:].split("\n", 1)[0]
        column = pos - line_start + 1
    else:
        column = column0 + pos + 1
    if isinstance(exc, UnexpectedToken):
        token = exc.token
        end = token.type in ("$END", "_NL")
        if end:
            column = column0 + len(text.rstrip()) + 1 if not line_start else column
        found = "end of line" if end else repr(str(token).strip())
        why = f"unexpected {found}; expected {_describe_expected(exc.expected)}"
    elif isinstance(exc, UnexpectedCharacters):
        why = unexpected_character(text, exc.pos_in_stream, _describe_expected(exc.allowed) if exc.allowed else None)
    else:
        why = "unexpected end of input"
    return ParseError(why, source=source, line=line_no, column=column, text=full_line)


def parse(text: str, start: str, *, source: str, line_no: int, column0: int = 0,
          full_line: str | None = None) -> Tree:
    """Parse `text` from start symbol `start`, raising ParseError with its real position in the input."""
    try:
        return parser().parse(text, start=start)
    except UnexpectedInput as exc:
        raise error_from_lark(exc, source=source, line_no=line_no, column0=column0, text=text,
                              full_line=text if full_line is None else full_line) from None
