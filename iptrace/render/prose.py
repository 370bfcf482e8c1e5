"""How wide a text report's prose is printed: as documented on a pipe or in a file (paragraphs at a fixed
width, or not wrapped at all; a headline or a finding's summary one line each, for grep), or, on a terminal
narrower than that, every line of prose within the terminal, so that it never breaks a line itself. Rules and
commands are never wrapped: they are pasted. Pure."""

from __future__ import annotations

import textwrap
from collections.abc import Callable


class Prose:
    """`terminal`: the terminal's width (None on a pipe); `paragraphs`: the documented width of paragraphs
    (None: not wrapped); `say`: what the text becomes before it is wrapped (the commands it suggests named as
    the program was called, `kubectl iptrace …`, which is longer)."""

    def __init__(self, terminal: int | None, paragraphs: int | None, say: Callable[[str], str] | None = None) -> None:
        self.narrow = terminal is not None and (paragraphs is None or terminal < paragraphs)
        self.width = terminal if self.narrow else paragraphs
        self.say = say if say is not None and self.narrow else None

    def wrap(self, text: str, indent: str, later: str | None = None) -> list[str]:
        """A paragraph, its first line indented by `indent`, the others by `later` (default: the same)."""
        if self.width is None:
            return [indent + text]
        if self.say is not None:
            text = self.say(text)
        return textwrap.wrap(text, width=self.width, initial_indent=indent,
                             subsequent_indent=indent if later is None else later,
                             break_long_words=False, break_on_hyphens=False) or [indent.rstrip()]

    def line(self, text: str, later: str = "") -> list[str]:
        """A headline or a summary: one line, wrapped only on a narrow terminal."""
        return self.wrap(text, "", later) if self.narrow else [text]
