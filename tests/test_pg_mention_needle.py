"""The mention prefilter of hoopwire.pg.masker (`_needle`): a statement piece it finds nothing
in must be one in which the identifier loop of ConnectionMasking.statement finds no mention.
In-process: the loop's own tokenizer and tests against random names, quoting and globs."""

from __future__ import annotations

import fnmatch
import re

from hypothesis import given, settings, strategies as st

from hoopwire.pg.masker import _IDENT, _OPAQUE_NAMES, _needle

ALPHABET = 'ab_"9$ .,()'


def loop_mentions(piece: bytes, names: frozenset, globs: list) -> bool:
    """What statement()'s loop decides, token by token."""
    pats = [re.compile(fnmatch.translate(g).encode(), re.S) for g in globs]
    for mt in _IDENT.finditer(piece):
        w = mt.group(0)
        if w[:1] == b'"':
            w = w[1:-1].replace(b'""', b'"')
        if w in names or w in _OPAQUE_NAMES or any(p.match(w) for p in pats):
            return True
    return False


def heads(globs: list):
    out = []
    for g in globs:
        h = re.split(r"[*?\[]", g, maxsplit=1)[0].encode()
        if not h:
            return None
        out.append(h)
    return out


@settings(max_examples=3000, deadline=None)
@given(names=st.frozensets(st.text(ALPHABET[:5], min_size=1, max_size=4).map(str.encode),
                           max_size=4),
       globs=st.lists(st.sampled_from(["a*", "b?", "ab*", '"a*', "*", "[ab]x"]), max_size=2),
       piece=st.text(ALPHABET, max_size=24).map(str.encode))
def test_no_needle_hit_means_no_mention(names, globs, piece):
    needle = _needle(names, heads(globs))
    if needle is not None and needle.search(piece) is None:
        assert not loop_mentions(piece, names, globs), (names, globs, piece)


def test_quoted_name_with_a_doubled_quote_is_found():
    needle = _needle(frozenset({b'we"ird'}), [])
    assert needle.search(b'select "we""ird" from t') is not None
    assert loop_mentions(b'select "we""ird" from t', frozenset({b'we"ird'}), [])


def test_glob_without_a_fixed_head_turns_the_prefilter_off():
    assert _needle(frozenset({b"ssn"}), None) is None
    assert heads(["*"]) is None
