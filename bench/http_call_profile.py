#!/usr/bin/env python3
"""Where an HTTP request's gateway CPU goes: Python calls and profiled time per request.

    python bench/http_call_profile.py [--duration 5] [--connections 4] [--top 25]
    python bench/http_call_profile.py --perf        # perf's split too (kernel / interpreter / C)
    python bench/http_call_profile.py --masked      # wrk_compare.py's `hoopwire-masked` target
    python bench/http_call_profile.py --pure        # the relay's Python twin of its C plumbing

One gateway configured as wrk_compare.py's `hoopwire` target (API key auth, the
http-write-methods and http-admin-paths packs, a pattern rule, masking off) runs under cProfile
(one worker) in front of wrk_compare.py's static nginx upstream; wrk sends keep-alive GETs of the
1 KiB body for --duration seconds and the profile is read back per request. With --masked the
gateway is the `hoopwire-masked` target (its key paths and detectors on that body). Calls per request do
not move with the machine's load, so the split can be taken on a busy box; cProfile's times are
several times the real ones and only rank the functions. With --perf, a second run without
cProfile is sampled by `perf record` and the samples are split by where they landed (kernel,
the interpreter, the C extensions). bench/wrk_compare.py measures the real cost.
"""

from __future__ import annotations

import argparse
import collections
import os
import pstats
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

from helpers import free_port, to_toml, wait_port  # noqa: E402  (tests/helpers.py)
from wrk_compare import (UPSTREAM_SECRET_ENV, hoopwire_config, parse_wrk,  # noqa: E402
                         start_upstream, users_json)


