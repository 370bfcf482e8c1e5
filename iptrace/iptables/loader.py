"""Text → Ruleset. Reads iptables-save / ip6tables-save output (nft and legacy backends, with or without
counters) and `iptables -S` listings.

Speed matters (a 160,000-rule dump should load in about a second), so lines are classified by their first
character and every rule is keyed by its *shape* — the rule text with each value replaced by `_`. kube-proxy
dumps repeat a few hundred shapes; one line of each new shape is split into the grammar's words (rule_words,
as lark would; lark itself parses a line that is not plain, which validates its syntax and gives exact error
columns), the option table reads it once, and every other rule of that shape only stores its text. Lines
that do not look like anything known go through lark too, for a precise error.
"""

from __future__ import annotations

import gc
import re
from itertools import repeat
from pathlib import Path
from sys import intern
from types import ModuleType

from iptrace.dumpfile import read_dump
from iptrace.errors import DumpSemanticError, InputError, ParseError
from iptrace.iptables import blocks, listing, restore
from iptrace.iptables.model import BUILTIN_CHAINS, TABLES, TOKEN_RE, Chain, LoadWarning, Rule, Ruleset, RuleShape, Table
from iptrace.iptables.options import (
    BUILTIN_TARGETS,
)
from iptrace.iptables.restore import OpenTable
from iptrace.iptables.rule_shapes import LoadMemo, build_shape
from iptrace.iptables.rule_words import rule_args
from iptrace.records import positional_new

# Values become "_"; option words, "!" and the module name after -m stay, so one key means one layout.
# The pattern starts with the space before a value (replaced by " _") rather than a look-behind for it:
# the regex engine then skips ahead to each space instead of trying every position (a third faster). Its
# repeats are possessive (nothing after one could match a character it gives back, so they match as greedy
# ones do) and the plain value, the common one, is tried first (the two start with different characters):
# ~3% fewer instructions. Each tests its first character before the look-behinds for a module name (after
# "-m " or "--match "), which then take that character in: an option word fails at once (~3% fewer again;
# tests/test_value_patterns.py checks the keys against the plain pattern's).
_SHAPE_KEY_RE = re.compile(r' (?:[^-!" ](?<!-m .)(?<!--match .)[^ ]*+'
                           r'|"(?<!-m ")(?<!--match ")[^"\\]*+(?:\\.[^"\\]*+)*+")')
# Chain(name, policy, rules, counters, line) without the frozen dataclass's __init__ (a dump has ~10^5 chains).
_new_chain = positional_new(Chain, ("name", "policy", "rules", "counters", "line"))
_TABLE_LINE_RE = re.compile(r"^[ \t]*\*", re.MULTILINE)
_CHAIN_RE = re.compile(r":(\S+)\s+(\S+)(?:\s+\[(\d+):(\d+)\])?\s*")
_COUNTED_RULE_RE = re.compile(r"\[(\d+):(\d+)\]\s+-A\s")
_IPV6_HINT_RE = re.compile(r" -[sd] !? ?[0-9a-fA-F]*:[0-9a-fA-F:]*[/ ]|icmp6|ipv6-icmp|icmpv6")


def _grammar() -> ModuleType:
    """iptrace.iptables.grammar, imported (and lark with it) only when a line needs it: a new rule shape
    rule_words cannot read, a command, a line no fast path knows."""
    from iptrace.iptables import grammar

    return grammar


