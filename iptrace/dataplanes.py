"""Which dataplane a dump belongs to, by its content, and loading it there. The one module that knows every
dataplane package; the CLI and collection use it, the analysis layers (kube, explain, render) never do."""

from __future__ import annotations

from typing import Any

from iptrace.dataplane import Dataplane
from iptrace.errors import InputError, ParseError
from iptrace.text import decode_input, fenced_blocks


def analysed_families(ruleset: Any) -> tuple[str, ...]:
    """The IP families a dump is analysed for: its own, or IPv4 for an nftables ruleset with no ip, ip6 or inet
    table (an empty `nft -j list ruleset`, bridge or netdev tables only): analysed, it says it has no kube-proxy
    rules rather than nothing at all."""
    return tuple(ruleset.families) or ("ipv4",)


def all_dataplanes() -> list[Dataplane]:
    from iptrace.iptables import DATAPLANE as IPTABLES

    found: list[Dataplane] = []
    try:
        from iptrace.nftables import DATAPLANE as NFTABLES  # type: ignore[attr-defined]
    except ImportError:  # a checkout without the nftables package
        NFTABLES = None
    if NFTABLES is not None:
        found.append(NFTABLES)
    found.append(IPTABLES)  # last: it also reads fragments and `iptables -S` listings
    return found


def by_name(name: str) -> Dataplane:
    for dataplane in all_dataplanes():
        if dataplane.name == name:
            return dataplane
    raise InputError(f"unknown dataplane {name!r}; expected iptables or nftables")


def detect(text: str) -> Dataplane:
    """The dataplane whose input `text` looks like (iptables when nothing else claims it: its loader gives the
    clear error for text that is neither). Text whose first line none reads (a line of prose before a paste) is
    the input of the dataplane that claims a later line: its reader names that first line in its own words, and
    --lenient reads past it."""
    return _claimed(text) or _json_value(text) or _claimed_later(text) or all_dataplanes()[-1]


def _json_value(text: str) -> Dataplane | None:
    """nftables (whose JSON reader says what it is) for a text that is one JSON value, no object or list."""
    try:
        from iptrace.nftables.sniff import json_value
    except ImportError:  # a checkout without the nftables package
        return None
    return by_name("nftables") if json_value(text) else None


_HEAD = 16384


def _claimed_later(text: str) -> Dataplane | None:
    for line in text[:_HEAD].splitlines():
        if line.strip():
            claimed = _claimed(line)
            if claimed is not None:
                return claimed
    return None


def _claimed(text: str) -> Dataplane | None:
    for dataplane in all_dataplanes():
        if dataplane.sniff(text):
            return dataplane
    return None


def _pasted(text: str) -> str:
    """The text to read: a paste from an issue (prose around Markdown code fences) is read as its first fenced
    block a dataplane claims when nothing claims the text as it is; anything else is read as it is."""
    blocks = _claimed_blocks(text)
    return blocks[0][0] if blocks else text


def _claimed_blocks(text: str) -> list[tuple[str, int, int]]:
    """The fenced blocks of a paste that a dataplane claims (text.fenced_blocks); none when the text itself is
    claimed."""
    if _claimed(text) is not None:
        return []
    return [block for block in fenced_blocks(text) if _claimed(block[0]) is not None]


def paste_note(text: str) -> str | None:
    """What load read of a paste, for a note: the lines of the code block read, and the next block that holds
    rules too (an issue showing two nodes' dumps, or iptables-save and nft's), which a person must save alone."""
    blocks = _claimed_blocks(text)
    if not blocks:
        return None
    _, first, last = blocks[0]
    said = f"read the rules in the pasted code block at lines {first}-{last}; the lines around it are not read"
    if len(blocks) == 2:
        said += f"; the block at lines {blocks[1][1]}-{blocks[1][2]} holds rules too: save it in a file of its " \
                "own to read it"
    elif len(blocks) > 2:
        said += f"; {len(blocks) - 1} other blocks hold rules too (the next at lines {blocks[1][1]}-" \
                f"{blocks[1][2]}): save one in a file of its own to read it"
    return said


def load(text: str | bytes, *, source: str = "<dump>", lenient: bool = False, table: str | None = None,
         memo: dict[str, Any] | None = None) -> tuple[Dataplane, Any]:
    """(dataplane, its ruleset) for a dump's text. `memo`: a dict a caller keeps across the loads of one
    cluster's dumps (audit's workers), where a dataplane keeps what helps it read the next one; the ruleset is the
    same with or without it."""
    if isinstance(text, bytes):
        text = decode_input(text)
    text = _pasted(text)
    dataplane = detect(text)
    try:
        return dataplane, _load(dataplane, text, source, lenient, table, memo)
    except ParseError as exc:
        raise _cut_short(exc, text, dataplane) from None


def _load(dataplane: Dataplane, text: str, source: str, lenient: bool, table: str | None,
          memo: dict[str, Any] | None) -> Any:
    if dataplane.name == "iptables":
        loader_memo = None
        if memo is not None:
            from iptrace.iptables.rule_shapes import LoadMemo

            loader_memo = memo.setdefault("iptables", LoadMemo())
        return dataplane.load(text, source=source, lenient=lenient, table=table,  # type: ignore[call-arg]
                              memo=loader_memo)
    if table is not None:
        raise InputError(f"{source}: --table applies to iptables listings, and this is {dataplane.name} input")
    return dataplane.load(text, source=source, lenient=lenient)


_CUT = " (the file ends in the middle of this line: it looks truncated)"


def _cut_short(exc: ParseError, text: str, dataplane: Dataplane) -> ParseError:
    """An error on the last line of a text that does not end with a newline: the file was most likely cut there
    (a copy that stopped, a paste from an issue thread), which the reader alone cannot tell. Not of nft's JSON:
    its reader knows when the document ends early, and a one-line document's every error is on its last line."""
    if (not text or text.endswith("\n") or "truncated" in exc.reason or exc.line != text.count("\n") + 1
            or (dataplane.name == "nftables" and (text.lstrip().startswith("{") or _json_value(text)))):
        return exc
    cut = type(exc)(exc.reason + _CUT, source=exc.source, line=exc.line, column=exc.column, text=exc.text)
    cut.skippable = exc.skippable
    return cut
