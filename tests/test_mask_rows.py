"""The Cython row rewriter: DataRow in text and binary formats, COPY text/CSV rows, and
property tests: arbitrary bytes are refused (MaskRowError) exactly when they are not a
well-formed DataRow, and what comes out is well formed and masked as the rules say."""

import json
import struct

import pytest
from hypothesis import given, settings, strategies as st, HealthCheck

from hoopwire.config import MaskConfig
from hoopwire.masking import BUILTIN, MaskEngine, MaskRowError
from hoopwire.pg._wire import DataRowPlan, mask_copy_line
from hoopwire.pg.kinds import PgColumn as Column, to_column
from hoopwire.masking.strategies import partial

TEXT, INT4, INT8, UUID, BYTEA, JSON, JSONB, TEXTARR, VARCHAR = 25, 23, 20, 2950, 17, 114, 3802, 1009, 1043


def datarow(*values):
    body = struct.pack("!h", len(values))
    for v in values:
        body += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    return b"D" + struct.pack("!i", len(body) + 4) + body


def parse(msg):
    """Reference parser: the values of a well-formed DataRow (asserts it is one)."""
    assert msg[0:1] == b"D"
    (length,) = struct.unpack("!i", msg[1:5])
    assert length + 1 == len(msg)
    (n,) = struct.unpack("!h", msg[5:7])
    pos, out = 7, []
    for _ in range(n):
        (flen,) = struct.unpack("!i", msg[pos:pos + 4])
        pos += 4
        if flen == -1:
            out.append(None)
        else:
            assert flen >= 0 and pos + flen <= len(msg)
            out.append(msg[pos:pos + flen])
            pos += flen
    assert pos == len(msg)
    return out


def row_plan(engine, cols, **kw):
    """A PostgreSQL row plan: the columns' type OIDs mapped to value kinds (hoopwire.pg.kinds)."""
    return engine.row_plan([to_column(c) for c in cols], plan_type=DataRowPlan, **kw)


def make(strategy="redact", columns=("public.users.ssn", "*.password"), detectors=tuple(BUILTIN), keep=4):
    return MaskEngine([MaskConfig(columns=columns, detectors=detectors, strategy=strategy, keep=keep)],
                      hash_key=b"k")


@pytest.fixture(scope="module")
def eng():
    return make()


USERS = [Column("public", "users", "id", INT4, 0), Column("public", "users", "email", TEXT, 0),
         Column("public", "users", "ssn", TEXT, 0), Column(None, None, None, TEXT, 0)]


def test_untouched_row_is_none(eng):
    plan = row_plan(eng, USERS)
    assert plan.rewrite(datarow(b"1", b"no pii here", None, b"nothing")) is None
    assert plan.take_counts() == {}


def test_column_rule_and_detector(eng):
    plan = row_plan(eng, USERS)
    out = plan.rewrite(datarow(b"1", b"alice@example.com", b"123-45-6789", b"note: call 415-555-2671"))
    assert parse(out) == [b"1", b"****", b"****", b"note: call ****"]
    assert plan.take_counts() == {"EMAIL": 1, "PHONE": 1, "column:mask[0]": 1}
    assert plan.take_counts() == {}


def test_null_values_stay_null(eng):
    plan = row_plan(eng, USERS)
    assert plan.rewrite(datarow(None, None, None, None)) is None
    out = plan.rewrite(datarow(None, None, b"", None))  # an empty masked value is still masked
    assert parse(out) == [None, None, b"****", None]


def test_alias_unresolved_rule():
    e = make()
    rule = e.column_rule("public", "users", "ssn")
    plan = row_plan(e, [Column(None, None, None, TEXT, 0), Column("public", "users", "id", INT4, 0)],
                      unresolved_rule=rule)
    assert parse(plan.rewrite(datarow(b"123456789", b"7"))) == [b"****", b"7"]


@pytest.mark.parametrize("strategy,expect", [
    ("redact", b"****"), ("partial", b"*******6789"), ("null", None),
    ("hash", None), ("format", None)])
