"""Who may call through an http connection: a Bearer token on every request (401 without a
good one, 403 for groups not allowed), the stored credential upstream and never the client's
token, and a Session per identity on a keep-alive connection."""

from __future__ import annotations

import json

import httpx
import pytest

from httpfixtures import (HTTP_CONN, HTTP_SECRET, HttpGateway, bearer, http_config,  # noqa: F401
                          http_env, httpgw, parse_responses, raw_exchange, sent_headers,
                          upstream)


def _err(r: httpx.Response) -> dict:
    assert r.headers["content-type"] == "application/json"
    doc = r.json()
    assert set(doc) == {"error", "message", "request_id"}
    assert len(doc["request_id"]) == 16
    return doc


@pytest.mark.parametrize("auth", [None, "Basic dXNlcjpwYXNz", "Bearer", "Bearer not-a-token",
                                  "bearer eyJhbGciOiJub25lIn0.e30."])
def test_missing_or_bad_token_is_401_with_www_authenticate(httpgw, auth, upstream):
    before = httpx.get(upstream.url("/count")).json().get("requests", 0)
    r = httpx.get(httpgw.url("/echo/x"), headers={"Authorization": auth} if auth else {},
                  timeout=10)
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == 'Bearer realm="hoopwire"'
    assert _err(r)["error"] == "unauthorized"
    assert httpx.get(upstream.url("/count")).json().get("requests", 0) == before


def test_expired_token_is_401(httpgw, idp):
    token = idp.token(ttl=-120)
    r = httpx.get(httpgw.url("/echo/x"), headers=bearer(token), timeout=10)
    assert r.status_code == 401


def test_group_not_allowed_is_403(httpgw, idp):
    r = httpx.get(httpgw.url("/echo/x"), headers=bearer(idp.token("eve", ["nobody"])),
                  timeout=10)
    assert r.status_code == 403
    assert _err(r)["error"] == "forbidden"


def test_api_key_and_jwt_both_work_and_the_upstream_never_sees_them(httpgw, idp, upstream):
    for token in (idp.token(), idp.api_keys["ci"]):
        r = httpx.post(httpgw.url("/echo/k"), headers=bearer(token), content=b"{}", timeout=10)
        assert r.status_code == 200, r.text
        doc = r.json()
        assert token not in json.dumps(doc)
        sent = sent_headers(upstream, r.headers["x-request-id"])
        assert sent["authorization"] == [f"Bearer {HTTP_SECRET}"]
        assert token not in json.dumps(sent)


def test_a_bad_token_on_a_keep_alive_connection_does_not_end_it(httpgw, idp):
    good = idp.token()
    req = "GET /echo/{} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {}\r\n{}\r\n"
    data = (req.format(1, good, "") + req.format(2, "bad", "") +
            req.format(3, good, "Connection: close\r\n")).encode()
    out = raw_exchange(httpgw.address(HTTP_CONN), data)
    assert [r[0] for r in parse_responses(out)] == [200, 401, 200], out


def test_identity_change_on_one_connection_starts_a_new_session(httpgw, idp):
    a, b = idp.token("agent-a", ["agents"]), idp.token("agent-b", ["agents"])
    req = "GET /echo/{} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {}\r\n{}\r\n"
    data = (req.format(1, a, "") + req.format(2, b, "Connection: close\r\n")).encode()
    out = raw_exchange(httpgw.address(HTTP_CONN), data)
    assert [r[0] for r in parse_responses(out)] == [200, 200], out
    m = httpgw.wait_log(r"session closed.*subject=agent-a.*reason=identity_changed")
    assert m
    httpgw.wait_log(r"session closed.*subject=agent-b")


def test_proxy_authorization_as_the_identity_header(upstream, idp):
    cfg = http_config(upstream.url("/"), idp, identity_header="Proxy-Authorization")
    with HttpGateway(cfg, env=http_env()) as g:
        token = idp.token()
        r = httpx.get(g.url("/echo/p"), headers={"Proxy-Authorization": f"Bearer {token}",
                                                "Authorization": "Bearer app-own"}, timeout=10)
        assert r.status_code == 200, r.text
        doc = r.json()
        # the client's Authorization is replaced by the stored credential, its token dropped
        sent = sent_headers(upstream, r.headers["x-request-id"])
        assert sent["authorization"] == [f"Bearer {HTTP_SECRET}"]
        assert token not in json.dumps(sent) and "app-own" not in json.dumps(sent)
        assert token not in json.dumps(doc) and "app-own" not in json.dumps(doc)
        r = httpx.get(g.url("/echo/p"), headers=bearer(token), timeout=10)
        assert r.status_code == 407
        assert r.headers["proxy-authenticate"] == 'Bearer realm="hoopwire"'


def test_credential_header_and_format_are_configurable(upstream, idp):
    cfg = http_config(upstream.url("/"), idp, credential_header="X-Api-Key",
                      credential_format="key={secret}")
    with HttpGateway(cfg, env=http_env()) as g:
        r = httpx.get(g.url("/echo/h"), headers={**bearer(idp.token()), "X-Api-Key": "forged"},
                      timeout=10)
        sent = sent_headers(upstream, r.headers["x-request-id"])
        assert sent["x-api-key"] == [f"key={HTTP_SECRET}"]
        assert "authorization" not in sent
