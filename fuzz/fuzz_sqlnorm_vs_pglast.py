#!/usr/bin/env python3
"""Differential fuzz: hoopwire._sqlnorm's lexer against PostgreSQL's scanner (pglast.parser.scan).

    python fuzz/fuzz_sqlnorm_vs_pglast.py -max_total_time=60 [corpus_dir] [libFuzzer args]

Where the guardrails and the server disagree on where a string literal, a quoted identifier, a
comment or a dollar body ends, text one of them takes for data the other takes for code: that is
where a guardrail bypass hides. The server's scanner is the reference (libpg_query's scan.l,
PostgreSQL 18; standard_conforming_strings on; text is UTF-8).

Property, for x made from the input as fuzz_sqlnorm makes it (NULs dropped: a Query cannot hold
one; invalid UTF-8 replaced): whenever PostgreSQL's scanner accepts x, it also accepts
normalize(x), and both give the same token classes -- literal (every kind of string constant and
dollar body), word (identifiers, quoted or not, and numbers), each keyword, each operator and
punctuation mark -- comments dropped. Folded on both sides, because they are spelling, not
boundaries: the N of N'...' (a token of its own to the scanner), a UESCAPE clause after a
literal or identifier (the grammar joins it; the normaliser drops a valid one), and runs of words
(PostgreSQL 16+ reads 1e1_000 as one number, the PostgreSQL 15 we proxy as 1e1 then _000).

Found and fixed with it: B'...' and X'...' read '' as a quote (the server ends them there and
starts a new plain literal, whose backslash escapes with standard_conforming_strings off).

test_one_input(data) is importable without atheris (tests/test_fuzz_smoke.py uses it).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # harness.py beside us
from harness import fuzz, instrumented_import  # noqa: E402

if __name__ == "__main__":
    instrumented_import("hoopwire._sqlnorm")

from pglast import parser as _pg  # noqa: E402

from fuzz_sqlnorm import sql_of  # noqa: E402
from hoopwire._sqlnorm import normalize  # noqa: E402

LITERALS = frozenset(("SCONST", "USCONST", "BCONST", "XCONST"))
WORDS = frozenset(("IDENT", "UIDENT", "ICONST", "FCONST"))
COMMENTS = frozenset(("C_COMMENT", "SQL_COMMENT"))


def token_classes(text: str) -> list[str] | None:
    """PostgreSQL's scanner's tokens of `text`, as classes (see the module docstring); None
    when the scanner refuses the text (an unterminated literal, a bad escape, ...)."""
    try:
        tokens = _pg.scan(text)
    except Exception:  # pglast.parser.ParseError, and whatever else it raises on bad text
        return None
    out: list[str] = []
    for t in tokens:
        name = t.name
        if name in COMMENTS or name == "NCHAR":
            continue
        c = "L" if name in LITERALS else "W" if name in WORDS else name
        if c == "W" and out and out[-1] == "W":
            continue
        if c == "L" and len(out) >= 2 and out[-1] == "UESCAPE" and out[-2] in ("L", "W"):
            out.pop()
            continue
        out.append(c)
    return out


def check(x: bytes) -> None:
    text = x.decode("utf-8", "replace")
    theirs = token_classes(text)
    if theirs is None:
        return
    ours_text = normalize(text.encode("utf-8"))
    ours = token_classes(ours_text.decode("utf-8", "replace"))
    assert ours == theirs, ("sqlnorm and PostgreSQL's scanner split differently",
                            text, ours_text, theirs, ours)


def test_one_input(data: bytes) -> None:
    check(sql_of(data).replace(b"\0", b""))


if __name__ == "__main__":
    fuzz(globals(), test_one_input, sys.argv)
