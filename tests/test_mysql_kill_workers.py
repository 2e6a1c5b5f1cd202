"""KILL [QUERY] <id> under `hoopwire run --workers 2`: the id may be a session on the other worker.

The gateway hands out its own connection ids, each worker its own residue class mod 2 (so the
id tells the tests which worker a connection landed on), and maps a KILL to the upstream
thread. A KILL that lands on the worker without the session asks its sibling (over
hoopwire.core.cancelpeers), which answers with the thread and who may kill it; the KILL then
goes over the killer's own upstream connection, as on one worker. The rule is the same on
both paths: only a session of the same identity (issuer and subject) on the same upstream is
"its own"; anything else is 1094 Unknown thread id, whoever guesses the id.

Real parts: the session's MariaDB, a two-worker gateway (SO_REUSEPORT spreads connections, so
each test opens connections until it has one on each worker), PyMySQL.
"""

from __future__ import annotations

import struct
import threading
import time

import pymysql
import pytest

from helpers import Gateway, wait_until
from mysqlgw import (LockWaiter, hold_lock, mysql_gateway_config, mysql_gateway_env,
                     pymysql_connect)

pytestmark = pytest.mark.timeout(180)

_TRIES = 40          # connections opened to find one on the other worker (each is 50/50)


@pytest.fixture(scope="module")
def gw2(mariadb, idp, pki):
    with Gateway(mysql_gateway_config(mariadb, idp, pki), env=mysql_gateway_env(mariadb),
                 workers=2) as g:
        g.pki = pki
        # the parent is ready with its first worker: wait for a connection on each
        wait_until(lambda: _both_serve(g, idp), 30, "both workers serving", g)
        yield g


def _both_serve(gw, idp) -> bool:
    seen = set()
    for _ in range(8):
        c = pymysql_connect(gw, idp.token())
        seen.add(c.thread_id() % 2)
        c.close()
    return seen == {0, 1}


def _on_worker(gw, token: str, residue: int, keep: list, avoid: int = -1):
    """A connection whose gateway id is `residue` mod 2 (a worker) and not `avoid`, opening
    more as needed; the one returned goes into `keep` (closed by the caller), the others are
    closed: they would be this identity's sessions too, and one of them could hold as its
    connection id the number a test KILLs."""
    for _ in range(_TRIES):
        c = pymysql_connect(gw, token)
        if c.thread_id() % 2 == residue and c.thread_id() != avoid:
            keep.append(c)
            return c
        c.close()
    pytest.fail(f"no connection on worker {residue} after {_TRIES} tries")


class _Sleeper(threading.Thread):
    """SELECT SLEEP(n) on `conn`: what it answered and how long it took."""

    def __init__(self, conn, seconds: int):
        super().__init__(daemon=True)
        self.conn, self.seconds = conn, seconds
        self.rows = self.err = self.took = None

    def run(self):
        t0 = time.monotonic()
        try:
            cur = self.conn.cursor()
            cur.execute(f"SELECT SLEEP({self.seconds})")
            self.rows = cur.fetchall()
        except pymysql.err.MySQLError as e:
            self.err = e.args[0]
        self.took = time.monotonic() - t0


def _running(mariadb, thread_id: int, what: str = "SELECT SLEEP") -> bool:
    return bool(mariadb.sql(f"SELECT 1 FROM information_schema.processlist WHERE id = "
                            f"{int(thread_id)} AND info LIKE '{what}%'"))


# A refused or unknown KILL answers once the sibling has answered or ASK_TIMEOUT (1 s) has
# passed; the bound is a hang guard above that, not a speed claim (2 s left a loaded machine
# less than a second for the round trip on top of the ask).
_KILL_BOUND = 10.0


def _kill(conn, sql: str):
    """The error number of `sql` on `conn`, or 0 when it succeeded; and how long it took."""
    t0 = time.monotonic()
    try:
        conn.cursor().execute(sql)
        err = 0
    except pymysql.err.MySQLError as e:
        err = e.args[0]
    return err, time.monotonic() - t0


