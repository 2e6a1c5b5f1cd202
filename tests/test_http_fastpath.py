"""The relay's event plumbing in C (hoopwire.http._relay: data_received through _finish, the
pool's take_idle and release) against its Python twin (relay.Relay's methods, kept and run with
HOOPWIRE_HTTP_PURE=1): the same exchanges give the same answers, metrics and audit records on
both, and what the C path hands back to Python (a verdict miss, a reload, an unknown token)
still happens in order on one keep-alive connection."""

from __future__ import annotations

import json
import os
import re
import signal
import urllib.request

import pytest

from helpers import wait_until
from httpfixtures import (HTTP_CONN, HTTP_SECRET, HttpGateway, bearer, http_config, http_env,  # noqa: F401
                          parse_responses, raw_exchange, upstream)

pytestmark = pytest.mark.timeout(180)

RULES = [{"name": "no-admin", "patterns": [r"^GET /echo/admin"]}]


def _gateway(upstream, idp, tmp, pure: bool, rules=RULES) -> HttpGateway:  # noqa: F811
    cfg = http_config(upstream.url("/"), idp, guardrail=rules)
    cfg["audit"] = {"path": str(tmp / "audit"), "flush_interval": "50ms"}
    env = http_env()
    if pure:
        env["HOOPWIRE_HTTP_PURE"] = "1"
    g = HttpGateway(cfg, env=env)
    g.audit = tmp / "audit"
    return g


def _req(method: str, path: str, token: str | None, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: api.test\r\n"
    if token is not None:
        head += f"Authorization: Bearer {token}\r\n"
    if body or method == "POST":
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def _metrics(g) -> dict[str, float]:
    """This connection's request, byte and latency-count series (not the latency sums)."""
    text = urllib.request.urlopen(g.admin_url + "/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or f'connection="{HTTP_CONN}"' not in line:
            continue
        name = line.split("{", 1)[0]
        if name in ("hoopwire_statements_total", "hoopwire_bytes_total",
                    "hoopwire_statement_seconds_count", "hoopwire_auth_failures_total"):
            series, value = line.rsplit(" ", 1)
            out[series] = float(value)
    return out


def _statements(path) -> list[dict]:
    from hoopwire.audit import read_records
    if not os.path.isdir(path):
        return []
    return [r for r in read_records(str(path)) if r["type"] == "statement"]


# one keep-alive connection, pipelined: forwarded (judged, then from the verdict cache), a
# body, a block (a verdict miss behind cached ones), no token, and the cached shape again
EXCHANGE = [("GET", "/echo/a", True, b""), ("GET", "/echo/a", True, b""),
            ("POST", "/echo/b", True, b'{"k": 1}'), ("GET", "/echo/admin/x", True, b""),
            ("GET", "/echo/a", False, b""), ("GET", "/json/1k", True, b""),
            ("GET", "/echo/a", True, b"")]
STATUSES = [200, 200, 200, 403, 401, 200, 200]


def _run(g, token: str) -> tuple[list, dict, list]:
    data = b"".join(_req(m, p, token if auth else None, b) for m, p, auth, b in EXCHANGE)
    out = raw_exchange(g.address(HTTP_CONN), data, until_close=False, expect=len(EXCHANGE),
                       timeout=30)
    resps = parse_responses(out)
    forwarded = sum(1 for s in STATUSES if s == 200)

    def settled():
        m = _metrics(g)
        count = sum(v for k, v in m.items() if k.startswith("hoopwire_statement_seconds_count"))
        recs = _statements(g.audit)
        return (m, recs) if count == forwarded and len(recs) >= len(EXCHANGE) - 1 else None
    m, recs = wait_until(settled, 30, "the exchange's metrics and audit records", gw=g)
    return resps, m, recs


def test_c_and_python_paths_answer_count_and_record_alike(upstream, idp, tmp_path):  # noqa: F811
    token = idp.token()
    seen = {}
    for pure in (False, True):
        tmp = tmp_path / ("pure" if pure else "c")
        tmp.mkdir()
        with _gateway(upstream, idp, tmp, pure) as g:
            seen[pure] = _run(g, token)
    for pure in (False, True):
        resps = seen[pure][0]
        assert [r[0] for r in resps] == STATUSES, pure
        # a forwarded response has it in its head, one the gateway made in its JSON body
        rids = [r[1]["x-request-id"] if "x-request-id" in r[1] else
                json.loads(r[2])["request_id"] for r in resps]
        assert all(re.fullmatch(r"[0-9a-f]{16}", r) for r in rids) and len(set(rids)) == len(rids)
        # the request id the client is told is the one the upstream got
        for (status, headers, body), (m, p, _, b) in zip(resps, EXCHANGE):
            if status == 200 and p.startswith("/echo"):
                doc = json.loads(body)
                assert [v for k, v in doc["headers"] if k.lower() == "x-request-id"] == \
                    [headers["x-request-id"]]
                assert doc["method"] == m and doc["body"] == b.decode()
                assert any(k.lower() == "x-forwarded-for" for k, _ in doc["headers"])
    c_resps, c_metrics, c_recs = seen[False]
    py_resps, py_metrics, py_recs = seen[True]
    assert c_metrics == py_metrics
    assert [r[2] for r in c_resps if r[0] == 200 and b'"headers"' not in r[2]] == \
        [r[2] for r in py_resps if r[0] == 200 and b'"headers"' not in r[2]]

    def shape(recs):
        return sorted((r["statement"], tuple(r["tags"]), r["verdict"]) for r in recs)
    assert shape(c_recs) == shape(py_recs)


@pytest.mark.parametrize("pure", [False, True], ids=["c", "python"])
def test_a_reload_while_idle_judges_the_cached_shape_again(upstream, idp, tmp_path,  # noqa: F811
                                                           pure):
    """The C path takes a reload's configuration (its rules, a fresh verdict cache) before the
    next request on a connection that was idle through it."""
    import socket
    token = idp.token()
    with _gateway(upstream, idp, tmp_path, pure) as g:
        s = socket.create_connection(g.address(HTTP_CONN), timeout=20)
        try:
            def one(path: str) -> int:
                s.sendall(_req("GET", path, token))
                out = b""
                while not _whole(out):
                    chunk = s.recv(65536)
                    assert chunk, "the gateway closed the connection"
                    out += chunk
                return parse_responses(out)[0][0]
            assert [one("/echo/r/7") for _ in range(3)] == [200] * 3   # judged, then cached
            cfg = g.config
            cfg["connection"][0]["guardrail"] = RULES + [
                {"name": "no-r", "patterns": [r"^GET /echo/r/"]}]
            g.write_config(cfg)
            g.signal(signal.SIGHUP)
            g.wait_log(r"configuration reloaded", timeout=60)
            assert one("/echo/r/7") == 403
            assert one("/echo/other") == 200
        finally:
            s.close()


def _whole(out: bytes) -> bool:
    end = out.find(b"\r\n\r\n")
    if end < 0:
        return False
    m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", out[:end])
    return m is not None and len(out) >= end + 4 + int(m.group(1))


def test_the_python_twin_is_what_pure_selects():
    """HOOPWIRE_HTTP_PURE picks the plumbing at import: the C functions are bound otherwise
    (what the comparisons above rely on to test two different paths)."""
    import subprocess
    import sys
    probe = ("import hoopwire.http.relay as r, hoopwire.http.upstream as u;"
             "print(type(r.Relay.data_received).__name__, type(u.Pool.release).__name__,"
             " r._Req.__module__)")
    env = dict(os.environ)
    env.pop("HOOPWIRE_HTTP_PURE", None)
    c = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                       check=True).stdout.split()
    env["HOOPWIRE_HTTP_PURE"] = "1"
    py = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                        check=True).stdout.split()
    assert c == ["cython_function_or_method", "cython_function_or_method",
                 "hoopwire.http._relay"]
    assert py == ["function", "function", "hoopwire.http.relay"]


