"""A rule's tokens as the reader (reader.py) takes them: shapes.TOKEN_RE's tokens, the values a shape key masks
(shapes.MASK_RE, or the fast key's non-words) carrying their slot; and where a token's offset is in its file."""

from __future__ import annotations

from dataclasses import dataclass

from iptrace.nftables.shapes import DIGIT_KEYWORDS, MASK_RE, TOKEN_RE


@dataclass(frozen=True, slots=True)
class Tok:
    text: str  # as written (for a masked value: this rule's value)
    col: int  # 0-based offset in the rule text
    slot: int = -1  # index among the masked values; -1: part of the shape
    ref: bool = False  # `@name` whose name is masked

    @property
    def word(self) -> str | None:
        """The word, when it is part of the shape (structure may depend on it)."""
        return self.text if self.slot < 0 else None


def tokenize(text: str, *, masked: bool = True) -> tuple[list[Tok], dict[int, str]]:
    """The rule's tokens; with `masked`, values the shape key masks carry their slot index. Also returns the
    masked keywords (`l4proto`: slot → word) that every rule of the shape must repeat."""
    starts: dict[int, int] = {}
    if masked:
        starts = {m.start(1): i for i, m in enumerate(MASK_RE.finditer(text))}
    out = []
    keywords: dict[int, str] = {}
    for m in TOKEN_RE.finditer(text):
        start = m.start()
        tok = m.group()
        if start in starts:
            if tok in DIGIT_KEYWORDS:
                keywords[starts[start]] = tok
                out.append(Tok(tok, start))
            else:
                out.append(Tok(tok, start, starts[start]))
        elif tok[0] == "@" and start + 1 in starts:
            out.append(Tok(tok, start, starts[start + 1], ref=True))
        else:
            out.append(Tok(tok, start))
    return out, keywords


def tokenize_fast(text: str, tokens: list[str], known: dict[str, str]) -> list[Tok] | None:
    """The tokens of a rule keyed by shapes.fast_tokens: every token that is not a `known` word is a value,
    slot = its index. None if the grammar's tokens are not those (then the rule takes the MASK_RE key)."""
    found = [(m.group(), m.start()) for m in TOKEN_RE.finditer(text)]
    if [tok for tok, _ in found] != tokens:
        return None
    return [Tok(tok, col) if tok in known else Tok(tok, col, i) for i, (tok, col) in enumerate(found)]


def offset_position(text: str, offset: int, line: int, column: int) -> tuple[int, int]:
    """The line and column (1-based) of `offset` in `text`, which starts at `line`:`column` of its file and may
    span several lines (an element list, a rule written over several lines)."""
    where_line = line + text.count("\n", 0, offset)
    line_start = text.rfind("\n", 0, offset) + 1
    return where_line, (offset - line_start + 1) if line_start else column + offset
