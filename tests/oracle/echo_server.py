"""Tells every TCP connection and UDP datagram which address it reached and which source it came from.

Runs inside the `pods` namespace (started by `Topology.start_server`), listening on the wildcard address so
that pod IPs added later are served too. The answer is one JSON line:
`{"local": [ip, port], "peer": [ip, port]}` — `local` is the endpoint the kernel's DNAT chose, `peer` shows
whether the node masqueraded. It prints `ready` once every socket is bound, and runs until terminated.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import struct
import sys

# Python 3.11 lacks socket.IP_PKTINFO; this is the Linux value (include/uapi/linux/in.h).
IP_PKTINFO = 8


def _answer(local: tuple[str, int], peer: tuple[str, int]) -> bytes:
    return (json.dumps({"local": [local[0], local[1]], "peer": [peer[0], peer[1]]}) + "\n").encode()


def _serve_tcp(listener: socket.socket) -> None:
    try:
        conn, peer = listener.accept()
    except (BlockingIOError, ConnectionError):
        return
    with conn:
        conn.setblocking(True)
        conn.settimeout(1.0)
        try:
            conn.sendall(_answer(conn.getsockname()[:2], peer[:2]))
        except OSError:
            pass


def _serve_udp(sock: socket.socket, family: int) -> None:
    try:
        _data, ancdata, _flags, peer = sock.recvmsg(2048, socket.CMSG_SPACE(64))
    except (BlockingIOError, ConnectionError):
        return
    port = sock.getsockname()[1]
    local = None
    reply_cmsg: list[tuple[int, int, bytes]] = []
    for level, kind, data in ancdata:
        if family == socket.AF_INET and level == socket.IPPROTO_IP and kind == IP_PKTINFO:
            # struct in_pktinfo {int ifindex; in_addr spec_dst; in_addr addr;}: addr is the header's dst.
            local = socket.inet_ntop(socket.AF_INET, data[8:12])
            reply_cmsg = [(level, kind, struct.pack("=i4s4s", 0, data[8:12], b"\0" * 4))]
        elif family == socket.AF_INET6 and level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
            local = socket.inet_ntop(socket.AF_INET6, data[:16])
            reply_cmsg = [(level, kind, data[:16] + struct.pack("=I", 0))]
    if local is None:
        return
    # The reply must leave from the address the datagram reached (the DNATed one), or conntrack would
    # not see it as a reply and the client would wait for nothing.
    try:
        sock.sendmsg([_answer((local, port), peer[:2])], reply_cmsg, 0, peer)
    except OSError:
        pass


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tcp", type=int, action="append", default=[])
    parser.add_argument("--udp", type=int, action="append", default=[])
    parser.add_argument("--ipv6", action="store_true")
    parser.add_argument("--parent", type=int, default=0, help="exit when this process is gone")
    args = parser.parse_args(argv)

    sel = selectors.DefaultSelector()
    families = [socket.AF_INET] + ([socket.AF_INET6] if args.ipv6 else [])
    for family in families:
        wildcard = "::" if family == socket.AF_INET6 else "0.0.0.0"
        for port in args.tcp:
            listener = socket.socket(family, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            listener.bind((wildcard, port))
            listener.listen(512)
            listener.setblocking(False)
            sel.register(listener, selectors.EVENT_READ, ("tcp", family))
        for port in args.udp:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            sock.bind((wildcard, port))
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ, ("udp", family))
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        # A killed test run must not leave this process behind: its parent is re-checked every second.
        if args.parent and os.getppid() != args.parent:
            return 0
        for key, _mask in sel.select(timeout=1.0):
            kind, family = key.data
            if kind == "tcp":
                _serve_tcp(key.fileobj)  # type: ignore[arg-type]
            else:
                _serve_udp(key.fileobj, family)  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
