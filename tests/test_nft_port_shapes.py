"""nftables mode: Service port views built from an earlier port of the same shape (iptrace.kube.shapes over
iptrace.nftables.portshape) equal the views built by tracing every port: on every nft sample, every corpus
fixture in every form, synthesized rulesets, and synthesized rulesets where one rule, element or chain of one port
(or a shared rule that meets one port) differs from the others of its shape, which must then not be built from
them. A shape key weakened on purpose fails these checks."""

from __future__ import annotations

import random
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import synth
from bench.synth_nft import render_nft
from iptrace.nftables import DATAPLANE, blocks, load, portrules, portshape
from tests import nft_corpus
from tests.shapes_check import check_views, ipv6_nft_ruleset

NODE = "192.168.0.10"


def check(text: str, node_ips: tuple[str, ...] = (NODE,)) -> int:
    """Views with and without shapes are equal, port by port; how many ports were built from another."""
    return check_views(load, DATAPLANE, text, node_ips)


@pytest.mark.parametrize("path", nft_corpus.SAMPLES, ids=lambda p: p.name)
def test_sample_rulesets(path: Any) -> None:
    check(path.read_text(encoding="utf-8", errors="replace"), ("192.168.49.2",))
    check(path.read_text(encoding="utf-8", errors="replace"), ())


@pytest.mark.parametrize("fixture", nft_corpus.FIXTURES, ids=lambda p: p.stem)
def test_corpus(fixture: Any) -> None:
    data = nft_corpus.read(fixture)
    for text in nft_corpus.texts(data).values():
        check(text, (data["node_ip"], *data["node_ips"]))


def _ruleset(n: int = 24, endpoints: int = 3, seed: int = 5, **kwargs: Any) -> str:
    return render_nft(synth.scale(n, endpoints, seed), node_ips=[NODE], pod_cidr="10.244.0.0/16",
                      service_cidrs=["10.96.0.0/12"], **kwargs)


def test_a_synthesized_ruleset_is_built_mostly_from_shapes() -> None:
    assert check(_ruleset(60, 4)) > 30


@pytest.mark.parametrize("form", ["list", "transaction"])
@pytest.mark.parametrize("seed", range(3))
def test_synthesized(form: str, seed: int) -> None:
    check(_ruleset(30, 3, seed=seed, form=form))


def test_ipv6() -> None:
    text = ipv6_nft_ruleset()
    assert check(text, ("fd00:1::10",)) > 0


_ADDRESS = re.compile(r"\b\d+\.\d+\.\d+\.\d+\b")
_OWN = re.compile(r"^\t\tchain (service|external|endpoint|firewall|local)-")


def _rules(lines: list[str]) -> list[int]:
    """The indices of the rule lines of Service ports' own chains."""
    out, own = [], False
    for i, line in enumerate(lines):
        if line.startswith("\tchain "):
            own = bool(_OWN.match("\t" + line))
        elif own and line.startswith("\t\t") and not line.strip().startswith(("type ", "comment ")) and line.strip():
            out.append(i)
    return out


def _elements(lines: list[str]) -> list[int]:
    return [i for i, line in enumerate(lines) if " : goto " in line or " : drop" in line or (line.rstrip(",").
            strip().count(".") == 3 and _ADDRESS.fullmatch(line.strip().strip("{}, ").split(",")[0].strip()))]


