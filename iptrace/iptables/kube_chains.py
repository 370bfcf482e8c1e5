"""kube-proxy's chains in an iptables dump, read on demand: one pass over the chain names classifies them
(per-Service-port chains, endpoint chains and their hairpin addresses); a chain's rules become RuleFacts only when
something asks for them, so a question about one address never reads the whole dump. Pure."""

from __future__ import annotations

import re
from collections.abc import Container

from iptrace.iptables.comments import chain_key
from iptrace.iptables.facts import RuleFacts, read
from iptrace.iptables.model import Chain, Ruleset

MASQ_CHAIN = "KUBE-MARK-MASQ"
NODEPORTS = "KUBE-NODEPORTS"
SERVICES = "KUBE-SERVICES"
EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES"
PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"
SEP = "KUBE-SEP-"
FILTER_CHAINS = (SERVICES, EXTERNAL_SERVICES, NODEPORTS, PROXY_FIREWALL)


_HAIRPIN_SOURCE = re.compile(r"^-s ([^/ \n]+)", re.M)


class _Hairpins:
    """The endpoints' addresses, as the `-s EP/32` of each endpoint chain's hairpin rule says them, for membership
    tests: the first few addresses are looked for in the rules' joined text (a big dump has ~10^5 of these rules,
    and a question needs to know about one or two addresses); past that, the set is built once."""

    _SEARCHES = 4

    def __init__(self, texts: list[str]) -> None:
        self._texts = texts
        self._text: str | None = None
        self._set: frozenset[str] | None = None
        self._asked = 0

    def __contains__(self, ip: object) -> bool:
        if not isinstance(ip, str):
            return False
        if self._set is not None:
            return ip in self._set
        self._asked += 1
        if self._text is None:
            self._text = "\n" + "\n".join(self._texts) + "\n"
        if self._asked > self._SEARCHES:
            self._set = frozenset(_HAIRPIN_SOURCE.findall(self._text))
            return ip in self._set
        return f"\n-s {ip}/" in self._text or f"\n-s {ip} " in self._text


class KubeChains:
    """The rules of the chains kube-proxy owns, read into RuleFacts: the dispatch chains at once, a Service
    port's own chains when that port is asked for."""

    _EAGER = (SERVICES, NODEPORTS, MASQ_CHAIN, "KUBE-POSTROUTING", "POSTROUTING")

    def __init__(self, ruleset: Ruleset) -> None:
        self.filter: dict[str, list[RuleFacts]] = {}
        self.nat_chains: dict[str, Chain] = {}
        self.sep_chains: dict[str, Chain] = {}
        self.service_chains: dict[str, tuple[str, str]] = {}  # per-service-port chain -> (prefix, hash)
        self.endpoint_ips: Container[str] = frozenset()  # the `-s EP` of each endpoint chain's hairpin rule
        self._facts: dict[str, list[RuleFacts]] = {}
        nat = ruleset.table("nat")
        filt = ruleset.table("filter")
        if nat is not None:
            # One pass over every chain name (a big dump has ~10^5): the rest reads only the chains it needs.
            nat_chains, sep_chains, service_chains = self.nat_chains, self.sep_chains, self.service_chains
            hairpins = []
            for chain in nat.chains:
                name = chain.name
                nat_chains[name] = chain
                if name.startswith(SEP):
                    sep_chains[name] = chain
                    if chain.rules:  # kube-proxy writes the hairpin rule first
                        hairpins.append(chain.rules[0][1])
                elif name.startswith("KUBE-"):
                    split = chain_key(name)
                    if split is not None:
                        service_chains[name] = split
            self.endpoint_ips = _Hairpins(hairpins)
            for name in self._EAGER:
                self.facts(name)
        if filt is not None:
            for name in FILTER_CHAINS:
                found = filt.chain(name)
                if found is not None:
                    self.filter[name] = [read(r) for r in found.rules]

    def facts(self, name: str) -> list[RuleFacts]:
        """The rules of nat chain `name` (empty when the dump has no such chain)."""
        found = self._facts.get(name)
        if found is None:
            chain = self.nat_chains.get(name)
            found = self._facts[name] = [read(r) for r in chain.rules] if chain is not None else []
        return found
