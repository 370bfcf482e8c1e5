"""Map elements on nft JSON input (`nft -j list ruleset`), which has no lines: a trace's path and an explanation's
evidence name an element by its map (table, name) and the map's kernel handle, as they name a rule by its handle
(`nft -a list ruleset` prints it: `map service-ips { # handle 6`; handles are unique in a table). They said
`line -` in text and nothing in JSON. The listing's answers are unchanged (its elements have their lines)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from iptrace.cli import main
from tests.conftest import SAMPLES
from tests.oracle import Topology
from tests.oracle.nft import load_nft, nft, requires_nft

JSON_DUMP = SAMPLES / "nodeport-fb-backends-nft.json"


def cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.stdout


def map_handles(doc: Any) -> dict[str, int]:
    """map name -> its kernel handle, read off the JSON itself."""
    return {o["map"]["name"]: o["map"]["handle"] for o in doc["nftables"] if "map" in o}


def test_a_trace_of_json_input_names_each_element_by_its_map_and_handle() -> None:
    handles = map_handles(json.loads(JSON_DUMP.read_text()))
    args = ["trace", str(JSON_DUMP), "--dst", "10.101.234.168:5001", "--src", "192.168.49.1"]
    text = cli(*args)
    assert "line -" not in text, text
    element = "element ip kube-proxy service-ips { 10.101.234.168 . tcp . 5001 : goto service-SX2ZK5HK-"
    [row] = [line for line in text.splitlines() if element in line]
    assert "ip kube-proxy services  " in row and f" handle {handles['service-ips']:<4} element" in row, row
    doc = json.loads(cli(*args, "-o", "json"))
    steps = [s for o in doc["outcomes"] for s in o["path"] if s["rule"].startswith("element")]
    assert steps and all(s["line"] is None and "handle" not in s for s in steps), steps
    assert {json.dumps(s["map"]) for s in steps} == {json.dumps(
        {"table": "ip kube-proxy", "name": "service-ips", "handle": handles["service-ips"]})}
    # The listing's elements keep their lines and say nothing more.
    listed = json.loads(cli("trace", str(SAMPLES / "nodeport-fb-backends-nft.nft"), *args[2:], "-o", "json"))
    steps = [s for o in listed["outcomes"] for s in o["path"] if s["rule"].startswith("element")]
    assert steps and all(isinstance(s["line"], int) and "map" not in s for s in steps), steps


@requires_nft()
@pytest.mark.root
def test_an_element_that_decides_is_named_by_its_map_in_trace_and_explain(tmp_path: Path) -> None:
    """The kernel's JSON of a ruleset whose no-endpoint-services element drops (externalTrafficPolicy Local without
    a local endpoint): decided_by, the path and explain's evidence name the element's map and its handle."""
    with Topology("nft") as topo:
        load_nft(topo, (SAMPLES / "etp-local-no-local-endpoints-nft.nft").read_text())
        listing = nft(topo, "-j", "list", "ruleset")
    dump = tmp_path / "ruleset.json"
    dump.write_text(listing)
    handles = map_handles(json.loads(listing))
    where = {"table": "ip kube-proxy", "name": "no-endpoint-services", "handle": handles["no-endpoint-services"]}
    args = [str(dump), "--dst", "192.168.49.240:80", "--src", "192.168.49.1", "--node-ip", "192.168.49.2"]
    [outcome] = json.loads(cli("trace", *args, "-o", "json"))["outcomes"]
    assert outcome["verdict"] == "DROP" and outcome["decided_by"] == {
        "table": "ip kube-proxy", "chain": "service-endpoints-check", "line": None, "map": where}, outcome
    assert [s["map"] for s in outcome["path"] if "map" in s] == [
        {**where, "name": "service-ips", "handle": handles["service-ips"]}, where]
    text = cli("trace", *args)
    assert "line -" not in text and f"handle {where['handle']:<4} element ip kube-proxy no-endpoint-services" \
        in text, text
    explained = json.loads(cli("explain", *args, "-o", "json"))
    evidence = [e for d in explained["diagnoses"] for e in d["evidence"]]
    assert evidence and all(e.get("map") == where for e in evidence), evidence
    text = cli("explain", *args)
    assert f"    handle {where['handle']}: element ip kube-proxy no-endpoint-services {{ 192.168.49.240" in text, text


FIREWALLS = Path(__file__).resolve().parent / "data" / "nft-firewalls"


def test_audit_quotes_the_elements_of_an_address_conflict_on_json_input(tmp_path: Path) -> None:
    """Two Services claim 198.18.7.7:80 (alpha's firewall-ips element, beta's service-ips element): audit of the
    listing quotes both elements by line; of the JSON it quoted nothing. It quotes them by their maps and handles,
    in its text (-v), its JSON, and a merge of that JSON."""
    handles = map_handles(json.loads((FIREWALLS / "ruleset.json").read_text()))
    dump = tmp_path / "node.json"
    dump.write_text((FIREWALLS / "ruleset.json").read_text())
    args = ["audit", str(dump), "--node-ip", "192.168.0.10"]
    doc = json.loads(cli(*args, "-o", "json"))
    [conflict] = [f for f in doc["findings"] if f["id"] == "address-conflict"]
    want = [{"line": None, "rule": "element ip kube-proxy firewall-ips { 198.18.7.7 . tcp . 80 : goto "
             "firewall-6MEUNKOI-alpha/lb/tcp/http }",
             "map": {"table": "ip kube-proxy", "name": "firewall-ips", "handle": handles["firewall-ips"]}},
            {"line": None, "rule": "element ip kube-proxy service-ips { 198.18.7.7 . tcp . 80 : goto "
             "external-3XWUUKJJ-beta/lb/tcp/http }",
             "map": {"table": "ip kube-proxy", "name": "service-ips", "handle": handles["service-ips"]}}]
    assert conflict["evidence"] == want, conflict
    lines = [f"    handle {handles['firewall-ips']}: {want[0]['rule']}",
             f"    handle {handles['service-ips']}: {want[1]['rule']}"]
    text = cli(*args, "-v")
    assert all(line in text.splitlines() for line in lines), text
    shard = tmp_path / "shard.json"
    shard.write_text(json.dumps(doc))
    merged = json.loads(cli("audit", "--merge", str(shard), "-o", "json"))
    assert [f["evidence"] for f in merged["findings"] if f["id"] == "address-conflict"] == [want]
    assert all(line in cli("audit", "--merge", str(shard), "-v").splitlines() for line in lines)
    # The listing's evidence keeps its lines.
    listed = json.loads(cli("audit", str(FIREWALLS / "listing.nft"), "--node-ip", "192.168.0.10", "-o", "json"))
    [conflict] = [f for f in listed["findings"] if f["id"] == "address-conflict"]
    assert [e["line"] for e in conflict["evidence"]] == [31, 67] and all("map" not in e for e in conflict["evidence"])


def _moved_endpoint(doc: Any, chain_part: str, address: str) -> int:
    """The DNAT of the endpoint chain whose name holds `chain_part` sent to `address` instead (a node whose
    kube-proxy did not sync); its rule's kernel handle."""
    [rule] = [o["rule"] for o in doc["nftables"] if "rule" in o and chain_part in o["rule"]["chain"]
              and any("dnat" in e for e in o["rule"]["expr"])]
    next(e for e in rule["expr"] if "dnat" in e)["dnat"]["addr"] = address
    return int(rule["handle"])


