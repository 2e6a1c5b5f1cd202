#!/usr/bin/env python3
"""Fuzz RowPlan.mask_copy_line (hoopwire._mask): one COPY TO STDOUT data row, in text or CSV
format, as the upstream server (or whoever sits in its place) sent it.

    python fuzz/fuzz_mask_copy.py -max_total_time=60 [corpus_dir] [libFuzzer args]

The engines, sources, secrets and PII fragments are fuzz_mask_rows.py's. Input layout (all
choices wrap, so every input is valid):
  byte 0    engine: which of fuzz_mask_rows.ENGINES
  byte 1    low 3 bits how many columns (0-6); bit 3 CSV (else text); bits 4-5 the delimiter,
            bits 6-7 the NULL string (from TEXT_OPTIONS / CSV_OPTIONS)
  byte 2    bits 0-1 quote and escape (CSV); bits 2-3 the line ending ("", "\\n", "\\r\\n");
            bits 4-5 how the line is handed over (bytes, bytearray, memoryview)
  next n    one byte per column: bits 4-6 its source from SOURCES (a rule matches it, no rule,
            unresolved...); bit 7 of any column: unresolved columns are masked by the first
            rule (unresolved_columns=mask)
  next      mode: bit 0 clear: the rest is the row as it is; set: a row the harness writes
            (its own COPY writer) from values made as fuzz_mask_rows makes them (a byte 0xff
            = NULL, else its low 6 bits = how many bytes follow, bytes below len(PIECES) for
            PII fragments); bit 1: one value fewer or more than the plan has columns; bit 3:
            every non-NULL value v becomes v + "\\n" + a secret + "\\n" + v (bits 4-7 pick it)

Properties (`reference_fields` is a plain-Python reading of a COPY row the way PostgreSQL's
COPY FROM reads it -- text: backslash escapes, the NULL string compared before de-escaping;
CSV: quotes, the escape byte inside quotes, an unquoted NULL string):
* mask_copy_line raises nothing but MaskRowError, exactly when the reference finds a number of
  values other than the plan's columns;
* the row the harness writes reads back through the reference as the values it was written
  from (the writer and the reference agree, so the built rows test what they mean to);
* the result is the very object given when nothing changed, else bytes ending in the same line
  ending, which the reference reads as the plan's number of values;
* PASS columns keep their raw bytes, NULLs stay NULL; a WHOLE column's value comes out as its
  rule's strategy makes it (never in clear unless the clear value is its own masked form);
  a secret standing on a line of its own in a value of a column that is not PASS is absent
  from that column's output (fuzz_mask_rows.check_masked, over the decoded values).

test_one_input(data) is importable without atheris (tests/test_fuzz_smoke.py uses it).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # harness.py beside us
from harness import fuzz, instrumented_import  # noqa: E402

if __name__ == "__main__":
    instrumented_import("hoopwire.masking")

from fuzz_mask_rows import (ENGINES, PIECES, SECRETS, SOURCES, Plan,  # noqa: E402
                            check_masked)
from hoopwire._mask import K_STR  # noqa: E402
from hoopwire.masking import ACT_DETECT, ACT_PASS, ACT_WHOLE, Column, MaskRowError  # noqa: E402
from hoopwire.pg._wire import DataRowPlan  # noqa: E402

# (delimiters, NULL strings): combinations COPY accepts (the NULL string holds no delimiter).
# Text NULL strings start with a backslash or are empty: a masked value is written with its
# backslashes doubled, so it can never read back as one (as it could with NULL 'x', where
# PostgreSQL's own output is ambiguous too).
TEXT_OPTIONS = ((b"\t", b",", b"|", b";"), (b"\\N", b"", b"\\0", b"\\N"))
CSV_OPTIONS = ((b",", b"\t", b"|", b";"), (b"", b"\\N", b"NULL", b""))
QUOTES = ((b'"', b'"'), (b'"', b"\\"), (b"'", b"'"), (b"'", b"\\"))
EOLS = (b"", b"\n", b"\r\n", b"\n")

_OCT = b"01234567"
_HEX = b"0123456789abcdefABCDEF"
_CONTROL = {ord("b"): 8, ord("f"): 12, ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("v"): 11}


# ---------------------------------------------------------------------------------------------
# the reference: reading a COPY row

def _text_value(raw: bytes) -> bytes:
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        i += 1
        if c != 0x5C or i >= n:            # a byte, or a backslash ending the field
            out.append(c)
            continue
        c = raw[i]
        i += 1
        if c in _OCT:                       # \o, \oo, \ooo
            v = c - 48
            for _ in range(2):
                if i < n and raw[i] in _OCT:
                    v = v * 8 + raw[i] - 48
                    i += 1
            out.append(v & 0xFF)
        elif c == ord("x") and i < n and raw[i] in _HEX:   # \xh, \xhh
            v = int(raw[i:i + 1], 16)
            i += 1
            if i < n and raw[i] in _HEX:
                v = v * 16 + int(raw[i:i + 1], 16)
                i += 1
            out.append(v)
        else:
            out.append(_CONTROL.get(c, c))  # \n, \t...; any other byte stands for itself
    return bytes(out)


def _split_text(body: bytes, delim: int, null: bytes) -> list[tuple[bytes | None, bytes]]:
    fields = []
    start = i = 0
    n = len(body)
    while True:
        while i < n and body[i] != delim:
            i += 2 if body[i] == 0x5C else 1   # a backslash takes the next byte along
        i = min(i, n)
        raw = body[start:i]
        fields.append((None if raw == null else _text_value(raw), raw))
        if i >= n:
            return fields
        i += 1
        start = i


def _split_csv(body: bytes, delim: int, quote: int, escape: int,
               null: bytes) -> list[tuple[bytes | None, bytes]]:
    fields = []
    i = 0
    n = len(body)
    while True:
        start = i
        value = bytearray()
        quoted = False
        while i < n and body[i] != delim:
            if body[i] != quote:
                value.append(body[i])
                i += 1
                continue
            quoted = True
            i += 1
            while i < n:                       # inside quotes (an unclosed one runs to the end)
                c = body[i]
                if c == escape and i + 1 < n and body[i + 1] in (quote, escape):
                    value.append(body[i + 1])  # "" (escape = quote), or \" and \\
                    i += 2
                elif c == quote:
                    i += 1
                    break
                else:
                    value.append(c)
                    i += 1
        raw = body[start:i]
        fields.append((None if not quoted and raw == null else bytes(value), raw))
        if i >= n:
            return fields
        i += 1


class Options:
    __slots__ = ("csv", "delimiter", "null", "quote", "escape")

    def __init__(self, csv: bool, shape: int, quoting: int):
        delims, nulls = CSV_OPTIONS if csv else TEXT_OPTIONS
        self.csv = csv
        self.delimiter = delims[(shape >> 4) & 3]
        self.null = nulls[(shape >> 6) & 3]
        self.quote, self.escape = QUOTES[quoting & 3]

    def kwargs(self) -> dict:
        kw = {"delimiter": self.delimiter, "null": self.null}
        if self.csv:
            kw.update(quote=self.quote, escape=self.escape)
        return kw


def split_line(line: bytes, o: Options) -> tuple[list, bytes]:
    """([(value or None, raw field)], line ending) of a COPY row."""
    eol = b"\r\n" if line.endswith(b"\r\n") else b"\n" if line.endswith(b"\n") else b""
    body = line[:len(line) - len(eol)]
    if o.csv:
        return _split_csv(body, o.delimiter[0], o.quote[0], o.escape[0], o.null), eol
    return _split_text(body, o.delimiter[0], o.null), eol


# ---------------------------------------------------------------------------------------------
# the harness's own COPY writer

def write_row(values: list, o: Options) -> bytes:
    out = []
    for v in values:
        if v is None:
            out.append(o.null)
        elif o.csv:
            special = (o.delimiter, o.quote, o.escape, b"\n", b"\r")
            if v == o.null or not v or any(s in v for s in special):
                if o.escape != o.quote:
                    v = v.replace(o.escape, o.escape + o.escape)
                out.append(o.quote + v.replace(o.quote, o.escape + o.quote) + o.quote)
            else:
                out.append(v)
        else:
            v = v.replace(b"\\", b"\\\\").replace(b"\n", b"\\n").replace(b"\r", b"\\r")
            out.append(v.replace(o.delimiter, b"\\" + o.delimiter))
    return o.delimiter.join(out)


# ---------------------------------------------------------------------------------------------

_PLANS: dict = {}


def plan_for(engine: int, cols: tuple[int, ...]) -> Plan:
    key = (engine, cols)
    p = _PLANS.get(key)
    if p is None:
        eng = ENGINES[engine]
        columns = [Column(*SOURCES[(c >> 4) & 7]) for c in cols]
        unresolved = eng.rules[0] if eng.rules and any(c >> 7 for c in cols) else None
        plan = eng.copy_plan(columns, unresolved_rule=unresolved, plan_type=DataRowPlan)
        expect = []
        for col in columns:            # every COPY value is text
            rule = unresolved if col.column is None else \
                eng.column_rule(col.schema, col.table, col.column)
            if rule is not None:
                expect.append((ACT_WHOLE, K_STR, rule.strategy))
            else:
                expect.append((ACT_DETECT if eng.scanner is not None else ACT_PASS, K_STR, None))
        p = Plan(plan, expect, not any(r.strategy.name == "format" for r in eng.rules))
        if len(_PLANS) > 4096:
            _PLANS.clear()
        _PLANS[key] = p
    return p


def _values(data: bytes, count: int, plant: int | None) -> list:
    out = []
    i = 0
    while len(out) < count:
        b = data[i] if i < len(data) else 0
        i += 1
        if b == 0xFF:
            out.append(None)
            continue
        raw = data[i:i + (b & 63)]
        i += len(raw)
        v = b"".join(PIECES[c] if c < len(PIECES) else bytes((c,)) for c in raw)
        if plant is not None:
            v = v + b"\n" + SECRETS[(plant + len(out)) % len(SECRETS)] + b"\n" + v
        out.append(v)
    return out


def line_of(data: bytes):
    """(Plan, Options, the line, how to hand it over, the values it was written from or None)."""
    engine = data[0] % len(ENGINES) if data else 0
    shape = data[1] if len(data) > 1 else 0
    opts = data[2] if len(data) > 2 else 0
    ncols = (shape & 7) % 7
    cols = tuple(data[3:3 + ncols])
    cols += (0,) * (ncols - len(cols))
    rest = data[3 + ncols:]
    mode = rest[0] if rest else 0
    rest = rest[1:]
    o = Options(bool(shape & 8), shape, opts)
    eol = EOLS[(opts >> 2) & 3]
    written = None
    if mode & 1:
        count = ncols + ((1 if mode & 4 else -1) if mode & 2 else 0)
        written = _values(rest, max(count, 1), mode >> 4 if mode & 8 else None)
        if not o.csv and not o.null:
            # text format with NULL '': an empty string cannot be written, it reads as NULL
            written = [v if v else None for v in written]
        body = write_row(written, o)
    else:
        body = rest
    return plan_for(engine, cols), o, body + eol, (opts >> 4) & 3, written


def test_one_input(data: bytes) -> None:
    p, o, line, how, written = line_of(data)
    fields, eol = split_line(line, o)
    if written is not None:
        assert [v for v, _ in fields] == written, ("the harness's writer and reader disagree",
                                                  written, fields)
    given = bytearray(line) if how == 1 else memoryview(line) if how == 2 else line
    try:
        out = p.plan.mask_copy_line(given, o.csv, **o.kwargs())
    except MaskRowError:
        assert len(fields) != len(p.expect), "a COPY row with the right number of values refused"
        return
    assert len(fields) == len(p.expect), ("a COPY row with the wrong number of values taken",
                                          len(fields), len(p.expect))
    if out is given:
        got = fields       # nothing changed
    else:
        assert type(out) is bytes, type(out)
        got, out_eol = split_line(out, o)
        assert out_eol == eol, ("the line ending changed", eol, out_eol)
        assert len(got) == len(fields), ("the rewritten row has another number of values",
                                         out, len(got), len(fields))
    for col, (before, raw), (after, new_raw) in zip(p.expect, fields, got):
        if col[0] == ACT_PASS:
            assert new_raw == raw, ("a pass-through field's bytes changed", raw, new_raw)
        check_masked(col, before, after, p.tails)


if __name__ == "__main__":
    fuzz(globals(), test_one_input, sys.argv)
