#!/usr/bin/env python3
"""End-to-end load comparison for HTTP/1.1: wrk straight to an upstream and through hoopwire,
an nginx reverse proxy and HAProxy (mode http), all started here as throwaway processes on
loopback. The HTTP counterpart of pgbench_compare.py and sysbench_compare.py (their process
handling, CPU accounting and statistics are reused).

    python bench/wrk_compare.py                          # every target, 1 KiB and 64 KiB, 10 s
    python bench/wrk_compare.py --rounds 3 --duration 5
    python bench/wrk_compare.py --targets direct,nginx,haproxy --duration 5     # no gateway
    python bench/wrk_compare.py --bodies 1k --targets direct,nginx,hoopwire,hoopwire-twin
    python bench/wrk_compare.py --bodies 1k --targets nginx,hoopwire,hoopwire-baseline \
        --baseline-tree /tmp/before      # a change's before/after in one run

The upstream is nginx serving static JSON files (sendfile, open_file_cache, no access log): the
cheapest HTTP server at hand, so that it is not the bottleneck and every proxy sees the same
answers. Runs are interleaved (each round runs every body against every target, targets in a
shuffled order). Reported per body: median requests/s, p50 and p99 latency (wrk's), the median
of the per-round rps ratio to `direct` and to `nginx`, the proxy's CPU per request (utime +
stime of its process tree from /proc, workers summed), the upstream's, and how busy the rest of
the machine was; with masking on, the proxy's CPU per KiB of JSON. See bench/README.md.
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
import urllib.error
import urllib.request
from dataclasses import dataclass

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))
sys.path.insert(0, BENCH_DIR)

from helpers import Gateway, GatewayError, free_port  # noqa: E402  (tests/helpers.py)
from common import (CpuWindow, Service, fmt, load_average, log, median_interval,  # noqa: E402
                    median_or_none, ratios, run_main)

ALL_TARGETS = ("direct", "nginx", "haproxy", "hoopwire", "hoopwire-masked")
# ask for these by name (--targets ...):
#   hoopwire-bare  hoopwire with no guardrail (auth and relay only): what the rules cost
#   hoopwire-baseline  `hoopwire` run from another source tree (--baseline-tree, e.g. a copy
#                  of the tree before a change, its extensions built): a change's before/after
#                  in one run, where a busy machine moves every figure between two runs
#   hoopwire-twin  a second `hoopwire` configured exactly like it: its ratio to it is what two
#                  identical gateway processes differ by in this run
EXTRA_TARGETS = ("hoopwire-bare", "hoopwire-twin", "hoopwire-baseline")
HOOPWIRE_TARGETS = ("hoopwire", "hoopwire-masked") + EXTRA_TARGETS
BODIES = {"1k": 1024, "64k": 65536}
# the guardrails of `hoopwire` and `hoopwire-masked`: the HTTP packs (none of which a GET of a
# JSON file trips) and a pattern rule, so every request is judged by the engine, not waved on
PACKS = ("http-write-methods", "http-admin-paths")
CLIENT = "bench"                       # the API key identity wrk sends the token of
UPSTREAM_SECRET_ENV = "HOOPWIRE_BENCH_UPSTREAM_TOKEN"
# what every proxy sends upstream in place of the client's token (nginx and HAProxy set it as a
# header too, so that each proxy does the same header work hoopwire does)
UPSTREAM_HEADER = "Authorization"


# ------------------------------------------------------------------------------------------------
# the JSON the upstream serves

def users_json(size: int) -> bytes:
    """A JSON document of exactly `size` bytes: {"users": [...], "pad": "..."}, users with an
    e-mail, a password and, for every fourth, a free-text note holding another e-mail (what a
    detector, not a key path, finds). Masking on rewrites every user."""
    users, body = [], b""
    i = 0
    while True:
        i += 1
        user = {"id": i, "name": f"User {i:05d}", "email": f"user{i}@example.com",
                "password": f"pw-{i:06d}-secret", "plan": ("pro", "free", "team")[i % 3]}
        if i % 4 == 0:
            user["note"] = f"asked to be reached at backup{i}@example.org after 6pm"
        candidate = json.dumps({"users": users + [user], "pad": ""}, separators=(",", ":")).encode()
        if len(candidate) > size:
            break
        users.append(user)
        body = candidate
    if not body:
        raise ValueError(f"a {size}-byte body cannot hold one user")
    pad = size - len(body)
    doc = json.dumps({"users": users, "pad": "x" * pad}, separators=(",", ":")).encode()
    assert len(doc) == size, (len(doc), size)
    return doc


# ------------------------------------------------------------------------------------------------
# the upstream and the proxies under comparison

_NGINX_COMMON = """\
daemon off;
master_process on;
user root;
worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 600s;
    tcp_nodelay on;
{body}
}}
"""


def _nginx(name: str, workdir: str, workers: int, http_body: str, port: int) -> Service:
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(exe):
        raise RuntimeError("nginx not found: apt-get install nginx-light")
    d = os.path.join(workdir, name)
    os.mkdir(d, 0o700)
    cfg = os.path.join(d, "nginx.conf")
    with open(cfg, "w") as f:
        f.write(_NGINX_COMMON.format(d=d, workers=workers, body=http_body))
    # -e: nginx 1.22 opens its compiled-in error log before reading the config's; point it here
    return Service(name, [exe, "-p", d, "-e", os.path.join(d, "error.log"), "-c", cfg], d, port)


def start_upstream(workdir: str, workers: int, bodies: dict[str, bytes]) -> Service:
    """nginx serving /<name>.json from a directory: static files, sendfile, cached opens."""
    www = os.path.join(workdir, "www")
    os.mkdir(www, 0o755)
    for name, doc in bodies.items():
        with open(os.path.join(www, f"{name}.json"), "wb") as f:
            f.write(doc)
    port = free_port()
    return _nginx("upstream", workdir, workers, f"""\
    sendfile on;
    tcp_nopush on;
    open_file_cache max=64 inactive=600s;
    open_file_cache_valid 600s;
    etag off;
    types {{ application/json json; }}
    default_type application/json;
    server {{
        listen 127.0.0.1:{port} backlog=4096 reuseport;
        root {www};
        location / {{ }}
    }}""", port)


def start_nginx_proxy(workdir: str, workers: int, upstream_port: int, secret: str) -> Service:
    """nginx as a reverse proxy: keep-alive upstream pool, HTTP/1.1 upstream, the client's
    Authorization replaced by the stored one (as hoopwire injects its credential)."""
    port = free_port()
    return _nginx("nginx", workdir, workers, f"""\
    upstream backend {{
        server 127.0.0.1:{upstream_port};
        keepalive 128;
        keepalive_requests 100000000;
        keepalive_timeout 600s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096 reuseport;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header {UPSTREAM_HEADER} "Bearer {secret}";
            # room for a whole 64 KiB answer in memory: with the defaults (8 x 4 KiB) nginx
            # writes the rest of it to a temporary file on every request
            proxy_buffer_size 16k;
            proxy_buffers 8 16k;
            proxy_busy_buffers_size 32k;
        }}
    }}""", port)


def start_haproxy_http(workdir: str, threads: int, upstream_port: int, secret: str) -> Service:
    """HAProxy in mode http, one thread per --proxy-workers, idle server connections reused
    across client connections (`http-reuse always`), the Authorization header replaced."""
    exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not os.path.exists(exe):
        raise RuntimeError("haproxy not found: apt-get install haproxy")
    d = os.path.join(workdir, "haproxy")
    os.mkdir(d, 0o700)
    port = free_port()
    cfg = os.path.join(d, "haproxy.cfg")
    with open(cfg, "w") as f:
        f.write(f"""global
    maxconn 4096
    nbthread {threads}

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout http-keep-alive 1h

