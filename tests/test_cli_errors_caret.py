"""How a parse error shows its line to a person: the stretch of a long line around the column, tabs kept in the
caret's line."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from iptrace.cli import main
from iptrace.errors import ParseError

FB_JSON = Path(__file__).resolve().parent.parent / "sample_dumps" / "nodeport-fb-backends-nft.json"


def test_a_long_line_is_shown_around_the_column() -> None:
    text = "x" * 1000 + "!" + "y" * 1000
    shown, caret = ParseError("bad", source="f", line=1, column=1001, text=text).with_caret().splitlines()[1:]
    assert shown == "  …" + "x" * 80 + "!" + "y" * 79 + "…"
    assert caret.index("^") == shown.index("!")
    # Near either end, the window stays inside the line: one ellipsis, the caret still under its character.
    shown, caret = ParseError("bad", column=3, text=text).with_caret().splitlines()[1:]
    assert shown == "  " + text[:160] + "…" and caret == "    ^"
    shown, caret = ParseError("bad", column=2002, text=text).with_caret().splitlines()[1:]
    assert shown == "  …" + text[-160:] and caret.index("^") == len(shown)
    # A short line is shown whole.
    assert ParseError("bad", column=2, text="ab\n").with_caret().splitlines()[1:] == ["  ab", "   ^"]


def test_tabs_before_the_column_stay_in_the_caret_line() -> None:
    _, shown, caret = ParseError("bad", column=4, text="\t\tx y").with_caret().splitlines()
    assert shown == "  \t\tx y" and caret == "  \t\t ^"


def test_a_truncated_nft_json_file_is_one_short_error(tmp_path: Path) -> None:
    # `nft -j list ruleset` writes one line: the error shows the stretch where the file was cut, not the whole
    # ruleset.
    cut = tmp_path / "cut.json"
    cut.write_text(FB_JSON.read_text()[:2000])
    result = CliRunner().invoke(main, ["services", str(cut)])
    assert result.exit_code == 1
    first, shown, caret = result.stderr.splitlines()
    assert first.startswith(f"Error: {cut}:1:") and first.endswith("(the file ends in the middle of the document: "
                                                                   "it looks truncated)")
    assert len(shown) <= 2 + 1 + 160 + 1 and shown[caret.index("^")] == '"'


SAMPLES = FB_JSON.parent


def test_a_dump_cut_in_the_middle_of_a_line_says_it_looks_truncated(tmp_path: Path) -> None:
    # A copy that stopped mid-line (a paste from an issue thread): the error on that last line says why it is
    # there, for iptables-save and nft listings alike; the same error on a line that ends does not.
    for sample, cut_at in (("nodeport-fb-backends.txt", 1500), ("nodeport-fb-backends-nft.nft", 3000)):
        text = (SAMPLES / sample).read_text()
        cut = tmp_path / sample
        cut.write_text(text[:cut_at])
        result = CliRunner().invoke(main, ["services", str(cut)])
        assert result.exit_code == 1
        first = result.stderr.splitlines()[0]
        line = text[:cut_at].count("\n") + 1
        assert first.startswith(f"Error: {cut}:{line}:"), first
        assert first.endswith("(the file ends in the middle of this line: it looks truncated) (--lenient reads past "
                              "it and analyses the rest)"), first
        cut.write_text(text[:cut_at] + "\n")
        first = CliRunner().invoke(main, ["services", str(cut)]).stderr.splitlines()[0]
        assert "middle of this line" not in first, first


_BAD_NAT = """*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-AAAA - [0:0]
:KUBE-SEP-BBBB - [0:0]
-A PREROUTING -j KUBE-SERVICES
-A OUTPUT -j KUBE-SERVICES
-A KUBE-SERVICES -d 10.96.0.5/32 -p tcp -m comment --comment "default/web:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-AAAA
-A KUBE-SVC-AAAA -s {src} -m comment --comment "default/web:http -> 10.244.1.5:8080" -j KUBE-SEP-BBBB
-A KUBE-SEP-BBBB -p tcp -m comment --comment "default/web:http" -m tcp -j DNAT --to-destination {to}
COMMIT
"""


def test_an_unreadable_value_names_its_line_and_column(tmp_path: Path) -> None:
    # iptables-restore refuses these: a trace or a view that meets one says where it is, and exits 1 (a port that
    # is not a number was an internal error, a ValueError; the others named no line).
    cases = [("10.244.1.5:x", "0.0.0.0/0", 11, 97, "port"), ("10.244.1.5:70000", "0.0.0.0/0", 11, 97, "port"),
             ("10.244.1.5:\u0663", "0.0.0.0/0", 11, 97, "port"), ("10.244.1.500:80", "0.0.0.0/0", 11, 97, "address"),
             ("[fd00::1]:80", "0.0.0.0/0", 11, 98, "IPv4"), ("10.244.1.5:80", "10.0.0.999/32", 10, 21, "address")]
    for to, src, line, column, what in cases:
        dump = tmp_path / "bad.txt"
        dump.write_text(_BAD_NAT.format(to=to, src=src))
        for args in (["trace", str(dump), "--dst", "10.96.0.5:80"], ["services", str(dump)]):
            result = CliRunner().invoke(main, args)
            assert result.exit_code == 1, (to, args, result.output)
            first, shown, caret = result.output.strip("\n").splitlines()[:3]
            assert first.startswith(f"Error: {dump}:{line}:{column}: ") and what in first, first
            assert caret.index("^") == shown.index(to.strip("[").split("]")[0] if src == "0.0.0.0/0" else src)
            assert "internal error" not in result.output


def test_control_characters_of_the_offending_line_are_not_sent_to_the_terminal() -> None:
    """A hostile or binary dump's escape sequences (a terminal title, colours) are shown as one replacement
    character each, so that the caret still stands under the column; tabs are kept."""
    text = "\x1b]0;pwned\x07\x1b[31mRED\tx!"
    shown, caret = ParseError("bad", column=len(text) - 1 + 1, text=text).with_caret().splitlines()[1:]
    assert not any((ord(c) < 32 and c != "\t") or 0x7f <= ord(c) < 0xa0 for c in shown), repr(shown)
    assert "RED\tx!" in shown and caret.index("^") == shown.index("!")
