"""Red-team pass over session 4's caches and fast paths (issues 17, 21, 25): the attacks that
found something, each kept as a test. What held is in the lead's notes, not here."""

from __future__ import annotations

import functools

import orjson
import pytest

from hoopwire.config import MaskConfig
from hoopwire.http.jsonmask import JsonMasker
from hoopwire.masking import MaskEngine
from httpfixtures import upstream  # noqa: F401  -- the real upstream fixture

KEY = b"redteam-key"


@functools.lru_cache(maxsize=None)
def _masker(paths: tuple, detectors: tuple) -> JsonMasker:
    masks = []
    if paths:
        masks.append(MaskConfig(paths=paths, strategy="redact"))
    if detectors:
        masks.append(MaskConfig(detectors=detectors, strategy="redact"))
    return JsonMasker(tuple(masks), MaskEngine(masks, hash_key=KEY, path="connection[0]"),
                      1 << 20)


# -- JSON masking: a duplicate member name hid the first value ------------------------------------
# orjson keeps the last of two members with one name; when the last needed no rewrite (null, {},
# [] under a masked path, or a clean string for the detectors) the walk changed nothing and the
# body went back as received, the first value in clear in it.

@pytest.mark.parametrize("body, secret", [
    (b'{"email":"ann@example.com","email":null}', b"ann@example.com"),
    (b'{"email":"ann@example.com","email":{}}', b"ann@example.com"),
    (b'{"email":"ann@example.com","email":[]}', b"ann@example.com"),
    (b'{"u":{"ssn":"123-45-6789"},"u":{}}', b"123-45-6789"),
    (b'[{"ssn":"123-45-6789","ssn":null}]', b"123-45-6789"),
    # a \u003a escape (a colon after decoding) does not pay for the dropped member
    (b'{"email":"ann@example.com","email":null,"p":"\\u003a"}', b"ann@example.com"),
    (b'{"email":"ann@example.com","email":null,"p\\u003A":1}', b"ann@example.com"),
])
def test_duplicate_name_under_a_path_leaves_no_value_in_clear(body, secret):
    m = _masker(("$.email", "$..ssn"), ())
    out, _ = m.mask_json(body)
    assert secret not in out
    assert orjson.loads(out) == orjson.loads(body)      # what a last-wins parser reads


def test_duplicate_name_hides_no_value_from_the_detectors():
    m = _masker((), ("EMAIL",))
    out, counts = m.mask_json(b'{"note":"write to ann@example.com","note":"nothing here"}')
    assert b"ann@example.com" not in out
    assert orjson.loads(out) == {"note": "nothing here"}


def test_ndjson_line_with_a_duplicate_name():
    m = _masker(("$.email",), ())
    out, _ = m.mask_json(b'{"email":null}\n{"email":"ann@example.com","email":null}\n')
    assert b"ann@example.com" not in out


@pytest.mark.parametrize("body", [
    b'{"email":null,"a":"12:30:00","b":"https://x/y"}',     # colons inside strings
    b'{"a":"\\u003a","email":null}',                         # a colon spelled as an escape
    b'{"a":1.0,"b":1E5,"c":123456789012345678901234567890,"email":null}',
    # deeper than orjson writes, in a part no path walks: it was returned before, and still is
    pytest.param(b'{"email":null,"a":' + b"[" * 300 + b"]" * 300 + b"}", id="deep"),
])
def test_unchanged_document_without_duplicates_is_returned_as_received(body):
    out, counts = _masker(("$.email",), ()).mask_json(body)
    assert out is body and counts == {}


# -- the same through a real gateway: an upstream whose JSON repeats a masked name ---------------

DUP_BODIES = [
    b'{"email": "first@x.io", "email": null}',
    b'{"profile": {"email": "second@x.io"}, "profile": {}}',
]


def _resp(body: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % len(body) + body)


@pytest.fixture(scope="module")
def dupgw(idp):
    from httpfixtures import HttpGateway, RawUpstream, http_config, http_env
    raw = RawUpstream([_resp(b) for b in DUP_BODIES])
    try:
        cfg = http_config(f"http://127.0.0.1:{raw.port}/", idp,
                          mask=[{"paths": ["$.email", "$..email"], "strategy": "redact"}])
        with HttpGateway(cfg, env=http_env()) as g:
            yield g
    finally:
        raw.close()


