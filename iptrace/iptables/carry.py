"""Content keys of Service ports, so that an audit carries a port's digest from one node to the next without
tracing it (iptrace.kube.carried): nodes of one cluster write almost every Service port alike, and what differs
between them — the node's own addresses and pod CIDR, its clients' addresses, the order of KUBE-SERVICES — is
written by *role* here (n0, pod0, o1, …: the same role names the corresponding value of every node).

A rule outside the ports' own chains (KUBE-SVC/SEP/FW/EXT/SVL/XLB) is *exact* when it tests an exact destination
(`-d A/32` or `--dport N`, neither negated) and no exact source (`-s A/32`, which a client's address may be); the
others are the node's *context*. The *fingerprint* is a digest of the context: every chain with its policy, its
rules in order written by role, how each address or network they name meets each of the node's own values (equal,
within, holding, overlapping), the ports' own chains that context rules jump or go to (and all those lead to),
and the layout's node-wide facts. A port's *key* is the fingerprint; its layout but lines; its questions (the
traces its view asks for) written by role; the texts of its own chains; the exact rules that name one of its
addresses (ways in, DNAT targets, the node's addresses) or, without an address, one of its ports (ways in, DNAT
targets, port 1 of a way-less probe), by chain, by how many context rules come before each, and in the node's
order except between rules of different destinations (which no packet matches both of; kube-proxy writes a
Service's ClusterIP and external IP rules in Go map order); and how each address or network of those texts meets
the node's own values. A port whose own or exact rules jump to another port's chain has no key.

Why equal keys mean the same view but for the node's own values and lines. The questions are the same by role.
A trace of one meets context rules (the same by role, answering its addresses alike: each of the node's own values
meets every literal as the other node's meets it), the port's own rules (the same texts) and exact rules: an exact
destination test matches only packets to that address or port, and the port's packets go only to its ways'
addresses and ports, the node's addresses and its DNAT targets, so the exact rules it can meet are the key's, at
the same places among the context rules. The regular expressions read text only: a rule they do not read as exact
stays in the context, which must then be the same on both nodes (a miss, never a wrong answer). IPv4
iptables-save dumps only.

A port's own chains are named in its key by content ids (iptrace.iptables.contents: a digest of a chain's texts; a
chain a memo block gave whole by the block's, without reading its rules). A worker's next node takes most keys from
its last node instead of reading and asking each port again (`changes`, `unchanged`): a port's key is a function of
the fingerprint, its layout and ways (a function, in turn, of the context, its own chains and the exact rules that
name its addresses, ports, chains or name: the dispatch reads a way in from a rule's target, a port's name from a
comment), its own chains, its exact rules and how its literals meet the node's own values, and its questions (a
function of its layout and the clients by role, but for a LoadBalancer with source ranges, whose clients avoid the
node's addresses and endpoints: read every time). So with equal fingerprints, a port none of whose own chains
differs, that no exact rule one node alone has could name (by host, port, target or text), whose literals meet the
node's values alike, and whose exact rules, when their order among themselves is their places', are found again
alike, has the last node's key. Where the tracer reads the node's routes (a rule tests the output interface), a key
also holds the interface each of the port's addresses (its ways', its DNAT targets', the node's) leaves by, the
only destinations its traces route, and every key is read again.
"""

from __future__ import annotations

import hashlib
import re
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Collection, Hashable, Iterable, Sequence
from dataclasses import fields, replace
from itertools import chain as chained
from itertools import compress
from operator import attrgetter, getitem, itemgetter
from sys import intern
from typing import Any

from iptrace.errors import TraceError
from iptrace.iptables.contents import content_id
from iptrace.iptables.state import parse_net
from iptrace.layout import Layout, ServicePortLayout, WayIn

