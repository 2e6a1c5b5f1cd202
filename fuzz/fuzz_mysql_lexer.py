#!/usr/bin/env python3
"""Fuzz hoopwire.mysql._sqllex (MySQL/MariaDB's lexer, which the guardrails match against).

    python fuzz/fuzz_mysql_lexer.py -max_total_time=60 [corpus_dir] [libFuzzer args]

The first input byte picks how the rest becomes SQL text: even -> the bytes as they are; odd ->
each byte below len(TOKENS) stands for a lexically interesting fragment (quotes, backslashes,
executable comment markers with and without versions, #, -- with and without a space, 0xA0,
introducers...) and any other byte for itself, so that mutations land on the lexer's hard
cases far more often than random bytes do. (The lexer is Cython and gives the fuzzer no
coverage feedback; the token table is what steers.) The real server is the lexer's reference
in tests/test_mysql_lexer.py; here the properties are the ones the guardrails rest on.

Properties, for every sql_mode (x is the SQL made from the input):
* statement_views(x[, full]), both readings, normalize[_statements], split_statements and
  mask_literals never raise and give bytes (mask_literals: str); `ambiguous` is a bool;
* statement_views agrees with normalize_statements (code and full view), and a statement whose
  two views are equal is the same object in both lists;
* the views of the first reading are stable: normalised again they give themselves, and
  never start or end with a space;
* split_statements returns non-empty pieces of x;
* a complete statement before x survives whatever x holds: `drop table t;` + x starts with
  b"drop table t";
* x as the contents of a literal never reaches the code view: `drop <literal> table t` is
  b"drop '?' table t" for x written as a '...' literal in the mode's escaping, and the full
  view gives x back;
* x as a backtick-quoted name never reads as a keyword in the code view;
* every way a MariaDB or MySQL server of any version, in any mode, with a latin1 client, could
  read x is among what the guardrails scan (the first reading, plus the other readings when it
  says x is ambiguous) -- or the other readings hold UNREADABLE, which a rule blocks.

test_one_input(data) is importable without atheris (tests/test_mysql_lexer.py runs it).
"""

from __future__ import annotations

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # harness.py beside us
from harness import fuzz, instrumented_import  # noqa: E402

if __name__ == "__main__":
    instrumented_import("hoopwire.mysql._sqllex")

from hoopwire.mysql._sqllex import (KEYWORDS, UNREADABLE, mask_literals, normalize,  # noqa: E402
                                    normalize_statements, split_statements, statement_views,
                                    views_as)

TOKENS = (
    b"'", b"''", b'"', b'""', b"`", b"``", b"\\", b"\\'", b'\\"', b"\\\\", b"#", b"--", b"-- ",
    b"--\t", b"/*", b"*/", b"/*!", b"/*!50000", b"/*!50701", b"/*!99999", b"/*!100100",
    b"/*!110000", b"/*M!", b"/*M!100100", b"/*M!999999", b"/*!1000001", b"\n", b"\r", b"\t",
    b"\x0b", b"\x0c", b" ", b";", b"(", b")", b"N'", b"X'", b"B'", b"_utf8mb4'", b"0x", b"1e",
    b".5", b"0", b"9", b"select ", b"drop ", b"table", b"delete ", b"where ", b"\x00",
    b"\xa0", b"\xff", b"\xc3\xa0", b"@", b"@@", b"prepare s from ", b"execute immediate ",
    b"-", b"*", b"/", b"[", b"]", b"a", b"`drop`",
)
assert len(TOKENS) == 64

MODES = tuple(range(8))      # NO_BACKSLASH_ESCAPES 1, ANSI_QUOTES 2, MSSQL 4
# servers and versions a reading is checked for: MariaDB 10.11 / 10.0 / 5.5-era numbering,
# MySQL 8.0 / 5.7 / 5.6, and "no versioned comment runs"
SERVERS = (("mariadb", 101119), ("mariadb", 100000), ("mariadb", 50500), ("mysql", 80036),
           ("mysql", 50700), ("mysql", 50600), ("mysql", 0), ("mariadb", 0))


