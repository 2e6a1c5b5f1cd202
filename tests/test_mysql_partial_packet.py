"""A client that stops in the middle of a packet (issue 20, F10): nothing waits without a bound.

A client that logs in, sends a packet header (or part of a packet) and then goes quiet held its
session and the gateway's upstream connection for ever when `idle_timeout = 0` (never). The
bound is the core frame reader's (hoopwire.core._frames.FrameReader.stalled_for: seconds since
the last byte while a message is begun and not whole) and the listener's sweep
(`read_timeout`, 30 s by default: MySQL's own net_read_timeout for the same wait): past it the
client gets the server's own ERR 1159 (08S01), the operator one log line, and the upstream
connection ends. A packet that keeps arriving, however slowly, is never cut: the clock
restarts at every read.

The in-process tests read the framer's clock; the end-to-end ones log in for real through a
gateway in front of MariaDB, then write raw bytes on the same socket.
"""

from __future__ import annotations

import socket
import struct
import time
import uuid

import pytest

from helpers import Gateway, wait_until
from hoopwire.mysql._wire import MysqlFramer, frame

BOUND = 2.0          # read_timeout of the gateway under test, seconds


# -- the frame reader's clock, in process ---------------------------------------------------------

def test_clock_between_and_inside_packets():
    f = MysqlFramer()
    assert f.stalled_seconds(time.monotonic()) == 0          # nothing fed yet
    f.feed_packets(frame(b"\x0e"))                            # one whole COM_PING
    assert f.stalled_seconds(f.fed_at + 100) == 0             # at a boundary: no clock
    for partial in (b"\x20", b"\x20\x00\x00", b"\x20\x00\x00\x00", b"\x20\x00\x00\x00\x03SEL"):
        g = MysqlFramer()
        g.feed_packets(partial)
        assert g.stalled_seconds(g.fed_at + 7) == pytest.approx(7), partial  # begun, not whole
        g.feed_packets(frame(b"\x03" + b"x" * 31)[len(partial):])
        assert g.stalled_seconds(g.fed_at + 7) == 0, partial  # finished: no clock


def test_clock_restarts_at_every_read():
    f = MysqlFramer()
    pkt = frame(b"\x03" + b"x" * 999)
    f.feed_packets(pkt[:10])
    first = f.fed_at
    time.sleep(0.01)
    f.feed_packets(pkt[10:20])
    assert f.fed_at > first
    assert f.stalled_seconds(f.fed_at + 1) == pytest.approx(1)


def test_clock_runs_between_continuation_packets():
    """A 16 MB packet ends its physical packet exactly and the logical one goes on: still
    mid-message, for forwarded runs as for inspected ones."""
    body = b"\x03" + b"y" * 0xffffff
    pkts = frame(body)
    first = 4 + 0xffffff
    for inspect in (True, False):
        f = MysqlFramer(max_size=0xffffff + 4, inspect_all=inspect)
        f.feed_packets(pkts[:first])
        assert f.stalled_seconds(f.fed_at + 3) == pytest.approx(3), inspect
        f.feed_packets(pkts[first:])
        assert f.stalled_seconds(f.fed_at + 3) == 0, inspect


def test_no_clock_while_held():
    """A packet held for a decision (an approval) waits on the approval's own timeout."""
    f = MysqlFramer(hold_seq=0)
    f.feed_packets(frame(b"\x03SELECT 1") + b"\x05\x00")
    assert f.holding_now
    assert f.stalled_seconds(f.fed_at + 100) == 0


# -- end to end -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pgw(mariadb, idp, pki):
    """Plaintext from loopback (raw bytes on the socket), idle_timeout never, a short bound."""
    from mysqlgw import mysql_gateway_config, mysql_gateway_env
    cfg = mysql_gateway_config(mariadb, idp, pki, require_tls=False,
                               cleartext_without_tls="loopback", idle_timeout="0",
                               read_timeout=f"{BOUND:g}s")
    with Gateway(cfg, env=mysql_gateway_env(mariadb)) as g:
        g.pki = pki
        yield g


def logged_in(gw, idp):
    """A real login through the gateway (PyMySQL), then its socket to write raw bytes on,
    and the upstream thread that serves it."""
    from mysqlgw import pymysql_connect
    conn = pymysql_connect(gw, idp.token(groups=("agents",)), tls=False, autocommit=True)
    with conn.cursor() as cur:
        cur.execute("SELECT CONNECTION_ID()")
        (thread,) = cur.fetchone()
    sock = conn._sock                                           # noqa: SLF001
    sock.settimeout(30)
    return conn, sock, thread


def read_packet(sock) -> tuple[int, bytes] | None:
    head = b""
    while len(head) < 4:
        more = sock.recv(4 - len(head))
        if not more:
            return None
        head += more
    n = head[0] | head[1] << 8 | head[2] << 16
    body = b""
    while len(body) < n:
        more = sock.recv(n - len(body))
        if not more:
            raise AssertionError(f"closed inside a packet: {head + body!r}")
        body += more
    return head[3], body


def upstream_alive(mariadb, thread: int) -> bool:
    return bool(mariadb.sql(f"SELECT count(*) FROM information_schema.PROCESSLIST "
                            f"WHERE ID = {int(thread)}")[0][0])


