"""Set and map elements from text: `elements = { … }` of a listing, `add element … { … }` of a transaction.

kube-proxy's maps hold one element per Service port (tens of thousands), so the common element — a key, maybe
concatenated, maybe `: verdict` or `: data` — is split with str methods and normalised by the set's types;
anything else (comments, timeouts, counters, nested braces) goes through the rule reader, one element at a
time. Never through lark one by one: the loader has lark check an element list only when it cannot be read.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from iptrace.errors import ParseError
from iptrace.nftables import values
from iptrace.nftables.model import Element, Verdict
from iptrace.nftables.reader import NotUnderstood, RuleReader, tokenize
from iptrace.nftables.shapes import fast_constructor, instantiate
from iptrace.nftables.vocabulary import CHAIN_VERDICTS, VERDICT_WORDS

_CHUNK_RE = re.compile(r'(?:"(?:\\.|[^"\\])*"|\{[^{}]*\}|[^,"{}])+')
_SLOW = ('"', "{", " timeout ", " expires ", " counter ", " comment ")
_VERDICTS = {w: Verdict(w) for w in VERDICT_WORDS}
_make_element = fast_constructor(Element)
_make_verdict = fast_constructor(Verdict)


class ElementReader:
    """Reads the elements of one set (its key and data types fixed)."""

    def __init__(self, keys: tuple[str, ...], data: tuple[str, ...] | None, family: str) -> None:
        self.keys = keys
        self.data = data
        self.family = family
        self.key_norms = tuple(values.normaliser(t) for t in keys)
        self.data_norms = tuple(values.normaliser(t) for t in data) if data and data != ("verdict",) else ()
        self.vmap = data == ("verdict",)

    def read(self, body: str, *, line: int, column: int, error: Callable[[str, int, int], ParseError],
             out: dict[Any, Element]) -> None:
        """Add the elements of `body` (the inside of the braces) to `out`, keyed by element key. `body` starts
        at `line`:`column` (1-based) and may span lines."""
        if '"' in body or "{" in body or "}" in body:
            chunks = [(m.group(), m.start()) for m in _CHUNK_RE.finditer(body)]
            rest = body[chunks[-1][1] + len(chunks[-1][0]):] if chunks else body
            if rest.strip().strip(",").strip():
                where = body.rfind(rest.strip())
                raise error(f"unexpected {rest.strip()[:20]!r} in an element list", line + body.count("\n", 0, where),
                            column + where)
        else:  # the common case (kube-proxy's maps): commas split it
            chunks = []
            pos = 0
            for chunk in body.split(","):
                chunks.append((chunk, pos))
                pos += len(chunk) + 1
        fast = self.fast
        for chunk, offset in chunks:
            text = chunk.strip()
            if not text:
                if chunk is not chunks[-1][0]:
                    self.fail(error, body, offset, line, column, "an empty element (two commas)")
                continue
            try:
                element = fast(text) if not any(s in text for s in _SLOW) else None
                if element is None:
                    element = self.slow(text)
            except (ValueError, NotUnderstood) as exc:
                start = offset + len(chunk) - len(chunk.lstrip())
                why = str(exc) if isinstance(exc, ValueError) else "cannot read this element"
                self.fail(error, body, start, line, column, why)
            out.setdefault(element.key, element)

    def fail(self, error: Callable[[str, int, int], ParseError], body: str, start: int, line: int, column: int,
             why: str) -> None:
        where_line = line + body.count("\n", 0, start)
        line_start = body.rfind("\n", 0, start) + 1
        where_col = (start - line_start + 1) if line_start else column + start
        raise error(f"{why}; expected an element of type {' . '.join(self.keys)}"
                    + (f" : {' . '.join(self.data)}" if self.data else ""), where_line, where_col) from None

    def fast(self, text: str) -> Element | None:
        if self.data is not None:
            key_text, sep, data_text = text.partition(" : ")
            if not sep:
                return None
        else:
            key_text, data_text = text, ""
        norms = self.key_norms
        if len(norms) == 1:
            if " " in key_text:
                return None
            key: Any = norms[0](key_text)
        else:
            parts = key_text.split(" . ")
            if len(parts) != len(norms):
                return None
            if len(parts) == 3:  # kube-proxy's address . protocol . port
                key = (norms[0](parts[0]), norms[1](parts[1]), norms[2](parts[2]))
            else:
                key = tuple(n(p) for n, p in zip(norms, parts, strict=True))
        if self.data is None:
            return _make_element(key, None, None, None, None, None)
        if self.vmap:
            verdict = _VERDICTS.get(data_text)
            if verdict is None:
                kind, _, target = data_text.partition(" ")
                if kind not in CHAIN_VERDICTS or not target or " " in target:
                    return None
                verdict = _make_verdict(kind, target)
            return _make_element(key, verdict, None, None, None, None)
        dparts = data_text.split(" . ")
        if len(dparts) != len(self.data_norms):
            return None
        if len(dparts) == 1:
            return _make_element(key, self.data_norms[0](data_text), None, None, None, None)
        return _make_element(key, tuple(n(p) for n, p in zip(self.data_norms, dparts, strict=True)), None, None,
                             None, None)

    def slow(self, text: str) -> Element:
        def error(why: str, col: int) -> ParseError:
            raise ValueError(why)

        reader = RuleReader(tokenize(text, masked=False)[0], self.family, error=error)
        element = reader.read_element(self.keys, self.data)
        if reader.pos != len(reader.toks):
            raise NotUnderstood
        return instantiate(element)
