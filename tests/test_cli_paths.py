"""Arguments that look like paths (a '/' in them, or a .txt/.gz name) and do not exist are missing files, said
in one line with exit status 1 — never a host name to resolve or a "bad node host" complaint."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from iptrace.cli import main
from tests.conftest import SAMPLES

FB = str(SAMPLES / "nodeport-fb-backends.txt")
NODE_FORMS = "[user@]host[:port] or a Host alias of ~/.ssh/config"


def run(args: list[str]):
    return CliRunner().invoke(main, args)


@pytest.mark.parametrize(("args", "stderr"), [
    (["audit", "/no/such/dir"], "Error: /no/such/dir: no such file or directory\n"),
    (["audit", "snap/"], "Error: snap/: no such file or directory\n"),
    (["audit", "node1.txt"], "Error: node1.txt: no such file or directory\n"),
    (["audit", "node1.txt.gz", "-o", "json"], "Error: node1.txt.gz: no such file or directory\n"),
    (["audit", "node1.nft"], "Error: node1.nft: no such file or directory\n"),
    (["audit", "ruleset.json"], "Error: ruleset.json: no such file or directory\n"),
    (["audit", FB, "/no/such/dir"], "Error: /no/such/dir: no such file or directory\n"),
    (["collect", "/no/such/dir", "--out", "out"],
     f"Error: /no/such/dir: no such file or directory; collect takes nodes ({NODE_FORMS})\n"),
    (["audit", "--collect", "/no/such/dir"],
     f"Error: /no/such/dir: no such file or directory; audit --collect takes nodes ({NODE_FORMS})\n"),
    (["diff", FB, "/no/such/dir"], "Error: /no/such/dir: no such file or directory\n"),
    (["diff", "before.txt", FB], "Error: before.txt: no such file or directory\n"),
    (["parse", "/no/such/file.txt"], "Error: /no/such/file.txt: no such file or directory\n"),
    (["services", "node1.txt"], "Error: node1.txt: no such file or directory\n"),
    (["trace", "/no/x.txt", "--dst", "10.96.0.1:443"], "Error: /no/x.txt: no such file or directory\n"),
    (["explain", "/no/x.txt", "--dst", "10.96.0.1:443"], "Error: /no/x.txt: no such file or directory\n"),
    (["services", FB, "--cluster", "/no/such.json"], "Error: /no/such.json: no such file or directory\n"),
])
def test_missing_paths_are_one_line(args: list[str], stderr: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # relative names resolve in an empty directory
    result = run(args)
    assert (result.exit_code, result.stderr, result.stdout) == (1, stderr, "")


def test_existing_paths_given_as_nodes_are_named(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "snap").mkdir()
    (tmp_path / "node1.txt").write_text(Path(FB).read_text())
    result = run(["collect", "snap/", "--out", "out"])
    assert (result.exit_code, result.stderr) == (1, (
        f"Error: snap/: a directory, not a node; collect takes nodes ({NODE_FORMS}); to analyze what was "
        "collected or saved: iptrace audit snap/\n"))
    result = run(["audit", "--collect", "node1.txt"])
    assert (result.exit_code, result.stderr) == (1, (
        f"Error: node1.txt: a file, not a node; audit --collect takes nodes ({NODE_FORMS}); to analyze what "
        "was collected or saved: iptrace audit node1.txt\n"))
    # without --collect the same file is simply audited
    result = run(["audit", "node1.txt"])
    assert result.exit_code in (0, 3) and result.stderr == ""
    assert "node1" in result.stdout