def _mutate(text: str, kind: str, rng: random.Random) -> str:
    """`text` with one rule or element of one Service port changed, or a shared rule that meets one port added."""
    lines = text.split("\n")
    rules = _rules(lines)
    addresses = sorted(set(_ADDRESS.findall(text)) | {NODE, "10.244.0.1", "127.0.0.1", "203.0.113.7"})
    if kind in ("element-address", "element-port", "element-verdict"):
        i = rng.choice(_elements(lines))
        line = lines[i]
        found = _ADDRESS.findall(line)
        if kind == "element-address" and found:
            lines[i] = line.replace(rng.choice(found), rng.choice(addresses), 1)
        elif kind == "element-port":
            lines[i] = re.sub(r"\. (\d+)", lambda m: f". {int(m.group(1)) + rng.choice([1, -1])}", line, count=1)
        elif kind == "element-verdict" and " : goto " in line:
            lines[i] = re.sub(r": goto \S+?(,| }|$)", lambda m: ": drop" + m.group(1), line, count=1)
        return "\n".join(lines)
    if kind == "element-drop":
        keys = re.findall(r"(\d+\.\d+\.\d+\.\d+ \. tcp \. \d+) : goto service-", text)
        at = next(k for k, x in enumerate(lines) if x.strip() == "map firewall-ips {")
        if "elements = { " in lines[at + 3]:
            lines[at + 3] = lines[at + 3].replace("elements = { ", f"elements = {{ {rng.choice(keys)} : drop, ", 1)
        else:
            lines.insert(at + 3, f"\t\telements = {{ {rng.choice(keys)} : drop }}")
        return "\n".join(lines)
    if kind == "masq-address":
        spots = [k for k, x in enumerate(lines) if re.search(r"ip daddr \S+ ip saddr != ", x)]
        k = rng.choice(spots)
        lines[k] = re.sub(r"ip daddr \S+", f"ip daddr {lines[rng.choice(spots)].split()[2]}", lines[k], count=1)
        return "\n".join(lines)
    if kind == "masq-own":  # (a port's masquerading rule testing one of its own endpoints instead)
        spots = [k for k, x in enumerate(lines) if re.search(r"ip daddr \S+ ip saddr != ", x)
                 and "__" in lines[k + 1]]
        k = rng.choice(spots)
        endpoint = re.search(r"__([\d.]+)/", lines[k + 1]).group(1)  # type: ignore[union-attr]
        lines[k] = re.sub(r"ip daddr \S+", f"ip daddr {endpoint}", lines[k], count=1)
        return "\n".join(lines)
    if kind == "nodeport-drop":
        ports = re.findall(r"tcp \. (\d+) : goto external-", text)
        at = next(k for k, x in enumerate(lines) if x.strip().startswith("chain filter-prerouting-pre-dnat "))
        lines.insert(at + 2, f"\t\tth dport {rng.choice(ports)} {rng.choice(['drop', 'reject'])}")
        return "\n".join(lines)
    i = rng.choice(rules)
    line = lines[i]
    found = _ADDRESS.findall(line)
    if kind == "address" and found:
        lines[i] = line.replace(rng.choice(found), rng.choice(addresses), 1)
    elif kind == "port" and re.search(r":\d+", line):
        lines[i] = re.sub(r":(\d+)", lambda m: f":{rng.choice([80, 8080, 53, int(m.group(1)) + 1])}", line, count=1)
    elif kind == "negate" and (" saddr " in line or " daddr " in line):
        lines[i] = line.replace(" != ", " ", 1) if " != " in line else re.sub(r"(saddr|daddr) ", r"\1 != ", line,
                                                                                count=1)
    elif kind == "delete":
        del lines[i]
    elif kind == "duplicate":
        lines.insert(i, line)
    elif kind == "verdict" and " jump " in line:
        lines[i] = re.sub(r"jump \S+", rng.choice(["drop", "accept", "return"]), line, count=1)
    elif kind == "comment":
        lines[i] = (re.sub(r'comment "[^"]*"', 'comment "another"', line) if " comment " in line
                    else line + ' comment "another"')
    elif kind == "target" and " : goto endpoint-" in line:  # (one element sent to another port's endpoint chain)
        others = re.findall(r": goto (endpoint-\S+?)(?:,| })", text)
        lines[i] = re.sub(r": goto endpoint-\S+?(,| })", lambda m: f": goto {rng.choice(others)}{m.group(1)}", line,
                          count=1)
    elif kind == "modulus" and "numgen random mod " in line:
        lines[i] = re.sub(r"mod (\d+)", lambda m: f"mod {int(m.group(1)) + 1}", line, count=1)
    elif kind in ("forward-drop", "prerouting-drop", "network-drop", "port-drop") and found:
        address = rng.choice(found)
        network = ".".join(address.split(".")[:3]) + f".0/{rng.choice([24, 28, 32])}"
        rule = {"forward-drop": ("filter-forward", f"ip daddr {address} drop"),
                "prerouting-drop": ("filter-prerouting-pre-dnat", f"ip saddr {address} drop"),
                "network-drop": ("filter-forward", f"ip daddr {network} {rng.choice(['drop', 'reject'])}"),
                "port-drop": ("filter-input", f"th dport {rng.choice([80, 8080, 9090, 30000])} drop")}[kind]
        at = next((k for k, x in enumerate(lines) if x.strip().startswith(f"chain {rule[0]} ")), None)
        if at is not None:
            while not lines[at + 1].strip().startswith("type "):
                at += 1
            lines.insert(at + 2, "\t\t" + rule[1])
    return "\n".join(lines)


