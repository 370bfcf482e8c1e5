"""The footprint of some traces (iptrace.dataplane.Footprint): every rule they could meet and how it would answer
them, as a key another node's rules can be compared by, so that a Service view worked out on one node is
reused on the next (iptrace.kube.reuse) — nodes of one cluster differ in a few rules (their own pod CIDR in the
CNI's rules, their local endpoints, the order of KUBE-SERVICES), which most Service ports never meet.

Why equal keys mean equal traces. Every branch of these traces has its source among the packets' sources S
(no rule rewrites it), its destination among D (the packets' destinations and every DNAT target the key
holds) and its destination port among P (likewise). A rule is *kept* unless it cannot match any such branch:
it never matches, or the index files it under a protocol, port or host outside the question (index.py: its
definite tests fail), or one of its -s/-d tests fails for every address of S (D). The walk skips a rule that
does not match without any effect (walk.py tests -s/-d first, then the other tests, and only then makes
assumptions or splits), so the walk sees only kept rules, and only in chains kept jumps lead to. The key
holds, from the hooks' chains (and the chains traced directly) in walk order, every chain the kept rules
reach — its name, policy, existence — and every kept rule's text in chain order, with each -s/-d value
written as "@" and, instead, the answer of that test for each address of S and D. The addresses themselves
are in the key, except the packets' sources and the node's own addresses: these are named by role (with
what -m addrtype says of them), so that node B's question about its own address matches node A's. Every other
read of an abstracted address (an ipset with known members, -m iprange, conntrack's original addresses, a
masked -m recent) makes the footprint None. Equal keys therefore mean the same kept rules, answering every
test alike, in the same order: the same walk, except for line numbers (`Footprint.lines`, position by
position) and the abstracted addresses. REDIRECT and NETMAP, which rewrite to addresses the key cannot name,
make it None. tests/test_reuse.py compares views built with and without reuse. The loose key, which leaves out
how the context's -s/-d tests answer, and what a reuse by it checks instead: footprint_loose.py.
"""

from __future__ import annotations

import functools
import hashlib
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import fields
from operator import itemgetter
from typing import Any

from iptrace.dataplane import Footprint, Packet
from iptrace.errors import IptraceError
from iptrace.iptables.compile import ChainCode
from iptrace.iptables.footprint_facts import (
    FACTS_LIMIT,
    KIND_DNAT,
    KIND_OPAQUE,
    ChainRead,
    ChainRules,
    Facts,
    Spec,
    chain_read,
    known_facts,
    rule_facts,
)
from iptrace.iptables.footprint_loose import ContextReads, Loose
from iptrace.iptables.footprint_walk import walk
from iptrace.iptables.index import MIN_RULES, KeyPlan
from iptrace.iptables.match_modules import _address_types
from iptrace.iptables.matchers import Structure, fast_tokens
from iptrace.iptables.model import BUILTIN_CHAINS, TABLES
from iptrace.iptables.options import BUILTIN_TARGETS
from iptrace.iptables.state import ip_int
from iptrace.records import positional_new

# (process-wide, like the facts: a rule's target by its text; short chains by their texts, see read_chain)
_TARGETS: dict[str, str] = {}
# (IP version, table) → a short chain's content → its rules read (ChainRules), with the chains they jump to and the
# other targets that are not built in: a node where one of those is a chain, or one of the former is not, reads again
_CHAINS: dict[tuple[int, str], dict[tuple[str, ...], ChainRead]] = {}
_TEXT = itemgetter(1)  # (a Rule's text)
_TARGET_NAMES: dict[str, str] = {}
# (an address's text → its number, and a protocol's name → its number: the same on every node, and a node's
# questions name ~10^4 addresses)
_ADDRESS_INTS: dict[str, int] = {}
_PROTO_NUMBERS: dict[str, int] = {}
_KIND_TEXTS: dict[tuple[object, ...], str] = {}  # an address's kind (see _Node.kind) → its text in the key
_ADDR_LINES: dict[tuple[int | str, str], str] = {}  # (an address or its role, its kind's text) → its header line
# (IP version, node addresses known) → an address that is none of the node's own → its header line. Such an
# address's kind reads only the version, whether the node's addresses are known and the address itself
# (match_modules._address_types, Context.is_local), so its line is the same on every node: a node's ~10^4
# endpoint addresses are not classified and formatted again on each node.
_FOREIGN_LINES: dict[tuple[int, bool], dict[int, str]] = {}


