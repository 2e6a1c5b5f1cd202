#!/usr/bin/env python3
"""Fuzz the strict HTTP/1.1 parser (hoopwire.http._parse): requests and responses.

    python fuzz/fuzz_http_parser.py -max_total_time=60 [corpus_dir] [libFuzzer args]

The first input byte picks the mode: bit 0 responses (else requests), bit 1 the rest is read as
fragment tokens (each byte below len(FRAGMENTS) stands for a request line, a framing field, a
chunk, a status line, a line end...; other bytes for themselves), else as raw bytes; bits 2-3
how the bytes are cut into feeds. For responses the second byte says which of up to 4 requests
were HEAD (the rest GET).

Properties:
* nothing escapes but the contract's events: tuples (HEAD, head), (BODY, raw bytes, data
  bytes), (END, trailers), (ERROR, status, reason) with a status the contract allows (400, 413,
  414, 431, 501, 505 for requests, 502 for responses); after an ERROR nothing more, `failed`;
* the events, consecutive BODY events joined, are the same for one feed, the input's cut and
  one byte at a time (inputs up to 512 bytes);
* every byte is accounted for: without an ERROR, the heads' head_bytes plus the BODY raws plus
  `pending` are the input; a Content-Length body's data is its raw; a chunked body's data is
  no longer than its raw;
* requests, differential: where hoopwire reads the bytes without an error, h11 reads them too,
  as the same requests (method, target, fields, body, trailers) -- the reference is h11, pure
  Python and so instrumented, which gives the fuzzer coverage to steer by.

test_one_input(data) is importable without atheris.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # harness.py beside us
from harness import atheris, fuzz  # noqa: E402

if __name__ == "__main__" and atheris is not None:
    with atheris.instrument_imports(include=["h11"]):
        import h11  # noqa: F401

import h11  # noqa: E402

from hoopwire.http._parse import (BODY, END, ERROR, HEAD, B_CHUNKED, B_LENGTH,  # noqa: E402
                                  RequestParser, ResponseParser)

REQUEST_STATUSES = {400, 413, 414, 431, 501, 505}

FRAGMENTS = [
    b"GET / HTTP/1.1\r\n", b"POST /a?b=c HTTP/1.1\r\n", b"HEAD / HTTP/1.0\r\n", b"Host: h\r\n",
    b"Content-Length: 5\r\n", b"Content-Length: 0\r\n", b"Transfer-Encoding: chunked\r\n",
    b"Connection: close\r\n", b"Connection: keep-alive\r\n", b"Expect: 100-continue\r\n",
    b"\r\n", b"5\r\nhello\r\n", b"0\r\n\r\n", b"0\r\nX-T: 1\r\n\r\n", b"3;e=\"v\"\r\n",
    b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.0 204 No Content\r\n",
    b"HTTP/1.1 304 Not Modified\r\n", b"hello", b" ", b"\t", b"\r", b"\n", b":", b";", b",",
    b"0x", b"ffffffffffffffff", b"\x00", b"chunked", b"identity", b"\"",
]


def _tokens(raw: bytes) -> bytes:
    return b"".join(FRAGMENTS[b] if b < len(FRAGMENTS) else bytes((b,)) for b in raw)


def _cuts(scheme: int, data: bytes) -> list[bytes]:
    if scheme == 0 or not data:
        return [data]
    if scheme == 1:                 # halves
        return [data[:len(data) // 2], data[len(data) // 2:]]
    if scheme == 2:                 # every 7 bytes, then an empty feed
        return [data[i:i + 7] for i in range(0, len(data), 7)] + [b""]
    k = (data[-1] % len(data)) if data else 0    # scheme 3: a cut the input itself picks
    return [bytearray(data[:k]), memoryview(data[k:])]


def _events(parser_type, methods, pieces):
    p = parser_type()
    for m in methods:
        p.expect(m)
    out = []
    for piece in pieces:
        got = p.feed(piece)
        assert isinstance(got, list), got
        out += got
    out += p.feed_eof()
    joined = []
    for ev in out:
        if ev[0] == BODY and joined and joined[-1][0] == BODY:
            joined[-1] = (BODY, joined[-1][1] + ev[1], joined[-1][2] + ev[2])
        else:
            joined.append(ev)
    return joined, p


def _check_shapes(events, parser, is_response, data):
    statuses = {502} if is_response else REQUEST_STATUSES
    accounted = 0
    head = None
    for i, ev in enumerate(events):
        assert type(ev) is tuple and ev[0] in (HEAD, BODY, END, ERROR), ev
        if ev[0] == HEAD:
            head = ev[1]
            assert head.head_bytes > 0 and head.version in (10, 11)
            accounted += head.head_bytes
        elif ev[0] == BODY:
            assert type(ev[1]) is bytes and type(ev[2]) is bytes and ev[1], ev
            accounted += len(ev[1])
            if head.body == B_LENGTH:
                assert ev[1] == ev[2]
            if head.body == B_CHUNKED:
                assert len(ev[2]) <= len(ev[1])
        elif ev[0] == END:
            assert type(ev[1]) is list
        else:
            assert len(ev) == 3 and ev[1] in statuses and type(ev[2]) is str and ev[2], ev
            assert i == len(events) - 1 and parser.failed
            assert parser.feed(b"GET / HTTP/1.1\r\n") == [] and parser.feed_eof() == []
            return True
    assert not parser.failed
    assert accounted + parser.pending == len(data), (accounted, parser.pending, len(data))
    return False


def fields_of(pairs):
    return tuple((n.lower(), v.strip(b" \t").lower() if n.lower() == b"transfer-encoding"
                  else v.strip(b" \t")) for n, v in pairs)


def upgrades(fields) -> bool:
    return any(n == b"upgrade" or (n == b"connection" and b"upgrade" in
                                   [t.strip().lower() for t in v.split(b",")]) for n, v in fields)


def _mine(events):
    reqs, cur = [], None
    for ev in events:
        if ev[0] == HEAD:
            cur = [ev[1], b""]
        elif ev[0] == BODY:
            cur[1] += ev[2]
        elif ev[0] == END:
            h = cur[0]
            reqs.append((h.method, h.target, fields_of(h.headers), cur[1], fields_of(ev[1])))
            if not h.keep_alive or upgrades(reqs[-1][2]):
                break
    return reqs


def read_h11(data: bytes):
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    conn.receive_data(b"")
    reqs, cur = [], None
    try:
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA or isinstance(ev, h11.ConnectionClosed) or ev is h11.PAUSED:
                return reqs, cur is not None, False
            if isinstance(ev, h11.Request):
                cur = [ev, b""]
            elif isinstance(ev, h11.Data):
                cur[1] += bytes(ev.data)
            elif isinstance(ev, h11.EndOfMessage):
                r = cur[0]
                reqs.append((bytes(r.method), bytes(r.target), fields_of(r.headers.raw_items()),
                             cur[1], fields_of(ev.headers.raw_items())))
                cur = None
                if conn.their_state is not h11.DONE or upgrades(reqs[-1][2]):
                    # h11 closes every HTTP/1.0 connection, even one the client keeps alive
                    return reqs, False, r.http_version == b"1.0"
                conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
                conn.send(h11.EndOfMessage())
                if conn.our_state is not h11.DONE:
                    return reqs, False, False
                conn.start_next_cycle()
    except h11.RemoteProtocolError:
        return reqs, True, False


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, rest = data[0], data[1:]
    is_response = bool(mode & 1)
    methods = ()
    if is_response:
        bits, rest = (rest[0] if rest else 0), rest[1:]
        methods = tuple(b"HEAD" if bits >> i & 1 else b"GET" for i in range(4))
    msg = _tokens(rest) if mode & 2 else bytes(rest)
    parser_type = ResponseParser if is_response else RequestParser

    whole, p = _events(parser_type, methods, [msg])
    failed = _check_shapes(whole, p, is_response, msg)
    cut, p2 = _events(parser_type, methods, _cuts(mode >> 2 & 3, msg))
    assert cut == whole, (cut, whole)
    if len(msg) <= 512:
        one, _ = _events(parser_type, methods, [msg[i:i + 1] for i in range(len(msg))])
        assert one == whole, (one, whole)

    if not is_response and not failed:
        reqs, refused, h10_stop = read_h11(msg)
        mine = _mine(whole)
        if h10_stop:
            mine = mine[:len(reqs)]
        assert not refused, ("h11 refuses what hoopwire reads", msg, mine)
        assert reqs == mine, ("h11 reads otherwise", msg, reqs, mine)


def main():
    fuzz(globals(), test_one_input, sys.argv)


if __name__ == "__main__":
    main()
