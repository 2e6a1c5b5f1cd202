"""Where a transaction's gateway CPU goes, by configuration: Python calls per transaction.

    python bench/pg_call_profile.py [--transactions 20000] [--mode simple|extended]
                                    [--configs plain,mask,packs,recommended]

For each configuration, one gateway runs under cProfile (one worker), pgbench runs
`--transactions` select-only transactions through it (-c 1), and the profile is read back as
calls per transaction and the functions whose own time per transaction grew most over `plain`
(identity only). Counting calls is what this is for: a count does not move when the machine is
loaded, so the split can be taken on a busy 2-core box, while times here are cProfile's (several
times the real ones) and only rank the functions. bench/pgbench_compare.py measures the real cost.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pstats
import secrets
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)

from helpers import free_port, to_toml, wait_port  # noqa: E402  (tests/helpers.py)
from hoopwire.devserver import PgServer  # noqa: E402

PACKS = ("destructive-ddl", "unbounded-write", "privilege-changes", "server-side-io",
         "session-tampering")
PW_ENV = "HOOPWIRE_BENCH_DB_PASSWORD"
MASK = {"columns": ["public.customers.ssn"], "detectors": ["EMAIL", "CREDIT_CARD"]}


def config_for(kind: str, pg: PgServer, api_key: str, port: int, workdir: str) -> dict:
    conn = {"name": "bench", "protocol": "postgres", "listen": f"127.0.0.1:{port}",
            "upstream": f"{pg.host}:{pg.port}", "database": "bench", "user": "bench",
            "password_env": PW_ENV}
    if kind in ("packs", "recommended"):
        conn["guardrail"] = [{"pack": p} for p in PACKS]
    if kind in ("mask", "recommended"):
        conn["mask"] = [dict(MASK)]
    # recommended records sessions as the README (and pgbench_compare's target) has it
    audit = {"path": os.path.join(workdir, f"{kind}-audit.log")} if kind == "recommended" \
        else {"enabled": False}
    state = {"state": {"url": "sqlite:///" + os.path.join(workdir, f"{kind}-state.db")}} \
        if kind == "recommended" else {}
    return {**state, "admin": {"listen": f"127.0.0.1:{free_port()}"},
            "audit": audit,
            "identity": {"api_key": [{"name": "bench", "groups": ["bench"],
                                      "sha256": hashlib.sha256(api_key.encode()).hexdigest()}]},
            "connection": [conn]}


def profile(kind: str, pg: PgServer, db_password: str, n: int, mode: str,
            workdir: str) -> pstats.Stats:
    api_key = secrets.token_urlsafe(24)
    port = free_port()
    path = os.path.join(workdir, f"{kind}.toml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(to_toml(config_for(kind, pg, api_key, port, workdir)))
    out = os.path.join(workdir, f"{kind}.prof")
    env = dict(os.environ, PYTHONPATH=ROOT, **{PW_ENV: db_password})
    gw = subprocess.Popen([sys.executable, "-m", "cProfile", "-o", out, "-m", "hoopwire", "serve",
                           "--config", path, "--workers", "1"], env=env, cwd=workdir,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port("127.0.0.1", port, 30)
        genv = dict(os.environ, PGPASSWORD=api_key)
        for var in ("PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGSSLMODE"):
            genv.pop(var, None)
        subprocess.run([os.path.join(pg.bindir, "pgbench"), "-n", "-S", "-M", mode, "-c", "1",
                        "-t", str(n), "-h", "127.0.0.1", "-p", str(port), "-U", "agent",
                        "bench"], env=genv, check=True, capture_output=True)
    finally:
        gw.send_signal(signal.SIGTERM)
        gw.wait(30)
    return pstats.Stats(out)


def per_function(stats: pstats.Stats) -> dict[str, tuple[int, float]]:
    """{function: (calls, own seconds)}"""
    rows = {}
    for (file, line, name), (cc, nc, tt, ct, callers) in stats.stats.items():
        where = os.path.relpath(file, ROOT) if file.startswith(ROOT) else os.path.basename(file)
        rows[f"{where}:{line}({name})"] = (nc, tt)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--transactions", type=int, default=20000)
    ap.add_argument("--mode", default="simple", choices=("simple", "extended", "prepared"))
    ap.add_argument("--configs", default="plain,mask,packs,recommended")
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args(argv)
    kinds = args.configs.split(",")
    n = args.transactions
    db_password = secrets.token_urlsafe(16)
    with tempfile.TemporaryDirectory(prefix="hoopwire-prof-") as workdir, PgServer() as pg:
        os.chmod(workdir, 0o755)
        pg.create_role("bench", db_password)
        pg.create_database("bench", owner="bench")
        subprocess.run([os.path.join(pg.bindir, "pgbench"), "-i", "-q", "-s", "1", "-h", pg.host,
                        "-p", str(pg.port), "-U", "bench", "bench"], check=True,
                       capture_output=True, env=dict(os.environ, PGPASSWORD=db_password))
        rows = {}
        for kind in kinds:
            t0 = time.time()
            rows[kind] = per_function(profile(kind, pg, db_password, n, args.mode, workdir))
            print(f"# {kind}: profiled in {time.time() - t0:.0f} s", file=sys.stderr)
        base = rows.get("plain", {})
        print(f"pgbench -S -M {args.mode} -c 1 -t {n}; Python calls per transaction "
              "(cProfile; times only rank)")
        for kind in kinds:
            calls = sum(c for c, _ in rows[kind].values()) / n
            print(f"\n## {kind}: {calls:.1f} calls/txn")
            if kind == "plain":
                continue
            # what runs per transaction only: start-up and stop (compiling, loading) are left out
            grown = sorted(((tt - base.get(f, (0, 0.0))[1], c - base.get(f, (0, 0))[0], f)
                            for f, (c, tt) in rows[kind].items() if c >= n // 2), reverse=True)
            for dt, dc, f in grown[:args.top]:
                print(f"  {dc / n:+7.2f} calls/txn  {dt / n * 1e6:+7.2f} us/txn (profiled)  {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
