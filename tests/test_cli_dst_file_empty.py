"""A --dst-file without a question in it names the file (it said only that --dst was missing, as if no file were
given). Two inputs on `-` (`trace - --dst-file -`): tests/test_cli_questions.py."""

from __future__ import annotations

from click.testing import CliRunner

from iptrace.cli import main
from tests.conftest import SAMPLES

DUMP = SAMPLES / "nodeport-fb-backends.txt"


def test_a_question_file_without_a_question_names_the_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    empty = tmp_path / "questions.txt"
    empty.write_text("# nothing yet\n\n")
    for command in ("trace", "explain"):
        result = CliRunner().invoke(main, [command, str(DUMP), "--dst-file", str(empty)])
        assert result.exit_code == 2, result.output
        assert result.output.splitlines()[-1] == (f"Error: Missing option '--dst': {empty} has no destination (only "
                                                  "blank lines and # comments); expected one IP:PORT or IP:PORT/proto "
                                                  "a line")
    # Near-miss: one question on stdin, the dump a file.
    result = CliRunner().invoke(main, ["trace", str(DUMP), "--dst-file", "-"], input="10.101.234.168:5001\n")
    assert result.exit_code == 0 and "DNAT → 10.244.1.7:8001" in result.output
