"""`--workers N`: the supervisor and the metrics it sums, with real processes.

A worker is killed with SIGKILL (its pid comes from the supervisor's "worker started" line), its
replacement is killed again as soon as it listens, and the sessions the other worker holds must
go on as if nothing happened; /metrics, read before and after each death, must never go back.
Which worker holds a session is read from /proc: the process that owns the gateway's socket to
the upstream whose local port PostgreSQL reports as inet_client_port().
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import time
import urllib.request

import psycopg
from prometheus_client.parser import text_string_to_metric_families

from gwfixtures import conninfo, gateway_config, gateway_env
from helpers import Gateway, GatewayError, wait_until


# ------------------------------------------------------------------------------------------------
# processes and sockets, from the log and /proc

_wait = wait_until       # (predicate, timeout, what, gw)


def started_workers(gw: Gateway) -> list[tuple[int, int]]:
    """(worker index, pid) of every "worker started" line, in order."""
    return [(int(i), int(p)) for i, p in
            re.findall(r"worker started worker=(\d+) pid=(\d+)", gw.log_text())]


def current_workers(gw: Gateway) -> dict[int, int]:
    return dict(started_workers(gw))


def _tcp_sockets() -> list[tuple[int, int, str, int]]:
    """(local port, remote port, state, inode) of every IPv4/IPv6 TCP socket."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
            out.append((int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16),
                        state, inode))
    return out


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    except (FileNotFoundError, ProcessLookupError):
        pass
    return inodes


def listens(pid: int, port: int) -> bool:
    """Whether process `pid` holds a listening socket on `port` (its own: with SO_REUSEPORT
    every worker has one)."""
    listening = {ino for lp, _, st, ino in _tcp_sockets() if lp == port and st == "0A"}
    return bool(listening & _socket_inodes(pid))


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def worker_of(conn: psycopg.Connection, upstream_port: int, pids) -> int | None:
    """The worker process relaying `conn`: the one that owns the socket to the upstream whose
    local port the server sees as the client's."""
    port = conn.execute("select inet_client_port()").fetchone()[0]
    inodes = {ino for lp, rp, st, ino in _tcp_sockets()
              if lp == port and rp == upstream_port and st == "01"}
    for pid in pids:
        if inodes & _socket_inodes(pid):
            return pid
    return None


def wait_serving(gw: Gateway, timeout: float = 30.0) -> dict[int, int]:
    """Every worker's pid, once each listens on the data port."""
    port = gw.port("pg")

    def ready():
        workers = current_workers(gw)
        if len(workers) == gw.workers and all(listens(p, port) for p in workers.values()):
            return workers
        return None
    return _wait(ready, timeout, "every worker to listen", gw)


def wait_replacement(gw: Gateway, index: int, old_pid: int, timeout: float = 60.0) -> int:
    """The pid of the process that replaced `old_pid` in slot `index`, once it listens."""
    port = gw.port("pg")

    def replaced():
        pid = current_workers(gw).get(index)
        if gw.proc.poll() is not None:
            raise AssertionError(f"the gateway exited ({gw.proc.returncode}); log:\n"
                                 + gw.log_text())
        return pid if pid != old_pid and listens(pid, port) else None
    return _wait(replaced, timeout, f"a replacement for worker {index} (pid {old_pid})", gw)


def connect_on_each_worker(gw: Gateway, token: str, pg_port: int, pids, per_worker: int = 1,
                           **kw) -> dict[int, list[psycopg.Connection]]:
    """Open sessions until every worker in `pids` holds `per_worker` of them (SO_REUSEPORT picks
    the worker by a hash of the client's address: keep connecting); the others are closed."""
    by_worker: dict[int, list[psycopg.Connection]] = {p: [] for p in pids}
    for _ in range(200):
        if all(len(v) >= per_worker for v in by_worker.values()):
            return by_worker
        conn = psycopg.connect(conninfo(gw, token, **kw), autocommit=True)
        pid = worker_of(conn, pg_port, pids)
        if pid is not None and len(by_worker[pid]) < per_worker:
            by_worker[pid].append(conn)
        else:
            conn.close()
    raise AssertionError(f"could not place {per_worker} sessions on each worker: "
                         f"{ {p: len(v) for p, v in by_worker.items()} }")


def close_all(by_worker) -> None:
    for conns in by_worker.values():
        for c in conns:
            c.close()


# ------------------------------------------------------------------------------------------------
# the supervisor

