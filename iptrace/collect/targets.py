"""Which nodes to collect over SSH: `[user@]host[:port]` arguments and inventory files (plain or Ansible INI).
A node's name is its directory in the collection, so it is checked like a path component.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from iptrace.errors import InputError
from iptrace.text import decode_input

_NAME_RE = re.compile(r"[A-Za-z0-9_\[][A-Za-z0-9_.:%@\[\]-]*")
_HOST_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:%-]*")
USER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.$-]*")


@dataclass(frozen=True, slots=True)
class NodeTarget:
    """One node to collect from. `host` may be an ~/.ssh/config alias; `name` names the node's directory
    (default: `host`, or `host:port` / `[v6]:port` when a port was given)."""

    host: str
    user: str | None = None
    port: int | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if not _HOST_RE.fullmatch(self.host):
            raise InputError(f"bad node host {self.host!r}; expected a host name, an alias or an address")
        if self.user is not None and not USER_RE.fullmatch(self.user):
            raise InputError(f"bad user name {self.user!r} for node {self.host}")
        if self.port is not None and not 0 < self.port < 65536:
            raise InputError(f"bad port {self.port} for node {self.host}; expected 1-65535")
        if not self.name:
            object.__setattr__(self, "name", self._default_name())
        if not _NAME_RE.fullmatch(self.name):
            raise InputError(f"bad node name {self.name!r}; it names a directory, so it may hold letters, "
                             "digits and . _ - : @ [ ] % and must not start with '.'")

    def _default_name(self) -> str:
        if self.port is None:
            return self.host
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str, *, name: str = "") -> NodeTarget:
        """`[user@]host[:port]`, with IPv6 as `[addr]:port` (a bare IPv6 address has no port)."""
        spec = text.strip()
        if spec.startswith("ssh://"):
            spec = spec[len("ssh://"):].rstrip("/")
        user: str | None = None
        if "@" in spec:
            user, _, spec = spec.rpartition("@")
        port_text: str | None = None
        if spec.startswith("["):
            host, bracket, rest = spec[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                raise InputError(f"bad node {text!r}; expected [user@]host[:port] or [user@][ipv6]:port")
            port_text = rest[1:] if rest else None
        elif spec.count(":") == 1:
            host, _, port_text = spec.partition(":")
        else:
            host = spec
        port: int | None = None
        if port_text is not None:
            if not port_text.isdigit():
                raise InputError(f"bad port {port_text!r} in node {text!r}; expected a number 1-65535")
            port = int(port_text)
        if not host:
            raise InputError(f"bad node {text!r}; expected [user@]host[:port]")
        return cls(host=host, user=user or None, port=port, name=name)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and self.port is not None else self.host
        return (f"{self.user}@" if self.user else "") + host + (f":{self.port}" if self.port else "")


def parse_target(text: str) -> NodeTarget:
    """A command-line NODE argument."""
    return NodeTarget.parse(text)


def read_inventory(path: Path) -> list[NodeTarget]:
    """One node per line: `[user@]host[:port] [name=NAME]`; `#` starts a comment. Ansible-style INI is also
    read: `[group]` headers are skipped, `[group:vars]`/`[group:children]` sections ignored, and
    `NAME ansible_host=H ansible_user=U ansible_port=P` gives a node named NAME."""
    try:
        lines = decode_input(Path(path).read_bytes(), "strict").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read inventory ({exc})") from exc
    targets: list[NodeTarget] = []
    in_hosts_section = True
    for number, raw in enumerate(lines, start=1):
        line = re.sub(r"(^|\s)[#;].*$", "", raw).strip()
        if not line:
            continue
        is_address = re.fullmatch(r"\[[0-9a-fA-F:.]+\](:\d+)?", line) is not None
        if line.startswith("[") and line.endswith("]") and not is_address:
            in_hosts_section = ":" not in line
            continue
        if not in_hosts_section:
            continue
        first, *options = line.split()
        fields: dict[str, str] = {}
        for option in options:
            key, eq, value = option.partition("=")
            if not eq or not value:
                raise InputError(f"{path}:{number}: unexpected {option!r}; expected key=value after the node")
            fields[key] = value
        unknown = [k for k in fields if k not in ("name", "ansible_host", "ansible_ssh_host", "ansible_user",
                                                  "ansible_ssh_user", "ansible_port", "ansible_ssh_port")
                   and not k.startswith("ansible_")]
        if unknown:
            raise InputError(f"{path}:{number}: unknown option {unknown[0]!r}; "
                             "known: name=, ansible_host=, ansible_user=, ansible_port=")
        try:
            address = fields.get("ansible_host") or fields.get("ansible_ssh_host")
            if address:
                target = NodeTarget.parse(address)
                user = fields.get("ansible_user") or fields.get("ansible_ssh_user") or target.user
                port_text = fields.get("ansible_port") or fields.get("ansible_ssh_port")
                if port_text is not None and not port_text.isdigit():
                    raise InputError(f"bad port {port_text!r}")
                port = int(port_text) if port_text is not None else target.port
                targets.append(NodeTarget(host=target.host, user=user, port=port,
                                          name=fields.get("name", first)))
            else:
                targets.append(NodeTarget.parse(first, name=fields.get("name", "")))
        except InputError as exc:
            raise InputError(f"{path}:{number}: {exc}") from exc
    return targets
