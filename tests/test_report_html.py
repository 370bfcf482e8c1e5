"""`iptrace audit -o html`: the self-contained report. Its structure and escaping are read back with
html.parser; then a real headless Chromium (tests/chromium.py) opens it — with scripts on and off, on screen
and in print — and must show every node and every finding of the JSON audit of the same input, request
nothing but the file itself, and run no script but the report's own. The scenario: tests/fleet_scenario.py."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bench.synth import EndpointSpec, PortSpec, ServiceSpec
from iptrace.cli import main
from iptrace.kube.audit import AuditReport
from iptrace.render.html import render_audit_html
from tests import fleet_scenario
from tests.chromium import Browser, ProxySink, find_chromium
from tests.conftest import GOLDEN
from tests.dumps import Dumped, audit
from tests.png import decode
from tests.test_compare import NODES, base_services, cluster_of, dump, svc

# ------------------------------------------------------------------------------------------------ reading HTML


class _Page(HTMLParser):
    """Tags with their attributes, the text of the page, and the text of each <style>/<script>. Text either side
    of a <span>'s tag is one word, as a browser shows it (a node name's labels: `ip-10-0-1-2.` `eu-west-1`); any
    other tag parts words."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.raw: dict[str, list[str]] = {"style": [], "script": []}
        self._in: str | None = None
        self._parted = True  # (a tag other than <span> since the last text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._parted = self._parted or tag != "span"
        if tag in self.raw:
            self._in = tag
            self.raw[tag].append("")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        self._parted = self._parted or tag != "span"
        if tag == self._in:
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in is not None:
            self.raw[self._in][-1] += data
        elif not self._parted and self.text:
            self.text[-1] += data
        else:
            self.text.append(data)
        self._parted = False


