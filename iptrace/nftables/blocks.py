"""Chain blocks read whole: a listing's chains that differ only in their values (kube-proxy's 50,000 endpoint chains
at 5,000 Services: `ip saddr A jump mark-for-masquerade`, `meta l4proto tcp dnat to A:P`, and its 5,000 service
chains: `numgen random mod 2 vmap { 0 : goto E1, 1 : goto E2 }`) are matched by one regex per chain instead of
being split line by line.

When a chain the loader opened in its line loop closes, `ChainShapes.learn` looks at its lines: if each is a rule
the line loop's fast path reads (shapes.fast_tokens: blanks only between its words, no quotes, `@`, `#`, `;`, no
word ending in `:`, and braces, commas and colons only as words of their own — a comma may end the word before
it, as in `goto E1,`: the line loop splits it off), it compiles the block — header excepted, through its closing
brace — into a regex of its tokens, a literal for each known word (and for a comma that ends a word) and a group
for each other token (a value, which holds none of those characters), and keeps it for the next chains whose names
start alike (`endpoint-`, up to the first "-"). A chain that matches is read by calling, for each of its lines,
the same shape builder (with the same tokens, text, line and handle) the line loop would have called, because a
matching line is one the line loop would have keyed the same way: its known words are the learnt ones (the
loader's known words only ever grow), its values are checked to be no known word at match time, it splits into
the same tokens (a value holds no brace or comma for the line loop to split off), and the fast path's tests on
the line (no `;`, `#`, chain option, quote, `@`, tab, double blank; a `:` only as ` : `, never last) hold for
every text the regex accepts. A line with a set reference (`@`: kube-proxy's session affinity) is one the line loop
gives make_rule, keyed by shapes.MASK_RE: its regex is that key's constants with a group for each masked value,
and every text it accepts is keyed the same (_masked_line says why). Anything else — a builder that returns None or
refuses a value, a chain of other lines — is read by the line loop as before: a template only decides how fast,
never what. A name prefix keeps its last few templates, tried in turn (endpoint chains with affinity and without,
service chains of each endpoint count).

A chain read whole is matched in the text itself, at its character offset (no line is sliced or joined), and the
chains right after it that a template matches — a blank line, then a header `chain NAME {` indented as the
template's was, for a name the table does not have yet — are read in the same run, without going back to the line
loop: the line loop would skip that blank line, open each such header on its inlined path and find the template
of that name's prefix for it (the same one, or another: a service chain after its endpoint chains), and which
template reads a chain only decides how fast.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from sys import intern
from typing import Any

from iptrace.nftables.model import Chain
from iptrace.nftables.shapes import draft_class, shape_key

_VALUE = r'[^\s{},;"#@]+(?<!:)'  # a fast-path token that is no known word (nor ends in ":": nft's data `:`)
_is_value = re.compile(_VALUE).fullmatch
_MASKED = r'[^\s{},;"#@:]*[0-9A-Z][^\s{},;"#@:]*'  # a token shapes.MASK_RE masks whole wherever a token starts
_is_masked = re.compile(_MASKED).fullmatch
_NOT_IN_CONSTANT = frozenset('{},;"#@:')
# Words that are known words made of those characters alone, as the line loop splits them off: kube-proxy's service
# chains' verdict maps (`numgen random mod 2 vmap { 0 : goto endpoint-…, 1 : goto endpoint-… }`).
_PUNCTUATION = frozenset({"{", "}", ",", ":"})
_CHAIN_OPTIONS = ("type ", "policy ", "comment ", "devices")  # the line loop leaves these to the grammar
# A name the line loop's inlined chain header takes (no quote, blank, brace, ";" or "#").
_NAME = r'([^\s"{};#]+)'
_END = r"(?=\n|\Z)"  # the closing brace ends its line
# The name prefix (up to its first "-") of a chain whose header follows a blank line, as `next` regexes match them.
_NEXT_PREFIX = re.compile(r'\n\n[ \t]*chain ([^\s"{};#-]+)').match
_MAX_FAILURES = 64  # learning given up for a name prefix after this many chains that cannot be templates
_MAX_TEMPLATES = 64  # distinct templates compiled per table
_MAX_PREFIX_TEMPLATES = 8  # templates tried for a name prefix, the last learnt first
_MAX_SEEN = 4096  # blocks kept as seen once per table (a block first seen after that is never compiled)
_ChainDraft = draft_class(Chain)


class Template:
    """A chain block's regexes and its reader: `first` matches a body at its offset, `next` a blank line, a
    header and a body (the name its first group); `read(groups, name, header line)` is the Chain, or None when a
    value is a known word or a builder refuses the line."""

    __slots__ = ("count", "first", "next", "read")

    def __init__(self, first: Callable[..., Any], after: Callable[..., Any] | None, count: int,
                 read: Callable[..., Any]) -> None:
        self.first = first
        self.next = after
        self.count = count
        self.read = read


class ChainShapes:
    """One table's chain templates, by the chain name's prefix. `lines` and `text` are the listing (split and
    whole), `known` the loader's known words, `source` the source.SourceText rules are given, `refs` the table's
    references."""

    __slots__ = ("at", "by_pattern", "by_prefix", "failures", "known", "lines", "refs", "seen", "source", "text")

    def __init__(self, lines: list[str], text: str, known: dict[str, str], source: Any, refs: set[str]) -> None:
        # each name prefix's templates, the last learnt first (kube-proxy's endpoint chains come in two shapes,
        # with and without affinity, and its service chains in one per endpoint count)
        self.by_prefix: dict[str, list[Template]] = {}
        self.by_pattern: dict[tuple[str, str], Template] = {}
        self.seen: set[tuple[str, str]] = set()  # (pattern, indent) of blocks learnt once, not compiled
        self.failures: dict[str, int] = {}
        self.lines, self.text, self.known, self.source, self.refs = lines, text, known, source, refs
        self.at = (0, 1)  # (offset, number) of a line at or before every header still to come

    def read(self, chains: dict[str, Any], name: str, line_no: int) -> tuple[int, int]:
        """Read chain `name` (its header at `line_no`, 1-based) with the template of its name's prefix, and the
        chains like it right after it, into `chains`: (how many lines after the header that took, how many
        chains); (0, 0) when the line loop reads it."""
        templates = self.by_prefix.get(name.partition("-")[0])
        if templates is None:
            return 0, 0
        at, at_line = self.at
        lines = self.lines
        header = line_no - 1
        at += sum(map(len, lines[at_line - 1:header])) + header - at_line + 1  # (each line and its "\n")
        self.at = (at, line_no)
        body = at + len(lines[header]) + 1
        for template in templates:
            m = template.first(self.text, body)
            if m is not None:
                break
        else:
            return 0, 0
        try:
            chain = template.read(m.groups(), name, line_no)
        except ValueError:  # a value its shape refuses: the line loop says where
            return 0, 0
        if chain is None:
            return 0, 0
        chains[name] = chain
        read = 1
        done = template.count  # the lines after the first header read so far: through the last closing brace
        end = m.end()
        text = self.text
        while True:
            # The next chain: the same template's, or another's (a service chain after its endpoint chains),
            # as the line loop would find it for the next header's name.
            m = template.next(text, end) if template.next is not None else None
            if m is None:
                head = _NEXT_PREFIX(text, end)
                for other in self.by_prefix.get(head.group(1), ()) if head is not None else ():
                    if other is not template and other.next is not None:
                        m = other.next(text, end)
                        if m is not None:
                            template = other
                            break
                if m is None:
                    break
            g = m.groups()
            name = g[0]
            if name in chains:  # the line loop says it is declared twice
                break
            try:
                chain = template.read(g, name, line_no + done + 2)
            except ValueError:
                break
            if chain is None:
                break
            chains[name] = chain
            done += 2 + template.count  # the blank line, the header, its body and closing line
            end = m.end()
            read += 1
        self.at = (end + 1, line_no + done + 1)  # the line after the last closing brace
        return done, read

    def learn(self, prefix: str, header: str, lines: list[str], shapes: dict[Any, Any]) -> None:
        """Make `lines` (a chain's body and closing line, as split from the text; `header` its header line) the
        template of `prefix`, when each body line is a fast-path rule of a shape in `shapes`."""
        failures = self.failures.get(prefix, 0)
        if failures >= _MAX_FAILURES:
            return
        pattern, builders = _pattern(lines, shapes, self.known)
        if pattern is None:
            self.failures[prefix] = failures + 1
            return
        lead = header[:len(header) - len(header.lstrip())]
        template = self.by_pattern.get((pattern, lead))
        if template is None:
            # A template is compiled for a block seen twice: a listing's base chains and other one-off chains
            # would each cost their regexes and reader (~0.4 ms) and never read another chain.
            if (pattern, lead) not in self.seen:
                if len(self.seen) < _MAX_SEEN:
                    self.seen.add((pattern, lead))
                return
            if len(self.by_pattern) >= _MAX_TEMPLATES:
                return
            # (a header indented with other blanks than spaces and tabs is left to the line loop's strip)
            after = None if lead.strip(" \t") else re.compile(
                rf"\n\n{re.escape(lead)}chain {_NAME} \{{\n{pattern}{_END}").match
            template = self.by_pattern[(pattern, lead)] = Template(
                re.compile(f"(){pattern}{_END}").match, after, len(lines),
                _reader(builders, self.known, self.source, self.refs))
        templates = self.by_prefix.setdefault(prefix, [])
        if template in templates:
            templates.remove(template)
        templates.insert(0, template)
        del templates[_MAX_PREFIX_TEMPLATES:]


def _pattern(lines: list[str], shapes: dict[Any, Any], known: dict[str, str]) -> tuple[
        str | None, list[tuple[tuple[str | int, ...], Any]]]:
    """The block's regex (a group for each value) and, for each body line, its tokens (a known word, or the index
    of the value's group) and its shape."""
    *body, closing = lines
    if not body or closing.strip() != "}" or closing.rstrip() != closing:
        return None, []
    parts = []
    builders = []
    group = 0
    indent = None
    for raw in body:
        s = raw.strip()
        if not s or raw[len(raw) - len(s):] != s or s.startswith(_CHAIN_OPTIONS):
            return None, []
        lead = raw[:len(raw) - len(s)]
        if indent is None:
            indent = lead
        elif lead != indent:
            return None, []
        words = s.split(" ")
        if words != s.split() or s[-1] == ":":
            return None, []  # a double blank or another blank between tokens; a `:` the line loop leaves alone
        if "@" in s:
            masked = _masked_line(s, shapes, group)
            if masked is None:
                return None, []
            regex_part, value_groups, shape = masked
            group += len(value_groups)
            builders.append((value_groups, shape))
            parts.append(re.escape(lead) + regex_part)
            continue
        key: list[str | None] = []
        tokens: list[str | int] = []
        regex = []
        for i, word in enumerate(words):
            # A word may end in the comma the line loop splits off it (`goto endpoint-…,`): a known word of its own.
            comma = len(word) > 1 and word[-1] == ","
            tok = word[:-1] if comma else word
            if known.get(tok) == tok:
                if (tok not in _PUNCTUATION and _NOT_IN_CONSTANT.intersection(tok)) or (i == 0 and tok in _PUNCTUATION):
                    return None, []
                key.append(tok)
                tokens.append(tok)
                part = re.escape(tok)
            elif i > 0 and _is_value(tok):
                key.append(None)
                tokens.append(group)
                group += 1
                part = f"({_VALUE})"
            else:
                return None, []  # a first token that is a value could be a chain option (`devices…`)
            if comma:
                if known.get(",") != ",":
                    return None, []
                key.append(",")
                tokens.append(",")
                part += ","
            regex.append(part)
        shape = shapes.get(tuple(key))
        if shape is None:
            return None, []
        builders.append((tuple(tokens), shape))
        parts.append(re.escape(lead) + " ".join(regex))
    parts.append(re.escape(closing[:-1]) + r"\}")
    return "\n".join(parts), builders


def _masked_line(s: str, shapes: dict[Any, Any], group: int) -> tuple[str, tuple[int, ...], Any] | None:
    """A body line with a set reference (kube-proxy's affinity: `update @affinity-… { ip saddr }`, `ip saddr
    @affinity-… goto endpoint-…`), which the line loop gives make_rule, keyed by MASK_RE (shapes.shape_key): its
    regex (the key's constants, a group for each masked value), the indices of those groups (its values, in
    order), and its shape; None when the line loop would take another line of that regex another way.

    Every text `c0 x0 c1 … cn` the regex accepts splits by MASK_RE into the same constants and the values x0…, as
    the learnt line `c0 v0 c1 … cn` does: each x is a token MASK_RE masks whole (_MASKED: a digit or capital, no
    delimiter, `@`, `:` or quote), found where v was — after a blank or an `@` that the learnt line's split left
    in the constant before it (a match starts right after either, none at an `@`), and before a blank, a `:`
    before a blank, or the end (where its match ends); no match starts inside a constant, as none did in the
    learnt line (a constant's first character follows a value's last, neither a delimiter nor `@`, in both; every
    later one follows the same characters). The line starts with a constant (not a value that could be a chain
    option) and has `@` (never the fast path), no `;`, `#` or quote and braces that balance: the line loop gives
    each such line to make_rule as it is."""
    if '"' in s or ";" in s or "#" in s or s.count("{") != s.count("}"):
        return None
    key, values = shape_key(s)
    shape = shapes.get(key)
    constants = key.split("\0")
    if shape is None or not constants[0] or not all(map(_is_masked, values)):
        return None
    return f"({_MASKED})".join(map(re.escape, constants)), tuple(range(group, group + len(values))), shape


def _reader(builders: list[tuple[tuple[str | int, ...], Any]], known: dict[str, str], source: Any,
            found: set[str]) -> Callable[..., Any]:
    """A function (groups: the header's name or "", then the values; the chain's name; its header line) → the
    Chain, or None: each line's values checked and normalised as its shape's builder does it from the tokens
    the line loop gives it (shapes.compile_template), and kept in the chain's record (model.Chain._lazy: its
    rules' maker, the listing, its line, the values), from which `rules` makes each rule as that builder would
    have, with the listing as text; references into `found` once all values were read."""
    ns: dict[str, Any] = {"known": known, "source": source, "found": found, "_intern": intern,
                          "_draft": _ChainDraft, "_Chain": Chain}
    groups = sum(isinstance(tok, int) for tokens, _ in builders for tok in tokens)
    checks = " or ".join(f"g[{i + 1}] in known" for i in range(groups)) or "False"
    lines = [f"    if {checks}:\n        return None\n"]
    made = []
    kept: dict[str, Any] = {}  # what `rules` reads (a namespace of its own: a record holds it for the run)
    record: list[str] = []  # every rule's normalised values, in order
    builds = []  # (each rule's build, where its values start in the record, how many)
    making: list[str] = []  # the statements of `rules`, reading the values from the record
    for j, (tokens, (make, refs)) in enumerate(builders):
        values = [f"g[{tok + 1}]" if isinstance(tok, int) else repr(tok) for tok in tokens]
        code, parts = make.values(f"r{j}_", values.__getitem__, ns)
        lines.append(code)
        at = 3 + len(record)
        record.extend(parts)
        builds.append((make.build, at, len(parts)))
        making.append(f"    r{j}_line = line + {j + 1}\n" + make.construct(
            f"r{j}_", [f"lazy[{at + i}]" for i in range(len(parts))], "source", f"r{j}_line", "None", kept))
        made.append(f"r{j}_o")
        if refs is not None:
            ns[f"f{j}"] = refs
            lines.append(f"    v{j} = ({''.join(v + ', ' for v in values)})\n")
    for j, (_, (_, refs)) in enumerate(builders):
        if refs is not None:
            lines.append(f"    found.update(f{j}(v{j}))\n")
    # The Chain as build.plain_chain makes it (its comment and handle unset, its base None), inline, its rules
    # left to its record.
    lines.append(f"    c = _draft()\n    c.name = _intern(name)\n    c.base = None\n    c.line = line\n"
                 f"    c._lazy = (rules, source, line, {''.join(p + ', ' for p in record)})\n"
                 "    c.__class__ = _Chain\n    return c\n")
    exec(f"def rules(lazy):\n    source = lazy[1]\n    line = lazy[2]\n{''.join(making)}"
         f"    return ({''.join(r + ', ' for r in made)})\n", kept)
    rules = ns["rules"] = kept.pop("rules")
    rules.count, rules.builds = len(builders), tuple(builds)
    exec(f"def read(g, name, line):\n{''.join(lines)}", ns)
    # (taken out of its own globals: no reference cycle keeps the table's references and the known words alive
    # after the load, for a cyclic GC that a run may have turned off)
    return ns.pop("read")