OWN = ("KUBE-SVC-", "KUBE-SEP-", "KUBE-FW-", "KUBE-EXT-", "KUBE-SVL-", "KUBE-XLB-")
# (each pattern starts with what it matches, its lookbehinds after it: the engine then skips to the places where
# that character is; written with the lookbehinds first, it tried every place of a text: 2-5x slower, the same
# matches, checked on every rule of a 5,000-Service dump and 200,000 random texts)
_EXACT_DST = re.compile(r"-(?<!! -)(?<![\w-]-)d (\d+\.\d+\.\d+\.\d+)/32(?![\w.])")
_EXACT_DPORT = re.compile(r"--(?<!! --)dport (\d+)(?![\w:,])")
_EXACT_SRC = re.compile(r"-(?<![\w-]-)s \d+\.\d+\.\d+\.\d+/32(?![\w.])")
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')  # (a quoted word of iptables-save's: a comment's, a prefix's)
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_CANONICAL = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")
_JUMP = re.compile(r"-(?<![^\n ]-)[jg] (\S+)")
_TO = re.compile(r"--to-destination (\d+\.\d+\.\d+\.\d+):(\d+)")
_IPV4 = re.compile(r"(\d(?<![\w.:]\d)\d*\.\d+\.\d+\.\d+(?:/\d+)?)(?![\w.])")
_LINE = itemgetter(3)
_TEXT = itemgetter(1)  # (a rule's)
_WRITTEN = itemgetter(7)  # (an Exact's)
_ADDRESS = attrgetter("address")  # (a way's)
_PORT = attrgetter("port")  # (a way's)
_LAYOUT_VALUES = attrgetter(*(f.name for f in fields(ServicePortLayout) if f.name not in ("lines", "ways_in")))
_WAY_VALUES = attrgetter(*(f.name for f in fields(WayIn) if f.name != "lines"))

# (what `_read` finds in texts: the DNAT targets' addresses and ports (each once: a key reads them as sets), IPv4
# literals, the first exact --dport, the ports' own chains jumped or gone to, whether a literal is not written as
# iptables-save writes addresses, the texts as kept (a port's own chains': their content ids, which its key holds),
# and the literals that are networks (not a/32). Addresses are the interned literals' strings, ports shared ints
# (~10 targets a port, ~150 bytes each as pairs of their own), chain names interned: kube_chains' summaries name the
# same endpoint chains)
Targets = tuple[tuple[str, ...], tuple[int, ...]]
Read = tuple[Targets, tuple[str, ...], int | None, tuple[str, ...], bool, tuple[Any, ...], tuple[str, ...]]
# (an exact rule: table, chain, how many context rules come before it, its exact destination address or "", its
# index in the chain, its text, what `_read` finds in the text, and how a key writes it: (table, chain, before, its
# text by role))
Exact = tuple[str, str, int, str, int, str, Read, tuple[str, str, int, str]]
# (what `unchanged` reads of a port's key on an earlier node: the key, its own chains, its addresses (by role), those
# not the node's as written when its exact rules are to be found again (else None), its ports, its literals (`nets` of
# them networks, whether one is odd: see _read), its name)
Record = tuple[Hashable, tuple[str, ...], tuple[str, ...], frozenset[str | None] | None, tuple[int, ...],
               tuple[str, ...], tuple[str, ...], bool, str | None]
# (NodeKeys.summary: the fingerprint, how many exact rules each form has: (as a key writes the rule, its host by role,
# its port))
Summary = tuple[bytes, Counter[tuple[Any, str, int | None]]]
# (NodeKeys.changes: the hosts (by role) and ports of exact rules one node alone has, the chains they jump or go to,
# their texts joined)
Changes = tuple[frozenset[str], frozenset[int], frozenset[str], str]
# (the tracer's output interface of an IPv4 address as a number: state.Context.out_iface)
OutIface = Callable[[int], "str | None"]
# (where a port's rules are: NodeKeys.positions)
Positions = tuple[tuple[str, ...], tuple[slice, ...], int, tuple[tuple[str, str, str], ...]]


