#!/usr/bin/env python3
"""End-to-end load comparison for MySQL/MariaDB: sysbench straight to MariaDB and through
hoopwire and HAProxy (TCP), all started here as throwaway processes on loopback. The MySQL
counterpart of pgbench_compare.py (its proxies, CPU accounting and statistics are reused).

    python bench/sysbench_compare.py --rounds 5 --duration 10
    python bench/sysbench_compare.py --targets direct,haproxy --duration 5      # no gateway
    python bench/sysbench_compare.py --targets direct,haproxy,hoopwire,hoopwire-guarded,hoopwire-twin \
        --tests oltp_point_select --modes prepared --rounds 12 --duration 5 --fresh
    python bench/sysbench_compare.py --tls      # every target over TLS (the gateway's default)

Runs are interleaved (each round runs every variant against every target, targets in a shuffled
order) so drift on the machine spreads over all targets instead of favouring one. Reported per
variant: median TPS, QPS and mean latency over rounds; the median of the per-round TPS ratio to
`direct`, to `haproxy` and (when it runs next to a hoopwire-* target) to plain `hoopwire`; the
proxy's and the server's CPU per transaction, and how busy the rest of the machine was during
the counted seconds (other agents' compiles show up there, not silently in the ratios).
See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import random
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))
sys.path.insert(0, BENCH_DIR)

from helpers import Gateway, GatewayError  # noqa: E402  (tests/helpers.py)
from common import (CpuWindow, Service, fmt, load_average, log,  # noqa: E402
                    median_interval, median_or_none, paired, ratios, run_main)
from pgbench_compare import start_haproxy  # noqa: E402
from hoopwire.devserver import MariaDbServer  # noqa: E402

ALL_TARGETS = ("direct", "haproxy", "hoopwire", "hoopwire-guarded")
# ask for these by name (--targets ...):
#   hoopwire-masked  hoopwire-guarded plus a column rule on `c`, the column every sysbench read
#                    returns: every value of every row rewritten (guarded masks `pad`, which the
#                    reads never select: the planning cost without the rewriting)
#   hoopwire-packs   hoopwire with the five guardrail packs only   } the two halves of guarded,
#   hoopwire-mask    hoopwire with the mask rule on `pad` only     } to tell which one costs
#   hoopwire-audit   hoopwire with session recording on ([audit] + a SQLite [state])
#   hoopwire-twin    a second plain hoopwire configured exactly as `hoopwire`: its ratio to it is
#                    what two identical gateway processes differ by in this run
EXTRA_TARGETS = ("hoopwire-masked", "hoopwire-packs", "hoopwire-mask", "hoopwire-audit",
                 "hoopwire-twin")
HOOPWIRE_TARGETS = ("hoopwire", "hoopwire-guarded") + EXTRA_TARGETS
PACKS = ("destructive-ddl", "unbounded-write", "privilege-changes", "server-side-io",
         "session-tampering")
DB = "sbtest"
DB_USER = "sbtest"
CLIENT_USER = "bench"        # what sysbench puts in `user` when going through hoopwire
PW_ENV = "HOOPWIRE_BENCH_DB_PASSWORD"
# sysbench's mode names -> --db-ps-mode: `prepared` is sysbench's default (server-side prepared
# statements, binary rows: COM_STMT_PREPARE once per thread, COM_STMT_EXECUTE per query);
# `text` sends every query as COM_QUERY text (a new literal each time, text rows)
PS_MODES = {"prepared": "auto", "text": "disable"}


# ------------------------------------------------------------------------------------------------
# the server and the proxies under comparison

def start_mariadb(max_clients: int, pki: tuple[str, str, str] | None) -> MariaDbServer:
    return MariaDbServer(
        tls_cert=pki[0] if pki else None, tls_key=pki[1] if pki else None,
        # mariadbd checks the client certificate sysbench offers (see make_pki) against its
        # CA and refuses the handshake ("unknown ca") without it
        tls_ca=os.path.join(pki[2], "cacert.pem") if pki else None,
        options={
            # the sysbench tables (4 x 100k rows, about 100 MB) stay in memory: the runs measure
            # the wire path, not the disk
            "innodb_buffer_pool_size": "512M",
            "max_connections": max(300, max_clients + 50),
            "table_open_cache": 2000,
            # both are off by default in 10.11; said here so that no build's default turns
            # them on: instrumentation would tax every target's server time alike, and a query
            # cache would answer repeated point selects without the server doing the work
            "performance_schema": "OFF",
            "query_cache_type": 0,
            "query_cache_size": 0,
        }).start()


def make_pki(workdir: str) -> tuple[str, str, str]:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate, signed by
    it; returns (server cert, server key, the directory sysbench runs in).

    sysbench 1.0's --mysql-ssl=on takes no file options: it loads client-key.pem,
    client-cert.pem and cacert.pem from its working directory, and fails the connection when
    they are missing ("TLS/SSL error: No such file or directory"). So that directory gets
    them; the client certificate is offered only if a server asks for one (none here does)."""
    d = os.path.join(workdir, "pki")
    os.mkdir(d, 0o700)

    def openssl(*argv: str) -> None:
        subprocess.run(["openssl", *argv], check=True, capture_output=True, timeout=60, cwd=d)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-keyout", "ca-key.pem", "-out", "cacert.pem", "-days", "2",
            "-subj", "/CN=hoopwire sysbench CA")
    for name, cn, ext in (("server", "127.0.0.1", "subjectAltName=IP:127.0.0.1"),
                          ("client", "sysbench", "extendedKeyUsage=clientAuth")):
        openssl("req", *ec, "-keyout", f"{name}-key.pem", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
        with open(os.path.join(d, f"{name}.ext"), "w") as f:
            f.write(ext + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "cacert.pem", "-CAkey", "ca-key.pem",
                "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
                "-out", f"{name}-cert.pem")
    return os.path.join(d, "server-cert.pem"), os.path.join(d, "server-key.pem"), d


def start_hoopwire(db: MariaDbServer, db_password: str, api_key: str, workers: int | None,
                   *, packs: bool = False, mask_pad: bool = False, mask_c: bool = False,
                   audit_dir: str | None = None,
                   tls: tuple[str, str] | None = None, start: bool = True) -> Gateway:
    conn = {"name": "bench", "protocol": "mysql", "upstream": f"{db.host}:{db.port}",
            "database": DB, "user": DB_USER, "password_env": PW_ENV}
    if tls:
        # clients send the token over TLS (the default), and the gateway talks TLS upstream
        # too, so that the TLS cost is paid on both legs as a client-to-server TLS pays it once
        conn.update(tls_cert=tls[0], tls_key=tls[1], upstream_tls="require")
    else:
        # loopback-only plaintext, as direct and haproxy run: this measures the data path
        conn["cleartext_without_tls"] = "loopback"
    if packs:
        conn["guardrail"] = [{"pack": p} for p in PACKS]
    if mask_pad or mask_c:
        columns = [f"{DB}.*.pad"] + ([f"{DB}.*.c"] if mask_c else [])
        conn["mask"] = [{"columns": columns, "strategy": "redact"}]
    config = {
        "identity": {"api_key": [{"name": "bench",
                                  "sha256": hashlib.sha256(api_key.encode()).hexdigest(),
                                  "groups": ["bench"]}]},
        "connection": [conn],
    }
    if audit_dir:
        config["audit"] = {"path": os.path.join(audit_dir, "log")}
        config["state"] = {"url": "sqlite:///" + os.path.join(audit_dir, "state.db")}
    else:
        config["audit"] = {"enabled": False}     # the other targets record nothing
    return Gateway(config, env={PW_ENV: db_password}, workers=workers, start=start)


@dataclass
class Target:
    name: str
    port: int
    user: str
    password: str
    pid: int | None = None  # the proxy process whose CPU is counted (None: not a proxy)


# ------------------------------------------------------------------------------------------------
# sysbench

@dataclass(frozen=True)
class Variant:
    test: str        # "oltp_point_select" | "oltp_read_only"
    mode: str        # "prepared" | "text"
    threads: int

    @property
    def label(self) -> str:
        return f"{self.test}, {self.mode}, {self.threads} thread{'s' if self.threads > 1 else ''}"


@dataclass
class Result:
    tps: float
    qps: float
    latency_ms: float                  # mean, from Little's law: threads / TPS
    p95_ms: float                      # median over the counted seconds of sysbench's 95th pct
    errors: float = 0.0                # sysbench's err/s summed over the counted seconds
    transactions: int | None = None    # sysbench's whole-run count (lead included)
    proxy_cpu_us: float | None = None  # the proxy's CPU (user+system) per transaction
    server_cpu_us: float | None = None  # mariadbd's CPU per transaction
    others_cpu: float | None = None    # CPUs' worth busy outside server, proxy and sysbench


_SECOND = re.compile(r"^\[ *(\d+)s \] thds: \d+ tps: ([\d.]+) qps: ([\d.]+) .*?"
                     r"lat \(ms,95%\): ([\d.]+) err/s: ([\d.]+)", re.M)
_TX = re.compile(r"^\s*transactions:\s+(\d+)", re.M)


def sysbench_config(workdir: str, target: Target, db: MariaDbServer, args) -> str:
    """The connection options in a 0600 file (--config-file): the password (a token through
    hoopwire) never appears on a command line, where ps would show it. (sysbench 1.0 reads only
    its own and the driver's options from the file, not the Lua test's: those go on the
    command line, see table_args.)"""
    path = os.path.join(workdir, f"sysbench-{target.name}.cfg")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"db-driver=mysql\nmysql-host=127.0.0.1\nmysql-port={target.port}\n"
                f"mysql-user={target.user}\nmysql-password={target.password}\n"
                f"mysql-db={DB}\n"
                + ("mysql-ssl=on\n" if args.tls else ""))
    return path


