"""Service port digests carried across an audit's nodes by content key (iptrace.kube.carried,
iptrace.iptables.carry): every node's result equals that of a worker that traces every port, on fleets whose
nodes differ in what the key must see (a port's own rule, a context rule, a host firewall rule naming one address,
an endpoint that is a node's own address, KUBE-SERVICES' order); and a key weakened on purpose makes a scenario
fail, so each scenario tests the part of the key it is about."""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bench import fleet, synth
from bench.synth import EndpointSpec, PortSpec, ServiceSpec
from iptrace.collect import store
from iptrace.collect.stream import Source, Worker
from iptrace.iptables import carry


def _write(root: Path, texts: list[str]) -> list[Source]:
    out = []
    for i, text in enumerate(texts):
        path = root / fleet.node_name(i)
        store.write_node_dir(path, {store.DUMP_FILE: text.encode()},
                             {"node": fleet.node_name(i), "host": fleet.node_ip(i), "addresses": [fleet.node_ip(i)]})
        out.append(Source(fleet.node_name(i), str(path), True))
    return out


def _specs() -> list[ServiceSpec]:
    specs = synth.scale(60, 3, seed=5)
    # (a Service whose endpoint is node 1's own address: a hostNetwork pod)
    specs.append(ServiceSpec("kube-system", "host-agent", "10.96.250.1", [PortSpec("http", 80, target_port=9100)],
                             endpoints=[EndpointSpec(fleet.node_ip(1), 9100), EndpointSpec("10.244.7.9", 9100)]))
    return specs


def _texts(nodes: int, extra: dict[int, str] | None = None, specs: list[ServiceSpec] | None = None) -> list[str]:
    if extra is None and specs is None:
        return [_plain_text(i) for i in range(nodes)]
    specs = specs or _specs()
    return [fleet.node_dump(copy.deepcopy(specs), i, extra=(extra or {}).get(i, "")) for i in range(nodes)]


@functools.cache
def _plain_text(i: int) -> str:
    """Node i's dump of _specs() (rendered once a session: most tests start from the same nodes)."""
    return fleet.node_dump(_specs(), i)


def _audit(sources: list[Source]) -> tuple[list[Any], list[Any], Worker]:
    """(each node's result with carried digests, each node's result of a worker that traces every port, the
    first worker)."""
    carried = Worker(None, False, False, True)
    plain = Worker(None, False, False, False)
    return [carried.run(s) for s in sources], [plain.run(s) for s in sources], carried


def _ports(result: Any) -> int:
    return sum(len(f.ports) for f in result.families)


def test_later_nodes_carry_most_ports_and_give_the_same_results(tmp_path: Path) -> None:
    got, plain, worker = _audit(_write(tmp_path, _texts(4)))
    assert got == plain
    assert worker.carried is not None
    later = sum(_ports(r) for r in got[1:])
    assert worker.carried.carried >= later * 3 // 4, (worker.carried.carried, later)


def test_a_nodes_traced_ports_are_digested_a_chunk_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ports a node traces are viewed, digested and let go CHUNK at a time: the same results, and none of their
    views is held once the node's digest is made (a first node's ~5,000 views held at once were ~40 MB of a worker's
    peak)."""
    from iptrace.kube import carried

    monkeypatch.setattr(carried, "CHUNK", 7)
    held = []
    made = carried.Carried.family_digest

    def counted(self: carried.Carried, analysis: Any, intern: Any) -> Any:
        out = made(self, analysis, intern)
        held.append(len(analysis.views._ports))
        return out

    monkeypatch.setattr(carried.Carried, "family_digest", counted)
    got, plain, worker = _audit(_write(tmp_path, _texts(2)))
    assert got == plain
    assert worker.carried is not None and worker.carried.made > 7 * 3
    assert held == [0, 0]


def _one_endpoint_moved(text: str) -> str:
    """The last endpoint chain's DNAT sent to another port (a stale rule on one node; the last, so that it is none
    of its port's first lines, which a carried digest is checked by)."""
    found = list(re.finditer(r"(-A KUBE-SEP-\S+ .*--to-destination \d+\.\d+\.\d+\.\d+:)(\d+)", text))[-1]
    return text[:found.start(2)] + str(int(found.group(2)) + 1) + text[found.end(2):]


def _first_rule(text: str, table: str, rule: str) -> str:
    """`rule` written first in `table` (a rule a node's admin added)."""
    start = text.index(f"\n*{table}\n")
    at = text.index("\n", text.rindex("\n:", start, text.index("\nCOMMIT", start)) + 1)
    return text[:at] + "\n" + rule + text[at:]


