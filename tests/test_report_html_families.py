"""audit -o html of dual-stack nodes: a finding about one IP family's Service port is listed under, and links to,
that family's picture only. A node whose IPv6 endpoint of default/web:http differed had its finding shown in the
IPv4 picture too (whose nodes all agree), with two 'picture' links, as if the IPv4 side differed as well."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from iptrace.cli import main
from tests.conftest import SAMPLES


def _sections(html: str) -> dict[tuple[str, str], str]:
    """Each Service port section by (Service port, family word of its head)."""
    out = {}
    for block in re.findall(r'<section class="port".*?</section>', html, flags=re.S):
        head = re.search(r"<h3>([^<]*)</h3><span class=\"kind\">[^<]* · (IPv[46])</span>", block)
        assert head is not None, block[:300]
        out[(head.group(1), head.group(2))] = block
    return out


def test_a_finding_of_one_family_is_drawn_in_that_familys_picture_only(tmp_path: Path) -> None:
    text = (SAMPLES / "dual-stack-nft.nft").read_text()
    moved = text.replace("dnat to [fd00:10:244:2::3]:8080", "dnat to [fd00:10:244:2::99]:8080")
    assert moved != text
    (tmp_path / "a.nft").write_text(text)
    (tmp_path / "b.nft").write_text(moved)
    (tmp_path / "c.nft").write_text(text)
    result = CliRunner().invoke(main, ["audit", *(str(tmp_path / n) for n in ("a.nft", "b.nft", "c.nft")),
                                       "-o", "html"])
    assert result.exit_code == 3, result.output
    html = result.stdout
    sections = _sections(html)
    assert set(sections) == {("default/web:http", "IPv6")}, sorted(sections)
    assert "[fd00:10:244:2::99]:8080" in sections[("default/web:http", "IPv6")]
    (meta,) = re.findall(r'<p class="meta"><code>endpoints-differ</code>.*?</p>', html)
    assert meta.count(">picture</a>") == 1, meta
