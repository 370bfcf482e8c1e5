"""Properties of the nft loader (hypothesis): arbitrary and mutated text raise only IptraceError; what loads
saves and loads back equal; a bad value is reported at its own line and column; synthesized rulesets of any
small shape round-trip."""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import synth, synth_nft
from iptrace.errors import IptraceError, ParseError
from iptrace.nftables import load, save
from tests.nft_corpus import FORMS, dumped_texts

_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _texts() -> list[str]:
    out = dumped_texts(FORMS, json_indent=1)
    kw = {"node_ips": ["192.168.0.10"], "pod_cidr": "10.244.0.0/16", "service_cidrs": ["10.96.0.0/12"]}
    services = synth.scale(6, 2, seed=1)
    out += [synth_nft.render_nft(services, form="list", **kw), synth_nft.render_nft(services, form="transaction", **kw)]
    return out


TEXTS = _texts()
PIECES = ['{', '}', '"', ';', ',', ':', ' . ', '@', '#', '/', '-', '\n', '\t', 'ip ', 'saddr ', 'jump ', 'chain ',
          'table ', 'set ', 'map ', 'elements = ', 'vmap ', 'add rule ', 'type ', 'flags ', 'meta ', 'ct ', 'numgen ',
          ' : ', 'dnat to ', 'reject with ', 'priority ', 'hook ', '0x4000', '10.0.0.1', '::1', '300', 'l4proto']


def _load_or_error(text: str, lenient: bool) -> None:
    try:
        ruleset = load(text, source="fuzz", lenient=lenient)
    except IptraceError:
        return
    if not ruleset.tables:  # lenient skipped everything: nothing to write back
        return
    try:
        saved = save(ruleset)
    except IptraceError:  # an expression only nft's JSON showed cannot be written as text
        return
    assert load(saved, source="saved") == ruleset


@_SETTINGS
@given(st.text(max_size=300), st.booleans())
def test_arbitrary_text_raises_only_iptrace_errors(text: str, lenient: bool) -> None:
    _load_or_error(text, lenient)


@_SETTINGS
@given(st.sampled_from(TEXTS), st.data(), st.booleans())
def test_mutated_rulesets_raise_only_iptrace_errors_or_round_trip(text: str, data: st.DataObject,
                                                                  lenient: bool) -> None:
    lines = text.split("\n")
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(lines) - 1))
        kind = data.draw(st.sampled_from(["insert", "delete", "duplicate", "cut"]))
        line = lines[i]
        if kind == "insert":
            at = data.draw(st.integers(0, len(line)))
            piece = data.draw(st.sampled_from(PIECES) | st.text(max_size=3))
            lines[i] = line[:at] + piece + line[at:]
        elif kind == "delete":
            del lines[i]
        elif kind == "duplicate":
            lines.insert(data.draw(st.integers(0, len(lines))), line)
        else:
            at = data.draw(st.integers(0, len(line)))
            lines[i] = line[:at]
        if not lines:
            lines = [""]
    _load_or_error("\n".join(lines), lenient)



def test_a_comment_keyword_before_punctuation_is_kept_as_an_unknown_item() -> None:
    # (found by hypothesis: `comment {` made the rule reader's internal NotUnderstood escape as an "internal error")
    text = ('table ip kube-proxy {\n\tchain services {\n'
            '\t\tip daddr 172.30.0.41 tcp dport 80 comment { "x" } counter accept\n\t}\n}\n')
    _load_or_error(text, False)
    _load_or_error(text, True)

_IPV4 = re.compile(r"(?<= )(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})(?=[ /:]|$)")  # an address token
_LISTING = next((t for t in TEXTS if t.startswith("table ")), "")


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_a_bad_address_is_reported_at_its_line_and_column(data: st.DataObject) -> None:
    lines = _LISTING.split("\n")
    candidates = [i for i, line in enumerate(lines) if _IPV4.search(line) and "elements" not in line
                  and not line.strip().startswith(("elements", "type", "comment")) and line.startswith("\t\t")
                  and not line.rstrip().endswith(",") and not re.match(r"\s+\d", line)]
    i = data.draw(st.sampled_from(candidates))
    match = _IPV4.search(lines[i])
    lines[i] = lines[i][:match.start()] + "300.1.2.3" + lines[i][match.end():]
    try:
        load("\n".join(lines), source="bad.nft")
    except ParseError as exc:
        assert (exc.line, exc.column) == (i + 1, match.start() + 1), str(exc)
        assert "'300.1.2.3' is not an IPv4 address" in str(exc)
    else:
        raise AssertionError(f"line {i + 1} with 300.1.2.3 loaded")


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 25), st.integers(0, 4), st.integers(0, 10_000), st.booleans(),
       st.sampled_from(["list", "transaction"]))
def test_synthesized_rulesets_round_trip(n: int, m: int, seed: int, ipv6: bool, form: str) -> None:
    services = synth.scale(n, m, seed=seed)
    if ipv6:
        for i, svc in enumerate(services):
            svc.cluster_ip = f"fd00:96::{i + 1:x}"
            for j, ep in enumerate(svc.endpoints):
                ep.ip = f"fd00:244::{i + 1:x}:{j + 1:x}"
            svc.lb_ips = [f"2001:db8::{i + 1:x}"] if svc.lb_ips else []
            svc.lb_source_ranges = ["2001:db8:1::/48"] if svc.lb_source_ranges else []
    kw = {"node_ips": ["192.168.0.10", "fd00::10"], "pod_cidr": "fd00:244::/32" if ipv6 else "10.244.0.0/16",
          "service_cidrs": ["fd00:96::/108" if ipv6 else "10.96.0.0/12"], "ipv6": ipv6}
    text = synth_nft.render_nft(services, form=form, **kw)
    model = load(text)
    assert model == load(synth_nft.render_nft(services, form="transaction" if form == "list" else "list", **kw))
    assert load(save(model)) == model


def test_a_comment_with_an_escaped_carriage_return_is_written_back_escaped() -> None:
    """A quoted string holds a carriage return only escaped (`\\` and CR): written back so, it reads the same (it was
    written raw, which the loader refuses as an unterminated string; hypothesis found it)."""
    text = 'add table ip kube-proxy { comment "\\\rrules for kube-proxy" ; }\n'
    ruleset = load(text, source="t")
    assert ruleset.tables[0].comment == "\rrules for kube-proxy"
    assert load(save(ruleset), source="saved") == ruleset
