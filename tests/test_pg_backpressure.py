"""Backpressure through the PostgreSQL relay (issue 17 section 4): when the upstream stops
reading, the gateway stops reading the client within a bounded buffer.

Real server, real drivers, through a gateway that is plain, masks results, or masks and
applies guardrails:
- psycopg `executemany` (pipeline mode) and asyncpg `executemany` of N inserts where row K
  violates a CHECK: every INSERT the server executes draws from a sequence (the column's
  default, evaluated before the check), so the sequence counts executions. Through the gateway
  no more may run than direct (the bound is 0: the server skips the rest of a failed pipeline
  up to Sync, and the gateway must neither add a Sync nor split the pipeline).
- a raw client that streams 20,000 4 KiB Queries (each its own transaction) into a server that
  works slowly, and stops sending at the first error: everything it sent runs, so what ran
  is what the path held; through the gateway at most 16 MiB of statements more than direct.
- a client that floods 200 MB of COPY data into a backend stalled by a trigger (pg_sleep on the
  first row): the gateway's RSS must stay within a bound while the client is stuck, and all
  of it must go through once the backend reads again.
And in-process (tests/relaywire.py), the relay's own rule: a transport past its high-water mark
stops reading of the other side, and nothing else (an approval decided) starts it again.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time

import asyncpg
import psycopg
import pytest

import pgraw
from gwfixtures import conninfo, gateway_config, gateway_env
from helpers import APP_DB, Gateway
from relaywire import Wire, data_row, query, row_description
from test_pg_relay import RssSampler, rss_bytes

pytestmark = pytest.mark.timeout(180)

N = 2000                          # inserts per executemany
K = 500                           # the one (1-based) that violates the check
EXTRA_BOUND = 0                   # statements the gateway may run beyond direct

FLOOD = 200 * 1024 * 1024         # bytes of COPY data the client sends
STALL = 4.0                       # seconds the backend sleeps on the first row
# What the gateway may grow by while the flood is stuck: its own buffer is the upstream
# transport's high-water mark plus one read (a few hundred KiB); the rest is allocator slack.
# Without backpressure it holds everything the client sends during the stall (~200 MB).
RSS_BOUND = 32 * 1024 * 1024

SCHEMA = f"""
SET ROLE app;
DROP SCHEMA IF EXISTS bp CASCADE;
CREATE SCHEMA bp;
CREATE SEQUENCE bp.ran;
CREATE TABLE bp.items (id int, v int CHECK (v >= 0), ran bigint DEFAULT nextval('bp.ran'));
CREATE TABLE bp.people (id int, ssn text);
INSERT INTO bp.people VALUES (1, '123-45-6789');
-- one statement of the streaming client: slow (5 ms) before the failing one, so the client
-- fills every buffer on the way while the server works; then the failure; then fast
CREATE FUNCTION bp.step(i int, k int) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
  IF i < k THEN PERFORM pg_sleep(0.005); END IF;
  RETURN nextval('bp.ran') / (CASE WHEN i = k THEN 0 ELSE 1 END);
END $$;
CREATE TABLE bp.sink (line text);
CREATE FUNCTION bp.stall() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.line = 'stall' THEN PERFORM pg_sleep({STALL}); END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER stall BEFORE INSERT ON bp.sink FOR EACH ROW EXECUTE FUNCTION bp.stall();
"""

MASKS = [{"columns": ["bp.people.ssn"], "strategy": "redact"}]
GUARDRAILS = [{"pack": p} for p in ("destructive-ddl", "unbounded-write", "privilege-changes",
                                    "server-side-io", "session-tampering")]
GUARDRAILS.append({"name": "watch-pg-sleep", "patterns": [r"\bpg_sleep\b"], "action": "log"})


@pytest.fixture(scope="module")
def bp(pg):
    pg.sql(SCHEMA, dbname=APP_DB)
    yield
    pg.sql("DROP SCHEMA IF EXISTS bp CASCADE", dbname=APP_DB)


@pytest.fixture(scope="module", params=["plain", "masking", "masking+guardrails"])
def bgw(request, pg, idp, bp):
    kw = {}
    if "masking" in request.param:
        kw.update(mask=MASKS, mask_hash_key_env="MASK_KEY")
    if "guardrails" in request.param:
        kw["guardrail"] = GUARDRAILS
    env = gateway_env(pg)
    env["MASK_KEY"] = "k" * 32
    with Gateway(gateway_config(pg, idp, **kw), env=env) as g:
        g.variant = request.param
        yield g


def direct_dsn(pg) -> str:
    return pg.dsn(user="app", dbname=APP_DB, sslmode="disable")


def rows():
    return [(i, -1 if i == K else i) for i in range(1, N + 1)]


def executed(pg, run) -> int:
    """INSERTs the server executed during run(): the sequence's draws."""
    pg.sql("ALTER SEQUENCE bp.ran RESTART; TRUNCATE bp.items", dbname=APP_DB)
    run()
    got = pg.sql("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM bp.ran",
                 dbname=APP_DB)
    assert pg.sql("SELECT count(*) FROM bp.items", dbname=APP_DB) == "0"   # all rolled back
    return int(got)


