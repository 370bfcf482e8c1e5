"""Loads grammars/conntrack.lark once and turns lark's errors into one-line ParseErrors. The reader asks it
about one line of each new shape and about every line it cannot read; lark is imported only here.

Building lark's parser costs ~20 ms per process, as much as reading 10,000 entries: `fast_tokens` tokenizes the
lines conntrack prints (printable ASCII words between spaces) exactly as lark would, so that the parser is built
only for a line it must judge (a damaged line, a timestamp with spaces inside, anything unusual). Importing lark
costs ~23 ms more (and iptrace.grammars ~5 ms): they are imported when the parser is first needed, and the
tokens both give are `Word`s."""

from __future__ import annotations

import re
from functools import cache
from typing import TYPE_CHECKING

from iptrace.errors import ParseError

if TYPE_CHECKING:
    from lark import Lark, Tree, UnexpectedInput

_GRAMMAR_NAME = "conntrack.lark"

_EXPECTED_NAMES = {
    "NAME": "a protocol name (tcp, udp, icmp, …)", "NUMBER": "a number",
    "STATE": "a state (ESTABLISHED, TIME_WAIT, …)", "FIELD": "a key=value field (src=…, dport=…, mark=…)",
    "FLAG": "a flag such as [ASSURED]", "TRAILER": "conntrack's closing line", "$END": "end of line",
}


_NOT_A_TABLE = "; is this `conntrack -L` output (or /proc/net/nf_conntrack)?"
# Other outputs of conntrack that people save for a table, by their first line, and what to list instead.
_OTHER_OUTPUTS = (
    (re.compile(r"\s*(?:\[\d+\.\d+\]\s*)?\[(?:NEW|UPDATE|DESTROY)\]"),  # (`-o timestamp` first)
     "; this is `conntrack -E` (events as they happen), not the table: list the table with `conntrack -L`"),
    (re.compile(r"\s*<\?xml|\s*<conntrack>"),
     "; this is `conntrack -L -o xml`, which iptrace does not read: list the table plain (`conntrack -L`) or with "
     "`-o extended`"),
)


def other_output_hint(text: str) -> str:
    """What to say about a failing line that comes before any entry: which other output it is, if it is one."""
    for pattern, hint in _OTHER_OUTPUTS:
        if pattern.match(text):
            return hint
    return _NOT_A_TABLE


def grammar_text() -> str:
    from iptrace.grammars import grammar_text as grammar_file  # (~5 ms to import: with lark, for the parser)

    return grammar_file(_GRAMMAR_NAME)


@cache
def parser() -> Lark:
    from lark import Lark

    return Lark(grammar_text(), parser="lalr", start="line", maybe_placeholders=False)


def _describe(expected: set[str] | frozenset[str]) -> str:
    from iptrace.grammars import one_of

    return one_of(_EXPECTED_NAMES.get(t, t.lower()) for t in sorted(expected) if t not in ("TRAILER", "COMMENT"))


def parse_line(text: str, *, source: str, line_no: int) -> Tree:
    """Parse one line, raising ParseError with its real column."""
    from lark import UnexpectedInput

    try:
        return parser().parse(text)
    except UnexpectedInput as exc:
        raise _error(exc, source=source, line_no=line_no, text=text) from None


def _error(exc: UnexpectedInput, *, source: str, line_no: int, text: str) -> ParseError:
    from lark import UnexpectedCharacters, UnexpectedToken

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


# The terminals of grammars/conntrack.lark as they match one whole word of printable ASCII (a word is followed by
# a space or the end of the line, which every lookahead of the grammar's terminals allows).
_TERMINAL = re.compile(r"(?P<NAME>[a-z][a-z0-9-]*)|(?P<NUMBER>[0-9]+)|(?P<STATE>[A-Z][A-Z0-9_]*)"
                       r"|(?P<FIELD>[a-z][a-z0-9_-]*=[!-~]*)|(?P<FLAG>\[[^\]]*\])")
_WORD = re.compile(r"[!-~]+")
_PRINTABLE = re.compile(r"[ -~]*")
_TRAILER = re.compile(r"conntrack v[!-~]* \(conntrack-tools\):[ -~]*")
_ITEMS = frozenset({"FIELD", "FLAG"})


def fast_tokens(text: str) -> tuple[str, list[Word]] | None:
    """What `tokens(parse_line(text))` returns, for a line of printable ASCII words between spaces that the
    grammar accepts; None for any other line (lark judges it)."""
    if _PRINTABLE.fullmatch(text) is None:
        return None
    start = len(text) - len(text.lstrip(" "))
    if text.startswith("#", start):
        return "comment", [_token("COMMENT", text[start:], start)]
    if text.startswith("conntrack", start):
        # (the closing line: TRAILER outranks NAME; any other line starting so is lark's to judge)
        if _TRAILER.fullmatch(text, start) is None:
            return None
        return "trailer", [_token("TRAILER", text[start:], start)]
    toks = []
    for word in _WORD.finditer(text):
        m = _TERMINAL.fullmatch(word.group())
        if m is None:
            return None
        toks.append(_token(m.lastgroup or "", word.group(), word.start()))
    types = [t.type for t in toks]
    # entry: NAME NUMBER (NAME NUMBER)? NUMBER? STATE? item+
    if types[:2] != ["NAME", "NUMBER"]:
        return None
    i = 2
    if types[i:i + 1] == ["NAME"]:
        if types[i + 1:i + 2] != ["NUMBER"]:
            return None
        i += 2
    if types[i:i + 1] == ["NUMBER"]:
        i += 1
    if types[i:i + 1] == ["STATE"]:
        i += 1
    if i == len(types) or not _ITEMS.issuperset(types[i:]):
        return None
    return "entry", toks


class Word(str):
    """A token of one line: its text, with what lark's Token holds beside it (the terminal's name, where it is)
    and as lark's Token shows itself (error messages may)."""

    __slots__ = ("column", "end_column", "end_line", "end_pos", "line", "start_pos", "type")

    type: str
    start_pos: int
    line: int
    column: int
    end_line: int
    end_column: int
    end_pos: int

    def __repr__(self) -> str:
        return f"Token({self.type!r}, {str(self)!r})"


def _word(kind: str, value: str, start_pos: int, line: int, column: int, end_line: int, end_column: int,
          end_pos: int) -> Word:
    word = Word(value)
    word.type, word.start_pos, word.line, word.column = kind, start_pos, line, column
    word.end_line, word.end_column, word.end_pos = end_line, end_column, end_pos
    return word


def _token(kind: str, value: str, start: int) -> Word:
    end = start + len(value)
    return _word(kind, value, start, 1, start + 1, 1, end + 1, end)


def tokens(tree: Tree) -> tuple[str, list[Word]]:
    """("entry" | "trailer" | "comment", the line's tokens in order)."""
    from lark import Token, Tree

    node = tree.children[0]
    assert isinstance(node, Tree)
    out: list[Word] = []
    for child in node.children:
        t = child if isinstance(child, Token) else child.children[0]  # (item: FIELD | FLAG)
        assert isinstance(t, Token)
        out.append(_word(t.type, t.value, t.start_pos, t.line, t.column, t.end_line, t.end_column, t.end_pos))
    return str(node.data), out
