"""Rule shapes: the key that groups rules written alike, and the builder compiled for each shape.

Most rules of a listing are keyed by `fast_tokens` (the loader inlines it): split at blanks, braces and
commas, each token kept in the key when it is a known word (the vocabulary, punctuation, plain lower-case words
seen before) and None — a value — otherwise. Rules that cannot be keyed that way (quotes, `@set`, odd spacing)
take MASK_RE's key: the text with values masked (quoted strings, words holding a digit, a capital or a "/");
the few keywords that hold a digit (`ip6`, `l4proto`) are masked too and each such shape checks them.
kube-proxy's 5,000-Service listing has a few dozen shapes. The reader (reader.py) reads one rule of a shape
into a template whose values are `Slot`s; `compile_template` turns that into one Python function that checks
(normalises) a rule's values and leaves the items to be built on first use.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from socket import AF_INET, inet_pton
from sys import intern
from typing import Any

from iptrace.nftables.model import Rule
from iptrace.nftables.vocabulary import VOCABULARY

_DELIM = r'\s{},;"#'
DIGIT_KEYWORDS = frozenset(w for w in VOCABULARY if any(c.isdigit() for c in w))

# One token: a quoted string, an `# xt_…` left by old nft, a brace/comma/semicolon, a word (never ending in ":"),
# or a lone ":" (the element data separator). Mirrors the terminals of grammars/nft.lark.
TOKEN_RE = re.compile(rf'"(?:\\.|[^"\\\n])*"|#[ \t]*xt_\w+|[{{}},;]|[^{_DELIM}]*[^{_DELIM}:]|:')
# The masked values (the one group, so that `split` gives key pieces and values at once). A token starts after
# a delimiter or after the "@" of a set reference (which stays in the key).
MASK_RE = re.compile(
    rf'(?<![^\s{{}},;@])("(?:[^"\\\n]|\\.)*"|(?!@)[^{_DELIM}]*[0-9A-Z][^{_DELIM}]*(?<!:)'
    rf'|[^{_DELIM}@]+/[^{_DELIM}]*(?<!:))')


def shape_key(text: str) -> tuple[str, list[str]]:
    """(key, values) of a rule text, by MASK_RE (any rule without a `#`)."""
    parts = MASK_RE.split(text)
    return "\0".join(parts[0::2]), parts[1::2]


# The quicker key most listing lines get (the loader inlines it): the rule split at blanks, braces and commas,
# each token kept when it is a known word (see `keywords`) and None (a value) otherwise. It holds for rules
# without quotes, set references (`@s`: the key could not tell them from values), comments, semicolons, odd
# spacing or a ":" glued to a word (`fast_unsafe`; str methods: a regex search is several times slower here).


def fast_unsafe(s: str) -> bool:
    return '"' in s or "@" in s or "#" in s or ";" in s or "\t" in s or "\n" in s or "  " in s or (
        ":" in s and (s[-1] == ":" or s.count(": ") != s.count(" : ")))


_PLAIN_WORD = re.compile(r"[a-z][a-z-]*[a-z]").fullmatch


def keywords() -> dict[str, str]:
    """The known words of one load: the vocabulary and punctuation, plus the plain lower-case words (chain
    names like `mark-for-masquerade`, symbols like `new`) `learn` adds from the rules it reads, so that a
    shape can hold them as constants. Which words are known only decides how finely rules are grouped; each
    shape's builder is right for every rule of its key."""
    return {w: w for w in (*VOCABULARY, "{", "}", ",", ":")}


def learn(known: dict[str, str], tokens: list[str]) -> None:
    for tok in tokens:
        if tok not in known and _PLAIN_WORD(tok):
            known[tok] = tok


def fast_tokens(text: str) -> list[str] | None:
    if fast_unsafe(text):
        return None
    if "," in text:
        text = text.replace(",", " , ")
    if "{" in text or "}" in text:
        text = text.replace("{", " { ").replace("}", " } ")
    return text.split()


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


def draft_class(cls: type) -> type:
    """A plain class with the slots of `cls` (a frozen, slotted dataclass without __post_init__). An object made as
    a draft, its slots stored as any attribute's are (the interpreter's quick path), then given `cls` as its class
    (`o.__class__ = cls`, allowed between classes of one layout) is the `cls` instance the slot setters would make,
    made in half the instructions: each frozen slot setter is a method-wrapper call (~32 ns a field)."""
    assert "__post_init__" not in vars(cls) and cls.__bases__ == (object,), cls
    return type(f"{cls.__name__}Draft", (), {"__slots__": cls.__slots__})


def fast_constructor(cls: type) -> Callable[..., Any]:
    """A positional constructor for a frozen, slotted dataclass that fills a draft (draft_class). The dataclass
    __init__ of a frozen class sets each field through object.__setattr__ by name, which doubles the cost of
    the ~200,000 objects a 5,000-Service listing makes; this one may not be used for classes that need
    __post_init__."""
    fields = [f.name for f in dataclasses.fields(cls)]
    ns: dict[str, Any] = {"_draft": draft_class(cls), "_cls": cls}
    stores = "".join(f"    o.{name} = {name}\n" for name in fields)
    exec(f"def make({', '.join(fields)}):\n    o = _draft()\n{stores}    o.__class__ = _cls\n    return o\n", ns)
    return ns["make"]


