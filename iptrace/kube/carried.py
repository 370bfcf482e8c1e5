"""Service port digests carried from node to node in one audit process, by the dataplane's content keys
(`Dataplane.port_keys`, optional: iptrace.iptables.carry): a port whose key an earlier node gave is not traced;
its digest is that node's, with this node's lines, found where the earlier node's were (own chains by position,
other rules by their text). Equal keys give equal digests but for the node's own values; a digest that names
one (an address of the node, its pod CIDR) is not kept, nor one whose lines this node cannot find, and a carried
port whose first lines (the digest's `head` texts) read otherwise here is made again. A node with addresses
several Service ports claim, or two ports of one label, takes the whole path (node_result), as does every
dataplane without keys. The ports a node traces take the views of an earlier node's ports of their shape where
the two nodes' contexts are the same (iptrace.kube.shapes.ShapeMemo.share). Dataplane-free and pure (a per-process
cache)."""

from __future__ import annotations

from array import array
from collections.abc import Hashable, Sequence
from itertools import chain as chained
from operator import itemgetter
from typing import Any

from iptrace.kube.compare import view_service_label
from iptrace.kube.digest import HEAD, FamilyDigest, PortDigest, family_warnings, port_digest, traced_node_address

# Digests kept per process: a node has a few thousand Service ports; a fleet's nodes share most of them.
CACHE_SIZE = 30_000
# Lines of traced ports read one at a time up to this many (a pass over a 5,000-Service node's rules costs ~60 ms)
LINES_ONE_BY_ONE = 5_000
# Ports traced on a node whose views are made, digested and let go together (a first node traces all of its ports)
CHUNK = 500

# [a digest; the positions of its port's lines (NodeKeys.positions); where each endpoint's line is among the rules
# at those positions, -1 for an endpoint without a line; its first rules' (chain, text, counters) where they read as
# the digest's `head`, else None; the number of the family digest that used it last]: a list, so that a use is noted
# in place (an ordered dict's move_to_end hashes the key again: ~6 µs a port)
Kept = list[Any]
_USED = 4
_LINE = itemgetter(3)  # (a rule's line)
_DIGEST, _LINES = itemgetter(0), itemgetter(1)  # (of a port's digest and its lines)
_SAID = itemgetter(0, 1, 2)  # (what a rule's printed text is made of: its chain, text and counters)


