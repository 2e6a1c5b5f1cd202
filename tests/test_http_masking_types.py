"""JSON key-path masking is not dodged by the response's Content-Type (issue 21): with only
path rules, a JSON body served as text/plain, JSONP, a json-ish vendor type, a download, a
comma-list type or no type at all comes back masked or refused (502), never clear; a text
body and an image still pass unchanged. A real upstream (http.server, which sends exactly
the head it is given: no type at all, a comma-list) and the real gateway."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import orjson
import pytest

from httpfixtures import HttpGateway, bearer, http_config, http_env

pytestmark = pytest.mark.timeout(120)

LEAK = b"leak@x.io"
DOC = b'{"users": [{"email": "leak@x.io", "id": 1}, {"email": "leak@x.io", "id": 2}]}'
MASKED = {"users": [{"email": "****", "id": 1}, {"email": "****", "id": 2}]}
MAX = 8192                         # the gateway's mask_body_bytes here
NO_TYPE = object()

# path -> (Content-Type or NO_TYPE, body, chunk size: 0 for Content-Length)
BODIES = {
    "/plain": ("text/plain; charset=utf-8", DOC, 0),
    "/plain-chunked": ("text/plain", b"\r\n  " + DOC, 3),     # decided across tiny chunks
    "/bom": ("text/plain", b"\xef\xbb\xbf" + DOC, 0),
    "/ws": ("text/plain", b" " * 5000 + DOC, 1024),           # open past SNIFF_BYTES
    "/jsonp-text": ("text/javascript", b"/**/cb(" + DOC + b");", 0),
    "/jsonp-app": ("application/javascript; charset=utf-8",
                   b"/**/ typeof cb === 'function' && cb(" + DOC + b");", 5),
    "/amz": ("application/x-amz-json-1.1", DOC, 0),
    "/vnd": ("application/vnd.example.v2.json", DOC, 0),
    "/octet": ("application/octet-stream", DOC, 0),
    "/list": ("application/json, text/plain", DOC, 0),
    "/list-text": ("image/png, text/plain", DOC, 0),
    "/none": (NO_TYPE, DOC, 0),
    "/seq": ("application/json-seq", b"\x1e" + DOC + b"\n", 0),
    # looks like JSON, is not: refused, not forwarded
    "/broken": ("text/plain", DOC[:-1] + b", oops", 0),
    "/broken-jsonp": ("text/javascript", b"cb(" + DOC, 0),
    # over mask_body_bytes: cannot be masked whole
    "/big": ("text/plain", orjson.dumps({"users": [{"email": "leak@x.io", "pad": "x" * 100}
                                                   for _ in range(120)]}), 0),
    "/big-chunked": ("text/plain", orjson.dumps({"users": [{"email": "leak@x.io"}] * 600}), 512),
    # what must still pass unchanged
    "/text": ("text/plain", b"Hello leak@x.io, see note(1) [a] {b}\n" * 3, 0),
    "/text-chunked": ("text/plain", b"print(\"leak@x.io\")\n" * 300, 7),
    "/png": ("image/png", b"\x89PNG\r\n\x1a\n" + DOC, 0),
    "/png-brace": ("image/png", DOC, 0),
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 -- http.server's name
        ctype, body, chunk = BODIES[self.path]
        self.send_response(200)
        if ctype is not NO_TYPE:
            self.send_header("Content-Type", ctype)
        if chunk:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body), chunk):
                part = body[i:i + chunk]
                self.wfile.write(b"%x\r\n%b\r\n" % (len(part), part))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, *a):
        pass


@pytest.fixture(scope="module")
def typesgw(idp):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.handle_error = lambda *a: None     # the gateway aborts what it refuses: no noise
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    cfg = http_config(f"http://127.0.0.1:{srv.server_address[1]}/", idp,
                      mask=[{"paths": ["$.users[*].email"], "strategy": "redact"}],
                      mask_body_bytes=MAX)
    try:
        with HttpGateway(cfg, env=http_env()) as g:
            yield g
    finally:
        srv.shutdown()
        srv.server_close()


def _get(gw, idp, path: str) -> httpx.Response:
    return httpx.get(gw.url(path), headers=bearer(idp.token()), timeout=20)


@pytest.mark.parametrize("path", ["/plain", "/plain-chunked", "/octet", "/none", "/amz",
                                  "/vnd", "/list", "/list-text"])
def test_json_under_another_type_is_masked(typesgw, idp, path):
    r = _get(typesgw, idp, path)
    assert r.status_code == 200, r.text
    assert LEAK not in r.content
    assert orjson.loads(r.content) == MASKED
    sent = BODIES[path][0]
    if sent is NO_TYPE:
        assert "content-type" not in r.headers
    else:
        assert r.headers["content-type"] == sent        # sent with its original type


def test_a_bom_and_leading_whitespace_do_not_hide_json(typesgw, idp):
    r = _get(typesgw, idp, "/bom")
    assert r.status_code == 200 and LEAK not in r.content
    assert r.content.startswith(b"\xef\xbb\xbf")         # the BOM kept
    assert orjson.loads(r.content[3:]) == MASKED
    r = _get(typesgw, idp, "/ws")                         # 5000 spaces first: still JSON
    assert r.status_code == 200 and LEAK not in r.content
    assert orjson.loads(r.content) == MASKED


@pytest.mark.parametrize("path,prefix", [
    ("/jsonp-text", b"/**/cb("),
    ("/jsonp-app", b"/**/ typeof cb === 'function' && cb(")])
def test_jsonp_is_masked_inside_its_call(typesgw, idp, path, prefix):
    r = _get(typesgw, idp, path)
    assert r.status_code == 200, r.text
    assert LEAK not in r.content
    assert r.content.startswith(prefix) and r.content.endswith(b");")
    assert orjson.loads(r.content[len(prefix):-2]) == MASKED
    assert r.headers["content-type"] == BODIES[path][0]


@pytest.mark.parametrize("path", ["/seq", "/broken", "/broken-jsonp", "/big", "/big-chunked"])
def test_json_that_cannot_be_masked_is_refused(typesgw, idp, path):
    r = _get(typesgw, idp, path)
    assert r.status_code == 502, r.status_code
    assert r.json()["error"] == "unmaskable_response"
    assert LEAK not in r.content


@pytest.mark.parametrize("path", ["/text", "/text-chunked", "/png", "/png-brace"])
def test_text_and_images_pass_unchanged(typesgw, idp, path):
    r = _get(typesgw, idp, path)
    assert r.status_code == 200, r.text
    assert r.content == BODIES[path][1]
    assert r.headers["content-type"] == BODIES[path][0]
