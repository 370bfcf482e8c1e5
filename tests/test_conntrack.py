"""The conntrack reader (every format conntrack-tools and the kernel print, errors with file:line:column), the
judgement of entries against the rules (the real iptables Tracer on the sample dumps) and the exactness of the
`conntrack -D` filters."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from iptrace.conntrack import ConntrackEntry, FlowTuple, load, load_path
from iptrace.conntrack.delete import DeleteFilter, one, plan_deletion
from iptrace.conntrack.stale import CURRENT, FINISHED, NOT_DNATED, STALE, UNCHANGED, Judge, judge_table
from iptrace.conntrack.text import format_entry
from iptrace.errors import InputError, ParseError
from iptrace.iptables import load_path as load_dump
from iptrace.iptables.walk import Tracer

SAMPLES = Path(__file__).resolve().parent.parent / "sample_dumps"
FB_FLOWS = SAMPLES / "conntrack" / "nodeport-fb-backends.txt"

TCP = ("tcp      6 431999 ESTABLISHED src=10.0.0.1 dst=10.96.0.1 sport=5000 dport=443 src=10.0.0.9 dst=10.0.0.1 "
       "sport=8443 dport=5000 [ASSURED] mark=0 use=1")


def read(text: str, **kwargs: object) -> list[ConntrackEntry]:
    return list(load(text, source="ct.txt", **kwargs).entries())  # type: ignore[arg-type]


def error(text: str) -> str:
    with pytest.raises(ParseError) as info:
        load(text, source="ct.txt")
    return str(info.value)


# ------------------------------------------------------------------------------------------------ formats


def test_plain_listing_as_conntrack_prints_it() -> None:
    [tcp, udp, icmp] = read(
        f"{TCP}\n"
        "udp      17 29 src=198.18.0.1 dst=198.19.0.10 sport=40001 dport=53 [UNREPLIED] src=198.18.0.1 "
        "dst=198.18.0.1 sport=5353 dport=40001 mark=0 use=1\n"
        "icmp     1 29 src=198.18.0.1 dst=198.18.0.1 type=8 code=0 id=44805 src=198.18.0.1 dst=198.18.0.1 type=0 "
        "code=0 id=44805 mark=0 use=2\n"
        "conntrack v1.4.7 (conntrack-tools): 3 flow entries have been shown.\n")
    assert tcp == ConntrackEntry("ipv4", "tcp", 6, "ESTABLISHED", 431999,
                                 FlowTuple("10.0.0.1", "10.96.0.1", 5000, 443), FlowTuple("10.0.0.9", "10.0.0.1", 8443, 5000),
                                 ("ASSURED",), 0, None, (("use", "1"),))
    assert tcp.line == 1 and tcp.text == TCP and tcp.dnated and tcp.replied
    assert udp.state is None and udp.flags == ("UNREPLIED",) and not udp.replied and udp.dnated
    assert udp.reply.source == "198.18.0.1:5353" and udp.original.destination == "198.19.0.10:53"
    assert icmp.original.sport is None and icmp.original.fields == (("type", "8"), ("code", "0"), ("id", "44805"))
    assert icmp.fields == (("use", "2"),)  # the entry's own fields, apart from the tuple's id=


def test_extended_proc_and_ipv6_spellings_mean_the_same() -> None:
    plain = read("udp      17 29 src=fd00:198:18::1 dst=fd00:198:19::10 sport=40004 dport=53 [UNREPLIED] "
                 "src=fd00:198:18::1 dst=fd00:198:18::1 sport=5353 dport=40004 mark=0 use=1\n")[0]
    proc = read("ipv6     10 udp      17 29 src=fd00:0198:0018:0000:0000:0000:0000:0001 "
                "dst=fd00:0198:0019:0000:0000:0000:0000:0010 sport=40004 dport=53 [UNREPLIED] "
                "src=fd00:0198:0018:0000:0000:0000:0000:0001 dst=fd00:0198:0018:0000:0000:0000:0000:0001 "
                "sport=5353 dport=40004 mark=0 zone=0 use=1\n")[0]
    assert plain.family == proc.family == "ipv6"
    assert (plain.original, plain.reply) == (proc.original, proc.reply)
    assert proc.original.dst == "fd00:198:19::10" and proc.zone == 0 and plain.zone is None
    extended = read("ipv4     2 " + TCP + " id=320366871\n")[0]
    assert extended.fields == (("use", "1"), ("id", "320366871")) and extended.family == "ipv4"


def test_every_field_and_flag_conntrack_and_the_kernel_print() -> None:
    lines = [
        # accounting, directional zones, secctx, labels, helper, timestamps (with spaces inside the brackets)
        "ipv4     2 tcp      6 117 TIME_WAIT src=10.0.0.1 dst=10.0.0.2 sport=1 dport=2 packets=5 bytes=300 "
        "zone-orig=3 src=10.0.0.2 dst=10.0.0.1 sport=2 dport=1 packets=4 bytes=200 zone-reply=4 [ASSURED] mark=7 "
        "secctx=system_u:object_r:unlabeled_t:s0 zone=0 delta-time=12 helper=ftp use=1 id=99 labels=a,b "
        "[start=Mon Dec  2 11:06:00 2024] [stop=Mon Dec  2 11:07:00 2024]",
        "tcp      6 ESTABLISHED src=10.0.0.1 dst=10.0.0.2 sport=1 dport=2 src=10.0.0.2 dst=10.0.0.1 sport=2 dport=1 "
        "[OFFLOAD] mark=0 use=2",
        "gre      47 179 src=10.0.0.1 dst=10.0.0.2 srckey=0x0 dstkey=0x1f src=10.0.0.2 dst=10.0.0.1 srckey=0x1f "
        "dstkey=0x0 [ASSURED] mark=0 use=1",
        "unknown  41 599 src=10.0.0.1 dst=10.0.0.2 src=10.0.0.2 dst=10.0.0.1 mark=0 use=1",
        "sctp     132 207 ESTABLISHED src=10.0.0.1 dst=10.0.0.2 sport=3868 dport=3868 src=10.0.0.2 dst=10.0.0.1 "
        "sport=3868 dport=3868 [ASSURED] mark=0 use=1",
        "icmpv6   58 29 src=fd00::1 dst=fd00::2 type=128 code=0 id=7 src=fd00::2 dst=fd00::1 type=129 code=0 id=7 "
        "mark=0 use=1",
    ]
    timed, offloaded, gre, unknown, sctp, icmpv6 = read("\n".join(lines) + "\n")
    assert timed.original.counters == (("packets", "5"), ("bytes", "300"), ("zone-orig", "3"))
    assert timed.reply.counters == (("packets", "4"), ("bytes", "200"), ("zone-reply", "4"))
    assert timed.mark == 7 and timed.zone == 0 and timed.state == "TIME_WAIT"
    assert dict(timed.fields) == {"secctx": "system_u:object_r:unlabeled_t:s0", "delta-time": "12", "helper": "ftp",
                                  "use": "1", "id": "99", "labels": "a,b"}
    assert timed.flags == ("ASSURED", "start=Mon Dec  2 11:06:00 2024", "stop=Mon Dec  2 11:07:00 2024")
    assert offloaded.timeout is None and offloaded.flags == ("OFFLOAD",)
    assert gre.original.fields == (("srckey", "0x0"), ("dstkey", "0x1f")) and gre.original.dport is None
    assert unknown.proto_number == 41 and unknown.original.fields == ()
    assert sctp.state == "ESTABLISHED" and sctp.original.dport == 3868
    assert icmpv6.family == "ipv6" and icmpv6.reply.fields[0] == ("type", "129")


def test_blank_lines_crlf_and_the_trailer_anywhere() -> None:
    trailer = "conntrack v1.4.7 (conntrack-tools): 2 flow entries have been shown."
    # With `2>&1` the trailer (stderr, unbuffered) can land before the last stdout block.
    for text in (f"{trailer}\n{TCP}\n{TCP.replace('5000', '5001')}\n",
                 f"{TCP}\r\n\r\n{trailer}\r\n{TCP.replace('5000', '5001')}\r\n", f"\n{TCP}\n\n{TCP}\n{trailer}"):
        table = load(text, source="ct.txt")
        assert len(table) == 2 and table.trailer_count == 2
    assert len(load("", source="ct.txt")) == 0
    # Both families listed one after the other, with a note between them (as a collector may write it).
    v6 = ("udp      17 29 src=fd00::1 dst=fd00::10 sport=1 dport=53 [UNREPLIED] src=fd00::9 dst=fd00::1 sport=53 "
          "dport=1 mark=0 use=1")
    both = load(f"# conntrack -L -f ipv4\n{TCP}\n# conntrack -L -f ipv6\n{v6}\n")
    assert [e.family for e in both.entries()] == ["ipv4", "ipv6"] and len(both.to_address("fd00::10")) == 1
    assert len(load("conntrack v1.4.7 (conntrack-tools): 0 flow entries have been shown.\n")) == 0


def test_table_index_by_original_destination() -> None:
    table = load_path(FB_FLOWS)
    assert len(table) == 13 and table.trailer_count == 13
    assert "10.96.0.10" in table.destinations()
    dns = table.to_address("10.96.0.10")
    assert [e.line for e in dns] == [2, 3, 4, 6, 8]
    assert table.to_address("10.96.0.99") == () and table.to_address("not an address") == ()
    assert [e.line for e in table.entries()] == list(range(1, 14))


def test_read_file_gzip_stdin_and_directories(tmp_path: Path) -> None:
    packed = tmp_path / "conntrack.txt.gz"
    packed.write_bytes(gzip.compress(FB_FLOWS.read_bytes()))
    assert len(load_path(packed)) == 13
    with pytest.raises(InputError, match="is a directory"):
        load_path(tmp_path)
    with pytest.raises(InputError, match=r"missing\.txt: no such file or directory$"):
        load_path(tmp_path / "missing.txt")


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(("line", "message"), [
    (TCP.replace("sport=8443", "sport=84433"),
     "ct.txt:2:111: invalid value '84433' in sport=; expected a port number (0-65535)"),
    (TCP.replace("dst=10.0.0.1 sport=8443", "dst=10.0.0..1 sport=8443"),
     "ct.txt:2:96: invalid address '10.0.0..1' in dst=; expected an IPv4 or IPv6 address"),
    (TCP.replace("tcp      6", "tcp      17"), "ct.txt:2:10: tcp is protocol number 6, not 17"),
    (TCP.replace("ASSURED", "ASSURED1"),
     "ct.txt:2:127: unknown flag '[ASSURED1]'; expected [ASSURED], [HW_OFFLOAD], [OFFLOAD], [UNREPLIED]"),
    (TCP.replace("sport=5000", "sprt=5000"),
     "ct.txt:2:58: unexpected sprt=; expected sport=… (original tuple of a tcp entry)"),
    (TCP.replace("sport=5000", "sport8=5000"),  # digits only: the same shape key, the fast path must refuse it
     "ct.txt:2:58: unexpected sport8=; expected sport=… (original tuple of a tcp entry)"),
    (TCP.replace("dst=10.96.0.1", "dst=fd00::1"), "ct.txt:2:48: IPv6 address in an IPv4 entry"),
    (TCP.replace("mark=0", "mark=0 mark=0"), "ct.txt:2:144: mark= appears twice in one entry"),
    (TCP.replace("[ASSURED] ", "") + " [UNREPLIED]",
     "ct.txt:2:140: [UNREPLIED] belongs between the original and the reply tuple"),
    ("udp      17 30 ESTABLISHED src=1.1.1.1", "ct.txt:2:16: udp entries have no state; found 'ESTABLISHED'"),
    ("udp      17 30 src=1.1.1.1 dst=2.2.2.2 sport=1 dport=2",
     "ct.txt:2:55: unexpected end of line; expected src=… (the reply tuple): the entry is cut short"),
    ("garbage here", "ct.txt:2:9: unexpected 'here'; expected a number"),
    ("conntrack v1.4.7 (conntrack-tools): Operation failed: Operation not permitted",
     "ct.txt:2:1: conntrack failed when this file was written ('Operation failed: Operation not permitted'); list "
     "the table again as root (conntrack -L)"),
])
def test_a_damaged_line_anywhere_is_an_error_naming_line_and_column(line: str, message: str) -> None:
    # The first line makes the shape known, so the damaged one meets the fast path first.
    assert error(f"{TCP}\n{line}\n{TCP}\n") == message


def test_a_truncated_file_and_a_file_that_is_not_conntrack_output() -> None:
    cut = TCP[:100]
    assert error(f"{TCP}\n{cut}") == ("ct.txt:2:96: invalid address '10.0.' in dst=; expected an IPv4 or IPv6 address "
                                      "(the file ends in the middle of this line: it looks truncated)")
    assert error(f"{TCP}\nconntrack v1.4.7 (conntrack-tools): 3 flow entries have been shown.\n") == (
        "ct.txt:2:1: conntrack's closing line says 3 flow entries were shown but the file holds 1; the file looks "
        "truncated or edited; list the table again (conntrack -L)")
    assert error("# Generated by iptables-save v1.8.9\n*nat\n") == (
        "ct.txt:2:1: unexpected '*nat'; expected a protocol name (tcp, udp, icmp, …); is this `conntrack -L` output "
        "(or /proc/net/nf_conntrack)?")


def _flow(i: int, state: str = "ESTABLISHED") -> str:
    return TCP.replace("sport=5000", f"sport={5000 + i}").replace("dport=5000", f"dport={5000 + i}").replace(
        "ESTABLISHED", state).replace("10.0.0.1 ", f"10.0.{i // 250}.{i % 250 + 1} ")


def test_lines_are_read_a_shape_at_a_time_yet_errors_come_in_file_order() -> None:
    # Thousands of lines of one shape (read in chunks, values proven as they come), another shape after them,
    # and damaged lines of both: the first damaged line in the file is the error, whichever shape it has.
    lines = [_flow(i) for i in range(3000)] + [_flow(i, "TIME_WAIT") for i in range(3000)]
    table = load("\n".join(lines) + "\n", source="ct.txt")
    assert len(table) == 6000
    assert [e.original.sport for e in table.to_address("10.96.0.1")] == [5000 + i for i in range(3000)] * 2
    assert [e.line for e in table.entries()] == list(range(1, 6001))
    # One client's flows, a new timeout on two lines of three: lines whose values are proven later are still listed
    # in file order.
    one = [TCP.replace("431999", str(431999 - i if i % 3 else 431999)) for i in range(1000)]
    (group,) = load("\n".join(one)).flows_to("10.96.0.1")
    assert group.lines == tuple(range(1, 1001))
    late = lines.copy()
    late[5000] = late[5000].replace("dst=10.96.0.1", "dst=10.96.0.256")  # (a TIME_WAIT line)
    late[2500] = late[2500].replace("src=10.0.0.9", "src=10.0.0.")  # (an ESTABLISHED line, later in its chunk)
    late[4000] = late[4000].replace("sport=8443", "sport=65536")
    assert error("\n".join(late)).startswith("ct.txt:2501:")
    late.insert(1, "garbage here")  # a line of its own key, seen before the others' errors
    assert error("\n".join(late)).startswith("ct.txt:2:")
    table = load("\n".join(late) + "\n", source="ct.txt", lenient=True)
    assert [s.line for s in table.skipped] == [2, 2502, 4002, 5002] and len(table) == 5997
    assert [e.line for e in table.entries()] == [n for n in range(1, 6002) if n not in (2, 2502, 4002, 5002)]


def test_a_chunk_of_one_shape_is_checked_a_column_at_a_time_yet_every_line_alone() -> None:
    # Lines of one shape are checked as columns (the same word of every line at once). Damage that keeps a line's
    # shape key must still be found on its own line, and the lines beside it read as they are.
    lines = [_flow(i) for i in range(2000)]
    damaged = {
        502: lines[502].replace("tcp      6", "tcp   6   6"),  # a word more in conntrack's padding: the same key
        903: lines[903].replace("sport=8443", "sport=\x00"),  # a NUL word, as the reader's own separator is
        1204: lines[1204].replace("sport=8443", "sport=123456"),  # six digits
        1305: lines[1305].replace("sport=8443", "sport=65536"),
        1406: lines[1406].replace("src=10.0.0.9", "src=fd00::9"),  # an IPv6 address in an IPv4 line
        1507: lines[1507].replace("src=10.0.0.9", "src=10.0.0.256"),
    }
    valid = {
        101: lines[101].replace(" 431999 ", "  "),  # no timeout: the same key, one word fewer (another layout)
        1608: lines[1608].replace("sport=8443", "sport=08443"),  # (conntrack never prints it; lark reads it)
    }
    text = "\n".join(damaged.get(i, valid.get(i, line)) for i, line in enumerate(lines)) + "\n"
    assert error(text).startswith("ct.txt:503:")
    table = load(text, source="ct.txt", lenient=True)
    assert [s.line for s in table.skipped] == [n + 1 for n in sorted(damaged)]
    assert len(table) == 2000 - len(damaged)
    # Every entry equals the entry its line makes when read alone (lark and the vocabulary, no column check).
    for e in table.entries():
        (alone,) = read(e.text)
        assert (alone.original, alone.reply, alone.timeout) == (e.original, e.reply, e.timeout)
    assert [e.original.sport for e in table.to_address("10.96.0.1") if e.line == 1609] == [5000 + 1608]
    assert [e.reply.sport for e in table.to_address("10.96.0.1") if e.line == 1609] == [8443]
    assert [e.timeout for e in table.to_address("10.96.0.1") if e.line in (101, 102)] == [431999, None]


def test_lenient_skips_bad_lines_and_says_which() -> None:
    table = load(f"{TCP}\ngarbage here\n{TCP.replace('5000', '5001')}\nudp 17 30 src=1.1.1.1\n", source="ct.txt",
                 lenient=True)
    assert len(table) == 2 and [s.line for s in table.skipped] == [2, 4]
    assert table.skipped[0].reason == "unexpected 'here'; expected a number"
    counted = load(f"{TCP}\nconntrack v1.4.7 (conntrack-tools): 3 flow entries have been shown.\n", lenient=True)
    assert len(counted) == 1 and "3 flow entries were shown" in counted.warnings[0].reason


def test_round_trip_of_the_samples() -> None:
    for path in (FB_FLOWS, SAMPLES / "conntrack" / "ipv6.txt"):
        table = load_path(path)
        for e in table.entries():
            proc = e.family == "ipv6"
            assert format_entry(e, proc=proc) == e.text, e.text
            assert read(format_entry(e)) == [e]


# ------------------------------------------------------------------------------------------------ judgements


@pytest.fixture(scope="module")
def fb_tracer() -> Tracer:
    return Tracer(load_dump(SAMPLES / "nodeport-fb-backends.txt"), node_ips=["192.168.49.2"],
                  pod_cidrs=["10.244.0.0/16"])


def test_every_sample_entry_is_judged_by_a_trace_of_its_own_first_packet(fb_tracer: Tracer) -> None:
    table = load_path(FB_FLOWS)
    judged = {n: j for j in judge_table(table, fb_tracer, "ipv4") for n in j.flows.lines}
    assert {n: j.status for n, j in judged.items()} == {
        1: CURRENT,  # kubernetes API 10.96.0.1:443 -> 192.168.49.2:6443
        2: CURRENT, 3: CURRENT,  # kube-dns to both endpoints
        4: STALE, 6: STALE,  # kube-dns to 10.244.0.9, gone
        5: CURRENT, 7: STALE, 9: FINISHED,  # fb-backends: 10.244.1.7 current, 10.244.1.5 gone (one in TIME_WAIT)
        8: NOT_DNATED,  # UDP to the ClusterIP itself
        10: CURRENT,  # NodePort from outside, masqueraded
    }  # 11-13: icmp, and flows out of the cluster the rules never DNAT (one trace per destination said so)
    assert judged[4].reaches == "10.244.0.9:53" and judged[4].chosen == ("10.244.0.2:53", "10.244.0.3:53")
    assert judged[8].service == "kube-system/kube-dns:dns"
    # A flow out of the cluster is unchanged when asked about directly.
    [ntp] = table.flows_to("203.0.113.123", 123, "udp")
    assert Judge(fb_tracer).judge(ntp).status == UNCHANGED  # type: ignore[union-attr]


def test_flows_are_grouped_by_what_a_trace_and_a_filter_see() -> None:
    table = load_path(FB_FLOWS)
    dns = table.flows_to("10.96.0.10", 53, "udp")
    assert sorted(g.lines for g in dns) == [(2,), (3,), (4,), (6,), (8,)]
    [stale] = [g for g in dns if g.lines == (4,)]
    assert (stale.src, stale.reaches, stale.dnated, stale.state) == ("10.244.1.12", "10.244.0.9:53", True, None)
    assert table.flows_to("10.96.0.10", 53, "tcp") == [] and table.flows_to("10.96.0.10", 9153) == []
    # Same client, same endpoint: one group, whatever the source ports.
    lines = FB_FLOWS.read_text().splitlines()
    twice = "\n".join([lines[3], lines[3].replace("52011", "52012")]) + "\n"
    [group] = load(twice).flows_to("10.96.0.10")
    assert group.lines == (1, 2)


def test_the_asked_destinations_flows_are_the_same_when_the_reader_kept_them() -> None:
    # `focus`: the reader keeps the asked destinations' flow words while it reads (chunks, lines read alone, other
    # shapes of one key, lines skipped by --lenient); flows_to must find exactly what the index finds.
    from bench.bench_conntrack import synthesize

    lines = synthesize(3000).splitlines()
    lines[40] = lines[40].replace(" src=", "  src=", 1)  # (another key, the same shape)
    lines[1500] = lines[1500].replace("dport=", "dport=x", 1)  # (skipped)
    lines[2200] = lines[2200].replace("mark=0", "mark=1")  # (read alone: a value not proven yet)
    text = "\n".join(lines) + "\n"
    asked = ["10.96.0.10", "192.168.49.2", "10.96.0.1", "10.101.234.168", "10.244.0.45"]
    flows = [(53, "udp"), (53, "tcp"), (30904, "tcp"), (443, "tcp"), (8080, "udp"), (0, "icmp")]
    focus = [(ip, port, proto) for ip in asked for port, proto in flows[:4]] + [("fd00::1", 53, "udp"), ("x", 1, "tcp")]
    plain, kept = load(text, lenient=True), load(text, lenient=True, focus=focus)
    assert plain.skipped == kept.skipped
    for ip in asked:
        for port, proto in [*flows, (None, None), (443, None), (None, "udp")]:
            assert kept.flows_to(ip, port, proto) == plain.flows_to(ip, port, proto), (ip, port, proto)
    assert sum(len(g.lines) for g in kept.flows_to("10.96.0.10", 53, "udp")) > 300
    one = load(text, lenient=True, focus=[("10.96.0.10", 53, "udp")])  # (one flow per protocol: kept lines alone)
    assert one.flows_to("10.96.0.10", 53, "udp") == plain.flows_to("10.96.0.10", 53, "udp")
    assert one.flows_to("10.96.0.10", 53, "tcp") == plain.flows_to("10.96.0.10", 53, "tcp")


@pytest.mark.parametrize("block", [1, 333, 20_000])
def test_a_table_read_a_block_at_a_time_is_the_table_read_at_once(block: int,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # The reader takes a big file a block of lines at a time (reader._BLOCK_BYTES): a key's lines, its chunks, the
    # values proven and the lines refused then span blocks. Nothing may depend on where a block ends.
    from bench.bench_conntrack import synthesize
    from iptrace.conntrack import reader

    lines = synthesize(3000).splitlines()
    lines[40] = lines[40].replace(" src=", "  src=", 1)  # (another key, the same shape)
    lines[1500] = lines[1500].replace("dport=", "dport=x", 1)  # (a damaged line)
    lines[2200] = lines[2200].replace("mark=0", "mark=1")  # (read alone: a value not proven yet)
    lines[2600:2600] = ["", "# a comment", ""]
    texts = ["\n".join(lines) + "\n", "\n".join(lines), "\n".join(lines[:1500] + lines[1501:-1]) + "\n\n"]
    asked = [("10.96.0.10", 53, "udp"), ("192.168.49.2", 30904, "tcp"), ("10.96.0.1", 443, "tcp")]

    def outcome(text: str) -> object:
        try:
            load(text, source="ct.txt")
        except ParseError as exc:
            strict = str(exc)
        else:
            strict = ""
        table = load(text, source="ct.txt", lenient=True, focus=asked)
        flows = [table.flows_to(ip, port, proto) for ip, port, proto in asked]
        return (strict, table.skipped, table.warnings, len(table), list(table.entries()), table.destinations(),
                [table.flows_to(ip) for ip in table.destinations()], flows,
                [table.line_text(n) for n in range(1, text.count("\n") + 2)])

    at_once = [outcome(text) for text in texts]
    monkeypatch.setattr(reader, "_BLOCK_BYTES", block)
    assert [outcome(text) for text in texts] == at_once
    assert at_once[0][0].startswith("ct.txt:1501:")  # type: ignore[index]
    assert at_once[2][0] == ""  # type: ignore[index]


# ------------------------------------------------------------------------------------------------ deletion


def test_one_filter_per_stale_endpoint_when_it_matches_exactly_the_stale_entries() -> None:
    table = load_path(FB_FLOWS)
    dns = table.flows_to("10.96.0.10", 53, "udp")
    stale = [g for g in dns if g.reply_src == "10.244.0.9"]
    [f] = plan_deletion(stale, dns, table.entry_at, still_chosen=["10.244.0.2:53", "10.244.0.3:53"])
    assert f.command() == "conntrack -D -p udp --orig-dst 10.96.0.10 --orig-port-dst 53 --reply-src 10.244.0.9"
    assert [e.line for e in table.to_address("10.96.0.10") if f.matches(e)] == [4, 6]
    # Only one client asked about: the filter names it.
    [g] = plan_deletion(stale[:1], dns, table.entry_at, orig_src="10.244.1.12")
    assert "--orig-src 10.244.1.12 " in g.command()
    assert [e.line for e in table.to_address("10.96.0.10") if g.matches(e)] == [4]


def test_a_filter_that_would_catch_more_falls_back_to_exact_entries() -> None:
    table = load_path(FB_FLOWS)
    web = table.flows_to("10.101.234.168", 5001, "tcp")
    stale = [g for g in web if g.lines == (7,)]  # the TIME_WAIT entry (line 9) has the same endpoint: keep it
    filters = plan_deletion(stale, web, table.entry_at)
    assert [f.command() for f in filters] == [
        "conntrack -D -p tcp --orig-src 10.244.2.5 --orig-dst 10.101.234.168 --orig-port-src 40514 "
        "--orig-port-dst 5001 --reply-src 10.244.1.5 --reply-port-src 8001"]
    assert [e.line for e in table.to_address("10.101.234.168") if filters[0].matches(e)] == [7]
    # An endpoint the rules still choose for some flow: never a filter on it alone (future flows would match).
    dns = table.flows_to("10.96.0.10", 53, "udp")
    current = [g for g in dns if g.lines == (2,)]
    assert plan_deletion(current, current, table.entry_at, still_chosen=["10.244.0.2:53"]) == (one(table.entry_at(2)),)


def test_ipv6_and_zones_in_commands() -> None:
    entry = read("ipv6     10 udp      17 29 src=fd00::1 dst=fd00::10 sport=1 dport=53 [UNREPLIED] src=fd00::9 "
                 "dst=fd00::1 sport=53 dport=1 mark=0 zone=5 use=1\n")[0]
    assert one(entry).command() == ("conntrack -D -f ipv6 -p udp --orig-src fd00::1 --orig-dst fd00::10 "
                                    "--orig-port-src 1 --orig-port-dst 53 --reply-src fd00::9 --reply-port-src 53 "
                                    "--zone 5")
    assert DeleteFilter("ipv6", "udp", "fd00::10", 53, zone=5).matches(entry)
    assert not DeleteFilter("ipv6", "udp", "fd00::10", 53, zone=0).matches(entry)
    assert not DeleteFilter("ipv4", "udp", "fd00::10", 53).matches(entry)


# The kernel's /proc/net/nf_conntrack prints GRE's own timeouts between the entry's timeout and its original
# tuple (nf_conntrack_proto_gre.c, gre_print_conntrack); `conntrack -L` does not. Seen on a real kernel: see
# test_conntrack_kernel.py's GRE test.
GRE_PROC = ("ipv4     2 gre      47 29 timeout=30, stream_timeout=180 src=198.18.5.{n} dst=198.18.0.1 srckey=0x0 "
            "dstkey=0x0 [UNREPLIED] src=198.18.0.1 dst=198.18.5.{n} srckey=0x0 dstkey=0x0 mark=0 zone=0 use=2")
UDP_PROC = ("ipv4     2 udp      17 29 src=198.18.128.9 dst=198.19.0.53 sport=41000 dport=53 src=198.18.128.10 "
            "dst=198.18.128.9 sport=5353 dport=41000 mark=0 zone=0 use=2")


@pytest.mark.parametrize("many", [1, 2000], ids=["one-gre-flow", "a-table-of-gre-flows"])
def test_proc_table_with_gre_flows_is_read(many: int):
    """One GRE flow (a PPTP or GRE tunnel through the node) made the whole /proc table unreadable:
    'unexpected timeout=; expected src=… (the original tuple)'. Its timeouts are read and checked, its tuple kept."""
    text = "\n".join([GRE_PROC.format(n=n % 250) for n in range(many)] + [UDP_PROC]) + "\n"
    table = load(text, source="nf_conntrack", focus=[("198.19.0.53", 53, "udp")])
    assert [g.reply_src for g in table.flows_to("198.19.0.53", 53, "udp")] == ["198.18.128.10"]
    gre = next(iter(load(text, source="nf_conntrack").entries()))
    assert (gre.proto, gre.timeout, gre.original.src, gre.original.fields) == (
        "gre", 29, "198.18.5.0", (("srckey", "0x0"), ("dstkey", "0x0")))


def test_proc_gre_timeouts_are_checked():
    with pytest.raises(ParseError) as caught:
        load(GRE_PROC.format(n=1).replace("timeout=30,", "timeout=30") + "\n", source="nf_conntrack")
    assert (caught.value.line, caught.value.column) == (1, 35)
    assert "expected a number followed by a comma" in str(caught.value)
