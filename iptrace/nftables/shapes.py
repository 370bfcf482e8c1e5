"""Rule shapes: the key that groups rules written alike, and the compiled builder each shape gets.

A shape key is the rule text with every *value* masked: quoted strings and words holding a digit (addresses,
ports, numbers, most kube-proxy chain and set names), except the few keywords that hold a digit (`ip6`,
`l4proto`). kube-proxy's 5,000-Service listing has a few dozen shapes. The reader (reader.py) reads one rule
of a shape into a template whose masked values are `Slot`s; `compile_template` turns that into one Python
function, so every further rule of the shape costs a regex split and a few constructor calls.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from iptrace.nftables.model import Rule
from iptrace.nftables.vocabulary import VOCABULARY

_DELIM = r'\s{},;"#'
_DIGIT_KEYWORDS = sorted((w for w in VOCABULARY if any(c.isdigit() for c in w)), key=len, reverse=True)

# One token: a quoted string, an `# xt_…` left by old nft, a brace/comma/semicolon, a word (never ending in ":"),
# or a lone ":" (the element data separator). Mirrors the terminals of grammars/nft.lark.
TOKEN_RE = re.compile(rf'"(?:\\.|[^"\\\n])*"|#[ \t]*xt_\w+|[{{}},;]|[^{_DELIM}]*[^{_DELIM}:]|:')
# The masked values (group 1). Tokens start after a delimiter, or after "@" (a set reference keeps its "@").
MASK_RE = re.compile(
    rf'(?<![^\s{{}},;@])(?!(?:{"|".join(map(re.escape, _DIGIT_KEYWORDS))})(?![^{_DELIM}]))'
    rf'("(?:\\.|[^"\\\n])*"|(?!@)[^{_DELIM}\d]*\d(?:[^{_DELIM}]*[^{_DELIM}:])?)')


@dataclass(frozen=True, slots=True)
class Slot:
    """In a template: the shape's `index`-th masked value, read with `fn` (None: the text as it is)."""

    index: int
    fn: Callable[[str], Any] | None = None


@dataclass(frozen=True, slots=True)
class Call:
    """In a template: `fn(*args)` at build time (for values a constructor alone cannot make)."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]


def _has_slot(node: Any) -> bool:
    if isinstance(node, (Slot, Call)):
        return True
    if isinstance(node, tuple):
        return any(_has_slot(x) for x in node)
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        return any(_has_slot(getattr(node, f.name)) for f in dataclasses.fields(node))
    return False


class _Emitter:
    def __init__(self) -> None:
        self.ns: dict[str, Any] = {}

    def name(self, obj: Any) -> str:
        key = f"_{len(self.ns)}"
        self.ns[key] = obj
        return key

    def emit(self, node: Any) -> str:
        if node is None or isinstance(node, (bool, int)):
            return repr(node)
        if isinstance(node, str):
            return repr(node)
        if isinstance(node, Slot):
            return f"v[{node.index}]" if node.fn is None else f"{self.name(node.fn)}(v[{node.index}])"
        if not _has_slot(node):
            return self.name(node)
        if isinstance(node, Call):
            return f"{self.name(node.fn)}({', '.join(self.emit(a) for a in node.args)})"
        if isinstance(node, tuple):
            return "(" + "".join(self.emit(x) + ", " for x in node) + ")"
        fields = dataclasses.fields(node)
        args = ", ".join(self.emit(getattr(node, f.name)) for f in fields)
        return f"{self.name(type(node))}({args})"


def compile_template(items: tuple[Any, ...], comment: Any) -> Callable[[list[str], str, int | None, int | None],
                                                                       Rule]:
    """A function (values, text, line, handle) → Rule for every rule of one shape."""
    emitter = _Emitter()
    source = (f"lambda v, text, line, handle: {emitter.name(Rule)}({emitter.emit(items)}, "
              f"{emitter.emit(comment)}, text, line, handle)")
    return eval(source, emitter.ns)


def join_tokens(parts: tuple[str, ...]) -> str:
    """Tokens back into text, spaced as nft prints them."""
    return " ".join(parts).replace(" ,", ",")


def instantiate(node: Any) -> Any:
    """A template without Slots (its Calls evaluated): for the elements and rules read one at a time."""
    if not _has_slot(node):
        return node
    emitter = _Emitter()
    return eval(f"lambda v: {emitter.emit(node)}", emitter.ns)([])


def references(items: tuple[Any, ...]) -> Callable[[list[str]], tuple[str, ...]] | None:
    """A function values → the chains (by name) and sets (as "@name") a rule of this shape refers to; None when
    it refers to none."""
    found: list[Any] = []

    def walk(node: Any) -> None:
        if isinstance(node, Call):
            for arg in node.args:
                walk(arg)
            return
        if isinstance(node, tuple):
            for x in node:
                walk(x)
            return
        if not dataclasses.is_dataclass(node) or isinstance(node, type):
            return
        name = type(node).__name__
        if name == "Verdict" and node.target is not None:
            found.append(node.target)
        elif name == "SetRef":
            found.append(Call(_at, (node.name,)) if isinstance(node.name, Slot) else "@" + node.name)
        elif name == "SetUpdate":
            found.append(Call(_at, (node.set,)) if isinstance(node.set, Slot) else "@" + node.set)
        for f in dataclasses.fields(node):
            walk(getattr(node, f.name))

    walk(items)
    if not found:
        return None
    emitter = _Emitter()
    return eval(f"lambda v: {emitter.emit(tuple(found))}", emitter.ns)


def _at(name: str) -> str:
    return "@" + name