@pytest.mark.parametrize("partial", [
    b"\x20\x00\x00\x00",                       # a header announcing 32 bytes, no body
    b"\x20\x00",                               # half a header
    b"\x40\x00\x00\x00\x03SELECT 1, '",        # a COM_QUERY's first bytes
], ids=["header", "half-header", "part-of-body"])
def test_partial_packet_is_closed_within_the_bound(pgw, idp, mariadb, partial):
    conn, sock, thread = logged_in(pgw, idp)
    assert upstream_alive(mariadb, thread)
    closed = len(pgw.log_text().split("reason=read_timeout")) - 1
    try:
        t0 = time.monotonic()
        sock.sendall(partial)
        got = read_packet(sock)
        waited = time.monotonic() - t0
        assert got is not None, "closed without an ERR"
        seq, body = got
        assert body[:1] == b"\xff", body
        errno, = struct.unpack("<H", body[1:3])
        assert (errno, body[3:9]) == (1159, b"#08S01"), body
        assert b"middle of a message" in body, body
        assert read_packet(sock) is None                     # then the connection ends
        # the bound, not before it, nor the 30 s default (the upper bound only tells them
        # apart; it was the bound, one sweep and 3 s: 5.5 s for a loaded machine)
        assert BOUND - 0.1 <= waited < 20, waited
    finally:
        conn._sock = None                                    # noqa: SLF001 (closed by the peer)
        sock.close()
    wait_until(lambda: len(pgw.log_text().split("reason=read_timeout")) - 1 > closed, 30,
               "the session closed as read_timeout", pgw)
    assert "client stopped mid-message" in pgw.log_text()
    wait_until(lambda: not upstream_alive(mariadb, thread), 10, "the upstream thread ends")


@pytest.fixture
def table(mariadb):
    name = "pp_" + uuid.uuid4().hex[:8]
    mariadb.sql(f"CREATE TABLE app.{name} (id int primary key, note longtext)")
    yield name
    mariadb.sql(f"DROP TABLE IF EXISTS app.{name}")


def test_slow_but_progressing_packet_is_not_cut(pgw, idp, mariadb, table):
    """A 1 MB packet whose bytes keep coming, a gap of half the bound between them, for three
    times the bound in all: it arrives whole and runs."""
    conn, sock, thread = logged_in(pgw, idp)
    note = "z" * 1_000_000
    query = f"INSERT INTO {table} VALUES (1, '{note}')".encode()
    pkt = frame(b"\x03" + query)
    pieces = 7
    step = -(-len(pkt) // pieces)
    try:
        t0 = time.monotonic()
        for k in range(pieces):
            sock.sendall(pkt[k * step:(k + 1) * step])
            if k < pieces - 1:
                time.sleep(BOUND / 2)
        assert time.monotonic() - t0 >= 3 * BOUND
        seq, body = read_packet(sock)
        assert body[:1] == b"\x00", body                     # OK
        # and the session goes on as usual
        sock.sendall(frame(b"\x0e"))                         # COM_PING
        seq, body = read_packet(sock)
        assert body[:1] == b"\x00", body
    finally:
        conn.close()
    assert mariadb.sql(f"SELECT length(note) FROM app.{table} WHERE id = 1") == [(1_000_000,)]
    assert "reason=read_timeout" not in pgw.log_text().split(f"thread_id={thread}")[-1]


def test_idle_between_packets_is_not_a_partial(pgw, idp):
    """idle_timeout = 0: a session that sent whole packets and waits stays, past the bound."""
    conn, sock, thread = logged_in(pgw, idp)
    try:
        time.sleep(BOUND * 2)
        conn.ping(reconnect=False)
        with conn.cursor() as cur:
            cur.execute("SELECT CONNECTION_ID()")
            assert cur.fetchone() == (thread,)
    finally:
        conn.close()


def test_postgres_path_has_the_same_bound(pg, idp):
    """The bound is the core's: a PostgreSQL client that sends part of a Query and stops gets
    FATAL 08006 within it too (the PostgreSQL path had no such bound either)."""
    import pgraw
    from gwfixtures import gateway_config, gateway_env
    cfg = gateway_config(pg, idp, idle_timeout="0", read_timeout=f"{BOUND:g}s")
    with Gateway(cfg, env=gateway_env(pg)) as g:
        host, port = g.address("pg")
        with pgraw.login(host, port, idp.token()) as c:
            t0 = time.monotonic()
            c.send(b"Q\x00\x00\x00\x40SELECT 1, '")
            err = c.expect_error_and_close(timeout=BOUND + 10)
            waited = time.monotonic() - t0
        assert (err["S"], err["C"]) == ("FATAL", "08006"), err
        assert "middle of a message" in err["M"], err
        assert BOUND - 0.1 <= waited < 20, waited         # not the 30 s default
        wait_until(lambda: "reason=read_timeout" in g.log_text(), 30, "logged", g)
        assert "client stopped mid-message" in g.log_text()


def test_read_timeout_config(monkeypatch):
    from hoopwire.config import ConfigError, parse_config
    monkeypatch.setenv("PP_PW", "x")
    conn = {"name": "c", "protocol": "mysql", "listen": "127.0.0.1:3307",
            "upstream": "127.0.0.1:3306", "database": "d", "user": "u", "password_env": "PP_PW"}
    doc = {"identity": {"api_key": [{"name": "k", "sha256": "ab" * 32, "groups": ["g"]}]},
           "connection": [conn]}
    assert parse_config(doc).connections[0].read_timeout == 30.0
    conn["read_timeout"] = "500ms"
    assert parse_config(doc).connections[0].read_timeout == 0.5
    conn["read_timeout"] = 0
    with pytest.raises(ConfigError) as e:
        parse_config(doc)
    assert "read_timeout" in dict(e.value.problems).get("connection[0].read_timeout", "") or \
        "read_timeout" in str(e.value.problems)
