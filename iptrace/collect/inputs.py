"""Collected nodes read back and analysed: for each node the dumps of the dataplane kube-proxy actually
programs there (iptables-save, ip6tables-save, iptables-legacy-save or nft list ruleset), parsed and turned
into one iptrace.kube.analysis.Analysis per IP family. The I/O side of `audit`, `trace DIR/NODE` and friends.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iptrace import dataplanes
from iptrace.collect import store
from iptrace.errors import InputError, IptraceError, lenient_hint
from iptrace.kube.analysis import Analysis, analyse, known_ports
from iptrace.kube.audit import NodeInput
from iptrace.text import counted

NFT_FILE = "nft-ruleset.txt"


def dump_node_name(path: str) -> str:
    """The node a dump file given on the command line stands for: the file as the user gave it (its name; `stdin`
    for `-`), but for iptables-save's own `.txt` (`.txt.gz`), dropped as it always was (`node-a.txt` → `node-a`,
    `node-a.nft.gz` → `node-a.nft.gz`)."""
    if path in ("-", "<stdin>"):
        return "stdin"
    name = Path(path).name
    for suffix in (".txt.gz", ".txt"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name.removesuffix(suffix)
    return name


@dataclass(frozen=True)
class NodeDump:
    """One dump chosen to answer for a family: its dataplane, its parsed rules, and why it was chosen."""

    dataplane: Any
    ruleset: Any
    note: str | None = None  # said to the user when the choice is not the obvious iptables-save.txt
    layout: Any = None  # the chosen family's layout, read with the `known` ports it was chosen with
    split: str | None = None  # kube-proxy's rules are in both modes' dumps: what that means, which was read, why


def _kube_layout(dataplane: Any, ruleset: Any, family: str, known: Any) -> Any:
    """The layout of `family` when kube-proxy's rules are there, else None."""
    if family not in ruleset.families:
        return None
    layout = dataplane.layout(ruleset, family, known=known)
    return layout if layout.proxy.has_rules else None


# A kube-proxy table in an nft ruleset, as each form writes its header (listing and transaction, -j JSON): substring
# searches (a few ms), not a parse or a regex (~0.1 s), on an iptables-mode node whose ruleset (iptables-nft's own
# tables) is as big as its dump. A false hit (`table ip kube-proxy-old`) costs a load that then finds no table.
_KUBE_TABLE_MARKS = ("table ip kube-proxy", "table ip6 kube-proxy", '"name": "kube-proxy"', '"name":"kube-proxy"')
PROXY_MODES = ("iptables", "nftables")


def proxy_mode_of(snapshot: Any) -> str | None:
    """The proxy mode meta.json's `proxy_mode` says kube-proxy runs in on the node (`iptables` or `nftables`, as
    KubeProxyConfiguration's `mode`; written by hand where both modes' rules were collected), or None."""
    mode = snapshot.meta.get("proxy_mode")
    if mode is None or mode in PROXY_MODES:
        return mode
    raise InputError(f"{Path(snapshot.dump_path).parent / store.META_FILE}: `proxy_mode` is {mode!r}; expected "
                     f"{' or '.join(map(repr, PROXY_MODES))} (kube-proxy's --proxy-mode on this node)")