class _Node:
    """One tracer's rules as the footprint reads them: per chain, each rule's facts, target and line (built on
    first use; the facts themselves are shared by text across nodes)."""

    def __init__(self, tracer: Any) -> None:
        # Weak: the tracer holds this node, and a cycle would leave a whole ruleset to the cyclic collector.
        self.tracer = weakref.proxy(tracer)
        self.chains: dict[tuple[str, str], list[tuple[Facts, bool, str, int] | None]] = {}
        self.plans: dict[int, KeyPlan] = {}
        self.alive: list[Structure] = []
        self._src_bits: dict[tuple[Spec, tuple[int, ...]], str] = {}
        self._items: dict[tuple[str, str], list[tuple[Facts, bool, str, int]]] = {}
        self._chains_read: dict[tuple[str, str], tuple[str, Any, Any]] = {}
        self._tables: dict[str, dict[str, Any]] = {}  # a table's chains by name (the ruleset's own index)
        # (read straight, not through the proxy: read_chain runs for every chain a node's questions meet)
        self.version: int = tracer.version
        self.dash_policy: set[tuple[str, str]] = tracer._dash_policy
        self._kinds: dict[int, str] = {}
        ctx = tracer.ctx
        self.local: frozenset[int] = ctx.local_addresses
        if sum(map(len, _FOREIGN_LINES.values())) >= FACTS_LIMIT:
            _FOREIGN_LINES.clear()
        self.foreign_lines = _FOREIGN_LINES.setdefault((tracer.version, ctx.node_ips_known), {})
        ipsets = sorted((name, tuple(nets)) for name, nets in ctx.ipsets.items())
        self.head = f"v{tracer.version} {tracer.entry} known={ctx.node_ips_known} sets={ipsets}"
        self._context: _Context | None = None
        self._index_keys: dict[tuple[str, str], tuple[set[int], set[int]]] = {}
        version = tracer.version
        addresses = [a for v, a in (ip_int(text) for text in tracer.node_ips) if v == version]
        self.node_roles = {addr: f"n{i}" for i, addr in reversed(list(enumerate(addresses)))}

    def context(self) -> _Context:
        if self._context is None:
            for table in TABLES:
                self._prefill(table)
            self._context = _Context(self)
        return self._context

    def _prefill(self, table: str) -> None:
        """read_chain's answer for every short user chain of `table` an earlier node read alike (`_CHAINS`), in
        one loop: a node's questions meet nearly all of its chains (one call a chain cost more than its read)."""
        known = _CHAINS.get((self.version, table))
        if not known:
            return  # (the first node)
        chains = self._table(table)
        names, dash, out = chains.keys(), self.dash_policy, self._chains_read
        get, text, prefix = known.get, _TEXT, "chain " + table + " "
        for name, chain in chains.items():
            rules = chain.rules
            if chain.policy is not None or not rules or len(rules) >= MIN_RULES:
                continue
            found = get(tuple(map(text, rules)))
            if found is None or (found[1] and not names >= found[1]) or (found[2] and not names.isdisjoint(found[2])):
                continue
            key = (table, name)
            if not dash or key not in dash:
                out[key] = (prefix + name + " None False False", found[0], rules)

    def items(self, code: ChainCode) -> list[tuple[Facts, bool, str, int]]:
        """Every rule of a (short, unindexed) chain as `rule` gives it."""
        found = self._items.get(code.key)
        if found is None:
            found = self._items[code.key] = [self.rule(code, i) for i in range(len(code.rules))]
        return found

    def item(self, code: ChainCode, i: int) -> tuple[Facts, tuple[str, str] | None, int]:
        """(facts, the chain it jumps to, line) of rule `i` of `code`."""
        f, is_chain, target, line = self.rule(code, i)
        return f, (code.table, target) if is_chain else None, line

    def read_chain(self, key: tuple[str, str]) -> tuple[str, Any, Any]:
        """(the chain's line in the key, its rules — None for an indexed chain, which a question reads through
        its index —, and what gives their lines: the chain's rules, or for an indexed chain (its code, the hosts
        and ports its index files rules under, its rules read so far: `rule`'s list)); read once a node
        (`_chains_read`, which footprint_walk.walk reads itself)."""
        table, name = key
        chains = self._tables.get(table) or self._table(table)
        chain = chains.get(name)
        if chain is None:
            return f"chain {table} {name} absent", ChainRules([]), ()
        rules = chain.rules
        if chain.policy is None and rules and key not in self.dash_policy:
            head = "chain " + table + " " + name + " None False False"  # (the f-string below's, for most chains)
        else:
            head = f"chain {table} {name} {chain.policy} {key in self.dash_policy} {not rules}"
        if len(rules) >= MIN_RULES:
            code = self.tracer._code(table, name)
            if code.index is not None:
                # (what walk reads of it: its code, the keys its index files rules under, its rules as `rule`
                # gives them)
                rules_read = self.chains.get(code.key)
                if rules_read is None:
                    rules_read = self.chains[code.key] = [None] * len(code.rules)
                return head, None, (code, *self.index_keys(code), rules_read)
            return head, ChainRules([self.item(code, i)[:2] for i in range(len(code.rules))]), code.rules
        # A short chain (an endpoint's, a Service port's, a CNI's) reads alike on every node that has the
        # same rules: its facts are kept by content (the chains it may jump to are checked per node). The
        # content is the texts themselves (their hashes are cached with them; equality is exact).
        content = tuple(map(_TEXT, rules))
        names = chains.keys()
        known = _CHAINS.get((self.version, table))
        found = known.get(content) if known is not None else None
        if found is None or not names >= found[1] or (found[2] and not names.isdisjoint(found[2])):
            code = self.tracer._code(table, name)
            if known is None or sum(map(len, _CHAINS.values())) >= FACTS_LIMIT // 4:
                if known is not None:
                    _CHAINS.clear()
                known = _CHAINS[(self.version, table)] = {}
            found = known[content] = chain_read(table, [self.read_rule(code, i) for i in range(len(code.rules))])
        return head, found[0], rules

    def _table(self, table: str) -> dict[str, Any]:
        found = self._tables.get(table)
        if found is None:
            t = self.tracer.ruleset.table(table)
            found = self._tables[table] = t.by_name if t is not None else {}
        return found

    def kind(self, addr: int) -> str:
        """What -m addrtype and the routing decision see of an address."""
        found = self._kinds.get(addr)
        if found is None:
            ctx = self.tracer.ctx
            types, unsure = _address_types(addr, ctx)
            # (one text per answer: a node's endpoints are thousands of addresses with the same one)
            answer = (*types, unsure, ctx.is_local(addr)) if len(types) == 1 else (
                *sorted(types), unsure, ctx.is_local(addr))
            found = _KIND_TEXTS.get(answer)
            if found is None:
                found = _KIND_TEXTS[answer] = f"{sorted(types)} {unsure} {answer[-1]}"
            self._kinds[addr] = found
        return found

    def src_bits(self, spec: Spec, sources: tuple[int, ...]) -> str:
        key = (spec, sources)
        found = self._src_bits.get(key)
        if found is None:
            found = self._src_bits[key] = _bits(spec, sources)
        return found

    def index_keys(self, code: ChainCode) -> tuple[set[int], set[int]]:
        """The hosts and ports an indexed chain files rules under."""
        found = self._index_keys.get(code.key)
        if found is None:
            index = code.index
            assert index is not None
            hosts = set(index.by_host) | {k[2] for k in index.by_port if k[2] is not None}
            found = self._index_keys[code.key] = (hosts, {k[1] for k in index.by_port})
        return found

    def rule(self, code: ChainCode, i: int) -> tuple[Facts, bool, str, int]:
        """(facts, whether its target is a chain, that target, line) of rule `i` of `code`."""
        rules = self.chains.get(code.key)
        if rules is None:
            rules = self.chains[code.key] = [None] * len(code.rules)
        found = rules[i]
        if found is None:
            found = rules[i] = self.read_rule(code, i)
        return found

    def read_rule(self, code: ChainCode, i: int) -> tuple[Facts, bool, str, int]:
        """`rule`'s answer, not kept (a short chain's rules are read once a node: _CHAINS keeps what they say)."""
        rule = code.rules[i]
        target = _TARGETS.get(rule.text)
        tokens: list[str] | None = None  # (read once for the target and the facts: a new rule needs both)
        if target is None:
            shape = rule.shape
            token = ""
            if shape and shape.target_index >= 0:
                tokens = fast_tokens(rule.text)
                token = tokens[shape.target_index]
            target = code.table_chains.get(token) or _TARGET_NAMES.setdefault(token, token)
            if len(_TARGETS) >= FACTS_LIMIT:
                _TARGETS.clear()
                _TARGET_NAMES.clear()
            _TARGETS[rule.text] = target
        is_chain = target in code.table_chains and target not in BUILTIN_TARGETS
        if tokens is None:  # (a rule read before, here or on another node: its facts are kept by its text)
            found = known_facts(self.version, code.table, is_chain).get(rule.text)
            if found is not None:
                return found, is_chain, target, rule.line
        return rule_facts(self, code, i, is_chain, tokens), is_chain, target, rule.line


