#!/usr/bin/env python3
"""Fuzz hoopwire._sqlnorm (the Cython SQL normaliser the guardrails match against).

    python fuzz/fuzz_sqlnorm.py -max_total_time=60 [corpus_dir] [libFuzzer args]

The first input byte picks how the rest becomes SQL text: even -> the bytes as they are; odd ->
each byte below len(TOKENS) stands for a lexically interesting fragment (quotes, E'', U&'',
dollar tags, comment openers, backslashes, UESCAPE, number forms...) and any other byte for
itself, so that mutations land on the lexer's hard cases far more often than random bytes do.
(The lexer is Cython and gives the fuzzer no coverage feedback; the token table is what steers.)

Properties, for standard_conforming_strings on and off alike (x is the SQL made from the input):
* normalize(x), normalize(x, keep_literals=True), normalize_statements(x[, True]),
  split_statements(x), mask_literals(x), statement_views(x[, full=True]) never raise, and
  give bytes (mask_literals: str);
* both views are idempotent -- normalize(normalize(x)) == normalize(x), the same with
  keep_literals=True -- and neither starts or ends with a space;
* statement_views agrees with normalize_statements (code view and full view), and its
  `ambiguous` is a bool;
* split_statements returns raw pieces of x: each is a non-empty substring of x, and lexed
  alone is one statement (split_statements(piece) == [piece]); normalize_statements(x) is
  normalize() of each piece, empty ones left out;
* a complete statement before x survives whatever x holds:
  normalize_statements(b"drop table t;" + x)[0] == b"drop table t";
* x as the contents of a literal never reaches the code view, and the keywords around it
  survive: `drop <literal> table t` normalises to b"drop '?' table t" for x written as a
  '...' literal (backslashes doubled when standard_conforming_strings is off), as an E'...'
  literal, and as a $q$...$q$ body (every "$q" taken out of x); the full view keeps the
  literal's text, written back as a '...' literal the same way (`quoted`);
* x as a quoted identifier never reads as a keyword in the code view (standard_conforming_strings
  on): `select "x" from t` gives either a bare lower-case name that is not a keyword, or
  "_..." of [a-z0-9_].
These include every property of tests/test_sqlnorm.py's hypothesis tests, here driven by the
fuzzer; a normaliser that returns b"", or lets a literal through, fails the literal ones.

test_one_input(data) is importable without atheris (tests/test_fuzz_smoke.py uses it).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # harness.py beside us
from harness import fuzz, instrumented_import  # noqa: E402

if __name__ == "__main__":
    instrumented_import("hoopwire._sqlnorm")

import re  # noqa: E402

from hoopwire._sqlnorm import (KEYWORDS, mask_literals, normalize,  # noqa: E402
                               normalize_statements, split_statements, statement_views)

TOKENS = (
    b"'", b"''", b"E'", b"e'", b"U&'", b"u&'", b'U&"', b'"', b'""', b"$$", b"$a$", b"$A$",
    b"$_$", b"$1", b"$", b"\\", b"\\'", b"\\\\", b"--", b"/*", b"*/", b"\n", b"\r", b"\t",
    b"\f", b"\v", b" ", b";", b"(", b")", b" UESCAPE ", b"UESCAPE '!'", b"!", b"B'", b"X'",
    b"N'", b"0x", b"0o", b"0b", b"1e", b"1.5e-3", b"1_000", b".", b"0", b"9", b"select ",
    b"drop ", b"table", b"\x00", b"\xff", b"\xc3\xa9", b"\x80", b"::", b"'\n'", b"e'\\''",
    b"\\u", b"\\U", b"+", b"-", b"*", b"/", b"_", b"a", b"Z",
)
assert len(TOKENS) == 64


def sql_of(data: bytes) -> bytes:
    if not data:
        return b""
    if not data[0] & 1:
        return data[1:]
    return b"".join(TOKENS[b] if b < len(TOKENS) else bytes((b,)) for b in data[1:])


def _check_views(x: bytes, scs: bool) -> None:
    code_stmts = normalize_statements(x, standard_conforming_strings=scs)
    full_stmts = normalize_statements(x, True, standard_conforming_strings=scs)
    code, full, ambiguous = statement_views(x, True, standard_conforming_strings=scs)
    assert code == code_stmts, ("statement_views code view != normalize_statements", scs)
    assert full == full_stmts, ("statement_views full view != normalize_statements(keep)", scs)
    assert isinstance(ambiguous, bool)
    code2, none, ambiguous2 = statement_views(x, standard_conforming_strings=scs)
    assert code2 == code_stmts and none is None and ambiguous2 == ambiguous, scs
    for s in code_stmts + full_stmts:
        assert type(s) is bytes


def _check_split(x: bytes, scs: bool) -> None:
    pieces = split_statements(x, standard_conforming_strings=scs)
    for p in pieces:
        assert type(p) is bytes and p and p in x, ("split piece is not part of the input", p)
        # lexed alone, a piece is one statement: any ; left in it is inside something
        assert split_statements(p, standard_conforming_strings=scs) == [p], (
            "a split piece splits again", p, scs)
    normed = [n for n in (normalize(p, standard_conforming_strings=scs) for p in pieces) if n]
    assert normalize_statements(x, standard_conforming_strings=scs) == normed, (
        "normalize_statements differs from normalize over split_statements", scs)
    first = normalize_statements(b"drop table t;" + x, standard_conforming_strings=scs)
    assert first[:1] == [b"drop table t"], ("a statement before x was lost", first[:1], scs)


DROP_LIT = b"drop '?' table t"


def quoted(t: bytes, scs: bool) -> bytes:
    """t as a '...' literal the server reads back as t: how the full view writes a literal
    (with standard_conforming_strings off a backslash escapes, so it is doubled)."""
    if not scs:
        t = t.replace(b"\\", b"\\\\")
    return b"'" + t.replace(b"'", b"''") + b"'"


def _check_literal(t: bytes, scs: bool) -> None:
    """t as the contents of a literal, between two keywords."""
    e_lit = b"E'" + t.replace(b"\\", b"\\\\").replace(b"'", b"\\'") + b"'"
    body = t
    while b"$q" in body:        # a body ending in "$q" would meet the closing "$q$" early
        body = body.replace(b"$q", b"")
    for lit, text in ((quoted(t, scs), t), (e_lit, t), (b"$q$" + body + b"$q$", body)):
        sql = b"drop " + lit + b" table t"
        code = normalize(sql, standard_conforming_strings=scs)
        assert code == DROP_LIT, ("code view of drop <literal> table t is not "
                                  "drop '?' table t", sql, code, scs)
        full = normalize(sql, keep_literals=True, standard_conforming_strings=scs)
        assert full == b"drop " + quoted(text, scs) + b" table t", (
            "the full view lost the literal", sql, full, scs)


def _check_identifier(t: bytes) -> None:
    out = normalize(b'select "' + t.replace(b'"', b'""') + b'" from t')
    assert out.startswith(b"select ") and out.endswith(b" from t"), out
    inner = out[len(b"select "):-len(b" from t")]
    if inner.startswith(b'"'):
        # the "_name" form: no word boundary before any letter inside
        assert re.fullmatch(rb'"_[a-z0-9_]*"', inner), ("quoted name not hidden", t, out)
    else:
        assert inner.lower() not in KEYWORDS and re.fullmatch(
            rb"[a-z\x80-\xff][a-z0-9_$\x80-\xff]*", inner), ("quoted name reads as code", t, out)


def test_one_input(data: bytes) -> None:
    x = sql_of(data)
    for scs in (True, False):
        code = normalize(x, standard_conforming_strings=scs)
        full = normalize(x, keep_literals=True, standard_conforming_strings=scs)
        assert type(code) is bytes and type(full) is bytes
        for view, keep in ((code, False), (full, True)):
            again = normalize(view, keep, standard_conforming_strings=scs)
            assert again == view, ("not idempotent", keep, scs, view, again)
            assert not view.startswith(b" ") and not view.endswith(b" "), (
                "leading or trailing space", view)
        _check_views(x, scs)
        _check_split(x, scs)
        assert type(mask_literals(x, standard_conforming_strings=scs)) is str
        _check_literal(x, scs)
    _check_identifier(x)


if __name__ == "__main__":
    fuzz(globals(), test_one_input, sys.argv)
