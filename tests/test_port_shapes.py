"""Service port views built from an earlier port of the same shape (iptrace.kube.shapes over
iptrace.iptables.portshape) equal the views built by tracing every port: on every sample and corpus dump, on
synthesized ones, and on synthesized ones where one rule of one port (or a shared rule that meets one port) differs
from the others of its shape, which must then not be built from them."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import synth
from bench.synth import EndpointSpec, PortSpec, ServiceSpec
from iptrace.iptables import DATAPLANE, load
from iptrace.kube import shapes
from iptrace.kube.analysis import analyse
from tests.conftest import SAMPLES
from tests.shapes_check import check_views
from tests.test_compare import NODES
from tests.test_compare_lazy import _cases, _text

DUMPS = sorted(SAMPLES.glob("*.txt"))


def check(text: str, node_ips: tuple[str, ...] = ()) -> int:
    """Views with and without shapes are equal, port by port; how many ports were built from another."""
    return check_views(load, DATAPLANE, text, node_ips)


@pytest.mark.parametrize("path", DUMPS, ids=lambda p: p.name)
def test_sample_dumps(path: Path) -> None:
    check(path.read_text(encoding="utf-8", errors="replace"))


def test_corpus(corpus: Path) -> None:
    texts = [json.loads(p.read_text()).get("dump") or "" for p in sorted((corpus / "kube-proxy").glob("*.json"))]
    texts += [p.read_text(encoding="utf-8", errors="replace") for p in sorted((corpus / "realworld").glob("*.txt"))]
    assert texts
    for text in texts:
        if text:
            check(text)


NODE = "192.168.49.2"


def _dump(n: int = 24, endpoints: int = 3, seed: int = 5, extra: str = "", **kwargs: Any) -> str:
    return synth.render(synth.scale(n, endpoints, seed), node_ips=[NODE], pod_cidr="10.244.0.0/16", extra=extra,
                        **kwargs)


@pytest.mark.parametrize(("era", "node", "comments"), _cases())
def test_a_node_that_disagrees_with_the_api_in_every_way(era: str, node: str, comments: bool) -> None:
    """(tests/test_compare_lazy.py's node: every kind of Service, stale and new endpoints, policies, with and without
    comments: a cluster chain and a local chain of one shape are told apart)"""
    check(_text(era, node, comments), (NODES[node],))


def test_a_synthesized_dump_is_built_mostly_from_shapes() -> None:
    assert check(_dump(60, 4), (NODE,)) > 30


@pytest.mark.parametrize("era", sorted(synth.ERAS))
def test_every_era(era: str) -> None:
    check(_dump(30, 3, era=era), (NODE,))


@pytest.mark.parametrize("networks", [None, ("fd00:10::/32", "fd00:11::/32")])
def test_ipv6(networks: tuple[str, str] | None) -> None:
    """(`networks`: half the ports' pod test on one /32 network, half on another, the pods in the first only:
    an IPv6 /32 is a network, not a host)"""
    specs = [ServiceSpec("default", f"svc-{k}", f"fd00:10:96::{k + 1:x}",
                         [PortSpec("http", 80, node_port=30000 + k if k % 3 == 0 else None, target_port=8080)],
                         type="NodePort" if k % 3 == 0 else "ClusterIP",
                         endpoints=[EndpointSpec(f"fd00:10:244:{(k + j) % 3}::{k + 5:x}", 8080) for j in range(2)])
             for k in range(12)]
    text = synth.render(specs, node_ips=["fd00:1::10"], pod_cidr="fd00:10:244::/56", ipv6=True, comments=True)
    if networks is not None:
        lines = text.split("\n")
        for i in [i for i, line in enumerate(lines) if "! -s fd00:10:244::/56" in line]:
            lines[i] = lines[i].replace("fd00:10:244::/56", networks[i % 2])
        text = "\n".join(lines)
    assert check(text, ("fd00:1::10",)) > 0


def _with(text: str, table: str, rule: str) -> str:
    """`text` with `rule` first in its chain of `table`."""
    lines = text.split("\n")
    at = lines.index(table) + 1
    while lines[at].startswith(":"):
        at += 1
    lines.insert(at, rule)
    return "\n".join(lines)


@pytest.mark.parametrize("prefix", [24, 28, 32])
def test_a_shared_rule_that_meets_one_endpoint_of_a_shape(prefix: int) -> None:
    """A generic rule whose network holds one port's endpoint (and no other's) sets that port apart."""
    text = _dump(16, 2, seed=7)
    for endpoint in re.findall(r"--to-destination (\d+\.\d+\.\d+)\.\d+", text)[:6]:
        check(_with(text, "*filter", f"-A FORWARD -d {endpoint}.0/{prefix} -j DROP"), (NODE,))


@pytest.mark.parametrize("rule", ["-p tcp -m tcp ! --dport 1 -j RETURN", "! -d 10.96.0.1/32 -j RETURN",
                                  "-p tcp -m tcp --dport 1:65535 -j RETURN", "-m addrtype ! --dst-type LOCAL -j RETURN"])
def test_a_shared_rule_between_the_dispatch_rules_of_one_shape(rule: str) -> None:
    """A rule that every port's packet may meet, between the dispatch rules of ports of one shape: those before it
    and those after it fare differently."""
    lines = _dump(16, 2, seed=7).split("\n")
    dispatch = [i for i, line in enumerate(lines) if line.startswith("-A KUBE-SERVICES -d ")]
    lines.insert(dispatch[len(dispatch) // 2], f"-A KUBE-SERVICES {rule}")
    check("\n".join(lines), (NODE,))


@pytest.mark.parametrize("change", [(r"-j KUBE-(SVC|EXT)-\S+", "-j RETURN"), (r"-p tcp (.*)-m tcp ", r"-p udp \1-m udp "),
                                    ("-m tcp --dport", "-m tcp ! --sport 40000 --dport")])
def test_a_dispatch_rule_of_one_port_differs(change: tuple[str, str]) -> None:
    """A port whose dispatch rule (met by its own packets only) jumps elsewhere, tests another protocol or a source
    port its packets do not have, unlike the dispatch rules of the other ports of its shape, has a shape of its own
    (the layout sees the first two, only the rule's text the third)."""
    lines = _dump(16, 2, seed=7).split("\n")
    dispatch = [i for i, line in enumerate(lines) if re.match(r"-A KUBE-(SERVICES|NODEPORTS) .*--dport", line)]
    for i in dispatch[:: max(1, len(dispatch) // 6)]:
        changed = re.sub(change[0], change[1], lines[i], count=1)
        assert changed != lines[i]
        check("\n".join([*lines[:i], changed, *lines[i + 1:]]), (NODE,))


def _affine(n: int = 16) -> str:
    specs = synth.scale(n, 2, 9)
    for spec in specs:
        spec.session_affinity_timeout = 10800
    return synth.render(specs, node_ips=[NODE], pod_cidr="10.244.0.0/16")


@pytest.mark.parametrize("change", ["name", "other-name", "rdest", "mask", "seconds", "remove", "none"])
def test_session_affinity(change: str) -> None:
    """-m recent lists are keyed by their names and whole addresses: a port whose lists differ has its own shape."""
    text = _affine()
    lines = text.split("\n")
    recent = [i for i, line in enumerate(lines) if " -m recent " in line]
    names = sorted(set(re.findall(r"--name (\S+)", text)))
    for i in recent[:: max(1, len(recent) // 6)]:
        line = lines[i]
        changed = {"name": re.sub(r"--name \S+", f"--name {names[i % len(names)]}", line),
                   "other-name": line.replace("--name ", "--name X", 1),
                   "rdest": line.replace("--rsource", "--rdest"),
                   "mask": line.replace("--mask 255.255.255.255", "--mask 255.255.255.0"),
                   "seconds": line.replace("--seconds 10800", "--seconds 60"),
                   "remove": line.replace("--rcheck", "--remove").replace("--set", "--remove"),
                   "none": line}[change]
        hits = check("\n".join([*lines[:i], changed, *lines[i + 1:]]), (NODE,))
        assert hits > 0 or change != "none"


@pytest.mark.parametrize("seed", range(4))
def test_a_recent_list_set_before_it_is_checked(seed: int) -> None:
    """Where a port's walk sets a list before checking it, which of its endpoints the set names decides (a first
    connection checks lists nothing set otherwise): ports setting the list of their first and of their second
    endpoint differ."""
    rng = random.Random(seed)
    lines = _affine().split("\n")
    out = []
    for line in lines:
        if line.startswith("-A KUBE-SVC-") and " --rcheck " in line and (not out or " --rcheck " not in out[-1]):
            chain = line.split()[1]
            names = [m for m in re.findall(r"--name (\S+)", "\n".join(lines)) if m.startswith("KUBE-SEP-")]
            own = [n for n in dict.fromkeys(re.findall(rf"^-A {chain} .*--name (\S+)", "\n".join(lines), re.M))]
            name = rng.choice(own + names[:1])
            out.append(f"-A {chain} -m recent --set --name {name} --mask 255.255.255.255 --rsource")
        out.append(line)
    assert check("\n".join(out), (NODE,)) > 0


def test_an_endpoint_on_the_nodes_own_address() -> None:
    """An endpoint on the node's address is local (INPUT, not FORWARD): its port has a shape of its own."""
    text = _dump(16, 2, seed=7)
    for endpoint in re.findall(r"--to-destination (\d+\.\d+\.\d+\.\d+)", text)[:6]:
        moved = text.replace(f"{endpoint}/32", f"{NODE}/32").replace(f"{endpoint}:", f"{NODE}:")
        check(_with(moved, "*filter", "-A INPUT -p tcp -j REJECT"), (NODE,))


_OWN = re.compile(r"^-A (KUBE-SEP-|KUBE-SVC-|KUBE-SVL-|KUBE-EXT-|KUBE-FW-)")
_DISPATCH = re.compile(r"^-A (KUBE-SERVICES|KUBE-NODEPORTS|KUBE-EXTERNAL-SERVICES|KUBE-PROXY-FIREWALL) ")
_ADDRESS = re.compile(r"\b\d+\.\d+\.\d+\.\d+\b")
_PORT = re.compile(r"--dport (\d+)")


def _mutate(text: str, kind: str, rng: random.Random) -> str:
    """`text` with one rule of one Service port (its own chains' or its dispatch) changed, or a shared rule that
    meets one port added."""
    lines = text.split("\n")
    pattern = _DISPATCH if rng.random() < 0.4 else _OWN
    i = rng.choice([i for i, line in enumerate(lines) if pattern.match(line)])
    line = lines[i]
    addresses = sorted(set(_ADDRESS.findall(text)) | {NODE, "10.244.0.1", "127.0.0.1", "203.0.113.7"})
    found = _ADDRESS.findall(line)
    ports = sorted(set(_PORT.findall(text)) | {"8080", "80", "53"})
    if kind == "address" and found:
        lines[i] = line.replace(rng.choice(found), rng.choice(addresses), 1)
    elif kind == "port" and _PORT.search(line):
        lines[i] = _PORT.sub(f"--dport {rng.choice(ports)}", line, count=1)
    elif kind == "target":
        lines[i] = re.sub(r"-j \S+", rng.choice(["-j KUBE-MARK-DROP", "-j RETURN", "-j ACCEPT", "-j KUBE-MARK-MASQ"]),
                          line, count=1)
    elif kind == "probability" and "--probability" in line:
        lines[i] = re.sub(r"--probability \S+", f"--probability 0.{rng.randrange(1, 99):02d}", line)
    elif kind == "negate" and " -s " in line:
        lines[i] = line.replace(" ! -s ", " -s ", 1) if " ! -s " in line else line.replace(" -s ", " ! -s ", 1)
    elif kind == "delete":
        del lines[i]
    elif kind == "duplicate":
        lines.insert(i, line)
    elif kind == "protocol" and "-p tcp" in line:
        lines[i] = line.replace("-p tcp -m tcp", "-p udp -m udp", 1) if "-m tcp" in line else line
    elif kind in ("forward-drop", "prerouting-return", "postrouting-masq", "port-drop", "network-drop") and found:
        address = rng.choice(found)
        endpoint = rng.choice(re.findall(r"--to-destination (\d+\.\d+\.\d+\.\d+)", text) or found)
        network = ".".join(endpoint.split(".")[:3]) + f".0/{rng.choice([24, 28, 32])}"
        rule = {"forward-drop": ("*filter", f"-I FORWARD -d {address}/32 -j DROP"),
                "network-drop": ("*filter", f"-I FORWARD -d {network} -j {rng.choice(['DROP', 'REJECT'])}"),
                "prerouting-return": ("*nat", f"-I PREROUTING -d {address}/32 -j RETURN"),
                "postrouting-masq": ("*nat", f"-I POSTROUTING -s {address}/32 -j MASQUERADE"),
                "port-drop": ("*filter", f"-I INPUT -p tcp -m tcp --dport {rng.choice(ports)} -j DROP")}[kind]
        at = lines.index(rule[0]) + 1
        while lines[at].startswith(":"):
            at += 1
        lines.insert(at, rule[1].replace("-I ", "-A ", 1))
    return "\n".join(lines)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["address", "port", "target", "probability", "negate", "delete",
                                           "duplicate", "protocol", "forward-drop", "prerouting-return",
                                           "postrouting-masq", "port-drop", "network-drop"]),
                          st.integers(0, 10_000)),
                min_size=1, max_size=3),
       st.sampled_from(sorted(synth.ERAS)))
def test_one_port_of_a_shape_differs(changes: list[tuple[str, int]], era: str) -> None:
    """Whatever rule of one port (or shared rule meeting it) differs, its view is its own."""
    text = _dump(16, 2, seed=7, era=era)
    for kind, seed in changes:
        text = _mutate(text, kind, random.Random(seed))
    check(text, (NODE,))


def test_an_endpoint_on_another_address_of_the_node() -> None:
    """An endpoint on an address of the node that no question asks from or to (its second address) is local all
    the same (INPUT, not FORWARD): its port has a shape of its own (the kind of each address is in the key)."""
    text = _with(_dump(16, 2, seed=7), "*filter", "-A INPUT -p tcp -j REJECT")
    for endpoint in re.findall(r"--to-destination (\d+\.\d+\.\d+\.\d+)", text)[:6]:
        check(text, (NODE, endpoint))


def test_the_kind_of_an_address_is_addrtypes_and_the_routings() -> None:
    """Shapes.kind's shortcut for plain unicast addresses answers as match_modules and Context do."""
    from iptrace.iptables.match_modules import _address_types
    from iptrace.iptables.portshape import Shapes
    from iptrace.iptables.walk import Tracer

    for node_ips in ((NODE,), ()):
        tracer = Tracer(load(_dump(4, 1)), node_ips=node_ips)
        kinds = Shapes(tracer)
        rng = random.Random(3)
        for addr in [0, 1, 0x7F000001, 0x7FFFFFFF, 0xC0A83102, 0xDFFFFFFF, 0xE0000000, 0xEFFFFFFF, 0xF0000000,
                     0xFFFFFFFF, *(rng.randrange(1 << 32) for _ in range(2000))]:
            types, unsure = _address_types(addr, tracer.ctx)
            assert kinds.kinds([addr])[0] == (tuple(sorted(types)), unsure, tracer.ctx.is_local(addr)), hex(addr)


def test_the_questions_of_a_port_are_the_views() -> None:
    """ShapeMemo asks the shape of the very questions the view's builder asks (view._Builder.questions)."""
    analysis = analyse(DATAPLANE, load(_dump(30, 2)), node_ips=(NODE,))
    memo = analysis.views._shapes
    asked: list[Any] = []
    with pytest.MonkeyPatch.context() as m:
        m.setattr(memo, "shape", lambda calls, chains: asked.append(calls))
        m.setattr(shapes, "AFTER", 0)
        for sp in analysis.layout.service_ports:
            memo.service(sp)
            assert asked.pop() == memo.builder.questions(sp)


def test_a_view_of_a_few_ports_reads_no_shapes() -> None:
    """Shapes are asked for once AFTER ports are built: a question about a few ports pays nothing for them."""
    analysis = analyse(DATAPLANE, load(_dump(60, 2)), node_ips=(NODE,))
    keys = analysis.layout.keys
    analysis.views.view_of(keys[:shapes.AFTER])
    assert "_port_shapes" not in analysis.tracer.__dict__
    assert analysis.view.services
    assert "_port_shapes" in analysis.tracer.__dict__ and analysis.views._shapes.hits > 0


def _shapes_read(shapes_of: Any) -> tuple[Any, ...]:
    """What a Shapes read of its tracer's other chains, comparably."""
    def filed(by: dict[int, list[Any]]) -> dict[int, list[Any]]:
        return {value: [(r.table, r.chain, r.position, r.before, r.rule[3], r.hosts, r.ports, r.jump) for r in found]
                for value, found in by.items()}
    return shapes_of.roots, shapes_of.chains, shapes_of.networks, filed(shapes_of.by_host), filed(shapes_of.by_port)


def test_what_shapes_read_of_a_rule_is_kept_by_its_text_and_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    """portshape._READ: a node whose rules an earlier node of one load memo read (the same texts and shapes) reads
    its other chains as it does alone; a rule of the same text without a shape (read apart) is not taken for one."""
    from bench import fleet
    from iptrace import dataplanes
    from iptrace.iptables import portshape
    from tests.test_carried import _texts

    def read(text: str, memo: dict[str, Any]) -> tuple[Any, ...]:
        dataplane, ruleset = dataplanes.load(text, memo=memo)
        tracer = analyse(dataplane, ruleset, "ipv4", node_ips=[fleet.node_ip(1)]).tracer
        return _shapes_read(portshape.Shapes(tracer))

    texts = _texts(2)
    monkeypatch.setattr(portshape, "_READ", {})
    alone = read(texts[1], {})
    memo: dict[str, Any] = {}
    read(texts[0], memo)
    assert read(texts[1], memo) == alone
    assert all(found[0] is not None for found in portshape._READ.values())
    # (the same texts read from rules without shapes: none holds what a shape can; not these rules' reads)
    unshaped = {text: (None, found[1], (), (), (), None) for text, found in portshape._READ.items()}
    monkeypatch.setattr(portshape, "_READ", unshaped)
    assert read(texts[1], memo) == alone