def _node(tracer: Any) -> _Node:
    found = getattr(tracer, "_footprint_node", None)
    if found is None:
        found = _Node(tracer)
        tracer._footprint_node = found
    return found


def _bits(spec: Spec, addrs: Sequence[int]) -> str:
    """How the -s/-d test `spec` answers each address: "1" matches, "0" does not."""
    _src, negated, nets = spec
    if len(nets) == 1:
        net, mask = nets[0]
        # (C-level: a 0 or 1 byte per address, made "0" or "1" — "1" or "0" when negated — by translate)
        return bytes(map(net.__eq__, map(mask.__and__, addrs))).translate(_NOT if negated else _YES).decode()
    return "".join(["1" if any(a & m == n for n, m in nets) != negated else "0" for a in addrs])


_YES = bytes.maketrans(b"\x00\x01", b"01")
_NOT = bytes.maketrans(b"\x00\x01", b"10")


class _Unsupported(Exception):
    """The traces read something the key cannot hold: no footprint."""


class _Context:
    """The chains every question meets before kube-proxy's dispatch (the hooks', the CNI's, the host
    firewall's), read once per node: every rule of them, as the key holds them, and the long indexed chains
    (KUBE-SERVICES, KUBE-NODEPORTS) they lead to, which each question reads only where its index says."""

    def __init__(self, node: _Node) -> None:
        tracer = node.tracer
        self.chains: set[tuple[str, str]] = set()
        self.dispatch: list[tuple[str, str]] = []
        self.specs: list[Spec] = []
        self.lines: list[int] = []
        self.targets: list[tuple[int | None, int | None]] = []
        self.risky: list[tuple[Facts, tuple[int, ...]]] = []
        self.rules_read: list[tuple[tuple[str, str], int, tuple[tuple[int, bool], ...]]] = []  # (footprint_loose)
        self._reads: ContextReads | None = None
        self._src_answers: dict[tuple[int, ...], list[str | None]] = {}  # (see answers)
        spec_ids: dict[Spec, int] = {}
        text: list[str] = []
        roots = [(t, c) for t in TABLES for c in BUILTIN_CHAINS[t]]
        if tracer.entry == "kube-proxy":
            from iptrace.iptables.walk import FRAGMENT_FILTER_CHAINS, FRAGMENT_NAT_CHAIN

            roots += [("nat", FRAGMENT_NAT_CHAIN), *(("filter", c) for c in FRAGMENT_FILTER_CHAINS)]
        todo = list(reversed(roots))
        while todo:
            key = todo.pop()
            if key in self.chains or key in self.dispatch:
                continue
            code = tracer._code(*key)
            # A chain that files rules by destination (kube-proxy's KUBE-SERVICES, KUBE-NODEPORTS, … in any
            # order) is read per question, for the rules that question can meet.
            if code is not None and (code.index is not None or any(
                    f.key is not None or f.host is not None for f, *_rest in node.items(code))):
                self.dispatch.append(key)
                continue
            self.chains.add(key)
            if code is None:
                text.append(f"chain {key[0]} {key[1]} absent")
                continue
            text.append(f"chain {key[0]} {key[1]} {code.chain.policy} {key in tracer._dash_policy} "
                        f"{len(code.rules)}")
            jumps = []
            for f, is_chain, target, line in node.items(code):
                ids = tuple(spec_ids.setdefault(spec, len(spec_ids)) for spec in f.specs)
                text.append(f"{f.abstract} #{ids}")
                self.lines.append(line)
                self.rules_read.append((key, line, tuple(zip(ids, [spec[0] for spec in f.specs], strict=True))))
                if is_chain:
                    jumps.append((key[0], target))
                if f.kind == KIND_DNAT and f.nat_to is not None:
                    self.targets.append(f.nat_to)
                if f.kind == KIND_OPAQUE or f.reads or f.set_reads:
                    self.risky.append((f, ids))
            todo.extend(reversed(jumps))
        self.specs = list(spec_ids)
        self.digest = hashlib.blake2b("\n".join(text).encode(), digest_size=32).hexdigest()

    def answers(self, q: _Question) -> list[str]:
        """`q.bits` of each of `specs`: its -s tests' answers kept per node by the question's sources (the same few
        for every Service port), its -d tests' worked out (they answer for the port's own destinations)."""
        src = self._src_answers.get(q.src_key)
        if src is None:
            src = self._src_answers[q.src_key] = [_bits(spec, q.src_key) if spec[0] else None for spec in self.specs]
        dst = q.dst_list
        return [_bits(spec, dst) if found is None else found for found, spec in zip(src, self.specs, strict=True)]

    def reads(self) -> ContextReads:
        if self._reads is None:
            self._reads = ContextReads(self.rules_read)
        return self._reads