def test_connection_ids_are_unique_across_workers(gw2, idp):
    conns = []
    try:
        for _ in range(16):
            conns.append(pymysql_connect(gw2, idp.token()))
        ids = [c.thread_id() for c in conns]
        assert len(set(ids)) == len(ids), ids
        assert {i % 2 for i in ids} == {0, 1}, f"all on one worker: {ids}"
    finally:
        for c in conns:
            c.close()


def test_kill_query_reaches_the_session_on_the_other_worker(gw2, idp, mariadb):
    keep = []
    token = idp.token(subject="killer-other-worker")    # no other session of this identity
    try:
        victim = pymysql_connect(gw2, token)
        keep.append(victim)
        cur = victim.cursor()
        cur.execute("SELECT CONNECTION_ID()")
        thread = cur.fetchone()[0]
        # the killer must not itself hold the victim's thread number as its id
        killer = _on_worker(gw2, token, 1 - victim.thread_id() % 2, keep, avoid=thread)
        sleeper = _Sleeper(victim, 30)
        sleeper.start()
        wait_until(lambda: _running(mariadb, thread), 10, "the SLEEP is running upstream")
        if thread != victim.thread_id():
            # the upstream thread id is no gateway id: asked of both workers, it is unknown
            err, took = _kill(killer, f"KILL QUERY {thread}")
            assert err == 1094, f"KILL QUERY {thread} (a thread id) answered {err}"
            assert _running(mariadb, thread)
        target = victim.thread_id()
        err, took = _kill(killer, f"KILL QUERY {target}")
        assert err == 0, f"KILL QUERY {target} from the other worker answered {err}"
        assert took < _KILL_BOUND
        sleeper.join(10)
        assert not sleeper.is_alive(), "the SLEEP was not interrupted"
        # MariaDB ends a killed SLEEP with 1317, or (older) with the value 1
        assert sleeper.err == 1317 or sleeper.rows == ((1,),), (sleeper.err, sleeper.rows)
        assert sleeper.took < 25.0                 # interrupted: not the SLEEP's 30 s
        # both sessions go on
        victim.cursor().execute("SELECT 1")
        killer.cursor().execute("SELECT 1")
    finally:
        for c in keep:
            c.close()


def test_another_identity_cannot_kill_on_either_worker(gw2, idp, mariadb):
    keep = []
    try:
        victim = pymysql_connect(gw2, idp.token())
        keep.append(victim)
        cur = victim.cursor()
        cur.execute("SELECT CONNECTION_ID()")
        thread = cur.fetchone()[0]
        gid = victim.thread_id()
        eve = idp.token(subject="eve")
        here = _on_worker(gw2, eve, gid % 2, keep)
        there = _on_worker(gw2, eve, 1 - gid % 2, keep)
        lock = hold_lock(mariadb, "hoopwire-kill-workers")
        keep.append(lock)
        waiter = LockWaiter(victim, "hoopwire-kill-workers")
        waiter.start()
        wait_until(lambda: _running(mariadb, thread, "SELECT GET_LOCK"), 30,
                   "the statement is running upstream")
        # the id, the upstream thread, and guesses around both, from each worker
        guesses = [gid, thread] + [gid + d for d in (-4, -2, -1, 1, 2, 4)] + \
            [thread + d for d in (-2, -1, 1, 2)]
        # eve's own connection ids are hers to kill (KILL <her own id> ends that session);
        # her upstream thread ids are not ids of the gateway's, so they stay in the guesses
        eves = {here.thread_id(), there.thread_id()}
        for conn in (here, there):
            for g in guesses:
                if g <= 0 or g in eves:
                    continue
                for stmt in (f"KILL QUERY {g}", f"KILL {g}"):
                    err, took = _kill(conn, stmt)
                    assert err in (1094, 1095), f"{stmt} by another identity answered {err}"
                    assert took < _KILL_BOUND
        assert _running(mariadb, thread, "SELECT GET_LOCK"), \
            "another identity's KILL reached the query"
        lock.cursor().execute("SELECT RELEASE_LOCK('hoopwire-kill-workers')")
        waiter.join(30)
        assert not waiter.is_alive()
        # 1: it waited for the lock and got it, nothing interrupted it
        assert waiter.err is None and waiter.rows == ((1,),), (waiter.err, waiter.rows)
        victim.cursor().execute("SELECT 1")
        # the refusal is one log line on the worker that answered it
        # waited for: the refusal's answer can reach us before the log line has come
        # through the gateway's output pipe
        gw2.wait_log(r"KILL refused", timeout=30)
    finally:
        for c in keep:
            c.close()


