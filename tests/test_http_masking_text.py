"""Text and event-stream masking off the event loop, and the framing of sniffed text (issue 21).

A real upstream (http.server in a thread), the gateway with key-path and detector rules, real
clients (httpx, http.client, curl, a raw socket for HTTP/1.0). The ordering and timeout tests
hold the masking thread's job (a sitecustomize loaded into the gateway, as in
test_http_masking.py) so what they assert is the loop's doing, not the machine's speed."""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler

import httpx
import orjson
import pytest

from helpers import REPO_ROOT, wait_until
from httpfixtures import (HTTP_CONN, HttpGateway, bearer, http_config, http_env,
                          serve_threaded)

pytestmark = pytest.mark.timeout(180)

MASKS = [{"paths": ["$.secret"], "strategy": "redact"},
         {"detectors": ["EMAIL"], "strategy": "redact"}]
DETECTORS_ONLY = [{"detectors": ["EMAIL"], "strategy": "redact"}]

# served as text/plain (a sniffed type where key paths apply): text, found so by its first bytes
SNIFFED = b"hello bob@example.com, this is plain text\n" * 3
# ~1 MiB of text with an address per line: over OFFLOAD_BYTES, gathered whole
SNIFFED_BIG = b"".join(b"line %06d mail u%d@example.com end\n" % (i, i) for i in range(30000))
# one SSE event of ~600 KiB of JSON (over OFFLOAD_BYTES, under MAX_EVENT) and a small one
BIG_EVENT_ROWS = 12000
BIG_EVENT = orjson.dumps({"rows": [{"m": f"u{i}@example.com", "v": "x" * 24}
                                   for i in range(BIG_EVENT_ROWS)]})
SSE_BIG = b"data: " + BIG_EVENT + b"\n\n" + b"data: tail bob@example.com\n\n"
SMALL = orjson.dumps({"ok": 1, "mail": "bob@example.com"})
# ~2 MiB of JSON sent chunked, over the detectors-only gateway's mask_body_bytes
JSON_CHUNKED = orjson.dumps([{"m": f"u{i}@example.com", "n": i} for i in range(60000)])


