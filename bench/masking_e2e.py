#!/usr/bin/env python3
"""End-to-end cost of result masking: one big `SELECT * FROM people` read with psql straight from
PostgreSQL, through hoopwire without masking, and through hoopwire with masking on.

    python bench/masking_e2e.py                       # 1,000,000 rows, 3 rounds
    python bench/masking_e2e.py --rows 200000 --rounds 1 --seed 1
    python bench/masking_e2e.py --rows 50000 --rules columns --soak 300   # memory over many reads
    python bench/masking_e2e.py --rows 50000 --soak 300 --tracemalloc     # ... and where it goes

What it starts (all throwaway, on loopback, stopped and removed on exit, Ctrl-C or SIGTERM):

- a PostgreSQL cluster (`hoopwire.devserver.PgServer`) with a table
  `people(id, name, email, ssn, phone, card, notes)` of N rows (~200 bytes each) of made-up PII
  generated in SQL: every row has an email, a US SSN (valid area number), an E.164 phone number
  and a 16-digit card number; about 10% of the `notes` hold an AWS access key id (`AKIA...`);
- `masking-off`: a hoopwire gateway with one connection and no rules (the same config shape as
  bench/pgbench_compare.py's `hoopwire` target, API key identity);
- `masking-on`: the same plus three `[[connection.mask]]` rules: `public.people.ssn` partial
  (last 4 kept), `*.card` redacted, and the detectors EMAIL, US_SSN, PHONE, CREDIT_CARD and
  AWS_ACCESS_KEY_ID redacted wherever else they hit. In this table that means every row has
  four columns rewritten (ssn, card, email, phone) and every text column is scanned.

Before timing anything, one query through `masking-on` checks that ssn/email/phone/card and the
AWS keys in `notes` really come back masked (and through `masking-off` that they do not), so a
gateway that silently passes data through cannot produce a good-looking number.

Each round runs `psql -X -At -o /dev/null -c "SELECT * FROM people"` once per target, targets in
a shuffled order (`--seed` repeats an order). psql buffers the whole result in memory and throws
the text away, so the time is: connect + PostgreSQL producing the rows + the path in between +
libpq parsing them. While a gateway run is going, a thread samples the gateway process tree's
RSS (VmRSS from /proc) every 50 ms; the gateway's user+system CPU time is read before and after.

How to read the output:

- `median s`: median wall time of the psql run over the rounds.
- `MB/s`: the size of the *unmasked* result as DataRow messages on the wire (printed in the
  header) divided by the median time, for every target, so the rates are comparable; masking
  changes the bytes actually sent a little (`****` is shorter than an email).
- `vs direct`, `on/off`: throughput ratios (time of the reference / time of the target), taken
  within each round and then the median; 1.0 = as fast as the reference, 0.5 = takes twice as
  long. `on/off` is masking-on against masking-off, i.e. the cost of masking alone; the target
  is >= 0.6. Per-round ratios are printed too: on a small shared machine (client, gateway and
  server on the same cores) single runs are noisy.
- `gw CPU s`: the gateway's CPU seconds (all its threads and workers) for one run (median).
  On 2 cores, gateway CPU competes with PostgreSQL and psql, so it is often the steadier number.
- `RSS before`/`RSS peak`/`growth`: the gateway's resident memory just before the run, the
  highest sample during it, and the difference (KiB, medians over rounds; per-round values
  below). A growth of the order of the result size means the gateway buffers the result instead
  of streaming it; a `before` that climbs from round to round means memory is not given back.

`--soak N` times nothing: it reads the table N times through masking-off and masking-on in turn
and prints both gateways' RSS after every N/10 reads (masking-on's split by kind of mapping),
then at the same point the RSS after a full gc.collect() in each gateway, with what the
collector found unreachable and the bytes those objects held, and after malloc_trim(0); last,
the growth over the first and the second half of the reads after a warm-up (the first N/5). A
leak grows by about as much in both halves; a cache that levels off grows in the first only.
A `sitecustomize` put on the gateways' PYTHONPATH answers these requests from a thread. With
`--tracemalloc` masking-on also runs under tracemalloc and the report adds the Python heap it
traces and the allocation sites that grew most after the warm-up. tracemalloc slows the gateway
severalfold and its snapshots allocate enough to set off the collector (memory that waits for
the collector then looks flat): read RSS from a run without it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from dataclasses import dataclass, field

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))
sys.path.insert(0, os.path.join(REPO_ROOT, "bench"))

from helpers import Gateway  # noqa: E402  (tests/helpers.py)
from hoopwire.devserver import PgServer  # noqa: E402
from common import CpuWindow, fmt, log, median_or_none, run_main, tree_rss_kib  # noqa: E402
from pgbench_compare import (  # noqa: E402  (bench/pgbench_compare.py)
    CLIENT_USER, DB, DB_USER, PW_ENV, Target, pg_env, start_hoopwire)

TARGETS = ("direct", "masking-off", "masking-on")
QUERY = "SELECT * FROM people"
SAMPLE_INTERVAL = 0.05   # seconds between RSS samples
RUN_TIMEOUT = 1800       # seconds one psql run may take before it counts as failed
LOAD_CHUNK = 250_000     # rows per INSERT (pg.sql has a 120 s timeout per call)

# --rules detectors (default): two column rules; e-mail and phone columns are found by the
# detectors in every row -- the worst case, every row holds detector hits.
# --rules columns: the known PII columns named by column rules (masked whole, never scanned);
# the detectors are left with the free text and the names.
MASK_RULE_SETS = {
    "detectors": [
        {"columns": ["public.people.ssn"], "strategy": "partial", "keep": 4},
        {"columns": ["*.card"], "strategy": "redact"},
        {"detectors": ["EMAIL", "US_SSN", "PHONE", "CREDIT_CARD", "AWS_ACCESS_KEY_ID"],
         "strategy": "redact"},
    ],
    "columns": [
        {"columns": ["public.people.ssn"], "strategy": "partial", "keep": 4},
        {"columns": ["*.card", "*.email", "*.phone"], "strategy": "redact"},
        {"detectors": ["EMAIL", "US_SSN", "PHONE", "CREDIT_CARD", "AWS_ACCESS_KEY_ID"],
         "strategy": "redact"},
    ],
}
MASK_RULES = MASK_RULE_SETS["detectors"]


# ------------------------------------------------------------------------------------------------
# the data

CREATE_TABLE = """
CREATE TABLE people (id int, name text, email text, ssn text, phone text, card text, notes text);
ALTER TABLE people OWNER TO {owner};
"""

# Generated in SQL so that loading a million rows takes seconds, not a client-side loop.
# ssn: area 001-899 minus 666, group 01-99, serial 0001-9999 (all valid for the US_SSN detector).
# card: 16 digits starting with 4 (Luhn does not hold; the *.card column rule masks it anyway).
# notes: ~130 characters of ticket text; every 10th row quotes an AWS access key id.
INSERT_ROWS = """
INSERT INTO people
SELECT i,
       (ARRAY['Ana','Bjorn','Chen','Dara','Elif','Farid','Grace','Hiro','Ines','Jonas'])[1 + i % 10]
         || ' ' ||
       (ARRAY['Moreau','Okafor','Lindqvist','Tanaka','Silva','Novak','Haddad','Kowalski'])[1 + (i / 10) % 8],
       'user' || i || '@example.com',
       lpad(CASE WHEN a = 666 THEN 667 ELSE a END::text, 3, '0') || '-'
         || lpad((1 + i % 99)::text, 2, '0') || '-'
         || lpad((1 + (i * 31) % 9999)::text, 4, '0'),
       '+1415555' || lpad((i % 10000)::text, 4, '0'),
       '4' || lpad(((i * 7919 + 12345) % 1000000000000000)::text, 15, '0'),
       CASE WHEN i % 10 = 0
            THEN 'rotated the leaked access key AKIA' || upper(substr(md5(i::text), 1, 16))
                 || ' found in the build logs of ticket ' || i || '; owner notified, no further action'
            ELSE 'customer asked about the delivery window for order ' || (i * 13)
                 || ', resolved on first contact; prefers the afternoon, loyalty tier '
                 || (ARRAY['gold','silver','bronze'])[1 + i % 3]
       END
