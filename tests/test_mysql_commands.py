"""Every command of the MySQL command phase end to end: real drivers (PyMySQL, mysqlclient,
mysql-connector with prepared=True for the binary protocol), the gateway, the session's
MariaDB. What the relay refuses (COM_CHANGE_USER, unknown commands, server-side cursors,
LOAD DATA LOCAL, a guardrail's block) is answered with an ERR and the session goes on;
garbage and truncated packets end the session cleanly and leave the gateway serving.
"""

from __future__ import annotations

import datetime
import decimal
import socket
import struct
import threading
import time

import pymysql
import pytest
from pymysql.constants import CLIENT, COMMAND

from helpers import Gateway, wait_until
from mysqlfixtures import MY_DB, MY_ITEMS
from mysqlgw import (connector_connect, mygw, mysql_gateway_config,  # noqa: F401
                     mysql_gateway_env, mysqlclient_connect, pymysql_connect)


@pytest.fixture(scope="module")
def guarded(mariadb, idp, pki):
    cfg = mysql_gateway_config(mariadb, idp, pki, guardrail=[
        {"name": "no-drop", "patterns": [r"\bdrop\s+table\b"], "action": "block",
         "message": "no DROP through agents"}])
    with Gateway(cfg, env=mysql_gateway_env(mariadb)) as g:
        g.pki = pki
        yield g


@pytest.fixture(scope="module")
def tables(mariadb):
    mariadb.sql(f"CREATE TABLE IF NOT EXISTS {MY_DB}.cmd_types (id int PRIMARY KEY, "
                "big bigint unsigned, d date, dt datetime(6), t time, dec1 decimal(10,2), "
                "f double, s varchar(20), b blob)")
    mariadb.sql(f"DELETE FROM {MY_DB}.cmd_types")
    mariadb.sql(f"INSERT INTO {MY_DB}.cmd_types VALUES (1, 18446744073709551615, '2024-02-29', "
                "'2024-02-29 13:05:09.123456', '-838:59:59', 12.34, 2.5, 'héllo', x'00ff'), "
                "(2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)")
    mariadb.sql(f"DROP PROCEDURE IF EXISTS {MY_DB}.two_results")
    mariadb.sql(f"CREATE PROCEDURE {MY_DB}.two_results() BEGIN SELECT 1 AS a; "
                f"SELECT name FROM {MY_DB}.items ORDER BY id; END")
    mariadb.sql(f"CREATE TABLE IF NOT EXISTS {MY_DB}.cmd_drop_me (id int)")
    return True


def _raw_command(conn, command: int, body: bytes = b""):
    """Send one command on a PyMySQL connection; its first answer packet (raw)."""
    conn._execute_command(command, body)          # noqa: SLF001
    return conn._read_packet()                    # noqa: SLF001


def _error_of(excinfo) -> int:
    return excinfo.value.args[0]


def test_ping_init_db_statistics(mygw, idp):
    conn = mysqlclient_connect(mygw, idp.token())
    try:
        conn.ping()
        assert "Uptime" in conn.stat()                  # COM_STATISTICS: a string answer
        conn.select_db(MY_DB)                           # COM_INIT_DB
        cur = conn.cursor()
        cur.execute("SELECT DATABASE()")
        assert cur.fetchone() == (MY_DB,)
    finally:
        conn.close()


def test_field_list_and_unknown_command(mygw, idp):
    conn = pymysql_connect(mygw, idp.token())
    try:
        conn._execute_command(COMMAND.COM_FIELD_LIST, b"items\0")       # noqa: SLF001
        names = []
        while True:
            pkt = conn._read_packet()                                   # noqa: SLF001
            if pkt.is_eof_packet() or pkt.is_ok_packet():
                break
            names.append(pkt.read_length_coded_string())                # catalog
            for _ in range(3):
                pkt.read_length_coded_string()
            names[-1] = pkt.read_length_coded_string()
        assert names == [b"id", b"name"]
        with pytest.raises(pymysql.err.MySQLError) as e:
            _raw_command(conn, 0x20)
        assert _error_of(e) == 1047
        with pytest.raises(pymysql.err.MySQLError) as e:
            _raw_command(conn, COMMAND.COM_SHUTDOWN)
        assert _error_of(e) == 1047
        cur = conn.cursor()
        cur.execute("SELECT count(*) FROM items")
        assert cur.fetchone() == (len(MY_ITEMS),)
    finally:
        conn.close()