def read(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    page.close()
    return page


def text_of(html: str) -> str:
    """The page's visible text with whitespace collapsed (how a reader, or a search, meets it)."""
    return " ".join(" ".join(read(html).text).split())


_URL = re.compile(r"url\(\s*(['\"]?)(.*?)\1\s*\)", re.IGNORECASE)
_REFERENCE_ATTRIBUTES = {"src", "href", "xlink:href", "action", "formaction", "poster", "data", "srcset",
                         "background", "manifest", "ping", "codebase", "cite", "longdesc", "archive"}


def outside_references(html: str) -> list[str]:
    """Every reference the page makes to anything but itself: attributes that load or link (anything but a
    #fragment or a data: URL), url(…) in style sheets and attributes, @import, and elements that load by
    nature (link, iframe, object, embed, base, meta refresh)."""
    page = read(html)
    found: list[str] = []
    for tag, attrs in page.tags:
        if tag in ("link", "iframe", "frame", "object", "embed", "base", "applet", "portal"):
            found.append(f"<{tag}>")
        if tag == "meta" and (attrs.get("http-equiv") or "").lower() == "refresh":
            found.append("<meta refresh>")
        for name, value in attrs.items():
            value = (value or "").strip()
            if name in _REFERENCE_ATTRIBUTES and value and not value.startswith(("#", "data:")):
                found.append(f"<{tag} {name}={value!r}>")
            for _, url in _URL.findall(value):
                if not url.startswith(("#", "data:")):
                    found.append(f"<{tag} {name}> url({url})")
    for sheet in page.raw["style"]:
        found += [f"style url({url})" for _, url in _URL.findall(sheet) if not url.startswith(("#", "data:"))]
        if "@import" in sheet:
            found.append("style @import")
    return found


# ------------------------------------------------------------------------------------------------ the scenario


@pytest.fixture(scope="module")
def scenario() -> tuple[AuditReport, Any, str]:
    nodes, cluster = fleet_scenario.inputs()
    report = audit(nodes, cluster)
    return report, cluster, render_audit_html(report, cluster)


def test_the_scenario_has_what_the_report_must_show(scenario) -> None:
    report, _, _ = scenario
    assert {f.id for f in report.findings} >= {"stale-endpoints", "unknown-service", "kube-proxy-stale",
                                               "no-kube-proxy-rules"}
    assert {pv.service for pv in report.port_views} == {"default/web:http", "default/gone:http",
                                                         f"default/{fleet_scenario.HOSTILE}:http"}
    assert [n.status for n in report.nodes] == ["ok", "ok", "ok", "no-kube-proxy"]


def test_golden(scenario, golden) -> None:
    golden(GOLDEN / "report" / "audit.html", scenario[2])


def test_deterministic(scenario) -> None:
    _, cluster, html = scenario
    nodes, _ = fleet_scenario.inputs()
    assert render_audit_html(audit(nodes, cluster), cluster) == html


def test_every_node_and_finding_is_in_the_text(scenario) -> None:
    report, _, html = scenario
    text = text_of(html)
    for n in report.nodes:
        assert n.name in text
    for f in report.findings:
        for part in (f.id, f.summary, f.detail, f.fix, *(rule for _, rule in f.evidence)):
            assert " ".join(part.split()) in text, part
    # Severities are words, not only colours; errors come first.
    words = re.findall(r"\b(ERROR|WARNING)\b", text.split("Findings (", 1)[1])
    assert words[:3] == ["ERROR"] * 3 and "WARNING" in words


def test_text_from_dumps_is_escaped(scenario) -> None:
    _, _, html = scenario
    hostile = fleet_scenario.HOSTILE
    assert hostile not in html
    assert "&lt;script&gt;alert(1);&lt;!--" in html
    page = read(html)
    assert [t for t, _ in page.tags].count("script") == 1  # the report's own
    assert not [(t, a) for t, a in page.tags for name in a if name.startswith("on")]
    assert hostile in text_of(html)  # shown, as text: in the finding, its evidence and its picture


def test_the_page_references_nothing_outside_itself(scenario) -> None:
    _, _, html = scenario
    assert outside_references(html) == []
    # ...and the check would see each kind of reference.
    for snippet in ('<img src="http://x/a.png">', '<a href="https://x/">x</a>', "<link rel=stylesheet href=s.css>",
                    '<svg><use xlink:href="other.svg#a"/></svg>', '<div style="background:url(//x/b.png)"></div>',
                    "<style>@import 'x.css';</style>", "<style>p{background:url(x.png)}</style>",
                    "<iframe src=data:,x></iframe>", '<meta http-equiv="refresh" content="0;url=http://x/">',
                    '<svg><path fill="url(x.svg#g)"/></svg>', '<img srcset="a.png 2x">'):
        assert outside_references(snippet), snippet
    assert outside_references('<a href="#x">x</a><img src="data:image/png;base64,AA"><path fill="url(#g)"/>') == []


def test_content_security_policy_allows_only_the_inline_style_and_script(scenario) -> None:
    _, _, html = scenario
    page = read(html)
    csp = next(a["content"] for t, a in page.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy")
    policy = dict(part.strip().split(" ", 1) for part in (csp or "").split(";"))
    assert policy["default-src"] == "'none'"

    def digest(text: str) -> str:
        return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"

    assert policy["style-src"] == digest(page.raw["style"][0])
    assert policy["script-src"] == digest(page.raw["script"][0])


def _sections(html: str) -> dict[str, str]:
    """Each Service port section of the page by its heading."""
    out = {}
    for block in html.split('<section class="port"')[1:]:
        heading = re.search(r"<h3>(.*?)</h3>", block)
        assert heading
        out[read(heading.group(1)).text[0]] = block.split("</section>", 1)[0]
    return out


def _figures(section: str) -> dict[str, str]:
    """Each picture of a section by the nodes it stands for."""
    out = {}
    for block in section.split('<figure class="variant')[1:]:
        nodes = re.search(r'<span class="nodes">(.*?)</span>', block)
        assert nodes
        out[nodes.group(1)] = block.split("</figure>", 1)[0]
    return out


def test_pictures_per_node_where_the_nodes_differ(scenario) -> None:
    report, _, html = scenario
    sections = _sections(html)
    web = sections["default/web:http"]
    figures = _figures(web)
    assert list(figures) == ["node-b", "node-a, node-c"]  # the node with findings first; identical nodes once
    stale, fresh = figures["node-b"], figures["node-a, node-c"]
    assert "10.244.2.99:8080" in stale and "10.244.2.99:8080" not in fresh
    assert "not in any EndpointSlice" in stale and "flagged" in stale
    assert "API:" in web and "10.244.1.5:8080 (ready, node-a)" in web
    # Pictures name their endpoints, shares and chains in text: <title>, <text>, the caption.
    pv = next(p for p in report.port_views if p.service == "default/web:http")
    view = dict(pv.nodes)["node-b"]
    assert view is not None
    svg = stale.split("<svg", 1)[1].split("</svg>", 1)[0]
    for ep in view.endpoints:
        assert f">{ep.address}</text>" in svg
        assert re.search(rf"<title>endpoint {re.escape(ep.address)}\b", svg)
    assert ">33.33%</text>" in svg and "KUBE-SVC-" in svg
    assert re.search(r'<svg [^>]*role="img" aria-labelledby="port-\d+-v1-t port-\d+-v1-d"', stale)
    flow_text = read(stale.split('<ul class="flow-text">', 1)[1]).text
    assert "10.244.2.99:8080 33.33%" in " ".join(flow_text)
    # A Service port only the stale node has: the others are said to have no rules, as the API asks.
    gone = sections["default/gone:http"]
    assert "No rules for this Service port on node-a, node-c, as the API asks" in gone


def test_a_healthy_fleet(tmp_path) -> None:
    services = base_services()
    nodes = [Dumped(n, dump(services, n), (NODES[n],)) for n in sorted(NODES)]
    cluster = cluster_of(services)
    html = render_audit_html(audit(nodes, cluster), cluster)
    text = text_of(html)
    assert "OK Every node forwards every Service the same way the API asks." in text
    assert "No findings." in text and "Service ports that differ" not in text
    assert outside_references(html) == []


def test_nodes_compared_with_each_other() -> None:
    """Without cluster data the majority is the reference: the picture of the odd node marks what the other
    nodes do not have and what it misses; a node without a Service port the others have is an error."""
    old, new = fleet_scenario.services()
    lagging = [s for s in new if s.name != "affine"]
    nodes = [Dumped("node-a", dump(new, "node-a"), (NODES["node-a"],)),
             Dumped("node-b", dump(old, "node-b"), (NODES["node-b"],)),
             Dumped("node-c", dump(lagging, "node-c"), (NODES["node-c"],))]
    report = audit(nodes, None)
    html = render_audit_html(report)
    assert "nodes compared with each other" in text_of(html)
    sections = _sections(html)
    stale = _figures(sections["default/web:http"])["node-b"]
    assert "not on the other nodes" in stale and "10.244.2.99:8080" in stale
    affine = sections["default/affine"]
    assert '<p class="absent wrong">No rules for this Service port on node-c' in affine
    assert outside_references(html) == []


def test_cli_writes_the_html_and_json_twins(tmp_path) -> None:
    snap, files = fleet_scenario.write(tmp_path)
    args = ["audit", str(snap), *(x for f in files for x in ("--cluster", str(f)))]
    as_html = CliRunner().invoke(main, [*args, "-o", "html"])
    as_json = CliRunner().invoke(main, [*args, "-o", "json"])
    assert as_html.exit_code == 3 and as_json.exit_code == 3, as_html.output
    assert as_html.output.startswith("<!DOCTYPE html>")
    doc = json.loads(as_json.output)
    # The documented keys, then what `audit --merge` reads (iptrace.kube.merge).
    assert list(doc) == ["format", "cluster", "ok", "counts", "nodes", "findings", "merge"]
    text = text_of(as_html.output)
    for f in doc["findings"]:
        assert f["id"] in text and " ".join(f["summary"].split()) in text


# ------------------------------------------------------------------------------------------------ Chromium

needs_chromium = pytest.mark.skipif(find_chromium() is None,
                                    reason="chromium is not installed (apt-get install -y chromium)")


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[Browser]:
    exe = find_chromium()
    assert exe is not None
    sink = ProxySink()
    try:
        with Browser(exe, tmp_path_factory.mktemp("chromium-profile"), sink) as b:
            yield b
    finally:
        sink.close()


@pytest.fixture(scope="module")
def cli_report(tmp_path_factory) -> tuple[Path, dict[str, Any]]:
    """The report as a user makes it (`iptrace audit DIR --cluster … -o html > report.html`) and the JSON
    audit of the same input."""
    root = tmp_path_factory.mktemp("report")
    snap, files = fleet_scenario.write(root)
    args = ["audit", str(snap), *(x for f in files for x in ("--cluster", str(f)))]
    html = CliRunner().invoke(main, [*args, "-o", "html"]).output
    path = root / "report.html"
    path.write_text(html, encoding="utf-8")
    return path, json.loads(CliRunner().invoke(main, [*args, "-o", "json"]).output)


@needs_chromium
def test_chromium_renders_the_report(browser, cli_report, tmp_path) -> None:
    path, _ = cli_report
    page = browser.load(path.as_uri(), screenshot=True, screenshot_scale=0.5)
    assert page.screenshot is not None
    (tmp_path / "report.png").write_bytes(page.screenshot)
    image = decode(page.screenshot)
    assert image.width == 640 and image.height > 1250  # the whole page (at half scale), pictures included
    colours: set[tuple[int, ...]] = set()
    inked = 0
    for y in range(0, image.height, 2):
        for x in range(0, image.width, 2):
            pixel = image.pixel(x, y)[:3]
            colours.add(pixel)
            inked += sum(pixel) < 600
    samples = ((image.height + 1) // 2) * ((image.width + 1) // 2)
    assert len(colours) > 100, "the screenshot is (nearly) one colour"
    assert 0.02 < inked / samples < 0.6, inked / samples
    # The severity colours are there: the error red of the badges and borders.
    assert any(abs(r - 0xB3) < 12 and abs(g - 0x26) < 12 and abs(b - 0x1E) < 12 for r, g, b in colours)


@needs_chromium
@pytest.mark.parametrize("scripts", [True, False], ids=["scripts-on", "scripts-off"])
def test_the_dom_names_every_node_and_finding_of_the_json_audit(browser, cli_report, scripts) -> None:
    path, doc = cli_report
    page = browser.load(path.as_uri(), scripts=scripts)
    text = text_of(page.dom)
    for n in doc["nodes"]:
        assert n["name"] in text
    for f in doc["findings"]:
        assert f["id"] in text and " ".join(f["summary"].split()) in text, f["summary"]
    for sp in ("default/web:http", "10.244.2.99:8080", "not in any EndpointSlice"):
        assert sp in text
    controls = re.search(r'<nav class="controls" id="controls"[^>]*>', page.dom)
    assert controls
    n = len(doc["findings"])
    if scripts:  # the script ran (the page's CSP allowed it by hash) and shows the filters
        assert "hidden" not in controls.group(0)
        assert f"{n} of {n} findings shown" in text
    else:
        assert "hidden" in controls.group(0)
        assert "findings shown" not in text
    assert page.dialogs == [] and page.console == [], (page.dialogs, page.console)


@needs_chromium
def test_the_page_requests_nothing_and_runs_no_injected_script(browser, cli_report, tmp_path) -> None:
    path, _ = cli_report
    page = browser.load(path.as_uri())
    assert page.requests == [path.as_uri()]
    assert page.dialogs == []
    assert page.dom.count("<script") == 1
    assert fleet_scenario.HOSTILE in text_of(page.dom)
    # The same checks catch a page that does load something, or runs a script it was fed.
    bad = tmp_path / "bad.html"
    bad.write_text('<p>x</p><img src="http://iptrace-test.invalid/x.png"><script>alert("injected")</script>')
    seen = browser.load(bad.as_uri())
    assert "http://iptrace-test.invalid/x.png" in seen.requests and seen.dialogs == ["injected"]
    # Everything the browser sent at all went to the loopback sink, never out.
    assert any("iptrace-test.invalid" in r for r in browser.sink.requests)


@needs_chromium
def test_filters_from_the_address(browser, cli_report) -> None:
    path, doc = cli_report
    errors = [f for f in doc["findings"] if f["severity"] == "error"]
    page = browser.load(path.as_uri() + "?severity=error")
    shown = re.findall(r'<article class="finding (\w+)"[^>]*?(hidden="")?>', page.dom)
    assert [sev for sev, hidden in shown if not hidden] == ["error"] * len(errors)
    assert f"{len(errors)} of {len(doc['findings'])} findings shown" in text_of(page.dom)
    page = browser.load(path.as_uri() + "?node=node-d")
    visible = [m for m in re.findall(r'<article [^>]*>', page.dom) if "hidden" not in m]
    assert len(visible) == 1 and 'data-node="node-d"' in visible[0]
    count = browser.load(path.as_uri(), evaluate="""(() => {
        const box = document.getElementById("filter-text");
        box.value = "10.244.2.99"; box.dispatchEvent(new Event("input"));
        return document.querySelectorAll("article.finding:not([hidden])").length; })()""").value
    assert count == sum("10.244.2.99" in json.dumps(f) for f in doc["findings"])


@needs_chromium
def test_print(browser, cli_report) -> None:
    """In print: no controls, no dark background, every picture within the page width, details open,
    findings and pictures not split across pages; and Chromium prints it to a PDF of several pages."""
    path, _ = cli_report
    page = browser.load(path.as_uri(), media="print", pdf=True, evaluate="""(() => {
        const style = (el) => getComputedStyle(el);
        const width = document.body.getBoundingClientRect().width;
        return {
          controls: style(document.getElementById("controls")).display,
          background: style(document.body).backgroundColor,
          html: style(document.documentElement).backgroundColor,
          svgs: [...document.querySelectorAll("svg.flow")].map((s) => s.getBoundingClientRect().right <= width + 1),
          closed: document.querySelectorAll("details:not([open])").length,
          unbroken: [...document.querySelectorAll("article.finding, figure.variant")]
                      .every((el) => style(el).breakInside === "avoid"),
        }; })()""")
    value = page.value
    assert value["controls"] == "none"
    assert value["background"] in ("rgba(0, 0, 0, 0)", "rgb(255, 255, 255)")
    assert value["html"] == "rgb(255, 255, 255)"
    assert value["svgs"] and all(value["svgs"])
    assert value["closed"] == 0 and value["unbroken"]
    assert page.pdf is not None and page.pdf.startswith(b"%PDF")
    assert len(re.findall(rb"/Type\s*/Page\b", page.pdf)) >= 3


def test_a_large_fleet_draws_at_most_six_pictures_per_port() -> None:
    """Nine nodes forwarding one Service port nine ways: six pictures, the other nodes named in text."""
    inputs = []
    names = [f"node-{i}" for i in range(9)]
    for i, name in enumerate(names):
        services = base_services()
        if i:
            next(s for s in services if s.name == "web").endpoints.append(EndpointSpec(f"10.244.3.{100 + i}", 8080))
        inputs.append(Dumped(name, dump(services, "node-a"), (NODES["node-a"],)))
    html = render_audit_html(audit(inputs, None))
    web = _sections(html)["default/web:http"]
    assert web.count('<figure class="variant') == 6
    more = re.search(r'<p class="more">(.*?)</p>', web)
    assert more and more.group(1).startswith("Not drawn: 3 more nodes forwarding it in 3 other ways (")
    drawn = set(", ".join(_figures(web)).split(", "))
    assert drawn | set(more.group(1).split("(", 1)[1].split(")", 1)[0].split(", ")) == set(names)


def test_a_service_port_no_node_has() -> None:
    """The API has a Service port that no node forwards: one section, every node named as lacking it."""
    services = base_services()
    nodes = [Dumped(n, dump(services, n), (NODES[n],)) for n in sorted(NODES)]
    newer = [*base_services(), ServiceSpec("default", "fresh", "10.96.10.40", [PortSpec("http", 80, target_port=8080)],
                                           endpoints=[EndpointSpec("10.244.1.40", 8080)])]
    cluster = cluster_of(newer)
    report = audit(nodes, cluster)
    assert [(pv.service, [sp for _, sp in pv.nodes]) for pv in report.port_views] == [
        ("default/fresh:http", [None, None, None])]
    section = _sections(render_audit_html(report, cluster))["default/fresh:http"]
    assert '<p class="absent wrong">No rules for this Service port on node-a, node-b, node-c:' in section
    assert "10.244.1.40:8080 (ready, node-a)" in section and "<figure" not in section


def test_cluster_data_without_endpointslices_flags_no_endpoint_in_the_pictures() -> None:
    # Services alone (no EndpointSlice at all): the web port still has a finding (its nodePort) and a picture,
    # whose endpoints are not "not in any EndpointSlice" — the data says nothing of them.
    services = base_services()
    web = next(s for s in services if s.name == "web")
    nodes = [Dumped(n, dump(services, n), (NODES[n],)) for n in sorted(NODES)]
    web.ports[0].node_port = 30081
    full = cluster_of(services)
    cluster = type(full)(services=full.services, slices=(), nodes=full.nodes, source="services.json")
    report = audit(nodes, cluster)
    assert {f.id for f in report.findings if f.service == "default/web:http"} == {"port-mismatch"}
    html = render_audit_html(report, cluster)
    web_section = _sections(html)["default/web:http"]
    assert "10.244.1.5:8080" in web_section and "not in any EndpointSlice" not in web_section
    assert "Endpoints: no EndpointSlice in the cluster data." in web_section
    assert "no such Service port in the cluster data" not in web_section


@needs_chromium
def test_chromium_renders_a_fleet_of_nft_nodes(browser, tmp_path) -> None:
    # nftables-mode nodes as `nft list ruleset` and as `nft -j list ruleset`, beside an iptables-mode node, one of
    # them stale: the report shows every node and finding, and its evidence is the rules, not the listing's
    # indentation or a line 0 of the JSON (which has no lines).
    from tests.test_audit_mixed import write_node

    stale = base_services()
    next(s for s in stale if s.name == "web").endpoints.append(EndpointSpec("10.244.2.99", 8080))
    snap = tmp_path / "snap"
    for node, mode in {"node-a": "iptables", "node-b": "nftables", "node-c": "nftables"}.items():
        write_node(snap, node, mode, stale if node == "node-c" else base_services())
    from iptrace.collect import store
    from tests.conftest import SAMPLES

    store.write_node_dir(snap / "node-j", {store.NFT_FILE: (SAMPLES / "nodeport-fb-backends-nft.json").read_bytes()},
                         {"node": "node-j", "addresses": ["192.168.49.2"]})
    html = CliRunner().invoke(main, ["audit", str(snap), "-o", "html"]).output
    doc = json.loads(CliRunner().invoke(main, ["audit", str(snap), "-o", "json"]).output)
    path = tmp_path / "report.html"
    path.write_text(html, encoding="utf-8")
    page = browser.load(path.as_uri())
    text = text_of(page.dom)
    assert page.requests == [path.as_uri()] and page.console == [] and page.dialogs == []
    assert [n["dataplane"] for n in doc["nodes"]] == ["iptables", "nftables", "nftables", "nftables"]
    for n in doc["nodes"]:
        assert n["name"] in text
    for f in doc["findings"]:
        assert f["id"] in text and " ".join(f["summary"].split()) in text, f["summary"]
    assert "dnat to 10.244.2.99:8080" in text
    assert "\t" not in re.sub(r"<(script|style)\b.*?</\1>", "", page.dom, flags=re.S) and "line 0" not in text


def _nft_fleet_with_long_names(tmp_path: Path) -> Path:
    """Three nftables-mode nodes, one stale, forwarding a LoadBalancer Service with a Local policy and a long
    name: kube-proxy's chain names carry it (`service-HASH-ingress-nginx/ingress-nginx-controller/tcp/https`)."""
    from tests.test_audit_mixed import write_node

    def services(stale: bool) -> list[ServiceSpec]:
        out = base_services()
        out.append(ServiceSpec("ingress-nginx", "ingress-nginx-controller", "10.96.10.50",
                               [PortSpec("https", 443, node_port=31443, target_port=8443)], type="LoadBalancer",
                               lb_ips=["203.0.113.50"], external_traffic_policy="Local", health_check_node_port=32050,
                               endpoints=[EndpointSpec("10.244.1.14", 8443), EndpointSpec("10.244.2.9", 8443),
                                          *([EndpointSpec("10.244.3.77", 8443)] if stale else [])]))
        return out

    snap = tmp_path / "snap"
    for node in ("node-a", "node-b", "node-c"):
        write_node(snap, node, "nftables", services(node == "node-b"))  # type: ignore[arg-type]
    return snap


def test_long_nft_chain_names_are_drawn_on_several_lines(tmp_path) -> None:
    """A chain box holds at most 28 characters a line (an iptables chain name's limit), its lines one <text>
    whose text is the chain name whole (the page's search and filter find it), its tooltip the same."""
    html = CliRunner().invoke(main, ["audit", str(_nft_fleet_with_long_names(tmp_path)), "-o", "html"]).output
    section = _sections(html)["ingress-nginx/ingress-nginx-controller:https"]
    chains = re.findall(r'<g class="n n-chain"><title>chain (\S+)[^<]*</title>.*?(<text .*?</text>)\s*</g>', section,
                        re.S)
    names = {name for name, _ in chains}
    assert any(n.startswith("local-") and n.endswith("-ingress-nginx/ingress-nginx-controller/tcp/https")
               for n in names), names
    for name, text in chains:
        lines = [read(t).text[0] for t in re.findall(r"<tspan .*?</tspan>", text)] or read(text).text
        assert "".join(lines) == name and max(map(len, lines)) <= 28, (name, lines)
        assert len(lines) > 1 or len(name) <= 28


@needs_chromium
def test_pictures_of_nft_nodes_keep_their_size_on_screen_and_on_paper(browser, tmp_path) -> None:
    """No picture of the nftables-mode fleet is shrunk to fit a 1280-pixel window, and on paper (US Letter:
    Chromium prints 725 CSS pixels wide here) none below 60 % (its text stays at least ~7 px)."""
    html = CliRunner().invoke(main, ["audit", str(_nft_fleet_with_long_names(tmp_path)), "-o", "html"]).output
    path = tmp_path / "report.html"
    path.write_text(html, encoding="utf-8")
    scales = """[...document.querySelectorAll("svg.flow")].map(
        (s) => s.getBoundingClientRect().width / Number(s.getAttribute("width")))"""
    screen = browser.load(path.as_uri(), width=1280, evaluate=scales).value
    paper = browser.load(path.as_uri(), width=725, media="print", evaluate=scales).value
    assert screen and all(s > 0.999 for s in screen), screen
    assert paper and min(paper) >= 0.6, paper


@needs_chromium
@pytest.mark.parametrize("width", [1280, 800])
def test_evidence_rules_are_shown_whole(browser, cli_report, width) -> None:
    """A rule longer than its box wraps under its own text (its DNAT target and comment are at its end: a box
    that scrolled sideways hid them), with no blank line between rules; copied, each rule is one line."""
    path, doc = cli_report
    value = browser.load(path.as_uri(), width=width, evaluate="""[...document.querySelectorAll("pre.evidence")].map(
        (pre) => ({cut: pre.scrollWidth > pre.clientWidth, text: pre.textContent,
                   line: parseFloat(getComputedStyle(pre).lineHeight),
                   rows: [...pre.querySelectorAll(".row")].map((r) => {
                     const rule = r.querySelector(".rule").getBoundingClientRect();
                     const ln = r.querySelector(".ln");
                     return {height: r.getBoundingClientRect().height, indent: ln ? rule.left - ln.getBoundingClientRect().right : 0,
                             inside: rule.right <= pre.getBoundingClientRect().right};
                   }),
                   gaps: (() => { const rs = [...pre.querySelectorAll(".row")].map((r) => r.getBoundingClientRect());
                                  return rs.slice(1).map((r, i) => r.top - rs[i].bottom); })()}))""").value
    evidence = [f["evidence"] for f in doc["findings"] if f["evidence"]]
    assert len(value) == len(evidence)
    assert not [pre["text"] for pre in value if pre["cut"]]
    assert any(row["height"] > 1.5 * pre["line"] for pre in value for row in pre["rows"])  # some rule wrapped
    for pre, lines in zip(value, evidence, strict=True):
        assert all(row["inside"] and abs(row["indent"]) < 1 for row in pre["rows"]), pre
        assert all(abs(gap) < 1 for gap in pre["gaps"]), pre["gaps"]
        assert pre["text"].splitlines() == [f"line {e['line']:>{max(len(str(x['line'])) for x in lines)}}  {e['rule']}"
                                            if e["line"] else e["rule"] for e in lines]


@needs_chromium
def test_long_node_names_neither_widen_the_page_nor_shrink_the_print(browser, tmp_path) -> None:
    """Nodes named as clouds name them: in an 800-pixel window the node table scrolls inside its box, not the
    whole page sideways; on paper (725 CSS pixels here) nothing is wider than the page, so Chromium prints it
    at its own size instead of shrinking every page to fit the table."""
    nodes, cluster = fleet_scenario.inputs()
    named = [Dumped(f"ip-172-31-{i}-{10 + i}.eu-west-1.compute.internal", n.ruleset, n.addresses)
             for i, n in enumerate(nodes)]
    path = tmp_path / "report.html"
    path.write_text(render_audit_html(audit(named, cluster), cluster), encoding="utf-8")
    widest = "document.documentElement.scrollWidth"
    assert browser.load(path.as_uri(), width=800, evaluate=widest).value <= 800
    assert browser.load(path.as_uri(), width=725, media="print", evaluate=widest).value <= 725


def test_a_health_check_accept_is_not_drawn_as_a_failure() -> None:
    """A Local-policy LoadBalancer drawn where one node differs: its health check nodePort ends in ACCEPT (kube-
    proxy's own health check server), drawn in grey; a DROP (no local endpoints) stays red."""
    services = base_services()
    odd = base_services()
    svc(odd, "local-lb").endpoints.append(EndpointSpec("10.244.3.7", 8443))
    nodes = [Dumped("node-a", dump(services, "node-a"), (NODES["node-a"],)),
             Dumped("node-b", dump(odd, "node-b"), (NODES["node-b"],)),
             Dumped("node-c", dump(services, "node-c"), (NODES["node-c"],))]
    section = _sections(render_audit_html(audit(nodes, None)))["default/local-lb:https"]
    fills = {m.group(2).split("<", 1)[0]: m.group(1)
             for m in re.finditer(r'<g class="n n-verdict[^"]*">.*?fill="(#\w+)".*?<text [^>]*>(.*?)</g>', section, re.S)}
    assert fills.get("ACCEPT") and fills.get("DROP"), fills
    assert fills["DROP"] == "#fce8e6" and fills["ACCEPT"] != "#fce8e6", fills


@needs_chromium
def test_copied_text_reads_as_sentences(browser, cli_report) -> None:
    """What a reader copies from a finding (the browser's innerText) has a space after `Fix:`."""
    path, doc = cli_report
    fixes = browser.load(path.as_uri(), evaluate="""[...document.querySelectorAll("article.finding .fix")]
        .map((p) => p.innerText)""").value
    assert fixes == [f"Fix: {f['fix']}" for f in doc["findings"]]


@needs_chromium
def test_a_stale_conntrack_finding_shows_its_commands_and_its_table(browser, tmp_path) -> None:
    """A node whose conntrack table holds stale entries: the fix's `conntrack -D` commands are code, one a line
    (HTML ran them into the prose), and the evidence is said to be lines of the conntrack table, not of the
    node's rules."""
    from iptrace.collect import store
    from tests.conftest import SAMPLES

    snap = tmp_path / "snap"
    for name in ("node-a", "node-b"):
        files = {store.DUMP_FILE: (SAMPLES / "nodeport-fb-backends.txt").read_bytes()}
        if name == "node-a":
            files["conntrack.txt"] = (SAMPLES / "conntrack" / "nodeport-fb-backends.txt").read_bytes()
        store.write_node_dir(snap / name, files, {"node": name, "host": name, "addresses": ["192.168.49.2"]})
    doc = json.loads(CliRunner().invoke(main, ["audit", str(snap), "-o", "json"]).output)
    path = tmp_path / "report.html"
    path.write_text(CliRunner().invoke(main, ["audit", str(snap), "-o", "html"]).output, encoding="utf-8")
    shown = browser.load(path.as_uri(), evaluate="""[...document.querySelectorAll("article.finding")].map((a) => ({
        fix: a.querySelector(".fix").innerText, evidence: a.querySelector("details summary").innerText}))""").value
    stale = [(f, s) for f, s in zip(doc["findings"], shown, strict=True) if f["id"].startswith("stale-conntrack")]
    assert len(stale) == 3
    for f, s in stale:
        fix, *commands = f["fix"].split("\n")
        assert commands and all(c.startswith("conntrack -D ") for c in commands)
        assert [line for line in s["fix"].splitlines() if line.strip()] == [f"Fix: {fix}", *commands], s
        assert s["evidence"].endswith(str(snap / "node-a" / "conntrack.txt")), s["evidence"]


@needs_chromium
def test_a_node_the_audit_could_not_collect_reads_so_in_the_browser(browser, tmp_path) -> None:
    """Its badge said "could not be read", over its error "could not be collected: …" (an SSH key refused, a
    PodSecurity level): the node was never read, it was never reached."""
    from iptrace.kube.audit import combine
    from iptrace.kube.digest import NOT_COLLECTED, NodeResult

    lost = NodeResult("node-z", NOT_COLLECTED + "PodSecurity admission rejected the collector pod in namespace "
                      "default (violates PodSecurity \"baseline:latest\")")
    path = tmp_path / "report.html"
    path.write_text(render_audit_html(combine([lost])), encoding="utf-8")
    text = text_of(browser.load(path.as_uri()).dom)
    assert "node-z could not be collected" in " ".join(text.split()), text
    assert "could not be read" not in text


def _named_report(tmp_path: Path) -> tuple[Path, list[str]]:
    """The fleet scenario's report with its nodes named as clouds name them (hyphens, a DNS name), and the names."""
    nodes, cluster = fleet_scenario.inputs()
    names = ["worker-pool-a-001", "ip-172-31-7-19.eu-west-1.compute.internal"] + [
        f"gke-prod-default-pool-{i}" for i in range(len(nodes) - 2)]
    named = [Dumped(name, n.ruleset, n.addresses) for name, n in zip(names, nodes, strict=True)]
    path = tmp_path / "report.html"
    path.write_text(render_audit_html(audit(named, cluster), cluster), encoding="utf-8")
    return path, names


@needs_chromium
def test_node_names_break_at_no_hyphen(browser, tmp_path) -> None:
    """A node name in the node table is one line on screen (the table scrolls), never `node-` over `001`; on paper
    a name too long for its column breaks only after a dot of its DNS name. Its text is the name either way."""
    path, names = _named_report(tmp_path)
    lines = """[...document.querySelectorAll("table.nodes td.node")].map((td) => {
        const range = document.createRange();
        range.selectNode(td.firstChild);  // (the name; a "(Node …)" after it may go to a line of its own)
        return {text: td.firstChild.textContent.trim(), lines: new Set([...range.getClientRects()].map((r) => Math.round(r.top))).size,
                labels: [...td.querySelectorAll(".name > span")].map((s) => s.getClientRects().length)}; })"""
    for width in (1280, 800, 500):
        shown = browser.load(path.as_uri(), width=width, evaluate=lines).value
        assert sorted(s["text"] for s in shown) == sorted(names)
        assert all(s["lines"] == 1 for s in shown), (width, shown)
    paper = browser.load(path.as_uri(), width=725, media="print", evaluate=lines).value
    assert sorted(s["text"] for s in paper) == sorted(names)
    assert all(n == 1 for s in paper for n in s["labels"]), paper  # (each label whole: a break only after a dot)


# Every whole occurrence of each node name in the findings' text (and the verdict's, and a Service port's list of
# findings): per DNS label, whether its text runs over more than one line (its range taller than one character's).
_BROKEN_NAMES = """((names) => {
    const broken = [], seen = {};
    for (const root of document.querySelectorAll(".verdict, article.finding, ul.port-findings")) {
        const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT), nodes = [];
        let text = "";
        while (walker.nextNode()) { nodes.push([walker.currentNode, text.length]); text += walker.currentNode.data; }
        const at = (i) => { const [node, from] = nodes.filter(([, from]) => from <= i).pop(); return [node, i - from]; };
        const range = (start, end) => {
            const r = document.createRange(), [a, i] = at(start), [b, j] = at(end - 1);
            r.setStart(a, i); r.setEnd(b, j + 1); return r; };
        for (const name of names) {
            for (let k = text.indexOf(name); k >= 0; k = text.indexOf(name, k + 1)) {
                if (/[\\w.-]/.test(text[k - 1] || "") || /[\\w-]/.test(text[k + name.length] || "")) continue;
                seen[name] = (seen[name] || 0) + 1;
                let from = k;
                for (const label of name.split(".")) {
                    const one = range(from, from + 1).getBoundingClientRect().height;
                    if (range(from, from + label.length).getBoundingClientRect().height > 1.5 * one) {
                        broken.push(label);
                    }
                    from += label.length + 1;
                }
            }
        }
    }
    return {broken, seen};
})(%s)"""


@needs_chromium
def test_node_names_in_findings_break_at_no_hyphen(browser, tmp_path) -> None:
    """The node table kept `worker-pool-a-001` on one line, but a finding's summary, detail, fix (`spec.nodeName=
    gke-prod-default-pool-1`), its `node` line and the verdict broke it at a hyphen as any word: `worker-pool-` at
    the end of one line, `a-001` on the next. Now a name breaks there at no hyphen; a DNS name only after a dot."""
    path, names = _named_report(tmp_path)
    for width in range(320, 1000, 23):
        shown = browser.load(path.as_uri(), width=width, evaluate=_BROKEN_NAMES % json.dumps(names)).value
        assert shown["broken"] == [], (width, shown)
        assert len(shown["seen"]) >= 2, shown
    paper = browser.load(path.as_uri(), width=725, media="print", evaluate=_BROKEN_NAMES % json.dumps(names)).value
    assert paper["broken"] == [], paper
