#!/usr/bin/env python3
"""Fuzz hoopwire.pg.messages.read_startup: the first packet a client sends, read before any
authentication -- anyone who can reach the listener controls these bytes.

    python fuzz/fuzz_startup.py -max_total_time=60 [corpus_dir] [libFuzzer args]

The first input byte picks a mode; the rest is the packet:
* even: the bytes as they are (length field included);
* odd:  the bytes are the body; a correct length is put in front (so the fuzzer spends its time
        past the length check), and with bit 1 set a protocol 3.0 code too.
Bits 2-4 of the first byte cut the bytes into that many feed_data() calls before feed_eof().

Properties: only ProtocolError or asyncio.IncompleteReadError escapes (a ProtocolError carries
a five-character SQLSTATE); the read never waits (all bytes and EOF are there); on success
exactly the packet's `length` bytes were consumed, and the result is what the packet says
(a CancelRequest's pid/secret, no params for SSL/GSS requests, for 3.x every name non-empty and
every parameter from the packet).

test_one_input(data) is importable without atheris (tests/test_fuzz_smoke.py uses it).
"""

from __future__ import annotations

import asyncio
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # harness.py beside us
from harness import fuzz, instrumented_import  # noqa: E402

if __name__ == "__main__":
    instrumented_import("hoopwire.pg.messages")

from hoopwire.pg.messages import (CANCEL_REQUEST, GSSENC_REQUEST, PROTOCOL_3_0,  # noqa: E402
                                  SSL_REQUEST, ProtocolError, read_startup)

_LOOP = None


def _loop() -> asyncio.AbstractEventLoop:
    # A StreamReader wants a loop, for the futures it waits on. It never waits here (see
    # _drive), so a private loop, closed at once, serves: none is made current or left open.
    global _LOOP
    if _LOOP is None:
        _LOOP = asyncio.new_event_loop()
        _LOOP.close()
    return _LOOP


def _drive(coro):
    """Run a coroutine that must not wait: every byte and the EOF were fed before it started."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise AssertionError("read_startup waited for more data after EOF")


def packet_of(data: bytes) -> tuple[bytes, int]:
    """(the bytes to feed, how many feed_data calls)."""
    if not data:
        return b"", 1
    mode, rest = data[0], data[1:]
    if mode & 1:
        if mode & 2:
            rest = struct.pack("!I", PROTOCOL_3_0) + rest
        rest = struct.pack("!I", len(rest) + 4) + rest
    return rest, 1 + ((mode >> 2) & 7)


def test_one_input(data: bytes) -> None:
    packet, nfeeds = packet_of(data)
    reader = asyncio.StreamReader(loop=_loop())
    step = max(1, -(-len(packet) // nfeeds))
    for i in range(0, len(packet), step):
        reader.feed_data(packet[i:i + step])
    reader.feed_eof()
    try:
        s = _drive(read_startup(reader))
    except ProtocolError as e:
        assert isinstance(e.code, str) and len(e.code) == 5, e.code
        return
    except asyncio.IncompleteReadError:
        return
    # what it read is exactly the packet it reported
    (length,) = struct.unpack("!I", packet[:4])
    assert 8 <= length <= 10000, length
    rest = _drive(reader.read())
    assert rest == packet[length:], "read_startup consumed more or less than the packet"
    (code,) = struct.unpack("!I", packet[4:8])
    assert s.code == code
    if code == CANCEL_REQUEST:
        assert length == 16
        assert (s.cancel_pid, s.cancel_secret) == struct.unpack("!II", packet[8:16])
    elif code in (SSL_REQUEST, GSSENC_REQUEST):
        assert length == 8 and not s.params
    else:
        assert code >> 16 == 3 and s.minor == code & 0xFFFF
        body = packet[8:length]
        assert body.endswith(b"\0")
        for k, v in s.params.items():
            assert isinstance(k, str) and isinstance(v, str) and k
            assert not k.startswith("_pq_.")
            assert k.encode() + b"\0" in body and v.encode() + b"\0" in body
        for k in s.unrecognised:
            assert k.startswith("_pq_.") and k.encode() + b"\0" in body



if __name__ == "__main__":
    fuzz(globals(), test_one_input, sys.argv)