KINDS = ["address", "port", "negate", "comment", "delete", "duplicate", "verdict", "target", "modulus", "forward-drop",
         "prerouting-drop", "network-drop", "port-drop", "element-address", "element-port", "element-verdict",
         "element-drop", "masq-address", "masq-own", "nodeport-drop"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 10_000)), min_size=1, max_size=3))
def test_one_port_of_a_shape_differs(changes: list[tuple[str, int]]) -> None:
    """Whatever rule or element of one port (or shared rule meeting it) differs, its view is its own."""
    text = _ruleset(16, 2, seed=7)
    for kind, seed in changes:
        text = _mutate(text, kind, random.Random(seed))
    check(text)


def _fails_with(m: pytest.MonkeyPatch, kinds: list[str], n: int = 16) -> bool:
    """Whether some mutation of `kinds` makes views with shapes differ from views without (`n` Services: enough
    NodePorts of one shape for a NodePort's own class to tell)."""
    base = _ruleset(n, 2, seed=7)
    for seed in range(40):
        text = _mutate(base, kinds[seed % len(kinds)], random.Random(seed))
        try:
            check(text)
        except AssertionError:
            return True
    return False


@pytest.mark.parametrize("weaken", ["classes", "elements", "port-classes"])
def test_a_weakened_key_is_caught(weaken: str) -> None:
    """Each part of the key holds what the skipped walks read: without it, some mutation above tells."""
    with pytest.MonkeyPatch.context() as m:
        n = 16
        if weaken == "classes":
            m.setattr(portshape.Shapes, "address_class", lambda self, addr: (("", (), ()), 0))
            kinds = ["network-drop", "forward-drop"]
        elif weaken == "elements":
            m.setattr(portshape._Port, "elements", lambda self, lookups: [])
            kinds = ["element-drop"]
        else:
            m.setattr(portshape.Shapes, "port_class", lambda self, port: "")
            kinds, n = ["nodeport-drop"], 40
        assert _fails_with(m, kinds, n)


def test_own_rules_of_a_listing_are_read_by_plan() -> None:
    """The rules of a listing's Service port chains are written from their builders' plans (portrules.py), not
    read item by item: every own rule of the synthesized listing has a plan."""
    ruleset = load(_ruleset(8, 2))
    own = [rule for table in ruleset.tables for chain in table.chains
           if _OWN.match("\t\tchain " + chain.name) and "/" in chain.name for rule in chain.rules]
    assert own and all(portrules.plan(r._lazy[0], len(r._lazy)) is not None for r in own)


def test_a_builder_that_reads_a_value_through_another_function_has_no_plan() -> None:
    """A template whose value goes through a function (shapes.Call) other than make_nat could leave no hole in
    the items built with holes (the value hidden in what the function made): such a builder is read item by
    item, as is one the plan would otherwise accept."""
    from iptrace.nftables.model import Match, Payload
    from iptrace.nftables.normalise import make_nat
    from iptrace.nftables.shapes import Call, Slot

    def made(fn: Any) -> Any:
        def build(n: Any) -> Any:
            return (Match(Payload("ip", "saddr"), "==", "10.0.0.1" if fn is not make_nat else n[3]),), None
        build.template = ((Match(Payload("ip", "saddr"), "==", Call(fn, (Slot(0),))),), None,  # type: ignore
                          {(0, id(None)): 3})
        return build

    assert portrules.plan(made(str.strip), 4) is None
    assert portrules.plan(made(make_nat), 4) is not None


# A plan's answers of one kind (portrules' ops), and the mutations that change only them.
_PLANNED = {"value": (portrules._VALUE, ["masq-own"]), "nat": (portrules._NAT, ["port"]),
            "literal": (portrules._LITERAL, ["modulus"])}


