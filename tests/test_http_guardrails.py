"""HTTP guardrails end to end: a real aiohttp upstream, the gateway, httpx and raw sockets.

Block (403 JSON naming the rule, nothing reaches the upstream), log (a line, masked), approve
(held until decided), body rules, and the evasions: every spelling of a forbidden request
a client can send is either blocked by the rule or refused 400 before any rule runs, and the
upstream runs exactly the canonical target that was judged (hoopwire/http/dialect.py).
Raw sockets where httpx would tidy the target itself.
"""

from __future__ import annotations

import gzip
import json
import threading
import time

import httpx
import pytest

from helpers import api, wait_pending, wait_until
from httpfixtures import (HttpGateway, bearer, http_config, http_env, parse_responses,  # noqa: F401
                          raw_exchange, upstream)

pytestmark = pytest.mark.timeout(120)

RULES = [
    {"name": "no-user-delete", "patterns": [r"^DELETE /echo/users/"]},
    {"name": "admin", "pack": "http-admin-paths"},
    {"name": "log-exports", "patterns": [r"^GET /echo/export(?:[/?\n]|$)"], "action": "log"},
    {"name": "hold-purge", "patterns": [r"^POST /echo/purge(?:[/?\n]|$)"], "action": "approve",
     "approvers": ["dba"], "timeout": "5m"},
    {"name": "no-ssn-in-bodies", "patterns": [r'"ssn"\s*:'], "scan_literals": True},
]


