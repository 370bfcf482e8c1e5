"""`-o json` written in pieces (render.json.dumps_pieces, `services -o json` item by item): the very bytes
render.json.dumps prints for the whole list."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench import synth
from iptrace.cli import main
from iptrace.render.json import LARGE_LIST, dumps, dumps_pieces

CLUSTER = Path(__file__).resolve().parent / "data" / "cluster"


@pytest.mark.parametrize("count", [0, 1, LARGE_LIST, LARGE_LIST + 1, 1000, 3 * 128 + 7])
def test_pieces_are_dumps(count: int) -> None:
    items = [{"n": i, "text": f"é{i}", "share": 1 / (i + 3), "list": [i, None, True]} for i in range(count)]
    pieces = list(dumps_pieces(iter(items), count))
    assert "".join(pieces) == dumps(items)
    if count > LARGE_LIST:
        assert len(pieces) > 1  # (never the whole text at once)


def test_pieces_check_the_count() -> None:
    with pytest.raises(ValueError):
        list(dumps_pieces(iter([{}] * 600), 601))
    with pytest.raises(ValueError):
        list(dumps_pieces(iter([{}] * 602), 601))


@pytest.fixture(scope="module")
def big_dump(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """More Service ports than LARGE_LIST: the one-item-a-line form, written in several pieces."""
    path = tmp_path_factory.mktemp("json") / "big.txt"
    path.write_text(synth.render(synth.scale(LARGE_LIST + 40, 2), node_ips=["192.168.0.10"],
                                 pod_cidr="10.244.0.0/16", comments=True))
    return path


@pytest.mark.parametrize("cluster", [False, True])
def test_services_json_streamed_is_dumps(big_dump: Path, cluster: bool) -> None:
    args = ["services", str(big_dump), "-o", "json"]
    if cluster:
        args += ["--cluster", str(CLUSTER / "services.json"), "--cluster", str(CLUSTER / "endpointslices.json")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    items = json.loads(result.stdout)
    assert len(items) > LARGE_LIST
    assert result.stdout == dumps(items)
    if cluster:
        assert all("api" in i and "findings" in i for i in items)
        assert any(i["findings"] for i in items)
