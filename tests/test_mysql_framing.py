"""MySQL framing and row walks (hoopwire.mysql._wire), in-process, against the pure-Python
reference codecs (hoopwire.mysql.packets): whatever the points where a packet stream is cut --
every byte boundary, one byte at a time, random multi-cuts -- the framer hands out the same
logical packets (continuation runs of 0xffffff-byte packets joined) and writes the same bytes;
the text and binary row walks find the values the reference finds and refuse what it refuses.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings, strategies as st

from hoopwire._mask import MaskRowError
from hoopwire.core._frames import FrameError
from hoopwire.mysql import packets as ref
from hoopwire.mysql._wire import (MysqlFramer, binary_row_spans, column_definition, err_fields,
                                  err_packet, frame, text_row_spans)

MAX = 0xFFFFFF


def run(stream: bytes, cuts, **kw):
    """Feed `stream` cut at `cuts`; (logical packets, bytes written)."""
    f = MysqlFramer(**kw)
    got, written = [], b""
    points = [0] + sorted(set(c for c in cuts if 0 < c < len(stream))) + [len(stream)]
    for a, b in zip(points, points[1:]):
        got += f.feed_packets(stream[a:b])
        written += f.written
        while f.holding_now:
            got += f.resume_packets()
            written += f.written
    assert f.pending == 0
    return got, written


def reference(stream: bytes):
    out, rest = ref.read_payloads(stream)
    assert rest == b""
    return out


SMALL = [(0, b"\x03SELECT 1"), (1, b"\x01"), (2, b""), (0, b"\x0e"), (7, bytes(range(200))),
         (255, b"x" * 251), (0, b"\xfe\x00\x00\x02\x00")]


def small_stream():
    return b"".join(frame(p, s) for s, p in SMALL)


def test_every_split_point():
    stream = small_stream()
    whole = [(s, p, 1) for s, p in SMALL]
    for cut in range(1, len(stream)):
        got, written = run(stream, [cut])
        assert got == whole, cut
        assert written == stream
    got, written = run(stream, range(len(stream)))          # one byte at a time
    assert got == whole and written == stream


def test_every_split_point_forwarding():
    """FORWARD: nothing is joined or copied, the bytes go as they came."""
    stream = small_stream()
    for cut in range(1, len(stream)):
        got, written = run(stream, [cut], inspect_all=False)
        assert got == [] and written == stream


def test_hold_and_resume_at_every_split():
    stream = small_stream()
    whole = [(s, p, 1) for s, p in SMALL]
    for cut in range(0, len(stream), 3):
        got, written = run(stream, [cut], hold_seq=7)
        assert got == whole and written == stream


def test_continuation_run_joined():
    """A payload of 0xffffff bytes or more comes in a run of packets and is handed out joined,
    whatever the cuts; one that is an exact multiple ends with an empty packet."""
    big = bytes(random.Random(1).getrandbits(8) for _ in range(256)) * (MAX // 256 + 2)
    for size in (MAX, MAX + 1, 2 * MAX + 5):
        payload = big[:size] if size <= len(big) else (big * 3)[:size]
        stream = frame(payload, 3) + frame(b"\x00\x00\x00\x02\x00\x00\x00", 9)
        assert stream == ref.frame(payload, 3) + ref.frame(b"\x00\x00\x00\x02\x00\x00\x00", 9)
        expect = [(s, p) for s, p in reference(stream)]
        n_run = size // MAX + 1
        cuts_list = [[], [1], [3, 4, 5], [MAX + 3, MAX + 4, MAX + 5], [len(stream) - 9],
                     sorted(random.Random(size).sample(range(1, len(stream)), 40))]
        for cuts in cuts_list:
            got, written = run(stream, cuts)
            assert [(s, p) for s, p, _ in got] == expect
            assert got[0][2] == n_run
            assert written == stream


def test_continuation_out_of_order():
    payload = b"a" * MAX
    stream = frame(payload, 3)
    bad = stream[:MAX + 4] + stream[MAX + 4:MAX + 7] + b"\x09" + stream[MAX + 8:]
    f = MysqlFramer()
    with pytest.raises(FrameError) as e:
        f.feed_packets(bad)
    assert e.value.code == 1156


def test_oversized_logical_packet_refused():
    f = MysqlFramer(max_logical=100)
    assert f.feed_packets(frame(b"x" * 100, 0)) == [(0, b"x" * 100, 1)]
    f = MysqlFramer(max_logical=MAX - 1)
    with pytest.raises(FrameError) as e:
        f.feed_packets(frame(b"x" * (MAX + 10), 0))
    assert e.value.code == 1153


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=300)), min_size=1, max_size=8),
       st.lists(st.integers(1, 4000), max_size=6))
def test_differential_against_reference(packets, cuts):
    stream = b"".join(frame(p, s) for s, p in packets)
    assert stream == b"".join(ref.frame(p, s) for s, p in packets)
    got, written = run(stream, cuts)
    assert [(s, p) for s, p, _ in got] == reference(stream)
    assert written == stream


# -- rows --------------------------------------------------------------------------------------

def _spans_values(payload, spans):
    return [None if ln < 0 else payload[off:off + ln] for off, ln in spans]


values = st.one_of(st.none(), st.binary(max_size=300))


@settings(max_examples=300, deadline=None)
@given(st.lists(values, min_size=1, max_size=12))
def test_text_row_walk_matches_reference(vals):
    payload = ref.text_row(vals)
    assert _spans_values(payload, text_row_spans(payload, len(vals))) == vals
    assert ref.parse_text_row(payload, len(vals)) == vals


FIXED = {1: 1, 2: 2, 13: 2, 3: 4, 9: 4, 4: 4, 8: 8, 5: 8}
TEMPORAL = {10: (0, 4, 7, 11), 12: (0, 4, 7, 11), 7: (0, 4, 7, 11), 11: (0, 8, 12)}
STRINGS = (0, 15, 16, 245, 246, 247, 248, 249, 250, 251, 252, 253, 254, 255)


@st.composite
def binary_rows(draw):
    n = draw(st.integers(1, 20))
    types, vals = [], []
    for _ in range(n):
        t = draw(st.sampled_from(list(FIXED) + list(TEMPORAL) + list(STRINGS)))
        types.append(t)
        if draw(st.booleans()) and draw(st.booleans()):
            vals.append(None)
        elif t in FIXED:
            vals.append(draw(st.binary(min_size=FIXED[t], max_size=FIXED[t])))
        elif t in TEMPORAL:
            k = draw(st.sampled_from(TEMPORAL[t]))
            vals.append(draw(st.binary(min_size=k, max_size=k)))
        else:
            vals.append(draw(st.binary(max_size=300)))
    return types, vals


@settings(max_examples=300, deadline=None)
@given(binary_rows())
def test_binary_row_walk_matches_reference(row):
    types, vals = row
    payload = ref.binary_row(vals, types)
    assert _spans_values(payload, binary_row_spans(bytes(types), payload)) == vals


@settings(max_examples=300, deadline=None)
@given(binary_rows(), st.integers(0, 400), st.binary(max_size=3))
def test_binary_row_walk_refuses_what_reference_refuses(row, cut, junk):
    """A truncated or padded row: both refuse, or both read the same values."""
    types, vals = row
    payload = ref.binary_row(vals, types)
    bad = payload[:cut] + junk
    try:
        want = ref.parse_binary_row(bad, types)
    except (ref.PacketError, IndexError, ValueError):
        want = None
    try:
        got = _spans_values(bad, binary_row_spans(bytes(types), bad))
    except MaskRowError:
        got = None
    assert got == want


@settings(max_examples=300, deadline=None)
@given(st.lists(values, min_size=1, max_size=8), st.integers(0, 400), st.binary(max_size=3))
def test_text_row_walk_refuses_what_reference_refuses(vals, cut, junk):
    payload = ref.text_row(vals)
    bad = payload[:cut] + junk
    try:
        want = ref.parse_text_row(bad, len(vals))
    except (ref.PacketError, IndexError, ValueError):
        want = None
    try:
        got = _spans_values(bad, text_row_spans(bad, len(vals)))
    except MaskRowError:
        got = None
    assert got == want


def test_column_definition_matches_reference():
    raw = ref.column_definition("app", "c", "customers", "s", "ssn", 45, 256, 253, 0x1001, 0)
    assert column_definition(raw) == ref.parse_column_definition(raw) == (
        "app", "c", "customers", "s", "ssn", 45, 256, 253, 0x1001, 0)


def test_err_packet_matches_reference():
    pkt = err_packet(1227, "42000", "statement blocked", 3)
    assert pkt[3] == 3
    e = ref.parse_err(pkt[4:])
    assert (e.errno, e.sqlstate, e.message) == (1227, "42000", b"statement blocked")
    assert err_fields(pkt[4:]) == (1227, "42000", b"statement blocked")
    assert len(err_packet(1, "HY000", "x" * 2000)) == 4 + 9 + 512     # MySQL keeps 512 bytes


# -- the fuzz harness (fuzz/fuzz_mysql_packets.py) without atheris ----------------------------------

def _harness(monkeypatch=None):
    """The harness, with its own byte layout (not atheris's) when monkeypatch is given: the
    inputs below are laid out for it."""
    import importlib
    import pathlib
    import sys
    fuzz = str(pathlib.Path(__file__).resolve().parent.parent / "fuzz")
    if fuzz not in sys.path:
        sys.path.insert(0, fuzz)
    h = importlib.import_module("fuzz_mysql_packets")
    if monkeypatch is not None:
        monkeypatch.setattr(h, "_provider", h._Provider)
    return h


def test_fuzz_harness_over_fixed_inputs(monkeypatch):
    h = _harness(monkeypatch)
    rnd = random.Random(20)
    for _ in range(1500):
        h.test_one_input(bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 500))))


def test_fuzz_harness_catches_a_framer_that_loses_a_packet(monkeypatch):
    h = _harness(monkeypatch)

    class Lossy(h.MysqlFramer):
        def feed_packets(self, data):
            return super().feed_packets(data)[1:]

    monkeypatch.setattr(h, "MysqlFramer", Lossy)
    rnd = random.Random(21)
    with pytest.raises(AssertionError):
        for _ in range(500):
            h.test_one_input(b"\x00" + bytes(rnd.getrandbits(8) for _ in range(300)))


def test_fuzz_harness_catches_a_row_walk_that_misreads(monkeypatch):
    h = _harness(monkeypatch)
    real = h.text_row_spans
    monkeypatch.setattr(h, "text_row_spans",
                        lambda p, n: [(o, ln - 1 if ln > 0 else ln) for o, ln in real(p, n)])
    rnd = random.Random(22)
    with pytest.raises(AssertionError):
        for _ in range(500):
            h.test_one_input(b"\x01\x00" + bytes(rnd.getrandbits(8) for _ in range(300)))
