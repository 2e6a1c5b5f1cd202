#!/usr/bin/env python3
"""Fuzz hoopwire.pg.messages.read_startup: the first packet a client sends, read before any
authentication -- anyone who can reach the listener controls these bytes.

    python fuzz/fuzz_startup.py -max_total_time=60 [corpus_dir] [libFuzzer args]

The first input byte picks a mode; the rest makes the packet:
* bit 5 clear, bit 0 clear: the bytes as they are (length field included);
* bit 5 clear, bit 0 set: the bytes are the body; a correct length is put in front (so the
  fuzzer spends its time past the length check), and with bit 1 set a protocol 3.0 code too;
* bit 5 set: the harness *builds* a well-formed packet from the rest (bits 6-7: a 3.x
  StartupMessage (0, 1) whose parameters are the rest split at NUL bytes, made valid UTF-8 and
  non-empty; a CancelRequest (2); an SSLRequest or GSSENCRequest (3)), followed by a few bytes
  of the next packet.
Bits 2-4 of the first byte cut the bytes into that many feed_data() calls before feed_eof().

Properties:
* differential: read_startup agrees with `reference_startup`, a plain walk of the packet as
  PostgreSQL's ProcessStartupPacket reads it -- it raises ProtocolError exactly when the
  reference refuses the packet, with the same SQLSTATE (0A000 for a protocol other than 3.x,
  else 08P01), asyncio.IncompleteReadError exactly when the bytes end first, and otherwise
  returns what the reference reads (code, minor, cancel pid/secret, parameters, `_pq_.`
  options in order); nothing else escapes, and the read never waits (all bytes and EOF are
  there);
* on success exactly the packet's `length` bytes were consumed;
* a packet the harness built MUST be accepted and read back as what was built (a reader that
  refuses everything fails here, and fails the reference check too).

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

STARTUP_MAX = 10000      # PostgreSQL's MAX_STARTUP_PACKET_LENGTH
NEXT_PACKET = b"\x00\x00\x00\x08"   # what follows a built packet: must stay unread

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


# ---------------------------------------------------------------------------------------------
# the reference: what a packet says, read the way the server reads it

def reference_startup(packet: bytes):
    """("incomplete",), ("error", sqlstate), or ("ok", length, fields) where fields is
    (code, minor, cancel pid, cancel secret, params, _pq_ options)."""
    if len(packet) < 4:
        return ("incomplete",)
    length = int.from_bytes(packet[:4], "big")
    if length < 8 or length > STARTUP_MAX:
        return ("error", "08P01")
    if len(packet) < length:
        return ("incomplete",)
    code = int.from_bytes(packet[4:8], "big")
    if code == CANCEL_REQUEST:
        if length != 16:
            return ("error", "08P01")
        pid, secret = int.from_bytes(packet[8:12], "big"), int.from_bytes(packet[12:16], "big")
        return ("ok", length, (code, 0, pid, secret, {}, []))
    if code in (SSL_REQUEST, GSSENC_REQUEST):
        return ("ok", length, (code, 0, 0, 0, {}, [])) if length == 8 else ("error", "08P01")
    if code >> 16 != 3:
        return ("error", "0A000")
    body = packet[8:length]
    params: dict[str, str] = {}
    options: list[str] = []
    pos = 0
    while True:
        # a NUL-terminated name; an empty one ends the list and must be the last byte
        end = body.find(b"\0", pos)
        if end < 0:
            return ("error", "08P01")
        name = body[pos:end]
        pos = end + 1
        if not name:
            break
        end = body.find(b"\0", pos)
        if end < 0:
            return ("error", "08P01")
        value = body[pos:end]
        pos = end + 1
        try:
            k, v = name.decode("utf-8"), value.decode("utf-8")
        except UnicodeDecodeError:
            return ("error", "08P01")
        if k.startswith("_pq_."):
            options.append(k)
        else:
            params[k] = v
    if pos != len(body):
        return ("error", "08P01")
    return ("ok", length, (code, code & 0xFFFF, 0, 0, params, options))


# ---------------------------------------------------------------------------------------------
# input -> packet

def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def build_packet(kind: int, rest: bytes) -> tuple[bytes, tuple]:
    """A well-formed packet of `kind` from the bytes, and the fields it must read back as."""
    if kind == 2:
        pid, secret = struct.unpack("!II", rest[:8].ljust(8, b"\0"))
        return struct.pack("!III", 16, CANCEL_REQUEST, pid) + struct.pack("!I", secret), \
            (CANCEL_REQUEST, 0, pid, secret, {}, [])
    if kind == 3:
        code = GSSENC_REQUEST if rest[:1] and rest[0] & 1 else SSL_REQUEST
        return struct.pack("!II", 8, code), (code, 0, 0, 0, {}, [])
    minor = rest[0] if rest else 0
    items = rest[1:].split(b"\0")
    pairs = []
    size = 8 + 1
    for i in range(0, len(items) - 1, 2):
        k = _text(items[i]) or "p"            # an empty name would end the list
        v = _text(items[i + 1])
        size += len(k.encode()) + len(v.encode()) + 2
        if size > STARTUP_MAX:
            break
        pairs.append((k, v))
    code = (3 << 16) | minor
    body = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in pairs) + b"\0"
    params = {k: v for k, v in pairs if not k.startswith("_pq_.")}
    options = [k for k, _ in pairs if k.startswith("_pq_.")]
    return struct.pack("!II", len(body) + 8, code) + body, (code, minor, 0, 0, params, options)


def packet_of(data: bytes) -> tuple[bytes, int, tuple | None]:
    """(the bytes to feed, how many feed_data calls, the fields of a built packet or None)."""
    if not data:
        return b"", 1, None
    mode, rest = data[0], data[1:]
    feeds = 1 + ((mode >> 2) & 7)
    if mode & 0x20:
        packet, fields = build_packet(mode >> 6, rest)
        return packet + NEXT_PACKET, feeds, fields
    if mode & 1:
        if mode & 2:
            rest = struct.pack("!I", PROTOCOL_3_0) + rest
        rest = struct.pack("!I", len(rest) + 4) + rest
    return rest, feeds, None


def _fields(s) -> tuple:
    return (s.code, s.minor, s.cancel_pid, s.cancel_secret, s.params, s.unrecognised)


def test_one_input(data: bytes) -> None:
    packet, nfeeds, built = packet_of(data)
    ref = reference_startup(packet)
    if built is not None:
        assert ref[0] == "ok" and ref[2] == built, ("the reference misreads a built packet", ref)
    reader = asyncio.StreamReader(loop=_loop())
    step = max(1, -(-len(packet) // nfeeds))
    for i in range(0, len(packet), step):
        reader.feed_data(packet[i:i + step])
    reader.feed_eof()
    try:
        s = _drive(read_startup(reader))
    except ProtocolError as e:
        assert built is None, ("a well-formed packet was refused", str(e))
        assert ref == ("error", e.code), ("refused a packet the reference reads", ref, e.code)
        return
    except asyncio.IncompleteReadError:
        assert built is None, "a well-formed packet was reported cut short"
        assert ref == ("incomplete",), ("reported a packet cut short", ref)
        return
    assert ref[0] == "ok", ("accepted a packet the reference refuses", ref)
    length = ref[1]
    rest = _drive(reader.read())
    assert rest == packet[length:], "read_startup consumed more or less than the packet"
    got = _fields(s)
    assert got == ref[2], ("read differs from the reference", got, ref[2])
    if built is not None:
        assert got == built, ("a built packet did not read back as built", got, built)


if __name__ == "__main__":
    fuzz(globals(), test_one_input, sys.argv)
