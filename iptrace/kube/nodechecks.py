"""The audit's checks of a node that read none of its Service ports: no kube-proxy rules, another proxy mode or
layout version than its cluster's other nodes, rules in both iptables backends, an extra dump that could not be read.
A cluster's proxy modes and layouts are counted once (Modes), not once a node: linear in the nodes (counted per node,
a 1,000-node audit read each node's digest two million times). Pure."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from iptrace.kube.compare import BACKEND_SPLIT, ERA_MISMATCH, LOAD_ERROR, NO_KUBE_PROXY_RULES, Finding, listing
from iptrace.kube.digest import NodeResult
from iptrace.layout import PARTIAL_DUMP, ProxyMode
from iptrace.text import counted

# A node whose kube-proxy runs in another proxy mode than the others' (a fleet migrating to nftables mode).
PROXY_MODE_MISMATCH = "proxy-mode-mismatch"


@dataclass(frozen=True, slots=True)
class Modes:
    """The proxy modes and layouts of a cluster's nodes with kube-proxy rules (`count` of them), each counted once,
    with what the checks name of them: each layout's first node's ProxyMode and each mode's nodes, in audit order."""

    count: int
    modes: Counter[str]
    eras: dict[str, Counter[str]]  # proxy mode → its nodes' layout names
    firsts: dict[tuple[str, str], ProxyMode]  # (proxy mode, layout name) → the first such node's
    names: dict[str, list[str]]  # proxy mode → its nodes


def modes_of(proxied: Sequence[NodeResult]) -> Modes:
    modes: Counter[str] = Counter()
    eras: dict[str, Counter[str]] = {}
    firsts: dict[tuple[str, str], ProxyMode] = {}
    names: dict[str, list[str]] = {}
    for r in proxied:
        primary = r.primary
        if primary is None:
            continue
        proxy = primary.proxy
        modes[proxy.mode] += 1
        eras.setdefault(proxy.mode, Counter())[proxy.name] += 1
        firsts.setdefault((proxy.mode, proxy.name), proxy)
        names.setdefault(proxy.mode, []).append(r.name)
    return Modes(len(proxied), modes, eras, firsts, names)


def node_checks(r: NodeResult, proxied: Modes) -> list[Finding]:
    """The node's findings of these checks; `proxied`: its cluster's nodes with kube-proxy rules (for a node
    without: every cluster's)."""
    out: list[Finding] = []
    fam = r.primary
    assert fam is not None
    era = fam.proxy
    if not r.proxied:
        detail = "; ".join(fam.warnings) or "no kube-proxy Service rules"
        if proxied.count:
            detail += (f". {counted(proxied.count, 'other node has', 'other nodes have')} kube-proxy rules, so "
                       "Services do not work the same here")
        fix = ("check that kube-proxy runs on this node (kubectl -n kube-system get pods -o wide | grep kube-proxy) "
               "and in which --proxy-mode, or that the Service proxy replacing it is healthy")
        if era.name == PARTIAL_DUMP:  # (kube-proxy runs; the file lacks the part with its Service rules)
            fix = "collect this node's whole `iptables-save` output again (`iptrace collect`) and audit again"
        elif era.legacy_tables_present and r.legacy_note is None:  # (its rules may be there, not collected)
            fix = ("collect `iptables-legacy-save` from this node too (`iptrace collect` does when "
                   "iptables-nft-save warns) and audit again: kube-proxy may write its rules there; else " + fix)
        what = f" ({era.name})" if era.name != "none" else ""  # ("none" says nothing more)
        out.append(Finding(NO_KUBE_PROXY_RULES, "error", r.name, None,
                           f"{r.name}: no kube-proxy {era.dataplane} rules{what}", detail, fix))
    elif proxied.count:
        mode_finding = _mode_check(r.name, era, proxied)
        if mode_finding is not None:
            out.append(mode_finding)
        # Layout versions are compared among the nodes of one proxy mode only.
        eras = proxied.eras[era.mode]
        common, count = eras.most_common(1)[0]
        if era.name != common and count > eras[era.name]:
            others = proxied.firsts[era.mode, common]
            out.append(Finding(
                ERA_MISMATCH, "warning", r.name, None,
                f"{r.name}: kube-proxy writes the {era.name} layout ({era.version_hint}); "
                f"{counted(count, 'other node writes', 'other nodes write')} the {common} layout "
                f"({others.version_hint})",
                "Different kube-proxy versions handle traffic policies, terminating endpoints and source ranges "
                "differently; " + "; ".join(era.evidence),
                "run the same kube-proxy version on every node (check the DaemonSet's image and any node "
                "running a static pod)"))
    if era.legacy_tables_present:
        detail = ("iptables-nft-save warned that iptables-legacy tables are present: some component writes to "
                  "the legacy backend, and the kernel runs both, so the rules that decide may not be these. ")
        detail += r.legacy_note or ("Collect iptables-legacy-save too (iptrace collect does when it sees the "
                                           "warning).")
        out.append(Finding(
            BACKEND_SPLIT, "warning", r.name, None, f"{r.name}: rules in both iptables backends (nft and legacy)",
            detail, "make every component on the node use one backend (the nft one on current distributions); "
            "remove the legacy rules with iptables-legacy -F/-X once nothing writes them"))
    for p in r.load_warnings:
        out.append(Finding(LOAD_ERROR, "warning", r.name, None, f"{r.name}: an extra dump could not be read",
                           str(p), "re-collect this node"))
    return out


def _mode_check(name: str, era: ProxyMode, proxied: Modes) -> Finding | None:
    """proxy-mode-mismatch for a node in a minority (or a tie) of kube-proxy's proxy modes across the fleet. Its
    Service ports are still compared with the other nodes' (the view is the same in every mode)."""
    modes = proxied.modes
    mine = era.mode
    others = [(count, mode) for mode, count in modes.items() if mode != mine]
    if not others:
        return None
    count, mode = max(others)
    if count < modes[mine]:
        return None
    holders = proxied.names[mode]
    return Finding(
        PROXY_MODE_MISMATCH, "warning", name, None,
        f"{name}: kube-proxy runs in {mine} mode here; {counted(count, 'other node runs', 'other nodes run')} it "
        f"in {mode} mode",
        f"Nodes in {mode} mode: {listing(holders)}. This node's rules are {era.dataplane} rules "
        f"({era.name}). Its Service ports are compared with the other nodes' as on any node: a Service "
        "port it forwards differently has a finding of its own; none means it forwards every one as they do "
        "(what one mode cannot show, such as a health check nodePort in nftables mode, is not compared).",
        "finish the migration: give every node's kube-proxy the same mode (the KubeProxyConfiguration `mode`, "
        "or --proxy-mode) and restart the odd ones; `iptrace diff IPTABLES_DUMP NFT_RULESET` of one node "
        "checks first that both modes forward every Service port alike")
