"""A real HTTP upstream (aiohttp, plain and TLS) and a gateway in front of it, for the HTTP
tests (issue 21).

    from httpfixtures import upstream, httpgw, http_config, HTTP_SECRET   # noqa: F401

    def test_x(httpgw, idp):
        r = httpx.get(httpgw.url("/echo"), headers=bearer(idp.token()))

`upstream` (module scope) is an aiohttp server in its own thread and loop, on a random
loopback port over plain HTTP and over TLS (a trustme CA of its own, `upstream.ca_pem`).
Its handlers:

    /echo/...           any method: {"method", "path" (raw, with the query), "headers"
                        ([[name, value]] as received), "body" (latin-1 text), "body_len"}
    /json/1k, /json/64k a JSON body of about that size
    /chunked?n=N        N chunks of "chunk-i\\n", Transfer-Encoding: chunked
    /slow?delay=S       answers after S seconds
    /sse?n=N            N server-sent events, 50 ms apart; with &gate=NAME the events after
                        the first wait until the threading.Event stats[NAME] is set
    /download?size=N    N bytes streamed in 64 KiB writes (Content-Length set)
    /close              closes the socket without an answer
    /hang               never answers
    /status/CODE        an empty answer with that status (204, 304, ...)
    /echo's fields are also kept by request id: sent_headers(upstream, rid) is what the
                        upstream got (the client's copy has the stored credential redacted)
    /count              how many requests ("requests": /echo ones) and TCP connections
                        ("connections": distinct client addresses) the upstream has seen

`raw_upstream(responses)` is a plain socket server that records each request's bytes as
received and answers with canned bytes: for what aiohttp would normalise (trailers, exact
head bytes).

The gateway (`httpgw`, module scope) is named "api", plain HTTP on the client side, upstream
`http://127.0.0.1:<port>/` with the stored credential HTTP_SECRET as `Authorization: Bearer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

import pytest
import trustme

from helpers import Gateway

__all__ = ["upstream", "httpgw", "http_config", "http_env", "HTTP_SECRET", "HTTP_CONN",
           "Upstream", "RawUpstream", "bearer", "sent_headers", "raw_exchange", "JSON_1K",
           "JSON_64K"]

HTTP_CONN = "api"
HTTP_SECRET = "stored-upstream-secret-" + os.urandom(6).hex()


def _json_of(size: int) -> bytes:
    import orjson
    items = []
    n = 0
    while n < size - 64:
        item = {"id": len(items), "name": f"user-{len(items)}", "email": f"u{len(items)}@ex.com"}
        items.append(item)
        n += len(orjson.dumps(item)) + 1
    return orjson.dumps({"users": items})


JSON_1K = _json_of(1024)
JSON_64K = _json_of(64 * 1024)


@dataclass
class Upstream:
    host: str
    port: int               # plain HTTP
    tls_port: int           # HTTPS (cert for localhost and 127.0.0.1 from ca_pem)
    ca_pem: str
    stats: dict = field(default_factory=dict)

    def url(self, path: str = "/", tls: bool = False) -> str:
        port = self.tls_port if tls else self.port
        return f"{'https' if tls else 'http'}://{self.host}:{port}{path}"


def sent_headers(upstream: Upstream, rid: str) -> dict[str, list[str]]:
    """The fields /echo got in the request with X-Request-Id `rid`, by lower-case name."""
    out: dict[str, list[str]] = {}
    for k, v in upstream.stats["seen"][rid]:
        out.setdefault(k.lower(), []).append(v)
    return out


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def _app(stats: dict):
    from aiohttp import web

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        stats["requests"] = stats.get("requests", 0) + 1
        # the fields as the upstream got them, by X-Request-Id (sent_headers): what the client
        # gets back has the stored credential redacted (issue 21)
        seen = stats.setdefault("seen", {})
        if len(seen) > 4096:
            seen.clear()
        seen[request.headers.get("X-Request-Id", "")] = [
            [k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers]
        return web.json_response({
            "method": request.method, "path": request.raw_path,
            "headers": [[k.decode("latin-1"), v.decode("latin-1")]
                        for k, v in request.raw_headers],
            "body": body.decode("latin-1"), "body_len": len(body), "version":
            f"{request.version.major}.{request.version.minor}"})

    async def json_1k(request):
        return web.Response(body=JSON_1K, content_type="application/json")

    async def json_64k(request):
        return web.Response(body=JSON_64K, content_type="application/json")

    async def chunked(request):
        n = int(request.query.get("n", "5"))
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(n):
            await resp.write(f"chunk-{i}\n".encode())
        await resp.write_eof()
        return resp

    async def slow(request):
        await asyncio.sleep(float(request.query.get("delay", "1")))
        return web.json_response({"slept": float(request.query.get("delay", "1"))})

    async def sse(request):
        n = int(request.query.get("n", "3"))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        gate = request.query.get("gate")
        for i in range(n):
            await resp.write(f"id: {i}\ndata: event-{i}\n\n".encode())
            if gate is None:
                await asyncio.sleep(0.05)
            elif i == 0:
                # the rest waits for the client to have read event 0 (the test sets the
                # threading.Event it put in stats[gate]): a gateway that buffers the stream
                # leaves it to time out, which the test reads as a failure, not a slow run
                ev = stats[gate]
                if not await asyncio.get_running_loop().run_in_executor(None, ev.wait, 20):
                    stats[gate + ".timed_out"] = True
        await resp.write_eof()
        return resp

    async def download(request):
        size = int(request.query.get("size", str(1 << 20)))
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = size
        await resp.prepare(request)
        block = b"x" * 65536
        left = size
        while left > 0:
            await resp.write(block[:min(left, 65536)])
            left -= 65536
        await resp.write_eof()
        return resp

    async def close(request):
        request.transport.close()
        await asyncio.sleep(0.1)
        raise ConnectionResetError("closed on purpose")

    async def hang(request):
        await asyncio.sleep(3600)

    async def status(request):
        code = int(request.match_info["code"])
        return web.Response(status=code)

    async def count(request):
        return web.json_response(dict(stats))

    peers: set = set()

    @web.middleware
    async def count_connections(request, handler):
        # a TCP connection is its client address: the pool tests count distinct ones
        if request.path != "/count":
            peers.add(request.transport.get_extra_info("peername") if request.transport
                      else None)
            stats["connections"] = len(peers)
        return await handler(request)

    app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[count_connections])
    app.router.add_route("*", "/echo{tail:.*}", echo)
    app.router.add_get("/json/1k", json_1k)
    app.router.add_get("/json/64k", json_64k)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/slow", slow)
    app.router.add_get("/sse", sse)
    app.router.add_get("/download", download)
    app.router.add_route("*", "/close", close)
    app.router.add_get("/hang", hang)
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_get("/count", count)
    return app


class _Server:
    """The aiohttp app on its own loop in a daemon thread."""

    def __init__(self, ssl_ctx):
        self.ssl_ctx = ssl_ctx
        self.stats: dict = {}
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.ports: tuple[int, int] = (0, 0)
        self.thread = threading.Thread(target=self._run, name="http-upstream", daemon=True)
        self.thread.start()
        if not self.ready.wait(20):
            raise RuntimeError("the upstream did not start")

    def _run(self) -> None:
        from aiohttp import web
        asyncio.set_event_loop(self.loop)

        async def start():
            runner = web.AppRunner(_app(self.stats), access_log=None)
            await runner.setup()
            plain = web.TCPSite(runner, "127.0.0.1", 0)
            await plain.start()
            tls = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self.ssl_ctx)
            await tls.start()
            self.runner = runner
            self.ports = (plain._server.sockets[0].getsockname()[1],
                          tls._server.sockets[0].getsockname()[1])
            self.ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    def stop(self) -> None:
        async def cleanup():
            # handlers still running (/hang, a streamed download a test left) end first:
            # a coroutine collected unfinished is an error in this suite
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.runner.cleanup()
        fut = asyncio.run_coroutine_threadsafe(cleanup(), self.loop)
        try:
            fut.result(10)
        except Exception:  # noqa: BLE001 -- a test left a request hanging: stop anyway
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> Iterator[Upstream]:
    import ssl
    d = tmp_path_factory.mktemp("upstream-pki")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(ctx)
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    server = _Server(ctx)
    try:
        yield Upstream("127.0.0.1", server.ports[0], server.ports[1], str(d / "ca.pem"),
                       server.stats)
    finally:
        server.stop()


class RawUpstream:
    """A socket server that records each request's bytes (up to the end of its head, plus
    Content-Length bytes, or up to a 0-chunk and its trailers) and answers with the next of
    `responses` (the last one repeats). With `close_after` = N, a connection that answered N
    requests closes at its next one without answering (a server that closed a keep-alive
    connection just as the request went out)."""

    def __init__(self, responses: list[bytes], close_after: int | None = None):
        self.responses = list(responses)
        self.close_after = close_after
        self.connections = 0
        self.received: list[bytes] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.stopped = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        self.connections += 1
        buf = b""
        answered = 0
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, rest = buf.partition(b"\r\n\r\n")
                low = head.lower()
                if b"transfer-encoding: chunked" in low:
                    while not (rest.endswith(b"\r\n\r\n") and (b"\r\n0\r\n" in b"\r\n" + rest)):
                        data = conn.recv(65536)
                        if not data:
                            return
                        rest += data
                    body, buf = rest, b""
                else:
                    n = 0
                    for line in low.split(b"\r\n"):
                        if line.startswith(b"content-length:"):
                            n = int(line.split(b":", 1)[1])
                    while len(rest) < n:
                        data = conn.recv(65536)
                        if not data:
                            return
                        rest += data
                    body, buf = rest[:n], rest[n:]
                if self.close_after is not None and answered >= self.close_after:
                    return
                self.received.append(head + b"\r\n\r\n" + body)
                i = min(len(self.received), len(self.responses)) - 1
                conn.sendall(self.responses[i])
                answered += 1
        except OSError:
            return
        finally:
            conn.close()

    def close(self) -> None:
        self.stopped = True
        self.sock.close()


def http_config(upstream_url: str, idp, *, identity: dict | None = None, **connection) -> dict:
    """A one-connection http config (name "api"); keyword arguments override keys of the
    [[connection]] table (None removes one)."""
    conn = {"name": HTTP_CONN, "protocol": "http", "upstream": upstream_url,
            "password_env": "HTTP_API_SECRET", "allow_groups": ["agents", "ci", "analysts"],
            "request_timeout": "5s", "upstream_timeout": "5s"}
    conn.update(connection)
    conn = {k: v for k, v in conn.items() if v is not None}
    return {"identity": identity or {"issuer": [idp.issuer_config()],
                                     "api_key": idp.api_key_config()},
            "connection": [conn]}


def http_env() -> dict[str, str]:
    return {"HTTP_API_SECRET": HTTP_SECRET}


class HttpGateway(Gateway):
    def url(self, path: str = "/", name: str = HTTP_CONN) -> str:
        host, port = self.address(name)
        return f"http://{host}:{port}{path}"


@pytest.fixture(scope="module")
def httpgw(upstream, idp) -> Iterator[HttpGateway]:
    """A gateway in front of the plain upstream, shared by a module's tests."""
    with HttpGateway(http_config(upstream.url("/"), idp), env=http_env()) as g:
        yield g


