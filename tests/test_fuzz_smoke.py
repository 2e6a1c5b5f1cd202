"""The fuzz harnesses (fuzz/*.py) over a small fixed corpus each, in the normal test run.

Each harness's test_one_input(data) checks its properties and raises on a violation; here it
runs over ~50 fixed inputs per harness (hand-picked cases plus bytes from a seeded generator),
then over the seed corpus kept in fuzz/corpus/<harness>/ (what the atheris run in
tests/test_fuzz_atheris.py starts from) and the reproducers in fuzz/crashes/<harness>-*.bin.
atheris is not needed (the harnesses import without it). Real fuzzing: see fuzz/README.md.

The last tests break each product function on purpose (monkeypatched) and check that its
harness notices: a harness that cannot fail proves nothing.
"""

from __future__ import annotations

import importlib.util
import pathlib
import random
import struct
import sys

import pytest

FUZZ = pathlib.Path(__file__).resolve().parent.parent / "fuzz"
if str(FUZZ) not in sys.path:
    sys.path.insert(0, str(FUZZ))    # fuzz_mask_copy imports fuzz_mask_rows beside it


def load(name: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, FUZZ / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def msg(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def noise(seed: int, count: int, max_len: int, alphabet: int = 256) -> list[bytes]:
    rnd = random.Random(seed)
    return [bytes(rnd.randrange(alphabet) for _ in range(rnd.randrange(max_len + 1)))
            for _ in range(count)]


# -- corpora ------------------------------------------------------------------------------------

class FramingInput:
    """Inputs for fuzz_pg_framing laid out for its own provider (the one used without atheris;
    atheris's FuzzedDataProvider reads the same bytes differently, which is fine: more cases)."""

    def __init__(self):
        self.out = bytearray()

    def put(self, v: int, lo: int, hi: int) -> "FramingInput":
        self.out += (v - lo).to_bytes(((hi - lo).bit_length() + 7) // 8, "little")
        return self

    def head(self, cuts=(), max_size=None, kinds=0, resume_early=False, structured=False):
        self.put(1 if max_size is None else 0, 0, 3)
        if max_size is not None:
            self.put(max_size, 5, 400)
        self.put(int(structured), 0, 1).put(len(cuts), 0, 16)
        for c in cuts:
            self.put(c, 0, 0xFFFF)
        return self.put(kinds, 0, 255).put(int(resume_early), 0, 1)

    def message(self, kind: int, body: bytes, claimed: int | None = None):
        # structured mode: KINDS index, how, then the body spec
        self.put(kind, 0, 15)
        if claimed is not None:
            self.put(0, 0, 15)
            self.out += claimed.to_bytes(4, "big")
            return self.put(len(body), 0, 40).raw(body)
        return self.put(2, 0, 15).put(len(body), 0, 300).raw(body)

    def big(self, kind: int, size: int):
        return self.put(kind, 0, 15).put(1, 0, 15).put(size, 0, 70000)

    def raw(self, data: bytes):
        self.out += data
        return self

    def done(self) -> bytes:
        return bytes(self.out)


def framing(stream: bytes, **head) -> bytes:
    return FramingInput().head(**head).raw(stream).done()


QDZ = msg(b"Q", b"select 1\0") + msg(b"D", b"x" * 300) + msg(b"Z", b"I")
FRAMING = [
    b"",
    b"\x00",
    framing(msg(b"Z", b"I")),
    framing(QDZ),
    framing(QDZ, cuts=(1, 2, 3, 4, 5, 6, 7, 14, 15, 200, 319)),            # cuts inside headers
    framing(QDZ, cuts=(16, 16, 16, 300), kinds=0b11100100),                # empty reads, views
    framing(QDZ, cuts=(20, 100), resume_early=True),                       # hold 'D' spanning reads
    framing(QDZ + b"Q\x00\x00\x00\x03", cuts=(20,), resume_early=True),     # error after a hold
    framing(QDZ + b"Q\x00\x00\x00\x03", cuts=(330,)),                       # error after the hold
    framing(b"Q\x00\x00\x00\x03"),                                        # length below 4
    framing(b"Q\xff\xff\xff\xff"),                                        # length above the limit
    framing(msg(b"D", b"abc")[:6]),                                        # cut inside the body
    framing(msg(b"D", b"abc") + b"Q\x00\x00"),                              # cut inside the header
    framing(QDZ, max_size=100, cuts=(10, 20)),                             # 'D' over the limit
    framing(QDZ, max_size=14, cuts=(3,)),                                  # the first is too big
    FramingInput().head(cuts=(7, 70000 % 65536, 30000), structured=True)
    .message(1, b"row").big(1, 70000).message(2, b"I").done(),             # a big body
    FramingInput().head(cuts=(5,), structured=True, resume_early=True)
    .message(0, b"q").message(1, b"d").message(7, b"", claimed=2).done(),  # a bad length
    FramingInput().head(structured=True).message(1, b"short").raw(b"\x10\x01").done(),
] + noise(1, 30, 300) + noise(2, 5, 120, 8)

SQL = [
    b"", b"\x01", b"\x00select 1", b"\x00DROP/**/TABLE t; select 'a''b'",
    b"\x00select E'\\'' || $$x$$ || $a$ $$ $a$ -- c\n; /* /* */ */ \"Users\"",
    b"\x00select U&'\\0041' UESCAPE '!', U&\"d\\0061ta\", B'101', X'ff', N'x'",
    b"\x00select 1e'x', 0x1F, 0o17, 0b1, 1_000, .5e-3, $1::int",
    b"\x00'unterminated", b"\x00/* unterminated", b"\x00$tag$ unterminated", b'\x00"unterminated',
    b"\x00e'\\", b"\x00select '\xff\xfe' \x80\xc3(", b"\x00;;;  ;", b"\x00(;)",
    b"\x00select 'a'\n'b'", b"\x00select 'a' \n -- x\n 'b'",
] + noise(3, 23, 80, 64) + noise(4, 10, 60)

STARTUP = [
    b"", b"\x00", b"\x00\x00\x00\x00\x08\x04\xd2\x16\x2f",            # SSLRequest
    b"\x00\x00\x00\x00\x08\x04\xd2\x16\x30",                            # GSSENCRequest
    b"\x00\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x00\x07\x00\x00\x00\x09",  # CancelRequest
    b"\x00\x00\x00\x00\x0c\x04\xd2\x16\x2e\x00\x00\x00\x07",           # Cancel, wrong length
    b"\x03user\0app\0database\0db\0\0",
    b"\x0funser\0app\0_pq_.opt\0v\0\0",                                 # split into 4 feeds
    b"\x03user\0app\0\0trailing",
    b"\x03\0x\0\0", b"\x03user\0\xff\0\0", b"\x03user\0app", b"\x03user\0app\0x\0\0",
    b"\x01\x00\x02\x00\x00", b"\x00\x00\x00\x00\x07", b"\x00\x00\x00\x27\x11",
    b"\x00\x00\x00\x00\x09\x00\x03\x00\x00\x00",
    # built (bit 5): must be accepted and read back as built
    b"\x20\x00user\0app\0database\0db\0_pq_.x\0y\0user\0again",            # 3.0, dup name
    b"\x2c\x02user\0\xff\xfe\0\0v\0_pq_.a\0\0",                         # 3.2, 4 feeds, repaired
    b"\x60\x05\0\0\0",                                                 # empty names -> "p"
    b"\x20\x00" + b"n\0" + b"\xff" * 4000,                              # cut to fit 10000
    b"\xa0\x00\x00\x30\x39\xde\xad\xbe\xef", b"\xbc\x01",                  # CancelRequest
    b"\xe0\x00", b"\xe4\x01",                                           # SSL, GSSENC
] + noise(5, 25, 60) + noise(6, 8, 40, 4)

# fuzz_mask_rows: [engine, shape, one byte per column, mode] + values; mode 0x0b = a built row
# of exactly the plan's field count with a secret planted in every value (bits 4-7 pick it)
MASK_PLANTED = [bytes([e, 4, 0x00, 0x31, 0x29, 0x8a, 0x0b | (e << 4),
                       3, 0x00, 0x01, 0x02, 2, 0x1c, 0x1d, 0xff, 1, 0x30]) for e in range(8)]
MASK_ROWS = [
    b"", b"\x00", b"\x00\x00\x03",
    b"\x00\x04\x00\x10\x20\x30\x03\x01\x00\x02\x02\x03\x05\x04\xff",
    b"\x01\x06\x00\x01\x12\x23\x34\x45\x03" + b"\x03\x01\x02\x03" * 6,
    b"\x02\x03\x09\x0a\x0b\x03\x02\x1c\x1d\x02\x1e\x1f\x01\x18",           # JSON kinds
    b"\x03\x02\x0b\x0c\x03\x01\x29\x01\x00",                                # text arrays
    b"\x04\x03\x06\x07\x86\x03\x01\x02\x01\x03\x02\x04\x05",               # bytea, unresolved
    b"\x05\x02\x00\x30\x02" + b"\x00\x00\x00\x04ab",                        # correct header
    b"\x06\x01\x00\x00" + b"D\x00\x00\x00\x0a\x00\x01\xff\xff\xff\xfe",     # raw, length -2
    b"\x07\x01\x00\x01" + b"\x00\x01\x00\x00",
    b"\x03\x05\x00\x03\x04\x09\x0a\x03\x04****\x04****\x00\x06\"****\"\x01\x01", # masked
] + MASK_PLANTED + noise(7, 30, 80) + [
    b"%c%c" % (i, i * 37 % 256) + bytes(range(i, 64)) for i in range(8)]

# fuzz_mask_copy: [engine, shape (columns, CSV, delimiter, NULL), quoting/eol/how, one byte per
# column, mode] + the row (mode 0) or values (mode 1; 9 = with secrets planted)
MASK_COPY = [
    b"", b"\x00", b"\x00\x03\x04\x00\x30\x20\x00" + b"1\t123-45-6789\ta@b.io",
    b"\x00\x03\x04\x00\x30\x20\x00" + b"1\t\\N\tnothing",                   # NULL, no hit
    b"\x00\x03\x04\x00\x30\x20\x00" + b"1\t12\\t3-45\\\t67\\\\89\tx",         # escapes
    b"\x01\x0b\x08\x00\x30\x20\x00" + b'1,"123-45-6789","say ""hi"", a@b.io\nnext"',
    b"\x01\x0b\x09\x00\x30\x20\x00" + b'1,"ab\\"c\\\\",x,',                 # escape \\
    b"\x02\x5b\x00\x00\x30\x20\x00" + b"1|\"a|b\"|NULL",                   # | and NULL
    b"\x03\x03\x04\x00\x30\x20\x00" + b"1\t2",                             # too few values
    b"\x04\x02\x14\x80\x30\x00" + b"\\N\t" + b"\\",                       # unresolved, \\ at end
] + [bytes([e, 3 | csv | (e & 3) << 4 | (e & 1) << 6, e & 3 | 4, 0x00, 0x31, 0x8a, 0x09 | e << 4,
            3, 0x00, 0x01, 0x02, 2, 0x1c, 0x1d, 0xff])
     for e in range(8) for csv in (0, 8)] + noise(8, 20, 80)

# fuzz_http_parser: [requests/responses and how the input is read, HEAD bits] + the bytes
HTTP = [b"", b"\x00", b"\x00\x00GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"\x00\x00POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
        b"\x01\x00HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"] + noise(9, 20, 120)

CORPORA = {
    "fuzz_http_parser": HTTP,
    "fuzz_mysql_packets": noise(10, 20, 120),
    "fuzz_mysql_lexer": SQL,
    "fuzz_pg_framing": FRAMING,
    "fuzz_sqlnorm": SQL,
    "fuzz_sqlnorm_vs_pglast": SQL,
    "fuzz_startup": STARTUP,
    "fuzz_mask_rows": MASK_ROWS,
    "fuzz_mask_copy": MASK_COPY,
}


# Reproducers in fuzz/crashes/ of bugs not fixed yet: the harness must still fail on them
# (strict xfail), so that the fix shows up as an XPASS and the entry goes. (None open: the
# PEM-overlap reproducers, fuzz_mask_*-1.bin, pass since the masker masks overlapping hits'
# union.)
OPEN_BUGS: dict[str, str] = {}
REPRODUCERS = sorted((FUZZ / "crashes").glob("fuzz_*-*.bin"))


@pytest.mark.parametrize("name", sorted(CORPORA))
def test_harness_over_fixed_corpus(name):
    h = load(name)
    for data in CORPORA[name]:
        h.test_one_input(data)


@pytest.mark.parametrize("name", sorted(CORPORA))
def test_harness_over_kept_corpus(name):
    h = load(name)
    kept = sorted((FUZZ / "corpus" / name).glob("*"))
    assert kept, f"fuzz/corpus/{name}/ is empty"
    for path in kept:
        h.test_one_input(path.read_bytes())


@pytest.mark.parametrize("path", [
    pytest.param(p, id=p.name, marks=[pytest.mark.xfail(strict=True, raises=AssertionError,
                                                        reason=OPEN_BUGS[p.name])]
                 if p.name in OPEN_BUGS else []) for p in REPRODUCERS])
def test_kept_reproducer(path):
    load(path.name.rsplit("-", 1)[0]).test_one_input(path.read_bytes())


def test_framing_harness_with_the_fallback_provider(monkeypatch):
    # without atheris the framing harness decodes its input with its own provider: run that too
    h = load("fuzz_pg_framing")
    monkeypatch.setattr(h, "_provider", h._Provider)
    for data in FRAMING:
        h.test_one_input(data)


def test_framing_reference_agrees_with_the_framer():
    h = load("fuzz_pg_framing")
    stream = msg(b"Q", b"select 1\0") + msg(b"Z", b"I") + b"D\x00\x00"
    ref = h.reference_framing(stream)
    assert ref.messages == [("Q", b"select 1\0"), ("Z", b"I")]
    assert (ref.error, ref.headers, ref.boundary, ref.header_tail) == (None, 2, False, 3)
    assert h.reference_framing(b"Q\x00\x00\x00\x02").error == "08P01"
    assert h.reference_framing(msg(b"D", b"x" * 10), max_size=8).error == "54000"


def test_harness_helpers():
    h = load("fuzz_mask_rows")
    assert h.parse_datarow(b"D\x00\x00\x00\x0a\x00\x01\x00\x00\x00\x00") == [b""]
    assert h.parse_datarow(b"D\x00\x00\x00\x0a\x00\x01\x00\x00\x00\x01") is None
    assert h.parse_datarow(h.datarow([None, b"ab"])) == [None, b"ab"]
    s = load("fuzz_sqlnorm")
    assert s.sql_of(b"\x01\x00\x02z") == b"'E'z"
    assert s.sql_of(b"\x00\x00\x02z") == b"\x00\x02z"


def test_a_broken_property_is_caught(monkeypatch):
    # a harness that cannot fail proves nothing: break idempotence on purpose
    s = load("fuzz_sqlnorm")
    monkeypatch.setattr(s, "normalize", lambda x, keep_literals=False, **kw: x + b" ")
    with pytest.raises(AssertionError, match="not idempotent"):
        s.test_one_input(b"\x00select 1")


# -- each harness fails when what it guards is broken ------------------------------------------

def caught(h, inputs) -> list[str]:
    """The messages of the properties the harness finds broken, one per input that fails."""
    out = []
    for data in inputs:
        try:
            h.test_one_input(data)
        except AssertionError as e:
            out.append(str(e))
    return out


def test_framing_harness_catches_a_framer_that_loses_a_message(monkeypatch):
    h = load("fuzz_pg_framing")

    class Lossy(h.PgFramer):
        def feed_messages(self, chunk):
            return super().feed_messages(chunk)[1:]
    monkeypatch.setattr(h, "PgFramer", Lossy)
    failed = caught(h, FRAMING)
    assert len(failed) >= 5 and any("differ from the reference" in f for f in failed), failed


def test_startup_harness_catches_a_reader_that_refuses_everything(monkeypatch):
    h = load("fuzz_startup")

    async def refuse(reader):
        raise h.ProtocolError("no")
    monkeypatch.setattr(h, "read_startup", refuse)
    failed = caught(h, STARTUP)
    assert len(failed) >= 8 and any("refused" in f for f in failed), failed


def test_startup_harness_catches_a_reader_that_drops_a_parameter(monkeypatch):
    h = load("fuzz_startup")
    real = h.read_startup

    async def lossy(reader):
        s = await real(reader)
        s.params.pop("database", None)
        return s
    monkeypatch.setattr(h, "read_startup", lossy)
    failed = caught(h, STARTUP)
    assert len(failed) >= 2 and any("differs from the reference" in f for f in failed), failed


def test_sqlnorm_harness_catches_an_empty_normaliser(monkeypatch):
    s = load("fuzz_sqlnorm")
    monkeypatch.setattr(s, "normalize", lambda x, keep_literals=False, **kw: b"")
    failed = caught(s, SQL)
    assert len(failed) == len(SQL) and any("drop '?' table t" in f for f in failed), failed


def test_sqlnorm_harness_catches_literals_in_the_code_view(monkeypatch):
    s = load("fuzz_sqlnorm")
    real = s.normalize
    monkeypatch.setattr(s, "normalize", lambda x, keep_literals=False, **kw: real(x, True, **kw))
    failed = caught(s, [b"\x00select 1", b"\x00x"])
    assert len(failed) == 2 and any("drop '?' table t" in f for f in failed), failed


class BrokenPlan:
    """A RowPlan whose rewrite is another plan's (say, one that masks nothing)."""

    def __init__(self, real, rewrite_by):
        self._real = real
        self._by = rewrite_by

    def __getattr__(self, name):
        if name in ("rewrite", "rewrite_chunk", "mask_copy_line", "take_counts", "prescan_bytes",
                    "prescan_clear"):
            return getattr(self._by, name)
        return getattr(self._real, name)


def test_mask_rows_harness_catches_a_column_left_in_clear(monkeypatch):
    h = load("fuzz_mask_rows")
    real = h.plan_for
    monkeypatch.setattr(h, "plan_for", lambda e, cols: h.Plan(
        BrokenPlan(real(e, cols).plan, h.row_plan(h.ENGINES[7], [h.Column(None, None, None)] *
                                                              len(cols))), real(e, cols).expect, real(e, cols).tails))
    failed = caught(h, MASK_ROWS)
    assert len(failed) >= 5 and any("in clear" in f for f in failed), failed


def test_mask_rows_harness_catches_a_detector_hit_left_in_clear(monkeypatch):
    h = load("fuzz_mask_rows")
    real = h.plan_for

    def no_detectors(e, cols):
        # the same columns, detectors off: WHOLE columns are still masked, hits are not
        p = real(e, cols)
        columns = [h.Column(*h.SOURCES[(c >> 4) & 7], *h.TYPES[c & 15]) for c in cols]
        unresolved = h.ENGINES[e].rules[0] if any(c >> 7 for c in cols) else None
        quiet = h.row_plan(h.ENGINES[e], columns, unresolved_rule=unresolved, detect=False)
        return h.Plan(BrokenPlan(p.plan, quiet), p.expect, p.tails)
    monkeypatch.setattr(h, "plan_for", no_detectors)
    failed = caught(h, MASK_PLANTED)
    assert len(failed) >= 4 and any("a detector hit came out in clear" in f for f in failed), failed


def test_mask_copy_harness_catches_a_row_left_in_clear(monkeypatch):
    h = load("fuzz_mask_copy")
    real = h.plan_for
    monkeypatch.setattr(h, "plan_for", lambda e, cols: h.Plan(
        BrokenPlan(real(e, cols).plan, h.ENGINES[7].copy_plan([(None, None, None)] * len(cols),
                                                              plan_type=h.DataRowPlan)),
        real(e, cols).expect, real(e, cols).tails))
    failed = caught(h, MASK_COPY)
    assert len(failed) >= 5 and any("in clear" in f for f in failed), failed
