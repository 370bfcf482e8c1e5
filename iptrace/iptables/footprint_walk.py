"""The walk a footprint (iptrace.iptables.footprint) makes of one question's chains: which chains and rules its key
holds, in walk order (that module's docstring says why they are the ones that matter)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from iptrace.iptables.footprint_facts import KIND_DNAT, Facts
from iptrace.iptables.footprint_order import by_destination, positions


def walk(node: Any, q: Any, roots: Sequence[tuple[str, str]], skip: set[tuple[str, str]],
         ) -> tuple[list[str | Facts], list[int], list[int]] | None:
    """The chains and kept rules from `roots` (chains of `skip` are in the key already: a chain's head, a rule's
    fixed text or, when its tests' answers are in the key, its facts), their lines, and where the items are
    facts; None when a DNAT target widened the question after a rule was left out for want of it (walk again).
    `node` is the footprint's _Node, `q` its _Question. The walk goes on after a widening, so that one walk
    gathers every target it meets: a Service port's endpoints are then added in one walk, not one walk each (a
    10-endpoint port took more walks than `footprint` allows)."""
    items: list[str | Facts] = []
    again = False
    lines: list[int] = []
    seen: set[tuple[str, str]] = set(skip)
    todo = list(reversed(roots))
    can_match = q.can_match
    add_target = q.add_target
    chains_read = node._chains_read
    at: list[int] = []  # (where `items` holds Facts)
    # (the question's sources never change; its destinations and ports grow in place with DNAT targets)
    sources, dsts, ports = q.sources, q.dsts, q.ports
    add, add_line = items.append, lines.append
    while todo:
        key = todo.pop()
        if key in seen:
            continue
        seen.add(key)
        read = chains_read.get(key)
        if read is None:
            read = chains_read[key] = node.read_chain(key)
        head, rules, source = read
        add(head)
        if rules is None:  # (an indexed chain: the rules its index files under the question's keys)
            code, hosts, keyed_ports, read_rules = source  # (read_rules: node.rule's answers, read here)
            kept: list[tuple[Facts, int, tuple[str, str] | None]] = []
            for i in positions(code.index, hosts, keyed_ports, q):
                found = read_rules[i]
                if found is None:
                    found = read_rules[i] = node.read_rule(code, i)
                f, is_chain, target, line = found
                if not f.plain and not can_match(f):
                    continue
                if f.kind == KIND_DNAT and f.nat_to is not None and add_target(f.nat_to):
                    again = True
                kept.append((f, line, (code.table, target) if is_chain else None))
            if len(kept) > 1:
                kept = by_destination(kept)
            jumps: list[tuple[str, str]] = []
            for f, line, jump in kept:
                fixed = f.fixed
                if fixed is None:
                    at.append(len(items))
                    add(f)
                else:
                    add(fixed)
                add_line(line)
                if jump is not None:
                    jumps.append(jump)
            todo.extend(reversed(jumps))
            continue
        # (a short chain: kept rules go straight into the key, in chain order; this loop runs for most rules of
        # every walk, so can_match's commonest test, one -s of one network (ChainRules.plan), and add_target are
        # written out here)
        first: tuple[str, str] | None = None  # (the first jump: most chains have one at most)
        more: list[tuple[str, str]] | None = None
        for f, jump, i, ask, nat_to in rules.plan:
            if ask is not None:
                if ask is True:
                    if not can_match(f):
                        continue
                else:
                    net, mask = ask
                    for a in sources:
                        if a & mask == net:
                            break
                    else:
                        continue
            if nat_to is not None:
                addr, port = nat_to
                if addr is not None and addr not in dsts:
                    dsts.add(addr)
                    again = again or q.narrowed
                if port is not None and port not in ports:
                    ports.add(port)
                    again = again or q.narrowed
            fixed = f.fixed
            if fixed is None:
                at.append(len(items))
                add(f)
            else:
                add(fixed)
            add_line(source[i][3])
            if jump is not None:
                if first is None:
                    first = jump
                elif more is None:
                    more = [first, jump]
                else:
                    more.append(jump)
        if more is not None:
            todo.extend(reversed(more))
        elif first is not None:
            todo.append(first)
    return None if again else (items, lines, at)
