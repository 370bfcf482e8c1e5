"""Evidence from nft JSON input (`nft -j list ruleset`), which has no lines: SPEC.md's JSON contract prints an
unknown line as null (as trace's path and decided_by do) and gives the rule's kernel handle; text never says
"line 0"; and rules without lines are not merged into one piece of evidence because they share line 0."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from iptrace.cli import main
from tests.conftest import SAMPLES

JSON_DUMP = str(SAMPLES / "nodeport-fb-backends-nft.json")
LISTING = str(SAMPLES / "nodeport-fb-backends-nft.nft")
QUESTIONS = ["10.101.234.168:8001", "10.101.234.168:30904", "192.168.49.2:5001", "10.101.234.169:5001",
             "10.96.0.10:53/udp", "192.168.49.2:30904", "10.101.234.168:5001/udp"]


def explain(dump: str, dst: str, *more: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["explain", dump, "--dst", dst, *more])
    return result.exit_code, result.stdout


def evidence(doc: dict[str, object]) -> list[dict[str, object]]:
    docs = [doc, *doc.get("sources", {}).values()]  # type: ignore[attr-defined]
    return [e for d in docs for g in d["diagnoses"] for e in g["evidence"]]  # type: ignore[index]


@pytest.mark.parametrize("dst", QUESTIONS)
def test_json_input_evidence_has_no_line_zero(dst: str) -> None:
    for src in ("pod", "node", "external", None):
        _, out = explain(JSON_DUMP, dst, "-o", "json", *(("--src", src) if src else ()))
        found = evidence(json.loads(out))
        assert all(e["line"] is None for e in found), found
        assert all(isinstance(e.get("handle"), int) for e in found if not str(e["rule"]).startswith("element")), found
        _, text = explain(JSON_DUMP, dst, *(("--src", src) if src else ()))
        assert "line 0" not in text and "line None" not in text and "dump:" not in text, text
        handles = [e["handle"] for e in found if e.get("handle") is not None]
        assert all(f"handle {h}: " in text for h in handles), text


def test_hairpin_evidence_keeps_both_rules_of_the_endpoint_chain() -> None:
    # Both rules of the endpoint chain (the hairpin masquerade mark and the DNAT) have line 0 in JSON input: they
    # were taken for one rule and the DNAT was lost.
    found = {}
    for dump in (LISTING, JSON_DUMP):
        _, out = explain(dump, "10.101.234.168:5001", "--src", "10.244.1.7", "-o", "json")
        (hairpin,) = [d for d in json.loads(out)["diagnoses"] if d["id"] == "hairpin"]
        found[dump] = hairpin["evidence"]
    chain = "rule ip kube-proxy endpoint-3U7NEUMW-default/fb-backends/tcp/ka-port__10.244.1.7/8001"
    assert [e["rule"] for e in found[JSON_DUMP]] == [e["rule"] for e in found[LISTING]] == [
        f"{chain} ip saddr 10.244.1.7 jump mark-for-masquerade", f"{chain} meta l4proto tcp dnat to 10.244.1.7:8001"]
    assert [e["line"] for e in found[LISTING]] == [132, 133]
    assert [e["line"] for e in found[JSON_DUMP]] == [None, None]
    assert len({e["handle"] for e in found[JSON_DUMP]}) == 2


@pytest.mark.parametrize("dump", [LISTING, JSON_DUMP])
def test_hairpin_detail_names_the_nft_rule_not_iptables_chains(dump: str) -> None:
    """In nftables mode the hairpin's masquerade is the endpoint chain's `ip saddr … jump mark-for-masquerade`; the
    detail named iptables' 'KUBE-SEP rule `-s 10.244.1.7` → KUBE-MARK-MASQ', chains this node does not have."""
    _, out = explain(dump, "10.101.234.168:5001", "--src", "10.244.1.7", "-o", "json")
    (hairpin,) = [d for d in json.loads(out)["diagnoses"] if d["id"] == "hairpin"]
    assert "KUBE-" not in hairpin["detail"], hairpin["detail"]
    assert "`ip saddr 10.244.1.7 jump mark-for-masquerade`" in hairpin["detail"], hairpin["detail"]


def test_services_json_of_json_input_gives_handles_where_it_has_no_lines() -> None:
    """`services -o json` of `nft -j` input said `"line": null` for every endpoint and `"lines": []` for every
    Service port: no evidence at all. Like a trace's path, it now gives the rules' kernel handles there: each
    endpoint's DNAT rule (`handle`, the one a trace to it is decided by) and the port's rules (`handles`)."""
    def services(dump: str) -> dict[str, dict[str, object]]:
        result = CliRunner().invoke(main, ["services", dump, "-o", "json"])
        return {s["service"]: s for s in json.loads(result.stdout)}

    listed, from_json = services(LISTING), services(JSON_DUMP)
    fb = from_json["default/fb-backends:ka-port"]
    assert fb["lines"] == [] and all(ep["line"] is None for ep in fb["endpoints"])  # type: ignore[union-attr]
    result = CliRunner().invoke(main, ["trace", JSON_DUMP, "--dst", "10.101.234.168:5001", "-o", "json"])
    decided = {o["destination"]: o["decided_by"]["handle"] for o in json.loads(result.stdout)["outcomes"]}
    assert {ep["address"]: ep["handle"] for ep in fb["endpoints"]} == decided  # type: ignore[union-attr,index]
    handles = fb["handles"]
    assert isinstance(handles, list) and set(decided.values()) <= set(handles) and len(set(handles)) == len(handles)
    # Each port's handles are its own rules': as many as the listing has lines for it, its map elements aside.
    for name, s in from_json.items():
        port = listed[name]
        elements = {n for e in port["entries"] for n in e["lines"]}  # type: ignore[attr-defined]
        rules = [n for n in port["lines"] if n not in elements]  # type: ignore[attr-defined]
        assert len(s.get("handles", [])) == len(rules), (name, s.get("handles"), rules)  # type: ignore[arg-type]
    # Near-miss: a listing has lines, and no such key.
    assert all("handles" not in s and all("handle" not in ep for ep in s["endpoints"])  # type: ignore[attr-defined]
               for s in listed.values())
