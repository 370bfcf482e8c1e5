"""The endpoints' addresses `services` asks about (PortReader.endpoint_set: membership, no name bases hashed) are
exactly those endpoint_index gives Service ports for (explain, trace): on every bundled sample, every corpus form,
synthesized listings (IPv6, names kube-proxy cut short with `...`) and each source on its own — endpoint chain
names, a cut name's DNAT, 1.37's DNATs in service chains, @hairpin-connections."""

from __future__ import annotations

import json
from ipaddress import ip_address
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.synth import EndpointSpec, PortSpec, ServiceSpec
from bench.synth_nft import render_nft
from iptrace.nftables import DATAPLANE, load
from iptrace.nftables.model import Ruleset
from iptrace.nftables.names import KUBE_PROXY_FAMILIES, KUBE_PROXY_TABLE
from iptrace.nftables.ports import PortReader
from tests.nft_corpus import FIXTURES, SAMPLES, read, texts
from tests.test_nft_layout import EPS, LB, LB_EP, WEB, era_ruleset

ALONE = "198.18.0.9"  # an address only @hairpin-connections has


def _readers(ruleset: Ruleset) -> list[PortReader]:
    return [PortReader(ruleset, t) for t in ruleset.tables
            if t.name == KUBE_PROXY_TABLE and t.family in KUBE_PROXY_FAMILIES]


def _agree(ruleset: Ruleset) -> int:
    """Asserts the two agree in every kube-proxy table; the number of addresses."""
    count = 0
    for reader in _readers(ruleset):
        assert reader.endpoint_set() == set(reader.endpoint_index()), reader.table.label
        assert all(ip in reader.endpoint_ips for ip in reader.endpoint_index())
        count += len(reader.endpoint_set())
    return count


def _sample_text(path: Path) -> str:
    return json.dumps(json.loads(path.read_text())) if path.suffix == ".json" else path.read_text()


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_samples_agree(path: Path) -> None:
    _agree(load(_sample_text(path), source=path.name))


@pytest.mark.skipif(not FIXTURES, reason="corpus not present")
def test_corpus_forms_agree() -> None:
    total = 0
    for fixture in FIXTURES:
        for form, text in texts(read(fixture)).items():
            total += _agree(load(text, source=f"{fixture.name} {form}"))
    assert total


def _services(v6: bool, name_len: int, n_eps: int, seed: int) -> list[ServiceSpec]:
    """Two Services whose names are `name_len` long (long ones cut endpoint chain names to `…...`)."""
    out = []
    for i in range(2):
        eps = [EndpointSpec(str(ip_address(f"fd00:10:{seed:x}:{i}::{j + 1:x}" if v6 else f"10.{seed % 250}.{i}.{j + 1}")),
                            8080 + j) for j in range(n_eps)]
        out.append(ServiceSpec("n" * name_len, f"s{i}-" + "x" * name_len,
                               f"fd00:96::{i + 1:x}" if v6 else f"10.96.0.{i + 1}",
                               [PortSpec("p" * min(name_len, 15), 80)], endpoints=eps))
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(v6=st.booleans(), name_len=st.integers(1, 110), n_eps=st.integers(0, 4), seed=st.integers(0, 10_000),
       form=st.sampled_from(["list", "transaction"]))
def test_synthesized_rulesets_agree(v6: bool, name_len: int, n_eps: int, seed: int, form: str) -> None:
    specs = _services(v6, name_len, n_eps, seed)
    text = render_nft(specs, node_ips=["fd00::10" if v6 else "192.168.0.10"], pod_cidr=None, ipv6=v6, form=form)
    ruleset = load(text)
    _agree(ruleset)
    (reader,) = _readers(ruleset)
    if name_len <= 100:  # (longer: kube-proxy cuts the Service port's own text, no name says which port)
        assert reader.endpoint_set() == {e.ip for s in specs for e in s.endpoints}


def test_long_ipv6_names_are_cut_and_still_agree() -> None:
    specs = _services(True, 100, 2, 7)
    ruleset = load(render_nft(specs, node_ips=["fd00::10"], pod_cidr=None, ipv6=True))
    (reader,) = _readers(ruleset)
    assert any(c.name.startswith("endpoint-") and c.name.endswith("...") for c in reader.table.chains)
    assert _agree(ruleset) == 4 and reader.endpoint_set() == {e.ip for s in specs for e in s.endpoints}


