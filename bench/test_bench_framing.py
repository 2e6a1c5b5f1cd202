"""Framer microbenchmarks on a captured pgbench stream (pytest-benchmark).

    python -m pytest bench/test_bench_framing.py --benchmark-only -p no:cacheprovider

A throwaway PostgreSQL is started and `pgbench -S` (simple and extended) runs for two seconds
through a tiny recording relay; the framer is then timed over what each side sent: fed whole,
and fed in pieces cut at random points (as the network delivers them). extra_info carries
messages/s and MB/s.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import threading

import pytest

from hoopwire.pg._wire import PgFramer
from hoopwire.devserver import PgServer


def _record(pg: PgServer, mode: str) -> tuple[bytes, bytes]:
    """Run pgbench through a recording relay; return (client->server, server->client) bytes."""
    conns: list[tuple[bytearray, bytearray]] = []  # pgbench opens a connection of its own first
    ready = threading.Event()
    port_box = []

    async def relay():
        async def handle(cr, cw):
            sr, sw = await asyncio.open_connection("127.0.0.1", pg.port)
            up, down = bytearray(), bytearray()
            conns.append((up, down))

            async def pump(r, w, sink):
                while data := await r.read(65536):
                    sink += data
                    w.write(data)
                    await w.drain()
                w.close()
            await asyncio.gather(pump(cr, sw, up), pump(sr, cw, down), return_exceptions=True)
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port_box.append(server.sockets[0].getsockname()[1])
        ready.set()
        await asyncio.sleep(6)
        server.close()

    t = threading.Thread(target=lambda: asyncio.run(relay()), daemon=True)
    t.start()
    ready.wait(10)
    # no SSLRequest: the server's side is then typed messages from its first byte
    env = dict(os.environ, PGPASSWORD=pg.superuser_password, PGSSLMODE="disable")
    subprocess.run([os.path.join(pg.bindir, "pgbench"), "-n", "-S", "-M", mode, "-T", "2", "-c", "1",
                    "-h", "127.0.0.1", "-p", str(port_box[0]), "-U", "postgres", "postgres"],
                   env=env, check=True, capture_output=True)
    t.join(10)
    up, down = max(conns, key=lambda c: len(c[0]))
    return bytes(up), bytes(down)


@pytest.fixture(scope="module")
def streams():
    with PgServer() as pg:
        env = dict(os.environ, PGPASSWORD=pg.superuser_password)
        subprocess.run([os.path.join(pg.bindir, "pgbench"), "-i", "-s", "1", "-q", "-h", "127.0.0.1",
                        "-p", str(pg.port), "-U", "postgres", "postgres"], env=env, check=True,
                       capture_output=True)
        out = {}
        for mode in ("simple", "extended"):
            c2s, s2c = _record(pg, mode)
            # skip the untyped startup packet; the rest is typed messages
            start = int.from_bytes(c2s[:4], "big")
            out[mode] = {"client": c2s[start:], "server": s2c}
        return out


def _chunks(data: bytes, mean: int, seed: int = 1) -> list[bytes]:
    rnd = random.Random(seed)
    out, pos = [], 0
    while pos < len(data):
        n = max(1, int(rnd.expovariate(1 / mean)))
        out.append(data[pos:pos + n])
        pos += n
    return out


def _run(chunks, inspect_all):
    f = PgFramer(inspect_all=inspect_all)
    feed = f.feed_forward
    for c in chunks:
        feed(c)
    return f.message_count


@pytest.mark.parametrize("mode", ["simple", "extended"])
@pytest.mark.parametrize("side", ["client", "server"])
@pytest.mark.parametrize("cut", ["whole-64k", "random-1k", "random-100"])
@pytest.mark.parametrize("path", ["forward", "inspect"])
def test_framer(benchmark, streams, mode, side, cut, path):
    data = streams[mode][side]
    chunks = _chunks(data, 1000 if cut == "random-1k" else 100) if cut.startswith("random") \
        else [data[i:i + 65536] for i in range(0, len(data), 65536)]
    count = benchmark(_run, chunks, path == "inspect")
    seconds = benchmark.stats.stats.median
    benchmark.extra_info["messages"] = count
    benchmark.extra_info["msgs_per_s"] = round(count / seconds)
    benchmark.extra_info["MB_per_s"] = round(len(data) / seconds / 1e6, 1)
