"""Faults lose nothing: a two-worker gateway with the audit log on, under a small load of real
clients, while its worker, its upstream backends, its clients and its PostgreSQL are killed.

One scenario (the `ran` fixture) runs against a PostgreSQL of its own (it is restarted and made
to crash-recover) and `hoopwire serve --workers 2`:

    load         CLIENTS psycopg threads, one statement after another (a small SELECT, a 3,000-
                 row SELECT, a COPY TO STDOUT, an INSERT), each carrying a unique tag in an
                 identifier (`AS f3_17`: literals are masked in the audit, identifiers are not);
                 each thread notes what succeeded and what failed with which SQLSTATE, and
                 reconnects (a new subject per connection) when its session is gone
    worker       SIGKILL of worker 1 (the supervisor restarts it)
    terminate    pg_terminate_backend of two of the gateway's upstream backends
    backend-kill SIGKILL of one upstream backend: PostgreSQL ends every backend and recovers
    client-kill  raw clients reset their socket mid-result, mid-COPY TO and mid-COPY FROM
    pg-restart   pg_ctl restart -m fast under the load

An idle raw session sits through each session-ending fault and reads exactly what it is told
before the close. After each fault a new session must work. Then: `hoopwire audit verify` passes over every
worker's chain; every statement a client saw succeed is in the audit log exactly once, as
allowed, except those of the killed worker's sessions that finished within the window its
SIGKILL may take (flush_interval, here 50 ms; bounded at KILL_WINDOW); every INSERT a client
saw succeed is in the table; and /metrics' statement counter lies between what the clients
could have sent and what they saw succeed (less the killed worker's last publication window),
and is never lower after the kill than before it. The costs each fault had for the clients are asserted as the README's operations table states
them ("What a fault costs a client").

Exact equalities: with no fault, /metrics counts exactly the statements sent (checked first,
over both workers). Across faults it cannot be exact: a statement that reaches the relay is
counted whether or not its answer reaches the client (the upstream may die first), and a
SIGKILLed worker takes the counts it had not published yet (every 0.25 s) and the records it
had not flushed (every flush_interval) with it.

The last test fills the audit "disk" (a file-size limit on both workers) under two sessions on
the two workers: each refusal must be recorded against its own statement and session, and a
denied approval after the refusals as a block.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gwfixtures import conninfo, gateway_config, gateway_env
from helpers import APP_DB, Gateway, wait_until
from hoopwire.audit import read_records
from hoopwire.devserver import PgServer
from pgraw import error_fields, login, parse_messages, typed

pytestmark = pytest.mark.faults

GW_ID = "faults"
CLIENTS = 4
PHASE_SECONDS = 1.2           # load between faults: enough for every client to run statements
FLUSH = 0.05                  # the audit's flush_interval here
# How much of a SIGKILLed worker's last work the test lets it lose: its unflushed audit
# records (FLUSH) and its unpublished relay counts (STATS_PUBLISH_INTERVAL, 0.25 s), each
# late by however long the worker's loop was busy on a machine shared with other runs.
KILL_WINDOW = 1.0
TAG = re.compile(r"\bf(\d+)_(\d+)\b")


# ------------------------------------------------------------------------------------------------
# the load

@dataclass
class Done:
    tag: str
    kind: str
    at: float          # time.time() when the client had the whole answer
    subject: str


@dataclass
class Failed:
    tag: str
    kind: str
    at: float
    subject: str
    code: str          # SQLSTATE, or "closed" (the connection ended without one)
    message: str


@dataclass
class ConnectFailed:
    at: float
    code: str
    message: str


KINDS = ("small", "big", "copy", "insert")


class Client(threading.Thread):
    """One client of the load: statements one after another, a new session when one ends."""

    def __init__(self, rig: "Rig", index: int):
        super().__init__(name=f"fault-client-{index}", daemon=True)
        self.rig = rig
        self.index = index
        self.stop = threading.Event()
        self.done: list[Done] = []
        self.failed: list[Failed] = []
        self.connect_failed: list[ConnectFailed] = []
        self.attempts = 0              # statements handed to the driver (each at most one message)
        self.sessions = 0
        self.conn: psycopg.Connection | None = None
        self.rotate = threading.Event()    # set: end this session and start another
        self.subject = ""
        self.seq = 0

    def run(self) -> None:
        while not self.stop.is_set():
            if self.rotate.is_set():
                self.rotate.clear()
                self._drop()
            if self.conn is None and not self._connect():
                self.stop.wait(0.05)
                continue
            kind = KINDS[self.seq % len(KINDS)]
            tag = f"f{self.index}_{self.seq}"
            self.seq += 1
            self.attempts += 1
            try:
                self._one(kind, tag)
                self.done.append(Done(tag, kind, time.time(), self.subject))
            except psycopg.Error as e:
                self.failed.append(Failed(tag, kind, time.time(), self.subject,
                                          e.sqlstate or "closed", str(e)[:300]))
                if self.conn.broken or self.conn.closed:
                    self._drop()
        self._drop()

    def _connect(self) -> bool:
        self.subject = f"load{self.index}-{self.sessions}"
        self.sessions += 1
        try:
            self.conn = psycopg.connect(
                conninfo(self.rig.gw, self.rig.idp.token(self.subject), user=self.subject),
                autocommit=True)
            return True
        except psycopg.Error as e:
            self.connect_failed.append(ConnectFailed(time.time(), _login_error(e),
                                                     str(e)[:300]))
            return False

    def _drop(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001 -- a broken connection may fail to close
                pass
        self.conn = None

    def _one(self, kind: str, tag: str) -> None:
        c = self.conn
        if kind == "small":
            assert c.execute(f"SELECT {self.seq} AS {tag}").fetchall() == [(self.seq,)]
        elif kind == "big":
            rows = c.execute(f"SELECT g AS {tag} FROM generate_series(1, 3000) g").fetchall()
            assert len(rows) == 3000 and rows[-1] == (3000,)
        elif kind == "copy":
            with c.cursor() as cur:
                with cur.copy(f"COPY (SELECT g AS {tag} FROM generate_series(1, 500) g) "
                              "TO STDOUT") as cp:
                    data = b"".join(bytes(b) for b in cp)
            assert data.count(b"\n") == 500
        else:
            c.execute(f"INSERT INTO fault_rows AS {tag} (tag) VALUES ('{tag}')")


# libpq keeps no SQLSTATE of an error during the login (psycopg's sqlstate is None): the
# FATAL's text says which one it was
LOGIN_ERRORS = {
    "the database system is in recovery mode": "57P03",       # PostgreSQL's, passed on
    "the database system is starting up": "57P03",
    "the database system is shutting down": "57P03",
    "the database system is not yet accepting connections": "57P03",
    "could not connect to the upstream server": "08006",      # the gateway's
}


def _login_error(e: psycopg.Error) -> str:
    text = str(e)
    for message, code in LOGIN_ERRORS.items():
        if message in text:
            return code
    m = re.search(r"FATAL:\s+(.*)", text)
    return m.group(1).strip() if m else text.strip().splitlines()[-1][:120]


# ------------------------------------------------------------------------------------------------
# the rig

@dataclass
class Rig:
    pg: PgServer
    gw: Gateway
    idp: object
    audit: str
    sent: int = 0                  # statements the test itself sent through the gateway
    lock: threading.Lock = field(default_factory=threading.Lock)

    def probe(self, what: str, timeout: float = 30.0) -> None:
        """A new session works (the gateway serves after `what`): retried while PostgreSQL
        comes back, within `timeout`."""
        last = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            subject = "probe-" + secrets.token_hex(3)
            try:
                with psycopg.connect(conninfo(self.gw, self.idp.token(subject), user=subject,
                                              connect_timeout=5), autocommit=True) as c:
                    with self.lock:
                        self.sent += 1
                    assert c.execute("SELECT 41 + 1").fetchall() == [(42,)]
                    return
            except psycopg.Error as e:
                last = e
                time.sleep(0.1)
        raise AssertionError(f"no new session works after {what}: {last}\n"
                             f"{self.gw.log_text()[-3000:]}")

    def count_sent(self, n: int = 1) -> None:
        with self.lock:
            self.sent += n


def worker_pids(gw: Gateway) -> dict[int, int]:
    return {int(i): int(p) for i, p in
            re.findall(r"worker started worker=(\d+) pid=(\d+)", gw.log_text())}


def scrape_statements(gw: Gateway) -> int:
    with urllib.request.urlopen(gw.admin_url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "hoopwire_statements_total":
                total += s.value
    return int(total)


def settled_statements(gw: Gateway) -> int:
    """/metrics' statement count once every live worker has published what it counted: the
    same value over a full publication interval (0.25 s) and more."""
    last = scrape_statements(gw)
    deadline = time.monotonic() + 20
    while True:
        time.sleep(0.6)
        now = scrape_statements(gw)
        if now == last:
            return now
        assert time.monotonic() < deadline, "/metrics never settles"
        last = now


def app_backends(pg: PgServer) -> list[int]:
    out = pg.sql("SELECT pid FROM pg_stat_activity WHERE usename = 'app' "
                 "AND backend_type = 'client backend' ORDER BY backend_start")
    return [int(x) for x in out.split()]


def pg_restart(pg: PgServer) -> None:
    """Fast shutdown (sessions get 57P01) and start, on the same port and data directory."""
    r = pg._run([pg._bin("pg_ctl"), "restart", "-m", "fast", "-w", "-t", "60", "-D", pg.datadir,
                 "-l", pg.logfile, "-s"], check=False, timeout=90, new_session=True)
    assert r.returncode == 0, (r.stdout, r.stderr, pg.log_tail())


def wait_pg(pg: PgServer, timeout: float = 60.0) -> None:
    def up():
        try:
            return pg.sql("SELECT NOT pg_is_in_recovery()") == "t"
        except Exception:  # noqa: BLE001 -- psql fails while the server recovers
            return False
    wait_until(up, timeout, "PostgreSQL accepting connections again")


def gone(pg: PgServer, pid: int) -> bool:
    return pg.sql(f"SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}") == "0"


def _reset(conn) -> None:
    """Close like a killed client: a RST, nothing more."""
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.sock.close()


def _backend_pid(conn) -> int:
    conn.send(typed(b"Q", b"SELECT pg_backend_pid()\0"))
    pid = None
    while True:
        kind, body = conn.read_message(10)
        if kind == b"D":
            pid = int(body[6:].decode())
        elif kind == b"Z":
            return pid


def idle_session(rig: Rig, name: str, on_worker: int | None = None):
    """A raw session that sits idle through a fault (on worker `on_worker` if given); its
    upstream backend's pid in `.backend`."""
    host, port = rig.gw.address("pg")
    for n in range(40):
        subject = f"idle-{name}-{n}"
        c = login(host, port, rig.idp.token(subject), user=subject, dbname=APP_DB, timeout=10)
        c.backend = _backend_pid(c)
        rig.count_sent()
        if on_worker is None:
            return c
        start = wait_until(lambda: next((r for r in read_records(rig.audit)
                                         if r["type"] == "session.start"
                                         and r["subject"] == subject), None), 20,
                           "an idle session's session.start", rig.gw)
        if start["gw"] == f"{GW_ID}/{on_worker}":
            return c
        c.close()
    raise AssertionError(f"no session lands on worker {on_worker}")