def choose_dump(snapshot: Any, family: str = "ipv4", *, lenient: bool = False, known: Any = (),
                memo: dict[str, Any] | None = None) -> NodeDump:
    """The dump of `snapshot` (a collect.store.NodeSnapshot) that answers for `family`: the iptables-save (or
    ip6tables-save) dump when kube-proxy's rules are there, else the legacy backend's, else the nftables
    ruleset's. When the iptables dump and the nft ruleset both hold kube-proxy's rules, meta.json's `proxy_mode`
    chooses (else the iptables dump) and `split` says so. `known`: the API's Service ports
    (kube.analysis.known_ports), to read the layout with. `memo`: dataplanes.load's, kept across the nodes of one
    audit. Raises IptraceError when the main dump cannot be read."""
    node = snapshot.node
    text = snapshot.dump_text
    name = str(snapshot.dump_path)
    mode = proxy_mode_of(snapshot)
    if family == "ipv6" and snapshot.ip6_dump_text:
        text, name = snapshot.ip6_dump_text, str(Path(snapshot.dump_path).parent / store.IP6_DUMP_FILE)
    if not text or text.isspace():  # (not `text.strip()`: a copy of a 25 MB dump, at a worker's peak)
        # iptables-save prints nothing on a node without iptables tables (nftables mode, kubelet writing none):
        # no rules to read there, kube-proxy's are in the nft ruleset (else the load below says what is missing),
        # which answers too for a family it has no table of.
        nft = _nft_kube(snapshot, family, lenient, known)
        if nft is None and holds_kube_proxy_table(snapshot):
            nft_dp, nft_rs = dataplanes.load(snapshot.nft_ruleset_text, lenient=lenient,
                                             source=str(Path(snapshot.dump_path).parent / NFT_FILE))
            nft = NodeDump(nft_dp, nft_rs, f"{snapshot.node}: kube-proxy runs in nftables mode here; analyzing "
                                           f"{NFT_FILE}")
        if nft is not None:
            return nft
    dataplane, ruleset = dataplanes.load(text, source=name, lenient=lenient, memo=memo)
    layout = _kube_layout(dataplane, ruleset, family, known)
    if layout is not None:
        return _with_nft(snapshot, NodeDump(dataplane, ruleset, layout=layout), family, lenient, known, mode)
    if snapshot.legacy_dump_text and family == "ipv4":
        legacy_dp, legacy = dataplanes.load(snapshot.legacy_dump_text, lenient=lenient,
                                            source=str(Path(snapshot.dump_path).parent / store.LEGACY_DUMP_FILE))
        layout = _kube_layout(legacy_dp, legacy, family, known)
        if layout is not None:
            chosen = NodeDump(legacy_dp, legacy, f"{node}: kube-proxy's rules are in the legacy iptables backend; "
                                                 f"analyzing {store.LEGACY_DUMP_FILE}", layout)
            return _with_nft(snapshot, chosen, family, lenient, known, mode)
    nft = _nft_kube(snapshot, family, lenient, known)
    if nft is not None:
        return nft
    return NodeDump(dataplane, ruleset)


def holds_kube_proxy_table(snapshot: Any) -> bool:
    """Whether the node's nft ruleset has a kube-proxy table (of any family; found by its header)."""
    nft = snapshot.nft_ruleset_text
    return bool(nft) and any(mark in nft for mark in _KUBE_TABLE_MARKS)


def _nft_kube(snapshot: Any, family: str, lenient: bool, known: Any) -> NodeDump | None:
    """The node's nft ruleset when kube-proxy's table for `family` holds rules, else None."""
    if not holds_kube_proxy_table(snapshot):
        return None
    nft = snapshot.nft_ruleset_text
    nft_dp, nft_rs = dataplanes.load(nft, source=str(Path(snapshot.dump_path).parent / NFT_FILE), lenient=lenient)
    layout = _kube_layout(nft_dp, nft_rs, family, known)
    if layout is None:
        return None
    return NodeDump(nft_dp, nft_rs, f"{snapshot.node}: kube-proxy runs in nftables mode here; analyzing {NFT_FILE}",
                    layout)