FROM (SELECT i, 1 + (i * 7919) % 899 AS a
      FROM generate_series({lo}::bigint, {hi}::bigint) AS i) AS g;
"""

# psql -At prints text values; on the wire each row is a DataRow: 'D', int32 length, int16 count,
# and an int32 length before each of the 7 values
SIZE_QUERY = """
SELECT count(*),
       sum(octet_length(id::text) + octet_length(name) + octet_length(email) + octet_length(ssn)
           + octet_length(phone) + octet_length(card) + octet_length(notes)),
       sum(octet_length(p::text)),
       pg_total_relation_size('people')
FROM people AS p;
"""
DATAROW_OVERHEAD = 1 + 4 + 2 + 7 * 4


def load_people(pg: PgServer, rows: int) -> None:
    pg.sql(CREATE_TABLE.format(owner=DB_USER), dbname=DB)
    for lo in range(1, rows + 1, LOAD_CHUNK):
        hi = min(rows, lo + LOAD_CHUNK - 1)
        pg.sql(INSERT_ROWS.format(lo=lo, hi=hi), dbname=DB)
        log(f"  loaded {hi:,} / {rows:,} rows")
    pg.sql("VACUUM ANALYZE people; CHECKPOINT;", dbname=DB)


@dataclass
class ResultSize:
    rows: int
    text_bytes: int     # the values as text
    wire_bytes: int     # the same as DataRow messages
    record_bytes: int   # sum(octet_length(p::text)): the rows as record literals
    table_bytes: int    # on disk, with TOAST and indexes


def result_size(pg: PgServer) -> ResultSize:
    rows, text, record, table = (int(x) for x in pg.sql(SIZE_QUERY, dbname=DB).split("|"))
    return ResultSize(rows, text, text + rows * DATAROW_OVERHEAD, record, table)


# ------------------------------------------------------------------------------------------------
# the targets

def masked_config(plain: dict) -> dict:
    """The plain gateway's config with the mask rules added and fresh listen ports."""
    config = {k: v for k, v in plain.items() if k != "admin"}
    config["connection"] = [{k: v for k, v in conn.items() if k != "listen"}
                            for conn in plain["connection"]]
    config["connection"][0]["mask"] = MASK_RULES
    return config


