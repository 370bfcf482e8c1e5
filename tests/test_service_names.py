"""`explain`/`trace --dst` with a Service named instead of an address: `kube-dns.kube-system:53`, its full DNS
name, `namespace/name:port`, a port name; resolved to the ClusterIP the node's own rules give that Service
(iptables comments, nftables chain names), and answered exactly as the address would be."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.synth import EndpointSpec, PortSpec, ServiceSpec, render
from iptrace.cli import main
from iptrace.errors import InputError
from iptrace.iptables import load
from iptrace.kube.names import ServiceRef, resolve, service_ref
from tests.conftest import SAMPLES
from tests.dumps import analysis

IPT = str(SAMPLES / "nodeport-fb-backends.txt")
NFT = str(SAMPLES / "nodeport-fb-backends-nft.nft")
NODE = "192.168.49.2"


@pytest.mark.parametrize(("host", "port", "expected"), [
    ("kube-dns.kube-system", "53", ServiceRef("kube-system", "kube-dns", "53")),
    ("kube-dns.kube-system.svc", "dns", ServiceRef("kube-system", "kube-dns", "dns")),
    ("kube-dns.kube-system.svc.cluster.local", "53", ServiceRef("kube-system", "kube-dns", "53")),
    ("kube-system/kube-dns", "dns-tcp", ServiceRef("kube-system", "kube-dns", "dns-tcp")),
    ("kubernetes", "443", ServiceRef(None, "kubernetes", "443")),
    ("10.96.0.1", "443", None),  # an address
    ("www.example.com", "443", None),  # a DNS name, but not a Service's (NAME.NAMESPACE.svc…)
    ("Kube_DNS", "53", None),
    ("kube-dns.kube-system", "", None),
    ("kube-dns.kube-system", "Dns!", None),
])
def test_what_names_a_service(host: str, port: str, expected: ServiceRef | None) -> None:
    assert service_ref(host, port) == expected


def _resolve(text: str, proto: str = "tcp", *, given: bool = False) -> tuple[str, int, str, str]:
    host, _, port = text.rpartition(":")
    ref = service_ref(host, port)
    assert ref is not None
    a = analysis(load(Path(IPT).read_text()), node_ips=[NODE])
    return resolve(a.layout, ref, proto, "node1", proto_given=given)


def test_a_port_by_number_or_name_and_its_protocol() -> None:
    assert _resolve("kube-dns.kube-system:53") == ("10.96.0.10", 53, "tcp", "kube-system/kube-dns:dns-tcp")
    assert _resolve("kube-dns.kube-system:53", "udp", given=True)[2:] == ("udp", "kube-system/kube-dns:dns")
    assert _resolve("kube-dns.kube-system:dns") == ("10.96.0.10", 53, "udp", "kube-system/kube-dns:dns")
    assert _resolve("default/fb-backends:ka-port")[:3] == ("10.101.234.168", 5001, "tcp")
    # A number no port of the Service has is kept (explain says it is the targetPort).
    assert _resolve("fb-backends.default:8001") == ("10.101.234.168", 8001, "tcp",
                                                    "default/fb-backends (no port 8001/tcp)")


@pytest.mark.parametrize(("text", "message"), [
    ("fb-backend.default:5001", "no Service default/fb-backend in node1; closest: default/fb-backends"),
    ("fb-backends.default:http", "Service default/fb-backends in node1 has no port named 'http'; its ports: "
                                 "ka-port (5001/tcp)"),
])
def test_what_the_rules_do_not_have_is_refused_with_what_they_have(text: str, message: str) -> None:
    with pytest.raises(InputError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        _resolve(text)


def test_a_name_in_several_namespaces_and_rules_without_names() -> None:
    specs = [ServiceSpec(ns, "web", ip, [PortSpec("http", 80, target_port=8080)],
                         endpoints=[EndpointSpec("10.244.1.5", 8080)])
             for ns, ip in (("shop", "10.96.0.20"), ("blog", "10.96.0.21"))]
    text = render(specs, node_ips=[NODE], pod_cidr="10.244.0.0/16")
    bare = re.sub(r' -m comment --comment ("[^"]*"|\S+)', "", text)  # (rules written without any comment)
    for dump, message in ((text, "web names a Service in several namespaces of node1 (blog/web, shop/web): "
                                 "say which, e.g. web.blog:80"),
                          (bare, "web: node1 does not name its Services (no rule comments)")):
        a = analysis(load(dump), node_ips=[NODE])
        with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
            resolve(a.layout, ServiceRef(None, "web", "80"), "tcp", "node1")
    named = analysis(load(render(specs, node_ips=[NODE], pod_cidr="10.244.0.0/16")), node_ips=[NODE])
    assert resolve(named.layout, ServiceRef("blog", "web", "http"), "tcp", "n")[:2] == ("10.96.0.21", 80)


@pytest.mark.parametrize("dump", [IPT, NFT], ids=["iptables", "nftables"])
@pytest.mark.parametrize("command", ["explain", "trace"])
def test_the_cli_answers_a_name_as_it_answers_the_address(dump: str, command: str) -> None:
    def run(dst: str) -> tuple[int, str, str]:
        result = CliRunner().invoke(main, [command, dump, "--dst", dst, "--node-ip", NODE,
                                                           "--src", "pod", "-o", "json"])
        return result.exit_code, result.stdout, result.stderr

    by_name = run("kube-dns.kube-system.svc.cluster.local:dns/udp")
    by_address = run("10.96.0.10:53/udp")
    assert by_name[:2] == by_address[:2]
    assert "note: kube-dns.kube-system.svc.cluster.local:dns/udp is kube-system/kube-dns:dns at 10.96.0.10:53/udp" \
        in by_name[2]


def test_a_dst_file_of_names_and_addresses_answers_each_and_names_the_bad_line(tmp_path: Path) -> None:
    questions = tmp_path / "q.txt"
    questions.write_text("kubernetes.default:https\n10.96.0.1:443\nnope.default:80\n")
    result = CliRunner().invoke(main, ["trace", IPT, "--dst-file", str(questions), "--node-ip", NODE,
                                                       "-o", "json"])
    assert result.exit_code == 1
    docs = json.loads(result.stdout)
    assert docs[0] == docs[1] and docs[0]["packet"]["dst"] == "10.96.0.1"
    assert docs[2]["where"] == f"{questions}:3" and "no Service default/nope" in docs[2]["error"]


@pytest.mark.parametrize(("given", "slashed", "shown"), [
    ("kube-dns.kube-system", "kube-system/kube-dns",
     {"kube-system/kube-dns:dns", "kube-system/kube-dns:dns-tcp", "kube-system/kube-dns:metrics"}),
    ("kube-dns.kube-system.svc.cluster.local:dns", "kube-system/kube-dns:dns", {"kube-system/kube-dns:dns"}),
])
def test_services_takes_a_services_dns_name_too(given: str, slashed: str, shown: set[str]) -> None:
    result = CliRunner().invoke(main, ["services", IPT, "--service", given, "-o", "json"])
    assert result.exit_code == 0, result.output
    assert result.stdout == CliRunner().invoke(main, ["services", IPT, "--service", slashed, "-o", "json"]).stdout
    assert {f"{d['namespace']}/{d['name']}:{d['port_name']}" for d in json.loads(result.stdout)} == shown
    bad = CliRunner().invoke(main, ["services", IPT, "--service", "kube-dns"])
    assert bad.exit_code == 2 and "expected NS/NAME or NAME.NAMESPACE" in bad.output