class NodeKeys:
    """One node's content keys (`key`) and the positions of its rules' lines (`positions`, `rules_at`)."""

    def __init__(self, ruleset: Any, layout: Layout, node_ips: Sequence[str], others: Sequence[str] = (),
                 out_iface: OutIface | None = None) -> None:
        self.ruleset = ruleset
        # (the tracer's output interface of an address (its lookup in the node's routes), None when it reads no
        # routes: then each key also says which interface the kernel sends each of a port's addresses out of)
        self.out_iface = out_iface
        self.node_ips = tuple(node_ips)
        self._own: dict[str, tuple[Any, ...]] = {}  # own chain name → its rules
        self._ids: dict[str, bytes] = {}  # own chain name → its content id (iptrace.iptables.contents)
        # exact rules by host and (without one) by port (Exact)
        self._by_host: dict[str, list[Exact]] = {}
        self._by_port: dict[int, list[Exact]] = {}
        self._texts: dict[tuple[str, str, str], Any] = {}  # (table, chain, text) → its rule; None: not one rule
        self.record: Record | None = None  # (the last port's, that `key` made: see `unchanged`)
        self._summary: Summary | None = None
        roles = {ip: f"<o{i}>" for i, ip in enumerate(others)}
        roles.update({ip: f"<n{i}>" for i, ip in enumerate(self.node_ips)})
        roles.update({cidr: f"<pod{i}>" for i, cidr in enumerate(layout.node_pod_cidrs)})
        self.roles = roles  # (a value of the node's own → how every key writes it)
        self._role_re = re.compile("|".join(fr"(?<![\w.]){re.escape(k)}(?![\w.])" for k in
                                            sorted(roles, key=len, reverse=True))) if roles else None
        # (the node's own values as address ranges: its addresses, then its pod CIDRs, in role order)
        self._mine = [_range(v) for v in (*self.node_ips, *layout.node_pod_cidrs, *others)]
        self._met: dict[str, tuple[str, tuple[tuple[int, str], ...]] | None] = {}
        # (a plain address of a port's texts can meet the node's own values only when it is one of its addresses or
        # starts as a pod CIDR of whole octets does: a test in C for most endpoints' addresses; None: no shortcut)
        self._exact = frozenset((*self.node_ips, *others))
        self._prefixes: tuple[str, ...] | None = _octet_prefixes(layout.node_pod_cidrs)
        self._leads = tuple(f"\n{p}" for p in self._prefixes or ())  # (a literal that starts so, in joined literals)
        self._exact32 = self._exact.union([f"{a}/32" for a in self._exact])
        context = [repr((layout.proxy, replace(layout.node_port_addresses, lines=()), layout.pod_cidrs,
                         layout.pod_interfaces,
                         layout.masquerade_mark, layout.random_fully, layout.family, len(self.node_ips),
                         len(layout.node_pod_cidrs), out_iface is not None))]
        entered: list[str] = []  # (the ports' own chains a context rule jumps or goes to)
        holding: list[str] = []  # (the tables with own chains)
        for table in ruleset.tables:
            own = [chain.name.startswith(OWN) for chain in table.chains]
            owned = list(compress(table.chains, own))
            self._own.update({chain.name: chain.rules for chain in owned})
            if owned:
                holding.append(table.name)
            for chain, is_own in zip(table.chains, own, strict=True):
                if is_own:
                    continue
                name = chain.name
                context.append(f"{table.name} {name} {chain.policy}")
                before = 0
                for i, rule in enumerate(chain.rules):
                    text = rule[1]
                    where = (table.name, name, text)
                    self._texts[where] = None if where in self._texts else rule
                    host, port = _exact(text)
                    if host is None and port is None:
                        before += 1
                        context.append(self.by_role(text))
                        _targets, literals, _port, jumps, _odd, _texts, _nets = _read((text,))
                        entered.extend(sorted(jumps))
                        # (sorted: a set's order follows its strings' hashes, which differ between the nodes' values)
                        context.extend(map(repr, sorted(filter(None, map(self._meets, literals)))))
                        continue
                    entry = (table.name, name, before, host or "", i, text, _read((text,)),
                             (table.name, name, before, self.by_role(text)))
                    if host is not None:
                        self._by_host.setdefault(host, []).append(entry)
                    elif port is not None:
                        self._by_port.setdefault(port, []).append(entry)
        # (a chain a block gave whole named by the block's id for it, without reading its rules; the others by texts)
        ids = self._ids
        if len(holding) == 1:  # (own chains in one table: its blocks' ids name them; else each by its texts)
            table_name = holding[0]
            for name, block in ruleset.replayed:
                if name == table_name:
                    ids.update(zip(block.chains, block.content_ids(), strict=True))
        for name in self._own.keys() - ids.keys():
            ids[name] = content_id(tuple(map(_TEXT, self._own[name])))
        # (the addresses and ports exact rules test: what a port's addresses and ports are met with, in C)
        self._hosts, self._dports = frozenset(self._by_host), frozenset(self._by_port)
        seen: set[str] = set()
        while entered:  # (such a chain, and all it leads to, is read by every port's questions: context too)
            name = entered.pop()
            if name in seen or name not in self._own:
                continue
            seen.add(name)
            texts = tuple(map(_TEXT, self._own[name]))
            context.append(f"entered {name} " + self.by_role("\n".join(texts)))
            entered.extend(sorted(_read(texts)[3]))
        self.fingerprint = hashlib.blake2b("\n".join(context).encode(), digest_size=16).digest()

    def by_role(self, text: str) -> str:
        """`text` with the node's own values written by role."""
        found = self._role_re
        if found is None or not any(map(text.__contains__, self.roles)):
            return text
        return found.sub(lambda m: self.roles[m.group()], text)

    def key(self, sp: ServicePortLayout, asked: Hashable) -> Hashable | None:
        """The port's content key (see the module's docstring), `asked` being its questions written by role; None when
        a rule of its own or one naming it jumps to another port's chain (what the key would hold grows beyond the
        port). Sets `record` to the port's (see `unchanged`), None without one."""
        self.record = None
        ways = sp.ways_in
        # (addresses and ports taken from the ways and texts; None or "" meets no exact rule's host)
        addresses = set(map(_ADDRESS, ways))
        ports = set(map(_PORT, ways))
        chains = sp.chains
        # (its own chains by their content ids, read as one: what they say is kept per port, not per chain)
        own = tuple(map(self._ids.get, chains))
        found = _READ.get(own)
        if found is None:
            found = _READ[own] = _read(tuple([None if rules is None else tuple(map(_TEXT, rules))
                                              for rules in map(self._own.get, chains)]), own)
        targets, literals, _port, jumps, odd, _own, nets = found
        if jumps and not frozenset(chains).issuperset(jumps):
            return None
        addresses.update(targets[0])
        ports.update(targets[1])
        named = set(literals)
        if sp.health_check_node_port is not None:
            ports.add(sp.health_check_node_port)
        own_addresses = frozenset(addresses)
        ports.add(1)  # (the port a question takes when the port has no way in: view._Builder.probe)
        chosen = self._chosen(own_addresses, ports)
        if not chosen:
            exact: tuple[Any, ...] = ()
        else:
            exact = tuple(map(_WRITTEN, _ordered(chosen)))
            for entry in chosen.values():
                _targets, literals, _port, jumps, unusual, _texts, more = entry[6]
                if jumps and not frozenset(chains).issuperset(jumps):
                    return None
                named.update(literals)
                odd = odd or unusual
                if more:
                    nets += more
        own_values = self._own_values(named, nets, odd)
        if self.out_iface is not None:  # (where the kernel sends each address a trace of the port may go to)
            own_values += (self._devices(own_addresses),)
        key = (self.fingerprint, _LAYOUT_VALUES(sp), tuple(map(_WAY_VALUES, ways)), own, exact, own_values, asked)
        roles = self.roles
        # (what `unchanged` needs to tell, on a later node, that this key is that node's key of the port too; the
        # exact rules are found again there when their order among themselves is by their places: two in one chain
        # with as many context rules before them)
        # (tuples, not sets: a worker keeps one a port, and `unchanged` only iterates them; none with routes: each
        # key is read again)
        self.record = None if sp.lb_source_ranges or self.out_iface is not None else (
            key, chains, tuple([roles.get(a, a) for a in (*own_addresses, *self.node_ips) if a]),
            own_addresses if len({e[:3] for e in chosen.values()}) < len(chosen) else None, tuple(ports),
            tuple(named), nets, odd, sp.name)
        return key

    def _same_own(self, chains: Sequence[str], ids: tuple[bytes | None, ...]) -> bool:
        """Whether the chains of a port are here as they were where its own chains' content ids were `ids` (a chain
        not here has none)."""
        return tuple(map(self._ids.get, chains)) == ids

    def _devices(self, addresses: Iterable[str | None]) -> tuple[tuple[str, str | None], ...]:
        """The interface the tracer sends each of `addresses` (and the node's own) out of, by role."""
        roles, out = self.roles, self.out_iface
        return tuple(sorted((roles.get(a, a), out(span[0]) if span else None)
                            for a in {*addresses, *self.node_ips} if a for span in (_range(a),)))

    def _chosen(self, addresses: frozenset[str | None], ports: set[int] | frozenset[int]) -> dict[int, Exact]:
        """The exact rules that test one of a port's `addresses` (and the node's: with no port, or one of its `ports`)
        or, with no address, one of its `ports`."""
        chosen: dict[int, Exact] = {}
        by_host, by_port = self._by_host, self._by_port
        for address in self._hosts.intersection(addresses.union(self.node_ips)):
            for entry in by_host[address]:
                port = entry[6][2]
                if port is None or port in ports:
                    chosen[id(entry)] = entry
        for port in self._dports.intersection(ports):
            for entry in by_port[port]:
                chosen[id(entry)] = entry
        return chosen

    def _own_values(self, named: Collection[str], nets: tuple[str, ...], odd: bool) -> tuple[Any, ...]:
        """How a port's literals `named` (`nets` of them networks; `odd` when one is not written as iptables-save
        writes addresses) meet the node's own values, by role."""
        met, meets, prefixes = self._met, self._meets, self._prefixes
        kept: Iterable[str] = named if prefixes is None or odd else self._may_meet(named, nets, prefixes)
        return tuple(sorted(filter(None, [met[a] if a in met else meets(a) for a in kept])))

    def summary(self) -> Summary:
        """What `changes` reads of this node when it is the earlier one (not the node's rules: a worker keeps it
        while it reads the next node)."""
        found = self._summary
        if found is None:
            roles = self.roles
            forms = Counter([(e[7], roles.get(e[3], e[3]), e[6][2]) for entries in
                             (*self._by_host.values(), *self._by_port.values()) for e in entries])
            found = self._summary = (self.fingerprint, forms)
        return found

    def changes(self, earlier: Summary | None) -> Changes | None:
        """What differs from an `earlier` node (its `summary`: the last node a worker analysed) that a port's key can
        take: the exact rules (as keys write them) either node has and the other has not, with their hosts (by role),
        ports, the chains they jump or go to (a layout reads a way in from a rule's target) and their joined texts;
        None when the fingerprints differ (no key of one node is the other's)."""
        if earlier is None or earlier[0] != self.fingerprint:
            return None
        there, here = earlier[1], self.summary()[1]
        # (the forms counted differently, compared in C; their texts in any order: a port's name, which `unchanged`
        # looks for in them, holds no newline)
        differ = {form for form, _count in here.items() ^ there.items()}
        hosts = {host for _w, host, _p in differ if host}
        ports = {port for _w, host, port in differ if not host and port is not None}
        texts = "\n".join(w[3] for w, _h, _p in differ)
        return frozenset(hosts), frozenset(ports), frozenset(_JUMP.findall(texts)), texts

    def unchanged(self, record: Record, changes: Changes) -> Hashable | None:
        """The key an earlier node's port had (`record`: its `key`'s), when it is this node's key of the port too
        (`changes`: this node's from that one): none of its own chains differs, no exact rule either node alone has
        tests one of its addresses or ports or names one of its chains or its name, and its literals meet this node's
        own values as they met the earlier's (then its layout, ways, exact rules and questions are the same: each a
        function of those and of the fingerprint). None otherwise."""
        key, chains, addresses, found_again, ports, named, nets, odd, label = record
        hosts, dports, targets, texts = changes
        if (not hosts.isdisjoint(addresses) or not dports.isdisjoint(ports) or not targets.isdisjoint(chains)
                or (label is not None and label in texts)):
            return None
        if not self._same_own(chains, key[3]):  # type: ignore[index]
            return None
        if self._own_values(named, nets, odd) != key[5]:  # type: ignore[index]
            return None
        if found_again is not None:
            exact = tuple(map(_WRITTEN, _ordered(self._chosen(found_again, ports))))
            if exact != key[4]:  # type: ignore[index]
                return None
        return key

    def _may_meet(self, named: Collection[str], nets: tuple[str, ...], prefixes: tuple[str, ...]) -> Iterable[str]:
        """Those of a port's literals `named` (canonical IPv4 texts) that can meet the node's own values: each that
        starts as a pod CIDR of whole octets does, is one of the node's addresses (or that address as `a/32`: an
        endpoint's hairpin rule names it so), or is a network (not `a/32`: `nets`, those of `named` `_read` found).
        Without a literal of the first kind (one look for each prefix in the literals' joined text, which holds no
        newline) the rest are picked out in C."""
        joined = "\n" + "\n".join(named)
        if any(map(joined.__contains__, self._leads)):
            exact_values = self._exact
            return [a for a in named if a.startswith(prefixes) or a.removesuffix("/32") in exact_values
                    or ("/" in a and not a.endswith("/32"))]
        return self._exact32.intersection(named).union(nets)

    def _meets(self, literal: str) -> tuple[str, tuple[tuple[int, str], ...]] | None:
        """An address or network of a port's texts (by role when it is one of the node's own values) with how it meets
        each of the node's own values it meets (equal, within it, holding it, or overlapping), None when it meets
        none."""
        span = _range(literal)
        found = []
        for i, mine in enumerate(self._mine):
            if span is None or mine is None:
                found.append((i, "?"))  # (not read: counted as meeting it)
                continue
            (low, high), (mine_low, mine_high) = span, mine
            if low == mine_low and high == mine_high:
                found.append((i, "="))
            elif mine_low <= low and high <= mine_high:
                found.append((i, "<"))
            elif low <= mine_low and mine_high <= high:
                found.append((i, ">"))
            elif low <= mine_high and mine_low <= high:
                found.append((i, "~"))
        self._met[literal] = out = (self.roles.get(literal, literal), tuple(found)) if found else None
        return out

    def positions(self, lines: Iterable[int]) -> Positions | None:
        """Where the rules on `lines` are, as another node finds them (`rules_at`; a digest kept for a port holds ~40
        rules): the own chains' names with the slice of the rules' indices in each (a port's lines hold its own chains
        whole: one slice a chain), how many rules those hold, and each other rule as (its table, chain, text); None
        when one is not a rule the node can name that way (a context rule written twice in its chain)."""
        names: list[str] = []
        slices: list[slice] = []
        others: list[tuple[str, str, str]] = []
        count = 0
        # (the rule on each line of the own chains met so far, and its index in its chain: a port's lines hold its own
        # chains whole, so one look-up in the ruleset a chain; a dict of every line of the node was ~20 MB at a first
        # node's peak)
        lined: dict[int, tuple[Any, int]] = {}
        at = lined.get
        rule_at = self.ruleset.rule_at
        for line in lines:
            found = at(line) if line > 0 else None
            rule = rule_at(line) if found is None else found[0]
            if rule is None:
                return None
            name = rule[0]
            rules = self._own.get(name)
            if rules is not None:
                if found is None:
                    i = bisect_left(rules, line, key=_LINE)
                    if i >= len(rules) or rules[i] is not rule:
                        return None
                    lined.update({r[3]: (r, k) for k, r in enumerate(rules)})
                else:
                    i = found[1]
                count += 1
                if names and names[-1] == name and slices[-1].stop == i:
                    slices[-1] = slice(slices[-1].start, i + 1)  # (the next rule of the chain)
                else:
                    names.append(name)
                    slices.append(slice(i, i + 1))
                continue
            table = next((t.name for t in self.ruleset.tables if (t.name, name, rule[1]) in self._texts), None)
            if table is None or self._texts.get((table, name, rule[1])) is not rule:
                return None
            others.append((table, name, rule[1]))
        return tuple(names), tuple(slices), count, tuple(others)

    def rules_at(self, positions: Positions) -> list[Any] | None:
        """The rules at `positions` (made by another node's `positions`) on this node, the own chains' first, None when
        one is not here."""
        names, slices, count, others = positions
        found = list(map(self._own.get, names))
        if not all(found):
            return None  # (a chain not here, or empty: it holds none of its slice)
        out = list(chained.from_iterable(map(getitem, found, slices)))
        if len(out) != count:
            return None  # (a chain shorter here)
        if others:
            rules = list(map(self._texts.get, others))
            if not all(rules):
                return None
            out += rules
        return out


