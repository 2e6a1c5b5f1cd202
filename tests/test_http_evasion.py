"""Evasions of the HTTP guardrails through a body's encoding or a trailer section.

Bodies: a rule that reads bodies reads them as the upstream will, in their charset
(hoopwire.http.dialect.body_text): `D\\0R\\0O\\0P\\0` is DROP. Bodies the rules cannot read
(compressed, an unknown charset, bytes invalid in it, declarations that disagree) are refused 415
before any rule runs, and only while a body rule applies. Trailers: every field the guardrail
text reads is refused as a trailer (400 and close), since a trailer arrives after the head was
judged and forwarded.
"""

from __future__ import annotations

import gzip
import json
import zlib

import httpx
import pytest

from hoopwire.config import GuardrailConfig
from hoopwire.http._parse import END, ERROR, HEAD, RequestParser
from hoopwire.http.dialect import (DIALECT, SELECTED_HEADERS, UnreadableBody, body_text,
                                   canonical_target, request_text)
from hoopwire.policy.engine import PolicyEngine
from httpfixtures import (HttpGateway, bearer, http_config, http_env, parse_responses,  # noqa: F401
                          raw_exchange, upstream)

pytestmark = pytest.mark.timeout(120)

NO_DROP = GuardrailConfig(name="no-drop", patterns=(r"\bdrop\s+table\b",), scan_literals=True)
SQL = '{"sql": "DROP TABLE users"}'


def _engine(*rules: GuardrailConfig):
    """The engine as an http connection builds it (hoopwire.core.gateway._build_policy)."""
    rules = DIALECT.implied_guardrails(tuple(rules))
    return PolicyEngine(rules, views=DIALECT.statement_views, packs=DIALECT.packs,
                        classifier=DIALECT.classifier(rules), cache_size=0).for_groups(())


POLICY = _engine(NO_DROP)


