#!/usr/bin/env python3
"""Fuzz hoopwire.pg._wire.PgFramer (the Cython PostgreSQL v3 framer) against a plain-Python
reference framing of the same bytes.

    python fuzz/fuzz_pg_framing.py -max_total_time=60 [corpus_dir] [libFuzzer args]

The input is decoded with a FuzzedDataProvider into: a message size limit, whether the stream
is raw bytes or built from well-framed messages, the points where the stream is cut into reads,
the type of each read (bytes / bytearray / memoryview) and when a held message is resumed. The
same reads are fed to four framers:

* PgFramer(inspect_all=True).feed_messages()   -- every message handed to Python
* PgFramer(inspect_all=True).feed_forward()    -- the pieces the inspecting path writes
* PgFramer(inspect_all=False).feed_forward()   -- the relay's forward path
* PgFramer(hold_kind="D")                      -- the first 'D' held, then resume_messages()

Properties: only hoopwire.pg._wire.FrameError escapes, with the code the reference expects
(08P01 bad length, 54000 over the limit), and exactly when the reference finds a bad header;
without an error the forwarded pieces concatenate to the input, the inspected messages equal
the reference's, every header is counted once, and `pending` is 0 exactly at a message
boundary. With an error, what was delivered before it is a prefix of the same.

test_one_input(data) is importable without atheris (tests/test_fuzz_smoke.py uses it).
"""

from __future__ import annotations

import os
import sys
from typing import NamedTuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # harness.py beside us
from harness import atheris, fuzz, instrumented_import  # noqa: E402

if __name__ == "__main__":
    instrumented_import("hoopwire.pg._wire")

from hoopwire.pg._wire import FrameError, PgFramer  # noqa: E402

DEFAULT_MAX = 0x7FFFFFFF
MAX_LENGTH = 0x7FFFFFFB  # largest length field the framer accepts
KINDS = b"QDZdPBESTCHcfXpR"


# ---------------------------------------------------------------------------------------------
# a FuzzedDataProvider when atheris is missing (same method names, simpler byte layout)

class _Provider:
    def __init__(self, data: bytes):
        self._d = data
        self._p = 0

    def remaining_bytes(self) -> int:
        return len(self._d) - self._p

    def ConsumeIntInRange(self, lo: int, hi: int) -> int:
        span = hi - lo
        if span <= 0:
            return lo
        nbytes = (span.bit_length() + 7) // 8
        raw = self._d[self._p:self._p + nbytes]
        self._p += len(raw)
        return lo + int.from_bytes(raw, "little") % (span + 1)

    def ConsumeBool(self) -> bool:
        return bool(self.ConsumeIntInRange(0, 1))

    def ConsumeBytes(self, n: int) -> bytes:
        raw = self._d[self._p:self._p + max(0, n)]
        self._p += len(raw)
        return raw


def _provider(data: bytes):
    if atheris is not None:
        return atheris.FuzzedDataProvider(data)
    return _Provider(data)


# ---------------------------------------------------------------------------------------------
# the reference

class Reference(NamedTuple):
    messages: list          # the whole messages before any error, as [(type, body)]
    error: str | None       # None, or the SQLSTATE of the first bad header
    headers: int            # valid headers seen (one whose body has not all arrived counts)
    end: int                # where the last whole message ends (before any error)
    boundary: bool          # the stream ends exactly at a message boundary
    header_tail: int        # bytes of a header cut short at the end of the stream (0-4)


def reference_framing(stream: bytes, max_size: int = DEFAULT_MAX) -> Reference:
    """Walk the whole stream at once, the obvious way. A bad header is a length below 4 or
    above 0x7ffffffb ("08P01"), or a message larger than max_size ("54000")."""
    messages = []
    pos = 0
    headers = 0
    n = len(stream)
    while n - pos >= 5:
        length = int.from_bytes(stream[pos + 1:pos + 5], "big")
        if length < 4 or length > MAX_LENGTH:
            return Reference(messages, "08P01", headers, pos, False, 0)
        if length + 1 > max_size:
            return Reference(messages, "54000", headers, pos, False, 0)
        headers += 1
        if n - pos < length + 1:
            return Reference(messages, None, headers, pos, False, 0)
        messages.append((chr(stream[pos]), stream[pos + 5:pos + 1 + length]))
        pos += length + 1
    return Reference(messages, None, headers, pos, pos == n, n - pos)


# ---------------------------------------------------------------------------------------------
# decoding the input

def _frame(kind: int, body: bytes, claimed: int | None = None) -> bytes:
    length = len(body) + 4 if claimed is None else claimed
    return bytes([kind]) + length.to_bytes(4, "big") + body


def _build_stream(fdp) -> bytes:
    """Well-framed messages, with now and then a bad length or a body cut short."""
    out = []
    total = 0
    while fdp.remaining_bytes() > 0 and len(out) < 64 and total < 200_000:
        kind = KINDS[fdp.ConsumeIntInRange(0, len(KINDS) - 1)]
        how = fdp.ConsumeIntInRange(0, 15)
        if how == 0:
            # a length field straight from the input: often nonsense
            claimed = int.from_bytes(fdp.ConsumeBytes(4).ljust(4, b"\0"), "big")
            out.append(_frame(kind, fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40)), claimed))
        elif how == 1:
            # a big body (spans many reads)
            size = fdp.ConsumeIntInRange(0, 70000)
            out.append(_frame(kind, bytes([kind]) * size))
        else:
            want = fdp.ConsumeIntInRange(0, 300)
            body = fdp.ConsumeBytes(want)
            # body shorter than asked (input ran out): the length still claims `want`
            out.append(_frame(kind, body, want + 4))
        total += len(out[-1])
    return b"".join(out)