_CLUSTER_IP = next(s.cluster_ip for s in _specs() if s.endpoints)

SCENARIOS = {
    # one port's own rule differs on node 2: that port is traced again there
    "own rule": lambda texts: [*texts[:2], _one_endpoint_moved(texts[2]), *texts[3:]],
    # a context rule differs on node 2: nothing is carried to it
    "context rule": lambda texts: [*texts[:2], _first_rule(texts[2], "mangle", "-A PREROUTING -p tcp -j DROP"),
                                   *texts[3:]],
    # a host firewall rule on node 2 names one ClusterIP: that port's key holds it
    "exact rule": lambda texts: [*texts[:2], _first_rule(texts[2], "mangle",
                                                         f"-A PREROUTING -d {_CLUSTER_IP}/32 -p tcp -j DROP"),
                                 *texts[3:]],
    # a context rule on node 2 whose comment spells an exact test (it drops every packet): context, not exact
    "comment spells an exact test": lambda texts: [*texts[:2], _first_rule(
        texts[2], "mangle", f'-A PREROUTING -p tcp -m comment --comment "-d {_CLUSTER_IP}/32 --dport 80" -j DROP'),
        *texts[3:]],
}


def _svc_rule(text: str) -> re.Match[str]:
    """A ClusterIP rule of nat KUBE-SERVICES: (its address, its port, its service chain, its port's name)."""
    found = re.search(r'^-A KUBE-SERVICES -d (\S+)/32 -p tcp -m comment --comment "(\S+) cluster IP" -m tcp '
                      r"--dport (\d+) -j (KUBE-SVC-\w+)$", text, re.MULTILINE)
    assert found is not None
    return found


def _on_node_2(rule: Any, table: str) -> Any:
    """Node 2 with one more rule (`rule(text)`) written first in `table`: the worker's node 3 then differs from its
    last node the other way."""
    return lambda texts: [*texts[:2], _first_rule(texts[2], table, rule(texts[2])), *texts[3:]]


# (what a worker's next node may differ in from its last while every port's own chains and the context stay the same:
# NodeKeys.unchanged must see each)
DELTAS = {
    # a new way into one port's chain, at an address it did not have
    "new way in": _on_node_2(lambda t: f"-A KUBE-SERVICES -d 10.96.99.99/32 -p tcp -m tcp --dport "
                                       f"{_svc_rule(t).group(3)} -j {_svc_rule(t).group(4)}", "nat"),
    # a filter rule at another address that names one port by its comment
    "comment names a port": _on_node_2(lambda t: f'-A KUBE-SERVICES -d 10.96.99.98/32 -p tcp -m comment --comment '
                                                 f'"{_svc_rule(t).group(2)} has no endpoints" -m tcp --dport '
                                                 f"{_svc_rule(t).group(3)} -j REJECT --reject-with "
                                                 "icmp-port-unreachable", "filter"),
    # a host firewall rule that tests a Service's port, with no address (the ports of ClusterIP-only Services that
    # have it: a nodePort's port has two rules in KUBE-NODEPORTS, whose exact rules are found again anyway)
    "port firewall": _on_node_2(lambda t: f"-A INPUT -p tcp -m tcp --dport {_svc_rule(t).group(3)} -j DROP",
                                "filter"),
}


def _node_port_rules_swapped(text: str) -> str:
    """The first nodePort's two KUBE-NODEPORTS rules (localhost's, then every address's) written the other way."""
    found = re.search(r"^(-A KUBE-NODEPORTS -d 127\.0\.0\.0/8 .*)\n(-A KUBE-NODEPORTS .*)$", text, re.MULTILINE)
    assert found is not None
    return text[:found.start()] + found.group(2) + "\n" + found.group(1) + text[found.end():]


# the order of one port's two rules in one chain (their exact rules are then found again on the next node)
DELTAS["rules of a port swapped"] = lambda texts: [*texts[:2], _node_port_rules_swapped(texts[2]), *texts[3:]]
SCENARIOS.update(DELTAS)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_a_node_that_differs_gives_what_tracing_gives(tmp_path: Path, scenario: str) -> None:
    texts = SCENARIOS[scenario](_texts(4))
    got, plain, _worker = _audit(_write(tmp_path, texts))
    assert got == plain
    assert all(r.error is None for r in got)


