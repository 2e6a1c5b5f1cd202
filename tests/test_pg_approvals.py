"""Just-in-time approvals on the PostgreSQL path: real server, real drivers, the real admin API.

A held statement must not reach the upstream until it is approved: tests check the row is still
there while the request is pending, and that no server backend has seen the statement.

Timing: tests wait for events (a request listed, a thread finished, a session closed) with
generous deadlines, which only bound how long a failure takes to show. The few bounds that are
the behaviour say so where they are.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
import uuid

import asyncpg
import psycopg
import pytest

import pgraw
from gwfixtures import ADMIN_AUDIENCE, AUDIENCE, conninfo, gateway_config, gateway_env
from helpers import Gateway, api, wait_pending


# Ten minutes to decide: long past any test's own deadlines, so a slow machine can never let a
# request expire before the test decides it (test_timeout_denies sets its own).
def approve_rules(timeout="10m"):
    return [{"name": "deletes-need-a-human", "patterns": [r"\bdelete\b"], "action": "approve",
             "approvers": ["dba"], "timeout": timeout},
            {"name": "truncate-with-reason", "patterns": [r"\btruncate\b"], "action": "approve",
             "approvers": ["dba"], "timeout": timeout, "reason_required": True}]


def make_gateway(pg, idp, tmp, *, timeout="10m", state_url=None, state_extra=None, extra=None,
                 env_extra=None, **kw):
    cfg = gateway_config(pg, idp, guardrail=approve_rules(timeout),
                         allow_groups=["agents", "dba"], **kw)
    cfg["admin"] = {"admin_groups": ["admins"]}
    cfg["state"] = {"url": state_url or f"sqlite:///{tmp}/state.db", "poll_interval": "100ms",
                    **(state_extra or {})}
    if extra:
        cfg.update(extra)
    env = gateway_env(pg)
    env.update(env_extra or {})
    return Gateway(cfg, env=env)


@pytest.fixture(scope="module")
def agw(pg, idp, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("approvals")
    with make_gateway(pg, idp, tmp) as g:
        yield g


@pytest.fixture
def table(pg):
    name = "apr_" + uuid.uuid4().hex[:8]
    pg.sql(f"CREATE TABLE {name} (id int primary key, v text);"
           f"INSERT INTO {name} VALUES (1, 'a'), (2, 'b'), (3, 'c');"
           f"ALTER TABLE {name} OWNER TO app;", dbname="appdb")
    yield name
    pg.sql(f"DROP TABLE IF EXISTS {name}", dbname="appdb")


def count(pg, table) -> int:
    return int(pg.sql(f"select count(*) from {table}", dbname="appdb"))


def finish(t: threading.Thread, timeout: float = 60.0) -> None:
    """Wait for a client thread to end. The deadline only bounds how long a hang takes to show
    (every statement here is answered within a second or so when things work)."""
    t.join(timeout)
    assert not t.is_alive(), f"the client still waits after {timeout:g} s"


def backends_with(pg, statement_prefix: str) -> list[tuple[str, str, str]]:
    """(pid, state, query_start) of every server backend whose current statement, or last one
    when idle, starts with `statement_prefix` (pg_stat_activity keeps the text until the next
    statement). This tells whether the upstream has seen a statement at all, without waiting
    to see whether it goes on to change rows."""
    out = pg.sql("SELECT pid, state, query_start FROM pg_stat_activity "
                 f"WHERE query LIKE '{statement_prefix}%' AND pid <> pg_backend_pid()")
    return [tuple(line.split("|")) for line in out.splitlines() if line]


def row_free(pg, table, id: int) -> bool:
    """Row `id` exists and no transaction holds it: one that ran a DELETE of it, even without
    committing yet, keeps it locked (SKIP LOCKED then returns nothing)."""
    return pg.sql(f"SELECT count(*) FROM (SELECT FROM {table} WHERE id = {id} "
                  "FOR UPDATE SKIP LOCKED) r", dbname="appdb") == "1"


class Run(threading.Thread):
    """Run a statement on its own connection in a thread; keep the result or the error."""

    def __init__(self, dsn, sql, *, after=None):
        super().__init__(daemon=True)
        self.dsn, self.sql, self.after = dsn, sql, after
        self.result = self.error = self.after_result = None
        self.notices = []

    def run(self):
        try:
            with psycopg.connect(self.dsn, autocommit=True) as c:
                c.add_notice_handler(lambda d: self.notices.append(d.message_primary))
                try:
                    cur = c.execute(self.sql)
                    self.result = cur.statusmessage
                except psycopg.Error as e:
                    self.error = e
                if self.after:
                    self.after_result = c.execute(self.after).fetchall()
        except Exception as e:  # noqa: BLE001
            self.error = e


@pytest.fixture
def tokens(idp):
    # each token is used on the data path and on the admin API: minted for both audiences
    def tok(subject, groups):
        return idp.token(subject, groups, audience=[AUDIENCE, ADMIN_AUDIENCE])
    return {"agent": tok("agent-7", ["agents"]), "dana": tok("dana", ["dba"]),
            "eve": tok("eve", ["agents"]), "sam": tok("sam", ["agents", "dba"]),
            "root": tok("root", ["admins"])}


def test_held_until_approved_then_runs(agw, pg, table, tokens):
    t = Run(conninfo(agw, tokens["agent"]), f"DELETE FROM {table} WHERE id = 1", after="SELECT 1")
    t.start()
    req = wait_pending(agw, tokens["dana"], statement_part=table)
    assert req["requester"] == "agent-7" and req["rule"] == "deletes-need-a-human"
    assert req["statement"].endswith("WHERE id = ?")           # literals masked
    # nothing reached the upstream: no backend has seen the DELETE, every row is there
    assert backends_with(pg, f"DELETE FROM {table}") == []
    assert count(pg, table) == 3 and t.is_alive()
    status, row = api(agw, "POST", f"/api/v1/approvals/{req['id']}/approve", tokens["dana"],
                      {"reason": "ok for cleanup"})
    assert status == 200 and row["status"] == "approved" and row["decided_by"] == "dana"
    # (how fast it is released is measured by bench/approval_roundtrip.py, not asserted here)
    finish(t)
    assert t.error is None and t.result == "DELETE 1"
    assert t.after_result == [(1,)]
    assert count(pg, table) == 2
    assert any(req["id"] in n for n in t.notices)              # the client was told what it waits for
    status, again = api(agw, "POST", f"/api/v1/approvals/{req['id']}/deny", tokens["dana"], {})
    assert status == 409


def test_denied_errors_and_session_goes_on(agw, pg, table, tokens):
    t = Run(conninfo(agw, tokens["agent"]), f"DELETE FROM {table}", after="SELECT 2")
    t.start()
    req = wait_pending(agw, tokens["dana"], statement_part=table)
    status, row = api(agw, "POST", f"/api/v1/approvals/{req['id']}/deny", tokens["dana"],
                      {"reason": "use a WHERE clause"})
    assert status == 200 and row["status"] == "denied"
    finish(t)
    assert isinstance(t.error, psycopg.errors.InsufficientPrivilege)
    msg = str(t.error)
    assert req["id"] in msg and "use a WHERE clause" in msg and "dana" in msg
    assert t.after_result == [(2,)]
    assert count(pg, table) == 3


def test_self_approval_and_non_approvers_refused(agw, pg, table, tokens):
    t = Run(conninfo(agw, tokens["sam"]), f"DELETE FROM {table} WHERE id = 2")
    t.start()
    req = wait_pending(agw, tokens["dana"], statement_part=table)
    status, body = api(agw, "POST", f"/api/v1/approvals/{req['id']}/approve", tokens["sam"], {})
    assert status == 403 and "requester" in body["error"]["message"]
    status, body = api(agw, "POST", f"/api/v1/approvals/{req['id']}/approve", tokens["eve"], {})
    assert status == 403
    status, body = api(agw, "GET", "/api/v1/approvals", tokens["eve"])
    assert status == 403
    status, body = api(agw, "GET", "/api/v1/approvals", "not-a-token")
    assert status == 401
    assert count(pg, table) == 3
    status, _ = api(agw, "POST", f"/api/v1/approvals/{req['id']}/approve", tokens["dana"], {})
    assert status == 200
    finish(t)
    assert t.error is None and count(pg, table) == 2


def test_reason_required(agw, pg, table, tokens):
    t = Run(conninfo(agw, tokens["agent"]), f"TRUNCATE {table}")
    t.start()
    req = wait_pending(agw, tokens["dana"], statement_part=table)
    status, body = api(agw, "POST", f"/api/v1/approvals/{req['id']}/approve", tokens["dana"], {})
    assert status == 400 and "reason" in body["error"]["message"]
    status, _ = api(agw, "POST", f"/api/v1/approvals/{req['id']}/approve", tokens["dana"],
                    {"reason": "ticket OPS-12"})
    assert status == 200
    finish(t)
    assert t.error is None and count(pg, table) == 0


def test_timeout_denies(pg, idp, tmp_path, table, tokens):
    with make_gateway(pg, idp, tmp_path, timeout="1s") as g:
        t0 = time.monotonic()
        t = Run(conninfo(g, tokens["agent"]), f"DELETE FROM {table}", after="SELECT 3")
        t.start()
        # Timing bound that is the behaviour: the request times out. Nobody decides, so the
        # client is answered only by the 1 s timeout firing; 60 s leaves a loaded machine room.
        finish(t, 60)
        # ...and not before the timeout: a lower bound, which load can only make easier (t0 is
        # taken before the connection, so the request itself is younger than this)
        assert time.monotonic() - t0 >= 0.9
        assert isinstance(t.error, psycopg.errors.InsufficientPrivilege)
        assert "no decision in time" in str(t.error)
        assert t.after_result == [(3,)]
        assert count(pg, table) == 3
        status, body = api(g, "GET", "/api/v1/approvals?status=expired", tokens["dana"])
        assert status == 200 and len(body["approvals"]) == 1


def test_window_grant_lets_the_next_ones_through(pg, idp, tmp_path, table, tokens):
    with make_gateway(pg, idp, tmp_path) as g:
        t = Run(conninfo(g, tokens["agent"]), f"DELETE FROM {table} WHERE id = 1")
        t.start()
        req = wait_pending(g, tokens["dana"], statement_part=table)
        status, row = api(g, "POST", f"/api/v1/approvals/{req['id']}/approve", tokens["dana"],
                          {"scope": "window", "window_seconds": 600, "reason": "batch cleanup"})
        assert status == 200 and row["scope"] == "window" and row["grant_until"] > time.time()
        finish(t)
        assert t.error is None
        with psycopg.connect(conninfo(g, tokens["agent"]), autocommit=True) as c:
            assert c.execute(f"DELETE FROM {table} WHERE id = 2").statusmessage == "DELETE 1"
        # the grant is for this identity only
        t2 = Run(conninfo(g, tokens["eve"]), f"DELETE FROM {table} WHERE id = 3")
        t2.start()
        wait_pending(g, tokens["dana"], statement_part=table)
        assert count(pg, table) == 1


def test_disconnect_cancels_and_extended_protocol_holds(agw, pg, table, tokens):
    host, port = agw.address("pg")
    with pgraw.login(host, port, tokens["agent"], timeout=30) as conn:
        sql = f"DELETE FROM {table} WHERE id = $1".encode()
        conn.send(pgraw.typed(b"P", b"\0" + sql + b"\0\0\0")
                  + pgraw.typed(b"B", b"\0\0\0\0\0\1\0\0\0\x011\0\0")
                  + pgraw.typed(b"E", b"\0\0\0\0\0") + pgraw.typed(b"S"))
        req = wait_pending(agw, tokens["dana"], statement_part=table)
    # the client went away while held: wait for the request to leave "pending"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status, row = api(agw, "GET", f"/api/v1/approvals/{req['id']}", tokens["dana"])
        if row["status"] != "pending":
            break
        time.sleep(0.05)
    assert row["status"] == "cancelled"
    assert count(pg, table) == 3


def test_asyncpg_held_then_approved(agw, pg, table, tokens):
    async def run():
        conn = await asyncpg.connect(host="127.0.0.1", port=agw.port("pg"), user="agent-7",
                                     database="appdb", password=tokens["agent"], ssl=False)
        try:
            return await conn.execute(f"DELETE FROM {table} WHERE id = $1", 3)
        finally:
            await conn.close()

    out = {}
    th = threading.Thread(target=lambda: out.setdefault("r", asyncio.run(run())), daemon=True)
    th.start()
    req = wait_pending(agw, tokens["dana"], statement_part=table)
    assert api(agw, "POST", f"/api/v1/approvals/{req['id']}/approve", tokens["dana"], {})[0] == 200
    finish(th)
    assert out["r"] == "DELETE 1" and count(pg, table) == 2


@pytest.mark.parametrize("how", ["crash", "stop"])
def test_restart_marks_pending_abandoned(pg, idp, tmp_path, table, tokens, how):
    """Held sessions do not survive the gateway; their requests are marked abandoned -- at once
    on a clean stop (the client hears why), by the restarted process after a crash."""
    g = make_gateway(pg, idp, tmp_path)
    try:
        t = Run(conninfo(g, tokens["agent"]), f"DELETE FROM {table}")
        t.start()
        req = wait_pending(g, tokens["dana"], statement_part=table)
        if how == "crash":
            g.proc.kill()
        else:
            g.stop()
        finish(t)
        assert t.error is not None
        if how == "stop":
            assert "gateway" in str(t.error)
    finally:
        g.stop()
    with make_gateway(pg, idp, tmp_path) as g2:
        status, row = api(g2, "GET", f"/api/v1/approvals/{req['id']}", tokens["dana"])
        assert status == 200 and row["status"] == "abandoned"
    assert count(pg, table) == 3


def test_admin_api_sessions_need_admin_group_and_openapi(agw, tokens):
    assert api(agw, "GET", "/api/v1/sessions", tokens["dana"])[0] == 403
    with urllib.request.urlopen(agw.admin_url + "/api/v1/openapi.json", timeout=30) as r:
        doc = json.loads(r.read())
    assert doc["openapi"].startswith("3.") and "/api/v1/approvals/{id}/approve" in doc["paths"]
    status, body = api(agw, "POST", "/api/v1/approvals/apr_nope/approve", tokens["dana"], {"x": 1})
    assert status == 400 and body["error"]["code"] == "bad_request"
    status, body = api(agw, "POST", "/api/v1/approvals/apr_nope/approve", tokens["dana"], {})
    assert status == 404


def test_two_gateways_share_a_postgresql_store(pg, idp, tmp_path, table, tokens):
    """A statement held in gateway A is released by a decision taken through gateway B. B
    announces it with NOTIFY; the poll is set to an hour, so nothing else could release it.
    With A's listening connection killed, A listens again and catches up."""
    pg.create_database("hwstate", owner="app")
    url = f"postgresql://app@127.0.0.1:{pg.port}/hwstate"
    kw = dict(state_url=url, state_extra={"password_env": "STATE_PW", "poll_interval": "1h"})
    env = {"STATE_PW": pg.passwords["app"]}
    # two replicas: each its own name (on Kubernetes the pod's host name differs by itself)
    with make_gateway(pg, idp, tmp_path, env_extra={**env, "HOOPWIRE_GATEWAY_ID": "a"}, **kw) as a, \
            make_gateway(pg, idp, tmp_path, env_extra={**env, "HOOPWIRE_GATEWAY_ID": "b"}, **kw) as b:
        t = Run(conninfo(a, tokens["agent"]), f"DELETE FROM {table} WHERE id = 1")
        t.start()
        req = wait_pending(b, tokens["dana"], statement_part=table)   # seen through B
        assert api(b, "POST", f"/api/v1/approvals/{req['id']}/approve", tokens["dana"], {})[0] == 200
        # Timing bound that is the behaviour: released long before the 1 h poll could have
        # done it, so by B's NOTIFY. (The release time is bench/approval_roundtrip.py's
        # --two-gateways figure.)
        finish(t, 60)
        assert t.error is None and count(pg, table) == 2

        # both replicas listen (B may still be connecting its listener on a slow machine)
        listening = "FROM pg_stat_activity WHERE query LIKE 'LISTEN %' AND datname = 'hwstate'"
        deadline = time.monotonic() + 30
        while int(pg.sql(f"SELECT count(*) {listening}")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        killed = pg.sql(f"SELECT count(pg_terminate_backend(pid)) {listening}", dbname="hwstate")
        assert int(killed) == 2
        t = Run(conninfo(a, tokens["agent"]), f"DELETE FROM {table} WHERE id = 2")
        t.start()
        req = wait_pending(b, tokens["dana"], statement_part=table)
        assert api(b, "POST", f"/api/v1/approvals/{req['id']}/deny", tokens["dana"],
                   {"reason": "not now"})[0] == 200
        finish(t, 60)   # A listens again after about a second and catches up
        assert t.error is not None and "not now" in str(t.error) and count(pg, table) == 2


def test_workers_share_approvals_through_the_parent(pg, idp, tmp_path, table, tokens):
    """--workers 2: the statement is held in a worker; the parent serves the admin API and
    decides through the shared SQLite store; the worker finds the decision and releases it."""
    cfg_gw = make_gateway(pg, idp, tmp_path)
    cfg = cfg_gw.config
    cfg_gw.stop()
    with Gateway(cfg, env=gateway_env(pg), workers=2) as g:
        t = Run(conninfo(g, tokens["agent"]), f"DELETE FROM {table} WHERE id = 3")
        t.start()
        req = wait_pending(g, tokens["dana"], statement_part=table)
        assert req["gateway_id"].endswith(("/0", "/1"))
        assert api(g, "POST", f"/api/v1/approvals/{req['id']}/approve", tokens["dana"], {})[0] == 200
        finish(t)
        assert t.error is None and count(pg, table) == 2


def test_idle_timeout_spares_a_held_session(pg, idp, tmp_path, table, tokens):
    with make_gateway(pg, idp, tmp_path, idle_timeout="1s") as g:
        t = Run(conninfo(g, tokens["agent"]), f"DELETE FROM {table} WHERE id = 1")
        t.start()
        req = wait_pending(g, tokens["dana"], statement_part=table)
        # A control session, opened after the statement was held: once the gateway has closed
        # it for idleness, the held session -- idle for longer -- has been through the same
        # sweep. No sleep: the control's closing is the event that says the check has run.
        host, port = g.address("pg")
        with pgraw.login(host, port, tokens["agent"], timeout=30) as idle:
            assert idle.expect_error_and_close(timeout=30)["C"] == "57P05"   # idle timeout
        assert t.is_alive()
        # had the sweep closed it, the request would be cancelled and the DELETE never run
        assert api(g, "POST", f"/api/v1/approvals/{req['id']}/approve", tokens["dana"], {})[0] == 200
        finish(t)
        assert t.error is None and count(pg, table) == 2


def test_startup_setting_under_an_approve_rule_is_refused(pg, idp, tmp_path, tokens):
    """`options=-c ...` is a SET no statement shows; it cannot be held, so it is refused."""
    cfg_rules = [{"name": "role-changes", "patterns": [r"\brole\b"], "action": "approve",
                  "approvers": ["dba"]}]
    cfg = gateway_config(pg, idp, guardrail=cfg_rules, allow_groups=["agents", "dba"])
    cfg["state"] = {"url": f"sqlite:///{tmp_path}/state.db"}
    with Gateway(cfg, env=gateway_env(pg)) as g:
        with pytest.raises(psycopg.OperationalError, match="approval"):
            psycopg.connect(conninfo(g, tokens["agent"], options="-c role=pg_read_all_data"))


class _Receiver:
    """A real local HTTP server collecting webhook deliveries (or hanging, to play dead: it
    sets `contacted` and keeps every request unanswered until close())."""

    def __init__(self, hang: bool = False):
        import http.server
        import socketserver
        received = self.received = []
        self.hang = hang
        contacted = self.contacted = threading.Event()
        release = self.release = threading.Event()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(h):
                if hang:
                    contacted.set()
                    release.wait(600)
                    return
                body = h.rfile.read(int(h.headers.get("Content-Length", 0)))
                received.append((dict(h.headers), body))
                h.send_response(204)
                h.end_headers()

            def log_message(h, *a):
                pass

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.server.shutdown()


def test_webhooks_signed_and_a_dead_receiver_does_not_stall(pg, idp, tmp_path, table, tokens):
    from hoopwire.approvals.webhooks import verify_signature
    good, dead = _Receiver(), _Receiver(hang=True)
    try:
        # The dead receiver's hook waits up to an hour for an answer: were deliveries on the
        # approval path, the statement below would wait that long too. The good receiver
        # answers at once; its 30 s per attempt only keeps a loaded machine from turning a slow
        # answer into a retry (and a duplicate event).
        hooks = [{"url": good.url, "secret_env": "HOOK_SECRET", "timeout": "30s",
                  "events": ["approval.created", "approval.decided"]},
                 {"url": dead.url, "timeout": "1h"},
                 {"url": "http://127.0.0.1:9/refused"}]
        with make_gateway(pg, idp, tmp_path, extra={"webhook": hooks},
                          env_extra={"HOOK_SECRET": "s3cr3t"}) as g:
            t = Run(conninfo(g, tokens["agent"]), f"DELETE FROM {table} WHERE id = 1")
            t.start()
            req = wait_pending(g, tokens["dana"], statement_part=table)
            # the dead receiver holds the approval.created delivery from here on
            assert dead.contacted.wait(30), "the dead receiver was never called"
            assert api(g, "POST", f"/api/v1/approvals/{req['id']}/approve", tokens["dana"],
                       {})[0] == 200
            # No wall-clock bound: the statement completes while the dead receiver is still
            # hanging (it is released only in `finally`), which is the behaviour itself.
            finish(t)
            assert t.error is None and not dead.release.is_set()
            deadline = time.monotonic() + 30
            while len(good.received) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
        events = []
        for headers, body in good.received:
            h = {k.lower(): v for k, v in headers.items()}
            assert verify_signature(b"s3cr3t", h["x-hoopwire-timestamp"], body,
                                    h["x-hoopwire-signature"])
            doc = json.loads(body)
            assert doc["data"]["id"] == req["id"] and "token_id" not in doc["data"]
            events.append(doc["event"])
        assert events == ["approval.created", "approval.decided"]
    finally:
        good.close()
        dead.close()


def test_each_execution_of_a_prepared_statement_needs_its_approval(agw, pg, table, tokens):
    """Approving once covers one execution: a prepared DELETE run again is held again (the
    Parse itself runs nothing and is not held)."""
    host, port = agw.address("pg")
    with pgraw.login(host, port, tokens["agent"], timeout=30) as conn:
        sql = f"DELETE FROM {table} WHERE id = $1".encode()
        conn.send(pgraw.typed(b"P", b"del\0" + sql + b"\0\0\0") + pgraw.typed(b"S"))
        assert [conn.read_message(30)[0] for _ in range(2)] == [b"1", b"Z"]

        def run(i: int):
            conn.send(pgraw.typed(b"B", b"\0del\0\0\0\0\1\0\0\0\1" + str(i).encode() + b"\0\0")
                      + pgraw.typed(b"E", b"\0\0\0\0\0") + pgraw.typed(b"S"))

        run(1)
        req = wait_pending(agw, tokens["dana"], statement_part=table)
        assert api(agw, "POST", f"/api/v1/approvals/{req['id']}/approve", tokens["dana"], {})[0] == 200
        got = []
        while not got or got[-1] != b"Z":
            got.append(conn.read_message(30)[0])
        got = [k for k in got if k != b"N"]         # the NOTICE naming the request
        assert got == [b"2", b"C", b"Z"] and count(pg, table) == 2
        run(2)                                  # the same prepared statement, again
        req2 = wait_pending(agw, tokens["dana"], statement_part=table)
        assert req2["id"] != req["id"]
        # held: row 2 is there and no transaction has deleted it, committed or not (the
        # Bind goes upstream -- it runs nothing -- so pg_stat_activity cannot tell here)
        assert row_free(pg, table, 2)
        assert count(pg, table) == 2
        assert api(agw, "POST", f"/api/v1/approvals/{req2['id']}/deny", tokens["dana"],
                   {"reason": "one is enough"})[0] == 200
        got = []
        while not got or got[-1][0] != b"Z":
            got.append(conn.read_message(30))
        got = [(k, b) for k, b in got if k != b"N"]
        kinds = [k for k, _ in got]
        assert kinds == [b"2", b"E", b"Z"], kinds
        assert "one is enough" in pgraw.error_fields(got[1][1])["M"]
        assert count(pg, table) == 2
        # the session goes on, the statement still prepared
        conn.send(pgraw.typed(b"Q", b"SELECT 1\0"))
        while conn.read_message(30)[0] != b"Z":
            pass
