"""Blocks of lines read before, kept by a LoadMemo so that the loader takes a later dump's identical block whole,
without reading its lines (`audit` loads hundreds of one cluster's nodes: they write almost every chain alike, at
other line numbers): a run of `:NAME - [0:0]` declarations, or the `-A CHAIN spec` lines of a few chains in a row,
each chain's rules all in one run.

`plan` splits a text into the lines the loader reads one by one and the blocks it knows (each found by its table and
first chain, then compared with the text character for character), and notes the other runs of such lines; `remember`
keeps them as blocks. Why a block found in a text gives what its lines give: the loop reads a line `-A CHAIN spec`
on its fast path (no counters, the line's number, the shape of spec's key) when CHAIN is declared in the table and
no command has edited it, and it jumps to no chain not declared yet (the same for every line of a block: a block holds
no declaration); a block kept holds, for each of its lines, the chain and spec, and the shape its key gives as the
memo holds it for good (only rules with such shapes are kept; a spec read on a slow path is one that path gives back
alike). And the loop reads `:NAME - [0:0]` on its fast path when NAME has no blank, is not built in in its table and
not declared yet (each once in its block). loader._Loader.block replays a block where those hold, and reads its
lines one by one elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import accumulate, repeat
from itertools import chain as chain_items
from operator import itemgetter
from sys import intern
from typing import Any

from iptrace.iptables.contents import content_id
from iptrace.iptables.model import BUILTIN_CHAINS, Ruleset
from iptrace.iptables.restore import jump_target

# Stands for a known block in the loader's (line number, line) stream: no line of a text is this object.
MARK = "\0 a known block"
# Blocks a memo keeps before it starts again (a 5,000-Service node has ~56,000 chains; a fleet, a few thousand more).
LIMIT = 100_000
CHAINS = 32  # chains of rules in a block at most (a block a later dump writes otherwise is read line by line)
DECLARED = 1024  # declarations in a block at most
# Characters split into lines at a time: a 24 MB dump split whole is ~35 MB of line strings at once, beside the
# text and the rules made from them (the loader's peak).
_BLOCK = 1 << 20
_TEXT = itemgetter(1)
_SHAPE = itemgetter(4)
_DECLARED = " - [0:0]"


class Block:
    """Lines read before, in one table: the rules of `chains` (`counts` of them each; `specs` and their `shapes` in
    order, `parts` joined being the lines; `targets`: the chains they jump or go to, each once), or, with `counts` None,
    the declarations of `chains`."""

    __slots__ = ("chains", "counts", "ids", "parts", "shapes", "specs", "table", "targets")

    def __init__(self, table: str, chains: tuple[str, ...], counts: tuple[int, ...] | None = None,
                 specs: tuple[str, ...] = (), shapes: tuple[Any, ...] = (), targets: tuple[str, ...] = ()
                 ) -> None:
        self.table = table
        self.chains = chains
        self.counts = counts
        self.specs = specs
        self.shapes = shapes
        self.targets = targets
        self.parts: list[str] | None = None
        self.ids: list[bytes] | None = None  # (content_id's, when first asked for)
        if counts is not None:
            heads = [f"-A {name} " for name in chains]
            self.parts = [x for head, count, first in zip(heads, counts, accumulate(counts, initial=0), strict=False)
                          for spec in specs[first:first + count] for x in (head, spec, "\n")]

    @property
    def line_count(self) -> int:
        return len(self.chains) if self.counts is None else len(self.specs)

    def text(self) -> str:
        if self.parts is not None:
            return "".join(self.parts)
        return ":" + f"{_DECLARED}\n:".join(self.chains) + f"{_DECLARED}\n"

    def rule_chains(self) -> Iterator[str]:
        """The chain of each rule, in order."""
        return chain_items.from_iterable(map(repeat, self.chains, self.counts or ()))

    def rule_slices(self) -> Iterator[slice]:
        """Where each chain's rules are among `specs`."""
        counts = self.counts or ()
        return map(slice, accumulate(counts, initial=0), accumulate(counts))

    def content_ids(self) -> list[bytes]:
        """The content id (iptrace.iptables.contents) of each of its chains' rules."""
        ids = self.ids
        if ids is None:
            ids = self.ids = [content_id(self.specs[s]) for s in self.rule_slices()]
        return ids


