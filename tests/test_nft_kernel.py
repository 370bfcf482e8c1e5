"""The kernel as the judge of the nft model (root): what `save` writes loads with `nft -f` into a fresh network
namespace, and the kernel's own `nft list ruleset` and `nft -j list ruleset` of it read back into an equal model.
Also for kube-proxy's synthesized nftables mode, and for tables iptables-nft wrote beside others."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bench import netns, synth, synth_nft
from iptrace.nftables import load, save
from iptrace.nftables.model import Ruleset, Xt
from iptrace.nftables.normalise import without_json_gaps
from tests.conftest import CORPUS


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (ip netns, nft)"
    if shutil.which("nft") is None:
        return "nft is not installed (apt-get install nftables)"
    return netns.available()


_REASON = _unavailable()
if _REASON and os.environ.get("IPTRACE_ORACLE_REQUIRED") == "1":
    raise RuntimeError(f"IPTRACE_ORACLE_REQUIRED=1 but nft cannot run in a namespace here: {_REASON}")
pytestmark = [pytest.mark.root, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]

NFT_CORPUS = CORPUS / "kube-proxy-nft"


def through_kernel(text: str) -> tuple[str, str]:
    """Load `text` with `nft -f` into a fresh namespace; the kernel's listing and JSON of it."""
    with netns.netns("nft") as ns:
        loaded = netns.run(ns, ["nft", "-f", "-"], stdin=text)
        assert loaded.returncode == 0, f"nft -f refused it:\n{loaded.stderr}\n--- text ---\n{text[:3000]}"
        listed = netns.run(ns, ["nft", "list", "ruleset"])
        as_json = netns.run(ns, ["nft", "-j", "list", "ruleset"])
        assert listed.returncode == 0 and as_json.returncode == 0, listed.stderr + as_json.stderr
        return listed.stdout, as_json.stdout


def assert_kernel_agrees(model: Ruleset, what: str) -> Ruleset:
    listing, as_json = through_kernel(save(model))
    from_kernel = load(listing, source=f"{what} listed by the kernel")
    assert from_kernel == model, what
    assert load(as_json, source=f"{what} as the kernel's JSON") == without_json_gaps(model), what
    return from_kernel


def _corpus_dumps() -> list[Path]:
    if not NFT_CORPUS.is_dir():
        return []
    return [p for p in sorted(NFT_CORPUS.glob("*.json")) if json.loads(p.read_text()).get("dump")]


@pytest.mark.parametrize("path", _corpus_dumps(), ids=lambda p: p.stem)
def test_corpus_rulesets_saved_load_into_the_kernel_and_list_back_equal(path: Path) -> None:
    data = json.loads(path.read_text())
    for form in ("dump", "nft_list"):
        assert_kernel_agrees(load(data[form], source=form), f"{path.stem}:{form}")


def test_synthesized_nftables_mode_through_the_kernel() -> None:
    """bench/synth_nft at a small scale: its transaction loads as kube-proxy's does, the kernel lists what its
    listing says, and that listing saved goes through the kernel unchanged."""
    services = synth.scale(120, 4, seed=3)
    kw = {"node_ips": ["192.168.0.10"], "pod_cidr": "10.244.0.0/16", "service_cidrs": ["10.96.0.0/12"]}
    transaction = synth_nft.render_nft(services, form="transaction", **kw)
    listing = synth_nft.render_nft(services, form="list", **kw)
    kernel_listing, kernel_json = through_kernel(transaction)
    expected = load(listing, source="synthesized listing")
    assert load(transaction) == expected
    assert load(kernel_listing, source="kernel listing") == expected
    assert load(kernel_json, source="kernel JSON") == without_json_gaps(expected)
    assert expected.rule_count > 500 and sum(len(s.elements) for s in expected.tables[0].sets) > 150
    assert_kernel_agrees(expected, "synthesized listing")


