"""Vocabulary as data: which option takes how many arguments, per match module and for targets.

A new match module is a row here, never a grammar change. The numbers follow the iptables extensions'
`print`/`save` functions (libxt_*.c / libipt_*.c / libip6t_*.c): what iptables-save writes after each option.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

# The basic matches every rule can carry (iptables' own command line), with their long spellings.
BASIC_ALIASES: Mapping[str, str] = MappingProxyType({
    "--source": "-s", "--src": "-s", "--destination": "-d", "--dst": "-d",
    "--protocol": "-p", "--in-interface": "-i", "--out-interface": "-o", "--fragment": "-f",
})
BASIC_ARITY: Mapping[str, int] = MappingProxyType({"-s": 1, "-d": 1, "-p": 1, "-i": 1, "-o": 1, "-f": 0,
                                                   "-4": 0, "-6": 0, "-c": 2})
MATCH_WORDS = frozenset({"-m", "--match"})
JUMP_WORDS: Mapping[str, bool] = MappingProxyType({"-j": False, "--jump": False, "-g": True, "--goto": True})

_PORTS = {"--sport": 1, "--source-port": 1, "--dport": 1, "--destination-port": 1}

MODULE_ARITY: Mapping[str, Mapping[str, int]] = MappingProxyType({
    "comment": {"--comment": 1},
    "tcp": {**_PORTS, "--tcp-flags": 2, "--syn": 0, "--tcp-option": 1},
    "udp": dict(_PORTS),
    "udplite": dict(_PORTS),
    "sctp": {**_PORTS, "--chunk-types": 2},
    "dccp": {**_PORTS, "--dccp-types": 1, "--dccp-option": 1},
    "icmp": {"--icmp-type": 1},
    "icmp6": {"--icmpv6-type": 1},
    "icmpv6": {"--icmpv6-type": 1},
    "ipv6-icmp": {"--icmpv6-type": 1},
    "multiport": {"--sports": 1, "--dports": 1, "--ports": 1, "--source-ports": 1,
                  "--destination-ports": 1},
    "conntrack": {"--ctstate": 1, "--ctproto": 1, "--ctorigsrc": 1, "--ctorigdst": 1, "--ctreplsrc": 1,
                  "--ctrepldst": 1, "--ctorigsrcport": 1, "--ctorigdstport": 1, "--ctreplsrcport": 1,
                  "--ctrepldstport": 1, "--ctstatus": 1, "--ctexpire": 1, "--ctdir": 1},
    "state": {"--state": 1},
    "mark": {"--mark": 1},
    "connmark": {"--mark": 1},
    "addrtype": {"--src-type": 1, "--dst-type": 1, "--limit-iface-in": 0, "--limit-iface-out": 0},
    "statistic": {"--mode": 1, "--probability": 1, "--every": 1, "--packet": 1},
    "recent": {"--name": 1, "--set": 0, "--rcheck": 0, "--update": 0, "--remove": 0, "--seconds": 1,
               "--reap": 0, "--hitcount": 1, "--rttl": 0, "--rsource": 0, "--rdest": 0, "--mask": 1},
    "set": {"--match-set": 2, "--set": 2, "--return-nomatch": 0, "--update-counters": 0,
            "--update-subcounters": 0, "--packets-eq": 1, "--packets-lt": 1, "--packets-gt": 1,
            "--bytes-eq": 1, "--bytes-lt": 1, "--bytes-gt": 1},
    "physdev": {"--physdev-in": 1, "--physdev-out": 1, "--physdev-is-in": 0, "--physdev-is-out": 0,
                "--physdev-is-bridged": 0},
    "owner": {"--uid-owner": 1, "--gid-owner": 1, "--socket-exists": 0, "--suppl-groups": 0},
    "limit": {"--limit": 1, "--limit-burst": 1},
    "hashlimit": {"--hashlimit": 1, "--hashlimit-upto": 1, "--hashlimit-above": 1, "--hashlimit-burst": 1,
                  "--hashlimit-mode": 1, "--hashlimit-srcmask": 1, "--hashlimit-dstmask": 1,
                  "--hashlimit-name": 1, "--hashlimit-htable-size": 1, "--hashlimit-htable-max": 1,
                  "--hashlimit-htable-expire": 1, "--hashlimit-htable-gcinterval": 1,
                  "--hashlimit-rate-match": 0, "--hashlimit-rate-interval": 1},
    "iprange": {"--src-range": 1, "--dst-range": 1},
    "mac": {"--mac-source": 1},
    "pkttype": {"--pkt-type": 1},
    "rpfilter": {"--loose": 0, "--validmark": 0, "--accept-local": 0, "--invert": 0},
    "socket": {"--transparent": 0, "--nowildcard": 0, "--restore-skmark": 0},
    "nfacct": {"--nfacct-name": 1},
    "length": {"--length": 1},
    "tos": {"--tos": 1},
    "dscp": {"--dscp": 1, "--dscp-class": 1},
    "ttl": {"--ttl-eq": 1, "--ttl-gt": 1, "--ttl-lt": 1},
    "hl": {"--hl-eq": 1, "--hl-gt": 1, "--hl-lt": 1},
    "string": {"--algo": 1, "--from": 1, "--to": 1, "--string": 1, "--hex-string": 1, "--icase": 0},
    "u32": {"--u32": 1},
    "bpf": {"--bytecode": 1, "--object-pinned": 1},
    "policy": {"--dir": 1, "--pol": 1, "--strict": 0, "--reqid": 1, "--spi": 1, "--proto": 1, "--mode": 1,
               "--tunnel-src": 1, "--tunnel-dst": 1, "--next": 0},
    "helper": {"--helper": 1},
    "devgroup": {"--src-group": 1, "--dst-group": 1},
    "cgroup": {"--path": 1, "--cgroup": 1},
    "cpu": {"--cpu": 1},
    "ipvs": {"--ipvs": 0, "--vproto": 1, "--vaddr": 1, "--vport": 1, "--vdir": 1, "--vmethod": 1,
             "--vportctl": 1},
    "time": {"--datestart": 1, "--datestop": 1, "--timestart": 1, "--timestop": 1, "--monthdays": 1,
             "--weekdays": 1, "--kerneltz": 0, "--utc": 0, "--contiguous": 0},
    "connlimit": {"--connlimit-upto": 1, "--connlimit-above": 1, "--connlimit-mask": 1,
                  "--connlimit-saddr": 0, "--connlimit-daddr": 0},
    "connbytes": {"--connbytes": 1, "--connbytes-dir": 1, "--connbytes-mode": 1},
    "quota": {"--quota": 1},
    "ecn": {"--ecn-tcp-cwr": 0, "--ecn-tcp-ece": 0, "--ecn-ip-ect": 1},
    "tcpmss": {"--mss": 1},
    "esp": {"--espspi": 1},
    "ah": {"--ahspi": 1, "--ahlen": 1, "--ahres": 0},
    "realm": {"--realm": 1},
    "ipv6header": {"--header": 1, "--soft": 0},
    "frag": {"--fragid": 1, "--fraglen": 1, "--fragres": 0, "--fragfirst": 0, "--fragmore": 0,
             "--fraglast": 0},
    "hbh": {"--hbh-len": 1, "--hbh-opts": 1},
    "dst": {"--dst-len": 1, "--dst-opts": 1},
    "rt": {"--rt-type": 1, "--rt-segsleft": 1, "--rt-len": 1, "--rt-0-res": 0, "--rt-0-addrs": 1,
           "--rt-0-not-strict": 0},
    "mh": {"--mh-type": 1},
    "eui64": {},
    "condition": {"--condition": 1},
    "cluster": {"--cluster-total-nodes": 1, "--cluster-local-node": 1, "--cluster-local-nodemask": 1,
                "--cluster-hash-seed": 1},
})

# Protocol options written without "-m" (`-p tcp --dport 80`, as `iptables -S` of old versions prints).
IMPLICIT_PROTOCOL_ARITY: Mapping[str, int] = MappingProxyType({
    **MODULE_ARITY["tcp"], **MODULE_ARITY["sctp"], **MODULE_ARITY["icmp"], **MODULE_ARITY["icmp6"],
})

# Target options by name. Every target that shares an option name gives it the same arity.
TARGET_ARITY: Mapping[str, int] = MappingProxyType({
    "--to-destination": 1, "--to-source": 1, "--to-ports": 1, "--to": 1, "--random": 0, "--random-fully": 0,
    "--persistent": 0, "--nodst": 0,
    "--reject-with": 1,
    "--set-xmark": 1, "--set-mark": 1, "--and-mark": 1, "--or-mark": 1, "--xor-mark": 1,
    "--save-mark": 0, "--restore-mark": 0, "--nfmask": 1, "--ctmask": 1, "--mask": 1,
    "--log-level": 1, "--log-prefix": 1, "--log-tcp-sequence": 0, "--log-tcp-options": 0,
    "--log-ip-options": 0, "--log-uid": 0, "--log-macdecode": 0,
    "--nflog-group": 1, "--nflog-prefix": 1, "--nflog-range": 1, "--nflog-size": 1, "--nflog-threshold": 1,
    "--ulog-nlgroup": 1, "--ulog-prefix": 1, "--ulog-cprange": 1, "--ulog-qthreshold": 1,
    "--notrack": 0, "--zone": 1, "--zone-orig": 1, "--zone-reply": 1, "--helper": 1, "--ctevents": 1,
    "--expevents": 1, "--timeout": 1, "--label": 1, "--alarm": 0,
    "--on-port": 1, "--on-ip": 1, "--tproxy-mark": 1,
    "--clamp-mss-to-pmtu": 0, "--set-mss": 1,
    "--checksum-fill": 0,
    "--add-set": 2, "--del-set": 2, "--map-set": 2, "--exist": 0, "--map-mark": 0, "--map-prio": 0,
    "--map-queue": 0,
    "--set-class": 1, "--set-dscp": 1, "--set-dscp-class": 1, "--set-tos": 1, "--and-tos": 1,
    "--or-tos": 1, "--xor-tos": 1, "--ttl-set": 1, "--ttl-dec": 1, "--ttl-inc": 1, "--hl-set": 1,
    "--hl-dec": 1, "--hl-inc": 1, "--ecn-tcp-remove": 0,
    "--queue-num": 1, "--queue-balance": 1, "--queue-bypass": 0, "--queue-cpu-fanout": 0, "--fail-open": 0,
    "--gateway": 1, "--oif": 1,
    "--selctx": 1, "--save": 0, "--restore": 0,
    "--type": 1, "--led-trigger-id": 1, "--led-delay": 1, "--led-always-blink": 0,
    "--hmark-tuple": 1, "--hmark-mod": 1, "--hmark-offset": 1, "--hmark-rnd": 1, "--hmark-src-prefix": 1,
    "--hmark-dst-prefix": 1, "--hmark-sport-mask": 1, "--hmark-dport-mask": 1, "--hmark-spi-mask": 1,
    "--hmark-proto-mask": 1,
    "--sack-perm": 0, "--timestamp": 0, "--wscale": 1, "--mss": 1, "--ecn": 0,
    "--rateest-name": 1, "--rateest-interval": 1, "--rateest-ewmalog": 1,
    "--new": 0, "--hashmode": 1, "--clustermac": 1, "--total-nodes": 1, "--local-node": 1,
    "--hash-init": 1, "--strip-options": 1, "--src-pfx": 1, "--dst-pfx": 1,
})

# Targets that are not chains. A jump to any other name must be a chain of the same table.
BUILTIN_TARGETS = frozenset({
    "ACCEPT", "DROP", "REJECT", "RETURN", "QUEUE", "NFQUEUE", "DNAT", "SNAT", "MASQUERADE", "REDIRECT",
    "NETMAP", "SAME", "MARK", "CONNMARK", "CT", "NOTRACK", "LOG", "NFLOG", "ULOG", "TRACE", "TPROXY",
    "TCPMSS", "CHECKSUM", "SET", "CLASSIFY", "DSCP", "TOS", "TTL", "HL", "ECN", "SECMARK", "CONNSECMARK",
    "IDLETIMER", "LED", "AUDIT", "HMARK", "TEE", "SYNPROXY", "RATEEST", "CLUSTERIP", "MIRROR", "DNPT",
    "SNPT", "TCPOPTSTRIP",
})


def match_arity(module: str | None, option: str) -> int | None:
    """Arguments `option` takes inside `-m module`; None when the table does not know it."""
    if module is None:
        return None
    table = MODULE_ARITY.get(module)
    if table is None:
        return None
    return table.get(option)