class _Loader:
    def __init__(self, source: str, lenient: bool, table: str | None, memo: LoadMemo | None = None) -> None:
        self.source = source
        self.lenient = lenient
        self.table_hint = table
        self.memo = memo
        self.shapes: dict[str, RuleShape] = dict(memo.shapes) if memo is not None else {}
        self.warned = False  # build_shape warned (see shape_for)
        self.command_shapes: set[str] = set()  # shape keys of command lines the grammar has accepted
        self.warnings: list[LoadWarning] = []
        self.skipped: list[LoadWarning] = []
        self.warned_options: set[str] = set()
        self.tables: dict[str, Table] = {}
        self.order: list[str] = []
        self.listing = False
        self.text = ""
        self._lines: list[str] | None = None
        # Every declared chain name, to itself: a rule keeps its chain's own name object rather than a copy
        # sliced from its line (~70 bytes a rule, ~11 MB for a 160,000-rule dump). Interned: the nodes an audit
        # worker loads, the blocks it remembers (LoadMemo.blocks) and its caches of chain summaries and port reads
        # (kube_chains, carry) then hold one string a chain name, not one each (~3.5 MB of endpoint chain names).
        self.names: dict[str, str] = {}
        # (table, block) of each block that gave chains their rules whole (Ruleset.replayed)
        self.replayed: list[tuple[str, blocks.Block]] = []

    # -- errors -----------------------------------------------------------------------------------------
    def fail(self, exc: ParseError) -> None:
        """Raise, or in lenient mode remember what was skipped and go on."""
        if not self.lenient:
            exc.skippable = True
            raise exc
        self.skipped.append(LoadWarning(exc.line, exc.reason))

    def semantic(self, why: str, line_no: int, text: str = "", column: int = 1) -> None:
        self.fail(DumpSemanticError(why, source=self.source, line=line_no, column=column, text=text))

    # -- shapes -----------------------------------------------------------------------------------------
    def shape_for(self, key: str, line: str, line_no: int, lead: int = 0) -> RuleShape | None:
        """The shape of the rule spec on `line`, which starts `lead` arguments after the chain name."""
        shape = self.shapes.get(key)
        if shape is not None:
            return shape
        args = rule_args(line) if lead == 0 else None
        if args is None:
            grammar = _grammar()
            try:
                tree = grammar.parse_line(line, source=self.source, line_no=line_no)
            except ParseError as exc:
                self.fail(exc)
                return None
            args, _, _ = grammar.rule_arg_tokens(tree)
            args = args[lead:]
        self.warned = False
        try:
            shape = build_shape(args, line, line_no, self.source, self.warn_once)
        except ParseError as exc:
            self.fail(exc)
            return None
        self.shapes[key] = shape
        if self.memo is not None and not self.warned:
            self.memo.shapes[key] = shape
        return shape

    def warn_once(self, key: str, line_no: int, message: str) -> None:
        self.warned = True
        if key not in self.warned_options:
            self.warned_options.add(key)
            self.warnings.append(LoadWarning(line_no, message))

    # -- tables -----------------------------------------------------------------------------------------
    def report_jumps(self, t: OpenTable, before: int | None = None) -> None:
        """Rules that jumped to a chain the table did not hold yet (iptables-restore refuses them at their line;
        an `iptables -S` listing may declare its chains in any order). `before`: only those above that line."""
        for target, line_no, _ in t.jumps:
            if (before is not None and line_no >= before) or (self.listing and target in t.chains):
                continue
            raw = self.lines[line_no - 1].strip()
            col = raw.rfind(target) + 1
            if target in t.chains:
                self.semantic(f"jump to chain {target!r} before its declaration (line {t.chains[target][2]}); "
                              "expected the chain declared before the rules that jump to it", line_no, raw, col)
            else:
                self.semantic(f"jump to undefined chain {target!r} in table {t.name}; "
                              f"expected a chain declared in this table or a known target", line_no, raw, col)

    def close_table(self, t: OpenTable) -> None:
        self.report_jumps(t)
        if t.name in self.tables:  # (a table seen twice merges its chains: their blocks no longer say them)
            self.replayed = [(name, block) for name, block in self.replayed if name != t.name]
        else:  # (a block whose chains have more rules than it gave them had more after it: not the block's)
            rules = t.rules
            self.replayed += [(t.name, block) for block in t.replayed
                              if list(map(len, map(rules.__getitem__, block.chains))) == list(block.counts)]
        chains = tuple([_new_chain(name, policy, tuple(t.rules[name]), counters, line)
                        for name, (policy, counters, line) in t.chains.items()])
        if t.name in self.tables:
            # Seen twice (e.g. two `iptables -S` sections for one table): merge, first declaration wins.
            old = self.tables[t.name]
            merged = {c.name: c for c in old.chains}
            for c in chains:
                prev = merged.get(c.name)
                merged[c.name] = c if prev is None else Chain(c.name, prev.policy or c.policy,
                                                              prev.rules + c.rules, prev.counters, prev.line)
            self.tables[t.name] = Table(t.name, tuple(merged.values()), old.comments + t.comments, old.line)
        else:
            self.tables[t.name] = Table(t.name, chains, t.comments, t.line)
            self.order.append(t.name)

    # -- the main loop ----------------------------------------------------------------------------------
    @property
    def lines(self) -> list[str]:
        """Every line of the text (split when first asked for: iptables-save text is read a block at a time)."""
        if self._lines is None:
            self._lines = self.text.split("\n")
        return self._lines

    def load(self, text: str) -> Ruleset:
        self.text = text
        is_save = _TABLE_LINE_RE.search(text) is not None
        gc_was_enabled = gc.isenabled()
        gc.disable()  # bulk construction of acyclic objects: the cyclic collector only costs time here
        try:
            if is_save:
                return self.load_save(text)
            return self.load_listing(self.lines, text)
        finally:
            if gc_was_enabled:
                gc.enable()

    def finish(self, text: str, fmt: str, trailer: list[str]) -> Ruleset:
        header = " ".join(c for t in self.tables.values() for c in t.comments) + " ".join(trailer)
        # An IPv6 dump shows it in its header or within its first rules; scanning 24 MB would cost 0.3 s.
        family = "ipv6" if "ip6tables" in header or _IPV6_HINT_RE.search(text, 0, 262144) else "ipv4"
        tables = tuple(self.tables[name] for name in self.order)
        return Ruleset(tables, family, fmt, tuple(trailer), self.source, tuple(self.warnings),
                       tuple(self.skipped), replayed=tuple(self.replayed))

    def add_rule(self, t: OpenTable, line: str, line_no: int, body: str,
                 counters: tuple[int, int] | None) -> None:
        """`body` is the text after '-A ': the chain name and its arguments."""
        sp = body.find(" ")
        if sp < 0:
            chain, args = body, ""
        else:
            chain, args = body[:sp], body[sp + 1:].strip()
        chain = self.names.get(chain, chain)
        if "  " in args or "\t" in args:
            args = " ".join(TOKEN_RE.findall(args))
        rules = t.rules.get(chain)
        if rules is None and self.listing and (self.lenient or chain in BUILTIN_CHAINS.get(t.name, ())):
            # `iptables -S` pasted without its -P/-N lines: the chain exists, its declaration was cut off.
            builtin = chain in BUILTIN_CHAINS.get(t.name, ())
            self.declare(t, chain, "ACCEPT" if builtin else "-", None, None, line_no, line)
            if not builtin:
                self.skipped.append(LoadWarning(line_no, f"chain {chain!r} used without a '-N {chain}' line; "
                                                "assumed to exist"))
            rules = t.rules[chain]
        if rules is None:
            self.semantic(f"rule for chain {chain!r}, which table {t.name} does not declare; expected a "
                          f"':{chain} - [0:0]' line before its rules", line_no, line, line.find(chain) + 1)
            return
        shape = self.shape_for(_SHAPE_KEY_RE.sub(" _", args), line, line_no)
        if shape is None:
            return
        rule = Rule(chain, args, counters, line_no, shape)
        rules.append(rule)
        restore.note_added(t, rule)  # a jump to a chain not declared yet is checked when the table closes

    def spec_rule(self, line: str, line_no: int, words: restore.Words, chain: str, first: int) -> Rule | None:
        """The rule a command carries (-I/-R/-D/-C/--append), its spec starting at words[first]."""
        args = line[words[first][1] - 1:] if first < len(words) else ""
        if "  " in args or "\t" in args:
            args = " ".join(TOKEN_RE.findall(args))
        shape = self.shape_for(_SHAPE_KEY_RE.sub(" _", args), line, line_no, lead=first - 2)
        return None if shape is None else Rule(chain, args, None, line_no, shape)

    def command(self, t: OpenTable | None, line: str, line_no: int) -> None:
        """An iptables-restore command other than a plain '-A' (see restore.py), applied to the open table."""
        if t is None:
            self.semantic("command before its table; expected a '*filter' (or *nat, *mangle, …) line first",
                          line_no, line)
            return
        key = _SHAPE_KEY_RE.sub(" _", line)
        if key not in self.command_shapes:
            try:
                _grammar().parse_line(line, source=self.source, line_no=line_no)
            except ParseError as exc:
                self.fail(exc)
                return
            self.command_shapes.add(key)
        t.replayed.clear()  # (the command may edit any chain)
        words = [(m.group(), m.start() + 1) for m in TOKEN_RE.finditer(line)]
        cmd = restore.Command(words, line_no, lambda chain, first: self.spec_rule(line, line_no, words, chain,
                                                                                   first))
        try:
            warning = restore.apply(t, cmd)
        except restore.CommandError as exc:
            if not self.lenient:
                self.report_jumps(t, before=line_no)  # iptables-restore stops at the first line it refuses
            self.semantic(exc.why, line_no, line, exc.column)
            return
        if warning is not None:
            self.warnings.append(LoadWarning(line_no, warning))

    def load_save(self, text: str) -> Ruleset:
        current: OpenTable | None = None
        pending_comments: list[str] = []
        source = self.source
        line_no = 0
        # add_rule's common case, inlined: this loop runs once per line of a 24 MB dump.
        shapes = self.shapes
        shape_key = _SHAPE_KEY_RE.sub
        new_rule = tuple.__new__  # Rule(chain, args, None, line_no, shape) without Rule.__new__'s frame
        table_rules: dict[str, list[Rule]] = {}
        fast_rules = table_rules  # where -A lines go straight to; {} once a command edited the table
        table_chains: dict[str, tuple[str | None, tuple[int, int] | None, int]] = {}
        jumps: list[tuple[str, int, str]] = []
        builtin_chains: tuple[str, ...] = ()
        names = self.names
        tabs = "\t" in text  # (iptables-save writes none: one look at the text, not one a line)
        # The last -A line's "-A CHAIN ", its chain and rules: a dump writes a chain's rules in a row, and a line that
        # starts with it needs no look-up. "\0" (no line starts with it) whenever a table opens or fast_rules change.
        last_head, last_chain, last_rules = "\0", "", []
        memo = self.memo
        if memo is not None:
            stream, known, runs = blocks.plan(text, memo.blocks)
        else:
            stream, known, runs = enumerate(blocks.lines(text, 0, len(text)), 1), [], []
        known_blocks, mark = iter(known), blocks.MARK
        for line_no, raw in stream:
            if raw is mark:  # (a run of lines read before: blocks.plan)
                line_no = self.block(next(known_blocks), current, fast_rules, line_no)
                last_head = "\0"
                continue
            line = raw.strip()
            if not line:
                continue
            c = line[0]
            if c == "-" and line[:3] == "-A ":
                if current is None:
                    self.semantic("rule before its table; expected a '*filter' (or *nat, *mangle, …) line "
                                  "first", line_no, line)
                    continue
                if line.startswith(last_head):
                    sp, chain, rules = len(last_head) - 1, last_chain, last_rules
                else:
                    sp = line.find(" ", 3)
                    chain = names.get(line[3:sp]) if sp > 3 else None  # (the declared name object: see names)
                    rules = fast_rules.get(chain) if chain is not None else None
                    if rules is None:
                        self.add_rule(current, line, line_no, line[3:], None)
                        continue
                    last_head, last_chain, last_rules = line[:sp + 1], chain, rules
                if "  " in line or (tabs and "\t" in line):
                    self.add_rule(current, line, line_no, line[3:], None)
                    continue
                args = line[sp + 1:]
                key = shape_key(" _", args)
                shape = shapes.get(key)
                if shape is None:
                    self.add_rule(current, line, line_no, line[3:], None)  # a new shape: read once
                    continue
                target = None
                if shape.target_index == shape.n_tokens - 1 >= 0:
                    target = args[args.rfind(" ") + 1:]
                    if target not in table_chains and target not in BUILTIN_TARGETS:
                        jumps.append((target, line_no, chain))
                rules.append(new_rule(Rule, (chain, args, None, line_no, shape)))
            elif c == "-":
                self.command(current, line, line_no)
                fast_rules = {}  # rules of this table may now be edited: later -A lines keep count of jumps
                last_head = "\0"
            elif c == ":":
                name = line[1:-8]
                if (line[-8:] == " - [0:0]" and current is not None and name.split() == [name]
                        and name not in table_chains and name not in builtin_chains):
                    # (the common line, ":NAME - [0:0]" with no blank in NAME, as _CHAIN_RE and the new user
                    # chain's case below read it, without the regex: a dump declares ~10^4–10^5 chains)
                    name = intern(name)  # (see names)
                    table_chains[name] = (None, (0, 0), line_no)
                    table_rules[name] = []
                    names[name] = name
                    continue
                m = _CHAIN_RE.fullmatch(line)
                if m is None:
                    self.fail_line(line, line_no)
                    continue
                if current is None:
                    self.semantic("chain declaration before its table; expected a '*table' line first",
                                  line_no, line)
                    continue
                name, policy, pk, pb = m.groups()
                if policy == "-" and name not in table_chains and name not in builtin_chains:
                    # declare()'s common case: a new user chain.
                    counters = (0, 0) if (pk == "0" and pb == "0") or pk is None or pb is None else (int(pk), int(pb))
                    name = intern(name)
                    table_chains[name] = (None, counters, line_no)
                    table_rules[name] = []
                    names[name] = name
                else:
                    self.declare(current, name, policy, pk, pb, line_no, line)
            elif c == "[":
                m = _COUNTED_RULE_RE.match(line)
                if m is None:
                    self.fail_line(line, line_no)
                    continue
                if current is None:
                    self.semantic("rule before its table; expected a '*table' line first", line_no, line)
                    continue
                self.add_rule(current, line, line_no, line[m.end():].lstrip(),
                              (int(m.group(1)), int(m.group(2))))
            elif c == "*":
                name = line[1:].strip()
                if current is not None:
                    self.semantic(f"table {current.name} (line {current.line}) has no COMMIT before the next "
                                  "table; expected 'COMMIT'", line_no, line)
                    self.close_table(current)
                if name not in TABLES:
                    self.semantic(f"unknown table {name!r}; expected one of {', '.join(TABLES)}", line_no,
                                  line, 2)
                    current = None
                    continue
                if name in self.tables:
                    self.semantic(f"table {name} appears twice (first at line {self.tables[name].line})",
                                  line_no, line, 2)
                builtin_chains = BUILTIN_CHAINS.get(name, ())
                current = OpenTable(name, line_no, tuple(pending_comments), builtin_chains)
                table_rules, table_chains, jumps = current.rules, current.chains, current.jumps
                fast_rules = table_rules
                last_head = "\0"
                pending_comments = []
            elif c == "#":
                pending_comments.append(line)
            elif line == "COMMIT":
                if current is None:
                    self.semantic("COMMIT without an open table", line_no, line)
                    continue
                self.close_table(current)
                current = None
            else:
                self.fail_line(line, line_no)
        if current is not None:
            self.semantic(f"table {current.name} opened at line {current.line} has no COMMIT (the dump looks "
                          "truncated); expected 'COMMIT' at its end",
                          line_no + 1 if text[text.rfind("\n") + 1:] else line_no)
            self.close_table(current)
        if not self.tables and not self.skipped:
            raise ParseError("no table found; expected iptables-save output ('*filter' … 'COMMIT') or an "
                             "'iptables -S' listing", source=source, line=1, column=1,
                             text=text.split("\n", 1)[0])
        ruleset = self.finish(text, "save", pending_comments)
        if memo is not None:
            blocks.remember(memo.blocks, runs, text, ruleset, memo.shapes.values())
        return ruleset

    def block(self, block: blocks.Block, t: OpenTable | None, fast_rules: dict[str, list[Rule]], line_no: int) -> int:
        """A block read before (blocks.plan) standing at `line_no`, taken at once where the loop would read each of its
        lines on its fast path: rules whose chains are in `fast_rules` (declared in this table, and no command has
        emptied it) with no rule yet, the chains they jump to declared (no jump to check at COMMIT); declarations in
        the block's table (none of its chains is built in there) of chains it does not declare yet. Else its lines
        are read one by one as the loop's slow paths read them. Returns its last line's number."""
        counts, chains = block.counts, block.chains
        if counts is None:
            if t is not None and t.name == block.table and t.chains.keys().isdisjoint(chains):
                lines = range(line_no, line_no + len(chains))
                t.chains.update(zip(chains, zip(repeat(None), repeat((0, 0)), lines, strict=False), strict=True))
                t.rules.update(zip(chains, map(list, repeat((), len(chains))), strict=True))
                self.names.update(zip(chains, chains, strict=True))
            else:
                for at, name in enumerate(chains, line_no):
                    if t is None:
                        self.semantic("chain declaration before its table; expected a '*table' line first", at,
                                      f":{name} - [0:0]")
                    else:
                        self.declare(t, name, "-", "0", "0", at, f":{name} - [0:0]")
            return line_no + len(chains) - 1
        count = len(block.specs)
        if (t is not None and all(map(fast_rules.__contains__, chains))
                and not any(map(len, map(fast_rules.get, chains)))
                and all(map(t.chains.__contains__, block.targets))):
            rules = list(map(tuple.__new__, repeat(Rule), zip(block.rule_chains(), block.specs, repeat(None),
                                                               range(line_no, line_no + count), block.shapes,
                                                               strict=False)))
            fast_rules.update(zip(chains, map(rules.__getitem__, block.rule_slices()), strict=True))
            t.replayed.append(block)
            return line_no + count - 1
        for at, chain, spec in zip(range(line_no, line_no + count), block.rule_chains(), block.specs, strict=True):
            line = f"-A {chain} {spec}"
            if t is None:
                self.semantic("rule before its table; expected a '*filter' (or *nat, *mangle, …) line first", at,
                              line)
            else:
                self.add_rule(t, line, at, line[3:], None)
        return line_no + count - 1

    def declare(self, t: OpenTable, name: str, policy: str, pk: str | None, pb: str | None, line_no: int,
                line: str) -> None:
        if name in t.chains:
            self.semantic(f"chain {name!r} declared twice in table {t.name} (first at line "
                          f"{t.chains[name][2]})", line_no, line, 2)
            return
        builtin = name in BUILTIN_CHAINS.get(t.name, ())
        if builtin and policy != "-" and policy not in restore.POLICIES:
            # (iptables-restore refuses the whole dump: "Bad policy name"; read past, the chain keeps its '-')
            column = line.find(policy, line.find(name) + len(name)) + 1
            self.semantic(f"built-in chain {name} has the policy {policy!r}, which iptables-restore refuses; "
                          "expected ACCEPT, DROP or -", line_no, line, column)
            policy = "-"
        if builtin and policy == "-":
            # iptables-restore accepts "-" for a built-in chain and keeps its current policy (ACCEPT on a
            # fresh node); kube-proxy's own test dumps write it that way.
            self.warnings.append(LoadWarning(line_no, f"built-in chain {name} has no policy ('-'); "
                                             "assumed ACCEPT"))
            policy = "ACCEPT"
        counters = (int(pk), int(pb)) if pk is not None and pb is not None else (0, 0)
        name = self.names.setdefault(name, intern(name))
        t.chains[name] = (None if policy == "-" else policy, counters, line_no)
        t.rules[name] = []

    def fail_line(self, line: str, line_no: int) -> None:
        """A line no fast path recognises: ask the grammar exactly what is wrong with it."""
        try:
            _grammar().parse_line(line, source=self.source, line_no=line_no)
        except ParseError as exc:
            self.fail(exc)
            return
        if self.listing:
            self.semantic(f"{line.split()[0]} is a command of iptables-restore input, not of an 'iptables -S' "
                          "listing; expected -P, -N and -A lines only (or '*table' … 'COMMIT' blocks around "
                          "restore input)", line_no, line)
        else:
            self.semantic("cannot read this line; expected a chain declaration ':NAME POLICY [0:0]', a rule "
                          "'-A CHAIN …' or an iptables-restore command", line_no, line)

    # -- `iptables -S` listings -------------------------------------------------------------------------
    def load_listing(self, lines: list[str], text: str) -> Ruleset:
        self.listing = True
        if not any(line.lstrip()[:3] in ("-P ", "-N ", "-A ") for line in lines):
            # Neither iptables-save nor `iptables -S`: let the grammar say what is wrong where.
            for line_no, raw in enumerate(lines, 1):
                line = raw.strip()
                if line and not line.startswith("#"):
                    why = listing.foreign_format(line)
                    if why is not None:
                        # (even with --lenient: no line of another tool's listing is a rule to read)
                        raise ParseError(why, source=self.source, line=line_no, column=1, text=line)
                    self.fail_line(line, line_no)
                    break
        sections = listing.split_sections(lines)
        if not sections:
            # (iptables is what detection falls back to: a text without rules may have been meant as any form)
            raise ParseError("no rules found; expected iptables-save output ('*filter' … 'COMMIT'), an "
                             "'iptables -S' listing (-P/-N/-A lines) or an nftables ruleset (`nft list ruleset`, or "
                             "its -j JSON)", source=self.source, line=1, column=1, text=lines[0] if lines else "")
        for hint, body in sections:
            name = hint or listing.infer_table(body, self.table_hint, self.source)
            t = OpenTable(name, body[0][0], (), BUILTIN_CHAINS.get(name, ()))
            for line_no, line in body:
                if line.startswith("-P "):
                    parts = line.split()
                    if len(parts) != 3:
                        self.fail_line(line, line_no)
                        continue
                    self.declare(t, parts[1], parts[2], None, None, line_no, line)
                elif line.startswith("-N "):
                    parts = line.split()
                    if len(parts) != 2:
                        self.fail_line(line, line_no)
                        continue
                    self.declare(t, parts[1], "-", None, None, line_no, line)
                elif line.startswith("-A "):
                    self.add_rule(t, line, line_no, line[3:], None)
                else:
                    self.fail_line(line, line_no)
            self.close_table(t)
        return self.finish(text, "S", [])