def _every_source() -> str:
    """1.37's ruleset (DNATs in service chains) with @hairpin-connections holding one address of its own, and
    endpoint chains: a full name, a cut name with its DNAT, and two that name no endpoint."""
    text = era_ruleset("1.37")
    hairpin = ", ".join(f"{ip} . {ip} . tcp . 8080" for ip in (*EPS, LB_EP))
    assert hairpin in text
    text = text.replace(hairpin, f"{ALONE} . {ALONE} . tcp . 8080")
    extra = ["\tchain endpoint-ABCDEFGH-default/web/tcp/http__198.18.0.10/8080 {\n\t}",
             "\tchain endpoint-ABCDEFGH-default/web/tcp/http__198.18.0.1... {\n"
             "\t\tmeta l4proto tcp dnat to 198.18.0.11:8080\n\t}",
             "\tchain endpoint-ABCDEFGH-default/web/tcp__198.18.0.12/8080 {\n\t}",
             "\tchain endpoint-ABCDEFGH-default/web/tcp/http__198.18.0.13/x {\n\t}"]
    return text[:text.rindex("}")] + "\n".join(extra) + "\n}\n"


def test_every_source_is_in_both() -> None:
    ruleset = load(_every_source())
    (reader,) = _readers(ruleset)
    want = {*EPS, LB_EP, ALONE, "198.18.0.10", "198.18.0.11"}
    assert _agree(ruleset) == len(want) and reader.endpoint_set() == want
    index = reader.endpoint_index()
    assert (index[EPS[0]], index[LB_EP], index[ALONE], index["198.18.0.11"]) == (WEB, LB, (), WEB)
    layout = DATAPLANE.layout(ruleset, "ipv4")
    assert layout.endpoint_keys(EPS[1]) == (WEB,) and layout.endpoint_keys(ALONE) == ()
    assert "198.18.0.12" not in layout.endpoint_ips and "198.18.0.13" not in layout.endpoint_ips


def _gated_rulesets() -> list[Ruleset]:
    out = [load(_sample_text(path), source=path.name) for path in SAMPLES]
    out += [load(text) for fixture in FIXTURES for text in texts(read(fixture)).values()]
    out += [load(era_ruleset(era)) for era in ("1.29", "1.30", "1.33", "1.34", "1.36", "1.37")]
    out.append(load(_every_source()))
    out += [load(render_nft(_services(False, 20, 3, 1), node_ips=["192.168.0.10"], pod_cidr="10.244.0.0/16",
                            form=form)) for form in ("list", "transaction")]
    return out


def test_a_rule_that_holds_a_dnat_may_dnat() -> None:
    """ports._may_dnat (which spares reading the text of rules a builder made without a Nat) says so of every rule
    whose items hold a DNAT: no service chain's DNAT is skipped."""
    from iptrace.nftables import ports
    from iptrace.nftables.model import Nat

    held = 0
    for ruleset in _gated_rulesets():
        for table in ruleset.tables:
            for chain in table.chains:
                for rule in chain.rules:
                    if any(type(i) is Nat and i.kind == "dnat" for i in rule.peek_items()):
                        held += 1
                        assert ports._may_dnat(rule), rule.text
    assert held


def test_the_dnat_gate_changes_no_endpoint_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """The endpoint sets are those of reading every service chain rule's text for `dnat`."""
    from iptrace.nftables import ports

    rulesets = _gated_rulesets()
    gated = [reader.endpoint_set() for ruleset in rulesets for reader in _readers(ruleset)]
    monkeypatch.setattr(ports, "_may_dnat", lambda rule: "dnat" in rule.text)
    monkeypatch.setattr(ports, "_chain_may_dnat", lambda chain: any("dnat" in r.text for r in chain.rules))
    assert gated == [reader.endpoint_set() for ruleset in _gated_rulesets() for reader in _readers(ruleset)]


def _direct_services(n: int) -> str:
    """`n` service chains that DNAT themselves (1.37), alike but for their addresses: read whole by a template."""
    out = ["table ip kube-proxy {"]
    for i in range(n):
        out += ["", f"\tchain service-ABCDEFG{'ABCDEFGHIJ'[i]}-default/web{i}/tcp/http {{",
                f"\t\tmeta l4proto tcp dnat ip to numgen random mod 2 map {{ 0 : 10.244.{i}.5 . 8080, "
                f"1 : 10.244.{i}.6 . 8080 }}", "\t}"]
    return "\n".join([*out, "}", ""])