def test_whole_strategies(strategy, expect):
    e = make(strategy)
    plan = row_plan(e, [Column("public", "users", "ssn", TEXT, 0)])
    (v,) = parse(plan.rewrite(datarow(b"123-45-6789")))
    if strategy == "null":
        assert v is None
    elif strategy == "hash":
        assert v.startswith(b"h:") and len(v) == 18
    elif strategy == "format":
        assert len(v) == 11 and v[3:4] == b"-" and v != b"123-45-6789"
    else:
        assert v == expect


def test_lengths_recomputed_with_multibyte():
    e = make("partial", keep=3)
    plan = row_plan(e, [Column("public", "users", "password", TEXT, 0),
                       Column(None, None, None, TEXT, 0)])
    pw = "pässwörd€".encode()
    note = "Grüße an jöhn@example.com → 4111111111111111 ✓".encode()
    out = plan.rewrite(datarow(pw, note))
    a, b = parse(out)
    assert a == "******rd€".encode()
    # the ASCII-only EMAIL pattern starts after "ö" (a documented limit)
    assert b.decode("utf-8") == "Grüße an jö***********com → *************111 ✓"
    assert parse(out) and len(out) == len(datarow(a, b))


def test_binary_format_types():
    e = make()
    cols = [Column("public", "users", "password", BYTEA, 1),     # bytea binary: raw bytes
            Column("public", "users", "password", INT8, 1),      # int8 binary -> NULL
            Column("public", "users", "password", UUID, 1),      # uuid binary -> NULL
            Column("public", "users", "password", VARCHAR, 1),   # varchar binary: the string
            Column("public", "users", "password", JSONB, 1),     # jsonb binary: version + JSON
            Column("public", "users", "password", JSON, 0),      # json text: a JSON string
            Column("public", "users", "password", BYTEA, 0)]     # bytea hex text
    out = row_plan(e, cols).rewrite(datarow(b"\x00\x01", struct.pack("!q", 5), b"\x11" * 16, b"pw",
                                           b'\x01{"a": 1}', b'{"a": 1}', b"\\x0001"))
    vals = parse(out)
    assert vals == [b"****", None, None, b"****", b'\x01"****"', b'"****"', b"****"]
    assert json.loads(vals[4][1:]) == "****"


def test_detectors_on_binary_fields():
    e = make(columns=())
    cols = [Column(None, None, None, TEXT, 1), Column(None, None, None, JSONB, 1),
            Column(None, None, None, INT8, 1), Column(None, None, None, INT8, 0),
            Column(None, None, None, TEXTARR, 1), Column(None, None, None, TEXTARR, 0)]
    arr_bin = b"\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x19\x00\x00\x00\x01\x00\x00\x00\x01" \
              b"\x00\x00\x00\x08a@b.info"
    out = row_plan(e, cols).rewrite(datarow(b"mail a@b.io", b'\x01{"e": "a@b.io"}',
                                           struct.pack("!q", 4111111111111111), b"4111111111111111",
                                           arr_bin, b"{a@b.io,x}"))
    vals = parse(out)
    assert vals[0] == b"mail ****"
    assert vals[1] == b'\x01{"e": "****"}'
    assert vals[2] == struct.pack("!q", 4111111111111111)   # 8 binary bytes: nothing to see
    assert vals[3] is None                                   # a text int that is a card: NULL
    assert vals[4] is None                                   # binary array holding an email: NULL
    assert vals[5] == b"{****,x}"                            # text array: in place


def test_json_stays_json():
    # a hit whose in-place masking would break JSON makes the whole value the JSON string "****"
    e = make("format", columns=(), detectors=("PEM_PRIVATE_KEY",))
    doc = json.dumps({"k": "-----BEGIN PRIVATE KEY-----\nMIIEvQ\n-----END PRIVATE KEY-----"}).encode()
    (v,) = parse(row_plan(e, [Column(None, None, None, JSON, 0)]).rewrite(datarow(doc)))
    json.loads(v)
    assert b"MIIEvQ" not in v


