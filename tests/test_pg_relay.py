"""The relay after startup, against a real PostgreSQL with real drivers: cancel (also across
worker processes), pipelining, COPY both ways, LISTEN/NOTIFY, large results under a memory bound,
Terminate, and either side going away mid-session."""

from __future__ import annotations

import asyncio
import hashlib
import io
import random
import re
import secrets
import struct
import threading
import time

import asyncpg
import psycopg
import pytest

import pgraw
from gwfixtures import conninfo, gateway_config, gateway_env
from helpers import APP_DB, ITEMS, SMALL_PIECES, Forwarder, Gateway, psql, wait_until
from hoopwire.audit import read_records, verify

pytestmark = pytest.mark.timeout(60)

# a hang guard for every driver session; short enough to bound a test, long enough not to be
# mistaken for a cancel (the cancel tests tell the two apart by the error's message, "user
# request", or by a bound well below it)
GUARD = "-c statement_timeout=20000"


@pytest.fixture(scope="module", params=["plain", "recording"])
def gw(request, pg, idp, tmp_path_factory):
    """Every test here runs twice: through a plain gateway, and through one that records every
    statement without masking -- the relay then forwards the server's bytes before following
    them, which the drivers must not be able to tell. The recorded chain must verify after."""
    cfg = gateway_config(pg, idp)
    path = None
    if request.param == "recording":
        path = str(tmp_path_factory.mktemp("relay-audit") / "audit")
        cfg["audit"] = {"path": path, "flush_interval": "50ms"}
    with Gateway(cfg, env=gateway_env(pg)) as g:
        yield g
    if path is not None:
        res = verify(path)
        statements = sum(1 for r in read_records(path) if r["type"] == "statement")
        # the chain verifies and holds what was run (a count of the whole module's statements
        # would fail any subset run with -k)
        assert res.ok and statements > 0, (res.describe(), statements)


def dsn(gw: Gateway, idp, subject: str = "agent-7", **kw) -> str:
    kw.setdefault("options", GUARD)
    return conninfo(gw, idp.token(subject=subject), **kw)


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def backends(pg, application_name: str) -> int:
    """How many upstream backends carry this application_name (counted by the superuser)."""
    return int(pg.sql("select count(*) from pg_stat_activity "
                      f"where application_name = '{application_name}'"))


def wait_for(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    return wait_until(predicate, timeout, what, interval=interval)


def wait_active(pg, application_name: str, count: int = 1, timeout: float = 15.0) -> None:
    """Wait until `count` backends of `application_name` are running a statement."""
    wait_for(lambda: int(pg.sql(
        "select count(*) from pg_stat_activity where state = 'active' "
        f"and application_name = '{application_name}'")) >= count,
        timeout, what=f"{count} active backend(s) named {application_name}")


class Background:
    """`fn(*args)` in a thread. `result(timeout)` joins it in the test's own thread and returns
    what it returned, or raises what it raised: an assertion that fails there fails the test,
    and so does a thread still running at the timeout (a wait in it that never ended)."""

    def __init__(self, fn, *args):
        self._value = self._error = None
        self._thread = threading.Thread(target=self._run, args=(fn, args), daemon=True)
        self._thread.start()

    def _run(self, fn, args) -> None:
        try:
            self._value = fn(*args)
        except BaseException as e:  # noqa: BLE001 -- handed to the test's thread
            self._error = e

    def result(self, timeout: float):
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"still running after {timeout} s"
        if self._error is not None:
            raise self._error
        return self._value


def waiting_for_lock(pg, pids) -> set[int]:
    """Which of the backends `pids` wait for an advisory lock now."""
    out = pg.sql("select pid from pg_locks where locktype = 'advisory' and not granted "
                 f"and pid in ({', '.join(str(p) for p in pids)})")
    return {int(x) for x in out.split()}


def lock_key() -> int:
    return random.getrandbits(62)


# ------------------------------------------------------------------------------------------------
# cancel

@pytest.mark.parametrize("method", ["cancel", "cancel_safe"])
def test_psycopg_cancel_of_a_long_query(gw, idp, pg, method):
    app = unique("cancel")
    with psycopg.connect(dsn(gw, idp, application_name=app), autocommit=True) as conn:
        pid = conn.info.backend_pid

        def run():
            try:
                conn.execute("select pg_sleep(30)")
            except psycopg.Error as e:
                return e
            return "completed"

        worker = Background(run)
        wait_active(pg, app)
        getattr(conn, method)()
        # the bound is the behaviour: the cancel ends a 30 s sleep (well before the 20 s guard)
        outcome = worker.result(10)
        assert isinstance(outcome, psycopg.errors.QueryCanceled), outcome
        assert "user request" in str(outcome)  # not the statement_timeout guard
        # the session goes on, on the same backend
        assert conn.execute("select 1").fetchone()[0] == 1
        assert conn.execute("select pg_backend_pid()").fetchone()[0] == pid
        # and a cancel inside a transaction leaves it failed, as it would directly
        conn.autocommit = False

        def cancel_when_running():
            wait_active(pg, app)
            getattr(conn, method)()

        canceller = Background(cancel_when_running)
        with pytest.raises(psycopg.errors.QueryCanceled, match="user request"):
            conn.execute("select pg_sleep(30)")
        canceller.result(10)
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("select 1")
        conn.rollback()
        assert conn.execute("select 2").fetchone()[0] == 2
    gw.wait_log(rf"cancel forwarded .*backend_pid={pid}\b")


def test_asyncpg_cancel_on_timeout(gw, idp, pg):
    app = unique("acancel")

    async def main():
        conn = await asyncpg.connect(host="127.0.0.1", port=gw.port("pg"), user="agent-7",
                                     password=idp.token(), database=APP_DB, ssl=False,
                                     server_settings={"application_name": app,
                                                      "statement_timeout": "20000"})
        try:
            pid = conn.get_server_pid()
            for attempt in range(2):
                t0 = time.monotonic()
                with pytest.raises(asyncio.TimeoutError):
                    # the task is cancelled at the timeout: asyncpg sends a CancelRequest
                    await asyncio.wait_for(conn.fetchval("select pg_sleep(30)"), 0.5)
                # the next query waits for the cancelled one to end. Only a cancel that got
                # through ends it well before the 20 s statement_timeout: that bound is the
                # behaviour, not a speed claim
                assert await conn.fetchval("select 41 + 1") == 42
                assert time.monotonic() - t0 < 10, f"attempt {attempt}: {time.monotonic() - t0:.2f} s"
            # asyncpg's own timeout argument takes the same path
            t0 = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):
                await conn.fetchval("select pg_sleep(30)", timeout=0.5)
            assert await conn.fetchval("select pg_backend_pid()") == pid
            assert time.monotonic() - t0 < 10
            # nothing of ours still runs upstream
            return pid
        finally:
            await conn.close()

    pid = asyncio.run(asyncio.wait_for(main(), 40))
    assert int(pg.sql("select count(*) from pg_stat_activity where query like '%pg_sleep(30)%' "
                      f"and state = 'active' and application_name = '{app}'")) == 0
    gw.wait_log(rf"cancel forwarded .*backend_pid={pid}\b")


