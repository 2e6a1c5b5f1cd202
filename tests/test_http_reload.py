"""A reload reaches every open HTTP connection at its next request boundary (issue 21): a
keep-alive connection that never authenticated (401) or was refused for its groups (403) sends
its next request with the new stored credential to the new upstream under the new limits and
rules, and one whose request is in flight during the reload finishes that request on the old
upstream, then sends the next to the new one, judged by the new rules (the verdict cache
emptied). Real gateway, real upstreams: a gated socket upstream (it answers a request for
/gate only when the test says so) and a recording one (tests/httpfixtures.RawUpstream)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading

import pytest

from helpers import wait_until
from httpfixtures import HttpGateway, RawUpstream, http_config

pytestmark = pytest.mark.timeout(120)

OLD_SECRET = "old-upstream-secret-" + os.urandom(6).hex()
NEW_SECRET = "rotated-upstream-secret-" + os.urandom(6).hex()
ENV = {"HTTP_API_SECRET": OLD_SECRET, "HTTP_API_SECRET_NEW": NEW_SECRET}
B_BODY = b'{"from":"b"}'
B_RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
              % len(B_BODY)) + B_BODY


class GatedUpstream:
    """Answers every request at once with {"from": "a"}, except one whose target starts with
    /gate: that waits for `gate` to be set (bounded: 30 s). Records each request head."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.received: list[bytes] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")   # GETs only: no body
                self.received.append(head)
                if head.split(b" ", 2)[1].startswith(b"/gate"):
                    self.gate.wait(30)
                body = b'{"from":"a"}'
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%b" % (len(body), body))
        except OSError:
            return
        finally:
            conn.close()

    def close(self) -> None:
        self.gate.set()
        self.sock.close()


@pytest.fixture()
def upstreams():
    a, b = GatedUpstream(), RawUpstream([B_RESPONSE])
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def _request(conn: http.client.HTTPConnection, path: str, token: str | None = None):
    conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
    r = conn.getresponse()
    return r.status, r.read()


def _send_only(conn: http.client.HTTPConnection, path: str, token: str) -> None:
    conn.putrequest("GET", path)
    conn.putheader("Authorization", f"Bearer {token}")
    conn.endheaders()


def _reload_to_b(gw: HttpGateway, b: RawUpstream, **connection) -> None:
    cfg = gw.config
    cfg["connection"][0].update(upstream=f"http://127.0.0.1:{b.port}/",
                                password_env="HTTP_API_SECRET_NEW", **connection)
    gw.write_config(cfg)
    gw.signal(signal.SIGHUP)
    gw.wait_log(r"configuration reloaded", timeout=60)


def _credential(head: bytes) -> list[bytes]:
    return [line for line in head.split(b"\r\n") if line.lower().startswith(b"authorization:")]


def test_connections_without_a_session_take_the_new_conf(upstreams, idp):
    """A 401'd and a 403'd keep-alive connection (no session; the 403 one has its token
    cached with the old policy): after a reload to a new upstream, a rotated secret, new
    allow_groups and a new rule, their next requests carry the new credential to the new
    upstream with its Host, and are judged by the new rule."""
    a, b = upstreams
    token = idp.token(groups=("agents",))
    cfg = http_config(f"http://127.0.0.1:{a.port}/", idp, allow_groups=["nobody"])
    with HttpGateway(cfg, env=ENV) as gw:
        anon = http.client.HTTPConnection(*gw.address("api"), timeout=20)
        denied = http.client.HTTPConnection(*gw.address("api"), timeout=20)
        try:
            assert _request(anon, "/echo/x")[0] == 401
            assert _request(denied, "/echo/x", token)[0] == 403
            _reload_to_b(gw, b, allow_groups=["agents"],
                         guardrail=[{"name": "no-secrets", "patterns": [r"^GET /secrets"]}])
            assert _request(anon, "/echo/x", token) == (200, B_BODY)   # the same connections
            assert _request(denied, "/echo/y", token) == (200, B_BODY)
            status, body = _request(denied, "/secrets/1", token)
            assert status == 403 and json.loads(body)["error"] == "blocked"
        finally:
            anon.close()
            denied.close()
    assert a.received == []                 # nothing ever reached the old upstream
    assert len(b.received) == 2
    for head in b.received:
        assert _credential(head) == [f"Authorization: Bearer {NEW_SECRET}".encode()]
        assert f"Host: 127.0.0.1:{b.port}\r\n".encode() in head
        assert OLD_SECRET.encode() not in head


def test_a_request_in_flight_finishes_on_the_old_upstream_then_the_new_conf(upstreams, idp):
    """An authenticated connection with a request in flight during the reload: that response
    comes from the old upstream; the connection's next request goes to the new upstream with
    the new secret (not on the old upstream's pooled connection), and a target judged (and
    cached) before is judged by the new rules."""
    a, b = upstreams
    token = idp.token(groups=("agents",))
    with HttpGateway(http_config(f"http://127.0.0.1:{a.port}/", idp), env=ENV) as gw:
        conn = http.client.HTTPConnection(*gw.address("api"), timeout=40)
        try:
            for _ in range(2):                     # judged, then from the verdict cache
                assert _request(conn, "/echo/a", token) == (200, b'{"from":"a"}')
            _send_only(conn, "/gate", token)
            wait_until(lambda: len(a.received) == 3, 20, "the gated request upstream", gw)
            _reload_to_b(gw, b, guardrail=[{"name": "no-a", "patterns": [r"^GET /echo/a"]}])
            a.gate.set()
            r = conn.getresponse()
            assert (r.status, r.read()) == (200, b'{"from":"a"}')
            status, body = _request(conn, "/echo/a", token)
            assert status == 403 and json.loads(body)["error"] == "blocked"
            assert _request(conn, "/echo/b", token) == (200, B_BODY)
        finally:
            conn.close()
    assert len(a.received) == 3
    for head in a.received:
        assert _credential(head) == [f"Authorization: Bearer {OLD_SECRET}".encode()]
    assert len(b.received) == 1
    assert _credential(b.received[0]) == [f"Authorization: Bearer {NEW_SECRET}".encode()]


def test_an_idle_connection_takes_the_new_limits(upstreams, idp):
    """The request parser's limits are the conf's too: an idle keep-alive connection parses
    its next request under the reloaded max_headers (431), not the ones it opened with."""
    a, b = upstreams
    token = idp.token(groups=("agents",))
    with HttpGateway(http_config(f"http://127.0.0.1:{a.port}/", idp), env=ENV) as gw:
        conn = http.client.HTTPConnection(*gw.address("api"), timeout=20)
        try:
            many = {f"X-Extra-{i}": "v" for i in range(12)}
            conn.request("GET", "/echo/a", headers={"Authorization": f"Bearer {token}", **many})
            r = conn.getresponse()
            assert (r.status, r.read()) == (200, b'{"from":"a"}')
            _reload_to_b(gw, b, max_headers=8)
            conn.request("GET", "/echo/a", headers={"Authorization": f"Bearer {token}", **many})
            r = conn.getresponse()
            assert r.status == 431 and json.loads(r.read())["error"] == "headers_too_large"
        finally:
            conn.close()
    assert len(b.received) == 0
