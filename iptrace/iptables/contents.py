"""Content ids of chains: a digest of a chain's rule texts, so that a key can name a chain's rules by 16 bytes compared
and hashed at once instead of by its texts (an audit's carry keys name ~55,000 own chains a node:
iptrace.iptables.carry), the same in every process (keys hold no set's order nor a process's numbering). Pure."""

from __future__ import annotations

import hashlib


def content_id(texts: tuple[str, ...]) -> bytes:
    """The id of a chain whose rules' texts are `texts` (no rule's text holds a newline)."""
    return hashlib.blake2b("\n".join(texts).encode(), digest_size=16).digest()
