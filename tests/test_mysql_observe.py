"""Metrics, recording and replay for MySQL sessions, through the same core as PostgreSQL's
(issue 20): real MariaDB, real drivers, the admin API and the CLI as an operator uses them.

- Metrics: after statements allowed, blocked, masked and held for approval on a MySQL
  connection, /metrics (as Prometheus parses it) carries the relay's counters with
  protocol="mysql" and the connection's name, bytes counted in each direction by at least what
  the client sent and received, and the verdicts, masked values, sessions and auth failures
  under that name.
- Recording: with [audit] on (record_results), a MySQL session's statements are in the audit
  log, the session index (/api/v1/sessions), a session's statements and its replay, the blocked
  one marked blocked and the masked values masked in the record; `hoopwire audit verify` passes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.request

import pymysql
import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import Gateway, api, wait_pending, wait_until
from mysqlfixtures import MY_CUSTOMERS, MY_DB
from mysqlgw import mysql_gateway_config, mysql_gateway_env, pymysql_connect

pytestmark = pytest.mark.timeout(180)

NAME = "my-observed"        # a connection name of its own: the labels must carry it
ADMINS = ["admins"]
SSN_RULE = {"columns": [f"{MY_DB}.customers.ssn"], "strategy": "redact"}
HOLD_RULE = {"name": "deletes-need-a-human", "patterns": [r"(?i)^\s*delete\b"],
             "action": "approve", "approvers": ["dba"], "timeout": "10m"}


def _tokens(idp) -> dict[str, str]:
    from gwfixtures import ADMIN_AUDIENCE, AUDIENCE
    return {"agent": idp.token("agent-7", ["agents"], audience=[AUDIENCE, ADMIN_AUDIENCE]),
            "dba": idp.token("dana", ["dba"], audience=[AUDIENCE, ADMIN_AUDIENCE]),
            "root": idp.admin_token("root", ADMINS)}


def scrape(gw) -> list:
    with urllib.request.urlopen(gw.admin_url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return [s for fam in text_string_to_metric_families(text) for s in fam.samples]


def value(samples, name: str, **labels) -> float:
    """The sum of the samples called `name` whose labels include `labels` (0 if none)."""
    return sum(s.value for s in samples if s.name == name and
               all(s.labels.get(k) == v for k, v in labels.items()))


# -- metrics -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mgw(mariadb, idp, pki, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("my-observe")
    cfg = mysql_gateway_config(mariadb, idp, pki, name=NAME, allow_groups=["agents", "dba"],
                               guardrail=[{"pack": "destructive-ddl"}, HOLD_RULE],
                               mask=[SSN_RULE])
    cfg["admin"] = {"admin_groups": ADMINS}
    cfg["state"] = {"url": f"sqlite:///{tmp}/state.db", "poll_interval": "100ms"}
    mariadb.sql(f"DROP TABLE IF EXISTS {MY_DB}.obs_held;"
                f"CREATE TABLE {MY_DB}.obs_held (id int PRIMARY KEY);"
                f"INSERT INTO {MY_DB}.obs_held VALUES (1), (2);")
    with Gateway(cfg, env=mysql_gateway_env(mariadb)) as g:
        g.pki = pki
        yield g
    mariadb.sql(f"DROP TABLE IF EXISTS {MY_DB}.obs_held")


UP = 60_000                 # bytes of one statement's text (a comment): client -> upstream
DOWN = 100_000              # bytes of one value in a result: upstream -> client


def test_metrics_of_a_mysql_connection(mgw, idp, mariadb):
    tok = _tokens(idp)
    before = scrape(mgw)
    conn = pymysql_connect(mgw, tok["agent"], name=NAME, autocommit=True)
    try:
        cur = conn.cursor()
        cur.execute("SELECT 1 /* " + "u" * UP + " */")
        assert cur.fetchall() == ((1,),)
        cur.execute(f"SELECT REPEAT('d', {DOWN})")
        assert cur.fetchall() == (("d" * DOWN,),)
        cur.execute("SELECT id, ssn FROM customers ORDER BY id")         # masked: 2 values
        assert cur.fetchall() == tuple((i, "****") for i, *_ in MY_CUSTOMERS)
        with pytest.raises(pymysql.err.MySQLError):
            cur.execute("DROP TABLE items")                              # blocked
        out = {}

        def held():
            c2 = pymysql_connect(mgw, tok["agent"], name=NAME, autocommit=True)
            try:
                out["n"] = c2.cursor().execute("DELETE FROM obs_held WHERE id = 1")
            except Exception as e:  # noqa: BLE001 -- reported below
                out["err"] = e
            finally:
                c2.close()

        t = threading.Thread(target=held, daemon=True)
        t.start()
        req = wait_pending(mgw, tok["dba"], "obs_held")
        mid = scrape(mgw)
        # while it waits, it is a pending approval
        assert value(mid, "hoopwire_approvals_pending") == 1
        status, _ = api(mgw, "POST", f"/api/v1/approvals/{req['id']}/approve", tok["dba"], {})
        assert status == 200
        t.join(30)
        assert not t.is_alive() and out.get("n") == 1, out
        cur.execute("SELECT 2")
    finally:
        conn.close()
    with pytest.raises(pymysql.err.OperationalError):
        pymysql_connect(mgw, "not-a-token", name=NAME)
    # the sessions' ends are counted when the gateway sees them go
    after = wait_until(
        lambda: (lambda s: s if value(s, "hoopwire_sessions_closed_total", connection=NAME)
                 - value(before, "hoopwire_sessions_closed_total", connection=NAME) >= 2
                 else None)(scrape(mgw)), 20, "two sessions closed", gw=mgw)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    mine = {"connection": NAME, "protocol": "mysql"}
    # the relay's counters: under the connection's name and protocol="mysql", nothing else
    assert {s.labels.get("protocol") for s in after
            if s.name == "hoopwire_bytes_total" and s.labels.get("connection") == NAME} == {"mysql"}
    up = delta("hoopwire_bytes_total", direction="client_to_upstream", **mine)
    down = delta("hoopwire_bytes_total", direction="upstream_to_client", **mine)
    assert up >= UP and down >= DOWN, (up, down)
    assert up < UP + DOWN and down < UP + DOWN + 50_000, (up, down)   # each in its own direction
    # COM_QUERY statements that went to the server: 5 on the first session, the held one
    statements = delta("hoopwire_statements_total", query_protocol="simple", **mine)
    assert statements >= 6, statements
    assert delta("hoopwire_statement_seconds_count", **mine) >= 6
    # verdicts, under the connection's name
    assert delta("hoopwire_guardrail_verdicts_total", connection=NAME, verdict="block",
                 rule="destructive-ddl") == 1
    assert delta("hoopwire_guardrail_verdicts_total", connection=NAME, verdict="approve",
                 rule="deletes-need-a-human") == 1
    assert delta("hoopwire_masked_values_total", connection=NAME, kind="column") == 2
    assert delta("hoopwire_connections_total", connection=NAME, result="ok") >= 2
    assert delta("hoopwire_auth_failures_total", connection=NAME) == 1
    assert delta("hoopwire_sessions_closed_total", connection=NAME,
                 reason="client_terminate") >= 2
    assert value(after, "hoopwire_approvals_pending") == 0
    assert mariadb.sql(f"SELECT count(*) FROM {MY_DB}.obs_held") == [(1,)]


# -- recording and replay ----------------------------------------------------------------------

def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "hoopwire", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


def records(path) -> list[dict]:
    from hoopwire.audit import read_records
    return list(read_records(str(path))) if os.path.isdir(path) else []


@pytest.fixture(scope="module", params=[False, True], ids=["log", "indexed"])
def recorded(request, mariadb, idp, pki, tmp_path_factory):
    """One recorded MySQL session: allowed, masked (record_results), blocked, failed. Twice:
    the statements read back from the log, and indexed in the store (index_statements)."""
    tmp = tmp_path_factory.mktemp("my-audit")
    cfg = mysql_gateway_config(mariadb, idp, pki, guardrail=[{"pack": "destructive-ddl"}],
                               mask=[SSN_RULE], record_results=True,
                               record_results_max_bytes="64KiB")
    cfg["admin"] = {"admin_groups": ADMINS}
    cfg["audit"] = {"path": str(tmp / "audit"), "flush_interval": "50ms",
                    "index_statements": request.param}
    cfg["state"] = {"url": f"sqlite:///{tmp}/state.db"}
    tok = _tokens(idp)
    with Gateway(cfg, env=mysql_gateway_env(mariadb)) as g:
        g.pki = pki
        conn = pymysql_connect(g, idp.token("agent-7", ["agents"]), autocommit=True)
        try:
            cur = conn.cursor()
            cur.execute("SELECT id, name, ssn FROM customers WHERE id = 1")
            assert cur.fetchall() == ((1, MY_CUSTOMERS[0][1], "****"),)
            cur.execute("SELECT id, name FROM items WHERE id = %s", (2,))
            assert cur.fetchall() == ((2, "banana"),)
            with pytest.raises(pymysql.err.MySQLError):
                cur.execute("DROP TABLE items")
            with pytest.raises(pymysql.err.ProgrammingError):
                cur.execute("SELECT * FROM no_such_table")
            cur.execute("UPDATE items SET name = name WHERE id = 99")
        finally:
            conn.close()
        root = tok["root"]
        wait_until(lambda: [s for s in api(g, "GET", "/api/v1/sessions?identity=agent-7",
                                            root)[1]["sessions"] if s["ended_at"] is not None]
                   and [r for r in records(tmp / "audit") if r["type"] == "session.end"],
                   20, "the ended session in the index and its session.end in the log", gw=g)
        yield g, root, tmp / "audit"


def test_session_index_and_statements(recorded):
    g, root, _ = recorded
    status, body = api(g, "GET", "/api/v1/sessions?identity=agent-7", root)
    assert status == 200 and len(body["sessions"]) == 1, body
    s = body["sessions"][0]
    assert s["subject"] == "agent-7" and s["connection"] == "my"
    assert s["close_reason"] == "client_terminate" and s["statements"] >= 5
    assert s["bytes_in"] > 0
    status, detail = api(g, "GET", f"/api/v1/sessions/{s['id']}", root)
    assert status == 200, detail
    st = detail["statements"]
    by = {x["statement"]: x for x in st}
    masked = by["SELECT id, name, ssn FROM customers WHERE id = ?"]
    assert masked["verdict"] == "allow" and masked["rows"] == 1 and masked["masked"] == 1
    assert by["SELECT id, name FROM items WHERE id = ?"]["rows"] == 1
    assert by["DROP TABLE items"]["verdict"] == "block"
    assert by["UPDATE items SET name = name WHERE id = ?"]["verdict"] == "allow"
    assert [x["seq"] for x in st] == sorted(x["seq"] for x in st)
    flat = json.dumps(detail)
    assert MY_CUSTOMERS[0][3] not in flat             # the ssn never reaches the record
    assert "banana" not in flat                       # nor a literal (record_results aside)


def test_a_failed_statement_is_recorded_as_an_error(recorded):
    g, root, path = recorded
    sid = api(g, "GET", "/api/v1/sessions?identity=agent-7", root)[1]["sessions"][0]["id"]
    st = api(g, "GET", f"/api/v1/sessions/{sid}", root)[1]["statements"]
    assert "statements could not be recorded" not in g.log_text()
    err = [x for x in st if x["statement"] == "SELECT * FROM no_such_table"]
    assert len(err) == 1, json.dumps(st, indent=1)
    assert err[0]["verdict"] == "error" and "no_such_table" in err[0]["error"]


def test_replay_and_the_log(recorded, idp):
    g, root, path = recorded
    sid = api(g, "GET", "/api/v1/sessions?identity=agent-7", root)[1]["sessions"][0]["id"]
    status, replay = api(g, "GET", f"/api/v1/sessions/{sid}/replay", root)
    assert status == 200 and replay["session"] == sid, replay
    kinds = [r["type"] for r in replay["records"]]
    assert kinds[0] == "session.start" and kinds[-1] == "session.end", kinds
    stmts = [r for r in replay["records"] if r["type"] == "statement"]
    sel = next(r for r in stmts if r["statement"].startswith("SELECT id, name, ssn"))
    assert sel["result"] == [["1", MY_CUSTOMERS[0][1], "****"]]     # as the client saw it
    assert next(r for r in stmts if "items WHERE" in r["statement"])["result"] == [["2", "banana"]]
    assert next(r for r in stmts if r["statement"].startswith("DROP"))["verdict"] == "block"
    assert any(r["type"] == "statement.blocked" and r["rule"] == "destructive-ddl"
               for r in replay["records"])
    assert MY_CUSTOMERS[0][3] not in json.dumps(replay)
    # the CLI, as an operator reads it
    env = {"HOOPWIRE_ADMIN_URL": g.admin_url, "HOOPWIRE_TOKEN": root}
    out = cli("sessions", "replay", sid, env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "agent-7 connected" in lines[0] and "session ended" in lines[-1], out.stdout
    assert any("BLOCK" in ln and "DROP TABLE items" in ln for ln in lines), out.stdout
    assert "'****'" in out.stdout and MY_CUSTOMERS[0][3] not in out.stdout
    # the same records in the log on disk, and the chain holds
    on_disk = [r for r in records(path) if r.get("session") == sid]
    assert [r["seq"] for r in on_disk] == [r["seq"] for r in replay["records"]]
    out = cli("audit", "verify", str(path))
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stdout + out.stderr
