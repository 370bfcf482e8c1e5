"""Small helpers tests share for comparing dumps."""

from __future__ import annotations

import re

from iptrace.iptables.model import TOKEN_RE


def rule_tokens(text: str) -> list[tuple[str, ...]]:
    """Every `-A` rule of an iptables-save text as its tokens (counters dropped), sorted: equal lists mean the
    same rules, token for token, whatever the spacing and order of chains."""
    out = []
    for line in text.splitlines():
        s = re.sub(r"^\[\d+:\d+\]\s+", "", line.strip())
        if s.startswith("-A "):
            out.append(tuple(TOKEN_RE.findall(s)))
    return sorted(out)
