"""Chain blocks read whole: a listing's chains that differ only in their values (kube-proxy's 50,000 endpoint chains
at 5,000 Services: `ip saddr A jump mark-for-masquerade`, `meta l4proto tcp dnat to A:P`) are matched by one
regex per chain instead of being split line by line.

When a chain the loader opened in its line loop closes, `ChainShapes.learn` looks at its lines: if each is a rule
the line loop's fast path reads (shapes.fast_tokens: blanks only between its tokens, no braces, commas, quotes,
`@`, `#`, `;` or `:` words), it compiles the block — header excepted, through its closing brace — into a regex
of its tokens, a literal for each known word and a group for each other token (a value), and keeps it
for the next chains whose names start alike (`endpoint-`, up to the first "-"). A chain that matches is read by
calling, for each of its lines, the same shape builder (with the same tokens, text, line and handle) the line loop
would have called, because a matching line is one the line loop would have keyed the same way: its known words
are the learnt ones (the loader's known words only ever grow), its values are checked to be no known word at
match time, and the fast path's tests on the line (no `;`, `#`, chain option, quote, `@`, tab, double blank, glued
`:`) hold for every text the regex accepts. Anything else — a builder that returns None or refuses a value, a
chain of other lines — is read by the line loop as before: a template only decides how fast, never what.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

_VALUE = r'[^\s{},;"#@]+(?<!:)'  # a fast-path token that is no known word (nor ends in ":": nft's data `:`)
_is_value = re.compile(_VALUE).fullmatch
_NOT_IN_CONSTANT = frozenset('{},;"#@:')
_CHAIN_OPTIONS = ("type ", "policy ", "comment ", "devices")  # the line loop leaves these to the grammar
_MAX_FAILURES = 64  # learning given up for a name prefix after this many chains that cannot be templates
_MAX_TEMPLATES = 64  # distinct templates compiled per table

# A template: (regex fullmatch of the block's lines joined by "\n", how many lines, reader).
Template = tuple[Callable[[str], Any], int, Callable[..., bool]]


class ChainShapes:
    """One table's chain templates, by the chain name's prefix."""

    __slots__ = ("by_pattern", "by_prefix", "failures")

    def __init__(self) -> None:
        self.by_prefix: dict[str, Template] = {}
        self.by_pattern: dict[str, Template] = {}
        self.failures: dict[str, int] = {}

    def read(self, chain: Any, lines: list[str], line_no: int, known: dict[str, str], text: Any,
             refs: set[str]) -> int:
        """Read the rules of `chain` (its header at `line_no`, 1-based, of `lines`) with the template of its name's
        prefix; how many lines after the header that took (0: the line loop reads it)."""
        template = self.by_prefix.get(chain.name.partition("-")[0])
        if template is None:
            return 0
        fullmatch, count, reader = template
        m = fullmatch("\n".join(lines[line_no:line_no + count]))
        try:
            return count if m is not None and reader(m.groups(), known, text, line_no, chain.rules, refs) else 0
        except ValueError:  # a value its shape refuses: the line loop says where
            return 0

    def learn(self, prefix: str, lines: list[str], shapes: dict[Any, Any], known: dict[str, str]) -> None:
        """Make `lines` (a chain's body and closing line, as split from the text) the template of `prefix`, when
        each body line is a fast-path rule of a shape in `shapes`."""
        failures = self.failures.get(prefix, 0)
        if failures >= _MAX_FAILURES:
            return
        pattern, builders = _pattern(lines, shapes, known)
        if pattern is None:
            self.failures[prefix] = failures + 1
            return
        template = self.by_pattern.get(pattern)
        if template is None:
            if len(self.by_pattern) >= _MAX_TEMPLATES:
                return
            template = self.by_pattern[pattern] = (re.compile(pattern).fullmatch, len(lines), _reader(builders))
        self.by_prefix[prefix] = template


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
        toks = s.split(" ")
        if toks != s.split():
            return None, []  # a double blank or another blank between tokens
        key: list[str | None] = []
        tokens: list[str | int] = []
        regex = []
        for i, tok in enumerate(toks):
            if known.get(tok) == tok:
                if _NOT_IN_CONSTANT.intersection(tok) or (i == 0 and tok == "}"):
                    return None, []
                key.append(tok)
                tokens.append(tok)
                regex.append(re.escape(tok))
            elif i > 0 and _is_value(tok):
                key.append(None)
                tokens.append(group)
                group += 1
                regex.append(f"({_VALUE})")
            else:
                return None, []  # a first token that is a value could be a chain option (`devices…`)
        shape = shapes.get(tuple(key))
        if shape is None:
            return None, []
        builders.append((tuple(tokens), shape))
        parts.append(re.escape(lead) + " ".join(regex))
    parts.append(re.escape(closing[:-1]) + r"\}")
    return "\n".join(parts), builders


def _reader(builders: list[tuple[tuple[str | int, ...], Any]]) -> Callable[..., bool]:
    """A function (value groups, known, source text, header line, rules, refs) → whether it read the block: each
    line's tokens given to its shape's builder as the line loop gives them (a tuple for its list), the rules
    appended only when all were made."""
    ns: dict[str, Any] = {}
    groups = sum(isinstance(tok, int) for tokens, _ in builders for tok in tokens)
    checks = " or ".join(f"g[{i}] in known" for i in range(groups)) or "False"
    lines = [f"    if {checks}:\n        return False\n"]
    made = []
    for j, (tokens, (make, refs)) in enumerate(builders):
        ns[f"m{j}"] = make
        v = "(" + "".join(f"g[{tok}], " if isinstance(tok, int) else f"{tok!r}, " for tok in tokens) + ")"
        lines.append(f"    v{j} = {v}\n    r{j} = m{j}(v{j}, text, line + {j + 1}, None)\n"
                     f"    if r{j} is None:\n        return False\n")
        made.append(f"r{j}")
        if refs is not None:
            ns[f"f{j}"] = refs
    for j, (_, (_, refs)) in enumerate(builders):
        if refs is not None:
            lines.append(f"    found.update(f{j}(v{j}))\n")
    lines.append(f"    rules.extend(({', '.join(made)},))\n    return True\n")
    exec(f"def read(g, known, text, line, rules, found):\n{''.join(lines)}", ns)
    return ns["read"]
