"""The style sheet and the small script of the HTML report (render.html), kept apart so that the renderer
reads as structure. Both are inlined into the page and allowed by hash in its Content-Security-Policy; the
page loads nothing else. The script only filters what the page already holds: with scripts off every
finding and picture is shown."""

from __future__ import annotations

import base64
import hashlib

STYLE = """
:root {
  --err: #b3261e; --err-bg: #fdecea; --warn: #8a5300; --warn-bg: #fff4d6; --info: #1a5fb4; --info-bg: #e8f0fe;
  --ok: #1e7b34; --ok-bg: #e6f4ea; --ink: #1f2328; --muted: #59636e; --line: #d0d7de; --code-bg: #f6f8fa;
  --mono: ui-monospace, "DejaVu Sans Mono", "Liberation Mono", Menlo, Consolas, monospace;
}
* { box-sizing: border-box; }
html { background: #fff; color-scheme: light; }
body { margin: 0 auto; max-width: 1240px; padding: 20px 28px 48px; color: var(--ink);
       font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
[hidden] { display: none !important; }
code, pre, .mono { font-family: var(--mono); font-size: 12.5px; }
a { color: #0b57d0; }
h1 { font-size: 22px; margin: 0; }
h2 { font-size: 17px; margin: 30px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h2 .count { color: var(--muted); font-weight: normal; }
h3 { font-size: 15px; margin: 0; font-family: var(--mono); }
.masthead { display: flex; flex-wrap: wrap; align-items: baseline; justify-content: space-between; gap: 4px 16px;
            border-bottom: 3px solid var(--ink); padding-bottom: 8px; }
.masthead .source { color: var(--muted); }
.verdict { margin: 16px 0 8px; padding: 12px 16px; border: 1px solid; border-left-width: 6px; border-radius: 4px; }
.verdict strong { font-size: 17px; margin-right: 10px; }
.verdict.fail { background: var(--err-bg); border-color: var(--err); }
.verdict.warn { background: var(--warn-bg); border-color: var(--warn); }
.verdict.pass { background: var(--ok-bg); border-color: var(--ok); }
.verdict p { margin: 4px 0 0; }
.tally { display: flex; flex-wrap: wrap; gap: 8px; margin: 10px 0 0; padding: 0; list-style: none; }
.badge { display: inline-block; min-width: 68px; padding: 0 8px; border: 1px solid; border-radius: 3px;
         text-align: center; font-size: 11.5px; font-weight: 700; letter-spacing: .05em; line-height: 20px; }
.badge.error { color: var(--err); background: var(--err-bg); }
.badge.warning { color: var(--warn); background: var(--warn-bg); }
.badge.info { color: var(--info); background: var(--info-bg); }
.badge.ok { color: var(--ok); background: var(--ok-bg); }
.controls { position: sticky; top: 0; z-index: 2; display: flex; flex-wrap: wrap; align-items: center;
            gap: 8px 18px; margin: 12px -8px 0; padding: 8px; background: #fff; border-bottom: 1px solid var(--line); }
.controls label { white-space: nowrap; }
.controls input[type=search] { width: 20em; padding: 3px 6px; }
.controls .shown { color: var(--muted); margin-left: auto; }
.table-scroll { overflow-x: auto; }  /* long node names in a narrow window: the table scrolls, not the page */
table.nodes { border-collapse: collapse; width: 100%; }
table.nodes th, table.nodes td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line);
                                 vertical-align: top; }
table.nodes th { background: var(--code-bg); font-weight: 600; white-space: nowrap; }
table.nodes td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.nodes td.node { font-family: var(--mono); font-weight: 600; }
table.nodes .name, table.nodes .name > span { white-space: nowrap; }  /* a node name on one line (the table scrolls) */
/* a node name in prose breaks at no hyphen either; a long DNS name only after a dot (each label a nowrap box) */
.verdict .name > span, .finding .name > span, .port-findings .name > span { display: inline-block;
                                                                           white-space: nowrap; }
table.nodes tr.load-error td, table.nodes tr.no-kube-proxy td { background: #fffafa; }
table.nodes td.error-text { font-family: var(--mono); font-size: 12px; color: var(--err); }
.none { color: var(--muted); }
.finding { margin: 10px 0; padding: 10px 14px; border: 1px solid var(--line); border-left: 6px solid;
           border-radius: 4px; break-inside: avoid; }
.finding.error { border-left-color: var(--err); }
.finding.warning { border-left-color: var(--warn); }
.finding.info { border-left-color: var(--info); }
.finding .head { display: flex; gap: 10px; align-items: baseline; }
.finding .summary { margin: 0; font-weight: 600; font-size: 14.5px; }
.finding .meta { margin: 2px 0 6px 78px; color: var(--muted); font-size: 12.5px; }
.finding .meta code { color: var(--ink); }
.finding .body { margin-left: 78px; }
.finding p { margin: 6px 0; }
.fix { margin: 6px 0; padding: 6px 10px; background: var(--code-bg); border-radius: 4px; }
.finding .fix p { margin: 0; }
pre.commands { margin: 4px 0 0; white-space: pre-wrap; overflow-wrap: anywhere; }
details > summary { cursor: pointer; color: var(--muted); font-size: 12.5px; }
pre.evidence { margin: 4px 0 0; padding: 8px 10px; background: var(--code-bg);
               border: 1px solid var(--line); border-radius: 4px; white-space: pre-wrap; line-height: 1.45; }
pre.evidence .row { display: flex; }
pre.evidence .ln { flex: none; color: var(--muted); user-select: none; }
pre.evidence .rule { min-width: 0; overflow-wrap: anywhere; }
.port { margin: 14px 0 22px; padding: 12px 14px; border: 1px solid var(--line); border-radius: 6px; }
.port .head { display: flex; flex-wrap: wrap; gap: 4px 12px; align-items: baseline; }
.port .kind { color: var(--muted); }
.port ul.port-findings { margin: 6px 0; padding-left: 18px; }
.port .api { margin: 6px 0; padding: 6px 10px; background: var(--info-bg); border-radius: 4px; }
.port .absent { margin: 8px 0; padding: 6px 10px; border: 1px dashed var(--line); border-radius: 4px;
                color: var(--muted); }
.port .absent.wrong { border-color: var(--err); color: var(--err); }
.port .more { margin: 8px 0 0; color: var(--muted); }
figure.variant { margin: 10px 0 0; padding: 10px; border: 1px solid var(--line); border-radius: 4px;
                 overflow-x: auto; break-inside: avoid; }
figure.variant.has-findings { border-color: #e6a19c; }
figure.variant figcaption { margin-bottom: 4px; }
figure.variant figcaption .nodes { font-family: var(--mono); font-weight: 700; }
figure.variant ul.flow-text { margin: 6px 0 0; padding-left: 18px; font-size: 12.5px; color: var(--muted); }
figure.variant ul.flow-text .flag { color: var(--err); font-weight: 600; }
svg.flow { display: block; max-width: 100%; height: auto; }
footer { margin-top: 36px; padding-top: 8px; border-top: 1px solid var(--line); color: var(--muted);
         font-size: 12px; }
@media print {
  @page { margin: 14mm 12mm; }
  body { max-width: none; padding: 0; font-size: 11.5px; }
  .controls { display: none !important; }
  a { color: inherit; text-decoration: none; }
  .finding, figure.variant, tr { break-inside: avoid; }
  .port { break-inside: auto; }
  /* the node table fits the paper (else Chromium shrinks every page to fit it) */
  .table-scroll { overflow: visible; }
  table.nodes th { white-space: normal; }
  /* on paper a name too long for its column breaks after a dot only: each label a nowrap box */
  table.nodes .name { white-space: normal; }
  table.nodes .name > span { display: inline-block; }
  table.nodes .badge { min-width: 0; }
  h2, h3, .port .head { break-after: avoid; }
  figure.variant { overflow: visible; }
  details > summary { list-style: none; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
""".strip("\n") + "\n"

