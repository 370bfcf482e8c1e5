"""The text loader's fast paths and memos decide only how fast, never what loads (hypothesis, on kube-proxy texts).

The fast load keys rules by shape (one compiled builder per shape, the line loop's inlined split), reads chains
like the ones before them whole (blocks.py), remembers the grammar's trees of repeated statements and the patch
of repeated set declarations. The oracle is the same loader with all of that off: every rule read alone (the
grammar checks it, the reader reads its own text), no chain template, no tree or set patch remembered. On
kube-proxy's texts (the corpus dumps and listings, synthesized listings and transactions) mutated line by line,
both must load the same model — every rule's meaning and evidence, every set with its elements, the warnings and
what --lenient skipped — or fail with the same error (file:line:column, the text, what was expected).

Elements are left out of the oracle: the str split (elements.py) and the rule reader refuse a garbage element at
the same line but say why in other words ("'…' is not a protocol" against "cannot read this element").
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import synth, synth_nft
from iptrace.errors import IptraceError
from iptrace.nftables import blocks, loader
from iptrace.nftables.build import TableBuilder
from iptrace.nftables.model import Chain
from tests.nft_corpus import dumped_texts

_SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class _Forgetful(dict[Any, Any]):
    """A memo that never keeps anything."""

    def __setitem__(self, key: Any, value: Any) -> None:
        return None


class _NoTemplates(blocks.ChainShapes):
    def learn(self, *args: Any) -> None:
        return None


class _SlowLoader(loader.TextLoader):
    def __init__(self, text: str, source: str, lenient: bool) -> None:
        super().__init__(text, source, lenient)
        self.trees = _Forgetful()
        self.set_patches = _Forgetful()

    def table_for(self, family: str, name: str, line_no: int) -> TableBuilder:
        t = super().table_for(family, name, line_no)
        if not isinstance(t.shapes, _Forgetful):
            t.shapes = _Forgetful()
            t.chain_shapes = _NoTemplates(self.lines, self.text, self.known, self.source_text, t.refs)
        return t


def _model(cls: type[loader.TextLoader], text: str, lenient: bool) -> tuple[Any, ...]:
    """Everything a load says, or its error."""
    try:
        rs = cls(text, "<t>", lenient).load()
    except IptraceError as exc:
        return ("error", type(exc).__name__, str(exc))
    tables = []
    for t in rs.tables:
        chains = tuple((c.name, c.line, c.handle, c.comment, c.base,
                        tuple((r.text, r.line, r.handle, r.items, r.comment) for r in c.rules)) for c in t.chains)
        sets = tuple((s.name, s.key_type, s.data_type, s.flags, s.timeout_ms, s.gc_interval_ms, s.size, s.policy,
                      s.comment, s.counter, s.auto_merge, s.elements, s.typeof, s.line, s.handle) for s in t.sets)
        tables.append((t.family, t.name, t.flags, t.comment, t.line, t.handle, chains, sets, t.objects))
    return tuple(tables), rs.format, rs.warnings, rs.skipped


def _fast_and_slow(text: str, lenient: bool) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    return _model(loader.TextLoader, text, lenient), _model(_SlowLoader, text, lenient)


def _texts() -> list[str]:
    out = dumped_texts(("transaction", "listing"))
    kw = {"node_ips": ["192.168.0.10"], "pod_cidr": "10.244.0.0/16", "service_cidrs": ["10.96.0.0/12"]}
    # (seed 3: among 40 Services some with ClientIP affinity, NodePorts, LoadBalancers, Local policy)
    services = synth.scale(40, 3, seed=3)
    out += [synth_nft.render_nft(services, form=form, **kw) for form in ("list", "transaction")]
    return out


TEXTS = _texts()
# Lines a mutation writes: kube-proxy's own shapes with another value, and what breaks them.
ODD_LINES = ["\t\tip saddr 10.244.9.9 jump mark-for-masquerade", "\t\tmeta l4proto tcp dnat to 10.244.9.9:8080",
             "\t\tmeta l4proto tcp dnat to 10.244.9.300:8080", "\t\tip saddr 10.244.9.9 accept", "", "\t}",
             "\tchain endpoint-X-ns/a/tcp/p__10.244.9.9/80 {", "\t\tip saddr @affinity-nope goto endpoint-nope",
             "\t\tupdate @affinity-X { ip saddr }", "\t\telements = { 10.96.0.99 . tcp . 80 : goto nowhere }",
             "\t\t\t     10.96.0.98 . tcp . 80 : goto nowhere,", "\t\tnumgen random mod 2 vmap { 0 : goto a, 1 : goto b }",
             "\t\tip daddr 10.96.0.1 ip saddr != 10.244.0.0/16 jump mark-for-masquerade # handle 9",
             "\t\tip daddr . meta l4proto . th dport vmap @service-ips; counter", "\t\ttype ipv4_addr", "\t\tsize 65535",
             "\t\tflags dynamic,timeout", "\t\ttimeout 3h", "\tset s-1 {", "add rule ip kube-proxy services counter"]
# Edits inside a line: a value changed, a separator dropped or doubled.
SWAPS = [(".", ":"), (" ", "  "), ("10.", "10.0."), ("tcp", "udp"), ("8080", "80800"), ("{", ""), ("}", ""),
         (",", ""), (" : ", " "), ("jump", "goto"), ("\t\t", "    "), ("-", "_"), ("dnat to", "dnat ip to")]


@st.composite
def _mutated(draw: st.DrawFn) -> str:
    lines = draw(st.sampled_from(TEXTS)).split("\n")
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        kind = draw(st.sampled_from(["drop", "repeat", "insert", "swap", "move"]))
        if kind == "drop":
            del lines[i]
        elif kind == "repeat":
            lines.insert(i, lines[i])
        elif kind == "insert":
            lines.insert(i, draw(st.sampled_from(ODD_LINES)))
        elif kind == "swap":
            old, new = draw(st.sampled_from(SWAPS))
            lines[i] = lines[i].replace(old, new, 1)
        else:
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        if not lines:
            lines = [""]
    return "\n".join(lines)


@pytest.mark.parametrize("index", range(len(TEXTS)))
def test_kube_proxy_texts_load_alike_fast_and_slow(index: int) -> None:
    fast, slow = _fast_and_slow(TEXTS[index], False)
    assert fast[0] != "error"
    assert fast == slow


@_SETTINGS
@given(_mutated(), st.booleans())
def test_mutated_kube_proxy_texts_load_alike_fast_and_slow(text: str, lenient: bool) -> None:
    fast, slow = _fast_and_slow(text, lenient)
    assert fast == slow


def test_the_oracle_reads_every_rule_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The slow load really is another way: it asks the grammar about every rule (the fast load about one rule of
    each shape)."""
    text = TEXTS[-2]
    parsed = {loader.TextLoader: 0, _SlowLoader: 0}
    real = loader.TextLoader.new_shape

    def counting(self: loader.TextLoader, *args: Any, **kw: Any) -> Any:
        parsed[type(self)] += 1
        return real(self, *args, **kw)

    monkeypatch.setattr(loader.TextLoader, "new_shape", counting)
    fast, slow = _fast_and_slow(text, False)
    assert fast == slow
    rules = sum(len(c[5]) for t in fast[0] for c in t[6])
    assert parsed[_SlowLoader] == rules > 10 * parsed[loader.TextLoader]