# (a port's own chains' texts, a chain's or one rule's → what `_read` finds in them: the same on every node, kept by
# content; started again when full)
_READ: dict[tuple[str, ...], Read] = {}
READ_LIMIT = 50_000  # (a 5,000-Service node reads ~15,000: its ports and exact rules)


_NO_TARGETS: Targets = ((), ())
_NETS: dict[tuple[str, ...], tuple[str, ...]] = {}  # (one tuple each: a few networks, named by ~10^4 reads)
_PORTS: dict[int, int] = {}  # (one int object per port number: at most 65,536)


def _port(text: str) -> int:
    number = int(text)
    return _PORTS.setdefault(number, number)


def _read(texts: tuple[Any, ...], own: tuple[bytes | None, ...] | None = None) -> Read:
    """What `texts` say: rules' texts (kept by them), or a port's own chains' (a tuple of texts, or None, per chain),
    their content ids being `own` (kept by those, by the caller)."""
    found = _READ.get(texts) if own is None else None
    if found is None:
        if len(_READ) >= READ_LIMIT:
            _READ.clear()
            _NETS.clear()
        one = len(texts) == 1 and type(texts[0]) is str
        joined = "\n".join(texts if not texts or type(texts[0]) is str else
                           [text for chain in texts if chain for text in chain])
        port = _EXACT_DPORT.search(joined) if one else None
        literals = tuple(dict.fromkeys(map(intern, _IPV4.findall(joined))))  # (interned: chains repeat them)
        to = _TO.findall(joined)
        targets = (tuple(dict.fromkeys([intern(a) for a, _p in to])), tuple(dict.fromkeys([_port(p) for _a, p in to]))
                   ) if to else _NO_TARGETS
        nets = tuple([a for a in literals if "/" in a and not a.endswith("/32")])
        found = (targets, literals, _port(port.group(1)) if port else None,
                 tuple(dict.fromkeys(intern(t) for t in _JUMP.findall(joined) if t.startswith(OWN))),
                 not all(map(_CANONICAL.fullmatch, (a.partition("/")[0] for a in literals))),
                 texts if own is None else own, _NETS.setdefault(nets, nets))
        if own is None:
            _READ[texts] = found
    return found


