"""What one kube-proxy rule says, read fast: addresses, ports, statistic, affinity, marks and the target.

The service view reads every rule of a 160,000-rule dump, so it does not build `Rule.matches`: each rule
shape gets a reading plan once (which token holds which option), and each rule is tokenized at most once.
Pure; knows nothing about Services, only about the match modules kube-proxy and kubelet write.
"""

from __future__ import annotations

from dataclasses import dataclass

from iptrace.model.rules import TOKEN_RE, Rule, RuleShape, unquote

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


_PLANS: dict[int, tuple[RuleShape, _Plan]] = {}


def _plan(shape: RuleShape) -> _Plan:
    cached = _PLANS.get(id(shape))
    if cached is not None and cached[0] is shape:
        return cached[1]
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
    _PLANS[id(shape)] = (shape, plan)
    return plan


def tokens(text: str, n_tokens: int) -> list[str]:
    """The rule's tokens; fast when, as in every kube-proxy rule, at most one token is quoted."""
    first = text.find('"')
    if first < 0:
        out = text.split()
    else:
        last = text.rfind('"')
        out = text[:first].split()
        out.append(text[first:last + 1])
        out.extend(text[last + 1:].split())
    if len(out) != n_tokens:
        return TOKEN_RE.findall(text)
    return out


def read(rule: Rule) -> RuleFacts:
    """Read one rule. A rule the loader could not shape keeps only its target-less facts."""
    facts = RuleFacts(rule)
    shape = rule.shape
    if shape is None:
        return facts
    cached = _PLANS.get(id(shape))
    plan = cached[1] if cached is not None and cached[0] is shape else _plan(shape)
    text = rule.text
    toks = tokens(text, plan.n_tokens) if plan.needs_tokens else None
    d = facts.__dict__
    if plan.target_index >= 0:
        if toks is not None:
            d["target"] = toks[plan.target_index]
        elif plan.target_index == plan.n_tokens - 1:
            d["target"] = text.rsplit(None, 1)[-1]
        else:
            d["target"] = tokens(text, plan.n_tokens)[plan.target_index]
        if plan.goto:
            d["goto"] = True
    if plan.unknown is not None:
        d["unknown"] = plan.unknown
    if toks is not None:
        for attr, index, negated in plan.values:
            value = toks[index]
            if attr == "_module":
                if value not in _KNOWN_MODULES and "unknown" not in d:
                    d["unknown"] = f"-m {value}"
                continue
            if value[:1] == '"':
                value = unquote(value) if "\\" in value else value[1:-1]
            elif attr == "src" or attr == "dst":
                if value.endswith("/32") or value.endswith("/128"):
                    value = value[: value.rindex("/")]
            d[attr] = value
            if negated:
                d[attr + "_neg"] = True
    for flag in plan.flags:
        d[flag] = True
    return facts
