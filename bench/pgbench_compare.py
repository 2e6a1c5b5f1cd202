#!/usr/bin/env python3
"""End-to-end load comparison: pgbench straight to PostgreSQL and through hoopwire, PgBouncer
(session pooling) and HAProxy (TCP), all started here as throwaway processes on loopback.

    python bench/pgbench_compare.py --rounds 3 --duration 10 --scale 10
    python bench/pgbench_compare.py --targets direct,pgbouncer,haproxy --duration 5
    python bench/pgbench_compare.py --idle 500          # gateway memory per idle connection
    python bench/pgbench_compare.py --targets hoopwire,hoopwire-audit,hoopwire-twin \
        --scripts select-only --clients 8:2 --rounds 12 --duration 5 --fresh
                                                        # what session recording costs, next to
                                                        # what two identical gateways differ by
    python bench/pgbench_compare.py --pool run1.json run2.json   # several runs' ratios together

Runs are interleaved (each round runs every variant against every target, targets in a
shuffled order) so drift on the machine spreads over all targets instead of favouring one.
Reported per variant: median TPS and mean latency over rounds, and the median of the per-round
TPS ratio to `direct`, to `pgbouncer` and (when it runs next to a hoopwire-* variant) to plain
`hoopwire`. With `hoopwire-audit` the gateway records every statement; after the runs the script
counts the statement records in its audit log against the transactions pgbench carried and
prints the bytes on disk per statement. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import pwd
import random
import re
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))

from common import (CpuWindow, Service, fmt, log, median_interval,  # noqa: E402,F401
                    median_or_none, paired, ratios, run_main, tree_rss_kib)
from helpers import Gateway, free_port  # noqa: E402  (tests/helpers.py)
from hoopwire.devserver import PgServer  # noqa: E402

ALL_TARGETS = ("direct", "hoopwire", "pgbouncer", "haproxy")
# ask for these by name (--targets hoopwire,hoopwire-packs,...):
#   hoopwire-packs  hoopwire with the five built-in guardrail packs on
#   hoopwire-audit  hoopwire with session recording on ([audit] + a SQLite [state] for the index)
#   hoopwire-mask   hoopwire with one mask rule: columns of a PII table pgbench never names, and
#                   the EMAIL / CREDIT_CARD / US_SSN detectors
#   hoopwire-recommended  the README's recommended configuration: the five packs, that mask rule
#                   and recording on (issue "Inspection at relay speed")
#   hoopwire-twin   a second plain hoopwire, configured exactly as `hoopwire`: its ratio to it
#                   is what two identical gateway processes differ by in this run (the floor
#                   under any "feature costs x%" read off the other ratios)
#   hoopwire-base, hoopwire-packs-base, hoopwire-audit-base
#                   `hoopwire`, `-packs` and `-audit` run from another source tree (--base-tree,
#                   built in place): a previous build against this one in the same run
EXTRA_TARGETS = ("hoopwire-packs", "hoopwire-audit", "hoopwire-mask", "hoopwire-recommended",
                 "hoopwire-twin", "hoopwire-base", "hoopwire-packs-base", "hoopwire-audit-base",
                 "hoopwire-mask-base", "hoopwire-recommended-base")
HOOPWIRE_TARGETS = ("hoopwire",) + EXTRA_TARGETS
PACKS = ("destructive-ddl", "unbounded-write", "privilege-changes", "server-side-io",
         "session-tampering")
DB = "bench"
DB_USER = "bench"
CLIENT_USER = "bench-client"    # what clients put in `user` when going through hoopwire
PW_ENV = "HOOPWIRE_BENCH_DB_PASSWORD"


# ------------------------------------------------------------------------------------------------
# the proxies under comparison

def _chown_to_postgres(path: str) -> None:
    # PgBouncer refuses to run as root; as root we start it with `-u postgres`
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(path, entry.pw_uid, entry.pw_gid)


def start_pgbouncer(pg: PgServer, password: str, pool_size: int, workdir: str) -> Service:
    exe = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.path.exists(exe):
        raise RuntimeError("pgbouncer not found: apt-get install pgbouncer")
    d = os.path.join(workdir, "pgbouncer")
    os.mkdir(d, 0o700)
    _chown_to_postgres(d)
    port = free_port()
    userlist = os.path.join(d, "userlist.txt")
    fd = os.open(userlist, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        # a plain password lets PgBouncer do SCRAM both with the client and with the server
        f.write(f'"{DB_USER}" "{password}"\n')
    _chown_to_postgres(userlist)
    ini = os.path.join(d, "pgbouncer.ini")
    with open(ini, "w") as f:
        f.write(f"""[databases]
{DB} = host={pg.host} port={pg.port} dbname={DB}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {userlist}
pool_mode = session
default_pool_size = {pool_size}
max_client_conn = {pool_size + 100}
server_tls_sslmode = disable
client_tls_sslmode = disable
""")
    _chown_to_postgres(ini)
    cmd = [exe, ini] + (["-u", "postgres"] if os.geteuid() == 0 else [])
    return Service("pgbouncer", cmd, d, port)


def start_haproxy(pg: PgServer, maxconn: int, workdir: str) -> Service:
    exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not os.path.exists(exe):
        raise RuntimeError("haproxy not found: apt-get install haproxy")
    d = os.path.join(workdir, "haproxy")
    os.mkdir(d, 0o700)
    port = free_port()
    cfg = os.path.join(d, "haproxy.cfg")
    with open(cfg, "w") as f:
        f.write(f"""global
    maxconn {maxconn + 100}

defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h

frontend pg_in
    bind 127.0.0.1:{port}
    default_backend pg

backend pg
    server pg1 {pg.host}:{pg.port}
""")
    return Service("haproxy", [exe, "-db", "-f", cfg], d, port)


def _audit_on_by_default(tree: str | None) -> bool:
    """Whether the tree's gateway records sessions without an [audit] table (since the secure
    defaults; older trees, compared with --base-tree, do not know `enabled` and need nothing)."""
    root = tree or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "hoopwire", "config.py"), encoding="utf-8") as f:
        return 'r.get("enabled", bool, True)' in f.read()


# the mask rule of hoopwire-mask and hoopwire-recommended, over the table PII_TABLE makes
MASK_RULE = {"columns": ["public.customers.ssn", "public.customers.email"],
             "detectors": ["EMAIL", "CREDIT_CARD", "US_SSN"], "strategy": "partial"}
PII_TABLE = ("CREATE TABLE IF NOT EXISTS customers (id int PRIMARY KEY, email text, ssn text);"
             "INSERT INTO customers VALUES (1, 'a@example.com', '123-45-6789') "
             "ON CONFLICT DO NOTHING;")


def start_hoopwire(pg: PgServer, db_password: str, api_key: str, workers: int | None,
                   packs: bool = False, audit_dir: str | None = None,
                   tree: str | None = None, mask: bool = False,
                   env: dict[str, str] | None = None) -> Gateway:
    """The gateway; with `audit_dir`, session recording on: the audit log in `audit_dir/log`
    (default flush_interval) and the session index in `audit_dir/state.db`. `env` is added to
    its environment."""
    config = {
        "identity": {"api_key": [{"name": "bench",
                                  "sha256": hashlib.sha256(api_key.encode()).hexdigest(),
                                  "groups": ["bench"]}]},
        "connection": [{"name": "bench", "protocol": "postgres",
                        "upstream": f"{pg.host}:{pg.port}", "database": DB, "user": DB_USER,
                        "password_env": PW_ENV}],
    }
    if packs:
        config["connection"][0]["guardrail"] = [{"pack": p} for p in PACKS]
    if mask:
        config["connection"][0]["mask"] = [dict(MASK_RULE)]
    if audit_dir:
        config["audit"] = {"path": os.path.join(audit_dir, "log")}
        config["state"] = {"url": "sqlite:///" + os.path.join(audit_dir, "state.db")}
    elif _audit_on_by_default(tree):
        config["audit"] = {"enabled": False}     # the plain target records nothing
    return Gateway(config, env={PW_ENV: db_password, **(env or {})}, workers=workers,
                   **({"tree": tree} if tree else {}))


@dataclass
class Target:
    name: str
    port: int
    user: str
    password: str
    pid: int | None = None  # the process whose memory --idle measures (None: not a proxy)


# ------------------------------------------------------------------------------------------------
# pgbench

@dataclass(frozen=True)
class Variant:
    script: str      # "select-only" | "tpcb-like"
    mode: str        # "simple" | "extended" | "prepared"
    clients: int
    threads: int

    @property
    def label(self) -> str:
        return (f"{self.script}, {self.mode} protocol, {self.clients} client"
                f"{'s' if self.clients > 1 else ''} / {self.threads} thread"
                f"{'s' if self.threads > 1 else ''}")


@dataclass
class Result:
    tps: float
    latency_ms: float
    failed: int = 0
    transactions: int | None = None    # pgbench's "number of transactions actually processed"
    proxy_cpu_us: float | None = None  # the proxy's own CPU (user+system) per transaction


_TPS = re.compile(r"^tps = ([\d.]+)", re.M)
_LAT = re.compile(r"^latency average = ([\d.]+) ms", re.M)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.M)
_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.M)
_PROGRESS = re.compile(r"^progress: ([\d.]+) s, ([\d.]+) tps, lat ([\d.]+) ms", re.M)


def pg_env(target: Target) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGHOST="127.0.0.1", PGPORT=str(target.port), PGUSER=target.user,
               PGPASSWORD=target.password, PGDATABASE=DB, PGSSLMODE="disable",
               PGGSSENCMODE="disable", PGAPPNAME="pgbench_compare")
    return env


def run_pgbench(pg: PgServer, target: Target, v: Variant, duration: int,
                lead: int = 0) -> Result | None:
    """One pgbench run of lead + duration + 1 seconds, of which the `duration` after the lead
    count: TPS and latency from pgbench's per-second progress, the proxy's CPU over the same
    window (the last second is there because pgbench may not print its last interval).
    A recording gateway writes each statement's record up to a flush interval later; counted
    from the first second, a run's last records would be written after its window closed,
    out of its CPU and off its cores. After a lead the backlog at both ends is the same on
    average."""
    if v.script == "tpcb-like":
        # what pgbench itself does before a run, done here on the side (-n below) so that every
        # target starts from the same table state and none pays for it through its own path
        pg.sql("VACUUM pgbench_branches; VACUUM pgbench_tellers; TRUNCATE pgbench_history; "
               "CHECKPOINT;", dbname=DB)
    total = lead + duration + 1
    cmd = [os.path.join(pg.bindir, "pgbench"), "-n", "-P", "1", "-T", str(total), "-c",
           str(v.clients), "-j", str(v.threads), "-M", v.mode, "-b", v.script]
    proc = subprocess.Popen(cmd, env=pg_env(target), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    started = time.monotonic()
    time.sleep(lead)
    cpu = CpuWindow(proxy=target.pid)
    time.sleep(duration)
    cpu.close()
    try:
        out, err = proc.communicate(timeout=max(1.0, total + 120 - (time.monotonic() - started)))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        log(f"    pgbench against {target.name} hung; counted as failed")
        return None
    tps, lat = _TPS.search(out), _LAT.search(out)
    seconds = [(float(m.group(2)), float(m.group(3))) for m in _PROGRESS.finditer(err)
               if lead < float(m.group(1)) <= lead + duration]
    if proc.returncode != 0 or not tps or not lat or len(seconds) < duration:
        tail = "\n".join((err or out).strip().splitlines()[-5:])
        log(f"    pgbench against {target.name} failed (exit {proc.returncode}, "
            f"{len(seconds)} of {duration} seconds in the window):\n{tail}")
        return None
    failed = _FAILED.search(out)
    processed = _PROCESSED.search(out)
    counted = sum(t for t, _ in seconds)
    result = Result(counted / len(seconds), sum(t * ms for t, ms in seconds) / max(counted, 1e-9),
                    int(failed.group(1)) if failed else 0,
                    int(processed.group(1)) if processed else None)
    if cpu.used("proxy") is not None and result.tps > 0:
        result.proxy_cpu_us = cpu.used("proxy") / (result.tps * cpu.seconds) * 1e6
    return result


def parse_clients(spec: str) -> list[tuple[int, int]]:
    pairs = []
    for part in spec.split(","):
        c, _, j = part.partition(":")
        pairs.append((int(c), int(j or 1)))
    return pairs


# ------------------------------------------------------------------------------------------------
# reporting

def added_latency_us(results: dict[str, list[Result | None]], target: str) -> list[float]:
    """Per round: the target's mean latency minus `direct`'s, in us: what the hop adds to a
    round trip (the -c 1 figure issue 25 compares with PgBouncer's)."""
    return [(mine.latency_ms - theirs.latency_ms) * 1000
            for mine, theirs in paired(results, target, "direct")]


def print_tables(variants: list[Variant], targets: list[str],
                 results: dict[Variant, dict[str, list[Result | None]]], rounds: int) -> None:
    # per-round ratio to plain hoopwire: what a feature (packs, recording) costs on its own
    vs_gateway = "hoopwire" in targets and any(t in EXTRA_TARGETS for t in targets)
    width = max(10, *(len(t) for t in targets))
    for v in variants:
        print(f"\n{v.label}  ({rounds} round{'s' if rounds > 1 else ''})")
        print(f"  {'target':<{width}} {'TPS':>11} {'latency ms':>11} {'vs direct':>10} {'vs pgbouncer':>13}"
              + (f" {'vs hoopwire':>12}" if vs_gateway else "") + f" {'proxy CPU us/tx':>16}"
              + (f" {'added us':>9}" if "direct" in targets else ""))
        for t in targets:
            runs = results[v][t]
            ok = [r for r in runs if r]
            tps = median_or_none([r.tps for r in ok])
            lat = median_or_none([r.latency_ms for r in ok])
            vs_direct = median_or_none(ratios(results[v], t, "direct"))
            vs_bouncer = median_or_none(ratios(results[v], t, "pgbouncer"))
            vs_hoopwire = median_or_none(ratios(results[v], t, "hoopwire")) if t != "hoopwire" else None
            cpu = median_or_none([r.proxy_cpu_us for r in ok])
            added = (median_or_none(added_latency_us(results[v], t))
                     if "direct" in targets and t != "direct" else None)
            note = "" if len(ok) == len(runs) else f"  ({len(runs) - len(ok)} failed)"
            if any(r.failed for r in ok):
                note += f"  ({sum(r.failed for r in ok)} failed transactions)"
            print(f"  {t:<{width}} {fmt(tps, '11.1f')} {fmt(lat, '11.3f')} {fmt(vs_direct, '10.3f')} "
                  f"{fmt(vs_bouncer, '13.3f')}" + (f" {fmt(vs_hoopwire, '12.3f')}" if vs_gateway else "")
                  + f" {fmt(cpu, '16.1f')}"
                  + (f" {fmt(added, '9.1f')}" if "direct" in targets else "") + note)
        if vs_gateway:
            # One round's ratio moves by several percent on a small shared machine; say how
            # well the median is pinned down before anyone reads a cost off it.
            for t in targets:
                r = ratios(results[v], t, "hoopwire")
                if t == "hoopwire" or len(r) < 3:
                    continue
                lo, hi = median_interval(r)
                print(f"    {t} / hoopwire per round: median {statistics.median(r):.3f}, 95% interval "
                      f"{lo:.3f}-{hi:.3f}, range {min(r):.3f}-{max(r):.3f}, sd {statistics.stdev(r):.3f}")


def pool_runs(paths: list[str]) -> int:
    """--pool: the per-round ratios to plain hoopwire of several earlier --json runs, together.
    Rounds pair only within the run that made them, so each file's ratios are taken first and
    only then pooled; one run's 20 rounds pin a median to a few percent here, several runs'
    together to a percent or two."""
    pooled: dict[tuple[Variant, str], list[tuple[float, float | None]]] = {}
    for path in paths:
        with open(path) as f:
            doc = json.load(f)
        by_variant: dict[Variant, dict[str, list[Result | None]]] = {}
        for entry in doc["results"]:
            runs = [Result(**r) if r else None for r in entry["runs"]]
            by_variant.setdefault(Variant(**entry["variant"]), {})[entry["target"]] = runs
        for v, results in by_variant.items():
            for t in results:
                if t == "hoopwire" or "hoopwire" not in results:
                    continue
                for mine, theirs in paired(results, t, "hoopwire"):
                    cpu = (mine.proxy_cpu_us - theirs.proxy_cpu_us
                           if mine.proxy_cpu_us is not None and theirs.proxy_cpu_us is not None
                           else None)
                    pooled.setdefault((v, t), []).append((mine.tps / theirs.tps, cpu))
    if not pooled:
        print("no rounds with both hoopwire and a hoopwire-* target in these files")
        return 1
    print(f"pooled over {len(paths)} run{'s' if len(paths) > 1 else ''}: per-round TPS ratio to "
          "plain hoopwire, and the per-round difference in proxy CPU us/tx")
    label = None
    for (v, t), rows in sorted(pooled.items(), key=lambda kv: (kv[0][0].label, kv[0][1])):
        if v.label != label:
            label = v.label
            print(f"  {label}")
        r = [x for x, _ in rows]
        cpu = [c for _, c in rows if c is not None]
        line = f"    {t} / hoopwire: {len(r)} rounds, median {statistics.median(r):.3f}"
        if len(r) >= 3:
            lo, hi = median_interval(r)
            line += (f", 95% interval {lo:.3f}-{hi:.3f}, share of rounds >= 0.95 "
                     f"{sum(x >= 0.95 for x in r) / len(r):.2f}, sd {statistics.stdev(r):.3f}")
        if cpu:
            line += f"; CPU {statistics.median(cpu):+.2f} us/tx"
        print(line)
    return 0


def audit_summary(audit_dir: str, results: dict[Variant, dict[str, list[Result | None]]],
                  uncounted: int = 0) -> None:
    """What session recording left on disk, next to what pgbench says went through: records by
    type in the audit log, its bytes, the session index (SQLite) bytes, and both per statement.
    Call after the gateway has stopped, so its last flush is on disk."""
    log_dir = os.path.join(audit_dir, "log")
    counts: dict[str, int] = {}
    log_bytes = 0
    for name in sorted(os.listdir(log_dir)):
        path = os.path.join(log_dir, name)
        log_bytes += os.path.getsize(path)
        if not name.endswith(".jsonl"):
            continue
        with open(path, "rb") as f:
            for line in f:
                kind = json.loads(line).get("type", "?")
                counts[kind] = counts.get(kind, 0) + 1
    index_bytes = sum(os.path.getsize(os.path.join(audit_dir, n)) for n in os.listdir(audit_dir)
                      if n.startswith("state.db"))
    carried = [r.transactions for v in results for r in results[v].get("hoopwire-audit", []) if r]
    statements = counts.get("statement", 0)
    print(f"\nhoopwire-audit recording ({audit_dir})")
    print("  audit log records: " + ", ".join(f"{k} {n}" for k, n in sorted(counts.items())))
    if carried and None not in carried:
        tx = sum(carried) + uncounted
        print(f"  transactions pgbench carried through hoopwire-audit: {tx}"
              + (f" ({uncounted} of them warming a gateway up, uncounted)" if uncounted else "")
              + f"; statement records / transactions = {statements / tx if tx else float('nan'):.4f}")
    print(f"  audit log {log_bytes / 2**20:.1f} MiB"
          + (f" = {log_bytes / statements:.0f} bytes per statement record" if statements else "")
          + f"; session index (SQLite, with WAL) {index_bytes / 2**20:.1f} MiB"
          + (f" = {index_bytes / statements:.0f} bytes per statement" if statements else ""))


# ------------------------------------------------------------------------------------------------
# idle connections: memory per connection

def measure_idle(pg: PgServer, target: Target, n: int) -> None:
    import psycopg

    def connect() -> psycopg.Connection:
        return psycopg.connect(host="127.0.0.1", port=target.port, user=target.user,
                               password=target.password, dbname=DB, sslmode="disable",
                               gssencmode="disable", connect_timeout=30, autocommit=True)

    # one connection first: lazy set-up on first use is not a per-connection cost
    with connect() as c:
        c.execute("SELECT 1")
    time.sleep(0.5)
    before = tree_rss_kib(target.pid)
    conns = []
    started = time.monotonic()
    try:
        for _ in range(n):
            conns.append(connect())
        elapsed = time.monotonic() - started
        time.sleep(1.0)
        after = tree_rss_kib(target.pid)
        for c in conns[:: max(1, n // 20)]:  # the sessions still work
            c.execute("SELECT 1")
    finally:
        for c in conns:
            with contextlib.suppress(Exception):
                c.close()
    print(f"  {target.name:<10} {n} idle connections in {elapsed:5.1f} s; RSS {before / 1024:7.1f} "
          f"-> {after / 1024:7.1f} MiB; {(after - before) / n:6.1f} KiB per connection")
    # PgBouncer keeps its server connections after the clients leave; free them for the next target
    pg.sql(f"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
           f"WHERE usename = '{DB_USER}'")


# ------------------------------------------------------------------------------------------------

def versions(pg: PgServer, targets: list[str]) -> str:
    parts = [f"PostgreSQL {pg.sql('SHOW server_version')}"]

    def first_line(cmd: list[str]) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
        return "?"
    if "pgbouncer" in targets:
        parts.append(first_line(["pgbouncer", "--version"]))
    if "haproxy" in targets:
        parts.append(" ".join(first_line(["haproxy", "-v"]).split()[:3]))
    if any(t in HOOPWIRE_TARGETS for t in targets):
        import hoopwire
        parts.append(f"hoopwire {hoopwire.__version__}")
    return "; ".join(parts) + f"; {os.cpu_count()} CPUs; Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default=",".join(ALL_TARGETS),
                    help=f"comma-separated subset of {','.join(ALL_TARGETS + EXTRA_TARGETS)} (default: {','.join(ALL_TARGETS)})")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10, help="seconds counted per pgbench run")
    ap.add_argument("--lead", type=int, default=2,
                    help="seconds of load before the counted ones in every run (default 2; "
                         "keep it at or above the audit flush_interval: see run_pgbench)")
    ap.add_argument("--scale", type=int, default=10, help="pgbench -i scale factor")
    ap.add_argument("--scripts", default="select-only,tpcb-like",
                    help="pgbench built-in scripts (default: select-only,tpcb-like)")
    ap.add_argument("--modes", default="simple,extended", help="pgbench -M query modes")
    ap.add_argument("--clients", default="1:1,8:2",
                    help="clients:threads pairs for -c/-j (default: 1:1,8:2)")
    ap.add_argument("--gateway-workers", type=int, default=None,
                    help="hoopwire serve --workers (default: the CLI's default)")
    ap.add_argument("--idle", type=int, default=0, metavar="N",
                    help="instead of pgbench: hold N idle connections through each proxy and "
                         "report its memory growth per connection")
    ap.add_argument("--base-tree", metavar="PATH",
                    help="the source tree (extensions built in place) the *-base targets run")
    ap.add_argument("--fresh", action="store_true",
                    help="start every hoopwire target anew before each round: what one gateway "
                         "process happens to get (memory layout, hash seed, where it was "
                         "scheduled) then varies between rounds instead of biasing every round "
                         "the same way (compare hoopwire-twin / hoopwire with and without it)")
    ap.add_argument("--seed", type=int, default=None, help="seed for the target order")
    ap.add_argument("--json", metavar="PATH", help="also write every run's numbers as JSON")
    ap.add_argument("--pool", nargs="+", metavar="JSON",
                    help="run nothing: pool the per-round ratios to hoopwire of earlier --json "
                         "files (a target's cost measured over more rounds than one run has)")
    args = ap.parse_args(argv)
    if args.pool:
        return pool_runs(args.pool)

    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(targets) - set(ALL_TARGETS) - set(EXTRA_TARGETS)
    if unknown or not targets:
        ap.error(f"unknown targets: {', '.join(sorted(unknown)) or '(none)'}")
    if any(t.endswith("-base") for t in targets) and not args.base_tree:
        ap.error("the *-base targets run the tree given by --base-tree")
    variants = [Variant(s, m, c, j) for s in args.scripts.split(",") for m in args.modes.split(",")
                for c, j in parse_clients(args.clients)]
    max_clients = max([v.clients for v in variants] + [args.idle])

    # idle mode opens many sockets from this one process
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    rng = random.Random(args.seed)
    db_password = secrets.token_urlsafe(18)
    api_key = secrets.token_urlsafe(24)
    with contextlib.ExitStack() as stack:
        workdir = tempfile.mkdtemp(prefix="hoopwire-bench-")
        stack.callback(shutil.rmtree, workdir, True)
        _chown_to_postgres(workdir)

        log("starting PostgreSQL ...")
        pg = stack.enter_context(PgServer(extra_conf={"max_connections": max(200, max_clients + 50)}))
        pg.create_role(DB_USER, db_password)
        pg.create_database(DB, owner=DB_USER)
        log(f"pgbench -i -s {args.scale} ...")
        init = subprocess.run([os.path.join(pg.bindir, "pgbench"), "-i", "-q", "-s", str(args.scale)],
                              env=pg_env(Target("direct", pg.port, DB_USER, db_password)),
                              capture_output=True, text=True)
        if init.returncode != 0:
            log(init.stderr)
            return 1
        pg.sql(PII_TABLE + f"ALTER TABLE customers OWNER TO {DB_USER};", dbname=DB)
        pg.sql("VACUUM ANALYZE; CHECKPOINT;", dbname=DB)

        by_name: dict[str, Target] = {}
        gateways: dict[str, Gateway] = {}
        audit_dir = None
        audit_dirs: dict[str, str] = {}  # recording target -> its audit log and index
        problems: list[str] = []        # warning/error lines of the recording gateway(s)

        def launch(name: str) -> None:
            gw = start_hoopwire(pg, db_password, api_key, args.gateway_workers,
                                packs=name.startswith(("hoopwire-packs", "hoopwire-recommended")),
                                mask=name.startswith(("hoopwire-mask", "hoopwire-recommended")),
                                audit_dir=audit_dirs.get(name),
                                tree=args.base_tree if name.endswith("-base") else None)
            stack.callback(gw.stop)
            gateways[name] = gw
            by_name[name] = Target(name, gw.port("bench"), CLIENT_USER, api_key, gw.pid)

        def stop(name: str) -> int | None:
            gw = gateways.pop(name)
            # a clean stop writes its last records; time enough for a backlog before SIGKILL
            rc = gw.stop(timeout=60)
            if name == "hoopwire-audit":
                problems.extend(ln for ln in gw.log_text().splitlines()
                                if re.match(r"\S+ (warning|error|critical) ", ln, re.I)
                                or ln.startswith(("Traceback", "Exception ignored")))
            return rc
        for name in targets:
            log(f"starting {name} ...")
            if name == "direct":
                by_name[name] = Target(name, pg.port, DB_USER, db_password)
            elif name == "pgbouncer":
                svc = start_pgbouncer(pg, db_password, max_clients + 10, workdir)
                stack.callback(svc.stop)
                by_name[name] = Target(name, svc.port, DB_USER, db_password, svc.pid)
            elif name == "haproxy":
                svc = start_haproxy(pg, max_clients, workdir)
                stack.callback(svc.stop)
                by_name[name] = Target(name, svc.port, DB_USER, db_password, svc.pid)
            elif name in HOOPWIRE_TARGETS:
                if name.startswith(("hoopwire-audit", "hoopwire-recommended")):
                    audit_dirs[name] = os.path.join(workdir, name)
                    os.mkdir(audit_dirs[name], 0o700)
                    if name == "hoopwire-audit":
                        audit_dir = audit_dirs[name]
                launch(name)
        log(versions(pg, targets))

        if args.idle:
            print(f"\nmemory per idle connection ({args.idle} connections, RSS of the proxy "
                  f"process and its children)")
            for name in targets:
                if by_name[name].pid is None:
                    print(f"  {name:<10} (not a proxy: PostgreSQL runs a process per connection)")
                    continue
                measure_idle(pg, by_name[name], args.idle)
            return 0

        total = args.rounds * len(variants) * len(targets) * (args.lead + args.duration + 1)
        log(f"{len(variants)} variants x {len(targets)} targets x {args.rounds} rounds x "
            f"({args.lead} + {args.duration} + 1) s = about {total / 60:.1f} min")
        results: dict[Variant, dict[str, list[Result | None]]] = {
            v: {t: [] for t in targets} for v in variants}
        warmup_tx = 0       # transactions through hoopwire-audit that no result counts
        for rnd in range(1, args.rounds + 1):
            if args.fresh:
                for name in list(gateways):
                    if rnd > 1:
                        stop(name)
                        launch(name)
                    # a new process starts cold (caches, buffers, the allocator): one uncounted
                    # second of load first, so that no counted run meets a cold gateway
                    warm = run_pgbench(pg, by_name[name], variants[0], 1)
                    if warm and name == "hoopwire-audit":
                        warmup_tx += warm.transactions or 0
            for v in variants:
                order = targets[:]
                rng.shuffle(order)
                for name in order:
                    res = run_pgbench(pg, by_name[name], v, args.duration, args.lead)
                    results[v][name].append(res)
                    log(f"  round {rnd}/{args.rounds}  {v.label:<55} {name:<14} "
                        + (f"{res.tps:10.1f} tps {res.latency_ms:8.3f} ms" if res else "failed"))

        print(f"\n{versions(pg, targets)}\npgbench {args.duration} s counted after a "
              f"{args.lead} s lead, scale {args.scale}; "
              "medians over rounds; ratios are per-round TPS ratios, then the median")
        print_tables(variants, targets, results, args.rounds)
        if "hoopwire-audit" in gateways:
            rc = stop("hoopwire-audit")
            audit_summary(audit_dir, results, warmup_tx)
            if rc != 0:
                print(f"  the gateway exited with {rc}: records still queued may be missing")
            if problems:
                print(f"  the gateway logged {len(problems)} warning/error lines; the first:")
                for ln in problems[:10]:
                    print(f"    {ln[:300]}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"args": vars(args), "results": [
                    {"variant": v.__dict__, "target": t,
                     "runs": [r.__dict__ if r else None for r in results[v][t]]}
                    for v in variants for t in targets]}, f, indent=2)
    return 0


if __name__ == "__main__":
    run_main(main)