def table_args(args) -> list[str]:
    return [f"--tables={args.tables}", f"--table-size={args.table_size}"]


def sysbench_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MYSQL", "MARIADB"))}
    # The gateway asks for the token with an auth switch to mysql_clear_password. libmysqlclient
    # refuses that plugin unless this is set; MariaDB Connector/C (what Debian's sysbench links)
    # loads it from its plugin directory without asking (checked: see bench/README.md).
    env["LIBMYSQL_ENABLE_CLEARTEXT_PLUGIN"] = "1"
    # Connector/C loads that plugin on first use, and two threads switching to it at once race:
    # one of them fails its login with 1045 "Plugin mysql_clear_password could not be loaded:
    # it is already loaded" (8 of 50 runs of 64 threads here; 0 of 50 with this). Listed in
    # LIBMYSQL_PLUGINS it is loaded once, when the library initialises, before any thread.
    env["LIBMYSQL_PLUGINS"] = "mysql_clear_password"
    return env


def run_sysbench(cfg: str, target: Target, v: Variant, args,
                 server_pid: int | None) -> Result | None:
    """One sysbench run of lead + duration + 1 seconds, of which the `duration` after the lead
    count: TPS from sysbench's per-second reports, CPU over the same window (the last second is
    there because sysbench may not print its last interval)."""
    duration, lead = args.duration, args.lead
    total = lead + duration + 1
    cmd = ["sysbench", v.test, f"--config-file={cfg}", *table_args(args), f"--threads={v.threads}",
           f"--time={total}", "--report-interval=1", f"--db-ps-mode={PS_MODES[v.mode]}", "run"]
    proc = subprocess.Popen(cmd, env=sysbench_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=args.sysbench_cwd)
    started = time.monotonic()
    time.sleep(lead)

    cpu = CpuWindow(proxy=target.pid, server=server_pid, client=proc.pid)
    time.sleep(duration)
    cpu.close()
    try:
        out, err = proc.communicate(timeout=max(1.0, total + 120 - (time.monotonic() - started)))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        log(f"    sysbench against {target.name} hung; counted as failed")
        return None
    seconds = [(float(m.group(2)), float(m.group(3)), float(m.group(4)), float(m.group(5)))
               for m in _SECOND.finditer(out) if lead < int(m.group(1)) <= lead + duration]
    if proc.returncode != 0 or len(seconds) < duration:
        tail = "\n".join((err.strip() or out.strip()).splitlines()[-6:])
        log(f"    sysbench against {target.name} failed (exit {proc.returncode}, "
            f"{len(seconds)} of {duration} seconds in the window):\n{tail}")
        return None
    tps = sum(s[0] for s in seconds) / len(seconds)
    qps = sum(s[1] for s in seconds) / len(seconds)
    tx = _TX.search(out)
    result = Result(tps, qps, v.threads * 1000 / tps if tps else float("inf"),
                    statistics.median(s[2] for s in seconds), sum(s[3] for s in seconds),
                    int(tx.group(1)) if tx else None)
    carried = tps * cpu.seconds
    if carried > 0:
        if cpu.used("proxy") is not None:
            result.proxy_cpu_us = cpu.used("proxy") / carried * 1e6
        if cpu.used("server") is not None:
            result.server_cpu_us = cpu.used("server") / carried * 1e6
    result.others_cpu = cpu.others()
    return result