frontend http_in
    bind 127.0.0.1:{port}
    default_backend up

backend up
    http-request set-header {UPSTREAM_HEADER} "Bearer {secret}"
    server up1 127.0.0.1:{upstream_port}
""")
    return Service("haproxy", [exe, "-db", "-f", cfg], d, port)


def hoopwire_config(upstream_port: int, api_key: str, *, guardrails: bool, masking: bool) -> dict:
    conn: dict = {"name": "api", "protocol": "http",
                  "upstream": f"http://127.0.0.1:{upstream_port}",
                  "password_env": UPSTREAM_SECRET_ENV, "allow_groups": ["bench"]}
    if guardrails:
        conn["guardrail"] = [{"pack": p} for p in PACKS] + [
            {"name": "no-deletes", "patterns": [r"^DELETE "], "action": "block"}]
    if masking:
        conn["mask"] = [
            {"paths": ["$.users[*].email", "**.password"], "strategy": "redact"},
            {"detectors": ["EMAIL", "US_SSN", "CREDIT_CARD", "AWS_ACCESS_KEY_ID"],
             "strategy": "redact"},
        ]
    return {
        "identity": {"api_key": [{"name": CLIENT,
                                  "sha256": hashlib.sha256(api_key.encode()).hexdigest(),
                                  "groups": ["bench"]}]},
        "audit": {"enabled": False},     # the other targets record nothing either
        "connection": [conn],
    }


def start_hoopwire(name: str, upstream_port: int, api_key: str, secret: str,
                   workers: int, baseline_tree: str | None = None) -> Gateway:
    config = hoopwire_config(upstream_port, api_key,
                             guardrails=name != "hoopwire-bare",
                             masking=name == "hoopwire-masked")
    if name == "hoopwire-baseline":
        return Gateway(config, env={UPSTREAM_SECRET_ENV: secret}, workers=workers,
                       tree=baseline_tree)
    return Gateway(config, env={UPSTREAM_SECRET_ENV: secret}, workers=workers)


@dataclass
class Target:
    name: str
    port: int
    pid: int | None = None   # the proxy process whose CPU is counted (None: not a proxy)


# ------------------------------------------------------------------------------------------------
# wrk

@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    bad: int = 0                        # non-2xx/3xx answers plus socket errors
    proxy_cpu_us: float | None = None   # the proxy's CPU (user+system) per request
    upstream_cpu_us: float | None = None
    others_cpu: float | None = None     # CPUs' worth busy outside upstream, proxy and wrk


_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_REQS = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m)", re.M)
_PCT = re.compile(r"^\s*(50|99)(?:\.000)?%\s+([\d.]+)(us|ms|s|m)\b", re.M)
_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_SOCKERR = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def parse_wrk(out: str) -> tuple[float, float, float, int, int] | None:
    """(rps, p50 ms, p99 ms, requests, bad answers) from `wrk --latency`'s report."""
    rps, reqs = _RPS.search(out), _REQS.search(out)
    pct = {m.group(1): float(m.group(2)) * _UNIT_MS[m.group(3)] for m in _PCT.finditer(out)}
    if not rps or not reqs or set(pct) != {"50", "99"}:
        return None
    non2xx = _NON2XX.search(out)
    bad = int(non2xx.group(1)) if non2xx else 0
    errs = _SOCKERR.search(out)
    if errs:
        bad += sum(int(x) for x in errs.groups())
    return float(rps.group(1)), pct["50"], pct["99"], int(reqs.group(1)), bad


