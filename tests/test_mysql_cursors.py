"""Server-side cursors (COM_STMT_EXECUTE with a cursor type, then COM_STMT_FETCH) through a
gateway that masks.

A cursor's rows come back in COM_STMT_FETCH answers: binary rows with no column definitions in
front of them, so masking them needs the execute's definitions kept per statement. The relay
does not follow that yet, so it answers both commands itself with ERR 1235 (the server's "not
supported yet") and never sends them upstream: no cursor row reaches the client unmasked, and
the session goes on. Drivers use cursors only when asked (Connector/C's STMT_ATTR_CURSOR_TYPE,
JDBC's useCursorFetch); mysql-connector's cursor(prepared=True) and PyMySQL do not.

Real parts: the session's MariaDB, a gateway with a mask rule on app.customers.ssn, PyMySQL's
connection driven at the packet level for the commands it has no API for.
"""

from __future__ import annotations

import struct

import pymysql
import pytest

from helpers import Gateway
from mysqlfixtures import MY_CUSTOMERS
from mysqlgw import mysql_gateway_config, mysql_gateway_env, pymysql_connect

pytestmark = pytest.mark.timeout(120)

COM_STMT_PREPARE, COM_STMT_EXECUTE, COM_STMT_FETCH = 0x16, 0x17, 0x1C
CURSOR_TYPE_READ_ONLY = 1


@pytest.fixture(scope="module")
def maskgw(mariadb, idp, pki):
    cfg = mysql_gateway_config(mariadb, idp, pki, mask=[{"columns": ["app.customers.ssn"]}])
    with Gateway(cfg, env=mysql_gateway_env(mariadb)) as g:
        g.pki = pki
        yield g


def _deprecate_eof(conn) -> bool:
    return bool(conn.client_flag & pymysql.constants.CLIENT.DEPRECATE_EOF)


def _prepare(conn, sql: str) -> tuple[int, int]:
    """COM_STMT_PREPARE: (statement id, column count); the definitions are read past."""
    conn._execute_command(COM_STMT_PREPARE, sql)           # noqa: SLF001
    first = conn._read_packet()                            # noqa: SLF001
    data = first.get_all_data()
    assert data[0] == 0, data
    stmt_id, ncols, nparams = struct.unpack_from("<IHH", data, 1)
    for count in (nparams, ncols):
        for _ in range(count):
            conn._read_packet()                            # noqa: SLF001
        if count and not _deprecate_eof(conn):
            assert conn._read_packet().is_eof_packet()     # noqa: SLF001
    return stmt_id, ncols


def _execute(conn, stmt_id: int, flags: int) -> None:
    conn._execute_command(COM_STMT_EXECUTE, struct.pack("<IBI", stmt_id, flags, 1))  # noqa: SLF001


def _binary_rows(conn, ncols: int) -> list[bytes]:
    """A binary result set of one string column: the values of its rows."""
    count = conn._read_packet().get_all_data()             # noqa: SLF001
    assert count[0] == ncols == 1, count
    conn._read_packet()                                    # noqa: SLF001  the definition
    if not _deprecate_eof(conn):
        assert conn._read_packet().is_eof_packet()         # noqa: SLF001
    rows = []
    while True:
        pkt = conn._read_packet()                          # noqa: SLF001
        data = pkt.get_all_data()
        if data[0] == 0xFE and len(data) < 0xFFFFFF:
            return rows
        assert data[0] == 0 and data[1] == 0, data         # header, null bitmap (no NULL)
        n = data[2]
        assert n < 0xFB
        rows.append(data[3:3 + n])


def test_cursor_execute_and_fetch_are_refused_and_rows_stay_masked(maskgw, idp):
    conn = pymysql_connect(maskgw, idp.token())
    try:
        stmt_id, ncols = _prepare(conn, "SELECT ssn FROM customers ORDER BY id")
        assert ncols == 1
        # a cursor: refused by the gateway, not opened upstream
        _execute(conn, stmt_id, CURSOR_TYPE_READ_ONLY)
        with pytest.raises(pymysql.err.MySQLError) as e:
            conn._read_packet()                            # noqa: SLF001
        assert e.value.args[0] == 1235 and "cursor" in e.value.args[1]
        # a fetch from it (or from any cursor a client claims): refused the same way
        conn._execute_command(COM_STMT_FETCH, struct.pack("<II", stmt_id, 100))  # noqa: SLF001
        with pytest.raises(pymysql.err.MySQLError) as e:
            conn._read_packet()                            # noqa: SLF001
        assert e.value.args[0] == 1235
        # the same statement without a cursor: binary rows, masked
        _execute(conn, stmt_id, 0)
        values = _binary_rows(conn, ncols)
        ssns = [c[3].encode() for c in MY_CUSTOMERS]
        assert len(values) == len(ssns)
        assert not set(values) & set(ssns), values
        # and the session goes on in the text protocol
        cur = conn.cursor()
        cur.execute("SELECT COUNT(*) FROM customers")
        assert cur.fetchone() == (len(MY_CUSTOMERS),)
    finally:
        conn.close()