def psql_env(target: Target) -> dict[str, str]:
    env = pg_env(target)
    env["PGAPPNAME"] = "masking_e2e"
    return env


def psql(bindir: str, target: Target, sql: str) -> list[list[str]]:
    """Rows of a small query, as text (psql -At, '|' between fields)."""
    r = subprocess.run([os.path.join(bindir, "psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1",
                        "-c", sql], env=psql_env(target), capture_output=True, text=True,
                       timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"psql against {target.name} failed (exit {r.returncode}): "
                           f"{r.stderr.strip()}")
    return [line.split("|") for line in r.stdout.splitlines()]


MASKED_SSN = re.compile(r"^\*{7}[0-9]{4}$")
PLAIN_SSN = re.compile(r"^[0-8][0-9]{2}-[0-9]{2}-[0-9]{4}$")
AWS_KEY = re.compile(r"AKIA[A-Z0-9]{16}")


def verify_masking(bindir: str, on: Target, off: Target) -> None:
    """Fail unless masking-on masks what it should and masking-off passes the same data as is."""
    rows = psql(bindir, on, "SELECT ssn, email FROM people LIMIT 3")
    assert len(rows) == 3, f"masking-on returned {rows!r}"
    for ssn, email in rows:
        assert MASKED_SSN.match(ssn), f"masking-on: ssn {ssn!r} is not partially masked"
        assert email == "****", f"masking-on: email {email!r} is not redacted"
    log(f"  masking-on:  SELECT ssn, email FROM people LIMIT 3 -> {rows}")

    plain = psql(bindir, off, "SELECT ssn, email FROM people LIMIT 3")
    for (ssn, email), (mssn, _) in zip(plain, rows):
        assert PLAIN_SSN.match(ssn) and "@example.com" in email, \
            f"masking-off: unexpected values {ssn!r}, {email!r}"
        assert mssn[-4:] == ssn[-4:], f"partial mask kept {mssn[-4:]!r}, expected {ssn[-4:]!r}"
    log(f"  masking-off: SELECT ssn, email FROM people LIMIT 3 -> {plain}")

    sql = "SELECT phone, card, notes FROM people WHERE id % 10 = 0 ORDER BY id LIMIT 3"
    on_rows, off_rows = psql(bindir, on, sql), psql(bindir, off, sql)
    assert len(on_rows) == 3 and len(off_rows) == 3
    for (phone, card, notes), (_, _, plain_notes) in zip(on_rows, off_rows):
        assert phone == "****" and card == "****", f"masking-on: phone/card {phone!r}/{card!r}"
        assert AWS_KEY.search(plain_notes), f"masking-off: no AWS key in {plain_notes!r}"
        assert not AWS_KEY.search(notes) and "****" in notes, f"masking-on: notes {notes!r}"
    log(f"  masking-on:  notes -> {on_rows[0][2]!r}")


# ------------------------------------------------------------------------------------------------
# one timed run

@dataclass
class Run:
    seconds: float
    cpu_s: float | None = None        # gateway CPU (user+system) during the run
    rss_before: int | None = None     # KiB
    rss_peak: int | None = None       # KiB
    rss_after: int | None = None      # KiB, right after psql exited

    @property
    def growth(self) -> int | None:
        return None if self.rss_peak is None else self.rss_peak - self.rss_before


class RssSampler:
    """Peak VmRSS of a process tree, sampled every SAMPLE_INTERVAL in a thread."""

    def __init__(self, pid: int):
        self.pid = pid
        self.before = tree_rss_kib(pid)
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            self.peak = max(self.peak, tree_rss_kib(self.pid))

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss_kib(self.pid))