@pytest.mark.parametrize("msg,why", [
    (b"", "not a DataRow"), (b"T\x00\x00\x00\x06\x00\x00", "not a DataRow"),
    (b"D\x00\x00\x00\x07\x00\x01", "does not match"),
    (b"D\x00\x00\x00\x06\x00\x02", "values"),
    (b"D\x00\x00\x00\x08\x00\x01\x00\x00", "ends inside"),
    (b"D\x00\x00\x00\x0a\x00\x01\x00\x00\x00\x05", "overruns"),
    (b"D\x00\x00\x00\x0a\x00\x01\xff\xff\xff\xfe", "length -2"),
    (b"D\x00\x00\x00\x0b\x00\x01\x00\x00\x00\x00\x00", "after its last"),
])
def test_malformed_rows_raise_typed_error(msg, why):
    plan = row_plan(make(), [Column(None, None, None, TEXT, 0)])
    with pytest.raises(MaskRowError, match=why) as e:
        plan.rewrite(msg)
    assert e.value.code == "08P01"


def test_rewrite_accepts_memoryview(eng):
    plan = row_plan(eng, USERS)
    msg = bytearray(datarow(b"1", b"a@b.io", None, None))
    assert parse(plan.rewrite(memoryview(msg))) == [b"1", b"****", None, None]


def test_passthrough_plan():
    e = MaskEngine([MaskConfig(columns=("x.y.z",))], hash_key=b"k")
    plan = row_plan(e, [Column("public", "t", "a", TEXT, 0)])
    assert plan.passthrough and plan.rewrite(datarow(b"a@b.io")) is None


def test_many_columns_one_scan_maps_back(eng):
    cols = [Column(None, None, None, TEXT, 0)] * 40
    vals = [b"v%d" % i for i in range(40)]
    vals[0] = b"a@b.io"
    vals[17] = b"x 4111111111111111"
    vals[39] = b"AKIAIOSFODNN7EXAMPLE"
    vals[5] = None
    out = parse(row_plan(eng, cols).rewrite(datarow(*vals)))
    expect = list(vals)
    expect[0], expect[17], expect[39] = b"****", b"x ****", b"****"
    assert out == expect


def test_values_do_not_join_across_fields(eng):
    # "john" | "@example.com" are two values, not one address; ^...$ see one value each
    plan = row_plan(eng, [Column(None, None, None, TEXT, 0)] * 2)
    assert plan.rewrite(datarow(b"john", b"@example.com")) is None


# -- COPY -------------------------------------------------------------------------------------

COPY_COLS = [("public", "users", "id"), ("public", "users", "ssn"), (None, None, None)]


def test_copy_text_line(eng):
    plan = eng.copy_plan(COPY_COLS, plan_type=DataRowPlan)
    line = b"1\t123-45-6789\tmail a@b.io\\tand\\\\more\\n\n"
    out = mask_copy_line(line, plan, False)
    assert out == b"1\t****\tmail ****\\tand\\\\more\\n\n"
    assert mask_copy_line(b"2\t\\N\tnothing\n", plan, False) == b"2\t\\N\tnothing\n"
    untouched = b"3\t\\N\tplain\n"
    assert plan.mask_copy_line(untouched) is untouched


def test_copy_text_escapes_in_masked_values():
    e = make("partial", keep=3)
    plan = e.copy_plan(COPY_COLS, plan_type=DataRowPlan)
    # the value decodes to "12\t3-45-67\\89": its escaped tail is kept re-escaped
    out = plan.mask_copy_line(b"1\t12\\t3-45-67\\\\89\tx\n")
    assert out == b"1\t**********\\\\89\tx\n"
    # a delimiter inside a value
    plan2 = e.copy_plan(COPY_COLS, plan_type=DataRowPlan)
    assert plan2.mask_copy_line(b"1|ab\\|cdef|x\n", delimiter=b"|") == b"1|****def|x\n"


