"""Audits merged: the `merge` key of `audit -o json` (what the cross-node comparison needs of every node, see
iptrace.kube.digest) written and read back, so that audits of shards of a fleet (Kubernetes Jobs, CI runners,
each a label selector's nodes) combine into the audit one run over all nodes would give.

The key is versioned (MERGE_VERSION); a document this version cannot read is refused with what was found
and what was expected. Digests that nodes share are written once (`digests`) and named by index. Pure: no I/O.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

from iptrace.errors import InputError
from iptrace.kube.compare import Finding
from iptrace.kube.digest import FamilyDigest, NodeResult, PortDigest
from iptrace.kube.evidence import evidence_at
from iptrace.layout import ProxyMode

MERGE_VERSION = 2  # 2: a Service port digest has its ways in (15 fields)
# Cluster data read from an API server, as iptrace.collect.kubeconfig.ApiAccess.where names it: "kubeconfig PATH
# [context NAME] at URL", or "in-cluster service account … at URL"; then ClusterState.compared's namespace.
_LIVE_SOURCE = re.compile(r"(?:kubeconfig .+|in-cluster service account.*) at (\S+)( \(namespace \S+ only\))?")


def merge_json(results: Sequence[NodeResult], *, cluster_source: str | None, cluster_nodes: bool,
               items: Callable[[Iterable[Any]], Any] = list, directory: str | None = None) -> dict[str, Any]:
    """The `merge` key of an audit's JSON document. `items` holds its two long lists (digests, nodes) as the
    caller will print them: `list` by default; the CLI passes a writer's lazy list, so that each node's object
    (~0.5 MB of JSON for a 5,000-Service node) is made as it is printed, not all of them at once. `directory`:
    the one the audit ran in, which the nodes' relative `explain_at` paths are relative to (a shard's Job or CI
    runner has its own; read_merge makes them absolute where the merge runs elsewhere)."""
    # Each digest's index by identity (`results` keep them alive), an equal digest found by equality once per
    # object: an audit's digests are interned (one object per value), and hashing one is a Python call through
    # its whole structure (a fleet of 100 nodes of 5,000 ports made 10^6 of them).
    index: dict[int, int] = {}
    equal: dict[PortDigest, int] = {}
    digests: list[list[Any]] = []
    for r in results:
        for fam in r.families:
            for p in fam.ports:
                if id(p) not in index:
                    n = index[id(p)] = equal.setdefault(p, len(digests))
                    if n == len(digests):
                        digests.append(_digest_json(p))
    cluster = {"source": cluster_source, "nodes": cluster_nodes} if cluster_source is not None else None
    return {"version": MERGE_VERSION, "cluster": cluster, **({"directory": directory} if directory else {}),
            "digests": items(digests),
            "nodes": items(_node_json(r, index) for r in results)}


def _node_json(r: NodeResult, index: Mapping[int, int]) -> dict[str, Any]:
    """`index`: each digest's index in the document's `digests`, by its id."""
    families = [{"family": fam.family, "proxy": _proxy_json(fam.proxy), "warnings": list(fam.warnings),
                 "services": fam.services, "ports": [index[id(p)] for p in fam.ports], "lines": fam.lines.tolist(),
                 "compared": [f.to_json() for f in fam.compared], "node_address": fam.node_address,
                 **({"handles_of": fam.handles_of} if fam.handles_of else {})}
                for fam in r.families]
    return {"name": r.name, "error": r.error, "addresses": list(r.addresses), "host": r.host,
            "kube_node": r.kube_node, "legacy_note": r.legacy_note, "load_warnings": list(r.load_warnings),
            "families": families, "extra": [f.to_json() for f in r.extra], "notes": list(r.notes),
            "explain_at": r.explain_at}


def _digest_json(p: PortDigest) -> list[Any]:
    return [p.key, p.cluster_ip, p.port, p.node_port, list(p.ips), p.external_traffic_policy,
            p.internal_traffic_policy, p.affinity, None if p.ranges is None else list(p.ranges),
            p.health_check_node_port, [list(s) for s in p.signature], [list(e) for e in p.endpoints],
            p.no_endpoints, list(p.head), [[*w[:4], [list(f) for f in w[4]]] for w in p.ways]]


def _proxy_json(proxy: ProxyMode) -> dict[str, Any]:
    data = asdict(proxy)
    data["evidence"] = list(proxy.evidence)
    data["warning"] = list(proxy.warning) if proxy.warning is not None else None
    return data


# A digest's plain fields, by position (name, type, whether null is allowed): a hand-edited value of another type
# would pass through into the comparison and the report (an address that is a list breaks them). The nested
# fields are checked as they are read.
_DIGEST_VALUES: tuple[tuple[int, str, type, bool], ...] = (
    (1, "cluster_ip", str, True), (2, "port", int, True), (3, "node_port", int, True), (4, "ips", list, False),
    (5, "external_traffic_policy", str, True), (6, "internal_traffic_policy", str, True),
    (7, "affinity", int, True), (8, "ranges", list, True), (9, "health_check_node_port", int, True))


def _is_value(value: Any, kind: type, optional: bool) -> bool:
    if value is None:
        return optional
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is list:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return isinstance(value, kind)


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, found: object, expected: str) -> InputError:
        shown = repr(found)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        return InputError(f"{self.source}: {where}: found {shown}; expected {expected}")

    def get(self, data: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
        if not isinstance(data, dict):
            raise self.fail(where, data, f"an object with {key!r}")
        if key not in data:
            keys = ", ".join(map(repr, sorted(data)[:8])) + (", …" if len(data) > 8 else "")
            raise InputError(f"{self.source}: {where}: found an object without {key!r} "
                             f"({'keys: ' + keys if data else 'an empty object'}); expected an object with {key!r}")
        value = data[key]
        if not isinstance(value, kind):
            raise self.fail(f"{where}.{key}", value, getattr(kind, "__name__", "another type"))
        return value

    def digest(self, item: Any, where: str) -> PortDigest:
        if not isinstance(item, list) or len(item) != 15:
            raise self.fail(where, item, "a list of the 15 fields of a Service port digest")
        for i, name, kind, optional in _DIGEST_VALUES:
            if not _is_value(item[i], kind, optional):
                expected = {str: "a string", int: "a whole number", list: "a list of strings"}[kind]
                raise self.fail(f"{where}[{i}]", item[i],
                                f"{expected}{' or null' if optional else ''} (the port's {name})")
        try:
            (key, cluster_ip, port, node_port, ips, etp, itp, affinity, ranges, hc, signature, endpoints,
             no_endpoints, head, ways) = item
            return PortDigest(str(key), cluster_ip, port, node_port, tuple(ips), etp, itp, affinity,
                              None if ranges is None else tuple(ranges), hc,
                              tuple((str(a), float(p)) for a, p in signature),
                              tuple((str(a), bool(c), str(t)) for a, c, t in endpoints), bool(no_endpoints),
                              tuple(str(t) for t in head),
                              tuple((str(k), str(a), int(n), str(pr), tuple((str(c), str(v), bool(o)) for c, v, o in f))
                                    for k, a, n, pr, f in ways))
        except (TypeError, ValueError) as exc:
            raise self.fail(where, item, f"a Service port digest ({exc})") from None

    def finding(self, item: Any, where: str) -> Finding:
        from iptrace.kube.conntrack import ConntrackFinding

        try:
            evidence = tuple((evidence_at(e), str(e["rule"])) for e in item["evidence"])
            fields = (item["id"], item["severity"], item["node"], item["service"], item["summary"], item["detail"],
                      item["fix"], evidence)
            sources = {e.get("source") for e in item["evidence"]}
        except (KeyError, TypeError, ValueError) as exc:
            raise self.fail(where, item, f"a finding ({exc})") from None
        if sources and None not in sources:
            return ConntrackFinding(*fields, source=str(sources.pop()))
        return Finding(*fields)

    def proxy(self, item: Any, where: str) -> ProxyMode:
        try:
            data = dict(item)
            data["evidence"] = tuple(data["evidence"])
            data["warning"] = tuple(data["warning"]) if data.get("warning") is not None else None
            proxy = ProxyMode(**data)
        except (KeyError, TypeError, ValueError) as exc:
            raise self.fail(where, item, f"kube-proxy's mode ({exc})") from None
        if not all(isinstance(getattr(proxy, name), str) for name in ("dataplane", "mode", "name", "version_hint")):
            raise self.fail(where, item, "kube-proxy's mode (its dataplane, mode, name and version_hint strings)")
        return proxy


def read_merge(document: Any, source: str, here: str | None = None) -> tuple[list[NodeResult], str | None, bool]:
    """The nodes of one `audit -o json` document, the cluster data's source and whether it listed Nodes.
    `here`: the directory the merge runs in; a node's `explain_at` path relative to another (the document's
    `directory`) is made absolute. Raises InputError naming what was found where, and what was expected."""
    r = _Reader(source)
    data = r.get(document, "merge", dict, "the document")
    version = r.get(data, "version", int, "merge")
    if version != MERGE_VERSION:
        raise r.fail("merge.version", version, f"{MERGE_VERSION} (written by another iptrace version; audit "
                     "the shards again with this one)")
    cluster = data.get("cluster")
    if cluster is not None and not isinstance(cluster, dict):
        raise r.fail("merge.cluster", cluster, "an object or null")
    directory = data.get("directory")
    if directory is not None and not (isinstance(directory, str) and posixpath.isabs(directory)):
        raise r.fail("merge.directory", directory, "an absolute path (the directory the audit ran in)")
    digests = [r.digest(item, f"merge.digests[{i}]")
               for i, item in enumerate(r.get(data, "digests", list, "merge"))]
    results = []
    for i, node in enumerate(r.get(data, "nodes", list, "merge")):
        where = f"merge.nodes[{i}]"
        families = []
        for j, fam in enumerate(r.get(node, "families", list, where)):
            at = f"{where}.families[{j}]"
            indexes = r.get(fam, "ports", list, at)
            if not all(isinstance(k, int) and 0 <= k < len(digests) for k in indexes):
                raise r.fail(f"{at}.ports", indexes, f"indexes of merge.digests (0-{len(digests) - 1})")
            ports = tuple(digests[k] for k in indexes)
            try:
                lines = array("I", (int(x) for x in r.get(fam, "lines", list, at)))
            except (OverflowError, TypeError, ValueError):
                raise r.fail(f"{at}.lines", fam["lines"], "line numbers (whole numbers from 0)") from None
            if len(lines) != sum(p.slots for p in ports):
                raise r.fail(f"{at}.lines", len(lines), f"{sum(p.slots for p in ports)} lines (one per evidence "
                             "slot of its ports)")
            family = r.get(fam, "family", str, at)
            if family not in ("ipv4", "ipv6"):
                raise r.fail(f"{at}.family", family, "'ipv4' or 'ipv6'")
            families.append(FamilyDigest(
                family, r.proxy(r.get(fam, "proxy", dict, at), f"{at}.proxy"),
                tuple(r.get(fam, "warnings", list, at)), r.get(fam, "services", int, at), ports, lines,
                tuple(r.finding(f, f"{at}.compared[{k}]") for k, f in enumerate(r.get(fam, "compared", list, at))),
                # (a document written before node addresses and explain arguments were kept has none)
                node_address=r.get(fam, "node_address", str, at) if "node_address" in fam else "",
                # (nft -j input: its lines are kernel handles of this table's rules)
                handles_of=r.get(fam, "handles_of", str, at) if "handles_of" in fam else ""))
        explain_at = r.get(node, "explain_at", str, where) if node.get("explain_at") is not None else None
        if explain_at is not None and directory is not None and directory != here:
            explain_at = _rooted(explain_at, directory)
        results.append(NodeResult(
            r.get(node, "name", str, where), node.get("error"), tuple(r.get(node, "addresses", list, where)),
            str(node.get("host") or ""), node.get("kube_node"), node.get("legacy_note"),
            tuple(r.get(node, "load_warnings", list, where)), tuple(families),
            tuple(r.finding(f, f"{where}.extra[{k}]") for k, f in enumerate(r.get(node, "extra", list, where))),
            # (a document written before notes were kept has none)
            tuple(map(str, r.get(node, "notes", list, where))) if "notes" in node else (), explain_at))
    return results, (cluster or {}).get("source"), bool((cluster or {}).get("nodes"))


def _rooted(explain_at: str, directory: str) -> str:
    """A node's `explain_at` (its dump argument, shell-quoted, then its --node-ip options) with a relative path
    made absolute from the audit's `directory`: relative, it named a file of the shard's working directory as
    if it were the merge's."""
    try:
        words = shlex.split(explain_at)
    except ValueError:
        return explain_at
    if not words or posixpath.isabs(words[0]):
        return explain_at
    return " ".join([shlex.quote(posixpath.normpath(posixpath.join(directory, words[0]))),
                     *map(shlex.quote, words[1:])])


