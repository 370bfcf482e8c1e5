"""`trace` and `explain` with several destinations (--dst repeated, --dst-file): every answer equals the answer to
that destination asked alone, in input order; a bad line names FILE:LINE and what was expected, the others are
still answered, and the exit status says so; one destination prints exactly what it always did."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from iptrace.cli import main
from iptrace.collect import store
from tests.conftest import SAMPLES

FB = str(SAMPLES / "nodeport-fb-backends.txt")
# The article's addresses: a working ClusterIP port, its targetPort and nodePort used on the ClusterIP, a
# NodePort on the node, kube-dns over UDP, and an address no rule knows.
ASKED = ["10.101.234.168:5001", "10.101.234.168:8001", "10.101.234.168:30904", "192.168.49.2:30904",
         "10.96.0.10:53/udp", "10.0.0.99:80"]


def invoke(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), input=stdin)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def alone(command: str, dst: str, *extra: str) -> tuple[int, str]:
    host, _, proto = dst.partition("/")
    code, out, _ = invoke(command, FB, "--dst", host, *(("--proto", proto) if proto else ()), *extra)
    return code, out


@pytest.mark.parametrize("command", ["trace", "explain"])
def test_every_answer_is_the_answer_alone_in_input_order(command: str, tmp_path: Path) -> None:
    listing = tmp_path / "asked.txt"
    listing.write_text("# the addresses people asked about\n\n" + "\n".join(f"{a}   # #{i}" for i, a in
                                                                           enumerate(ASKED)) + "\n")
    code, out, err = invoke(command, FB, "--dst-file", str(listing), "--node-ip", "192.168.49.2", "-o", "json")
    assert err == ""
    answers = json.loads(out)
    assert len(answers) == len(ASKED)
    codes = []
    for dst, answer in zip(ASKED, answers, strict=True):
        one_code, one = alone(command, dst, "--node-ip", "192.168.49.2", "-o", "json")
        codes.append(one_code)
        assert answer == json.loads(one), dst
    # explain: 3 when an explanation has an error (the targetPort on the ClusterIP is one); trace: 0.
    assert code == (3 if command == "explain" else 0) == max(codes)


@pytest.mark.parametrize("command", ["trace", "explain"])
def test_a_destination_asked_again_is_answered_again(command: str, tmp_path: Path) -> None:
    # (the second time from the first answer: both must still be the answer alone, each in its place)
    asked = [ASKED[1], ASKED[0], f"{ASKED[1]}/tcp", ASKED[4], ASKED[1]]
    listing = tmp_path / "asked.txt"
    listing.write_text("\n".join(asked) + "\n")
    _code, out, _ = invoke(command, FB, "--dst-file", str(listing), "--node-ip", "192.168.49.2", "-o", "json")
    answers = json.loads(out)
    one = json.loads(alone(command, ASKED[1], "--node-ip", "192.168.49.2", "-o", "json")[1])
    assert [answers[i] for i in (0, 2, 4)] == [one] * 3
    assert answers[1] == json.loads(alone(command, ASKED[0], "--node-ip", "192.168.49.2", "-o", "json")[1])
    assert answers[3] == json.loads(alone(command, ASKED[4], "--node-ip", "192.168.49.2", "-o", "json")[1])
    _code, text, _ = invoke(command, FB, "--dst-file", str(listing), "--node-ip", "192.168.49.2")
    headers = [line for line in text.splitlines() if line.startswith("=== ")]
    assert headers == [f"=== {a if '/' in a else a + '/tcp'} ({listing}:{i}) ===" for i, a in enumerate(asked, 1)]


@pytest.mark.parametrize("command", ["trace", "explain"])
@pytest.mark.parametrize("dump", ["nodeport-fb-backends.txt", "nodeport-fb-backends-nft.nft",
                                  "nodeport-fb-backends-nft.json"])
def test_a_large_batch_prints_each_answer_alone_one_a_line(command: str, dump: str, tmp_path: Path) -> None:
    # Past LARGE_LIST answers each prints compactly on its own line, its paths joined from rule texts encoded
    # once (render.json.PathTexts): the bytes must be those of the answer alone, compactly encoded.
    from iptrace.render.json import LARGE_LIST

    path = str(SAMPLES / dump)
    asked = [ASKED[i % len(ASKED)] for i in range(LARGE_LIST + 7)] + ["nonsense"]
    listing = tmp_path / "asked.txt"
    listing.write_text("\n".join(asked) + "\n")
    _code, out, _ = invoke(command, path, "--dst-file", str(listing), "--node-ip", "192.168.49.2", "-o", "json")
    lines = out.split("\n")
    assert lines[0] == "[" and lines[-2:] == ["]", ""] and len(lines) == len(asked) + 3
    docs = {}
    for dst in ASKED:
        host, _, proto = dst.partition("/")
        _one_code, one, _ = invoke(command, path, "--dst", host, *(("--proto", proto) if proto else ()),
                                   "--node-ip", "192.168.49.2", "-o", "json")
        docs[dst] = json.dumps(json.loads(one), ensure_ascii=False)
    for i, (dst, line) in enumerate(zip(asked[:-1], lines[1:-3], strict=True)):
        assert line == "  " + docs[dst] + ",", (i, dst)
    assert json.loads(lines[-3])["error"].startswith(f"{listing}:{len(asked)}:1: found 'nonsense'")


@pytest.mark.parametrize("command", ["trace", "explain"])
def test_text_has_a_header_per_destination(command: str) -> None:
    _code, out, _ = invoke(command, FB, "--dst", ASKED[0], "--dst", ASKED[4])
    headers = [line for line in out.splitlines() if line.startswith("=== ")]
    assert headers == ["=== 10.101.234.168:5001/tcp (--dst) ===", "=== 10.96.0.10:53/udp (--dst) ==="]
    first = out.split("=== 10.96.0.10:53/udp (--dst) ===\n", 1)[0].split("\n", 1)[1]
    assert first.rstrip("\n") == alone(command, ASKED[0])[1].rstrip("\n")


def test_one_destination_prints_what_it_always_did() -> None:
    """One --dst prints the lone answer; a --dst-file of one line, as one of ten, an array (or headed text): a
    script reading the file's answers must not depend on how many lines it has."""
    for command in ("trace", "explain"):
        for args in (["--dst", "10.101.234.168:8001"], ["--dst", "10.101.234.168:8001", "-o", "json"]):
            code, out, _ = invoke(command, FB, *args)
            assert not out.startswith(("[", "===")), out[:40]
            file_code, from_file, _ = invoke(command, FB, "--dst-file", "-", *args[2:], stdin=args[1] + "\n")
            assert file_code == code
            if args[2:]:
                assert json.loads(from_file) == [json.loads(out)]
            else:
                assert from_file == f"=== {args[1]}/tcp (<stdin>:1) ===\n{out}", from_file[:80]
    code, out, _ = invoke("trace", FB, "--dst", "10.101.234.168:5001", "-o", "json")
    assert code == 0 and json.loads(out)["packet"]["dport"] == 5001