def heard(conn) -> list[tuple[str, str, str]]:
    """What an idle session is told before its connection closes: (message type, severity,
    SQLSTATE) of each message; "eof" or "reset" last."""
    data, how = conn.read_until_closed(20)
    msgs, tail = parse_messages(data)
    assert tail == b"", tail
    out = []
    for kind, body in msgs:
        f = error_fields(body) if kind in (b"E", b"N") else {}
        out.append((kind.decode(), f.get("V", f.get("S", "")), f.get("C", "")))
    conn.close()
    return out + [(how, "", "")]


def kill_clients_mid_stream(rig: Rig) -> dict[str, int]:
    """Raw clients that reset their socket mid-result, mid-COPY TO and mid-COPY FROM; each
    one's upstream backend must go (within 15 s) and the COPY FROM must leave nothing."""
    host, port = rig.gw.address("pg")
    pids = {}
    for what in ("mid-result", "mid-copy-out", "mid-copy-in"):
        subject = f"raw-{what}"
        c = login(host, port, rig.idp.token(subject), user=subject, dbname=APP_DB, timeout=10)
        pid = _backend_pid(c)
        if what == "mid-result":
            q = "SELECT g, repeat('x', 200) FROM generate_series(1, 500000) g"
        elif what == "mid-copy-out":
            q = "COPY (SELECT g, repeat('x', 200) FROM generate_series(1, 500000) g) TO STDOUT"
        else:
            q = "COPY fault_copy FROM STDIN"
        c.send(typed(b"Q", q.encode() + b"\0"))
        rig.count_sent(2)
        if what == "mid-copy-in":
            kind, _ = c.read_message(10)
            assert kind == b"G", kind
            for i in range(50):
                c.send(typed(b"d", f"{i}\trow {i}\n".encode()))
        else:
            got = 0
            while got < 64 * 1024:          # well into the result
                kind, body = c.read_message(10)
                got += len(body) + 5
                assert kind != b"E", body
        _reset(c)
        pids[what] = pid
    for what, pid in pids.items():
        wait_until(lambda: gone(rig.pg, pid), 15,
                   f"the upstream backend of the client killed {what}", rig.gw)
    assert rig.pg.sql("SELECT count(*) FROM fault_copy", dbname=APP_DB) == "0"
    return pids