def merge(documents: Iterable[tuple[str, Mapping[str, Any]]], here: str | None = None
          ) -> tuple[list[NodeResult], str | None, bool]:
    """Every node of several audits, sorted by name, and their cluster data (which must be the same). `here`:
    the directory the merge runs in (read_merge). Raises InputError for a node in two documents or audits made
    against different cluster data."""
    nodes: dict[str, tuple[str, NodeResult]] = {}
    clusters: dict[tuple[str | None, bool], tuple[str | None, str]] = {}
    for source, document in documents:
        results, cluster_source, cluster_nodes = read_merge(document, source, here)
        clusters.setdefault((_same_data(cluster_source), cluster_nodes), (cluster_source, source))
        for result in results:
            if result.name in nodes:
                raise InputError(f"{source}: node {result.name!r} is also in {nodes[result.name][0]}; expected "
                                 "each node in one audit only (shard the nodes, e.g. by label selector)")
            nodes[result.name] = (source, result)
    if len(clusters) > 1:
        ((a, a_nodes), (a_data, a_src)), ((b, b_nodes), (b_data, b_src)) = list(clusters.items())[:2]
        nodes = {True: " with its Nodes", False: " without Nodes"} if a == b else {True: "", False: ""}
        said = [f"{src}: {'cluster data ' + repr(data) + nodes[listed] if data else 'no cluster data'}"
                for data, listed, src in ((a_data, a_nodes, a_src), (b_data, b_nodes, b_src))]
        raise InputError(f"the audits were made against different cluster data ({'; '.join(said)}); expected "
                         "every shard audited with the same --cluster/--kubeconfig and -n")
    ((_, cluster_nodes), (cluster_source, _first)), = clusters.items() if clusters else [((None, False), (None, ""))]
    return [nodes[name][1] for name in sorted(nodes)], cluster_source, cluster_nodes


def _same_data(cluster_source: str | None) -> str | None:
    """What makes two shards' cluster data the same: the API server they listed it from (the kubeconfig's path
    and context differ from one CI job or Kubernetes Job to the next: a runner's temporary file, a service
    account), else the files read."""
    live = _LIVE_SOURCE.fullmatch(cluster_source or "")
    return f"the API server at {live.group(1)}{live.group(2) or ''}" if live else cluster_source