def timed_select(bindir: str, target: Target) -> Run | None:
    cmd = [os.path.join(bindir, "psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-o", os.devnull,
           "-c", QUERY]
    env = psql_env(target)
    with contextlib.ExitStack() as stack:
        sampler = stack.enter_context(RssSampler(target.pid)) if target.pid else None
        cpu = CpuWindow(gateway=target.pid)
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        try:
            _, err = proc.communicate(timeout=RUN_TIMEOUT)
        except BaseException:  # timeout or Ctrl-C: never leave psql behind
            proc.kill()
            proc.wait()
            if not isinstance(sys.exc_info()[1], subprocess.TimeoutExpired):
                raise
            log(f"    psql against {target.name} did not finish within {RUN_TIMEOUT} s")
            return None
        seconds = time.perf_counter() - started
        cpu.close()
    if proc.returncode != 0:
        log(f"    psql against {target.name} failed (exit {proc.returncode}): "
            f"{err.decode(errors='replace').strip()[-500:]}")
        return None
    run = Run(seconds)
    if target.pid:
        run.cpu_s = cpu.used("gateway")
        run.rss_before, run.rss_peak = sampler.before, sampler.peak
        run.rss_after = tree_rss_kib(target.pid)
    return run


# ------------------------------------------------------------------------------------------------
# reporting

@dataclass
class Results:
    order: list[list[str]] = field(default_factory=list)   # target order per round
    runs: dict[str, list[Run | None]] = field(default_factory=lambda: {t: [] for t in TARGETS})

    def ratios(self, target: str, base: str) -> list[float | None]:
        """Per round: time(base) / time(target), a throughput ratio (None if a run failed)."""
        out = []
        for mine, theirs in zip(self.runs[target], self.runs[base]):
            out.append(theirs.seconds / mine.seconds if mine and theirs else None)
        return out


def median_of(runs: list[Run | None], attr: str) -> float | None:
    return median_or_none([getattr(r, attr) for r in runs if r])


def print_report(results: Results, size: ResultSize, rounds: int, header: str) -> None:
    mb = size.wire_bytes / 1e6
    print(f"\n{header}")
    print(f"{QUERY}: {size.rows:,} rows, {size.text_bytes / size.rows:.0f} bytes of text per row; "
          f"result {mb:.1f} MB as DataRows ({size.text_bytes / 1e6:.1f} MB of values, "
          f"{size.record_bytes / 1e6:.1f} MB as record text); table {size.table_bytes / 2**20:.0f} MiB")
    print(f"{rounds} round{'s' if rounds > 1 else ''}; medians over rounds; ratios are "
          f"throughput ratios per round (time of the reference / time of the target), then the median")
    print(f"\n  {'target':<12} {'median s':>9} {'MB/s':>8} {'vs direct':>10} {'on/off':>7} "
          f"{'gw CPU s':>9} {'RSS before':>11} {'RSS peak':>10} {'growth':>9}")
    for t in TARGETS:
        runs = results.runs[t]
        secs = median_of(runs, "seconds")
        vs_direct = None if t == "direct" else median_or_none(results.ratios(t, "direct"))
        on_off = median_or_none(results.ratios(t, "masking-off")) if t == "masking-on" else None
        failed = sum(1 for r in runs if r is None)
        note = f"  ({failed} failed)" if failed else ""
        print(f"  {t:<12} {fmt(secs, '9.2f')} {fmt(mb / secs if secs else None, '8.1f')} "
              f"{fmt(vs_direct, '10.3f')} {fmt(on_off, '7.3f')} "
              f"{fmt(median_of(runs, 'cpu_s'), '9.2f')} {fmt(median_of(runs, 'rss_before'), '11.0f')} "
              f"{fmt(median_of(runs, 'rss_peak'), '10.0f')} {fmt(median_of(runs, 'growth'), '9.0f')}"
              f"{note}")
    on_off = median_or_none(results.ratios("masking-on", "masking-off"))
    if on_off is not None:
        verdict = "meets" if on_off >= 0.6 else "MISSES"
        print(f"\n  masking-on / masking-off throughput {on_off:.3f}: {verdict} the target (>= 0.6)")

    print("\n  per round (s; ratios as above; gateway RSS KiB before -> peak -> after)")
    r_direct_off = results.ratios("masking-off", "direct")
    r_direct_on = results.ratios("masking-on", "direct")
    r_on_off = results.ratios("masking-on", "masking-off")
    for i in range(rounds):
        def secs(t: str) -> str:
            r = results.runs[t][i]
            return fmt(r.seconds if r else None, "7.2f")

        def rss(t: str) -> str:
            r = results.runs[t][i]
            if not r:
                return "-"
            return f"{r.rss_before} -> {r.rss_peak} -> {r.rss_after} (CPU {r.cpu_s:.2f} s)"
        print(f"  round {i + 1}  order {', '.join(results.order[i])}")
        print(f"    direct {secs('direct')}  off {secs('masking-off')}  on {secs('masking-on')}   "
              f"off/direct {fmt(r_direct_off[i], '5.3f')}  on/direct {fmt(r_direct_on[i], '5.3f')}  "
              f"on/off {fmt(r_on_off[i], '5.3f')}")
        print(f"    masking-off RSS {rss('masking-off')}")
        print(f"    masking-on  RSS {rss('masking-on')}")


def gateway_problems(name: str, gw: Gateway) -> None:
    lines = [ln for ln in gw.log_text().splitlines()
             if re.search(r"\b(ERROR|WARNING|CRITICAL|Traceback)\b", ln)]
    if lines:
        log(f"{name}: {len(lines)} warning/error line(s) in the gateway log, e.g.:")
        for ln in lines[:5]:
            log(f"    {ln[:300]}")


# ------------------------------------------------------------------------------------------------
# --soak: the gateways' memory over many reads

# Written as `sitecustomize.py` into a directory put first on a gateway's PYTHONPATH: Python
# imports it at start-up, so the gateway is probed unchanged. A thread answers requests left as
# files: `TAG.snap.want` -> a tracemalloc snapshot in TAG.snap (when tracing); `TAG.gc.want` ->
# a full collection by the cyclic garbage collector, and what it found unreachable by type (JSON
# in TAG.gc): memory that only the collector frees waits for its rare full pass; `TAG.trim.want`
# -> glibc's malloc_trim(0), which hands the free memory of every heap back to the kernel: what
# RSS loses then was free but kept by the allocator, not memory anything still holds.
PROBE_HOOK = '''\
"""bench/masking_e2e.py --soak: answers the bench's requests inside the gateway."""
import collections
import ctypes
import gc
import json
import os
import threading
import time
import tracemalloc

_DIR = os.environ.get("HOOPWIRE_BENCH_PROBE")


def _garbage():
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        found = gc.collect()
        kinds = collections.Counter(f"{type(o).__module__}.{type(o).__qualname__}"
                                    for o in gc.garbage)
        # bytes and bytearrays are not tracked by the collector (they refer to nothing), so
        # they are never among the garbage: count them where a garbage object refers to them
        held = collections.Counter()
        for o in gc.garbage:
            for r in gc.get_referents(o):
                if isinstance(r, (bytes, bytearray, memoryview)):
                    held[type(o).__qualname__] += r.nbytes if isinstance(r, memoryview) else len(r)
        out = {"unreachable": found, "bytes_held": sum(held.values()),
               "held_by": held.most_common(6), "types": kinds.most_common(12),
               "ours": sorted((k, n) for k, n in kinds.items() if k.startswith("hoopwire"))}
    finally:
        gc.set_debug(0)
        del gc.garbage[:]
    gc.collect()
    return out


def _answer(tag, kind):
    if kind == "snap":
        # no collection first: what waits for the collector is part of what grows
        tracemalloc.take_snapshot().dump(tag + ".part")
    elif kind == "gc":
        with open(tag + ".part", "w") as f:
            json.dump(_garbage(), f)
    else:
        with open(tag + ".part", "w") as f:
            f.write(str(ctypes.CDLL("libc.so.6").malloc_trim(0)))
    os.rename(tag + ".part", tag + "." + kind)


def _serve():
    while True:
        for name in sorted(os.listdir(_DIR)):
            if name.endswith(".want"):
                tag, kind = name[:-len(".want")].rsplit(".", 1)
                _answer(os.path.join(_DIR, tag), kind)
                os.unlink(os.path.join(_DIR, name))
        time.sleep(0.05)


if _DIR:
    if os.environ.get("HOOPWIRE_BENCH_TRACEMALLOC"):
        tracemalloc.start(int(os.environ["HOOPWIRE_BENCH_TRACEMALLOC"]))
    threading.Thread(target=_serve, name="bench-probe", daemon=True).start()
'''
PROBE_TIMEOUT = 300      # seconds a request may take (a snapshot of a traced heap is slow)
TRACE_FRAMES = 8


class GatewayProbe:
    """Requests to PROBE_HOOK inside one gateway process."""

    def __init__(self, workdir: str, name: str, trace: bool):
        self.dir = os.path.join(workdir, name)
        self.trace = trace
        os.makedirs(os.path.join(self.dir, "hook"))
        os.mkdir(os.path.join(self.dir, "requests"))
        with open(os.path.join(self.dir, "hook", "sitecustomize.py"), "w") as f:
            f.write(PROBE_HOOK)

    def env(self) -> dict[str, str]:
        env = {"PYTHONPATH": os.pathsep.join((REPO_ROOT, os.path.join(self.dir, "hook"))),
               "HOOPWIRE_BENCH_PROBE": os.path.join(self.dir, "requests")}
        if self.trace:
            env["HOOPWIRE_BENCH_TRACEMALLOC"] = str(TRACE_FRAMES)
        return env

    def _ask(self, tag: str, kind: str) -> str:
        base = os.path.join(self.dir, "requests", tag)
        open(f"{base}.{kind}.want", "w").close()
        deadline = time.monotonic() + PROBE_TIMEOUT
        while not os.path.exists(f"{base}.{kind}"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no answer to {kind} from the gateway within {PROBE_TIMEOUT} s")
            time.sleep(0.05)
        return f"{base}.{kind}"

    def snapshot(self, tag: str) -> tracemalloc.Snapshot:
        path = self._ask(tag, "snap")
        snap = tracemalloc.Snapshot.load(path)
        os.unlink(path)
        # the tracer's own bookkeeping and the import system are not the gateway's memory
        return snap.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__),
                                   tracemalloc.Filter(False, "<frozen importlib._bootstrap*>"),
                                   tracemalloc.Filter(False, "*/sitecustomize.py")])

    def trim(self, tag: str) -> None:
        os.unlink(self._ask(tag, "trim"))

    def collect(self, tag: str) -> dict:
        path = self._ask(tag, "gc")
        with open(path) as f:
            found = json.load(f)
        os.unlink(path)
        return found