def test_audit_of_json_input_quotes_a_differing_endpoints_rule_by_its_handle(tmp_path: Path) -> None:
    """Two nodes' `nft -j` rulesets, one DNATing fb-backends to another pod: audit of the listings quotes each
    node's DNAT rule by line; of the JSON it quoted nothing (the view's rules have handles, not lines). It quotes
    each node's rule by its kernel handle, in its text (-v), its JSON, and a merge of per-node shards."""
    a = json.loads(JSON_DUMP.read_text())
    b = json.loads(JSON_DUMP.read_text())
    handle = _moved_endpoint(b, "M5NZKSJ4", "10.244.2.99")
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    chain = "endpoint-M5NZKSJ4-default/fb-backends/tcp/ka-port__10.244.2.3/8001"
    want = {"a.json": [{"line": None, "rule": f"rule ip kube-proxy {chain} meta l4proto tcp dnat to 10.244.2.3:8001",
                        "handle": handle}],
            "b.json": [{"line": None, "rule": f"rule ip kube-proxy {chain} meta l4proto tcp dnat to 10.244.2.99:8001",
                        "handle": handle}]}
    nodes = [str(tmp_path / "a.json"), str(tmp_path / "b.json")]
    doc = json.loads(cli("audit", *nodes, "-o", "json"))
    found = {f["node"]: f["evidence"] for f in doc["findings"] if f["id"] == "endpoints-differ"}
    assert found == want, doc["findings"]
    text = cli("audit", *nodes, "-v").splitlines()
    assert all(f"    handle {handle}: {e[0]['rule']}" in text for e in want.values()), text
    shards = []
    for node in nodes:
        shard = tmp_path / f"shard-{Path(node).stem}.json"
        shard.write_text(cli("audit", node, "-o", "json"))
        shards.append(str(shard))
    merged = json.loads(cli("audit", "--merge", *shards, "-o", "json"))
    assert {f["node"]: f["evidence"] for f in merged["findings"] if f["id"] == "endpoints-differ"} == want
    assert all(f"    handle {handle}: {e[0]['rule']}" in cli("audit", "--merge", *shards, "-v").splitlines()
               for e in want.values())


