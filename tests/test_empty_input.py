"""An input with no rule at all (empty, blank or comments only) is auto-detected as neither dataplane: the error
names every form iptrace reads, not iptables' alone (a `.nft` file said "expected iptables-save output")."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from iptrace.cli import main

EXPECTED = ("no rules found; expected iptables-save output ('*filter' … 'COMMIT'), an 'iptables -S' listing "
            "(-P/-N/-A lines) or an nftables ruleset (`nft list ruleset`, or its -j JSON)")


@pytest.mark.parametrize("content", ["", "\n\n", "# nothing here\n  \n"])
@pytest.mark.parametrize("name", ["empty.nft", "empty.txt"])
def test_an_input_without_rules_names_every_form(tmp_path: Path, content: str, name: str) -> None:
    dump = tmp_path / name
    dump.write_text(content)
    result = CliRunner().invoke(main, ["services", str(dump)])
    assert result.exit_code == 1
    assert result.output.splitlines()[0] == f"Error: {dump}:1:1: {EXPECTED}"
