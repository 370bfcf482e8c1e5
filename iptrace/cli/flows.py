"""`audit`'s conntrack part: find each collected node's conntrack.txt, read it, and add the node's
stale-conntrack findings (iptrace.kube.conntrack) to the audit report."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from iptrace.cli.common import CONNTRACK_FILE, note_skipped


def _node_name(node_dir: Path) -> str:
    """The name an audit gives a collected node (collect.store: meta.json's `node`, else the directory's)."""
    try:
        meta = json.loads((node_dir / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return node_dir.name
    name = meta.get("node") if isinstance(meta, dict) else None
    return name if isinstance(name, str) else node_dir.name


def conntrack_files(sources: Sequence[str]) -> dict[str, Path]:
    """Node name → its conntrack.txt, for every collected node directory among (or under) `sources`."""
    from iptrace.collect import store

    found: dict[str, Path] = {}
    for source in sources:
        root = Path(source)
        if not root.is_dir():
            continue
        nodes = [root] if store.is_node_dir(root) else sorted(c for c in root.iterdir() if c.is_dir())
        for node_dir in nodes:
            if (node_dir / CONNTRACK_FILE).is_file():
                found[_node_name(node_dir)] = node_dir / CONNTRACK_FILE
    return found


def audit_conntrack(report: Any, inputs: Sequence[Any], sources: Sequence[str], *, lenient: bool) -> Any:
    """The report plus every node's conntrack findings (a table that cannot be read is a load-error)."""
    from iptrace.conntrack import load, read_file
    from iptrace.errors import IptraceError
    from iptrace.kube.compare import LOAD_ERROR, Finding
    from iptrace.kube.conntrack import add_findings, conntrack_findings

    files = conntrack_files(sources)
    findings: list[Any] = []
    for node in inputs:
        path = files.get(node.name)
        if path is None or not node.analyses:
            continue
        try:
            data, name = read_file(path)
            table = load(data, source=name, lenient=lenient)
        except IptraceError as exc:
            findings.append(Finding(LOAD_ERROR, "error", node.name, None,
                                    f"{node.name}: its conntrack table could not be read", str(exc),
                                    "collect this node again (or audit with --lenient to skip the bad lines)"))
            continue
        note_skipped(name, table)
        # The same tracers the node's Service view was built with: one engine per dataplane.
        tracers = {family: a.tracer for family, a in node.analyses.items()}
        hint = next(iter(node.analyses.values())).layout.proxy.version_hint
        findings += conntrack_findings(node.name, table, tracers, version_hint=hint)
    return add_findings(report, findings)
