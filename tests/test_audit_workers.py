"""The audit log with `--workers N`: every writer its own chain, one verifiable directory.

Real processes: a gateway with two workers, clients spread over both, a worker killed with
SIGKILL while it holds a session (the supervisor starts another in its slot), SIGHUP; then
`hoopwire audit verify` must pass, replay must find every session whichever process wrote it,
and editing, removing or reordering a record of any chain -- or deleting a chain's segments --
must fail verification. Also (fail-closed): statements refused because the audit cannot be
written are recorded as refused, not as guardrail blocks, and /readyz says not ready meanwhile.

Which worker served a session is read from its session.start record ("gw" is the gateway id,
HOOPWIRE_GATEWAY_ID/worker index); a worker's pid from the supervisor's "worker started" line.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import psycopg
import pytest

from gwfixtures import conninfo, gateway_config, gateway_env
from helpers import Gateway, wait_until
from hoopwire.audit import read_records

ROOT_GROUPS = ["admins"]
GW_ID = "gwtest"


def cli(*args):
    return subprocess.run([sys.executable, "-m", "hoopwire", *args], capture_output=True,
                          text=True, timeout=60)


def records(path, kind: str | None = None) -> list[dict]:
    if not os.path.isdir(path):
        return []
    return [r for r in read_records(str(path)) if kind is None or r["type"] == kind]


def sessions_by_subject(path) -> dict[str, tuple[str, str]]:
    """subject -> (session id, gateway id of the worker that served it)."""
    return {r["subject"]: (r["session"], r["gw"]) for r in records(path, "session.start")}


def worker_pids(gw: Gateway) -> dict[int, int]:
    """worker index -> pid of the newest process started in that slot."""
    return {int(i): int(p) for i, p in
            re.findall(r"worker started worker=(\d+) pid=(\d+)", gw.log_text())}


def admin_get(gw: Gateway, idp, path: str):
    """GET an admin API path as a member of the admin groups. The admin audience is being
    split from the data path's in a change of its own; a token for either is tried."""
    for kw in ({}, {"audience": "hoopwire-admin"}):
        req = urllib.request.Request(gw.admin_url + path, headers={
            "Authorization": f"Bearer {idp.token('root', ROOT_GROUPS, **kw)}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            if e.code != 401:
                raise
    raise AssertionError("the admin API accepted no admin token")


def readyz(gw: Gateway) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(gw.admin_url + "/readyz", timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def audit_config(pg, idp, tmp: Path, **audit) -> dict:
    cfg = gateway_config(pg, idp, guardrail=[{"pack": "destructive-ddl"}])
    cfg["admin"] = {"admin_groups": ROOT_GROUPS}
    cfg["audit"] = {"path": str(tmp / "audit"), "flush_interval": "50ms", **audit}
    cfg["state"] = {"url": f"sqlite:///{tmp}/state.db"}
    return cfg


def connect(gw: Gateway, idp, subject: str) -> psycopg.Connection:
    return psycopg.connect(conninfo(gw, idp.token(subject, ["agents"]), user=subject),
                           autocommit=True)


def work(c: psycopg.Connection, i: int) -> None:
    assert c.execute("SELECT %s::int", (i,)).fetchall() == [(i,)]
    assert c.execute(f"SELECT {i} + 1").fetchall() == [(i + 1,)]
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        c.execute("DROP TABLE audited_by_workers")          # a guardrail block


def spread(gw: Gateway, idp, path, prefix: str, want: set[str], *,
           keep_open_on: str | None = None, not_before: float = 0.0):
    """Sessions (subjects prefix-0, prefix-1, ...) until the log shows two closed sessions of
    this phase served by every gateway id in `want`, and until time.monotonic() >= not_before.
    With `keep_open_on`, one more connection served by that gateway id is returned still
    open."""
    i, kept, subjects = 0, None, []
    deadline = time.monotonic() + 60
    while True:
        subject = f"{prefix}-{i}"
        c = connect(gw, idp, subject)
        work(c, i)
        subjects.append(subject)
        # the session.start is on disk within a flush interval or two (50 ms)
        seen = wait_until(lambda: sessions_by_subject(path).get(subject), 20,
                          f"the session.start of {subject}", gw)
        if keep_open_on is not None and kept is None and seen[1] == keep_open_on:
            kept = c
        else:
            c.close()
        i += 1
        closed = [by[1] for s, by in sessions_by_subject(path).items()
                  if s in subjects and (kept is None or by[0] != _sid_of(path, kept))]
        served = {g for g in closed if closed.count(g) >= 2}
        if want <= served and (keep_open_on is None or kept is not None) \
                and time.monotonic() >= not_before:
            return subjects, kept
        assert time.monotonic() < deadline, f"{prefix}: sessions only on {served}"


def _sid_of(path, conn) -> str | None:
    return sessions_by_subject(path).get(conn.info.user, (None,))[0]


@pytest.fixture(scope="module")
def worked(pg, idp, tmp_path_factory):
    """Two workers, sessions on both, worker 1 killed while it holds a session and restarted,
    a reload, sessions on both again; the gateway stopped. Yields what the tests need."""
    tmp = tmp_path_factory.mktemp("workers")
    path = tmp / "audit"
    g = Gateway(audit_config(pg, idp, tmp), env={**gateway_env(pg), "HOOPWIRE_GATEWAY_ID": GW_ID},
                workers=2)
    with g:
        w0, w1 = f"{GW_ID}/0", f"{GW_ID}/1"
        # The original supervisor takes a worker that dies within 5 s of its start for one that
        # cannot start and stops the gateway: worker 1 is killed only after that, while the
        # clients keep both workers busy.
        first, held = spread(g, idp, path, "one", {w0, w1}, keep_open_on=w1,
                             not_before=time.monotonic() + 5.5)
        held_sid = _sid_of(path, held)
        # what worker 1 recorded of its closed sessions is on disk before it dies
        ended = lambda: {r["session"] for r in records(path, "session.end")}
        wait_until(lambda: {sid for s, (sid, _) in sessions_by_subject(path).items()
                            if s in first and sid != held_sid} <= ended(), 20,
                   "the session.end records of phase one", g)
        killed = worker_pids(g)[1]
        os.kill(killed, signal.SIGKILL)
        wait_until(lambda: worker_pids(g).get(1) not in (None, killed), 30,
                   "the supervisor starting another worker 1", g)
        held.close()                   # its server side died with the worker
        second, _ = spread(g, idp, path, "two", {w0, w1})
        g.signal(signal.SIGHUP)
        wait_until(lambda: g.log_text().count("configuration reloaded") >= 2, 30,
                   "both workers reloading", g)
        third, _ = spread(g, idp, path, "three", {w0, w1})
        by_subject = sessions_by_subject(path)
        # one session of each process: worker 0, worker 1 (killed), worker 1 (restarted)
        picks = {"w0": next(by_subject[s][0] for s in first if by_subject[s][1] == w0),
                 "w1-killed": next(by_subject[s][0] for s in first
                                   if by_subject[s][1] == w1 and by_subject[s][0] != held_sid),
                 "w1-restarted": next(by_subject[s][0] for s in second
                                      if by_subject[s][1] == w1)}
        replays = {k: admin_get(g, idp, f"/api/v1/sessions/{sid}/replay")["records"]
                   for k, sid in picks.items()}
        subjects = first + second + third
        wait_until(lambda: len(records(path, "session.end")) >= len(subjects) - 1, 20,
                   "the session.end records", g)
    yield {"path": path, "picks": picks, "replays": replays, "subjects": subjects,
           "killed": killed}


def test_verify_passes_after_workers_a_kill_and_a_reload(worked):
    out = cli("audit", "verify", str(worked["path"]))
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stdout + out.stderr
    from hoopwire.audit import verify
    res = verify(str(worked["path"]))
    # worker 0, worker 1 until it was killed, worker 1 after: each a chain of its own
    assert res.ok and res.chains == 3, res.describe()
    starts = records(worked["path"], "chain.start")
    assert sorted((r["gw"], r["pid"] == worked["killed"]) for r in starts) == \
        [(f"{GW_ID}/0", False), (f"{GW_ID}/1", False), (f"{GW_ID}/1", True)]
    # every session that ended recorded its statements, each session in one chain only
    for subject in worked["subjects"]:
        assert subject in sessions_by_subject(worked["path"])


def test_replay_finds_sessions_of_every_worker(worked):
    for key, recs in worked["replays"].items():
        sid = worked["picks"][key]
        assert recs[0]["type"] == "session.start" and recs[0]["session"] == sid, key
        kinds = [r["type"] for r in recs]
        assert kinds.count("statement") == 3, (key, kinds)
        assert [r["n"] for r in recs if r["type"] == "statement"] == [1, 2, 3]
        assert all(r["seq"] > 1 for r in recs)
    # what replay reads is what read_records gives for the session, wherever it is
    for key, sid in worked["picks"].items():
        assert list(read_records(str(worked["path"]), session_id=sid)) == worked["replays"][key]


# ---- tampering with one worker's chain ---------------------------------------------------------

@pytest.fixture
def copied(worked, tmp_path) -> Path:
    d = tmp_path / "audit"
    shutil.copytree(worked["path"], d)
    from hoopwire.audit import verify
    assert verify(str(d)).ok
    return d


def _chain_of(d: Path, gw: str, killed: bool, worked) -> tuple[str, list[str]]:
    """(chain id, segment names) of one process's chain."""
    from hoopwire.audit.log import chain_segments
    for chain, segs in chain_segments(str(d)).items():
        first = orjson.loads((d / segs[0][1]).read_bytes().split(b"\n", 1)[0])
        if first["gw"] == gw and (first["pid"] == worked["killed"]) == killed:
            return chain, [n for _, n in segs]
    raise AssertionError(f"no chain of {gw}")


def _verify(d: Path):
    out = cli("audit", "verify", str(d))
    assert out.returncode == 1, out.stdout + out.stderr
    return out.stdout


@pytest.mark.parametrize("which", [(f"{GW_ID}/0", False), (f"{GW_ID}/1", True),
                                   (f"{GW_ID}/1", False)], ids=["w0", "w1-killed", "w1-new"])
def test_an_edit_a_removal_or_a_reorder_in_any_chain_is_found(copied, worked, which):
    _, segs = _chain_of(copied, *which, worked)
    seg = copied / segs[0]
    lines = seg.read_bytes().splitlines(keepends=True)
    assert len(lines) >= 6
    rec = orjson.loads(lines[3])
    rec["type"] = "tampered"
    edited = lines[:3] + [orjson.dumps(rec, option=orjson.OPT_SORT_KEYS) + b"\n"] + lines[4:]
    seg.write_bytes(b"".join(edited))
    assert f"BROKEN at {segs[0]} line 4" in _verify(copied)
    seg.write_bytes(b"".join(lines[:3] + lines[4:]))                     # line 4 removed
    assert f"BROKEN at {segs[0]} line 4" in _verify(copied)
    seg.write_bytes(b"".join(lines[:3] + [lines[4], lines[3]] + lines[5:]))  # 4 and 5 swapped
    assert f"BROKEN at {segs[0]} line 4" in _verify(copied)


@pytest.mark.parametrize("which", [(f"{GW_ID}/0", False), (f"{GW_ID}/1", True),
                                   (f"{GW_ID}/1", False)], ids=["w0", "w1-killed", "w1-new"])
def test_a_deleted_chain_is_found(copied, worked, which):
    chain, segs = _chain_of(copied, *which, worked)
    for name in segs:
        os.unlink(copied / name)
    out = _verify(copied)
    assert f"chain {chain} is registered but none of its segments exist" in out, out


def test_a_chain_removed_from_the_manifest_too_is_found(copied, worked):
    # deleting a chain and its registration: the manifest's own chain breaks (unless it was the
    # newest registration: cutting records off the end is what no chain can show)
    chain, segs = _chain_of(copied, f"{GW_ID}/1", True, worked)
    for name in segs:
        os.unlink(copied / name)
    manifest = copied / "chains.jsonl"
    lines = manifest.read_bytes().splitlines(keepends=True)
    kept = [ln for ln in lines if orjson.loads(ln)["chain"] != chain]
    assert len(kept) == len(lines) - 1 and lines[-1] in kept
    manifest.write_bytes(b"".join(kept))
    assert "BROKEN at chains.jsonl" in _verify(copied)


# ---- fail-closed: refusals are recorded as refusals, and /readyz tells ---------------------------

def _fsize(pids, limit: str) -> None:
    for pid in pids:
        subprocess.run(["prlimit", "--pid", str(pid), f"--fsize={limit}"], check=True)


@pytest.mark.parametrize("workers", [None, 2], ids=["one-process", "two-workers"])
def test_refused_statements_are_recorded_as_refused_and_readyz_fails(pg, idp, tmp_path,
                                                                      workers):
    path = tmp_path / "audit"
    cfg = audit_config(pg, idp, tmp_path, on_write_failure="fail-closed")
    with Gateway(cfg, env={**gateway_env(pg), "HOOPWIRE_GATEWAY_ID": GW_ID},
                 workers=workers) as g:
        pids = [g.pid] if workers is None else list(worker_pids(g).values())
        assert readyz(g) == (200, {"ready": True})
        with connect(g, idp, "agent-refused") as c:
            work(c, 1)                                       # one guardrail block among them
            wait_until(lambda: len(records(path, "statement")) >= 3, 20, "the first records", g)
            # a file-size limit at what the audit files hold now: the next writes fail (EFBIG;
            # the gateway ignores SIGXFSZ), as on a full disk
            biggest = max(f.stat().st_size for f in path.iterdir() if f.suffix == ".jsonl")
            _fsize(pids, f"{biggest}:unlimited")
            deadline = time.monotonic() + 30
            refused = 0
            while refused < 3:                 # a few, both protocols' way of being refused
                try:
                    c.execute("SELECT 2").fetchall()
                except psycopg.errors.DiskFull as e:
                    assert "audit log" in str(e)
                    refused += 1
                    # while statements are refused the gateway is not ready, and says why
                    status, body = readyz(g)
                    assert status == 503 and body["ready"] is False, body
                    assert "audit" in body["reason"], body
                assert time.monotonic() < deadline, g.log_text()[-3000:]
            # the simple protocol's Query too (psycopg's execute sends Parse/Bind/Execute)
            res = c.pgconn.exec_(b"SELECT 3")
            assert res.error_field(psycopg.pq.DiagnosticField.SQLSTATE) == b"53100"
            _fsize(pids, "unlimited:unlimited")
            wait_until(lambda: _runs(c), 30, "statements accepted again", g)
            wait_until(lambda: readyz(g)[0] == 200, 20, "/readyz ready again", g)
        wait_until(lambda: records(path, "session.end"), 20, "the session.end record", g)
    stmts = records(path, "statement")
    refusals = [r for r in stmts if r["verdict"] == "refused"]
    assert len(refusals) >= 4, [(r["statement"], r["verdict"]) for r in stmts]
    for r in refusals:
        assert r["reason"] == "audit-unavailable" and r["error"]["code"] == "53100", r
        assert r["statement"].startswith("SELECT")
    # the guardrail block is still a block, and nothing else is
    blocks = [r for r in stmts if r["verdict"] == "block"]
    assert [r["statement"] for r in blocks] == ["DROP TABLE audited_by_workers"], blocks
    assert blocks[0]["error"]["code"] == "42501"
    assert cli("audit", "verify", str(path)).returncode == 0


def _runs(c) -> bool:
    try:
        return c.execute("SELECT 4").fetchall() == [(4,)]
    except psycopg.errors.DiskFull:
        return False


# ---- the chains without a gateway ---------------------------------------------------------------

T0 = 1_700_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _cfg(path, **kw):
    from hoopwire.config import AuditConfig
    kw.setdefault("segment_bytes", 4096)
    kw.setdefault("flush_interval", 0.01)
    return AuditConfig(path=str(path), **kw)


def _rec(i: int) -> dict:
    return {"type": "statement", "session": f"s{i % 3}", "statement": f"select {i}", "n": i}


def _log(config, gw: str, clock=None):
    from hoopwire.audit import AuditLog
    from hoopwire.audit.log import new_chain_id
    return AuditLog(config, gateway_id=gw, chain=new_chain_id(gw),
                    **({"clock": clock} if clock else {}))


async def _until_written(log, n: int) -> None:
    deadline = time.monotonic() + 20                   # a hang guard
    while log.written < n or log.pending:
        assert time.monotonic() < deadline, f"{log.written} of {n} written"
        await asyncio.sleep(0.01)


def test_writers_sharing_a_directory_at_once_each_keep_a_chain(tmp_path):
    from hoopwire.audit import verify

    async def run():
        logs = [_log(_cfg(tmp_path), f"gw/{i}") for i in range(3)]
        await asyncio.gather(*(log.start() for log in logs))     # register concurrently
        for i in range(300):
            logs[i % 3].append(_rec(i))
            if i % 50 == 49:
                await asyncio.sleep(0)
        await asyncio.gather(*(log.close() for log in logs))
    asyncio.run(run())
    res = verify(str(tmp_path))
    assert res.ok and res.chains == 3 and res.records == 303, res.describe()
    assert res.describe() == f"ok: 303 records in 3 chains ({res.segments} segments)"
    manifest = [orjson.loads(ln) for ln in (tmp_path / "chains.jsonl").read_bytes().splitlines()]
    assert [m["seq"] for m in manifest] == [1, 2, 3]
    assert all(b["prev"] == a["hash"] for a, b in zip(manifest, manifest[1:]))


def test_a_restart_starts_a_new_chain_and_sets_aside_a_dead_ones_torn_line(tmp_path):
    from hoopwire.audit import verify
    from hoopwire.audit.log import chain_segments

    async def one(n):
        log = _log(_cfg(tmp_path), "gw/0")
        await log.start()
        for i in range(n):
            log.append(_rec(i))
        await log.close()
        return log.chain
    first = asyncio.run(one(20))
    name = chain_segments(str(tmp_path))[first][-1][1]
    data = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(data[:-7])          # a crash in the middle of a write
    res = verify(str(tmp_path))
    assert res.broken.reason == "truncated final record" and res.broken.segment == name
    second = asyncio.run(one(5))
    assert second != first
    assert (tmp_path / (name + ".partial")).read_bytes() == \
        data.splitlines(keepends=True)[-1][:-7] + b"\n"
    res = verify(str(tmp_path))
    assert res.ok and res.chains == 2 and res.records == 20 + 5 + 2 - 1, res.describe()


def test_an_unregistered_chain_is_broken(tmp_path):
    from hoopwire.audit import verify
    from hoopwire.audit.log import chain_segments, new_chain_id

    async def run():
        log = _log(_cfg(tmp_path), "gw/0")
        await log.start()
        for i in range(10):
            log.append(_rec(i))
        await log.close()
    asyncio.run(run())
    (chain, segs), = chain_segments(str(tmp_path)).items()
    forged = new_chain_id("gw/9")
    shutil.copy(tmp_path / segs[0][1], tmp_path / segs[0][1].replace(chain, forged))
    res = verify(str(tmp_path))
    assert not res.ok and f"chain {forged} is not in chains.jsonl" in res.broken.reason


def test_retention_retires_the_chains_of_writers_that_are_gone(tmp_path):
    # A live writer applies retention to what writers that are gone left (their lock is free),
    # vouching for it in its own chain, and never touches a live writer's chain.
    from hoopwire.audit import verify
    from hoopwire.audit.log import chain_segments
    clock = Clock()

    async def write(gw, n, **kw):
        log = _log(_cfg(tmp_path, **kw), gw, clock)
        await log.start()
        for i in range(n):
            log.append(_rec(i))
        await _until_written(log, n)
        return log

    async def run():
        dead = await write("gw/1", 200)
        await dead.close()                                  # its lock is free now
        other = await write("gw/2", 1)                      # alive throughout, as old
        clock.now += 2 * 86400
        live = await write("gw/0", 5, retention_days=1)     # retention runs at start
        await live.close()
        # by size: a bigger dead chain loses its oldest segments only, down to the cap
        big = await write("gw/3", 300)
        await big.close()
        clock.now += 61
        live2 = await write("gw/0", 5, max_bytes=40_000)
        await live2.close()
        await other.close()
        return dead.chain, other.chain, big.chain
    dead, other, big = asyncio.run(run())
    found = chain_segments(str(tmp_path))
    assert dead not in found and not (tmp_path / f"audit-{dead}.lock").exists()
    assert other in found and big in found
    res = verify(str(tmp_path))
    assert res.ok, res.describe()
    assert res.describe().endswith("older records removed by retention")
    notes = [r for r in read_records(str(tmp_path)) if r["type"] == "retention"]
    assert {r["gw"] for r in notes} == {"gw/0"}
    # removed whole: said in the manifest (the first live writer's chain went too, by size)
    manifest = [orjson.loads(ln) for ln in (tmp_path / "chains.jsonl").read_bytes().splitlines()]
    retired = [r["chain"] for r in manifest if r["type"] == "chain.retired"]
    assert retired[0] == dead and other not in retired and big not in retired
    # partly removed: said in the chain itself, which keeps its newest segment
    (part,) = [r for r in notes if r["chain"] == big]
    assert part["oldest_kept_seq"] == found[big][0][0] > 1
    assert sum(f.stat().st_size for f in tmp_path.glob("audit-*.jsonl")) <= 40_000 + 4096
    # the notes vouch for exactly what they name: deleting the live writer's chain is found
    for _, name in found[other]:
        os.unlink(tmp_path / name)
    assert f"chain {other} is registered" in verify(str(tmp_path)).broken.reason