def test_copy_null_strategy_text_and_csv():
    e = make("null")
    plan = e.copy_plan(COPY_COLS, plan_type=DataRowPlan)
    assert plan.mask_copy_line(b"1\t123-45-6789\ta@b.io\n") == b"1\t\\N\t****\n"
    assert plan.mask_copy_line(b'1,123-45-6789,a@b.io\n', csv=True) == b"1,,****\n"


def test_copy_csv_quoting(eng):
    plan = eng.copy_plan(COPY_COLS, plan_type=DataRowPlan)
    line = b'1,"123-45-6789","say ""hi"", a@b.io\nnext line"\r\n'
    assert plan.mask_copy_line(line, csv=True) == b'1,"****","say ""hi"", ****\nnext line"\r\n'
    assert plan.mask_copy_line(b'2,,""\n', csv=True) == b'2,,""\n'      # NULL and empty stay
    e = make("partial", keep=3)
    p2 = e.copy_plan(COPY_COLS, plan_type=DataRowPlan)
    # a kept tail holding the delimiter must be quoted
    assert p2.mask_copy_line(b'1,"12345,67",x\n', csv=True) == b'1,"*****,67",x\n'
    assert p2.mask_copy_line(b'1,"abc\\"d",x\n', csv=True, escape=b"\\") == b'1,"**c\\"d",x\n'


def test_copy_wrong_column_count(eng):
    with pytest.raises(MaskRowError):
        eng.copy_plan(COPY_COLS, plan_type=DataRowPlan).mask_copy_line(b"1\t2\n")


# -- property: arbitrary bytes ------------------------------------------------------------------

PROP_ENGINE = make("partial", keep=2)
PROP_PLANS = {n: row_plan(PROP_ENGINE,
    [Column("public", "users", "ssn" if i % 3 == 0 else "note", (TEXT, INT4, JSONB, BYTEA)[i % 4], i % 2)
     for i in range(n)]) for n in range(0, 5)}

pii = st.sampled_from([b"a@b.io", b"4111111111111111", b"123-45-6789", "é€ü".encode(), b"\x00\xff",
                       b"AKIAIOSFODNN7EXAMPLE", b"", b"x"])
value = st.one_of(st.none(), st.binary(max_size=40), st.lists(pii, max_size=4).map(b" ".join))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(value, min_size=0, max_size=4))
def test_wellformed_rows_stay_wellformed(vals):
    plan = PROP_PLANS[len(vals)]
    msg = datarow(*vals)
    out = plan.rewrite(msg)
    if out is not None:
        new = parse(out)
        assert len(new) == len(vals)
        for a, b in zip(vals, new):
            assert (a is None) <= (b is None)   # NULL stays NULL


def values_or_none(msg):
    """The values of a well-formed DataRow, or None when msg is not one (never raises)."""
    try:
        return parse(msg)
    except (AssertionError, struct.error, IndexError):
        return None


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 4))
def test_arbitrary_bytes_are_refused_exactly_when_malformed(data, n):
    """Arbitrary bytes as a DataRow (and cut into a well-formed one): MaskRowError exactly when
    they are not a well-formed DataRow of the plan's n columns (the reference parser
    decides); otherwise the row that
    comes out is well formed, NULLs stay NULL, and every value under the column rule (ssn:
    columns 0 and 3, both text here) comes out as partial masking with keep=2 makes it."""
    plan = PROP_PLANS[n]
    rule_cols = [i for i in range(n) if i % 3 == 0]
    # and the bytes cut into n values (one starting with 0xff is NULL): a well-formed row
    k = len(data) // n if n else 0
    cut = [data[i * k:(i + 1) * k] for i in range(n)]
    built = datarow(*(None if v[:1] == b"\xff" else v for v in cut))
    for msg in (data, b"D" + data, b"D" + struct.pack("!i", len(data) + 6) + struct.pack("!h", n) + data,
                built):
        want = values_or_none(msg)
        if want is not None and len(want) != n:
            want = None
        try:
            out = plan.rewrite(msg)
        except MaskRowError:
            assert want is None, msg
            continue
        assert want is not None, msg
        got = want if out is None else parse(out)
        assert len(got) == n
        for i, (a, b) in enumerate(zip(want, got)):
            assert (a is None) == (b is None) or (a is not None and i % 4 == 1)  # int4: NULL
            if i in rule_cols and a is not None:
                assert b == partial(a, 2)


