"""The core's read cursor (ext/hoopwire/core/cursor.pxd) against a plain-Python reference: every
read of every generated field list, over the whole input and over every truncation of it.

The cursor is inline C with no Python face; hoopwire.core._frames.cursor_reads drives it from a
script of reads ('b' u8, 'h' be16, 'i' be32, 's' signed be32, 'w' le16, 't' le24, 'l' le32,
'q' le64, 'n' MySQL length-encoded integer, 'e' length-encoded string, 'z' C string, a digit k:
k bytes) and reports each value and the sticky error flag.
"""

from __future__ import annotations

import struct

from hypothesis import given, settings, strategies as st

from hoopwire.core._frames import cursor_reads

FIXED = {"b": "B", "h": ">H", "i": ">I", "s": ">i", "w": "<H", "l": "<I", "q": "<Q"}


def reference(data: bytes, ops: str):
    """The obvious implementation over a bytes object: what each read returns, and whether the
    cursor has failed by then (once failed, every later read fails and returns 0 / None)."""
    pos, bad, out = 0, False, []

    def take(k):
        nonlocal pos, bad
        if bad or k > len(data) - pos:
            bad = True
            pos = len(data)
            return None
        pos += k
        return data[pos - k:pos]

    def lenenc():
        nonlocal bad, pos
        first = take(1)
        if first is None:
            return 0, False
        b = first[0]
        if b < 0xFB:
            return b, False
        if b == 0xFB:
            return 0, True
        if b == 0xFF:
            bad, pos = True, len(data)
            return 0, False
        raw = take({0xFC: 2, 0xFD: 3, 0xFE: 8}[b])
        return (0 if raw is None else int.from_bytes(raw, "little")), False

    for op in ops:
        if op in FIXED:
            raw = take(struct.calcsize(FIXED[op]))
            val = 0 if raw is None else struct.unpack(FIXED[op], raw)[0]
        elif op == "t":
            raw = take(3)
            val = 0 if raw is None else int.from_bytes(raw, "little")
        elif op == "n":
            v, null = lenenc()
            val = None if null else v
        elif op == "e":
            v, null = lenenc()
            val = None if (null or bad) else take(v)
        elif op == "z":
            end = -1 if bad else data.find(b"\0", pos)
            if end < 0:
                bad, pos, val = True, len(data), None
            else:
                val, pos = data[pos:end], end + 1
        else:
            val = take(int(op))
        out.append((val, bad))
    return out, len(data) - pos


def encode(op: str, value) -> bytes:
    """Bytes that `op` reads back as `value` (an int or bytes)."""
    if op in FIXED:
        return struct.pack(FIXED[op], value)
    if op == "t":
        return value.to_bytes(3, "little")
    if op == "n":
        return lenenc(value)
    if op == "e":
        return b"\xfb" if value is None else lenenc(len(value)) + value
    if op == "z":
        return value + b"\0"
    return value


def lenenc(n: int) -> bytes:
    if n < 0xFB:
        return bytes([n])
    if n < 1 << 16:
        return b"\xfc" + n.to_bytes(2, "little")
    if n < 1 << 24:
        return b"\xfd" + n.to_bytes(3, "little")
    return b"\xfe" + n.to_bytes(8, "little")


BOUNDS = {"b": 8, "h": 16, "i": 32, "w": 16, "t": 24, "l": 32, "q": 64}


@st.composite
def fields(draw):
    """A list of (op, value) and the bytes that encode it."""
    ops = draw(st.lists(st.sampled_from("bhiswtlqnezz123"), min_size=1, max_size=8))
    out = []
    for op in ops:
        if op in BOUNDS:
            v = draw(st.integers(0, (1 << BOUNDS[op]) - 1))
        elif op == "s":
            v = draw(st.integers(-(1 << 31), (1 << 31) - 1))
        elif op == "n":
            v = draw(st.sampled_from([0, 1, 0xFA, 0xFB, 0xFFFF, 0x10000, 0xFFFFFF, 0x1000000,
                                      (1 << 64) - 1]) | st.integers(0, (1 << 64) - 1))
        elif op == "e":
            v = draw(st.none() | st.binary(max_size=300))
        elif op == "z":
            v = draw(st.binary(max_size=20).map(lambda b: b.replace(b"\0", b"")))
        else:
            v = draw(st.binary(min_size=int(op), max_size=int(op)))
        out.append((op, v))
    return "".join(op for op, _ in out), b"".join(encode(op, v) for op, v in out), out


def check_every_truncation(ops: str, data: bytes):
    for n in range(len(data) + 1):
        assert cursor_reads(data[:n], ops) == reference(data[:n], ops), (ops, data[:n])


@settings(max_examples=300, deadline=None)
@given(fields())
def test_reads_back_what_was_written_and_fails_cleanly_when_cut(case):
    ops, data, written = case
    got, left = cursor_reads(data, ops)
    assert left == 0
    assert [v for v, _ in got] == [v for _, v in written]
    assert not any(bad for _, bad in got)
    check_every_truncation(ops, data)


@settings(max_examples=300, deadline=None)
@given(st.text("bhiswtlqnez12", min_size=1, max_size=10), st.binary(max_size=40))
def test_any_bytes_read_as_the_reference_reads_them(ops, data):
    check_every_truncation(ops, data)


def test_lenenc_prefixes():
    assert cursor_reads(b"\xfa", "n") == ([(0xFA, False)], 0)
    assert cursor_reads(b"\xfb", "n") == ([(None, False)], 0)                   # NULL
    assert cursor_reads(b"\xfc\x01\x02", "n") == ([(0x0201, False)], 0)
    assert cursor_reads(b"\xfd\x01\x02\x03", "n") == ([(0x030201, False)], 0)
    assert cursor_reads(b"\xfe" + bytes(range(1, 9)), "n") == ([(0x0807060504030201, False)], 0)
    assert cursor_reads(b"\xff\x00\x00", "n") == ([(0, True)], 0)              # ERR marker
    assert cursor_reads(b"\xfb", "e") == ([(None, False)], 0)
    assert cursor_reads(b"\x05abc", "e") == ([(None, True)], 0)                 # overruns
    assert cursor_reads(b"\xfe" + b"\xff" * 8 + b"x", "e") == ([(None, True)], 0)


def test_sticky_failure_and_c_strings():
    # a failed read empties the cursor: what follows cannot be read as data
    assert cursor_reads(b"\x00\x01\x02", "ib") == ([(0, True), (0, True)], 0)
    assert cursor_reads(b"name\0sql\0", "zz") == ([(b"name", False), (b"sql", False)], 0)
    assert cursor_reads(b"\0rest", "z") == ([(b"", False)], 4)
    assert cursor_reads(b"no terminator", "zb") == ([(None, True), (0, True)], 0)
    assert cursor_reads(b"\xff\xff\xff\xff", "s") == ([(-1, False)], 0)