def _with_nft(snapshot: Any, chosen: NodeDump, family: str, lenient: bool, known: Any,
              mode: str | None) -> NodeDump:
    """`chosen` (an iptables dump with kube-proxy's rules), or the nft ruleset when it holds kube-proxy's table too
    and meta.json says nftables mode; either way, with both modes' rules, `split` says what that means. A ruleset
    that cannot be read leaves `chosen` alone (unread_nft names it)."""
    if chosen.dataplane.name == "nftables":
        return chosen  # (the node's dump is itself an nft ruleset, e.g. nft-ruleset.txt saved alone: no other mode)
    try:
        nft = _nft_kube(snapshot, family, lenient, known)
    except IptraceError:
        return chosen
    iptables_file = Path(chosen.ruleset.source).name
    if nft is None:
        if mode != "nftables":
            return chosen
        # (meta.json says nftables mode, yet only the iptables dump holds kube-proxy's rules: said, not silent)
        said = (f"{snapshot.node}: meta.json's proxy_mode says nftables, but {NFT_FILE} holds no kube-proxy table "
                f"for {family}; analyzing {iptables_file}, where kube-proxy's rules are")
        return NodeDump(chosen.dataplane, chosen.ruleset, f"{chosen.note}; {said}" if chosen.note else said,
                        chosen.layout)
    table = "ip6 kube-proxy" if family == "ipv6" else "ip kube-proxy"
    picked, why = ((nft, "meta.json's proxy_mode says nftables") if mode == "nftables" else
                   (chosen, "meta.json's proxy_mode says iptables") if mode == "iptables" else
                   (chosen, "nothing collected says which mode kube-proxy runs in; iptables is the dump collect "
                            "reads first"))
    picked_file = NFT_FILE if picked is nft else iptables_file
    split = (f"{snapshot.node}: kube-proxy's rules are there in both proxy modes: {iptables_file} holds "
             f"{counted(len(chosen.layout.service_ports), 'Service port')} in iptables mode "
             f"({chosen.layout.proxy.name}) and "
             f"{NFT_FILE}'s table {table} {len(nft.layout.service_ports)} in nftables mode ({nft.layout.proxy.name}). "
             "The kernel runs both: every packet passes both, and the first rule to DNAT it decides (both nat "
             "chains hook at priority dstnat, where the one registered last runs first: the dumps cannot tell "
             f"which). Analyzing {picked_file}: {why}; set \"proxy_mode\" (iptables or nftables) in the node's "
             f"meta.json to choose, and `iptrace diff {chosen.ruleset.source} {nft.ruleset.source}` shows where the "
             "two differ.")
    return NodeDump(picked.dataplane, picked.ruleset, picked.note, picked.layout, split)


def _looks_cut(text: str) -> bool:
    """Whether an nft ruleset's text may be cut short: every form nft writes (a listing, `-j`'s JSON, a transaction)
    ends with a newline and closes every brace it opens. Two counts, not a parse: an iptables-mode node's
    nft-ruleset.txt (iptables-nft's own tables) is as big as its dump, and its analysis never reads it."""
    return not text.endswith("\n") or text.count("{") != text.count("}")


def unread_nft(snapshot: Any, chosen: NodeDump) -> str | None:
    """What the node's nft-ruleset.txt cannot be read for (file:line:column and what was expected) when another
    dump answers for the node and the ruleset looks cut short; None when it reads, is not there, or answers."""
    if chosen.dataplane.name == "nftables":
        return None
    text = snapshot.nft_ruleset_text
    if not text or not _looks_cut(text):
        return None
    try:
        dataplanes.load(text, source=str(Path(snapshot.dump_path).parent / NFT_FILE))
    except IptraceError as exc:
        return str(exc)
    return None


def misread_nft(snapshot: Any, chosen: NodeDump) -> str | None:
    """What collect said of the node's nft listing when it is the dump that answers and nft could not read every
    rule (meta.json `nft.status` "misread": an nft older than the rules' writer), else None."""
    nft = snapshot.meta.get("nft")
    if chosen.dataplane.name != "nftables" or not isinstance(nft, dict) or nft.get("status") != "misread":
        return None
    return str(nft.get("error") or "nft could not read every rule when it listed them")


def legacy_note_for(dataplane: Any, legacy: Any) -> str:
    """What a node's iptables-legacy dump holds of kube-proxy's, for the audit's backend-split finding."""
    ports = dataplane.layout(legacy, legacy.families[0]).service_ports
    if not ports:
        return "The collected legacy dump holds no kube-proxy Service chains."
    example = ports[0].name or ports[0].cluster_chain or ports[0].key
    return (f"The legacy dump holds {counted(len(ports), 'kube-proxy Service port')} (e.g. {example}): kube-proxy "
            "(or an old copy of it) writes there too.")


# IPv4 rules show an IPv4 address within their first rules (or iptables-save's own header says so): an
# ip6tables-save.txt is said to hold IPv4 rules only on such evidence, never because it shows no IPv6 address.
_IPV4_HINT_RE = re.compile(r" -[sd] !? ?\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}[/ ]|^# Generated by iptables-", re.M)