# Blocks by their table and first chain (":" and the chain for declarations), the latest first: KEPT of them, so that
# dumps that write a chain two ways (an IPv4 and an IPv6 dump of one node, read with one memo) find both.
Blocks = dict[tuple[str, str], tuple[Block, ...]]
KEPT = 2


def _put(blocks: Blocks, key: tuple[str, str], block: Block) -> None:
    old = [b for b in blocks.get(key, ()) if b.chains != block.chains or b.specs != block.specs]
    blocks[key] = (block, *old[:KEPT - 1])


# A run read line by line: (table, kind: "-" rules or ":" declarations, entries: [chain, its rules' count, where its
# first one starts] a chain of rules, [chain] a declaration)
Run = tuple[str, str, list[list[Any]]]


def plan(text: str, blocks: Blocks) -> tuple[Iterator[tuple[int, str]], list[Block], list[Run]]:
    """The loader's stream of (line number, line) over `text`, with (line number, MARK) where one of `blocks` stands
    (the blocks, in order, in the list returned), and the runs read line by line (for `remember`). The table a line is
    in is guessed here (from the `*table` lines); the loader checks it."""
    pieces: list[Iterable[tuple[int, str]]] = []
    known: list[Block] = []
    runs: list[Run] = []
    find, startswith, size = text.find, text.startswith, len(text)
    pos, line = 0, 1
    region, region_line = 0, 1  # (where the lines read one by one start)
    table: str | None = None
    run: Run | None = None
    while pos < size:
        eol = find("\n", pos)
        if eol < 0:
            break
        kind = text[pos]
        name: str | None = None
        if table is not None and kind == "-" and startswith("-A ", pos):
            sp = find(" ", pos + 3, eol)
            if sp > 0:
                name = text[pos + 3:sp]
        elif table is not None and kind == ":" and startswith(_DECLARED, eol - 8):
            name = text[pos + 1:eol - 8]
        if name is None:
            if run is not None:
                runs.append(run)
                run = None
            if kind == "*":
                table = text[pos + 1:eol].strip()
            elif startswith("COMMIT", pos):
                table = None
            pos, line = eol + 1, line + 1
            continue
        if run is not None and run[1] == "-" == kind and run[2][-1][0] == name:
            run[2][-1][1] += 1  # (the chain's next rule)
            pos, line = eol + 1, line + 1
            continue
        # (a chain's first rule, or a declaration: where a block may start)
        for block in blocks.get((table, name if kind == "-" else ":" + name), ()):  # type: ignore[arg-type]
            joined = block.text()
            end = pos + len(joined)
            # (a block followed by more of its last chain's rules is not those rules)
            if startswith(joined, pos) and (kind == ":" or not startswith(f"-A {block.chains[-1]} ", end)):
                break
        else:
            block = None
        if block is not None:
            if run is not None:
                runs.append(run)
                run = None
            if region < pos:
                pieces.append(enumerate(lines(text, region, pos - 1), region_line))
            pieces.append(((line, MARK),))
            known.append(block)
            pos, line = end, line + block.line_count
            region, region_line = pos, line
            continue
        entry = [name, 1, pos] if kind == "-" else [name]
        if run is not None and run[1] == kind:
            run[2].append(entry)
        else:
            if run is not None:
                runs.append(run)
            run = (table, kind, [entry])  # type: ignore[assignment]
        pos, line = eol + 1, line + 1
    if run is not None and pos >= size:
        runs.append(run)  # (not when a last line has no newline)
    pieces.append(enumerate(lines(text, region, size), region_line))
    return chain_items.from_iterable(pieces), known, runs


