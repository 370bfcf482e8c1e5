"""A rule line's arguments as the grammar's `line` rule gives them (grammar.rule_arg_tokens), without lark, for
the lines iptables-save prints: `[p:b] -A CHAIN arg arg …`, spaces between words (iptables prints two before
some values, e.g. `--nfacct-name  name`). Any other line (tabs, trailing blanks, a quote touching a word, a
command) is left to lark, so lark still reads every line this does not and says where a bad one is wrong. A
dump whose new rule shapes all read here never imports lark (~0.1 G instructions of a `services` run:
importing it, loading its parser, parsing a line of each shape)."""

from __future__ import annotations

import re

# The terminals of grammars/iptables_save.lark, after spaces lark ignores, each ending at a space or the end of
# the line (where lark's lexer would go on after other blanks it ignores, or after a quote with a word right
# behind it, this gives up).
# Which terminal a word is follows from its first character: '"' only QUOTED, '!' alone NEG, else WORD.
_HEAD_RE = re.compile(r'(?:\[\d+:\d+\] +)?-A +[^\s"!*:\[][^\s]*(?= |\Z)')
_ARG_RE = re.compile(r' +(?:("(?:\\.|[^"\\\r\n])*")|(!(?=\s|\Z))|([^\s"!][^\s]*|![^\s]+))(?= |\Z)')
_TYPES = (None, "QUOTED", "NEG", "WORD")


def rule_args(line: str) -> list[tuple[str, str, int]] | None:
    """`line`'s arguments after the chain name as (terminal, text, 1-based column), exactly as lark's parse of it
    gives them; None when the line is not of the plain form read here."""
    head = _HEAD_RE.match(line)
    if head is None:
        return None
    pos, end = head.end(), len(line)
    args = []
    match = _ARG_RE.match
    while pos < end:
        arg = match(line, pos)
        if arg is None:
            return None
        kind = arg.lastindex or 0
        args.append((_TYPES[kind], arg[kind], arg.start(kind) + 1))
        pos = arg.end()
    return args