@pytest.mark.parametrize("whole", [False, True])
@pytest.mark.parametrize("weaken", sorted(_PLANNED))
def test_a_weakened_plan_is_caught(weaken: str, whole: bool) -> None:
    """Each answer of a planned rule is in its key, whether its rule's plan or (`whole`) its chain template's
    writes it (portrules.chain_plan: the loader reads a listing's service and endpoint chains whole; without
    chain templates, rule by rule): written as None, some mutation above tells."""
    code, kinds = _PLANNED[weaken]
    with pytest.MonkeyPatch.context() as m:
        m.setattr(portrules, "_compile", _weakened(code, whole))
        if not whole:
            m.setattr(blocks.ChainShapes, "learn", lambda *args: None)
        assert _fails_with(m, kinds)


def _weakened(code: int, whole: bool) -> Any:
    """portrules._compile with the answers of its `code` ops written as None: in rules' plans, or (`whole`) in
    chain templates' plans."""
    compile_ = portrules._compile

    def weakened(parts: list[Any], arg: str, consts: Any = None, chain: bool = False) -> Any:
        resolve = compile_(parts, arg, consts, chain)
        if chain != whole:
            return resolve
        drops = [{i + 1 for i, op in enumerate(ops) if op[0] == code} for ops, _, _ in parts]

        def weak(rule: tuple[Any, ...], drop: set[int]) -> tuple[Any, ...]:
            return tuple([None if i in drop else x for i, x in enumerate(rule)])

        if chain:
            return lambda port, record: tuple(weak(r, d) for r, d in zip(resolve(port, record), drops, strict=True))
        return lambda port, lazy: weak(resolve(port, lazy), drops[0])

    return weakened


def test_chain_plans_write_what_rule_plans_write() -> None:
    """A chain read whole (blocks.py: its rules left to its record) is written by its template's plan exactly as
    its rules, once made, are written one by one: the same keys, ports and lines for every port."""
    ruleset = load(_ruleset(12, 3, seed=5))
    makers = {c._lazy[0] for t in ruleset.tables for c in t.chains if c._lazy is not None}
    assert makers and all(portrules.chain_plan(m) is not None for m in makers)
    by_chain = _shapes(ruleset)
    for maker in makers:
        del maker.port_plan
    with pytest.MonkeyPatch.context() as m:
        m.setattr(portshape, "chain_plan", lambda rules: None)
        by_rule = _shapes(ruleset)
    assert by_chain == by_rule and sum(s is not None for s in by_rule.values()) > 12


def _shapes(ruleset: Any) -> dict[str, Any]:
    """Each Service port's PortShape as (key, addresses, ports, chains, lines)."""
    from iptrace.kube.analysis import analyse

    analysis = analyse(DATAPLANE, ruleset, "ipv4", node_ips=(NODE,))
    builder = analysis.views._shapes.builder
    out = {}
    for sp in analysis.layout.service_ports:
        shape = builder.tracer.port_shape(builder.questions(sp), sp.chains)
        out[sp.key] = shape and (shape.key, shape.addresses, shape.ports, shape.chains, shape.lines)
    return out


def _keys(text: str, chains: dict[str, tuple[str, ...]] | None = None) -> dict[str, Any]:
    """Each Service port's shape key (its own chains those of `chains` when given), and their own chains."""
    from iptrace.kube.analysis import analyse

    analysis = analyse(DATAPLANE, load(text), "ipv4", node_ips=(NODE,))
    builder = analysis.views._shapes.builder
    out = {}
    for sp in analysis.layout.service_ports:
        shape = builder.tracer.port_shape(builder.questions(sp), (chains or {}).get(sp.key, sp.chains))
        out[sp.key] = (shape and shape.key, sp.chains)
    return out