def unknown_key_drops(gw: Gateway) -> float:
    """hoopwire_cancel_dropped_total{reason="unknown_key"} on the admin listener."""
    import urllib.request
    with urllib.request.urlopen(gw.admin_url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("hoopwire_cancel_dropped_total{")
               and 'reason="unknown_key"' in line)


def test_forged_cancel_key_cancels_nothing(gw, idp, pg):
    host, port = gw.address("pg")
    app = unique("forged")
    key = lock_key()
    with psycopg.connect(dsn(gw, idp, application_name=app), autocommit=True) as conn, \
            psycopg.connect(pg.dsn(user="app", dbname=APP_DB), autocommit=True) as direct, \
            psycopg.connect(pg.dsn(user="app", dbname=APP_DB), autocommit=True) as holder:
        pid = conn.info.backend_pid
        direct_pid = direct.info.backend_pid
        # Both sessions wait for a lock the test holds, rather than sleep: they are still
        # running when every forged request has been sent, for as long as that takes (a cancel
        # would end the wait with QueryCanceled), and they finish when the test lets them.
        holder.execute("select pg_advisory_lock(%s)", (key,))
        wait_sql = "select pg_advisory_lock_shared(%s), 'finished'"
        other = Background(lambda: direct.execute(wait_sql, (key,)).fetchone()[1])
        mine = Background(lambda: conn.execute(wait_sql, (key,)).fetchone()[1])
        wait_for(lambda: waiting_for_lock(pg, [pid, direct_pid]) == {pid, direct_pid}, 15,
                 what="both sessions waiting for the lock")
        replies = []
        dropped_before = unknown_key_drops(gw)
        for _ in range(5):
            # the real pid with random secrets, and the pid of a session that never went
            # through the gateway at all
            replies.append(pgraw.send_cancel(host, port, pid, random.getrandbits(32)))
            replies.append(pgraw.send_cancel(host, port, direct_pid, random.getrandbits(32)))
        assert replies == [b""] * 10
        # the gateway heard them and forwarded none (one worker knows every session's key):
        # each counted, logged once per burst (tests/test_pg_cancel_abuse.py)
        assert unknown_key_drops(gw) - dropped_before == 10
        gw.wait_log(r"cancel request dropped: a key this gateway did not issue")
        assert waiting_for_lock(pg, [pid, direct_pid]) == {pid, direct_pid}
        holder.execute("select pg_advisory_unlock(%s)", (key,))
        assert mine.result(10) == "finished"
        assert other.result(10) == "finished"
        assert conn.execute("select 1").fetchone()[0] == 1
        assert not re.search(rf"cancel forwarded .*backend_pid=({pid}|{direct_pid})\b",
                             gw.log_text())


# ------------------------------------------------------------------------------------------------
# extended protocol, pipelining