def wrk_cmd(url: str, token: str, args, duration: int) -> list[str]:
    # the token on the command line is a throwaway API key minted for this run
    return ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{duration}s", "--latency",
            "--timeout", "10s", "-H", f"Authorization: Bearer {token}", url]


def run_wrk(url: str, token: str, target: Target, args, upstream_pid: int) -> Result | None:
    """A short warm-up run (connections opened, pools filled, caches warm), then the counted
    run; the CPU of the proxy, the upstream and the machine over the counted run alone."""
    if args.warmup:
        subprocess.run(wrk_cmd(url, token, args, args.warmup), capture_output=True,
                       timeout=args.warmup + 60)
    cmd = wrk_cmd(url, token, args, args.duration)

    cpu = CpuWindow(proxy=target.pid, upstream=upstream_pid)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=args.duration + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        log(f"    wrk against {target.name} hung; counted as failed")
        return None
    # wrk's own CPU: read from the rusage of the child we just reaped
    cpu.close()
    wrk_cpu = _last_child_cpu()
    parsed = parse_wrk(out)
    if proc.returncode != 0 or parsed is None or parsed[3] == 0:
        tail = "\n".join((err.strip() or out.strip()).splitlines()[-6:])
        log(f"    wrk against {target.name} failed (exit {proc.returncode}):\n{tail}")
        return None
    rps, p50, p99, requests, bad = parsed
    res = Result(rps, p50, p99, requests, bad)
    if cpu.used("proxy") is not None:
        res.proxy_cpu_us = cpu.used("proxy") * 1e6 / requests
    res.upstream_cpu_us = cpu.used("upstream") * 1e6 / requests
    res.others_cpu = cpu.others(also_ours=wrk_cpu)
    return res