class _Question:
    """The addresses, ports and protocols the traces can present to a rule, and how the key names them."""

    def __init__(self, node: _Node, calls: Sequence[tuple[str | None, Packet]]) -> None:
        self.node = node
        self.ctx = node.tracer.ctx
        self.sources: list[int] = []
        self.dsts: set[int] = set()
        self.ports: set[int] = set()
        self.protos: set[int] = set()
        self.addrs: list[tuple[int, int]] = []  # (each call's source, destination) as numbers, for the header
        numbers = _ADDRESS_INTS
        if len(numbers) >= FACTS_LIMIT or len(_PROTO_NUMBERS) >= 256:
            numbers.clear()
            _PROTO_NUMBERS.clear()
        for _chain, p in calls:
            src = numbers.get(p.src)
            if src is None:
                src = numbers[p.src] = ip_int(p.src)[1]
            dst = numbers.get(p.dst)
            if dst is None:
                dst = numbers[p.dst] = ip_int(p.dst)[1]
            self.addrs.append((src, dst))
            if src not in self.sources:
                self.sources.append(src)
            self.dsts.add(dst)
            self.ports.add(p.dport)
            proto = _PROTO_NUMBERS.get(p.proto)
            if proto is None:
                proto = _PROTO_NUMBERS[p.proto] = p.proto_number
            self.protos.add(proto)
        self.calls = calls
        self.src_key = tuple(self.sources)
        self.narrowed = False  # a rule was left out for want of a destination, port or protocol
        self.dst_list: tuple[int, ...] = ()
        self.dst_bits: dict[Spec, str] = {}
        self.roles: dict[int, str | None] = {}
        self.named: set[int] = set()  # (the destinations that are the node's own addresses, named by role)
        self.abstracts = False

    def add_target(self, nat_to: tuple[int | None, int | None]) -> bool:
        """Widen the question by a DNAT target; True when that may change what was left out already."""
        addr, port = nat_to
        grew = False
        if addr is not None and addr not in self.dsts:
            self.dsts.add(addr)
            grew = True
        if port is not None and port not in self.ports:
            self.ports.add(port)
            grew = True
        return grew and self.narrowed

    def can_match(self, f: Facts) -> bool:
        if f.never:
            return False
        key = f.key
        if key is not None:
            if key[0] not in self.protos or key[1] not in self.ports or (key[2] is not None
                                                                          and key[2] not in self.dsts):
                self.narrowed = True
                return False
        elif f.host is not None and f.host not in self.dsts:
            self.narrowed = True
            return False
        for spec in f.specs:
            if spec[0]:
                if not _any_passes(spec, self.sources):
                    return False
            elif not _any_passes(spec, self.dsts):
                self.narrowed = True
                return False
        return True

    def freeze(self) -> None:
        """Fix the roles and the order the key lists the destinations in (tests answer per address, in this
        order)."""
        # (each address's role in the key, None when written out: a node address's, or a source's not a destination)
        dsts = self.dsts
        roles: dict[int, str | None] = dict.fromkeys(dsts)
        for i, a in enumerate(self.sources):
            if a not in dsts:
                roles[a] = f"s{i}"
        node_roles = self.node.node_roles
        common = node_roles.keys() & roles.keys()
        for a in common:
            roles[a] = node_roles[a]
        self.roles = roles
        self.abstracts = bool(common) or len(roles) > len(dsts)
        named = self.named = common & dsts
        self.dst_list = tuple(sorted(dsts - named) + sorted(named, key=node_roles.__getitem__) if named
                              else sorted(dsts))
        self.dst_bits = {}

    def bits(self, spec: Spec) -> str:
        if spec[0]:
            return self.node.src_bits(spec, self.src_key)
        found = self.dst_bits.get(spec)
        if found is None:
            found = self.dst_bits[spec] = _bits(spec, self.dst_list)
        return found

    def entry(self, f: Facts) -> str:
        return f"{f.abstract} | {' '.join(self.bits(spec) for spec in f.specs)}" if f.specs else f.abstract

    def header(self) -> str:
        node = self.node
        out = [node.head]
        roles = self.roles
        for (chain, p), (src_addr, dst_addr) in zip(self.calls, self.addrs, strict=True):
            src = roles[src_addr] or p.src
            dst = roles[dst_addr] or p.dst
            out.append(f"call {chain or '-'} {src} {dst} {p.dport} {p.sport} {p.proto} {p.in_interface}")
        out += map(self.addr_line, self.src_key)
        dsts = self.dst_list
        # (a port's destinations are mostly its endpoints, none of the node's own, each with its line kept: those
        # lines at C level when every one is)
        found = list(map(node.foreign_lines.get, dsts)) if not self.named and node.local.isdisjoint(dsts) else None
        if found is None or None in found:
            found = list(map(self.addr_line, dsts))
        out += found
        out.append(f"ports {sorted(self.ports)} protos {sorted(self.protos)}")
        return "\n".join(out)

    def addr_line(self, addr: int) -> str:
        """The header's line of one of the question's addresses."""
        node = self.node
        role = self.roles[addr]
        if role is None and addr not in node.local:
            foreign = node.foreign_lines
            line = foreign.get(addr)
            if line is None:
                line = foreign[addr] = f"addr {addr} {node.kind(addr)}"
            return line
        # (the same addresses, of the same kinds, on every node: their lines are kept, not formatted again)
        line_key = (role or addr, node.kind(addr))
        line = _ADDR_LINES.get(line_key)
        if line is None:
            if len(_ADDR_LINES) >= FACTS_LIMIT:
                _ADDR_LINES.clear()
            line = _ADDR_LINES[line_key] = f"addr {line_key[0]} {line_key[1]}"
        return line

    def check(self, f: Facts) -> None:
        if f.kind == KIND_OPAQUE:
            raise _Unsupported
        if (f.reads or (f.set_reads and self.ctx.ipsets)) and self.abstracts:
            raise _Unsupported


