"""The strict HTTP/1.1 parser (hoopwire.http._parse, issue 21), in-process.

Every message is also fed byte by byte and cut at every pair of split points: the events, once
consecutive BODY events are joined, must equal those of a single feed. Each strictness rule of
the contract has a case here, with the status it must produce.
"""

from __future__ import annotations

import pytest

from hoopwire.http._parse import (B_CHUNKED, B_CLOSE, B_LENGTH, B_NONE, BODY, END, ERROR, HEAD,
                                  RequestParser, ResponseParser)


# -- helpers -------------------------------------------------------------------------------------

def joined(events):
    """Events with consecutive BODY events joined (how many BODY events a body comes in depends
    on how the bytes arrived; their concatenation does not)."""
    out = []
    for ev in events:
        assert isinstance(ev, tuple)
        if ev[0] == BODY:
            assert type(ev[1]) is bytes and type(ev[2]) is bytes and ev[1]
            if out and out[-1][0] == BODY:
                out[-1] = (BODY, out[-1][1] + ev[1], out[-1][2] + ev[2])
                continue
        out.append(ev)
    return out


def run(parser, pieces, methods=(), eof=False):
    for m in methods:
        parser.expect(m)
    events = []
    for piece in pieces:
        events += parser.feed(piece)
    if eof:
        events += parser.feed_eof()
    return joined(events)


def req(data, eof=False, **limits):
    return run(RequestParser(**limits), [data], eof=eof)


def resp(data, methods=(b"GET",), eof=False):
    return run(ResponseParser(), [data], methods, eof)


def splits(data):
    """The ways of cutting data in pieces the split tests use: byte by byte, and every pair of
    cut points (three pieces, empty ones included)."""
    yield [data[i:i + 1] for i in range(len(data))]
    for i in range(len(data) + 1):
        for j in range(i, len(data) + 1):
            yield [data[:i], data[i:j], data[j:]]


def assert_split_stable(make, data, methods=(), eof=False):
    whole = run(make(), [data], methods, eof)
    for pieces in splits(data):
        got = run(make(), pieces, methods, eof)
        assert got == whole, (pieces, got, whole)
    return whole


def error_of(events):
    assert events and events[-1][0] == ERROR, events
    return events[-1][1]


# -- requests: framing ---------------------------------------------------------------------------

GET = b"GET /v1/users?limit=10 HTTP/1.1\r\nHost: api.example\r\nUser-Agent: t\r\n\r\n"
POST_CL = (b"POST /v1/users HTTP/1.1\r\nHost: api.example\r\nContent-Type: application/json\r\n"
           b"Content-Length: 13\r\n\r\n{\"name\":\"al\"}")
POST_CHUNKED = (b"POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n7;ext=1;q=\"a b\"\r\n, world\r\n0\r\nX-Sum: abc\r\nX-N:  2 \r\n\r\n")


def test_get_without_body():
    ev = req(GET)
    assert [e[0] for e in ev] == [HEAD, END]
    h = ev[0][1]
    assert (h.method, h.target, h.version) == (b"GET", b"/v1/users?limit=10", 11)
    assert h.headers == [(b"Host", b"api.example"), (b"User-Agent", b"t")]
    assert (h.body, h.content_length, h.keep_alive) == (B_NONE, -1, True)
    assert h.head_bytes == len(GET)
    assert h.get(b"host") == b"api.example" and h.get(b"x-none") is None
    assert h.get_all(b"user-agent") == [b"t"]
    assert ev[1] == (END, [])


def test_content_length_body_is_raw_and_data():
    ev = req(POST_CL)
    h = ev[0][1]
    assert (h.body, h.content_length) == (B_LENGTH, 13)
    assert ev[1] == (BODY, b'{"name":"al"}', b'{"name":"al"}')
    assert ev[2] == (END, [])


def test_body_bytes_are_not_copied_when_a_feed_is_all_body():
    p = RequestParser()
    p.feed(POST_CL[:-13])
    body = b'{"name":"al"}'
    ev = p.feed(body)
    assert ev[0][1] is body and ev[0][2] is body