def traced_kib(snap: tracemalloc.Snapshot) -> float:
    return sum(stat.size for stat in snap.statistics("filename")) / 1024


@dataclass
class Mark:
    reads: int
    off_kib: int
    on_kib: int
    traced_kib: float | None = None
    on_parts: dict[str, int] | None = None     # masking-on's RSS by kind of mapping, KiB
    step: str = ""        # "" after a read; "gc" / "trim" after the end's collection / trim
    garbage: dict[str, dict] = field(default_factory=dict)   # gateway -> what gc found


def rss_parts_kib(pid: int) -> dict[str, int]:
    """One process's RSS by kind of mapping (/proc/PID/smaps): `heap` is the brk heap (glibc's
    main arena), `arena 1M` the anonymous mappings of exactly 1 MiB (CPython's object allocator
    takes its arenas in those since 3.10), `anon` the other anonymous ones (glibc's thread
    arenas, large blocks, thread stacks), `file` what is mapped from files (code, libraries)."""
    parts = {"heap": 0, "arena 1M": 0, "anon": 0, "file": 0}
    kind = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and not head[0].endswith(":"):      # a mapping's first line
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                path = head[5] if len(head) > 5 else ""
                kind = ("heap" if path == "[heap]" else
                        "file" if path.startswith("/") else
                        "arena 1M" if not path and hi - lo == 1 << 20 else "anon")
            elif head[0] == "Rss:" and kind:
                parts[kind] += int(head[1])
    return parts


