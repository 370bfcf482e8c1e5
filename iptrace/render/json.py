"""Shared JSON helpers: one way to print JSON (stable, `| jq`-friendly) and to spell addresses and shares."""

from __future__ import annotations

import json
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
        parts = ["[\n  "]
        for item in data:
            parts.append(_COMPACT.encode(item))
            parts.append(",\n  ")
        parts[-1] = "\n]\n"
        return "".join(parts)
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


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
