"""Shared JSON helpers: one way to print JSON (stable, `| jq`-friendly) and to spell addresses and shares."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from iptrace.dataplane import Step

# Above this many items a top-level list prints one item per line: Python's indenting encoder is pure
# Python (5x slower than the compact C one), and a 5,000-service answer must stay fast.
LARGE_LIST = 500
# json.dumps(item, ensure_ascii=False), without building an encoder per item, and without the check for
# circular references (a renderer's freshly built data has none; the check costs a dict insert and delete
# per object, ~200,000 of them for a big dump).
_COMPACT = json.JSONEncoder(ensure_ascii=False, check_circular=False)


def _compact_encoder() -> Callable[[Any], str]:
    """`_COMPACT.encode`, with the C encoder it makes for each call made once: ~2.5 of the ~4 µs that
    encoding a rule's object costs (a batch of explain answers encodes ~15 objects an answer). The same
    C encoder with the same settings, so the same text (tests/test_json_output.py compares them)."""
    from json import encoder

    if encoder.c_make_encoder is None:  # (no C accelerator: the pure-Python encoder as it is)
        return _COMPACT.encode
    made = encoder.c_make_encoder(None, _COMPACT.default, encoder.encode_basestring, None, _COMPACT.key_separator,
                                  _COMPACT.item_separator, _COMPACT.sort_keys, _COMPACT.skipkeys,
                                  _COMPACT.allow_nan)
    encode_string = encoder.encode_basestring

    def encode(item: Any) -> str:
        if isinstance(item, str):  # (as JSONEncoder.encode does)
            return encode_string(item)  # type: ignore[no-any-return]
        return "".join(made(item, 0))

    return encode


compact = _compact_encoder()


def dumps(data: Any, paths: PathTexts | None = None) -> str:
    """JSON text as every `-o json` prints it: keys in the order the renderer built them, UTF-8, one trailing
    newline; indented, except that a large top-level list prints one compact item per line. `paths`: the
    PathTexts that the items' paths were given to (a large list only)."""
    # One join over every piece: concatenating the 20 MB body with its brackets would copy it again.
    return "".join(dumps_text_pieces(data, paths))


def dumps_text_pieces(data: Any, paths: PathTexts | None = None) -> Iterator[str]:
    """`dumps(data, paths)` in pieces, a few items of a large list each: a printer writes them as they come,
    and never holds the whole text (~50 MB for a thousand explain answers)."""
    if isinstance(data, list) and len(data) > LARGE_LIST:
        return _list_pieces(data, len(data), compact if paths is None else paths.encode)
    if paths is not None:
        raise ValueError("paths are printed compactly, in a large list only")
    return iter((json.dumps(data, indent=2, ensure_ascii=False) + "\n",))


# Items encoded per piece of dumps_pieces: pieces of ~0.5 MB (a Service port's object is ~4 KB).
_PIECE_ITEMS = 128


def dumps_pieces(items: Iterable[Any], count: int) -> Iterator[str]:
    """`dumps(list(items))` in pieces, for a list of `count` items made one at a time: a big list is never
    held whole, as objects or as text (a 5,000-Service `services -o json` would hold ~45 MB of dicts and
    ~45 MB of text at its peak). `count` must be the number of items."""
    if count > LARGE_LIST:
        yield from _list_pieces(items, count, compact)
    else:
        yield dumps(list(items))


def encoded_pieces(texts: Iterable[str], count: int) -> Iterator[str]:
    """`dumps_pieces(items, count)` for a large list (`count` > LARGE_LIST) of items given as their compact JSON
    texts (each `_COMPACT.encode(item)`, written by the renderer)."""
    if count <= LARGE_LIST:
        raise ValueError("a list of at most LARGE_LIST items is printed indented, from its items")
    return _list_pieces(texts, count, str)


def _list_pieces(items: Iterable[Any], count: int, encode: Callable[[Any], str]) -> Iterator[str]:
    """The one-item-a-line form of a list of `count` (> 0) items, each printed by `encode`, in pieces of a few
    items each."""
    parts = ["[\n  "]
    left = count
    for item in items:
        left -= 1
        if left < 0:
            raise ValueError(f"{count} items announced, more given")
        parts.append(encode(item))
        parts.append(",\n  " if left else "\n]\n")
        if len(parts) >= 2 * _PIECE_ITEMS:
            yield "".join(parts)
            parts = []
    if left:
        raise ValueError(f"{count} items announced, {count - left} given")
    if parts:
        yield "".join(parts)


class CompactItems:
    """A list inside a document that `document_pieces` prints one compact item a line, each item made and printed
    in turn (`items` may be a generator): an audit's `merge` key holds every node's digest, ~0.5 MB of JSON a
    node of a 5,000-Service cluster, which the indenting encoder would print an integer a line."""

    __slots__ = ("items",)

    def __init__(self, items: Iterable[Any]) -> None:
        self.items = items