def test_a_crashing_worker_is_restarted_with_backoff_and_its_sibling_keeps_serving(pg, idp):
    """Kill worker 0, then each replacement as soon as it has served a session (a second or
    so after its start): every death is a crash, restarted after 0.5, 1, 2 s; worker 1's
    sessions -- one idle, one inside a transaction -- never notice, and the gateway never
    stops."""
    with Gateway(gateway_config(pg, idp), env=gateway_env(pg), workers=2) as gw:
        token = idp.token()
        workers = wait_serving(gw)
        victim, survivor = workers[0], workers[1]
        sessions = connect_on_each_worker(gw, token, pg.port, [victim, survivor], per_worker=2)
        idle, in_tx = sessions[survivor]
        in_tx.autocommit = False
        in_tx.execute("create temp table seen (round int)")

        delays = []
        for rnd in range(3):
            died_at = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            new = wait_replacement(gw, 0, victim)
            delays.append(time.monotonic() - died_at)
            # the sibling's sessions went on through it
            assert idle.execute("select count(*) from items").fetchone()[0] == 3
            in_tx.execute("insert into seen values (%s)", (rnd,))
            assert alive(survivor) and current_workers(gw)[1] == survivor
            # the replacement serves before it dies in its turn
            served = connect_on_each_worker(gw, token, pg.port, [new])
            assert served[new][0].execute("select 1").fetchone()[0] == 1
            close_all(served)
            victim = new
        in_tx.commit()
        assert in_tx.execute("select array_agg(round order by round) from seen").fetchone()[0] \
            == [0, 1, 2]

        # the backoff doubled from 0.5 s, and the replacements waited for it
        log = gw.log_text()
        assert re.findall(r"worker died; restarting worker=0 .*restart_in=(\S+)", log) == \
            ["0.5s", "1s", "2s"], log
        for waited, delay in zip(delays, (0.5, 1.0, 2.0)):
            assert waited >= delay * 0.9, (delays, log)
        assert "stopping the gateway" not in log
        assert gw.proc.poll() is None

        # both workers serve new sessions, the last replacement too
        fresh = connect_on_each_worker(gw, token, pg.port, [victim, survivor])
        for conns in fresh.values():
            assert conns[0].execute("select 1").fetchone()[0] == 1
        close_all(fresh)
        close_all(sessions)


def test_a_replacement_failing_at_start_up_is_retried_while_its_sibling_serves(pg, idp, pki,
                                                                               tmp_path):
    """The TLS key goes away, so worker 0's replacements cannot start (they read it when they
    start listening): that is retried with the same backoff, worker 1 and its session stay, and
    once the key is back the next attempt serves."""
    cert, key = str(tmp_path / "server.pem"), str(tmp_path / "server.key")
    shutil.copy(pki.server_cert, cert)
    shutil.copy(pki.server_key, key)
    cfg = gateway_config(pg, idp, tls_cert=cert, tls_key=key)
    with Gateway(cfg, env=gateway_env(pg), workers=2) as gw:
        workers = wait_serving(gw)
        victim, survivor = workers[0], workers[1]
        sessions = connect_on_each_worker(gw, idp.token(), pg.port, [survivor], sslmode="require")
        conn = sessions[survivor][0]

        os.rename(key, key + ".away")
        os.kill(victim, signal.SIGKILL)
        gw.wait_log(r"worker died; restarting worker=0 .*restart_in=0.5s", timeout=30)
        gw.wait_log(r"(?s)worker failed at start-up; restarting worker=0 .*restart_in=1s"
                    r".*worker failed at start-up; restarting worker=0 .*restart_in=2s",
                    timeout=60)
        assert conn.execute("select count(*) from items").fetchone()[0] == 3
        assert alive(survivor) and gw.proc.poll() is None

        os.rename(key + ".away", key)
        new = wait_replacement(gw, 0, victim)
        gw.wait_log(rf"worker ready worker=0 pid={new}\b")
        assert conn.execute("select 1").fetchone()[0] == 1
        assert "stopping the gateway" not in gw.log_text()
        close_all(sessions)


def test_when_no_worker_can_start_any_more_the_gateway_stops(pg, idp, pki, tmp_path):
    """Both workers die and neither can start again: after five failed starts in a row with no
    worker serving, the gateway stops with a line that says so, and exit status 1."""
    cert, key = str(tmp_path / "server.pem"), str(tmp_path / "server.key")
    shutil.copy(pki.server_cert, cert)
    shutil.copy(pki.server_key, key)
    cfg = gateway_config(pg, idp, tls_cert=cert, tls_key=key)
    gw = Gateway(cfg, env=gateway_env(pg), workers=2)
    try:
        workers = wait_serving(gw)
        os.unlink(key)
        for pid in workers.values():
            os.kill(pid, signal.SIGKILL)
        # 0.5 + 1 + 2 + 4 + 8 s of backoff before the fifth failed start
        assert gw.proc.wait(90) == 1
        gw.wait_log(r"no worker can start; stopping the gateway worker=\d .*failures=5")
    finally:
        gw.stop()


def test_a_worker_failing_at_its_first_start_stops_the_gateway(pg, idp):
    """A configuration problem every worker meets (here: the port is taken by a socket without
    SO_REUSEPORT) stops the gateway at once with a clear line, exit status 1."""
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    gw = Gateway(gateway_config(pg, idp, listen=f"127.0.0.1:{port}"), env=gateway_env(pg),
                 workers=2, start=False)
    try:
        try:
            gw.start()       # the taken port accepts: start() may well return
        except GatewayError:
            pass
        assert gw.proc.wait(30) == 1
        gw.wait_log(r"worker failed at start-up; stopping the gateway worker=\d ")
        assert "restarting" not in gw.log_text()
    finally:
        gw.stop()
        blocker.close()