_children_cpu = [0.0]


def _last_child_cpu() -> float:
    """CPU seconds (user + system) of the children reaped since the previous call."""
    import resource
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = ru.ru_utime + ru.ru_stime
    delta, _children_cpu[0] = total - _children_cpu[0], total
    return delta


# ------------------------------------------------------------------------------------------------
# before counting anything: every target answers what it should

def fetch(port: int, path: str, token: str | None) -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                 headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def check_target(t: Target, token: str, bodies: dict[str, bytes]) -> str | None:
    """None when `t` serves every body as expected (masked where it masks, refused without a
    token where it authenticates); otherwise why not."""
    for name, doc in bodies.items():
        status, got = fetch(t.port, f"/{name}.json", token)
        if status != 200:
            return f"GET /{name}.json answered {status}: {got[:200]!r}"
        if t.name == "hoopwire-masked":
            if b"@example." in got or b"-secret" in got:
                return f"/{name}.json came back with e-mails or passwords in the clear"
            if not got.startswith(b"{"):
                return f"/{name}.json is no longer JSON: {got[:80]!r}"
        elif got != doc:
            return f"/{name}.json came back changed ({len(got)} bytes, not {len(doc)})"
    if t.name.startswith("hoopwire"):
        status, got = fetch(t.port, f"/{next(iter(bodies))}.json", None)
        if status != 401:
            return f"a request without a token answered {status}, not 401"
        status, got = fetch(t.port, f"/{next(iter(bodies))}.json", token[:-4] + "AAAA")
        if status != 401:
            return f"a request with a wrong key answered {status}, not 401"
        status, got = fetch(t.port, "/admin/users", token)
        if t.name != "hoopwire-bare" and status != 403:
            return f"GET /admin/users answered {status}, not 403 (guardrails not on?)"
    return None


# ------------------------------------------------------------------------------------------------
# reporting

def rps_ratios(runs: dict[str, list[Result | None]], target: str, base: str) -> list[float]:
    return ratios(runs, target, base, value=lambda r: r.rps)


def print_tables(body_names: list[str], targets: list[str],
                 results: dict[str, dict[str, list[Result | None]]], rounds: int,
                 body_size: dict[str, int]) -> None:
    width = max(10, *(len(t) for t in targets))
    for b in body_names:
        runs = results[b]
        print(f"\n{b} JSON body ({body_size[b]} bytes), {rounds} round{'s' if rounds > 1 else ''}")
        print(f"  {'target':<{width}} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'vs direct':>9} "
              f"{'vs nginx':>8} {'proxy CPU us/req':>16} {'upstream us/req':>15} "
              f"{'others CPUs':>11}")
        for t in targets:
            ok = [r for r in runs[t] if r]
            note = "" if len(ok) == len(runs[t]) else f"  ({len(runs[t]) - len(ok)} failed)"
            bad = sum(r.bad for r in ok)
            if bad:
                note += f"  ({bad} non-2xx answers or socket errors)"
            print(f"  {t:<{width}} {fmt(median_or_none([r.rps for r in ok]), '9.0f')} "
                  f"{fmt(median_or_none([r.p50_ms for r in ok]), '7.3f')} "
                  f"{fmt(median_or_none([r.p99_ms for r in ok]), '7.2f')} "
                  f"{fmt(median_or_none(rps_ratios(runs, t, 'direct')), '9.3f')} "
                  f"{fmt(median_or_none(rps_ratios(runs, t, 'nginx')), '8.3f')} "
                  f"{fmt(median_or_none([r.proxy_cpu_us for r in ok]), '16.1f')} "
                  f"{fmt(median_or_none([r.upstream_cpu_us for r in ok]), '15.1f')} "
                  f"{fmt(median_or_none([r.others_cpu for r in ok]), '11.2f')}{note}")
        for t in targets:
            if not t.startswith("hoopwire"):
                continue
            r = rps_ratios(runs, t, "nginx")
            if len(r) >= 3:
                lo, hi = median_interval(r)
                print(f"    {t} / nginx per round: median {statistics.median(r):.3f}, 95% "
                      f"interval {lo:.3f}-{hi:.3f}, range {min(r):.3f}-{max(r):.3f}")
            for base in ("nginx", "hoopwire-baseline"):
                if t == base or base not in runs:
                    continue
                cpu = [(a.proxy_cpu_us, n.proxy_cpu_us) for a, n in zip(runs[t], runs[base])
                       if a and n and a.proxy_cpu_us and n.proxy_cpu_us]
                if cpu:
                    print(f"    {t} proxy CPU / {base}'s, per round: median "
                          f"{statistics.median(a / n for a, n in cpu):.2f}")
        if "hoopwire-masked" in targets:
            kib = body_size[b] / 1024
            masked = median_or_none([r.proxy_cpu_us for r in runs["hoopwire-masked"] if r])
            plain = median_or_none([r.proxy_cpu_us for r in runs.get("hoopwire", []) if r])
            if masked is not None:
                line = f"    hoopwire-masked: {masked / kib:.1f} us proxy CPU per KiB of JSON"
                if plain is not None:
                    line += (f"; masking's own share {(masked - plain) / kib:.1f} us per KiB "
                             f"(masked - hoopwire)")
                vs = median_or_none(rps_ratios(runs, "hoopwire-masked", "hoopwire"))
                if vs is not None:
                    line += f"; req/s masked / not {vs:.3f}"
                print(line)


