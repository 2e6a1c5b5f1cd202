"""The seam between a protocol and the neutral masker (hoopwire._mask): a protocol hands a row
plan its row as (offset, length) spans and value kinds, and frames the result itself. Proven
here with a framing that is not PostgreSQL's: a MySQL-like text result row, each value a
length-encoded string (a length of 0-250 in one byte, 0xFC + 2 bytes, 0xFD + 3 bytes, 0xFE + 8
bytes, little-endian) and 0xFB for NULL, built and parsed in this test. The masked values must
be those the PostgreSQL DataRow walk (hoopwire.pg._wire.DataRowPlan) gives for the same values,
and no byte outside the spans may be read or changed."""

import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from hoopwire.config import MaskConfig
from hoopwire.masking import (BUILTIN, K_OTHER, K_STR, MASKED_NULL, Column, MaskEngine,
                              MaskRowError, RowPlan)

NULL = 0xFB


def lenenc(n: int) -> bytes:
    if n < 251:
        return bytes([n])
    if n < 1 << 16:
        return b"\xfc" + struct.pack("<H", n)
    if n < 1 << 24:
        return b"\xfd" + struct.pack("<I", n)[:3]
    return b"\xfe" + struct.pack("<Q", n)


def build(values) -> bytes:
    return b"".join(bytes([NULL]) if v is None else lenenc(len(v)) + v for v in values)


def spans_of(row: bytes, ncols: int):
    """The test's own row walk: [(offset, length)] with -1 for NULL; asserts the row is whole."""
    pos, out = 0, []
    for _ in range(ncols):
        first = row[pos]
        if first == NULL:
            out.append((pos + 1, -1))
            pos += 1
            continue
        if first < 251:
            n, pos = first, pos + 1
        elif first == 0xFC:
            n, pos = struct.unpack_from("<H", row, pos + 1)[0], pos + 3
        elif first == 0xFD:
            n, pos = int.from_bytes(row[pos + 1:pos + 4], "little"), pos + 4
        else:
            n, pos = struct.unpack_from("<Q", row, pos + 1)[0], pos + 9
        out.append((pos, n))
        pos += n
    assert pos == len(row)
    return out


def values_of(row: bytes, ncols: int):
    return [None if n < 0 else row[o:o + n] for o, n in spans_of(row, ncols)]


def mask_row(plan: RowPlan, row: bytes) -> bytes | None:
    """What a MySQL row walk would do: spans in, its own framing out (None: row unchanged)."""
    new = plan.mask_spans(row, spans_of(row, plan.ncols))
    if new is None:
        return None
    vals = values_of(row, plan.ncols)
    return build([None if n is MASKED_NULL else vals[i] if n is None else n
                  for i, n in enumerate(new)])


ENGINE = MaskEngine([MaskConfig(columns=("shop.users.ssn",), strategy="partial", keep=4),
                     MaskConfig(detectors=tuple(BUILTIN), strategy="redact")], hash_key=b"k")
COLS = [Column("shop", "users", "id", K_OTHER), Column("shop", "users", "email", K_STR),
        Column("shop", "users", "ssn", K_STR), Column(None, None, None, K_STR)]


def test_values_of_another_framing_are_masked_in_place():
    plan = ENGINE.row_plan(COLS)
    assert type(plan) is RowPlan                  # the neutral plan: no PostgreSQL walk in it
    note = b"call 415-555-2671 or mail a.b@example.com " + b"x" * 300     # a 0xFC length
    row = build([b"7", b"ana@example.com", b"123-45-6789", note])
    out = mask_row(plan, row)
    vals = values_of(out, 4)
    assert vals[0] == b"7"
    assert vals[1] == b"****"
    assert vals[2] == b"*******6789"
    assert vals[3] == b"call **** or mail **** " + b"x" * 300
    assert plan.rows_rewritten == 1
    assert plan.take_counts() == {"EMAIL": 2, "PHONE": 1, "column:mask[0]": 1}


def test_an_untouched_row_and_nulls():
    plan = ENGINE.row_plan(COLS)
    assert mask_row(plan, build([b"1", b"no mail", None, None])) is None
    # a number column with a hit leaves as NULL: masked digits are no number any more
    out = plan.mask_spans(build([b"4111111111111111", None, None, None]),
                          spans_of(build([b"4111111111111111", None, None, None]), 4))
    assert out == [MASKED_NULL, None, None, None]


def test_bytes_outside_the_spans_are_never_read():
    """A protocol's framing bytes (here: padding between values that holds PII) are not the
    masker's: it rewrites only what the spans cover."""
    plan = ENGINE.row_plan([Column(None, None, None, K_STR)] * 2)
    pad = b"|bob@example.com|"
    row = b"hello" + pad + b"a@b.io"
    new = plan.mask_spans(row, [(0, 5), (5 + len(pad), 6)])
    assert new == [None, b"****"]
    assert plan.mask_spans(row, [(0, 5), (5 + len(pad), 0)]) is None


@pytest.mark.parametrize("spans", [[(0, 3), (2, 99)], [(-1, 2), (0, 1)], [(0, 1), (0, -2)],
                                   [(0, 1)], [(0, 1), (0, 1), (0, 1)], [(40, 1), (0, 1)]])
def test_spans_outside_the_row_are_refused(spans):
    plan = ENGINE.row_plan([Column(None, None, None, K_STR)] * 2)
    with pytest.raises(MaskRowError):
        plan.mask_spans(b"a@b.io", spans)


PIECES = [b"a@b.io", b"4111 1111 1111 1111", b"123-45-6789", b"AKIAIOSFODNN7EXAMPLE", b"plain",
          b"", "é€ü".encode(), b"\n", b"x" * 260, b"10.1.2.3", b"+44 20 7946 0958"]
value = st.one_of(st.none(), st.lists(st.sampled_from(PIECES), max_size=4).map(b" ".join))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(st.lists(value, min_size=4, max_size=4), min_size=1, max_size=6))
def test_any_framing_masks_as_the_postgresql_walk(rows):
    """The same values masked through lenenc spans and through PostgreSQL DataRows come out the
    same, value for value, and the row the other framing gets back is well formed."""
    from hoopwire.pg._wire import DataRowPlan
    mine = ENGINE.row_plan(COLS)
    pg = ENGINE.row_plan(COLS, plan_type=DataRowPlan)
    for vals in rows:
        out = mask_row(mine, build(vals))
        got = vals if out is None else values_of(out, 4)
        body = struct.pack("!h", 4) + b"".join(
            struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v for v in vals)
        ref = pg.rewrite(b"D" + struct.pack("!i", len(body) + 4) + body)
        want = vals if ref is None else _datarow_values(ref)
        assert got == want
        assert (out is None) == (ref is None)
    assert mine.take_counts() == pg.take_counts()


def _datarow_values(msg):
    pos, out = 7, []
    for _ in range(struct.unpack_from("!h", msg, 5)[0]):
        (n,) = struct.unpack_from("!i", msg, pos)
        pos += 4
        out.append(None if n < 0 else msg[pos:pos + n])
        pos += max(n, 0)
    return out
