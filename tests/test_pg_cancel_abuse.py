"""CancelRequests that cannot be abused, under `hoopwire serve --workers 2` (issue 26).

A forged CancelRequest (raw socket, any secret) must never cost the upstream a connection, on
whichever worker the kernel hands it to; a legit one from psycopg or asyncpg still cancels, on
either worker; and one source address spraying is rate-limited, counted, and logged once per
burst. The upstream is a PostgreSQL of this module's own with log_connections on: every TCP
connection it received is a "connection received: host=127.0.0.1" line in its log, so "never
reached the upstream" is read from the upstream itself.

Sources: the legit clients connect from 127.0.0.1; each spray binds its own loopback source
(127.0.0.2, 127.0.0.3, ...), so the buckets of one test never touch another's.
"""

from __future__ import annotations

import asyncio
import random
import re
import secrets
import socket
import struct
import threading
import time
import urllib.request

import asyncpg
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gwfixtures import conninfo, gateway_config
from helpers import APP_DB, Gateway, wait_until
from hoopwire.devserver import PgServer
from hoopwire.core.cancels import CANCEL_BURST

pytestmark = pytest.mark.timeout(120)

GUARD = "-c statement_timeout=20000"    # a hang guard, told apart from a cancel by its message
CANCEL_REQUEST = 80877102


@pytest.fixture(scope="module")
def upstream():
    with PgServer(hba="scram-sha-256", extra_conf={"log_connections": "on"}) as server:
        server.create_role("app", secrets.token_urlsafe(18))
        server.create_database(APP_DB, owner="app")
        yield server


@pytest.fixture(scope="module")
def gw2(upstream, idp):
    with Gateway(gateway_config(upstream, idp), env={"APP_DB_PASSWORD": upstream.passwords["app"]},
                 workers=2) as g:
        yield g


def upstream_tcp_connections(server: PgServer) -> int:
    """Connections the upstream received over TCP (the gateway's logins and cancels; the
    superuser's pg.sql goes over the unix socket)."""
    with open(server.logfile, encoding="utf-8", errors="replace") as f:
        return sum(1 for line in f if "connection received: host=127.0.0.1" in line)