def _dnat_handles(doc: Any) -> dict[str, int]:
    """chain -> the kernel handle of its DNAT rule, read off the JSON itself."""
    return {o["rule"]["chain"]: o["rule"]["handle"] for o in doc["nftables"]
            if "rule" in o and any("dnat" in e for e in o["rule"]["expr"])}


def test_cluster_comparison_of_json_input_quotes_rules_by_handle() -> None:
    """Compared with cluster data, the listing's stale endpoints are quoted by their DNAT rules' lines; the JSON's
    were quoted by nothing. Now by the same rules' kernel handles, with their chains, in audit and explain alike."""
    cluster = str(Path(__file__).resolve().parent / "data" / "cluster")
    handles = _dnat_handles(json.loads(JSON_DUMP.read_text()))
    listed = json.loads(cli("audit", str(SAMPLES / "nodeport-fb-backends-nft.nft"), "--cluster", cluster, "-o", "json"))
    doc = json.loads(cli("audit", str(JSON_DUMP), "--cluster", cluster, "-o", "json"))
    by_listing = {(f["id"], f["service"]): f["evidence"] for f in listed["findings"]}
    quoted = 0
    for f in doc["findings"]:
        want = by_listing[(f["id"], f["service"])]
        assert len(f["evidence"]) == len(want), (f, want)
        for e, line in zip(f["evidence"], want, strict=True):
            chain = e["rule"].removeprefix("rule ip kube-proxy ").split(" ", 1)[0]
            assert e == {"line": None, "rule": f"rule ip kube-proxy {chain} {line['rule']}",
                         "handle": handles[chain]}, (e, line)
            quoted += 1
    assert quoted >= 6  # (the sample's stale endpoints and changed target port)
    answer = json.loads(cli("explain", str(JSON_DUMP), "--cluster", cluster, "--dst", "10.96.0.10:53", "--proto",
                            "udp", "-o", "json"))
    [stale] = [d for d in answer["diagnoses"] if d["id"] == "stale-endpoints"]
    chain = "endpoint-SHKW4FT7-kube-system/kube-dns/udp/dns__10.244.0.3/53"
    assert stale["evidence"] == [{"line": None, "rule": f"rule ip kube-proxy {chain} meta l4proto udp dnat to "
                                  "10.244.0.3:53", "handle": handles[chain]}]


def test_cluster_comparison_of_json_input_quotes_a_way_in_by_its_element(tmp_path: Path) -> None:
    """The API moved fb-backends to another ClusterIP: the listing's address-mismatch quotes the service-ips
    element's line; the JSON's quoted nothing. Now the same element, by its map and handle."""
    cluster = tmp_path / "cluster"
    cluster.mkdir()
    for f in (Path(__file__).resolve().parent / "data" / "cluster").iterdir():
        (cluster / f.name).write_text(f.read_text().replace("10.101.234.168", "10.101.234.200"))
    handles = map_handles(json.loads(JSON_DUMP.read_text()))
    found = {}
    for dump in (SAMPLES / "nodeport-fb-backends-nft.nft", JSON_DUMP):
        doc = json.loads(cli("audit", str(dump), "--cluster", str(cluster), "-o", "json"))
        [found[dump.suffix]] = [f["evidence"] for f in doc["findings"] if f["id"] == "address-mismatch"]
    element = "10.101.234.168 . tcp . 5001 : goto service-SX2ZK5HK-default/fb-backends/tcp/ka-port"
    assert [e["rule"] for e in found[".nft"]] == [element + ","]
    assert found[".json"] == [{"line": None, "rule": f"element ip kube-proxy service-ips {{ {element} }}",
                               "map": {"table": "ip kube-proxy", "name": "service-ips",
                                       "handle": handles["service-ips"]}}]
