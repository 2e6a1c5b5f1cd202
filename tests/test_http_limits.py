"""max_connections on an http connection counts every client connection, authenticated or not:
an idle socket and a keep-alive socket that only ever got 401 hold a slot each, a connection
over the limit is answered 503 JSON and closed (over TLS on a TLS listener), and
request_timeout frees a slot whose client never sends a request. A flood of refusals is
logged as its first line and then a summary per window, while the metric counts each."""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import time
import urllib.request

import httpx
import orjson
import pytest

from httpfixtures import (HttpGateway, bearer, http_config, http_env,  # noqa: F401
                          parse_responses, upstream)

pytestmark = pytest.mark.timeout(120)

UNAUTH = b"GET /json/1k HTTP/1.1\r\nHost: gw\r\n\r\n"


def _connect(address, tls: ssl.SSLContext | None = None) -> socket.socket:
    s = socket.create_connection(address, timeout=10)
    s.settimeout(10)
    return tls.wrap_socket(s, server_hostname="localhost") if tls is not None else s


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


def _held_401(address, tls: ssl.SSLContext | None = None) -> socket.socket | None:
    """A keep-alive connection that got 401 and stays open, or None if the gateway answered
    503 (a slot still held by the fixture's readiness probe, which ends soon)."""
    s = _connect(address, tls)
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
    # request_timeout also ends `a` (re-armed after its 401), and `a` must still hold its slot
    # when `d` is refused: with 4 s, a loaded machine could spend that on b, c and the idle
    # socket's 1.5 s of silence (3.2 s when the first idle socket came before b's close was
    # seen), and `d` was admitted. 10 s leaves room; the idle socket's end waits for it.
    cfg = http_config(upstream.url("/"), idp, max_connections=2, request_timeout="10s")
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
        # ... until request_timeout (10 s) ends it, quietly: no request, no answer
        idle.settimeout(40)
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


def test_a_full_tls_listener_answers_503_over_tls(upstream, idp, pki):
    cfg = http_config(upstream.url("/"), idp, max_connections=1, request_timeout="30s",
                      tls_cert=pki.server_cert, tls_key=pki.server_key,
                      require_tls=False)       # a plain client is part of the test
    ctx = ssl.create_default_context(cafile=pki.ca_pem)
    with HttpGateway(cfg, env=http_env()) as g:
        host, port = g.address("api")
        held = _until(lambda: _held_401((host, port), ctx), "a TLS connection admitted")
        try:
            # before, the 503 went out in plain text ahead of the handshake: httpx and curl
            # saw a TLS record error, not the answer
            r = httpx.get(f"https://localhost:{port}/json/1k", headers=bearer(idp.token()),
                          verify=ctx, timeout=10)
            assert r.status_code == 503 and r.json()["error"] == "too_many_connections"
            assert r.headers["connection"] == "close"
            out = subprocess.run(
                ["curl", "-sS", "--max-time", "10", "--cacert", pki.ca_pem, "-o", "/dev/null",
                 "-w", "%{http_code}", f"https://localhost:{port}/json/1k"],
                capture_output=True, text=True, timeout=20)
            assert (out.returncode, out.stdout) == (0, "503"), out
            # a plain client on the same listener is still told in plain text
            plain = _connect((host, port))
            plain.sendall(UNAUTH)
            assert _status(_read_response(plain)) == 503
            plain.close()
        finally:
            held.close()


def _refused_total(g) -> float:
    text = urllib.request.urlopen(g.admin_url + "/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("hoopwire_connections_total{")
               and 'result="too_many_connections"' in line)


def test_a_flood_of_refusals_is_summarised_in_the_log(upstream, idp):
    cfg = http_config(upstream.url("/"), idp, max_connections=1, request_timeout="60s")
    with HttpGateway(cfg, env=http_env()) as g:
        address = g.address("api")
        held = _until(lambda: _held_401(address), "a connection admitted")
        try:
            for _ in range(40):
                c = _connect(address)
                assert _status(_read_response(c)) == 503
                c.close()
            refused = _refused_total(g)
            assert refused >= 40                         # the metric counts every one
            # the first in full, the rest in summaries (one per 10 s window while they go on)
            summary = r"connections refused since the last line .*refused=(\d+)"
            g.wait_log(summary, timeout=15)
            log = g.log_text()
            full = re.findall(r"connection refused .*reason=too_many_connections", log)
            counted = sum(int(n) for n in re.findall(summary, log))
            assert 1 <= len(full) <= 2, full
            assert len(full) + counted == refused, (full, counted, refused)
            assert re.search(r"reasons=too_many_connections:\d+ .*busiest=127\.0\.0\.1:",
                             log), log
        finally:
            held.close()


def test_refusal_log_windows(caplog):
    """In process, with 0.1 s windows: a window without refusals ends the summaries (the next
    refusal is in full again), and a stopping listener logs the count it still holds."""
    import asyncio
    import logging
    from types import SimpleNamespace

    from hoopwire.core.listener import RefusalLog

    lst = SimpleNamespace(log=logging.getLogger("hoopwire.test.refusals"), name="api")

    async def run():
        rl = RefusalLog(lst, window=0.1)
        for i in range(5):
            rl.refused(f"10.0.0.{i % 2}:5{i}", "too_many_connections", "too many connections")
        rl.refused("10.0.0.1:60", "too_many_handshakes", "3 handshakes in progress")
        for _ in range(200):                     # a summary, then a quiet window ends them
            if rl.timer is None:
                break
            await asyncio.sleep(0.05)
        rl.refused("10.0.0.2:61", "too_many_connections", "too many connections")
        rl.refused("10.0.0.2:62", "too_many_connections", "too many connections")
        rl.close()
        assert rl.timer is None

    with caplog.at_level(logging.WARNING, logger="hoopwire.test.refusals"):
        asyncio.run(run())
    lines = [(r.getMessage(), r.fields) for r in caplog.records]
    summary = "connections refused since the last line"
    assert [m for m, _ in lines] == ["connection refused", summary, "connection refused", summary]
    assert lines[0][1]["peer"] == "10.0.0.0:50"
    first = lines[1][1]
    assert first["refused"] == 5 and first["hosts"] == 2
    assert first["reasons"] == "too_many_connections:4,too_many_handshakes:1"
    assert first["busiest"] == "10.0.0.1:3"
    assert lines[2][1]["peer"] == "10.0.0.2:61"
    assert lines[3][1]["refused"] == 1 and lines[3][1]["busiest"] == "10.0.0.2:1"
