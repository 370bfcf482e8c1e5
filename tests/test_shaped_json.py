"""`services -o json` of the Service ports built from an earlier port's shape, written from the shape's text
(iptrace.render.shaped) without making their views: each port's text equals the text of its view, port by port, on
every nft and iptables sample, every nft corpus fixture in every form (nft -j: written from the views), and
synthesized rulesets of both dataplanes (the bench's generator); `services -o json` prints the same bytes either
way. A template piece written wrong fails these checks (test_a_wrong_piece_is_caught)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bench import synth
from bench.synth_nft import render_nft
from iptrace import iptables, nftables
from iptrace.cli import main
from iptrace.kube import shapes
from iptrace.kube.analysis import analyse
from iptrace.kube.shapes import Shaped
from iptrace.render import shaped
from iptrace.render.json import LARGE_LIST
from iptrace.render.services import service_json_text
from iptrace.render.shaped import port_json_texts
from tests import nft_corpus
from tests.conftest import SAMPLES
from tests.shapes_check import ipv6_nft_ruleset

NODE = "192.168.0.10"


def check(load: Callable[..., Any], dataplane: Any, text: str, node_ips: tuple[str, ...] = ()) -> int:
    """Each port's text from `ViewBuilder.shaped` equals its view's text, in the view's order; how many ports were
    written from their shape's text."""
    ruleset = load(text, lenient=True)
    written = 0
    for family in ruleset.families:
        ports = analyse(dataplane, ruleset, family, node_ips=node_ips).views.shaped()
        views = analyse(dataplane, ruleset, family, node_ips=node_ips).view.services
        assert [p.sort_key for p in ports] == [s.sort_key for s in views]
        for port, text_of_view, view in zip(port_json_texts(ports), map(service_json_text, views), views,
                                            strict=True):
            assert port == text_of_view, f"{view.label}: written from its shape:\n{port}\nits view's:\n{text_of_view}"
        written += sum(type(p) is Shaped for p in ports)
    return written


@pytest.fixture(autouse=True)
def _from_the_first_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shapes, "AFTER", 0)  # (small rulesets: shapes from the first port on)


def _nft(n: int, endpoints: int, seed: int, form: str = "list") -> str:
    return render_nft(synth.scale(n, endpoints, seed), node_ips=[NODE], pod_cidr="10.244.0.0/16",
                      service_cidrs=["10.96.0.0/12"], form=form)


@pytest.mark.parametrize("path", nft_corpus.SAMPLES, ids=lambda p: p.name)
def test_nft_samples(path: Path) -> None:
    text = path.read_text(encoding="utf-8", errors="replace")
    check(nftables.load, nftables.DATAPLANE, text, ("192.168.49.2",))
    check(nftables.load, nftables.DATAPLANE, text)


@pytest.mark.parametrize("fixture", nft_corpus.FIXTURES, ids=lambda p: p.stem)
def test_nft_corpus(fixture: Path) -> None:
    data = nft_corpus.read(fixture)
    for text in nft_corpus.texts(data).values():
        check(nftables.load, nftables.DATAPLANE, text, (data["node_ip"], *data["node_ips"]))


@pytest.mark.parametrize("path", sorted(SAMPLES.glob("*.txt")), ids=lambda p: p.name)
def test_iptables_samples(path: Path) -> None:
    check(iptables.load, iptables.DATAPLANE, path.read_text(encoding="utf-8", errors="replace"))


@pytest.mark.parametrize(("n", "endpoints", "seed", "form"),
                         [(400, 10, 0, "list"), (300, 3, 1, "transaction"), (200, 2, 4, "list")])
def test_synthesized_nft(n: int, endpoints: int, seed: int, form: str) -> None:
    assert check(nftables.load, nftables.DATAPLANE, _nft(n, endpoints, seed, form)) > n // 2


def test_synthesized_iptables() -> None:
    text = synth.render(synth.scale(300, 4, 3), node_ips=[NODE], pod_cidr="10.244.0.0/16")
    assert check(iptables.load, iptables.DATAPLANE, text) > 150


def test_ipv6() -> None:
    text = ipv6_nft_ruleset()
    assert check(nftables.load, nftables.DATAPLANE, text, ("fd00:1::10",)) > 0
    assert '"address": "[fd00:10:244:' in "".join(port_json_texts(analyse(
        nftables.DATAPLANE, nftables.load(text), node_ips=("fd00:1::10",)).views.shaped()))


def test_a_wrong_piece_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A template that writes one value's text wrong (a chain's) is caught by `check`."""
    real = shaped._Template.texts

    def wrong(self: Any, p: Shaped) -> tuple[str, str]:
        endpoints, entries = real(self, p)
        return endpoints.replace('"chain": "endpoint-', '"chain": "endpoint_', 1), entries

    monkeypatch.setattr(shaped._Template, "texts", wrong)
    with pytest.raises(AssertionError, match="written from its shape"):
        check(nftables.load, nftables.DATAPLANE, _nft(40, 3, 0))


def test_services_json_prints_the_same_bytes(tmp_path: Path) -> None:
    """`services -o json` of a ruleset of more than LARGE_LIST ports (printed from texts) prints its views' texts."""
    text = _nft(600, 2, 4)
    dump = tmp_path / "node.nft"
    dump.write_text(text)
    out = CliRunner().invoke(main, ["services", str(dump), "-o", "json"])
    views = analyse(nftables.DATAPLANE, nftables.load(text)).view.services
    assert len(views) > LARGE_LIST
    assert out.exit_code == 0
    assert out.output == "[\n  " + ",\n  ".join(map(service_json_text, views)) + "\n]\n"