def prepare_tables(db: MariaDbServer, password: str, args, workdir: str) -> None:
    """sysbench's tables, made once straight on the server (every target reads the same), then
    scanned once so that the buffer pool is warm before the first counted run (sysbench 1.0's
    `prewarm` command does not exist for MySQL)."""
    direct = Target("direct", db.port, DB_USER, password)
    cfg = sysbench_config(workdir, direct, db, argparse.Namespace(**{**vars(args), "tls": False}))
    r = subprocess.run(["sysbench", "oltp_read_only", f"--config-file={cfg}", *table_args(args),
                        "--threads=2", "prepare"], env=sysbench_env(), capture_output=True, text=True,
                       timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"sysbench prepare failed:\n{(r.stderr or r.stdout)[-2000:]}")
    tables = [f"sbtest{i}" for i in range(1, args.tables + 1)]
    db.sql(f"ANALYZE TABLE {', '.join(tables)};\n" + "".join(
        f"SELECT COUNT(*), SUM(LENGTH(c)), SUM(LENGTH(pad)) FROM {t} FORCE INDEX (PRIMARY);\n"
        for t in tables), DB)


# ------------------------------------------------------------------------------------------------
# reporting

def print_tables(variants: list[Variant], targets: list[str],
                 results: dict[Variant, dict[str, list[Result | None]]], rounds: int) -> None:
    vs_gateway = "hoopwire" in targets and any(t in HOOPWIRE_TARGETS[1:] for t in targets)
    width = max(10, *(len(t) for t in targets))
    for v in variants:
        print(f"\n{v.label}  ({rounds} round{'s' if rounds > 1 else ''})")
        print(f"  {'target':<{width}} {'TPS':>10} {'QPS':>10} {'lat ms':>7} {'p95 ms':>7} "
              f"{'vs direct':>9} {'vs haproxy':>10}" + (f" {'vs hoopwire':>11}" if vs_gateway else "")
              + f" {'proxy CPU us/tx':>15} {'server us/tx':>12} {'others CPUs':>11}")
        for t in targets:
            runs = results[v][t]
            ok = [r for r in runs if r]
            vs_gw = median_or_none(ratios(results[v], t, "hoopwire")) if t != "hoopwire" else None
            note = "" if len(ok) == len(runs) else f"  ({len(runs) - len(ok)} failed)"
            errors = sum(r.errors for r in ok)
            if errors:
                note += f"  ({errors:.0f} errors reported)"
            print(f"  {t:<{width}} {fmt(median_or_none([r.tps for r in ok]), '10.1f')} "
                  f"{fmt(median_or_none([r.qps for r in ok]), '10.1f')} "
                  f"{fmt(median_or_none([r.latency_ms for r in ok]), '7.3f')} "
                  f"{fmt(median_or_none([r.p95_ms for r in ok]), '7.2f')} "
                  f"{fmt(median_or_none(ratios(results[v], t, 'direct')), '9.3f')} "
                  f"{fmt(median_or_none(ratios(results[v], t, 'haproxy')), '10.3f')}"
                  + (f" {fmt(vs_gw, '11.3f')}" if vs_gateway else "")
                  + f" {fmt(median_or_none([r.proxy_cpu_us for r in ok]), '15.1f')}"
                  f" {fmt(median_or_none([r.server_cpu_us for r in ok]), '12.1f')}"
                  f" {fmt(median_or_none([r.others_cpu for r in ok]), '11.2f')}{note}")
        # One round's ratio moves by several percent on a small shared machine: say how well
        # each median is pinned down before anyone reads a cost or a win off it.
        for t in targets:
            for base in ("haproxy", "hoopwire"):
                if t == base or not t.startswith("hoopwire") or (base == "hoopwire" and not vs_gateway):
                    continue
                r = ratios(results[v], t, base)
                if len(r) < 3:
                    continue
                lo, hi = median_interval(r)
                print(f"    {t} / {base} per round: median {statistics.median(r):.3f}, 95% "
                      f"interval {lo:.3f}-{hi:.3f}, range {min(r):.3f}-{max(r):.3f}, "
                      f"sd {statistics.stdev(r):.3f}")
        for t in targets:
            mine = [(a.proxy_cpu_us, b.proxy_cpu_us) for a, b in paired(results[v], t, "haproxy")
                    if a.proxy_cpu_us and b.proxy_cpu_us]
            if t.startswith("hoopwire") and mine:
                print(f"    {t} proxy CPU / haproxy's, per round: median "
                      f"{statistics.median(a / b for a, b in mine):.2f}")


