#!/usr/bin/env python3
"""End-to-end cost of result masking: one big `SELECT * FROM people` read with psql straight from
PostgreSQL, through hoopwire without masking, and through hoopwire with masking on.

    python bench/masking_e2e.py                       # 1,000,000 rows, 3 rounds
    python bench/masking_e2e.py --rows 200000 --rounds 1 --seed 1

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
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))
sys.path.insert(0, os.path.join(REPO_ROOT, "bench"))

from helpers import Gateway  # noqa: E402  (tests/helpers.py)
from hoopwire.devserver import PgServer  # noqa: E402
from pgbench_compare import (  # noqa: E402  (bench/pgbench_compare.py)
    CLIENT_USER, DB, DB_USER, PW_ENV, Target, fmt, log, median_or_none, pg_env, start_hoopwire,
    tree_cpu_seconds, tree_rss_kib)

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
        cpu0 = tree_cpu_seconds(target.pid) if target.pid else None
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
        cpu1 = tree_cpu_seconds(target.pid) if target.pid else None
    if proc.returncode != 0:
        log(f"    psql against {target.name} failed (exit {proc.returncode}): "
            f"{err.decode(errors='replace').strip()[-500:]}")
        return None
    run = Run(seconds)
    if target.pid:
        run.cpu_s = cpu1 - cpu0
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
    args = ap.parse_args(argv)
    global MASK_RULES
    MASK_RULES = MASK_RULE_SETS[args.rules]
    if args.rows < 10 or args.rounds < 1:
        ap.error("need --rows >= 10 and --rounds >= 1")

    # SIGTERM unwinds like Ctrl-C, so every process below is stopped by the ExitStack; SIGINT
    # too even when we were started with it ignored (a background job of a script)
    def on_sigterm(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)

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
        off_gw = start_hoopwire(pg, db_password, api_key, args.gateway_workers)
        stack.callback(off_gw.stop)
        on_gw = Gateway(masked_config(off_gw.config), env={PW_ENV: db_password},
                        workers=args.gateway_workers)
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
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted; everything started here has been stopped")
        sys.exit(130)