def test_a_verdict_to_another_own_chain_is_in_the_key() -> None:
    """An element of a port's verdict map sent to another of its own chains (which a layout read from the changed
    rules would hide, by leaving the orphaned chain out) makes its key differ from its shape's other ports'; a
    plan that drops its verdicts' answers does not."""
    text = _ruleset(12, 2)
    keys = _keys(text)
    alike = [k for k, (key, _) in keys.items() if key is not None and sum(key == x for x, _ in keys.values()) > 1]
    lines = text.split("\n")

    def vmap(key: str) -> str:
        at = lines.index(f"\tchain service-{key} {{")
        return next(x for x in lines[at:] if "numgen random" in x)

    # (the last such port: its service chain is read whole by its template when templates are learnt, the
    # first two of a block being read rule by rule)
    port = [k for k in alike if " 1 : goto endpoint-" in vmap(k)][-1]
    line = vmap(port)
    first, second = re.findall(r": goto (endpoint-\S+?)(?:,| })", line)
    changed = text.replace(line, line.replace(f"1 : goto {second}", f"1 : goto {first}"))
    own = {k: chains for k, (_, chains) in keys.items()}

    def alone(found: dict[str, Any]) -> bool:
        return all(found[port][0] != key for k, (key, _) in found.items() if k != port)

    assert not alone(keys) and alone(_keys(changed, own))
    for whole in (False, True):  # (the service chain read whole by its template, or rule by rule)
        with pytest.MonkeyPatch.context() as m:
            m.setattr(portrules, "_compile", _weakened(portrules._VERDICT, whole))
            if not whole:
                m.setattr(blocks.ChainShapes, "learn", lambda *args: None)
            assert not alone(_keys(changed, own))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)), max_size=6),
       st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=8))
def test_address_classes_are_the_networks_holding_each_address(networks: list[tuple[int, int]],
                                                               addresses: list[int]) -> None:
    """Shapes.address_class (ranges found by bisection) says of each address which generic networks hold it, as
    testing each network would."""
    import ipaddress

    from iptrace.nftables.state import prefix_bounds

    shapes = portshape.Shapes(type("T", (), {"ruleset": None, "ctx": None, "local": frozenset()})())
    shapes.ctx = type("C", (), {"addrtype": staticmethod(lambda a: "unicast"), "local": frozenset()})()
    for value, length in networks:
        net, mask = prefix_bounds(str(ipaddress.IPv4Address(value)), length)
        shapes.networks.append((net, mask, False))
    shapes.networks.append((0, 0, True))
    for value in [*addresses, *(n for n, _ in networks)]:
        for v in (value, max(value - 1, 0), min(value + 1, 2**32 - 1)):
            text = str(ipaddress.IPv4Address(v))
            (_type, held, _hosts), number = shapes.address_class(text)
            assert number == v
            assert held == tuple([not n6 and v & mask == net for net, mask, n6 in shapes.networks])


def _affine(n: int = 12) -> str:
    specs = synth.scale(n, 2, 9)
    for spec in specs:
        spec.session_affinity_timeout = 10800
    return render_nft(specs, node_ips=[NODE], pod_cidr="10.244.0.0/16", service_cidrs=["10.96.0.0/12"])


def _affinity_mutation(text: str, kind: str, rng: random.Random) -> str:
    """`text` (session affinity everywhere) with one port's affinity sets read or filled differently: a set updated
    before the service chain checks the sets (its own endpoint's, another's or another port's), an address listed
    in a set (an earlier connection's), a set's or an update's timeout changed."""
    lines = text.split("\n")
    sets = sorted(set(re.findall(r"@(affinity-\S+)", text)))
    chosen = rng.choice(sets)
    if kind == "update-first":  # (in several ports: ports alike but for which set they fill must be told apart)
        bodies = {i: "\n".join(lines[i:lines.index("\t}", i)]) for i, line in enumerate(lines)
                  if line.startswith("\tchain service-")}
        chains = [i for i, body in bodies.items() if "ip saddr @affinity-" in body]
        # (two a mutation: three of them leave 7 of _affine's 13 ports as written, in its 5 shapes, so that some
        # still share one and the test proves shapes were used; four each left none alike, seen by hypothesis)
        for at in sorted(rng.sample(chains, min(2, len(chains))), reverse=True):
            own = re.findall(r"@(affinity-\S+)", bodies[at])
            lines.insert(at + 1, f"\t\tupdate @{rng.choice(own + sets[:1])} {{ ip saddr }}")
    elif kind == "listed":
        at = next(i for i, line in enumerate(lines) if line.startswith(f"\tset {chosen} {{"))
        address = rng.choice([*sorted(set(_ADDRESS.findall(text))), "10.244.0.2", "10.244.0.3", NODE])
        lines.insert(at + 1, f"\t\telements = {{ {address} }}")
    elif kind == "set-timeout":
        at = next(i for i, line in enumerate(lines) if line.startswith(f"\tset {chosen} {{"))
        lines[at + 4] = lines[at + 4].replace("timeout 3h", "timeout 1h")
    elif kind == "update-timeout":
        spots = [i for i, line in enumerate(lines) if line.strip().startswith("update @")]
        i = rng.choice(spots)
        lines[i] = lines[i].replace("{ ip saddr }", "{ ip saddr timeout 1m }")
    return "\n".join(lines)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["update-first", "listed", "set-timeout", "update-timeout", "none"]),
                          st.integers(0, 10_000)), min_size=1, max_size=3))
