"""A rule spec's *shape*: which of its tokens are options, values, modules and the target, read once per layout
with the option table (loader.py keys rules by it), and what loading one dump learnt of shapes that loading the
next dump of the same cluster can use (LoadMemo)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from iptrace.errors import ParseError
from iptrace.iptables.model import RuleShape
from iptrace.iptables.options import (
    BASIC_ALIASES,
    BASIC_ARITY,
    IMPLICIT_PROTOCOL_ARITY,
    JUMP_WORDS,
    MATCH_WORDS,
    TARGET_ARITY,
    match_arity,
)


class LoadMemo:
    """What loading one dump learnt that loading the next dump of the same cluster can use (`audit` loads
    hundreds whose rules are almost all alike): the shape of every shape key that lark read (`shapes`). A shape
    depends on its key alone, and a key on the spec's text alone, so a remembered one is the one this load would
    find; only shapes read without a warning are kept (a load says each of its own warnings). Skips lark for shapes
    seen before; and the chains' runs of lines read before (`blocks`: iptrace.iptables.blocks), whose rules a load
    makes without reading their lines (most of a load's time)."""

    __slots__ = ("blocks", "shapes")

    def __init__(self) -> None:
        self.shapes: dict[str, RuleShape] = {}
        self.blocks: dict[tuple[str, str], tuple[Any, ...]] = {}  # (table, first chain) → blocks.Block (blocks.Blocks)


def build_shape(args: list[tuple[str, str, int]], line: str, line_no: int, source: str,
                warn_once: Callable[[str, int, str], None]) -> RuleShape:
    """Read one rule's tokens (kind, word, column) with the option table: which are options, values, modules, the
    target. `warn_once(key, line, message)` is told of options it keeps verbatim."""
    slots: list[tuple] = []
    first: dict[str, int] = {}
    unknown: list[str] = []
    n = len(args)
    module: str | None = None
    protocol_index = -1
    in_target = False
    target_index = -1
    goto = False
    negate = False
    i = 0

    def values(start: int, count: int, opt: str, col: int) -> tuple[bool, tuple[int, ...], int]:
        old_negation = start < n and args[start][0] == "NEG" and count > 0
        if old_negation:
            start += 1
        end = start + count
        if end > n:
            raise ParseError(f"option {opt} expects {count} value{'s' if count > 1 else ''}, found end of "
                             "line", source=source, line=line_no, column=col, text=line)
        return old_negation, tuple(range(start, end)), end

    while i < n:
        kind, word, col = args[i]
        if kind == "NEG":
            if negate:
                raise ParseError('"!" twice in a row; expected an option after "!"', source=source,
                                 line=line_no, column=col, text=line)
            negate = True
            i += 1
            continue
        if word in MATCH_WORDS:
            if i + 1 >= n:
                raise ParseError(f"{word} expects a module name, found end of line", source=source,
                                 line=line_no, column=col, text=line)
            module = args[i + 1][1]
            slots.append(("match", None, i + 1, False))
            in_target = False
            i += 2
            continue
        if word in JUMP_WORDS:
            if i + 1 >= n:
                raise ParseError(f"{word} expects a target or chain name, found end of line",
                                 source=source, line=line_no, column=col, text=line)
            goto = JUMP_WORDS[word]
            target_index = i + 1
            slots.append(("target", i + 1, goto))
            in_target = True
            i += 2
            continue
        basic = BASIC_ALIASES.get(word, word)
        if not in_target and basic in BASIC_ARITY:
            old_neg, idx, i = values(i + 1, BASIC_ARITY[basic], word, col)
            slots.append(("match", "", -1, False))
            first.setdefault(basic, len(slots))
            slots.append(("opt", basic, negate or old_neg, idx))
            if basic == "-p":
                protocol_index = idx[0]
            negate = False
            continue
        if in_target:
            arity = TARGET_ARITY.get(word)
        else:
            arity = match_arity(module, word)
            if arity is None and module is None and protocol_index >= 0 and word in IMPLICIT_PROTOCOL_ARITY:
                # `-p tcp --dport 80` without -m: the protocol's own match, loaded implicitly.
                slots.append(("match", None, protocol_index, True))
                module = "\0implicit"
                arity = IMPLICIT_PROTOCOL_ARITY[word]
            elif arity is None and module == "\0implicit":
                arity = IMPLICIT_PROTOCOL_ARITY.get(word)
        if arity is None:
            if not word.startswith("-"):
                if not slots or slots[-1][0] != "opt":
                    raise ParseError(f"unexpected {word!r}; expected an option such as -m, -j, -s or -d",
                                     source=source, line=line_no, column=col, text=line)
                # A value the option table did not expect: keep it with the option before it.
                prev = slots[-1]
                slots[-1] = (prev[0], prev[1], prev[2], (*prev[3], i))
                warn_once(f"{prev[1]}+", line_no, f"option {prev[1]} has more values than iptrace "
                               f"knows of ({word!r}); kept verbatim")
                i += 1
                continue
            # Unknown option: keep it with every value up to the next option word.
            j = i + 1
            while j < n and args[j][0] != "NEG" and not args[j][1].startswith("-"):
                j += 1
            owner = "target" if in_target else (f"-m {module}" if module else "the rule")
            unknown.append(word)
            warn_once(word, line_no, f"unknown option {word} of {owner}; kept verbatim")
            if not in_target:
                first.setdefault(word, len(slots))
            slots.append(("opt", word, negate, tuple(range(i + 1, j))))
            negate = False
            i = j
            continue
        old_neg, idx, i = values(i + 1, arity, word, col)
        if not in_target:
            first.setdefault(word, len(slots))
        slots.append(("opt", word, negate or old_neg, idx))
        negate = False
    if negate:
        raise ParseError('"!" at the end of the rule; expected an option after it', source=source,
                         line=line_no, column=len(line), text=line)
    return RuleShape(tuple(slots), target_index, goto, n, tuple(unknown), first)
