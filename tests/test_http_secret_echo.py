"""The stored upstream credential never reaches the client (issue 21): an upstream that echoes
its request (the fixture's /echo, httpbin's /headers, an error page that dumps the request)
sends back the credential the gateway injected; the gateway replaces every form of it
(session.secret_forms) by as many `*` in the response head, body and trailers, on the C
plumbing and on its Python twin (HOOPWIRE_HTTP_PURE=1), and refuses a body it cannot read."""

from __future__ import annotations

import base64
import random
import urllib.request

import httpx
import pytest

from helpers import wait_until
from httpfixtures import (HTTP_CONN, HTTP_SECRET, HttpGateway, RawUpstream, bearer,  # noqa: F401
                          http_config, http_env, parse_responses, raw_exchange, sent_headers,
                          upstream)

pytestmark = pytest.mark.timeout(180)

SECRET = HTTP_SECRET.encode()
STARS = b"*" * len(SECRET)
PATHS = pytest.mark.parametrize("pure", [False, True], ids=["c", "python"])


def _env(pure: bool) -> dict:
    env = http_env()
    if pure:
        env["HOOPWIRE_HTTP_PURE"] = "1"
    return env


def _credential_count(g) -> float:
    text = urllib.request.urlopen(g.admin_url + "/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith("hoopwire_masked_values_total{") and \
                f'connection="{HTTP_CONN}"' in line and 'name="upstream-credential"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _get(g, path: str, token: str, method: str = "GET", extra: str = "") -> bytes:
    data = (f"{method} {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n"
            f"{extra}Connection: close\r\n\r\n").encode()
    return raw_exchange(g.address(HTTP_CONN), data)


# -- the scan itself, against the Python reference ------------------------------------------------

def test_every_form_is_redacted_wherever_reads_split_it():
    """SecretScan (C) as session.redact_reference on whole buffers, and the same bytes when the
    body comes in reads split at every offset of every form (the carry holds a form's start)."""
    from hoopwire.http._relay import SecretScan
    from hoopwire.http.session import redact_reference, secret_forms
    needles = secret_forms(HTTP_SECRET, "Bearer " + HTTP_SECRET)
    # the secret, and base64 of a longer string holding it at each alignment
    assert SECRET in needles and len(needles) == 4
    scan = SecretScan(needles)
    for k in range(3):
        b64 = base64.b64encode(b"x" * k + b"Bearer " + SECRET)
        assert redact_reference(needles, b64)[1] == 1
    rng = random.Random(21)
    for nd in needles:
        doc = b'{"a": "' + nd + b'", "b": "x' + nd[:len(nd) // 2] + b'"}'
        want = redact_reference(needles, doc)
        assert want[1] == 1 and nd not in want[0]
        assert scan.redact(doc) == want
        for at in range(1, len(doc)):
            out, carry, hits = scan.step(None, doc[:at], False)
            o2, carry, h2 = scan.step(carry, doc[at:], True)
            assert (out + o2, hits + h2, carry) == (*want, None), (nd, at)
    for _ in range(300):
        doc = b"".join(rng.choice([SECRET, SECRET[:rng.randint(1, len(SECRET))], b"Bearer ",
                                   bytes(rng.randrange(256) for _ in range(rng.randint(0, 30)))])
                       for _ in range(rng.randint(0, 6)))
        cuts = sorted(rng.sample(range(len(doc) + 1), min(4, len(doc) + 1)))
        out, carry, hits, prev = b"", None, 0, 0
        for c in cuts + [len(doc)]:
            o, carry, h = scan.step(carry, doc[prev:c], False)
            out, hits, prev = out + o, hits + h, c
        o, carry, h = scan.step(carry, b"", True)
        assert (out + o, hits + h) == redact_reference(needles, doc)


def test_short_secrets_are_looked_for_only_in_their_header_value():
    from hoopwire.http.session import secret_forms
    forms = secret_forms("k3y", "Bearer k3y")
    assert b"Bearer k3y" in forms and b"k3y" not in forms and min(map(len, forms)) >= 8
    assert secret_forms("k3y", "{k3y}") == []
    # Basic: the decoded user:password and the password are looked for too
    forms = secret_forms(base64.b64encode(b"svc:pa55word-long").decode(),
                         "Basic " + base64.b64encode(b"svc:pa55word-long").decode())
    assert b"svc:pa55word-long" in forms and b"pa55word-long" in forms


# -- through the gateway ---------------------------------------------------------------------------

@PATHS
def test_an_echoed_request_reaches_the_client_redacted(upstream, idp, pure):  # noqa: F811
    cfg = http_config(upstream.url("/"), idp)
    with HttpGateway(cfg, env=_env(pure)) as g:
        r = httpx.get(g.url("/echo/a"), headers={**bearer(idp.token()),
                                                  "Accept-Encoding": "gzip, br"}, timeout=10)
        assert r.status_code == 200, r.text
        sent = sent_headers(upstream, r.headers["x-request-id"])
        assert sent["authorization"] == [f"Bearer {HTTP_SECRET}"]
        # asked for identity: a compressed body could not be read for the credential
        assert sent["accept-encoding"] == ["identity"]
        assert SECRET not in r.content
        auth = [v for k, v in r.json()["headers"] if k.lower() == "authorization"]
        assert auth == ["Bearer " + "*" * len(HTTP_SECRET)]
        assert int(r.headers["content-length"]) == len(r.content)
        m = g.wait_log(r"carried the stored credential: redacted.*where=body")
        assert HTTP_SECRET not in g.log_text()
        assert m
        wait_until(lambda: _credential_count(g) >= 1, 30, "the upstream-credential count", gw=g)


@PATHS
def test_a_masked_response_is_redacted_after_the_masker(upstream, idp, pure):  # noqa: F811
    """With masking rules the JSON is re-serialised by the masker: what it made is scanned."""
    cfg = http_config(upstream.url("/"), idp, mask=[{"paths": ["$.nothing"]}])
    with HttpGateway(cfg, env=_env(pure)) as g:
        r = httpx.get(g.url("/echo/m"), headers=bearer(idp.token()), timeout=10)
        assert r.status_code == 200, r.text
        assert SECRET not in r.content and STARS in r.content
        assert int(r.headers["content-length"]) == len(r.content)


def _raw(responses: list[bytes], pure: bool, idp):
    raw = RawUpstream(responses)
    return raw, HttpGateway(http_config(f"http://127.0.0.1:{raw.port}/", idp), env=_env(pure))


@PATHS
def test_a_chunked_echo_split_inside_the_secret_at_every_offset(idp, pure):
    """The secret split across two chunks at every offset: the client gets the same data with
    it redacted, correctly chunked, the trailer redacted too. (Split across two reads: the
    first test, in process, at every offset; the socket decides the reads here.)"""
    responses = []
    for at in range(1, len(SECRET)):
        a, b = b'{"auth": "Bearer ' + SECRET[:at], SECRET[at:] + b'"}'
        responses.append(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n" +
                         b"%x\r\n%b\r\n%x\r\n%b\r\n" % (len(a), a, len(b), b) +
                         b"0\r\nX-Echo: " + SECRET + b"\r\n\r\n")
    raw, gw = _raw(responses, pure, idp)
    try:
        with gw as g:
            token = idp.token()
            req = f"GET /x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n"
            data = (req + "\r\n") * (len(responses) - 1) + req + "Connection: close\r\n\r\n"
            out = raw_exchange(g.address(HTTP_CONN), data.encode(), timeout=60)
            # parse_responses reads the chunk framing: a wrong size would misparse the rest
            resps = parse_responses(out)
            assert [r[0] for r in resps] == [200] * len(responses)
            assert SECRET not in out
            for _, _, body in resps:
                assert body == b'{"auth": "Bearer ' + STARS + b'"}'
            assert out.count(b"0\r\nX-Echo: " + STARS + b"\r\n\r\n") == len(responses)
    finally:
        raw.close()


@PATHS
def test_a_header_echo_a_head_answer_and_an_error_body(idp, pure):
    body = b"<pre>500: request was GET /x\nAuthorization: Bearer " + SECRET + b"\n</pre>"
    responses = [
        b"HTTP/1.1 200 OK\r\nX-Debug-Auth: Bearer " + SECRET + b"\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/html\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (len(body), body),
        b"HTTP/1.1 200 OK\r\nX-Seen: " + base64.b64encode(b"Bearer " + SECRET) +
        b"\r\nContent-Length: 1234\r\n\r\n",
    ]
    raw, gw = _raw(responses, pure, idp)
    try:
        with gw as g:
            token = idp.token()
            req = "{} /x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer " + token + "\r\n{}\r\n"
            data = (req.format("GET", "") + req.format("GET", "") +
                    req.format("HEAD", "Connection: close\r\n")).encode()
            out = raw_exchange(g.address(HTTP_CONN), data, timeout=30)
            assert SECRET not in out and base64.b64encode(b"Bearer " + SECRET)[12:40] not in out
            head1, rest = out.split(b"\r\n\r\n", 1)
            assert b"\r\nX-Debug-Auth: Bearer " + STARS + b"\r\n" in head1
            head2, rest = rest.split(b"\r\n\r\n", 1)
            assert head2.startswith(b"HTTP/1.1 500")
            assert rest[:len(body)] == body.replace(SECRET, STARS)
            # HEAD: the head only, its Content-Length as the upstream said
            head3 = rest[len(body):]
            assert head3.startswith(b"HTTP/1.1 200") and head3.endswith(b"\r\n\r\n")
            assert b"\r\nContent-Length: 1234\r\n" in head3 and b"\r\nX-Seen: " in head3
    finally:
        raw.close()


@PATHS
def test_a_compressed_response_is_refused_not_passed(idp, pure):
    responses = [b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\nabcd"]
    raw, gw = _raw(responses, pure, idp)
    try:
        with gw as g:
            out = _get(g, "/x", idp.token(), extra="Accept-Encoding: gzip\r\n")
            (status, _, body), = parse_responses(out)
            assert status == 502 and b"unscannable_response" in body
            assert b"\r\nAccept-Encoding: identity\r\n" in raw.received[0]
            assert b"gzip" not in raw.received[0]
    finally:
        raw.close()


@PATHS
@pytest.mark.parametrize("coding", [
    # the first Content-Encoding field alone was read: identity, then gzip, passed
    b"Content-Encoding: identity\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n",
    b"Content-Encoding: identity, gzip\r\nContent-Length: 4\r\n",
    # a transfer coding before chunked: the client inflates it as well
    b"Transfer-Encoding: gzip, chunked\r\n",
])
def test_a_coding_in_any_field_is_refused(idp, pure, coding):
    body = b"abcd" if b"Length" in coding else b"4\r\nabcd\r\n0\r\n\r\n"
    raw, gw = _raw([b"HTTP/1.1 200 OK\r\n" + coding + b"\r\n" + body], pure, idp)
    try:
        with gw as g:
            (status, _, out), = parse_responses(_get(g, "/x", idp.token()))
            assert status == 502 and b"unscannable_response" in out
    finally:
        raw.close()
