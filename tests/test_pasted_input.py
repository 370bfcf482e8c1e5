"""A dump pasted from a GitHub issue or chat: the ruleset inside a Markdown code fence, with prose or a shell
prompt around it. iptrace reads the fenced block (the lines around it are left out, line numbers kept) in both
dataplanes; without a fence, prose is still an error naming its line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from iptrace.cli import main

SAMPLES = Path(__file__).resolve().parent.parent / "sample_dumps"
NFT = (SAMPLES / "nodeport-fb-backends-nft.nft").read_text()
IPT = (SAMPLES / "nodeport-fb-backends.txt").read_text()


def _services(path: Path) -> list[dict[str, object]]:
    result = CliRunner().invoke(main, ["services", "-o", "json", str(path)])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _pasted(text: str, indent: str) -> str:
    body = "".join(indent + line for line in text.splitlines(True))
    return (f"Here is my ruleset:\n\n{indent}```console\n{indent}$ sudo nft list ruleset\n{body}{indent}```\n\n"
            "Thanks!\n")


@pytest.mark.parametrize("indent", ["", "   "])
@pytest.mark.parametrize("text", [NFT, IPT], ids=["nft", "iptables"])
def test_fenced_paste_reads_as_the_dump(tmp_path: Path, text: str, indent: str) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "pasted").mkdir()
    plain = tmp_path / "plain" / "node.txt"
    plain.write_text("\n" * 4 + text)  # the lines before the block: the same line numbers in the answers
    pasted = tmp_path / "pasted" / "node.txt"
    pasted.write_text(_pasted(text, indent))
    assert _services(pasted) == _services(plain)


def test_fenced_paste_keeps_line_numbers(tmp_path: Path) -> None:
    """An error inside the fence names the line of the pasted file, not of the block."""
    broken = NFT.replace("chain services {", "chain services {\n\t\tip daddr frobnicate 1", 1)
    pasted = tmp_path / "pasted.txt"
    pasted.write_text(_pasted(broken, ""))
    line = 5 + broken.splitlines().index("\t\tip daddr frobnicate 1")
    result = CliRunner().invoke(main, ["parse", str(pasted)])
    assert result.exit_code == 1
    assert f"pasted.txt:{line}:" in result.output
    assert "Traceback" not in result.output


def test_prose_without_fence_is_still_an_error(tmp_path: Path) -> None:
    """In the words of the ruleset that follows (nft's, not iptables-save's); --lenient reads past it and says so."""
    prose = tmp_path / "prose" / "node.txt"
    prose.parent.mkdir()
    prose.write_text("Here is my ruleset:\n" + NFT)
    result = CliRunner().invoke(main, ["parse", str(prose)])
    assert result.exit_code == 1
    assert "node.txt:1:1: unexpected 'Here'; expected" in result.output
    assert '"table"' in result.output and "COMMIT" not in result.output
    lenient = CliRunner().invoke(main, ["services", "-o", "json", "--lenient", str(prose)])
    assert lenient.exit_code == 0, lenient.output
    assert "read with --lenient past 1 problem" in lenient.stderr and "line 1: unexpected 'Here'" in lenient.stderr
    plain = tmp_path / "plain" / "node.txt"
    plain.parent.mkdir()
    plain.write_text("\n" + NFT)
    assert json.loads(lenient.stdout) == _services(plain)


def test_the_block_that_holds_a_dump_is_read(tmp_path: Path) -> None:
    """An issue often shows `kubectl get svc` in a block before the ruleset's, and may be cut before its last
    fence: the first block a dataplane reads is the one read."""
    kubectl = "```\n$ kubectl get svc\nNAME          TYPE       CLUSTER-IP\nfb-backends   NodePort   10.101.234.168\n```\n"
    (tmp_path / "plain").mkdir()
    (tmp_path / "pasted").mkdir()
    plain = tmp_path / "plain" / "node.txt"
    plain.write_text("\n" * 6 + NFT)
    pasted = tmp_path / "pasted" / "node.txt"
    pasted.write_text(kubectl + "~~~\n" + NFT)
    assert _services(pasted) == _services(plain)


def test_kube_proxy_log_of_a_transaction_reads_with_lenient(tmp_path: Path, corpus: Path) -> None:
    """kube-proxy's log at -v=9 writes the transaction as klog's multi-line value (`transaction=<`, each line
    tab-indented, ` >`): --lenient reads the transaction and lists the log's own lines as skipped."""
    fixture = json.loads((corpus / "kube-proxy-nft" / "current-TestSyncProxyRulesRepeated_step1.json").read_text())
    transaction = fixture["dump"]
    plain = tmp_path / "plain" / "node.txt"
    plain.parent.mkdir()
    plain.write_text("\n" + transaction + "\n")
    log = tmp_path / "log" / "node.txt"
    log.parent.mkdir()
    body = "".join("\t" + line for line in transaction.splitlines(True))
    log.write_text('I1205 04:00:00.000000       1 proxier.go:1234] "Running nftables transaction" transaction=<\n'
                   f"{body} >\n")
    result = CliRunner().invoke(main, ["services", "-o", "json", "--lenient", str(log)])
    assert result.exit_code == 0, result.output
    assert "read with --lenient past 2 problems" in result.stderr
    assert json.loads(result.stdout) == _services(plain)


