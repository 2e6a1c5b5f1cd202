"""The relay's head rewrites in C (hoopwire.http._relay.Rewriter) against their Python reference
(HttpConf.build_head, HttpConf.response_head, relay._bearer): the same bytes for the same heads,
over hand-picked heads (hop-by-hop fields in any case, Connection tokens, the identity and
credential headers, HTTP/1.0, chunked to HTTP/1.0, close-delimited bodies) and generated ones."""

from __future__ import annotations

import random
import types

import pytest

from hoopwire.config import parse_config
from hoopwire.http import _parse
from hoopwire.http.relay import _bearer, _Req
from hoopwire.http.session import HttpConf

SECRET_ENV = "HOOPWIRE_TEST_REWRITE_SECRET"


def conf(monkeypatch, **http) -> HttpConf:
    monkeypatch.setenv(SECRET_ENV, "s3cret-upstream")
    doc = {"identity": {"api_key": [{"name": "k", "sha256": "0" * 64, "groups": ["g"]}]},
           "connection": [{"name": "api", "protocol": "http", "listen": "127.0.0.1:1",
                           "upstream": "http://up.example:8080/base",
                           "password_env": SECRET_ENV, **http}]}
    return HttpConf(parse_config(doc).connections[0], b"hoopwire:")


def request_head(raw: bytes):
    events = _parse.RequestParser().feed(raw)
    assert events and events[0][0] == _parse.HEAD, events
    return events[0][1]


def accepted(raws, response: bool) -> list[bytes]:
    """The generated heads the parser takes (a bad Connection list is refused before any
    rewrite)."""
    out = []
    for raw in raws:
        p = _parse.ResponseParser() if response else _parse.RequestParser()
        if response:
            p.expect(b"GET")
        if p.feed(raw)[0][0] == _parse.HEAD:
            out.append(raw)
    assert len(out) > len(raws) // 2
    return out


def response_head(raw: bytes, method: bytes = b"GET"):
    p = _parse.ResponseParser()
    p.expect(method)
    events = p.feed(raw)
    assert events and events[0][0] == _parse.HEAD, events
    return events[0][1]


CONFIGS = [
    {},
    {"host_header": "client"},
    {"credential_header": "X-Api-Key", "credential_format": "{secret}"},
    {"identity_header": "Proxy-Authorization"},
]

REQUESTS = [
    b"GET /1k.json HTTP/1.1\r\nHost: gw:8080\r\nAuthorization: Bearer tok\r\n\r\n",
    b"GET / HTTP/1.0\r\nauthorization: bearer tok\r\n\r\n",
    b"POST /v1/x HTTP/1.1\r\nHOST: a\r\nContent-Length: 0\r\nCONNECTION: keep-alive, X-Hop\r\n"
    b"x-hop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nX-Forwarded-For: 10.0.0.9\r\n"
    b"x-request-id: forged\r\nForwarded: for=1.2.3.4\r\nProxy-Authorization: Bearer p\r\n"
    b"Authorization: Bearer t\r\nX-Api-Key: client-key\r\nAccept-Encoding: gzip\r\n"
    b"X-Kept: yes\r\nx-kept: again\r\n\r\n",
    b"PUT /a HTTP/1.1\r\nHost: \r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n"
    b"Expect: 100-continue\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n"
    b"HTTP2-Settings: AAA\r\n\r\n",
    b"GET /x HTTP/1.1\r\nhOST: one\r\nX-Forwarded-Host: evil\r\n"
    b"X-Forwarded-Proto: https\r\nProxy-Connection: keep-alive\r\n\r\n",
]

RESPONSES = [
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: application/json\r\n"
    b"Content-Length: 2\r\nConnection: keep-alive\r\n\r\n",
    b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\nX-Request-Id: up\r\n"
    b"Keep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\n\r\n",
    b"HTTP/1.0 200 \r\nContent-Type: text/plain\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nCONNECTION: close, X-Up-Hop\r\nx-up-hop: 1\r\n"
    b"UPGRADE: foo\r\nProxy-Connection: x\r\n\r\n",
    b"HTTP/1.1 599 Odd\r\ntransfer-encoding: chunked\r\nTrailer: X-T\r\n\r\n",
    b"HTTP/1.1 301 Moved Permanently\r\nLocation: /b\r\nContent-Length: 0\r\n\r\n",
]

NAMES = [b"Connection", b"Keep-Alive", b"TE", b"Upgrade", b"Host", b"Authorization",
         b"Proxy-Authorization", b"X-Forwarded-For", b"X-Request-Id", b"Forwarded", b"Trailer",
         b"Expect", b"Transfer-Encoding", b"X-Api-Key", b"Accept-Encoding", b"X-Custom",
         b"Content-Type", b"Proxy-Connection", b"X-Hop", b"Proxy-Authenticate", b"Server"]


