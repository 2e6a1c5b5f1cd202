"""Where a MySQL point select's gateway CPU goes, by configuration: Python calls per transaction.

    python bench/mysql_call_profile.py [--transactions 20000] [--modes text,prepared]
                                       [--configs plain,guarded,masked]

The MySQL twin of pg_call_profile.py. For each configuration and mode, one gateway runs under
cProfile (one worker), sysbench runs `--transactions` oltp_point_select transactions through it
(one thread), and the profile is read back as Python calls per transaction and the functions
whose calls per transaction grew most over `plain` (identity only). Each is run twice, with
`--transactions` and a tenth of it, and only the difference counts: what a gateway does once
(imports, compiling the packs' patterns, the catalog's first read, the login) was 300k calls
here, 150 a transaction in a 2,000-transaction profile. The configurations are
sysbench_compare.py's: `guarded` is the five guardrail packs and a mask rule on `pad` (a column
the reads never return), `masked` adds a rule on `c` (every row rewritten). Counting calls is the
point: a count does not move with the machine's load, so the split can be taken on a busy
2-core box; cProfile's times are several times the real ones and only rank the functions.
bench/sysbench_compare.py measures the real cost.
"""

from __future__ import annotations

import argparse
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
sys.path.insert(0, HERE)

from helpers import wait_port  # noqa: E402  (tests/helpers.py)
from sysbench_compare import (CLIENT_USER, DB, DB_USER, PS_MODES, PW_ENV, Target,  # noqa: E402
                              prepare_tables, start_hoopwire, start_mariadb, sysbench_config,
                              sysbench_env, table_args)

CONFIGS = {"plain": {}, "guarded": {"packs": True, "mask_pad": True},
           "masked": {"packs": True, "mask_c": True}, "packs": {"packs": True},
           "mask": {"mask_pad": True}}


def profile(kind: str, mode: str, db, db_password: str, n: int, args,
            workdir: str) -> pstats.Stats:
    api_key = secrets.token_urlsafe(24)
    out = os.path.join(workdir, f"{kind}-{mode}.prof")
    # the sysbench bench's own configuration, written by its Gateway helper (not started: the
    # process is ours, under cProfile)
    gw = start_hoopwire(db, db_password, api_key, 1, **CONFIGS[kind], start=False)
    port = gw.port("bench")
    env = dict(os.environ, PYTHONPATH=ROOT, **{PW_ENV: db_password})
    proc = subprocess.Popen([sys.executable, "-m", "cProfile", "-o", out, "-m", "hoopwire",
                             "serve", "--config", gw.config_path, "--workers", "1"], env=env,
                            cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port("127.0.0.1", port, 60)
        cfg = sysbench_config(workdir, Target(kind, port, CLIENT_USER, api_key), db, args)
        r = subprocess.run(["sysbench", "oltp_point_select", f"--config-file={cfg}",
                            *table_args(args), "--threads=1", f"--events={n}", "--time=0",
                            f"--db-ps-mode={PS_MODES[mode]}", "run"], env=sysbench_env(),
                           capture_output=True, text=True, timeout=600, cwd=workdir)
        if r.returncode != 0:
            raise RuntimeError(f"sysbench through {kind} failed:\n{(r.stderr or r.stdout)[-2000:]}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        gw.stop()               # never started: removes its config directory
    return pstats.Stats(out)


def per_function(stats: pstats.Stats) -> dict[str, tuple[int, float]]:
    """{function: (calls, own seconds)}"""
    rows = {}
    for (file, line, name), (_cc, nc, tt, _ct, _callers) in stats.stats.items():
        where = os.path.relpath(file, ROOT) if file.startswith(ROOT) else os.path.basename(file)
        rows[f"{where}:{line}({name})"] = (nc, tt)
    return rows


def per_transaction(kind: str, mode: str, db, db_password: str, n: int, args,
                    workdir: str) -> dict[str, tuple[float, float]]:
    """{function: (calls, own seconds) per transaction}: a run of n less a run of n // 10."""
    small = max(1, n // 10)
    big = per_function(profile(kind, mode, db, db_password, n, args, workdir))
    little = per_function(profile(kind, mode, db, db_password, small, args, workdir))
    d = n - small
    return {f: ((c - little.get(f, (0, 0.0))[0]) / d, (tt - little.get(f, (0, 0.0))[1]) / d)
            for f, (c, tt) in big.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--transactions", type=int, default=20000)
    ap.add_argument("--modes", default="text,prepared")
    ap.add_argument("--configs", default="plain,guarded,masked",
                    help=f"comma-separated subset of {','.join(CONFIGS)}")
    ap.add_argument("--top", type=int, default=14)
    args = ap.parse_args(argv)
    # one small table: every point select hits the buffer pool (the calls do not depend on it)
    args.tables, args.table_size, args.tls = 1, 10_000, False
    kinds = args.configs.split(",")
    modes = args.modes.split(",")
    n = args.transactions
    db_password = secrets.token_urlsafe(16)
    with tempfile.TemporaryDirectory(prefix="hoopwire-prof-") as workdir, \
            start_mariadb(8, None) as db:
        os.chmod(workdir, 0o755)
        db.create_database(DB)
        db.create_user(DB_USER, db_password, grants=[f"ALL ON {DB}.*"])
        prepare_tables(db, db_password, args, workdir)
        print(f"sysbench oltp_point_select --threads=1 --events={n}; Python calls per "
              "transaction (cProfile; times only rank)")
        for mode in modes:
            rows = {}
            for kind in kinds:
                t0 = time.time()
                rows[kind] = per_transaction(kind, mode, db, db_password, n, args, workdir)
                print(f"# {kind}, {mode}: profiled in {time.time() - t0:.0f} s", file=sys.stderr)
            base = rows.get("plain", {})
            for kind in kinds:
                calls = sum(c for c, _ in rows[kind].values())
                print(f"\n## {mode}, {kind}: {calls:.1f} calls/txn")
                # plain: its own calls; the others: what grew over plain
                ref = {} if kind == "plain" else base
                grown = sorted(((c - ref.get(f, (0, 0))[0], tt - ref.get(f, (0, 0.0))[1], f)
                                for f, (c, tt) in rows[kind].items()), reverse=True)
                for dc, dt, f in grown[:args.top]:
                    if dc < 0.05:
                        break
                    print(f"  {dc:+7.2f} calls/txn  {dt * 1e6:+7.2f} us/txn (profiled)  {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
