"""A map's elements as the kernel holds them: one value per key. A key written twice with different values is
refused ("File exists", where nft points), the same element twice is not, `delete element` names elements by
their keys alone (kube-proxy's ensureElem deletes and adds an element again when its value changes: the last one
wins). Checked by hand everywhere, and against `nft -f` in a network namespace as root."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from bench import netns
from iptrace.errors import ParseError
from iptrace.nftables import load
from iptrace.nftables.model import Ruleset
from tests.test_nft_kernel import _unavailable as _no_kernel

_TABLE = """table ip t {
	map m {
		type ipv4_addr . inet_proto . inet_service : verdict
%s	}

	chain a {
		dnat to 198.18.0.1
	}

	chain b {
		dnat to 198.18.0.2
	}

	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr . meta l4proto . th dport vmap @m
	}
}
"""
_KEY = "198.19.0.4 . tcp . 80"

# (name, text, where iptrace and nft refuse it as (line, column) or None, the element's chain when accepted)
CASES = [
    ("listing, one key twice with two values",
     _TABLE % f"\t\telements = {{ {_KEY} : goto a,\n\t\t\t     {_KEY} : goto b }}\n", (5, 9), None),
    ("listing, the same element twice", _TABLE % f"\t\telements = {{ {_KEY} : goto a, {_KEY} : goto a }}\n",
     None, "a"),
    ("transaction, added twice with two values",
     _TABLE % "" + f"add element ip t m {{ {_KEY} : goto a }}\nadd element ip t m {{ {_KEY} : goto b }}\n",
     (20, 22), None),
    ("transaction, kube-proxy's ensureElem: deleted by its key, added again",
     _TABLE % "" + f"add element ip t m {{ {_KEY} : goto a }}\ndelete element ip t m {{ {_KEY} }}\n"
     f"add element ip t m {{ {_KEY} : goto b }}\n", None, "b"),
    ("transaction, deleted with its value",
     _TABLE % "" + f"add element ip t m {{ {_KEY} : goto a }}\ndelete element ip t m {{ {_KEY} : goto a }}\n"
     f"add element ip t m {{ {_KEY} : goto b }}\n", None, "b"),
    # (nft reads any run of blanks between an element's words alike; kube-proxy and the kernel write one)
    ("listing, doubled blanks and a tab in an element",
     _TABLE % "\t\telements = { 198.19.0.4  .\ttcp . 80  : goto a }\n", None, "a"),
    ("transaction, doubled blanks in an element",
     _TABLE % "" + "add element ip t m { 198.19.0.4  . tcp .  80 :  goto a }\n", None, "a"),
]


def _target(ruleset: Ruleset) -> str | None:
    elements = ruleset.table("ip", "t").set("m").elements  # type: ignore[union-attr]
    assert len(elements) == 1
    return elements[0].data.target  # type: ignore[union-attr]


@pytest.mark.parametrize(("name", "text", "refused_at", "target"), CASES, ids=[c[0] for c in CASES])
def test_map_elements_hold_one_value_per_key(name: str, text: str, refused_at: tuple[int, int] | None,
                                             target: str | None) -> None:
    if refused_at is None:
        assert _target(load(text, source="t.nft")) == target
        return
    with pytest.raises(ParseError) as info:
        load(text, source="t.nft")
    assert (info.value.line, info.value.column) == refused_at
    assert "File exists" in str(info.value) and _KEY in str(info.value)


def test_json_listing_with_one_key_twice_is_refused() -> None:
    def elem(chain: str) -> dict[str, object]:
        return {"concat": ["198.19.0.4", "tcp", 80]}, {"goto": {"target": chain}}  # type: ignore[return-value]

    doc = {"nftables": [
        {"table": {"family": "ip", "name": "t"}},
        {"chain": {"family": "ip", "table": "t", "name": "a"}},
        {"chain": {"family": "ip", "table": "t", "name": "b"}},
        {"map": {"family": "ip", "table": "t", "name": "m", "type": ["ipv4_addr", "inet_proto", "inet_service"],
                 "map": "verdict", "elem": [list(elem("a")), list(elem("b"))]}},
    ]}
    with pytest.raises(ParseError, match="twice with different values"):
        load(json.dumps(doc), source="t.json")
    doc["nftables"][3]["map"]["elem"] = [list(elem("a")), list(elem("a"))]  # type: ignore[index]
    assert _target(load(json.dumps(doc), source="t.json")) == "a"




@pytest.mark.root
@pytest.mark.skipif(_no_kernel() is not None, reason=_no_kernel() or "")
@pytest.mark.parametrize(("name", "text", "refused_at", "target"), CASES, ids=[c[0] for c in CASES])
def test_the_kernel_agrees(name: str, text: str, refused_at: tuple[int, int] | None, target: str | None) -> None:
    with netns.netns("elem") as ns:
        loaded = netns.run(ns, ["nft", "-f", "-"], stdin=text)
        listed = netns.run(ns, ["nft", "list", "ruleset"]).stdout
    if refused_at is None:
        assert loaded.returncode == 0, loaded.stderr
        assert _target(load(listed, source="kernel")) == target
    else:
        assert loaded.returncode != 0 and "File exists" in loaded.stderr
        where = re.search(r":(\d+):(\d+)-\d+: Error", loaded.stderr)
        assert where is not None, loaded.stderr
        assert (int(where.group(1)), int(where.group(2))) == refused_at


@pytest.mark.parametrize(("verb", "refused"), [("delete", True), ("destroy", False)])
def test_deleting_an_element_the_map_does_not_hold(verb: str, refused: bool) -> None:
    """`delete element` of a key the map does not hold fails as nft fails ("No such file or directory", at the
    element); `destroy element` (nft 1.0.8) deletes it only when it is there."""
    text = _TABLE % "" + f"add element ip t m {{ {_KEY} : goto a }}\n{verb} element ip t m {{ 198.19.0.5 . tcp . 80 }}\n"
    if not refused:
        assert _target(load(text, source="t.nft")) == "a"
        return
    with pytest.raises(ParseError, match="No such file or directory") as info:
        load(text, source="t.nft")
    assert (info.value.line, info.value.column) == (20, 25)


_KEYS = ("198.19.0.1 . tcp . 80", "198.19.0.2 . tcp . 80", "198.19.0.2 . udp . 53")


def _commands() -> Any:
    from hypothesis import strategies as st

    element = st.tuples(st.sampled_from(_KEYS), st.sampled_from(("a", "b")))
    add = st.lists(element, min_size=1, max_size=2).map(
        lambda es: "add element ip t m { " + ", ".join(f"{k} : goto {v}" for k, v in es) + " }")
    delete = st.sampled_from(_KEYS).map(lambda k: f"delete element ip t m {{ {k} }}")
    flush = st.just("flush map ip t m")
    return st.lists(st.one_of(add, add, delete, flush), min_size=1, max_size=6)


def _held(ruleset: Ruleset) -> dict[object, str | None]:
    return {e.key: e.data.target for e in ruleset.table("ip", "t").set("m").elements}  # type: ignore[union-attr]


@pytest.mark.root
@pytest.mark.skipif(_no_kernel() is not None, reason=_no_kernel() or "")
def test_element_commands_are_applied_as_the_kernel_applies_them() -> None:
    """Random sequences of add (one value or another), delete and flush on one map: iptrace refuses exactly
    what `nft -f` refuses, on a line it names, and otherwise holds what the kernel then lists."""
    from hypothesis import HealthCheck, given, settings

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(_commands())
    def check(commands: list[str]) -> None:
        text = _TABLE % "" + "".join(f"{c}\n" for c in commands)
        with netns.netns("elem") as ns:
            loaded = netns.run(ns, ["nft", "-f", "-"], stdin=text)
            listed = netns.run(ns, ["nft", "list", "ruleset"]).stdout
        try:
            ours: Ruleset | ParseError = load(text, source="t.nft")
        except ParseError as exc:
            ours = exc
        if loaded.returncode != 0:
            assert isinstance(ours, ParseError), (text, loaded.stderr)
            # (nft names every command of the batch the kernel refused, not always in file order)
            spans = [tuple(map(int, m.groups())) for m in re.finditer(r":(\d+):(\d+)-(\d+): Error", loaded.stderr)]
            if ours.line not in {line for line, _start, _end in spans}:
                # nft 1.0.6 names the conflicting element of an earlier command now and then (three adds, the
                # third's second element re-adding a key with another value: it points at the second command's
                # element of that key); iptrace names the element that conflicts. Both must mean the same key.
                texts = [text.splitlines()[line - 1][start - 1:end] for line, start, end in spans]
                assert "already holds the key" in str(ours), (text, loaded.stderr, str(ours))
                assert any(t and f"the key {t} with another value" in str(ours) and line < ours.line
                           for t, (line, _s, _e) in zip(texts, spans, strict=True)), (text, loaded.stderr, str(ours))
        else:
            assert not isinstance(ours, ParseError), (text, str(ours))
            assert _held(ours) == _held(load(listed, source="kernel")), text

    check()


@pytest.mark.root
@pytest.mark.skipif(_no_kernel() is not None, reason=_no_kernel() or "")
def test_a_key_re_added_with_another_value_is_named_where_it_conflicts() -> None:
    """The third command's second element re-adds a key with another value: iptrace names that element; nft
    names it too, or (nft 1.0.6) the element of that key the second command added. Either way the same key."""
    k1, k2 = "198.19.0.1 . tcp . 80", "198.19.0.2 . udp . 53"
    text = _TABLE % "" + (f"add element ip t m {{ {k2} : goto b }}\nadd element ip t m {{ {k1} : goto a }}\n"
                          f"add element ip t m {{ {k2} : goto b, {k1} : goto b }}\n")
    with pytest.raises(ParseError) as info:
        load(text, source="t.nft")
    assert (info.value.line, info.value.column) == (21, 54) and f"the key {k1} with another value" in str(info.value)
    with netns.netns("elem") as ns:
        loaded = netns.run(ns, ["nft", "-f", "-"], stdin=text)
    where = re.search(r":(\d+):(\d+)-(\d+): Error: Could not process rule: File exists", loaded.stderr)
    assert loaded.returncode != 0 and where is not None, loaded.stderr
    line, start, end = map(int, where.groups())
    assert (line, start) in ((21, 54), (20, 22)) and text.splitlines()[line - 1][start - 1:end] == k1