def test_gateway_sends_no_value_a_duplicate_name_hid(dupgw, idp):
    import httpx
    from httpfixtures import bearer
    # RawUpstream answers its responses in order, one per request
    with httpx.Client(headers=bearer(idp.token()), timeout=20) as c:
        r = c.get(dupgw.url("/0"))
        assert r.status_code == 200, r.text
        assert b"first@" not in r.content and r.json() == {"email": None}
        assert int(r.headers["content-length"]) == len(r.content)
        r = c.get(dupgw.url("/1"))
        assert r.status_code == 200, r.text
        assert b"second@" not in r.content and r.json() == {"profile": {}}


# -- request bodies: a multipart part the upstream decodes into words its bytes do not spell ------
# body_text read multipart bodies as bytes. Go's mime/multipart decodes a quoted-printable part
# as it reads it (DR=4FP is DROP), Commons FileUpload reads a field in its part's charset.

def _multipart(head: bytes, data: bytes) -> bytes:
    return (b"--b\r\nContent-Disposition: form-data; name=\"sql\"\r\n" + head + b"\r\n\r\n"
            + data + b"\r\n--b--\r\n")


MULTIPART = [b"multipart/form-data; boundary=b"]
HIDDEN_PARTS = {
    "quoted-printable": _multipart(b"Content-Transfer-Encoding: quoted-printable",
                                   b"DR=4FP TABLE users"),
    "base64": _multipart(b"content-transfer-encoding:Base64", b"RFJPUCBUQUJMRSB1c2Vycw=="),
    "utf-16le part": _multipart(b"Content-Type: text/plain; charset=utf-16le",
                                "DROP TABLE users".encode("utf-16-le")),
    "unknown part charset": _multipart(b"Content-Type: text/plain; charset=utf-7",
                                       b"+AEQ-ROP TABLE users"),
}


@pytest.mark.parametrize("name", sorted(HIDDEN_PARTS))
def test_a_multipart_part_the_rules_cannot_read_is_refused(name):
    from hoopwire.http.dialect import UnreadableBody, body_text
    with pytest.raises(UnreadableBody):
        body_text(HIDDEN_PARTS[name], MULTIPART, [])


def test_plain_multipart_parts_are_still_read_as_bytes():
    from hoopwire.http.dialect import body_text
    for head in (b"Content-Type: text/plain; charset=UTF-8", b"Content-Transfer-Encoding: 8bit",
                 b"Content-Transfer-Encoding: binary", b"Content-Type: application/octet-stream"):
        body = _multipart(head, b"DROP TABLE users")
        assert body_text(body, MULTIPART, []) is body


@pytest.fixture(scope="module")
def bodygw(upstream, idp):
    from httpfixtures import HttpGateway, http_config, http_env
    cfg = http_config(upstream.url("/"), idp, guardrail=[
        {"name": "no-drop", "patterns": [r"\bdrop\s+table\b"], "scan_literals": True}])
    with HttpGateway(cfg, env=http_env()) as g:
        yield g


def test_gateway_refuses_a_quoted_printable_part_415(bodygw, upstream, idp):
    import httpx
    from httpfixtures import bearer

    def count() -> int:
        return httpx.get(upstream.url("/count"), timeout=10).json().get("requests", 0)
    before = count()
    with httpx.Client(headers=bearer(idp.token()), timeout=10) as c:
        r = c.post(bodygw.url("/echo/q"), content=HIDDEN_PARTS["quoted-printable"],
                   headers={"Content-Type": MULTIPART[0].decode()})
        assert r.status_code == 415, r.text
        assert r.json()["error"] == "unsupported_body"
        # the plain spelling is still judged, and blocked, on the same connection
        r = c.post(bodygw.url("/echo/q"), content=_multipart(b"", b"DROP TABLE users"),
                   headers={"Content-Type": MULTIPART[0].decode()})
        assert r.status_code == 403
    assert count() == before


# -- the relay's verdict cache: what a hit must not carry over (these held; kept as guards) -------

def _get(conn, token: str, path: str, method: str = "GET", **headers) -> int:
    """The status; a 403 must be the guardrail's (`blocked`), not another refusal."""
    from httpfixtures import bearer
    conn.request(method, path, headers={**bearer(token), **headers})
    r = conn.getresponse()
    body = r.read()
    if r.status == 403 and method != "HEAD":
        assert b'"blocked"' in body, body
    return r.status