def test_service_chains_read_whole_keep_their_dnats(monkeypatch: pytest.MonkeyPatch) -> None:
    """A service chain read whole (its rules left to its record) whose builder makes a DNAT gives its endpoints
    (ports._chain_may_dnat asks the builders, then the rules); a gate that said no from the builders alone would
    lose them."""
    from iptrace.nftables import ports

    ruleset = load(_direct_services(8))
    (reader,) = _readers(ruleset)
    whole = [c for c in reader.table.chains if c._lazy is not None]
    assert len(whole) >= 6
    want = {f"10.244.{i}.{j}" for i in range(8) for j in (5, 6)}
    assert reader.endpoint_set() == want == set(reader.endpoint_index())
    monkeypatch.setattr(ports, "_build_may_dnat", lambda build: False)
    (reader,) = _readers(load(_direct_services(8)))
    assert reader.endpoint_set() != want


def test_a_builder_whose_template_holds_a_nat_itself_may_dnat() -> None:
    """A template may hold a Nat with no value of its own (no function makes it): such rules are read by text."""
    from iptrace.nftables import ports
    from iptrace.nftables.model import Nat
    from iptrace.nftables.shapes import compile_template

    make = compile_template((Nat("dnat", None, "10.0.0.1", 80, ()),), None, {})
    rule = make([], "dnat to 10.0.0.1:80", 1, None)
    assert rule is not None and rule._lazy is not None and ports._may_dnat(rule)
    plain = compile_template((), None, {})([], "counter", 2, None)
    assert plain is not None and not ports._may_dnat(plain)


def _reference(name: str, v6: bool) -> str | bool | None:
    """What ports.endpoint_name_address answers, read as _endpoint_sources read it before: names.chain_parts, then
    the endpoint address after the name's last `__`."""
    from iptrace.nftables.names import chain_parts

    if chain_parts(name) is None:
        return False
    if "__" not in name or name.endswith("..."):
        return None
    host, _, port = name.rsplit("__", 1)[1].rpartition("/")
    if not port.isdigit():
        return None
    return host.replace(".", ":") if v6 else host


_PIECES = ["endpoint-", "ABCDEFGH", "ABCDEFG", "abcdefgh", "A2345677", "-", "/", "__", "_", "...", ".", ":", "\n",
           "ns", "svc", "tcp", "p80", "10.0.0.1", "fd00::1", "80", "x", "²", "٣", " "]


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=14), st.booleans())
def test_endpoint_names_are_read_as_chain_parts_reads_them(pieces: list[str], v6: bool) -> None:
    from iptrace.nftables.ports import endpoint_name_address

    for name in ("".join(pieces), "endpoint-ABCDEFGH-" + "".join(pieces), "endpoint-ABCDEFGH-ns/svc/tcp/p80"
                 + "".join(pieces)):
        assert endpoint_name_address(name, v6) == _reference(name, v6), name


def test_every_endpoint_name_is_read_as_chain_parts_reads_it() -> None:
    from iptrace.nftables.ports import endpoint_name_address

    names = 0
    for ruleset in _gated_rulesets():
        for table in ruleset.tables:
            for chain in table.chains:
                if chain.name.startswith("endpoint-"):
                    names += 1
                    for v6 in (False, True):
                        assert endpoint_name_address(chain.name, v6) == _reference(chain.name, v6), chain.name
    assert names



def test_kube_proxy_ipv4_endpoint_names_are_read_as_chain_parts_reads_them() -> None:
    """Names like kube-proxy's (`endpoint-HASH-ns/svc/tcp/p80__10.0.0.1/80`, read by ports._IPV4_ENDPOINT_NAME)
    and every name a piece away from them, piece by piece, read as the reference reads them."""
    from itertools import product

    from iptrace.nftables.ports import _IPV4_ENDPOINT_NAME, endpoint_name_address

    parts = ["ns", "", "a_b", "a__b", "x/y", "a\nb", "a.b"]
    hosts = ["10.0.0.1", "", "1/2", "1_2", "1__2", "10.0.0.1.", "٣", "a", "1\n2"]
    ports = ["80", "", "8a", "٣", "8/0", "8_0", "8\n"]
    for ns, svc, proto, port_name in product(parts, repeat=4):
        for host, port in product(hosts, ports):
            for name in (f"endpoint-ABCDEFGH-{ns}/{svc}/{proto}/{port_name}__{host}/{port}",
                         f"endpoint-ABCDEFGH-{ns}/{svc}/{proto}/{port_name}_{host}/{port}"):
                assert endpoint_name_address(name, False) == _reference(name, False), name
    assert _IPV4_ENDPOINT_NAME.fullmatch("endpoint-ABCDEFGH-ns/svc/tcp/p80__10.0.0.1/80")