class _Bodies(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    bodies = {"/sniffed": (SNIFFED, "text/plain"), "/notype": (SNIFFED, None),
              "/sniffed-big": (SNIFFED_BIG, "text/plain"),
              "/sse-big": (SSE_BIG, "text/event-stream"), "/small": (SMALL, "application/json")}

    def _head(self):
        body, ctype = self.bodies.get(self.path.split("?")[0], (b"{}", "application/json"))
        self.send_response(200)
        if ctype is not None:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        return body

    def do_HEAD(self):  # noqa: N802 -- http.server's name
        self._head()

    def do_GET(self):  # noqa: N802
        if self.path == "/json-chunked":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(JSON_CHUNKED), 65536):
                part = JSON_CHUNKED[i:i + 65536]
                self.wfile.write(b"%x\r\n%b\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
            return
        self.wfile.write(self._head())

    def log_message(self, *a):
        pass


@pytest.fixture(scope="module")
def bodies():
    with serve_threaded(_Bodies) as url:
        yield url


# Loaded into the gateway as sitecustomize: each job of the masking thread (a gathered body,
# _mask_body, or a stream's feed, _mask_feed) first makes HOLD.entered, then waits (at most
# 60 s) until the file HOLD exists, and consumes it: one release lets one job through.
_HOLD = """
import os, time
import hoopwire.http.relay as relay
_hold = os.environ["HOOPWIRE_TEST_MASK_HOLD"]

def _held(real):
    def held(*a, **kw):
        open(_hold + ".entered", "w").close()
        end = time.monotonic() + 60
        while not os.path.exists(_hold) and time.monotonic() < end:
            time.sleep(0.01)
        try:
            os.unlink(_hold)
        except OSError:
            pass
        return real(*a, **kw)
    return held

relay._mask_body = _held(relay._mask_body)
relay._mask_feed = _held(relay._mask_feed)
"""


def _gw(url: str, idp, masks=MASKS, hold=None, **kw) -> HttpGateway:
    cfg = http_config(url, idp, mask=masks, upstream_timeout="60s", request_timeout="60s", **kw)
    cfg["log"] = {"level": "debug"}
    env = http_env()
    if hold is not None:
        hold.parent.joinpath("sitecustomize.py").write_text(_HOLD)
        env["PYTHONPATH"] = os.pathsep.join((REPO_ROOT, str(hold.parent)))
        env["HOOPWIRE_TEST_MASK_HOLD"] = str(hold)
    return HttpGateway(cfg, env=env)


@pytest.fixture(scope="module")
def gw(bodies, idp):
    with _gw(bodies, idp) as g:
        yield g


def _read_response(s: socket.socket, buf: bytes = b"") -> tuple[bytes, dict, bytes, bytes]:
    """One response off a raw socket: (status line, fields, body, bytes after it). The body by
    Content-Length, else chunked, else to the close."""
    while b"\r\n\r\n" not in buf:
        data = s.recv(65536)
        assert data, buf
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    fields = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        fields[k.strip().lower()] = v.strip()
    if b"content-length" in fields:
        n = int(fields[b"content-length"])
        while len(rest) < n:
            data = s.recv(65536)
            assert data
            rest += data
        return lines[0], fields, rest[:n], rest[n:]
    while True:
        data = s.recv(65536)
        if not data:
            return lines[0], fields, rest, b""
        rest += data


# -- sniffed text keeps its framing (gap 2) -------------------------------------------------------

def test_sniffed_text_is_sent_with_its_masked_length(gw, idp):
    """A text/plain body (key paths make it a sniffed type) found to be text leaves with a
    Content-Length, masked, as the unmasked body would: not chunked to HTTP/1.1 clients; an
    HTTP/1.0 client's keep-alive connection stays open for its next request."""
    token = idp.token()
    want = SNIFFED.replace(b"bob@example.com", b"****")
    with httpx.Client(headers=bearer(token), timeout=30) as c:
        for path in ("/sniffed", "/notype"):
            r = c.get(gw.url(path))
            assert r.status_code == 200 and r.content == want, (path, r.content)
            assert "transfer-encoding" not in r.headers, path
            assert int(r.headers["content-length"]) == len(want), path

    host, port = gw.address(HTTP_CONN)
    with socket.create_connection((host, port), timeout=30) as s:
        rest = b""
        for _ in range(2):
            s.sendall(b"GET /sniffed HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n"
                      b"Authorization: Bearer %b\r\n\r\n" % token.encode())
            status, fields, body, rest = _read_response(s, rest)
            assert status.split()[1] == b"200"
            assert fields.get(b"content-length") == b"%d" % len(want)
            assert body == want
            assert fields.get(b"connection", b"").lower() == b"keep-alive"

    # HEAD: the upstream's head, no body: the same connection then serves a GET
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("HEAD", "/sniffed", headers=bearer(token))
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == b""
        conn.request("GET", "/sniffed", headers=bearer(token))
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == want
        assert resp.getheader("content-length") == str(len(want))
    finally:
        conn.close()

    if shutil.which("curl"):
        out = subprocess.run(["curl", "-s", "-i", "--http1.0", "-H",
                              f"Authorization: Bearer {token}", gw.url("/sniffed")],
                             capture_output=True, timeout=30)
        head, _, body = out.stdout.partition(b"\r\n\r\n")
        assert body == want and b"content-length: %d" % len(want) in head.lower()


def test_big_sniffed_text_is_masked_in_the_thread_with_its_length(gw, idp):
    """Over OFFLOAD_BYTES, the gathered text is masked in the masking thread and still leaves
    with its masked length."""
    r = httpx.get(gw.url("/sniffed-big"), headers=bearer(idp.token()), timeout=60)
    assert r.status_code == 200
    assert int(r.headers["content-length"]) == len(r.content)
    assert b"@example.com" not in r.content
    assert r.content.count(b"mail **** end\n") == 30000
    gw.wait_log(r"masking a response in the masking thread", timeout=30)


# -- a text stream's hold-back with dense hits ----------------------------------------------------

def test_a_text_stream_with_dense_hits_masks_as_the_whole_text():
    """Hits every few dozen bytes (an address per JSON record; a `token:` value among them,
    which its key word anchors): the stream, in pieces of 4 KiB, random sizes, and fed partly
    as the masking thread feeds it, masks exactly as the whole text at once. The hold-back
    once walked back hit by hit to the start of such text and then sent it all, the start of
    an address at the end of a piece in clear."""
    import random

    from hoopwire.config import MaskConfig
    from hoopwire.http.jsonmask import JsonMasker
    from hoopwire.masking import MaskEngine

    masks = (MaskConfig(detectors=("EMAIL", "GENERIC_API_KEY"), strategy="redact"),)
    m = JsonMasker(masks, MaskEngine(masks, hash_key=b"k"), 1 << 20)
    rnd = random.Random(5)
    text = b"".join(b'{"m":"u%d@example.com","n":%d},' % (i, i) if rnd.random() < 0.9 else
                    b'{"note":"token: abcd%04defgh5678ijkl"},' % i for i in range(8000))
    want, _ = m.engine.mask_text(text)
    assert b"@example" not in want and b"efgh5678" not in want
    for sizes, offload in (((4096,), False), ((7, 4096, 65536, 300000), False),
                           ((1, 5000, 262144), True)):
        s = m.text_stream()
        out, pos = [], 0
        while pos < len(text):
            n = rnd.choice(sizes)
            s.offloaded = offload and rnd.random() < 0.5
            out.append(s.feed(text[pos:pos + n]))
            pos += n
        out.append(s.end())
        assert b"".join(out) == want, sizes


# -- streams off the event loop (gap 1) -----------------------------------------------------------

def _masked_by_detector(gw) -> float:
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(gw.admin_url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == "hoopwire_masked_values_total" and s.labels.get("connection")
               == HTTP_CONN and s.labels.get("kind") == "detector")


def _check_sse(body: bytes) -> None:
    events = [e for e in body.split(b"\n\n") if e]
    assert len(events) == 2, body[:300]
    doc = orjson.loads(events[0].removeprefix(b"data: "))
    assert len(doc["rows"]) == BIG_EVENT_ROWS
    assert all(r["m"] == "****" for r in doc["rows"])
    assert events[1] == b"data: tail ****"


def test_a_big_sse_event_is_masked_in_the_thread_while_another_client_is_served(
        bodies, idp, tmp_path):
    """A 600 KiB SSE event is masked in the masking thread: another client's request is
    answered while the thread's job is held (with the feed on the loop, the hold stalls the
    loop and the small request waits for it). The events leave in order, masked, and the
    masked values reach hoopwire_masked_values."""
    token = idp.token()
    hold = tmp_path / "release"
    with _gw(bodies, idp, hold=hold, mask_timeout="60s") as g:
        r = httpx.get(g.url("/small"), headers=bearer(token), timeout=30)  # warm: auth, pool
        assert r.status_code == 200 and r.json()["mail"] == "****"
        wait_until(lambda: _masked_by_detector(g) == 1, 10, "the warm-up's value counted", g)
        seen: dict = {}

        def big():
            with httpx.stream("GET", g.url("/sse-big"), headers=bearer(token),
                              timeout=90) as resp:
                seen["status"] = resp.status_code
                seen["body"] = resp.read()

        t = threading.Thread(target=big)
        t.start()
        try:
            wait_until(lambda: os.path.exists(f"{hold}.entered"), 60,
                       "a feed in the masking thread", g)
            r = httpx.get(g.url("/small"), headers=bearer(token), timeout=90)
            # answered while the feed is held: the big response cannot have ended
            small_done_while_held = "body" not in seen
            assert r.status_code == 200 and r.json()["mail"] == "****"
        finally:
            # release every job of the response (the event may take several feeds)
            def release():
                while t.is_alive():
                    if not hold.exists():
                        hold.touch()
                    t.join(0.05)
            release()
        assert small_done_while_held
        assert seen["status"] == 200
        _check_sse(seen["body"])
        # the two small responses' addresses, the big event's and the tail's
        wait_until(lambda: _masked_by_detector(g) == 2 + BIG_EVENT_ROWS + 1, 10,
                   "the masked values counted", g)


def test_a_stream_feed_past_mask_timeout_closes_the_connection(bodies, idp, tmp_path):
    """A stream's feed held in the thread past mask_timeout: the head has gone, so the
    connection is cut (no last chunk: the client cannot take it for a whole body) and
    nothing unmasked leaves; a gathered text body held past it gets a 504."""
    token = idp.token()
    hold = tmp_path / "release"
    with _gw(bodies, idp, hold=hold, mask_timeout="1s") as g:
        host, port = g.address(HTTP_CONN)
        with socket.create_connection((host, port), timeout=60) as s:
            s.sendall(b"GET /sse-big HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %b\r\n\r\n"
                      % token.encode())
            got = b""
            try:
                while True:
                    data = s.recv(65536)
                    if not data:
                        break
                    got += data
            except ConnectionResetError:
                pass
        assert got.startswith(b"HTTP/1.1 200")
        assert not got.endswith(b"0\r\n\r\n") and b"@example.com" not in got
        g.wait_log(r"response masking timed out", timeout=30)
        hold.touch()                     # the held job ends; its result is dropped
        wait_until(lambda: not hold.exists(), 60, "the held job released", g)
        os.unlink(f"{hold}.entered")

        with socket.create_connection((host, port), timeout=60) as s:
            s.sendall(b"GET /sniffed-big HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %b\r\n"
                      b"Connection: close\r\n\r\n" % token.encode())
            status, fields, body, _ = _read_response(s)
        assert status.split()[1] == b"504", body[:200]
        assert orjson.loads(body)["error"] == "mask_timeout" and b"@example" not in body
        hold.touch()


def test_json_over_the_bound_streams_as_text_through_the_thread(bodies, idp):
    """Detectors only: a chunked JSON body that outgrows mask_body_bytes becomes a text
    stream, and what was gathered (over OFFLOAD_BYTES) is masked in the masking thread; the
    rest follows in order."""
    with _gw(bodies, idp, masks=DETECTORS_ONLY, mask_body_bytes=300 * 1024) as g:
        r = httpx.get(g.url("/json-chunked"), headers=bearer(idp.token()), timeout=60)
        assert r.status_code == 200
        assert r.headers.get("transfer-encoding") == "chunked"
        assert r.content == orjson.dumps([{"m": "****", "n": i} for i in range(60000)])
        g.wait_log(r"masking a stream in the masking thread", timeout=30)