@pytest.mark.parametrize("pure", [True, False], ids=["connector-pure", "connector-c"])
def test_change_user_refused_session_goes_on(mygw, idp, pure):
    conn = connector_connect(mygw, idp.token(), pure=pure)
    try:
        with pytest.raises(Exception) as e:
            conn.cmd_change_user(username="root", password="", database=MY_DB)
        assert getattr(e.value, "errno", None) == 1227
        cur = conn.cursor()
        cur.execute("SELECT CURRENT_USER()")
        assert cur.fetchone()[0].startswith("app@")
    finally:
        conn.close()


@pytest.mark.parametrize("pure", [True, False], ids=["connector-pure", "connector-c"])
def test_reset_connection(mygw, idp, pure):
    conn = connector_connect(mygw, idp.token(), pure=pure)
    try:
        cur = conn.cursor()
        cur.execute("SET @x = 5")
        conn.cmd_reset_connection()
        cur.execute("SELECT @x")
        assert cur.fetchone() == (None,)
    finally:
        conn.close()


@pytest.mark.parametrize("pure", [True, False], ids=["connector-pure", "connector-c"])
def test_prepared_binary_rows_every_type(mygw, idp, tables, mariadb, pure):
    """Binary rows of every type read the same through the gateway as straight from the
    server, with the same driver (mysql-connector's Python and C implementations)."""
    import mysql.connector
    sql = "SELECT id, big, d, dt, t, dec1, f, s, b FROM cmd_types WHERE id >= ? ORDER BY id"
    direct = mysql.connector.connect(host=mariadb.host, port=mariadb.port, user="app",
                                     password=mariadb.passwords["app"], database=MY_DB,
                                     use_pure=pure, ssl_disabled=True)
    try:
        dcur = direct.cursor(prepared=True)
        dcur.execute(sql, (1,))
        want = dcur.fetchall()
    finally:
        direct.close()
    conn = connector_connect(mygw, idp.token(), pure=pure)
    try:
        cur = conn.cursor(prepared=True)
        cur.execute(sql, (1,))
        rows = cur.fetchall()
        assert rows == want
        # (the C implementation reads BIGINT UNSIGNED max as -1 straight from the server too)
        assert rows[0][:2] == (1, 18446744073709551615 if pure else -1)
        assert rows[0][2] == datetime.date(2024, 2, 29)
        assert rows[0][3] == datetime.datetime(2024, 2, 29, 13, 5, 9, 123456)
        assert rows[0][5] == decimal.Decimal("12.34") and rows[0][6] == 2.5
        assert rows[0][7] == "héllo" and bytes(rows[0][8]) == b"\x00\xff"
        assert rows[1] == (2,) + (None,) * 8
        # the same statement again (COM_STMT_EXECUTE of a known id), then closed
        cur.execute(sql, (2,))
        assert cur.fetchall() == [(2,) + (None,) * 8]
        cur.close()
        cur = conn.cursor()
        cur.execute("SELECT 1")
        assert cur.fetchall() == [(1,)]
    finally:
        conn.close()


def test_prepared_long_data_and_reset(mygw, idp, tables, mariadb):
    mariadb.sql(f"CREATE TABLE IF NOT EXISTS {MY_DB}.cmd_blobs (id int, b longblob)")
    mariadb.sql(f"DELETE FROM {MY_DB}.cmd_blobs")
    conn = connector_connect(mygw, idp.token())
    try:
        cur = conn.cursor(prepared=True)
        import io
        blob = io.BytesIO(b"z" * 100000)          # a file-like parameter goes as long data
        cur.execute("INSERT INTO cmd_blobs VALUES (?, ?)", (1, blob))
        conn.commit()
        cur.execute("SELECT length(b) FROM cmd_blobs WHERE id = ?", (1,))
        assert cur.fetchall() == [(100000,)]
    finally:
        conn.close()


