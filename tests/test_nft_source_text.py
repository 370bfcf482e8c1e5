"""A listing's text is searched for line ends only as far as a use needs (source.SourceText), and the walker's split
shapes tell a rule's draw from its template, not its text (splits._may_draw): the text past a listing's sets is
then never searched in a `services` run; an element's key is read without the options' regex when it names none.
All must answer exactly as before."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bench import synth
from bench.synth_nft import render_nft
from iptrace.nftables import lines, load, source, splits
from iptrace.nftables.model import Numgen, VerdictMap
from iptrace.nftables.source import SourceText
from iptrace.nftables.values import normaliser
from tests import nft_corpus

QUERIES = st.lists(st.tuples(st.sampled_from(["line", "has", "len", "starts"]), st.integers(-1, 40)), max_size=12)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab\n\r", max_size=120), QUERIES, st.integers(1, 9))
def test_lines_read_in_any_order_are_the_split_lines(text: str, queries: list[tuple[str, int]], chunk: int) -> None:
    """Whatever is asked first and whatever the chunk searched at a time, each line is `text.split("\\n")`'s."""
    lines = text.split("\n")
    with pytest.MonkeyPatch.context() as m:
        m.setattr(source, "_CHUNK", chunk)
        found = SourceText(text)
        for op, n in [*queries, ("line", len(lines)), ("line", len(lines) + 1)]:
            if op == "line":
                assert found.line(n) == (lines[n - 1] if 0 < n <= len(lines) else "")
            elif op == "has":
                assert found.has(n) == (0 < n <= len(lines))
            elif op == "len":
                assert len(found) == len(lines)
            else:
                starts = list(found.starts())
                assert [text[a:b - 1] for a, b in zip(starts, [*starts[1:], len(text) + 1], strict=True)] == lines


def test_a_services_run_searches_a_listing_only_as_far_as_its_sets() -> None:
    """The view of a listing reads its elements' lines and its split chains' draws without searching the text of
    its chains for line ends (~40 ms of a 5,000-Service listing)."""
    from iptrace.kube.analysis import analyse
    from iptrace.nftables import DATAPLANE

    text = render_nft(synth.scale(80, 3), node_ips=["192.168.0.10"], pod_cidr="10.244.0.0/16",
                      service_cidrs=["10.96.0.0/12"], form="list")
    with pytest.MonkeyPatch.context() as m:
        m.setattr(source, "_CHUNK", 256)
        ruleset = load(text)
        analyse(DATAPLANE, ruleset, "ipv4", node_ips=("192.168.0.10",)).view  # noqa: B018 — built for its reads
    # (its sets, and the first service chains' rules the local-traffic detector reads; the chunks double)
    assert ruleset.source_text is not None and ruleset.source_text._scanned < len(text) // 2


def _draws(rule: Any) -> bool:
    return any(type(i) is VerdictMap and type(i.key) is Numgen for i in rule.items)


def _rulesets() -> list[Any]:
    texts = [render_nft(synth.scale(30, 4), node_ips=["192.168.0.10"], pod_cidr="10.244.0.0/16",
                        service_cidrs=["10.96.0.0/12"], form=form) for form in ("list", "transaction")]
    texts += nft_corpus.dumped_texts(nft_corpus.FORMS)
    return [load(t) for t in texts] + [load(p.read_text()) for p in nft_corpus.SAMPLES]


def test_a_rule_with_a_draw_may_draw() -> None:
    """The split shapes' filter never leaves out a rule that has a numgen draw (a rule without one it may let
    through: `_signature` reads the items), and kube-proxy's service chains are told by their templates."""
    rules = [r for rs in _rulesets() for t in rs.tables for c in t.chains for r in c.rules]
    drawing = [r for r in rules if _draws(r)]
    assert drawing and all(splits._may_draw(r) for r in drawing)
    assert all(r._lazy[0].may_draw is True for r in drawing if r._lazy is not None)


def test_a_filter_that_misses_draws_is_caught() -> None:
    with pytest.MonkeyPatch.context() as m:
        m.setattr(splits, "_template_draws", lambda items: False)
        rules = [r for rs in _rulesets() for t in rs.tables for c in t.chains for r in c.rules]
        assert not all(splits._may_draw(r) for r in rules if _draws(r))


_OPTION_RE = re.compile(r'\s+(?:comment\s+"(?:\\.|[^"\\])*"|timeout\s+\S+|expires\s+\S+|counter(?:\s+packets\s+\d+\s+'
                        r'bytes\s+\d+)?)')


