"""Chain declarations (":NAME POLICY [p:b]") as the loader reads them: its shortcut for the common line
":NAME - [0:0]" must read exactly what the declaration regex and declare() read — a blank of any kind in the
name is an error at its column, a second declaration or a built-in chain's "-" is what declare() says."""

from __future__ import annotations

import pytest

from iptrace.errors import IptraceError
from iptrace.iptables.loader import load

DUMP = "*filter\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n%s\n-A OUTPUT -j ACCEPT\nCOMMIT\n"


def _chains(text: str) -> list[tuple[str, str | None, tuple[int, int] | None, int, int]]:
    return [(c.name, c.policy, c.counters, c.line, len(c.rules)) for t in load(text).tables for c in t.chains]


def test_the_common_declaration_makes_an_empty_user_chain() -> None:
    assert _chains(DUMP % ":KUBE-SEP-X - [0:0]\n-A KUBE-SEP-X -j RETURN") == [
        ("FORWARD", "ACCEPT", (0, 0), 2, 0), ("OUTPUT", "ACCEPT", (0, 0), 3, 1), ("KUBE-SEP-X", None, (0, 0), 4, 1)]
    assert _chains(DUMP % ":KUBE-SEP-X - [3:4]")[-1] == ("KUBE-SEP-X", None, (3, 4), 4, 0)


@pytest.mark.parametrize("blank", ["\xa0", "\x0b", "\x0c", "\u2003"])
def test_a_name_with_any_blank_is_refused_at_its_column(blank: str) -> None:
    with pytest.raises(IptraceError, match=r"<dump>:4:(8|11): unexpected"):
        load(DUMP % f":KUBE-A{blank}B - [0:0]")
    assert [w.line for w in load(DUMP % f":KUBE-A{blank}B - [0:0]", lenient=True).skipped] == [4]


def test_a_second_declaration_and_a_builtin_dash_are_declares() -> None:
    with pytest.raises(IptraceError, match=r"chain 'KUBE-X' declared twice in table filter \(first at line 4\)"):
        load(DUMP % ":KUBE-X - [0:0]\n:KUBE-X - [0:0]")
    with pytest.raises(IptraceError, match="chain 'OUTPUT' declared twice"):
        load(DUMP % ":OUTPUT - [0:0]")
    ruleset = load(DUMP % ":INPUT - [0:0]")
    assert ("INPUT", "ACCEPT", (0, 0), 4, 0) in _chains(DUMP % ":INPUT - [0:0]")
    assert any("built-in chain INPUT has no policy" in w.message for w in ruleset.warnings)
    with pytest.raises(IptraceError):
        load(DUMP % ": - [0:0]")
