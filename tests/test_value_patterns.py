"""The regexes that find a rule text's values (the loader's shape key, the port shapes' skeleton split) are written
with possessive repeats for speed: they must find exactly what the plain greedy patterns find, on any text."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from iptrace.iptables import loader, portshape

# The patterns as they were written with plain repeats (what the possessive ones must equal).
_PLAIN_SHAPE_KEY = re.compile(r' (?<!-m )(?<!--match )(?:"[^"\\]*(?:\\.[^"\\]*)*"|[^-!" ][^ ]*)')
_PLAIN_VALUE = re.compile(r' (-[sdjg]|--dport|--to-destination|--comment|--name) '
                          r'("[^"\\\n]*(?:\\.[^"\\\n]*)*"(?!\S)|[^\s"]\S*)')

# Tokens a rule text is made of, the awkward ones included: quotes that do not close or close inside a token,
# escapes, the options whose values are found, module names after -m / --match; mostly one space between them,
# sometimes other blanks or none.
_TOKENS = st.sampled_from([
    "-s", "-d", "-j", "-g", "-m", "--match", "--dport", "--to-destination", "--comment", "--name", "--mode", "!",
    "tcp", "comment", "KUBE-SEP-X", "10.0.0.1/32", "10.0.0.1:80", "80", '"', '"a b"', '"a\\"b"', '"x"y', '"x" y',
    "\\", "\\\\", "-", "a-m", "_", "0.5",
])
_BLANKS = st.sampled_from([" "] * 8 + ["  ", "\t", "\n ", ""])
_TEXTS = st.lists(st.tuples(_BLANKS, _TOKENS), max_size=16).map(lambda pairs: "".join(b + t for b, t in pairs))


@settings(max_examples=3000, deadline=None)
@given(_TEXTS)
def test_the_shape_key_is_the_plain_patterns(text: str) -> None:
    line = text.replace("\n", " ")  # (the loader keys one line at a time)
    assert loader._SHAPE_KEY_RE.sub(" _", line) == _PLAIN_SHAPE_KEY.sub(" _", line)


@settings(max_examples=3000, deadline=None)
@given(_TEXTS)
def test_the_skeleton_split_is_the_plain_patterns(text: str) -> None:
    assert portshape._VALUE.split(" " + text) == _PLAIN_VALUE.split(" " + text)


def test_the_patterns_are_not_the_plain_ones() -> None:
    # (else the tests above compare a pattern with itself)
    assert loader._SHAPE_KEY_RE.pattern != _PLAIN_SHAPE_KEY.pattern
    assert portshape._VALUE.pattern != _PLAIN_VALUE.pattern