def test_a_template_that_misplaces_its_rules_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutation: chains read whole with their rules one line off would load another model than the oracle's."""
    text = TEXTS[-2]
    fast, slow = _fast_and_slow(text, False)
    assert fast == slow
    real = blocks._reader
    monkeypatch.setattr(blocks, "_reader", lambda builders, *bound: (
        lambda g, name, line: real(builders, *bound)(g, name, line + 1)))
    fast, slow = _fast_and_slow(text, False)
    assert fast != slow


def _last_endpoint_chain(text: str) -> str:
    return re.findall(r"\n\tchain (endpoint-\S+) \{\n", text)[-1]


# What may change a chain after its block (`{name}`: a chain the listing's loader read whole).
AFTERWARDS = [
    "add rule ip kube-proxy {name} counter", "insert rule ip kube-proxy {name} counter",
    "flush chain ip kube-proxy {name}", "delete chain ip kube-proxy {name}", "destroy chain ip kube-proxy {name}",
    "flush table ip kube-proxy", "add chain ip kube-proxy {name}", "create chain ip kube-proxy {name}",
    "delete rule ip kube-proxy {name} handle 3", "table ip kube-proxy {{\n\tchain {name} {{\n\t\tcounter\n\t}}\n}}",
    "add rule ip kube-proxy {name} jump nowhere", "delete table ip kube-proxy",
]


@pytest.mark.parametrize("lenient", [False, True])
@pytest.mark.parametrize("after", AFTERWARDS)
def test_a_chain_read_whole_then_changed_loads_as_the_oracle_does(after: str, lenient: bool) -> None:
    """A listing's chains read whole are kept frozen (no builder): whatever comes after their block and changes
    them, or says they exist twice, thaws them first."""
    text = TEXTS[-2]
    name = _last_endpoint_chain(text)
    ld = loader.TextLoader(text, "<t>", False)
    ld.load()
    assert type(next(iter(ld.tables.values())).chains[name]) is Chain  # (so the case below is one to test)
    changed = text + after.format(name=name) + "\n"
    fast, slow = _fast_and_slow(changed, lenient)
    assert fast == slow


@pytest.mark.parametrize("lenient", [False, True])
def test_rules_of_chains_read_whole_that_name_a_missing_chain_load_as_the_oracle_does(lenient: bool) -> None:
    text = re.sub(r"\n\tchain mark-for-masquerade \{\n[^}]*\}\n", "\n", TEXTS[-2])
    assert "chain mark-for-masquerade" not in text
    fast, slow = _fast_and_slow(text, lenient)
    assert fast == slow
    assert fast[0] == "error" if not lenient else fast[3]


SET_THEN_MAP = ("table {family} t {{\n\tset s {{\n\t\t{line}\n\t}}\n\tmap m {{\n\t\t{line}\n\t}}\n}}\n"
                "table {family} u {{\n\tset s {{\n\t\t{line}\n\t}}\n}}\n")


@pytest.mark.parametrize("lenient", [False, True])
@pytest.mark.parametrize("line", ["type ipv4_addr", "typeof ip daddr", "typeof ip6 daddr", "type ipv4_addr : verdict"])
@pytest.mark.parametrize("family", ["ip", "ip6", "inet"])
def test_a_declaration_line_repeated_in_a_map_or_another_family_loads_as_the_oracle_does(
        family: str, line: str, lenient: bool) -> None:
    """A set declaration line read once is remembered (its patch) for the sets that repeat it, by the table's
    family and the set's kind too: `type ipv4_addr` declares a set but is an error in a map (found by the test
    above, a `set` line moved into a map)."""
    text = SET_THEN_MAP.format(family=family, line=line)
    fast, slow = _fast_and_slow(text, lenient)
    assert fast == slow
