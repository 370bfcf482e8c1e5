"""The lark grammars' text (grammars/*.lark): from the repository's grammars/ in a source checkout or an editable
install, else from the wheel, which ships them inside the package (each parser module builds its own parser);
and the words its errors use for what the parser expected. No lark here: the parsers pass lark's pieces in."""

from __future__ import annotations

import io
import pickle
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

_Parser = TypeVar("_Parser")


def grammar_text(name: str) -> str:
    """grammars/`name` (e.g. "nft.lark")."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "grammars" / name, here / "grammars" / name):
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8")
    return resources.files("iptrace").joinpath("grammars", name).read_text(encoding="utf-8")


def grammar_path(name: str) -> Path | None:
    """Where grammars/`name` is when it is a file (a checkout, an editable install, an unpacked wheel)."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "grammars" / name, here / "grammars" / name):
        if candidate.is_file():
            return candidate
    found = resources.files("iptrace").joinpath("grammars", name)
    return Path(str(found)) if found.is_file() else None


def saved_parser(name: str, key: tuple[str, ...], load: Callable[[io.BytesIO], _Parser],
                 build: Callable[[], _Parser]) -> _Parser:
    """The parser saved as grammars/`name` (by `save_parser`), loaded by `load` (lark's Lark.load), when it was
    saved under this very `key` (the grammar text, the parser's options and lark's version); else `build()`.
    Loading lark's saved LALR tables costs a few milliseconds, building them tens, at every start."""
    path = grammar_path(name)
    if path is not None:
        try:
            saved, data = pickle.loads(path.read_bytes())
        except (OSError, pickle.UnpicklingError, ValueError, TypeError, EOFError):
            saved = data = None
        if saved == key and isinstance(data, bytes):
            return load(io.BytesIO(data))
    return build()


def save_parser(path: Path, key: tuple[str, ...], save: Callable[[io.BytesIO], None]) -> None:
    """Write a built parser (`save`: its Lark.save) where `saved_parser` loads it from under `key`."""
    out = io.BytesIO()
    save(out)
    path.write_bytes(pickle.dumps((key, out.getvalue()), protocol=4))


def one_of(names: Iterable[str]) -> str:
    """'a, b or c' (each once, in order), or 'nothing'."""
    unique = list(dict.fromkeys(names))
    if not unique:
        return "nothing"
    return ", ".join(unique[:-1]) + (" or " if len(unique) > 1 else "") + unique[-1]


def describe_expected(expected: Iterable[str], names: Mapping[str, str], terminal: Callable[[str], Any]) -> str:
    """What a parser expected, in words: `names` for the terminals it has a word for, else the terminal's
    literal text (`terminal(name).pattern`, a lark TerminalDef) or its name."""
    out: list[str] = []
    for term in sorted(expected):
        if term in names:
            out.append(names[term])
            continue
        try:
            pattern = terminal(term).pattern
            out.append(f'"{pattern.value}"' if pattern.type == "str" else term.lower())
        except KeyError:
            out.append(term.lower())
    return one_of(out)


def unexpected_character(text: str, pos: int, allowed: str | None) -> str:
    """The reason for a character no terminal starts with (an unclosed quote is said as such)."""
    char = text[pos] if 0 <= pos < len(text) else "?"
    if char == '"':
        return "unterminated quoted string; expected a closing '\"' before the end of the line"
    return f"unexpected {char!r}{_invisible(char)}; expected {allowed or 'a word'}"


def _invisible(char: str) -> str:
    """What a character a terminal shows as a blank or nothing is (a web page or chat copies spaces as U+00A0)."""
    if char == " " or unicodedata.category(char) not in ("Zs", "Cf"):
        return ""
    return f" (U+{ord(char):04X} {unicodedata.name(char, 'a format character')}: copied from a web page or chat? " \
        "retype it as a plain space or remove it)"