def test_psycopg_pipeline_mode_with_a_failure_in_the_middle(gw, idp):
    with psycopg.connect(dsn(gw, idp), autocommit=True) as conn:
        conn.execute("create temp table pl (id int primary key, v text)")
        conn.execute("create temp sequence pl_seq")
        with conn.pipeline() as p:
            with conn.cursor() as cur:
                cur.executemany("insert into pl values (%s, %s)",
                                [(i, f"v{i}") for i in range(500)])
            selects = [conn.execute("select v from pl where id = %s", (i,))
                       for i in range(0, 500, 7)]
            count = conn.execute("select count(*) from pl")
            p.sync()
            assert [c.fetchone()[0] for c in selects] == [f"v{i}" for i in range(0, 500, 7)]
            assert count.fetchone() == (500,)

            # One sync block: a good insert, an insert that fails (late, so that everything
            # after it is already on the wire), then statements the server must skip.
            with pytest.raises(psycopg.errors.UniqueViolation):
                conn.execute("insert into pl values (1000, 'in the failed block')")
                conn.execute("insert into pl select 1, 'dup' from pg_sleep(0.5)")
                conn.execute("insert into pl values (1001, 'skipped')")
                conn.execute("select nextval('pl_seq')")   # non-transactional: shows if it ran
                conn.execute("select 1/0")                 # would be a different error
                p.sync()

            # the pipeline recovers: the next sync block runs normally
            after = conn.execute("select count(*), max(id) from pl")
            nxt = conn.execute("select nextval('pl_seq')")
            for i in range(2000, 2100):
                conn.execute("insert into pl values (%s, 'later')", (i,))
            final = conn.execute("select count(*), max(id) from pl")
            p.sync()
            assert after.fetchone() == (500, 499)   # the failed block's insert rolled back
            assert nxt.fetchone() == (1,)           # nextval after the error never ran
            assert final.fetchone() == (600, 2099)
        assert conn.execute("select count(*) from pl where id >= 1000").fetchone() == (100,)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_psycopg_pipeline_in_a_transaction(gw, idp):
    with psycopg.connect(dsn(gw, idp)) as conn:
        conn.execute("create temp table pt (id int primary key)")
        conn.commit()
        with conn.pipeline():
            with pytest.raises(psycopg.errors.UniqueViolation):
                with conn.transaction():
                    for i in range(100):
                        conn.execute("insert into pt values (%s)", (i,))
                    conn.execute("insert into pt select 5 from pg_sleep(0.2)")
                    conn.execute("insert into pt values (500)")
            with conn.transaction():
                for i in range(100, 150):
                    conn.execute("insert into pt values (%s)", (i,))
        assert conn.execute("select count(*), min(id), max(id) from pt").fetchone() == (50, 100, 149)


def test_asyncpg_executemany_and_prepared_statements(gw, idp):
    async def main():
        conn = await asyncpg.connect(host="127.0.0.1", port=gw.port("pg"), user="agent-7",
                                     password=idp.token(), database=APP_DB, ssl=False)
        try:
            await conn.execute("create temp table em (id int primary key, v text)")
            await conn.executemany("insert into em values ($1, $2)",
                                   [(i, f"r{i}") for i in range(20000)])
            assert await conn.fetchval("select count(*) from em") == 20000
            with pytest.raises(asyncpg.UniqueViolationError):
                await conn.executemany("insert into em values ($1, $2)",
                                       [(i, "x") for i in range(30000, 30100)] + [(7, "dup")])
            assert await conn.fetchval("select count(*) from em") == 20000
            stmt = await conn.prepare("select v from em where id = $1")
            for i in range(0, 20000, 997):
                assert await stmt.fetchval(i) == f"r{i}"
        finally:
            await conn.close()
    asyncio.run(asyncio.wait_for(main(), 40))


# ------------------------------------------------------------------------------------------------
# COPY

N_COPY = 100_000


def copy_payload() -> bytes:
    return b"".join(b"%d\t%s\n" % (i, hashlib.md5(b"%d" % i).hexdigest().encode())
                    for i in range(1, N_COPY + 1))


CHECK_SQL = ("select count(*), sum(id), md5(string_agg(id || E'\\t' || name || E'\\n', '' "
             "order by id)) from {table}")