def _cased(rng: random.Random, name: bytes) -> bytes:
    return bytes(c ^ 32 if 97 <= (c | 32) <= 122 and rng.random() < 0.5 else c for c in name)


def generated(rng: random.Random, response: bool) -> bytes:
    lines = []
    for _ in range(rng.randrange(0, 9)):
        name = _cased(rng, rng.choice(NAMES))
        low = name.lower()
        if low in (b"transfer-encoding", b"content-length", b"expect", b"upgrade"):
            continue     # framing and upgrades: the hand-picked heads cover them
        value = rng.choice([b"x-hop", b"keep-alive, X-Hop", b"close", b"v", b"Bearer t",
                            b"bearer  t2 ", b""])
        if low == b"host" and not response:
            value = b"h.example"
        lines.append(name + b": " + value + b"\r\n")
    if response:
        start = rng.choice([b"HTTP/1.1 200 OK\r\n", b"HTTP/1.0 503 Busy\r\n",
                            b"HTTP/1.1 302 \r\n"])
        lines.append(b"Content-Length: 0\r\n")
    else:
        start = rng.choice([b"GET /g?q=1 HTTP/1.1\r\nHost: h\r\n", b"DELETE /d HTTP/1.0\r\n",
                            b"DELETE /d HTTP/1.0\r\nhost: h10\r\n"])
        lines = [ln for ln in lines if not ln.lower().startswith(b"host:")]   # one at most
    return start + b"".join(lines) + b"\r\n"


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(c) or "default")
@pytest.mark.parametrize("masking", [False, True])
def test_request_head_as_the_reference(monkeypatch, cfg, masking):
    c = conf(monkeypatch, **cfg)
    c.identity_encoding = masking
    rng = random.Random(21)
    raws = REQUESTS + accepted([generated(rng, False) for _ in range(400)], False)
    for tls in (False, True):
        relay = types.SimpleNamespace(xff=b"X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: "
                                      + (b"https" if tls else b"http") + b"\r\n")
        for raw in raws:
            head = request_head(raw)
            req = _Req(head, b"00112233aabbccdd")
            req.path = c.canonical(head.target, head.method)
            want = c.build_head(req, relay)
            assert c.rw.request(head, req.path, relay.xff, req.rid) == want, raw
            assert b"s3cret-upstream" in want or not c.cred_line


