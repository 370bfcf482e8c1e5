"""The input line of a set or map element, found when a trace shows the element (a verdict-map look-up that
matched is a step of its own, with the element's line as evidence). The model keeps lines for rules and sets,
not for the ~10^5 elements of a big ruleset; this reads them back from the text of one set (a listing) or of
the `add element` lines (kube-proxy's transaction) the first time one of that set's elements is asked for, and
the other way round: which elements a line holds (evidence named by its line)."""

from __future__ import annotations

import re
from bisect import bisect_right
from itertools import count
from typing import Any

from iptrace.nftables.model import Element, Ruleset, Set, Table
from iptrace.nftables.values import normaliser

_CHUNK_RE = re.compile(r'(?:"(?:\\.|[^"\\])*"|\{[^{}]*\}|[^,"{}])+')
_ADD_ELEMENT_RE = re.compile(r'\s*(?:add|create)\s+element\s+(?:(ip|ip6|inet|arp|bridge|netdev)\s+)?(\S+)\s+(\S+)\s*\{')
_ELEMENTS_RE = re.compile(r"elements\s*=\s*\{")
_ODD_BLANKS_RE = re.compile(r"\s\s|[^ \S]")
_OPTION_RE = re.compile(r'\s+(?:comment\s+"(?:\\.|[^"\\])*"|timeout\s+\S+|expires\s+\S+|counter(?:\s+packets\s+\d+\s+'
                        r'bytes\s+\d+)?)')


class ElementLines:
    """`line(table family, table name, set, element)` → its 1-based input line (the set's own line when the
    element cannot be found, 0 for JSON input)."""

    def __init__(self, ruleset: Ruleset, kept: dict[str, Any] | None = None) -> None:
        """`kept`: where what was read is kept, when it outlives this object (it holds no reference back to the
        ruleset: a ruleset may keep it)."""
        self.ruleset = ruleset
        kept = {} if kept is None else kept
        self._sets: dict[tuple[str, str, str], dict[Any, int]] = kept.setdefault("sets", {})
        self._by_line: dict[tuple[str, str, str], dict[int, list[Any]]] = kept.setdefault("by_line", {})
        # "transaction": the `add element` chunks by set; "headers": a listing's sets by their first line
        self._read: dict[str, Any] = kept.setdefault("read", {})

    def line(self, family: str, table: str, s: Set, element: Element) -> int:
        if self.ruleset.format == "nft-json" or self.ruleset.text is None:
            return 0
        return self._indexed(family, table, s).get(element.key, s.line or 0)

    def _indexed(self, family: str, table: str, s: Set) -> dict[Any, int]:
        """Each element of set `s` (by key) to its input line, read once a set."""
        key = (family, table, s.name)
        index = self._sets.get(key)
        if index is None:
            index = self._sets[key] = self._index(family, table, s)
        return index

    def at_line(self, line: int) -> tuple[Table, Set, tuple[Element, ...]] | None:
        """The set or map whose elements input line `line` writes, and those elements (None: it writes none)."""
        if self.ruleset.format == "nft-json" or self.ruleset.text is None:
            return None
        found = self._set_at(line)
        if found is None:
            return None
        table, s = found
        key = (table.family, table.name, s.name)
        by_line = self._by_line.get(key)
        if by_line is None:
            by_line = self._by_line[key] = {}
            for element_key, at in self._indexed(table.family, table.name, s).items():
                by_line.setdefault(at, []).append(element_key)
        keys = by_line.get(line)
        if not keys:
            return None
        wanted = set(keys)
        return table, s, tuple(e for e in s.elements if e.key in wanted)

    def _set_at(self, line: int) -> tuple[Table, Set] | None:
        """The set an element on `line` would belong to: in a transaction the one its `add element` names, in a
        listing the last set block that starts above it (at_line checks that the line is among its elements)."""
        if self.ruleset.format == "nft-transaction":
            text = self._line(line - 1)
            m = _ADD_ELEMENT_RE.match(text) if text is not None and "element" in text else None
            if m is None:
                return None
            table = self.ruleset.table(m.group(1) or "ip", m.group(2))
            s = table.set(m.group(3)) if table is not None else None
            return (table, s) if table is not None and s is not None else None
        headers: tuple[list[int], list[tuple[Table, Set]]] | None = self._read.get("headers")
        if headers is None:
            found = sorted(((s.line, t, s) for t in self.ruleset.tables for s in t.sets if s.line),
                           key=lambda x: x[0])
            headers = self._read["headers"] = ([at for at, _, _ in found], [(t, s) for _, t, s in found])
        starts, sets = headers
        i = bisect_right(starts, line) - 1
        return sets[i] if i >= 0 else None

    def _line(self, i: int) -> str | None:
        """Line `i + 1` of the text, None past its end: read from the ruleset's own index (source.SourceText, which
        its rules read their text from too), not split into lines: a 300,000-line listing as a list of strings
        would double the text's footprint for the few sets a trace shows."""
        source = self.ruleset.source_text
        return source.line(i + 1) if source is not None and source.has(i + 1) else None

    def _index(self, family: str, table: str, s: Set) -> dict[Any, int]:
        if self.ruleset.format == "nft-transaction":
            chunks = self._transaction_chunks().get((family, table, s.name), [])
        else:
            chunks = self._listing_chunks(s)
        norms = [normaliser(t) for t in s.key_type]
        out: dict[Any, int] = {}
        for text, line in chunks:
            key = _key(text, norms, s.is_map)
            if key is not None:
                out.setdefault(key, line)
        return out

    def _listing_chunks(self, s: Set) -> list[tuple[str, int]]:
        """The element texts of one set block of a listing, from its `elements = {` to the list's `}`."""
        plain = self._plain_chunks(s)
        if plain is not None:
            return plain
        out: list[tuple[str, int]] = []
        start = (s.line or 1) - 1
        inside = False
        for i in count(start):
            text = self._line(i)
            if text is None:
                break
            if not inside:
                at = text.find("elements = {")
                if at >= 0:
                    text = text[at + len("elements = {"):]
                else:
                    m = _ELEMENTS_RE.search(text) if "elements" in text else None  # (other blanks nft reads)
                    if m is None:
                        if i > start and text.strip() == "}":  # the end of the set block: no elements
                            break
                        continue
                    text = text[m.end():]
                inside = True
            done = False
            body = text
            depth_end = _closing(body)
            if depth_end is not None:
                body, done = body[:depth_end], True
            for m in _CHUNK_RE.finditer(body):
                chunk = m.group().strip()
                if chunk:
                    out.append((chunk, i + 1))
            if done:
                break
        return out

    def _plain_chunks(self, s: Set) -> list[tuple[str, int]] | None:
        """`_listing_chunks` of a set block whose lines before `elements = {` hold no `}` nor another `elements`
        and whose element list holds no quote nor brace (kube-proxy's dispatch maps: ~12,000 elements at 5,000
        Services), read from the text at once: each line's elements are its parts between commas, as the line
        by line reading finds them there. None for any other block (read line by line)."""
        source = self.ruleset.source_text
        begin = source.start(s.line or 1) if source is not None else None
        if begin is None:
            return None
        text = source.text  # type: ignore[union-attr]
        at = text.find("elements = {", begin)
        if at < 0 or "}" in text[begin:at] or "elements" in text[begin:at]:
            return None
        at += len("elements = {")
        end = text.find("}", at)
        if end < 0:
            return None
        body = text[at:end]
        if '"' in body or "{" in body:
            return None
        line = (s.line or 1) + text.count("\n", begin, at)
        out: list[tuple[str, int]] = []
        for i, part in enumerate(body.split("\n"), line):
            for chunk in part.split(","):
                chunk = chunk.strip()
                if chunk:
                    out.append((chunk, i))
        return out

    def _transaction_chunks(self) -> dict[tuple[str, str, str], list[tuple[str, int]]]:
        chunks: dict[tuple[str, str, str], list[tuple[str, int]]] | None = self._read.get("transaction")
        if chunks is None:
            found: dict[tuple[str, str, str], list[tuple[str, int]]] = {}
            for i, text in enumerate((self.ruleset.text or "").split("\n")):
                if "element" not in text:
                    continue
                m = _ADD_ELEMENT_RE.match(text)
                if m is None:
                    continue
                family, table, name = m.group(1) or "ip", m.group(2), m.group(3)
                body = text[m.end():]
                end = _closing(body)
                body = body[:end] if end is not None else body
                for c in _CHUNK_RE.finditer(body):
                    chunk = c.group().strip()
                    if chunk:
                        found.setdefault((family, table, name), []).append((chunk, i + 1))
            chunks = self._read["transaction"] = found
        return chunks


