"""iptables-restore's commands inside a table block, besides `:CHAIN` lines and plain `-A`: -D -I -R -F -Z -N -X
-P -E -C (and their long forms), applied to the table being loaded as iptables-legacy-restore applies them,
and refused where it refuses them. kube-proxy's own restore input deletes stale chains this way
(syncProxyRules in pkg/proxy/iptables/proxier.go writes a `:CHAIN` line, which flushes it, then `-X CHAIN`).

No lark and no I/O here: the loader checks each line's syntax with the grammar, builds the rules a command
carries, and turns a CommandError into a positioned DumpSemanticError.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from iptrace.iptables.model import Option, Rule
from iptrace.iptables.options import BASIC_ARITY, BUILTIN_TARGETS

# Every spelling iptables-restore accepts for a command inside a table block, and its short form.
COMMANDS: Mapping[str, str] = MappingProxyType({
    "-A": "-A", "--append": "-A", "-C": "-C", "--check": "-C", "-D": "-D", "--delete": "-D",
    "-I": "-I", "--insert": "-I", "-R": "-R", "--replace": "-R", "-F": "-F", "--flush": "-F",
    "-Z": "-Z", "--zero": "-Z", "-N": "-N", "--new-chain": "-N", "-X": "-X", "--delete-chain": "-X",
    "-P": "-P", "--policy": "-P", "-E": "-E", "--rename-chain": "-E",
})
POLICIES = ("ACCEPT", "DROP")
MAX_CHAIN_NAME = 28  # XT_EXTENSION_MAXNAMELEN - 1

# rule_key(): spellings iptables reads into the same kernel rule (checked against the kernel by
# tests/test_restore_kernel.py: `-D` with one spelling deletes the rule written in the other).
_PROTOCOLS: Mapping[str, str] = MappingProxyType({
    "0": "all", "1": "icmp", "6": "tcp", "17": "udp", "33": "dccp", "47": "gre", "50": "esp", "51": "ah",
    "58": "ipv6-icmp", "icmpv6": "ipv6-icmp", "132": "sctp", "136": "udplite",
})
_OPTION_ALIASES: Mapping[str, str] = MappingProxyType({
    "--destination-port": "--dport", "--source-port": "--sport", "--destination-ports": "--dports",
    "--source-ports": "--sports",
})
_FLAG_LISTS = frozenset({"--ctstate", "--state", "--ctstatus"})  # bit sets: order does not matter
_PORTS = frozenset({"--dport", "--sport"})
_REJECT_WITH: Mapping[str, str] = MappingProxyType({  # libipt_REJECT / libip6t_REJECT aliases
    "icmp6-port-unreachable": "icmp-port-unreachable", "port-unreach": "icmp-port-unreachable",
    "net-unreach": "icmp-net-unreachable", "host-unreach": "icmp-host-unreachable",
    "proto-unreach": "icmp-proto-unreachable", "net-prohib": "icmp-net-prohibited",
    "host-prohib": "icmp-host-prohibited", "admin-prohib": "icmp-admin-prohibited", "tcp-rst": "tcp-reset",
})
_NOT_IN_RULE = frozenset({"-c", "-4", "-6"})  # counters and family switches: not part of what a rule matches


class CommandError(Exception):
    """A command iptables-restore would refuse; `column` points at the word to blame."""

    def __init__(self, why: str, column: int) -> None:
        super().__init__(why)
        self.why = why
        self.column = column


@dataclass
class OpenTable:
    """A table between its `*name` line and COMMIT, while the loader fills it and commands edit it."""

    name: str
    line: int
    comments: tuple[str, ...]
    builtin: tuple[str, ...] = ()
    chains: dict[str, tuple[str | None, tuple[int, int] | None, int]] = field(default_factory=dict)
    rules: dict[str, list[Rule]] = field(default_factory=dict)
    # Rules that jumped to a chain not declared yet: (target, line, chain), reported at COMMIT.
    jumps: list[tuple[str, int, str]] = field(default_factory=list)
    # How many rules jump to each chain; counted at the first -X/-E, then kept up to date by every edit.
    refs: Counter[str] | None = None
    # The blocks read in an earlier dump that gave chains their rules whole (Ruleset.replayed), in order. Forgotten
    # when a command edits the table.
    replayed: list[Any] = field(default_factory=list)


Words = list[tuple[str, int]]  # (text, 1-based column) of each word of a command line
MakeRule = Callable[[str, int], Rule | None]  # (chain, index of the first word of the rule spec) -> Rule


def jump_target(rule: Rule) -> str | None:
    """The chain `rule` jumps (or goes) to, or None. A target followed by options is an extension target."""
    shape = rule.shape
    if shape is None or shape.target_index < 0 or shape.target_index != shape.n_tokens - 1:
        return None
    target = rule.text[rule.text.rfind(" ") + 1:]
    return None if target in BUILTIN_TARGETS else target


def note_added(t: OpenTable, rule: Rule) -> None:
    """Keep the reference count and the COMMIT-time jump check up to date for a rule just added."""
    target = jump_target(rule)
    if target is None:
        return
    if t.refs is not None:
        t.refs[target] += 1
    if target not in t.chains:
        t.jumps.append((target, rule.line, rule.chain))


def _note_removed(t: OpenTable, rules: list[Rule]) -> None:
    if t.refs is None:
        return
    for rule in rules:
        target = jump_target(rule)
        if target is not None:
            t.refs[target] -= 1


def _references(t: OpenTable) -> Counter[str]:
    if t.refs is None:
        t.refs = Counter(target for rules in t.rules.values() for rule in rules
                         if (target := jump_target(rule)) is not None)
    return t.refs


# -- comparing rules as the kernel does -------------------------------------------------------------------

def _value(name: str, value: str) -> str:
    try:
        if name in ("-s", "-d"):
            return str(ipaddress.ip_network(value, strict=False))
        if name in _PORTS and ":" in value:
            low, _, high = value.partition(":")
            return low if low == high else value
        if name == "--probability":
            return str(round(float(value) * 0x80000000))  # libxt_statistic stores lround(p * 2^31)
        if name == "--mark":  # -m mark/connmark: no mask means all bits
            mark, _, mask = value.partition("/")
            return f"{int(mark, 0):#x}/{int(mask, 0) if mask else 0xFFFFFFFF:#x}"
    except ValueError:
        return value
    if name == "-p":
        return _PROTOCOLS.get(value.lower(), value.lower())
    if name in _FLAG_LISTS:
        return ",".join(sorted(value.upper().split(",")))
    if name == "--reject-with":
        return _REJECT_WITH.get(value, value)
    return value


def _options_key(options: list[Option] | tuple[Option, ...]) -> tuple:
    out = []
    for opt in options:
        name = _OPTION_ALIASES.get(opt.name, opt.name)
        if name not in _NOT_IN_RULE:
            out.append((name, opt.negated, tuple(_value(name, v) for v in opt.values)))
    return tuple(sorted(out))


def rule_key(rule: Rule) -> tuple:
    """What the kernel compares when `-D`/`-C` look for a rule: basic matches in any order, the other matches
    in order (each with its options in any order), the target; spellings that mean the same compare equal."""
    basic: list[Option] = []
    matches: list[tuple[str, list[Option]]] = []
    for match in rule.matches:
        if match.module == "":
            for opt in match.options:
                # `-m tcp -p tcp --dport 1`: the shape files --dport after -p, but it belongs to -m tcp.
                (basic if opt.name in BASIC_ARITY or not matches else matches[-1][1]).append(opt)
        else:
            module = match.module.lower()
            matches.append((_PROTOCOLS.get(module, module) if match.implicit else module, list(match.options)))
    key = (_options_key(basic), tuple((module, _options_key(options)) for module, options in matches))
    target = rule.target
    if target is None:
        return (*key, None)
    options = list(target.options)
    if target.name == "REJECT" and target.option("--reject-with") is None:
        options.append(Option("--reject-with", ("icmp-port-unreachable",)))
    elif target.name in ("MARK", "CONNMARK"):
        options = [_xmark(opt) for opt in options]
    return (*key, (target.name, target.goto, _options_key(options)))


def _xmark(opt: Option) -> Option:
    """MARK/CONNMARK's ways to set a mark, as the value/mask pair the kernel keeps (libxt_MARK.c, mark_tg_parse;
    iptables-save prints every one of them as --set-xmark)."""
    if opt.name not in ("--set-mark", "--set-xmark", "--and-mark", "--or-mark", "--xor-mark") or not opt.values:
        return opt
    try:
        value, _, mask_text = opt.value.partition("/")
        mark = int(value, 0)
        mask = int(mask_text, 0) if mask_text else 0xFFFFFFFF
    except ValueError:
        return opt
    mark, mask = {
        "--set-xmark": (mark, mask), "--set-mark": (mark, mark | mask), "--and-mark": (0, ~mark & 0xFFFFFFFF),
        "--or-mark": (mark, mark), "--xor-mark": (mark, 0),
    }[opt.name]
    return Option("--set-xmark", (f"{mark:#x}/{mask:#x}",), opt.negated)


def _find(rules: list[Rule], spec: Rule) -> int:
    key = rule_key(spec)
    name = spec.target_name
    for i, rule in enumerate(rules):
        if rule.target_name == name and rule_key(rule) == key:
            return i
    return -1


# -- the commands ---------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Command:
    """One command line: its words (`words[0]` is the command in any spelling COMMANDS knows), its line
    number, and how to build the rule whose spec starts at a given word."""

    words: Words
    line: int
    make_rule: MakeRule


def apply(t: OpenTable, cmd: Command) -> str | None:
    """Apply one command to `t`. Returns a warning when backends disagree and the model had to choose one;
    raises CommandError for what iptables-restore refuses."""
    return _HANDLERS[COMMANDS[cmd.words[0][0]]](t, cmd)


def _word(words: Words, i: int, what: str) -> tuple[str, int]:
    if i >= len(words):
        end = words[-1][1] + len(words[-1][0]) + 1
        raise CommandError(f"{words[0][0]} expects {what}, found end of line", end)
    return words[i]


def _no_more(words: Words, i: int) -> None:
    if i < len(words):
        word, col = words[i]
        shown = " ".join(w for w, _ in words[:i])
        raise CommandError(f"unexpected {word!r}; expected end of line after '{shown}'", col)


def _chain(t: OpenTable, words: Words) -> tuple[str, list[Rule]]:
    name, col = _word(words, 1, "a chain name")
    rules = t.rules.get(name)
    if rules is None:
        raise CommandError(f"no chain {name!r} in table {t.name}; expected a chain declared in this table "
                           f"(a ':{name} - [0:0]' line or '-N {name}' before it)", col)
    return name, rules


def _has_number(words: Words, i: int) -> bool:
    """iptables reads a word after the chain that is not an option as a rule number."""
    return i < len(words) and not words[i][0].startswith(("-", "!"))


def _number(words: Words, i: int, last: int) -> int:
    """The rule number at words[i], which must be 1..last."""
    word, col = words[i]
    if not word.isdigit() or int(word) < 1:
        raise CommandError(f"invalid rule number {word!r}; expected a number from 1", col)
    number = int(word)
    if number > last:
        expected = f"1 to {last}" if last > 1 else ("1" if last == 1 else "no rule number (the chain is empty)")
        raise CommandError(f"rule number {number} is too big for chain {words[1][0]!r}; expected {expected}", col)
    return number


def _spec_column(words: Words, first: int) -> int:
    return words[first][1] if first < len(words) else words[-1][1]


def _checked(t: OpenTable, cmd: Command, rule: Rule | None) -> Rule | None:
    """`rule`, if the chain it jumps to exists: iptables-restore resolves a command's target at once."""
    target = None if rule is None else jump_target(rule)
    if target is not None and target not in t.chains:
        raise CommandError(f"jump to undefined chain {target!r} in table {t.name}; expected a chain declared in "
                           "this table or a known target", cmd.words[-1][1])
    return rule