def dropped(gw: Gateway) -> dict[str, float]:
    """hoopwire_cancel_dropped_total by reason, summed over the workers."""
    with urllib.request.urlopen(gw.admin_url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {"unknown_key": 0.0, "rate_limited": 0.0}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "hoopwire_cancel_dropped_total":
                out[s.labels["reason"]] = out.get(s.labels["reason"], 0.0) + s.value
    return out


def raw_cancel(host: str, port: int, pid: int, secret: int, source: str) -> bytes:
    """One CancelRequest from `source`; what came back before the gateway closed (nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(5.0)
        s.bind((source, 0))
        s.connect((host, port))
        s.sendall(struct.pack("!IIII", 16, CANCEL_REQUEST, pid, secret))
        data = b""
        while True:
            chunk = s.recv(1024)     # a timeout here is a gateway that kept the connection
            if not chunk:
                return data
            data += chunk


def wait_active(server: PgServer, app: str, timeout: float = 15.0) -> None:
    wait_until(lambda: int(server.sql(
        "select count(*) from pg_stat_activity where state = 'active' "
        f"and application_name = '{app}'")) >= 1, timeout, f"a running statement of {app}")


def cancels_via_sibling(gw: Gateway) -> int:
    """Cancels that landed on the worker without the session and were passed to its owner."""
    return len(re.findall(r"cancel forwarded .*peer=other-worker", gw.log_text()))


def cancels_direct(gw: Gateway) -> int:
    return len(re.findall(r"cancel forwarded .*peer=127\.0\.0\.1:\d+ .*session=[0-9a-f]",
                          gw.log_text()))


# ------------------------------------------------------------------------------------------------
# legit cancels still cancel, on either worker

def test_psycopg_cancel_safe_on_both_workers(gw2, upstream, idp):
    app = f"cancel-{secrets.token_hex(4)}"
    via0, direct0 = cancels_via_sibling(gw2), cancels_direct(gw2)
    before = dropped(gw2)
    with psycopg.connect(conninfo(gw2, idp.token(), application_name=app, options=GUARD),
                         autocommit=True) as conn:
        rounds = 0
        # each cancel_safe is a new connection the kernel hands to either worker; go on until
        # both paths happened (p of 12 rounds on one side = 2^-11)
        while rounds < 12 and (cancels_via_sibling(gw2) == via0 or cancels_direct(gw2) == direct0):
            rounds += 1
            t0 = time.monotonic()
            result: list = []

            def run():
                try:
                    conn.execute("select pg_sleep(30)")
                    result.append("completed")
                except psycopg.Error as e:
                    result.append(e)
            t = threading.Thread(target=run, daemon=True)
            t.start()
            wait_active(upstream, app)
            conn.cancel_safe(timeout=5)
            t.join(15)
            assert not t.is_alive(), "the cancel did not end the statement"
            # "user request": the cancel ended the 30 s sleep, not the 20 s guard
            assert isinstance(result[0], psycopg.errors.QueryCanceled), result
            assert "user request" in str(result[0])
            assert time.monotonic() - t0 < 15
            assert conn.execute("select 1").fetchone()[0] == 1
    assert cancels_via_sibling(gw2) > via0, gw2.log_text()
    assert cancels_direct(gw2) > direct0, gw2.log_text()
    assert dropped(gw2) == before     # no legit cancel was dropped


def test_asyncpg_timeout_cancel_on_both_workers(gw2, upstream, idp):
    via0, direct0 = cancels_via_sibling(gw2), cancels_direct(gw2)

    async def main():
        conn = await asyncpg.connect(host="127.0.0.1", port=gw2.port("pg"), user="agent-7",
                                     password=idp.token(), database=APP_DB, ssl=False,
                                     server_settings={"statement_timeout": "20000"})
        try:
            for _ in range(12):
                t0 = time.monotonic()
                with pytest.raises(asyncio.TimeoutError):
                    # asyncpg sends a CancelRequest when the wait times out
                    await asyncio.wait_for(conn.fetchval("select pg_sleep(30)"), 0.5)
                # the next query waits for the cancelled one: only a cancel that got through
                # ends it before the 20 s statement_timeout
                assert await conn.fetchval("select 41 + 1") == 42
                assert time.monotonic() - t0 < 15
                if cancels_via_sibling(gw2) > via0 and cancels_direct(gw2) > direct0:
                    return
        finally:
            await conn.close()

    asyncio.run(asyncio.wait_for(main(), 100))
    assert cancels_via_sibling(gw2) > via0, gw2.log_text()
    assert cancels_direct(gw2) > direct0, gw2.log_text()


# ------------------------------------------------------------------------------------------------
# forged cancels never reach the upstream

def test_forged_cancels_never_reach_the_upstream(gw2, upstream, idp):
    host, port = gw2.address("pg")
    app = f"forged-{secrets.token_hex(4)}"
    with psycopg.connect(conninfo(gw2, idp.token(), application_name=app, options=GUARD),
                         autocommit=True) as conn:
        pid = conn.info.backend_pid
        result: list = []
        t = threading.Thread(target=lambda: result.append(
            conn.execute("select pg_sleep(3), 'slept'").fetchone()[1]), daemon=True)
        t.start()
        wait_active(upstream, app)
        before, seen = dropped(gw2), upstream_tcp_connections(upstream)
        # the live session's pid with forged secrets (the attack that could land), and random
        # pids; fewer than one worker's burst, so every one meets the key check
        forged = [(pid, random.getrandbits(32)) for _ in range(10)] + \
                 [(random.getrandbits(31), random.getrandbits(32)) for _ in range(6)]
        for p, s in forged:
            assert raw_cancel(host, port, p, s, "127.0.0.2") == b""
        after = dropped(gw2)
        assert after["unknown_key"] - before["unknown_key"] == len(forged)
        assert after["rate_limited"] == before["rate_limited"]
        t.join(15)
        assert result == ["slept"]       # not cancelled
    assert upstream_tcp_connections(upstream) == seen, upstream.log_tail(30)
    # one line per burst, not per packet: each worker tells its first drop
    lines = re.findall(r"cancel request dropped: a key this gateway did not issue .*peer=127\.0\.0\.2",
                       gw2.log_text())
    assert 1 <= len(lines) <= 2, lines


def test_spray_is_rate_limited_per_source(gw2, upstream, idp):
    host, port = gw2.address("pg")
    before, seen = dropped(gw2), upstream_tcp_connections(upstream)
    sent = 200
    t0 = time.monotonic()
    for _ in range(sent):
        raw_cancel(host, port, random.getrandbits(31), random.getrandbits(32), "127.0.0.3")
    elapsed = time.monotonic() - t0
    after = dropped(gw2)
    unknown = after["unknown_key"] - before["unknown_key"]
    limited = after["rate_limited"] - before["rate_limited"]
    assert unknown + limited == sent            # every one counted
    # each worker lets through its bucket and what refilled meanwhile (5 a second)
    assert unknown <= 2 * (CANCEL_BURST + 5 * elapsed) + 1, (unknown, elapsed)
    assert limited >= sent - 2 * (CANCEL_BURST + 5 * elapsed) - 1
    assert upstream_tcp_connections(upstream) == seen
    text = gw2.log_text()
    assert 1 <= len(re.findall(r"cancel request dropped: rate limited .*peer=127\.0\.0\.3", text)) <= 2
    # another address still has its own bucket: a legit cancel from 127.0.0.1 works
    app = f"after-spray-{secrets.token_hex(4)}"
    with psycopg.connect(conninfo(gw2, idp.token(), application_name=app, options=GUARD),
                         autocommit=True) as conn:
        result: list = []

        def run():
            try:
                conn.execute("select pg_sleep(30)")
            except psycopg.Error as e:
                result.append(e)
        t = threading.Thread(target=run, daemon=True)
        t.start()
        wait_active(upstream, app)
        conn.cancel_safe(timeout=5)
        t.join(15)
        assert result and isinstance(result[0], psycopg.errors.QueryCanceled), result



# ------------------------------------------------------------------------------------------------
# the bucket and the log's burst rule, over generated arrival sequences

from hypothesis import given, settings, strategies as st    # noqa: E402

from hoopwire.core.cancels import CancelLimiter, LogBurst, source_of    # noqa: E402


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


arrivals = st.lists(st.tuples(st.floats(0, 2.0), st.integers(0, 9)), min_size=1, max_size=300)


@settings(max_examples=200, deadline=None)
@given(arrivals, st.integers(1, 8), st.floats(0.5, 20.0), st.integers(1, 12))
def test_bucket_bounds_every_source(seq, burst, rate, capacity):
    clock = Clock()
    lim = CancelLimiter(burst=burst, rate=rate, capacity=capacity, clock=clock)
    first: dict[int, float] = {}
    allowed: dict[int, int] = {}
    for gap, src in seq:
        clock.now += gap
        first.setdefault(src, clock.now)
        if lim.allow(f"10.0.0.{src}"):
            allowed[src] = allowed.get(src, 0) + 1
        assert len(lim) <= capacity          # bounded memory
    if capacity >= 10:
        # never evicted: no source got more than its burst and what refilled since it began
        for src, n in allowed.items():
            assert n <= burst + rate * (clock.now - first[src]) + 1e-6, (src, n)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 6), st.floats(0.5, 20.0), st.integers(0, 40))
def test_bucket_lets_a_quiet_source_through(burst, rate, spray):
    """A source that sprayed gets its burst back after burst/rate seconds of quiet, and one
    source's spray never takes another's tokens."""
    clock = Clock()
    lim = CancelLimiter(burst=burst, rate=rate, capacity=16, clock=clock)
    got = sum(lim.allow("10.0.0.1") for _ in range(burst + spray))
    assert got == burst
    assert all(lim.allow("10.0.0.2") for _ in range(burst))
    clock.now += burst / rate + 1e-3
    assert sum(lim.allow("10.0.0.1") for _ in range(burst + 5)) == burst


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 30.0), min_size=1, max_size=200), st.floats(1.0, 20.0))
def test_log_burst_tells_one_line_per_window(gaps, window):
    clock = Clock()
    burst = LogBurst(window=window, clock=clock)
    told, quiet_total, last_told = 0, 0, None
    for gap in gaps:
        clock.now += gap
        q = burst.note("unknown_key")
        if q is not None:
            # no two lines closer than the window, and none of the drops goes uncounted
            assert last_told is None or clock.now - last_told >= window
            last_told = clock.now
            told += 1
            quiet_total += q
    pending = burst._state["unknown_key"][1]    # noqa: SLF001 -- counted since the last line
    assert told + quiet_total + pending == len(gaps)
    assert told <= 1 + sum(gaps) / window


@pytest.mark.parametrize("peer, source", [
    ("127.0.0.1:5432", "127.0.0.1"),
    ("10.1.2.3:1", "10.1.2.3"),
    ("2001:db8:1:2:aaaa::1:40000", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff:ffff:ffff:ffff:1", "2001:db8:1:2::/64"),   # one /64, one bucket
    ("::ffff:192.0.2.7:99", "192.0.2.7"),
    ("/run/hoopwire.sock", "/run/hoopwire.sock"),
])
def test_source_of(peer, source):
    assert source_of(peer) == source
