"""How iptrace is installed: the README's two one-line commands leave the system Python alone, CI runs the
second one, and an installed package (not only a checkout) carries every grammar."""

from __future__ import annotations

import re
import subprocess
import tomllib
from importlib import resources
from pathlib import Path

from tests.conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def command_after(marker: str) -> str:
    """The one line of the ```sh block after `marker`, as .ci/run reads it."""
    block = re.search(rf"{re.escape(marker)}\n```sh\n(.*?)\n```", README, re.S)
    assert block is not None, f"README.md has no ```sh block after {marker}"
    assert "\n" not in block.group(1), f"the command after {marker} must be one line"
    return block.group(1)


def test_readme_commands_use_a_virtual_environment() -> None:
    for marker in ("<!-- main-command -->", "<!-- test-command -->"):
        cmd = command_after(marker)
        assert "--break-system-packages" not in cmd and "python3 -m pip" not in cmd, cmd
        assert "apt-get install -y" in cmd and "python3-venv" in cmd, cmd  # Debian 12's python3 lacks ensurepip
        assert "python3 -m venv .venv" in cmd and ".venv/bin/pip install" in cmd, cmd
    main = command_after("<!-- main-command -->")
    assert ".venv/bin/pip install -q . " in main  # a real (non-editable) install, as a user gets it
    assert ".venv/bin/iptrace explain sample_dumps/nodeport-fb-backends.txt --dst 10.101.234.168:8001" in main
    assert main.endswith("|| [ $? -eq 3 ]")  # exit 3 = "found an error-severity problem", the expected answer
    assert "exits with status 3" in README
    test = command_after("<!-- test-command -->")
    for package in ("iptables", "nftables", "conntrack", "openssh-server", "graphviz", "iproute2", "sudo",
                    "chromium"):
        assert f" {package} " in test, package
    # Debian's kubectl only where none is installed (it conflicts with google-cloud-sdk's /usr/bin/kubectl)
    assert "{ command -v kubectl >/dev/null || apt-get install -y kubernetes-client; }" in test
    # (-n 2: two pytest-xdist workers, one a core of the 2-core CI machine: the suite is mostly CPU-bound)
    assert test.endswith(".venv/bin/pip install -q -e '.[test]' && .venv/bin/python -m pytest -q -n 2")


def test_ci_runs_the_readme_test_command() -> None:
    awk = re.search(r"cmd=\$\(awk '([^']*)' README\.md\)", (ROOT / ".ci" / "run").read_text())
    assert awk is not None
    extracted = subprocess.run(["awk", awk.group(1), str(ROOT / "README.md")], capture_output=True, text=True,
                               check=True).stdout.strip()
    assert extracted == command_after("<!-- test-command -->")


def test_the_virtual_environment_stays_out_of_git() -> None:
    assert ".venv/" in (ROOT / ".gitignore").read_text().splitlines()


def test_every_grammar_ships_in_the_package() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "grammars/*.lark" in pyproject["tool"]["setuptools"]["package-data"]["iptrace"]
    # iptrace/grammars is how the build (and importlib.resources) reaches the top-level grammars/
    assert (ROOT / "iptrace" / "grammars").resolve() == (ROOT / "grammars").resolve()
    grammars = sorted((ROOT / "grammars").glob("*.lark"))
    assert grammars
    packaged = resources.files("iptrace").joinpath("grammars")
    for grammar in grammars:
        assert packaged.joinpath(grammar.name).read_text(encoding="utf-8") == grammar.read_text(encoding="utf-8")


def test_the_loader_reads_its_grammar_as_an_installed_package_would(monkeypatch) -> None:
    from iptrace.iptables import grammar

    monkeypatch.setattr(Path, "is_file", lambda self: False)  # no checkout around: only the package's data
    assert grammar.grammar_text() == (ROOT / "grammars" / "iptables_save.lark").read_text(encoding="utf-8")