def _append(t: OpenTable, cmd: Command) -> None:
    chain, rules = _chain(t, cmd.words)
    rule = _checked(t, cmd, cmd.make_rule(chain, 2))
    if rule is not None:
        rules.append(rule)
        note_added(t, rule)


def _check(t: OpenTable, cmd: Command) -> None:
    chain, rules = _chain(t, cmd.words)
    spec = cmd.make_rule(chain, 2)
    if spec is not None and _find(rules, spec) < 0:
        raise CommandError(f"no rule of chain {chain!r} matches this rule spec; expected the options of an "
                           "existing rule", _spec_column(cmd.words, 2))


def _delete(t: OpenTable, cmd: Command) -> None:
    words = cmd.words
    chain, rules = _chain(t, words)
    if _has_number(words, 2):
        index = _number(words, 2, len(rules)) - 1
        _no_more(words, 3)
    else:
        spec = cmd.make_rule(chain, 2)
        if spec is None:
            return
        index = _find(rules, spec)
        if index < 0:
            raise CommandError(f"no rule of chain {chain!r} matches this rule spec; expected the options of an "
                               "existing rule (or its number)", _spec_column(words, 2))
    _note_removed(t, [rules.pop(index)])


def _insert(t: OpenTable, cmd: Command) -> None:
    chain, rules = _chain(t, cmd.words)
    position, first = 1, 2
    if _has_number(cmd.words, 2):
        position, first = _number(cmd.words, 2, len(rules) + 1), 3
    rule = _checked(t, cmd, cmd.make_rule(chain, first))
    if rule is not None:
        rules.insert(position - 1, rule)
        note_added(t, rule)