def test_response_head_as_the_reference(monkeypatch):
    c = conf(monkeypatch)
    rng = random.Random(9112)
    raws = RESPONSES + accepted([generated(rng, True) for _ in range(400)], True)
    for raw in raws:
        head = response_head(raw)
        for client in (b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", b"GET / HTTP/1.0\r\n\r\n",
                       b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"):
            for req_done in (True, False):
                req = _Req(request_head(client), b"ffeeddccbbaa9988")
                req.req_done = req_done
                want = c.response_head(req, head)
                got, close, dechunk = c.rw.response(head, req.head.version == 10, req_done,
                                                    req.keep_alive, req.rid)
                assert (got, close, dechunk) == (want, req.resp_close, req.dechunk), raw


def test_reframed_response_head_as_the_reference(monkeypatch):
    """A masked body's head (Rewriter.reframed): the upstream's framing out, ours in
    (Content-Length, chunked, or to the close), the same bytes as response_head(length=)."""
    c = conf(monkeypatch)
    rng = random.Random(2112)
    raws = RESPONSES + accepted([generated(rng, True) for _ in range(400)], True)
    for raw in raws:
        head = response_head(raw)
        for client in (b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", b"GET / HTTP/1.0\r\n\r\n",
                       b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
                       b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"):
            for req_done in (True, False):
                for length, chunked in ((0, False), (7, False), (1024, False), (10**12, False),
                                        (None, True), (None, False)):
                    req = _Req(request_head(client), b"ffeeddccbbaa9988")
                    req.req_done = req_done
                    want = c.response_head(req, head, length=length, chunked=chunked)
                    got = c.rw.reframed(head, req.head.version == 10, req_done, req.keep_alive,
                                        req.rid, -1 if length is None else length, chunked)
                    assert got == (want, req.resp_close), (raw, client, length, chunked)


@pytest.mark.parametrize("identity_header", ["Authorization", "Proxy-Authorization"])
def test_bearer_as_the_reference(monkeypatch, identity_header):
    c = conf(monkeypatch, identity_header=identity_header)
    values = [b"Bearer tok", b"bearer tok", b"BEARER  tok ", b"Bearer \tt\tu", b"Bearer",
              b"Bearer ", b"Bearer  ", b"Bearer\ttok", b"Basic dXNlcg==", b"Bearerx tok",
              b"Bearer a b", b"Bearer \xfftok", b"Dearer tok", b"Bearer-tok"]
    for value in values:
        for name in (identity_header.encode(), identity_header.upper().encode(), b"X-Other"):
            head = request_head(b"GET / HTTP/1.1\r\nHost: h\r\n" + name + b": " + value
                                + b"\r\n\r\n")
            want = _bearer(head.get(c.identity_header))
            assert c.rw.bearer(head) == want, (name, value)
    # the first identity header counts, as head.get() reads it
    head = request_head(b"GET / HTTP/1.1\r\nHost: h\r\n" + identity_header.encode()
                        + b": Basic x\r\n" + identity_header.encode() + b": Bearer t\r\n\r\n")
    assert c.rw.bearer(head) is None


def test_reload_remakes_the_rewriter(monkeypatch):
    """Masking switched on (a reload): Accept-Encoding is replaced from the next request."""
    c = conf(monkeypatch)
    head = request_head(b"GET / HTTP/1.1\r\nHost: h\r\nAccept-Encoding: gzip\r\n\r\n")
    # a stored credential: responses are scanned for it (issue 21), so identity is asked for
    # without masking too
    out = c.rw.request(head, b"/", b"", b"r")
    assert b"gzip" not in out and b"Accept-Encoding: identity\r\n" in out
    c.secret_scan = None                 # as a conf without a stored credential
    c.identity_encoding = False
    assert b"gzip" in c.rw.request(head, b"/", b"", b"r")
    c.identity_encoding = True
    out = c.rw.request(head, b"/", b"", b"r")
    assert b"gzip" not in out and b"Accept-Encoding: identity\r\n" in out


def test_scan_shape(monkeypatch):
    """Rewriter.scan's Host: the Host value (b"" without one) when it is the only field the
    guardrails' request text carries, else None (the verdict cache then stays out of it)."""
    from hoopwire.http.dialect import SELECTED_HEADERS
    c = conf(monkeypatch)
    auth = b"Authorization: Bearer t\r\n"
    cases = [(b"GET / HTTP/1.1\r\nHost: a.test\r\n" + auth, b"a.test"),
             (b"GET / HTTP/1.0\r\n" + auth, b""),
             (b"GET / HTTP/1.1\r\nhost: a\r\nX-Other: 1\r\nAccept: */*\r\n" + auth, b"a")]
    for name in SELECTED_HEADERS:
        if name != b"host":
            cases.append((b"GET / HTTP/1.1\r\nHost: a\r\n" + name.upper() + b": /x\r\n" + auth,
                          None))
            cases.append((b"GET / HTTP/1.0\r\n" + name + b": GET\r\n" + auth, None))
    for raw, shape in cases:
        head = request_head(raw + b"\r\n")
        assert c.rw.scan(head) == (b"t", shape), raw


def test_scan_shape_implies_the_shape_text(monkeypatch):
    """The verdict cache's safety: whenever scan() gives a Host, dialect.request_text makes
    exactly the text of method + target + that Host, over names spelled every way a server
    may read them (case, `_` for `-`): a field the text reads and scan() missed would let a
    cached verdict answer a request the rules never saw."""
    from hoopwire.http.dialect import SELECTED_HEADERS, request_text
    from hoopwire.http.relay import _shape_text
    c = conf(monkeypatch)
    rng = random.Random(4242)
    names = list(SELECTED_HEADERS) + [b"user-agent", b"accept", b"x-custom", b"x_other",
                                      b"authorization", b"x-http-method-overrid"]
    shaped = unshaped = 0
    for _ in range(3000):
        fields = [b"Authorization: Bearer t"]
        has_host = False
        for _ in range(rng.randrange(0, 4)):
            name = rng.choice(names)
            if name == b"host":
                if has_host:
                    continue
                has_host = True
            if rng.random() < 0.5:
                name = name.replace(b"-", b"_")
            value = rng.choice([b"DELETE", b"/admin", b"text/plain", b"h.test", b""])
            fields.append(_cased(rng, name) + b": " + value)
        line = rng.choice([b"GET /a HTTP/1.0", b"HEAD /b/c?x=1 HTTP/1.0"])
        events = _parse.RequestParser().feed(line + b"\r\n" + b"\r\n".join(fields)
                                             + b"\r\n\r\n")
        if events[0][0] != _parse.HEAD:
            continue
        head = events[0][1]
        token, shape = c.rw.scan(head)
        path = c.canonical(head.target, head.method)
        if shape is None:
            unshaped += 1
            continue
        shaped += 1
        assert request_text(head, path, None) == _shape_text(head.method, path, shape), fields
    assert shaped > 300 and unshaped > 300