def versions(targets: list[str]) -> str:
    def first_line(cmd: list[str]) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError, IndexError):
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (r.stdout or r.stderr).splitlines()[0]
        return "?"
    parts = [first_line(["nginx", "-v"]).replace("nginx version: ", ""),
             " ".join(first_line(["wrk", "-v"]).split()[:2])]
    if "haproxy" in targets:
        parts.append(" ".join(first_line(["haproxy", "-v"]).split()[:3]))
    if any(t in HOOPWIRE_TARGETS for t in targets):
        import hoopwire
        parts.append(f"hoopwire {hoopwire.__version__}")
    return "; ".join(parts) + f"; {os.cpu_count()} CPUs; Python {platform.python_version()}"


# ------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default=",".join(ALL_TARGETS),
                    help=f"comma-separated subset of {','.join(ALL_TARGETS + EXTRA_TARGETS)} "
                         f"(default: {','.join(ALL_TARGETS)})")
    ap.add_argument("--bodies", default="1k,64k", help="JSON body sizes: 1k and/or 64k")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--duration", type=int, default=10, help="seconds of each counted wrk run")
    ap.add_argument("--warmup", type=int, default=1,
                    help="seconds of wrk before each counted run (0: none)")
    ap.add_argument("--threads", type=int, default=2, help="wrk -t (default 2)")
    ap.add_argument("--connections", type=int, default=32, help="wrk -c (default 32)")
    ap.add_argument("--proxy-workers", type=int, default=1,
                    help="nginx worker_processes, HAProxy nbthread and hoopwire --workers of the "
                         "proxies (default 1: one core's worth each, the fair comparison)")
    ap.add_argument("--upstream-workers", type=int, default=1,
                    help="worker_processes of the upstream nginx (default 1)")
    ap.add_argument("--seed", type=int, default=None, help="seed for the target order")
    ap.add_argument("--json", metavar="PATH", help="also write every run's numbers as JSON")
    ap.add_argument("--baseline-tree", metavar="DIR",
                    help="the source tree the hoopwire-baseline target runs (with its built "
                         "extensions): e.g. rsync -a --exclude .git ./ /tmp/before/ before a "
                         "change")
    args = ap.parse_args(argv)

    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(targets) - set(ALL_TARGETS) - set(EXTRA_TARGETS)
    if unknown or not targets:
        ap.error(f"unknown targets: {', '.join(sorted(unknown)) or '(none)'}")
    if ("hoopwire-baseline" in targets) != bool(args.baseline_tree):
        ap.error("the hoopwire-baseline target and --baseline-tree go together")
    body_names = [b.strip() for b in args.bodies.split(",") if b.strip()]
    if not body_names or set(body_names) - set(BODIES):
        ap.error(f"--bodies: 1k and/or 64k, not {args.bodies}")
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            ap.error(f"{tool} not found: apt-get install wrk nginx-light")

    rng = random.Random(args.seed)
    api_key = secrets.token_urlsafe(24)
    secret = secrets.token_urlsafe(18)       # the upstream's credential every proxy injects
    bodies = {b: users_json(BODIES[b]) for b in body_names}
    with contextlib.ExitStack() as stack:
        workdir = tempfile.mkdtemp(prefix="hoopwire-wrk-")
        os.chmod(workdir, 0o755)
        stack.callback(shutil.rmtree, workdir, True)
        log(f"starting the upstream nginx ... (load average {load_average()})")
        upstream = start_upstream(workdir, args.upstream_workers, bodies)
        stack.callback(upstream.stop)

        by_name: dict[str, Target] = {}
        for name in targets:
            log(f"starting {name} ...")
            try:
                if name == "direct":
                    by_name[name] = Target(name, upstream.port)
                elif name == "nginx":
                    svc = start_nginx_proxy(workdir, args.proxy_workers, upstream.port, secret)
                    stack.callback(svc.stop)
                    by_name[name] = Target(name, svc.port, svc.pid)
                elif name == "haproxy":
                    svc = start_haproxy_http(workdir, args.proxy_workers, upstream.port, secret)
                    stack.callback(svc.stop)
                    by_name[name] = Target(name, svc.port, svc.pid)
                else:
                    gw = start_hoopwire(name, upstream.port, api_key, secret, args.proxy_workers,
                                        args.baseline_tree)
                    stack.callback(gw.stop)
                    by_name[name] = Target(name, gw.port("api"), gw.pid)
            except (GatewayError, RuntimeError) as e:
                # the other targets are still worth measuring; say why this one is missing
                log(f"  {name} did not start; left out of this run:\n"
                    + "\n".join(str(e).splitlines()[-15:]))
                continue
            problem = check_target(by_name[name], api_key, bodies)
            if problem:
                log(f"  {name} does not answer as it should, left out of this run: {problem}")
                del by_name[name]
        targets = [t for t in targets if t in by_name]
        if not targets:
            log("no target left to measure")
            return 1
        log(versions(targets))

        per_run = args.warmup + args.duration + 1
        total = args.rounds * len(body_names) * len(targets) * per_run
        log(f"{len(body_names)} bodies x {len(targets)} targets x {args.rounds} rounds x "
            f"({args.warmup} + {args.duration} + ~1) s = about {total / 60:.1f} min")
        load_before = load_average()
        results: dict[str, dict[str, list[Result | None]]] = {
            b: {t: [] for t in targets} for b in body_names}
        _last_child_cpu()
        for rnd in range(1, args.rounds + 1):
            for b in body_names:
                order = targets[:]
                rng.shuffle(order)
                for name in order:
                    t = by_name[name]
                    res = run_wrk(f"http://127.0.0.1:{t.port}/{b}.json", api_key, t, args,
                                  upstream.pid)
                    results[b][name].append(res)
                    log(f"  round {rnd}/{args.rounds}  {b:>3}  {name:<16} "
                        + (f"{res.rps:9.0f} req/s p50 {res.p50_ms:.3f} ms p99 {res.p99_ms:.2f} ms, "
                           f"proxy {fmt(res.proxy_cpu_us, '.1f')} us/req, others "
                           f"{res.others_cpu:.2f} CPUs" + (f", {res.bad} BAD" if res.bad else "")
                           if res else "failed"))

        print(f"\n{versions(targets)}\nwrk -t{args.threads} -c{args.connections} "
              f"-d{args.duration}s (after a {args.warmup} s warm-up), keep-alive, the token in "
              f"an Authorization header; upstream: nginx, {args.upstream_workers} worker(s), "
              f"static files; proxies with {args.proxy_workers} worker(s)/thread(s). Medians over "
              f"rounds; ratios are per-round req/s ratios, then the median. Load average before "
              f"{load_before}, after {load_average()}; 'others CPUs' = CPUs' worth of time busy "
              "outside the upstream, the proxy and wrk during the counted run")
        print_tables(body_names, targets, results, args.rounds, {b: BODIES[b] for b in body_names})
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"args": vars(args), "results": [
                    {"body": b, "target": t,
                     "runs": [r.__dict__ if r else None for r in results[b][t]]}
                    for b in body_names for t in targets]}, f, indent=2)
    return 0


if __name__ == "__main__":
    run_main(main)
