"""A footprint's looser key (iptrace.dataplane.Footprint.loose): the key without how the rules of the chains every
question meets before kube-proxy's dispatch (the hooks', the CNI's, the host firewall's: footprint._Context)
answer its -s/-d tests, and what a reuse by it checks instead — the answers the traces may have read.

Why that is enough. Two nodes whose loose keys of a question are equal have the same rules where the key says,
answering every test alike, except those chains' -s/-d tests, whose answers (a bit per test and address of the
question) may differ: a flannel rule naming the node's own pod CIDR answers the endpoints on that node otherwise
than the same rule on the next node. Node B's walk of the question is node A's as long as every test it meets
answers alike; the first test that would not is one of those -s/-d tests, met with a source and destination A's
walk met it with (the walks are the same up to there). So when B's rules answer alike every (test, address) A's
traces may have read, the walks are the same throughout: the same traces, as with equal keys.

What A's traces may have read, from their branches (walk.py's `Tracer._watch`: each trace's destination and, for
each of its branches, its source, final destination, path of matched rules and chains entered): a branch reads
such a chain's rules in order from the first (these chains have no index) while it stays in it, with its source
(no rule rewrites it) and its destination — the question's before a DNAT, its final one after (a REDIRECT or
NETMAP the question can meet gives no footprint). A chain the branch entered once, where its path holds a rule of
that chain that ends its walk there (RETURN, a verdict, a NAT, a goto), was read up to that rule; any other chain
it entered, to its end.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Sequence
from typing import Any

from iptrace.iptables.compile import (
    ACCEPT,
    ACCEPT_ASSUMED,
    DNAT,
    DROP,
    GOTO,
    MASQUERADE,
    NETMAP,
    REDIRECT,
    REJECT,
    RETURN,
    SNAT,
)

# Actions after which a branch leaves the chain of the rule that matched (chainwalk.ChainWalker._apply).
_ENDS = frozenset({GOTO, RETURN, ACCEPT, DROP, REJECT, DNAT, SNAT, MASQUERADE, REDIRECT, NETMAP, ACCEPT_ASSUMED})

ChainKey = tuple[str, str]
# (a chain, its rules' position) → what that rule's -s/-d tests are: (the spec's number in the context, a source test)
Read = tuple[tuple[int, bool], ...]


class ContextReads:
    """Where the context's -s/-d tests are: per chain (those with any), each rule's tests by position; each
    rule's line → (its chain, position). Built once per node's context."""

    def __init__(self, rules: Sequence[tuple[ChainKey, int, Read]]) -> None:
        self.chains: dict[ChainKey, list[Read]] = {}
        every: dict[ChainKey, list[tuple[int, Read]]] = {}
        for key, line, reads in rules:
            every.setdefault(key, []).append((line, reads))
        self.at: dict[int, tuple[ChainKey, int]] = {}
        self.sound = True  # every rule of those chains has a line of its own (a path's rule is found by it)
        for key, chain in every.items():
            if not any(reads for _line, reads in chain):
                continue
            self.chains[key] = [reads for _line, reads in chain]
            for i, (line, _reads) in enumerate(chain):
                if line <= 0 or line in self.at:
                    self.sound = False
                self.at[line] = (key, i)
        # (a chain's tests up to each position: what a branch that read that far read)
        self.upto: dict[ChainKey, list[tuple[frozenset[int], frozenset[int]]]] = {}
        for key, chain in self.chains.items():
            src: set[int] = set()
            dst: set[int] = set()
            upto = []
            for reads in chain:
                for k, is_src in reads:
                    (src if is_src else dst).add(k)
                upto.append((frozenset(src), frozenset(dst)))
            self.upto[key] = upto


class Loose:
    """One footprint's looser side: `watch` (on the node the view is built on) and `agrees` (on a node that
    would reuse it). `bits` are this node's answers of the context's specs (footprint._Question.bits), `sources`
    and `destinations` the question's addresses in the key's order."""

    __slots__ = ("bits", "destinations", "reads", "sources", "tracer")

    def __init__(self, tracer: Any, reads: ContextReads, bits: list[str], sources: Sequence[int],
                 destinations: Sequence[int]) -> None:
        self.tracer = tracer
        self.reads = reads
        self.bits = bits
        self.sources = sources
        self.destinations = destinations

    def watch(self) -> Callable[[], bytes | None]:
        tracer = self.tracer
        watched: list[tuple[int, list[tuple[int, int, Any, Any]]]] = []
        tracer._watch = watched

        def done() -> bytes | None:
            tracer._watch = None
            return self.decided(watched)

        return done

    def decided(self, watched: list[tuple[int, list[tuple[int, int, Any, Any]]]]) -> bytes | None:
        """Every context -s/-d test the watched traces may have read, with this node's answer: (spec number, address
        position, answer) as `_code` numbers, sorted, in an array's bytes (a cache keeps one per view); None when a
        branch's address is not the question's (it cannot tell)."""
        reads = self.reads
        if not reads.sound:
            return None
        chains, at, upto = reads.chains, reads.at, reads.upto
        src_at = {a: i for i, a in enumerate(self.sources)}
        dst_at = {a: i for i, a in enumerate(self.destinations)}
        met: set[tuple[ChainKey, int, int | None, int | None, int | None]] = set()
        for dst, branches in watched:
            for src, final, path, entered in branches:
                counts: dict[ChainKey, int] = {}
                cell = entered
                while cell is not None:
                    key = cell[0]
                    if key in chains:
                        counts[key] = counts.get(key, 0) + 1
                    cell = cell[1]
                if not counts:
                    continue
                ends: dict[ChainKey, int] = {}
                cell = path  # (a chain entered once holds one such rule at most: the branch left it there)
                while cell is not None:
                    c = cell[0]
                    if c.action in _ENDS:
                        rule = c.rule
                        where = at.get(rule.line)
                        if where is not None and where[0] == (c.table, rule.chain):
                            ends[where[0]] = where[1]
                    cell = cell[1]
                s, d0, d1 = src_at.get(src), dst_at.get(dst), dst_at.get(final)
                if s is None or d0 is None or d1 is None:
                    return None
                for key, n in counts.items():
                    end = ends.get(key) if n == 1 else None
                    met.add((key, len(chains[key]) - 1 if end is None else end, s, d0, d1))
        bits = self.bits
        out: set[int] = set()
        for key, end, s, d0, d1 in met:
            src_specs, dst_specs = upto[key][end]
            for k in src_specs:
                out.add(_code(k, s, bits[k][s]))
            for k in dst_specs:
                out.add(_code(k, d0, bits[k][d0]))
                out.add(_code(k, d1, bits[k][d1]))
        return array("q", sorted(out)).tobytes()

    def agrees(self, decided: Any) -> bool:
        """Whether this node's rules answer every one of `decided` (another node's `decided`) alike."""
        bits = self.bits
        codes = array("q")
        try:
            codes.frombytes(decided)
            return all(bits[code >> 32][(code >> 1) & _POSITION] == "01"[code & 1] for code in codes)
        except (IndexError, TypeError, ValueError):
            return False


_POSITION = (1 << 31) - 1


def _code(spec: int, position: int, answer: str) -> int:
    """(spec number, address position, answer "0"/"1") as one number."""
    return spec << 32 | position << 1 | (answer == "1")
