#!/usr/bin/env python3
"""Fuzz the MySQL packet framer and row walks (hoopwire.mysql._wire) against the pure-Python
reference codecs (hoopwire.mysql.packets).

    python fuzz/fuzz_mysql_packets.py -max_total_time=60 [corpus_dir] [libFuzzer args]

The first input byte picks the target:

* framing (even): the rest builds a packet stream (well-framed packets with any sequence ids,
  now and then a length straight from the input or a body cut short), a packet size limit and
  the points where the stream is cut into reads. MysqlFramer (every packet handed out) and
  MysqlFramer(inspect_all=False) (the relay's forward path) are fed the same reads.
  Properties: a FrameError escapes exactly when the reference meets a packet over the limit,
  with code 1153; the packets handed out equal the reference's (packets.read_payloads) up to
  there; without an error the forwarded bytes are the input, and `pending` is 0 exactly when
  the stream ends at a packet boundary.
* rows (odd): column types and a payload (built by the reference from the input's values and
  then, now and then, cut or padded; or raw input bytes). The text and binary row walks
  (text_row_spans, binary_row_spans) must read exactly the values packets.parse_text_row /
  parse_binary_row read, and refuse (MaskRowError) exactly what they refuse.

test_one_input(data) is importable without atheris.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # harness.py beside us
from harness import atheris, fuzz, instrumented_import  # noqa: E402

if __name__ == "__main__":
    instrumented_import("hoopwire.mysql.packets")

from hoopwire._mask import MaskRowError  # noqa: E402
from hoopwire.core._frames import FrameError  # noqa: E402
from hoopwire.mysql import packets as ref  # noqa: E402
from hoopwire.mysql._wire import MysqlFramer, binary_row_spans, text_row_spans  # noqa: E402

MAX = 0xFFFFFF
TYPES = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 245, 246, 247, 248, 249,
         250, 251, 252, 253, 254, 255)


class _Provider:
    """FuzzedDataProvider's methods this harness uses, when atheris is missing."""

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
    return atheris.FuzzedDataProvider(data) if atheris is not None else _Provider(data)


# -- framing ---------------------------------------------------------------------------------------

def reference_framing(stream: bytes, max_size: int):
    """(packets [(seq, payload)] before any error, error code or None, bytes of a header
    cut short at the end (held back by the framer until it is whole), or -1 when the stream
    ends inside a body)."""
    out, pos, n = [], 0, len(stream)
    while n - pos >= 4:
        length = int.from_bytes(stream[pos:pos + 3], "little")
        if length + 4 > max_size:
            return out, 1153, -1
        if n - pos - 4 < length:
            return out, None, -1
        if length == MAX:           # (the fuzzer's streams never hold a 16 MB run)
            return out, None, -1
        out.append((stream[pos + 3], stream[pos + 4:pos + 4 + length]))
        pos += 4 + length
    if pos == n:
        whole, rest = ref.read_payloads(stream)
        assert rest == b"" and whole == out, "reference codecs disagree"
    return out, None, n - pos


def _stream(fdp) -> bytes:
    out = []
    while fdp.remaining_bytes() > 0 and len(out) < 48:
        seq = fdp.ConsumeIntInRange(0, 255)
        how = fdp.ConsumeIntInRange(0, 15)
        if how == 0:
            claimed = int.from_bytes(fdp.ConsumeBytes(3).ljust(3, b"\0"), "little")
            if claimed == MAX:
                claimed -= 1
            body = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40))
        elif how == 1:
            body = bytes([seq]) * fdp.ConsumeIntInRange(0, 70000)
            claimed = len(body)
        else:
            claimed = fdp.ConsumeIntInRange(0, 300)
            body = fdp.ConsumeBytes(claimed)
        out.append(claimed.to_bytes(3, "little") + bytes((seq,)) + body)
    return b"".join(out)


def check_framing(fdp) -> None:
    max_size = (fdp.ConsumeIntInRange(4, 400) if fdp.ConsumeBool() else MAX + 4)
    ncuts = fdp.ConsumeIntInRange(0, 12)
    cuts = [fdp.ConsumeIntInRange(1, 80000) for _ in range(ncuts)]
    stream = _stream(fdp)
    want, err, tail = reference_framing(stream, max_size)
    boundary = tail == 0
    points = [0] + sorted(set(c for c in cuts if 0 < c < len(stream))) + [len(stream)]
    inspect = MysqlFramer(max_size=max_size)
    forward = MysqlFramer(max_size=max_size, inspect_all=False)
    got, written, raised = [], b"", []
    for f in (inspect, forward):
        try:
            for a, b in zip(points, points[1:]):
                if f is inspect:
                    got += [(s, p) for s, p, _ in f.feed_packets(stream[a:b])]
                else:
                    written += f.feed_forward(stream[a:b])
        except FrameError as e:
            raised.append(e.code)
    if err is not None:
        assert raised == [err, err], (raised, err)
        # (the read that raised hands out nothing: what came before is a prefix)
        assert got == want[:len(got)], "packets before the error"
        return
    assert raised == [], raised
    assert got == want, "inspected packets differ from the reference"
    assert written == stream[:len(stream) - max(tail, 0)], "forwarded bytes differ from the input"
    assert (inspect.pending == 0) == boundary and (forward.pending == 0) == boundary


# -- rows ------------------------------------------------------------------------------------------

def _values(got_spans, payload):
    return [None if ln < 0 else payload[off:off + ln] for off, ln in got_spans]


def check_rows(fdp) -> None:
    binary = fdp.ConsumeBool()
    ncols = fdp.ConsumeIntInRange(1, 16)
    types = [TYPES[fdp.ConsumeIntInRange(0, len(TYPES) - 1)] for _ in range(ncols)]
    how = fdp.ConsumeIntInRange(0, 3)
    if how == 0:
        payload = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 400))
    else:
        vals = []
        for t in types:
            if fdp.ConsumeIntInRange(0, 4) == 0:
                vals.append(None)
            elif binary and t in ref._FIXED:                      # noqa: SLF001
                vals.append(fdp.ConsumeBytes(ref._FIXED[t]).ljust(ref._FIXED[t], b"\0"))  # noqa: SLF001
            elif binary and t in ref._TEMPORAL:                   # noqa: SLF001
                k = (0, 4, 7, 8, 11, 12)[fdp.ConsumeIntInRange(0, 5)]
                vals.append(fdp.ConsumeBytes(k).ljust(k, b"\0"))
            else:
                vals.append(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 300)))
        try:
            payload = ref.binary_row(vals, types) if binary else ref.text_row(vals)
        except ValueError:
            return
        if how == 2:
            payload = payload[:fdp.ConsumeIntInRange(0, len(payload))]
        elif how == 3:
            payload += fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 3))
    try:
        want = (ref.parse_binary_row(payload, types) if binary
                else ref.parse_text_row(payload, ncols))
    except (ref.PacketError, IndexError, ValueError):
        want = None
    try:
        got = _values(binary_row_spans(bytes(types), payload) if binary
                      else text_row_spans(payload, ncols), payload)
    except MaskRowError:
        got = None
    assert got == want, (binary, types, payload, got, want)


def test_one_input(data: bytes) -> None:
    fdp = _provider(data)
    if fdp.ConsumeIntInRange(0, 1) == 0:
        check_framing(fdp)
    else:
        check_rows(fdp)


if __name__ == "__main__":
    fuzz(globals(), test_one_input, sys.argv)
