"""kube-proxy's own nftables fixtures (../shared/corpus/kube-proxy-nft): the transaction text kube-proxy wrote,
the kernel's listing of it and the kernel's JSON of it read into one model; save round trips; golden summaries.

Equality is the model's: lines and handles are evidence, objects compare as collections (the transaction is
order-insensitive), rules in chain order, elements as sets. nftables 1.0.6's JSON leaves out table and chain
comments and a `dynamic` flag no rule implies, so the JSON model is compared with `without_json_gaps(text)`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from iptrace.nftables import load, save
from iptrace.nftables.normalise import without_json_gaps
from iptrace.nftables.summary import render_nft_summary
from tests.conftest import CORPUS, GOLDEN

NFT_CORPUS = CORPUS / "kube-proxy-nft"


def _fixtures() -> list[Path]:
    return sorted(NFT_CORPUS.glob("*.json")) if NFT_CORPUS.is_dir() else []


def _with_dump() -> list[Path]:
    return [p for p in _fixtures() if json.loads(p.read_text()).get("dump")]


def _data(path: Path) -> dict:
    if not NFT_CORPUS.is_dir():
        pytest.skip(f"conformance corpus not found at {NFT_CORPUS} (a plain clone has no ../shared)")
    return json.loads(path.read_text())


def test_the_corpus_is_there_and_has_dumps(corpus) -> None:
    assert len(_with_dump()) >= 3, "expected kube-proxy-nft fixtures with a dump"
    for path in _fixtures():
        data = json.loads(path.read_text())
        if data.get("dump"):
            assert data.get("nft_list") and data.get("nft_json"), f"{path.name}: a dump without the kernel's forms"


@pytest.mark.parametrize("path", _with_dump(), ids=lambda p: p.stem)
def test_transaction_listing_and_json_are_one_model(path: Path) -> None:
    data = _data(path)
    transaction = load(data["dump"], source=f"{path.name}:dump")
    listing = load(data["nft_list"], source=f"{path.name}:nft_list")
    from_json = load(json.dumps(data["nft_json"]), source=f"{path.name}:nft_json")
    assert (transaction.format, listing.format, from_json.format) == ("nft-transaction", "nft-list", "nft-json")
    assert transaction == listing
    assert without_json_gaps(listing) == from_json
    assert not transaction.warnings and not listing.warnings and not from_json.warnings
    # the same number of everything, and every rule of every chain in the same order
    for a, b in ((transaction, listing), (listing, from_json)):
        for ta in a.tables:
            tb = b.table(ta.family, ta.name)
            for c in ta.chains:
                assert [r.items for r in c.rules] == [r.items for r in tb.chain(c.name).rules], c.name
            assert sum(len(s.elements) for s in ta.sets) == sum(len(s.elements) for s in tb.sets)


@pytest.mark.parametrize("path", _with_dump(), ids=lambda p: p.stem)
def test_save_round_trips_every_form(path: Path) -> None:
    data = _data(path)
    for form in ("dump", "nft_list", "nft_json"):
        text = data[form] if form != "nft_json" else json.dumps(data[form])
        model = load(text, source=form)
        assert load(save(model), source="saved") == model, form


def _without_element_order(text: str) -> list[str]:
    """A listing's lines with each element list as a sorted set (the kernel orders elements its own way)."""
    out: list[str] = []
    for block in re.split(r"(elements = \{[^}]*\})", text):
        if block.startswith("elements = {"):
            inner = re.sub(r"\s+", " ", block[len("elements = {"):-1])
            out.append("elements: " + " | ".join(sorted(e.strip() for e in inner.split(", "))))
        else:
            out.extend(line.strip() for line in block.splitlines() if line.strip())
    return out


@pytest.mark.parametrize("path", _with_dump(), ids=lambda p: p.stem)
def test_save_writes_the_kernels_listing(path: Path) -> None:
    data = _data(path)
    saved = save(load(data["dump"]))
    assert _without_element_order(saved) == _without_element_order(data["nft_list"])


@pytest.mark.parametrize(("fixture", "form"), [("current-TestBadIPs", "nft_list"),
                                               ("current-TestTracePacketV4", "dump")])
def test_golden_parse_summaries(corpus, golden, fixture: str, form: str) -> None:
    data = _data(NFT_CORPUS / f"{fixture}.json")
    ruleset = load(data[form], source=f"{fixture}.{form}")
    golden(GOLDEN / "nft" / fixture / "parse.txt", render_nft_summary(ruleset))
