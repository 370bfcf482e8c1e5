"""An entry reads the `via` of the kinds of client it lists only (iptrace.kube.view._Builder.entry: those that fare
differently from the external client), and its reaches are made without Reach's own constructor: the very views
made when every kind of client's path is read whole, on every sample and corpus dump."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from iptrace.cli.common import analyses_of
from iptrace.kube import view as view_module
from iptrace.kube.view import Reach

ROOT = Path(__file__).resolve().parent.parent
REALWORLD = ROOT.parent / "shared" / "corpus" / "realworld"
DUMPS = sorted([*(ROOT / "sample_dumps").glob("*.txt"), *(ROOT / "sample_dumps").glob("*.nft"),
                *(sorted(REALWORLD.glob("*.txt")) if REALWORLD.is_dir() else [])])


def _views(path: Path) -> list[Any]:
    view_module._REACHES.clear()
    view_module._LAST_REACHES[0] = ((), ())
    return [a.view for a in analyses_of(str(path), lenient=True)]


@pytest.mark.parametrize("path", DUMPS, ids=[p.name for p in DUMPS])
def test_views_are_those_made_reading_every_path_whole(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fast = _views(path)
    own: list[Any] = [None]
    entry, source_path = view_module._Builder.entry, view_module._source_path

    def every_entry(self: Any, sp: Any, way: Any, own_chains: Any) -> Any:
        own[0] = own_chains
        return entry(self, sp, way, own_chains)

    def whole_path(source: str, trace: Any, _own: Any) -> Any:
        path = source_path(source, trace, own[0])
        # (and each reach made by Reach itself)
        reaches = tuple(Reach(r.endpoint, r.probability) for r in path.reaches)
        assert reaches == path.reaches and all(type(r) is Reach for r in path.reaches)
        return path

    monkeypatch.setattr(view_module._Builder, "entry", every_entry)
    monkeypatch.setattr(view_module, "_source_path", whole_path)
    slow = _views(path)
    assert [v.services for v in fast] == [v.services for v in slow]