def soak(bindir: str, targets: dict[str, Target], gateways: dict[str, Gateway], reads: int,
         probes: dict[str, GatewayProbe]) -> list[Mark]:
    """`reads` full reads through masking-off and masking-on in turn; RSS of both after the first
    read and every reads/10; when masking-on is traced, its traced heap at the same points; at
    the end, both gateways' RSS after a full garbage collection and then after a malloc_trim."""
    probe = probes["masking-on"] if probes and probes["masking-on"].trace else None
    every = max(1, reads // 10)
    points = sorted({1, *range(every, reads + 1, every), reads})
    marks, snaps = [], {}
    started = time.monotonic()
    for i in range(1, reads + 1):
        for name in ("masking-off", "masking-on"):
            if timed_select(bindir, targets[name]) is None:
                raise RuntimeError(f"read {i} through {name} failed")
            gw = gateways[name]
            if gw.proc.poll() is not None:
                raise RuntimeError(f"{name} gateway exited with {gw.proc.returncode}:\n"
                                   f"{gw.log_text()[-3000:]}")
        if i not in points:
            continue
        mark = Mark(i, tree_rss_kib(targets["masking-off"].pid),
                    tree_rss_kib(targets["masking-on"].pid),
                    on_parts=rss_parts_kib(targets["masking-on"].pid))
        if probe:
            snaps[i] = probe.snapshot(f"read-{i}")
            mark.traced_kib = traced_kib(snaps[i])
        marks.append(mark)
        log(f"  read {i:>5}/{reads}  masking-off RSS {mark.off_kib / 1024:6.1f} MiB  masking-on RSS "
            f"{mark.on_kib / 1024:6.1f} MiB"
            + (f"  traced {mark.traced_kib / 1024:6.1f} MiB" if probe else "")
            + f"  ({time.monotonic() - started:.0f} s)")
        # only the warm-up's end and the last snapshot are compared: drop the others' traces
        warm = _nearest(points, reads // 5)
        for k in [k for k in snaps if k not in (warm, i)]:
            del snaps[k]
    if probes:
        # the same point after a full garbage collection, and then after malloc_trim(0)
        for step in ("gc", "trim"):
            mark = Mark(reads, 0, 0)
            for name, probe_ in probes.items():
                if step == "gc":
                    mark.garbage[name] = probe_.collect(f"end-{name}")
                else:
                    probe_.trim(f"end-{name}")
            time.sleep(0.5)
            mark.step = step
            mark.off_kib = tree_rss_kib(targets["masking-off"].pid)
            mark.on_kib = tree_rss_kib(targets["masking-on"].pid)
            mark.on_parts = rss_parts_kib(targets["masking-on"].pid)
            marks.append(mark)
            log(f"  after {'a full gc.collect()' if step == 'gc' else 'malloc_trim(0)'}: "
                f"masking-off RSS {mark.off_kib / 1024:6.1f} MiB  "
                f"masking-on RSS {mark.on_kib / 1024:6.1f} MiB")
    if probe:
        print_heap_growth(snaps[_nearest(points, reads // 5)], snaps[reads])
    return marks


def _nearest(points: list[int], want: int) -> int:
    return min(points, key=lambda p: (abs(p - want), p))


def print_soak(marks: list[Mark], reads: int, size: ResultSize, rules: str) -> None:
    print(f"\nsoak: {reads} reads of {size.rows:,} rows ({size.wire_bytes / 1e6:.1f} MB of DataRows) "
          f"through masking-off and masking-on in turn; masking-on rules: {rules}")
    traced = marks[0].traced_kib is not None
    after = [m for m in marks if m.step]
    marks = [m for m in marks if not m.step]
    kinds = list(marks[0].on_parts or {})
    print(f"  {'reads':>6} {'masking-off RSS MiB':>20} {'masking-on RSS MiB':>19}"
          + (f" {'masking-on traced MiB':>22}" if traced else "")
          + "   masking-on RSS by mapping, MiB: " + " / ".join(kinds))
    for m in marks:
        print(f"  {m.reads:>6} {m.off_kib / 1024:20.1f} {m.on_kib / 1024:19.1f}"
              + (f" {m.traced_kib / 1024:22.1f}" if traced else "")
              + "   " + " / ".join(f"{m.on_parts[k] / 1024:.1f}" for k in kinds))
    for m in after:
        print(f"  {'+' + m.step:>6} {m.off_kib / 1024:20.1f} {m.on_kib / 1024:19.1f}"
              + (f" {'':>22}" if traced else "")
              + "   " + " / ".join(f"{m.on_parts[k] / 1024:.1f}" for k in kinds)
              + ("   (the same point after a full gc.collect() in each gateway)" if m.step == "gc"
                 else "   (and then after malloc_trim(0))"))
        for name, found in m.garbage.items():
            print(f"         {name}: {found['unreachable']} unreachable objects, holding "
                  f"{found['bytes_held'] / 1024:.0f} KiB of bytes ("
                  + ", ".join(f"{k} {n / 1024:.0f}" for k, n in found["held_by"])
                  + "); most common: "
                  + ", ".join(f"{k} {n}" for k, n in found["types"][:8])
                  + "; hoopwire's: " + (", ".join(f"{k} {n}" for k, n in found["ours"]) or "none"))
    points = [m.reads for m in marks]
    by_reads = {m.reads: m for m in marks}
    warm = by_reads[_nearest(points, reads // 5)]
    mid = by_reads[_nearest(points, (warm.reads + reads) // 2)]
    end = marks[-1]
    if not warm.reads < mid.reads < end.reads:
        print("  (too few reads for halves after a warm-up: use --soak 10 or more)")
        return
    print(f"  growth after the warm-up (reads {warm.reads} -> {mid.reads} -> {end.reads}), KiB:")
    for label, attr in (("masking-off RSS", "off_kib"), ("masking-on RSS", "on_kib"),
                        ("masking-on traced", "traced_kib")):
        if attr == "traced_kib" and not traced:
            continue
        a, b, c = getattr(warm, attr), getattr(mid, attr), getattr(end, attr)
        first, second = b - a, c - b
        # a leak grows by about as much in both halves; a cache or an allocator high-water mark
        # grows in the first and stops
        verdict = ("flat" if max(first, second) <= 256 else
                   "levels off" if second <= max(256, first / 4) else "STILL GROWING")
        print(f"    {label:<18} first half {first:+8.0f}  second half {second:+8.0f}  "
              f"per 100 reads in the second half {second * 100 / (end.reads - mid.reads):+7.0f}  "
              f"{verdict}")


def print_heap_growth(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot,
                      top: int = 12) -> None:
    print(f"\nmasking-on's traced heap: {traced_kib(before) / 1024:.1f} MiB at the warm-up's end, "
          f"{traced_kib(after) / 1024:.1f} MiB after the last read; the sites that grew most:")
    for stat in after.compare_to(before, "traceback")[:top]:
        if stat.size_diff <= 0:
            break
        frames = stat.traceback.format(limit=-4)
        print(f"  {stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks "
              f"(now {stat.size / 1024:.1f} KiB in {stat.count} blocks)")
        for line in frames:
            print(f"      {line.rstrip()}")


# ------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows in `people` (default 1000000)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rules", choices=sorted(MASK_RULE_SETS), default="detectors",
                    help="which masking configuration masking-on runs (see MASK_RULE_SETS)")
    ap.add_argument("--seed", type=int, default=None, help="seed for the target order")
    ap.add_argument("--gateway-workers", type=int, default=None,
                    help="hoopwire serve --workers (default: the CLI's default)")
    ap.add_argument("--soak", type=int, default=0, metavar="N",
                    help="instead of timed rounds: N reads through each gateway, RSS along the way")
    ap.add_argument("--tracemalloc", action="store_true",
                    help="with --soak: run masking-on under tracemalloc and show what grew")
    args = ap.parse_args(argv)
    global MASK_RULES
    MASK_RULES = MASK_RULE_SETS[args.rules]
    if args.rows < 10 or args.rounds < 1:
        ap.error("need --rows >= 10 and --rounds >= 1")
    if args.tracemalloc and not args.soak:
        ap.error("--tracemalloc goes with --soak")
    if args.soak and args.gateway_workers not in (None, 1):
        ap.error("--soak probes one gateway process (forked workers lose the probe's thread): "
                 "leave --gateway-workers at 1")

    wall0 = time.monotonic()
    rng = random.Random(args.seed)
    db_password = secrets.token_urlsafe(18)
    api_key = secrets.token_urlsafe(24)
    with contextlib.ExitStack() as stack:
        log("starting PostgreSQL ...")
        pg = stack.enter_context(PgServer())
        pg.create_role(DB_USER, db_password)
        pg.create_database(DB, owner=DB_USER)
        log(f"loading {args.rows:,} rows into people ...")
        t0 = time.monotonic()
        load_people(pg, args.rows)
        size = result_size(pg)
        log(f"  loaded, vacuumed and analysed in {time.monotonic() - t0:.1f} s; "
            f"{size.wire_bytes / 1e6:.1f} MB of DataRows per full read")

        log("starting the gateways ...")
        probes: dict[str, GatewayProbe] = {}
        if args.soak:
            # both gateways probed, so that the hook's thread is in both or in neither
            workdir = tempfile.mkdtemp(prefix="hoopwire-soak-")
            stack.callback(shutil.rmtree, workdir, True)
            probes = {"masking-off": GatewayProbe(workdir, "masking-off", False),
                      "masking-on": GatewayProbe(workdir, "masking-on", args.tracemalloc)}
        off_gw = start_hoopwire(pg, db_password, api_key, args.gateway_workers,
                                env=probes["masking-off"].env() if probes else None)
        stack.callback(off_gw.stop)
        on_gw = Gateway(masked_config(off_gw.config),
                        env={PW_ENV: db_password,
                             **(probes["masking-on"].env() if probes else {})},
                        workers=args.gateway_workers,
                        timeout=120 if args.tracemalloc else 20)  # every import traced: slow
        stack.callback(on_gw.stop)
        targets = {
            "direct": Target("direct", pg.port, DB_USER, db_password),
            "masking-off": Target("masking-off", off_gw.port("bench"), CLIENT_USER, api_key,
                                  off_gw.pid),
            "masking-on": Target("masking-on", on_gw.port("bench"), CLIENT_USER, api_key,
                                 on_gw.pid),
        }

        log("checking that masking-on masks ...")
        verify_masking(pg.bindir, targets["masking-on"], targets["masking-off"])

        if args.soak:
            log(f"soak: {args.soak} reads through each gateway ...")
            marks = soak(pg.bindir, targets, {"masking-off": off_gw, "masking-on": on_gw},
                         args.soak, probes)
            print_soak(marks, args.soak, size, args.rules)
            gateway_problems("masking-off", off_gw)
            gateway_problems("masking-on", on_gw)
            log(f"total {time.monotonic() - wall0:.0f} s")
            return 0

        # one untimed read straight from PostgreSQL, so round 1 does not pay for a cold cache
        log("warm-up read (direct, not counted) ...")
        warm = timed_select(pg.bindir, targets["direct"])
        if warm:
            log(f"  {warm.seconds:.2f} s")

        import hoopwire
        header = (f"PostgreSQL {pg.sql('SHOW server_version')}; hoopwire {hoopwire.__version__}; "
                  f"{os.cpu_count()} CPUs; gateway workers: "
                  f"{args.gateway_workers if args.gateway_workers is not None else 'CLI default'}")
        results = Results()
        for rnd in range(1, args.rounds + 1):
            order = list(TARGETS)
            rng.shuffle(order)
            results.order.append(order)
            for name in order:
                target = targets[name]
                run = timed_select(pg.bindir, target)
                results.runs[name].append(run)
                gw = {"masking-off": off_gw, "masking-on": on_gw}.get(name)
                if gw is not None and gw.proc.poll() is not None:
                    raise RuntimeError(f"{name} gateway exited with {gw.proc.returncode}:\n"
                                       f"{gw.log_text()[-3000:]}")
                if run is None:
                    log(f"  round {rnd}/{args.rounds}  {name:<12} failed")
                    continue
                extra = ""
                if run.cpu_s is not None:
                    extra = (f"  gw CPU {run.cpu_s:6.2f} s  RSS {run.rss_before} -> {run.rss_peak} "
                             f"KiB (+{run.growth})")
                log(f"  round {rnd}/{args.rounds}  {name:<12} {run.seconds:7.2f} s{extra}")

        print_report(results, size, args.rounds, header)
        gateway_problems("masking-off", off_gw)
        gateway_problems("masking-on", on_gw)
    log(f"total {time.monotonic() - wall0:.0f} s")
    return 0


if __name__ == "__main__":
    run_main(main)