_ENGINE = []


def _shared_engine():
    """One compiled engine for the property tests (compiling Hyperscan takes milliseconds)."""
    if not _ENGINE:
        _ENGINE.append(make())
    return _ENGINE[0]


DENSE_VALUES = [b"mail me at a.b@example.com or +14155552671", b"plain words", b"123-45-6789",
                b"card 4111 1111 1111 1111 and AKIAIOSFODNN7EXAMPLE", b"", None,
                b'{"k": "ghp_' + b"a" * 36 + b'"}', b"-----BEGIN PRIVATE KEY-----\nQUJD\n",
                b"\n-----END PRIVATE KEY-----", "Chloé 555-12-3456 ü".encode()]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(st.sampled_from(DENSE_VALUES), min_size=4, max_size=4),
                min_size=2, max_size=70))
def test_one_span_scan_per_read_masks_as_row_by_row(rows):
    """Reads full of hits: the prescan finds the spans of every flagged value of the read in
    one start-of-match scan (values whose match crosses into the next value -- the PEM pieces
    -- and binary jsonb scan alone). Byte for byte and count for count what rewriting each row
    on its own gives."""
    cols = [Column(None, None, None, 25, 0), Column(None, None, None, 25, 0),
            Column(None, None, None, 114, 0), Column(None, None, None, 3802, 1)]
    e = _shared_engine()

    def cell(i, v):
        if v is None or i < 2:
            return v
        text = json.dumps(v.decode("utf-8")).encode()
        return text if i == 2 else b"\x01" + text
    msgs = [datarow(*(cell(i, v) for i, v in enumerate(values))) for values in rows]
    chunked = row_plan(e, cols)
    got = chunked.rewrite_chunk(b"".join(msgs))
    alone = row_plan(e, cols)
    assert got == [alone.rewrite(m) for m in msgs]
    assert chunked.take_counts() == alone.take_counts()


def test_a_match_crossing_values_never_joins_them():
    """A PEM block split over two values: each value is judged on its own bytes."""
    e = _shared_engine()
    cols = [Column(None, None, None, 25, 0)] * 2
    head, tail = b"-----BEGIN PRIVATE KEY-----\nQUJD", b"RUZH\n-----END PRIVATE KEY-----"
    rows = [datarow(head, tail), datarow(b"plain", b"words"), datarow(head, b"x")]
    got = row_plan(e, cols).rewrite_chunk(b"".join(rows))
    assert got == [row_plan(e, cols).rewrite(m) for m in rows]
    assert parse(got[0])[0] == b"****"


def test_line_anchors_match_at_every_line_of_a_value():
    """^ and $ in a detector pattern match at the start and end of the value and of each line
    in it, in the find pass and in the span pass alike (a value flagged is a value masked)."""
    from hoopwire.config import DetectorConfig
    e = MaskEngine([MaskConfig(detectors=("TICKET",), strategy="redact")],
                   [DetectorConfig(name="TICKET", pattern=r"^TCK-[0-9]{4}$")], hash_key=b"k")
    plan = row_plan(e, [Column(None, None, None, 25, 0)])
    assert parse(plan.rewrite(datarow(b"TCK-1234")))[0] == b"****"
    assert parse(plan.rewrite(datarow(b"see\nTCK-1234\nthanks")))[0] == b"see\n****\nthanks"
    assert plan.rewrite(datarow(b"xTCK-1234")) is None
    chunk = b"".join(datarow(v) for v in (b"TCK-1234", b"a\nTCK-5678", b"no TCK-1"))
    assert [parse(r)[0] if r else None for r in plan.rewrite_chunk(chunk)] == \
        [b"****", b"a\n****", None]


