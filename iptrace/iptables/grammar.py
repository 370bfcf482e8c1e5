"""Loads the lark grammar once and turns lark's errors into iptrace's one-line ParseErrors.

The only module (with the loader) that imports lark.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import lark
from lark import Lark, Token, Tree, UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from iptrace.errors import ParseError
from iptrace.grammars import describe_expected, saved_parser, unexpected_character
from iptrace.grammars import grammar_text as _grammar_file
from iptrace.grammars import save_parser as _save_parser

_GRAMMAR_NAME = "iptables_save.lark"

_EXPECTED_NAMES = {
    "WORD": "a word", "QUOTED": "a quoted string", "NEG": '"!"', "COUNTERS": "[packets:bytes]",
    "NAME": "a name", "POLICY": "a policy (ACCEPT, DROP or -)", "_NL": "end of line", "$END": "end of line",
    "COMMENT": "a comment", "STAR": '"*"', "COLON": '":"', "COMMIT": '"COMMIT"',
    "COMMAND": "a command (-D, -I, -R, -F, -Z, -X, -E, -C)", "_APPEND": '"-A"', "_NEW_CHAIN": '"-N"',
    "_POLICY": '"-P"',
}


def grammar_text() -> str:
    return _grammar_file(_GRAMMAR_NAME)


_OPTIONS: dict[str, Any] = {"parser": "lalr", "start": ["document", "line"], "maybe_placeholders": False}
# The parser built from the grammar, as lark saves it (Lark.save, what its own `cache` option keeps): loading it is
# ~15x cheaper than building it (~0.15 G instructions, ~2% of a 1,000-Service `services` run). Used only when it
# was saved from this very grammar text, with these options, by this lark version; else the parser is built.
# Written by save_parser() (tests/test_grammar_saved.py says when it must be written again).
SAVED_PARSER = "iptables_save.lark.parser"


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


def error_from_lark(exc: UnexpectedInput, *, source: str, line_no: int, text: str) -> ParseError:
    """A ParseError for a lark failure while parsing the single line `text` (which is line `line_no`)."""
    column = getattr(exc, "column", 1) or 1
    if isinstance(exc, UnexpectedToken):
        token = exc.token
        if token.type in ("$END", "_NL"):
            column = len(text.rstrip()) + 1
        found = "end of line" if token.type in ("$END", "_NL") else repr(str(token))
        if (str(token).startswith('"') and not str(token).endswith('"')) or str(token) == '"':
            why = "unterminated quoted string; expected a closing '\"' before the end of the line"
        else:
            why = f"unexpected {found}; expected {_describe_expected(exc.expected)}"
    elif isinstance(exc, UnexpectedCharacters):
        why = unexpected_character(text, exc.pos_in_stream, _describe_expected(exc.allowed) if exc.allowed else None)
    else:
        why = "unexpected end of line"
    return ParseError(why, source=source, line=line_no, column=column, text=text)


def parse_line(text: str, *, source: str, line_no: int) -> Tree:
    """Parse one line with the grammar, raising ParseError with its real position."""
    try:
        return parser().parse(text, start="line")
    except UnexpectedInput as exc:
        raise error_from_lark(exc, source=source, line_no=line_no, text=text) from None


def rule_arg_tokens(tree: Tree) -> tuple[list[tuple[str, str, int]], Token | None, str]:
    """From a parsed `rule` (or `command`) line: its args as (type, text, column) plus its counters token and
    chain name (a command's chain is its first arg)."""
    rule = tree.children[0]
    counters: Token | None = None
    chain = ""
    args: list[tuple[str, str, int]] = []
    for child in rule.children:
        if isinstance(child, Token):
            if child.type == "COUNTERS":
                counters = child
            elif child.type == "NAME":
                chain = str(child)
        else:
            tok = child.children[0]
            args.append((tok.type, str(tok), tok.column or 0))
    if rule.data == "command" and args:
        chain = args.pop(0)[1]
    return args, counters, chain