def _text(body: bytes, *headers: bytes) -> bytes:
    """The request text of a POST with `headers` and `body`, as the relay builds it."""
    data = (b"POST /q HTTP/1.1\r\nHost: api.test\r\n" + b"".join(h + b"\r\n" for h in headers)
            + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    events = RequestParser().feed(data)
    assert events[0][0] == HEAD, events
    head = events[0][1]
    got = b"".join(e[2] for e in events if e[0] == 2)
    return request_text(head, canonical_target(head.target), got)


def _verdict(body: bytes, *headers: bytes):
    v = POLICY.check(_text(body, *headers))
    return v and v.rule


# -- bodies in another charset are read in it ---------------------------------------------------

READ_IN_CHARSET = [
    ("utf-16-bom", SQL.encode("utf-16"), (b"Content-Type: application/json",)),
    ("utf-16le-sniffed", SQL.encode("utf-16-le"), (b"Content-Type: application/json",)),
    ("utf-16be-sniffed", SQL.encode("utf-16-be"), (b"Content-Type: application/json",)),
    ("utf-32le-sniffed", SQL.encode("utf-32-le"), (b"Content-Type: application/json",)),
    ("utf-32be-sniffed", SQL.encode("utf-32-be"), (b"Content-Type: application/json",)),
    ("utf-32-bom", SQL.encode("utf-32"), (b"Content-Type: application/json",)),
    ("utf-16-no-type", SQL.encode("utf-16-le"), ()),
    ("utf-16le-declared", SQL.encode("utf-16-le"),
     (b"Content-Type: application/json; charset=UTF-16LE",)),
    ("utf-16-declared-be-default", SQL.encode("utf-16-be"),
     (b"Content-Type: text/plain; charset=utf-16",)),
    ("utf-16-declared-le-no-bom", SQL.encode("utf-16-le"),     # .NET's reading of "utf-16"
     (b"Content-Type: text/plain; charset=utf-16",)),
    ("utf-16-declared-quoted", SQL.encode("utf-16"),
     (b'Content-Type: text/plain; charset="utf-16"',)),
    ("utf-16-declared-on-octet-stream", SQL.encode("utf-16-be"),
     (b"Content-Type: application/octet-stream; charset=utf-16be",)),
    ("utf-16-xml", '<?xml version="1.0" encoding="UTF-16"?><q>DROP TABLE x</q>'.encode("utf-16"),
     (b"Content-Type: application/xml",)),
    ("utf-16-form", "q=DROP TABLE x".encode("utf-16"),
     (b"Content-Type: application/x-www-form-urlencoded",)),
    ("latin-1", "q=DROP TABLE caf\xe9".encode("latin-1"),
     (b"Content-Type: text/plain; charset=iso-8859-1",)),
    ("koi8-r", "DROP TABLE \u0431".encode("koi8-r"),
     (b"Content-Type: text/plain; charset=KOI8-R",)),
    # a Shift_JIS lead byte swallows the D: "ROP" in the charset, "DROP" to a byte reader
    ("shift-jis-trail-byte", b"\x81DROP TABLE x", (b"Content-Type: text/plain; charset=shift_jis",)),
    ("big5-trail-byte", b"\xa4DROP TABLE x", (b"Content-Type: text/plain; charset=big5",)),
]


@pytest.mark.parametrize("name,body,headers", READ_IN_CHARSET, ids=[c[0] for c in READ_IN_CHARSET])
def test_a_body_is_judged_in_its_charset(name, body, headers):
    assert _verdict(body, *headers) == "no-drop"


def test_utf8_bodies_are_scanned_as_sent():
    body = SQL.encode()
    assert body_text(body, [b"application/json"], []) is body      # no copy on the common path
    assert body_text(b"\xef\xbb\xbf" + body, [b"application/json; charset=utf-8"], []) == body
    assert _verdict(b"{}", b"Content-Type: application/json") is None
    assert _verdict("caf\xe9".encode("utf-16"), b"Content-Type: text/plain") is None


REFUSED = [
    ("gzip", gzip.compress(SQL.encode()), (b"Content-Encoding: gzip",)),
    ("deflate", zlib.compress(SQL.encode()), (b"Content-Encoding: deflate",)),
    ("br-after-identity", b"x", (b"Content-Encoding: identity, br",)),
    ("second-encoding-field", b"x", (b"Content-Encoding: identity", b"Content-Encoding: gzip")),
    ("utf-7", b"+AEQ-ROP TABLE", (b"Content-Type: text/plain; charset=utf-7",)),
    ("unknown", b"x", (b"Content-Type: text/plain; charset=x-hoopwire",)),
    ("python-only-codec", b"\\x44ROP TABLE", (b"Content-Type: text/plain; charset=unicode_escape",)),
    ("punycode", b"x", (b"Content-Type: text/plain; charset=punycode",)),
    ("iso-2022-jp", b"\x1b$BDROP", (b"Content-Type: text/plain; charset=iso-2022-jp",)),
    ("odd-length-utf-16", SQL.encode("utf-16-le") + b"\x00",
     (b"Content-Type: application/json; charset=utf-16le",)),
    ("bad-utf-16-surrogate", b"\x00\xd8\x41\x00", (b"Content-Type: text/plain; charset=utf-16le",)),
    ("be-bom-on-utf-16le", b"\xfe\xff" + SQL.encode("utf-16-le"),
     (b"Content-Type: application/json; charset=utf-16le",)),
    ("bom-disagrees", SQL.encode("utf-16"), (b"Content-Type: application/json; charset=utf-8",)),
    ("two-charsets", b"x", (b"Content-Type: text/plain; charset=utf-8; charset=utf-16",)),
    ("two-content-types", b"x", (b"Content-Type: text/plain", b"Content-Type: application/json")),
    ("nul-nul-json", b"\x00\x00{\x00", (b"Content-Type: application/json",)),
    ("xml-ebcdic", '<?xml version="1.0" encoding="IBM037"?><q>DROP TABLE x</q>'.encode("cp037"),
     (b"Content-Type: application/xml",)),
    ("xml-declaration-disagrees", b'<?xml version="1.0" encoding="shift_jis"?><q/>',
     (b"Content-Type: application/xml",)),
    ("xml-declaration-disagrees-with-charset",
     '<?xml version="1.0" encoding="utf-8"?><q/>'.encode("utf-16"),
     (b"Content-Type: text/xml; charset=utf-16",)),
]


@pytest.mark.parametrize("name,body,headers", REFUSED, ids=[c[0] for c in REFUSED])
def test_bodies_the_rules_cannot_read_are_refused(name, body, headers):
    with pytest.raises(UnreadableBody) as e:
        _text(body, *headers)
    assert e.value.status == 415 and e.value.code == "unsupported_body"


def test_binary_and_multipart_bodies_are_scanned_as_bytes():
    # a type no reader sniffs: the bytes are what the upstream reads
    assert body_text(b"\x00\x01DROP", [b"application/octet-stream"], []) == b"\x00\x01DROP"
    assert body_text(b"\xff\xfeDROP", [b"image/png"], []) == b"\xff\xfeDROP"
    multipart = b"--b\r\nContent-Type: text/plain\r\n\r\n\xff\xfe\x00\x00\r\n--b--\r\n"
    assert body_text(multipart, [b"multipart/form-data; charset=utf-8; boundary=b"], []) \
        is multipart
    assert body_text(b"x", [b"text/plain"], [b"identity"]) == b"x"


def test_without_a_body_rule_nothing_is_decoded():
    """The relay passes no body to request_text unless a rule reads bodies: a gzip upload
    to a route without one is nobody's business."""
    data = (b"POST /q HTTP/1.1\r\nHost: a\r\nContent-Encoding: gzip\r\n"
            b"Content-Type: text/plain; charset=utf-7\r\n\r\n")
    head = RequestParser().feed(data)[0][1]
    assert request_text(head, b"/q", None).startswith(b"POST /q\n")


# -- trailers -----------------------------------------------------------------------------------

def _trailer_events(name: bytes):
    return RequestParser().feed(
        b"POST /q HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\n" + name + b": DELETE\r\n\r\n")


@pytest.mark.parametrize("name", SELECTED_HEADERS + (
    b"X-HTTP-Method-Override", b"X_HTTP_Method_Override", b"x_original_url", b"Forwarded",
    b"X-Forwarded-For", b"X-Request-Id"))
def test_a_field_the_rules_read_is_refused_as_a_trailer(name):
    events = _trailer_events(name)
    assert events[-1][0] == ERROR and events[-1][1] == 400, events
    # nothing of the trailer line was handed out to be forwarded
    assert name not in b"".join(e[1] for e in events if e[0] == 2)


def test_other_trailers_pass():
    events = _trailer_events(b"X-Checksum")
    assert events[-1] == (END, [(b"X-Checksum", b"DELETE")])


# -- end to end ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gw(upstream, idp):
    cfg = http_config(upstream.url("/"), idp, guardrail=[
        {"name": "no-drop", "patterns": [r"\bdrop\s+table\b"], "scan_literals": True},
        {"name": "no-delete", "patterns": [r"^DELETE "]}])
    with HttpGateway(cfg, env=http_env()) as g:
        yield g


def _count(upstream) -> int:
    return httpx.get(upstream.url("/count"), timeout=10).json().get("requests", 0)


def test_a_utf16_body_is_blocked_and_a_packed_one_refused_415(gw, upstream, idp):
    before = _count(upstream)
    with httpx.Client(headers=bearer(idp.token()), timeout=10) as c:
        for body in (SQL.encode("utf-16"), SQL.encode("utf-16-le"), SQL.encode("utf-32-be")):
            r = c.post(gw.url("/echo/q"), content=body,
                       headers={"Content-Type": "application/json"})
            assert r.status_code == 403 and '"no-drop"' in r.json()["message"], body
        r = c.post(gw.url("/echo/q"), content=gzip.compress(SQL.encode()),
                   headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
        assert r.status_code == 415
        doc = r.json()
        assert doc["error"] == "unsupported_body" and "Content-Encoding" in doc["message"]
        assert r.headers.get("connection") != "close"      # the body was read whole
        r = c.post(gw.url("/echo/q"), content=b"+ADw-script+AD4-",
                   headers={"Content-Type": "text/plain; charset=utf-7"})
        assert r.status_code == 415 and "utf-7" in r.json()["message"]
        assert _count(upstream) == before                  # none of them reached it
        # the same connection goes on: a readable body is forwarded in its charset as sent
        body = '{"q": "select 1"}'.encode("utf-16")
        r = c.post(gw.url("/echo/q"), content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 200
    assert _count(upstream) == before + 1


def test_a_method_override_trailer_is_refused_and_closes(gw, idp):
    data = (b"POST /echo/q HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer "
            + idp.token().encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nok\r\n0\r\nX-HTTP-Method-Override: DELETE\r\n\r\n")
    out = raw_exchange(gw.address("api"), data)          # reads until the gateway closes
    [(status, headers, body)] = parse_responses(out)
    assert status == 400 and headers["connection"] == "close"
    assert json.loads(body)["error"] == "bad_request"
    # the same request with the override in its head is judged as DELETE
    data = data.replace(b"Transfer-Encoding: chunked\r\n",
                        b"X-HTTP-Method-Override: DELETE\r\nTransfer-Encoding: chunked\r\n")
    data = data.replace(b"0\r\nX-HTTP-Method-Override: DELETE\r\n\r\n", b"0\r\n\r\n")
    [(status, _, body)] = parse_responses(raw_exchange(gw.address("api"), data, expect=1))
    assert status == 403 and '"no-delete"' in json.loads(body)["message"]


def test_a_packed_body_passes_where_no_rule_reads_bodies(upstream, idp):
    """A connection without body rules forwards a packed body untouched."""
    cfg = http_config(upstream.url("/"), idp, guardrail=[{"name": "no-delete",
                                                          "patterns": [r"^DELETE "]}])
    with HttpGateway(cfg, env=http_env()) as g:
        packed = gzip.compress(b"hello")
        r = httpx.post(g.url("/echo/q"), content=packed, timeout=10,
                       headers={**bearer(idp.token()), "Content-Encoding": "gzip"})
        assert r.status_code == 200



# -- header names spelled with `_` ---------------------------------------------------------------

@pytest.mark.parametrize("header", [b"X_HTTP_Method_Override: DELETE", b"x_http_method: DELETE",
                                    b"X_Method-Override: DELETE"])
def test_an_override_spelled_with_underscores_is_read(header):
    """CGI and WSGI servers put `X_HTTP_Method_Override` and `X-HTTP-Method-Override` in one
    environ key: the rules read both as the override."""
    policy = _engine(GuardrailConfig(name="no-delete", patterns=(r"^DELETE ",)))
    head = RequestParser().feed(b"POST /q HTTP/1.1\r\nHost: a\r\n" + header + b"\r\n\r\n")[0][1]
    v = policy.check(request_text(head, b"/q", None))
    assert v is not None and v.rule == "no-delete"