def test_chunked_body_raw_has_the_framing_and_data_the_payload():
    ev = req(POST_CHUNKED)
    h = ev[0][1]
    assert (h.body, h.content_length) == (B_CHUNKED, -1)
    head_len = POST_CHUNKED.index(b"\r\n\r\n") + 4
    assert ev[1] == (BODY, POST_CHUNKED[head_len:], b"hello, world")
    assert ev[2] == (END, [(b"X-Sum", b"abc"), (b"X-N", b"2")])


def test_content_length_zero_and_get_with_a_framed_body():
    ev = req(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
    assert [e[0] for e in ev] == [HEAD, END] and ev[0][1].body == B_LENGTH
    ev = req(b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi")
    assert ev[1] == (BODY, b"hi", b"hi")


@pytest.mark.parametrize("data", [GET, POST_CL, POST_CHUNKED,
                                  GET + POST_CHUNKED + POST_CL + GET],
                         ids=["get", "cl", "chunked", "pipelined"])
def test_request_events_equal_at_every_split(data):
    assert_split_stable(RequestParser, data)


def test_pipelined_requests_in_one_feed():
    ev = req(GET + POST_CL + POST_CHUNKED + GET)
    assert [e[0] for e in ev] == [HEAD, END, HEAD, BODY, END, HEAD, BODY, END, HEAD, END]
    assert [e[1].target for e in ev if e[0] == HEAD] == [b"/v1/users?limit=10", b"/v1/users",
                                                          b"/up", b"/v1/users?limit=10"]


def test_input_types_bytes_bytearray_memoryview():
    want = req(POST_CHUNKED)
    assert run(RequestParser(), [bytearray(POST_CHUNKED)]) == want
    assert run(RequestParser(), [memoryview(POST_CHUNKED)]) == want
    assert run(RequestParser(), [memoryview(POST_CHUNKED)[i:i + 1]
                                 for i in range(len(POST_CHUNKED))]) == want


def test_pending_counts_an_incomplete_line():
    p = RequestParser()
    assert p.feed(b"GET / HT") == [] and p.pending == 8
    p.feed(b"TP/1.1\r\nHost: x\r\n")
    assert p.pending == 0
    p.feed(b"\r\nPOST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab")
    assert p.pending == 0                 # body bytes are handed out, never kept


def test_empty_lines_before_a_request_are_refused():
    # RFC 9112 §2.2 allows skipping them; h11 refuses them, and the strict reading wins
    assert error_of(req(b"\r\n" + GET)) == 400
    assert [e[0] for e in req(POST_CL + b"\r\n" + GET)] == [HEAD, BODY, END, ERROR]


# -- requests: connection semantics --------------------------------------------------------------

@pytest.mark.parametrize("version,conn,keep", [
    (b"1.1", None, True), (b"1.1", b"close", False), (b"1.1", b"Keep-Alive", True),
    (b"1.0", None, False), (b"1.0", b"keep-alive", True), (b"1.0", b"keep-alive, close", False),
    (b"1.1", b"foo, CLOSE", False)])
def test_keep_alive_rules(version, conn, keep):
    head = b"GET / HTTP/" + version + b"\r\nHost: h\r\n"
    if conn:
        head += b"Connection: " + conn + b"\r\n"
    h = req(head + b"\r\n")[0][1]
    assert h.keep_alive is keep
    if conn:
        assert h.connection_tokens == frozenset(t.strip().lower() for t in conn.split(b","))


def test_http10_without_host_is_accepted():
    h = req(b"GET / HTTP/1.0\r\n\r\n")[0][1]
    assert h.version == 10 and not h.keep_alive


def test_expect_100_continue_flag():
    h = req(b"PUT /f HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n")[0][1]
    assert h.expect_continue
    assert not req(b"PUT /f HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")[0][1].expect_continue
    # HTTP/1.0 clients never wait for 100 (RFC 9110 §10.1.1)
    assert not req(b"PUT /f HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n"
                   )[0][1].expect_continue


def test_expect_continue_head_comes_before_the_body():
    p = RequestParser()
    ev = p.feed(b"PUT /f HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
    assert [e[0] for e in ev] == [HEAD] and ev[0][1].expect_continue
    assert p.feed(b"abc") == [(BODY, b"abc", b"abc"), (END, [])]


def test_upgrade_flag():
    assert req(b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
               )[0][1].upgrade
    assert req(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\n\r\n")[0][1].upgrade
    assert not req(GET)[0][1].upgrade


def test_tab_ows_is_stripped_on_other_fields_and_extension_methods_pass():
    h = req(b"M-SEARCH * HTTP/1.1\r\nHost: h\r\nX-A:\tv\t\r\n\r\n")
    assert h[0][0] == ERROR                  # "*" is for OPTIONS only
    h = req(b"PROPFIND /d HTTP/1.1\r\nHost: h\r\nX-A:\tv\t\r\n\r\n")[0][1]
    assert h.method == b"PROPFIND" and h.headers[1] == (b"X-A", b"v")


def test_absolute_form_with_matching_host():
    h = req(b"GET http://api.example/x?y HTTP/1.1\r\nHost: api.example\r\n\r\n")[0][1]
    assert h.target == b"http://api.example/x?y"
    h = req(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n")[0][1]
    assert h.target == b"*"


# -- requests: strictness (every rule of the contract) ------------------------------------------

H = b"Host: h\r\n"
BAD_REQUESTS = [
    # framing ambiguity
    ("cl-and-te", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    ("te-and-cl", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", 400),
    ("dup-cl-equal", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", 400),
    ("dup-cl-differ", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
    ("cl-list", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\n", 400),
    ("cl-plus", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\n", 400),
    ("cl-minus", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", 400),
    ("cl-hex", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x5\r\n\r\n", 400),
    ("cl-inner-space", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1 0\r\n\r\n", 400),
    ("cl-empty", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: \r\n\r\n", 400),
    ("cl-over-2^53", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 9007199254740993\r\n\r\n", 400),
    ("cl-huge", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
    ("te-xchunked", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n", 501),
    ("te-gzip-chunked", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
    ("te-chunked-identity", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n", 501),
    ("te-chunked-twice", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400),
    ("te-dup-headers", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    ("te-empty-element", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: ,chunked\r\n\r\n", 400),
    ("te-param", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked;q=1\r\n\r\n", 400),
    ("te-on-http10", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    # chunk framing
    ("chunk-not-hex", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    ("chunk-0x", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-leading-space", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n 5\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-trailing-space", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-17-hex", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n00000000000000005\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-ext-junk", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-ext-bad-value", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;a=\"x\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-ext-ctl", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\x01\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-no-crlf-after-data", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloX\r\n0\r\n\r\n", 400),
    ("chunk-data-then-two-junk-bytes", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXY0\r\n\r\n", 400),
    ("chunk-lf-only-after-data", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n", 400),
    ("chunk-size-bare-lf", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", 400),
    ("chunk-size-bare-cr", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\rX\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-ext-bws-before-semicolon", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5 ;a=b\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-ext-bws-around-equals", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;a =b\r\nhello\r\n0\r\n\r\n", 400),
    ("te-trailing-tab", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\t\r\n\r\n", 400),
    ("cl-leading-tab", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length:\t0\r\n\r\n", 400),
    ("trailer-content-length", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nContent-Length: 5\r\n\r\n", 400),
    ("trailer-authorization", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nAuthorization: Bearer x\r\n\r\n", 400),
    ("trailer-obs-fold", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: a\r\n b\r\n\r\n", 400),
    # line ends
    ("bare-lf-request-line", b"GET / HTTP/1.1\nHost: h\r\n\r\n", 400),
    ("bare-lf-header", b"GET / HTTP/1.1\r\nHost: h\n\r\n", 400),
    ("bare-lf-end", b"GET / HTTP/1.1\r\nHost: h\r\n\n", 400),
    ("bare-cr-header", b"GET / HTTP/1.1\r\nHost: h\rX: y\r\n\r\n", 400),
    ("bare-cr-request-line", b"GET /\r HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("lf-only-everywhere", b"GET / HTTP/1.1\nHost: h\n\n", 400),
    # field lines
    ("obs-fold", b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n  b\r\n\r\n", 400),
    ("obs-fold-tab", b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n\tb\r\n\r\n", 400),
    ("first-line-folded", b"GET / HTTP/1.1\r\n Host: h\r\n\r\n", 400),
    ("space-before-colon", b"GET / HTTP/1.1\r\nHost : h\r\n\r\n", 400),
    ("tab-before-colon", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding\t: chunked\r\n\r\n", 400),
    ("empty-name", b"GET / HTTP/1.1\r\nHost: h\r\n: x\r\n\r\n", 400),
    ("non-token-name", b"GET / HTTP/1.1\r\nHost: h\r\nX(y): z\r\n\r\n", 400),
    ("no-colon", b"GET / HTTP/1.1\r\nHost: h\r\ngarbage\r\n\r\n", 400),
    ("nul-in-value", b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n", 400),
    ("vt-in-value", b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x0bb\r\n\r\n", 400),
    ("del-in-value", b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x7fb\r\n\r\n", 400),
    ("nul-in-name", b"GET / HTTP/1.1\r\nHost: h\r\nX\x00: b\r\n\r\n", 400),
    # request line
    ("http09", b"GET /\r\n\r\n", 400),
    ("two-spaces", b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("trailing-space", b"GET / HTTP/1.1 \r\nHost: h\r\n\r\n", 400),
    ("tab-separator", b"GET\t/ HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("lower-http", b"GET / http/1.1\r\nHost: h\r\n\r\n", 400),
    ("version-junk", b"GET / HTTP/1.1x\r\nHost: h\r\n\r\n", 400),
    ("method-not-token", b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("target-nul", b"GET /a\x00b HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("target-non-ascii", b"GET /\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("target-fragment", b"GET /a#b HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("target-backslash", b"GET /a\\b HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("target-bad-pct", b"GET /a%zz HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("target-relative", b"GET a/b HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("target-ftp", b"GET ftp://h/x HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("target-userinfo", b"GET http://u@h/x HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("asterisk-on-get", b"GET * HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("absolute-host-mismatch", b"GET http://evil/x HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    ("http2-version", b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505),
    ("http12-version", b"GET / HTTP/1.2\r\nHost: h\r\n\r\n", 505),
    ("http09-version", b"GET / HTTP/0.9\r\nHost: h\r\n\r\n", 505),
    ("connect", b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n", 501),
    ("lower-case-method", b"delete /x HTTP/1.1\r\nHost: h\r\n\r\n", 501),
    ("empty-line-first", b"\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    # Host
    ("no-host", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("two-hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("two-hosts-equal", b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", 400),
    ("host-with-slash", b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
    ("host-with-at", b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", 400),
    # Connection
    ("connection-junk", b"GET / HTTP/1.1\r\nHost: h\r\nConnection: a b\r\n\r\n", 400),
    # pipelined garbage after a good request
    ("pipelined-garbage", b"GET / HTTP/1.1\r\nHost: h\r\n\r\nGARBAGE\r\n\r\n", 400),
]


@pytest.mark.parametrize("name,data,status", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_refused_requests(name, data, status):
    ev = assert_split_stable(RequestParser, data)
    assert error_of(ev) == status
    assert isinstance(ev[-1][2], str) and ev[-1][2]
    assert [e for e in ev if e[0] == ERROR] == [ev[-1]]


def test_error_is_terminal():
    p = RequestParser()
    ev = p.feed(b"GET / HTTP/1.1\r\nHost : h\r\n\r\n")
    assert ev[-1][:2] == (ERROR, 400) and p.failed
    assert p.feed(GET) == [] and p.feed_eof() == [] and p.failed


def test_pipelined_garbage_keeps_the_first_request():
    ev = req(b"GET / HTTP/1.1\r\nHost: h\r\n\r\nGARBAGE\r\n\r\n")
    assert [e[0] for e in ev] == [HEAD, END, ERROR]


# -- requests: limits ----------------------------------------------------------------------------

def test_request_line_limit_414():
    line = b"GET /" + b"a" * 95 + b" HTTP/1.1"          # 109 bytes
    assert req(line + b"\r\nHost: h\r\n\r\n", max_line=109)[0][0] == HEAD
    assert error_of(req(line + b"\r\nHost: h\r\n\r\n", max_line=108)) == 414
    # refused before the line ends: a client cannot hold an unbounded line open
    assert error_of(req(b"GET /" + b"a" * 200, max_line=100)) == 414
    assert_split_stable(lambda: RequestParser(max_line=30), line + b"\r\nHost: h\r\n\r\n")


def test_header_bytes_limit_431():
    data = b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"v" * 50 + b"\r\n\r\n"
    assert req(data, max_header_bytes=len(data))[0][0] == HEAD
    assert error_of(req(data, max_header_bytes=len(data) - 2)) == 431
    assert error_of(req(b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"v" * 500,
                        max_header_bytes=100)) == 431
    for limit in (10, 20, 40, len(data) - 3, len(data) - 1):
        assert_split_stable(lambda: RequestParser(max_line=20, max_header_bytes=limit), data)


def test_the_limit_reached_first_wins_at_every_split():
    # a head limit below the line limit: the head limit is passed first, byte by byte or not
    data = b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: h\r\n\r\n"
    ev = assert_split_stable(lambda: RequestParser(max_line=100, max_header_bytes=50), data)
    assert error_of(ev) == 431
    ev = assert_split_stable(lambda: RequestParser(max_line=50, max_header_bytes=100), data)
    assert error_of(ev) == 414


def test_header_count_limit_431():
    fields = b"".join(b"X-%d: v\r\n" % i for i in range(9))
    data = b"GET / HTTP/1.1\r\nHost: h\r\n" + fields + b"\r\n"
    assert req(data, max_headers=10)[0][0] == HEAD
    assert error_of(req(data, max_headers=9)) == 431


def test_trailer_limits():
    data = (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"
            + b"".join(b"T%d: v\r\n" % i for i in range(5)) + b"\r\n")
    assert req(data, max_headers=5)[-1][0] == END
    assert error_of(req(data, max_headers=4)) == 431


def test_chunk_size_line_limit():
    data = (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;" + b"e" * 300
            + b"\r\nhello\r\n0\r\n\r\n")
    assert error_of(req(data, max_line=100)) == 400
    assert req(data, max_line=400)[-1][0] == END


def test_feed_eof():
    p = RequestParser()
    p.feed(GET)
    assert p.feed_eof() == []
    p = RequestParser()
    p.feed(b"GET / HTTP/1.1\r\nHo")
    assert error_of(p.feed_eof()) == 400
    p = RequestParser()
    p.feed(POST_CL[:-1])
    assert error_of(p.feed_eof()) == 400


# -- responses -----------------------------------------------------------------------------------

R_CL = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
R_CHUNKED = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\n")
R_CLOSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nstream until close"
R_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
R_103 = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"


def test_response_content_length():
    ev = resp(R_CL)
    h = ev[0][1]
    assert (h.status, h.reason, h.version, h.body, h.content_length) == (200, b"OK", 11, B_LENGTH, 2)
    assert ev[1:] == [(BODY, b"{}", b"{}"), (END, [])]


def test_response_chunked_with_trailers():
    ev = resp(R_CHUNKED)
    assert ev[0][1].body == B_CHUNKED
    assert ev[1] == (BODY, R_CHUNKED[R_CHUNKED.index(b"\r\n\r\n") + 4:], b"abc0123456789abcdef")
    assert ev[2] == (END, [(b"X-T", b"1")])


def test_response_close_delimited():
    ev = resp(R_CLOSE, eof=True)
    h = ev[0][1]
    assert h.body == B_CLOSE and not h.keep_alive
    assert ev[1:] == [(BODY, b"stream until close", b"stream until close"), (END, [])]


def test_response_head_204_304_have_no_body():
    ev = resp(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n" + R_CL, methods=(b"HEAD", b"GET"))
    assert [e[0] for e in ev] == [HEAD, END, HEAD, BODY, END]
    assert ev[0][1].body == B_NONE and ev[0][1].content_length == -1
    for status in (b"204 No Content", b"304 Not Modified"):
        ev = resp(b"HTTP/1.1 " + status + b"\r\nContent-Length: 10\r\n\r\n" + R_CL,
                  methods=(b"GET", b"GET"))
        assert [e[0] for e in ev] == [HEAD, END, HEAD, BODY, END]


def test_interim_responses_then_the_final_one():
    ev = resp(R_100 + R_103 + R_CL)
    assert [e[0] for e in ev] == [HEAD, END, HEAD, END, HEAD, BODY, END]
    assert [e[1].status for e in ev if e[0] == HEAD] == [100, 103, 200]
    assert ev[2][1].get(b"link") == b"</a.css>; rel=preload"


def test_pipelined_responses_follow_expect_order():
    ev = resp(R_CL + R_CHUNKED + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
              methods=(b"GET", b"POST", b"HEAD"))
    assert [e[0] for e in ev] == [HEAD, BODY, END, HEAD, BODY, END, HEAD, END]


@pytest.mark.parametrize("data,methods,eof", [
    (R_CL, (b"GET",), False), (R_CHUNKED, (b"GET",), False), (R_CLOSE, (b"GET",), True),
    (R_100 + R_103 + R_CL + R_CHUNKED, (b"GET", b"GET"), False),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n" + R_CL, (b"HEAD", b"GET"), False)],
    ids=["cl", "chunked", "close", "interim+pipelined", "head"])
def test_response_events_equal_at_every_split(data, methods, eof):
    assert_split_stable(ResponseParser, data, methods, eof)


def test_response_keep_alive():
    assert not resp(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")[0][1].keep_alive
    assert resp(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n")[0][1].keep_alive
    assert not resp(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")[0][1].keep_alive
    assert resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")[0][1].keep_alive


def test_response_status_line_without_reason():
    h = resp(b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n")[0][1]
    assert (h.status, h.reason) == (200, b"")
    h = resp(b"HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n")[0][1]
    assert (h.status, h.reason) == (404, b"")


BAD_RESPONSES = [
    ("cl-and-te", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
    ("dup-cl", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n"),
    ("cl-sign", b"HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\n"),
    ("te-not-final-chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
    ("te-on-10", b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
    ("bare-lf", b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n"),
    ("obs-fold", b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n"),
    ("space-before-colon", b"HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n"),
    ("bad-status", b"HTTP/1.1 2x0 OK\r\n\r\n"),
    ("version-2", b"HTTP/2.0 200 OK\r\n\r\n"),
    ("switching-protocols", b"HTTP/1.1 101 Switching Protocols\r\n\r\n"),
    ("bad-chunk", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n"),
    ("chunk-no-crlf", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n"),
    ("nul-in-value", b"HTTP/1.1 200 OK\r\nX: \x00\r\nContent-Length: 0\r\n\r\n"),
    ("unsolicited", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\n"),
]


@pytest.mark.parametrize("name,data", BAD_RESPONSES, ids=[c[0] for c in BAD_RESPONSES])
def test_refused_responses_are_502(name, data):
    ev = assert_split_stable(ResponseParser, data, (b"GET",))
    assert error_of(ev) == 502


def test_response_without_request_is_502():
    assert error_of(run(ResponseParser(), [b"H"])) == 502


def test_response_feed_eof():
    rp = ResponseParser()
    rp.expect(b"GET")
    rp.feed(R_CL[:-1])
    assert error_of(rp.feed_eof()) == 502
    rp = ResponseParser()
    rp.expect(b"GET")
    rp.feed(R_CL)
    assert rp.feed_eof() == []
    rp = ResponseParser()
    rp.expect(b"GET")
    rp.feed(R_CHUNKED[:-2])
    assert error_of(rp.feed_eof()) == 502


def test_response_limits_are_502():
    rp = ResponseParser(max_line=8192, max_header_bytes=64, max_headers=100)
    rp.expect(b"GET")
    assert error_of(rp.feed(b"HTTP/1.1 200 OK\r\nX: " + b"v" * 100 + b"\r\n\r\n")) == 502
    rp = ResponseParser(max_headers=1)
    rp.expect(b"GET")
    assert error_of(rp.feed(b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\n\r\n")) == 502