HAND_WRITTEN = """\
table inet filter {
  set blocked { type ipv4_addr; flags interval; elements = { 10.0.0.0/8, 192.168.1.1-192.168.1.20, 1.2.3.4 } }
  set seen { typeof ip saddr . tcp dport; flags dynamic,timeout; timeout 1m30s; }
  map marks { type mark : verdict; elements = { 0x10 : accept, 2 : drop } }
  chain input {
    type filter hook input priority filter + 5; policy drop;
    ct state established,related accept
    ct state { invalid, untracked } drop
    iifname "lo" accept
    ip saddr @blocked counter drop comment "blocked sources"
    ip6 daddr fd00::/64 icmpv6 type { nd-neighbor-solicit, nd-router-advert } accept
    tcp dport { 22, 80, 443 } ct state new add @seen { ip saddr . tcp dport } accept
    meta mark vmap @marks
    meta mark & 0xff == 0x3 accept
    tcp flags & (syn|ack) == syn limit rate 10/second accept
    udp dport 53 ct mark set meta mark | 0x4000 accept
    fib daddr type local jump local-in
    log prefix "dropped: " level warn
    reject with icmpx type admin-prohibited
  }
  chain local-in {
    meta l4proto tcp reject with tcp reset
    reject
  }
  chain pre {
    type nat hook prerouting priority dstnat; policy accept;
    meta l4proto tcp ip daddr 198.19.0.10 tcp dport 80 dnat ip to numgen random mod 2 map { 0 : 198.18.128.2 . 8080, 1 : 198.18.128.3 . 8080 }
    meta l4proto tcp ip daddr 198.19.0.11 dnat ip to 198.18.128.4:80
    tcp dport 1 redirect to :8080
  }
  chain post {
    type nat hook postrouting priority srcnat + 10; policy accept;
    masquerade fully-random
    udp dport 5 snat ip to 198.18.0.1:1000-2000
  }
}
table bridge br {
  chain brforward { type filter hook forward priority filter; ether type ip accept; }
}
table netdev nd {
  chain ing { type filter hook ingress device "lo" priority -500; policy accept; }
}
table ip6 six {
  chain out { type filter hook output priority raw + 1; ip6 saddr fd00::1 ip6 daddr != { ::1, fd00::2 } reject; }
}
"""


def test_hand_written_rules_of_every_kind_through_the_kernel() -> None:
    written = load(HAND_WRITTEN, source="hand-written")
    listing, as_json = through_kernel(HAND_WRITTEN)
    from_kernel = load(listing, source="kernel listing")
    assert from_kernel == written
    assert load(as_json) == without_json_gaps(written)
    assert_kernel_agrees(from_kernel, "hand-written, as listed")


def test_iptables_nft_tables_beside_kube_proxys_parse_in_both_forms() -> None:
    """iptables-nft's `ip filter`/`ip nat` (xt statements, translations nft prints) next to kube-proxy's table."""
    dump = (Path(__file__).resolve().parent.parent / "sample_dumps" / "nodeport-fb-backends.txt").read_text()
    dump = "\n".join(line for line in dump.splitlines() if "--nfacct-name" not in line) + "\n"
    kube = json.loads((NFT_CORPUS / "current-TestBadIPs.json").read_text())["nft_list"] if NFT_CORPUS.is_dir() \
        else "table ip kube-proxy {\n}\n"
    with netns.netns("nft") as ns:
        restored = netns.run(ns, ["iptables-nft-restore"], stdin=dump)
        assert restored.returncode == 0, restored.stderr
        assert netns.run(ns, ["nft", "-f", "-"], stdin=kube).returncode == 0
        listing = netns.run(ns, ["nft", "list", "ruleset"]).stdout
        as_json = netns.run(ns, ["nft", "-j", "list", "ruleset"]).stdout
    text_model, json_model = load(listing, source="listing"), load(as_json, source="json")
    labels = {t.label for t in text_model.tables}
    assert {"ip filter", "ip nat", "ip kube-proxy"} <= labels == {t.label for t in json_model.tables}
    nat = text_model.table("ip", "nat")
    assert nat.chain("PREROUTING").base.priority == -100 and nat.chain("KUBE-SERVICES").rules
    # nft's JSON shows iptables' matches as opaque xt statements; the listing prints nft's translations
    assert any(isinstance(i, Xt) for c in json_model.table("ip", "nat").chains for r in c.rules for i in r.items)
    assert without_json_gaps(text_model).table("ip", "kube-proxy") == json_model.table("ip", "kube-proxy")


def test_the_test_namespace_is_gone_afterwards() -> None:
    with netns.netns("nft") as ns:
        pass
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert ns not in listed