def test_multi_results_from_a_procedure(mygw, idp, tables):
    conn = pymysql_connect(mygw, idp.token(), client_flag=CLIENT.MULTI_STATEMENTS)
    try:
        cur = conn.cursor()
        cur.execute("CALL two_results()")
        assert cur.fetchall() == ((1,),)
        assert cur.nextset()
        assert [r[0] for r in cur.fetchall()] == [n for _, n in MY_ITEMS]
        while cur.nextset():
            pass
        cur.execute("SELECT 2; SELECT 3")
        assert cur.fetchall() == ((2,),)
        assert cur.nextset() and cur.fetchall() == ((3,),)
    finally:
        conn.close()


def test_load_data_local_refused(mygw, idp, tmp_path):
    f = tmp_path / "rows.tsv"
    f.write_text("91\tnope\n")
    conn = pymysql_connect(mygw, idp.token(), local_infile=True)
    try:
        cur = conn.cursor()
        with pytest.raises(pymysql.err.MySQLError) as e:
            cur.execute(f"LOAD DATA LOCAL INFILE '{f}' INTO TABLE items")
        assert _error_of(e) in (1148, 4166, 3948)
        cur.execute("SELECT count(*) FROM items WHERE id = 91")
        assert cur.fetchone() == (0,)
    finally:
        conn.close()


def test_guardrail_block_is_an_error_and_the_session_goes_on(guarded, idp, tables, mariadb):
    conn = pymysql_connect(guarded, idp.token(), client_flag=CLIENT.MULTI_STATEMENTS)
    try:
        cur = conn.cursor()
        for sql in ("DROP TABLE cmd_drop_me", "SELECT 1; DROP /* x */ TABLE cmd_drop_me",
                    "/*!DROP TABLE cmd_drop_me*/", "drop\ttable `cmd_drop_me`"):
            with pytest.raises(pymysql.err.MySQLError) as e:
                cur.execute(sql)
            assert _error_of(e) == 1227
            assert "no-drop" in str(e.value)
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
        # a prepare is judged too
        pconn = connector_connect(guarded, idp.token())
        try:
            with pytest.raises(Exception) as e:
                pconn.cursor(prepared=True).execute("DROP TABLE cmd_drop_me")
            assert getattr(e.value, "errno", None) == 1227
        finally:
            pconn.close()
    finally:
        conn.close()
    assert mariadb.sql(f"SHOW TABLES FROM {MY_DB} LIKE 'cmd_drop_me'") == [("cmd_drop_me",)]


def test_kill_query_of_own_session_and_unknown_id(mygw, idp, mariadb):
    a = pymysql_connect(mygw, idp.token())
    b = pymysql_connect(mygw, idp.token())
    try:
        gid = a.thread_id()
        cur = a.cursor()
        cur.execute("SELECT CONNECTION_ID()")                 # the upstream thread behind gid
        thread = cur.fetchone()[0]
        out = {}

        def run():
            cur = a.cursor()
            t0 = time.monotonic()
            try:
                cur.execute("SELECT SLEEP(20)")
                out["rows"] = cur.fetchall()
            except pymysql.err.MySQLError as e:
                out["err"] = e.args[0]
            out["took"] = time.monotonic() - t0

        t = threading.Thread(target=run)
        t.start()
        # the KILL must find the SLEEP running: sent before it (a fixed 1 s pause was all that
        # ordered them), it would stop nothing and the SLEEP would run its 20 s
        wait_until(lambda: mariadb.sql(
            f"SELECT 1 FROM information_schema.processlist WHERE id = {int(thread)} "
            f"AND info LIKE 'SELECT SLEEP%'"), 30, "the SLEEP is running upstream")
        b.cursor().execute(f"KILL QUERY {gid}")
        t.join(15)
        assert not t.is_alive()
        assert out["took"] < 15 and (out.get("rows") == ((1,),) or out.get("err") == 1317)
        with pytest.raises(pymysql.err.MySQLError) as e:
            b.cursor().execute("KILL QUERY 4000000000")
        assert _error_of(e) == 1094
        with pytest.raises(pymysql.err.MySQLError) as e:
            b.cursor().execute("KILL USER app")
        assert _error_of(e) == 1227
        b.cursor().execute("SELECT 1")
    finally:
        a.close()
        b.close()