def _read_key_as_before(text: str, norms: list[Any], is_map: bool) -> Any:
    """lines._read_key before it skipped the options' regex for a text that names none."""
    key_text = text.split(" : ", 1)[0] if is_map else text
    key_text = _OPTION_RE.sub("", " " + key_text).strip()
    parts = key_text.split(" . ")
    if len(parts) != len(norms):
        return None
    try:
        values = tuple(n(p.strip()) for n, p in zip(norms, parts, strict=True))
    except ValueError:
        return None
    return values if len(values) > 1 else values[0]


WORDS = st.sampled_from(["10.0.0.1", "10.0.0.1/24", "tcp", "80", "8080-8090", ".", ":", "goto", "x", "comment",
                         '"a b"', '"c"', "timeout", "1s", "expires", "counter", "packets", "1", "bytes", "2", " ",
                         "  ", "\t", "fd00::1", "300"])


@settings(max_examples=400, deadline=None)
@given(st.lists(WORDS, max_size=10), st.sampled_from([("ipv4_addr",), ("ipv4_addr", "inet_proto", "inet_service"),
                                                       ("inet_service",), ("ipv6_addr", "inet_service")]),
       st.booleans())
@example(["10.0.0.1", "counter"], ("ipv4_addr",), False)
@example(["10.0.0.1", "counter", "packets", "1", "bytes", "2", ":", "goto", "x"], ("ipv4_addr",), True)
@example(["10.0.0.1", ".", "tcp", ".", "80", "comment", '"a b"', ":", "goto", "x"],
         ("ipv4_addr", "inet_proto", "inet_service"), True)
@example(["80", "timeout", "1s"], ("inet_service",), False)
@example(["80", "expires", "1s"], ("inet_service",), False)
def test_an_element_key_reads_as_before(words: list[str], types: tuple[str, ...], is_map: bool) -> None:
    text = " ".join(words)
    norms = [normaliser(t) for t in types]
    assert lines._read_key(text, norms, is_map) == _read_key_as_before(text, norms, is_map)


def _chunks(text: str, line: int, plain: bool) -> list[tuple[str, int]]:
    """The element texts and lines of the set block at `line` of `text`: read at once (lines._plain_chunks where it
    reads the block) or (`plain` False) line by line."""
    from types import SimpleNamespace

    found = lines.ElementLines(SimpleNamespace(source_text=SourceText(text), text=text, format="nft"))  # type: ignore[arg-type]
    s: Any = SimpleNamespace(line=line)
    if plain:
        return found._listing_chunks(s)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(found, "_plain_chunks", lambda s: None)
        return found._listing_chunks(s)


PIECES = st.sampled_from(["10.0.0.1", " . ", "tcp", " : ", "goto x", ",", ", ", ",\n\t\t", "\n", " ", "\t", "}",
                          "{", '"', "elements = {", "elements={", "comment", "\r", ""])


@settings(max_examples=500, deadline=None)
@given(st.lists(PIECES, max_size=6), st.lists(PIECES, max_size=14), st.lists(PIECES, max_size=4),
       st.integers(1, 3))
@example([], ["1.2.3.4 . tcp . 80 : goto a", ",\n\t\t", "1.2.3.5 . tcp . 81 : goto b", "\n"], ["}"], 2)
def test_a_plain_element_list_reads_as_line_by_line(head: list[str], body: list[str], tail: list[str],
                                                    line: int) -> None:
    """A set block read at once (kube-proxy's dispatch maps) gives the texts and lines the line by line reading
    gives, whatever blanks, braces, quotes and odd headers its text holds (else it is read line by line)."""
    text = "table ip t {\n\tset s {\n\t\ttype x\n" + "".join(head) + "\t\telements = { " + "".join(body) + \
        "\n\t}\n" + "".join(tail) + "}\n"
    assert _chunks(text, line, True) == _chunks(text, line, False)


def test_dispatch_maps_of_a_listing_are_read_at_once() -> None:
    """Every set block of the listings reads as line by line, and the synthesized listing's dispatch maps are read
    at once."""
    text = render_nft(synth.scale(30, 4), node_ips=["192.168.0.10"], pod_cidr="10.244.0.0/16",
                      service_cidrs=["10.96.0.0/12"], form="list")
    at_once = set()
    for t in [text, *nft_corpus.dumped_texts(("listing",)), *(p.read_text() for p in nft_corpus.SAMPLES)]:
        ruleset = load(t)
        for table in ruleset.tables:
            for s in table.sets:
                if t is text and lines.ElementLines(ruleset)._plain_chunks(s) is not None:
                    at_once.add(s.name)
                assert _chunks(t, s.line, True) == _chunks(t, s.line, False), s.name
    assert {"service-ips", "service-nodeports", "cluster-ips"} <= at_once
