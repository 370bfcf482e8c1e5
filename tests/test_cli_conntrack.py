"""`explain --conntrack` and `audit` with collected conntrack tables: golden prose, the JSON shape, the exact
error text for a garbled or truncated table, --lenient, and DIR/NODE/conntrack.txt picked up by itself."""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from iptrace.cli import main

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"
FB = "sample_dumps/nodeport-fb-backends.txt"
FB_FLOWS = "sample_dumps/conntrack/nodeport-fb-backends.txt"
V6 = "sample_dumps/ipv6.txt"
V6_FLOWS = "sample_dumps/conntrack/ipv6.txt"


@pytest.fixture(autouse=True)
def in_repository(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # relative paths: the golden files name the sample files as a user would


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


GOLDEN_CASES = {
    "stale-conntrack": (FB, "--dst", "10.96.0.10:53", "--proto", "udp", "--conntrack", FB_FLOWS,
                        "--node-ip", "192.168.49.2", "-v"),
    "stale-conntrack-tcp": (FB, "--dst", "10.101.234.168:5001", "--src", "10.244.2.5", "--conntrack", FB_FLOWS,
                            "--node-ip", "192.168.49.2", "-v"),
    "stale-conntrack-ipv6": (V6, "--dst", "[fd00:10:96::a]:53", "--proto", "udp", "--conntrack", V6_FLOWS,
                             "--node-ip", "fd00:192:168:49::2"),
}


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_golden_prose(case: str, golden: Any) -> None:
    result = run("explain", *GOLDEN_CASES[case])
    assert result.exit_code == 3, result.output
    golden(GOLDEN / "explain" / f"{case}.txt", result.stdout)


def test_json_shape_and_evidence_sources() -> None:
    result = run("explain", *GOLDEN_CASES["stale-conntrack"][:-1], "--src", "pod", "-o", "json")
    assert result.exit_code == 3
    data = json.loads(result.stdout)
    ids = [d["id"] for d in data["diagnoses"]]
    assert ids == ["stale-conntrack", "stale-conntrack-no-dnat", "healthy"]  # conntrack-healthy only with -v
    stale = data["diagnoses"][0]
    assert set(stale) == {"id", "severity", "summary", "detail", "fix", "evidence"}
    flows = Path(FB_FLOWS).read_text().splitlines()
    dump = Path(FB).read_text().splitlines()
    for e in stale["evidence"]:
        if "source" in e:  # a conntrack line: `line` is its line in that file
            assert e["source"] == FB_FLOWS and flows[e["line"] - 1] == e["rule"]
        else:  # a rule of the dump that decides these packets today
            assert set(e) == {"line", "rule"} and dump[e["line"] - 1] == e["rule"]
    assert [e["line"] for e in stale["evidence"] if "source" in e] == [4, 6]
    assert stale["fix"].splitlines()[1:] == [
        "conntrack -D -p udp --orig-dst 10.96.0.10 --orig-port-dst 53 --reply-src 10.244.0.9"]
    verbose = json.loads(run("explain", *GOLDEN_CASES["stale-conntrack"], "--src", "pod", "-o", "json").stdout)
    assert [d["id"] for d in verbose["diagnoses"]][-1] == "conntrack-healthy"


def test_nft_rules_as_evidence_name_their_endpoint_chain() -> None:
    """An nft endpoint's DNAT rule as a stale entry's evidence reads as explain's own evidence and the trace's
    path show it ('rule ip kube-proxy endpoint-… dnat to …'), not as the listing's bare 'meta l4proto udp dnat
    to …', which names neither the chain nor the Service."""
    nft = "sample_dumps/nodeport-fb-backends-nft.nft"
    result = run("explain", nft, *GOLDEN_CASES["stale-conntrack"][1:-1], "-o", "json")
    assert result.exit_code == 3, result.output
    dump = Path(nft).read_text().splitlines()
    found = {d["id"]: [e for e in d["evidence"] if "source" not in e] for d in json.loads(result.stdout)["diagnoses"]}
    chains = ["endpoint-2GKX576Q-kube-system/kube-dns/udp/dns__10.244.0.2/53",
              "endpoint-SHKW4FT7-kube-system/kube-dns/udp/dns__10.244.0.3/53"]
    for diagnosis in ("stale-conntrack", "stale-conntrack-no-dnat"):
        rules = found[diagnosis]
        assert [e["rule"] for e in rules] == [
            f"rule ip kube-proxy {chain} {dump[e['line'] - 1].strip()}" for chain, e in zip(chains, rules, strict=True)]
        assert [dump[e["line"] - 1].strip() for e in rules] == [
            "meta l4proto udp dnat to 10.244.0.2:53", "meta l4proto udp dnat to 10.244.0.3:53"]


def test_nft_json_input_shows_only_the_rules_that_decide_by_handle() -> None:
    """nft JSON input has no lines (every step's line is 0): the deciding rules are the ones with the decision's
    chain and handle, not every rule of the path that shares the unknown line."""
    result = run("explain", "sample_dumps/nodeport-fb-backends-nft.json", *GOLDEN_CASES["stale-conntrack"][1:-1],
                 "-o", "json")
    assert result.exit_code == 3, result.output
    for d in json.loads(result.stdout)["diagnoses"][:2]:
        assert d["id"] in ("stale-conntrack", "stale-conntrack-no-dnat")
        assert [(e["line"], e.get("handle"), e["rule"]) for e in d["evidence"] if "source" not in e] == [
            (None, 103, "rule ip kube-proxy endpoint-2GKX576Q-kube-system/kube-dns/udp/dns__10.244.0.2/53 "
                        "meta l4proto udp dnat to 10.244.0.2:53"),
            (None, 105, "rule ip kube-proxy endpoint-SHKW4FT7-kube-system/kube-dns/udp/dns__10.244.0.3/53 "
                        "meta l4proto udp dnat to 10.244.0.3:53")]


def test_a_service_without_stale_entries_and_an_address_without_entries() -> None:
    fine = run("explain", FB, "--dst", "10.96.0.1:443", "--conntrack", FB_FLOWS, "--node-ip", "192.168.49.2",
               "--src", "pod", "-v", "-o", "json")
    assert fine.exit_code == 0
    [healthy, ok] = json.loads(fine.stdout)["diagnoses"]
    assert (healthy["id"], ok["id"]) == ("healthy", "conntrack-healthy")
    assert ok["summary"] == "1 conntrack entry to 10.96.0.1:443 agrees with the rules"
    none = json.loads(run("explain", FB, "--dst", "10.106.199.236:80", "--conntrack", FB_FLOWS, "--src", "pod",
                          "-v", "-o", "json").stdout)
    assert none["diagnoses"][-1]["summary"] == "no conntrack entry goes to 10.106.199.236:80"


def test_garbled_and_truncated_tables_are_one_error_with_position(tmp_path: Path) -> None:
    lines = Path(FB_FLOWS).read_text().splitlines(keepends=True)
    garbled = tmp_path / "garbled.txt"
    garbled.write_text("".join(lines[:4]) + lines[4].replace("sport=40512", "sport=40512x") + "".join(lines[5:]))
    result = run("explain", FB, "--dst", "10.96.0.10:53", "--proto", "udp", "--conntrack", str(garbled))
    assert result.exit_code == 1 and result.stdout == ""
    bad = lines[4].rstrip("\n").replace("sport=40512", "sport=40512x")
    assert result.stderr == (f"Error: {garbled}:5:71: invalid value '40512x' in sport=; expected a port number "
                             f"(0-65535)\n  {bad}\n  {' ' * 70}^\n")
    truncated = tmp_path / "truncated.txt"
    truncated.write_text("".join(lines[:7]) + lines[7][:60])
    result = run("explain", FB, "--dst", "10.96.0.10:53", "--proto", "udp", "--conntrack", str(truncated))
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == (
        f"Error: {truncated}:8:58: unexpected 'dpo'; expected a key=value field (src=…, dport=…, mark=…) or a flag "
        "such as [ASSURED] (the file ends in the middle of this line: it looks truncated)")
    assert result.stderr.splitlines()[1:] == [f"  {lines[7][:60]}", f"  {' ' * 57}^"]
    # Cut at a line end: conntrack's closing line (written first, on stderr) still tells.
    headed = tmp_path / "headed.txt"
    headed.write_text(lines[-1] + "".join(lines[:6]))
    result = run("explain", FB, "--dst", "10.96.0.10:53", "--proto", "udp", "--conntrack", str(headed))
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == (
        f"Error: {headed}:1:1: conntrack's closing line says 13 flow entries were shown but the file holds 6; the "
        "file looks truncated or edited; list the table again (conntrack -L)")
    assert "Traceback" not in result.output


def test_lenient_skips_bad_lines_and_says_how_many(tmp_path: Path) -> None:
    lines = Path(FB_FLOWS).read_text().splitlines(keepends=True)
    bad = tmp_path / "bad.txt"
    bad.write_text("".join(lines[:2]) + "garbage here\n" + "".join(lines[2:-1]))
    result = run("explain", FB, "--dst", "10.96.0.10:53", "--proto", "udp", "--conntrack", str(bad), "--lenient",
                 "--src", "pod", "-o", "json")
    assert result.exit_code == 3
    assert result.stderr == (f"note: {bad}: skipped 1 unreadable line (first: line 3: unexpected 'here'; expected a "
                             "number)\n")
    assert [d["id"] for d in json.loads(result.stdout)["diagnoses"]][:2] == ["stale-conntrack",
                                                                              "stale-conntrack-no-dnat"]


def _collection(tmp_path: Path) -> Path:
    node = tmp_path / "snap" / "node1"
    node.mkdir(parents=True)
    shutil.copy(FB, node / "iptables-save.txt")
    shutil.copy(FB_FLOWS, node / "conntrack.txt")
    (node / "meta.json").write_text(json.dumps({"node": "node1", "addresses": ["192.168.49.2"]}))
    other = tmp_path / "snap" / "node2"  # collected without a conntrack table: nothing to say about flows
    other.mkdir()
    shutil.copy(FB, other / "iptables-save.txt")
    (other / "meta.json").write_text(json.dumps({"node": "node2", "addresses": ["192.168.49.3"]}))
    return tmp_path / "snap"


def test_a_collected_node_uses_its_conntrack_table(tmp_path: Path) -> None:
    snap = _collection(tmp_path)
    result = run("explain", str(snap / "node1"), "--dst", "10.96.0.10:53", "--proto", "udp", "-o", "json")
    assert result.exit_code == 3
    data = json.loads(result.stdout)
    assert data["diagnoses"][0]["id"] == "stale-conntrack"
    assert data["diagnoses"][0]["evidence"][0]["source"] == str(snap / "node1" / "conntrack.txt")
    plain = run("explain", str(snap / "node2"), "--dst", "10.96.0.10:53", "--proto", "udp", "-o", "json")
    assert plain.exit_code == 0 and "stale-conntrack" not in plain.stdout


def test_audit_reports_stale_conntrack_per_node_and_service_port(tmp_path: Path, golden: Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _collection(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = run("audit", "snap", "-o", "json")
    assert result.exit_code == 3
    data = json.loads(result.stdout)
    found = [(f["id"], f["node"], f["service"]) for f in data["findings"]]
    assert found == [("stale-conntrack", "node1", "default/fb-backends:ka-port"),
                     ("stale-conntrack", "node1", "kube-system/kube-dns:dns/udp"),
                     ("stale-conntrack-no-dnat", "node1", "kube-system/kube-dns:dns/udp")]
    dns = data["findings"][1]
    assert dns["summary"].startswith("kube-system/kube-dns:dns/udp: 2 UDP conntrack entries to 10.96.0.10:53")
    assert dns["fix"].splitlines()[-1] == ("conntrack -D -p udp --orig-dst 10.96.0.10 --orig-port-dst 53 "
                                           "--reply-src 10.244.0.9")
    assert [(e["source"], e["line"]) for e in dns["evidence"]] == [("snap/node1/conntrack.txt", 4),
                                                                    ("snap/node1/conntrack.txt", 6)]
    assert [(n["name"], n["findings"]["error"]) for n in data["nodes"]] == [("node1", 3), ("node2", 0)]
    text = run("audit", "snap", "-v")
    golden(GOLDEN / "audit" / "conntrack.txt", text.stdout)


def test_a_capped_table_is_said_to_be_partial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """collect keeps the first --conntrack-max-entries entries per family: a stale entry beyond them is not
    checked, so an explain or audit that finds none must say the table was partial (on stderr; stdout's JSON
    is unchanged)."""
    snap = _collection(tmp_path)
    meta = {"node": "node1", "addresses": ["192.168.49.2"],
            "conntrack": {"status": "ok", "entries": {"ipv4": 13, "ipv6": 0}, "capped": True, "max_entries": 13,
                          "error": None}}
    (snap / "node1" / "meta.json").write_text(json.dumps(meta))
    note = (f"note: {snap / 'node1' / 'conntrack.txt'}: holds only the first 13 conntrack entries of each family "
            "(collect --conntrack-max-entries); the flows beyond them were not checked\n")
    explained = run("explain", str(snap / "node1"), "--dst", "10.96.0.10:53", "--proto", "udp", "-o", "json")
    assert explained.exit_code == 3 and explained.stderr == note
    assert json.loads(explained.stdout)["diagnoses"][0]["id"] == "stale-conntrack"
    audited = run("audit", str(snap), "-o", "json")
    assert audited.exit_code == 3 and audited.stderr == note
    uncapped = run("explain", str(snap / "node2"), "--dst", "10.96.0.10:53", "--proto", "udp")
    assert uncapped.stderr == ""


def test_audit_html_shows_conntrack_evidence_and_commands_as_they_are(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The HTML report said "Evidence: 2 lines of node1's rules" above lines of conntrack.txt, and ran the
    `conntrack -D` commands of a fix into its sentence (several of them into one line that cannot be pasted)."""
    _collection(tmp_path)
    monkeypatch.chdir(tmp_path)
    findings = json.loads(run("audit", "snap", "-o", "json").stdout)["findings"]
    page = run("audit", "snap", "-o", "html").stdout
    articles = re.findall(r'<article class="finding.*?</article>', page, re.S)
    assert len(articles) == len(findings) == 3
    for finding, article in zip(findings, articles, strict=True):
        sentence, *commands = finding["fix"].split("\n")
        assert commands  # each conntrack finding's fix ends in the commands to run
        assert f'<p><b>Fix:</b> {html.escape(sentence)}</p>' in article
        shown = re.search(r'<pre class="commands">(.*?)</pre>', article, re.S)
        assert shown is not None and html.unescape(shown.group(1)).split("\n") == commands
        summary = re.search(r"<summary>(Evidence: .*?)</summary>", article)
        assert summary is not None
        assert html.unescape(re.sub("<[^>]+>", "", summary.group(1))) == \
            f"Evidence: {len(finding['evidence'])} line{'s' * (len(finding['evidence']) > 1)} of " \
            "snap/node1/conntrack.txt"