def _replace(t: OpenTable, cmd: Command) -> None:
    words = cmd.words
    chain, rules = _chain(t, words)
    word, col = _word(words, 2, "a rule number")
    if not _has_number(words, 2):
        raise CommandError(f"{words[0][0]} expects a rule number after the chain, found {word!r}", col)
    index = _number(words, 2, len(rules)) - 1
    rule = _checked(t, cmd, cmd.make_rule(chain, 3))
    if rule is not None:
        _note_removed(t, [rules[index]])
        rules[index] = rule
        note_added(t, rule)


def _flush(t: OpenTable, cmd: Command) -> str | None:
    words = cmd.words
    if len(words) == 1:
        for rules in t.rules.values():
            _note_removed(t, rules)
            rules.clear()
        return (f"'{words[0][0]}' without a chain: every chain of table {t.name} flushed, as "
                "iptables-legacy-restore does (iptables-nft-restore flushes only when the table existed before "
                "and --noflush is used)")
    _, rules = _chain(t, words)
    _no_more(words, 2)
    _note_removed(t, rules)
    rules.clear()
    return None


def _zero(t: OpenTable, cmd: Command) -> None:
    """Counters only: with `iptables-restore -c` they were loaded, and -Z sets them to 0 again."""
    words = cmd.words
    if len(words) == 1:
        chains = list(t.rules)
    else:
        chain, rules = _chain(t, words)
        if len(words) > 2:
            index = _number(words, 2, len(rules)) - 1
            _no_more(words, 3)
            rules[index] = _zeroed(rules[index])
            return
        chains = [chain]
    for name in chains:
        policy, counters, line = t.chains[name]
        if counters is not None:
            t.chains[name] = (policy, (0, 0), line)
        t.rules[name][:] = [_zeroed(rule) for rule in t.rules[name]]