class _Emitter:
    """Turns a template into Python statements: constants are bound by name, every object that holds a Slot is
    built (bottom-up, into temporaries) as a draft (draft_class) its fields are stored in."""

    def __init__(self, *, deferred: bool = False) -> None:
        self.ns: dict[str, Any] = {}
        self.lines: list[str] = []
        self.drafts: dict[type, tuple[str, str]] = {}  # class → names of its draft class and of itself
        # deferred: Slots become `n[k]`, the k-th of the values normalised beforehand (see compile_template)
        self.deferred = deferred
        self.slots: dict[tuple[int, int], tuple[int, Slot]] = {}

    def name(self, obj: Any) -> str:
        key = f"_{len(self.ns)}"
        self.ns[key] = obj
        return key

    def construct(self, cls: type, args: list[str]) -> str:
        if "__post_init__" in vars(cls):
            return f"{self.name(cls)}({', '.join(args)})"
        drafts = self.drafts.get(cls)
        if drafts is None:
            drafts = self.drafts[cls] = (self.name(draft_class(cls)), self.name(cls))
        tmp = f"t{len(self.lines)}"
        self.lines.append(f"{tmp} = {drafts[0]}()")
        self.lines.extend(f"{tmp}.{f.name} = {arg}" for f, arg in zip(dataclasses.fields(cls), args, strict=True))
        self.lines.append(f"{tmp}.__class__ = {drafts[1]}")
        return tmp

    def emit(self, node: Any) -> str:
        if node is None or isinstance(node, (bool, int)):
            return repr(node)
        if isinstance(node, str):
            return repr(node)
        if isinstance(node, Slot):
            if self.deferred:
                k = self.slots.setdefault((node.index, id(node.fn)), (len(self.slots) + 3, node))[0]
                return f"n[{k}]"
            return f"v[{node.index}]" if node.fn is None else f"{self.name(node.fn)}(v[{node.index}])"
        if not _has_slot(node):
            return self.name(node)
        if isinstance(node, Call):
            return f"{self.name(node.fn)}({', '.join(self.emit(a) for a in node.args)})"
        if isinstance(node, tuple):
            return "(" + "".join(self.emit(x) + ", " for x in node) + ")"
        args = [self.emit(getattr(node, f.name)) for f in dataclasses.fields(node)]
        return self.construct(type(node), args)

    def function(self, name: str, params: str, prologue: str, result: str) -> Callable[..., Any]:
        body = "".join(f"    {line}\n" for line in self.lines)
        exec(f"def {name}({params}):\n{prologue}{body}    return {result}\n", self.ns)
        return self.ns[name]


_RuleDraft = draft_class(Rule)


