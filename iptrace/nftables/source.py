"""The text a ruleset was read from, and where its lines start (model.Ruleset keeps it: rules of a listing read
their text from it, element lines and error messages their lines). Pure."""

from __future__ import annotations

import re
from array import array
from operator import methodcaller

_NEWLINE = re.compile("\n")
_END = methodcaller("end")
_CHUNK = 1 << 16  # the least of the text SourceText searches for line ends at a time


class SourceText:
    """The text a ruleset was read from, with where each of its lines starts (found on first use, as far as a
    use needs: 8 bytes a line instead of a string each). Rules of a listing read their text from it (Rule.text),
    and element lines (lines.py) and error messages their lines."""

    __slots__ = ("_scanned", "_starts", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._starts = array("q", [0])  # of the lines found so far
        self._scanned = 0  # how far the text was searched for line ends

    def _find(self, n: int) -> None:
        """Search on until line `n + 1` starts or the text ends. A set's elements are listed before the chains
        and read by themselves (lines.py): the first ~7,000 lines of a 300,000-line listing; the whole text costs
        ~40 ms."""
        text, starts = self.text, self._starts
        while len(starts) <= n and self._scanned < len(text):
            end = min(len(text), self._scanned + max(_CHUNK, self._scanned))  # (doubling: a whole search, once)
            starts.extend(map(_END, _NEWLINE.finditer(text, self._scanned, end)))
            self._scanned = end

    def starts(self) -> array[int]:
        """Where each line starts: line n (1-based) is text[starts[n - 1]:starts[n] - 1] (the last to the end)."""
        self._find(len(self.text))
        return self._starts

    def has(self, n: int) -> bool:
        """Whether the text has a line `n` (1-based)."""
        if len(self._starts) <= n:
            self._find(n)
        return 0 < n <= len(self._starts)

    def start(self, n: int) -> int | None:
        """Where line `n` (1-based) starts in the text; None past its end."""
        return self._starts[n - 1] if self.has(n) else None

    def line(self, n: int) -> str:
        """Line `n` (1-based) as `text.split("\\n")[n - 1]` has it; "" past the end."""
        starts = self._starts
        if len(starts) <= n:
            self._find(n)
        if not 0 < n <= len(starts):
            return ""
        end = starts[n] - 1 if n < len(starts) else len(self.text)
        return self.text[starts[n - 1]:end]

    def __len__(self) -> int:
        return len(self.starts())
