"""`iptrace services -o json` reads each share (a probability rounded to SHARE_DIGITS decimals) from a table filled
as shares are met (render/services.py `_SHARES`): whatever it held before, and across a clearing when it grows
large, a share read there is the plain `round(p, SHARE_DIGITS)`."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from iptrace.render import services
from iptrace.render.json import SHARE_DIGITS, share

_PROBABILITIES = st.one_of(st.sampled_from([1.0, 0.5, 0.1, 1 / 3, 1 / 9, 0.1000000001, 0.0]),
                           st.floats(min_value=0.0, max_value=1.0))


@settings(max_examples=200, deadline=None)
@given(st.lists(_PROBABILITIES, max_size=40), st.integers(min_value=1, max_value=8))
def test_shares_are_rounded_probabilities(probabilities: list[float], limit: int) -> None:
    shares = services._Shares()
    old = services._SHARES_LIMIT
    services._SHARES_LIMIT = limit  # (small: the table clears itself often)
    try:
        for p in probabilities + probabilities:
            got = shares[p]
            assert got == round(p, SHARE_DIGITS) == share(p)
            assert repr(got) == repr(share(p))
            assert len(shares) <= limit
    finally:
        services._SHARES_LIMIT = old
