"""Which base chains a packet meets at each netfilter hook, in the kernel's order.

Every table of the packet's family takes part (ip or ip6, and inet for both): kube-proxy's, iptables-nft's
`ip filter`/`ip nat`, a CNI's, firewalld's. Chains on one hook run by priority, chains of equal priority the
newest first (nf_hook_entries_grow inserts a new hook before its equals; the kernel oracle sees kube-proxy's
filter-forward run before an older table's forward chain of priority filter): the listing shows tables and
chains in the order they were created, so among equals a later one runs earlier. NAT chains are special
(nf_nat_register_fn): they are not hooked one by one but called, in their own priority order, from the one NAT
hook at the hook's fixed NAT priority (-100 for prerouting/output, 100 for postrouting/input), and only until
one of them has set up the connection's mapping (nf_nat_inet_fn).
"""

from __future__ import annotations

from dataclasses import dataclass

from iptrace.nftables.model import Chain, Ruleset, Table

TABLE_FAMILIES = {4: ("ip", "inet"), 6: ("ip6", "inet")}
NAT_PRIORITY = {"prerouting": -100, "output": -100, "postrouting": 100, "input": 100}
WALKED_FAMILIES = frozenset({"ip", "ip6", "inet"})


@dataclass(frozen=True, slots=True)
class Stage:
    """One entry of a hook: one base chain, or (nat) the NAT chains called together."""

    nat: bool
    chains: tuple[tuple[Table, Chain], ...]


def base_chains(ruleset: Ruleset) -> tuple[tuple[Table, Chain], ...]:
    """Every base chain of the ruleset, in listing order (a 5,000-Service table has ~50,000 plain chains: the
    walk looks them over once, not once per hook)."""
    return tuple((table, chain) for table in ruleset.tables for chain in table.chains if chain.base is not None)


def hook_stages(ruleset: Ruleset, version: int, hook: str,
                bases: tuple[tuple[Table, Chain], ...] | None = None) -> tuple[Stage, ...]:
    """The stages of `hook` for IPv`version`; `bases`: base_chains(ruleset), when the caller keeps it."""
    families = TABLE_FAMILIES[version]
    entries: list[tuple[int, int, Table, Chain]] = []
    position = 0
    for table, chain in bases if bases is not None else base_chains(ruleset):
        base = chain.base
        if table.family not in families or base is None or base.hook != hook:
            continue
        entries.append((base.priority, position, table, chain))
        position += 1
    stages: list[tuple[int, int, Stage]] = []
    nat = [e for e in entries if e[3].base.type == "nat"]  # type: ignore[union-attr]
    for priority, pos, table, chain in entries:
        if chain.base.type != "nat":  # type: ignore[union-attr]
            stages.append((priority, pos, Stage(False, ((table, chain),))))
    if nat:
        nat.sort(key=lambda e: (e[0], -e[1]))
        at = NAT_PRIORITY.get(hook, nat[0][0])
        # The NAT hook itself was registered with the first NAT chain created.
        stages.append((at, min(e[1] for e in nat), Stage(True, tuple((e[2], e[3]) for e in nat))))
    stages.sort(key=lambda e: (e[0], -e[1]))
    return tuple(s for _, _, s in stages)


def unwalked_tables(ruleset: Ruleset) -> list[str]:
    """Tables with base chains the walk does not enter (bridge, netdev, arp; ingress/egress hooks)."""
    out = []
    for table in ruleset.tables:
        hooked = [c for c in table.chains if c.base is not None and c.rules]
        if not hooked:
            continue
        if table.family not in WALKED_FAMILIES or any(c.base.hook in ("ingress", "egress")  # type: ignore[union-attr]
                                                      for c in hooked):
            out.append(table.label)
    return out
