"""Shared JSON helpers: one way to print JSON (stable, `| jq`-friendly) and to spell addresses and shares."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

# Above this many items a top-level list prints one item per line: Python's indenting encoder is pure
# Python (5x slower than the compact C one), and a 5,000-service answer must stay fast.
LARGE_LIST = 500
# json.dumps(item, ensure_ascii=False), without building an encoder per item, and without the check for
# circular references (a renderer's freshly built data has none; the check costs a dict insert and delete
# per object, ~200,000 of them for a big dump).
_COMPACT = json.JSONEncoder(ensure_ascii=False, check_circular=False)


def dumps(data: Any) -> str:
    """JSON text as every `-o json` prints it: keys in the order the renderer built them, UTF-8, one trailing
    newline; indented, except that a large top-level list prints one compact item per line."""
    if isinstance(data, list) and len(data) > LARGE_LIST:
        # One join over every piece: concatenating the 20 MB body with its brackets would copy it again.
        return "".join(_list_pieces(data, len(data)))
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


# Items encoded per piece of dumps_pieces: pieces of ~0.5 MB (a Service port's object is ~4 KB).
_PIECE_ITEMS = 128


def dumps_pieces(items: Iterable[Any], count: int) -> Iterator[str]:
    """`dumps(list(items))` in pieces, for a list of `count` items made one at a time: a big list is never
    held whole, as objects or as text (a 5,000-Service `services -o json` would hold ~45 MB of dicts and
    ~45 MB of text at its peak). `count` must be the number of items."""
    if count > LARGE_LIST:
        yield from _list_pieces(items, count)
    else:
        yield dumps(list(items))


def _list_pieces(items: Iterable[Any], count: int) -> Iterator[str]:
    """The one-item-a-line form of a list of `count` (> 0) items, in pieces of a few items each."""
    encode = _COMPACT.encode
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


def host_port(ip: str, port: int | None) -> str:
    """`ip:port`, `[ip]:port` for IPv6; the bare ip when there is no port."""
    if port is None:
        return ip
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


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