def versions(db: MariaDbServer, targets: list[str]) -> str:
    parts = [f"MariaDB {db.sql('SELECT VERSION()')}"]

    def first_line(cmd: list[str]) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError, IndexError):
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
        return "?"
    parts.append(first_line(["sysbench", "--version"]))
    if "haproxy" in targets:
        parts.append(" ".join(first_line(["haproxy", "-v"]).split()[:3]))
    if any(t in HOOPWIRE_TARGETS for t in targets):
        import hoopwire
        parts.append(f"hoopwire {hoopwire.__version__}")
    return "; ".join(parts) + f"; {os.cpu_count()} CPUs; Python {platform.python_version()}"


def audit_summary(audit_dir: str, carried: int) -> None:
    """What recording left on disk next to what sysbench says went through. Call after the
    gateway has stopped, so that its last flush is on disk."""
    log_dir = os.path.join(audit_dir, "log")
    counts: dict[str, int] = {}
    size = 0
    for name in sorted(os.listdir(log_dir)):
        path = os.path.join(log_dir, name)
        size += os.path.getsize(path)
        if name.endswith(".jsonl"):
            with open(path, "rb") as f:
                for line in f:
                    kind = json.loads(line).get("type", "?")
                    counts[kind] = counts.get(kind, 0) + 1
    statements = counts.get("statement", 0)
    print(f"\nhoopwire-audit recording: " + ", ".join(f"{k} {n}" for k, n in sorted(counts.items()))
          + f"; sysbench transactions through it {carried}; audit log {size / 2**20:.1f} MiB"
          + (f" = {size / statements:.0f} bytes per statement record" if statements else ""))


