"""conntrack's other outputs saved for its table (`conntrack -E` events, with or without `-o timestamp`;
`conntrack -L -o xml`) are named with the command to run instead; an unknown first line still asks whether the
file is `conntrack -L` output."""

from __future__ import annotations

import pytest

from iptrace.conntrack import load
from iptrace.errors import ParseError

EVENTS = ("    [NEW] udp      17 30 src=10.244.1.12 dst=10.96.0.10 sport=40000 dport=53 [UNREPLIED] src=10.244.0.9 "
          "dst=10.244.1.12 sport=53 dport=40000\n"
          " [UPDATE] udp      17 30 src=10.244.1.12 dst=10.96.0.10 sport=40000 dport=53 src=10.244.0.9 "
          "dst=10.244.1.12 sport=53 dport=40000\n")
STAMPED = ("[1733380000.123456]\t    [NEW] tcp      6 120 SYN_SENT src=10.0.0.1 dst=10.96.0.1 sport=1 dport=443 "
           "[UNREPLIED] src=10.0.0.2 dst=10.0.0.1 sport=443 dport=1\n")
XML = '<?xml version="1.0" encoding="utf-8"?>\n<conntrack>\n<flow></flow>\n</conntrack>\n'
ENTRY = ("udp      17 118 src=10.244.1.12 dst=10.96.0.10 sport=41522 dport=53 src=10.244.0.2 dst=10.244.1.12 "
         "sport=53 dport=41522 [ASSURED] mark=0 use=1\n")


@pytest.mark.parametrize(("text", "said"), [
    (EVENTS, "this is `conntrack -E` (events as they happen), not the table: list the table with `conntrack -L`"),
    (STAMPED, "this is `conntrack -E`"),
    (XML, "this is `conntrack -L -o xml`, which iptrace does not read: list the table plain (`conntrack -L`) or "
          "with `-o extended`"),
    ("hello world\n", "is this `conntrack -L` output (or /proc/net/nf_conntrack)?"),
])
def test_another_output_is_named(text: str, said: str) -> None:
    with pytest.raises(ParseError) as caught:
        load(text, source="ct.txt")
    assert str(caught.value).startswith("ct.txt:1:")
    assert said in caught.value.reason


def test_an_event_line_after_entries_is_an_error_of_its_own() -> None:
    # (after an entry the file is a table: its bad line is not said to be another output)
    with pytest.raises(ParseError) as caught:
        load(ENTRY + EVENTS, source="ct.txt")
    assert caught.value.line == 2
    assert "conntrack -E" not in caught.value.reason