def test_session_affinity(changes: list[tuple[str, int]]) -> None:
    """A port's affinity sets are its own (numbered like its chains): how it reads and fills them, and what a
    listing holds in them for its addresses, is in its key."""
    text = _affine()
    for kind, seed in changes:
        text = _affinity_mutation(text, kind, random.Random(seed))
    assert check(text) > 0


def test_a_weakened_affinity_key_is_caught() -> None:
    """Without telling a port's affinity sets apart, a set updated before the check is caught."""
    base = _affine()
    with pytest.MonkeyPatch.context() as m:
        m.setattr(portshape._Port, "own_set", lambda self, name: ("set", 0))
        for seed in range(40):
            try:
                check(_affinity_mutation(base, "update-first", random.Random(seed)))
            except AssertionError:
                return
    pytest.fail("no mutation told the weakened key")


def _firewalled(text: str) -> list[str]:
    """The keys of the Service ports with a firewall chain (loadBalancerSourceRanges), in the text's order."""
    return re.findall(r"\tchain firewall-(\S+/\S+) \{", text)


def test_source_ranges_are_numbered_by_what_they_hold() -> None:
    """Ports whose loadBalancerSourceRanges differ but hold the same of their addresses share a shape (a network is
    written as its number); a range that holds the pod client (10.244.0.0/17: another network than the pod CIDR's)
    gives its port a shape of its own, and views built with shapes stay those built by tracing — unless the key
    forgets what the port's own networks hold."""
    text = _ruleset(40, 2, seed=7)
    keys = _keys(text)
    firewalled = _firewalled(text)
    lines = text.split("\n")
    ranges = {k: lines[lines.index(f"\tchain firewall-{k} {{") + 1] for k in firewalled}
    assert len(set(ranges.values())) == len(firewalled)  # (each port its own ranges)
    port = next(k for k in firewalled if any(keys[k][0] == keys[x][0] for x in firewalled if x != k))
    line = ranges[port]
    opened = text.replace(line, re.sub(r"\{ (\S+),", "{ 10.244.0.0/17,", line, count=1))
    assert opened != text
    found = _keys(opened, {k: chains for k, (_, chains) in keys.items()})
    assert all(found[port][0] != found[k][0] for k in firewalled if k != port)
    assert check(opened) > 0
    classes = portshape.Shapes.classes
    with pytest.MonkeyPatch.context() as m:
        m.setattr(portshape.Shapes, "classes", lambda self, addresses, own: classes(self, addresses, []))
        with pytest.raises(AssertionError):
            check(opened)


def test_the_whole_view_uses_shapes_from_the_first_port() -> None:
    """Building every port (ViewBuilder.view) traces one port a shape, even among the first ports (which a question
    about a few ports builds without asking for shapes: kube.shapes.AFTER)."""
    from iptrace.kube import shapes
    from iptrace.kube.analysis import analyse

    analysis = analyse(DATAPLANE, load(_ruleset(60, 4)), "ipv4", node_ips=(NODE,))
    memo = analysis.views._shapes
    builder = memo.builder
    traced: list[str] = []
    service = builder.service
    with pytest.MonkeyPatch.context() as m:
        m.setattr(builder, "service", lambda sp: traced.append(sp.key) or service(sp))
        view = analysis.view
    keys = {memo.shape(builder.questions(sp), sp.chains).key for sp in analysis.layout.service_ports}
    assert len(view.services) > len(keys) + shapes.AFTER
    assert len(traced) == len(keys)