def test_json_without_final_newline_is_not_called_truncated(tmp_path: Path) -> None:
    """JSON of the wrong shape saved without a final newline (an editor, a script's json.dump) is not cut short:
    the JSON reader itself says when the document ends early."""
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"nftables": 5}')
    result = CliRunner().invoke(main, ["parse", str(wrong)])
    assert result.exit_code == 1
    assert 'wrong.json:1:1: JSON without an "nftables" list' in result.output
    assert "truncated" not in result.output
    cut = tmp_path / "cut.json"
    cut.write_text('{"nftables": [{"table": {"family": "ip", "na')
    assert "looks truncated" in CliRunner().invoke(main, ["parse", str(cut)]).output


def test_nft_json_list_alone_reads(tmp_path: Path) -> None:
    """`nft -j list ruleset | jq .nftables` (the list without its wrapping object) reads as the whole document,
    and cut short, --lenient reads its whole objects."""
    document = json.loads((SAMPLES / "nodeport-fb-backends-nft.json").read_text())
    whole = tmp_path / "whole" / "node.json"
    whole.parent.mkdir()
    whole.write_text(json.dumps(document))
    alone = tmp_path / "alone" / "node.json"
    alone.parent.mkdir()
    alone.write_text(json.dumps(document["nftables"], indent=2) + "\n")
    assert _services(alone) == _services(whole)
    cut = tmp_path / "cut.json"
    text = json.dumps(document["nftables"], indent=2)
    cut.write_text(text[: len(text) * 9 // 10])
    result = CliRunner().invoke(main, ["parse", "--lenient", str(cut)])
    assert result.exit_code == 0, result.output
    assert "read up to the last whole object before it" in result.output


def test_no_break_space_is_named(tmp_path: Path) -> None:
    """A web page or chat copies spaces as U+00A0, which no reader takes for a space: the error names it."""
    copied = tmp_path / "copied.nft"
    copied.write_text("add table ip\u00a0kube-proxy\nadd chain ip kube-proxy services\n")
    result = CliRunner().invoke(main, ["parse", str(copied)])
    assert result.exit_code == 1
    assert "copied.nft:1:13: unexpected '\\xa0' (U+00A0 NO-BREAK SPACE" in result.output
    assert "Traceback" not in result.output


def test_a_paste_is_said_with_the_lines_read(tmp_path: Path) -> None:
    """A paste is read quietly no more: stderr names the lines of the block read (stdout stays the answer), and a
    second block of rules (an issue showing iptables-save and nft's listing) is named, to be saved alone."""
    pasted = tmp_path / "issue.md"
    pasted.write_text(_pasted(NFT, ""))
    result = CliRunner().invoke(main, ["services", "-o", "json", str(pasted)])
    assert result.exit_code == 0, result.output
    last = 4 + len(NFT.splitlines())
    assert result.stderr == (f"note: {pasted}: read the rules in the pasted code block at lines 5-{last}; the "
                             "lines around it are not read\n")
    json.loads(result.stdout)
    two = tmp_path / "two.md"
    two.write_text(_pasted(NFT, "") + "and with iptables mode:\n```\n" + IPT + "```\n")
    result = CliRunner().invoke(main, ["services", "-o", "json", str(two)])
    assert result.exit_code == 0, result.output
    start = last + 6  # (the closing fence, a blank line, "Thanks!", a line of prose, the fence)
    assert f"; the block at lines {start}-{start + len(IPT.splitlines()) - 1} holds rules too: save it in a " \
           "file of its own to read it\n" in result.stderr
    plain = CliRunner().invoke(main, ["services", "-o", "json", str(SAMPLES / "nodeport-fb-backends-nft.nft")])
    assert plain.stderr == ""