def raw_exchange(address: tuple[str, int], data: bytes, *, timeout: float = 10.0,
                 until_close: bool = True, expect: int | None = None) -> bytes:
    """Send `data` on a fresh socket and read until the gateway closes (or `expect` bytes
    of responses: the count of b"HTTP/1.1 " status lines seen)."""
    with socket.create_connection(address, timeout=timeout) as s:
        s.sendall(data)
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            out += chunk
            if expect is not None and out.count(b"HTTP/1.1 ") >= expect and \
                    _complete(out, expect):
                break
        return out


def _complete(out: bytes, n: int) -> bool:
    """Whether the n-th response in `out` is whole (Content-Length framing only)."""
    pos = 0
    for _ in range(n):
        end = out.find(b"\r\n\r\n", pos)
        if end < 0:
            return False
        head = out[pos:end].lower()
        length = 0
        for line in head.split(b"\r\n"):
            if line.startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        pos = end + 4 + length
        if pos > len(out):
            return False
    return True


def parse_responses(out: bytes) -> list[tuple[int, dict, bytes]]:
    """The responses in `out` (Content-Length or chunked framing, or to the end), as
    (status, {lower-case name: value}, body)."""
    res = []
    while out:
        head, sep, out = out.partition(b"\r\n\r\n")
        if not sep:
            raise AssertionError(f"an incomplete response head: {head!r}")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            headers[k.strip().lower().decode()] = v.strip().decode("latin-1")
        if 100 <= status < 200 or status in (204, 304):
            res.append((status, headers, b""))
            continue
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size_line, _, out = out.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    _, _, out = out.partition(b"\r\n\r\n") if not out.startswith(b"\r\n") \
                        else (b"", b"", out[2:])
                    break
                body += out[:size]
                out = out[size + 2:]
        elif "content-length" in headers:
            n = int(headers["content-length"])
            body, out = out[:n], out[n:]
        else:
            body, out = out, b""
        res.append((status, headers, body))
    return res


@contextlib.contextmanager
def serve_threaded(handler) -> Iterator[str]:
    """A stdlib ThreadingHTTPServer answering with `handler` on a loopback port, in a daemon
    thread, for tests that need a response the aiohttp upstream cannot make: its base URL."""
    from http.server import ThreadingHTTPServer
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/"
    finally:
        srv.shutdown()
        srv.server_close()
