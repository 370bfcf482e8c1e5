"""kube-proxy's chains in an iptables dump, read on demand: one regex pass over the chain names lists the
per-Service-port chains; the endpoint chains and their hairpin addresses are listed when first asked for, and a
chain's rules become RuleFacts only when something asks for them, so a question about one address never reads
the whole dump. Pure."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Container, Mapping

from iptrace.iptables.facts import RuleFacts, read
from iptrace.iptables.hashes import SERVICE_PORT_CHAIN_PREFIXES
from iptrace.iptables.model import Chain, Ruleset, Table

MASQ_CHAIN = "KUBE-MARK-MASQ"
NODEPORTS = "KUBE-NODEPORTS"
SERVICES = "KUBE-SERVICES"
EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES"
PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"
SEP = "KUBE-SEP-"
FILTER_CHAINS = (SERVICES, EXTERNAL_SERVICES, NODEPORTS, PROXY_FIREWALL)


# Over "\n"-joined rule texts: each line's `-s`, leading as iptables-save prints it, or after the comment as
# kube-proxy's own restore input has it (`-m comment --comment ns/svc:port -s 10.180.0.1 -j KUBE-MARK-MASQ`).
_HAIRPIN_SOURCE = re.compile(r"[\n ]-s ([^/ \n]+)")
# Every per-Service-port chain name, found in the "\n"-joined chain names: (name, prefix, hash), as chain_key
# splits it (each prefix is "KUBE-<word>-"), one regex pass instead of a Python call per name.
_SERVICE_CHAIN = re.compile("^((" + "|".join(map(re.escape, SERVICE_PORT_CHAIN_PREFIXES)) + ")(.*))$", re.M)


def _found(text: str, needle: str) -> bool:
    """Whether `needle` (`-s IP`) is in `text` followed by the end of its address (one scan; the text ends with
    a newline)."""
    at = text.find(needle)
    while at >= 0 and text[at + len(needle)] not in "/ \n":
        at = text.find(needle, at + 1)
    return at >= 0


class _Hairpins:
    """The endpoints' addresses, as the `-s EP/32` of each endpoint chain's hairpin rule says them, for membership
    tests: the first addresses asked are looked for in the rules' joined text (a big dump has ~10^5 of these
    rules, and a question needs to know about the few addresses a pod source is picked from); past that, the set
    is built once. Nothing is read before the first test."""

    _SEARCHES = 32

    def __init__(self, texts: Callable[[], list[str]]) -> None:
        self._texts = texts
        self._text: str | None = None
        self._set: frozenset[str] | None = None
        self._asked: dict[str, bool] = {}

    def __contains__(self, ip: object) -> bool:
        if not isinstance(ip, str) or not ip or "/" in ip or " " in ip or "\n" in ip:
            return False  # (never a captured address)
        if self._set is not None:
            return ip in self._set
        found = self._asked.get(ip)
        if found is not None:
            return found
        if self._text is None:
            self._text = "\n" + "\n".join(self._texts()) + "\n"
        if len(self._asked) >= self._SEARCHES:
            self._set = frozenset(_HAIRPIN_SOURCE.findall(self._text))
            return ip in self._set
        found = self._asked[ip] = any(_found(self._text, f"{lead}-s {ip}") for lead in "\n ")
        return found


class KubeChains:
    """The rules of the chains kube-proxy owns, read into RuleFacts: the dispatch chains at once, a Service
    port's own chains when that port is asked for. Of the ~10^5 chain names of a big dump only the per-Service-
    port ones are listed up front; the endpoint chains and their hairpin addresses when first asked for."""

    _EAGER = (SERVICES, NODEPORTS, MASQ_CHAIN, "KUBE-POSTROUTING", "POSTROUTING")

    def __init__(self, ruleset: Ruleset) -> None:
        self.filter: dict[str, list[RuleFacts]] = {}
        self.nat_chains: Mapping[str, Chain] = {}
        self.service_chains: dict[str, tuple[str, str]] = {}  # per-service-port chain -> (prefix, hash)
        self.endpoint_ips: Container[str] = frozenset()  # the `-s EP` of each endpoint chain's hairpin rule
        self._nat = ruleset.table("nat")
        self._sep_chains: dict[str, Chain] | None = None
        self._facts: dict[str, list[RuleFacts]] = {}
        nat = self._nat
        filt = ruleset.table("filter")
        if nat is not None:
            self.nat_chains = nat.by_name
            names = "\n".join([chain.name for chain in nat.chains])
            self.service_chains = {name: (prefix, key) for name, prefix, key in _SERVICE_CHAIN.findall(names)}
            self.endpoint_ips = _Hairpins(functools.partial(_hairpin_texts, nat))  # (not a method: no cycle)
            for name in self._EAGER:
                self.facts(name)
        if filt is not None:
            for name in FILTER_CHAINS:
                found = filt.chain(name)
                if found is not None:
                    self.filter[name] = [read(r) for r in found.rules]

    @property
    def sep_chains(self) -> dict[str, Chain]:
        """The endpoint chains (KUBE-SEP-…) by name, in dump order."""
        if self._sep_chains is None:
            nat = self._nat
            self._sep_chains = {c.name: c for c in nat.chains if c.name.startswith(SEP)} if nat is not None else {}
        return self._sep_chains

    def facts(self, name: str) -> list[RuleFacts]:
        """The rules of nat chain `name` (empty when the dump has no such chain)."""
        found = self._facts.get(name)
        if found is None:
            chain = self.nat_chains.get(name)
            found = self._facts[name] = [read(r) for r in chain.rules] if chain is not None else []
        return found

    def mark(self) -> int:
        """Where the facts read from now on start (for forget_since)."""
        return len(self._facts)

    def forget_since(self, mark: int) -> None:
        """Drop the facts read since `mark`: a Service port's own chains are read for that port alone, and
        kept they would be ~10^5 objects (~30 MB of a 160,000-rule dump) that nothing reads again."""
        facts = self._facts
        while len(facts) > mark:
            facts.popitem()  # (the last read first: a dict keeps its insertion order)


def _hairpin_texts(nat: Table) -> list[str]:
    """The first rule of every endpoint chain: kube-proxy writes the hairpin rule first."""
    return [chain.rules[0][1] for chain in nat.chains if chain.rules and chain.name.startswith(SEP)]