def _as_chunk(piece: bytes, how: int):
    if how == 1:
        return bytearray(piece)
    if how == 2:
        return memoryview(piece)
    return piece


class _Run:
    """One framer fed the reads; records what it delivered and its error, if any."""

    def __init__(self, framer: PgFramer):
        self.f = framer
        self.pieces: list[bytes] = []
        self.messages: list[tuple[str, bytes]] = []
        self.error: FrameError | None = None

    def step(self, fn, *args) -> None:
        if self.error is not None:
            return
        try:
            fn(*args)
        except FrameError as e:
            self.error = e

    def forward(self, chunk) -> None:
        self.pieces.extend(bytes(p) for p in self.f.feed_forward(chunk))

    def inspect(self, chunk) -> None:
        self.messages.extend(self.f.feed_messages(chunk))

    def resume(self) -> None:
        self.messages.extend(self.f.resume_messages())


def _check(run: _Run, name: str, stream: bytes, ref: Reference, pieces: str | None) -> None:
    """pieces: None (not collected), "all" (a forward path: every byte goes out as it arrives,
    but for a header cut short, kept until it is whole) or "whole" (an inspecting path: bytes
    go out once their message is whole)."""
    if ref.error is None:
        assert run.error is None, (name, "unexpected FrameError", run.error)
    else:
        assert run.error is not None, (name, "a bad header was accepted", ref.error)
        assert run.error.code == ref.error, (name, run.error.code, ref.error)
    if pieces is not None:
        sent = b"".join(run.pieces)
        if run.error is None:
            expect = stream[:len(stream) - ref.header_tail] if pieces == "all" else stream[:ref.end]
            assert sent == expect, (name, "forwarded bytes differ from the input")
        else:
            assert stream.startswith(sent), (name, "forwarded bytes are not a prefix of the input")
    if run.error is None:
        assert run.f.message_count == ref.headers, (name, run.f.message_count, ref.headers)
        assert (run.f.pending == 0) == ref.boundary, (name, run.f.pending, ref.boundary)
    else:
        assert run.f.message_count <= ref.headers, (name, run.f.message_count, ref.headers)


def test_one_input(data: bytes) -> None:
    fdp = _provider(data)
    max_size = DEFAULT_MAX if fdp.ConsumeIntInRange(0, 3) else fdp.ConsumeIntInRange(5, 400)
    structured = fdp.ConsumeBool()
    cuts = [fdp.ConsumeIntInRange(0, 0xFFFF) for _ in range(fdp.ConsumeIntInRange(0, 16))]
    chunk_kinds = fdp.ConsumeIntInRange(0, 0xFF)
    resume_early = fdp.ConsumeBool()
    stream = _build_stream(fdp) if structured else fdp.ConsumeBytes(fdp.remaining_bytes())

    # read boundaries derived from the input; repeated points give empty reads
    points = [0] + sorted(c % (len(stream) + 1) for c in cuts) + [len(stream)]
    reads = [stream[a:b] for a, b in zip(points, points[1:])]

    ref = reference_framing(stream, max_size)
    ref_messages = ref.messages

    whole = _Run(PgFramer(max_size=max_size, inspect_all=True))
    whole_fwd = _Run(PgFramer(max_size=max_size, inspect_all=True))
    forward = _Run(PgFramer(max_size=max_size, inspect_all=False))
    hold = _Run(PgFramer(max_size=max_size, hold_kind="D"))
    resumed = 0
    for i, piece in enumerate(reads):
        how = (chunk_kinds >> (2 * (i % 4))) & 3
        whole.step(whole.inspect, _as_chunk(piece, how))
        whole_fwd.step(whole_fwd.forward, _as_chunk(piece, how))
        forward.step(forward.forward, _as_chunk(piece, how))
        hold.step(hold.inspect, _as_chunk(piece, how))
        if resume_early and hold.error is None and hold.f.holding_now:
            hold.step(hold.resume)
            resumed += 1
    if hold.error is None and hold.f.holding_now:
        hold.step(hold.resume)
        resumed += 1
    assert resumed <= 1, "held more than once"
    if hold.error is None:
        assert not hold.f.holding_now, "still holding after resume"

    _check(whole, "inspect", stream, ref, pieces=None)
    _check(whole_fwd, "inspect-forward", stream, ref, pieces="whole")
    _check(forward, "forward", stream, ref, pieces="all")
    _check(hold, "hold", stream, ref, pieces=None)
    for run, name in ((whole, "inspect"), (hold, "hold")):
        if run.error is None:
            assert run.messages == ref_messages, (name, "messages differ from the reference")
        else:
            assert run.messages == ref_messages[:len(run.messages)], (name, "not a prefix")



if __name__ == "__main__":
    fuzz(globals(), test_one_input, sys.argv)
