"""HTTP guardrails in-process: the canonical target (hoopwire.http.dialect.canonical_target), the
request text the rules scan, its readings, masking for logs, and the packs.

No server here: heads come from the real request parser (hoopwire.http._parse) and verdicts from
the real engine (Hyperscan). tests/test_http_guardrails.py drives the same through the gateway.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hoopwire.config import GuardrailConfig
from hoopwire.http._parse import HEAD, RequestParser
from hoopwire.http.dialect import (DIALECT, UNREADABLE, BadTarget, UnreadableBody,
                                   canonical_target, mask_literals, request_reads_body,
                                   request_text, statement_views)
from hoopwire.http.packs import PACKS
from hoopwire.policy.engine import PolicyEngine


def engine(*rules: GuardrailConfig) -> PolicyEngine:
    """The engine as an http connection builds it (hoopwire.core.gateway._build_policy)."""
    rules = DIALECT.implied_guardrails(tuple(rules))
    return PolicyEngine(rules, views=DIALECT.statement_views, packs=DIALECT.packs,
                        classifier=DIALECT.classifier(rules), cache_size=0)


def rule(name: str, *patterns: str, **kw) -> GuardrailConfig:
    return GuardrailConfig(name=name, patterns=patterns, **kw)


def parser_refuses(line: bytes, *headers: bytes) -> bool:
    p = RequestParser(max_line=8192, max_header_bytes=65536, max_headers=100)
    events = p.feed(line + b" HTTP/1.1\r\nHost: a\r\n" + b"".join(h + b"\r\n" for h in headers)
                    + b"\r\n")
    return events[0][0] != HEAD and events[0][1] in (400, 501)


def parse(raw: bytes):
    """(head, body) of one request as the real parser reads it."""
    p = RequestParser(max_line=8192, max_header_bytes=65536, max_headers=100)
    events = p.feed(raw)
    assert events and events[0][0] == HEAD, events
    body = b"".join(e[2] for e in events if e[0] == 2)
    return events[0][1], body


def request(line: bytes, *headers: bytes, body: bytes | None = None):
    """The request text of `line` (METHOD SP target) with `headers`, as the relay builds it."""
    hs = b"".join(h + b"\r\n" for h in (b"Host: api.test",) + headers)
    if body is not None:
        hs += b"Content-Length: %d\r\n" % len(body)
    head, got = parse(line + b" HTTP/1.1\r\n" + hs + b"\r\n" + (body or b""))
    return request_text(head, canonical_target(head.target), got if body is not None else None)


# -- canonical_target ---------------------------------------------------------------------------

ACCEPTED = [
    (b"/", b"/"),
    (b"/v1/users/42?limit=10", b"/v1/users/42?limit=10"),
    (b"/v1/%75sers/1", b"/v1/users/1"),                       # unreserved escapes decoded
    (b"/v1/%75%73%65%72%73/1", b"/v1/users/1"),
    (b"/%7Euser/%2d%2E%5f", b"/~user/-._"),
    (b"/v1//users/1", b"/v1/users/1"),                        # '//' collapsed
    (b"//v1///users//", b"/v1/users/"),
    (b"/v1/x/../users/1", b"/v1/users/1"),                    # dot segments resolved
    (b"/v1/x/%2e%2e/users/1", b"/v1/users/1"),
    (b"/v1/x/.%2E/users/1", b"/v1/users/1"),
    (b"/v1/./users/./1", b"/v1/users/1"),
    (b"/a/b/..", b"/a/"),
    (b"/a/b/.", b"/a/b/"),
    (b"/..a/b..c/.d", b"/..a/b..c/.d"),                       # dots inside a name are a name
    (b"/V1/Users/1", b"/V1/Users/1"),                         # case kept (rules ignore it)
    (b"/a%2cb/%3d%40%3a%21%24%26%27%28%29%2a", b"/a,b/=@:!$&'()*"),  # sub-delims decoded
    (b"/a+b/c%2bd", b"/a+b/c%2Bd"),                           # '+' and %2B each kept
    (b"/a%20b", b"/a%20b"),
    (b"/a%7cb/{c}/<d>", b"/a%7Cb/%7Bc%7D/%3Cd%3E"),             # one spelling of the same byte
    (b"/caf\xc3\xa9", b"/caf%C3%A9"),                         # raw UTF-8 escaped
    (b"/caf%c3%a9", b"/caf%C3%A9"),
    (b"/x?a=%41%2b&b=%7e&c=%2F&d=%25&e", b"/x?a=A%2B&b=~&c=%2F&d=%25&e"),
    (b"/x?q=caf\xc3\xa9&r=;s", b"/x?q=caf%C3%A9&r=;s"),       # query: ';' is data, kept
    (b"/x?a=1&a=2&b[]=3", b"/x?a=1&a=2&b[]=3"),               # order and brackets kept
    (b"/x/../y?p=/../z", b"/y?p=/../z"),                      # the query is not a path
    (b"/x?", b"/x?"),
    (b"http://api.test/v1/users?x=1", b"/v1/users?x=1"),      # absolute-form: path and query
    (b"HTTPS://api.test", b"/"),
    (b"http://api.test?x", b"/?x"),
]

REFUSED = [
    (b"*", "not a path"),
    (b"v1/users", "not a path"),
    (b"/v1/users;x/1", "';' path parameter"),                 # Tomcat: /v1/users/1
    (b"/admin;/", "';' path parameter"),
    (b"/v1/users;jsessionid=1", "';' path parameter"),
    (b"/v1/users%3bx/1", "encoded ';'"),
    (b"/a%2Fb", "encoded '/'"),
    (b"/a%2fb", "encoded '/'"),
    (b"/a%5Cb", "encoded '\\'"),
    (b"/a\\b", "'\\' in the path"),
    (b"/a%3Fb", "encoded '?'"),
    (b"/a%23b", "encoded '#'"),
    (b"/a#frag", "fragment"),
    (b"/a?b#frag", "fragment"),
    (b"/%252e%252e/admin", "double encoding"),
    (b"/a%00b", "control"),
    (b"/a%0d%0ab", "control"),
    (b"/a%7f", "control"),
    (b"/a%zz", "two hex digits"),
    (b"/a%4", "two hex digits"),
    (b"/a%u002e", "two hex digits"),                          # IIS's %u encoding
    (b"/x?a=%g0", "two hex digits"),
    (b"/..", "above the root"),
    (b"/a/../../b", "above the root"),
    (b"/%2e%2e/etc", "above the root"),
    (b"/admin.", "ends in '.'"),                              # Windows: /admin
    (b"/admin./x", "ends in '.'"),
    (b"/a/...", "ends in '.'"),
    (b"/admin%20", "ends in '.' or a space"),
    (b"/%c0%ae%c0%ae/x", "not valid UTF-8"),                  # overlong '.'
    (b"/a\xff", "not valid UTF-8"),
    (b"/cafe%CC%81", "NFC"),                                  # e + combining acute
    (b"/adm%C4%B1n", "U+0131"),                               # dotless i: ASP.NET reads ADMIN
    (b"/%E2%84%AAey", "NFC"),                                 # KELVIN SIGN: NFC makes it K
    (b"/a%EF%BC%8Fb", "U+FF0F"),                              # fullwidth solidus, NFKC '/'
    (b"/%C5%BFecret", "U+017F"),                              # long s upper-cases to S
    (b"/%E2%84%AB", "NFC"),                                   # ANGSTROM SIGN
    (b"/stra%C3%9Fe", "U+00DF"),                              # sharp s upper-cases to SS
    (b"http://h#x/", "fragment or bad authority"),
    (b"ftp://h/x", "not a path"),
]


@pytest.mark.parametrize("target, expected", ACCEPTED)
def test_canonical_target(target, expected):
    assert canonical_target(target) == expected
    assert canonical_target(expected) == expected            # a fixed point


@pytest.mark.parametrize("target, reason", REFUSED)
def test_canonical_target_refuses(target, reason):
    with pytest.raises(BadTarget, match=re.escape(reason)):
        canonical_target(target)


def _reading(target: bytes) -> tuple[list[bytes], bytes]:
    """What an upstream that decodes first and then resolves dots reads: the path's segments
    and the query (as sent)."""
    path, _, query = target.partition(b"?")
    out = []
    for seg in unquote_to_bytes(path).split(b"/"):
        if seg in (b"", b"."):
            continue
        if seg == b"..":
            out.pop()
            continue
        out.append(seg)
    return out, unquote_to_bytes(query)


_ALPHABET = st.sampled_from([b"a", b"A", b"/", b".", b"..", b"%2e", b"%2E", b"%41", b"%25",
                             b"%2F", b";", b"\\", b"%20", b"+", b"%2B", b"%C3%A9", b"\xc3\xa9",
                             b"%C4%B1", b"~", b"%7e", b"?", b"&", b"=", b"%3F", b"#", b"{",
                             b"%00", b"%zz", b"@", b":", b",", b"%3B"])


@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(_ALPHABET, max_size=12))
@example([b"/", b"a", b"/", b"%2e%2e", b"/", b"b"])
@example([b"/", b"a", b"?", b"/", b"..", b"/"])
def test_canonical_target_has_one_reading(parts):
    """Every accepted target: canonical is a fixed point; its path needs no dot resolving,
    collapsing or further decoding of unreserved bytes; an upstream that decodes before
    resolving dots reads the same path from it as from the client's spelling; and the fast
    path agrees with the byte-by-byte one."""
    target = b"/" + b"".join(parts)
    try:
        out = canonical_target(target)
    except BadTarget:
        return
    assert canonical_target(out) == out
    path, _, query = out.partition(b"?")
    assert b"//" not in path and b"/./" not in path + b"/" and b"/../" not in path + b"/"
    assert not re.search(rb"%(?:[0-9A-F][a-f]|[a-f][0-9A-Fa-f])", out)   # hex upper-case
    assert not re.search(rb"%(?:4[1-9A-F]|5[0-9A]|6[1-9A-F]|7[0-9A]|3[0-9]|2D|2E|5F|7E)", out)
    assert not re.search(rb"[\\;#\x00-\x20\x7f-\xff]", path)
    decoded = unquote_to_bytes(path)
    assert b"\\" not in decoded and b";" not in decoded and b"?" not in decoded
    assert decoded.count(b"/") == path.count(b"/")          # no separator hides in an escape
    assert _reading(out)[0] == _reading(target.partition(b"?")[0])[0]
    text = decoded.decode("utf-8")
    assert unicodedata.is_normalized("NFC", text)
    from hoopwire.http import dialect
    assert dialect._canonical_path(path) == path
    # the fast path's answer is the byte-by-byte one's
    in_path, sep, in_query = target.partition(b"?")
    slow = dialect._canonical_path(in_path)
    assert out == (slow + b"?" + dialect._canonical_query(in_query) if sep else slow)


# -- the request text and its readings ----------------------------------------------------------

def test_request_text_layout():
    text = request(b"POST /v1/users/%34%32?limit=10",
                   b"Content-Type: application/json", b"Authorization: Bearer secret-token",
                   b"X-Forwarded-Prefix: /base", b"X-Other: 1", body=b'{"a":1}')
    assert text == (b"POST /v1/users/42?limit=10\n"
                    b"host: api.test\ncontent-type: application/json\n"
                    b"x-forwarded-prefix: /base\n\n"
                    b'{"a":1}')
    # no body given (no rule reads bodies): no separator
    assert request(b"GET /x") == b"GET /x\nhost: api.test\n"


def test_url_headers_are_canonical_or_refused():
    assert b"x-original-url: /admin\n" in request(b"GET /", b"X-Original-URL: /x/../%61dmin")
    assert b"x-rewrite-url: /admin?a\n" in request(b"GET /",
                                                   b"X-Rewrite-URL: http://h/admin?a")
    with pytest.raises(BadTarget):
        request(b"GET /", b"X-Original-URL: /admin;x")


def views(text: bytes, want_full=False):
    code, full, ambiguous = statement_views(text, want_full)
    assert ambiguous is False
    return code, full


def test_readings():
    code, full = views(request(b"POST /v1/users/1", b"X-HTTP-Method-Override: delete"))
    assert [c.split(b"\n")[0] for c in code] == [b"POST /v1/users/1", b"DELETE /v1/users/1"]
    assert full is None
    code, _ = views(request(b"HEAD /v1/x"))
    assert [c.split(b"\n")[0] for c in code] == [b"HEAD /v1/x", b"GET /v1/x"]
    code, _ = views(request(b"GET /p", b"X-Original-URL: /admin", b"X-Method-Override: PUT"))
    assert sorted(c.split(b"\n")[0] for c in code) == [b"GET /admin", b"GET /p",
                                                        b"PUT /admin", b"PUT /p"]
    code, _ = views(request(b"POST /u?_method=de%6Cete+&x=1"))
    assert [c.split(b"\n")[0] for c in code] == [b"POST /u?_method=delete+&x=1",
                                                 b"DELETE /u?_method=delete+&x=1"]
    # a request without readings: one view, and the full view is the same object
    code, full = views(request(b"GET /x"), want_full=True)
    assert len(code) == 1 and full[0] is code[0]


def test_body_views():
    text = request(b"POST /u/1", b"Content-Type: application/x-www-form-urlencoded",
                   body=b"a=1&_method=DELETE")
    code, full = views(text)
    assert code == [text.split(b"\n\n")[0] + b"\n"] and full is None   # body out of the code view
    code, full = views(text, want_full=True)
    assert [f.split(b"\n")[0] for f in full] == [b"POST /u/1", b"DELETE /u/1"]
    assert all(f.endswith(b"\n\na=1&_method=DELETE") for f in full)
    form = b"Content-Type: application/x-www-form-urlencoded"
    for headers, body in (
            ((), b'{"_method": "delete"}'),
            ((b"Content-Type: application/json",), b'{"a": "\\u00e9", "\\u005fmethod": "DELETE"}'),
            ((b"Content-Type: multipart/form-data; boundary=b",),
             b'--b\r\nContent-Disposition: form-data; name="_method"\r\n\r\nDELETE\r\n--b--'),
            ((form,), b"a=1&%5Fmethod=DEL%45TE"),
            ((form,), b"_method=delete")):
        _, full = views(request(b"POST /u/1", *headers, body=body), want_full=True)
        assert b"DELETE /u/1" in [f.split(b"\n")[0] for f in full], body


def test_readings_are_bounded():
    headers = [b"X-HTTP-Method-Override: M%d" % i for i in range(20)]
    code, full = views(request(b"POST /u", *headers, body=b"x"), want_full=True)
    assert len(code) == 2 and code[1] is UNREADABLE and full[1] is UNREADABLE
    v = engine(rule("any", r"^nothing")).for_groups(()).check(request(b"POST /u", *headers))
    assert v.rule == "unreadable-request"


# -- rules through the engine: evasions ---------------------------------------------------------

NO_DELETE = rule("no-user-delete", r"^DELETE /v1/users/")

BLOCKED = [
    (b"DELETE /v1/users/1",),
    (b"delete /v1/users/1",),                                 # method upper-cased
    (b"POST /v1/users/1", b"X-HTTP-Method-Override: DELETE"),
    (b"POST /v1/users/1", b"x-http-method: Delete"),
    (b"POST /v1/users/1", b"X-Method-Override: delete"),
    (b"POST /v1/users/1?_method=DELETE",),
    (b"POST /v1/users/1?x=1&_m%65thod=delete",),
    (b"DELETE /v1/%75sers/1",),
    (b"DELETE /v1//users/1",),
    (b"DELETE //v1/users/1",),
    (b"DELETE /v1/x/../users/1",),
    (b"DELETE /v1/x/%2E%2e/users/1",),
    (b"DELETE /V1/USERS/1",),                                 # rules ignore case
    (b"DELETE /v1/./users/1",),
    (b"DELETE http://api.test/v1/users/1",),
    (b"POST /v1/other", b"X-HTTP-Method-Override: DELETE", b"X-Original-URL: /v1/users/1"),
    (b"POST /v1/other", b"X-HTTP-Method-Override: DELETE", b"X-Rewrite-URL: /v1/users/1"),
]


@pytest.mark.parametrize("req", BLOCKED, ids=lambda r: b" + ".join(r).decode())
def test_rule_blocks_every_spelling(req):
    """Blocked by the rule, or refused by the parser before any rule runs (it answers a
    lower-case method 501)."""
    if parser_refuses(*req):
        return
    policy = engine(NO_DELETE).for_groups(())
    verdict = policy.check(request(*req))
    assert verdict is not None and verdict.rule == "no-user-delete" and verdict.action == "block"


@pytest.mark.parametrize("req", [
    (b"DELETE /v1/users;x/1",), (b"DELETE /v1/users%2F1",), (b"DELETE /v1\\users/1",),
    (b"DELETE /v1/users./1",), (b"DELETE /v1/user%73%3B/1",),
    (b"POST /x", b"X-HTTP-Method-Override: DELETE", b"X-Original-URL: /v1/users;/1"),
], ids=lambda r: b" + ".join(r).decode())
def test_ambiguous_spellings_never_reach_the_rules(req):
    """Refused 400 before any rule runs: by the parser (a raw '\\') or by canonical_target."""
    p = RequestParser(max_line=8192, max_header_bytes=65536, max_headers=100)
    events = p.feed(req[0] + b" HTTP/1.1\r\nHost: a\r\n" + b"".join(h + b"\r\n" for h in req[1:])
                    + b"\r\n")
    if events[0][0] != HEAD:
        assert events[0][1] == 400
        return
    with pytest.raises(BadTarget):
        request_text(events[0][1], canonical_target(events[0][1].target))


@pytest.mark.parametrize("req", [
    (b"GET /v1/users/1",), (b"DELETE /v1/usersx/1",), (b"POST /v1/users/1",),
    (b"POST /v1/users/1?m=DELETE",), (b"POST /v1/users/1", b"X-Other: DELETE"),
    (b"DELETE /v2/users/1",),
], ids=lambda r: b" + ".join(r).decode())
def test_rule_passes_other_requests(req):
    assert engine(NO_DELETE).for_groups(()).check(request(*req)) is None


def test_body_rules():
    policy = engine(NO_DELETE, rule("no-secret-body", r"\bsecret\b", scan_literals=True)
                    ).for_groups(())
    assert request_reads_body(policy)
    assert not request_reads_body(engine(NO_DELETE).for_groups(()))
    assert not request_reads_body(None)

    def check(*headers, body):
        v = policy.check(request(b"POST /v1/users/1", *headers, body=body))
        return v and v.rule

    assert check(body=b'{"note": "a secret"}') == "no-secret-body"
    assert check(body=b'{"note": "fine"}') is None
    # a form field claiming DELETE is judged as DELETE once bodies are read
    assert check(b"Content-Type: application/x-www-form-urlencoded",
                 body=b"_method=delete") == "no-user-delete"
    # bodies the rules cannot read as the upstream will: refused 415 before any rule runs
    for headers, body in (((b"Content-Encoding: gzip",), b"\x1f\x8b..."),
                          ((b"Content-Encoding: identity, br",), b"x"),
                          ((b"Content-Encoding: identity", b"Content-Encoding: deflate"), b"x"),
                          ((b"Content-Type: application/json; charset=\"csUnicode\"",), b"{}"),
                          ((b"Content-Type: text/plain; charset=UTF-7",), b"+ADw-")):
        with pytest.raises(UnreadableBody):
            check(*headers, body=body)
    # UTF-16/32 bodies are read in their charset (tests/test_http_evasion.py has the rest)
    for headers, body in (((b"Content-Type: application/json; charset=utf-16le",),
                           '{"note": "secret"}'.encode("utf-16-le")),
                          ((), '{"note": "secret"}'.encode("utf-16-le")),
                          ((), '{"note": "secret"}'.encode("utf-16-be")),
                          ((), '{"note": "secret"}'.encode("utf-16")),
                          ((), '{"note": "secret"}'.encode("utf-32-le"))):
        assert check(*headers, body=body) == "no-secret-body", (headers, body)
    assert check(b"Content-Encoding: identity", body=b"ok") is None
    assert check(b"Content-Type: application/json; charset=UTF-8", body=b"{}") is None
    assert check(b"Content-Type: text/plain; charset=iso-8859-1", body=b"caf\xe9") is None
    assert check(b"Content-Type: application/gzip", body=b"\x1f\x8b\x08\x00") is None
    # without a body rule, encodings are nobody's business
    assert engine(NO_DELETE).for_groups(()).check(
        request(b"POST /x", b"Content-Encoding: gzip")) is None


# -- packs --------------------------------------------------------------------------------------

PACK_CASES = {
    "http-write-methods": (
        [b"POST /x", b"PUT /x", b"patch /x", b"DELETE /x", b"MKCOL /x", b"PURGE /x",
         b"GETS /x", b"GE /x", b"GET-X /x", b"HEADX /x",
         (b"GET /x", b"X-HTTP-Method-Override: PATCH"), b"GET /x?_method=PUT"],
        [b"GET /x", b"HEAD /x", b"OPTIONS /x", (b"GET /x?q=POST",),
         (b"GET /x", b"X-HTTP-Method-Override: GET")]),
    "http-destructive": (
        [b"DELETE /x", b"delete /", (b"POST /x", b"X-HTTP-Method: DELETE"),
         b"POST /x?_method=delete"],
        [b"GET /delete", b"POST /x/delete", b"DELETEX /x", b"GET /x?a=DELETE"]),
    "http-admin-paths": (
        [b"GET /admin", b"GET /admin/", b"GET /Admin/users", b"GET /v1/admin?x", b"GET /admin.php",
         b"GET /adm%69n", b"GET //admin", b"GET /x/../admin", b"GET /actuator/env",
         b"GET /actuator", b"GET /debug/pprof/heap", b"GET /.env", b"GET /x/.env.local",
         b"GET /.git/config", b"GET /server-status", b"GET /server-info?x",
         b"GET /manager/html", b"GET /jolokia/read", b"GET /_profiler", b"GET /wp-admin/",
         b"GET /phpinfo.php", b"GET /elmah.axd", b"POST /_admin/x", b"GET /administrator",
         (b"GET /public", b"X-Original-URL: /admin"),
         (b"GET /public", b"X-Rewrite-URL: /actuator")],
        [b"GET /administration", b"GET /adminx", b"GET /v1/debugger", b"GET /x?page=admin",
         b"GET /x?next=/admin", b"GET /manager", b"GET /environment", b"GET /gitlab",
         (b"GET /x", b"Content-Type: text/admin")]),
}


@pytest.mark.parametrize("pack", sorted(PACKS))
def test_pack(pack):
    assert pack in PACK_CASES, "every pack has cases here"
    policy = engine(GuardrailConfig(name=pack, pack=pack)).for_groups(())
    caught, passed = PACK_CASES[pack]
    for req in caught:
        req = req if isinstance(req, tuple) else (req,)
        if parser_refuses(*req):
            continue
        v = policy.check(request(*req))
        assert v is not None and v.rule == pack, req
    for req in passed:
        req = req if isinstance(req, tuple) else (req,)
        assert not parser_refuses(*req), req
        assert policy.check(request(*req)) is None, req


def test_packs_are_documented():
    from hoopwire.http import packs
    for name, pack in PACKS.items():
        assert f"\n{name}\n    catches" in packs.__doc__
        assert pack.message and pack.summary


# -- masking for logs and the audit -------------------------------------------------------------

def test_mask_literals():
    text = request(b"GET /v1/users/42?access_token=s3cr3t&limit=10&flag&=x",
                   b"X-Original-URL: /admin?key=abc", body=b'{"password": "hunter2"}')
    masked = mask_literals(text)
    assert masked == ("GET /v1/users/42?access_token=?&limit=?&?&=?\nhost: api.test\n"
                      "x-original-url: /admin?key=?\n\n?")
    for secret in ("s3cr3t", "abc", "hunter2", "10"):
        assert secret not in masked
    assert mask_literals(request(b"GET /x")) == "GET /x\nhost: api.test\n"
    assert DIALECT.mask_literals is mask_literals


@pytest.mark.parametrize("cut", range(1, 60))
def test_mask_literals_on_a_cut_text(cut):
    """The listener cuts statements at statement_text_limit before masking them: whatever part
    of a secret is there is masked."""
    text = request(b"GET /v1?access_token=s3cr3tvalue&b=2", body=b"password=hunter2")
    masked = mask_literals(text[:cut])
    assert "s3cr" not in masked and "hunt" not in masked


# -- the C masker the audit thread runs (hoopwire.http._literals) ----------------------------------

_TEXT_PIECES = [b"GET ", b"POST ", b"/v1/users", b"?", b"&", b";", b"=", b"a", b"tok", b"\n",
                b"\n\n", b": ", b"x-original-url: ", b"x-rewrite-url: ", b"host: ", b" ",
                b"\xc3\xa9", b"\xff", b"{\"k\": 1}"]


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(_TEXT_PIECES), max_size=24).map(b"".join))
def test_c_masker_is_the_reference_byte_for_byte(text):
    from hoopwire.http._literals import mask_literals as c_mask
    from hoopwire.http.dialect import mask_literals_reference
    assert c_mask(text) == mask_literals_reference(text)
    for cut in (1, 7, len(text) // 2):
        assert c_mask(text[:cut]) == mask_literals_reference(text[:cut])


def test_the_audit_masks_http_texts_in_c():
    """The audit's encoder takes a dialect's C half from its `c_dialect` capsule; without one
    it falls back to Python under the GIL for every new request text."""
    assert getattr(DIALECT.mask_literals, "c_dialect", None) is not None
