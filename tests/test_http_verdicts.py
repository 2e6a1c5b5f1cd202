"""The relay's per-connection verdict cache (Relay.verdicts): a request that repeats a method,
target and Host no rule matched skips the judging, and nothing else does -- not a reload's new
rules, not the same target with a header the request text carries, not another Host."""

from __future__ import annotations

import http.client
import json
import signal

import pytest

from httpfixtures import HttpGateway, bearer, http_config, http_env, upstream  # noqa: F401

pytestmark = pytest.mark.timeout(120)

RULES = [{"name": "no-user-delete", "patterns": [r"^DELETE /echo/users/"]}]


@pytest.fixture()
def gw(upstream, idp):  # noqa: F811
    with HttpGateway(http_config(upstream.url("/"), idp, guardrail=RULES),
                     env=http_env()) as g:
        yield g


def get(conn: http.client.HTTPConnection, token: str, path: str, **headers) -> tuple[int, dict]:
    conn.request("GET", path, headers={**bearer(token), **headers})
    r = conn.getresponse()
    body = r.read()
    return r.status, json.loads(body)


def test_reload_judges_a_cached_shape_again(gw, idp):
    token = idp.token()
    conn = http.client.HTTPConnection(*gw.address("api"), timeout=20)
    try:
        for _ in range(3):                       # judged once, then from the cache
            assert get(conn, token, "/echo/reports/7")[0] == 200
        cfg = gw.config
        cfg["connection"][0]["guardrail"] = RULES + [
            {"name": "no-reports", "patterns": [r"^GET /echo/reports/"]}]
        gw.write_config(cfg)
        gw.signal(signal.SIGHUP)
        gw.wait_log(r"configuration reloaded", timeout=60)
        status, doc = get(conn, token, "/echo/reports/7")   # the same keep-alive connection
        assert status == 403 and doc["error"] == "blocked" and "no-reports" in doc["message"]
        assert get(conn, token, "/echo/other")[0] == 200
    finally:
        conn.close()


def test_a_header_the_rules_read_is_never_answered_from_the_cache(gw, idp):
    token = idp.token()
    conn = http.client.HTTPConnection(*gw.address("api"), timeout=20)
    try:
        for _ in range(2):
            assert get(conn, token, "/echo/users/1")[0] == 200
        # the same method, target and Host, read as DELETE by the upstream
        status, doc = get(conn, token, "/echo/users/1", **{"X-HTTP-Method-Override": "DELETE"})
        assert status == 403 and "no-user-delete" in doc["message"]
        # the same, spelled as a CGI server reads it (X_HTTP_METHOD_OVERRIDE)
        status, doc = get(conn, token, "/echo/users/1", **{"X_HTTP_Method_Override": "DELETE"})
        assert status == 403 and "no-user-delete" in doc["message"]
        status, doc = get(conn, token, "/echo/users/1?_method=DELETE")
        assert status == 403
        assert get(conn, token, "/echo/users/1")[0] == 200
    finally:
        conn.close()