def remember(blocks: Blocks, runs: list[Run], text: str, ruleset: Ruleset,
             shapes: Iterable[Any]) -> None:
    """Keep as blocks the `runs` of this load (see the module's docstring); `shapes`: the memo's."""
    if not runs:
        return
    # (a first dump's chains in blocks of a few, a later one's one by one: a block of a later dump is one its earlier
    # ones wrote otherwise, and so may the next dumps, its neighbours not)
    most = CHAINS if not blocks else 1
    if len(blocks) > LIMIT:
        blocks.clear()
    memo_shapes = set(shapes)
    for table, kind, entries in runs:
        t = ruleset.table(table)
        if t is None:
            continue
        if kind == ":":
            _declarations(blocks, table, entries)
            continue
        group: list[tuple[str, tuple[Any, ...]]] = []
        for name, count, start in entries:
            chain = t.chain(name)
            # (its rules: those of its run here when they read as its lines, so that the block is found again)
            if chain is not None and len(chain.rules) == count and memo_shapes.issuperset(map(_SHAPE, chain.rules)):
                if text.startswith("".join([f"-A {chain.name} {spec}\n" for spec in map(_TEXT, chain.rules)]), start):
                    if len(group) == most:
                        _keep(blocks, table, group)
                        group = []
                    group.append((chain.name, chain.rules))
                    continue
            _keep(blocks, table, group)
            group = []
        _keep(blocks, table, group)


def _keep(blocks: Blocks, table: str, group: list[tuple[str, tuple[Any, ...]]]) -> None:
    if not group:
        return
    rules = [r for _name, chain_rules in group for r in chain_rules]
    _put(blocks, (table, group[0][0]), Block(table, tuple([name for name, _ in group]),
                                             tuple([len(chain_rules) for _, chain_rules in group]),
                                             tuple(map(_TEXT, rules)), tuple(map(_SHAPE, rules)),
                                             _targets(rules)))


def _targets(rules: list[Any]) -> tuple[str, ...]:
    """The chains `rules` jump or go to, each once: a tuple (a frozenset of a block's ~50 names was ~2.7 KB, 7 MB a
    worker's memo) of the interned names (those the loader declared: a name sliced from a rule's text was a string
    of its own per rule, another 5 MB)."""
    return tuple(dict.fromkeys(map(intern, filter(None, map(jump_target, rules)))))


def _declarations(blocks: Blocks, table: str, entries: list[list[Any]]) -> None:
    """Blocks of the declarations of `entries` that the loop's fast path reads as a block's are replayed: of a name
    with no blank, not built in in the table, each once in its block."""
    builtin = BUILTIN_CHAINS.get(table, ())
    group: dict[str, None] = {}
    for (name,) in entries:
        ok = name.split() == [name] and name not in builtin
        if not ok or name in group or len(group) == DECLARED:
            _keep_declared(blocks, table, group)
            group = {}
        if ok:
            group[intern(name)] = None  # (interned, as the loader's declared names)
    _keep_declared(blocks, table, group)


def _keep_declared(blocks: Blocks, table: str, group: dict[str, None]) -> None:
    if group:
        names = tuple(group)
        _put(blocks, (table, ":" + names[0]), Block(table, names))


def lines(text: str, start: int, end: int) -> Iterator[str]:
    """`text[start:end].split("\n")`, made a block at a time (each block ends at a newline; their lines chained)."""
    return chain_items.from_iterable(_split(text, start, end))


def _split(text: str, start: int, end: int) -> Iterator[list[str]]:
    while start + _BLOCK < end:
        cut = text.find("\n", start + _BLOCK, end)
        if cut < 0:
            break
        yield text[start:cut].split("\n")
        start = cut + 1
    yield text[start:end].split("\n")
