#!/usr/bin/env python3
"""Fuzz hoopwire._sqlnorm (the Cython SQL normaliser the guardrails match against).

    python fuzz/fuzz_sqlnorm.py -max_total_time=60 [corpus_dir] [libFuzzer args]

The first input byte picks how the rest becomes SQL text: even -> the bytes as they are; odd ->
each byte below len(TOKENS) stands for a lexically interesting fragment (quotes, E'', U&'',
dollar tags, comment openers, backslashes, UESCAPE, number forms...) and any other byte for
itself, so that mutations land on the lexer's hard cases far more often than random bytes do.
(The lexer is Cython and gives the fuzzer no coverage feedback; the token table is what steers.)

Properties, for standard_conforming_strings on and off alike:
* normalize(x), normalize(x, keep_literals=True), normalize_statements(x[, True]),
  split_statements(x), mask_literals(x), statement_views(x[, full=True]) never raise;
* with it on (the documented case) both views are idempotent:
  normalize(normalize(x)) == normalize(x) and the same with keep_literals=True;
* statement_views agrees with normalize_statements (code view and full view), and its
  `ambiguous` is a bool;
* split_statements returns raw pieces of x: each is a non-empty substring of x.

test_one_input(data) is importable without atheris (tests/test_fuzz_smoke.py uses it).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # harness.py beside us
from harness import fuzz, instrumented_import  # noqa: E402

if __name__ == "__main__":
    instrumented_import("hoopwire._sqlnorm")

from hoopwire._sqlnorm import (mask_literals, normalize, normalize_statements,  # noqa: E402
                               split_statements, statement_views)

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


def test_one_input(data: bytes) -> None:
    x = sql_of(data)
    for scs in (True, False):
        code = normalize(x, standard_conforming_strings=scs)
        full = normalize(x, keep_literals=True, standard_conforming_strings=scs)
        assert type(code) is bytes and type(full) is bytes
        _check_views(x, scs)
        pieces = split_statements(x, standard_conforming_strings=scs)
        for p in pieces:
            assert type(p) is bytes and p and p in x, ("split piece is not part of the input", p)
        assert type(mask_literals(x, standard_conforming_strings=scs)) is str
        if scs:
            assert normalize(code) == code, ("code view not idempotent", code, normalize(code))
            assert normalize(full, keep_literals=True) == full, (
                "full view not idempotent", full, normalize(full, keep_literals=True))



if __name__ == "__main__":
    fuzz(globals(), test_one_input, sys.argv)