def document_pieces(data: Any) -> Iterator[str]:
    """`dumps(data)` in pieces, for a document that may hold CompactItems (in its objects, at any depth): those
    print one compact item a line, everything else exactly as `dumps` indents it. Neither the document's text
    nor a CompactItems' items are held whole."""
    yield from _indented_pieces(data, "")
    yield "\n"


def _indented_pieces(data: Any, indent: str) -> Iterator[str]:
    if isinstance(data, CompactItems):
        parts = ["["]
        separator = "\n" + indent + "  "
        empty = True
        for item in data.items:
            parts.append(separator + compact(item))
            separator = ",\n" + indent + "  "
            empty = False
            if len(parts) >= _PIECE_ITEMS:
                yield "".join(parts)
                parts = []
        parts.append("]" if empty else "\n" + indent + "]")
        yield "".join(parts)
    elif isinstance(data, dict) and data and _holds_compact(data):
        inner = indent + "  "
        for i, (key, value) in enumerate(data.items()):
            yield ("{\n" if i == 0 else ",\n") + inner + json.dumps(key, ensure_ascii=False) + ": "
            yield from _indented_pieces(value, inner)
        yield "\n" + indent + "}"
    else:
        # (JSON text holds no raw newline but the indenter's own: indenting it nests it)
        text = json.dumps(data, indent=2, ensure_ascii=False)
        yield text.replace("\n", "\n" + indent) if indent else text


def _holds_compact(data: dict[Any, Any]) -> bool:
    return any(isinstance(v, CompactItems) or (isinstance(v, dict) and _holds_compact(v)) for v in data.values())


class PathTexts:
    """The paths of a batch of trace or explain answers, each rule's JSON encoded once.

    ~90% of such an answer's bytes are its paths, and they repeat a few rules: every outcome of a Service walks
    the same chains, from every source, and again for the next question about it. A document is built with
    a placeholder string for each path (Outcome.to_json(paths=this)); `encode` prints it with the C encoder
    and puts each path's text, joined from its rules' cached texts, in its placeholder's place: the same
    bytes as the document with its path lists (~0.8 -> ~0.6 ms an explain answer about a Service of 10
    endpoints, building and printing the document). The placeholder holds a random nonce (and a NUL, which
    no dump's text has), so no string of a dump can pass for one."""

    def __init__(self) -> None:
        import secrets  # (here: every `-o json` imports this module, few print paths)

        nonce = secrets.token_hex(8)
        self._nonce = f"\x00path-{nonce}-"
        self._found = re.compile(r'"\\u0000path-' + nonce + r'-(\d+)\\u0000"')  # (as printed: NUL is \u0000)
        self._by_id: dict[int, str] = {}  # id(step) -> its text
        self._kept: list[Step] = []  # the steps of _by_id, alive: an id is not reused while it is a key
        # (table, chain, line, rule, handle) -> text: what Step.to_json reads. An nft trace makes new steps for
        # the same rules; an iptables one gives each rule one Step, found by its id.
        self._by_value: dict[tuple[str, str, int, str, int | None], str] = {}
        self._texts: dict[int, str] = {}  # placeholder number -> text, until printed
        self._count = 0

    def __call__(self, steps: tuple[Step, ...]) -> str:
        number = self._count
        self._count += 1
        try:  # (the common case: every rule met before; a new one's None fails the join)
            self._texts[number] = "[" + ", ".join(map(self._by_id.get, map(id, steps))) + "]"  # type: ignore[arg-type]
        except TypeError:
            self._texts[number] = "[" + ", ".join(self._new(steps)) + "]"
        return f"{self._nonce}{number}\x00"

    def _new(self, steps: tuple[Step, ...]) -> list[str]:
        """The texts of `steps`, some of them met for the first time: encoded (once a rule)."""
        if len(self._by_value) >= _STEP_TEXTS:  # (keep memory bounded)
            self._by_value.clear()
            self._by_id.clear()
            self._kept.clear()
        texts = []
        for step in steps:
            text = self._by_id.get(id(step))
            if text is None:
                key = (step.table, step.chain, step.line, step.rule, step.handle)
                text = self._by_value.get(key)
                if text is None:
                    text = self._by_value[key] = compact(step.to_json())
                    self._by_id[id(step)] = text
                    self._kept.append(step)
            texts.append(text)
        return texts

    def encode(self, item: Any) -> str:
        """`item` as the compact encoder prints it, its placeholders replaced (and forgotten: a batch's paths
        are held until their answer is printed, no longer)."""
        text = compact(item)
        if self._texts:
            texts = self._texts
            text = self._found.sub(lambda m: texts.pop(int(m[1])), text)
        return text


_STEP_TEXTS = 100_000


# Decimals a probability keeps in JSON (renderers with many shares round inline with it).
SHARE_DIGITS = 12


def share(probability: float) -> float:
    """A probability as JSON prints it: exact to 12 decimals, so that golden files do not churn on float noise."""
    return round(probability, SHARE_DIGITS)


def percent(probability: float) -> str:
    """A probability for people: "50%", "33.33%", "0.01%"."""
    value = probability * 100.0
    if abs(value - round(value)) < 1e-6:
        return f"{round(value)}%"
    return f"{value:.2f}%"