def test_garbage_packet_ends_the_session_cleanly(mygw, idp):
    conn = pymysql_connect(mygw, idp.token())
    conn._write_bytes(b"\x05\x00\x00\x07hello")                 # noqa: SLF001 (seq 7)
    with pytest.raises(pymysql.err.MySQLError) as e:
        conn._read_packet()                                     # noqa: SLF001
    assert e.value.args[0] in (1156, 2013)
    # the gateway still serves
    ok = pymysql_connect(mygw, idp.token())
    ok.cursor().execute("SELECT 1")
    ok.close()


def test_truncated_packet_then_close_leaves_the_gateway_serving(mygw, idp):
    conn = pymysql_connect(mygw, idp.token())
    conn._write_bytes(b"\x64\x00\x00\x00\x03SELECT")            # noqa: SLF001: 100 bytes promised
    conn._sock.close()                                          # noqa: SLF001
    ok = pymysql_connect(mygw, idp.token())
    cur = ok.cursor()
    cur.execute("SELECT count(*) FROM items")
    assert cur.fetchone() == (len(MY_ITEMS),)
    ok.close()


def test_oversized_command_refused(mariadb, idp, pki):
    cfg = mysql_gateway_config(mariadb, idp, pki, max_message_size=1024)
    with Gateway(cfg, env=mysql_gateway_env(mariadb)) as g:
        g.pki = pki
        conn = pymysql_connect(g, idp.token())
        with pytest.raises(pymysql.err.MySQLError) as e:
            conn.cursor().execute("SELECT '" + "x" * 5000 + "'")
        assert e.value.args[0] in (1153, 2013)


# -- approvals: a held COM_QUERY, and each COM_STMT_EXECUTE of a statement an approve rule covers --