def test_psycopg_copy_both_ways_100k_rows(gw, idp):
    data = copy_payload()
    digest = hashlib.md5(data).hexdigest()
    with psycopg.connect(dsn(gw, idp), autocommit=True) as conn:
        conn.execute("create temp table cp (id int, name text)")
        with conn.cursor() as cur:
            with cur.copy("copy cp (id, name) from stdin") as copy:
                for off in range(0, len(data), 65536):
                    copy.write(data[off:off + 65536])
            assert cur.rowcount == N_COPY
            assert cur.execute(CHECK_SQL.format(table="cp")).fetchone() == \
                (N_COPY, N_COPY * (N_COPY + 1) // 2, digest)

            out = hashlib.md5()
            size = 0
            with cur.copy("copy (select id, name from cp order by id) to stdout") as copy:
                for block in copy:
                    out.update(block)
                    size += len(block)
            assert size == len(data)
            assert out.hexdigest() == digest

            # row by row, in binary, the other way round
            with cur.copy("copy (select id, name from cp where id % 1000 = 0 order by id) "
                          "to stdout (format binary)") as copy:
                copy.set_types(["int4", "text"])
                rows = list(copy.rows())
            assert rows == [(i, hashlib.md5(b"%d" % i).hexdigest()) for i in range(1000, N_COPY + 1, 1000)]

            # a COPY the client abandons (CopyFail) and one the server rejects mid-stream
            with pytest.raises(RuntimeError):
                with cur.copy("copy cp (id, name) from stdin") as copy:
                    copy.write(data[:100000])
                    raise RuntimeError("the client gives up")
            with pytest.raises(psycopg.errors.InvalidTextRepresentation):
                with cur.copy("copy cp (id, name) from stdin") as copy:
                    copy.write(b"not-a-number\tx\n")
                    for off in range(0, 1 << 20, 65536):
                        copy.write(data[off:off + 65536])
            assert cur.execute("select count(*) from cp").fetchone() == (N_COPY,)


def test_psql_copy_both_ways_100k_rows(gw, idp, tmp_path):
    data = copy_payload()
    src, dst = tmp_path / "in.tsv", tmp_path / "out.tsv"
    src.write_bytes(data)
    script = (
        "create temp table cq (id int, name text);\n"
        f"\\copy cq (id, name) from '{src}'\n"
        f"{CHECK_SQL.format(table='cq')};\n"
        f"\\copy (select id, name from cq order by id) to '{dst}'\n"
    )
    out = psql(dsn(gw, idp), "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-", input=script)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [f"{N_COPY}|{N_COPY * (N_COPY + 1) // 2}|{hashlib.md5(data).hexdigest()}"]
    assert dst.read_bytes() == data


def test_asyncpg_binary_copy_both_ways(gw, idp):
    records = [(i, f"name-{i}") for i in range(1, N_COPY + 1)]

    async def main():
        conn = await asyncpg.connect(host="127.0.0.1", port=gw.port("pg"), user="agent-7",
                                     password=idp.token(), database=APP_DB, ssl=False)
        try:
            await conn.execute("create temp table ca (id int, name text)")
            status = await conn.copy_records_to_table("ca", records=records)
            assert status == f"COPY {N_COPY}"
            row = await conn.fetchrow("select count(*), sum(id) from ca")
            assert tuple(row) == (N_COPY, N_COPY * (N_COPY + 1) // 2)
            buf = io.BytesIO()
            status = await conn.copy_from_query("select id, name from ca order by id", output=buf)
            assert status == f"COPY {N_COPY}"
            expected = "".join(f"{i}\t{n}\n" for i, n in records).encode()
            assert buf.getvalue() == expected
        finally:
            await conn.close()
    asyncio.run(asyncio.wait_for(main(), 40))


# ------------------------------------------------------------------------------------------------
# LISTEN / NOTIFY

def test_listen_notify(gw, idp, pg):
    channel = "hw_" + secrets.token_hex(4)
    with psycopg.connect(dsn(gw, idp), autocommit=True) as listener, \
            psycopg.connect(dsn(gw, idp), autocommit=True) as notifier:
        listener.execute(f"listen {channel}")
        # through the gateway, directly on the server, and a large payload
        notifier.execute("select pg_notify(%s, %s)", (channel, "through the gateway"))
        pg.sql(f"notify {channel}, 'from a direct session'", dbname=APP_DB)
        big = "p" * 7000
        notifier.execute("select pg_notify(%s, %s)", (channel, big))
        got = list(listener.notifies(timeout=10, stop_after=3))
        assert [n.channel for n in got] == [channel] * 3
        assert [n.payload for n in got] == ["through the gateway", "from a direct session", big]
        assert got[0].pid == notifier.info.backend_pid
        # the listener still answers queries, and notifications keep coming after
        assert listener.execute("select 1").fetchone()[0] == 1
        notifier.execute(f"notify {channel}, 'again'")
        again = list(listener.notifies(timeout=10, stop_after=1))
        assert [n.payload for n in again] == ["again"]


def test_asyncpg_listener(gw, idp):
    channel = "hw_" + secrets.token_hex(4)

    async def main():
        kw = dict(host="127.0.0.1", port=gw.port("pg"), user="agent-7", password=idp.token(),
                  database=APP_DB, ssl=False)
        listener = await asyncpg.connect(**kw)
        notifier = await asyncpg.connect(**kw)
        try:
            queue: asyncio.Queue = asyncio.Queue()
            await listener.add_listener(channel, lambda c, pid, ch, payload: queue.put_nowait(payload))
            for i in range(20):
                await notifier.execute(f"notify {channel}, 'n{i}'")
            got = [await asyncio.wait_for(queue.get(), 5) for _ in range(20)]
            assert got == [f"n{i}" for i in range(20)]
        finally:
            await listener.close()
            await notifier.close()
    asyncio.run(asyncio.wait_for(main(), 30))


# ------------------------------------------------------------------------------------------------
# a large result under a memory bound

ROWS = 200_000
WIDTH = 1000
BIG_SQL = f"select repeat('x', {WIDTH}) from generate_series(1, {ROWS})"
RSS_BOUND = 64 * 1024 * 1024


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


class RssSampler(threading.Thread):
    def __init__(self, pid: int, interval: float = 0.01):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak = 0
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            self.samples += 1
            time.sleep(self.interval)

    def __enter__(self) -> "RssSampler":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self._halt.set()
        self.join(5)


def test_large_result_streamed_with_bounded_gateway_memory(gw, idp):
    with psycopg.connect(dsn(gw, idp), autocommit=True) as conn:
        cur = conn.cursor()
        # warm up: allocator pools and buffers reach their working size first
        for _ in cur.stream(f"select repeat('x', {WIDTH}) from generate_series(1, 20000)", size=500):
            pass
        baseline = rss_bytes(gw.pid)
        rows = size = 0
        with RssSampler(gw.pid) as sampler:
            # single-row / chunked mode: the client holds at most one chunk at a time
            for (value,) in cur.stream(BIG_SQL, size=500):
                rows += 1
                size += len(value)
        assert rows == ROWS and size == ROWS * WIDTH
        assert sampler.samples > 10
        growth = sampler.peak - baseline
        assert growth < RSS_BOUND, f"gateway RSS grew by {growth / 2**20:.1f} MiB"
        assert conn.execute("select 1").fetchone()[0] == 1


def test_large_result_to_a_slow_reader_is_not_buffered_by_the_gateway(gw, idp):
    """A client that stops reading: the gateway must stop reading the upstream, not buffer."""
    host, port = gw.address("pg")
    baseline = rss_bytes(gw.pid)
    with pgraw.login(host, port, idp.token()) as c, RssSampler(gw.pid) as sampler:
        c.send(pgraw.typed(b"Q", BIG_SQL.encode() + b"\0"))
        time.sleep(1.5)                         # not reading at all
        total, tail, stalls = 0, b"", [50 << 20, 150 << 20]
        c.sock.settimeout(20)
        while True:
            chunk = c.sock.recv(1 << 20)
            assert chunk, "the gateway closed the connection mid-result"
            total += len(chunk)
            tail = (tail + chunk)[-6:]
            if tail == b"Z\x00\x00\x00\x05I":
                break
            if stalls and total > stalls[0]:
                stalls.pop(0)
                time.sleep(0.7)                 # stop reading again mid-stream
        # RowDescription + one DataRow of 1011 bytes per row + CommandComplete + ReadyForQuery
        assert total > ROWS * (WIDTH + 11)
        c.send(pgraw.typed(b"X"))
    growth = sampler.peak - baseline
    assert growth < RSS_BOUND, f"gateway RSS grew by {growth / 2**20:.1f} MiB"


# ------------------------------------------------------------------------------------------------
# the end of a session

def test_psql_terminate_is_logged(gw, idp):
    subject = unique("term")
    out = psql(dsn(gw, idp, subject=subject), "-A", "-t", "-c", "select 7")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "7"
    gw.wait_log(rf"session closed .*subject={subject} reason=client_terminate")


def test_driver_close_is_a_terminate(gw, idp):
    s1, s2 = unique("term-psycopg"), unique("term-asyncpg")
    with psycopg.connect(dsn(gw, idp, subject=s1)) as conn:
        conn.execute("select 1")

    async def main():
        conn = await asyncpg.connect(host="127.0.0.1", port=gw.port("pg"), user="agent-7",
                                     password=idp.token(subject=s2), database=APP_DB, ssl=False)
        await conn.fetchval("select 1")
        await conn.close()
    asyncio.run(asyncio.wait_for(main(), 20))
    gw.wait_log(rf"session closed .*subject={s1} reason=client_terminate")
    gw.wait_log(rf"session closed .*subject={s2} reason=client_terminate")


def test_upstream_backend_terminated_while_idle(gw, idp, pg):
    subject = unique("updown")
    conn = psycopg.connect(dsn(gw, idp, subject=subject), autocommit=True)
    try:
        pid = conn.info.backend_pid
        assert pg.sql(f"select pg_terminate_backend({pid})") == "t"
        gw.wait_log(rf"session closed .*subject={subject} reason=upstream_closed")
        with pytest.raises(psycopg.OperationalError) as ei:
            conn.execute("select 1")
        # the server's own FATAL reaches the client
        assert isinstance(ei.value, psycopg.errors.AdminShutdown), repr(ei.value)
        assert conn.closed or conn.broken
    finally:
        conn.close()
    with psycopg.connect(dsn(gw, idp), autocommit=True) as again:
        assert again.execute("select 1").fetchone()[0] == 1


def test_upstream_backend_terminated_mid_query(gw, idp, pg):
    subject, app = unique("updown-q"), unique("updown-q")
    with psycopg.connect(dsn(gw, idp, subject=subject, application_name=app), autocommit=True) as conn:
        pid = conn.info.backend_pid

        def kill():
            wait_active(pg, app)
            assert pg.sql(f"select pg_terminate_backend({pid})") == "t"
            return time.monotonic()

        killer = Background(kill)
        with pytest.raises(psycopg.errors.AdminShutdown):
            conn.execute("select pg_sleep(15)")
        t_end = time.monotonic()
        t_kill = killer.result(10)
        # the server's FATAL is passed on when it comes, not when the 15 s sleep would have
        # ended: that bound is the behaviour
        assert t_end - t_kill < 10
    gw.wait_log(rf"session closed .*subject={subject} reason=upstream_closed")

    async def main():
        conn = await asyncpg.connect(host="127.0.0.1", port=gw.port("pg"), user="agent-7",
                                     password=idp.token(), database=APP_DB, ssl=False)
        try:
            return await conn.fetchval("select 42")
        finally:
            await conn.close()
    assert asyncio.run(asyncio.wait_for(main(), 20)) == 42


@pytest.mark.parametrize("how", ["fin", "rst"])
def test_client_vanishes_mid_query(gw, idp, pg, how):
    host, port = gw.address("pg")
    subject, app = unique("vanish"), unique("vanish")
    c = pgraw.login(host, port, idp.token(subject=subject), application_name=app)
    c.send(pgraw.typed(b"Q", b"select pg_sleep(5)\0"))
    wait_active(pg, app)
    c.close(reset=how == "rst")
    gw.wait_log(rf"session closed .*subject={subject} reason=client_(closed|error)")
    # the upstream session ends (at the latest when the backend's 5 s statement is over); left
    # open, an idle backend would stay for good, so the 20 s are only a hang guard
    wait_for(lambda: backends(pg, app) == 0, timeout=20, what="the upstream backend to go away")
    with psycopg.connect(dsn(gw, idp), autocommit=True) as conn:
        assert conn.execute("select 1").fetchone()[0] == 1


def test_client_vanishes_while_idle(gw, idp, pg):
    host, port = gw.address("pg")
    subject, app = unique("vanish-idle"), unique("vanish-idle")
    with pgraw.login(host, port, idp.token(subject=subject), application_name=app) as c:
        c.send(pgraw.typed(b"Q", b"select 1\0"))
        while c.read_message()[0] != b"Z":
            pass
        assert backends(pg, app) == 1
        c.close(reset=True)
    gw.wait_log(rf"session closed .*subject={subject} reason=client_(closed|error)")
    wait_for(lambda: backends(pg, app) == 0, timeout=15, what="the upstream backend to go away")


# ------------------------------------------------------------------------------------------------
# several worker processes

def test_two_workers_sessions_and_cancel_across_workers(pg, idp):
    with Gateway(gateway_config(pg, idp), env=gateway_env(pg), workers=2) as g2:
        host, port = g2.address("pg")
        token = idp.token()

        # many sessions at once, each doing real work
        def session(i: int) -> int:
            with psycopg.connect(conninfo(g2, token, options=GUARD), autocommit=True) as conn:
                return conn.execute("select sum(g) from generate_series(1, %s) g", (i,)).fetchone()[0]

        sessions = {i: Background(session, i) for i in range(1, 31)}
        assert {i: b.result(30) for i, b in sessions.items()} == \
            {i: i * (i + 1) // 2 for i in range(1, 31)}

        crossed = False
        for round_no in range(4):
            app = unique(f"w2-{round_no}")
            conns = [psycopg.connect(conninfo(g2, token, application_name=app, options=GUARD),
                                     autocommit=True) for _ in range(10)]
            try:
                def run(conn):
                    try:
                        conn.execute("select pg_sleep(30)")
                    except psycopg.Error as e:
                        return e
                    return "completed"

                runners = [Background(run, c) for c in conns]
                wait_active(pg, app, count=10)
                for conn in conns:
                    conn.cancel_safe(timeout=5)
                for i, runner in enumerate(runners):
                    # "user request": the cancel ended the 30 s sleep, not the 20 s
                    # statement_timeout guard (the 25 s join is only a hang guard)
                    result = runner.result(25)
                    assert isinstance(result, psycopg.errors.QueryCanceled), (i, result)
                    assert "user request" in str(result), (i, result)
                    assert conns[i].execute("select 1").fetchone()[0] == 1
            finally:
                for c in conns:
                    c.close()
            # With two workers about half the CancelRequests land on the worker that does not
            # hold the session; go on until that case has happened at least once.
            if re.search(r"cancel forwarded .*session=other-worker", g2.log_text()):
                crossed = True
                break
        assert crossed, "no CancelRequest ever landed on the other worker (p = 2^-40)\n" + g2.log_text()

        # forged keys, whichever worker they land on, cancel nothing: the session waits for a
        # lock the test holds (a cancel would end the wait) until every forged request is sent
        app = unique("w2-forged")
        key = lock_key()
        with psycopg.connect(conninfo(g2, token, application_name=app, options=GUARD),
                             autocommit=True) as conn, \
                psycopg.connect(pg.dsn(user="app", dbname=APP_DB), autocommit=True) as holder:
            pid = conn.info.backend_pid
            holder.execute("select pg_advisory_lock(%s)", (key,))
            waiter = Background(lambda: conn.execute(
                "select pg_advisory_lock_shared(%s), 'done'", (key,)).fetchone()[1])
            wait_for(lambda: waiting_for_lock(pg, [pid]) == {pid}, 15,
                     what="the session waiting for the lock")
            replies = [pgraw.send_cancel(host, port, pid, random.getrandbits(32))
                       for _ in range(8)]
            assert replies == [b""] * 8
            # neither worker issued these keys: both drop them without reaching the server
            assert waiting_for_lock(pg, [pid]) == {pid}
            holder.execute("select pg_advisory_unlock(%s)", (key,))
            assert waiter.result(10) == "done"


# ------------------------------------------------------------------------------------------------
# framing on the live relay: messages split at every byte, and many in one segment

def test_messages_split_byte_by_byte_and_coalesced(gw, idp):
    host, port = gw.address("pg")
    with pgraw.login(host, port, idp.token()) as c:
        # one Query and one extended-protocol round, dribbled one byte per segment
        stream = (pgraw.typed(b"Q", b"select 'dribbled'\0") +
                  pgraw.typed(b"P", b"\0select $1::int * 2\0\0\0") +
                  pgraw.typed(b"B", b"\0\0\0\0\0\1\0\0\0\x0221\0\0") +
                  pgraw.typed(b"E", b"\0\0\0\0\0") + pgraw.typed(b"S"))
        for i in range(len(stream)):
            c.send(stream[i:i + 1])
            time.sleep(0.0005)
        got = []
        while len([k for k in got if k[0] == b"Z"]) < 2:
            got.append(c.read_message(5))
        assert [k for k, _ in got] == [b"T", b"D", b"C", b"Z", b"1", b"2", b"D", b"C", b"Z"]
        assert got[1][1].endswith(b"dribbled") and got[6][1].endswith(b"42")
        # a thousand statements in one write
        c.send(b"".join(pgraw.typed(b"Q", b"select %d\0" % i) for i in range(1000)))
        values, kind = [], None
        while len(values) < 1000 or kind != b"Z":
            kind, body = c.read_message(5)
            assert kind != b"E", pgraw.error_fields(body)
            if kind == b"D":
                values.append(int(body[6:]))
        assert values == list(range(1000))


def test_server_replies_cut_into_pieces(pg, idp):
    # The server's replies reach the gateway in pieces of 1 to 700 bytes (a real TCP relay,
    # Forwarder), so every message is cut across reads somewhere: in its header, in a row,
    # between a CommandComplete and its ReadyForQuery. Through the unrecorded relay's walk,
    # and through the framer while a blocked statement's error is being rewritten.
    with Forwarder(("127.0.0.1", pg.port), pieces=SMALL_PIECES) as cut, \
            Gateway(gateway_config(pg, idp, upstream=f"127.0.0.1:{cut.port}",
                                   guardrail=[{"pack": "destructive-ddl"}]),
                    env=gateway_env(pg)) as g:
        with psycopg.connect(conninfo(g, idp.token()), autocommit=True) as c:
            assert c.execute("SELECT id, name FROM items ORDER BY id").fetchall() == ITEMS
            c.execute("SET application_name = 'cut'")        # answered with a ParameterStatus
            assert c.info.parameter_status("application_name") == "cut"
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="destructive-ddl"):
                c.execute("DROP TABLE items")
            with pytest.raises(psycopg.errors.DivisionByZero):
                c.execute("SELECT 1/0")
            with c.transaction():
                c.execute("SELECT 1")
                assert c.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
            rows = c.execute("SELECT repeat('y', 3000) FROM generate_series(1, 40)").fetchall()
            assert rows == [("y" * 3000,)] * 40
            with pytest.raises(psycopg.errors.UniqueViolation):
                with c.pipeline() as p:
                    c.execute("CREATE TEMP TABLE cut (id int PRIMARY KEY)")
                    c.execute("INSERT INTO cut VALUES (1), (1)")
                    p.sync()
            assert c.execute("SELECT count(*) FROM items").fetchone() == (len(ITEMS),)
        assert cut.writes > 500


# ------------------------------------------------------------------------------------------------
# what the client sees when the upstream goes away

def test_server_fatal_is_the_last_word(gw, idp, pg):
    """The server says FATAL and closes: the client gets that error, and no second one made up
    by the gateway (a server never sends two)."""
    host, port = gw.address("pg")
    with pgraw.login(host, port, idp.token()) as c:
        pg.sql(f"select pg_terminate_backend({c.pid})")
        data, _ = c.read_until_closed(10)
    msgs, tail = pgraw.parse_messages(data)
    assert tail == b""
    errors = [pgraw.error_fields(body) for kind, body in msgs if kind == b"E"]
    assert [e["C"] for e in errors] == ["57P01"], errors


def test_upstream_connection_lost_without_a_word(pg, idp):
    fwd = Forwarder(("127.0.0.1", pg.port))
    try:
        cfg = gateway_config(pg, idp, upstream=f"127.0.0.1:{fwd.port}")
        with Gateway(cfg, env=gateway_env(pg)) as g:
            host, port = g.address("pg")
            # idle: the gateway tells the client at once, with its own FATAL
            subject = unique("cut-idle")
            with pgraw.login(host, port, idp.token(subject=subject)) as c:
                fwd.cut()
                data, _ = c.read_until_closed(10)
                msgs, tail = pgraw.parse_messages(data)
                assert tail == b"" and [k for k, _ in msgs] == [b"E"], data
                fields = pgraw.error_fields(msgs[0][1])
                assert fields["S"] == "FATAL" and fields["C"] == "08006", fields
            g.wait_log(rf"session closed .*subject={subject} reason=upstream_closed")

            # mid-result: the driver gets an error, not a hang or a desync
            subject = unique("cut-busy")
            with psycopg.connect(conninfo(g, idp.token(subject=subject), options=GUARD)) as conn:
                cur = conn.cursor()
                rows = 0
                with pytest.raises(psycopg.OperationalError):
                    for _ in cur.stream(BIG_SQL, size=100):
                        rows += 1
                        if rows == 20_000:
                            fwd.cut()
                            t_cut = time.monotonic()
                assert 20_000 <= rows < ROWS
                # a hang would last forever: any finite bound tells the two apart
                assert time.monotonic() - t_cut < 15
            g.wait_log(rf"session closed .*subject={subject} reason=upstream_closed")

            # and new sessions work once the network is back
            with psycopg.connect(conninfo(g, idp.token())) as conn:
                assert conn.execute("select 1").fetchone()[0] == 1
    finally:
        fwd.close()


@pytest.mark.parametrize("where", ["mid-message", "message-boundary"])
def test_client_vanishes_mid_copy_in(gw, idp, pg, where):
    """Nothing of an unfinished COPY FROM STDIN may be committed when the client goes away."""
    host, port = gw.address("pg")
    table = "copy_abort_" + secrets.token_hex(4)
    app = unique("copy-abort")
    pg.sql(f"create table {table} (id int, name text); grant all on {table} to app;", dbname=APP_DB)
    try:
        c = pgraw.login(host, port, idp.token(), application_name=app)
        c.send(pgraw.typed(b"Q", f"copy {table} from stdin\0".encode()))
        kind, _ = c.read_message(5)
        assert kind == b"G"   # CopyInResponse
        rows = b"".join(pgraw.typed(b"d", b"%d\tr%d\n" % (i, i)) for i in range(5000))
        c.send(rows)
        if where == "mid-message":
            c.send(pgraw.typed(b"d", b"5000\tunfinished\n")[:9])
        # every whole row has reached the server, which has read it into its COPY: what a
        # commit would keep, and what the abort must throw away
        wait_for(lambda: pg.sql(f"select tuples_processed from pg_stat_progress_copy "
                                f"where pid = {c.pid}") == "5000",
                 timeout=15, what="the server reading all 5000 rows")
        c.close(reset=where == "mid-message")
        wait_for(lambda: backends(pg, app) == 0, timeout=15, what="the upstream backend to go away")
        assert pg.sql(f"select count(*) from {table}", dbname=APP_DB) == "0"
    finally:
        pg.sql(f"drop table {table}", dbname=APP_DB)


def test_cancel_key_is_the_gateways_own(pg, idp):
    """The client gets the server's pid but a secret of the gateway's; the server's secret never
    reaches the client, and the client's secret is no good at the server itself."""
    fwd = Forwarder(("127.0.0.1", pg.port))
    try:
        cfg = gateway_config(pg, idp, upstream=f"127.0.0.1:{fwd.port}")
        with Gateway(cfg, env=gateway_env(pg)) as g:
            host, port = g.address("pg")
            app = unique("keys")
            with pgraw.login(host, port, idp.token(), application_name=app) as c:
                msgs, _ = pgraw.parse_messages(bytes(fwd.from_server[-1]))
                keys = [struct.unpack("!II", body) for kind, body in msgs if kind == b"K"]
                assert len(keys) == 1
                server_pid, server_secret = keys[0]
                assert c.pid == server_pid
                assert c.secret != server_secret

                # the client's key sent straight to the server cancels nothing: the session
                # waits for a lock the test holds (a cancel would end the wait) until the
                # request has been sent, then finishes without an error
                key = lock_key()
                with psycopg.connect(pg.dsn(user="app", dbname=APP_DB), autocommit=True) as holder:
                    holder.execute("select pg_advisory_lock(%s)", (key,))
                    c.send(pgraw.typed(b"Q", b"select pg_advisory_lock_shared(%d)\0" % key))
                    wait_for(lambda: waiting_for_lock(pg, [c.pid]) == {c.pid}, 15,
                             what="the session waiting for the lock")
                    assert pgraw.send_cancel("127.0.0.1", pg.port, c.pid, c.secret) == b""
                    assert waiting_for_lock(pg, [c.pid]) == {c.pid}
                    holder.execute("select pg_advisory_unlock(%s)", (key,))
                kinds = []
                while not kinds or kinds[-1] != b"Z":
                    kinds.append(c.read_message(10)[0])
                assert b"E" not in kinds, kinds

                # the same key through the gateway cancels (a 30 s sleep: read_message's 10 s
                # bound only tells a cancel from none)
                c.send(pgraw.typed(b"Q", b"select pg_sleep(30)\0"))
                wait_active(pg, app)
                assert pgraw.send_cancel(host, port, c.pid, c.secret) == b""
                msgs = []
                while not msgs or msgs[-1][0] != b"Z":
                    msgs.append(c.read_message(10))
                errors = [pgraw.error_fields(b) for k, b in msgs if k == b"E"]
                assert [e["C"] for e in errors] == ["57014"]
    finally:
        fwd.close()
