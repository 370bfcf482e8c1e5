"""Text → Ruleset for `nft list ruleset` (and `nft list table …`) listings and kube-proxy's transaction text.

Speed matters (kube-proxy's 5,000-Service listing is ~300,000 lines), so the loader walks physical lines and
reads the shapes nft prints with str methods: `chain NAME {`, `}`, rules, element lists. Every rule is keyed by
its shape (shapes.py): lark checks one rule of each new shape, the reader makes it a template, and every other
rule of that shape is a str split and one generated constructor call; a chain like the chains before it
(kube-proxy's endpoint chains) is matched whole by one regex (blocks.py). Element lists are split, never parsed
one element at a time. Everything else — base-chain specs, set declarations, transaction commands, statements
several to a line — goes through the grammar, statement by statement, which also gives exact error columns.
"""

from __future__ import annotations

import re
from itertools import islice
from typing import Any

from lark import Token, Tree

from iptrace.errors import DumpSemanticError, ParseError
from iptrace.nftables import grammar
from iptrace.nftables.blocks import ChainShapes
from iptrace.nftables.build import ChainBuilder, Finisher, ObjectBuilder, SetBuilder, TableBuilder
from iptrace.nftables.commands import CommandMixin
from iptrace.nftables.model import LoadWarning, Rule, Ruleset
from iptrace.nftables.reader import RuleReader
from iptrace.nftables.shapes import compile_template, fast_tokens, keywords, learn, references, shape_key
from iptrace.nftables.source import SourceText
from iptrace.nftables.tokens import offset_position, tokenize, tokenize_fast

TOP, TABLE, CHAIN, SET, OBJECT = range(5)
_CTX_NAMES = {TABLE: "table", CHAIN: "chain", SET: "set", OBJECT: "object"}
_FAMILY = r"(?:(ip|ip6|inet|arp|bridge|netdev) )?"
_NAME = r'([^\s"{};#]+)'
_ADD_RULE_RE = re.compile(rf"(add|insert) rule {_FAMILY}{_NAME} {_NAME} ")
_ELEMENT_RE = re.compile(rf"(add|create|delete|destroy) element {_FAMILY}{_NAME} {_NAME} \{{")
_ADD_CHAIN_RE = re.compile(rf"(add|create) chain {_FAMILY}{_NAME} {_NAME}")
_TABLE_HEADER_RE = re.compile(rf"table {_FAMILY}{_NAME}")
_BLOCK_HEADER_RE = re.compile(r'(chain|set|map|flowtable|counter|quota|limit|secmark|synproxy|ct [a-z]+) ([^\s"{};#]+)')
_COMMENT_RE = re.compile(r'"(?:\\.|[^"\\])*"|#[ \t]*xt_\w+|#.*')
_HANDLE_RE = re.compile(r"#\s*handle\s+(\d+)\s*$")
_SPLIT_RE = re.compile(r'"(?:\\.|[^"\\])*"|[{};]|[^{};"]+|"')
_SPACES_RE = re.compile(r'"(?:\\.|[^"\\])*"|\s+')
_CHAIN_OPTIONS = ("type ", "policy ", "comment ", "devices")
# The same, with any blank after the word (`type\tnat hook …` is a chain option too, as nft reads it).
_CHAIN_OPTION_RE = re.compile(r"(?:type|policy|comment)\s|devices")


def _squeeze(text: str) -> str:
    """Spacing normalised (runs of blanks, tabs and newlines become one space) outside quoted strings."""
    return _SPACES_RE.sub(lambda m: m.group() if m.group()[0] == '"' else " ", text).strip()


def _depth(text: str) -> int:
    if '"' in text:
        text = _COMMENT_RE.sub("", text)
    return text.count("{") - text.count("}")