SPARSE_VALUES = [b"plain words", b"nothing here", b"", None, b"123-45-6789", b"x" * 300,
                 b"mail a.b@example.com", "Chloé ü".encode(), b"4111 1111 1111 1111"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(st.sampled_from(SPARSE_VALUES), min_size=3, max_size=3),
                min_size=1, max_size=40))
def test_prescan_of_a_whole_read_masks_as_row_by_row(rows):
    """The relay scans a whole network read once for detector hits, then rewrites each row
    with those flags: byte for byte what rewriting each row on its own gives."""
    cols = [Column(None, None, None, 25, 0), Column("public", "users", "ssn", 25, 0),
            Column(None, None, None, 114, 0)]
    e = _shared_engine()
    msgs = [datarow(*(v if i != 2 or v is None else b'"' + v.replace(b'"', b"") + b'"'
                      for i, v in enumerate(values))) for values in rows]
    got = row_plan(e, cols).rewrite_chunk(b"".join(msgs))
    assert got == [row_plan(e, cols).rewrite(m) for m in msgs]


def test_prescan_flags_the_values_with_hits():
    e = make()
    plan = row_plan(e, [Column(None, None, None, 25, 0), Column(None, None, None, 25, 0)])
    chunk = b"".join([datarow(b"plain", b"mail a@example.com"), datarow(b"none", b"none"),
                      datarow(b"123-45-6789", b"x")])
    assert plan.prescan_bytes(chunk) == [[1], [], [0]]
    plan.prescan_clear()


def test_luhn_in_c_agrees_with_the_reference():
    from hoopwire.masking.detectors import _luhn_py, luhn_ok
    import random
    rnd = random.Random(7)
    for _ in range(3000):
        d = bytes(rnd.choice(b"0123456789") for _ in range(rnd.randint(0, 20)))
        assert luhn_ok(d) == _luhn_py(d)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=40),
                          st.lists(st.sampled_from(SPARSE_VALUES), min_size=3, max_size=3)
                          .map(lambda vs: datarow(*vs))), max_size=8),
       st.integers(0, 3))
def test_prescan_of_arbitrary_bytes_changes_no_row(pieces, cut):
    """A read may hold anything (a malformed row, half a row, other messages): the prescan
    stops at the first message it cannot take whole, and rewriting the read row by row after
    it gives exactly what each row rewritten on its own gives (same bytes, same counts, and a
    MaskRowError at the same row)."""
    chunk = b"".join(pieces)
    chunk = chunk[:len(chunk) - cut] if cut < len(chunk) else chunk
    cols = [Column(None, None, None, 25, 0)] * 3
    plan = row_plan(_shared_engine(), cols)
    plan.prescan_bytes(chunk)
    plan.prescan_clear()
    # the reference: each message of the read (framed as the relay's framer would hand them
    # over) rewritten on its own by a plan that never saw the read, up to the first refusal
    alone = row_plan(_shared_engine(), cols)
    want, refused = [], False
    pos = 0
    while len(chunk) - pos >= 5:
        size = struct.unpack("!I", chunk[pos + 1:pos + 5])[0] + 1
        if size < 5 or size > len(chunk) - pos:
            break
        try:
            want.append(alone.rewrite(chunk[pos:pos + size]))
        except MaskRowError:
            refused = True
            break
        pos += size
    try:
        got = plan.rewrite_chunk(chunk)
    except MaskRowError:
        assert refused, "the prescanned read refused a row rewritten fine on its own"
        return
    assert not refused, "the prescanned read took a row refused on its own"
    assert got == want
    assert plan.take_counts() == alone.take_counts()


PIECES = ["mail a.b@example.com", "+14155552671", "123-45-6789", "4111 1111 1111 1111",
          "10.1.2.3", "fe80::1:2", "AKIAIOSFODNN7EXAMPLE", "api_key=sk_live_4f9Qx7Lm2Zp8Kd3",
          "GB82 WEST 1234 5698 7654 32", "Chloé ü", "日本", " ", "\n", "-", "x", "v1.2.3.4"]


