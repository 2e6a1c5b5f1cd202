"""The Cython framer (hoopwire.pg._wire) against a plain-Python reference, at any split point."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings, strategies as st

from hoopwire.pg._wire import FrameError, PgFramer


def reference_messages(stream: bytes) -> list[tuple[str, bytes]]:
    """The obvious implementation: walk the whole stream at once."""
    out, pos = [], 0
    while pos < len(stream):
        kind = chr(stream[pos])
        (length,) = struct.unpack("!I", stream[pos + 1:pos + 5])
        out.append((kind, stream[pos + 5:pos + 1 + length]))
        pos += 1 + length
    return out


def msg(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


messages = st.lists(
    st.tuples(st.sampled_from([b"Q", b"D", b"Z", b"d", b"P", b"B", b"E", b"S", b"T", b"C"]),
              st.binary(max_size=300)),
    min_size=1, max_size=30)


@settings(max_examples=300, deadline=None)
@given(messages, st.lists(st.integers(min_value=0, max_value=20000), max_size=40))
def test_split_anywhere_yields_the_same_messages(msgs, cuts):
    stream = b"".join(msg(k, b) for k, b in msgs)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    whole = PgFramer()
    forward = PgFramer(inspect_all=False)
    got, pieces = [], []
    for a, b in zip(points, points[1:]):
        got += whole.feed_messages(stream[a:b])
        pieces += [bytes(p) for p in forward.feed_forward(stream[a:b])]
    assert got == reference_messages(stream)
    # The forward path hands back exactly the bytes it was given, in order.
    assert b"".join(pieces) == stream
    assert forward.message_count == len(msgs)
    assert whole.pending == 0 and forward.pending == 0


def test_one_byte_at_a_time():
    stream = b"".join(msg(k, b) for k, b in [(b"Q", b"select 1\0"), (b"Z", b"I"), (b"D", b"x" * 70000)])
    f = PgFramer()
    got = []
    for i in range(len(stream)):
        got += f.feed_messages(stream[i:i + 1])
    assert got == reference_messages(stream)


def test_unsplit_chunk_is_forwarded_as_the_same_object():
    chunk = msg(b"D", b"abc") * 10
    f = PgFramer(inspect_all=False)
    out = f.feed_forward(chunk)
    assert len(out) == 1 and out[0] is chunk  # no copy on the common path


@pytest.mark.parametrize("bad", [b"Q\x00\x00\x00\x03", b"Q\x00\x00\x00\x00", b"Q\xff\xff\xff\xff"])
def test_invalid_length_is_a_frame_error(bad):
    with pytest.raises(FrameError) as e:
        PgFramer().feed_messages(bad)
    assert e.value.code == "08P01"


def test_oversized_message_is_refused_before_it_is_buffered():
    f = PgFramer(max_size=1024)
    with pytest.raises(FrameError) as e:
        f.feed_messages(b"Q" + struct.pack("!I", 10 * 1024 * 1024))  # only the header arrived
    assert e.value.code == "54000"


def test_a_failed_stream_stays_failed():
    f = PgFramer()
    with pytest.raises(FrameError):
        f.feed_messages(b"Q\x00\x00\x00\x01")
    assert f.feed_messages(msg(b"Z", b"I")) == []


def reference_walk(stream: bytes, max_size: int) -> tuple[list[tuple[str, bytes]], str | None]:
    """Any bytes, the obvious way: (the whole messages before the first bad header, that
    header's SQLSTATE or None). A header is bad when its length is below 4 or above
    0x7ffffffb (08P01), or the message (type byte included) is over max_size (54000); it is
    judged as soon as its five bytes are there, its body need not have arrived."""
    out, pos = [], 0
    while len(stream) - pos >= 5:
        (length,) = struct.unpack("!I", stream[pos + 1:pos + 5])
        if length < 4 or length > 0x7FFFFFFB:
            return out, "08P01"
        if length + 1 > max_size:
            return out, "54000"
        if len(stream) - pos < length + 1:
            break
        out.append((chr(stream[pos]), stream[pos + 5:pos + 1 + length]))
        pos += 1 + length
    return out, None


LIMIT = 1 << 10
# arbitrary bytes, and well-framed messages followed by arbitrary bytes (so that the garbage
# comes after a few good headers, and its length fields are sometimes under the limit)
garbage = st.one_of(
    st.binary(max_size=2000),
    st.tuples(messages, st.binary(max_size=40)).map(
        lambda mt: b"".join(msg(k, b) for k, b in mt[0]) + mt[1]))


@settings(max_examples=300, deadline=None)
@given(garbage, st.integers(min_value=1, max_value=64))
def test_garbage_is_framed_as_the_reference_frames_it(data, step):
    """Whatever the bytes and read sizes: FrameError exactly when the reference finds a bad
    header, with its SQLSTATE; the messages handed out are the reference's (all of them
    without an error, a prefix of them with one)."""
    f = PgFramer(max_size=LIMIT)
    got, code = [], None
    try:
        for i in range(0, len(data), step):
            got += f.feed_messages(data[i:i + step])
    except FrameError as e:
        code = e.code
    want, bad = reference_walk(data, LIMIT)
    assert code == bad
    if bad is None:
        assert got == want
    else:
        assert got == want[:len(got)]


@settings(max_examples=200, deadline=None)
@given(messages, st.lists(st.integers(min_value=0, max_value=20000), max_size=20),
       st.sampled_from(["Q", "D", "Z", "d", "P"]))
def test_hold_and_resume_lose_nothing_and_count_once(msgs, cuts, hold):
    """A message held (e.g. until a catalog lookup or an approval) is judged again on resume;
    everything after it waits and then arrives in order, each header seen once."""
    stream = b"".join(msg(k, b) for k, b in msgs)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    f = PgFramer(hold_kind=hold)
    got = []
    for a, b in zip(points, points[1:]):
        got += f.feed_messages(stream[a:b])
    if f.holding_now:
        got += f.resume_messages()
    assert got == reference_messages(stream)
    assert f.message_count == len(msgs)