def compile_template(items: tuple[Any, ...], comment: Any, keywords: dict[int, str]) -> Callable[
        [list[str], str, int | None, int | None], Rule | None]:
    """A function (values, text, line, handle) → Rule for every rule of one shape (`text` a str, or the
    source.SourceText whose line `line` stripped is the rule's text): it normalises (and so checks)
    the rule's values at once and leaves building the items to the Rule's first use (model.Rule: `_lazy` is
    (build, text, line, normalised values…), and build reads its own tuple). None when
    one of the masked `keywords` (slot → word: `l4proto`; → ":word": the tail the value ends with) is something
    else in this rule (the loader then reads it alone)."""
    later = _Emitter(deferred=True)
    result = f"({later.emit(items)}, {later.emit(comment)})"
    build = later.function("build", "n", "", result)
    # The template itself, and where each Slot's value is in a rule's `_lazy`: skeleton.py reads a chain's
    # skeleton from its rules' shapes and values without building their items.
    build.template = (items, comment, {key: k for key, (k, _) in later.slots.items()})  # type: ignore[attr-defined]
    slots = sorted(later.slots.values(), key=lambda x: x[0])

    def values(prefix: str, value: Callable[[int], str], ns: dict[str, Any]) -> tuple[str, list[str]]:
        """The statements (indented once) that check the rule's masked keywords and normalise its values, read
        with `value(index)`, into locals `{prefix}x…` (their names returned, in `_lazy`'s order); the objects
        they use go into `ns` (names prefixed)."""
        # Values are interned: the same addresses and chain names recur in many rules (an endpoint's address in
        # both rules of its chain, every endpoint chain's name in its service chain's verdict map and as the
        # chain's own name), ~10 MB of copies at 5,000 Services.
        ns.update({"_pton": inet_pton, "_AF_INET": AF_INET, "_intern": intern})

        def name(obj: Any) -> str:
            key = f"_{prefix}{len(ns)}"
            ns[key] = obj
            return key

        # (a word starting with ":" is the tail a value must end with: `10.0.0.1:numgen`, reader.tails)
        tests = (f"not {value(i)}.endswith({word!r})" if word[0] == ":" else f"{value(i)} != {word!r}"
                 for i, word in sorted(keywords.items()))
        lines = "".join(f"    if {test}:\n        return None\n" for test in tests)
        parts = []
        for k, slot in slots:
            x, v = f"{prefix}x{k}", value(slot.index)
            if getattr(slot.fn, "canonical_ipv4", False):
                # An address as the kernel prints it is the common case: checked by one C call, inline.
                lines += (f"    {x} = _intern({v})\n    try:\n        _pton(_AF_INET, {x})\n"
                          f"    except OSError:\n        {x} = {name(slot.fn)}({x})\n")
            elif getattr(slot.fn, "decimal_int", False):
                lines += f"    {x} = {v}\n    {x} = int({x}) if {x}.isdigit() else {name(slot.fn)}({x})\n"
            elif getattr(slot.fn, "ipv4_port", False):
                # kube-proxy's `dnat to 10.180.0.1:80`, inline; anything else through values.nat_target.
                fn, h, p = name(slot.fn), f"{prefix}h", f"{prefix}p"
                lines += (f"    {x} = {v}\n    {h}, {prefix}sep, {p} = {x}.partition(':')\n"
                          f"    if {prefix}sep and {p}.isdigit() and int({p}) < 65536:\n        try:\n"
                          f"            _pton(_AF_INET, {h})\n            {x} = (_intern({h}), int({p}))\n"
                          f"        except OSError:\n            {x} = {fn}({x})\n"
                          f"    else:\n        {x} = {fn}({x})\n")
            elif slot.fn is None:
                lines += f"    {x} = _intern({v})\n"
            else:
                lines += f"    {x} = {name(_intern_str)}({name(slot.fn)}({v}))\n"
            parts.append(x)
        return lines, parts

    def construct(prefix: str, parts: list[str], text: str, line: str, handle: str, ns: dict[str, Any]) -> str:
        """The statements (indented once) that make the rule of normalised values `parts` (expressions) into
        local `{prefix}o`, its text, line and handle given as expressions; the objects they use go into `ns`."""
        ns[f"_{prefix}draft"], ns[f"_{prefix}build"], ns["_Rule"] = _RuleDraft, build, Rule
        normalised = "".join(p + ", " for p in parts)
        # `text`, `line` and `handle` (None without `nft -a`) are set as well as kept in `_lazy`: a slot costs its
        # place whether set or not, and reading an unset one goes through an AttributeError and Rule.__getattr__
        # (the layout reads every endpoint rule's line, the walker every replayed rule's handle). A rule
        # of a listing read line by line is given the listing (source.SourceText) for its text, which is that
        # line stripped: it keeps no copy of it, and Rule.__getattr__ reads it from there.
        o = f"{prefix}o"
        return (f"    {o} = _{prefix}draft()\n"
                f"    {o}.handle = {handle}\n"
                f"    if type({text}) is str:\n        {o}.text = {text}\n    {o}.line = {line}\n"
                f"    {o}._lazy = (_{prefix}build, {text}, {line}, {normalised})\n"
                f"    {o}.__class__ = _Rule\n")

    ns: dict[str, Any] = {}
    code, parts = values("", "v[{}]".format, ns)
    code += construct("", parts, "text", "line", "handle", ns)
    exec(f"def make(v, text, line, handle):\n{code}    return o\n", ns)
    make = ns["make"]
    make.build = build
    make.values = values
    make.construct = construct
    return make


def _intern_str(value: Any) -> Any:
    return intern(value) if type(value) is str else value


def join_tokens(parts: tuple[str, ...]) -> str:
    """Tokens back into text, spaced as nft prints them."""
    return " ".join(parts).replace(" ,", ",")


def instantiate(node: Any) -> Any:
    """A template without Slots (its Calls evaluated): for the elements and rules read one at a time."""
    if not _has_slot(node):
        return node
    emitter = _Emitter()
    return eval(f"lambda v: {emitter.emit(node)}", emitter.ns)([])


def references(items: tuple[Any, ...]) -> tuple[tuple[str, ...], Callable[[list[str]], tuple[str, ...]] | None]:
    """The chains (by name) and sets (as "@name") rules of this shape refer to: those every such rule names,
    and a function values → those that depend on the rule (None when none do)."""
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
            found.append(Call(_plus, (node.set,)) if isinstance(node.set, Slot) else "+" + node.set)
        for f in dataclasses.fields(node):
            walk(getattr(node, f.name))

    walk(items)
    fixed = tuple(f for f in found if isinstance(f, str))
    varying = tuple(f for f in found if not isinstance(f, str))
    if not varying:
        return fixed, None
    emitter = _Emitter()
    result = emitter.emit(varying)
    return fixed, emitter.function("refs", "v", "", result)


def _at(name: str) -> str:
    return "@" + name


def _plus(name: str) -> str:
    return "+" + name