HOLD = {"name": "deletes-need-a-human", "patterns": [r"^DELETE "], "action": "approve",
        "approvers": ["dba"], "timeout": "10m"}


@pytest.mark.parametrize("pure", [False, True], ids=["c", "python"])
def test_a_request_queued_behind_one_in_flight_through_a_reload_gets_the_new_conf(
        upstream, idp, tmp_path, pure):  # noqa: F811
    """A reload while a request is held, with the next one pipelined behind it: the held one
    ends under the conf it was sent with, the next starts under the new one (here: a
    rotated upstream credential). The C path hands such a request to the Python _begin, which
    takes the new conf; one that kept the old would send the old credential. (A reload that
    disallows the agent's groups cancels its pending approval: not usable here.)"""
    import socket
    from helpers import api, wait_pending
    from gwfixtures import ADMIN_AUDIENCE, AUDIENCE
    agent = idp.token("agent-7", ["agents"])
    dba = idp.token("dana", ["dba"], audience=[AUDIENCE, ADMIN_AUDIENCE])
    cfg = http_config(upstream.url("/"), idp, guardrail=[HOLD], request_timeout="60s",
                      upstream_timeout="60s")
    cfg["admin"] = {"admin_groups": ["admins"]}
    cfg["state"] = {"url": f"sqlite:///{tmp_path}/state.db", "poll_interval": "100ms"}
    env = {**http_env(), "HTTP_API_SECRET_NEW": "rotated-" + HTTP_SECRET}
    if pure:
        env["HOOPWIRE_HTTP_PURE"] = "1"
    with HttpGateway(cfg, env=env) as g:
        s = socket.create_connection(g.address(HTTP_CONN), timeout=60)
        try:
            s.sendall(_req("DELETE", "/echo/held", agent) + _req("GET", "/echo/next", agent))
            pending = wait_pending(g, dba, "/echo/held")
            cfg = g.config
            cfg["connection"][0]["password_env"] = "HTTP_API_SECRET_NEW"
            g.write_config(cfg)
            g.signal(signal.SIGHUP)
            g.wait_log(r"configuration reloaded", timeout=60)
            status, doc = api(g, "POST", f"/api/v1/approvals/{pending['id']}/approve", dba, {})
            assert status == 200, doc
            out = b""
            while out.count(b"HTTP/1.1 ") < 2 or not _whole(out[out.rfind(b"HTTP/1.1 "):]):
                chunk = s.recv(65536)
                assert chunk, "the gateway closed the connection"
                out += chunk
            (st1, _, body1), (st2, _, body2) = parse_responses(out)
            doc1, doc2 = json.loads(body1), json.loads(body2)
            assert st1 == st2 == 200 and doc1["method"] == "DELETE"
            # the fields the upstream got (the client's echo has the credential redacted)
            sent = [upstream.stats["seen"][h["x-request-id"]]
                    for _, h, _ in parse_responses(out)]
            creds = [[v for _, v in d if HTTP_SECRET in v] for d in sent]
            assert creds[0] and not any("rotated-" in v for v in creds[0]), creds
            assert creds[1] and all("rotated-" + HTTP_SECRET in v for v in creds[1]), creds
        finally:
            s.close()