def _any_passes(spec: Spec, addrs: Iterable[int]) -> bool:
    """Whether the -s/-d test `spec` matches one of `addrs` (loops: this runs for most rules of every walk)."""
    _src, negated, nets = spec
    for a in addrs:
        for net, mask in nets:
            if a & mask == net:
                if not negated:
                    return True
                break
        else:
            if negated:
                return True
    return False


def footprint(tracer: Any, calls: Sequence[tuple[str | None, Packet]]) -> Footprint | None:
    """The Footprint of `calls` on `tracer` (see the module's docstring), or None when it cannot be vouched for."""
    node = _node(tracer)
    try:
        context = node.context()
        q = _Question(node, calls)
        for nat_to in context.targets:
            q.add_target(nat_to)
        # The chains traced directly first: their DNAT targets are the question's endpoints.
        roots = [*(("nat", chain) for chain, _p in calls if chain is not None), *context.dispatch]
        for _attempt in range(8):
            walked = walk(node, q, roots, context.chains)
            if walked is not None:
                break
            q.narrowed = False
        else:
            return None
        items, kept_lines, facts_at = walked
        q.freeze()
        # (the walk gave chains' heads and rules' fixed texts as they are, the other rules as Facts: at `facts_at`)
        entries: list[Any] = items
        for n in facts_at:
            item = items[n]
            if item.risky:
                q.check(item)
            entries[n] = q.entry(item)
        for f, ids in context.risky:
            if not f.never and all("1" in q.bits(context.specs[k]) for k in ids):
                q.check(f)
        # (the loose key leaves out the context's answers, the key is the loose key with them)
        loose = hashlib.blake2b("\n".join([q.header(), context.digest, *entries]).encode(), digest_size=32).digest()
        bits = context.answers(q)
    except (_Unsupported, IptraceError):
        return None
    abstracted = tuple(sorted(_text(a, tracer.version) for a, role in q.roles.items() if role is not None))
    key = hashlib.blake2b(loose + " ".join(bits).encode(), digest_size=32).digest()
    lines = (*context.lines, *kept_lines)
    if not bits:
        return _new_footprint(key, lines, abstracted, None, None, None)
    side = Loose(tracer, context.reads(), bits, q.src_key, q.dst_list)
    return _new_footprint(key, lines, abstracted, loose, side.watch, side.agrees)


# Footprint(…) with every field given in order, without the frozen dataclass's __init__ (one a Service port a node).
_new_footprint = positional_new(Footprint, [f.name for f in fields(Footprint)])


@functools.lru_cache(maxsize=4096)  # (the node's own addresses and the clients': the same few every port)
def _text(addr: int, version: int) -> str:
    import ipaddress

    return str(ipaddress.ip_address(addr) if version == 4 else ipaddress.IPv6Address(addr))