@pytest.mark.parametrize("strategy", ["redact", "partial", "hash"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(st.sampled_from(PIECES), max_size=6).map("".join), min_size=1,
                max_size=12))
def test_rows_are_masked_as_free_text_is(strategy, texts):
    """A DataRow's text values rewritten by the plan (C for redact and ASCII partial, Python
    for the rest) read exactly as the same text masked by the engine's free-text path, with
    the same counts; and a whole read at once gives the same rows."""
    e = _strategy_engine(strategy)
    plan = row_plan(e, [Column(None, None, None, TEXT, 0)])
    rows = [datarow(t.encode()) for t in texts]
    got = [plan.rewrite(r) for r in rows]
    counts = plan.take_counts()
    want, want_counts = [], {}
    for t in texts:
        masked, found = e.mask_text(t.encode())
        want.append(masked)
        for k, v in found.items():
            want_counts[k] = want_counts.get(k, 0) + v
    assert [parse(g)[0] if g is not None else t.encode() for g, t in zip(got, texts)] == want
    assert counts == want_counts
    assert plan.rewrite_chunk(b"".join(rows)) == got


_STRATEGY_ENGINES = {}


def _strategy_engine(strategy):
    if strategy not in _STRATEGY_ENGINES:
        _STRATEGY_ENGINES[strategy] = make(strategy=strategy, columns=())
    return _STRATEGY_ENGINES[strategy]


def test_a_value_with_many_hits_then_a_small_one():
    """A value with thousands of hits grows the scanner's span list, which is given back after
    it; the next values (free text and rows) are masked as before."""
    e = _shared_engine()
    many = b" ".join(b"u%d@example.com" % i for i in range(20000))
    masked, found = e.mask_text(many)
    assert found == {"EMAIL": 20000} and masked == b" ".join([b"****"] * 20000)
    assert e.mask_text(b"write to a@example.com")[0] == b"write to ****"
    plan = row_plan(e, [Column(None, None, None, TEXT, 0)])
    assert parse(plan.rewrite(datarow(many)))[0] == masked
    assert parse(plan.rewrite(datarow(b"a@example.com")))[0] == b"****"


# -- PostgreSQL types -> the masker's value kinds (hoopwire.pg.kinds) -------------------------

@pytest.mark.parametrize("oid, fmt, kind", [
    (TEXT, 0, "K_STR"), (TEXT, 1, "K_STR"), (VARCHAR, 0, "K_STR"), (0, 0, "K_STR"),
    (JSON, 0, "K_JSON"), (JSON, 1, "K_JSON"), (JSONB, 0, "K_JSON"), (JSONB, 1, "K_JSONB_BIN"),
    (BYTEA, 0, "K_OPAQUE"), (BYTEA, 1, "K_STR"), (TEXTARR, 0, "K_INPLACE"), (TEXTARR, 1, "K_OTHER"),
    (INT4, 0, "K_OTHER"), (UUID, 1, "K_OTHER"), (12345, 0, "K_OTHER")])
def test_type_oids_map_to_value_kinds(oid, fmt, kind):
    import hoopwire._mask as m
    from hoopwire.pg.kinds import column_kind
    assert column_kind(oid, fmt) == getattr(m, kind)
    assert to_column(Column("s", "t", "c", oid, fmt)).kind == getattr(m, kind)
    assert column_kind(12345, 0, frozenset({12345})) == m.K_STR       # citext, domains


def test_text_bytea_is_never_scanned_but_masked_whole_as_redacted(eng):
    """Hex text is opaque: a hit inside it is no hit (its bytes are not the value's), and a
    whole mask writes a value the client still reads as bytea."""
    hexed = b"\\x" + b"123-45-6789".hex().encode()
    plan = row_plan(eng, [Column(None, None, None, BYTEA, 0), Column("public", "users", "ssn", BYTEA, 0)])
    assert plan.actions()[0][0] == 0          # ACT_PASS: detectors do not see hex text
    assert parse(plan.rewrite(datarow(b"4111111111111111", hexed))) == [b"4111111111111111", b"****"]
