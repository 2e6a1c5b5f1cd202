"""hoopwire._sqlnorm's lexer against PostgreSQL's own scanner (pglast.parser.scan), by hypothesis.

The property is fuzz/fuzz_sqlnorm_vs_pglast.py's (same code): wherever the server's scanner
accepts a text, the normalised text scans to the same literals, words, keywords and operators.
A disagreement on where a string literal, quoted identifier, comment or dollar body ends is a
guardrail bypass waiting to happen; the server is right by definition.
"""

from __future__ import annotations

import pathlib
import sys

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

FUZZ = pathlib.Path(__file__).resolve().parent.parent / "fuzz"
if str(FUZZ) not in sys.path:
    sys.path.insert(0, str(FUZZ))

import fuzz_sqlnorm_vs_pglast as harness  # noqa: E402

from hoopwire._sqlnorm import normalize_statements  # noqa: E402

PROPS = settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))

# the places a bypass hides, and what goes around them
FRAGMENTS = [
    "'", "''", "E'", "e'", "N'", "B'", "X'", "U&'", 'U&"', '"', '""', "$$", "$a$", "$A$", "$_1$",
    "$1", "$", "\\", "\\'", "\\\\", "--", "/*", "*/", "\n", "\r\n", "\t", " ", ";", "(", ")",
    " UESCAPE '!'", " UESCAPE ", "!", "0", "1e1", "1.5", "1_000", "0x1F", "::", "a", "Z", "_",
    "é", "select ", "drop ", "table ", "t", "+", "-", "*", "/", ".", ",", "'\n'",
]


@st.composite
def sql(draw):
    parts = draw(st.lists(st.one_of(st.sampled_from(FRAGMENTS),
                                    st.text(alphabet="ab'\"$\\/*-\n E", max_size=4)),
                          min_size=1, max_size=16))
    return "".join(parts)


@given(sql())
@example("select B'1''\\'' ; drop table t; --'")     # B'' and X'' have no '' escape
@example("select X'00''; drop table t; --'")
@example("select U&'d\\0061t' UESCAPE '!' , N'x', $a$ ' $a$, \"q\"\"\" /* a /* b */ */ -- c")
@PROPS
def test_sqlnorm_splits_where_postgresql_does(text):
    harness.check(text.encode("utf-8"))


def test_the_bit_string_bypass_is_gone():
    """The case the differential found: the server reads B'1' then a plain '\\''... literal,
    in which (standard_conforming_strings off) the backslash escapes the quote, so the DROP
    is code; the normaliser must see it under that reading."""
    sql = b"SELECT B'1''\\'' ; DROP TABLE t; --'"
    assert normalize_statements(sql, standard_conforming_strings=False)[-1] == b"drop table t"


def test_the_property_can_fail(monkeypatch):
    """A lexer that takes '' for the end of a literal and the start of another is caught."""
    real = harness.normalize
    monkeypatch.setattr(harness, "normalize",
                        lambda b: real(b.replace(b"''", b"'")))
    with pytest.raises(AssertionError):
        harness.check(b"select 'a''b', 1")