class Carried:
    """Port digests by content key, shared by every node one audit process analyses."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self._kept: dict[Hashable, Kept] = {}
        # (the hashes of the keys of ports traced on a node after the cache's first: such a port's digest is kept only
        # when its key comes again, see _keep)
        self._missed: set[int] = set()
        self._uses = 0  # family digests made (a kept digest's last use: the least recently used go first)
        self.carried = 0  # ports whose digest came from an earlier node
        # family → (NodeKeys.summary of the last node whose ports were keyed, by port: its record (NodeKeys.unchanged)
        # and the digest it took, or None)
        self._last: dict[str, tuple[Any, dict[str, Any]]] = {}
        self.made = 0  # ports traced

    def family_digest(self, analysis: Any, intern: dict[Any, Any] | None) -> FamilyDigest | None:
        """The FamilyDigest of one family of a node without cluster data or pictures (as digest.node_result makes
        it), None when it takes the whole path."""
        port_keys = getattr(analysis.dataplane, "port_keys", None)
        layout = analysis.layout
        if port_keys is None or analysis.views.claims:
            return None
        clients = analysis.views.clients
        # (the addresses questions take for the node's own and its clients, written by role in every key)
        others = (clients.node_address, clients.pod, clients.node, clients.external)
        keys = port_keys(analysis.ruleset, layout, analysis.view_ips, others, analysis.tracer)
        if keys is None:
            return None
        found: dict[str, tuple[PortDigest, list[int]]] = {}
        missed: list[tuple[str, Hashable | None]] = []
        kept = self._kept
        filling = not kept  # (see _keep)
        self._uses = uses = self._uses + 1
        # (a port whose key the worker's last node had, and whose inputs are the same here, takes that key: see
        # NodeKeys.unchanged; the others are read and asked here)
        earlier, records = self._last.get(analysis.family, (None, {}))
        changes = keys.changes(earlier)
        if changes is None:
            records = {}
        unchanged = keys.unchanged
        # (by port: its record and the digest it took, or None; the last node's pair itself when both are its)
        now: dict[str, tuple[Any, Kept | None]] = {}
        for name in layout.keys:
            last = records.get(name)
            key = unchanged(last[0], changes) if last is not None else None
            if key is not None:
                got = last[1]
                if got is None:  # (the last node's digest of the port, when it took one: its key's)
                    got = kept.get(key)
                    last = (last[0], got)
                now[name] = last
            else:
                key, record = port_key(analysis, keys, name)
                got = kept.get(key) if key is not None else None
                if record is not None:
                    now[name] = (record, got)
            carried = _carry(got, keys) if got is not None else None
            if carried is None:
                missed.append((name, key))
                continue
            got[_USED] = uses
            label = carried[0].key
            if label in found:
                return None  # (two ports of one label: which one the comparison reads is the whole path's)
            found[label] = carried
        self._last[analysis.family] = (keys.summary(), now)
        self.carried += len(layout.keys) - len(missed)
        self.made += len(missed)
        # (the ports traced here: of shapes an earlier node of this context mostly traced already)
        analysis.views.share_shapes(keys.fingerprint)
        spelled = (*analysis.view_ips, *layout.node_pod_cidrs, clients.pod, clients.node)  # (the node's own values)
        ruleset = analysis.ruleset
        # (CHUNK ports at a time viewed, digested and their views let go: a first node traces all its ports, whose
        # views held at once were ~40 MB of its peak)
        for start in range(0, len(missed), CHUNK):
            chunk = missed[start:start + CHUNK]
            views = [(key, analysis.port_view(name)) for name, key in chunk]
            wanted: set[int] = set()
            for _key, sp in views:
                wanted.update(sp.lines[:HEAD])
                wanted.update(ep.line for ep in sp.endpoints)
            wanted -= {0}
            # (a few ports' lines found one by one; many, in one pass over the rules)
            found_texts = (ruleset.line_texts(wanted) if len(wanted) > LINES_ONE_BY_ONE else
                           {x: ruleset.line_text(x) for x in wanted})
            texts = {x: t or "" for x, t in found_texts.items()}
            for key, sp in views:
                label = view_service_label(sp)
                if label in found:
                    return None
                digest, lines = port_digest(sp, texts, intern, label)
                found[label] = (digest, lines)
                self._keep(key, digest, sp, keys, spelled, filling)
            del views, texts, found_texts
            analysis.views.let_go([name for name, _key in chunk])
        chosen = list(map(found.__getitem__, sorted(found)))
        return FamilyDigest(analysis.family, layout.proxy, family_warnings(analysis), len(layout.keys),
                            tuple(map(_DIGEST, chosen)), array("I", chained.from_iterable(map(_LINES, chosen))),
                            node_address=traced_node_address(analysis))

    def _keep(self, key: Hashable | None, digest: PortDigest, sp: Any, keys: Any, spelled: Sequence[str],
              filling: bool) -> None:
        if key is None:
            return
        if not filling:
            # A port a later node had to trace is kept the second time its key comes: most such keys are that node's
            # alone (a port with an endpoint in the node's pod CIDR: ~190 of 5,000 a node, by the bench fleet),
            # and kept at once they grew a worker by ~0.6 MB a node (measured over 30 nodes) for no later use.
            seen = self._missed
            if len(seen) > self.size:
                seen.clear()
            found = hash(key)
            if found not in seen:
                seen.add(found)
                return
            seen.discard(found)
        text = repr(digest)
        if any(value in text for value in spelled):
            return  # (a digest that names the node's own values is this node's alone)
        positions = keys.positions(sp.lines)
        if positions is None:
            return
        rules = keys.rules_at(positions)  # (in the order a later node finds them)
        at = {rule[3]: i for i, rule in enumerate(rules or ())}
        if rules is None or len(at) != len(rules) or any(ep.line and ep.line not in at for ep in sp.endpoints):
            return
        first = [rules[at[line]] for line in sorted(at)[:HEAD]]
        kept = self._kept
        kept[key] = [digest, positions, tuple([at[ep.line] if ep.line else -1 for ep in sp.endpoints]),
                     tuple(map(_SAID, first)) if same_head(digest, first) else None, self._uses]
        if len(kept) > self.size:
            # (down to nine tenths of the size, the least recently used first: one sort every size/10 kept)
            old = sorted(kept.items(), key=lambda item: item[1][_USED])[:len(kept) - self.size * 9 // 10]
            for gone, _kept in old:
                del kept[gone]


def port_key(analysis: Any, keys: Any, name: str) -> tuple[Hashable | None, Any]:
    """A port's content key (and the record NodeKeys.unchanged reads on a later node) read and asked here: its layout
    (without lines: those are this node's, read only for a port traced here) and its questions, by role."""
    roles = keys.roles
    sp = analysis.layout.port_values(name)
    asked = tuple([(chain, roles.get(p.src, p.src), roles.get(p.dst, p.dst), p.dport, p.sport, p.proto, p.in_interface)
                   for chain, p in analysis.views.questions(sp)])
    key = keys.key(sp, asked)
    return key, keys.record


def same_head(digest: PortDigest, rules: Sequence[Any]) -> bool:
    """Whether the port's first rules here read as the digest quotes them (its evidence): with equal keys they are the
    same rules, but which of them come first follows this node's order of the dump."""
    return tuple([r.to_save() for r in rules]) == digest.head


def _carry(kept: Kept, keys: Any) -> tuple[PortDigest, list[int]] | None:
    """An earlier node's digest with this node's lines, None when its lines are not all here or its first lines
    read otherwise."""
    digest, positions, endpoints, said, _used = kept
    rules = keys.rules_at(positions)
    if rules is None:
        return None
    lines = list(map(_LINE, rules))
    head = sorted(lines)[:HEAD]
    if (head and head[0] == 0) or len(set(lines)) != len(lines):
        return None  # (a rule on no line, or two on one)
    first = [rules[lines.index(line)] for line in head]  # (the first rules: one a line)
    # (rules of the chains, texts and counters of those that read as the digest's head read so too: compared as
    # such, ~2 µs less a port than printing them)
    if tuple(map(_SAID, first)) != said and not same_head(digest, first):
        return None
    lines.append(0)  # (lines[-1]: the line of an endpoint kept as -1, without one)
    return digest, [*head, *map(lines.__getitem__, endpoints)]