# ------------------------------------------------------------------------------------------------
# metrics across a worker's death

COUNTER_SUFFIXES = ("_total", "_bucket", "_count", "_sum")


def scrape(gw: Gateway) -> dict[tuple, float]:
    """Every counter and histogram sample of /metrics (the gauges may go down)."""
    with urllib.request.urlopen(gw.admin_url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        if family.type not in ("counter", "histogram"):
            continue
        for s in family.samples:
            if s.name.endswith(COUNTER_SUFFIXES):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def statements(sample: dict) -> float:
    return sum(v for (name, _), v in sample.items() if name == "hoopwire_statements_total")


def assert_not_backwards(before: dict, after: dict, when: str) -> None:
    went_back = {k: (v, after.get(k)) for k, v in before.items()
                 if after.get(k) is None or after[k] < v}
    assert not went_back, f"{when}: counters went back (before, after): {went_back}"


def test_metrics_never_go_back_when_workers_die(pg, idp):
    """What a killed worker published stays in the sums: after each SIGKILL (of a worker that
    ran for a while, then of replacements a second old) every counter and histogram sample is
    at least what it was, and the statement count still covers every statement sent."""
    with Gateway(gateway_config(pg, idp), env=gateway_env(pg), workers=2) as gw:
        token = idp.token()
        workers = wait_serving(gw)
        sent = 0
        last = scrape(gw)
        # worker 0 after it ran for a while, then two of its replacements a second or two
        # after their start (once they served a few statements), then worker 1
        for rnd, index in enumerate((0, 0, 0, 1)):
            sessions = connect_on_each_worker(gw, token, pg.port, list(workers.values()),
                                              per_worker=2)
            for conns in sessions.values():
                for c in conns:
                    for i in range(25 + 10 * rnd):
                        c.execute("select %s::int", (i,))
                        sent += 1
            # (inet_client_port() above counts too: at least `sent` in all)
            _wait(lambda: statements(scrape(gw)) >= sent, 30,
                  f"/metrics to count {sent} statements", gw)
            before = scrape(gw)
            assert_not_backwards(last, before, f"round {rnd}, before the kill")
            victim = workers[index]
            os.kill(victim, signal.SIGKILL)
            close_all(sessions)
            workers[index] = wait_replacement(gw, index, victim)
            after = scrape(gw)
            assert_not_backwards(before, after, f"round {rnd}, worker {index} killed")
            assert statements(after) >= sent
            last = after
        assert gw.proc.poll() is None


def test_merged_relay_snapshots_are_summed_once(tmp_path):
    """Each worker's relay snapshot counts once, histogram buckets included (the first file
    read used to count twice, so the sum changed with the directory's order)."""
    from hoopwire.metrics import _merged
    import orjson
    a = {"pg": {"bytes_from_client": 10, "bytes_from_upstream": 20, "queries": 3, "executes": 1,
                "rtt_count": 4, "rtt_sum": 0.5, "rtt_buckets": [1, 2, 4]}}
    b = {"pg": {"bytes_from_client": 1, "bytes_from_upstream": 2, "queries": 1, "executes": 0,
                "rtt_count": 1, "rtt_sum": 0.25, "rtt_buckets": [0, 1, 1]}}
    for pid, snap in ((101, a), (102, b)):
        (tmp_path / f"relay-{pid}.json").write_bytes(orjson.dumps(snap))
    assert _merged(str(tmp_path)) == {"pg": {
        "bytes_from_client": 11, "bytes_from_upstream": 22, "queries": 4, "executes": 1,
        "rtt_count": 5, "rtt_sum": 0.75, "rtt_buckets": [1, 3, 5]}}


def test_a_dead_workers_counts_survive_its_pid_being_reused(tmp_path):
    """Once a worker has exited its last snapshot is kept apart from the live ones: a new
    process that gets the same pid publishes from zero without erasing it."""
    import orjson
    from hoopwire.metrics import _merged, retire_process
    snap = {"pg": {"bytes_from_client": 10, "bytes_from_upstream": 20, "queries": 3,
                   "executes": 1, "rtt_count": 4, "rtt_sum": 0.5, "rtt_buckets": [1, 2, 4]}}
    (tmp_path / "relay-4242.json").write_bytes(orjson.dumps(snap))
    (tmp_path / "relay-4242.json.tmp").write_bytes(b"{")   # killed while publishing
    retire_process(str(tmp_path), 4242)
    assert _merged(str(tmp_path)) == snap
    assert sorted(os.listdir(tmp_path)) == ["relay-dead.json"]
    fresh = {"pg": {"bytes_from_client": 1, "bytes_from_upstream": 1, "queries": 1,
                    "executes": 0, "rtt_count": 1, "rtt_sum": 0.1, "rtt_buckets": [1, 1, 1]}}
    (tmp_path / "relay-4242.json").write_bytes(orjson.dumps(fresh))
    merged = _merged(str(tmp_path))["pg"]
    assert merged["queries"] == 4 and merged["rtt_buckets"] == [2, 3, 5]
    retire_process(str(tmp_path), 4242)
    assert _merged(str(tmp_path))["pg"]["queries"] == 4