class TextLoader(CommandMixin):
    def __init__(self, text: str, source: str, lenient: bool) -> None:
        self.text = text
        self.source = source
        self.lenient = lenient
        self.lines = text.split("\n")
        self.source_text = SourceText(text)  # the rules read line by line keep it instead of their own text
        self.tables: dict[tuple[str, str], TableBuilder] = {}
        self.stack: list[tuple[int, Any, int]] = []  # (context, builder, line it opened at)
        self.warnings: list[LoadWarning] = []
        self.skipped: list[LoadWarning] = []
        self.trees: dict[tuple[str, str], Tree] = {}
        # (table family, "set" or "map", declaration line) -> what the line sets: reading a line checks it
        # against the set's kind (a map's `type` needs a data type) and its table's family (`typeof`).
        self.set_patches: dict[tuple[str, str, str], tuple[tuple[str, Any], ...]] = {}
        self.known = keywords()
        self.pending: list[str] | None = None
        self.pending_at = (0, 0, None)  # line, column, handle of the statement being continued
        self.pending_depth = 0
        self.commands = 0
        self.blocks = 0

    # -- errors ------------------------------------------------------------------------------------------
    def fail(self, exc: ParseError) -> None:
        if not self.lenient:
            exc.skippable = True
            raise exc
        self.skipped.append(LoadWarning(exc.line or None, exc.reason))

    def line_text(self, line: int) -> str:
        return self.lines[line - 1].rstrip("\r") if 0 < line <= len(self.lines) else ""

    def semantic(self, why: str, line: int, column: int = 1) -> None:
        self.fail(DumpSemanticError(why, source=self.source, line=line, column=column, text=self.line_text(line)))

    def parse(self, text: str, start: str, line: int, column0: int) -> Tree | None:
        """The grammar's tree of one statement. Trees of good statements are kept by text: a listing repeats
        the same declarations (`size 65535`, `flags dynamic,timeout`) thousands of times."""
        key = (start, text)
        tree = self.trees.get(key)
        if tree is not None:
            return tree
        try:
            tree = grammar.parse(text, start, source=self.source, line_no=line, column0=column0,
                                 full_line=self.line_text(line))
        except ParseError as exc:
            self.fail(exc)
            return None
        if start != "rule":
            self.trees[key] = tree
        return tree

    # -- the line loop -----------------------------------------------------------------------------------
    def load(self) -> Ruleset:
        stack = self.stack
        keyword = self.known.get
        ctx, rules, shapes, refs = TOP, None, None, None

        def where() -> tuple[int, Any, Any, Any]:
            if not stack:
                return TOP, None, None, None
            top = stack[-1]
            if top[0] == CHAIN:
                t = stack[-2][1]
                return CHAIN, top[1].rules, t.shapes, t.refs
            return top[0], None, None, None

        pending = False
        opened = None  # the chain the line loop opened last (blocks.py learns from it)
        source_text = self.source_text
        lines = enumerate(self.lines, 1)
        for line_no, raw in lines:
            if pending:
                self.continue_pending(raw, line_no)
                ctx, rules, shapes, refs = where()
                pending = self.pending is not None
                continue
            if not raw:  # the blank line between blocks of a listing
                continue
            s = raw.strip()
            if not s:
                continue
            if ctx == CHAIN:
                # The body of a chain: its lines are read here, one after the other, until its "}" (or a line
                # that needs the general path).
                while True:
                    if s == "}":
                        c = stack.pop()[1]
                        if c is opened:  # opened by the line loop, closed here: maybe a template for others
                            stack[-1][1].chain_shapes.learn(c.name.partition("-")[0], self.lines[c.line - 1],
                                                            self.lines[c.line:line_no], shapes)
                        ctx = TABLE  # a chain block is always inside a table block
                        break
                    if ";" in s or "#" in s or s.startswith(_CHAIN_OPTIONS):
                        break
                    if '"' not in s and "@" not in s and "\t" not in s and "  " not in s and (
                            ":" not in s or (s[-1] != ":" and s.count(": ") == s.count(" : "))):
                        # A rule of a shape seen before (shapes.fast_tokens, inlined): split, one generated call.
                        u = s
                        if "," in u:
                            u = u.replace(",", " , ")
                        if "{" in u or "}" in u:
                            u = u.replace("{", " { ").replace("}", " } ")
                        toks = u.split()
                        shape = shapes.get(tuple(map(keyword, toks)))
                        rule = None
                        if shape is not None:
                            try:
                                rule = shape[0](toks, source_text, line_no, None)  # text: raw.strip()
                            except ValueError:  # a bad value: make_rule says where
                                rule = None
                        if rule is not None:
                            rules.append(rule)
                            if shape[1] is not None:
                                refs.update(shape[1](toks))
                        elif "{" not in s or _depth(s) == 0:
                            rule = self.make_rule(stack[-2][1], s, line_no, raw.find(s[0]), None)
                            if rule is not None:
                                rules.append(rule)
                        else:
                            break
                    elif "{" not in s or _depth(s) == 0:
                        rule = self.make_rule(stack[-2][1], s, line_no, raw.find(s[0]), None)
                        if rule is not None:
                            rules.append(rule)
                    else:
                        break
                    for line_no, raw in lines:  # noqa: B007 — the outer loop goes on from here
                        if raw:
                            s = raw.strip()
                            if s:
                                break
                    else:
                        s = ""
                        break
                if not s or ctx != CHAIN:
                    continue
            elif ctx == TABLE:
                if s == "}":
                    stack.pop()
                    ctx, rules, shapes, refs = where()
                    continue
                if s[:6] == "chain " and s[-2:] == " {" and '"' not in s and " " not in s[6:-2]:
                    t = stack[-1][1]
                    name = s[6:-2]
                    if name not in t.chains:  # open_chain's common case, inlined
                        self.blocks += 1
                        if t.chain_shapes is None:
                            t.chain_shapes = ChainShapes(self.lines, self.text, self.known, source_text, t.refs)
                        # Chains like one before it, read whole (blocks.py) and kept frozen, no builder made
                        # (build.TableBuilder.chains): on after the last one's "}".
                        read, count = t.chain_shapes.read(t.chains, name, line_no)
                        if read:
                            self.blocks += count - 1
                            next(islice(lines, read, read), None)  # (their lines: consumed, not read)
                            continue
                        c = t.chains[name] = ChainBuilder(name, line_no, True)  # (`read` kept none of its rules)
                        stack.append((CHAIN, c, line_no))
                        opened = c
                    else:
                        c = self.open_chain(t, name, line_no, raw.find(s[0]), None)
                    ctx, rules, shapes, refs = CHAIN, c.rules, t.shapes, t.refs
                    continue
                if s[-2:] == " {" and s[:4] in ("set ", "map ") and '"' not in s and " " not in s[4:-2]:
                    self.open(s[:-2], line_no, raw.find(s[0]), None)
                    ctx = SET
                    continue
            elif ctx == SET:
                if s == "}":
                    stack.pop()
                    ctx = TABLE
                    continue
                if ";" not in s and "{" not in s and "#" not in s:  # `type ipv4_addr`, `size 65535`, …
                    self.statement(s, line_no, raw.find(s[0]), None)
                    continue
            elif ";" not in s and '"' not in s[:60]:
                if s.startswith("add rule "):
                    m = _ADD_RULE_RE.match(s)
                    if m is not None and m.group(1) == "add" and not s.startswith(
                            ("position ", "handle ", "index "), m.end()):
                        self.commands += 1
                        t = self.table_for(m.group(2) or "ip", m.group(3), line_no)
                        rule = self.make_rule(t, s[m.end():], line_no, raw.find(s[0]) + m.end(), None)
                        if rule is not None:
                            t.chain(m.group(4), line_no).rules.append(rule)
                        continue
                elif s.startswith("add chain ") and "{" not in s:
                    m = _ADD_CHAIN_RE.fullmatch(s)
                    if m is not None:
                        self.commands += 1
                        self.declare_chain(self.table_for(m.group(2) or "ip", m.group(3), line_no), m.group(4),
                                           line_no, create=m.group(1) == "create")
                        continue
            handle = None
            if "#" in s:
                s, handle = self.strip_comment(s)
            if s:
                self.general(s, line_no, raw.find(s[0]), handle)
                pending = self.pending is not None
            ctx, rules, shapes, refs = where()
        if self.pending is not None:
            line, column, _ = self.pending_at
            self.fail(ParseError("the braces opened here are never closed (the text looks truncated); expected "
                                 "'}'", source=self.source, line=line, column=column + 1,
                                 text=self.line_text(line)))
        if stack:
            ctx, builder, line = stack[-1]
            what = f"{_CTX_NAMES[ctx]} {builder.name}" if ctx != TABLE else f"table {builder.family} {builder.name}"
            self.fail(ParseError(f"{what} opened at line {line} is not closed (the listing looks truncated); "
                                 "expected '}'", source=self.source, line=len(self.lines),
                                 column=len(self.lines[-1]) + 1, text=self.lines[-1]))
        return self.finish()

    def strip_comment(self, s: str) -> tuple[str, int | None]:
        """The line without its `# …` comment (kept: `# xt_…` statements), and the `# handle N` of `nft -a`."""
        handle = None
        for m in _COMMENT_RE.finditer(s):
            tok = m.group()
            if tok[0] != "#" or re.match(r"#[ \t]*xt_", tok):
                continue
            h = _HANDLE_RE.match(tok)
            if h is not None:
                handle = int(h.group(1))
            return s[:m.start()].rstrip(), handle
        return s, handle

    def continue_pending(self, raw: str, line_no: int) -> None:
        assert self.pending is not None
        text = raw
        if "#" in raw:
            text, _ = self.strip_comment(raw)
        self.pending.append(text)
        self.pending_depth += _depth(text)
        if self.pending_depth <= 0:
            joined = "\n".join(self.pending)
            line, column, handle = self.pending_at
            self.pending = None
            self.general(joined, line, column, handle)

    # -- statements --------------------------------------------------------------------------------------
    def general(self, s: str, line_no: int, col: int, handle: int | None) -> None:
        """Split `s` into statements (on ";" and block braces) and hand each to its context."""
        start: int | None = None
        depth = 0
        for m in _SPLIT_RE.finditer(s):
            tok = m.group()
            if tok == "{":
                if depth == 0 and start is not None and self.opens_block(s[start:m.start()].strip()):
                    self.open(s[start:m.start()].strip(), line_no + s.count("\n", 0, start), col + start, handle)
                    start = None
                    continue
                depth += 1
            elif tok == "}" and depth == 0:
                if start is not None:
                    self.statement(s[start:m.start()].strip(), line_no + s.count("\n", 0, start), col + start,
                                   handle)
                    start = None
                self.close(line_no + s.count("\n", 0, m.start()), col + m.start())
                continue
            elif tok == "}":
                depth -= 1
            elif tok == ";" and depth == 0:
                if start is not None:
                    self.statement(s[start:m.start()].strip(), line_no + s.count("\n", 0, start), col + start,
                                   handle)
                start = None
                continue
            if start is None and not tok.isspace():
                start = m.start() + (len(tok) - len(tok.lstrip()))
        if start is None:
            return
        if depth > 0:  # a literal continues on the next lines: `elements = { a,` …
            self.pending = [s[start:]]
            self.pending_at = (line_no + s.count("\n", 0, start), col + start, handle)
            self.pending_depth = depth
            return
        self.statement(s[start:].strip(), line_no + s.count("\n", 0, start), col + start, handle)

    def opens_block(self, header: str) -> bool:
        ctx = self.stack[-1][0] if self.stack else TOP
        if ctx == TOP:
            return header.split(None, 1)[0] == "table"  # (nft reads a tab between words as a blank)
        if ctx == TABLE:
            return _BLOCK_HEADER_RE.fullmatch(header) is not None or header.split(None, 1)[0] in (
                "chain", "set", "map")
        return False

    def open(self, header: str, line_no: int, col: int, handle: int | None) -> None:
        ctx = self.stack[-1][0] if self.stack else TOP
        if ctx == TOP:
            m = _TABLE_HEADER_RE.fullmatch(header)
            if m is None:
                tree = self.parse(header + " {", "top_line", line_no, col)
                if tree is None:
                    self.stack.append((TABLE, TableBuilder("?", "?", line_no, True), line_no))
                    return
                fam, name = self.family_and_names(tree.children[0].children)
                family, table_name = fam, name[0]
            else:
                family, table_name = m.group(1) or "ip", m.group(2)
            self.blocks += 1
            t = self.tables.get((family, table_name))
            if t is not None and t.declared and t.line is not None and not self.commands:
                self.semantic(f"table {family} {table_name} appears twice (first at line {t.line})", line_no,
                              col + 1)
            t = self.table_for(family, table_name, line_no)
            t.declared, t.handle = True, handle
            if t.line is None or t.line > line_no:
                t.line = line_no
            self.stack.append((TABLE, t, line_no))
            return
        t = self.stack[-1][1]
        m = _BLOCK_HEADER_RE.fullmatch(header)
        if m is None:
            tree = self.parse(header + " {", "table_line", line_no, col)
            if tree is None:
                self.stack.append((OBJECT, ObjectBuilder("?", "?", line_no), line_no))  # lenient: skipped
                return
            header_tree = tree.children[0]
            kind = header_tree.data.split("_")[0]
            words = [str(tok) for tok in header_tree.scan_values(lambda v: isinstance(v, Token))]
            name = grammar_name(words[-1])
            kind = words[0] if kind == "object" else kind
            if kind == "set":
                kind = words[0]
        else:
            kind, name = m.group(1), grammar_name(m.group(2))
        if kind == "chain":
            self.open_chain(t, name, line_no, col, handle)
        elif kind in ("set", "map"):
            s = t.sets.get(name)
            if s is not None and s.declared:
                self.semantic(f"{kind} {name!r} declared twice in table {t.family} {t.name} (first at line "
                              f"{s.line})", line_no, col + 1)
            s = t.set(name, kind, line_no)
            s.declared, s.kind, s.line, s.handle = True, kind, line_no, handle
            self.stack.append((SET, s, line_no))
        else:
            self.stack.append((OBJECT, ObjectBuilder(kind, name, line_no), line_no))

    def open_chain(self, t: TableBuilder, name: str, line_no: int, col: int, handle: int | None) -> ChainBuilder:
        c = t.builder(name)
        if c is not None and c.declared:
            self.semantic(f"chain {name!r} declared twice in table {t.family} {t.name} (first at line {c.line})",
                          line_no, col + 1)
        if c is None:  # the common case, inlined
            c = t.chains[name] = ChainBuilder(name, line_no, True, handle)
        else:
            c = self.declare_chain(t, name, line_no)
            c.handle = handle
        self.blocks += 1
        self.stack.append((CHAIN, c, line_no))
        return c

    def close(self, line_no: int, col: int) -> None:
        if not self.stack:
            self.semantic("'}' closes nothing; expected a table, chain, set or map block before it", line_no,
                          col + 1)
            return
        ctx, builder, _ = self.stack.pop()
        if ctx == OBJECT and isinstance(builder, ObjectBuilder) and builder.name != "?":
            self.stack[-1][1].objects.append(builder.freeze())

    def statement(self, text: str, line_no: int, col: int, handle: int | None) -> None:
        if not text:
            return
        ctx = self.stack[-1][0] if self.stack else TOP
        if ctx == CHAIN:
            if _CHAIN_OPTION_RE.match(text):
                tree = self.parse(text, "chain_line", line_no, col)
                if tree is not None:
                    self.chain_option(self.stack[-2][1], self.stack[-1][1], tree.children[0], line_no, col)
                return
            rule = self.make_rule(self.stack[-2][1], text, line_no, col, handle)
            if rule is not None:
                self.stack[-1][1].rules.append(rule)
        elif ctx == SET:
            s = self.stack[-1][1]
            if text.startswith("elements"):
                brace = text.find("{")
                if brace > 0 and "".join(text[:brace].split()) == "elements=" and text.endswith("}"):
                    s.ops.append(("add", text[brace + 1:-1], line_no, col + brace + 2))
                    return
            patch_key = (self.stack[-2][1].family, s.kind, text)
            patch = self.set_patches.get(patch_key)
            if patch is not None:  # a declaration line seen before (`size 65535` of every affinity set)
                for name, value in patch:
                    setattr(s, name, tuple(sorted({*s.flags, *value})) if name == "flags" else value)
                return
            tree = self.parse(text, "set_line", line_no, col)
            if tree is not None:
                # Read it into a blank set; what it changed is this line's patch, for every set that repeats it.
                skipped = len(self.skipped)
                scratch = SetBuilder(s.name, s.kind, s.line, True)
                self.set_option(self.stack[-2][1], scratch, tree.children[0], line_no, col)
                blank = SetBuilder(s.name, s.kind, s.line, True)
                patch = tuple((k, v) for k, v in vars(scratch).items() if getattr(blank, k) != v)
                if len(self.skipped) == skipped:
                    self.set_patches[patch_key] = patch
                for name, value in patch:
                    setattr(s, name, tuple(sorted({*s.flags, *value})) if name == "flags" else value)
        elif ctx == TABLE:
            tree = self.parse(text, "table_line", line_no, col)
            if tree is not None:
                self.table_option(self.stack[-1][1], tree.children[0])
        elif ctx == OBJECT:
            self.stack[-1][1].body.append(_squeeze(text))
        else:
            self.command(text, line_no, col, handle)

    # -- rules -------------------------------------------------------------------------------------------
    def make_rule(self, t: TableBuilder, text: str, line_no: int, col: int, handle: int | None) -> Rule | None:
        """A rule of table `t` from its text (the general path: the line loop inlines the common case)."""
        written = text
        if "  " in text or "\t" in text or "\n" in text:
            text = _squeeze(text)
        toks = fast_tokens(text)
        key: Any
        if toks is not None:
            key, vals = tuple(map(self.known.get, toks)), toks
        elif "#" in text:
            key, vals = "\1" + text, []
        else:
            key, vals = shape_key(text)
        shape = t.shapes.get(key)
        if shape is None:
            mode = "tokens" if toks is not None else "plain" if "#" in text else "mask"
            shape = self.new_shape(t, text, line_no, col, mode=mode, tokens=toks)
            if shape is None and mode == "tokens":  # the grammar splits it otherwise: key it by MASK_RE
                key, vals = shape_key(text)
                shape = t.shapes.get(key) or self.new_shape(t, text, line_no, col, mode="mask")
            if shape is None:
                return None
            t.shapes[key] = shape
        try:
            rule = shape[0](vals, text, line_no, handle)
        except ValueError as exc:
            why = str(exc)
            quoted = re.search(r"'([^']+)'", why)  # the normalisers quote the value they refused
            where = max(written.find(quoted.group(1)) if quoted else -1, 0)
            line, column = offset_position(written, where, line_no, col + 1)  # (a multi-line rule: the value's own)
            self.fail(ParseError(f"{why}; the rule cannot be read", source=self.source, line=line, column=column,
                                 text=self.line_text(line)))
            return None
        if rule is None:  # a masked keyword differs from the shape's (`ip6` where it had `ip6`… or not)
            key = "\1" + text
            shape = t.shapes.get(key) or self.new_shape(t, text, line_no, col, mode="plain")
            if shape is None:
                return None
            t.shapes[key] = shape
            vals = []
            rule = shape[0](vals, text, line_no, handle)
        if shape[1] is not None:
            t.refs.update(shape[1](vals))
        return rule

    def new_shape(self, t: TableBuilder, text: str, line_no: int, col: int, *, mode: str,
                  tokens: list[str] | None = None) -> tuple[Any, Any] | None:
        """Check one rule with the grammar and compile its shape's builder. `mode`: "tokens" (values are the
        tokens that are not vocabulary words, see shapes.fast_tokens), "mask" (MASK_RE's values) or "plain"
        (no values: a one-off rule)."""
        if self.parse(text, "rule", line_no, col) is None:
            return None

        def error(why: str, column0: int) -> ParseError:
            return ParseError(why, source=self.source, line=line_no, column=col + column0 + 1,
                              text=self.line_text(line_no))

        keywords: dict[int, str] = {}
        if mode == "tokens":
            assert tokens is not None
            found = tokenize_fast(text, tokens, self.known)
            if found is None:
                return None
            toks = found
            learn(self.known, tokens)
        else:
            toks, keywords = tokenize(text, masked=mode == "mask")
        reader = RuleReader(toks, t.family, error=error, quoted=mode != "tokens")
        try:
            items, comment = reader.read_rule()
        except ParseError as exc:
            self.fail(exc)
            return None
        fixed, varying = references(items)
        t.refs.update(fixed)
        return compile_template(items, comment, keywords | reader.tails), varying

    # -- objects -----------------------------------------------------------------------------------------
    def table_for(self, family: str, name: str, line_no: int) -> TableBuilder:
        t = self.tables.get((family, name))
        if t is None:
            t = self.tables[(family, name)] = TableBuilder(family, name, None, False, first_use=line_no)
        return t

    def declare_chain(self, t: TableBuilder, name: str, line_no: int, *, create: bool = False) -> ChainBuilder:
        c = t.chain(name, line_no)
        if c.declared and create:
            self.semantic(f"create chain {name!r}: table {t.family} {t.name} already has it (declared at line "
                          f"{c.line}); 'add chain' would keep it", line_no)
        if not c.declared:
            c.declared, c.line = True, line_no
        return c

    def declare_set(self, t: TableBuilder, name: str, kind: str, line_no: int) -> SetBuilder:
        s = t.set(name, kind, line_no)
        if not s.declared:
            s.declared, s.kind, s.line = True, kind, line_no
        return s

    # -- the end -----------------------------------------------------------------------------------------
    def finish(self) -> Ruleset:
        finisher = Finisher(self.source, self.fail, self.warnings)
        tables = []
        for t in self.tables.values():
            if t.name == "?":
                continue
            table = finisher.table(t, self.line_text)
            if table is not None:
                tables.append(table)
        if not tables and not self.skipped:
            first = next((i for i, line in enumerate(self.lines, 1) if line.strip()), 1)
            raise ParseError("no nftables table found; expected `nft list ruleset` output (table ip kube-proxy { … }) "
                             "or kube-proxy's transaction text (add table ip kube-proxy …)", source=self.source,
                             line=first, column=1, text=self.line_text(first))
        fmt = "nft-transaction" if self.commands and not self.blocks else "nft-list"
        return Ruleset(tuple(tables), self.source, fmt, tuple(self.warnings), tuple(self.skipped), self.text,
                       self.source_text)


def grammar_name(text: str) -> str:
    """A name as written: quoted names lose their quotes."""
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text


def load_text(text: str, *, source: str, lenient: bool) -> Ruleset:
    return TextLoader(text, source, lenient).load()