def _closing(text: str) -> int | None:
    """Where the `}` closing an element list is in `text` (quotes and nested braces skipped), or None."""
    if '"' not in text and "{" not in text:  # most lines of a listing's element list
        at = text.find("}")
        return at if at >= 0 else None
    depth = 0
    quoted = False
    i = 0
    while i < len(text):
        ch = text[i]
        if quoted:
            if ch == "\\":
                i += 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            if depth == 0:
                return i
            depth -= 1
        i += 1
    return None


def _key(text: str, norms: list[Any], is_map: bool) -> Any:
    found = _read_key(text, norms, is_map)
    if found is None and _ODD_BLANKS_RE.search(text):  # (blanks other than the one space nft lists)
        found = _read_key(" ".join(text.split()), norms, is_map)
    return found


def _read_key(text: str, norms: list[Any], is_map: bool) -> Any:
    key_text = text.partition(" : ")[0] if is_map else text
    if "comment" in key_text or "timeout" in key_text or "expires" in key_text or "counter" in key_text:
        key_text = _OPTION_RE.sub("", " " + key_text)  # (each option starts with its word: none, nothing to cut)
    parts = key_text.strip().split(" . ")
    if len(parts) != len(norms):
        return None
    try:
        if len(parts) == 1:
            return norms[0](parts[0].strip())
        if len(parts) == 3:  # kube-proxy's address . protocol . port (a dispatch map's ~5,000 elements), unrolled
            a, b, c = parts
            return (norms[0](a.strip()), norms[1](b.strip()), norms[2](c.strip()))
        return tuple([n(p.strip()) for n, p in zip(norms, parts, strict=True)])
    except ValueError:
        return None
