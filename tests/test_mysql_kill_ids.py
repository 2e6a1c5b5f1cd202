"""KILL's id space: the gateway's connection ids against the upstream's thread ids.

The gateway greets each client with a connection id of its own and maps `KILL [QUERY] n` to the
upstream thread behind session n. Both kinds of id count up from 1, so one number can be a
gateway id of one session and the upstream thread of another. The rule: n is a gateway id, of
a session of the caller's own identity; anything else -- another identity's id, a thread id,
0, a number past 32 bits -- is ERR 1094 Unknown thread id, worded as the server words it.

Real parts: the session's MariaDB, a one-worker gateway of this module's own (its ids start at 1
and move only with this module's connections), PyMySQL. The overlap is made, not hoped for: a
bare TCP connect takes a gateway id (the greeting carries it) without an upstream login, so the
test walks the gateway's counter up to a thread id of its choosing.
"""

from __future__ import annotations

import socket
import struct

import pymysql
import pytest

from helpers import Gateway, wait_until
from mysqlgw import (MY_CONN, LockWaiter, hold_lock, mysql_gateway_config, mysql_gateway_env,
                     pymysql_connect)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def kgw(mariadb, idp, pki):
    with Gateway(mysql_gateway_config(mariadb, idp, pki), env=mysql_gateway_env(mariadb),
                 workers=1) as g:
        g.pki = pki
        yield g


def _greeting_id(gw) -> int:
    """Take one gateway connection id: connect, read the HandshakeV10's connection id, leave."""
    with socket.create_connection(gw.address(MY_CONN), timeout=10) as s:
        data = b""
        while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:3], "little"):
            chunk = s.recv(4096)
            assert chunk, "the gateway closed before its greeting"
            data += chunk
    payload = data[4:]
    assert payload[0] == 10                     # protocol version 10
    at = payload.index(b"\0", 1) + 1            # after the NUL-terminated server version
    return struct.unpack_from("<I", payload, at)[0]


def _thread(conn) -> int:
    cur = conn.cursor()
    cur.execute("SELECT CONNECTION_ID()")
    return cur.fetchone()[0]


def _error(conn, sql: str):
    """(errno, message) of `sql` on `conn`; (0, "") when it succeeded."""
    try:
        conn.cursor().execute(sql)
    except pymysql.err.MySQLError as e:
        return e.args[0], e.args[1]
    return 0, ""


def _server_wording(mariadb, n: int):
    """What MariaDB itself answers to KILL QUERY n for a thread it does not have."""
    conn = mariadb.connect("app", "app")
    try:
        return _error(conn, f"KILL QUERY {n}")
    finally:
        conn.close()


def _running(mariadb, thread_id: int) -> bool:
    return bool(mariadb.sql(f"SELECT 1 FROM information_schema.processlist WHERE id = "
                            f"{int(thread_id)} AND info LIKE 'SELECT GET_LOCK%'"))


def test_an_id_that_is_another_identitys_session_and_your_own_thread(kgw, idp, mariadb):
    alice = idp.token(subject="alice-kill-ids")
    keep = []
    try:
        victim = pymysql_connect(kgw, alice)          # alice's session, upstream thread t
        keep.append(victim)
        killer = pymysql_connect(kgw, alice)          # alice's other session, which kills
        keep.append(killer)
        t = _thread(victim)
        nxt = killer.thread_id() + 1              # the gateway id the next connection gets
        assert t >= nxt, "MariaDB's thread ids run ahead of this gateway's ids"
        # walk the gateway's ids up to t - 1; the next session, bob's, is then gateway id t
        while nxt < t:
            nxt = _greeting_id(kgw) + 1
        bob = pymysql_connect(kgw, idp.token(subject="bob-kill-ids"))
        keep.append(bob)
        assert bob.thread_id() == t, (bob.thread_id(), t)
        lock = hold_lock(mariadb, "hoopwire-kill-ids")
        keep.append(lock)
        waiter = LockWaiter(victim, "hoopwire-kill-ids")
        waiter.start()
        wait_until(lambda: _running(mariadb, t), 30, "alice's statement is running upstream")
        # t is bob's gateway id and alice's own thread: neither is hers to kill by that number
        for stmt in (f"KILL QUERY {t}", f"KILL {t}"):
            assert _error(killer, stmt) == (1094, f"Unknown thread id: {t}"), stmt
        assert _running(mariadb, t), "a KILL of bob's id reached alice's own statement"
        lock.cursor().execute("SELECT RELEASE_LOCK('hoopwire-kill-ids')")
        waiter.join(30)
        assert not waiter.is_alive()
        # 1: it waited for the lock and got it, nothing interrupted it
        assert waiter.err is None and waiter.rows == ((1,),), (waiter.err, waiter.rows)
        # bob's session was never touched, and alice's KILL by her own gateway id still works
        bob.cursor().execute("SELECT 1")
        assert _error(killer, f"KILL QUERY {victim.thread_id()}") == (0, "")
        # waited for: the refusal's answer can reach us before the log line has come
        # through the gateway's output pipe
        kgw.wait_log(r"KILL refused", timeout=30)
    finally:
        for c in keep:
            c.close()


@pytest.mark.parametrize("n", [0, 2 ** 32, 2 ** 32 + 1, 99_999_999_999])
def test_ids_outside_the_gateways_range_are_unknown_threads(kgw, idp, mariadb, n):
    conn = pymysql_connect(kgw, idp.token(subject="range-kill-ids"))
    try:
        own = conn.thread_id()
        if n == 2 ** 32 + 1:
            n = 2 ** 32 + own                 # its own id plus 2^32: no wrap-around to it
        got = _error(conn, f"KILL QUERY {n}")
        assert got == (1094, f"Unknown thread id: {n}")
        # the server words it the same way for a thread id it does not have
        server = _server_wording(mariadb, 4_000_000_000)
        assert server == (1094, "Unknown thread id: 4000000000")
        conn.cursor().execute("SELECT 1")     # the session goes on
    finally:
        conn.close()
