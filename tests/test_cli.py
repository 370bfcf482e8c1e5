"""The command line: exit statuses, exact error text, help with examples, JSON that `jq` can read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from iptrace.cli import main

DUMP = "*filter\n:INPUT ACCEPT [0:0]\n:KUBE-FOO - [0:0]\n-A INPUT -j KUBE-FOO\n-A KUBE-FOO -s 10.0.0.0/8 -j ACCEPT\nCOMMIT\n"


@pytest.fixture
def dump(tmp_path):
    p = tmp_path / "node.txt"
    p.write_text(DUMP)
    return p


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def test_every_command_has_help_with_an_example() -> None:
    assert main.commands
    for name, command in main.commands.items():
        result = run(name, "--help")
        assert result.exit_code == 0, name
        assert "Example" in result.output, f"{name} --help shows no example"
        assert f"iptrace {name}" in result.output, name
        assert isinstance(command, click.Command)


def test_parse_text_json_and_save(dump) -> None:
    text = run("parse", str(dump))
    assert text.exit_code == 0
    assert "2 rules" in text.output and "*filter" in text.output
    data = json.loads(run("parse", str(dump), "-o", "json").output)
    assert data["rule_count"] == 2
    assert data["tables"][0]["chains"][1]["rules"][0]["matches"][0]["options"][0] == {
        "name": "-s", "values": ["10.0.0.0/8"], "negated": False}
    assert run("parse", "--save", str(dump)).output == DUMP


def test_parse_from_stdin() -> None:
    result = run("parse", "-", "-o", "json", input=DUMP)
    assert result.exit_code == 0
    assert json.loads(result.output)["source"] == "<stdin>"


def test_bad_input_is_one_error_line_with_position(tmp_path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text('*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m comment --comment "oops\nCOMMIT\n')
    result = CliRunner().invoke(main, ["parse", str(bad)])
    assert result.exit_code == 1
    first = result.stderr.splitlines()[0] if hasattr(result, "stderr") else result.output.splitlines()[0]
    assert first == (f"Error: {bad}:3:31: unterminated quoted string; expected a closing '\"' before the end of the "
                     "line (--lenient reads past it and analyses the rest)")
    assert "Traceback" not in result.output
    # What --lenient cannot read past is not said to be (another tool's listing is no dump at all).
    listing = tmp_path / "listing.txt"
    listing.write_text("Chain INPUT (policy ACCEPT)\ntarget     prot opt source               destination\n")
    result = CliRunner().invoke(main, ["parse", str(listing)])
    assert result.exit_code == 1 and "--lenient" not in result.output
    assert CliRunner().invoke(main, ["parse", "--lenient", str(listing)]).exit_code == 1
    # A dump cut in the middle of a line (a paste that stopped): said so, and that --lenient reads the rest.
    cut = tmp_path / "cut.txt"
    cut.write_text("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACC")
    result = CliRunner().invoke(main, ["services", str(cut)])
    assert result.exit_code == 1 and result.output.splitlines()[0].endswith(
        "(the file ends in the middle of this line: it looks truncated) (--lenient reads past it and analyses the "
        "rest)")
    assert CliRunner().invoke(main, ["services", "--lenient", str(cut)]).exit_code == 0


def test_lenient_lists_what_was_skipped(tmp_path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text('*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\n-A INPUT -m comment --comment "oops\n')
    result = run("parse", "--lenient", str(bad))
    assert result.exit_code == 0
    assert "skipped with --lenient (2)" in result.output
    assert "line 4: unterminated quoted string" in result.output


def test_lenient_skips_a_rule_whose_value_iptables_restore_would_refuse(tmp_path) -> None:
    """A rule the grammar reads but whose value iptables-restore refuses (`-d 10.101.234.1689/32`) is found when the
    rule is compiled: strictly an error naming file:line:column; with --lenient that rule is skipped and listed
    (in line order with the unreadable ones), and the rest of the dump is analysed."""
    lines = (Path(__file__).parent.parent / "sample_dumps" / "nodeport-fb-backends.txt").read_text().split("\n")
    at = next(i for i, line in enumerate(lines) if line.startswith("-A KUBE-SERVICES -d 10.101.234.168/32"))
    lines[at] = lines[at].replace("10.101.234.168/32", "10.101.234.1689/32")
    only = tmp_path / "only.txt"
    only.write_text("\n".join(lines))
    strict = CliRunner().invoke(main, ["services", str(only)])
    assert strict.exit_code == 1
    assert strict.stderr.startswith(f"Error: {only}:{at + 1}:21: cannot read address '10.101.234.1689/32'")
    lines.insert(at + 1, '-A KUBE-SERVICES -m comment --comment "oops')
    bad = tmp_path / "bad.txt"
    bad.write_text("\n".join(lines))
    result = CliRunner().invoke(main, ["services", "--lenient", str(bad), "-o", "json"])
    assert result.exit_code == 0, result.output
    err = result.stderr.splitlines()
    assert err[0] == f"note: {bad}: read with --lenient past 2 problems (what each names is left out or assumed):"
    assert err[1].startswith(f"  line {at + 1}: cannot read address '10.101.234.1689/32'")
    assert err[2].startswith(f"  line {at + 2}: unterminated quoted string")
    doc = json.loads(result.stdout)
    fb = [s for s in doc if (s["namespace"], s["name"]) == ("default", "fb-backends")]
    assert fb and all(e["ip"] in ("10.244.1.7", "10.244.2.3") for s in fb for e in s["endpoints"])
    assert len(doc) > 1  # (the other Services' ports are there too)
    parsed = run("parse", "--lenient", str(bad))
    assert "skipped with --lenient (2)" in parsed.output


def test_an_analysis_with_lenient_says_on_stderr_what_it_read_past(tmp_path) -> None:
    """`services`/`trace`/`explain --lenient` on a damaged dump: the answer on stdout (JSON `jq` can read), and on
    stderr how many problems were passed over, the first few with their lines, and how to list them all."""
    lines = ["*nat", ":PREROUTING ACCEPT [0:0]", ":KUBE-SERVICES - [0:0]", "-A PREROUTING -j KUBE-SERVICES"]
    lines += [f'-A KUBE-SERVICES -d 10.96.0.{i}/32 -p tcp -m comment --comment "oops{i}' for i in range(1, 6)]
    bad = tmp_path / "bad.txt"
    bad.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(main, ["services", "--lenient", str(bad), "-o", "json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == []
    err = result.stderr.splitlines()
    assert err[0] == f"note: {bad}: read with --lenient past 6 problems (what each names is left out or assumed):"
    assert err[1].startswith("  line 5: unterminated quoted string")
    assert err[3].startswith("  line 7: unterminated quoted string")
    assert err[4] == f"  … and 3 more (iptrace parse --lenient {bad} lists them all)"
    assert len(err) == 5
    one = tmp_path / "one.txt"
    one.write_text("*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j ACCEPT\n")  # no COMMIT
    traced = CliRunner().invoke(main, ["trace", "--lenient", str(one), "--dst", "10.96.0.1:80"])
    assert traced.exit_code == 0
    assert traced.stderr.splitlines() == [
        f"note: {one}: read with --lenient past 1 problem (what each names is left out or assumed):",
        "  line 4: table nat opened at line 1 has no COMMIT (the dump looks truncated); expected 'COMMIT' at its end"]
    assert "ACCEPT" in traced.stdout
    good = tmp_path / "good.txt"
    good.write_text(DUMP)
    clean = CliRunner().invoke(main, ["services", "--lenient", str(good)])
    assert clean.exit_code == 0 and clean.stderr == ""


def test_missing_file_and_usage_errors(tmp_path) -> None:
    result = CliRunner().invoke(main, ["parse", str(tmp_path / "nope.txt")])
    assert result.exit_code == 1
    assert result.output == f"Error: {tmp_path / 'nope.txt'}: no such file or directory\n"
    assert CliRunner().invoke(main, ["parse"]).exit_code == 2
    assert CliRunner().invoke(main, ["parse", "x", "-o", "yaml"]).exit_code == 2


@pytest.mark.parametrize("command", ["trace", "explain"])
def test_a_bad_source_names_what_src_takes(dump, command: str) -> None:
    result = CliRunner().invoke(main, [command, str(dump), "--dst", "10.96.0.10:53", "--src", "pods"])
    assert result.exit_code == 2
    assert "Invalid value for --src: 'pods': expected an IP address or one of pod, node, external" in result.output


def test_help_does_not_import_heavy_modules() -> None:
    code = ("import sys; from iptrace.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('lark', 'paramiko', 'kubernetes', 'rich') if m in sys.modules]\n"
            "print('HEAVY=' + ','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "HEAVY="


def test_services_of_an_nft_listing_imports_only_what_it_reads() -> None:
    """A dump file's `services` imports neither the other dataplane's reader (iptables' loader: read_dump is
    iptrace.dumpfile, below both), nor the JSON reader of an nft listing, nor the node-directory store."""
    nft = Path(__file__).resolve().parent.parent / "sample_dumps" / "nodeport-fb-backends-nft.nft"
    code = ("import sys; from iptrace.cli import main\n"
            f"try:\n    main(['services', {str(nft)!r}, '-o', 'json'])\nexcept SystemExit:\n    pass\n"
            "print('LOADED=' + ','.join(m for m in ('iptrace.iptables.loader', 'iptrace.nftables.json_loader', "
            "'iptrace.collect.store', 'gzip') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "LOADED="


def test_the_iptables_packages_save_stays_its_function_once_its_printer_is_imported() -> None:
    """iptrace.iptables imports its loader and printer on first use: a submodule named like one of the package's
    functions would replace it as the package's attribute when first imported (`save` became a module)."""
    dump = Path(__file__).resolve().parent.parent / "sample_dumps" / "nodeport-fb-backends.txt"
    code = ("import iptrace.iptables as p\n"
            f"r = p.load_path({str(dump)!r})\n"
            "print(p.save(r) == p.save(r) == p.DATAPLANE.save(r), callable(p.load), callable(p.save))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "True"]


def test_services_with_cluster_data_attaches_findings() -> None:
    root = Path(__file__).resolve().parent
    data = root / "data" / "cluster"
    args = ["services", str(root.parent / "sample_dumps" / "nodeport-fb-backends.txt"), "--node-ip", "192.168.49.2",
            "--cluster", str(data / "services.json"), "--cluster", str(data / "endpointslices.json")]
    result = CliRunner().invoke(main, [*args, "-o", "json"])
    assert result.exit_code == 0, result.output
    items = {i["service"]: i for i in json.loads(result.stdout)}
    karma = [f["id"] for f in items["default/karma-daemon:http"]["findings"]]
    assert karma == ["stale-endpoints"]
    assert items["default/fb-backends:ka-port"]["findings"] == []
    api = items["default/fb-backends:ka-port"]["api"]
    assert api["type"] == "NodePort" and api["selector"] == {"app": "fb-backends"} and api["target_port"] == 8001
    assert api["endpoint_nodes"] == {"10.244.1.7:8001": "minikube-m02", "10.244.2.3:8001": "minikube-m03"}
    text = CliRunner().invoke(main, args)
    assert "Compared with the cluster" in text.output
    assert "(missing-service)" in text.output


def test_address_family_must_match_the_dump(dump) -> None:
    result = CliRunner().invoke(main, ["trace", str(dump), "--dst", "[fd00::1]:80"])
    assert result.exit_code == 1
    assert "fd00::1 is an IPv6 address but" in result.output and "ip6tables-save" in result.output