SCRIPT = """
(function () {
  "use strict";
  var controls = document.getElementById("controls");
  if (!controls) { return; }
  controls.hidden = false;
  var findings = Array.prototype.slice.call(document.querySelectorAll("article.finding"));
  var ports = Array.prototype.slice.call(document.querySelectorAll("section.port"));
  var boxes = Array.prototype.slice.call(controls.querySelectorAll("input[name=severity]"));
  var node = document.getElementById("filter-node");
  var text = document.getElementById("filter-text");
  var shown = document.getElementById("filter-shown");
  // ?severity=error,warning&node=NAME&q=TEXT preselects the filters (a link can share a filtered view).
  var params = new URLSearchParams(window.location.search);
  if (params.has("severity")) {
    var wanted = params.get("severity").split(",");
    boxes.forEach(function (b) { b.checked = wanted.indexOf(b.value) >= 0; });
  }
  if (params.has("node")) { node.value = params.get("node"); }
  if (params.has("q")) { text.value = params.get("q"); }
  function matches(el, q) { return !q || el.textContent.toLowerCase().indexOf(q) >= 0; }
  function apply() {
    var severities = boxes.filter(function (b) { return b.checked; }).map(function (b) { return b.value; });
    var who = node.value;
    var q = text.value.trim().toLowerCase();
    var count = 0;
    findings.forEach(function (f) {
      var ok = severities.indexOf(f.dataset.severity) >= 0 && (!who || f.dataset.node === who) && matches(f, q);
      f.hidden = !ok;
      if (ok) { count += 1; }
    });
    ports.forEach(function (p) {
      var sev = JSON.parse(p.dataset.severities);
      var nodes = JSON.parse(p.dataset.nodes);
      p.hidden = !(sev.some(function (s) { return severities.indexOf(s) >= 0; }) &&
                   (!who || nodes.indexOf(who) >= 0) && matches(p, q));
    });
    shown.textContent = count + " of " + findings.length + " findings shown";
  }
  boxes.forEach(function (b) { b.addEventListener("change", apply); });
  node.addEventListener("change", apply);
  text.addEventListener("input", apply);
  window.addEventListener("beforeprint", function () {
    Array.prototype.forEach.call(document.querySelectorAll("details"), function (d) { d.open = true; });
  });
  apply();
})();
""".strip("\n") + "\n"


def csp_hash(text: str) -> str:
    """The CSP source expression that allows exactly this inline <style> or <script> text."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


CONTENT_SECURITY_POLICY = (f"default-src 'none'; style-src {csp_hash(STYLE)}; script-src {csp_hash(SCRIPT)}; "
                           "img-src data:; base-uri 'none'; form-action 'none'")