def test_an_endpoint_that_is_a_nodes_own_address(tmp_path: Path) -> None:
    """host-agent's endpoint is node 1's address: on node 1 the port is its own (never carried there)."""
    got, plain, _worker = _audit(_write(tmp_path, _texts(3)))
    assert got == plain
    keys = _host_agent_keys()
    assert keys[0] == keys[2] != keys[1]


def _host_agent_keys() -> list[Any]:
    keys = []
    for i, text in enumerate(_texts(3)):
        from iptrace import dataplanes
        from iptrace.kube.analysis import analyse

        dataplane, ruleset = dataplanes.load(text)
        a = analyse(dataplane, ruleset, "ipv4", node_ips=[fleet.node_ip(i)])
        nk = carry.node_keys(ruleset, a.layout, a.view_ips)
        assert nk is not None
        name = next(k for k in a.layout.keys if a.layout.service_port(k).name == "kube-system/host-agent:http")
        keys.append(nk.key(a.layout.service_port(name), ()))
    return keys


@pytest.mark.parametrize("part", ["own chains", "exact rules", "own values", "fingerprint"])
def test_a_weakened_key_gives_wrong_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, part: str) -> None:
    """Each part of the key matters: without it, some scenario's carried results differ from tracing (their first
    lines' texts, which a carried digest is also checked by, taken as equal)."""
    from iptrace.kube import carried
    index = {"fingerprint": 0, "own chains": 3, "exact rules": 4, "own values": 5}[part]
    real = carry.NodeKeys.key

    def weak(self: carry.NodeKeys, sp: Any, asked: Any) -> Any:
        key = real(self, sp, asked)
        return (*key[:index], None, *key[index + 1:])

    monkeypatch.setattr(carry.NodeKeys, "key", weak)
    monkeypatch.setattr(carried, "same_head", lambda digest, rules: True)
    if part == "own values":
        keys = _host_agent_keys()
        assert keys[0] == keys[1] == keys[2]  # (the port of node 1's own address would be carried to it)
        return
    scenario = {"own chains": "own rule", "exact rules": "exact rule", "fingerprint": "context rule"}[part]
    got, plain, _worker = _audit(_write(tmp_path, SCENARIOS[scenario](_texts(4))))
    assert got != plain


def _node_keys(text: str, i: int) -> tuple[carry.NodeKeys, Any]:
    from iptrace import dataplanes
    from iptrace.kube.analysis import analyse

    dataplane, ruleset = dataplanes.load(text)
    a = analyse(dataplane, ruleset, "ipv4", node_ips=[fleet.node_ip(i)])
    keys = carry.node_keys(ruleset, a.layout, a.view_ips)
    assert keys is not None
    return keys, a.layout


def _svc_chain(text: str) -> str:
    """host-agent's cluster chain (whose last endpoint _one_endpoint_moved moves)."""
    found = re.search(r"^-A (KUBE-SVC-\w+) .*host-agent", text, re.MULTILINE)
    assert found is not None
    return found.group(1)


def test_a_ports_chain_that_context_rules_enter_is_context() -> None:
    """A rule outside the ports' own chains that jumps into one makes that chain part of every port's context:
    two nodes that differ in it have different fingerprints (without such a rule, the same)."""
    one, two = _texts(2)
    chain = _svc_chain(one)
    moved = [_one_endpoint_moved(one), two]
    plain = [_node_keys(t, i)[0].fingerprint for i, t in enumerate(moved)]
    assert plain[0] == plain[1]
    entered = [_first_rule(t, "nat", f"-A PREROUTING -p sctp -j {chain}") for t in moved]
    found = [_node_keys(t, i)[0].fingerprint for i, t in enumerate(entered)]
    assert found[0] != found[1]


def test_a_port_whose_rules_jump_to_another_ports_chain_has_no_key() -> None:
    text = _texts(1)[0]
    keys, layout = _node_keys(text, 0)
    sp = next(layout.service_port(k) for k in layout.keys if layout.service_port(k).cluster_chain)
    assert keys.key(sp, ()) is not None
    other = next(layout.service_port(k).cluster_chain for k in layout.keys
                 if layout.service_port(k).cluster_chain not in (None, sp.cluster_chain))
    bent = _first_rule(text, "nat", f"-A {sp.cluster_chain} -p sctp -j {other}")
    keys, layout = _node_keys(bent, 0)
    assert keys.key(layout.service_port(sp.key), ()) is None


