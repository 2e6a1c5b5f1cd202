"""The core's frame reader (hoopwire.core._frames.FrameReader), driven in-process by PostgreSQL
messages through a scripted subclass (hoopwire.pg._wire.ScriptedFramer): whatever the points
where the stream is cut -- every byte boundary, one byte at a time, random multi-cuts -- the
protocol is asked the same things (type, size, disposition once per message), judges the same
messages, and the bytes written are the same as when the stream arrives whole. Oversized and
malformed headers raise the framing error at any cut, after the messages before them.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings, strategies as st

from hoopwire.core._frames import FrameError
from hoopwire.pg._wire import ScriptedFramer

FORWARD, INSPECT = 0, 1
ACTIONS = ["forward", "inspect", "drop", "replace", "hold"]
KINDS = "QDZdPBESTC"


def msg(kind: str, body: bytes) -> bytes:
    return kind.encode() + struct.pack("!I", len(body) + 4) + body


def expected(msgs, script):
    """What the reader must report for msgs (a list of (type, body)) under script, by definition."""
    events, judged, out = [], [], b""
    for kind, body in msgs:
        action = script.get(kind, "forward")
        events.append((kind, len(body) + 5, FORWARD if action == "forward" else INSPECT))
        if action != "forward":
            judged.append((kind, body))
        if action == "drop":
            continue
        if action == "replace":
            out += msg("R", b"<" + body + b">")
        else:
            out += msg(kind, body)
    return events, judged, out


def run(stream: bytes, script, cuts, max_size=0x7FFFFFFF):
    """Feed stream cut at `cuts` as a relay would: resume at once whenever the reader holds
    (more than once if the resumed bytes hold again). Returns (events, judged, written)."""
    f = ScriptedFramer(script, max_size)
    out = b""
    points = [0] + sorted(set(c for c in cuts if 0 < c < len(stream))) + [len(stream)]
    for a, b in zip(points, points[1:]):
        out += f.feed_bytes(stream[a:b])
        while f.holding_now:
            out += f.resume_bytes()
    assert f.pending == 0
    return f.events, f.judged, out


scripts = st.dictionaries(st.sampled_from(KINDS), st.sampled_from(ACTIONS))
streams = st.lists(st.tuples(st.sampled_from(KINDS), st.binary(max_size=120)), min_size=1,
                   max_size=12)


def sample_stream():
    msgs = [("Q", b"select 1\0"), ("Z", b"I"), ("D", b"\x00\x01" + b"x" * 40), ("E", b""),
            ("P", b"\0select $1\0\0\0"), ("B", bytes(range(30))), ("S", b""), ("C", b"SELECT 1\0"),
            ("d", b"row\n"), ("T", b"\x00\x00")]
    return msgs, b"".join(msg(k, b) for k, b in msgs)


@pytest.mark.parametrize("script", [
    {},                                                      # all forwarded
    {k: "inspect" for k in KINDS},                           # all judged
    {"Q": "hold", "P": "hold", "D": "replace", "S": "drop", "B": "inspect"},
    {"Z": "hold", "d": "hold", "E": "drop", "T": "replace"},
    {k: "hold" for k in KINDS},
])
def test_every_single_cut_gives_what_the_whole_stream_gives(script):
    msgs, stream = sample_stream()
    want = expected(msgs, script)
    assert run(stream, script, []) == want
    for i in range(1, len(stream)):
        assert run(stream, script, [i]) == want, f"cut at {i}"
    # and every byte on its own
    assert run(stream, script, range(len(stream))) == want


@settings(max_examples=400, deadline=None)
@given(streams, scripts, st.lists(st.integers(min_value=0, max_value=2000), max_size=30))
def test_random_cuts_give_what_the_whole_stream_gives(msgs, script, cuts):
    stream = b"".join(msg(k, b) for k, b in msgs)
    want = expected(msgs, script)
    assert run(stream, script, []) == want
    assert run(stream, script, [c % (len(stream) + 1) for c in cuts]) == want


def bad_tails(max_size):
    """Headers the reader must refuse: a length below 4, above what PostgreSQL produces, and a
    message larger than max_size; each with the code the client hears."""
    yield b"Q" + struct.pack("!I", 3), "08P01"
    yield b"Q" + struct.pack("!I", 0), "08P01"
    yield b"D" + struct.pack("!I", 0xFFFFFFFF), "08P01"
    yield b"D" + struct.pack("!I", 0x7FFFFFFC), "08P01"
    yield b"D" + struct.pack("!I", max_size) + b"x" * 10, "54000"      # whole size max_size + 1


@pytest.mark.parametrize("script", [{}, {k: "inspect" for k in KINDS}, {"Q": "hold", "D": "hold"}])
def test_bad_headers_raise_at_every_cut_after_the_messages_before_them(script):
    msgs, good = sample_stream()
    max_size = 200
    for tail, code in bad_tails(max_size):
        stream = good + tail
        want = expected(msgs, script)
        for i in range(0, len(stream)):
            f = ScriptedFramer(script, max_size)
            out = b""
            with pytest.raises(FrameError) as e:
                for piece in (stream[:i], stream[i:]):
                    out += f.feed_bytes(piece)
                    while f.holding_now:
                        out += f.resume_bytes()
            assert e.value.code == code, (tail, i)
            assert (f.events, f.judged) == want[:2], (tail, i)
            assert want[2].startswith(out), (tail, i)
            # a failed stream is not read any further
            f.feed_bytes(msg("Q", b"select 1\0"))
            assert (f.events, f.judged) == want[:2], (tail, i)