def misfiled(snapshot: Any, chosen: NodeDump, family: str) -> str | None:
    """What it means that the node's ip6tables-save.txt holds IPv4 rules, or that its iptables-save.txt holds IPv6
    ones while an ip6tables-save.txt is there too (a hand-made directory with the two files swapped), when `chosen`
    is that file answering for `family`; else None. An iptables-save.txt of IPv6 rules alone is an IPv6-only node's
    one dump, read as it is."""
    ruleset = chosen.ruleset
    if chosen.dataplane.name != "iptables" or family in ruleset.families:
        return None
    name = Path(ruleset.source).name
    v4_rules = bool(snapshot.ip6_dump_text) and _IPV4_HINT_RE.search(snapshot.ip6_dump_text, 0, 262144) is not None
    files = f"{store.DUMP_FILE} is for iptables-save's output, {store.IP6_DUMP_FILE} for ip6tables-save's"
    if name == store.DUMP_FILE and family == "ipv4" and snapshot.ip6_dump_text:
        other = ("holds IPv4 rules and is not read: the two files look swapped" if v4_rules else
                 "is not read")
        return (f"{snapshot.node}: {store.DUMP_FILE} holds IPv6 rules (ip6tables-save's output) and "
                f"{store.IP6_DUMP_FILE} beside it {other}; {files}")
    if name == store.IP6_DUMP_FILE and v4_rules:
        return (f"{snapshot.node}: {store.IP6_DUMP_FILE} holds IPv4 rules (iptables-save's output), so it answers "
                f"for no IPv6 Service; {files}")
    return None


def node_input(snapshot: Any, *, cluster: Any = None, lenient: bool = False,
               memo: dict[str, Any] | None = None) -> NodeInput:
    """The audit's view of one collected node: an Analysis per family. A dump that cannot be read becomes
    the node's `error` (the main dump) or a load warning (an extra one); it never stops the audit. `memo`:
    dataplanes.load's, shared by the nodes one process of an audit reads."""
    meta = dict(snapshot.meta)
    problems: list[str] = []
    analyses: dict[str, Analysis] = {}
    legacy_note = None
    try:
        chosen = choose_dump(snapshot, "ipv4", lenient=lenient, known=known_ports(cluster, "ipv4"), memo=memo)
    except IptraceError as exc:
        return NodeInput(snapshot.node, {}, str(exc) + lenient_hint(exc), tuple(snapshot.addresses), meta)
    routes = node_routes(snapshot, lenient, problems)
    for family in dataplanes.analysed_families(chosen.ruleset):
        analyses[family] = analyse(chosen.dataplane, chosen.ruleset, family, node_ips=snapshot.addresses,
                                   cluster=cluster, layout=chosen.layout if family == "ipv4" else None,
                                   routes=routes)
    misfiled_said = misfiled(snapshot, chosen, "ipv4")
    if "ipv6" not in analyses and snapshot.ip6_dump_text:
        try:
            v6 = choose_dump(snapshot, "ipv6", lenient=lenient, known=known_ports(cluster, "ipv6"), memo=memo)
            if "ipv6" in v6.ruleset.families:
                analyses["ipv6"] = analyse(v6.dataplane, v6.ruleset, "ipv6", node_ips=snapshot.addresses,
                                           cluster=cluster, layout=v6.layout, routes=routes)
            else:
                misfiled_said = misfiled(snapshot, v6, "ipv6")
        except IptraceError as exc:
            problems.append(str(exc) + lenient_hint(exc))
    if snapshot.legacy_dump_text and chosen.note is None:
        try:
            legacy_dp, legacy = dataplanes.load(snapshot.legacy_dump_text, lenient=lenient, source=str(
                Path(snapshot.dump_path).parent / store.LEGACY_DUMP_FILE))
            legacy_note = legacy_note_for(legacy_dp, legacy)
        except IptraceError as exc:
            problems.append(str(exc) + lenient_hint(exc))
    nft_problem = unread_nft(snapshot, chosen)
    if nft_problem is not None:
        problems.append(nft_problem)
    failed = store.failed_attempt_note(snapshot.node, snapshot.meta)
    if failed is not None:
        meta["failed_attempt_note"] = failed
    if chosen.note is not None:
        meta["dataplane_note"] = chosen.note
    if misfiled_said is not None:
        meta["misfiled"] = misfiled_said
    if chosen.split is not None:
        meta["mode_split"] = chosen.split
    if (misread := misread_nft(snapshot, chosen)) is not None:
        meta["nft_misread"] = misread
    meta["dataplane"] = chosen.dataplane.name
    if problems:
        meta["load_warnings"] = problems
    return NodeInput(snapshot.node, analyses, None, tuple(snapshot.addresses), meta, legacy_note)