# ------------------------------------------------------------------------------------------------
# the scenario

@pytest.fixture(scope="module")
def ran(pki, idp, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    audit = str(tmp / "audit")
    # synchronous_commit on: a commit the client saw must survive a backend's SIGKILL (the
    # devserver turns it off for speed; fsync can stay off, no machine crashes here)
    with PgServer(tls_cert=pki.server_cert, tls_key=pki.server_key, hba="scram-sha-256",
                  extra_conf={"synchronous_commit": True}) as pg:
        pg.create_role("app", secrets.token_urlsafe(18))
        pg.create_database(APP_DB, owner="app")
        pg.sql("SET ROLE app;\nCREATE TABLE fault_rows (tag text PRIMARY KEY);\n"
               "CREATE TABLE fault_copy (id int, t text);\n", dbname=APP_DB)
        cfg = gateway_config(pg, idp)
        cfg["audit"] = {"path": audit, "flush_interval": f"{int(FLUSH * 1000)}ms"}
        env = {"APP_DB_PASSWORD": pg.passwords["app"], "HOOPWIRE_GATEWAY_ID": GW_ID}
        with Gateway(cfg, env=env, workers=2) as gw:
            rig = Rig(pg, gw, idp, audit)
            wait_until(lambda: len(worker_pids(gw)) == 2 and
                       gw.log_text().count("worker ready") >= 2, 30, "both workers ready", gw)
            out = {"rig": rig, "phases": [], "t0": time.time()}

            # no fault yet: /metrics counts exactly the statements sent, over both workers
            before = settled_statements(gw)
            conns = [psycopg.connect(conninfo(gw, idp.token(f"exact-{i}"), user=f"exact-{i}"),
                                     autocommit=True) for i in range(6)]
            for i, c in enumerate(conns):
                for j in range(10):
                    c.execute(f"SELECT {j} AS e{i}_{j}").fetchall()
                c.close()
            rig.count_sent(60)
            out["exact"] = (before, settled_statements(gw), 60)

            clients = [Client(rig, i) for i in range(CLIENTS)]
            for c in clients:
                c.start()
            out["clients"] = clients

            def phase(name: str) -> float:
                t = time.time()
                out["phases"].append((name, t))
                return t

            time.sleep(PHASE_SECONDS)
            on_w1 = wait_until(lambda: _load_on_worker(out, rig, clients, 1), 30,
                               "a client of the load on worker 1", gw)
            out["on_killed"] = on_w1

            # a worker killed outright
            idle = idle_session(rig, "worker", on_worker=1)
            survivor = idle_session(rig, "survivor", on_worker=0)
            victim = worker_pids(gw)[1]
            out["killed_pid"] = victim
            out["metrics_before_kill"] = scrape_statements(gw)
            phase("worker")
            os.kill(victim, signal.SIGKILL)
            out["t_kill"] = time.time()      # the worker may still run until here
            wait_until(lambda: worker_pids(gw).get(1) not in (None, victim), 30,
                       "the supervisor starting another worker 1", gw)
            out["idle"] = {"worker": heard(idle)}
            # a session of the other worker, idle through it, goes on as if nothing happened
            survivor.send(typed(b"Q", b"SELECT 7\0"))
            rig.count_sent()
            got = [survivor.read_message(10)[0] for _ in range(4)]
            assert got == [b"T", b"D", b"C", b"Z"], got
            survivor.close()
            out["metrics_after_kill"] = scrape_statements(gw)     # it is retired by now
            rig.probe("a worker's SIGKILL")
            time.sleep(PHASE_SECONDS)

            # two upstream backends terminated
            idle = idle_session(rig, "terminate")
            idle_pid = idle.backend
            phase("terminate")
            victims = [idle_pid] + [p for p in app_backends(pg) if p != idle_pid][:1]
            pg.sql("SELECT pg_terminate_backend(pid) FROM unnest(ARRAY["
                   + ",".join(map(str, victims)) + "]::int[]) pid")
            out["idle"]["terminate"] = heard(idle)
            rig.probe("pg_terminate_backend")
            time.sleep(PHASE_SECONDS)

            # one upstream backend killed: the postmaster ends them all and recovers
            idle = idle_session(rig, "backend-kill")
            phase("backend-kill")
            os.kill([p for p in app_backends(pg) if p != idle.backend][0], signal.SIGKILL)
            out["idle"]["backend-kill"] = heard(idle)
            wait_pg(pg)
            rig.probe("a backend's SIGKILL and crash recovery")
            time.sleep(PHASE_SECONDS)

            # clients that go away mid-result and mid-COPY
            phase("client-kill")
            out["raw_pids"] = kill_clients_mid_stream(rig)
            rig.probe("clients reset mid-result and mid-COPY")
            time.sleep(PHASE_SECONDS)

            # PostgreSQL restarted under the load
            idle = idle_session(rig, "pg-restart")
            phase("pg-restart")
            pg_restart(pg)
            out["idle"]["pg-restart"] = heard(idle)
            rig.probe("a PostgreSQL restart")
            time.sleep(PHASE_SECONDS)

            phase("end")
            for c in clients:
                c.stop.set()
            for c in clients:
                c.join(60)
                assert not c.is_alive(), f"{c.name} hangs"
            rig.probe("the load")
            out["metrics"] = settled_statements(gw)
            out["inserted"] = set(pg.sql("SELECT tag FROM fault_rows", dbname=APP_DB).split())
            assert gw.proc.poll() is None, "the gateway exited"
            out["rc"] = gw.stop(timeout=20)
            out["log"] = gw.log_text()
        out["records"] = list(read_records(audit))
        out["verify"] = subprocess.run([sys.executable, "-m", "hoopwire", "audit", "verify",
                                        audit], capture_output=True, text=True, timeout=120)
    out["costs"] = costs(out)
    with open(os.path.join(str(tmp), "costs.json"), "w") as f:
        json.dump(out["costs"], f, indent=1)
    print("fault costs:", json.dumps(out["costs"], indent=1))
    print("idle sessions heard:", out["idle"])
    for k, v in out["samples"].items():
        print(k, v)
    for c in out["clients"]:
        for f in c.failed:
            print("failed", phase_of(out, f.at), f.kind, f.code, f.message.splitlines()[0][:80])
    yield out


def _load_on_worker(out, rig: Rig, clients: list[Client], index: int) -> list[str]:
    """The subjects of the load's current sessions that worker `index` serves; when there is
    none, one client is made to start another session (SO_REUSEPORT spreads them by hash)."""
    starts = {r["subject"]: r["gw"] for r in read_records(rig.audit)
              if r["type"] == "session.start"}
    on = [c.subject for c in clients if starts.get(c.subject) == f"{GW_ID}/{index}"]
    if not on:
        victim = clients[out.setdefault("rotations", 0) % len(clients)]
        out["rotations"] += 1
        victim.rotate.set()
        time.sleep(0.2)
    return on


def phase_of(out, at: float) -> str:
    name = "load"
    for n, t in out["phases"]:
        if at >= t:
            name = n
    return name


def costs(out) -> dict:
    """What each phase cost the clients: failed statements and logins by SQLSTATE."""
    res: dict[str, dict] = {}
    for c in out["clients"]:
        for f in c.failed:
            res.setdefault(phase_of(out, f.at), {}).setdefault("statements", Counter())[
                f.code] += 1
        for f in c.connect_failed:
            res.setdefault(phase_of(out, f.at), {}).setdefault("logins", Counter())[
                f.code] += 1
    samples = {}
    for c in out["clients"]:
        for f in c.failed + c.connect_failed:
            samples.setdefault((phase_of(out, f.at), f.code), f.message)
    out["samples"] = samples
    return {p: {k: dict(v) for k, v in d.items()} for p, d in res.items()}


# ------------------------------------------------------------------------------------------------
# the checks

def _done(ran) -> list[Done]:
    return [d for c in ran["clients"] for d in c.done]


def _sessions(ran) -> dict[str, tuple[str, str, float]]:
    """subject -> (session id, gateway id, ts) from the session.start records."""
    return {r["subject"]: (r["session"], r["gw"], r["ts"]) for r in ran["records"]
            if r["type"] == "session.start"}


def _on_killed_worker(ran, subject: str) -> bool:
    """Whether `subject`'s session was served by the worker that was SIGKILLed: its
    session.start names worker 1 from before the kill, or (killed before its flush) there is
    none at all."""
    s = _sessions(ran).get(subject)
    return s is None or (s[1] == f"{GW_ID}/1" and s[2] <= ran["t_kill"])


def _in_kill_window(ran, d) -> bool:
    # (slack after it: a client thread notes the time when it next holds the GIL, which can be
    # after a SIGKILL that came later than the answer -- 12 ms seen)
    return ran["t_kill"] - KILL_WINDOW <= d.at <= ran["t_kill"] + 0.25 and \
        _on_killed_worker(ran, d.subject)


def test_the_load_ran_through_every_fault(ran):
    assert ran["rc"] == 0, ran["log"][-3000:]
    done = _done(ran)
    for name, _ in ran["phases"][:-1]:
        assert any(phase_of(ran, d.at) == name for d in done), f"nothing succeeded after {name}"
    assert {d.kind for d in done} == set(KINDS)
    assert "Traceback" not in ran["log"], ran["log"][-5000:]


def test_audit_verify_passes_over_every_workers_chain(ran):
    v = ran["verify"]
    assert v.returncode == 0 and v.stdout.startswith("ok"), v.stdout + v.stderr
    chains = {r.get("chain") for r in ran["records"] if r["type"] == "chain.start"} or \
        {r["gw"] for r in ran["records"] if "gw" in r}
    # worker 0, worker 1 killed, worker 1 restarted (and the supervisor's, if it writes one)
    assert len(chains) >= 3, chains


def test_every_statement_a_client_saw_succeed_is_recorded_once(ran):
    recorded: Counter = Counter()
    verdicts = {}
    for r in ran["records"]:
        if r["type"] == "statement":
            for m in TAG.finditer(r["statement"]):
                recorded[m.group(0)] += 1
                verdicts[m.group(0)] = r["verdict"]
    assert not [t for t, n in recorded.items() if n > 1], "recorded twice"
    done = _done(ran)
    missing = [d for d in done if d.tag not in recorded]
    excused = [d for d in missing if _in_kill_window(ran, d)]
    starts = _sessions(ran)
    assert [d for d in missing if d not in excused] == [], (
        len(done), [(d.tag, d.kind, d.subject, starts.get(d.subject), phase_of(ran, d.at),
                     round(d.at - ran["t_kill"], 3)) for d in missing if d not in excused][:20])
    oldest = max((ran["t_kill"] - d.at for d in missing), default=0)
    print(f"{len(done)} succeeded, {len(missing)} not recorded (all of the killed worker's, "
          f"the oldest finished {oldest * 1000:.0f} ms before the SIGKILL)")
    assert {verdicts[d.tag] for d in done if d.tag in verdicts} == {"allow"}


def test_every_insert_a_client_saw_succeed_is_in_the_table(ran):
    inserted = {d.tag for d in _done(ran) if d.kind == "insert"}
    assert inserted and inserted <= ran["inserted"]


def test_metrics_count_what_the_clients_did(ran):
    before, after, sent = ran["exact"]
    assert after - before == sent, "with no fault /metrics counts exactly what was sent"
    done = _done(ran)
    clients = ran["clients"]
    attempts = sum(c.attempts for c in clients) + ran["rig"].sent
    lost_bound = sum(1 for d in done if _in_kill_window(ran, d))
    m = ran["metrics"]
    # what the killed worker had published stays in the sums: never less after its death
    assert ran["metrics_after_kill"] >= ran["metrics_before_kill"]
    # every statement sent reached the relay at most once, and every one that succeeded went
    # through it -- less what the killed worker had not published
    assert len(done) - lost_bound <= m - before <= attempts, (len(done), lost_bound, m, before,
                                                              attempts)
    # and the audit: every statement record is a statement the relay counted, less the
    # killed worker's records it flushed but had not published
    records = [r for r in ran["records"] if r["type"] == "statement"]
    killed_late = sum(1 for r in records if r["gw"] == f"{GW_ID}/1" and
                      ran["t_kill"] - KILL_WINDOW <= r["ts"] <= ran["t_kill"])
    assert len(records) - killed_late <= m, (len(records), killed_late, m)
    print(f"metrics {m - before} statements: {len(done)} succeeded, {attempts} sent at most, "
          f"{len(records)} recorded; killed worker's window: {lost_bound} succeeded, "
          f"{killed_late} recorded")


def _failures(ran, phase: str) -> list[Failed]:
    return [f for c in ran["clients"] for f in c.failed if phase_of(ran, f.at) == phase]


def _login_failures(ran, phase: str) -> list[ConnectFailed]:
    return [f for c in ran["clients"] for f in c.connect_failed if phase_of(ran, f.at) == phase]


def test_each_fault_costs_a_client_what_the_readme_says(ran):
    """The README's table ("What a fault costs a client"), as the clients of the load met it."""
    starts = _sessions(ran)
    # idle sessions, told exactly this before their connection closes
    idle = {k: [m[:3] for m in v[:-1]] for k, v in ran["idle"].items()}
    assert idle == {"worker": [],                                   # no word: the process died
                    "terminate": [("E", "FATAL", "57P01")],        # the server's own
                    "backend-kill": [("N", "WARNING", "57P02"),    # the server's, then ours
                                     ("E", "FATAL", "08006")],
                    "pg-restart": [("E", "FATAL", "57P01")]}, ran["idle"]
    # a worker killed: its sessions see their connection closed, no SQLSTATE; the other
    # worker's sessions nothing; new logins work
    worker = _failures(ran, "worker")
    assert worker and {f.code for f in worker} == {"closed"}, worker
    assert all(_on_killed_worker(ran, f.subject) for f in worker), \
        [(f.subject, starts.get(f.subject)) for f in worker]
    assert set(ran["on_killed"]) <= {f.subject for f in worker}
    assert not _login_failures(ran, "worker")
    # backends terminated: the server's FATAL 57P01, to those sessions only
    # ("closed": a client between statements meets a closed socket with its next one, and
    # the reset that answers it discards the FATAL still unread -- as with PostgreSQL itself)
    assert {f.code for f in _failures(ran, "terminate")} <= {"57P01", "closed"}
    assert len(_failures(ran, "terminate")) <= 1          # one load session's backend
    # a backend killed: PostgreSQL ends every backend (a WARNING, no error) and recovers: the
    # gateway ends each session with FATAL 08006; logins meanwhile get the server's 57P03
    # ("closed" too when the backend died in the middle of a message: the gateway cannot
    # finish it, so it cannot add its own)
    assert {f.code for f in _failures(ran, "backend-kill")} <= {"08006", "closed"}
    assert _failures(ran, "backend-kill")
    assert {f.code for f in _login_failures(ran, "backend-kill")} <= {"57P03", "08006"}
    # clients that vanish mid-result or mid-COPY cost the others nothing
    assert not _failures(ran, "client-kill") and not _login_failures(ran, "client-kill")
    # a fast restart: 57P01 to every session (or 08006 when the server's goes unread), then
    # 57P03 or 08006 at login until it is back
    assert {f.code for f in _failures(ran, "pg-restart")} <= {"57P01", "08006", "closed"}
    assert _failures(ran, "pg-restart")
    assert {f.code for f in _login_failures(ran, "pg-restart")} <= {"57P03", "08006"}
    # nothing failed outside a fault, and nothing failed any other way
    assert not _failures(ran, "load") and not _failures(ran, "end")


# ------------------------------------------------------------------------------------------------
# a full audit disk: each refusal recorded as a refusal, of its own statement and session

APPROVE = [{"name": "deletes-need-a-human", "patterns": [r"\bdelete\b"], "action": "approve",
            "approvers": ["dba"], "timeout": "1s"}]


def _fsize(pids, limit: str) -> None:
    for pid in pids:
        subprocess.run(["prlimit", "--pid", str(pid), f"--fsize={limit}"], check=True)


def test_refusals_are_recorded_against_their_own_statement_and_session(pg, idp, tmp_path):
    """Two sessions on the two workers, the audit made unwritable (a file-size limit on both
    workers: EFBIG, as a full disk) and writable again, then a statement of one of them denied
    (its approval times out). Each refused statement's record names that statement, its
    session, "refused" and 53100; the denial after the refusals is a block, not a refusal --
    the relay says which marker is which, the recorder no longer guesses it from the time."""
    table = "refuse_" + secrets.token_hex(4)
    pg.sql(f"CREATE TABLE {table} (id int primary key); INSERT INTO {table} VALUES (1);"
           f"ALTER TABLE {table} OWNER TO app;", dbname=APP_DB)
    path = str(tmp_path / "audit")
    cfg = gateway_config(pg, idp, guardrail=APPROVE, allow_groups=["agents", "dba"])
    cfg["audit"] = {"path": path, "flush_interval": "50ms", "on_write_failure": "fail-closed"}
    cfg["state"] = {"url": f"sqlite:///{tmp_path}/state.db", "poll_interval": "100ms"}
    env = {**gateway_env(pg), "HOOPWIRE_GATEWAY_ID": GW_ID}
    refused: dict[str, set[str]] = {"a": set(), "b": set()}
    with Gateway(cfg, env=env, workers=2) as gw:
        wait_until(lambda: gw.log_text().count("worker ready") >= 2, 30, "both workers", gw)

        def session_of(subject):
            return next((r for r in read_records(path) if r["type"] == "session.start"
                         and r["subject"] == subject), None)

        def connect(name, n):
            subject = f"refuse-{name}-{n}"
            c = psycopg.connect(conninfo(gw, idp.token(subject), user=subject), autocommit=True)
            c.execute(f"SELECT 1 AS {name}_hello").fetchall()
            return c, wait_until(lambda: session_of(subject), 20, "a session.start", gw)

        a, a_start = connect("a", 0)
        for n in range(40):                  # b on the other worker
            b, b_start = connect("b", n)
            if b_start["gw"] != a_start["gw"]:
                break
            b.close()
        assert b_start["gw"] != a_start["gw"], "every session on one worker"
        files = [os.path.join(path, f) for f in os.listdir(path) if f.endswith(".jsonl")]
        _fsize(worker_pids(gw).values(), f"{max(os.path.getsize(f) for f in files)}:unlimited")
        seq = 0
        deadline = time.monotonic() + 30
        while not (len(refused["a"]) >= 2 and len(refused["b"]) >= 2):
            for name, c in (("a", a), ("b", b)):
                seq += 1
                tag = f"{name}_try_{seq}"
                try:
                    if seq % 2:          # both protocols: psycopg's extended, and a Query
                        c.execute(f"SELECT {seq} AS {tag}").fetchall()
                    else:
                        res = c.pgconn.exec_(f"SELECT {seq} AS {tag}".encode())
                        if res.error_field(psycopg.pq.DiagnosticField.SQLSTATE) == b"53100":
                            raise psycopg.errors.DiskFull("refused")
                except psycopg.errors.DiskFull:
                    refused[name].add(tag)
            assert time.monotonic() < deadline, gw.log_text()[-3000:]
        # a fast-path function call (pg_backend_pid, by OID) is refused the same way
        host, port = gw.address("pg")
        raw = login(host, port, idp.token("refuse-fastpath"), user="refuse-fastpath",
                    dbname=APP_DB, timeout=10)
        raw.send(typed(b"F", struct.pack("!Ihhh", 2026, 0, 0, 0)))
        got = [raw.read_message(10) for _ in range(2)]
        assert [k for k, _ in got] == [b"E", b"Z"], got
        assert error_fields(got[0][1])["C"] == "53100", got
        raw.close()
        _fsize(worker_pids(gw).values(), "unlimited:unlimited")

        def runs(c, name):
            nonlocal seq
            seq += 1
            try:
                return c.execute(f"SELECT 5 AS {name}_back_{seq}").fetchall() == [(5,)]
            except psycopg.errors.DiskFull:
                refused[name].add(f"{name}_back_{seq}")
                return False
        wait_until(lambda: runs(a, "a") and runs(b, "b"), 30, "statements accepted again", gw)
        with pytest.raises(psycopg.Error, match="no decision in time"):
            a.execute(f"DELETE FROM {table} AS a_denied WHERE id = 1")
        a.execute("SELECT 6 AS a_after").fetchall()
        a.close()
        b.close()
        wait_until(lambda: len([r for r in read_records(path)
                                if r["type"] == "session.end"]) >= 2, 20, "session.end", gw)
    sessions = {"a": a_start["session"], "b": b_start["session"]}
    stmts = [r for r in read_records(path) if r["type"] == "statement"]
    for name, tags in refused.items():
        for tag in tags:
            recs = [r for r in stmts if re.search(rf"\b{tag}\b", r["statement"])]
            assert len(recs) == 1, (tag, recs)
            r = recs[0]
            assert (r["session"], r["verdict"], r.get("reason"), r["error"]["code"]) == \
                (sessions[name], "refused", "audit-unavailable", "53100"), r
    # the denial is not a refusal, and nothing else is
    denied = [r for r in stmts if "a_denied" in r["statement"]]
    assert [(r["session"], r["verdict"]) for r in denied] == [(sessions["a"], "block")], denied
    fastpath = [r for r in stmts if r["statement"] == "<fast-path function call>"]
    assert [(r["verdict"], r["error"]["code"]) for r in fastpath] == [("refused", "53100")]
    every = set().union(*refused.values())
    assert [r["statement"] for r in stmts if r["verdict"] == "refused" and r not in fastpath
            and not any(re.search(rf"\b{t}\b", r["statement"]) for t in every)] == []
    assert subprocess.run([sys.executable, "-m", "hoopwire", "audit", "verify", path],
                          capture_output=True, timeout=60).returncode == 0