def _zeroed(rule: Rule) -> Rule:
    return rule if rule.counters is None else Rule(rule.chain, rule.text, (0, 0), rule.line, rule.shape)


def _new_chain(t: OpenTable, cmd: Command) -> None:
    name, col = _word(cmd.words, 1, "a chain name")
    _no_more(cmd.words, 2)
    _check_new_name(t, name, col)
    t.chains[name] = (None, (0, 0), cmd.line)
    t.rules[name] = []


def _check_new_name(t: OpenTable, name: str, col: int) -> None:
    """What iptables checks of a new chain's name (xshared.c, do_parse)."""
    if name in t.chains:
        raise CommandError(f"chain {name!r} already exists in table {t.name} (line {t.chains[name][2]}); "
                           "expected a new chain name", col)
    if name in BUILTIN_TARGETS:
        raise CommandError(f"chain name {name!r} is a target's name; expected another name", col)
    if name.startswith(("-", "!")):
        raise CommandError(f"chain name {name!r} starts with {name[0]!r}; expected a name that does not", col)
    if len(name) > MAX_CHAIN_NAME:
        raise CommandError(f"chain name {name!r} is {len(name)} characters long; expected at most "
                           f"{MAX_CHAIN_NAME}", col)


def _delete_chain(t: OpenTable, cmd: Command) -> str | None:
    words = cmd.words
    refs = _references(t)
    warning = None
    if len(words) == 1:
        doomed = sorted(name for name, (policy, _, _) in t.chains.items() if policy is None)
        for name in doomed:  # name order, as libiptc keeps its chains; any one that cannot go fails the command
            _check_deletable(t, name, refs, words[0][1])
        closed = [name for name, (policy, _, _) in t.chains.items() if policy == "DROP" and not t.rules[name]]
        if closed:
            warning = (f"'{words[0][0]}' without a chain: built-in chain{'s' if len(closed) > 1 else ''} "
                       f"{', '.join(closed)} kept with policy DROP, as iptables-legacy-restore does "
                       "(iptables-nft-restore also deletes empty built-in chains, and then the hook accepts)")
    else:
        name, _ = _chain(t, words)
        col = words[1][1]
        _no_more(words, 2)
        if t.chains[name][0] is not None:
            raise CommandError(f"cannot delete built-in chain {name!r}; expected a user chain", col)
        _check_deletable(t, name, refs, col)
        doomed = [name]
    for name in doomed:
        del t.chains[name], t.rules[name]
        refs.pop(name, None)
    return warning


