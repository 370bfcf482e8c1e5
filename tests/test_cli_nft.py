"""`iptrace parse` on nftables input, told from iptables-save by content: summary, JSON model, --save, stdin,
exact error text with a caret, --lenient."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from iptrace.cli import main
from iptrace.nftables import load, save

LISTING = """\
table ip kube-proxy {
	comment "rules for kube-proxy"
	map service-ips {
		type ipv4_addr . inet_proto . inet_service : verdict
		elements = { 172.30.0.41 . tcp . 80 : goto service-A }
	}

	chain nat-prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr . meta l4proto . th dport vmap @service-ips
	}

	chain service-A {
		meta l4proto tcp dnat to 10.180.0.1:80
	}
}
table inet filter {
	chain input {
		type filter hook input priority filter; policy drop;
		ct state established,related accept
	}
}
"""


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(main, list(args), input=input)


@pytest.fixture
def listing(tmp_path):
    p = tmp_path / "node.nft"
    p.write_text(LISTING)
    return p


def test_parse_summarises_an_nft_listing(listing) -> None:
    result = run("parse", str(listing))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"{listing}: nft list ruleset, 2 tables, 3 rules, 0 sets and 1 map (1 element)"
    assert lines[1].startswith("kube-proxy ipv4: nftables mode, ")
    assert "table ip kube-proxy: 2 chains (1 base), 2 rules, 0 sets, 1 map, 1 element" in lines
    assert any(line.split() == ["input", "filter", "input", "priority", "0", "policy", "drop", "1", "rule"]
               for line in lines)


def test_parse_json_is_the_model(listing) -> None:
    data = json.loads(run("parse", str(listing), "-o", "json").output)
    assert data["format"] == "nft-list" and data["kube_proxy_table"] is True
    assert data["families"] == ["ipv4", "ipv6"]
    kube = data["tables"][0]
    assert kube["chains"][0]["base"] == {"type": "nat", "hook": "prerouting", "priority": -100,
                                         "policy": "accept", "devices": []}
    rule = kube["chains"][1]["rules"][0]
    assert rule["line"] == 14 and rule["text"] == "meta l4proto tcp dnat to 10.180.0.1:80"
    assert rule["items"][1] == {"type": "nat", "kind": "dnat", "family": None, "addr": "10.180.0.1", "port": 80,
                                "flags": []}
    assert kube["sets"][0]["elements"][0]["key"] == {"concat": ["172.30.0.41", "tcp", 80]}


def test_parse_save_writes_nft_text(listing) -> None:
    result = run("parse", "--save", str(listing))
    assert result.exit_code == 0
    assert result.output == save(load(LISTING))
    assert load(result.output) == load(LISTING)


def test_parse_reads_nft_json_from_stdin() -> None:
    doc = {"nftables": [{"table": {"family": "ip", "name": "kube-proxy", "handle": 1}},
                        {"chain": {"family": "ip", "table": "kube-proxy", "name": "c", "handle": 2}},
                        {"rule": {"family": "ip", "table": "kube-proxy", "chain": "c", "handle": 3,
                                  "expr": [{"accept": None}]}}]}
    result = run("parse", "-", input=json.dumps(doc))
    assert result.exit_code == 0
    assert result.output.startswith("<stdin>: nft -j list ruleset, 1 table, 1 rule")


def test_parse_reads_kube_proxys_transaction_text(tmp_path) -> None:
    p = tmp_path / "tx.nft"
    p.write_text("add table ip kube-proxy\nadd rule ip kube-proxy c accept\nadd chain ip kube-proxy c\n")
    result = run("parse", str(p))
    assert result.exit_code == 0
    assert result.output.startswith(f"{p}: kube-proxy nft transaction, 1 table, 1 rule")


def test_a_syntax_error_is_one_line_with_a_caret(tmp_path) -> None:
    bad = tmp_path / "bad.nft"
    bad.write_text('table ip t {\n\tchain c {\n\t\tip saddr 1.2.3.4 comment "abc\n\t}\n}\n')
    result = run("parse", str(bad))
    assert result.exit_code == 1
    assert result.output == (f"Error: {bad}:3:28: unterminated quoted string; expected a closing '\"' before the "
                             "end of the line (--lenient reads past it and analyses the rest)\n  \t\tip saddr 1.2.3.4 comment \"abc\n  \t\t" + " " * 25 + "^\n")


def test_a_semantic_error_names_its_line_and_lenient_goes_on(tmp_path) -> None:
    bad = tmp_path / "bad.nft"
    bad.write_text("table ip t {\n\tchain c {\n\t\tjump nowhere\n\t\taccept\n\t}\n}\n")
    result = run("parse", str(bad))
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {bad}:3:8: rule jumps to chain 'nowhere', which table ip t does not "
                                    "declare; expected a chain of that name (--lenient reads past it and analyses the rest)\n")
    lenient = run("parse", "--lenient", str(bad))
    assert lenient.exit_code == 0
    assert lenient.output.splitlines()[-2:] == [
        "skipped with --lenient (1):",
        "  line 3: rule jumps to chain 'nowhere', which table ip t does not declare; expected a chain of that name"]


def test_an_analysis_with_lenient_names_what_it_read_past(tmp_path) -> None:
    bad = tmp_path / "bad.nft"
    bad.write_text("table ip t {\n\tchain c {\n\t\tjump nowhere\n\t\taccept\n\t}\n}\n")
    result = CliRunner().invoke(main, ["services", "--lenient", str(bad), "-o", "json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == []
    assert result.stderr.splitlines() == [
        f"note: {bad}: read with --lenient past 1 problem (what each names is left out or assumed):",
        "  line 3: rule jumps to chain 'nowhere', which table ip t does not declare; expected a chain of that name"]


@pytest.mark.parametrize(("name", "text"), [
    # `nft -j list ruleset` of a node with no table at all, and a ruleset of tables of no IP family
    ("empty.json", '{"nftables": [{"metainfo": {"version": "1.0.9", "json_schema_version": 1}}]}'),
    ("bridge.nft", "table bridge b {\n\tchain c {\n\t\ttype filter hook forward priority 0; policy accept;\n\t}\n}\n"),
])
def test_a_ruleset_without_ip_tables_is_analysed_as_one_without_kube_proxy(tmp_path, name: str, text: str) -> None:
    p = tmp_path / name
    p.write_text(text)
    result = CliRunner().invoke(main, ["services", str(p), "-o", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == []
    result = CliRunner().invoke(main, ["services", str(p)])
    assert result.exit_code == 0 and "no kube-proxy table for IPv4" in result.output
    result = CliRunner().invoke(main, ["diff", str(p), str(p)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("sample", ["nodeport-fb-backends-nft.nft", "dual-stack-nft.nft"])
def test_a_listing_with_tabs_between_its_words_is_analysed_alike(tmp_path, sample: str) -> None:
    # nft reads a tab wherever a blank goes (block headers, `elements = {`, elements, rules); a hand-edited or
    # re-indented ruleset must give the same answers, its evidence lines included.
    text = (Path(__file__).resolve().parents[1] / "sample_dumps" / sample).read_text()
    tabbed = tmp_path / sample
    tabbed.write_text(re.sub(r'"(?:\\.|[^"\\])*"| ', lambda m: "\t" if m.group() == " " else m.group(), text))
    plain = tmp_path / ("plain-" + sample)
    plain.write_text(text)
    got = CliRunner().invoke(main, ["services", str(tabbed), "-o", "json"])
    assert got.exit_code == 0, got.output
    assert got.stdout == CliRunner().invoke(main, ["services", str(plain), "-o", "json"]).stdout


def test_iptables_dumps_still_go_to_the_iptables_loader(tmp_path) -> None:
    p = tmp_path / "node.txt"
    p.write_text("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\nCOMMIT\n")
    result = run("parse", str(p))
    assert result.exit_code == 0 and "iptables-save" in result.output.splitlines()[0]


def test_a_cut_nft_json_is_read_up_to_its_last_whole_object_with_lenient(tmp_path) -> None:
    """`nft -j list ruleset` cut short (a listing out of time, a paste): without --lenient the error names where;
    with it, the objects before the cut are analysed and the cut is listed (it was the same error: --lenient
    read nothing of a cut JSON document)."""
    whole = (Path(__file__).resolve().parent.parent / "sample_dumps" / "nodeport-fb-backends-nft.json").read_text()
    cut = tmp_path / "cut.json"
    cut.write_text(whole[:whole.rindex('{"rule"') + 40])  # (in the last rule)
    strict = CliRunner().invoke(main, ["services", str(cut)])
    assert strict.exit_code == 1 and "looks truncated" in strict.stderr, strict.output
    result = CliRunner().invoke(main, ["services", "--lenient", str(cut), "-o", "json"])
    assert result.exit_code == 0, result.output
    ports = {p["service"] for p in json.loads(result.stdout)}
    assert "default/fb-backends:ka-port" in ports, ports
    note = result.stderr.splitlines()
    assert note[0] == f"note: {cut}: read with --lenient past 1 problem (what each names is left out or assumed):"
    assert "not valid JSON" in note[1] and "looks truncated" in note[1], note
    parsed = CliRunner().invoke(main, ["parse", "--lenient", str(cut)])
    listed = parsed.stdout[parsed.stdout.index("skipped with --lenient"):].splitlines()[1:]
    assert listed and not [x for x in listed if x.startswith("  line 0:")], listed  # (JSON has no lines)
