"""Loads grammars/conntrack.lark once and turns lark's errors into one-line ParseErrors. The reader asks it
about one line of each new shape and about every line it cannot read; lark is imported only here."""

from __future__ import annotations

from functools import cache

from lark import Lark, Token, Tree, UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from iptrace.errors import ParseError
from iptrace.grammars import grammar_text as _grammar_file
from iptrace.grammars import one_of

_GRAMMAR_NAME = "conntrack.lark"

_EXPECTED_NAMES = {
    "NAME": "a protocol name (tcp, udp, icmp, …)", "NUMBER": "a number",
    "STATE": "a state (ESTABLISHED, TIME_WAIT, …)", "FIELD": "a key=value field (src=…, dport=…, mark=…)",
    "FLAG": "a flag such as [ASSURED]", "TRAILER": "conntrack's closing line", "$END": "end of line",
}


def grammar_text() -> str:
    return _grammar_file(_GRAMMAR_NAME)


@cache
def parser() -> Lark:
    return Lark(grammar_text(), parser="lalr", start="line", maybe_placeholders=False)


def _describe(expected: set[str] | frozenset[str]) -> str:
    return one_of(_EXPECTED_NAMES.get(t, t.lower()) for t in sorted(expected) if t not in ("TRAILER", "COMMENT"))


def parse_line(text: str, *, source: str, line_no: int) -> Tree:
    """Parse one line, raising ParseError with its real column."""
    try:
        return parser().parse(text)
    except UnexpectedInput as exc:
        raise _error(exc, source=source, line_no=line_no, text=text) from None


def _error(exc: UnexpectedInput, *, source: str, line_no: int, text: str) -> ParseError:
    column = getattr(exc, "column", 1) or 1
    if isinstance(exc, UnexpectedToken):
        if exc.token.type == "$END":
            column = len(text.rstrip()) + 1
            why = f"unexpected end of line; expected {_describe(exc.expected)}"
        else:
            why = f"unexpected {str(exc.token)!r}; expected {_describe(exc.expected)}"
    elif isinstance(exc, UnexpectedCharacters):
        pos = exc.pos_in_stream
        word = text[pos:].split(maxsplit=1)[0] if 0 <= pos < len(text) and text[pos:].strip() else "?"
        why = f"unexpected {word!r}; expected {_describe(exc.allowed or set())}"
    else:
        why = "unexpected end of line"
    return ParseError(why, source=source, line=line_no, column=column, text=text)


def tokens(tree: Tree) -> tuple[str, list[Token]]:
    """("entry" | "trailer" | "comment", the line's tokens in order)."""
    node = tree.children[0]
    assert isinstance(node, Tree)
    out: list[Token] = []
    for child in node.children:
        if isinstance(child, Token):
            out.append(child)
        else:
            out.append(child.children[0])  # item: FIELD | FLAG
    return str(node.data), out
