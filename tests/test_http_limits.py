"""max_connections on an http connection counts every client connection, authenticated or not:
an idle socket and a keep-alive socket that only ever got 401 hold a slot each, a connection
over the limit is answered 503 JSON and closed, and request_timeout frees a slot whose client
never sends a request."""

from __future__ import annotations

import socket
import time

import orjson
import pytest

from httpfixtures import (HttpGateway, bearer, http_config, http_env,  # noqa: F401
                          parse_responses, upstream)

pytestmark = pytest.mark.timeout(120)

UNAUTH = b"GET /json/1k HTTP/1.1\r\nHost: gw\r\n\r\n"


def _connect(address) -> socket.socket:
    s = socket.create_connection(address, timeout=10)
    s.settimeout(10)
    return s


def _read_response(s: socket.socket) -> bytes:
    """One whole Content-Length response (the gateway's own answers are all so framed)."""
    out = b""
    while True:
        head, sep, body = out.partition(b"\r\n\r\n")
        if sep:
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            if len(body) >= length:
                return out
        chunk = s.recv(65536)
        if not chunk:
            return out
        out += chunk


def _status(resp: bytes) -> int:
    return int(resp[9:12]) if resp.startswith(b"HTTP/1.1 ") else 0


def _held_401(address) -> socket.socket | None:
    """A keep-alive connection that got 401 and stays open, or None if the gateway answered
    503 (a slot still held by the fixture's readiness probe, which ends soon)."""
    s = _connect(address)
    s.sendall(UNAUTH)
    resp = _read_response(s)
    if _status(resp) == 401:
        assert b"connection: close" not in resp.lower()
        return s
    assert _status(resp) == 503, resp
    s.close()
    return None


def _until(make, what: str, bound: float = 15.0):
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        got = make()
        if got is not None:
            return got
        time.sleep(0.2)
    raise AssertionError(f"{what} within {bound} s")


def _idle_counted(address) -> socket.socket | None:
    """A socket that sends nothing, once the gateway has taken a slot for it (an over-limit
    one is answered 503 at once; 1.5 s of silence means it was admitted)."""
    s = _connect(address)
    s.settimeout(1.5)
    try:
        data = s.recv(65536)
    except socket.timeout:
        s.settimeout(10)
        return s
    assert _status(data) == 503 or not data, data
    s.close()
    return None


def test_unauthenticated_connections_count_against_max_connections(upstream, idp):
    cfg = http_config(upstream.url("/"), idp, max_connections=2, request_timeout="4s")
    with HttpGateway(cfg, env=http_env()) as g:
        address = g.address("api")
        a = _until(lambda: _held_401(address), "a first 401 connection admitted")
        b = _until(lambda: _held_401(address), "a second 401 connection admitted")
        # two connections without a session fill the listener: the third is refused
        c = _connect(address)
        resp = _read_response(c)
        assert _status(resp) == 503, resp
        [(status, headers, body)] = parse_responses(resp)
        assert headers["connection"] == "close" and headers["content-type"] == "application/json"
        assert orjson.loads(body)["error"] == "too_many_connections"
        assert c.recv(1) == b""                   # and closed
        c.close()
        # a socket that never sends a byte holds a slot too
        b.close()
        idle = _until(lambda: _idle_counted(address), "an idle connection admitted")
        d = _connect(address)
        assert _status(_read_response(d)) == 503
        d.close()
        # ... until request_timeout (4 s) ends it, quietly: no request, no answer
        idle.settimeout(15)
        assert idle.recv(65536) == b""
        idle.close()
        a.close()
        # the slots are free again: an authenticated request is served
        token = idp.token()
        req = b"GET /json/1k HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer " + \
            token.encode() + b"\r\n\r\n"

        def served():
            s = _connect(address)
            try:
                s.sendall(req)
                status = _status(_read_response(s))
            finally:
                s.close()
            return True if status == 200 else None
        _until(served, "a request served once the slots are free")
