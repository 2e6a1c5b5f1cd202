#!/usr/bin/env python3
"""Approval round trip: how long a statement held by an `approve` rule takes to become visible
to an approver, and how quickly it runs once approved. Started here as throwaway processes on
loopback: a PostgreSQL cluster (hoopwire.devserver.PgServer) and one gateway (or two).

    python bench/approval_roundtrip.py                       # 50 round trips, one gateway
    python bench/approval_roundtrip.py -n 200 --poll-interval 100ms
    python bench/approval_roundtrip.py --two-gateways        # held in A, approved through B

What happens, N times: a psycopg client (its own thread, one connection kept open) runs
`DELETE FROM t WHERE id = <i>` through gateway A, where the rule `deletes-need-a-human`
(action "approve", approvers ["dba"]) holds it. This script polls
`GET /api/v1/approvals?status=pending` as the approver ("dana", group dba, a dev JWT) every
--api-poll seconds until the request shows up, then `POST /api/v1/approvals/<id>/approve`, and
waits for the client's execute() to return. Before each statement it sleeps a random time
up to one poll interval (not counted anywhere), so approvals land at random points of the
gateways' store-polling cycle instead of locking onto one phase of it.

What is printed, in milliseconds (median / p90 / max over the N round trips):

    hold visible   client send -> the first pending-list answer that contains the request
                   (includes up to --api-poll of this script's polling)
    approve call   the approve POST itself: request -> response
    release        just before the approve POST -> the client's execute() returns
                   (the number to watch: it includes the approve call)
    total          client send -> execute() returns (hold visible + this script's reaction +
                   release; what the client waited, minus the human)

One gateway: the decision is taken where the statement is held and released at once, so
`release` is the admin API call plus the statement's own run (target: under 50 ms).
--two-gateways: A and B (distinct HOOPWIRE_GATEWAY_ID) share a PostgreSQL state store (a
database in the same throwaway cluster); the client is on A, the approver talks to B, and A
learns of the decision from B's NOTIFY (polling every --poll-interval is only the fallback), so
`release` is the approve call plus a notification and one store read on A.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import queue
import random
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))

import psycopg  # noqa: E402

from helpers import Gateway  # noqa: E402  (tests/helpers.py)
from hoopwire.devserver import PgServer  # noqa: E402
from hoopwire.identity.devtoken import create_dev_key, mint_token  # noqa: E402

ISSUER = "https://idp.approval-bench.invalid"
AUDIENCE = "hoopwire"
DB, DB_USER, STATE_DB = "appdb", "app", "hwstate"
PW_ENV, STATE_PW_ENV = "APPROVAL_BENCH_DB_PASSWORD", "APPROVAL_BENCH_STATE_PASSWORD"
REQUESTER, APPROVER = "agent-7", "dana"
RULE = "deletes-need-a-human"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_seconds(text: str) -> float:
    """`0.25`, `250ms`, `1s` -> seconds."""
    t = text.strip().lower()
    if t.endswith("ms"):
        return float(t[:-2]) / 1000.0
    return float(t[:-1] if t.endswith("s") else t)


# ------------------------------------------------------------------------------------------------
# the admin API, over one kept-alive HTTP connection per gateway

class Api:
    def __init__(self, gw: Gateway, token: str):
        host, _, port = gw.admin_url.removeprefix("http://").rpartition(":")
        self.host, self.port, self.token = host, int(port), token
        self.conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        return self.conn

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        # a GET may be retried on a fresh connection if the server closed the kept-alive one;
        # a POST is not (it could be a second decision)
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else {}
            except (http.client.HTTPException, ConnectionError):
                self.close()
                if method != "GET" or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# ------------------------------------------------------------------------------------------------
# the client whose statements are held

class Client(threading.Thread):
    """One connection through gateway A; runs each statement put on `jobs`, one at a time, and
    puts (index, t_send, t_done, status message or error) on `done`."""

    def __init__(self, dsn: str):
        super().__init__(name="held-client", daemon=True)
        self.dsn = dsn
        self.jobs: queue.Queue = queue.Queue()
        self.done: queue.Queue = queue.Queue()
        self.ready = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                conn.add_notice_handler(lambda diag: None)   # "held for approval ..." notices
                self.ready.set()
                while True:
                    job = self.jobs.get()
                    if job is None:
                        return
                    i, sql = job
                    t_send = time.perf_counter()
                    try:
                        outcome = conn.execute(sql).statusmessage
                    except psycopg.Error as e:
                        outcome = e
                    self.done.put((i, t_send, time.perf_counter(), outcome))
        except BaseException as e:  # noqa: BLE001 -- reported by the main thread
            self.error = e
            self.ready.set()
            self.done.put((None, 0.0, 0.0, e))


# ------------------------------------------------------------------------------------------------

def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    return s[max(0, math.ceil(p / 100.0 * len(s)) - 1)]


def gateway_config(pg: PgServer, issuer: dict, state: dict, rule_timeout: str) -> dict:
    return {
        "identity": {"issuer": [issuer]},
        "connection": [{
            "name": "pg", "protocol": "postgres", "upstream": f"{pg.host}:{pg.port}",
            "database": DB, "user": DB_USER, "password_env": PW_ENV,
            "allow_groups": ["agents", "dba"],
            "guardrail": [{"name": RULE, "patterns": [r"\bdelete\b"], "action": "approve",
                           "approvers": ["dba"], "timeout": rule_timeout}],
        }],
        "admin": {"admin_groups": ["admins"]},
        "state": state,
    }


def wait_pending(api: Api, seen: set[str], interval: float, timeout: float) -> dict:
    """The first pending request not in `seen`."""
    deadline = time.perf_counter() + timeout
    while True:
        status, body = api.call("GET", "/api/v1/approvals?status=pending")
        if status != 200:
            raise RuntimeError(f"GET /api/v1/approvals answered {status}: {body}")
        for row in body.get("approvals", []):
            if row["id"] not in seen and row.get("rule") == RULE:
                return row
        if time.perf_counter() > deadline:
            raise RuntimeError(f"no pending approval request after {timeout} s")
        time.sleep(interval)


def run(args: argparse.Namespace, stack: contextlib.ExitStack) -> int:
    workdir = tempfile.mkdtemp(prefix="hoopwire-approval-bench-")
    stack.callback(shutil.rmtree, workdir, True)

    log("starting PostgreSQL ...")
    pg = stack.enter_context(PgServer())
    db_password = secrets.token_urlsafe(18)
    pg.create_role(DB_USER, db_password)
    pg.create_database(DB, owner=DB_USER)
    pg.sql(f"SET ROLE {DB_USER}; CREATE TABLE t (id int PRIMARY KEY, v text); "
           f"INSERT INTO t SELECT g, 'row ' || g FROM generate_series(0, {args.n}) g;", dbname=DB)

    key = os.path.join(workdir, "dev-key.pem")
    jwks = create_dev_key(key)
    issuer = {"issuer": ISSUER, "audience": AUDIENCE, "jwks_uri": "file://" + jwks,
              "algorithms": ["ES256"]}
    ttl = 3600.0 + args.n * (args.poll_interval or 0.25) * 4

    def token(subject: str, groups: list[str]) -> str:
        return mint_token(key, issuer=ISSUER, audience=AUDIENCE, subject=subject, groups=groups,
                          ttl=ttl)
    requester_token, approver_token = token(REQUESTER, ["agents"]), token(APPROVER, ["dba"])

    state: dict = {}
    env = {PW_ENV: db_password}
    if args.two_gateways:
        pg.create_database(STATE_DB, owner=DB_USER)
        state = {"url": f"postgresql://{DB_USER}@127.0.0.1:{pg.port}/{STATE_DB}",
                 "password_env": STATE_PW_ENV}
        env[STATE_PW_ENV] = db_password
    else:
        state = {"url": "sqlite:///" + os.path.join(workdir, "state.db")}
    if args.poll_interval is not None:
        state["poll_interval"] = args.poll_interval
    config = gateway_config(pg, issuer, state, args.rule_timeout)

    log("starting the gateway" + ("s A and B ..." if args.two_gateways else " ..."))
    holder = Gateway(config, env={**env, "HOOPWIRE_GATEWAY_ID": "bench-a"})
    stack.callback(holder.stop)
    approver_gw = holder
    if args.two_gateways:
        approver_gw = Gateway(config, env={**env, "HOOPWIRE_GATEWAY_ID": "bench-b"})
        stack.callback(approver_gw.stop)
    api = Api(approver_gw, approver_token)
    stack.callback(api.close)

    dsn = (f"host=127.0.0.1 port={holder.port('pg')} user={REQUESTER} dbname={DB} "
           f"password={requester_token} sslmode=disable connect_timeout=10")
    client = Client(dsn)
    client.start()
    stack.callback(client.jobs.put, None)
    client.ready.wait(30)
    if client.error is not None:
        raise RuntimeError(f"the client could not connect: {client.error}")

    poll = args.poll_interval if args.poll_interval is not None else 0.25
    rng = random.Random(args.seed)
    # round trip 0 is not timed (first-use set-up on every side) and deletes row 0
    seen: set[str] = set()
    samples: dict[str, list[float]] = {"hold visible": [], "approve call": [], "release": [],
                                       "total": []}
    for i in range(0, args.n + 1):
        if args.jitter:
            time.sleep(rng.uniform(0.0, poll))
        client.jobs.put((i, f"DELETE FROM t WHERE id = {i}"))
        req = wait_pending(api, seen, args.api_poll, args.timeout)
        t_visible = time.perf_counter()
        seen.add(req["id"])
        t_approve = time.perf_counter()
        status, body = api.call("POST", f"/api/v1/approvals/{req['id']}/approve",
                                {"reason": "approval_roundtrip bench"})
        t_answered = time.perf_counter()
        if status != 200:
            raise RuntimeError(f"approve answered {status}: {body}")
        try:
            j, t_send, t_done, outcome = client.done.get(timeout=args.timeout)
        except queue.Empty:
            raise RuntimeError(f"the client's DELETE was not released within {args.timeout} s") from None
        if j != i or outcome != "DELETE 1":
            raise RuntimeError(f"round trip {i}: the client got {outcome!r}")
        if i == 0:
            continue
        samples["hold visible"].append(t_visible - t_send)
        samples["approve call"].append(t_answered - t_approve)
        samples["release"].append(t_done - t_approve)
        samples["total"].append(t_done - t_send)
        if i % 10 == 0 or i == args.n:
            log(f"  {i}/{args.n}  release {(t_done - t_approve) * 1000:7.2f} ms")

    left = int(pg.sql("SELECT count(*) FROM t", dbname=DB))
    if left != 0:
        raise RuntimeError(f"{left} rows left in t: not every approved DELETE ran")

    mode = ("two gateways sharing a PostgreSQL state store: held in A, approved through B"
            if args.two_gateways else "one gateway, SQLite state store")
    print(f"\napproval round trip: {mode}")
    print(f"{args.n} round trips (after 1 untimed); state poll_interval {poll * 1000:g} ms "
          f"({'set' if args.poll_interval is not None else 'the default'}); this script polls "
          f"the pending list every {args.api_poll * 1000:g} ms"
          f"{', random pause before each statement' if args.jitter else ''}; "
          f"PostgreSQL {pg.sql('SHOW server_version')}; {os.cpu_count()} CPUs")
    print(f"  {'ms':<14} {'median':>9} {'p90':>9} {'max':>9}")
    for name, values in samples.items():
        ms = [v * 1000.0 for v in values]
        print(f"  {name:<14} {statistics.median(ms):9.2f} {percentile(ms, 90):9.2f} {max(ms):9.2f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--iterations", dest="n", type=int, default=50,
                    help="timed round trips (default 50)")
    ap.add_argument("--poll-interval", type=parse_seconds, default=None, metavar="SECONDS",
                    help="[state] poll_interval: how often a gateway looks for decisions taken "
                         "elsewhere, e.g. 100ms or 0.25 (default: the gateway's own, 250ms)")
    ap.add_argument("--two-gateways", action="store_true",
                    help="hold in gateway A, approve through gateway B, sharing a PostgreSQL "
                         "state store")
    ap.add_argument("--api-poll", type=parse_seconds, default=0.002, metavar="SECONDS",
                    help="how often this script polls the pending list (default 2ms)")
    ap.add_argument("--no-jitter", dest="jitter", action="store_false",
                    help="no random pause before each statement (approvals may then lock onto "
                         "one phase of the store polling)")
    ap.add_argument("--seed", type=int, default=None, help="seed for the random pauses")
    ap.add_argument("--rule-timeout", default="60s",
                    help="the approve rule's timeout (default 60s)")
    ap.add_argument("--timeout", type=float, default=30.0,
                    help="seconds to wait for a request to appear or a statement to return")
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error("--iterations must be at least 1")

    # SIGTERM unwinds like Ctrl-C, so everything started is stopped by the ExitStack
    def on_sigterm(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_sigterm)
    with contextlib.ExitStack() as stack:
        return run(args, stack)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted; everything started here has been stopped")
        sys.exit(130)
