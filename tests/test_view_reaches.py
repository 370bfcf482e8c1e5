"""The Service view's reaches (kube/view.py `_reaches`) are kept process-wide by the (destination, probability)
of the DNAT outcomes they are read from: whatever was kept before, and across a clearing of the cache, a path's
reaches are the plain sum per endpoint, in order of first appearance, and equal outcomes give the same tuple."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from iptrace.dataplane import Outcome
from iptrace.kube import view
from iptrace.kube.view import Reach


def _dnat(destination: str | None, probability: float) -> Outcome:
    return Outcome("DNAT", destination, probability, False, None, None, ())


def _plain(outcomes: list[Outcome]) -> tuple[Reach, ...]:
    acc: dict[str, float] = {}
    for o in outcomes:
        if o.destination is not None:
            acc[o.destination] = acc.get(o.destination, 0.0) + o.probability
    return tuple(Reach(ep, p) for ep, p in acc.items())


_DESTINATIONS = st.sampled_from(["10.244.0.1:80", "10.244.0.2:80", "[fd00::1]:8080", "10.244.0.1:81", None])
_PROBABILITIES = st.sampled_from([1.0, 0.5, 0.25, 1 / 3, 0.1, 0.1000000001])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.tuples(_DESTINATIONS, _PROBABILITIES), max_size=6), min_size=1, max_size=8),
       st.integers(min_value=1, max_value=4))
def test_reaches_are_the_plain_sums_whatever_the_cache_held(paths: list[list[tuple[str | None, float]]],
                                                            limit: int) -> None:
    saved, view.REACHES_LIMIT = view.REACHES_LIMIT, limit
    try:
        for pairs in paths:
            outcomes = [_dnat(d, p) for d, p in pairs]
            first = view._reaches(outcomes)
            assert first == _plain(outcomes)
            assert [type(r) for r in first] == [Reach] * len(first)
            again = view._reaches([_dnat(d, p) for d, p in pairs])
            assert again == first
            assert len(view._REACHES) <= limit
    finally:
        view.REACHES_LIMIT = saved
        view._REACHES.clear()


def test_equal_outcomes_share_one_tuple() -> None:
    pairs = [("10.244.9.1:80", 0.5), ("10.244.9.2:80", 0.5)]
    first = view._reaches([_dnat(d, p) for d, p in pairs])
    assert view._reaches([_dnat(d, p) for d, p in pairs]) is first
    assert view._reaches([_dnat(d, p) for d, p in reversed(pairs)]) == tuple(reversed(first))
