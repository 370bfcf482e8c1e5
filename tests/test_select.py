"""`services --namespace/--service/--address`: a filter that matches nothing is an error naming the closest
things the dump has, never an empty view that reads as "this node forwards nothing"."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from iptrace.cli import main
from iptrace.errors import InputError
from iptrace.iptables import load
from iptrace.kube.select import select
from tests.conftest import SAMPLES
from tests.dumps import build_view

FB = "sample_dumps/nodeport-fb-backends.txt"


@pytest.fixture(scope="module")
def view():
    path = SAMPLES / "nodeport-fb-backends.txt"
    return build_view(load(path.read_text(), source=FB))


def test_matching_filters_narrow_the_view(view) -> None:
    assert len(select(view).services) == len(view.services) == 7
    assert [s.label for s in select(view, service="default/karma-daemon").services] == [
        "default/karma-daemon:ftp", "default/karma-daemon:http"]
    assert [s.label for s in select(view, namespace="kube-system", address="10.96.0.10").services] == [
        "kube-system/kube-dns:dns", "kube-system/kube-dns:dns-tcp", "kube-system/kube-dns:metrics"]
    assert [s.label for s in select(view, address="10.244.1.7").services] == ["default/fb-backends:ka-port"]


def test_an_empty_dump_with_no_filter_is_still_an_answer() -> None:
    empty = build_view(load((SAMPLES / "no-kube-proxy.txt").read_text()))
    assert select(empty).services == ()
    with pytest.raises(InputError, match=r"it has no Services$"):
        select(empty, service="default/x", source="d")


@pytest.mark.parametrize(("filters", "message"), [
    ({"service": "ns/nope"},
     "--service ns/nope: no Service ns/nope in d; it has Services: default/fb-backends, default/karma-daemon, "
     "default/kubernetes, kube-system/kube-dns"),
    ({"service": "default/fb-backend"},
     "--service default/fb-backend: no Service default/fb-backend in d; closest: default/fb-backends, "
     "default/kubernetes"),
    ({"service": "default/karma-demon:http"},
     "--service default/karma-demon:http: no Service port default/karma-demon:http in d; closest: "
     "default/karma-daemon:http, default/karma-daemon:ftp, default/kubernetes:https"),
    ({"service": "default/karma-daemon:htp"},
     "--service default/karma-daemon:htp: Service default/karma-daemon in d has no port named 'htp'; its ports: "
     "ftp, http"),
    ({"namespace": "kube-sytem"},
     "--namespace kube-sytem: no Service in namespace 'kube-sytem' in d; closest: kube-system"),
    ({"namespace": "monitoring"},
     "--namespace monitoring: no Service in namespace 'monitoring' in d; it has namespaces: default, kube-system"),
    ({"address": "10.101.234.186"},
     "--address 10.101.234.186: no Service port reachable at 10.101.234.186 in d (no ClusterIP, external or "
     "load-balancer IP, or endpoint); closest addresses: 10.101.234.168 (default/fb-backends:ka-port), "
     "10.106.199.236 (default/karma-daemon:ftp), 10.244.1.7 (default/fb-backends:ka-port)"),
    ({"address": "10.101.234.168:8001"},
     "--address 10.101.234.168:8001: 10.101.234.168 has no Service port 8001 in d; its ports: 5001"),
    ({"address": "fd00::1"},
     "--address fd00::1: no Service port reachable at fd00::1 in d (no ClusterIP, external or load-balancer IP, "
     "or endpoint); its Service addresses are all of the other IP family (e.g. 10.101.234.168)"),
    ({"namespace": "kube-system", "service": "default/fb-backends"},
     "--namespace kube-system --service default/fb-backends: no Service port in d matches all of these together; "
     "--service default/fb-backends alone matches default/fb-backends:ka-port"),
    ({"service": "default/fb-backends", "address": "10.96.0.1"},
     "--service default/fb-backends --address 10.96.0.1: no Service port in d matches all of these together; "
     "--service default/fb-backends alone matches default/fb-backends:ka-port; --address 10.96.0.1 alone matches "
     "default/kubernetes:https"),
    # the filter that matches nothing on its own is the one named
    ({"namespace": "default", "service": "default/nope"},
     "--service default/nope: no Service default/nope in d; closest: default/kubernetes"),
])
def test_a_filter_that_matches_nothing_names_the_closest(view, filters: dict, message: str) -> None:
    with pytest.raises(InputError) as info:
        select(view, source="d", **filters)
    assert str(info.value) == message


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.mark.parametrize(("args", "stderr"), [
    (["--service", "ns/nope"],
     f"Error: --service ns/nope: no Service ns/nope in {FB}; it has Services: default/fb-backends, "
     "default/karma-daemon, default/kubernetes, kube-system/kube-dns\n"),
    (["--service", "default/fb-backends:http", "-o", "json"],
     f"Error: --service default/fb-backends:http: Service default/fb-backends in {FB} has no port named 'http'; "
     "its ports: ka-port\n"),
    (["--namespace", "kube-sytem", "-o", "mermaid"],
     f"Error: --namespace kube-sytem: no Service in namespace 'kube-sytem' in {FB}; closest: kube-system\n"),
    (["--address", "10.96.0.99"],
     f"Error: --address 10.96.0.99: no Service port reachable at 10.96.0.99 in {FB} (no ClusterIP, external or "
     "load-balancer IP, or endpoint); closest addresses: 10.96.0.1 (default/kubernetes:https), 10.96.0.10 "
     "(kube-system/kube-dns:dns), 10.244.0.2 (kube-system/kube-dns:dns)\n"),
])
def test_cli_says_so_and_exits_1(args: list[str], stderr: str) -> None:
    result = CliRunner().invoke(main, ["services", FB, *args])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == stderr


def test_cli_matching_filter_still_prints_the_view() -> None:
    result = run("services", FB, "--service", "default/fb-backends", "-o", "json")
    assert result.exit_code == 0
    assert '"default/fb-backends:ka-port"' in result.stdout


def test_a_dual_stack_ruleset_refuses_an_address_with_its_own_familys_closest() -> None:
    # Both families of the ruleset refuse fd00::10; the IPv6 view's refusal is the one that helps.
    dual = "sample_dumps/dual-stack-nft.nft"
    result = CliRunner().invoke(main, ["services", dual, "--address", "fd00::10"])
    assert result.exit_code == 1
    assert "closest addresses: fd00:10:96::a (kube-system/kube-dns:dns)" in result.stderr
    result = CliRunner().invoke(main, ["services", dual, "--address", "10.96.0.11"])
    assert result.exit_code == 1 and "closest addresses: 10.96.0.1 (default/kubernetes:https)" in result.stderr
