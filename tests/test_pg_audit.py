"""Session recording and the audit trail: real server, real drivers, the real files.

Covers the session index through the admin API and CLI, replay, the hash chain (verify passes,
then fails at the right record after an edit or a removal), and what a full disk does under
both write-failure policies (a small tmpfs, or a file-size limit where mounting is not allowed).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import subprocess
import sys
import time
import urllib.request

import asyncpg
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gwfixtures import conninfo, gateway_config, gateway_env
from helpers import APP_DB, SMALL_PIECES, Forwarder, Gateway, wait_until
from hoopwire.audit import read_records

ROOT_GROUPS = ["admins"]


def audit_gateway(pg, idp, tmp, *, audit=None, **kw):
    cfg = gateway_config(pg, idp, guardrail=[{"pack": "destructive-ddl"}],
                         mask=[{"columns": ["*.secret_col"], "strategy": "redact"}], **kw)
    cfg["admin"] = {"admin_groups": ROOT_GROUPS}
    cfg["audit"] = {"path": str(tmp / "audit"), "flush_interval": "50ms", **(audit or {})}
    cfg["state"] = {"url": f"sqlite:///{tmp}/state.db"}
    return Gateway(cfg, env=gateway_env(pg))


def records_of(path, kind: str) -> list[dict]:
    """The records of type `kind` the log in `path` holds so far (a partial last line is
    skipped by read_records: still being written)."""
    if not os.path.isdir(path):
        return []
    return [r for r in read_records(str(path)) if r["type"] == kind]


def metric(gw, name: str) -> float:
    """The value of the unlabelled sample `name` in the gateway's /metrics scrape."""
    text = urllib.request.urlopen(gw.admin_url + "/metrics", timeout=10).read().decode()
    values = [s.value for fam in text_string_to_metric_families(text) for s in fam.samples
              if s.name == name and not s.labels]
    assert len(values) == 1, f"{name}: {values} in\n{text}"
    return values[0]


