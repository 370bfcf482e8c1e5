"""A node that differs from the others in exactly one rule a reused Service port reads (iptrace.kube.reuse): the rule
edited in place, the chain keeping its length, so that only the rule's own text tells the nodes apart. The port's
view on that node is its own (not the one the node before left in the cache; every other port is taken from the
cache as when the rule is the same), and the audit streamed with reuse reports what the reference audit of every
node analysed whole reports, the difference included."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench import fleet
from iptrace.collect import store
from iptrace.collect.inputs import inputs_from_directory
from iptrace.collect.stream import analyse_nodes, sources
from iptrace.iptables import DATAPLANE, load
from iptrace.kube.analysis import analyse
from iptrace.kube.audit import audit, combine
from iptrace.kube.reuse import ViewReuse
from iptrace.render.audit import audit_to_json
from tests.test_reuse import services

NODES = 4
CHANGED = 2  # (the node whose one rule differs; nodes 1 and 3 are alike there)
LABEL = "batch/chat-5:http"  # (services()[5]: its endpoints are in none of the nodes' pod CIDRs, so it is reused)

# One rule of LABEL's chains, as every node has it → as node CHANGED has it.
EDITS = {
    "an endpoint's DNAT port": ("-j DNAT --to-destination 10.244.16.15:5000",
                                "-j DNAT --to-destination 10.244.16.15:5001"),
    "a share of the cluster chain": ("--probability 0.50000000000 -j KUBE-SEP-ZYM2FJISZ3BMQ3CE",
                                     "--probability 0.25000000000 -j KUBE-SEP-ZYM2FJISZ3BMQ3CE"),
    "the endpoint chain a rule jumps to": ('10.244.17.15:5000" -j KUBE-SEP-SYLFMQXE37ANWQWD',
                                           '10.244.17.15:5000" -j KUBE-SEP-ZYM2FJISZ3BMQ3CE'),
    "the pods the cluster chain does not masquerade": ("! -s 10.244.0.0/16 -d 10.96.0.5/32",
                                                       "! -s 10.245.0.0/16 -d 10.96.0.5/32"),
    "the ClusterIP's port": ('"batch/chat-5:http cluster IP" -m tcp --dport 80 -j KUBE-SVC',
                             '"batch/chat-5:http cluster IP" -m tcp --dport 81 -j KUBE-SVC'),
}
# (the audit compares what reaches which endpoints, not how a port masquerades: only the view tells this edit)
UNCOMPARED = {"the pods the cluster chain does not masquerade"}


def texts(edit: str | None) -> list[tuple[str, str]]:
    """Every node's dump, node CHANGED's with `edit` (None: as the others)."""
    out = []
    for i in range(NODES):
        text = fleet.node_dump(services(), i)
        if i == CHANGED and edit is not None:
            old, new = EDITS[edit]
            assert text.count(old) == 1
            text = text.replace(old, new)
        out.append((fleet.node_ip(i), text))
    return out


def views(edit: str | None) -> tuple[list[str], int]:
    """LABEL's view on each node (its dump lines left out: they differ between the nodes' dumps), built with one
    ViewReuse in node order, each node's whole view checked against the one built without reuse; and how many
    ports node CHANGED took from the cache."""
    reuse = ViewReuse()
    mine = []
    reused = 0
    for i, (ip, text) in enumerate(texts(edit)):
        ruleset = load(text)
        plain = analyse(DATAPLANE, ruleset, "ipv4", node_ips=[ip]).view
        before = reuse.stats.reused
        view = analyse(DATAPLANE, ruleset, "ipv4", node_ips=[ip], reuse=reuse).view
        assert view == plain
        port = next(sp for sp in view.services if sp.label.startswith(LABEL))
        mine.append(re.sub(r"(lines|line|decided_by)=(\(.*?\)|\d+)", "", repr(port)))
        if i == CHANGED:
            reused = reuse.stats.reused - before
    return mine, reused


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_the_ports_view_is_the_nodes_own(edit: str) -> None:
    alike, reused_alike = views(None)
    assert alike[CHANGED] == alike[CHANGED - 1]
    mine, reused = views(edit)
    assert mine[CHANGED] != mine[CHANGED - 1] == mine[CHANGED + 1] == alike[CHANGED - 1]
    # The port the node before left a view for is traced anew, and only it: every other port the node takes
    # from the cache as it does when the rule is the same.
    assert reused == reused_alike - 1


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_the_streamed_audit_reports_the_difference(edit: str, tmp_path: Path) -> None:
    for i, (ip, text) in enumerate(texts(edit)):
        store.write_node_dir(tmp_path / fleet.node_name(i), {store.DUMP_FILE: text.encode()},
                             {"node": fleet.node_name(i), "addresses": [ip]})
    reference = audit_to_json(audit(inputs_from_directory(tmp_path)))
    streamed = audit_to_json(combine(analyse_nodes(sources([str(tmp_path)]), jobs=1)))
    assert streamed == reference
    if edit in UNCOMPARED:
        return
    changed = fleet.node_name(CHANGED)
    assert any(f["node"] == changed and f["service"] == LABEL for f in streamed["findings"]), streamed["findings"]