def test_a_bad_line_is_named_and_the_others_answered(tmp_path: Path) -> None:
    listing = tmp_path / "asked.txt"
    listing.write_text("10.101.234.168:5001\nnot-an-address\n10.101.234.168:5001/icmp\n10.96.0.10:99999\n"
                       "[fd00::10]:53/udp\n10.96.0.10:53/udp\n")
    code, out, err = invoke("explain", FB, "--dst-file", str(listing), "-o", "json")
    assert code == 1  # a question was bad: 1 wins over 3
    answers = json.loads(out)
    assert [a.get("where") for a in answers] == [None, f"{listing}:2", f"{listing}:3", f"{listing}:4",
                                                 f"{listing}:5", None]
    expected = "expected IP:PORT or IP:PORT/proto, e.g. 10.96.0.10:53/udp or [fd00::10]:443"
    assert answers[1] == {"dst": "not-an-address", "where": f"{listing}:2",
                          "error": f"{listing}:2:1: found 'not-an-address'; {expected}"}
    assert "unknown protocol 'icmp'; expected tcp, udp or sctp" in answers[2]["error"]
    assert "port 99999 is out of range; expected 1-65535" in answers[3]["error"]
    assert "IPv6 address" in answers[4]["error"] and "ip6tables-save" in answers[4]["error"]
    assert answers[0]["verdict"] == "DNAT" and answers[5]["verdict"] == "DNAT"
    assert err.splitlines() == [f"Error: {a['error']}" for a in answers if "error" in a]
    text_code, text, _ = invoke("explain", FB, "--dst-file", str(listing))
    assert text_code == 1 and f"=== not-an-address ({listing}:2) ===\nError: {listing}:2:1: found" in text


