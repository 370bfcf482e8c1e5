"""An input file's bytes as text, whatever wrote it: a dump saved on Windows starts with a byte order mark — UTF-8's
from an editor, or UTF-16 from PowerShell 5's `>` (`kubectl debug node/… -- iptables-save > node1.txt`). Bytes
that are not valid in their encoding are replaced, never fatal (the readers then name the line). And for the
messages every layer writes: `counted`, a count with its noun in the right number, and `met_order`, a trace's
notes in the order the packet met them. Pure."""

from __future__ import annotations

import codecs
import re
from collections.abc import Collection, Iterable, Iterator
from itertools import pairwise

_UTF16 = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def decode_input(data: bytes, errors: str = "replace") -> str:
    """The text of an input file: UTF-8 (a leading byte order mark dropped), or UTF-16 when it starts with one.
    `errors="strict"`: raise UnicodeDecodeError for bytes not valid in that encoding (JSON documents)."""
    if data[:2] in _UTF16:
        return data.decode("utf-16", errors=errors)
    if data[:3] == codecs.BOM_UTF8:
        data = data[3:]
    return data.decode("utf-8", errors=errors)


# Compressed data no reader decompresses (gzip is read as what it holds): said as what it is, never parsed as text.
_COMPRESSED = ((b"\xfd7zXZ\x00", "xz-compressed data", "xz -d"),
               (b"\x28\xb5\x2f\xfd", "zstd-compressed data", "zstd -d"),
               (b"PK\x03\x04", "a zip archive", "unzip"))


def not_text(data: bytes) -> str | None:
    """What `data` (an input's first bytes, after any gzip is decompressed) is when it cannot be text: another
    compression (with the command that undoes it), or binary data (a NUL byte, which no text input holds outside
    UTF-16); None for text."""
    if data[:2] in _UTF16:
        return None
    found = next(((what, command) for magic, what, command in _COMPRESSED if data.startswith(magic)), None)
    if found is None and data.startswith(b"BZh") and data[3:4].isdigit():
        found = ("bzip2-compressed data", "bunzip2")
    if found is not None:
        return f"{found[0]}, which iptrace does not read (only text, and gzip): decompress it first (`{found[1]}`)"
    if b"\x00" in data[:8192]:
        return "binary data, not text"
    return None


def utf8_input(data: bytes) -> bytes:
    """The same as UTF-8 bytes, for readers that work on bytes (unchanged, without a copy, when it is UTF-8 without a
    byte order mark)."""
    if data[:2] in _UTF16:
        return data.decode("utf-16", errors="replace").encode("utf-8")
    return data[3:] if data[:3] == codecs.BOM_UTF8 else data


_FENCE_RE = re.compile(r"[ \t]*(?:```|~~~)")


def fenced_blocks(text: str) -> Iterator[tuple[str, int, int]]:
    """The dumps inside the Markdown code fences of a paste (from a GitHub issue or a chat: prose, a shell prompt
    and other blocks around it), each with every other line left blank so that an error still names the line of
    the file as it is, and the numbers of its first and last line. A prompt line (`$ sudo nft list ruleset`)
    opening a block is left out too: neither dataplane's text starts a line with `$`. An unclosed fence runs to
    the end (a paste cut short)."""
    lines = text.splitlines(True)
    fences = [i for i, line in enumerate(lines) if _FENCE_RE.match(line)]
    # a closing fence for each opening one, the end of the text for an unclosed last one (unused when closed)
    for opened, closed in zip(fences[::2], [*fences[1::2], len(lines)], strict=False):
        first = opened + 1
        if first < closed and lines[first].lstrip().startswith("$ "):
            first += 1
        yield "\n" * first + "".join(lines[first:closed]) + "\n" * (len(lines) - closed), first + 1, closed


def counted(n: int, one: str, many: str | None = None) -> str:
    """`1 error`, `2 errors` (`many`: an irregular plural, `1 node has` / `2 nodes have`)."""
    return f"{n} {one}" if n == 1 else f"{n} {many if many is not None else one + 's'}"


def listed(words: list[str], conjunction: str = "and") -> str:
    """`a`, `a and b`, `a, b and c`: a list in a sentence (`or`: `a, b or c`)."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + f" {conjunction} " + words[-1]


def met_order(sequences: Iterable[tuple[str, ...]], known: Collection[str]) -> list[str]:
    """The notes of a trace's outcomes (`sequences`: each outcome's assumptions, in the order its branch met them)
    not in `known`, each once, in the order the packet met them: a note comes after every note some branch met
    before it (the branches of a draw share the walk up to it); of the notes that may come next, the one listed
    first (by outcome) does. Met in two orders by two branches: as listed first."""
    distinct = list(dict.fromkeys(seq for seq in sequences if seq))
    if not distinct:
        return []
    if len(distinct) == 1:  # (the common case: every branch met the same, or one branch met any)
        return [a for a in distinct[0] if a not in known]
    order: dict[str, int] = {}
    for seq in distinct:
        for a in seq:
            if a not in order and a not in known:
                order[a] = len(order)
    after: dict[str, set[str]] = {a: set() for a in order}
    before = dict.fromkeys(order, 0)  # (how many notes not yet listed some branch met just before it)
    for seq in distinct:
        items = [a for a in seq if a in order]
        for x, y in pairwise(items):
            if y not in after[x]:
                after[x].add(y)
                before[y] += 1
    out: list[str] = []
    left = dict(order)
    while left:
        pick = next((a for a in left if before[a] <= 0), next(iter(left)))
        out.append(pick)
        del left[pick]
        for y in after[pick]:
            before[y] -= 1
    return out
