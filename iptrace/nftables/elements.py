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
from iptrace.nftables.reader import NotUnderstood, RuleReader
from iptrace.nftables.shapes import fast_constructor, instantiate
from iptrace.nftables.tokens import offset_position, tokenize
from iptrace.nftables.vocabulary import CHAIN_VERDICTS, VERDICT_WORDS

# Blanks the str split does not expect between an element's words (kube-proxy and the kernel write one space).
_ODD_BLANKS_RE = re.compile(r"\s\s|[^ \S]")
_CHUNK_RE = re.compile(r'(?:"(?:\\.|[^"\\])*"|\{[^{}]*\}|[^,"{}])+')
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
             out: dict[Any, Element], keys_only: bool = False,
             positions: dict[Any, tuple[int, int]] | None = None) -> None:
        """Add the elements of `body` (the inside of the braces) to `out`, keyed by element key. `body` starts
        at `line`:`column` (1-based) and may span lines. A map element whose key `out` holds already with
        another value is an error, as the kernel refuses it ("File exists"); the same element twice is not.
        `keys_only`: a map's elements may be given by their keys alone (`delete element`). `positions`: each
        element's line and column, by key."""
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
            start = offset + len(chunk) - len(chunk.lstrip())  # (where the element's text begins in `body`)
            if not text:
                if chunk is not chunks[-1][0]:
                    self.fail(error, body, offset, line, column, "an empty element (two commas)")
                continue
            try:
                try:
                    element = None if "{" in text or " timeout " in text or " expires " in text \
                        or " counter " in text else fast(text, keys_only) if '"' not in text \
                        else self.commented(text, keys_only)
                except ValueError:
                    if not _ODD_BLANKS_RE.search(text):
                        raise
                    element = None  # (split at " . " or " : ", a value kept a blank: the reader reads it)
                if element is None:
                    element = self.slow(text, keys_only)
            except (ValueError, NotUnderstood) as exc:
                why = str(exc) if isinstance(exc, ValueError) else "cannot read this element"
                self.fail(error, body, start, line, column, why)
            if positions is not None:
                positions.setdefault(element.key, offset_position(body, start, line, column))
            known = out.setdefault(element.key, element)
            if known is not element and known.data != element.data and not keys_only:
                raise self.exists(error, body, start, line, column, text)

    def fail(self, error: Callable[[str, int, int], ParseError], body: str, start: int, line: int, column: int,
             why: str) -> None:
        expected = " . ".join(self.keys) + (f" : {' . '.join(self.data)}" if self.data else "")
        raise error(f"{why}; expected an element of type {expected}",
                    *offset_position(body, start, line, column)) from None

    def exists(self, error: Callable[[str, int, int], ParseError], body: str, start: int, line: int, column: int,
               text: str) -> ParseError:
        key = text.partition(" : ")[0].strip()
        return error(f"the map already holds the key {key} with another value: nft refuses this (\"Could not "
                     "process rule: File exists\"), so no node's ruleset holds both; to change an element's value "
                     "delete it first (kube-proxy does)", *offset_position(body, start, line, column))

    def fast(self, text: str, keys_only: bool = False) -> Element | None:
        if self.data is not None:
            key_text, sep, data_text = text.partition(" : ")
            if not sep:
                if not keys_only:
                    return None
                key_text, data_text = text, ""
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
        if self.data is None or (keys_only and " : " not in text):
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

    def commented(self, text: str, keys_only: bool) -> Element | None:
        """`fast` for an element with a plain comment (`10.96.0.10 . tcp . 53 comment "ns/svc:dns" : goto …`:
        kube-proxy's no-endpoint-services map), which the rule reader would read alike; None for any other."""
        key_text, _, rest = text.partition(' comment "')
        comment, quote, after = rest.partition('"')
        if not quote or "\\" in comment or "\n" in comment or '"' in key_text or '"' in after or "  " in text \
                or (after and not after.startswith(" : ")):
            return None
        element = self.fast(key_text + after, keys_only)
        return None if element is None else _make_element(element.key, element.data, None, comment, None, None)

    def slow(self, text: str, keys_only: bool = False) -> Element:
        def error(why: str, col: int) -> ParseError:
            raise ValueError(why)

        reader = RuleReader(tokenize(text, masked=False)[0], self.family, error=error)
        element = reader.read_element(self.keys, self.data)
        if reader.pos != len(reader.toks):
            raise NotUnderstood
        if self.data is not None and element.data is None and not keys_only:
            raise ValueError("a map element without its ': value'")
        return instantiate(element)