def run_gateway(cmd_prefix: list[str], workdir: str, upstream_port: int, api_key: str,
                secret: str, args, attach: list[str] | None = None,
                seconds: int | None = None) -> int:
    """The gateway under `cmd_prefix` while wrk runs; the requests wrk counted. With `attach`
    (a command to which the gateway's pid is appended), a 1 s wrk warms the gateway up first
    and the command runs alongside the counted wrk only."""
    port = free_port()
    config = hoopwire_config(upstream_port, api_key, guardrails=True, masking=args.masked)
    config["connection"][0]["listen"] = f"127.0.0.1:{port}"
    config["admin"] = {"listen": f"127.0.0.1:{free_port()}"}
    path = os.path.join(workdir, "gw.toml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(to_toml(config))
    env = dict(os.environ, PYTHONPATH=ROOT, **{UPSTREAM_SECRET_ENV: secret})
    gw = subprocess.Popen(cmd_prefix + ["-m", "hoopwire", "serve", "--config", path,
                                        "--workers", "1"], env=env, cwd=workdir,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port("127.0.0.1", port, 30)

        def wrk(seconds: int) -> str:
            return subprocess.run(
                ["wrk", "-t1", f"-c{args.connections}", f"-d{seconds}s", "--latency",
                 "-H", f"Authorization: Bearer {api_key}", f"http://127.0.0.1:{port}/1k.json"],
                capture_output=True, text=True, timeout=seconds + 60).stdout
        side = None
        if attach is not None:
            wrk(1)
            side = subprocess.Popen(attach + [str(gw.pid)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
        out = wrk(seconds or args.duration)
        if side is not None:
            side.send_signal(signal.SIGINT)
            side.wait(60)
    finally:
        gw.send_signal(signal.SIGTERM)     # cProfile writes its file on the way out
        try:
            gw.wait(60)
        except subprocess.TimeoutExpired:
            gw.kill()
            gw.wait()
    parsed = parse_wrk(out)
    if parsed is None or parsed[4]:
        raise SystemExit(f"wrk did not run cleanly:\n{out}")
    return parsed[3]


def _rows(path: str) -> dict[str, tuple[int, float, float]]:
    """{function: (calls, own seconds, cumulative seconds)} of a cProfile output."""
    rows = {}
    for (file, line, name), (cc, nc, tt, ct, callers) in pstats.Stats(path).stats.items():
        where = os.path.relpath(file, ROOT) if file.startswith(ROOT) else os.path.basename(file)
        rows[f"{where}:{line}({name})"] = (nc, tt, ct)
    return rows


def profile(workdir: str, upstream_port: int, api_key: str, secret: str, args) -> None:
    """Two profiled runs, 1 s and --duration s of wrk: their difference is the requests
    alone (start-up, compiling the rules, shutdown cancel out)."""
    runs = []
    for seconds in (1, args.duration):
        out = os.path.join(workdir, f"gw{seconds}.prof")
        n = run_gateway([sys.executable, "-m", "cProfile", "-o", out], workdir, upstream_port,
                        api_key, secret, args, seconds=seconds)
        runs.append((n, _rows(out)))
        if args.save:
            shutil.copy(out, f"{args.save}.{seconds}s")
    (n0, short), (n1, long_) = runs
    n = n1 - n0
    rows = []
    for f, (nc, tt, ct) in long_.items():
        c0, t0, k0 = short.get(f, (0, 0.0, 0.0))
        if nc - c0 > 0:
            rows.append((tt - t0, nc - c0, ct - k0, f))
    rows.sort(reverse=True)
    calls = sum(r[1] for r in rows)
    total = sum(max(0.0, r[0]) for r in rows)
    print(f"{n} requests (a {args.duration} s run minus a 1 s run): {calls / n:.1f} Python "
          f"calls/request, {total / n * 1e6:.1f} us/request profiled (cProfile's times only "
          "rank)")
    print(f"{'calls/req':>9} {'own us/req':>10} {'cum us/req':>10}  function")
    for tt, nc, ct, f in rows[:args.top]:
        print(f"{nc / n:9.2f} {tt / n * 1e6:10.2f} {ct / n * 1e6:10.2f}  {f}")


_PERF_LINE = re.compile(r"^\s*([\d.]+)%\s+(\S+)\s+\[([.k])\]\s+(.*)$")


def perf_split(workdir: str, upstream_port: int, api_key: str, secret: str, args) -> None:
    data = os.path.join(workdir, "perf.data")
    n = run_gateway([sys.executable], workdir, upstream_port, api_key, secret, args,
                    attach=["perf", "record", "-q", "-F", "4999", "-o", data, "-p"])
    report = subprocess.run(["perf", "report", "-i", data, "--stdio", "--sort", "dso,sym",
                             "--percent-limit", "0"], capture_output=True, text=True).stdout
    by_dso: dict[str, float] = collections.defaultdict(float)
    top = []
    for line in report.splitlines():
        m = _PERF_LINE.match(line)
        if m:
            pct, dso, kind, sym = float(m.group(1)), m.group(2), m.group(3), m.group(4).strip()
            by_dso["[kernel]" if kind == "k" else dso] += pct
            top.append((pct, dso, sym))
    print(f"\nperf ({n} requests, no cProfile): samples by where they landed")
    for dso, pct in sorted(by_dso.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {pct:6.2f}%  {dso}")
    print("top symbols:")
    for pct, dso, sym in sorted(top, reverse=True)[:max(args.top, 25)]:
        print(f"  {pct:6.2f}%  {dso:28.28s} {sym}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--perf", action="store_true", help="also sample a run with perf record")
    ap.add_argument("--pure", action="store_true",
                    help="the relay's Python plumbing (HOOPWIRE_HTTP_PURE=1) instead of the C "
                    "one, whose calls cProfile does not see")
    ap.add_argument("--masked", action="store_true",
                    help="the hoopwire-masked target (masking rules on the 1 KiB body)")
    ap.add_argument("--save", metavar="PATH", help="keep the cProfile output (pstats) there")
    args = ap.parse_args(argv)
    if args.pure:
        os.environ["HOOPWIRE_HTTP_PURE"] = "1"     # the gateway's environment is ours
    api_key = secrets.token_urlsafe(24)
    secret = secrets.token_urlsafe(18)
    workdir = tempfile.mkdtemp(prefix="hoopwire-httpprof-")
    os.chmod(workdir, 0o755)
    upstream = start_upstream(workdir, 1, {"1k": users_json(1024)})
    try:
        profile(workdir, upstream.port, api_key, secret, args)
        if args.perf:
            perf_split(workdir, upstream.port, api_key, secret, args)
    finally:
        upstream.stop()
        shutil.rmtree(workdir, True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
