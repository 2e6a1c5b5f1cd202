"""Operational settings and events through real clients: idle_timeout, connect_timeout,
record_results_max_bytes, the approval.expired / approval.cancelled webhooks, denial of a held
statement on every client path, and reloads of identity and guardrails (also under --workers).

Timing: tests wait for events (a log line, a webhook received, pg_stat_activity, the admin
API's state) with generous deadlines, which only bound how long a failure takes to show. Where
the timing is the behaviour (not closed before idle_timeout, not refused before
connect_timeout) the bound is a lower one, which load can only make easier.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.server
import json
import math
import os
import re
import signal
import socket
import socketserver
import threading
import time
import urllib.error
import urllib.request
import uuid

import asyncpg
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

import pgraw
from gwfixtures import ADMIN_AUDIENCE, conninfo, gateway_config, gateway_env
import helpers
from helpers import APP_DB, Gateway, api

pytestmark = pytest.mark.timeout(180)

# How long a failure may take to show: far beyond what any step takes when things work.
GUARD = 30.0


# ------------------------------------------------------------------------------------------------
# helpers


def wait_until(predicate, what: str, timeout: float = GUARD):
    return helpers.wait_until(predicate, timeout, what)


def sample(gw: Gateway, name: str, **labels) -> float:
    """One sample of the gateway's /metrics scrape; 0 when the labelled series does not exist
    yet (a counter nobody has incremented)."""
    with urllib.request.urlopen(gw.admin_url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    values = [s.value for fam in text_string_to_metric_families(text) for s in fam.samples
              if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(values) <= 1, f"{name}{labels}: {values}"
    return values[0] if values else 0.0


def admin_token(idp, subject: str, groups) -> str:
    """A token for the admin API, which wants its own audience (never the data path's)."""
    return idp.token(subject, groups, audience=ADMIN_AUDIENCE)


def admin_key(name: str, groups) -> tuple[str, dict]:
    """A new API key for the admin API (use = "admin"): (the key, its config entry)."""
    key = f"{name}-" + uuid.uuid4().hex
    return key, {"name": name, "sha256": hashlib.sha256(key.encode()).hexdigest(),
                 "groups": list(groups), "use": "admin"}


def wait_pending(gw: Gateway, token: str, part: str) -> dict:
    """The pending approval request whose statement contains `part`."""
    def find():
        status, body = api(gw, "GET", "/api/v1/approvals?status=pending", token)
        assert status == 200, body
        return next((a for a in body["approvals"] if part in a["statement"]), None)
    return wait_until(find, f"a pending approval request for {part!r}")


def session_id_of(gw: Gateway, backend_pid: int) -> str:
    """The gateway's session id for the session on upstream backend `backend_pid` (its
    "session started" log line names both)."""
    m = gw.wait_log(rf"session started connection=\S+ session=(\w+) .*backend_pid={backend_pid}\b")
    return m.group(1)


def raw_refusal(host: str, port: int, password: str, user: str = "agent-7",
                timeout: float = GUARD) -> dict[str, str]:
    """Log in over the raw protocol with `password`, expecting the login to be refused: the
    fields of the ErrorResponse the gateway sends before it closes."""
    with pgraw.RawConn(host, port, timeout) as c:
        c.send(pgraw.startup_packet({"user": user, "database": APP_DB}))
        kind, _ = c.read_message(timeout)
        assert kind == b"R"
        c.send(pgraw.typed(b"p", password.encode() + b"\0"))
        return c.expect_error_and_close(timeout)


class Outcome:
    """What a client thread ended with, to be asserted in the test's own thread."""

    def __init__(self):
        self.error: BaseException | None = None
        self.values: dict = {}


def in_thread(fn) -> tuple[threading.Thread, Outcome]:
    out = Outcome()

    def run():
        try:
            fn(out)
        except BaseException as e:  # noqa: BLE001 -- handed to the test's thread
            out.error = e
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def finish(t: threading.Thread, timeout: float = GUARD) -> None:
    t.join(timeout)
    assert not t.is_alive(), f"the client still waits after {timeout:g} s"


# ------------------------------------------------------------------------------------------------
# 1. idle_timeout


def test_idle_session_closed_with_57P05(pg, idp):
    cfg = gateway_config(pg, idp, idle_timeout="1s")
    with Gateway(cfg, env=gateway_env(pg)) as g:
        before = sample(g, "hoopwire_sessions_closed_total", connection="pg", reason="idle_timeout")
        token = idp.token()
        c = psycopg.connect(conninfo(g, token), autocommit=True)
        try:
            assert c.execute("SELECT 1").fetchall() == [(1,)]
            backend = c.info.backend_pid
            sid = session_id_of(g, backend)
            # the log line says which session went and why
            g.wait_log(rf"session closed connection=pg session={sid} .*reason=idle_timeout",
                       timeout=GUARD)
            with pytest.raises(psycopg.errors.IdleSessionTimeout) as ei:
                c.execute("SELECT 2")
            assert ei.value.sqlstate == "57P05"
            assert "idle timeout" in str(ei.value)
        finally:
            c.close()
        # the upstream backend went with it
        wait_until(lambda: pg.sql(f"SELECT count(*) FROM pg_stat_activity WHERE pid = {backend}")
                   == "0", "the idle session's upstream backend to end")

        # the raw protocol: one FATAL, then the close -- and not before the idle time passed
        host, port = g.address("pg")
        with pgraw.login(host, port, token, timeout=GUARD) as raw:
            t0 = time.monotonic()
            err = raw.expect_error_and_close(timeout=GUARD)
            idle_for = time.monotonic() - t0
        assert err["S"] == "FATAL" and err["C"] == "57P05", err
        # a lower bound that is the behaviour: idle_timeout is 1 s (measured by the gateway
        # from the last byte, which it relayed just before t0)
        assert idle_for >= 0.9, idle_for
        assert sample(g, "hoopwire_sessions_closed_total", connection="pg",
                      reason="idle_timeout") == before + 2


def test_busy_session_not_closed_by_idle_timeout(pg, idp):
    cfg = gateway_config(pg, idp, idle_timeout="1s")
    with Gateway(cfg, env=gateway_env(pg)) as g:
        with psycopg.connect(conninfo(g, idp.token()), autocommit=True) as c:
            # three times idle_timeout with no byte either way: several sweeps see it. At once
            # after the login: waiting for the session's log line first left it idle for as
            # long as that took, and past 1 s (a loaded machine) the sweep would close it.
            c.execute("SELECT pg_sleep(3)").fetchall()
            sid = session_id_of(g, c.info.backend_pid)
            assert f"session={sid}" not in "".join(
                ln for ln in g.log_text().splitlines(True) if "session closed" in ln)
            assert c.execute("SELECT 1").fetchall() == [(1,)]
            # idle afterwards, it is closed as any idle session
            g.wait_log(rf"session closed connection=pg session={sid} .*reason=idle_timeout")


# ------------------------------------------------------------------------------------------------
# 2. connect_timeout


class BlackHole:
    """An upstream that accepts TCP connections and never says a word."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                s, _ = self.listener.accept()
            except OSError:
                return
            self.conns.append(s)      # kept open, never answered
            self.accepted.set()

    def close(self):
        try:
            self.listener.shutdown(socket.SHUT_RDWR)    # wakes the blocked accept()
        except OSError:
            pass
        self.listener.close()
        for s in self.conns:
            s.close()


def test_connect_timeout_on_a_silent_upstream(pg, idp):
    hole = BlackHole()
    cfg = gateway_config(pg, idp)
    good = dict(cfg["connection"][0], name="good")
    # handshake_timeout far above connect_timeout: only connect_timeout can answer the client
    # before its own 30 s give up
    cfg["connection"] = [dict(cfg["connection"][0], name="bad",
                              upstream=f"127.0.0.1:{hole.port}", connect_timeout="1s",
                              handshake_timeout="120s"), good]
    try:
        with Gateway(cfg, env=gateway_env(pg)) as g:
            token = idp.token()

            def login_bad(out):
                t0 = time.monotonic()
                try:
                    psycopg.connect(conninfo(g, token, name="bad", connect_timeout=GUARD))
                except psycopg.OperationalError as e:
                    out.values["error"] = e
                out.values["seconds"] = time.monotonic() - t0

            t, out = in_thread(login_bad)
            # while that login waits on the silent upstream, the other connection serves
            assert hole.accepted.wait(GUARD), "the gateway never connected to the upstream"
            with psycopg.connect(conninfo(g, token, name="good"), autocommit=True) as c:
                assert c.execute("SELECT 1").fetchall() == [(1,)]
            finish(t)
            assert out.error is None, out.error
            err = out.values.get("error")
            assert err is not None, "the login through a silent upstream succeeded"
            assert "could not connect to the upstream server" in str(err), str(err)
            # a lower bound that is the behaviour: not refused before connect_timeout
            assert out.values["seconds"] >= 0.9, out.values["seconds"]

            # the raw protocol shows the SQLSTATE: FATAL 08006, then the close
            host, port = g.address("bad")
            fields = raw_refusal(host, port, token)
            assert fields["S"] == "FATAL" and fields["C"] == "08006", fields
            assert fields["M"] == "could not connect to the upstream server"
            # the operator log says why, without the client having to know
            g.wait_log(r"upstream login failed connection=bad .*TimeoutError")
            assert sample(g, "hoopwire_connections_total", connection="bad",
                          result="upstream_error") == 2
            assert g.proc.poll() is None

            # the upstream is fixed by a reload: the next client gets in
            reloads = g.log_text().count("configuration reloaded")
            fixed = json.loads(json.dumps(g.config))
            fixed["connection"][0]["upstream"] = f"127.0.0.1:{pg.port}"
            g.write_config(fixed)
            g.signal(signal.SIGHUP)
            wait_until(lambda: g.log_text().count("configuration reloaded") > reloads,
                       "the reload")
            with psycopg.connect(conninfo(g, token, name="bad"), autocommit=True) as c:
                assert c.execute("SELECT 1").fetchall() == [(1,)]
    finally:
        hole.close()


# ------------------------------------------------------------------------------------------------
# 3. record_results_max_bytes


def test_recorded_results_stop_at_the_cap(pg, idp, tmp_path):
    cap = 4096
    cfg = gateway_config(pg, idp, record_results=True, record_results_max_bytes=cap)
    cfg["admin"] = {"admin_groups": ["admins"]}
    cfg["audit"] = {"path": str(tmp_path / "audit"), "flush_interval": "50ms"}
    cfg["state"] = {"url": f"sqlite:///{tmp_path}/state.db"}
    subject = "rec-" + uuid.uuid4().hex[:8]
    n = 500
    with Gateway(cfg, env=gateway_env(pg)) as g:
        with psycopg.connect(conninfo(g, idp.token(subject)), autocommit=True) as c:
            assert c.execute("SELECT 'first'").fetchall() == [("first",)]
            rows = c.execute("SELECT lpad(i::text, 6, '0'), repeat('x', 100) "
                             "FROM generate_series(1, %s) i", (n,)).fetchall()
            # the cap is per session: this one comes after it is spent
            assert c.execute("SELECT 'after the cap'").fetchall() == [("after the cap",)]
        # the client got every row, whatever the recording kept
        assert rows == [(f"{i:06d}", "x" * 100) for i in range(1, n + 1)]

        stmts = _recorded_result(g, idp, subject)

    assert [s["statement"] for s in stmts] == [
        "SELECT ?", "SELECT lpad(i::text, ?, ?), repeat(?, ?) FROM generate_series(?, $1) i",
        "SELECT ?"]
    first, big, after = stmts
    assert first["result"] == [["first"]]
    assert big["rows"] == n
    kept = big.get("result") or []
    # the recorded rows are the first ones the client got, as it got them ...
    assert kept == [[a, b] for a, b in rows[:len(kept)]]
    # ... and they stop at the cap: each row is 116 bytes as a DataRow body (121 with its
    # header), the first result took a few; recording stops once the cap is reached, so the
    # row that crosses it is the last one kept
    assert math.floor(cap / 121) <= len(kept) <= math.ceil(cap / 116), len(kept)
    assert "result" not in after, after


def _recorded_result(g: Gateway, idp, subject: str) -> list[dict]:
    """The statement records of `subject`'s one session, once it has ended, read through the
    admin API's replay."""
    root = admin_token(idp, "root", ["admins"])

    def replay():
        status, body = api(g, "GET", f"/api/v1/sessions?identity={subject}", root)
        assert status == 200, body
        if not body["sessions"]:
            return None
        status, body = api(g, "GET", f"/api/v1/sessions/{body['sessions'][0]['id']}/replay", root)
        recs = body.get("records", []) if status == 200 else []
        return recs if any(r["type"] == "session.end" for r in recs) else None
    records = wait_until(replay, "the recorded session, ended, in the replay")
    return [r for r in records if r["type"] == "statement"]


def test_a_row_larger_than_the_cap_is_not_recorded_whole(pg, idp, tmp_path):
    cap = 4096
    cfg = gateway_config(pg, idp, record_results=True, record_results_max_bytes=cap)
    cfg["admin"] = {"admin_groups": ["admins"]}
    cfg["audit"] = {"path": str(tmp_path / "audit"), "flush_interval": "50ms"}
    cfg["state"] = {"url": f"sqlite:///{tmp_path}/state.db"}
    subject = "rec-" + uuid.uuid4().hex[:8]
    with Gateway(cfg, env=gateway_env(pg)) as g:
        with psycopg.connect(conninfo(g, idp.token(subject)), autocommit=True) as c:
            assert c.execute("SELECT repeat('y', 65536)").fetchall() == [("y" * 65536,)]
        (stmt,) = _recorded_result(g, idp, subject)
    kept = stmt.get("result") or []
    recorded = sum(len(v or "") for row in kept for v in row)
    assert recorded <= cap, f"{recorded} bytes of results recorded under a {cap}-byte cap"


# ------------------------------------------------------------------------------------------------
# 4. approval.expired and approval.cancelled webhooks


class Receiver:
    """A local HTTP server that collects webhook deliveries: (headers, body), in order."""

    def __init__(self):
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.cond = threading.Condition()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(h):
                body = h.rfile.read(int(h.headers.get("Content-Length", 0)))
                h.send_response(204)
                h.end_headers()
                with outer.cond:
                    outer.received.append(({k.lower(): v for k, v in h.headers.items()}, body))
                    outer.cond.notify_all()

            def log_message(h, *a):
                pass

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_event(self, name: str, request_id: str) -> tuple[dict[str, str], bytes, dict]:
        """The delivery of event `name` for approval `request_id` (headers, body, document)."""
        def find():
            for headers, body in self.received:
                doc = json.loads(body)
                if doc["event"] == name and doc["data"]["id"] == request_id:
                    return headers, body, doc
            return None
        with self.cond:
            found = self.cond.wait_for(find, GUARD)
        assert found, f"no {name} delivery for {request_id}; got " + \
            str([json.loads(b)["event"] for _, b in self.received])
        return found

    def close(self):
        self.server.shutdown()
        self.server.server_close()


HOOK_SECRET = "hook-" + uuid.uuid4().hex


def check_delivery(headers: dict[str, str], body: bytes, doc: dict, event: str) -> None:
    """The envelope and the signature as the README documents them, checked by recomputing
    the HMAC here (not with the product's own verifier)."""
    assert set(doc) == {"event", "delivery", "time", "data"}, doc
    assert doc["event"] == event and headers["x-hoopwire-event"] == event
    assert headers["x-hoopwire-delivery"] == doc["delivery"]
    ts = headers["x-hoopwire-timestamp"]
    assert ts.isdigit() and abs(int(ts) - time.time()) < 300, ts
    expected = hmac.new(HOOK_SECRET.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert headers["x-hoopwire-signature"] == "sha256=" + expected
    assert "token_id" not in doc["data"]


@pytest.fixture
def hooked(pg, idp, tmp_path):
    """A gateway whose DELETEs expire after 1 s and whose TRUNCATEs wait 10 min, announcing
    every approval event to a local receiver; and a table of three rows."""
    rec = Receiver()
    table = "ops_" + uuid.uuid4().hex[:8]
    pg.sql(f"CREATE TABLE {table} (id int primary key, v text);"
           f"INSERT INTO {table} VALUES (1, 'a'), (2, 'b'), (3, 'c');"
           f"ALTER TABLE {table} OWNER TO app;", dbname=APP_DB)
    rules = [{"name": "deletes-expire", "patterns": [r"\bdelete\b"], "action": "approve",
              "approvers": ["dba"], "timeout": "1s"},
             {"name": "truncates-wait", "patterns": [r"\btruncate\b"], "action": "approve",
              "approvers": ["dba"], "timeout": "10m"},
             {"name": "updates-wait-a-little", "patterns": [r"\bupdate\b"], "action": "approve",
              "approvers": ["dba"], "timeout": "8s"}]
    cfg = gateway_config(pg, idp, guardrail=rules, allow_groups=["agents", "dba"])
    cfg["admin"] = {"admin_groups": ["admins"]}
    cfg["state"] = {"url": f"sqlite:///{tmp_path}/state.db", "poll_interval": "100ms"}
    cfg["webhook"] = [{"url": rec.url, "secret_env": "HOOK_SECRET", "timeout": "30s",
                       "events": ["approval.created", "approval.decided", "approval.expired",
                                  "approval.cancelled"]}]
    try:
        with Gateway(cfg, env={**gateway_env(pg), "HOOK_SECRET": HOOK_SECRET}) as g:
            yield g, rec, table
    finally:
        rec.close()
        pg.sql(f"DROP TABLE IF EXISTS {table}", dbname=APP_DB)


def count(pg, table: str) -> int:
    return int(pg.sql(f"SELECT count(*) FROM {table}", dbname=APP_DB))


def test_webhook_approval_expired(hooked, pg, idp):
    g, rec, table = hooked
    dana = admin_token(idp, "dana", ["dba"])

    def client(out):
        with psycopg.connect(conninfo(g, idp.token()), autocommit=True) as c:
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as ei:
                c.execute(f"DELETE FROM {table} WHERE id = %s", (1,))
            out.values["error"] = str(ei.value)
            out.values["after"] = c.execute("SELECT 1").fetchall()

    t, out = in_thread(client)

    # The request as its approval.created delivery names it, not as the pending list shows
    # it: the rule expires it after 1 s, and a loaded machine's polls of the pending list
    # could all miss that second (then no pending request ever appeared).
    def created():
        for _, b in list(rec.received):
            doc = json.loads(b)
            if doc["event"] == "approval.created" and table in doc["data"]["statement"]:
                return doc["data"]
        return None
    req = wait_until(created, f"an approval.created delivery for {table!r}")
    headers, body, doc = rec.wait_event("approval.expired", req["id"])
    finish(t)
    assert out.error is None, out.error
    assert "no decision in time" in out.values["error"] and out.values["after"] == [(1,)]
    check_delivery(headers, body, doc, "approval.expired")
    d = doc["data"]
    assert d["status"] == "expired" and d["requester"] == "agent-7"
    assert d["rule"] == "deletes-expire" and d["connection"] == "pg"
    assert d["statement"] == f"DELETE FROM {table} WHERE id = $1"
    assert d["decided_by"] is None and d["reason"] == "no decision in time"
    assert d["decided_at"] >= d["created_at"] and d["session_id"]
    # announced after the request itself, on the same queue
    events = [json.loads(b)["event"] for _, b in rec.received if json.loads(b)["data"]["id"] == req["id"]]
    assert events == ["approval.created", "approval.expired"]
    status, row = api(g, "GET", f"/api/v1/approvals/{req['id']}", dana)
    assert status == 200 and row["status"] == "expired"
    assert count(pg, table) == 3


def test_webhook_approval_cancelled_when_the_client_leaves(hooked, pg, idp):
    g, rec, table = hooked
    dana = admin_token(idp, "dana", ["dba"])
    host, port = g.address("pg")
    with pgraw.login(host, port, idp.token(), timeout=GUARD) as conn:
        conn.send(pgraw.typed(b"Q", f"TRUNCATE {table}".encode() + b"\0"))
        req = wait_pending(g, dana, table)
    # the client went away while held
    headers, body, doc = rec.wait_event("approval.cancelled", req["id"])
    check_delivery(headers, body, doc, "approval.cancelled")
    d = doc["data"]
    assert d["status"] == "cancelled" and d["requester"] == "agent-7"
    assert d["rule"] == "truncates-wait" and d["statement"] == f"TRUNCATE {table}"
    assert d["decided_by"] is None and d["reason"] == "the client disconnected"
    status, row = api(g, "GET", f"/api/v1/approvals/{req['id']}", dana)
    assert status == 200 and row["status"] == "cancelled"
    # too late to approve: nothing runs
    assert api(g, "POST", f"/api/v1/approvals/{req['id']}/approve", dana, {})[0] == 409
    assert count(pg, table) == 3


def test_cancel_request_cancels_a_held_statement(hooked, pg, idp):
    g, rec, table = hooked
    dana = admin_token(idp, "dana", ["dba"])
    c = psycopg.connect(conninfo(g, idp.token()), autocommit=True)

    def client(out):
        try:
            c.execute(f"UPDATE {table} SET v = 'changed' WHERE id = 1")
        except psycopg.Error as e:
            out.values["error"] = e
        out.values["after"] = c.execute("SELECT 1").fetchall()

    try:
        t, out = in_thread(client)
        req = wait_pending(g, dana, table)
        c.cancel()
        # The rule's own 8 s timeout ends the wait if the cancel does nothing (then the
        # request is "expired", not "cancelled", and the error is not 57014).
        finish(t)
        assert out.error is None, out.error
        assert isinstance(out.values.get("error"), psycopg.errors.QueryCanceled), out.values
        assert out.values["after"] == [(1,)]
        headers, body, doc = rec.wait_event("approval.cancelled", req["id"])
        check_delivery(headers, body, doc, "approval.cancelled")
        assert pg.sql(f"SELECT v FROM {table} WHERE id = 1", dbname=APP_DB) == "a"
    finally:
        c.close()


# ------------------------------------------------------------------------------------------------
# 5. a held statement denied through the admin API, on every client path

PATHS = ["psycopg-params", "psycopg-pipeline", "psycopg-in-begin", "asyncpg-param",
         "asyncpg-prepared", "asyncpg-simple"]


@pytest.fixture(scope="module", params=["unmasked", "masked"])
def deny_gw(request, pg, idp, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("deny")
    rules = [{"name": "deletes-need-a-human", "patterns": [r"\bdelete\b"], "action": "approve",
              "approvers": ["dba"], "timeout": "10m"}]
    extra = {}
    if request.param == "masked":
        # masking follows every result (a Describe of its own before each Execute): the held
        # and denied Execute must fit that bookkeeping too
        extra["mask"] = [{"columns": ["*.v"], "strategy": "redact"}]
    cfg = gateway_config(pg, idp, guardrail=rules, allow_groups=["agents", "dba"], **extra)
    cfg["admin"] = {"admin_groups": ["admins"]}
    cfg["state"] = {"url": f"sqlite:///{tmp}/state.db", "poll_interval": "100ms"}
    with Gateway(cfg, env=gateway_env(pg)) as g:
        yield g, request.param == "masked"


@pytest.fixture
def witnessed(pg):
    """A table of three rows whose every DELETE -- committed, rolled back or failed -- advances
    a sequence (a statement-level trigger; sequences ignore rollbacks): the witness that no
    backend ever ran a DELETE on it."""
    t = "deny_" + uuid.uuid4().hex[:8]
    pg.sql(f"""
        CREATE TABLE {t} (id int primary key, v text);
        INSERT INTO {t} VALUES (1, 'a'), (2, 'b'), (3, 'c');
        CREATE SEQUENCE {t}_ran;
        CREATE FUNCTION {t}_witness() RETURNS trigger LANGUAGE plpgsql AS
            $$ BEGIN PERFORM nextval('{t}_ran'); RETURN NULL; END $$;
        CREATE TRIGGER {t}_witness BEFORE DELETE ON {t}
            FOR EACH STATEMENT EXECUTE FUNCTION {t}_witness();
        ALTER TABLE {t} OWNER TO app;
        GRANT ALL ON SEQUENCE {t}_ran TO app;
    """, dbname=APP_DB)
    yield t
    # a client a failed test left held has its DELETE parsed and bound upstream, in an open
    # transaction holding the table's lock: end it, or the DROP would wait for it
    pg.sql(f"SELECT count(pg_terminate_backend(pid)) FROM pg_locks "
           f"WHERE relation = '{t}'::regclass AND pid <> pg_backend_pid()", dbname=APP_DB)
    pg.sql(f"DROP TABLE IF EXISTS {t}; DROP FUNCTION IF EXISTS {t}_witness();"
           f"DROP SEQUENCE IF EXISTS {t}_ran;", dbname=APP_DB)


def deletes_run(pg, t: str) -> bool:
    return pg.sql(f"SELECT is_called FROM {t}_ran", dbname=APP_DB) == "t"


def row_free(pg, t: str, id: int) -> bool:
    """Row `id` is there and no transaction holds a lock on it (a DELETE not yet committed
    would)."""
    return pg.sql(f"SELECT count(*) FROM (SELECT FROM {t} WHERE id = {id} "
                  "FOR UPDATE SKIP LOCKED) r", dbname=APP_DB) == "1"


def backends_seen(pg, prefix: str) -> int:
    """Server backends whose current (or, idle, last) statement starts with `prefix`."""
    return int(pg.sql("SELECT count(*) FROM pg_stat_activity "
                      f"WHERE query LIKE '{prefix}%' AND pid <> pg_backend_pid()"))


def _psycopg_path(dsn: str, path: str, t: str, out: Outcome) -> None:
    sql = f"DELETE FROM {t} WHERE id = %s"
    with psycopg.connect(dsn, autocommit=True) as c:
        try:
            if path == "psycopg-params":
                c.execute(sql, (1,))
            elif path == "psycopg-pipeline":
                with c.pipeline():
                    c.execute("SELECT 1")
                    c.execute(sql, (1,))
                    c.execute("SELECT 2")       # after the failure: skipped up to the Sync
            else:  # psycopg-in-begin
                c.execute("BEGIN")
                c.execute(f"UPDATE {t} SET v = 'in-tx' WHERE id = 2")
                try:
                    c.execute(sql, (1,))
                finally:
                    # the failed statement aborted the transaction, as a server's error would
                    try:
                        c.execute("SELECT 1")
                    except psycopg.errors.InFailedSqlTransaction:
                        out.values["aborted"] = True
                    c.execute("ROLLBACK")
        except psycopg.errors.InsufficientPrivilege as e:
            out.values["denied"] = str(e)
        out.values["next"] = c.execute(f"SELECT v FROM {t} ORDER BY id").fetchall()


def _asyncpg_path(port: int, token: str, path: str, t: str, out: Outcome) -> None:
    async def run():
        conn = await asyncpg.connect(host="127.0.0.1", port=port, user="agent-7",
                                     database=APP_DB, password=token, ssl=False)
        try:
            try:
                if path == "asyncpg-param":
                    await conn.execute(f"DELETE FROM {t} WHERE id = $1", 1)
                elif path == "asyncpg-prepared":
                    stmt = await conn.prepare(f"DELETE FROM {t} WHERE id = $1")
                    await stmt.fetch(1)
                else:  # asyncpg-simple: no parameter, the simple Query protocol
                    await conn.execute(f"DELETE FROM {t} WHERE id = 1")
            except asyncpg.exceptions.InsufficientPrivilegeError as e:
                out.values["denied"] = str(e)
            out.values["next"] = [tuple(r) for r in
                                  await conn.fetch(f"SELECT v FROM {t} ORDER BY id")]
        finally:
            await conn.close()
    asyncio.run(run())


@pytest.mark.parametrize("path", PATHS)
def test_denied_through_the_admin_api(deny_gw, pg, idp, witnessed, path):
    g, masked = deny_gw
    t = witnessed
    token = idp.token()
    if path.startswith("psycopg"):
        dsn = conninfo(g, token)
        th, out = in_thread(lambda out: _psycopg_path(dsn, path, t, out))
    else:
        port = g.port("pg")
        th, out = in_thread(lambda out: _asyncpg_path(port, token, path, t, out))
    dana = admin_token(idp, "dana", ["dba"])
    req = wait_pending(g, dana, t)
    # held: the row is there, unlocked, and no DELETE has run on the server
    assert th.is_alive() and row_free(pg, t, 1) and not deletes_run(pg, t)
    status, row = api(g, "POST", f"/api/v1/approvals/{req['id']}/deny", dana,
                      {"reason": "not on " + path})
    assert status == 200 and row["status"] == "denied", row
    finish(th)
    assert out.error is None, out.error
    denied = out.values.get("denied")
    assert denied is not None, f"no deny error: {out.values}"
    assert req["id"] in denied and "not on " + path in denied and "dana" in denied
    # the session goes on: the next statement works (masked or not, per the gateway)
    v = "****" if masked else None
    assert out.values["next"] == [(v or "a",), (v or "b",), (v or "c",)]
    if path == "psycopg-in-begin":
        assert out.values.get("aborted"), "the transaction was not aborted by the denial"
    # nothing ran: the rows are there (the in-transaction UPDATE rolled back), and the
    # witness never moved
    assert pg.sql(f"SELECT string_agg(v, ',' ORDER BY id) FROM {t}", dbname=APP_DB) == "a,b,c"
    assert not deletes_run(pg, t)
    if path == "asyncpg-simple":
        # the simple protocol sends the text only with the Query the gateway held: no
        # backend has ever had it as its statement
        assert backends_seen(pg, f"DELETE FROM {t}") == 0


# ------------------------------------------------------------------------------------------------
# 6. reload of identity and guardrails


def test_identity_reload_refuses_new_logins_and_ends_revoked_sessions(pg, idp, tmp_path):
    ops_key, ops_entry = admin_key("ops", ["admins"])
    cfg = gateway_config(pg, idp)
    cfg["identity"]["api_key"].append(ops_entry)
    cfg["admin"] = {"admin_groups": ["admins"]}
    cfg["state"] = {"url": f"sqlite:///{tmp_path}/state.db"}   # so the sessions API answers
    with Gateway(cfg, env=gateway_env(pg)) as g:
        key = idp.api_keys["ci"]
        old_jwt = idp.token("agent-7", ["agents"])
        new_jwt = idp.token("agent-7", ["agents"], audience="hoopwire-v2")
        host, port = g.address("pg")
        # before: the key and the old audience log in; the new audience does not
        assert raw_refusal(host, port, new_jwt)["C"] == "28P01"
        by_key = psycopg.connect(conninfo(g, key), autocommit=True)
        by_jwt = psycopg.connect(conninfo(g, old_jwt), autocommit=True)
        try:
            assert api(g, "GET", "/api/v1/sessions", ops_key)[0] == 200
            unknown_key = sample(g, "hoopwire_auth_failures_total", connection="pg",
                                 reason="unknown_api_key")
            bad_aud = sample(g, "hoopwire_auth_failures_total", connection="pg",
                             reason="bad_audience")

            new = json.loads(json.dumps(g.config))
            new["identity"]["api_key"] = [k for k in new["identity"]["api_key"]
                                          if k["name"] not in ("ci", "ops")]
            new["identity"]["issuer"][0]["audience"] = "hoopwire-v2"
            reloads = g.log_text().count("configuration reloaded")
            g.write_config(new)
            g.signal(signal.SIGHUP)
            wait_until(lambda: g.log_text().count("configuration reloaded") > reloads,
                       "the reload")

            # new logins with the removed key or the old audience are refused, as a bad
            # password is ...
            for secret in (key, old_jwt):
                with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
                    psycopg.connect(conninfo(g, secret))
                fields = raw_refusal(host, port, secret)
                assert fields["S"] == "FATAL" and fields["C"] == "28P01", fields
            # ... with the reason in the operator log and the metric
            g.wait_log(r"connection refused .*reason=auth_failed detail=\"?unknown_api_key")
            g.wait_log(r"connection refused .*reason=auth_failed detail=\"?bad_audience")
            assert sample(g, "hoopwire_auth_failures_total", connection="pg",
                          reason="unknown_api_key") == unknown_key + 2
            assert sample(g, "hoopwire_auth_failures_total", connection="pg",
                          reason="bad_audience") == bad_aud + 2
            # the admin API authenticates with the same identity config
            assert api(g, "GET", "/api/v1/sessions", ops_key)[0] == 401
            # the new audience gets in
            with psycopg.connect(conninfo(g, new_jwt), autocommit=True) as c:
                assert c.execute("SELECT 1").fetchall() == [(1,)]
            # README: a reload ends the sessions whose credential it removed (the API key),
            # and keeps the others (the issuer is still configured: a new audience concerns
            # new tokens)
            with pytest.raises(psycopg.OperationalError, match="no longer admits"):
                by_key.execute("SELECT 'gone'")
            assert by_jwt.execute("SELECT 'still here'").fetchall() == [("still here",)]
        finally:
            by_key.close()
            by_jwt.close()


def _tcp_inode(local_port: int, remote_port: int) -> str | None:
    """The socket inode of the loopback TCP connection local_port <-> remote_port (as the
    gateway's side sees it), from /proc/net/tcp."""
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            lport = int(parts[1].split(":")[1], 16)
            rport = int(parts[2].split(":")[1], 16)
            if lport == local_port and rport == remote_port:
                return parts[9]
    return None


def serving_worker(conn: pgraw.RawConn, gw_port: int, workers: dict[int, int]) -> int:
    """Which worker (index) holds the gateway's end of this client connection."""
    client_port = conn.sock.getsockname()[1]

    def find():
        inode = _tcp_inode(gw_port, client_port)
        if inode is None or inode == "0":
            return None
        for pid, index in workers.items():
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                        return (index,)
                except OSError:
                    continue
        return None
    return wait_until(find, "the worker serving the connection")[0]


def worker_pids(g: Gateway) -> dict[int, int]:
    """{pid: worker index} of a --workers gateway, once every worker listens."""
    found = dict((int(p), int(i)) for i, p in
                 re.findall(r"worker started worker=(\d+) pid=(\d+)", g.log_text()))
    wait_until(lambda: g.log_text().count("listening connection=pg") >= len(found),
               "every worker listening")
    return found


def each_worker(g: Gateway, workers: dict[int, int], attempt) -> dict[int, object]:
    """Open connections until every worker has served one; `attempt(conn)` runs on each
    (its result kept per worker). SO_REUSEPORT spreads connections by their source port, so
    a handful of tries reaches both."""
    host, port = g.address("pg")
    results: dict[int, object] = {}
    for _ in range(200):
        with pgraw.RawConn(host, port, GUARD) as conn:
            conn.send(pgraw.startup_packet({"user": "agent-7", "database": APP_DB}))
            kind, _ = conn.read_message(GUARD)
            assert kind == b"R"
            index = serving_worker(conn, port, workers)
            results.setdefault(index, []).append(attempt(conn))
        if len(results) == len(workers):
            return results
    raise AssertionError(f"only workers {sorted(results)} of {sorted(workers.values())} served")


def _login_and_run(token: str, sql: str):
    def attempt(conn: pgraw.RawConn):
        conn.send(pgraw.typed(b"p", token.encode() + b"\0"))
        while True:
            kind, body = conn.read_message(GUARD)
            if kind == b"E":
                return ("refused", pgraw.error_fields(body)["C"])
            if kind == b"Z":
                break
        conn.send(pgraw.typed(b"Q", sql.encode() + b"\0"))
        return ("ran", _answer(conn))
    return attempt


def _answer(conn: pgraw.RawConn):
    """The answer to one simple Query: ("error", SQLSTATE, message) or ("rows", n)."""
    got, rows = None, 0
    while True:
        kind, body = conn.read_message(GUARD)
        if kind == b"E":
            f = pgraw.error_fields(body)
            got = ("error", f["C"], f["M"])
        elif kind == b"D":
            rows += 1
        elif kind == b"Z":
            return got or ("rows", rows)


def test_reload_under_workers_reaches_every_worker(pg, idp):
    cfg = gateway_config(pg, idp)
    with Gateway(cfg, env=gateway_env(pg), workers=2) as g:
        workers = worker_pids(g)
        assert len(workers) == 2
        key = idp.api_keys["ci"]
        jwt = idp.token()
        probe = "SELECT 1 AS ops_forbidden"
        # before: every worker lets the key in and runs the probe
        before = each_worker(g, workers, _login_and_run(key, probe))
        assert all(r == [("ran", ("rows", 1))] * len(r) for r in before.values()), before
        # a session on each worker, open across the reload
        host, port = g.address("pg")
        open_sessions = {}
        for _ in range(200):
            c = pgraw.login(host, port, jwt, timeout=GUARD)
            index = serving_worker(c, port, workers)
            if index in open_sessions:
                c.close()
            else:
                open_sessions[index] = c
            if len(open_sessions) == 2:
                break
        assert len(open_sessions) == 2
        try:
            new = json.loads(json.dumps(g.config))
            new["identity"]["api_key"] = [k for k in new["identity"]["api_key"]
                                          if k["name"] != "ci"]
            new["connection"][0]["guardrail"] = [
                {"name": "no-ops-forbidden", "patterns": [r"\bops_forbidden\b"],
                 "message": "added by the reload"}]
            reloads = g.log_text().count("configuration reloaded")
            g.write_config(new)
            g.signal(signal.SIGHUP)                     # to the supervisor only
            wait_until(lambda: g.log_text().count("configuration reloaded") >= reloads + 2,
                       "both workers reloading")
            # every worker: the removed key is refused, the new rule blocks
            after_key = each_worker(g, workers, _login_and_run(key, probe))
            assert all(r == [("refused", "28P01")] * len(r) for r in after_key.values()), after_key
            after_rule = each_worker(g, workers, _login_and_run(jwt, probe))
            for results in after_rule.values():
                for outcome, answer in results:
                    assert outcome == "ran" and answer[:2] == ("error", "42501"), answer
                    assert "no-ops-forbidden" in answer[2] and "added by the reload" in answer[2]
            # the sessions open on each worker stay open and obey the new rule from their
            # next statement
            for index, c in open_sessions.items():
                c.send(pgraw.typed(b"Q", probe.encode() + b"\0"))
                answer = _answer(c)
                assert answer[:2] == ("error", "42501"), (index, answer)
                c.send(pgraw.typed(b"Q", b"SELECT 1\0"))
                assert _answer(c) == ("rows", 1), index
        finally:
            for c in open_sessions.values():
                c.close()


def test_reload_under_workers_reaches_the_admin_api(pg, idp, tmp_path):
    ops_key, ops_entry = admin_key("ops", ["admins"])
    cfg = gateway_config(pg, idp)
    cfg["identity"]["api_key"].append(ops_entry)
    cfg["admin"] = {"admin_groups": ["admins"]}
    cfg["state"] = {"url": f"sqlite:///{tmp_path}/state.db"}   # so the sessions API answers
    with Gateway(cfg, env=gateway_env(pg), workers=2) as g:
        worker_pids(g)
        key = idp.api_keys["ci"]
        assert api(g, "GET", "/api/v1/sessions", ops_key)[0] == 200
        new = json.loads(json.dumps(g.config))
        new["identity"]["api_key"] = [k for k in new["identity"]["api_key"]
                                      if k["name"] not in ("ci", "ops")]
        reloads = g.log_text().count("configuration reloaded")
        g.write_config(new)
        g.signal(signal.SIGHUP)
        wait_until(lambda: g.log_text().count("configuration reloaded") >= reloads + 2,
                   "both workers reloading")
        host, port = g.address("pg")
        assert raw_refusal(host, port, key)["C"] == "28P01"     # the data path has it
        assert api(g, "GET", "/api/v1/sessions", ops_key)[0] == 401
