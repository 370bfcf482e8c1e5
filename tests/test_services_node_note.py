"""`services` without the node's addresses says so, and never prints the documentation address NodePorts are traced
to in their place (192.0.2.10 / 2001:db8::10): a reader would copy it as the node's."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from iptrace.cli import main
from tests.conftest import SAMPLES

NOTE = ("node addresses unknown (pass --node-ip IP, the node's own address): NodePorts (<node>:PORT) are traced to "
        "a stand-in address, and an endpoint on the node itself is taken for another machine")


@pytest.mark.parametrize("dump", ["nodeport-fb-backends.txt", "ipv6.txt"])
def test_the_note_names_the_flag_not_a_stand_in_address(dump: str) -> None:
    result = CliRunner().invoke(main, ["services", str(SAMPLES / dump)])
    assert result.exit_code == 0
    assert result.output.splitlines()[3] == NOTE
    assert "192.0.2.10" not in result.output and "2001:db8::10" not in result.output


def test_no_note_when_the_node_is_known() -> None:
    given = CliRunner().invoke(main, ["services", str(SAMPLES / "nodeport-fb-backends.txt"), "--node-ip",
                                      "192.168.49.2"])
    revealed = CliRunner().invoke(main, ["services", str(SAMPLES / "nodeport-fb-backends-nft.nft")])
    assert "node addresses unknown" not in given.output + revealed.output