def test_a_lone_bad_line_is_an_error() -> None:
    code, out, err = invoke("trace", FB, "--dst-file", "-", "-o", "json", stdin="# nothing but\n10.1.2.3\n")
    said = "<stdin>:2:1: found '10.1.2.3'; expected IP:PORT or IP:PORT/proto, e.g. 10.96.0.10:53/udp or [fd00::10]:443"
    assert code == 1 and json.loads(out) == [{"dst": "10.1.2.3", "where": "<stdin>:2", "error": said}]
    assert err == f"Error: {said}\n"
    code, _, err = invoke("trace", FB, "--dst-file", "-", stdin="# only comments\n\n")
    assert code == 2 and "Missing option '--dst'" in err
    code, _, err = invoke("trace", FB, "--dst-file", "missing.txt")
    assert code == 1 and err == "Error: missing.txt: no such file or directory\n"


def test_both_families_of_a_collected_node(tmp_path: Path) -> None:
    """A node directory answers IPv4 questions from iptables-save.txt and IPv6 ones from ip6tables-save.txt."""
    node = tmp_path / "node-1"
    v6 = (SAMPLES / "ipv6.txt").read_text()
    store.write_node_dir(node, {store.DUMP_FILE: Path(FB).read_bytes(), store.IP6_DUMP_FILE: v6.encode()},
                         {"node": "node-1", "addresses": ["192.168.49.2"]})
    asked_v6 = _a_v6_service(v6)
    code, out, err = invoke("trace", str(node), "--dst", "10.101.234.168:5001", "--dst", asked_v6, "-o", "json")
    assert code == 0, err
    answers = json.loads(out)
    assert answers[0]["packet"]["dst"] == "10.101.234.168" and ":" in answers[1]["packet"]["dst"]
    for dst, answer in zip(["10.101.234.168:5001", asked_v6], answers, strict=True):
        assert answer == json.loads(invoke("trace", str(node), "--dst", dst, "-o", "json")[1])


def _a_v6_service(dump: str) -> str:
    import re

    found = re.search(r"-d ([0-9a-f:]+)/128 -p tcp .*--dport (\d+)", dump)
    assert found is not None
    return f"[{found.group(1)}]:{found.group(2)}"


def test_help_says_how() -> None:
    for command in ("trace", "explain"):
        code, out, _ = invoke(command, "--help")
        assert code == 0 and "--dst-file" in out and "--dst-file addresses.txt" in out
    assert "1 when a destination could not be explained" in " ".join(invoke("explain", "--help")[1].split())