@pytest.fixture(scope="module")
def approving(mariadb, idp, pki, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("my-approvals")
    cfg = mysql_gateway_config(mariadb, idp, pki, allow_groups=["agents", "dba"], guardrail=[
        {"name": "deletes-need-a-human", "patterns": [r"\bdelete\b"], "action": "approve",
         "approvers": ["dba"], "timeout": "10m"}])
    cfg["admin"] = {"admin_groups": ["admins"]}
    cfg["state"] = {"url": f"sqlite:///{tmp}/state.db", "poll_interval": "100ms"}
    with Gateway(cfg, env=mysql_gateway_env(mariadb)) as g:
        g.pki = pki
        yield g


def _tokens(idp):
    from gwfixtures import ADMIN_AUDIENCE, AUDIENCE
    return {who: idp.token(who, groups, audience=[AUDIENCE, ADMIN_AUDIENCE])
            for who, groups in (("agent-7", ["agents"]), ("dana", ["dba"]))}


def _approval_table(mariadb, name):
    mariadb.sql(f"CREATE TABLE IF NOT EXISTS {MY_DB}.{name} (id int PRIMARY KEY)")
    mariadb.sql(f"DELETE FROM {MY_DB}.{name}")
    mariadb.sql(f"INSERT INTO {MY_DB}.{name} VALUES (1), (2), (3)")


def test_query_held_until_approved_then_runs(approving, idp, mariadb):
    from helpers import api, wait_pending
    tok = _tokens(idp)
    _approval_table(mariadb, "apr_q")
    out = {}

    def run():
        conn = pymysql_connect(approving, tok["agent-7"])
        try:
            out["n"] = conn.cursor().execute("DELETE FROM apr_q WHERE id = 1")
            conn.commit()
            out["after"] = conn.cursor().execute("SELECT 1")
        except Exception as e:  # noqa: BLE001
            out["err"] = e
        finally:
            conn.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    req = wait_pending(approving, tok["dana"], "apr_q")
    assert mariadb.sql(f"SELECT count(*) FROM {MY_DB}.apr_q") == [(3,)]     # not sent yet
    status, _ = api(approving, "POST", f"/api/v1/approvals/{req['id']}/approve", tok["dana"], {})
    assert status == 200
    t.join(30)
    assert not t.is_alive() and out.get("n") == 1 and out.get("after") == 1, out
    assert mariadb.sql(f"SELECT count(*) FROM {MY_DB}.apr_q") == [(2,)]


def test_each_execute_of_a_prepared_statement_is_held_and_denial_is_an_error(approving, idp,
                                                                            mariadb):
    from helpers import api, wait_pending
    tok = _tokens(idp)
    _approval_table(mariadb, "apr_p")
    conn = connector_connect(approving, tok["agent-7"], autocommit=True)
    out = {}
    try:
        cur = conn.cursor(prepared=True)

        def run(i):
            try:
                cur.execute("DELETE FROM apr_p WHERE id = ?", (i,))
                out[i] = cur.rowcount
            except Exception as e:  # noqa: BLE001
                out[i] = getattr(e, "errno", e)

        t = threading.Thread(target=run, args=(1,), daemon=True)
        t.start()
        req = wait_pending(approving, tok["dana"], "apr_p")      # the prepare went, the run waits
        api(approving, "POST", f"/api/v1/approvals/{req['id']}/approve", tok["dana"], {})
        t.join(30)
        assert out[1] == 1
        t = threading.Thread(target=run, args=(2,), daemon=True)
        t.start()
        req = wait_pending(approving, tok["dana"], "apr_p")      # the next run waits again
        api(approving, "POST", f"/api/v1/approvals/{req['id']}/deny", tok["dana"],
            {"reason": "no"})
        t.join(30)
        assert out[2] == 1227
        c2 = conn.cursor()
        c2.execute("SELECT count(*) FROM apr_p")
        assert c2.fetchall() == [(2,)]
    finally:
        conn.close()


# -- recording: every statement in the audit log, as the relay followed it -------------------------

def test_statements_recorded_in_the_audit_log(mariadb, idp, pki, tmp_path):
    from hoopwire.audit import read_records
    from helpers import wait_until
    cfg = mysql_gateway_config(mariadb, idp, pki, record_results=True, guardrail=[
        {"name": "no-drop", "patterns": [r"\bdrop\s+table\b"], "action": "block"}])
    cfg["audit"] = {"path": str(tmp_path / "audit"), "flush_interval": "50ms"}
    cfg["state"] = {"url": f"sqlite:///{tmp_path}/state.db"}
    with Gateway(cfg, env=mysql_gateway_env(mariadb)) as g:
        g.pki = pki
        conn = pymysql_connect(g, idp.token(), client_flag=CLIENT.MULTI_STATEMENTS)
        cur = conn.cursor()
        cur.execute("SELECT id, name FROM items WHERE id <= 2 ORDER BY id")
        cur.execute("UPDATE items SET name = name WHERE id = 1")
        with pytest.raises(pymysql.err.MySQLError):
            cur.execute("SELEC nonsense")
        with pytest.raises(pymysql.err.MySQLError):
            cur.execute("DROP TABLE items")
        conn.close()

        def statements():
            recs = [r for r in read_records(str(tmp_path / "audit")) if r["type"] == "statement"]
            return recs if len(recs) >= 4 else None

        recs = wait_until(statements, 20, "four statement records")
    by = {r["statement"].split()[0]: r for r in recs}
    sel = by["SELECT"]
    assert sel["verdict"] == "allow" and sel["rows"] == 2
    assert sel["result"] == [[str(i), n] for i, n in MY_ITEMS[:2]]
    assert by["UPDATE"]["rows"] == 0 or by["UPDATE"]["rows"] == 1
    assert by["SELEC"]["verdict"] == "error" and by["SELEC"]["error"]["code"] == "1064/42000"
    assert by["DROP"]["verdict"] == "block"