@pytest.fixture(scope="module")
def gw(upstream, idp, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("http-guardrails")
    cfg = http_config(upstream.url("/"), idp, guardrail=RULES,
                      allow_groups=["agents", "dba"])
    cfg["admin"] = {"admin_groups": ["admins"]}
    cfg["state"] = {"url": f"sqlite:///{tmp}/state.db", "poll_interval": "100ms"}
    with HttpGateway(cfg, env=http_env()) as g:
        yield g


@pytest.fixture(scope="module")
def tokens(idp) -> dict[str, str]:
    from gwfixtures import ADMIN_AUDIENCE, AUDIENCE
    return {"agent": idp.token("agent-7", ["agents"]),
            "dba": idp.token("dana", ["dba"], audience=[AUDIENCE, ADMIN_AUDIENCE])}


def upstream_requests(upstream) -> int:
    return httpx.get(upstream.url("/count"), timeout=10).json().get("requests", 0)


def raw(gw, token: str, line: bytes, *headers: bytes, body: bytes = b""):
    """One request with exactly these bytes; (status, headers, body) of the answer."""
    data = (line + b" HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer " + token.encode()
            + b"\r\n" + b"".join(h + b"\r\n" for h in headers)
            + (b"Content-Length: %d\r\n" % len(body) if body else b"") + b"\r\n" + body)
    out = raw_exchange(gw.address("api"), data, expect=1)
    return parse_responses(out)[0]


def error_doc(headers: dict, body: bytes) -> dict:
    assert headers["content-type"] == "application/json"
    doc = json.loads(body)
    assert set(doc) == {"error", "message", "request_id"}
    return doc


# -- block, and every spelling of the blocked request ------------------------------------------

D, A = "no-user-delete", "admin"
EVASIONS = [
    (D, b"DELETE /echo/users/1"),
    (D, b"DELETE /echo/%75sers/1"),
    (D, b"DELETE /echo/us%65rs/1"),
    (D, b"DELETE /echo//users/1"),
    (D, b"DELETE //echo/users/1"),
    (D, b"DELETE /echo/x/../users/1"),
    (D, b"DELETE /echo/x/%2e%2E/users/1"),
    (D, b"DELETE /echo/./users/1"),
    (D, b"DELETE /ECHO/Users/1"),
    (D, b"DELETE http://api.test/echo/users/1"),
    (D, b"POST /echo/users/1", b"X-HTTP-Method-Override: DELETE"),
    (D, b"POST /echo/users/1", b"X-HTTP-Method: delete"),
    (D, b"POST /echo/users/1", b"X-Method-Override: Delete"),
    (D, b"POST /echo/users/1?_method=DELETE"),
    (D, b"POST /echo/users/1?_m%65thod=delete"),
    (D, b"POST /echo/other", b"X-HTTP-Method-Override: DELETE", b"X-Original-URL: /echo/users/1"),
    (A, b"GET /echo/admin"),
    (A, b"GET /echo/adm%69n/x"),
    (A, b"GET /echo/ADMIN"),
    (A, b"GET /echo/public", b"X-Rewrite-URL: /echo/actuator/env"),
    (A, b"GET /echo/.env"),
]


@pytest.mark.parametrize("case", EVASIONS, ids=lambda c: b" + ".join(c[1:]).decode())
def test_every_spelling_is_blocked_by_the_rule(gw, upstream, tokens, case):
    rule, *req = case
    before = upstream_requests(upstream)
    status, headers, body = raw(gw, tokens["agent"], *req)
    assert status == 403, body
    doc = error_doc(headers, body)
    assert doc["error"] == "blocked" and f'"{rule}"' in doc["message"], doc
    assert upstream_requests(upstream) == before        # nothing reached the upstream


@pytest.mark.parametrize("req", [
    (b"DELETE /echo/users;x/1",),              # Tomcat reads /echo/users/1
    (b"DELETE /echo/users;jsessionid=1/1",),
    (b"DELETE /echo/users%2F1",),
    (b"DELETE /echo/users%5C1",),
    (b"DELETE /echo/%252e%252e/users/1",),     # decoded twice: /echo/../users/1
    (b"DELETE /echo/users./1",),               # Windows: /echo/users/1
    (b"DELETE /echo/users%20/1",),
    (b"GET /echo/adm%C4%B1n",),                # ASP.NET: /ADMIN
    (b"GET /echo/%EF%BC%8Fadmin",),            # fullwidth '/'
    (b"DELETE /../echo/users/1",),
    (b"GET /echo/x#/../admin",),
    (b"POST /echo/x", b"X-HTTP-Method-Override: DELETE", b"X-Original-URL: /echo/users;/1"),
], ids=lambda r: b" + ".join(r).decode())
def test_ambiguous_spellings_are_refused_400(gw, upstream, tokens, req):
    before = upstream_requests(upstream)
    status, headers, body = raw(gw, tokens["agent"], *req)
    assert status == 400, body
    assert error_doc(headers, body)["error"] in ("bad_target", "bad_request")
    assert upstream_requests(upstream) == before


def test_the_upstream_runs_the_canonical_target(gw, tokens):
    """What was judged is what runs: the upstream receives the canonical spelling."""
    status, _, body = raw(gw, tokens["agent"], b"GET /echo/a/%62/../c//d/%7e?x=%41&y=%2f")
    assert status == 200, body
    assert json.loads(body)["path"] == "/echo/a/c/d/~?x=A&y=%2F"


def test_other_requests_pass(gw, tokens):
    with httpx.Client(headers=bearer(tokens["agent"]), timeout=10) as c:
        assert c.delete(gw.url("/echo/orders/1")).status_code == 200
        assert c.get(gw.url("/echo/users/1")).status_code == 200
        assert c.post(gw.url("/echo/users/1"), json={"name": "x"}).status_code == 200
        assert c.get(gw.url("/echo/administration")).status_code == 200


# -- log, with the secrets masked ---------------------------------------------------------------

def test_log_rule_lets_it_through_and_logs_it_masked(gw, tokens):
    secret = "tok-" + str(time.monotonic_ns())
    r = httpx.get(gw.url(f"/echo/export?access_token={secret}&limit=5"),
                  headers=bearer(tokens["agent"]), timeout=10)
    assert r.status_code == 200
    line = gw.wait_log(r"guardrail matched.*log-exports.*").group(0)
    assert "/echo/export?access_token=?&limit=?" in line
    assert secret not in gw.log_text()


def test_blocked_request_logged_without_its_secrets(gw, tokens):
    secret = "blk-" + str(time.monotonic_ns())
    r = httpx.request("DELETE", gw.url(f"/echo/users/9?api_key={secret}"),
                      headers=bearer(tokens["agent"]), timeout=10)
    assert r.status_code == 403
    gw.wait_log(r"statement blocked.*no-user-delete.*api_key=\?")
    assert secret not in gw.log_text()


# -- approve ------------------------------------------------------------------------------------

def test_approve_holds_until_decided(gw, upstream, tokens):
    out: dict = {}

    def send():
        out["r"] = httpx.post(gw.url("/echo/purge?scope=all"), headers=bearer(tokens["agent"]),
                              content=b"{}", timeout=60)

    before = upstream_requests(upstream)
    t = threading.Thread(target=send, daemon=True)
    t.start()
    req = wait_pending(gw, tokens["dba"], "/echo/purge")
    assert req["rule"] == "hold-purge" and req["statement"].startswith("POST /echo/purge?scope=?")
    assert t.is_alive() and upstream_requests(upstream) == before   # held, not sent
    status, _ = api(gw, "POST", f"/api/v1/approvals/{req['id']}/approve", tokens["dba"], {})
    assert status == 200
    t.join(30)
    assert out["r"].status_code == 200 and out["r"].json()["method"] == "POST"
    wait_until(lambda: upstream_requests(upstream) == before + 1, 10, "the released request")


# -- body rules ---------------------------------------------------------------------------------

def test_body_rule(gw, upstream, tokens):
    with httpx.Client(headers=bearer(tokens["agent"]), timeout=10) as c:
        r = c.post(gw.url("/echo/people"), json={"name": "a", "ssn": "078-05-1120"})
        assert r.status_code == 403 and '"no-ssn-in-bodies"' in r.json()["message"]
        assert c.post(gw.url("/echo/people"), json={"name": "a"}).status_code == 200
        # a form field claiming DELETE is judged as DELETE once bodies are read
        r = c.post(gw.url("/echo/users/1"), data={"_method": "delete"})
        assert r.status_code == 403 and '"no-user-delete"' in r.json()["message"]
        r = c.post(gw.url("/echo/users/1"), content=b'{"\\u005fmethod": "DELETE"}',
                   headers={"Content-Type": "application/json"})
        assert r.status_code == 403 and '"no-user-delete"' in r.json()["message"]
        # a compressed body the rules cannot read is refused 415 while they apply; a UTF-16
        # one is read in its charset (tests/test_http_evasion.py)
        before = upstream_requests(upstream)
        packed = gzip.compress(b'{"ssn": "078-05-1120"}')
        r = c.post(gw.url("/echo/people"), content=packed,
                   headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
        assert r.status_code == 415 and r.json()["error"] == "unsupported_body"
        r = c.post(gw.url("/echo/people"), content='{"ssn": "078-05-1120"}'.encode("utf-16"),
                   headers={"Content-Type": "application/json"})
        assert r.status_code == 403 and '"no-ssn-in-bodies"' in r.json()["message"]
        assert upstream_requests(upstream) == before