def read_routes(path: str, *, lenient: bool = False) -> Any:
    """A routes file (iptrace.routes.Routes: `cat /proc/net/route /proc/net/ipv6_route`) as the command line names it
    (iptrace.dumpfile.read_bytes: `-`, gzip, …). Raises IptraceError naming file:line:column."""
    from iptrace.dumpfile import read_bytes
    from iptrace.routes import parse_routes
    from iptrace.text import decode_input

    data, name = read_bytes(path, "the node's routes (`cat /proc/net/route /proc/net/ipv6_route`)",
                            "the node's routes as text")
    return parse_routes(decode_input(data), source=name, lenient=lenient)


def node_routes(snapshot: Any, lenient: bool, problems: list[str]) -> Any:
    """The node's routes from its directory's routes.txt, None without one; one that cannot be read is a problem of
    the node's (its rules are analysed without routes, as `trace` would refuse it)."""
    path = Path(snapshot.dump_path).parent / store.ROUTES_FILE
    if not path.is_file():
        return None
    try:
        return read_routes(str(path), lenient=lenient)
    except IptraceError as exc:
        problems.append(f"{exc}{lenient_hint(exc)}; the rules that test the interface a packet leaves by are "
                        "answered without the node's routes")
        return None


def node_directories(directory: Any) -> list[Path]:
    """The node directories of a collection directory (`iptrace collect --out DIR`), or `directory` itself when
    it is one node's, sorted by name. Raises InputError when it holds no node at all."""
    root = Path(directory)
    if store.is_node_dir(root):
        candidates = [root]
    elif root.is_dir():
        # (a subdirectory with meta.json alone is a node whose dump is missing: said, not skipped; and so is
        # such a directory given itself, as a node among others: `audit snap/node-1 other-snap`)
        candidates = sorted((c for c in root.iterdir() if not c.name.startswith(".")
                             and (store.is_node_dir(c) or (c / store.META_FILE).is_file())),
                            key=lambda c: c.name)
        if not candidates and (root / store.META_FILE).is_file():
            candidates = [root]
    elif not root.exists():
        raise InputError(f"{root}: no such file or directory")
    else:
        raise InputError(f"{root}: not a directory; expected the --out directory of `iptrace collect`")
    if not candidates:
        # (a directory of dump files, as sample_dumps/ is: each is a node given by its path, not a collection)
        dumps = sorted(c.name for c in root.iterdir() if c.is_file() and c.name.endswith(_DUMP_SUFFIXES))
        advice = ("run `iptrace collect NODE... --out DIR` first" if not dumps else
                  f"it holds dump files ({', '.join(dumps[:3])}{', …' if len(dumps) > 3 else ''}): audit the "
                  f"files themselves, e.g. `iptrace audit {root / '*'}{Path(dumps[0]).suffix}`")
        raise InputError(f"{root}: no node directories (NODE/{store.DUMP_FILE} or NODE/{store.NFT_FILE}) found; "
                         + advice)
    return candidates


_DUMP_SUFFIXES = (".txt", ".nft", ".json", ".gz")


def inputs_from_directory(directory: Any, *, cluster: Any = None, lenient: bool = False) -> list[NodeInput]:
    """Every node of a collection directory (node_directories), each a NodeInput; a node whose files cannot be
    read or parsed becomes a NodeInput with its `error`, so one bad node never stops the audit."""
    out: list[NodeInput] = []
    for path in node_directories(directory):
        try:
            snapshot = store.read_node_dir(path)
        except InputError as exc:
            out.append(NodeInput(path.name, {}, str(exc)))
            continue
        out.append(node_input(snapshot, cluster=cluster, lenient=lenient))
    return out


def dump_input(text: str, source: str, *, node_ips: Sequence[str] = (), cluster: Any = None,
               lenient: bool = False, name: str | None = None, memo: dict[str, Any] | None = None) -> NodeInput:
    """A plain dump file given to `audit` as one node (named after the file)."""
    try:
        dataplane, ruleset = dataplanes.load(text, source=source, lenient=lenient, memo=memo)
    except IptraceError as exc:
        return NodeInput(name or dump_node_name(source), {}, str(exc) + lenient_hint(exc), tuple(node_ips))
    analyses = {f: analyse(dataplane, ruleset, f, node_ips=node_ips, cluster=cluster)
                for f in dataplanes.analysed_families(ruleset)}
    return NodeInput(name or dump_node_name(source), analyses, None, tuple(node_ips), {"dataplane": dataplane.name})