@pytest.mark.parametrize(("args", "named"), [
    (["trace", "-", "--dst-file", "-"], "DUMP and --dst-file"),
    (["explain", "-", "--dst-file", "-"], "DUMP and --dst-file"),
    # The silent one: the dump took all of stdin, the table read nothing, and no flow was checked.
    (["explain", "-", "--dst", "10.96.0.10:53/udp", "--conntrack", "-"], "DUMP and --conntrack"),
    (["explain", FB, "--dst-file", "-", "--conntrack", "-"], "--dst-file and --conntrack"),
    (["explain", "-", "--dst", "10.96.0.10:53/udp", "--cluster", "-"], "DUMP and --cluster"),
    (["services", "-", "--cluster", "-"], "DUMP and --cluster"),
])
def test_only_one_input_is_read_from_stdin(args: list[str], named: str) -> None:
    """Two inputs given as `-`: the first read takes all of stdin and the second reads nothing, so it must be a
    usage error rather than an answer made with an empty table (or the dump's lines read as destinations)."""
    code, out, err = invoke(*args, stdin=(SAMPLES / "nodeport-fb-backends.txt").read_text())
    assert (code, out) == (2, ""), err
    assert f"Error: only one of {named} can be read from stdin (-); give the other as a file" in err


@pytest.mark.parametrize(("args", "said"), [
    (["audit", "-", "--cluster", "-"], "only one of SOURCES and --cluster can be read from stdin (-)"),
    (["audit", "--merge", "-", "-"], "only one of SOURCES can be read from stdin (-)"),
    (["audit", "-", "-"], "only one of SOURCES can be read from stdin (-)"),
    (["diff", "-", FB, "--cluster", "-"], "only one of A and --cluster can be read from stdin (-)"),
])
def test_audit_and_diff_read_stdin_once(args: list[str], said: str) -> None:
    """The second `-` read nothing: the dump was read as cluster JSON ('invalid JSON at <stdin>:1:1'), a merged
    document as empty ('-: not JSON')."""
    code, out, err = invoke(*args, stdin=(SAMPLES / "nodeport-fb-backends.txt").read_text())
    assert (code, out) == (2, ""), err
    assert f"Error: {said}; give the other as a file" in err


@pytest.mark.parametrize("command", ["trace", "explain"])
def test_a_service_named_in_a_file_is_asked_as_with_dst(command: str, tmp_path: Path) -> None:
    """Every way --dst names a Service works on a --dst-file line: NS/NAME:PORT-NAME (with or without /proto)
    and NS/NAME:PORT were read as an address with the unknown protocol 'fb-backends:ka-port'."""
    names = ["default/fb-backends:ka-port", "default/fb-backends:ka-port/tcp", "default/fb-backends:5001",
             "fb-backends.default:5001"]
    listing = tmp_path / "names.txt"
    listing.write_text("\n".join(names) + "\n")
    code, out, err = invoke(command, FB, "--dst-file", str(listing), "-o", "json")
    assert code == 0, err
    answers = json.loads(out)
    alone_out = alone(command, "10.101.234.168:5001", "-o", "json")[1]
    assert [json.dumps(a, sort_keys=True) for a in answers] == [json.dumps(json.loads(alone_out),
                                                                           sort_keys=True)] * 4
    for name in names:
        assert f"note: {name} is default/fb-backends:ka-port at 10.101.234.168:5001/tcp" in err


def test_a_bad_line_names_the_column_of_what_is_wrong() -> None:
    """SPEC: an error names file:line:column. The column is 1-based and points at the part that is wrong (the
    protocol, the port) or at the start of the entry, past leading blanks; a Service name the rules lack too."""
    asked = ("  10.96.0.1:443/xyz\n10.96.0.1:99999\n   10.96.0.1\n10.96.0.1:abc  # note\n\tfd00::1:80\n"
             "    nope.default:80\n")
    code, out, err = invoke("trace", FB, "--dst-file", "-", "-o", "json", stdin=asked)
    assert code == 1
    starts = ["<stdin>:1:17: found", "<stdin>:2:11: found", "<stdin>:3:4: found", "<stdin>:4:11: found",
              "<stdin>:5:2: found", "<stdin>:6:5: nope.default:80: no Service default/nope"]
    assert [a["error"][:len(start)] for a, start in zip(json.loads(out), starts, strict=True)] == starts
    assert [a["where"] for a in json.loads(out)] == [f"<stdin>:{n}" for n in range(1, 7)]
    assert "port 'abc' is not a number" in err