def load(text: str | bytes, *, source: str = "<dump>", lenient: bool = False,
         table: str | None = None, memo: LoadMemo | None = None) -> Ruleset:
    """Parse a dump's text into a Ruleset. Raises ParseError (or DumpSemanticError) unless `lenient`, in
    which case unreadable lines are skipped and listed in `Ruleset.skipped`. `memo`: kept by a caller that loads
    many dumps of one cluster (LoadMemo); the Ruleset is the same with or without it."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if table is not None and table not in TABLES:
        raise InputError(f"unknown table {table!r}; expected one of {', '.join(TABLES)}")
    loader = _Loader(source, lenient, table, memo)
    ruleset = loader.load(text)
    if "\ufffd" in text:
        bad = next(i for i, line in enumerate(text.split("\n"), 1) if "\ufffd" in line)
        warnings = (*ruleset.warnings, LoadWarning(bad, "bytes that are not UTF-8 were replaced by U+FFFD"))
        return Ruleset(ruleset.tables, ruleset.family, ruleset.format, ruleset.trailer, ruleset.source,
                       warnings, ruleset.skipped)
    return ruleset


def load_path(path: str | Path, *, lenient: bool = False, table: str | None = None) -> Ruleset:
    text, name = read_dump(path)
    return load(text, source=name, lenient=lenient, table=table)
