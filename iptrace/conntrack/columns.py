"""Columns of numbers nearly unique per flow (source ports, counters, ids), checked as columns: they cannot be
proven once and remembered as addresses are, so a column is proven by a few byte operations over its words
joined (the reader's `bulk`; a column this refuses is checked word by word)."""

from __future__ import annotations

import re
from functools import cache

from iptrace.conntrack import vocabulary as v


def _port(word: bytes, prefix: bytes) -> bool:
    """A port word (`sport=N`) as check_value reads it: decimal digits, at most 65535."""
    digits = word[len(prefix):]
    return word.startswith(prefix) and digits.isdigit() and len(digits) <= 20 and int(digits) <= 0xFFFF


def _number_column(column: list[bytes], prefix: bytes, limit: bytes) -> bool:
    """Whether every word of a column is `prefix` (`sport=`) and a number of at most as many digits as `limit` and
    at most `limit` (what check_value says of each, at C speed: source ports and counters are nearly unique per
    flow, so they cannot be proven once and remembered as addresses are; a column this refuses is checked word by
    word). One regular expression over the joined column proves the words' form, the largest word their values."""
    joined = b" " + b" ".join(column)
    if _digit_words(prefix, len(limit)).fullmatch(joined) is None:
        return False  # (a word of another key, without digits, with another character or more digits)
    # As bytes, numbers of as many digits compare as numbers do; a column that also has shorter words above the
    # limit as bytes ("sport=9000" > "sport=65535"), or a number too large, is searched for one too large.
    return max(column) <= prefix + limit or _over(limit).search(joined) is None


@cache
def _digit_words(prefix: bytes, width: int) -> re.Pattern[bytes]:
    """` sport=N sport=N …`: words of `prefix` and 1 to `width` digits, each after one space (possessive: a run
    of digits is never given back, so a refusal costs no backtracking)."""
    return re.compile(b"(?: %s[0-9]{1,%d}+)++" % (re.escape(prefix), width))


@cache
def _over(limit: bytes) -> re.Pattern[bytes]:
    """A value (after its key's `=`) with as many digits as `limit` and larger: for 65535, [7-9]dddd, 6[6-9]ddd,
    65[6-9]dd, 655[4-9]d or 6553[6-9]. Compiled when first needed (rarely: all of them cost ~4 ms at import)."""
    larger = [limit[:i] + b"[%d-9]" % (d - 47) + b"[0-9]" * (len(limit) - i - 1)
              for i, d in enumerate(limit) if d < ord("9")]
    return re.compile(b"=(?:" + b"|".join(larger) + b")")


# The largest value of each kind of number, as conntrack prints it, and what finds a larger one.
_LIMITS = {kind: str(limit).encode() for kind, limit in v.NUMBER_LIMITS.items()}


def _many_numbers(column: list[bytes], new: set[bytes], prefix: bytes, kind: str) -> bool:
    """A `key=` column of numbers with a new value on most lines (counters, ids): proven as a column, not a word
    at a time (nor remembered: the next lines have new values again)."""
    limit = _LIMITS.get(kind)
    return limit is not None and bool(prefix) and len(new) * 2 > len(column) and _number_column(column, prefix, limit)
