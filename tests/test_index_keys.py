"""iptrace.iptables.index keeps what it files each rule under by all it reads of the rule (its text, its shape, the IP
version: index._KEYS), across the indexes a process builds (an audit's nodes write KUBE-SERVICES alike): an index built
from rules filed before is the one built afresh; keyed by less, it would not be."""

from __future__ import annotations

from typing import Any

import pytest

from iptrace.iptables import index, load

_DUMP = ("*nat\n:KUBE-SERVICES - [0:0]\n:X - [0:0]\n"
         + "".join(f"-A KUBE-SERVICES -d 10.0.{i}.1/32 -p tcp -m tcp --dport {80 + i % 3} -j X\n" for i in range(24))
         + "-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j X\nCOMMIT\n")


def _built(rules: Any, version: int) -> Any:
    found = index.ChainIndex.build(rules, version)
    assert found is not None
    return found.by_port, found.by_host, found.rest


def _fresh(rules: Any, version: int, monkeypatch: pytest.MonkeyPatch) -> Any:
    with monkeypatch.context() as m:
        m.setattr(index, "_KEYS", {})
        return _built(rules, version)


class _ByTextAlone(dict):  # type: ignore[type-arg]
    """index._KEYS keyed by a rule's text alone."""

    def get(self, key: Any, default: Any = None) -> Any:
        return super().get(key[0], default)

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key[0], value)


@pytest.mark.parametrize("weak", [False, True])
def test_rules_filed_before_are_filed_as_afresh(monkeypatch: pytest.MonkeyPatch, weak: bool) -> None:
    monkeypatch.setattr(index, "_KEYS", _ByTextAlone() if weak else {})
    rules = load(_DUMP).chain("nat", "KUBE-SERVICES").rules  # type: ignore[union-attr]
    again = load(_DUMP.replace("10.0.3.1/32", "10.0.3.2/32")).chain("nat", "KUBE-SERVICES").rules  # type: ignore[union-attr]
    found = [(_built(r, v), _fresh(r, v, monkeypatch)) for r, v in ((rules, 4), (again, 4), (rules, 6), (rules, 4))]
    assert all(a == b for a, b in found) != weak
    assert found[0][1] != found[2][1]  # (an IPv4 address in an IPv6 index files its rule under no host)
    assert len(index._KEYS) > 0