def test_kill_connection_on_the_other_worker_ends_that_session(gw2, idp):
    keep = []
    token = idp.token(subject="connection-killer")
    try:
        victim = pymysql_connect(gw2, token)
        keep.append(victim)
        killer = _on_worker(gw2, token, 1 - victim.thread_id() % 2, keep)
        err, _ = _kill(killer, f"KILL {victim.thread_id()}")
        assert err == 0
        with pytest.raises(pymysql.err.MySQLError):
            victim.cursor().execute("SELECT 1")
        killer.cursor().execute("SELECT 1")
        # an id nobody holds, asked of both workers, is 1094
        err, took = _kill(killer, "KILL QUERY 4000000001")
        assert err == 1094 and took < _KILL_BOUND
    finally:
        for c in keep:
            try:
                c.close()
            except Exception:  # noqa: BLE001 -- the killed one is gone already
                pass


# -- the relay's side, in-process (tests/test_mysql_relay.py's Wire: real protocol bytes through
# recording transports): a KILL whose target another worker holds waits for that answer --------

class _Answer:
    """What MysqlListener._kill_target returns while the siblings are asked: a future (the
    relay uses done, result and add_done_callback)."""

    def __init__(self):
        self.value, self.is_done, self.callbacks = None, False, []

    def done(self):
        return self.is_done

    def result(self):
        return self.value

    def add_done_callback(self, cb):
        self.callbacks.append(cb)

    def set(self, value):
        self.value, self.is_done = value, True
        for cb in self.callbacks:
            cb(self)


def _asking(answer):
    calls = []

    def target(gid):
        calls.append(gid)
        return answer
    return target, calls


def test_relay_holds_a_kill_until_the_other_worker_answers():
    from test_mysql_relay import Wire, com_query, ok
    answer = _Answer()
    target, calls = _asking(answer)
    w = Wire(kill_target=target)
    assert w.send(com_query(b"KILL QUERY 42")) == b""
    assert w.client.drain() == b"" and not w.relay.held
    assert w.send(com_query(b"SELECT 1")) == b""          # waits behind the KILL
    answer.set(9001)
    assert w.upstream.drain() == com_query(b"KILL QUERY 9001") + com_query(b"SELECT 1")
    assert calls == [42] and len(answer.callbacks) == 1
    assert w.answer(ok(1)) == ok(1)


def test_relay_answers_1094_when_no_worker_has_the_id():
    from test_mysql_relay import Wire, com, com_query, err_fields, payloads
    for packet in (com_query(b"KILL 42"), com(0x0C, struct.pack("<I", 42))):
        answer = _Answer()
        w = Wire(kill_target=_asking(answer)[0])
        assert w.send(packet) == b""
        answer.set(None)
        assert w.upstream.drain() == b""
        assert err_fields(payloads(w.client.drain())[0][1])[:2] == (1094, "HY000")
        assert w.send(com_query(b"SELECT 1")) == com_query(b"SELECT 1")


def test_relay_kill_under_an_approval_rule_is_asked_and_approved_once():
    from test_mysql_relay import Events, Policy, Wire, com_query
    answer = _Answer()
    target, calls = _asking(answer)
    w = Wire(kill_target=target, policy=Policy(kill="approve"), events=Events())
    assert w.send(com_query(b"KILL QUERY 42")) == b""
    answer.set(9001)
    assert w.relay.held and [e[0] for e in w.events.log] == ["held"]
    w.relay.decide(True, None)
    assert w.upstream.drain() == com_query(b"KILL QUERY 9001")
    assert calls == [42] and [e[0] for e in w.events.log] == ["held"]


def test_relay_forgets_an_answer_when_the_session_closed():
    from test_mysql_relay import Wire, com_query
    answer = _Answer()
    w = Wire(kill_target=_asking(answer)[0])
    assert w.send(com_query(b"KILL QUERY 42")) == b""
    w.relay.shutdown("test")
    w.upstream.drain()                  # the relay's own COM_QUIT
    answer.set(9001)
    assert w.upstream.drain() == b""
