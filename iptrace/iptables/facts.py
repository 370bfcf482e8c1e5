"""What one kube-proxy rule says, read fast: addresses, ports, statistic, affinity, marks and the target.

The service view reads every rule of a 160,000-rule dump, so it does not build `Rule.matches`: each rule
shape gets a reading plan once (which token holds which option), turned into a reader function for that
shape, and each rule is tokenized at most once.
Pure; knows nothing about Services, only about the match modules kube-proxy and kubelet write.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from iptrace.iptables.model import TOKEN_RE, Rule, RuleShape, unquote

# Match options whose value the view reads: option name -> RuleFacts attribute.
_FIELDS: dict[str, str] = {
    "-s": "src", "--source": "src", "-d": "dst", "--destination": "dst", "-p": "proto", "--protocol": "proto",
    "-i": "in_iface", "--in-interface": "in_iface", "-o": "out_iface", "--out-interface": "out_iface",
    "--dport": "dport", "--destination-port": "dport", "--comment": "comment",
    "--src-type": "src_type", "--dst-type": "dst_type", "--probability": "probability", "--mode": "mode",
    "--every": "every", "--packet": "packet", "--seconds": "seconds", "--name": "recent_name",
    "--ctstate": "ctstate", "--state": "ctstate", "--mark": "mark", "--nfacct-name": "nfacct",
}
# Options that set a flag: name -> attribute.
_FLAGS: dict[str, str] = {"--rcheck": "recent_check", "--update": "recent_check", "--set": "recent_set"}
# Options that change nothing for a first packet (or only refine a module the view already reads).
_HARMLESS = frozenset({"--reap", "--rsource", "--rdest", "--mask", "--limit-iface-in", "--limit-iface-out",
                       "-f"})
# Target options: name -> attribute.
_TARGET_FIELDS: dict[str, str] = {
    "--to-destination": "to_destination", "--or-mark": "set_mark", "--set-xmark": "set_mark",
    "--set-mark": "set_mark", "--reject-with": "reject_with", "--to-ports": "to_ports",
}
_TARGET_FLAGS: dict[str, str] = {"--random-fully": "random_fully"}


class RuleFacts:
    """The parts of one rule the kube-proxy view needs. Absent options are None (flags False).

    Addresses are kept as written except that a host prefix (`/32`, `/128`) is dropped, because kube-proxy
    writes bare IPs and iptables-save adds the prefix. Unset attributes fall back to the class defaults, so
    reading a rule only stores what it has (a dump has ~10^5 of these)."""

    comment: str | None = None
    ctstate: str | None = None
    dport: str | None = None
    dst: str | None = None
    dst_type: str | None = None
    every: str | None = None
    in_iface: str | None = None
    mark: str | None = None
    mode: str | None = None
    nfacct: str | None = None
    out_iface: str | None = None
    packet: str | None = None
    probability: str | None = None
    proto: str | None = None
    recent_name: str | None = None
    reject_with: str | None = None
    seconds: str | None = None
    set_mark: str | None = None
    src: str | None = None
    src_type: str | None = None
    to_destination: str | None = None
    to_ports: str | None = None
    ctstate_neg = dport_neg = dst_neg = dst_type_neg = in_iface_neg = mark_neg = False
    out_iface_neg = proto_neg = src_neg = src_type_neg = False
    goto = random_fully = recent_check = recent_set = False
    target = ""
    unknown: str | None = None

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.line = rule.line

    def __repr__(self) -> str:
        return f"RuleFacts(line={self.line}, {self.rule.to_save()!r})"


_KNOWN_MODULES = frozenset({"", "tcp", "udp", "sctp", "comment", "statistic", "recent", "addrtype", "nfacct",
                            "conntrack", "state", "mark"})


@dataclass(frozen=True, slots=True)
class _Plan:
    """How to read every rule of one shape: (attribute, token index, negated) per value, flags to set."""

    values: tuple[tuple[str, int, bool], ...]
    flags: tuple[str, ...]
    target_index: int
    goto: bool
    n_tokens: int
    unknown: str | None
    needs_tokens: bool


# id(shape) -> (shape, its reader): a dump has a few hundred shapes, and a loader's shapes live as long as
# the rules that share them.
_READERS: dict[int, tuple[RuleShape, Callable[[Rule], RuleFacts]]] = {}


def _plan(shape: RuleShape) -> _Plan:
    values: list[tuple[str, int, bool]] = []
    flags: list[str] = []
    unknown: str | None = None
    in_target = False
    seen: set[str] = set()
    for slot in shape.slots:
        kind = slot[0]
        if kind == "target":
            in_target = True
        elif kind == "match":
            in_target = False
            if slot[1] is not None and slot[1] not in _KNOWN_MODULES and unknown is None:
                unknown = f"-m {slot[1]}"
        elif kind == "opt":
            name, negated, args = slot[1], slot[2], slot[3]
            fields, flag_fields = (_TARGET_FIELDS, _TARGET_FLAGS) if in_target else (_FIELDS, _FLAGS)
            attr = fields.get(name)
            if attr is not None and args:
                if attr not in seen:  # the first occurrence decides, as Rule.option() reads it
                    seen.add(attr)
                    values.append((attr, args[0], negated))
            elif name in flag_fields:
                flags.append(flag_fields[name])
            elif not in_target and name not in _HARMLESS and unknown is None:
                unknown = name
    # A match module given by token (slot[1] None) is resolved per rule only when unknown; kube-proxy's
    # modules always come through the table, so a shape with one is read token by token.
    module_tokens = tuple(slot[2] for slot in shape.slots if slot[0] == "match" and slot[1] is None)
    plan = _Plan(tuple(values), tuple(flags), shape.target_index, shape.goto, shape.n_tokens, unknown,
                 bool(values) or bool(module_tokens))
    if module_tokens:
        plan = _Plan(plan.values + tuple(("_module", i, False) for i in module_tokens), plan.flags,
                     plan.target_index, plan.goto, plan.n_tokens, plan.unknown, True)
    return plan


def read(rule: Rule) -> RuleFacts:
    """Read one rule. A rule the loader could not shape keeps only its target-less facts."""
    shape = rule[4]
    if shape is None:
        return RuleFacts(rule)
    cached = _READERS.get(id(shape))
    reader = cached[1] if cached is not None and cached[0] is shape else _reader(shape)
    return reader(rule)


# id(shape) -> (shape, whether its rules end with their target, the RuleFacts attributes its rules set).
_FIELDS_OF: dict[int, tuple[RuleShape, bool, frozenset[str]]] = {}


def shape_fields(shape: RuleShape) -> tuple[bool, frozenset[str]]:
    """What every rule of `shape` gives `read`: whether its target is its last token, and which attributes (values,
    flags; `unknown` and a module's name too) it sets besides `target` and `goto`. A reader that wants only the
    target of a rule whose shape sets nothing else it needs can take its last token: the text after its last space
    (rule texts are single-spaced: the loader joins the tokens of any other), unless that token has a quote in it
    (then `read` the rule: whatever tokenizer `read` picks, an unquoted last token is that text)."""
    found = _FIELDS_OF.get(id(shape))
    if found is not None and found[0] is shape:
        return found[1], found[2]
    plan = _plan(shape)
    attrs = frozenset([attr for attr, _i, _neg in plan.values] + list(plan.flags)
                      + (["unknown"] if plan.unknown is not None else []))
    last = 0 <= plan.target_index == plan.n_tokens - 1
    _FIELDS_OF[id(shape)] = (shape, last, attrs)
    return last, attrs


def _reader(shape: RuleShape) -> Callable[[Rule], RuleFacts]:
    """A function that reads every rule of `shape`, generated from its plan.

    This is the loop over the plan's values unrolled into straight code (as `dataclasses` and `namedtuple`
    generate theirs): the branches on the attribute name, the quoting and the host prefix are decided
    once per shape, not once per rule of a 160,000-rule dump."""
    plan = _plan(shape)
    n = plan.n_tokens
    body = ["def read_shape(rule):", "    f = _new(RuleFacts)", "    f.rule = rule", "    f.line = rule[3]",
            "    text = rule[1]"]
    if plan.needs_tokens or 0 <= plan.target_index != n - 1:
        # Fast when, as in every kube-proxy rule, at most one token is quoted; else the full tokenizer.
        body += ["    first = text.find('\"')",
                 "    if first < 0:",
                 "        t = text.split()",
                 "    else:",
                 "        last = text.rfind('\"')",
                 "        t = text[:first].split()",
                 "        t.append(text[first:last + 1])",
                 "        t.extend(text[last + 1:].split())",
                 f"    if len(t) != {n}:",
                 "        t = _findall(text)"]
        if plan.target_index >= 0:
            body.append(f"    f.target = t[{plan.target_index}]")
    elif plan.target_index >= 0:
        body.append("    f.target = text.rsplit(None, 1)[-1]")
    if plan.target_index >= 0 and plan.goto:
        body.append("    f.goto = True")
    if plan.unknown is not None:
        body.append(f"    f.unknown = {plan.unknown!r}")
    for attr, index, negated in plan.values:
        if attr == "_module":
            body += [f"    v = t[{index}]",
                     "    if v not in _KNOWN_MODULES and 'unknown' not in f.__dict__:",
                     "        f.unknown = '-m ' + v"]
            continue
        body += [f"    v = t[{index}]", "    if v[:1] == '\"':", "        v = _unquote(v) if '\\\\' in v else v[1:-1]"]
        if attr in ("src", "dst"):
            body += ["    elif v.endswith('/32') or v.endswith('/128'):", "        v = v[:v.rindex('/')]"]
        body.append(f"    f.{attr} = v")
        if negated:
            body.append(f"    f.{attr}_neg = True")
    body += [f"    f.{flag} = True" for flag in plan.flags]
    body.append("    return f")
    namespace = {"_new": object.__new__, "RuleFacts": RuleFacts, "_findall": TOKEN_RE.findall,
                 "_KNOWN_MODULES": _KNOWN_MODULES, "_unquote": unquote}
    exec("\n".join(body), namespace)
    reader: Callable[[Rule], RuleFacts] = namespace["read_shape"]
    _READERS[id(shape)] = (shape, reader)
    return reader