@pytest.fixture(scope="module")
def groupgw(upstream, idp):
    from httpfixtures import HttpGateway, http_config, http_env
    cfg = http_config(upstream.url("/"), idp, guardrail=[
        {"name": "interns-no-reports", "patterns": [r"^GET /echo/reports/"],
         "groups": ["interns"]},
        {"name": "no-internal-host", "patterns": [r"\nhost: internal\.test\n"]}])
    with HttpGateway(cfg, env=http_env()) as g:
        yield g


def test_a_cached_verdict_is_not_carried_to_another_identity(groupgw, idp):
    import http.client
    conn = http.client.HTTPConnection(*groupgw.address("api"), timeout=20)
    agent, intern = idp.token(groups=("agents",)), idp.token("bob", groups=("agents", "interns"))
    try:
        for _ in range(3):                       # judged once, then from the cache
            assert _get(conn, agent, "/echo/reports/7") == 200
        assert _get(conn, intern, "/echo/reports/7") == 403     # same connection, new identity
        assert _get(conn, agent, "/echo/reports/7") == 200
        assert _get(conn, intern, "/echo/reports/7", method="HEAD") == 403   # HEAD read as GET
    finally:
        conn.close()


def test_a_cached_verdict_is_not_carried_to_another_host(groupgw, idp):
    import http.client
    conn = http.client.HTTPConnection(*groupgw.address("api"), timeout=20)
    token = idp.token()
    try:
        for _ in range(2):
            assert _get(conn, token, "/echo/x") == 200
        for host in ("internal.test", "INTERNAL.test", "internal.test:80", "internal.test."):
            status = _get(conn, token, "/echo/x", Host=host)
            # every pattern is caseless; a port or a trailing dot is the rule's to name: none
            # is answered from the cache entry of the first Host
            assert status == (403 if host.lower() == "internal.test" else 200), host
        assert _get(conn, token, "/echo/x", Host="internal.test") == 403
    finally:
        conn.close()


# -- request bodies: a value spelled in its format's escapes ---------------------------------------
# body rules read a form body and a JSON body as bytes: `sql=DROP+TABLE` (a space to every form
# parser), `DR%4FP`, `"DR\u004fP"` and `"DROP\nTABLE"` are DROP TABLE to the upstream.

SPELLED = [
    (b"sql=DROP+TABLE+users", "application/x-www-form-urlencoded"),
    (b"sql=DR%4FP%20TABLE%20users", "application/x-www-form-urlencoded; charset=utf-8"),
    (b'{"sql": "DR\\u004fP TABLE users"}', "application/json"),
    (b'{"sql": "DROP\\nTABLE users"}', "application/json"),
    (b'[{"DR\\u004fP TABLE users": 1}]', "text/plain"),
]


@pytest.mark.parametrize("body, ctype", SPELLED)
def test_a_value_spelled_in_escapes_is_read_as_the_upstream_reads_it(body, ctype):
    from hoopwire.config import GuardrailConfig
    from hoopwire.http.dialect import DIALECT, request_text
    from hoopwire.policy.engine import PolicyEngine
    rules = DIALECT.implied_guardrails((GuardrailConfig(
        name="no-drop", patterns=(r"\bdrop\s+table\b",), scan_literals=True),))
    pol = PolicyEngine(rules, views=DIALECT.statement_views, packs=DIALECT.packs,
                       classifier=DIALECT.classifier(rules), cache_size=0).for_groups(())

    class Head:
        method = b"POST"
        headers = [(b"Host", b"api.test"), (b"Content-Type", ctype.encode())]
    verdict = pol.check(request_text(Head, b"/echo/q", body))
    assert verdict is not None and verdict.rule == "no-drop"


def test_a_plain_body_still_comes_back_as_sent():
    from hoopwire.http.dialect import body_text
    for body, ctype in ((b'{"q": "select 1"}', b"application/json"),
                        (b"q=select", b"application/x-www-form-urlencoded")):
        assert body_text(body, [ctype], []) is body


def test_gateway_blocks_a_form_or_json_escaped_drop(bodygw, idp):
    import httpx
    from httpfixtures import bearer
    with httpx.Client(headers=bearer(idp.token()), timeout=10) as c:
        for body, ctype in SPELLED:
            r = c.post(bodygw.url("/echo/q"), content=body, headers={"Content-Type": ctype})
            assert r.status_code == 403 and "no-drop" in r.json()["message"], body
        r = c.post(bodygw.url("/echo/q"), content=b"sql=select+1",
                   headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert r.status_code == 200