# (a rule's text → what `_exact` finds in it: the same on every node, kept by content; started again when full)
_EXACT: dict[str, tuple[str | None, int | None]] = {}
EXACT_LIMIT = 100_000  # (a 5,000-Service node has ~17,000 rules outside the ports' own chains)


def _exact(text: str) -> tuple[str | None, int | None]:
    """(the exact destination address, the exact destination port) a rule's text tests; (None, None) when it tests
    neither, or an exact source (then it is a context rule)."""
    found = _EXACT.get(text)
    if found is None:
        if len(_EXACT) >= EXACT_LIMIT:
            _EXACT.clear()
        # (what a rule tests, not what its quoted words spell: a comment `"-d 10.96.0.1/32"` on a rule that drops
        # every packet made it an exact rule, left out of the fingerprint)
        tested = _QUOTED.sub('""', text) if '"' in text else text
        host = _EXACT_DST.search(tested)
        port = _EXACT_DPORT.search(tested)
        if (host is None and port is None) or _EXACT_SRC.search(tested):
            found = None, None
        else:
            found = (intern(host.group(1)) if host is not None else None,
                     _port(port.group(1)) if port is not None else None)
        _EXACT[text] = found
    return found


def _octet_prefixes(cidrs: Sequence[str]) -> tuple[str, ...] | None:
    """The texts every address of these IPv4 networks starts with, when each is a whole number of octets (`a.b.`
    for a /16); None when one is not."""
    out = []
    for cidr in cidrs:
        address, _, bits = cidr.partition("/")
        if not bits.isdigit() or int(bits) % 8 or not 8 <= int(bits) <= 24 or address.count(".") != 3:
            return None
        out.append(".".join(address.split(".")[:int(bits) // 8]) + ".")
    return tuple(out)


def _range(text: str) -> tuple[int, int] | None:
    """The first and last address of an IPv4 address or network (`a.b.c.d[/n]`, as state.parse_net reads it), None
    when it is not one."""
    try:
        found = parse_net(text, 4)
    except TraceError:
        return None
    if found is None:
        return None
    net, mask = found
    return net & mask, (net & mask) | (~mask & 0xFFFF_FFFF)


def _ordered(chosen: dict[int, Exact]) -> list[Exact]:
    """The exact rules of a port in an order equal on nodes that write them alike: by chain and by the context rules
    before them; within those, by destination then place when every one names a destination (two rules of different
    destinations never match one packet: kube-proxy writes a Service's ClusterIP and external IP rules in Go's map
    order), else in the node's order."""
    if len(chosen) == 1:
        return list(chosen.values())
    groups: dict[tuple[str, str, int], list[Exact]] = {}
    for entry in chosen.values():
        groups.setdefault(entry[:3], []).append(entry)
    out: list[Exact] = []
    for where in sorted(groups):
        found = groups[where]
        out += sorted(found, key=_BY_HOST if all(e[3] for e in found) else _BY_PLACE)
    return out


_BY_HOST = itemgetter(3, 4)
_BY_PLACE = itemgetter(4)


def node_keys(ruleset: Any, layout: Layout, node_ips: Sequence[str], others: Sequence[str] = (),
              out_iface: OutIface | None = None) -> NodeKeys | None:
    """The node's NodeKeys, None where there are none (IPv6, or a ruleset that is no iptables-save dump). `others`:
    more addresses questions take for the node's own (its clients'); `out_iface`: the tracer's output interface of an
    address when it reads the node's routes."""
    if layout.family != "ipv4" or ruleset.format != "save":
        return None
    return NodeKeys(ruleset, layout, node_ips, others, out_iface)
