"""`-o json` written in pieces (render.json.dumps_pieces, `services -o json` item by item): the very bytes
render.json.dumps prints for the whole list. A document with long lists inside it (render.json.document_pieces,
`audit -o json`'s merge key): the same document, those lists one compact item a line, made as they print."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import synth
from iptrace.cli import main
from iptrace.render.json import LARGE_LIST, CompactItems, document_pieces, dumps, dumps_pieces

CLUSTER = Path(__file__).resolve().parent / "data" / "cluster"


@pytest.mark.parametrize("count", [0, 1, LARGE_LIST, LARGE_LIST + 1, 1000, 3 * 128 + 7])
def test_pieces_are_dumps(count: int) -> None:
    items = [{"n": i, "text": f"é{i}", "share": 1 / (i + 3), "list": [i, None, True]} for i in range(count)]
    pieces = list(dumps_pieces(iter(items), count))
    assert "".join(pieces) == dumps(items)
    if count > LARGE_LIST:
        assert len(pieces) > 1  # (never the whole text at once)


DOCUMENTS: list[object] = [
    {}, [], 0, "é\n", {"a": 1, "b": [1, 2, {"x": "é\n", "y": []}], "c": {}, "d": {"e": {"f": [None, 1.5]}}},
    [{"a": [1]}, {}],
]


@pytest.mark.parametrize("doc", DOCUMENTS)
def test_a_document_without_compact_lists_prints_as_dumps(doc: object) -> None:
    assert "".join(document_pieces(doc)) == dumps(doc)


@pytest.mark.parametrize("count", [0, 1, 127, 128, 129, 1000])
def test_compact_lists_print_one_item_a_line_as_they_are_made(count: int) -> None:
    made: list[int] = []

    def items() -> object:
        for i in range(count):
            made.append(i)
            yield {"n": i, "text": f"é{i}", "lines": list(range(i % 5))}

    doc = {"format": 1, "nodes": [{"name": "a"}], "merge": {"version": 1, "cluster": None,
                                                              "digests": CompactItems([[1, "x"], [2, None]]),
                                                              "nodes": CompactItems(items())}}
    text = ""
    made_when_first_printed = None
    for piece in document_pieces(doc):
        if made_when_first_printed is None and '{"n": 0' in piece:
            made_when_first_printed = len(made)
        text += piece
    plain = {**doc, "merge": {**doc["merge"], "digests": [[1, "x"], [2, None]],  # type: ignore[dict-item]
                              "nodes": [{"n": i, "text": f"é{i}", "lines": list(range(i % 5))} for i in range(count)]}}
    assert json.loads(text) == plain
    # Everything but the compact lists is indented as dumps does; each of their items is one line.
    head = ['{', '  "format": 1,', '  "nodes": [', '    {', '      "name": "a"', '    }', '  ],', '  "merge": {',
            '    "version": 1,', '    "cluster": null,', '    "digests": [', '      [1, "x"],', '      [2, null]',
            '    ],']
    lines = text.split("\n")
    assert lines[:len(head)] == head
    body = lines[len(head):]
    if not count:
        assert body == ['    "nodes": []', '  }', '}', '']
    else:
        assert body[0] == '    "nodes": [' and body[-4:] == ['    ]', '  }', '}', '']
        assert [json.loads(line.rstrip(",")) for line in body[1:-4]] == plain["merge"]["nodes"]  # type: ignore[index]
    if count > 200:  # (the first items were printed before the last ones were made: never all held)
        assert made_when_first_printed is not None and made_when_first_printed < count


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


@pytest.mark.parametrize("kept", [1, 3, 100_000])
def test_path_texts_print_the_paths_themselves(kept: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Paths given to PathTexts print as their lists of steps would: a rule met again (the same Step, or an
    equal one, as nft makes), a rule never met, a path of new and known rules, an empty path, and with the
    texts forgotten whenever `kept` rules are held (the memory bound)."""
    from iptrace.dataplane import Step
    from iptrace.render import json as render_json

    monkeypatch.setattr(render_json, "_STEP_TEXTS", kept)
    a, b = Step("nat", "KUBE-SERVICES", 3, "-A KUBE-SERVICES -j X", "dispatch"), Step("nat", "X", 5, "-A X \"é\"")
    c, again = Step("filter", "Y", 0, "y", handle=7), Step("nat", "X", 5, "-A X \"é\"")
    paths = [(a,), (a, b), (), (b, c, a), (again, a), (c,), (a, b)]
    texts = render_json.PathTexts()
    doc = [{"n": i, "path": texts(p), "after": "x"} for i, p in enumerate(paths)]
    plain = [{"n": i, "path": [s.to_json() for s in p], "after": "x"} for i, p in enumerate(paths)]
    assert texts.encode(doc) == json.dumps(plain, ensure_ascii=False)


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(_JSON_VALUES)
def test_compact_is_the_compact_encoder(value: object) -> None:
    """render.json.compact (one C encoder made once) prints what the compact JSONEncoder prints, for any
    JSON value: strings with quotes, controls and non-ASCII text, NaN and infinities, nesting."""
    from iptrace.render.json import _COMPACT, compact

    assert compact(value) == _COMPACT.encode(value)


def test_compact_refuses_what_the_encoder_refuses() -> None:
    from iptrace.render.json import compact

    with pytest.raises(TypeError):
        compact({"a": object()})
