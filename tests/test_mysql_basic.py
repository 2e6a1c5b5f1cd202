"""End-to-end basics through a mysql connection: what a client does right after logging in --
queries, writes, multi-statements, prepared statements, a schema switch, KILL of its own
statement -- with real drivers, the gateway and the session's MariaDB.
"""

from __future__ import annotations

import threading
import time

import pymysql
import pytest

from helpers import wait_until
from mysqlfixtures import MY_DB, MY_ITEMS
from mysqlgw import connector_connect, mygw, mysql_cli, pymysql_connect  # noqa: F401


def test_select_rows(mygw, idp):
    conn = pymysql_connect(mygw, idp.token())
    try:
        cur = conn.cursor()
        cur.execute("SELECT id, name FROM items ORDER BY id")
        assert [tuple(r) for r in cur.fetchall()] == MY_ITEMS
    finally:
        conn.close()


def test_write_in_a_transaction(mygw, idp, mariadb):
    mariadb.sql(f"CREATE TABLE IF NOT EXISTS {MY_DB}.basic_w (id int PRIMARY KEY, v text)")
    conn = pymysql_connect(mygw, idp.token())
    try:
        cur = conn.cursor()
        cur.execute("DELETE FROM basic_w")
        conn.begin()
        assert cur.execute("INSERT INTO basic_w VALUES (1, 'a'), (2, 'b')") == 2
        conn.rollback()
        cur.execute("SELECT count(*) FROM basic_w")
        assert cur.fetchone() == (0,)
        cur.execute("INSERT INTO basic_w VALUES (%s, %s)", (3, "it's"))
        conn.commit()
    finally:
        conn.close()
    assert mariadb.sql(f"SELECT v FROM {MY_DB}.basic_w") == [("it's",)]


def test_multi_statements(mygw, idp):
    conn = pymysql_connect(mygw, idp.token(),
                           client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS)
    try:
        cur = conn.cursor()
        cur.execute("SELECT 1; SELECT name FROM items WHERE id = 2; DO 0")
        assert cur.fetchall() == ((1,),)
        assert cur.nextset()
        assert cur.fetchall() == (("banana",),)
    finally:
        conn.close()


def test_prepared_statements_binary_rows(mygw, idp):
    conn = connector_connect(mygw, idp.token())
    try:
        cur = conn.cursor(prepared=True)
        cur.execute("SELECT id, name FROM items WHERE id >= ? ORDER BY id", (2,))
        assert cur.fetchall() == [(2, "banana"), (3, "cherry")]
        cur.close()
    finally:
        conn.close()


def test_schema_switch_and_the_cli(mygw, idp):
    r = mysql_cli(mygw, idp.token(), "-e", "USE information_schema; SELECT DATABASE()")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "information_schema"


def _sleeping(mariadb, thread: int) -> bool:
    """The upstream thread `thread` is running a SELECT SLEEP (the server's processlist)."""
    return bool(mariadb.sql(f"SELECT 1 FROM information_schema.processlist WHERE id = "
                            f"{int(thread)} AND info LIKE 'SELECT SLEEP%'"))


def test_kill_query_by_the_gateway_connection_id(mygw, idp, mariadb):
    # the id a driver knows (the greeting's) is the gateway's; KILL QUERY with it stops the
    # statement on the upstream thread behind it -- for the same identity only
    token = idp.token(subject="killer")
    victim = pymysql_connect(mygw, token)
    killer = pymysql_connect(mygw, token)
    other = pymysql_connect(mygw, idp.token(subject="someone-else"))
    result: dict = {}

    def sleep():
        cur = victim.cursor()
        t0 = time.monotonic()
        try:
            cur.execute("SELECT SLEEP(20)")
            result["row"] = cur.fetchone()
        except pymysql.err.MySQLError as e:
            result["error"] = e
        result["took"] = time.monotonic() - t0

    try:
        gid = victim.thread_id()
        cur = victim.cursor()
        cur.execute("SELECT CONNECTION_ID()")             # the upstream thread behind gid
        thread = cur.fetchone()[0]
        t = threading.Thread(target=sleep)
        t.start()
        # the KILL must find the SLEEP running: sent before it (a fixed 0.5 s pause was all
        # that ordered them), it would stop nothing and the SLEEP would run its 20 s
        wait_until(lambda: _sleeping(mariadb, thread), 30, "the SLEEP is running upstream")
        with pytest.raises(pymysql.err.MySQLError) as e:
            other.cursor().execute(f"KILL QUERY {gid}")
        assert e.value.args[0] == 1094                     # Unknown thread id
        killer.cursor().execute(f"KILL QUERY {gid}")
        t.join(25)
        assert not t.is_alive()
        assert result["took"] < 15                          # not the SLEEP's 20 s
        # MariaDB ends a killed SLEEP() with the value 1, or ERR 1317 (query interrupted)
        assert result.get("row") == (1,) or result["error"].args[0] == 1317
    finally:
        for c in (victim, killer, other):
            c.close()


