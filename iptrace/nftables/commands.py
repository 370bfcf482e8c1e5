"""What the grammar's statement trees mean: base-chain specs, set declarations, table options and the
transaction's commands (add/create/insert/replace/delete/destroy/flush), applied to the loader's state in input
order. A mixin of TextLoader (loader.py), which provides `fail`, `semantic`, `parse`, `make_rule`, the tables
and the declare helpers.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from lark import Token, Tree

from iptrace.nftables import values
from iptrace.nftables.build import ChainBuilder, SetBuilder, TableBuilder
from iptrace.nftables.model import NamedObject
from iptrace.nftables.reader import NotUnderstood, RuleReader
from iptrace.nftables.tokens import tokenize
from iptrace.nftables.types import key_types
from iptrace.nftables.vocabulary import (
    CHAIN_TYPES,
    HOOKS,
    POLICIES,
    priority_allowed,
    priority_names,
)

_INT_RE = re.compile(r"-?\d+")
_SET_FLAGS = frozenset({"constant", "interval", "timeout", "dynamic"})
_TABLE_FLAGS = frozenset({"dormant", "owner", "persist"})


def tokens(node: Any) -> Iterator[Token]:
    """The tokens under `node`, in input order."""
    if isinstance(node, Token):
        yield node
        return
    for child in node.children:
        yield from tokens(child)


def unquoted(tok: Token) -> str:
    return values.unquote(str(tok))


class CommandMixin:
    # Provided by TextLoader.
    source: str
    tables: dict[tuple[str, str], TableBuilder]
    commands: int
    fail: Any
    semantic: Any
    parse: Any
    make_rule: Any
    table_for: Any
    declare_chain: Any
    declare_set: Any
    line_text: Any

    # -- declarations ------------------------------------------------------------------------------------
    def chain_option(self, t: TableBuilder, c: ChainBuilder, node: Tree, line_no: int, col: int) -> None:
        kids = node.children
        if node.data == "policy":
            policy = str(kids[0])
            if policy not in POLICIES:
                self.semantic(f"policy {policy!r}; expected accept or drop", line_no, col + kids[0].start_pos + 1)
                return
            c.policy = policy
        elif node.data == "comment":
            c.comment = unquoted(kids[0])
        elif node.data == "devices":
            c.devices = tuple(values.unquote(str(tok)) for tok in tokens(kids[0]) if tok.type != "COMMA")
        elif node.data == "hook":
            chain_type, hook = str(kids[0]), str(kids[1])
            if chain_type not in CHAIN_TYPES:
                self.semantic(f"chain type {chain_type!r}; expected {', '.join(CHAIN_TYPES)}", line_no,
                              col + kids[0].start_pos + 1)
                return
            if hook not in HOOKS.get(t.family, ()):
                self.semantic(f"hook {hook!r} does not exist in family {t.family}; expected "
                              f"{', '.join(HOOKS.get(t.family, ()))}", line_no, col + kids[1].start_pos + 1)
                return
            rest = kids[2:]
            devices: tuple[str, ...] = ()
            if rest and rest[0].data == "device":
                devices = tuple(values.unquote(str(tok)) for tok in tokens(rest[0]) if tok.type not in ("COMMA",))
                rest = rest[1:]
            priority = self.priority(rest[0], t.family, hook, line_no, col)
            if priority is None:
                return
            c.type, c.hook, c.priority = chain_type, hook, priority
            if devices:
                c.devices = devices

    def priority(self, node: Tree, family: str, hook: str, line_no: int, col: int) -> int | None:
        """A base chain's priority as a number: `dstnat - 10` → -110 (nft's named priorities, per family/hook)."""
        toks = list(tokens(node))
        base = str(toks[0])
        if _INT_RE.fullmatch(base):
            value = int(base)
        else:
            known = dict(priority_names(family))
            if base not in known or not priority_allowed(base, family, hook):
                allowed = [n for n, _ in priority_names(family) if priority_allowed(n, family, hook)]
                self.semantic(f"priority {base!r} is not valid on hook {hook} of family {family}; expected a "
                              f"number{' or ' + ', '.join(allowed) if allowed else ''}", line_no,
                              col + toks[0].start_pos + 1)
                return None
            value = known[base]
        if len(toks) == 3:
            if not toks[2].isdigit():
                self.semantic(f"priority offset {str(toks[2])!r}; expected a number", line_no,
                              col + toks[2].start_pos + 1)
                return None
            value += int(toks[2]) if str(toks[1]) == "+" else -int(toks[2])
        return value

    def set_option(self, t: TableBuilder, s: SetBuilder, node: Tree, line_no: int, col: int) -> None:
        kids = node.children
        where = col + (kids[0].start_pos if kids and isinstance(kids[0], Token) else 0) + 1
        if node.data == "type":
            words = [str(k) for k in kids]
            key, data = (words[:words.index(":")], words[words.index(":") + 1:]) if ":" in words else (words, None)
            if data and data[0] == "interval":  # `: interval ipv4_addr`: data of an interval map
                data = data[1:]
            for part in (key, data or ["x"]):
                if part[1::2] != ["."] * (len(part) // 2) or len(part) % 2 == 0:
                    self.semantic(f"set type {' '.join(words)!r}; expected datatypes joined by ' . ' "
                                  "(e.g. ipv4_addr . inet_proto . inet_service)", line_no, where)
                    return
            s.key_type = tuple(key[0::2])
            s.data_type = tuple(data[0::2]) if data is not None else None
        elif node.data == "typeof":
            words = [str(k) for k in kids]
            split = words.index(":") if ":" in words else len(words)
            s.typeof = " ".join(words)
            key = self.typeof_types(words[:split], t.family, line_no, where)
            if key is None:
                return
            s.key_type = key
            if split < len(words):
                rest = words[split + 1:]
                data = ("verdict",) if rest == ["verdict"] else self.typeof_types(rest, t.family, line_no, where)
                if data is None:
                    return
                s.data_type = data
        elif node.data == "set_flags":
            names = [str(k) for k in kids[0].children if k.type != "COMMA"]
            bad = [n for n in names if n not in _SET_FLAGS]
            if bad:
                self.semantic(f"set flag {bad[0]!r}; expected {', '.join(sorted(_SET_FLAGS))}", line_no, where)
                return
            s.flags = tuple(sorted(set(s.flags) | set(names)))
        elif node.data == "comment":
            s.comment = unquoted(kids[0])
        elif node.data == "option":
            self.set_keyword(s, [str(k) for k in kids], line_no, where)
        if s.kind == "map" and s.data_type is None and node.data in ("type", "typeof"):
            self.semantic(f"map {s.name!r} has no data type; expected 'type KEY : DATA'", line_no, where)

    def set_keyword(self, s: SetBuilder, words: list[str], line_no: int, where: int) -> None:
        name, arg = words[0], (words[1] if len(words) > 1 else None)
        try:
            if name == "timeout" and arg is not None:
                s.timeout_ms = values.duration_ms(arg)
            elif name == "gc-interval" and arg is not None:
                s.gc_interval_ms = values.duration_ms(arg)
            elif name == "size" and arg is not None:
                s.size = values.integer(arg)
            elif name == "policy" and arg in ("performance", "memory"):
                s.policy = arg
            elif name == "counter" and arg is None:
                s.counter = True
            elif name == "auto-merge" and arg is None:
                s.auto_merge = True
            else:
                raise ValueError(f"{' '.join(words)!r}; expected timeout, gc-interval, size, policy, counter, "
                                 "auto-merge, flags, elements or comment")
        except ValueError as exc:
            self.semantic(str(exc), line_no, where)

    def typeof_types(self, words: list[str], family: str, line_no: int, where: int) -> tuple[str, ...] | None:
        text = " ".join(words)
        reader = RuleReader(tokenize(text, masked=False)[0], family, error=lambda why, c: ValueError(why))
        try:
            expr = reader.read_expression()
        except NotUnderstood:
            expr = None
        if expr is None or reader.pos != len(reader.toks):
            self.semantic(f"typeof {text!r}: iptrace does not know these expressions' types", line_no, where)
            return None
        return key_types(expr, family)

    def table_option(self, t: TableBuilder, node: Tree) -> None:
        if node.data == "comment":
            t.comment = unquoted(node.children[0])
        elif node.data == "table_flags":
            names = [str(k) for k in node.children[0].children if k.type != "COMMA"]
            t.flags = tuple(sorted(set(t.flags) | {n for n in names if n in _TABLE_FLAGS}))

    # -- commands ----------------------------------------------------------------------------------------
    def family_and_names(self, kids: list[Any]) -> tuple[str, list[str]]:
        family = "ip"
        names: list[str] = []
        for k in kids:
            if isinstance(k, Tree) and k.data == "family":
                family = str(k.children[0])
            elif isinstance(k, Token) and k.type in ("WORD", "STRING"):
                names.append(values.unquote(str(k)))
        return family, names

    def command(self, text: str, line_no: int, col: int, handle: int | None) -> None:
        tree = self.parse(text, "top_line", line_no, col)
        if tree is None:
            return
        node = tree.children[0]
        if node.data == "table_header":
            self.semantic("a table header without its block; expected 'table FAMILY NAME {' … '}'", line_no, col + 1)
            return
        self.commands += 1
        kids = node.children
        verb = str(kids[0].children[0])
        kind = node.data[:-4]
        family, names = self.family_and_names(kids[1:])
        where = col + 1
        if kind == "ruleset":
            if verb == "flush":
                for key in [k for k in self.tables if node.children[1:] == [] or k[0] == family]:
                    del self.tables[key]
            return
        t = self.table_for(family, names[0], line_no)
        bodies = [k for k in kids if isinstance(k, Tree) and k.data.endswith("_body")]
        if kind == "table":
            self.table_command(verb, t, bodies, line_no, where)
        elif kind == "chain":
            self.chain_command(verb, t, names[1], bodies, line_no, where)
        elif kind == "set":
            setkind = str(kids[1].children[0])
            self.set_command(verb, t, names[1], setkind, bodies, line_no, where, text)
        elif kind == "element":
            s = t.set(names[1], "set", line_no)
            name_end = max(tok.end_pos for tok in kids if isinstance(tok, Token))
            brace = text.index("{", name_end)
            op = verb if verb in ("delete", "destroy") else "add"
            s.ops.append((op, text[brace + 1:text.rindex("}")], line_no, col + brace + 2))
        elif kind == "rule":
            self.rule_command(verb, t, names[1], node, text, line_no, col, handle)
        elif kind == "object":
            objkind = str(kids[1].children[0])
            if verb in ("add", "create"):
                body = tuple(" ".join(str(x) for x in tokens(b)) for b in bodies)
                t.objects.append(NamedObject(objkind, names[1], body, line_no))
            elif verb in ("delete", "destroy"):
                t.objects = [o for o in t.objects if (o.kind, o.name) != (objkind, names[1])]

    def table_command(self, verb: str, t: TableBuilder, bodies: list[Tree], line_no: int, where: int) -> None:
        if verb in ("add", "create"):
            if verb == "create" and t.declared:
                self.semantic(f"create table {t.family} {t.name}: it exists already (line {t.line})", line_no, where)
            if not t.declared:
                t.declared, t.line = True, line_no
            for body in bodies:
                for option in body.children:
                    self.table_option(t, option)
        elif verb in ("delete", "destroy"):
            if not t.declared and verb == "delete":
                self.semantic(f"delete table {t.family} {t.name}, which does not exist", line_no, where)
            self.tables.pop((t.family, t.name), None)
        elif verb == "flush":
            for c in t.builders():
                c.rules.clear()

    def chain_command(self, verb: str, t: TableBuilder, name: str, bodies: list[Tree], line_no: int,
                      where: int) -> None:
        if verb in ("add", "create"):
            c = self.declare_chain(t, name, line_no, create=verb == "create")
            for body in bodies:
                for option in body.children:
                    self.chain_option(t, c, option, line_no, where - 1)
            return
        c = t.builder(name)
        if c is None:
            if verb != "destroy":
                self.semantic(f"{verb} chain {name!r}, which table {t.family} {t.name} does not have", line_no, where)
            return
        if verb == "flush":
            c.rules.clear()
        else:
            del t.chains[name]

    def set_command(self, verb: str, t: TableBuilder, name: str, kind: str, bodies: list[Tree], line_no: int,
                    where: int, text: str) -> None:
        if verb in ("add", "create"):
            existed = name in t.sets and t.sets[name].declared
            if verb == "create" and existed:
                self.semantic(f"create {kind} {name!r}: it exists already", line_no, where)
            s = self.declare_set(t, name, kind, line_no)
            if not existed:
                for body in bodies:
                    for option in body.children:
                        if option.data == "elements":
                            self.declared_elements(s, option, text, line_no, where - 1)
                        else:
                            self.set_option(t, s, option, line_no, where - 1)
            return
        s = t.sets.get(name)
        if s is None:
            if verb != "destroy":
                self.semantic(f"{verb} {kind} {name!r}, which table {t.family} {t.name} does not have", line_no,
                              where)
            return
        if verb == "flush":
            s.ops.append(("flush", "", line_no, 0))
        else:
            del t.sets[name]

    def declared_elements(self, s: SetBuilder, node: Tree, text: str, line_no: int, col: int) -> None:
        """`elements = { … }` inside `add set|map … { … }`: added as `add element` adds them (the text between
        the braces, read with the set's types once it is declared)."""
        tokens = list(node.scan_values(lambda v: isinstance(v, Token)))
        if not tokens:
            return  # (`elements = { }`)
        brace = text.rindex("{", 0, tokens[0].start_pos)
        s.ops.append(("add", text[brace + 1:text.index("}", tokens[-1].end_pos)], line_no, col + brace + 2))

    def rule_command(self, verb: str, t: TableBuilder, chain: str, node: Tree, text: str, line_no: int, col: int,
                     handle: int | None) -> None:
        kids = node.children
        position = next((k for k in kids if isinstance(k, Tree) and k.data == "position"), None)
        body = next((k for k in kids if isinstance(k, Tree) and k.data == "rule"), None)
        c = t.chain(chain, line_no)
        where = col + 1
        ref_kind = ref = None
        if position is not None:
            ref_kind = str(position.children[0].children[0])
            word = position.children[1]
            if not str(word).isdigit():
                self.semantic(f"{ref_kind} {str(word)!r}; expected a number", line_no, col + word.start_pos + 1)
                return
            ref = int(str(word))
        if verb in ("delete", "destroy"):
            if ref_kind != "handle" or body is not None:
                self.semantic("delete rule needs 'handle N' and no rule text", line_no, where)
                return
            index = self.rule_index(c, ref, line_no, where, verb == "delete")
            if index is not None:
                del c.rules[index]
            return
        if body is None:
            self.semantic(f"{verb} rule without a rule; expected statements after the chain name", line_no, where)
            return
        start = next(tokens(body)).start_pos
        rule = self.make_rule(t, text[start:], line_no, col + start, handle)
        if rule is None:
            return
        if verb == "replace":
            index = self.rule_index(c, ref, line_no, where, True) if ref_kind == "handle" else None
            if index is None:
                if ref_kind != "handle":
                    self.semantic("replace rule needs 'handle N'", line_no, where)
                return
            c.rules[index] = rule
            return
        if ref is None:
            c.rules.insert(0, rule) if verb == "insert" else c.rules.append(rule)
            return
        if ref_kind == "index":
            if ref > len(c.rules):
                self.semantic(f"index {ref}: chain {chain!r} has {len(c.rules)} rules", line_no, where)
                return
            c.rules.insert(ref if verb == "insert" else ref + 1, rule)
            return
        index = self.rule_index(c, ref, line_no, where, True)
        if index is not None:
            c.rules.insert(index if verb == "insert" else index + 1, rule)

    def rule_index(self, c: ChainBuilder, handle: int | None, line_no: int, where: int, required: bool) -> int | None:
        for i, rule in enumerate(c.rules):
            if rule.handle == handle:
                return i
        if required:
            self.semantic(f"chain {c.name!r} has no rule with handle {handle} (handles come from `nft -a` "
                          "listings)", line_no, where)
        return None
