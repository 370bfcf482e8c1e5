"""`services -o json` writes each Service port's object as text (render.services.service_json_text) instead of
encoding the dict service_to_json makes: the very text the compact encoder prints for that dict, for every
Service port of every sample dump and corpus dump, and for views made up of any strings and numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iptrace.cli.common import analyses_of
from iptrace.kube.view import EndpointView, EntryView, Reach, ServicePortView, SourcePath
from iptrace.render.json import _COMPACT, LARGE_LIST, dumps, encoded_pieces
from iptrace.render.services import iter_services_json, iter_services_json_texts, service_json_text

ROOT = Path(__file__).resolve().parent.parent
REALWORLD = ROOT.parent / "shared" / "corpus" / "realworld"
DUMPS = sorted([*(ROOT / "sample_dumps").glob("*.txt"), *(ROOT / "sample_dumps").glob("*.nft"),
                ROOT / "sample_dumps" / "nodeport-fb-backends-nft.json",
                *(sorted(REALWORLD.glob("*.txt")) if REALWORLD.is_dir() else [])])


@pytest.mark.parametrize("path", DUMPS, ids=[p.name for p in DUMPS])
def test_every_service_port_of_a_dump_is_written_as_the_encoder_prints_it(path: Path) -> None:
    for analysis in analyses_of(str(path), lenient=True):
        view = analysis.view
        texts = list(iter_services_json_texts(view))
        assert texts == [_COMPACT.encode(item) for item in iter_services_json(view)]
        assert [json.loads(t) for t in texts] == list(iter_services_json(view))


def test_a_synthetic_dump_is_written_as_the_encoder_prints_it(tmp_path: Path) -> None:
    from bench import synth

    path = tmp_path / "big.txt"
    path.write_text(synth.render(synth.scale(60, 4), node_ips=["192.168.0.10"], pod_cidr="10.244.0.0/16",
                                 comments=True))
    (analysis,) = analyses_of(str(path))
    view = analysis.view
    assert len(view.services) >= 60
    assert list(iter_services_json_texts(view)) == [_COMPACT.encode(i) for i in iter_services_json(view)]


# Any text a dump could carry into a view (quotes, backslashes, control characters, non-ASCII), and the numbers.
_TEXT = st.text(st.characters(codec="utf-8"), max_size=12)
_MAYBE_TEXT = st.none() | _TEXT
_INT = st.integers(-(2 ** 40), 2 ** 40)
_MAYBE_INT = st.none() | _INT
_SHARE = st.floats(0.0, 1.0) | st.sampled_from([0.1, 1 / 3, 0.10000000009, 0.5, 1.0])
_REACHES = st.lists(st.builds(Reach, _TEXT, _SHARE), max_size=4).map(tuple)
_PATH = st.builds(SourcePath, _TEXT, _TEXT, st.lists(_TEXT, max_size=3).map(tuple), _REACHES, st.booleans(), _INT)
_ENTRY = st.builds(EntryView, _TEXT, _MAYBE_TEXT, _INT, _TEXT, _TEXT, _TEXT, _REACHES, _TEXT,
                   st.lists(_TEXT, max_size=3).map(tuple), st.lists(_TEXT, max_size=3).map(tuple),
                   st.lists(_PATH, max_size=3).map(tuple), st.lists(_TEXT, max_size=2).map(tuple),
                   st.lists(_INT, max_size=3).map(tuple))
_ENDPOINT = st.builds(EndpointView, _TEXT | st.sampled_from(["10.0.0.1", "fd00::1"]), _MAYBE_INT, _SHARE,
                      st.booleans(), _TEXT, st.none() | _SHARE, st.booleans(), _INT)
_TEXTS = st.lists(_TEXT, max_size=3).map(tuple)
_SERVICE = st.builds(
    ServicePortView, _TEXT, _TEXT, _TEXT, _TEXT, _MAYBE_TEXT, _MAYBE_INT, _MAYBE_INT, _TEXTS, _TEXTS, _TEXTS,
    _MAYBE_INT, _MAYBE_TEXT, _MAYBE_TEXT, _MAYBE_INT, st.lists(_ENDPOINT, max_size=3).map(tuple),
    st.lists(_ENTRY, max_size=3).map(tuple), st.booleans(), st.booleans(), _TEXTS,
    st.lists(_INT, max_size=4).map(tuple), _TEXT, _TEXTS, st.lists(_INT, max_size=4).map(tuple),
    st.lists(st.tuples(st.sampled_from(["", "a", "endpoint-x"]) | _TEXT, _INT), max_size=3).map(tuple))


@settings(max_examples=300, deadline=None)
@given(_SERVICE)
def test_any_service_port_is_written_as_the_encoder_prints_it(s: ServicePortView) -> None:
    from iptrace.render.services import service_to_json

    assert service_json_text(s) == _COMPACT.encode(service_to_json(s))
    assert service_json_text(s) == service_json_text(s)  # (the second time from the texts kept for its pieces)


def test_encoded_pieces_are_dumps() -> None:
    items = [{"n": i, "text": f"é{i}\"", "share": 1 / (i + 3)} for i in range(LARGE_LIST + 7)]
    assert "".join(encoded_pieces(iter(map(_COMPACT.encode, items)), len(items))) == dumps(items)
    with pytest.raises(ValueError):
        list(encoded_pieces(iter(["{}"] * LARGE_LIST), LARGE_LIST))
    with pytest.raises(ValueError):
        list(encoded_pieces(iter(["{}"] * 600), 601))
