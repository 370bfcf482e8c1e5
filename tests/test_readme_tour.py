"""The README's tour is what iptrace prints: every `$ iptrace …` block of the README is run from the repository
(its paths are relative to it) and must print what the block shows, line for line. A block may shorten the
output where it says so: a line that starts with `…` stands for one or more lines, and `…` inside a line for
any text. A block that shows only its command (the prose says what it prints) must run and exit 0. The
nftables blocks are also checked exactly by tests/test_explain_nft.py. And its lists of ids: the audit finding table
holds every finding id the audit makes and no other, and the tour names every diagnosis of explain's catalogue;
and every key of explain's JSON, with `--src` and without, is named where the README describes it."""

from __future__ import annotations

import re
import shlex

import pytest
from click.testing import CliRunner

from iptrace.cli import main
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = [(" ".join(command.replace("\\\n", " ").split()), shown)
          for command, shown in re.findall(r"```\n\$ (iptrace (?:[^\n]*\\\n)*[^\n]*)\n(.*?)```", README, re.S)]


def shown_pattern(shown: str) -> re.Pattern[str]:
    """The block's text as a pattern of the output it stands for (see the module's docstring)."""
    parts = [r"[^\n]*(?:\n[^\n]*)*?" if line.lstrip().startswith("…")
             else "[^\n]*".join(re.escape(piece) for piece in line.split("…"))
             for line in shown.split("\n")]
    return re.compile("\n".join(parts))


def test_the_readme_has_its_tour() -> None:
    commands = [command.split()[1] for command, _ in BLOCKS]
    assert len(BLOCKS) >= 7 and {"explain", "services", "trace", "diff"} <= set(commands), commands


@pytest.mark.parametrize(("command", "shown"), BLOCKS, ids=[c for c, _ in BLOCKS])
def test_each_readme_block_is_what_iptrace_prints(command: str, shown: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(main, shlex.split(command)[1:])
    assert result.exit_code in ((0, 3) if command.split()[1] == "explain" else (0,)), result.output
    if not shown:
        assert result.exit_code == 0 and result.output
    else:
        assert shown_pattern(shown).fullmatch(result.output), f"{command}:\n{result.output}"


def test_an_elision_stands_only_for_what_it_replaces() -> None:
    pattern = shown_pattern("a\n  …why…\nFix: x …\nend\n")
    assert pattern.fullmatch("a\n  one\n  two\nFix: x y z\nend\n")
    assert not pattern.fullmatch("a\nFix: x y\nend\n")  # an elided line stands for at least one
    assert not pattern.fullmatch("a\n  one\nFix: y\nend\n")  # the text before `…` must be there
    assert not pattern.fullmatch("a\n  one\nFix: x y\nend\nmore\n")  # and nothing after the block's end


def _section(start: str, end: str) -> str:
    at = README.index(start)
    return README[at:README.index(end, at + len(start))]


def _finding_ids_in_code() -> set[str]:
    """Every kebab-case string constant of the audit's modules (compare.py's finding ids, and those kept beside
    the code that makes them), less the two that name no audit finding."""
    pattern = re.compile(r'^[A-Z_]+ = "([a-z]+(?:-[a-z]+)+)"$', re.M)
    sources = [*(ROOT / "iptrace" / "kube").glob("*.py"), ROOT / "iptrace" / "conntrack" / "advice.py"]
    found = {value for path in sources for value in pattern.findall(path.read_text(encoding="utf-8"))}
    # (a kind of client; and explain's `-v` remark that a node's flows agree with its rules, never an audit's)
    return found - {"outside-source-ranges", "conntrack-healthy"}


def test_the_finding_table_lists_every_finding_audit_makes_and_no_other() -> None:
    table = set(re.findall(r"^\| `([a-z-]+)` \|", _section("##### Finding ids", "\n#####"), re.M))
    assert table == _finding_ids_in_code()


def test_every_diagnosis_of_the_catalogue_is_named_in_the_tour() -> None:
    from iptrace.explain.catalogue import CATALOGUE

    prose = _section("Diagnoses have stable ids:", "\n\n")
    assert [d for d in CATALOGUE if f"`{d}`" not in prose] == []


def test_every_key_of_explain_json_is_documented() -> None:
    import json

    prose = _section("`explain -o json` with `--src`:", "\n\n")
    dump, ask = str(ROOT / "sample_dumps" / "nodeport-fb-backends.txt"), ["--dst", "10.101.234.168:8001"]
    whole = json.loads(CliRunner().invoke(main, ["explain", dump, *ask, "-o", "json"]).stdout)
    one = json.loads(CliRunner().invoke(main, ["explain", dump, *ask, "--src", "pod", "-o", "json"]).stdout)
    keys = set(whole) | set(whole["sources"]) | set(whole["sources"]["pod"]) | set(one)
    keys |= {k for d in one["diagnoses"] for k in d} | {k for d in one["diagnoses"] for e in d["evidence"] for k in e}
    assert sorted(k for k in keys if f'"{k}"' not in prose) == []