def _check_deletable(t: OpenTable, name: str, refs: Counter[str], col: int) -> None:
    count = refs[name]
    if count:
        users = [f"line {rule.line}" for rules in t.rules.values() for rule in rules if jump_target(rule) == name]
        raise CommandError(f"chain {name!r} is still referenced ({_plural(count, 'rule')} "
                           f"jump{'s' if count == 1 else ''} to it: {', '.join(users[:3])}); expected -X only of "
                           "a chain no rule jumps to", col)
    if t.rules[name]:
        raise CommandError(f"chain {name!r} still has {_plural(len(t.rules[name]), 'rule')}; expected -X only of an "
                           f"empty chain (flush it first with ':{name} - [0:0]' or '-F {name}', as kube-proxy "
                           "does)", col)


def _policy(t: OpenTable, cmd: Command) -> None:
    words = cmd.words
    name, col = _word(words, 1, "a built-in chain name")
    policy, policy_col = _word(words, 2, "a policy (ACCEPT or DROP)")
    _no_more(words, 3)
    if name not in t.builtin:
        raise CommandError(f"{name!r} is not a built-in chain of table {t.name}; expected one of "
                           f"{', '.join(t.builtin)}", col)
    if policy not in POLICIES:
        raise CommandError(f"bad policy {policy!r}; expected ACCEPT or DROP", policy_col)
    if name in t.chains:
        # The chain's line becomes this one: evidence for a policy decision points at where it was set.
        t.chains[name] = (policy, t.chains[name][1], cmd.line)
    else:
        t.chains[name] = (policy, (0, 0), cmd.line)
        t.rules[name] = []


def _rename(t: OpenTable, cmd: Command) -> None:
    words = cmd.words
    old, _ = _chain(t, words)
    new, col = _word(words, 2, "the chain's new name")
    _no_more(words, 3)
    if t.chains[old][0] is not None:
        raise CommandError(f"cannot rename built-in chain {old!r}; expected a user chain", words[1][1])
    _check_new_name(t, new, col)
    refs = _references(t)
    # The chain keeps its place; its rules and every jump to it follow the new name, as libiptc renames.
    # The dicts are changed in place: the loader holds them.
    chains, rules = list(t.chains.items()), list(t.rules.items())
    t.chains.clear()
    t.chains.update((new if name == old else name, value) for name, value in chains)
    t.rules.clear()
    t.rules.update((new if name == old else name, value) for name, value in rules)
    for name, chain_rules in t.rules.items():
        chain_rules[:] = [_renamed(rule, name, old, new) for rule in chain_rules]
    refs[new] = refs.pop(old, 0)


def _renamed(rule: Rule, chain: str, old: str, new: str) -> Rule:
    text = rule.text
    if jump_target(rule) == old:
        text = text[:text.rfind(" ") + 1] + new
    elif chain == rule.chain:
        return rule
    return Rule(chain, text, rule.counters, rule.line, rule.shape)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


_HANDLERS: Mapping[str, Callable[[OpenTable, Command], str | None]] = MappingProxyType({
    "-A": _append, "-C": _check, "-D": _delete, "-I": _insert, "-R": _replace, "-F": _flush, "-Z": _zero,
    "-N": _new_chain, "-X": _delete_chain, "-P": _policy, "-E": _rename,
})