def test_masking_and_guardrails_are_wired_in(mariadb, idp, pki):
    # the listener builds the session's masker and policy (H4's and H3's parts judge them)
    from helpers import Gateway
    from mysqlgw import mysql_gateway_config, mysql_gateway_env
    cfg = mysql_gateway_config(mariadb, idp, pki, mask=[{"columns": ["app.customers.ssn"]}],
                               guardrail=[{"name": "no-drop", "patterns": [r"\bdrop\b"]}])
    with Gateway(cfg, env=mysql_gateway_env(mariadb)) as gw:
        gw.pki = pki
        conn = pymysql_connect(gw, idp.token())
        try:
            cur = conn.cursor()
            cur.execute("SELECT name, ssn FROM customers ORDER BY id")
            rows = cur.fetchall()
            assert [r[0] for r in rows] == ["Ada Lovelace", "Alan Turing"]
            assert all("-" not in r[1] and r[1] not in ("123-45-6789", "987-65-4321")
                       for r in rows), rows
            with pytest.raises(pymysql.err.MySQLError) as e:
                cur.execute("DROP TABLE items")
            assert e.value.args[0] == 1227 and "no-drop" in e.value.args[1]
            cur.execute("SELECT count(*) FROM items")       # the session goes on
            assert cur.fetchone() == (3,)
        finally:
            conn.close()


def test_connection_ids_are_unique_across_workers(mariadb, idp, pki):
    # each worker numbers its connections in its own residue class: a KILL <id> never means
    # two sessions
    from helpers import Gateway
    from mysqlgw import mysql_gateway_config, mysql_gateway_env
    with Gateway(mysql_gateway_config(mariadb, idp, pki), env=mysql_gateway_env(mariadb),
                 workers=2) as gw:
        gw.pki = pki
        # the port answers once one worker listens: wait for both
        from helpers import wait_until
        wait_until(lambda: gw.log_text().count("hoopwire.mysql listening") >= 2, 20,
                   "both workers listening", gw)
        conns = [pymysql_connect(gw, idp.token()) for _ in range(12)]
        try:
            ids = [c.thread_id() for c in conns]
            assert len(set(ids)) == len(ids), ids
            assert {i % 2 for i in ids} == {0, 1}, f"one worker took all 12: {ids}"
        finally:
            for c in conns:
                c.close()


def test_reload_brings_rules_to_open_sessions(mariadb, idp, pki):
    # a reload's guardrails apply to open sessions from their next statement; a session whose
    # character set the rules cannot read (gbk) is ended instead
    import signal

    from helpers import Gateway, wait_until
    from mysqlgw import mysql_gateway_config, mysql_gateway_env
    with Gateway(mysql_gateway_config(mariadb, idp, pki), env=mysql_gateway_env(mariadb)) as gw:
        gw.pki = pki
        plain = pymysql_connect(gw, idp.token())
        gbk = pymysql_connect(gw, idp.token(), charset="gbk")
        try:
            cfg = gw.config
            cfg["connection"][0]["guardrail"] = [{"name": "no-drop", "patterns": [r"\bdrop\b"]}]
            gw.write_config(cfg)
            gw.signal(signal.SIGHUP)
            gw.wait_log(r"configuration reloaded")
            with pytest.raises(pymysql.err.MySQLError) as e:
                plain.cursor().execute("DROP TABLE IF EXISTS nothing_here")
            assert e.value.args[0] == 1227
            with pytest.raises(pymysql.err.MySQLError) as e:
                gbk.cursor().execute("SELECT 1")
            # an unsolicited ERR (sequence id 0) reads as a lost connection, as when the
            # server itself ends a session: the log says why
            assert e.value.args[0] in (1227, 2013), e.value.args
            wait_until(lambda: "reason=policy_reload" in gw.log_text(), 10, "logged", gw)
            assert "Traceback" not in gw.log_text()
        finally:
            plain.close()
            gbk.close()