def sql_of(data: bytes) -> bytes:
    if not data:
        return b""
    if not data[0] & 1:
        return data[1:]
    return b"".join(TOKENS[b] if b < len(TOKENS) else bytes((b,)) for b in data[1:])


def quoted(t: bytes, mode: int) -> bytes:
    """t as a '...' literal the server reads back as t under mode."""
    if not mode & 1:
        t = t.replace(b"\\", b"\\\\")
    return b"'" + t.replace(b"'", b"''") + b"'"


def _check_views(x: bytes, mode: int) -> None:
    code_stmts = normalize_statements(x, mode=mode)
    full_stmts = normalize_statements(x, True, mode=mode)
    code, full, ambiguous = statement_views(x, True, mode=mode)
    assert isinstance(ambiguous, bool)
    dynamic = any(b"prepare" in s or b"execute" in s for s in code)
    if not dynamic:      # PREPARE's text adds statements normalize_statements does not have
        assert code == code_stmts, ("statement_views code view != normalize_statements", mode)
        assert full == full_stmts, ("statement_views full view != normalize_statements", mode)
    assert len(code) == len(full)
    for c, f in zip(code, full):
        assert type(c) is bytes and type(f) is bytes
        if c == f:
            assert c is f, "equal views are not one object"
    code2, none, ambiguous2 = statement_views(x, mode=mode)
    assert code2 == code and none is None and ambiguous2 == ambiguous
    other_code, other_full, amb = statement_views(x, True, mode=mode, alternate=True)
    assert amb is False and len(other_code) == len(other_full)
    for keep, stmts in ((False, code_stmts), (True, full_stmts)):
        for s in stmts:
            assert s and not s.startswith(b" ") and not s.endswith(b" "), (keep, s)
            if b"*/" not in s and b";" not in s:
                again = normalize(s, keep, mode=mode)
                assert again == s, ("not stable", keep, mode, s, again)


def _check_split(x: bytes, mode: int) -> None:
    for p in split_statements(x, mode=mode):
        assert type(p) is bytes and p and p in x, ("split piece is not part of the input", p)
    first = normalize_statements(b"drop table t;" + x, mode=mode)
    assert first[:1] == [b"drop table t"], ("a statement before x was lost", first[:1], mode)


def _check_literal(x: bytes, mode: int) -> None:
    sql = b"drop " + quoted(x, mode) + b" table t"
    assert normalize(sql, mode=mode) == b"drop '?' table t", (sql, mode)
    assert normalize(sql, True, mode=mode) == b"drop " + quoted(x, mode) + b" table t", (sql, mode)


def _check_name(x: bytes) -> None:
    out = normalize(b"select `" + x.replace(b"`", b"``") + b"` from t")
    assert out.startswith(b"select ") and out.endswith(b" from t"), out
    inner = out[len(b"select "):-len(b" from t")]
    if inner.startswith(b"`"):
        assert re.fullmatch(rb"`_[a-z0-9_]*`", inner), ("quoted name not hidden", x, out)
    else:
        assert inner not in KEYWORDS and re.fullmatch(
            rb"[a-z_$\x80-\xff][a-z0-9_$\x80-\xff]*", inner), ("quoted name reads as code", x, out)


def _check_readings(x: bytes) -> None:
    """Every server's reading is scanned (the engine asks without knowing the mode)."""
    code, _, ambiguous = statement_views(x)
    scanned = set(code)
    if ambiguous:
        other = statement_views(x, standard_conforming_strings=False)[0]
        if UNREADABLE in other:
            return
        scanned |= set(other)
    for mode in MODES:
        for hispace in (False, True):
            for server, version in SERVERS:
                seen = views_as(x, mode=mode, server=server, version=version, hispace=hispace)[0]
                missing = set(seen) - scanned
                assert not missing, ("a reading is not scanned", x, mode, hispace, server,
                                     version, missing)


def test_one_input(data: bytes) -> None:
    x = sql_of(data)
    for mode in MODES:
        _check_views(x, mode)
        _check_split(x, mode)
        assert type(mask_literals(x, mode=mode)) is str
        _check_literal(x, mode)
    _check_name(x)
    _check_readings(x)


if __name__ == "__main__":
    fuzz(globals(), test_one_input, sys.argv)