@pytest.mark.parametrize("seed", range(3))
def test_the_address_shortcut_skips_only_addresses_that_meet_nothing(seed: int) -> None:
    """key() passes a plain address to _meets only when it is a node address or starts as a whole-octet pod CIDR
    does: every address it skips meets none of the node's own values."""
    import random

    rng = random.Random(seed)
    for _ in range(300):
        bits = rng.choice((8, 16, 24))
        base = [rng.randrange(256) for _ in range(4)]
        cidr = ".".join(map(str, base[:bits // 8] + [0] * (4 - bits // 8))) + f"/{bits}"
        node = ".".join(str(rng.randrange(256)) for _ in range(4))
        keys = carry.NodeKeys.__new__(carry.NodeKeys)
        keys._mine = [carry._range(v) for v in (node, cidr)]
        keys._met = {}
        keys.roles = {}
        prefixes = carry._octet_prefixes([cidr])
        assert prefixes is not None
        near = base[:bits // 8] + [rng.randrange(256) for _ in range(4 - bits // 8)]
        for address in (".".join(map(str, near)), node, ".".join(str(rng.randrange(256)) for _ in range(4))):
            if not (address == node or address.startswith(prefixes)):
                assert keys._meets(address) is None, (address, cidr, node)
                assert keys._meets(f"{address}/32") is None, (address, cidr, node)  # (an endpoint's hairpin rule)
            else:
                assert keys._meets(f"{address}/32") is not None, (address, cidr, node)
    assert carry._octet_prefixes(["10.244.0.0/23"]) is None
    assert carry._read(("-s 010.244.1.1/32 -j KUBE-MARK-MASQ",))[4]  # (an unusual literal: no shortcut)


@pytest.mark.parametrize("seed", range(3))
def test_the_literals_a_key_reads_are_those_that_may_meet_the_nodes_values(seed: int) -> None:
    """key() reads of a port's literals those that start as the node's pod CIDR does, are one of the node's own
    addresses (or it as `a/32`), or are networks: picked out in C (_may_meet, with `_read`'s networks) when none
    starts as the pod CIDR, by the plain rule otherwise; both give what the plain rule gives."""
    import random

    keys, layout = _node_keys(_texts(2)[1], 1)
    prefixes = keys._prefixes
    assert prefixes and layout.node_pod_cidrs
    mine = sorted(a for a in keys._exact if a)
    pool = [*mine, *(f"{a}/32" for a in mine), *layout.node_pod_cidrs, f"{prefixes[0]}7", f"{prefixes[0]}7/32",
            "10.96.0.10", "10.96.0.10/32", "10.244.0.0/16", "0.0.0.0/0", "192.168.5.0/24", "172.16.0.1/32"]
    rng = random.Random(seed)
    pool += [".".join(str(rng.randrange(256)) for _ in range(4)) + rng.choice(("", "/32", "/24", "/8"))
             for _ in range(20)]
    for _ in range(300):
        texts = tuple(f"-s {a} -j KUBE-MARK-MASQ" for a in rng.sample(pool, rng.randrange(1, 12)))
        read = carry._read(texts)
        named = set(read[1])
        want = {a for a in named if a.startswith(prefixes) or a.removesuffix("/32") in keys._exact
                or ("/" in a and not a.endswith("/32"))}
        assert set(keys._may_meet(named, read[6], prefixes)) == want, texts


def _copy(text: str) -> str:
    return "".join(list(text))  # (an equal string, another object)


def test_what_texts_say_is_found_only_for_exactly_the_same_texts() -> None:
    """carry._READ and carry._EXACT keep what rule texts say by their content: texts equal to ones read before (as
    other strings) are found; texts one character apart are read again, never given the others' answer."""
    svc = '-m comment --comment "ns/a:p" -m statistic --mode random --probability 0.5 -j KUBE-SEP-AAAAAAAAAAAAAAAA'
    sep = '-m comment --comment "ns/a:p" -m tcp -p tcp -j DNAT --to-destination 10.244.1.5:8080'
    texts = ((svc,), (sep,))
    first = carry._read(texts)
    assert first[:4] == ((("10.244.1.5",), (8080,)), ("10.244.1.5",), None, ("KUBE-SEP-AAAAAAAAAAAAAAAA",))
    assert carry._read(((_copy(svc),), (_copy(sep),))) is first
    for changed in (((svc.replace("AAAA", "AAAB", 1),), (sep,)), ((svc,), (sep.replace(":8080", ":8081"),)),
                    ((svc,), (sep.replace("1.5:", "1.6:"),))):
        other = carry._read(changed)
        assert other is not first and other[:4] != first[:4] and other[5] is changed
    rule = "-d 10.96.0.10/32 -p tcp -m tcp --dport 53 -j KUBE-SVC-BBBBBBBBBBBBBBBB"
    assert carry._exact(rule) == ("10.96.0.10", 53) and carry._exact(_copy(rule)) == ("10.96.0.10", 53)
    assert carry._exact(rule.replace("/32", "/31")) == (None, 53)
    assert carry._exact(rule.replace("--dport 53", "--dport 54")) == ("10.96.0.10", 54)
    assert carry._read((sep.replace("8080", "9090"),))[0] == (("10.244.1.5",), (9090,))


_KEYS_OF_NODE_1 = """
import hashlib, sys
from tests.test_carried import _node_keys, _texts
keys, layout = _node_keys(_texts(2)[1], 1)
print(keys.fingerprint.hex(), hashlib.sha256(repr(sorted((k, repr(keys.key(layout.service_port(k), ())))
                                                      for k in layout.keys)).encode()).hexdigest())
"""


def test_keys_do_not_depend_on_the_string_hash_seed() -> None:
    """Keys are compared across worker processes, each with its own hash seed: no set's order may leak into one."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    # (the three interpreters run at once)
    runs = [subprocess.Popen([sys.executable, "-c", _KEYS_OF_NODE_1], cwd=root, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONHASHSEED": seed})
            for seed in ("1", "2", "3")]
    found = set()
    for run in runs:
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
        found.add(out)
    assert len(found) == 1, found


def test_a_dual_stack_fleet_and_an_nft_node(tmp_path: Path) -> None:
    """Only IPv4 iptables families carry: each node's IPv6 dump, and a node whose dump is an nft ruleset, take the
    whole path, and every result is tracing's."""
    from tests.conftest import SAMPLES

    sources = _write(tmp_path, _texts(3))
    ip6 = (SAMPLES / "ipv6.txt").read_bytes()
    for source in sources:
        (Path(source.path or "") / store.IP6_DUMP_FILE).write_bytes(ip6)
    nft = tmp_path / "node-nft"
    store.write_node_dir(nft, {store.NFT_FILE: (SAMPLES / "nodeport-fb-backends-nft.nft").read_bytes()},
                         {"node": "node-nft", "addresses": ["192.168.49.2"]})
    got, plain, worker = _audit([*sources, Source("node-nft", str(nft), True), *sources])
    assert got == plain
    assert {f.family for r in got for f in r.families} == {"ipv4", "ipv6"}
    assert worker.carried is not None and worker.carried.carried > 0


def test_positions_name_each_rule_and_a_later_node_finds_them() -> None:
    """A port's lines as positions (own chains as slices of rule indices, other rules by text) give back the rules
    on those lines, here and on a node that writes them alike at other lines."""
    one, two = _texts(2)
    shifted = _first_rule(two, "nat", "-A PREROUTING -p sctp -j RETURN")  # (every later line one down)
    (keys, layout), (later, later_layout) = _node_keys(one, 0), _node_keys(shifted, 1)
    checked = 0
    for k in layout.keys:
        sp = layout.service_port(k)
        positions = keys.positions(sp.lines)
        if positions is None:
            continue
        rules = keys.rules_at(positions)
        assert rules is not None and sorted(r[3] for r in rules) == list(sp.lines)
        assert all(w.stop > w.start for w in positions[1]) and positions[2] == sum(w.stop - w.start for w in positions[1])
        found = later.rules_at(positions)
        if k in later_layout.keys:
            assert found is not None
            assert [r[1] for r in found] == [r[1] for r in rules]
            assert sorted(r[3] for r in found) == list(later_layout.service_port(k).lines)
            checked += 1
    assert checked > 50


def test_positions_a_node_does_not_hold_are_none() -> None:
    """rules_at gives None when an own chain of the positions is shorter or missing here, or another rule's text is
    not in its chain here (a carried digest is then made again), and the rules otherwise."""
    text = _texts(1)[0]
    keys, layout = _node_keys(text, 0)
    sp = next(layout.service_port(k) for k in layout.keys
              if len(layout.service_port(k).chains) > 1 and layout.service_port(k).ways_in)
    positions = keys.positions(sp.lines)
    assert positions is not None and positions[3] and keys.rules_at(positions) is not None
    names, slices, count, others = positions
    last = names[-1]
    gone = "\n".join(line for line in text.split("\n") if not line.startswith(f"-A {last} "))
    shorter = re.sub(rf"^-A {last} .*\n", "", text, count=1, flags=re.MULTILINE)
    other = next(o[2] for o in others if f" {o[2]}\n" in text)  # (as the dump writes it: not one of two blanks)
    marked = text.replace(f" {other}\n", " " + other.replace(" -j ", " -m mark --mark 0x1 -j ") + "\n")
    for changed in (gone, shorter, marked):
        assert changed != text
        assert _node_keys(changed, 0)[0].rules_at(positions) is None
    assert keys.rules_at((names, slices, count + 1, others)) is None  # (a count the slices do not hold)
    assert keys.rules_at(((*names[:-1], "KUBE-SEP-NOTHERE"), slices, count, others)) is None


def test_a_full_cache_keeps_the_digests_used_last(tmp_path: Path) -> None:
    """Carried keeps at most `size` digests: when full, those used least recently go first (a digest every node uses
    stays), and results stay tracing's."""
    from iptrace.kube.carried import Carried

    sources = _write(tmp_path, _texts(5))
    worker = Worker(None, False, False, True)
    plain = Worker(None, False, False, False)
    size = 50  # (below a node's ~60 ports: every node evicts)
    worker.carried = Carried(size)
    kept = worker.carried._kept
    for source in sources:
        before = {key: entry[-1] for key, entry in kept.items()}
        carried = worker.carried.carried
        assert worker.run(source) == plain.run(source)
        assert len(kept) <= size
        gone = [used for key, used in before.items() if key not in kept]
        if gone:
            assert max(gone) <= min(entry[-1] for entry in kept.values())
        # (a digest carried to this node is noted as used by it)
        now = sum(entry[-1] == worker.carried._uses for entry in kept.values())
        assert now >= min(worker.carried.carried - carried, size * 9 // 10)
    assert worker.carried.carried > 0


def test_a_ports_values_are_its_layout_but_lines() -> None:
    """Layout.port_values (what a key reads) is the port's layout with no lines; the warnings that need every port
    read (orphaned endpoint chains) are the same whichever of the two read them."""
    from dataclasses import replace

    text = _texts(1)[0]
    orphan = "-A KUBE-SEP-ORPHAN0000000000 -p tcp -j DNAT --to-destination 10.244.9.9:80"
    text = _first_rule(text.replace("\n*nat\n", "\n*nat\n:KUBE-SEP-ORPHAN0000000000 - [0:0]\n", 1), "nat", orphan)
    _keys, layout = _node_keys(text, 0)
    _keys, whole = _node_keys(text, 0)
    for k in layout.keys:
        values = layout.port_values(k)
        assert values.lines == () and values == replace(whole.service_port(k), lines=())
    assert "1 KUBE-SEP chain no service chain jumps to: KUBE-SEP-ORPHAN0000000000" in whole.warnings
    assert layout.warnings == whole.warnings


def test_a_later_nodes_traced_port_is_kept_when_its_key_comes_again(tmp_path: Path) -> None:
    """The first node's digests are all kept; a port a later node had to trace is kept only when a next node traces
    it under the same key again (most such keys are one node's alone: an endpoint in its pod CIDR), and is carried
    after that; results stay tracing's."""
    first, later = _write(tmp_path, _texts(2))
    worker = Worker(None, False, False, True)
    plain = Worker(None, False, False, False)
    carried = worker.carried
    assert carried is not None
    sizes, made = [], []
    for source in (first, later, later, later):  # (node 1 audited three times: its keys come again)
        before = carried.made
        assert worker.run(source) == plain.run(source)
        sizes.append(len(carried._kept))
        made.append(carried.made - before)
    assert sizes[0] > 0 and made[1] > 0
    assert sizes[1] == sizes[0]  # (node 1's traced ports: noted, not kept)
    assert made[2] == made[1] and sizes[2] > sizes[1]  # (traced again under the same keys: kept)
    assert made[3] < made[2]  # (and carried after)


def _unchanged_keys(texts: list[str]) -> tuple[int, int]:
    """Every port's key taken from the last node (NodeKeys.unchanged) is the one read and asked on this node: (keys
    taken, keys that were not the node's)."""
    from iptrace import dataplanes
    from iptrace.kube.analysis import analyse
    from iptrace.kube.carried import port_key

    taken = wrong = 0
    earlier: Any = None
    records: dict[str, Any] = {}
    for i, text in enumerate(texts):
        dataplane, ruleset = dataplanes.load(text)
        a = analyse(dataplane, ruleset, "ipv4", node_ips=[fleet.node_ip(i)])
        clients = a.views.clients
        keys = carry.node_keys(ruleset, a.layout, a.view_ips,
                               (clients.node_address, clients.pod, clients.node, clients.external))
        assert keys is not None
        changes = keys.changes(earlier)
        now = {}
        for name in a.layout.keys:
            key, record = port_key(a, keys, name)
            if changes is not None and name in records:
                found = keys.unchanged(records[name], changes)
                if found is not None:
                    taken += 1
                    wrong += found != key
            if record is not None:
                now[name] = record
        earlier, records = keys.summary(), now
    return taken, wrong


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_a_key_taken_from_the_last_node_is_the_nodes_own(scenario: str) -> None:
    taken, wrong = _unchanged_keys(SCENARIOS[scenario](_texts(4)))
    assert taken > 0 and wrong == 0


@pytest.mark.parametrize("part", ["hosts", "ports", "targets", "texts"])
def test_each_change_unchanged_reads_matters(monkeypatch: pytest.MonkeyPatch, part: str) -> None:
    """Without one part of what NodeKeys.changes finds, some scenario's port takes a key that is not its own."""
    index = {"hosts": 0, "ports": 1, "targets": 2, "texts": 3}[part]
    real = carry.NodeKeys.changes

    def blind(self: carry.NodeKeys, earlier: Any) -> Any:
        found = real(self, earlier)
        if found is None:
            return None
        return (*found[:index], "" if part == "texts" else frozenset(), *found[index + 1:])

    monkeypatch.setattr(carry.NodeKeys, "changes", blind)
    scenario = {"hosts": "exact rule", "ports": "port firewall",
                "targets": "new way in", "texts": "comment names a port"}[part]
    assert _unchanged_keys(SCENARIOS[scenario](_texts(4)))[1] > 0


def test_own_values_are_read_again_on_each_node(monkeypatch: pytest.MonkeyPatch) -> None:
    """A port whose endpoint is one node's own address takes no key from another node: its literals meet that node's
    address (without the check, it would)."""
    assert _unchanged_keys(_texts(3))[1] == 0
    real = carry.NodeKeys.unchanged

    def blind(self: carry.NodeKeys, record: Any, changes: Any) -> Any:
        with pytest.MonkeyPatch.context() as patch:  # (its literals taken to meet this node's values as before)
            patch.setattr(carry.NodeKeys, "_own_values", lambda _self, _named, _nets, _odd: record[0][5])
            return real(self, record, changes)

    monkeypatch.setattr(carry.NodeKeys, "unchanged", blind)
    assert _unchanged_keys(_texts(3))[1] > 0


def test_a_ports_exact_rules_in_place_order_are_found_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A port with two exact rules in one chain (ordered by their places) is not taken from the last node when they
    are written the other way here: found again, they differ (without that, the last node's key is taken)."""
    real = carry.NodeKeys.unchanged

    def blind(self: carry.NodeKeys, record: Any, changes: Any) -> Any:
        return real(self, (*record[:3], None, *record[4:]), changes)

    texts = SCENARIOS["rules of a port swapped"](_texts(4))
    assert _unchanged_keys(texts)[1] == 0
    monkeypatch.setattr(carry.NodeKeys, "unchanged", blind)
    assert _unchanged_keys(texts)[1] > 0


def test_a_ports_own_chains_are_compared_on_each_node(monkeypatch: pytest.MonkeyPatch) -> None:
    """A port one of whose own chains differs here is not taken from the last node (without comparing them, it is)."""
    texts = SCENARIOS["own rule"](_texts(4))
    assert _unchanged_keys(texts)[1] == 0

    monkeypatch.setattr(carry.NodeKeys, "_same_own", lambda _self, _chains, _ids: True)
    assert _unchanged_keys(texts)[1] > 0


def _counted(text: str) -> str:
    """The dump as `iptables-save -c` writes it, every rule with packet and byte counters."""
    return re.sub(r"^-A ", "[3:180] -A ", text, flags=re.MULTILINE)


@pytest.mark.parametrize("compared", ["as kept", "without counters"])
def test_a_carried_ports_first_rules_are_read_with_their_counters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 compared: str) -> None:
    """A node whose dump has counters (same keys: counters are not rule texts) quotes its first rules with them: its
    ports are traced, not carried with the other nodes' evidence; the first rules compared as kept (chain, text and
    counters) stand for their printed texts, and compared without counters they would not."""
    from operator import itemgetter

    from iptrace.kube import carried

    texts = _texts(3)
    texts[2] = _counted(texts[2])
    if compared == "without counters":
        monkeypatch.setattr(carried, "_SAID", itemgetter(0, 1))
    got, plain, worker = _audit(_write(tmp_path, texts))
    assert (got == plain) == (compared == "as kept")
    assert worker.carried is not None and worker.carried.carried > 0


# The content keys' regular expressions as first written (lookbehinds first): carry's are rewritten to start with
# what they match (faster), and must find exactly what these do.
_PLAIN = {
    "_EXACT_DST": re.compile(r"(?<!! )(?<![\w-])-d (\d+\.\d+\.\d+\.\d+)/32(?![\w.])"),
    "_EXACT_DPORT": re.compile(r"(?<!! )--dport (\d+)(?![\w:,])"),
    "_EXACT_SRC": re.compile(r"(?<![\w-])-s \d+\.\d+\.\d+\.\d+/32(?![\w.])"),
    "_JUMP": re.compile(r"(?:^| )-[jg] (\S+)", re.MULTILINE),
    "_IPV4": re.compile(r"(?<![\w.:])(\d+\.\d+\.\d+\.\d+(?:/\d+)?)(?![\w.])"),
}


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet="-! dsjgpotr12.3/:,xK\n", max_size=40))
@example("-j KUBE-SVC-A\n-g KUBE-FW-B\na-j C -j D\n!-j E")
@example("-d 1.2.3.4/32 ! -d 1.2.3.5/32 x-d 1.2.3.6/32 --d 1.2.3.7/32 -d 1.2.3.8/32x")
@example("--dport 80 ! --dport 81 x--dport 82 --dport 83, --dport 84:85")
@example("-s 1.2.3.4/32 x-s 1.2.3.5/32 --s 1.2.3.6/32")
@example("1.2.3.4 :1.2.3.5 .1.2.3.6 a1.2.3.7 11.2.3.4.5 9.9.9.9/24x (10.0.0.0/8) 1.2.3.4/32")
def test_key_patterns_find_what_the_plain_ones_do(text: str) -> None:
    for name, plain in _PLAIN.items():
        fast = getattr(carry, name)
        assert _spans(fast, text) == _spans(plain, text), name


def _spans(pattern: re.Pattern[str], text: str) -> list[tuple[int, int]]:
    """Where each match's group is (the whole match's, without one: _JUMP's plain one also holds the space before)."""
    return [m.span(1 if pattern.groups else 0) for m in pattern.finditer(text)]


def test_key_patterns_on_every_rule_of_a_dump() -> None:
    from tests.conftest import SAMPLES

    rules = [line[3:] for line in (SAMPLES / "nodeport-fb-backends.txt").read_text().splitlines()
             if line.startswith("-A ")]
    for name, plain in _PLAIN.items():
        fast = getattr(carry, name)
        assert [_spans(fast, r) for r in rules] == [_spans(plain, r) for r in rules], name
        assert _spans(fast, "\n".join(rules)) == _spans(plain, "\n".join(rules)), name


@pytest.mark.parametrize("restore", [False, True])
def test_positions_through_each_chains_lines_are_rule_ats(restore: bool) -> None:
    """positions reads the lines of an own chain it met through that chain's rules (one Ruleset.rule_at a chain): the
    same positions (None included) as each line's own rule_at, merged, for every port's lines and lines of no rule or of
    a context rule, also where a restore file's `-I` writes two chains' rules out of order."""
    text = _texts(1)[0]
    if restore:  # (a rule put first in KUBE-SERVICES, written after the chain's others)
        head, nat = text.split("*nat\n", 1)
        text = head + "*nat\n" + nat.replace(
            "COMMIT", "-I KUBE-SERVICES 1 -d 198.18.0.9/32 -p tcp --dport 81 -j RETURN\nCOMMIT", 1)
    keys, layout = _node_keys(text, 0)
    lines = [list(layout.service_port(k).lines) for k in layout.keys]
    lines += [[0], [10**6], list(range(1, text.count("\n") + 2))]

    def one_by_one(port_lines: list[int]) -> Any:
        names: list[str] = []
        slices: list[slice] = []
        others: list[Any] = []
        for line in port_lines:
            found = keys.positions([line])  # (one line: found through rule_at)
            if found is None:
                return None
            names_, slices_, _count, others_ = found
            for name, at in zip(names_, slices_, strict=True):
                if names and names[-1] == name and slices[-1].stop == at.start:
                    slices[-1] = slice(slices[-1].start, at.stop)
                else:
                    names.append(name)
                    slices.append(at)
            others += others_
        return tuple(names), tuple(slices), sum(s.stop - s.start for s in slices), tuple(others)

    asked = [keys.positions(x) for x in lines]
    assert asked == [one_by_one(x) for x in lines]
    assert sum(p is not None for p in asked) > 10