def api(gw, path, token):
    req = urllib.request.Request(gw.admin_url + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "hoopwire", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module", params=[False, True], ids=["log", "indexed"])
def recorded(request, pg, idp, tmp_path_factory):
    """One gateway, one recorded session of every kind of statement; yields what tests need.
    Twice: statements read back from the log, and indexed in the store (index_statements)."""
    tmp = tmp_path_factory.mktemp("audit")
    pg.sql("CREATE TABLE IF NOT EXISTS audited (id int primary key, secret_col text);"
           "ALTER TABLE audited OWNER TO app;"
           "INSERT INTO audited VALUES (1, 's1'), (2, 's2') ON CONFLICT DO NOTHING;", dbname="appdb")
    with audit_gateway(pg, idp, tmp, audit={"index_statements": request.param},
                       record_results=True, record_results_max_bytes="64KiB") as g:
        with psycopg.connect(conninfo(g, idp.token("agent-7", ["agents"])), autocommit=True) as c:
            c.execute("SELECT id, secret_col FROM audited WHERE id = 1").fetchall()
            c.execute("SELECT id FROM audited WHERE secret_col = %s", ("s2",)).fetchall()
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute("DROP TABLE audited")
            with pytest.raises(psycopg.errors.UndefinedTable):
                c.execute("SELECT * FROM no_such_table")
            with c.cursor() as cur, cur.copy("COPY audited TO STDOUT") as cp:
                list(cp)
            c.execute("UPDATE audited SET secret_col = 'x' WHERE id = 99")
        root = idp.admin_token("root", ROOT_GROUPS)
        # the tests read the ended session from the index and its records from the log: both
        # are written by the flusher after the client has gone
        wait_until(lambda: [s for s in api(g, "/api/v1/sessions?identity=agent-7", root)["sessions"]
                            if s["ended_at"] is not None] and records_of(tmp / "audit", "session.end"),
                   20, "the ended session in the index and its session.end in the log")
        yield g, root, tmp / "audit"


def test_sessions_index_and_statements(recorded):
    g, root, _ = recorded
    sessions = api(g, "/api/v1/sessions?identity=agent-7", root)["sessions"]
    assert sessions and sessions[0]["subject"] == "agent-7"
    s = sessions[0]
    assert s["close_reason"] == "client_terminate" and s["statements"] >= 6 and s["bytes_in"] > 0
    detail = api(g, f"/api/v1/sessions/{s['id']}", root)
    st = detail["statements"]
    by_text = {x["statement"]: x for x in st}
    assert by_text["SELECT id, secret_col FROM audited WHERE id = ?"]["rows"] == 1
    assert by_text["SELECT id, secret_col FROM audited WHERE id = ?"]["masked"] == 1
    assert "s2" not in json.dumps(st)                     # literals and parameters not recorded
    assert any(x["verdict"] == "block" and x["statement"].startswith("DROP") for x in st)
    err = [x for x in st if x["verdict"] == "error"]
    assert err and "no_such_table" in err[0]["error"]
    assert any(x["statement"].startswith("COPY") and x["rows"] == 2 for x in st)
    assert [x["seq"] for x in st] == sorted(x["seq"] for x in st)


def test_replay_and_cli(recorded, idp):
    g, root, path = recorded
    env = {"HOOPWIRE_ADMIN_URL": g.admin_url, "HOOPWIRE_TOKEN": root}
    out = cli("sessions", "list", "--identity", "agent-7", env=env)
    assert out.returncode == 0, out.stderr
    sid = out.stdout.split()[0]
    out = cli("sessions", "show", sid, env=env)
    assert out.returncode == 0 and "block" in out.stdout and "DROP TABLE audited" in out.stdout
    out = cli("sessions", "replay", sid, env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "agent-7 connected" in lines[0] and "session ended" in lines[-1]
    assert any("BLOCK" in ln and "DROP TABLE" in ln for ln in lines)
    # record_results: the rows as the client saw them -- masked
    assert "| ['1', '****']" in out.stdout and "s1" not in out.stdout
    assert "| ['1\\t****']" in out.stdout               # COPY data too, as masked lines
    # a non-admin may not read sessions
    out = cli("sessions", "list", env={**env, "HOOPWIRE_TOKEN": idp.admin_token("eve", ["agents"])})
    assert out.returncode == 1 and "403" in out.stderr


def _segments(path):
    return sorted(glob.glob(os.path.join(path, "audit-*.jsonl")))


def test_verify_passes_then_names_the_broken_record(recorded, tmp_path):
    _, _, path = recorded
    out = cli("audit", "verify", str(path))
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stdout + out.stderr
    # work on a copy: the gateway is still writing the original
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    seg = _segments(copy)[0]
    with open(seg, "rb") as f:
        lines = f.read().splitlines(keepends=True)
    assert len(lines) >= 5
    edited = lines[:]
    rec = json.loads(edited[3])
    rec["statement" if "statement" in rec else "type"] = "tampered"
    edited[3] = json.dumps(rec, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    with open(seg, "wb") as f:
        f.writelines(edited)
    out = cli("audit", "verify", str(copy))
    assert out.returncode == 1 and "line 4" in out.stdout, out.stdout
    with open(seg, "wb") as f:
        f.writelines(lines[:2] + lines[3:])          # line 3 removed
    out = cli("audit", "verify", str(copy))
    assert out.returncode == 1 and "line 3" in out.stdout, out.stdout


def _fill(path) -> str:
    """Fill the filesystem holding `path`; return the filler file to delete later."""
    filler = os.path.join(path, "filler")
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 1024)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


class _Tmpfs:
    """A 256 KiB tmpfs: full when a filler file takes the rest (ENOSPC)."""

    def __init__(self, path):
        self.path, self.filler = path, None

    def fill(self, gw) -> None:
        self.filler = _fill(str(self.path))

    def free(self, gw) -> None:
        os.unlink(self.filler)


class _FileSizeLimit:
    """Where no tmpfs can be mounted: RLIMIT_FSIZE on the gateway process (EFBIG past it; the
    gateway ignores SIGXFSZ), set to what its audit files hold now."""

    def __init__(self, path):
        self.path = path

    def fill(self, gw) -> None:
        biggest = max(os.path.getsize(f) for f in glob.glob(os.path.join(self.path, "audit", "*")))
        subprocess.run(["prlimit", "--pid", str(gw.pid), f"--fsize={biggest}:unlimited"],
                       check=True)

    def free(self, gw) -> None:
        subprocess.run(["prlimit", "--pid", str(gw.pid), "--fsize=unlimited:unlimited"],
                       check=True)


@pytest.fixture(params=["tmpfs", "fsize"])
def small_disk(request, tmp_path):
    """A place for the audit log that can be made full and given room again."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if request.param == "tmpfs":
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                           capture_output=True)
        if r.returncode == 0:
            yield mnt, _Tmpfs(mnt)
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
            return
        # no mount privilege here: the file-size limit stands in, never a skip
    yield mnt, _FileSizeLimit(mnt)


@pytest.mark.parametrize("policy", ["fail-closed", "fail-open"])
def test_disk_full(pg, idp, tmp_path, small_disk, policy):
    small_disk, disk = small_disk
    cfg_tmp = tmp_path / "gw"
    cfg_tmp.mkdir()
    g = audit_gateway(pg, idp, cfg_tmp, audit={"path": str(small_disk / "audit"),
                                                "on_write_failure": policy,
                                                "segment_bytes": "64KiB"})
    audit = small_disk / "audit"
    failures = "hoopwire_audit_write_failures_total"
    with g:
        token = idp.token("agent-7", ["agents"])
        with psycopg.connect(conninfo(g, token), autocommit=True) as c:
            assert c.execute("SELECT 1").fetchall() == [(1,)]
            # the first statement's record is on disk before the disk is made full (the
            # file-size limit is set to what the files hold then)
            wait_until(lambda: records_of(audit, "statement"), 20, "the first statement's record")
            failures_before = metric(g, failures)
            assert "write failed" not in g.log_text()
            disk.fill(g)
            # a statement's record cannot be written; within a flush or two the policy applies:
            # fail-closed refuses the next statements, fail-open runs them and counts the
            # failing flushes (the 20 s are a hang guard)
            deadline = time.monotonic() + 20
            refused = None
            while True:
                try:
                    assert c.execute("SELECT 2").fetchall() == [(2,)]
                except psycopg.errors.DiskFull as e:
                    refused = e
                if refused is not None or (policy == "fail-open" and
                                           metric(g, failures) > failures_before):
                    break
                assert time.monotonic() < deadline, \
                    f"{policy}: the full disk had no effect\n{g.log_text()[-3000:]}"
                time.sleep(0.1)
            # the disk really refused a write, and the gateway counted it whatever the policy
            g.wait_log(r"audit log: write failed \((ENOSPC|EFBIG)")
            assert metric(g, failures) > failures_before
            if policy == "fail-closed":
                assert refused is not None and "audit log" in str(refused), g.log_text()[-3000:]
            else:
                assert refused is None
                assert c.execute("SELECT 2").fetchall() == [(2,)]    # still not refused
            disk.free(g)
            deadline = time.monotonic() + 20
            while True:
                try:
                    assert c.execute("SELECT 3").fetchall() == [(3,)]
                    break
                except psycopg.errors.DiskFull:
                    assert time.monotonic() < deadline, \
                        "statements still refused after the disk had room again"
                    time.sleep(0.1)
            g.wait_log(r"audit log: writable again")
        # the session's end is written once the disk has room again (verified below)
        wait_until(lambda: records_of(audit, "session.end"), 20, "the session.end record")
    out = cli("audit", "verify", str(audit))
    assert out.returncode == 0, out.stdout + out.stderr


def test_sessions_left_open_by_a_crash_are_closed_by_the_next_start(pg, idp, tmp_path):
    # The crashed process never wrote session.end; the same gateway id starting again closes
    # what it left open in the index, so `sessions list` shows no ghost sessions.
    root = idp.admin_token("root", ROOT_GROUPS)
    g = audit_gateway(pg, idp, tmp_path)
    try:
        c = psycopg.connect(conninfo(g, idp.token("agent-9", ["agents"])), autocommit=True)
        c.execute("SELECT 1").fetchall()
        deadline = time.monotonic() + 30             # a hang guard (was 5 s)
        while not api(g, "/api/v1/sessions?identity=agent-9", root)["sessions"]:
            assert time.monotonic() < deadline, "the session never reached the index"
            time.sleep(0.05)
        g.proc.kill()
        g.proc.wait(10)
        c.close()
    finally:
        g.stop()
    with audit_gateway(pg, idp, tmp_path) as g2:
        s = api(g2, "/api/v1/sessions?identity=agent-9", root)["sessions"][0]
        assert s["close_reason"] == "gateway_restart" and s["ended_at"] is not None
        wait_until(lambda: records_of(tmp_path / "audit", "sessions.orphaned"), 20,
                   "the sessions.orphaned record")
    records = [json.loads(line) for seg in _segments(str(tmp_path / "audit"))
               for line in open(seg)]
    assert [r["count"] for r in records if r["type"] == "sessions.orphaned"] == [1]
    assert cli("audit", "verify", str(tmp_path / "audit")).returncode == 0


@pytest.mark.parametrize("masking,cut,results", [
    (False, False, False), (True, False, False), (False, True, False), (False, True, True)],
    ids=["recording", "masking", "recording-cut-replies", "recording-results-cut-replies"])
def test_every_outcome_is_pinned_on_its_statement(pg, idp, tmp_path, masking, cut, results):
    # Without masking the relay follows only what ends statements (no Bind/Describe answers);
    # with it, every answer. Either way each record names the statement that ran or failed.
    # `cut`: the server's replies reach the gateway in pieces of 1 to 700 bytes (Forwarder), so
    # the recording walk meets every message split across reads, not only rows. `results`:
    # record_results without masking, where the rows themselves are kept.
    with contextlib.ExitStack() as stack:
        upstream = pg.port
        if cut:
            upstream = stack.enter_context(
                Forwarder(("127.0.0.1", pg.port), pieces=SMALL_PIECES)).port
        extra = {"mask": [{"columns": ["*.secret_col"], "strategy": "redact"}]} if masking else {}
        if results:
            extra.update(record_results=True, record_results_max_bytes="1MiB")
        cfg = gateway_config(pg, idp, upstream=f"127.0.0.1:{upstream}", **extra)
        cfg["audit"] = {"path": str(tmp_path / "audit"), "flush_interval": "50ms"}
        g = stack.enter_context(Gateway(cfg, env=gateway_env(pg)))
        _every_outcome(g, idp)
        # the three sessions' ends are in the log: every statement before them is too
        wait_until(lambda: len(records_of(tmp_path / "audit", "session.end")) == 3, 20,
                   "three session.end records")
    recs = [r for r in read_records(str(tmp_path / "audit")) if r["type"] == "statement"]
    got = [(r["statement"], r["verdict"], r["rows"], (r.get("error") or {}).get("code"))
           for r in recs]
    assert got == [
        ("CREATE TEMP TABLE rec (id int PRIMARY KEY)", "allow", None, None),
        *[("INSERT INTO rec VALUES ($1)", "allow", 1, None)] * 6,
        ("SELEC ?", "error", None, "42601"),
        ("INSERT INTO rec VALUES ($1)", "allow", 1, None),
        ("INSERT INTO rec VALUES ($1)", "error", None, "23505"),
        ("COPY rec TO STDOUT", "allow", 6, None),
        ("SELECT count(*) FROM rec", "allow", 1, None),
        ("SELECT ?; SELECT ?", "allow", 2, None),
        ("SELECT ?/?", "error", None, "22012"),
        ("SET application_name = ?", "allow", None, None),
        ("SELECT repeat(?, ?) FROM generate_series(?, ?)", "allow", 40, None),
    ], got
    if results:
        assert [r.get("result") for r in recs][-1] == [["y" * 3000]] * 40
        assert [r.get("result") for r in recs if r["statement"] == "COPY rec TO STDOUT"] == \
            [[[str(i)] for i in range(6)]]


def _every_outcome(g, idp):
    token = idp.token("agent-7", ["agents"])
    with psycopg.connect(conninfo(g, token), autocommit=True) as c:
        c.execute("CREATE TEMP TABLE rec (id int PRIMARY KEY)")
        for i in range(6):                               # prepared after a few runs
            c.execute("INSERT INTO rec VALUES (%s)", (i,), prepare=True)
        with pytest.raises(psycopg.errors.SyntaxError):
            c.execute("SELEC 1")                         # the Parse fails
        with pytest.raises(psycopg.errors.UniqueViolation):
            with c.pipeline() as p:
                c.execute("INSERT INTO rec VALUES (%s)", (100,))
                c.execute("INSERT INTO rec VALUES (%s)", (1,))      # fails
                c.execute("SELECT count(*) FROM rec")               # skipped
                p.sync()
        with c.cursor() as cur, cur.copy("COPY rec TO STDOUT") as cp:
            list(cp)
        assert c.execute("SELECT count(*) FROM rec").fetchone() == (6,)

    async def simple():
        conn = await asyncpg.connect(host="127.0.0.1", port=g.port("pg"), user="agent-7",
                                     password=token, database=APP_DB, ssl=False)
        try:
            await conn.execute("SELECT 1; SELECT 2")     # simple protocol, two statements
            with pytest.raises(asyncpg.exceptions.DivisionByZeroError):
                await conn.execute("SELECT 1/0")
        finally:
            await conn.close()
    asyncio.run(simple())
    with psycopg.connect(conninfo(g, token), autocommit=True) as c:
        c.execute("SET application_name = 'cut'")            # answered with a ParameterStatus
        assert c.info.parameter_status("application_name") == "cut"
        # rows longer than most reads: a walk that loses count inside one loses the rest
        rows = c.execute("SELECT repeat('y', 3000) FROM generate_series(1, 40)").fetchall()
        assert rows == [("y" * 3000,)] * 40


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:"))


def test_queries_always_in_flight_do_not_grow_the_text_buffer(pg, idp, tmp_path):
    # A client that sends its next Query before the previous one's ReadyForQuery never lets the
    # queue of statements in flight run empty. The texts of answered Queries must still be let
    # go: 1,500 Queries of 32 KiB (48 MiB in all) through one session, 32 in flight at a time.
    # Recording's own buffers reach their size within the first third; over the other two
    # thirds the gateway may not keep growing.
    from pgraw import login, typed
    cfg = gateway_config(pg, idp)
    cfg["audit"] = {"path": str(tmp_path / "audit"), "flush_interval": "50ms"}
    token = idp.token("agent-7", ["agents"])
    # each takes the server a millisecond, so the next ones always arrive before it is done
    # (two shapes in turn, so that a text read from the wrong place in the buffer shows)
    texts = [b"SELECT " + first + b"pg_sleep(0.001), '" + b"x" * 32768 + b"'" for first in (b"", b"2, ")]
    n = 1500
    with Gateway(cfg, env=gateway_env(pg)) as g:
        conn = login("127.0.0.1", g.port("pg"), token)
        try:
            conn.send(b"".join(typed(b"Q", texts[i % 2] + b"\0") for i in range(32)))
            sent, done = 32, 0
            rss_before = None
            while done < n:
                kind = conn.read_message()[0]
                assert kind != b"E"
                if kind != b"Z":
                    continue
                done += 1
                if done == n // 3:
                    rss_before = _rss_kib(g.pid)
                if sent < n:
                    conn.send(typed(b"Q", texts[sent % 2] + b"\0"))
                    sent += 1
            grown = _rss_kib(g.pid) - rss_before
        finally:
            conn.close()
        wait_until(lambda: records_of(tmp_path / "audit", "session.end"), 20,
                   "the session.end record")
    assert grown < 8 * 1024, f"the gateway grew by {grown} KiB"
    recs = [r for r in read_records(str(tmp_path / "audit")) if r["type"] == "statement"]
    assert [r["statement"] for r in recs] == ["SELECT pg_sleep(?), ?", "SELECT ?, pg_sleep(?), ?"] * (n // 2)


def test_pipelined_queries_are_each_recorded_with_their_own_text(pg, idp, tmp_path):
    # Several simple Queries in one write are in flight together: while only recording, the
    # relay keeps their texts back to back until each one's ReadyForQuery; an error in the
    # middle one ends only that one.
    from pgraw import login, typed
    cfg = gateway_config(pg, idp)
    cfg["audit"] = {"path": str(tmp_path / "audit"), "flush_interval": "50ms"}
    token = idp.token("agent-7", ["agents"])
    texts = [b"SELECT 'first'", b"SELECT 1/0", b"SELECT 'third', 3", b"", b"SELECT 'last'"]
    with Gateway(cfg, env=gateway_env(pg)) as g:
        conn = login("127.0.0.1", g.port("pg"), token)
        try:
            for _ in range(3):          # the buffer is emptied and reused between rounds
                conn.send(b"".join(typed(b"Q", t + b"\0") for t in texts))
                kinds = []
                while kinds.count(b"Z") < len(texts):
                    kinds.append(conn.read_message()[0])
                assert kinds.count(b"E") == 1 and kinds.count(b"I") == 1
        finally:
            conn.close()
        wait_until(lambda: records_of(tmp_path / "audit", "session.end"), 20,
                   "the session.end record")
    recs = [r for r in read_records(str(tmp_path / "audit")) if r["type"] == "statement"]
    got = [(r["statement"], r["verdict"], (r.get("error") or {}).get("code")) for r in recs]
    assert got == [("SELECT ?", "allow", None), ("SELECT ?/?", "error", "22012"),
                   ("SELECT ?, ?", "allow", None), ("", "allow", None),
                   ("SELECT ?", "allow", None)] * 3, got
