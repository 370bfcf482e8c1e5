"""iptables-restore input: the commands a table block may hold besides `-A` (-D -I -R -F -Z -N -X -P -E -C),
applied to the model as iptables-restore applies them, refused where it refuses them. The kernel's own
verdict on the same inputs is in test_restore_kernel.py."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from iptrace.cli import main
from iptrace.errors import DumpSemanticError, ParseError
from iptrace.iptables import load, save
from iptrace.iptables.model import Ruleset
from iptrace.iptables.restore import rule_key

# kube-proxy's restore input after a partial sync that found stale chains (syncProxyRules: a chain line to
# flush each one, then `-X` at the end of the table).
KUBE_PROXY_RESTORE = """*nat
:KUBE-SERVICES - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
:KUBE-SEP-SXIVWICOYRO3J4NJ - [0:0]
:KUBE-SVC-GNZBNJ2PO5MGZ6GT - [0:0]
:KUBE-SEP-RS4RBKLTHTF2IUXJ - [0:0]
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -j KUBE-SEP-SXIVWICOYRO3J4NJ
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -s 10.180.0.1 -j KUBE-MARK-MASQ
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80
-X KUBE-SVC-GNZBNJ2PO5MGZ6GT
-X KUBE-SEP-RS4RBKLTHTF2IUXJ
COMMIT
"""

BASE = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:FOO - [0:0]\n:BAR - [0:0]\n" \
       "-A INPUT -s 10.0.0.1/32 -j ACCEPT\n-A INPUT -j FOO\n-A FOO -p tcp -m tcp --dport 80 -j ACCEPT\n"
BASE_LINES = BASE.count("\n")


def with_commands(*commands: str) -> str:
    return BASE + "".join(f"{c}\n" for c in commands) + "COMMIT\n"


def state(r: Ruleset) -> dict[str, tuple[str | None, list[str]]]:
    return {c.name: (c.policy, [rule.text for rule in c.rules]) for c in r.tables[0].chains}


def test_kube_proxy_stale_chain_deletion() -> None:
    r = load(KUBE_PROXY_RESTORE, source="restore.txt")
    nat = r.table("nat")
    assert [c.name for c in nat.chains] == ["KUBE-SERVICES", "KUBE-MARK-MASQ", "KUBE-SVC-XPGD46QRK7WJZT7O",
                                            "KUBE-SEP-SXIVWICOYRO3J4NJ"]
    assert r.rule_count == 5
    assert not r.warnings
    assert "\n-X " not in save(r) and "GNZBNJ2PO5MGZ6GT" not in save(r)
    assert load(save(r)) == r


def test_parse_save_prints_the_resulting_state(tmp_path) -> None:
    dump = tmp_path / "restore.txt"
    dump.write_text(with_commands("-I INPUT 2 -s 10.0.0.2 -j DROP", "-D INPUT -j FOO", "-X BAR", "-P FORWARD DROP"))
    result = CliRunner().invoke(main, ["parse", "--save", str(dump)])
    assert result.exit_code == 0, result.output
    assert result.output == ("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:FOO - [0:0]\n"
                             "-A INPUT -s 10.0.0.1/32 -j ACCEPT\n-A INPUT -s 10.0.0.2 -j DROP\n"
                             "-A FOO -p tcp -m tcp --dport 80 -j ACCEPT\nCOMMIT\n")


FOO_RULE = "-p tcp -m tcp --dport 80 -j ACCEPT"


@pytest.mark.parametrize(("commands", "expected"), [
    (["-X BAR"], {"INPUT": ("ACCEPT", ["-s 10.0.0.1/32 -j ACCEPT", "-j FOO"]), "FORWARD": ("ACCEPT", []),
                  "FOO": (None, [FOO_RULE])}),
    (["--delete-chain BAR"], {"INPUT": ("ACCEPT", ["-s 10.0.0.1/32 -j ACCEPT", "-j FOO"]),
                              "FORWARD": ("ACCEPT", []), "FOO": (None, [FOO_RULE])}),
    (["-D INPUT -j FOO", "-F FOO", "-X"], {"INPUT": ("ACCEPT", ["-s 10.0.0.1/32 -j ACCEPT"]),
                                           "FORWARD": ("ACCEPT", [])}),
    (["-D INPUT 1"], {"INPUT": ("ACCEPT", ["-j FOO"]), "FORWARD": ("ACCEPT", []), "FOO": (None, [FOO_RULE]),
                      "BAR": (None, [])}),
    # by spec, spelled differently from the -A line: no /32, no -m tcp, long option names
    (["--delete INPUT --source 10.0.0.1 -j ACCEPT", "-D FOO -p 6 --destination-port 80 -j ACCEPT"],
     {"INPUT": ("ACCEPT", ["-j FOO"]), "FORWARD": ("ACCEPT", []), "FOO": (None, []), "BAR": (None, [])}),
    (["-I INPUT -j DROP", "-I INPUT 3 -j LOG", "--insert INPUT 5 -j RETURN"],
     {"INPUT": ("ACCEPT", ["-j DROP", "-s 10.0.0.1/32 -j ACCEPT", "-j LOG", "-j FOO", "-j RETURN"]),
      "FORWARD": ("ACCEPT", []), "FOO": (None, [FOO_RULE]), "BAR": (None, [])}),
    (["-R INPUT 2 -j BAR", "--replace FOO 1 -j DROP"],
     {"INPUT": ("ACCEPT", ["-s 10.0.0.1/32 -j ACCEPT", "-j BAR"]), "FORWARD": ("ACCEPT", []),
      "FOO": (None, ["-j DROP"]), "BAR": (None, [])}),
    (["-F INPUT"], {"INPUT": ("ACCEPT", []), "FORWARD": ("ACCEPT", []), "FOO": (None, [FOO_RULE]),
                    "BAR": (None, [])}),
    (["-Z", "-Z INPUT", "--zero INPUT 2"], {"INPUT": ("ACCEPT", ["-s 10.0.0.1/32 -j ACCEPT", "-j FOO"]),
                                            "FORWARD": ("ACCEPT", []), "FOO": (None, [FOO_RULE]), "BAR": (None, [])}),
    (["-N BAZ", "-A BAZ -j RETURN", "--new-chain QUX"],
     {"INPUT": ("ACCEPT", ["-s 10.0.0.1/32 -j ACCEPT", "-j FOO"]), "FORWARD": ("ACCEPT", []),
      "FOO": (None, [FOO_RULE]), "BAR": (None, []), "BAZ": (None, ["-j RETURN"]), "QUX": (None, [])}),
    (["-P INPUT DROP", "--policy OUTPUT DROP"],
     {"INPUT": ("DROP", ["-s 10.0.0.1/32 -j ACCEPT", "-j FOO"]), "FORWARD": ("ACCEPT", []),
      "FOO": (None, [FOO_RULE]), "BAR": (None, []), "OUTPUT": ("DROP", [])}),
    (["-E FOO KUBE-FOO", "--rename-chain BAR KUBE-BAR"],
     {"INPUT": ("ACCEPT", ["-s 10.0.0.1/32 -j ACCEPT", "-j KUBE-FOO"]), "FORWARD": ("ACCEPT", []),
      "KUBE-FOO": (None, [FOO_RULE]), "KUBE-BAR": (None, [])}),
    (["-C INPUT -s 10.0.0.1 -j ACCEPT", "--check FOO -p tcp --dport 80 -j ACCEPT"],
     {"INPUT": ("ACCEPT", ["-s 10.0.0.1/32 -j ACCEPT", "-j FOO"]), "FORWARD": ("ACCEPT", []),
      "FOO": (None, [FOO_RULE]), "BAR": (None, [])}),
    (["--append BAR -m comment --comment \"two words\" -j RETURN"],
     {"INPUT": ("ACCEPT", ["-s 10.0.0.1/32 -j ACCEPT", "-j FOO"]), "FORWARD": ("ACCEPT", []),
      "FOO": (None, [FOO_RULE]), "BAR": (None, ['-m comment --comment "two words" -j RETURN'])}),
])
def test_each_command_changes_the_model(commands: list[str], expected: dict) -> None:
    r = load(with_commands(*commands))
    assert state(r) == expected
    assert load(save(r)) == r


def test_zero_clears_counters() -> None:
    text = ("*filter\n:INPUT ACCEPT [7:700]\n:FOO - [0:0]\n[5:300] -A INPUT -j FOO\n[2:100] -A INPUT -j DROP\n"
            "[1:60] -A FOO -j RETURN\n-Z INPUT 2\n")
    r = load(text + "COMMIT\n")
    assert [rule.counters for rule in r.chain("filter", "INPUT").rules] == [(5, 300), (0, 0)]
    assert r.chain("filter", "INPUT").counters == (7, 700)
    r = load(text + "-Z INPUT\nCOMMIT\n")
    assert [rule.counters for rule in r.chain("filter", "INPUT").rules] == [(0, 0), (0, 0)]
    assert r.chain("filter", "INPUT").counters == (0, 0)
    assert r.chain("filter", "FOO").rules[0].counters == (1, 60)
    r = load(text + "-Z\nCOMMIT\n")
    assert r.chain("filter", "FOO").rules[0].counters == (0, 0)


def test_rename_follows_jumps_and_self_jumps() -> None:
    r = load("*nat\n:A - [0:0]\n:B - [0:0]\n-A A -j B\n-A B -g B\n-A B -j MARK --set-mark 1\n-E B C\nCOMMIT\n")
    assert state(r) == {"A": (None, ["-j C"]), "C": (None, ["-g C", "-j MARK --set-mark 1"])}
    assert [rule.chain for rule in r.chain("nat", "C").rules] == ["C", "C"]


def test_flush_of_the_whole_table_warns_where_backends_differ() -> None:
    r = load(with_commands("-F", "-X"))
    assert state(r) == {"INPUT": ("ACCEPT", []), "FORWARD": ("ACCEPT", [])}
    assert [(w.line, w.message) for w in r.warnings] == [(BASE_LINES + 1, (
        "'-F' without a chain: every chain of table filter flushed, as iptables-legacy-restore does "
        "(iptables-nft-restore flushes only when the table existed before and --noflush is used)"))]


def test_delete_all_chains_warns_where_backends_differ() -> None:
    r = load("*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n:FOO - [0:0]\n-X\nCOMMIT\n")
    assert state(r) == {"INPUT": ("DROP", []), "FORWARD": ("DROP", []), "OUTPUT": ("ACCEPT", [])}
    assert [(w.line, w.message) for w in r.warnings] == [(6, (
        "'-X' without a chain: built-in chains INPUT, FORWARD kept with policy DROP, as iptables-legacy-restore "
        "does (iptables-nft-restore also deletes empty built-in chains, and then the hook accepts)"))]
    assert not load(with_commands("-D INPUT -j FOO", "-F FOO", "-X")).warnings


def test_policy_set_by_command_is_the_chains_evidence() -> None:
    r = load("*filter\n:INPUT - [0:0]\n-P INPUT DROP\nCOMMIT\n")
    assert r.chain("filter", "INPUT").policy == "DROP"
    assert r.chain("filter", "INPUT").line == 3


def test_references_counted_across_the_fast_path_and_commands() -> None:
    # a jump added before the first command (fast path) and one added after it (slow path) both count
    text = ("*filter\n:INPUT ACCEPT [0:0]\n:A - [0:0]\n:B - [0:0]\n:C - [0:0]\n-A INPUT -j A\n-X C\n"
            "-A INPUT -j B\n")
    for chain in ("A", "B"):
        with pytest.raises(DumpSemanticError, match=f"chain '{chain}' is still referenced"):
            load(text + f"-X {chain}\nCOMMIT\n")
    ok = text + "-D INPUT -j A\n-X A\n-R INPUT 1 -j ACCEPT\n-X B\nCOMMIT\n"
    assert state(load(ok)) == {"INPUT": ("ACCEPT", ["-j ACCEPT"])}


@pytest.mark.parametrize(("text", "message"), [
    # iptables-restore refuses the jump at its line: deleting the rule later, or declaring the chain later,
    # does not make it right
    ("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j NOWHERE\n-D INPUT 1\nCOMMIT\n",
     "d:3:13: jump to undefined chain 'NOWHERE' in table filter; expected a chain declared in this table or a known "
     "target"),
    ("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j LATER\n-N LATER\nCOMMIT\n",
     "d:3:13: jump to chain 'LATER' before its declaration (line 4); expected the chain declared before the rules "
     "that jump to it"),
    ("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j LATER\n:LATER - [0:0]\nCOMMIT\n",
     "d:3:13: jump to chain 'LATER' before its declaration (line 4); expected the chain declared before the rules "
     "that jump to it"),
    # the first line iptables-restore refuses is the one named, even when a later command fails first here
    ("*filter\n:INPUT ACCEPT [0:0]\n:A - [0:0]\n-A INPUT -j NOWHERE\n-X INPUT\nCOMMIT\n",
     "d:4:13: jump to undefined chain 'NOWHERE' in table filter; expected a chain declared in this table or a known "
     "target"),
])
def test_jumps_to_chains_not_declared_yet(text: str, message: str) -> None:
    with pytest.raises(DumpSemanticError) as info:
        load(text, source="d")
    assert str(info.value) == message


E = BASE_LINES + 1  # the line of the first command


@pytest.mark.parametrize(("commands", "line", "column", "message"), [
    (["-X FOO"], E, 4, "chain 'FOO' is still referenced (1 rule jumps to it: line 7); expected -X only of a "
                       "chain no rule jumps to"),
    (["-D INPUT -j FOO", "-X FOO"], E + 1, 4, "chain 'FOO' still has 1 rule; expected -X only of an empty chain "
                                              "(flush it first with ':FOO - [0:0]' or '-F FOO', as kube-proxy does)"),
    (["-X"], E, 1, "chain 'FOO' is still referenced (1 rule jumps to it: line 7); expected -X only of a chain "
                   "no rule jumps to"),
    (["-X NOPE"], E, 4, "no chain 'NOPE' in table filter; expected a chain declared in this table (a ':NOPE - "
                        "[0:0]' line or '-N NOPE' before it)"),
    (["-X INPUT"], E, 4, "cannot delete built-in chain 'INPUT'; expected a user chain"),
    (["-X BAR FOO"], E, 8, "unexpected 'FOO'; expected end of line after '-X BAR'"),
    (["-F NOPE"], E, 4, "no chain 'NOPE' in table filter; expected a chain declared in this table (a ':NOPE - "
                        "[0:0]' line or '-N NOPE' before it)"),
    (["-F FOO BAR"], E, 8, "unexpected 'BAR'; expected end of line after '-F FOO'"),
    (["-Z INPUT 3"], E, 10, "rule number 3 is too big for chain 'INPUT'; expected 1 to 2"),
    (["-Z NOPE"], E, 4, "no chain 'NOPE' in table filter; expected a chain declared in this table (a ':NOPE - "
                        "[0:0]' line or '-N NOPE' before it)"),
    (["-N FOO"], E, 4, "chain 'FOO' already exists in table filter (line 4); expected a new chain name"),
    (["-N ACCEPT"], E, 4, "chain name 'ACCEPT' is a target's name; expected another name"),
    (["-N -foo"], E, 4, "chain name '-foo' starts with '-'; expected a name that does not"),
    (["-N ABCDEFGHIJKLMNOPQRSTUVWXYZ123"], E, 4, "chain name 'ABCDEFGHIJKLMNOPQRSTUVWXYZ123' is 29 characters "
                                                 "long; expected at most 28"),
    (["-P FOO DROP"], E, 4, "'FOO' is not a built-in chain of table filter; expected one of INPUT, FORWARD, OUTPUT"),
    (["-P INPUT RETURN"], E, 10, "bad policy 'RETURN'; expected ACCEPT or DROP"),
    (["-D INPUT 3"], E, 10, "rule number 3 is too big for chain 'INPUT'; expected 1 to 2"),
    (["-D BAR 1"], E, 8, "rule number 1 is too big for chain 'BAR'; expected no rule number (the chain is empty)"),
    (["-D INPUT -j DROP"], E, 10, "no rule of chain 'INPUT' matches this rule spec; expected the options of an "
                                  "existing rule (or its number)"),
    (["-D INPUT 1 -j FOO"], E, 12, "unexpected '-j'; expected end of line after '-D INPUT 1'"),
    (["-I INPUT 4 -j DROP"], E, 10, "rule number 4 is too big for chain 'INPUT'; expected 1 to 3"),
    (["-I INPUT 0 -j DROP"], E, 10, "invalid rule number '0'; expected a number from 1"),
    (["-I INPUT x -j DROP"], E, 10, "invalid rule number 'x'; expected a number from 1"),
    (["-I"], E, 4, "-I expects a chain name, found end of line"),
    (["-R INPUT -j DROP"], E, 10, "-R expects a rule number after the chain, found '-j'"),
    (["-R INPUT 3 -j DROP"], E, 10, "rule number 3 is too big for chain 'INPUT'; expected 1 to 2"),
    (["-R INPUT 1 -j NOWHERE"], E, 15, "jump to undefined chain 'NOWHERE' in table filter; expected a chain "
                                       "declared in this table or a known target"),
    (["-C INPUT -j DROP"], E, 10, "no rule of chain 'INPUT' matches this rule spec; expected the options of an "
                                  "existing rule"),
    (["-E INPUT X"], E, 4, "cannot rename built-in chain 'INPUT'; expected a user chain"),
    (["-E FOO BAR"], E, 8, "chain 'BAR' already exists in table filter (line 5); expected a new chain name"),
    (["-E FOO"], E, 8, "-E expects the chain's new name, found end of line"),
    (["-I INPUT -p tcp --dport"], E, 17, "option --dport expects 1 value, found end of line"),
    (['-D INPUT -m comment --comment "abc'], E, 31, "unterminated quoted string; expected a closing '\"' before "
                                                    "the end of the line"),
    (["-L INPUT"], E, 1, "unexpected '-L'; expected \":\", a command (-D, -I, -R, -F, -Z, -X, -E, -C), a comment, "
                         "\"COMMIT\", [packets:bytes], \"*\", \"-A\", \"-N\" or \"-P\""),
])
def test_refused_commands_name_line_and_column(commands: list[str], line: int, column: int, message: str) -> None:
    with pytest.raises(ParseError) as info:
        load(with_commands(*commands), source="restore.txt")
    assert str(info.value) == f"restore.txt:{line}:{column}: {message}"


def test_command_outside_a_table_and_in_a_listing() -> None:
    with pytest.raises(DumpSemanticError) as info:
        load("-X FOO\n*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n", source="d")
    assert str(info.value) == ("d:1:1: command before its table; expected a '*filter' (or *nat, *mangle, …) line "
                               "first")
    with pytest.raises(DumpSemanticError) as info:
        load("-P INPUT ACCEPT\n-N FOO\n-A INPUT -j FOO\n-X FOO\n", source="d", table="filter")
    assert str(info.value) == ("d:4:1: -X is a command of iptables-restore input, not of an 'iptables -S' "
                               "listing; expected -P, -N and -A lines only (or '*table' … 'COMMIT' blocks around "
                               "restore input)")


def test_lenient_skips_a_refused_command_and_goes_on() -> None:
    r = load(with_commands("-X FOO", "-X BAR"), lenient=True)
    assert [(s.line, s.message.split(";")[0]) for s in r.skipped] == [(E, "chain 'FOO' is still referenced (1 rule "
                                                                          "jumps to it: line 7)")]
    assert "BAR" not in state(r) and "FOO" in state(r)


def test_cli_error_is_one_positioned_line(tmp_path) -> None:
    dump = tmp_path / "restore.txt"
    dump.write_text(with_commands("-X FOO"))
    result = CliRunner().invoke(main, ["parse", str(dump)])
    assert result.exit_code == 1
    assert result.output.splitlines()[0] == (
        f"Error: {dump}:{E}:4: chain 'FOO' is still referenced (1 rule jumps to it: line 7); expected -X only of a "
        "chain no rule jumps to (--lenient reads past it and analyses the rest)")


def _rule(spec: str):
    return load(f"*filter\n:INPUT ACCEPT [0:0]\n:X - [0:0]\n-A INPUT {spec}\nCOMMIT\n").chain("filter", "INPUT").rules[0]


# Pairs the kernel treats as the same rule (each checked by test_restore_kernel.py) and pairs it does not.
SAME_RULE = [
    ("-p tcp -m tcp --dport 80 -j ACCEPT", "-p tcp --dport 80 -j ACCEPT"),
    ("-s 10.0.0.1/32 -j ACCEPT", "-s 10.0.0.1 -j ACCEPT"),
    ("-s 10.0.0.0/8 -j ACCEPT", "-s 10.1.2.3/8 -j ACCEPT"),
    ("-s 10.0.0.0/8 -j ACCEPT", "--source 10.0.0.0/255.0.0.0 -j ACCEPT"),
    ("-s 10.0.0.1/32 -p tcp -m tcp --dport 80 -j ACCEPT", "-p tcp -m tcp --dport 80 -s 10.0.0.1 -j ACCEPT"),
    ("-p tcp -m tcp --dport 80 -j ACCEPT", "-p tcp -m tcp --destination-port 80 -j ACCEPT"),
    ("-p tcp -m tcp --dport 80 -j ACCEPT", "-p tcp -m tcp --dport 80:80 -j ACCEPT"),
    ("-p tcp -m tcp --dport 80 -j ACCEPT", "-p 6 -m tcp --dport 80 -j ACCEPT"),
    ("-p tcp -m tcp --dport 80 -j ACCEPT", "-p TCP -m tcp --dport 80 -j ACCEPT"),
    ("-m statistic --mode random --probability 0.50000000000 -j ACCEPT",
     "-m statistic --mode random --probability 0.5 -j ACCEPT"),
    ('-m comment --comment "a" -j ACCEPT', "-m comment --comment a -j ACCEPT"),
    ("-m conntrack --ctstate NEW,ESTABLISHED -j ACCEPT", "-m conntrack --ctstate ESTABLISHED,NEW -j ACCEPT"),
    ("-m mark --mark 0x4000/0x4000 -j ACCEPT", "-m mark --mark 16384/16384 -j ACCEPT"),
    ("-p tcp -j REJECT --reject-with icmp-port-unreachable", "-p tcp -j REJECT"),
    ("-s 10.0.0.1/32 -d 10.0.0.2/32 -j ACCEPT", "-d 10.0.0.2 -s 10.0.0.1 -j ACCEPT"),
    ("-p tcp -m tcp --dport 1 -j ACCEPT", "-m tcp -p tcp --dport 1 -j ACCEPT"),
    ("-p tcp -m tcp --sport 1 --dport 2 -j ACCEPT", "-p tcp -m tcp --dport 2 --sport 1 -j ACCEPT"),
    ("-m comment --comment x -j X", "-m comment --comment x --jump X"),
    ("-j MARK --set-xmark 0x4000/0x4000", "-j MARK --or-mark 0x4000"),
    ("-j MARK --set-xmark 0x0/0xffffbfff", "-j MARK --and-mark 0x4000"),
    ("-j MARK --set-xmark 0x4000/0x0", "-j MARK --xor-mark 0x4000"),
    ("-j MARK --set-xmark 0x8000/0xffffffff", "-j MARK --set-mark 0x8000"),
    ("-j MARK --set-xmark 0x8000/0xc000", "-j MARK --set-mark 0x8000/0x4000"),
    ("-m mark --mark 0x4000 -j ACCEPT", "-m mark --mark 0x4000/0xffffffff -j ACCEPT"),
]
DIFFERENT_RULE = [
    ('-m comment --comment "a" -j ACCEPT', "-m comment --comment b -j ACCEPT"),
    ('-m comment --comment "a" -j ACCEPT', "-j ACCEPT"),
    ("-m comment --comment x -m mark --mark 0x1 -j ACCEPT", "-m mark --mark 0x1 -m comment --comment x -j ACCEPT"),
    ("! -s 10.0.0.1/32 -j ACCEPT", "-s 10.0.0.1/32 -j ACCEPT"),
    ("-j ACCEPT", "-j DROP"),
    ("-i eth0 -j ACCEPT", "-i eth+ -j ACCEPT"),
    ("-j X", "-g X"),
    ("-p tcp -j ACCEPT", "-p tcp -m tcp -j ACCEPT"),
    ("-m statistic --mode random --probability 0.50000000000 -j ACCEPT",
     "-m statistic --mode random --probability 0.50001 -j ACCEPT"),
    ("-j MARK --set-xmark 0x4000/0x4000", "-j MARK --set-xmark 0x4000/0xffffffff"),
    ("-m mark --mark 0x4000 -j ACCEPT", "-m mark --mark 0x4000/0x4000 -j ACCEPT"),
]


@pytest.mark.parametrize(("a", "b"), SAME_RULE)
def test_rule_key_equates_what_the_kernel_equates(a: str, b: str) -> None:
    assert rule_key(_rule(a)) == rule_key(_rule(b))


@pytest.mark.parametrize(("a", "b"), DIFFERENT_RULE)
def test_rule_key_keeps_apart_what_the_kernel_keeps_apart(a: str, b: str) -> None:
    assert rule_key(_rule(a)) != rule_key(_rule(b))


@pytest.mark.parametrize("text", [
    KUBE_PROXY_RESTORE,
    with_commands("-I INPUT 1 -s 10.0.0.9/32 -j DROP", "-A FOO -j RETURN", "-I FOO -p udp -j ACCEPT"),
    # Chains interleaved, as a hand-written restore file may have them.
    "*filter\n:INPUT ACCEPT [0:0]\n:A - [0:0]\n:B - [0:0]\n-A A -s 10.0.0.1 -j ACCEPT\n-A B -j RETURN\n"
    "-A A -s 10.0.0.2 -j ACCEPT\n-A INPUT -j A\n-A B -s 10.0.0.3 -j DROP\nCOMMIT\n",
], ids=["kube-proxy", "inserted", "interleaved"])
def test_the_rule_at_each_line_is_found(text: str) -> None:
    """Evidence names rules by their input line: every rule is found at its own line, also where `-I` put a
    later line first or chains interleave, and a line that holds no rule finds none."""
    ruleset = load(text, source="t")
    rules = [r for _t, _c, r in ruleset.rules()]
    assert rules
    for rule in rules:
        assert ruleset.rule_at(rule.line) is rule
    assert ruleset.rule_at(1) is None and ruleset.rule_at(10_000) is None
    every = {*(r.line for r in rules), 1, 2, 10_000}
    assert ruleset.line_texts(every) == {x: ruleset.line_text(x) for x in every}


def test_line_texts_where_two_rules_share_a_line() -> None:
    """A ruleset made with two rules on one line (no dump does that): line_texts says what line_text says."""
    from iptrace.iptables.model import Chain, Rule, Table

    ruleset = load(KUBE_PROXY_RESTORE, source="t")
    table = ruleset.tables[0]
    chain = table.chains[0]
    twin = Rule(chain.name, "-j RETURN", None, chain.rules[0].line if chain.rules else 5)
    other = Table(table.name, tuple(Chain(c.name, c.policy, (*c.rules, twin) if c is chain else c.rules)
                                    for c in table.chains))
    doubled = Ruleset((other, *ruleset.tables[1:]), ruleset.family)
    lines = {r.line for _t, _c, r in doubled.rules()} | {10_000}
    assert doubled.line_texts(lines) == {x: doubled.line_text(x) for x in lines}
