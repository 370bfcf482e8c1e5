"""Golden output of nftables-mode rulesets (review the diff; `pytest --update-golden` rewrites): `services` text and
JSON, and `explain` prose where nftables mode answers differently from iptables mode — a targetPort used on a
ClusterIP is refused by kube-proxy itself (cluster-ips-check), an address of the service CIDR no Service has is
dropped.

The rulesets are what kube-proxy writes (bench/synth_nft.py, as the kernel lists them) for two corpus fixtures'
Services — the corpus files themselves stay outside the repository — and for SPEC.md's worked example
(fb-backends: port 5001, targetPort 8001, nodePort 30904). Also through the CLI: `iptrace services`,
`trace` and `explain` on the listing, as a user runs them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.synth import ServiceSpec
from bench.synth_nft import render_nft
from iptrace.cli import main
from iptrace.explain import Explainer
from iptrace.nftables import load
from iptrace.render.explain import render_explain_text
from iptrace.render.json import dumps
from iptrace.render.services import render_services_text, services_to_json
from tests.dumps import analysis
from tests.nft_corpus import CORPUS, read, synthesized

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
# Two corpus fixtures' Services, and SPEC.md's worked example (sample_dumps/scenarios.json) in nftables mode.
RULESETS = {"nft-loadbalancer": "current-TestLoadBalancer.json",
            "nft-internal-external-masquerade": "current-TestInternalExternalMasquerade__1_base.json",
            "nft-nodeport-fb-backends": "nodeport-fb-backends.txt"}
# (golden name, ruleset, destination, port, source): what nftables mode answers itself.
EXPLAINED = [("target-port-refused", "nft-nodeport-fb-backends", "10.101.234.168", 8001, "pod"),
             ("node-port-refused", "nft-nodeport-fb-backends", "10.101.234.168", 30904, "pod"),
             ("unallocated-dropped", "nft-nodeport-fb-backends", "10.101.234.99", 5001, "pod"),
             ("unknown-port-refused", "nft-loadbalancer", "172.30.0.41", 8080, "pod"),
             ("source-range-blocked", "nft-loadbalancer", "5.6.7.8", 80, "203.0.113.130")]


def _ruleset_text(name: str) -> tuple[str, list[str]]:
    source = RULESETS[name]
    if source.endswith(".txt"):
        scenario = json.loads((ROOT / "sample_dumps" / "scenarios.json").read_text())[source]
        specs = [ServiceSpec.from_dict(s) for s in scenario["services"]]
        return (render_nft(specs, node_ips=scenario["node_ips"], pod_cidr=scenario["pod_cidr"],
                           service_cidrs=["10.96.0.0/12"], form="list"), scenario["node_ips"])
    path = CORPUS / source
    if not path.is_file():
        pytest.skip(f"corpus fixture {path.name} not found (../shared/corpus/kube-proxy-nft)")
    data = read(path)
    return synthesized(data, "list"), [ip for ip in data["node_ips"] if ":" not in ip]


@pytest.mark.parametrize("name", RULESETS)
def test_services_golden(name: str, golden: Callable[[Path | str, str], None]) -> None:
    text, node_ips = _ruleset_text(name)
    view = analysis(load(text, source=f"{name}.nft"), node_ips=node_ips).view
    golden(GOLDEN / name / "services.txt", render_services_text(view))
    golden(GOLDEN / name / "services.json", dumps(services_to_json(view)))


@pytest.mark.parametrize(("case", "name", "dst", "port", "src"), EXPLAINED, ids=[c[0] for c in EXPLAINED])
def test_explain_golden(case: str, name: str, dst: str, port: int, src: str,
                        golden: Callable[[Path | str, str], None]) -> None:
    text, node_ips = _ruleset_text(name)
    report = Explainer(analysis(load(text, source=f"{name}.nft"), node_ips=node_ips)).explain(dst, port, src=src)
    golden(GOLDEN / name / f"explain-{case}.txt", render_explain_text(report))


def test_the_cli_reads_an_nft_listing(tmp_path: Path) -> None:
    text, node_ips = _ruleset_text("nft-loadbalancer")
    dump = tmp_path / "node1.nft"
    dump.write_text(text)
    runner = CliRunner()
    args = ["--node-ip", node_ips[0]]
    done = runner.invoke(main, ["services", str(dump), *args])
    assert done.exit_code == 0, done.output
    assert "kube-proxy nftables mode, pre-DNAT firewall layout (~1.34-1.35)" in done.output
    done = runner.invoke(main, ["trace", str(dump), "--dst", "172.30.0.41:80", "--src", "pod", "-o", "json", *args])
    assert done.exit_code == 0 and '"table": "ip kube-proxy"' in done.output
    done = runner.invoke(main, ["explain", str(dump), "--dst", "172.30.0.41:8080", "--src", "pod", *args])
    assert done.exit_code == 3, done.output
    assert "connection refused" in done.output and "not kube-proxy's" not in done.output
    done = runner.invoke(main, ["parse", str(dump)])
    assert done.exit_code == 0 and "kube-proxy ipv4: nftables mode" in done.output