def psycopg_executemany(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.cursor().executemany("INSERT INTO bp.items (id, v) VALUES (%s, %s)", rows())
        assert conn.execute("select 1").fetchone() == (1,)


def asyncpg_executemany(**connect) -> None:
    async def go():
        conn = await asyncpg.connect(**connect, timeout=10)
        try:
            with pytest.raises(asyncpg.CheckViolationError):
                await conn.executemany("INSERT INTO bp.items (id, v) VALUES ($1, $2)", rows())
            assert await conn.fetchval("select 1") == 1
        finally:
            await conn.close()
    asyncio.run(asyncio.wait_for(go(), 60))


FIGURES: dict[str, object] = {}


def test_psycopg_executemany_stops_where_it_does_direct(pg, bgw, idp):
    direct = executed(pg, lambda: psycopg_executemany(direct_dsn(pg)))
    through = executed(pg, lambda: psycopg_executemany(conninfo(bgw, idp.token())))
    FIGURES[f"psycopg executemany {bgw.variant}"] = (direct, through)
    print(f"\npsycopg executemany N={N} K={K} [{bgw.variant}]: direct ran {direct}, "
          f"through the gateway {through}")
    assert direct == K          # the driver pipelines; the server stops at the failure
    assert through <= direct + EXTRA_BOUND


def test_asyncpg_executemany_stops_where_it_does_direct(pg, bgw, idp):
    host, port = bgw.address("pg")
    direct = executed(pg, lambda: asyncpg_executemany(
        host=pg.host, port=pg.port, user="app", password=pg.passwords["app"], database=APP_DB,
        ssl=False))
    through = executed(pg, lambda: asyncpg_executemany(
        host=host, port=port, user="agent-7", password=idp.token(), database=APP_DB,
        ssl=False))
    FIGURES[f"asyncpg executemany {bgw.variant}"] = (direct, through)
    print(f"\nasyncpg executemany N={N} K={K} [{bgw.variant}]: direct ran {direct}, "
          f"through the gateway {through}")
    assert direct == K
    assert through <= direct + EXTRA_BOUND


# -- a client that streams one statement per Sync and stops at the first error ----------------

PAD = 4096                      # bytes of comment per statement: in-flight counts stay readable
STREAM_N = 20000                # statements the client would send (80 MB) ...
STREAM_K = 200                  # ... the one that fails
# Each statement is its own implicit transaction, so every statement the server reads before
# the client stops runs: how many is what the path between them holds (the statements before
# the failing one take 5 ms each, so the client fills it), plus what the client sends while the
# error travels back. The gateway adds a hop -- a second pair of kernel socket
# buffers, autotuned (tcp_rmem up to 32 MB here) -- and its own buffer, the upstream
# transport's 64 KiB high-water mark plus one read (256 KiB), and it is slower to pass the
# error back when starved of CPU. Measured on 2 loaded cores: direct ran ~870-890 statements
# (3.5 MiB in flight), through the gateway ~2,620 in every variant (6.8-6.9 MiB more). The
# bound: 16 MiB of statements beyond direct; without backpressure all 20,000 (80 MB) run.
STREAM_EXTRA_BYTES = 16 * 1024 * 1024


class Streamer:
    """Sends Query after Query (each its own unit) from one thread, reads the answers in
    another, and stops sending at the first ErrorResponse, as a streaming driver does; then
    reads the answer of every statement it sent (so all of them have run or failed)."""

    def __init__(self, sock):
        self.sock = sock
        self.failed = threading.Event()
        self.done = threading.Event()
        self.sent = 0
        self.answers = 0

    def statement(self, i: int) -> bytes:
        return query(b"SELECT bp.step(%d, %d) /* %s */" % (i, STREAM_K, b"x" * PAD))

    def run(self) -> None:
        reader = threading.Thread(target=self._read, daemon=True)
        reader.start()
        for i in range(1, STREAM_N + 1):
            if self.failed.is_set():
                break
            self.sock.sendall(self.statement(i))
            self.sent += 1
        self.done.set()
        reader.join(90)
        assert not reader.is_alive(), "answers missing"
        assert self.failed.is_set() and self.answers == self.sent

    def _read(self) -> None:
        buf = b""
        while not (self.done.is_set() and self.answers == self.sent):
            data = self.sock.recv(1 << 16)
            if not data:
                return
            buf += data
            while len(buf) >= 5:
                (n,) = struct.unpack_from("!I", buf, 1)
                if len(buf) < 1 + n:
                    break
                kind, buf = buf[:1], buf[1 + n:]
                if kind == b"Z":
                    self.answers += 1
                elif kind == b"E":
                    self.failed.set()


def stream_until_error(sock) -> int:
    s = Streamer(sock)
    sock.settimeout(60)
    s.run()
    return s.sent


def test_streaming_client_stops_within_a_bound_of_direct(pg, bgw, idp):
    host, port = bgw.address("pg")
    sent = {}

    def direct():
        # a raw login straight to the server: psycopg does it, then hands over its socket
        conn = psycopg.connect(direct_dsn(pg), autocommit=True)
        try:
            sock = socket.socket(fileno=conn.pgconn.socket)
            try:
                sent["direct"] = stream_until_error(sock)
            finally:
                sock.detach()
        finally:
            conn.pgconn.finish()

    def through():
        with pgraw.login(host, port, idp.token()) as c:
            sent["gateway"] = stream_until_error(c.sock)

    ran_direct = executed(pg, direct)
    ran_through = executed(pg, through)
    extra = max(0, ran_through - ran_direct)
    FIGURES[f"stream {bgw.variant}"] = (ran_direct, ran_through, sent)
    print(f"\nstreaming client, {PAD + 40} B statements, error at {STREAM_K} [{bgw.variant}]: "
          f"direct ran {ran_direct} (sent {sent['direct']}), through the gateway {ran_through} "
          f"(sent {sent['gateway']}): {extra} more = {extra * PAD / 2**20:.1f} MiB")
    assert ran_direct == sent["direct"] and ran_through == sent["gateway"]
    assert ran_direct < STREAM_N
    assert extra * PAD <= STREAM_EXTRA_BYTES


class Flooder(threading.Thread):
    """Sends `total` bytes of CopyData (64 KiB lines, 1 MiB messages) as fast as the socket
    takes them; `sent` says how far it got."""

    LINE = b"x" * (64 * 1024 - 1) + b"\n"
    MESSAGE = b"d" + struct.pack("!I", 4 + 16 * len(LINE)) + LINE * 16

    def __init__(self, sock, total: int):
        super().__init__(daemon=True)
        self.sock, self.total = sock, total
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while self.sent < self.total:
                self.sock.sendall(self.MESSAGE)
                self.sent += len(self.MESSAGE)
        except BaseException as e:      # noqa: BLE001 -- reported by the test
            self.error = e


def test_flood_into_a_stalled_backend_keeps_gateway_memory_bounded(bgw, idp):
    host, port = bgw.address("pg")
    with pgraw.login(host, port, idp.token()) as c:
        # warm up: buffers and allocator pools reach their working size first
        c.send(query(b"select repeat('x', 1000000)"))
        while c.read_message(10)[0] != b"Z":
            pass
        baseline = rss_bytes(bgw.pid)
        c.send(query(b"COPY bp.sink FROM STDIN"))
        kind, _ = c.read_message(10)
        assert kind == b"G", kind
        c.send(pgraw.typed(b"d", b"stall\n"))
        c.sock.settimeout(60)
        flood = Flooder(c.sock, FLOOD)
        started = time.monotonic()
        with RssSampler(bgw.pid) as sampler:
            flood.start()
            # the backend sleeps: the client is stuck once the buffers on the way are full
            last, still = -1, time.monotonic()
            while time.monotonic() - started < STALL - 0.5:
                if flood.sent != last:
                    last, still = flood.sent, time.monotonic()
                elif time.monotonic() - still > 1.0:
                    break
                time.sleep(0.05)
            stuck_at = flood.sent
            stuck_rss = rss_bytes(bgw.pid) - baseline
            stuck_peak = sampler.peak - baseline
            flood.join(120)
        elapsed = time.monotonic() - started
        assert not flood.is_alive() and flood.error is None, flood.error
        c.send(pgraw.typed(b"c"))
        kind, body = c.read_message(60)
        assert (kind, body) == (b"C", b"COPY 0\0"), (kind, body)
        assert c.read_message(10)[0] == b"Z"
        growth = sampler.peak - baseline
    FIGURES[f"flood {bgw.variant}"] = dict(stuck_at=stuck_at, stuck_rss=stuck_rss,
                                           peak_growth=growth, seconds=elapsed)
    print(f"\nflood [{bgw.variant}]: client stuck after {stuck_at / 2**20:.1f} MiB "
          f"(RSS +{stuck_rss / 2**20:.1f} MiB then, peak +{stuck_peak / 2**20:.1f} MiB); "
          f"{FLOOD / 2**20:.0f} MiB through in {elapsed:.1f} s, peak RSS growth "
          f"{growth / 2**20:.1f} MiB, {sampler.samples} samples")
    assert stuck_at < FLOOD / 2, "the client never got stuck: the gateway read it all"
    assert growth < RSS_BOUND, f"gateway RSS grew by {growth / 2**20:.1f} MiB"


# -- in-process: the relay's pause/resume rule -------------------------------------------------

HIGH_WATER = 64 * 1024


def test_upstream_full_stops_reading_the_client():
    w = Wire(mask=False, record=False, high_water=HIGH_WATER)
    assert w.client.reading
    chunk = query(b"select '" + b"x" * 16000 + b"'")
    fed = 0
    while w.client.reading:
        w.from_client(chunk)
        fed += len(chunk)
        assert fed < 4 * HIGH_WATER, "the relay kept reading a client the upstream can't take"
    assert w.relay.upstream_full
    # the upstream reads: the client is read again
    assert len(w.upstream.drain()) == fed
    assert w.client.reading and not w.relay.upstream_full


def test_client_full_stops_reading_the_upstream():
    w = Wire(mask=False, record=True, high_water=HIGH_WATER)
    w.from_client(query(b"select big"))
    w.upstream.drain()
    w.from_server(row_description([(b"big", 0, 0, 25)]))
    row = data_row([b"y" * 20000])
    fed = 0
    while w.upstream.reading:
        w.from_server(row)
        fed += len(row)
        assert fed < 4 * HIGH_WATER
    assert w.relay.client_full
    w.client.drain()
    assert w.upstream.reading


class Approve:
    action, rule, message, matched = "approve", "ask-a-human", "", ("ask-a-human",)


class ApprovePolicy:
    approves = True
    empty = False

    def check(self, sql):
        return Approve() if b"ask" in sql else None


class Events:
    def statement_held(self, relay, verdict, sql):
        return object()

    def statement_matched(self, *a):
        pass

    def statement_blocked(self, *a):
        pass

    def session_closed(self, *a):
        pass


def test_an_approval_does_not_read_the_client_while_the_upstream_is_full():
    """A statement held for approval behind one that filled the upstream's buffer: deciding
    it must not start reading the client again while the upstream still cannot take more."""
    w = Wire(mask=False, record=False, high_water=HIGH_WATER, policy=ApprovePolicy(),
             events=Events())
    big = query(b"select '" + b"x" * (2 * HIGH_WATER) + b"'")
    w.from_client(big + query(b"select 'ask'"))
    assert w.relay.held and w.relay.upstream_full and not w.client.reading
    w.relay.decide(True)
    assert not w.relay.held
    assert not w.client.reading, "an approval resumed reading into a full upstream"
    assert w.upstream.drain() == big + query(b"select 'ask'")
    assert w.client.reading


def test_a_released_masker_hold_does_not_read_the_upstream_while_the_client_is_full():
    """resume_upstream (the masker's catalog read done) must not start reading the upstream
    again while the client's buffer is past its high-water mark."""
    w = Wire(mask=False, record=True, high_water=HIGH_WATER)
    w.from_client(query(b"select big"))
    w.upstream.drain()
    w.from_server(row_description([(b"big", 0, 0, 25)]))
    row = data_row([b"y" * 20000])
    while w.upstream.reading:
        w.from_server(row)
    w.relay.resume_upstream()
    assert not w.upstream.reading, "a released hold resumed reading into a full client"
    w.client.drain()
    assert w.upstream.reading
