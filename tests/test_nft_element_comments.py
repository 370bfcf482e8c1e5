"""An element with a plain comment (kube-proxy's no-endpoint-services map: `10.96.0.10 . tcp . 53 comment
"ns/svc:dns" : goto reject-chain`) is read with str methods (elements.ElementReader.commented), not the rule
reader: it must give what the rule reader gives, for every text it accepts, and refuse what it cannot be sure of."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from iptrace.nftables.elements import ElementReader
from iptrace.nftables.reader import NotUnderstood

READERS = {
    "concat vmap": ElementReader(("ipv4_addr", "inet_proto", "inet_service"), ("verdict",), "ip"),
    "port vmap": ElementReader(("inet_proto", "inet_service"), ("verdict",), "ip"),
    "set": ElementReader(("ipv4_addr",), None, "ip"),
    "map to address": ElementReader(("ipv4_addr",), ("ipv4_addr",), "ip"),
}
KEYS = {"concat vmap": ["10.96.0.10 . tcp . 53", "10.96.0.300 . tcp . 53", "10.96.0.10 . tcp", "10.96.0.10 . tcp . 53 "],
        "port vmap": ["tcp . 30379", "udp . 99999", "tcp .  80"],
        "set": ["10.0.0.1", "10.0.0.0/8", "nope", "10.0.0.1 10.0.0.2"],
        "map to address": ["10.0.0.1", "10.0.0.1 . tcp"]}
DATA = ["", " : goto reject-chain", " : drop", " : jump a b", " : 10.0.0.9", " :goto x", " : 10.0.0.9 . 80"]


def outcome(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except (ValueError, NotUnderstood) as exc:
        return ("refused", type(exc) is ValueError)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(READERS)), st.data(), st.text(alphabet='ab/:-. "\\,{}\n', max_size=12),
       st.sampled_from(DATA), st.booleans(), st.sampled_from([" comment ", "  comment ", " comment  "]))
def test_a_commented_element_reads_as_the_rule_reader_reads_it(kind: str, data: Any, comment: str, tail: str,
                                                              keys_only: bool, word: str) -> None:
    reader = READERS[kind]
    text = data.draw(st.sampled_from(KEYS[kind])) + word + '"' + comment + '"' + tail
    fast = outcome(reader.commented, text, keys_only)
    if fast is None:
        return  # left to the rule reader
    slow = outcome(reader.slow, text, keys_only)
    if fast == ("refused", True):  # a value its type refuses: the rule reader refuses it too
        assert slow[0] == "refused", (text, slow)
    else:
        assert fast == slow, text


def test_kube_proxys_commented_elements_are_read_quickly() -> None:
    reader = READERS["concat vmap"]
    text = '10.96.4.244 . tcp . 80 comment "apps/ads-1268:http" : goto reject-chain'
    element = reader.commented(text, False)
    assert element is not None and element == reader.slow(text)
    assert element.comment == "apps/ads-1268:http"