# ------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default=",".join(ALL_TARGETS),
                    help=f"comma-separated subset of {','.join(ALL_TARGETS + EXTRA_TARGETS)} "
                         f"(default: {','.join(ALL_TARGETS)})")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10, help="seconds counted per sysbench run")
    ap.add_argument("--lead", type=int, default=2,
                    help="seconds of load before the counted ones in every run (default 2; "
                         "keep it at or above the audit flush_interval)")
    ap.add_argument("--tests", default="oltp_point_select,oltp_read_only",
                    help="sysbench Lua tests (default: oltp_point_select,oltp_read_only)")
    ap.add_argument("--modes", default="prepared,text",
                    help="prepared (server-side prepared statements, sysbench's default) and/or "
                         "text (--db-ps-mode=disable)")
    ap.add_argument("--threads", default="8", help="comma-separated sysbench --threads values")
    ap.add_argument("--tables", type=int, default=4)
    ap.add_argument("--table-size", type=int, default=100_000)
    ap.add_argument("--tls", action="store_true",
                    help="every target over TLS: the server gets a certificate, sysbench "
                         "--mysql-ssl=on, the gateway terminates TLS and uses TLS upstream")
    ap.add_argument("--gateway-workers", type=int, default=None,
                    help="hoopwire serve --workers (default: the CLI's default)")
    ap.add_argument("--fresh", action="store_true",
                    help="start every hoopwire target anew before each round (see pgbench_compare)")
    ap.add_argument("--seed", type=int, default=None, help="seed for the target order")
    ap.add_argument("--json", metavar="PATH", help="also write every run's numbers as JSON")
    args = ap.parse_args(argv)

    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(targets) - set(ALL_TARGETS) - set(EXTRA_TARGETS)
    if unknown or not targets:
        ap.error(f"unknown targets: {', '.join(sorted(unknown)) or '(none)'}")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if set(modes) - set(PS_MODES):
        ap.error(f"--modes: prepared and/or text, not {args.modes}")
    if not shutil.which("sysbench"):
        ap.error("sysbench not found: apt-get install sysbench")
    variants = [Variant(t.strip(), m, int(n)) for t in args.tests.split(",") for m in modes
                for n in args.threads.split(",")]
    max_clients = max(v.threads for v in variants)

    rng = random.Random(args.seed)
    db_password = secrets.token_urlsafe(18)
    api_key = secrets.token_urlsafe(24)
    with contextlib.ExitStack() as stack:
        workdir = tempfile.mkdtemp(prefix="hoopwire-sysbench-")
        stack.callback(shutil.rmtree, workdir, True)
        pki = make_pki(workdir) if args.tls else None
        tls = pki[:2] if pki else None
        args.sysbench_cwd = pki[2] if pki else workdir

        log(f"starting MariaDB ... (load average {load_average()})")
        db = stack.enter_context(start_mariadb(max_clients, pki))
        db.create_database(DB)
        db.create_user(DB_USER, db_password, grants=[f"ALL ON {DB}.*"])
        log(f"sysbench prepare: {args.tables} tables x {args.table_size} rows ...")
        prepare_tables(db, db_password, args, workdir)

        by_name: dict[str, Target] = {}
        gateways: dict[str, Gateway] = {}
        audit_dir = None

        def launch(name: str) -> None:
            gw = start_hoopwire(db, db_password, api_key, args.gateway_workers,
                                packs=name in ("hoopwire-guarded", "hoopwire-masked", "hoopwire-packs"),
                                mask_pad=name in ("hoopwire-guarded", "hoopwire-mask"),
                                mask_c=name == "hoopwire-masked",
                                audit_dir=audit_dir if name == "hoopwire-audit" else None, tls=tls)
            stack.callback(gw.stop)
            gateways[name] = gw
            by_name[name] = Target(name, gw.port("bench"), CLIENT_USER, api_key, gw.pid)

        for name in targets:
            log(f"starting {name} ...")
            if name == "direct":
                by_name[name] = Target(name, db.port, DB_USER, db_password)
            elif name == "haproxy":
                svc: Service = start_haproxy(db, max_clients, workdir)
                stack.callback(svc.stop)
                by_name[name] = Target(name, svc.port, DB_USER, db_password, svc.pid)
            else:
                if name == "hoopwire-audit":
                    audit_dir = os.path.join(workdir, name)
                    os.mkdir(audit_dir, 0o700)
                try:
                    launch(name)
                except GatewayError as e:
                    # the other targets are still worth measuring; say why this one is missing
                    log(f"  {name} did not start; left out of this run:\n"
                        + "\n".join(str(e).splitlines()[-15:]))
        targets = [t for t in targets if t in by_name]
        configs = {name: sysbench_config(workdir, t, db, args) for name, t in by_name.items()}
        log(versions(db, targets))

        total = args.rounds * len(variants) * len(targets) * (args.lead + args.duration + 1)
        log(f"{len(variants)} variants x {len(targets)} targets x {args.rounds} rounds x "
            f"({args.lead} + {args.duration} + 1) s = about {total / 60:.1f} min")
        load_before = load_average()
        results: dict[Variant, dict[str, list[Result | None]]] = {
            v: {t: [] for t in targets} for v in variants}
        for rnd in range(1, args.rounds + 1):
            if args.fresh and rnd > 1:
                for name in list(gateways):
                    gateways.pop(name).stop(timeout=60)
                    launch(name)
                    configs[name] = sysbench_config(workdir, by_name[name], db, args)
            for v in variants:
                order = targets[:]
                rng.shuffle(order)
                for name in order:
                    res = run_sysbench(configs[name], by_name[name], v, args, db.pid)
                    results[v][name].append(res)
                    log(f"  round {rnd}/{args.rounds}  {v.label:<40} {name:<17} "
                        + (f"{res.tps:9.1f} tps {res.latency_ms:7.3f} ms, proxy "
                           f"{fmt(res.proxy_cpu_us, '.1f')} us/tx, others {res.others_cpu:.2f} "
                           "CPUs" if res else "failed"))

        print(f"\n{versions(db, targets)}\nsysbench {args.duration} s counted after a "
              f"{args.lead} s lead, {args.tables} tables x {args.table_size} rows"
              f"{', TLS on every leg' if args.tls else ', no TLS'}; medians over rounds; ratios "
              f"are per-round TPS ratios, then the median. Load average before {load_before}, "
              f"after {load_average()}; 'others CPUs' = CPUs' worth of time busy outside "
              "mariadbd, the proxy and sysbench during the counted seconds")
        print_tables(variants, targets, results, args.rounds)
        if args.tls:
            # the proof that TLS was on where it was meant to be: the server's own count
            accepted = db.sql("SHOW GLOBAL STATUS LIKE 'Ssl_accepts'").split()[-1]
            print(f"\nmariadbd accepted {accepted} TLS handshakes in all (the admin CLI's own "
                  "included)")
        if "hoopwire-audit" in gateways:
            rc = gateways.pop("hoopwire-audit").stop(timeout=60)
            carried = sum(r.transactions or 0 for v in variants
                          for r in results[v]["hoopwire-audit"] if r)
            audit_summary(audit_dir, carried)
            if rc:
                print(f"  the gateway exited with {rc}: records still queued may be missing")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"args": vars(args), "results": [
                    {"variant": v.__dict__, "target": t,
                     "runs": [r.__dict__ if r else None for r in results[v][t]]}
                    for v in variants for t in targets]}, f, indent=2)
    return 0


if __name__ == "__main__":
    run_main(main)
