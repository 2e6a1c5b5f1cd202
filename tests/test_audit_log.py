"""The audit log: every kind of tampering is found at the exact record, restarts and retention
keep one verifiable chain, and a failing disk neither loses records nor leaves a hole."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import orjson
import pytest

from hoopwire.audit import AuditLog, BrokenRecord, main_verify, read_records, verify
from hoopwire.audit.log import segment_files
from hoopwire.config import AuditConfig

REPO = Path(__file__).resolve().parents[1]
EDITED = "hash mismatch (record edited?)"
REMOVED = "seq gap / prev mismatch (record removed?)"
REORDERED = "seq out of order (record inserted or reordered?)"
UNEXPLAINED = ("log does not start at seq 1 and no retention record explains it "
               "(segments removed?)")
T0 = 1_700_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def cfg(path, **kw) -> AuditConfig:
    kw.setdefault("segment_bytes", 4096)
    kw.setdefault("flush_interval", 0.01)
    return AuditConfig(path=str(path), **kw)


def record(i: int) -> dict:
    # Unicode, floats, nesting: the canonical encoding must survive a parse/re-encode round trip.
    return {"type": "statement", "session": f"s{i % 5}", "sql": f"select {i} -- é ✓",
            "rows": i * 7, "ratio": i / 3, "tags": ["a", {"n": i, "none": None}]}


async def write(config: AuditConfig, records, *, clock=None, gateway_id="gw-test") -> AuditLog:
    log = AuditLog(config, gateway_id=gateway_id, **({"clock": clock} if clock else {}))
    await log.start()
    for r in records:
        log.append(r)
    await log.close()
    return log


async def until_written(log: AuditLog, n: int, timeout: float = 20.0) -> None:
    """Wait until the log has written `n` records (the timeout is a hang guard)."""
    deadline = time.monotonic() + timeout
    while log.written < n or log.pending:
        assert time.monotonic() < deadline, f"{log.written} of {n} records written in {timeout} s"
        await asyncio.sleep(0.01)


def names(d) -> list[str]:
    return [n for _, n in segment_files(str(d))]


def lines(d, name) -> list[bytes]:
    return (Path(d) / name).read_bytes().splitlines(keepends=True)


def put(d, name, ls) -> None:
    (Path(d) / name).write_bytes(b"".join(ls))


def seq_of(line: bytes) -> int:
    return orjson.loads(line)["seq"]


@pytest.fixture(scope="module")
def fresh_master(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("audit") / "log"
    asyncio.run(write(cfg(d), (record(i) for i in range(1, 501))))
    return d


@pytest.fixture
def fresh(fresh_master, tmp_path) -> Path:
    """A private copy of a 500-record log to tamper with."""
    d = tmp_path / "log"
    shutil.copytree(fresh_master, d)
    return d


def middle(d) -> str:
    segs = names(d)
    return segs[len(segs) // 2]


# ---- a clean log ------------------------------------------------------------------------------

def test_fresh_log_verifies_across_segments(fresh):
    res = verify(str(fresh))
    assert res.ok and res.broken is None
    assert (res.records, res.first_seq, res.last_seq) == (500, 1, 500)
    assert res.segments == len(names(fresh)) > 3
    assert res.describe() == f"ok: 500 records (seq 1..500) in {res.segments} segments"
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    for name in names(fresh):
        assert (fresh / name).stat().st_size <= 4096
        assert stat.S_IMODE((fresh / name).stat().st_mode) == 0o600
    recs = list(read_records(str(fresh)))
    assert [r["seq"] for r in recs] == list(range(1, 501))
    assert recs[0]["prev"] == "0" * 64 and recs[0]["gw"] == "gw-test"
    assert recs[41]["sql"] == "select 42 -- é ✓"
    assert recs[41]["tags"] == ["a", {"n": 42, "none": None}]
    assert all(b["prev"] == a["hash"] for a, b in zip(recs, recs[1:]))


# ---- tampering --------------------------------------------------------------------------------

def test_edited_field_is_found_at_that_line(fresh):
    name = middle(fresh)
    ls = lines(fresh, name)
    rec = orjson.loads(ls[4])
    rec["sql"] = "select 1"
    ls[4] = orjson.dumps(rec, option=orjson.OPT_SORT_KEYS) + b"\n"
    put(fresh, name, ls)
    res = verify(str(fresh))
    assert not res.ok
    assert res.broken == BrokenRecord(name, 5, rec["seq"], EDITED)
    assert res.describe() == f"BROKEN at {name} line 5 (seq {rec['seq']}): {EDITED}"


def test_edited_and_rehashed_record_breaks_the_next_link(fresh):
    from hoopwire.audit.log import canonical, chain_hash, with_hash
    name = middle(fresh)
    ls = lines(fresh, name)
    rec = orjson.loads(ls[4])
    rec["rows"] = -1
    del rec["hash"]
    body = canonical(rec)
    rec["hash"] = chain_hash(rec["prev"], body)
    ls[4] = with_hash(body, rec["hash"]) + b"\n"
    put(fresh, name, ls)
    assert verify(str(fresh)).broken == BrokenRecord(name, 6, rec["seq"] + 1, REMOVED)


def test_removed_line_is_found_at_the_next_record(fresh):
    name = middle(fresh)
    ls = lines(fresh, name)
    gone = seq_of(ls[4])
    del ls[4]
    put(fresh, name, ls)
    assert verify(str(fresh)).broken == BrokenRecord(name, 5, gone + 1, REMOVED)


def test_inserted_lines_are_found(fresh):
    name = middle(fresh)
    ls = lines(fresh, name)
    copy = ls[1]
    ls.insert(5, copy)                    # a replayed earlier record
    put(fresh, name, ls)
    assert verify(str(fresh)).broken == BrokenRecord(name, 6, seq_of(copy), REORDERED)

    ls = lines(fresh, name)
    ls[5] = b'{"type":"statement","sql":"forged"}\n'
    put(fresh, name, ls)
    assert verify(str(fresh)).broken == BrokenRecord(name, 6, None,
                                                     "missing or malformed seq/prev/hash")
    ls[5] = b"this is not json\n"
    put(fresh, name, ls)
    assert verify(str(fresh)).broken == BrokenRecord(name, 6, None, "not valid JSON")


def test_swapped_lines_are_found(fresh):
    name = middle(fresh)
    ls = lines(fresh, name)
    ls[4], ls[5] = ls[5], ls[4]
    put(fresh, name, ls)
    assert verify(str(fresh)).broken == BrokenRecord(name, 5, seq_of(ls[4]), REMOVED)


def test_reformatted_line_is_found(fresh):
    name = middle(fresh)
    ls = lines(fresh, name)
    ls[2] = json.dumps(orjson.loads(ls[2]), sort_keys=True).encode() + b"\n"  # spaces added
    put(fresh, name, ls)
    res = verify(str(fresh))
    assert (res.broken.segment, res.broken.line) == (name, 3)
    assert "canonical" in res.broken.reason


def test_truncated_last_line_then_restart_sets_it_aside(fresh):
    last = names(fresh)[-1]
    data = (fresh / last).read_bytes()
    (fresh / last).write_bytes(data[:-10])            # a crash in the middle of seq 500
    torn = data.splitlines(keepends=True)[-1][:-10]
    n = len(lines(fresh, last))
    assert verify(str(fresh)).broken == BrokenRecord(last, n, None, "truncated final record")
    assert [r["seq"] for r in read_records(str(fresh))][-1] == 499   # still being written

    asyncio.run(write(cfg(fresh), [record(i) for i in range(3)]))
    assert (fresh / (last + ".partial")).read_bytes() == torn + b"\n"   # kept, not destroyed
    res = verify(str(fresh))
    assert res.ok and (res.records, res.first_seq, res.last_seq) == (502, 1, 502)


# ---- restarts -----------------------------------------------------------------------------------

def test_restart_continues_seq_and_chain(tmp_path):
    d = tmp_path / "log"
    asyncio.run(write(cfg(d), [record(i) for i in range(100)], gateway_id="gw-a"))
    asyncio.run(write(cfg(d), [record(i) for i in range(100)], gateway_id="gw-b"))
    res = verify(str(d))
    assert res.ok and (res.records, res.first_seq, res.last_seq) == (200, 1, 200)
    recs = list(read_records(str(d)))
    assert [r["gw"] for r in recs] == ["gw-a"] * 100 + ["gw-b"] * 100
    assert recs[100]["prev"] == recs[99]["hash"]


def test_restart_on_a_full_segment_starts_a_new_one(tmp_path):
    d = tmp_path / "log"
    asyncio.run(write(cfg(d, segment_bytes=1000), [record(1), record(2), record(3)]))
    assert len(names(d)) == 1                          # one record per segment would be 3
    size = (d / names(d)[0]).stat().st_size
    asyncio.run(write(cfg(d, segment_bytes=size), [record(4)]))
    assert names(d)[-1] == "audit-000000000004.jsonl"
    assert verify(str(d)).ok


def test_flush_soon_writes_without_waiting_out_the_interval(tmp_path):
    # The recorder wakes the flusher after each drain, so a statement waits for one interval
    # (the recorder's), not for the recorder's and then the log's own in turn.
    async def run() -> tuple[int, int]:
        log = AuditLog(cfg(tmp_path / "log", flush_interval=3600.0), gateway_id="gw-test")
        await log.start()
        try:
            log.append(record(1))
            log.flush_soon()
            for _ in range(500):
                if log.written:
                    break
                await asyncio.sleep(0.01)
            return log.written, log.pending
        finally:
            await log.close()
    assert asyncio.run(run()) == (1, 0)
    assert verify(str(tmp_path / "log")).records == 1


# ---- retention ----------------------------------------------------------------------------------

def test_retention_by_max_bytes_keeps_a_verifiable_tail(tmp_path):
    d = tmp_path / "log"
    clock = Clock()

    async def run():
        log = AuditLog(cfg(d, max_bytes=20_000), gateway_id="gw", clock=clock)
        await log.start()
        for i in range(500):
            log.append(record(i))
        await until_written(log, 500)                  # in segments before the clock moves
        clock.now += 61                                # retention runs at most once a minute
        log.append(record(500))
        await log.close()

    asyncio.run(run())
    res = verify(str(d))
    assert res.ok, res.describe()
    assert res.first_seq > 1 and res.last_seq == 502   # 501 appended + the retention record
    assert sum(p.stat().st_size for p in d.glob("audit-*.jsonl")) <= 20_000 + 1000
    assert res.describe().endswith("older records removed by retention")
    (note,) = [r for r in read_records(str(d)) if r["type"] == "retention"]
    assert note["oldest_kept_seq"] == res.first_seq
    assert note["removed"][0] == "audit-000000000001.jsonl"

    # A restart under the cap removes nothing more and the chain goes on.
    asyncio.run(write(cfg(d, max_bytes=20_000), [record(1)], clock=clock))
    assert verify(str(d)).ok

    # Removing one more segment by hand is not retention.
    oldest = names(d)[0]
    os.unlink(d / oldest)
    res = verify(str(d))
    assert res.broken == BrokenRecord(names(d)[0], 1, int(names(d)[0][6:18]), UNEXPLAINED)


def test_retention_by_age(tmp_path):
    d = tmp_path / "log"
    clock = Clock()

    async def run():
        log = AuditLog(cfg(d, retention_days=1), gateway_id="gw", clock=clock)
        await log.start()
        for i in range(200):
            log.append(record(i))
        await until_written(log, 200)                  # written, and stamped, at T0
        clock.now += 2 * 86400
        for i in range(10):
            log.append(record(i))
        await log.close()

    asyncio.run(run())
    res = verify(str(d))
    assert res.ok and res.first_seq > 1, res.describe()
    recs = list(read_records(str(d)))
    assert recs[-1]["type"] == "retention" and recs[-1]["oldest_kept_seq"] == res.first_seq
    # No closed segment whose newest record is older than a day survived.
    for name in names(d)[:-1]:
        assert orjson.loads(lines(d, name)[-1])["ts"] >= clock.now - 86400
    assert len(recs[-1]["removed"]) >= 5 and recs[0]["ts"] == T0   # old records may stay


def test_hand_deleted_oldest_segment_is_broken(fresh):
    segs = names(fresh)
    os.unlink(fresh / segs[0])
    res = verify(str(fresh))
    first = seq_of(lines(fresh, segs[1])[0])
    assert res.broken == BrokenRecord(segs[1], 1, first, UNEXPLAINED)


def test_hand_deleted_middle_segment_is_broken(fresh):
    segs = names(fresh)
    os.unlink(fresh / segs[3])
    res = verify(str(fresh))
    assert res.broken == BrokenRecord(segs[4], 1, seq_of(lines(fresh, segs[4])[0]), REMOVED)


def test_renamed_segment_is_broken(fresh):
    segs = names(fresh)
    (fresh / segs[2]).rename(fresh / segs[2].replace("-0000", "-0009"))  # now sorts last
    assert not verify(str(fresh)).ok


# ---- reading and the CLI entry ------------------------------------------------------------------

def test_read_records_by_session(fresh):
    recs = list(read_records(str(fresh), session_id="s3"))
    assert len(recs) == 100 and all(r["session"] == "s3" for r in recs)
    assert [r["seq"] for r in recs] == sorted(r["seq"] for r in recs)
    assert list(read_records(str(fresh), session_id="nobody")) == []


def test_main_verify_exit_codes(fresh, tmp_path):
    out = io.StringIO()
    assert main_verify(str(fresh), out) == 0
    assert out.getvalue().startswith("ok: 500 records (seq 1..500)")

    name = middle(fresh)
    ls = lines(fresh, name)
    del ls[0]
    put(fresh, name, ls)
    out = io.StringIO()
    assert main_verify(str(fresh), out) == 1
    assert out.getvalue().startswith(f"BROKEN at {name} line 1")

    out = io.StringIO()
    assert main_verify(str(tmp_path / "missing"), out) == 2
    assert "cannot read" in out.getvalue()


# ---- a failing disk -----------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import asyncio, json, resource, signal, sys, time
    from hoopwire._auditlog import StatementEncoder, StatementLog
    from hoopwire.audit import AuditLog, read_records, verify
    from hoopwire.audit import log as audit_log
    from hoopwire.config import AuditConfig

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # EFBIG instead of death past the limit
    _, HARD = resource.getrlimit(resource.RLIMIT_FSIZE)

    async def until(cond, what):
        deadline = time.monotonic() + 20              # a hang guard, not a speed claim
        while not cond():
            if time.monotonic() >= deadline:
                raise SystemExit(f"timed out waiting for {what}")
            await asyncio.sleep(0.01)

    async def scenario(path, mode, max_pending, batches=False):
        audit_log.MAX_PENDING = max_pending
        resource.setrlimit(resource.RLIMIT_FSIZE, (20000, HARD))
        log = AuditLog(AuditConfig(path=path, segment_bytes=1 << 20, on_write_failure=mode,
                                   flush_interval=0.01), gateway_id="child")
        await log.start()
        # counts the log's write attempts, to wait for retries rather than sleep
        attempts = [0]
        writer_flush = log._writer.flush
        def counting_flush(*args):
            attempts[0] += 1
            return writer_flush(*args)
        log._writer.flush = counting_flush
        rec = lambda i: {"type": "statement", "session": "s", "sql": "x" * 120, "i": i}
        # or as a relay records them: one batch per session and flush (split by failures)
        slog = StatementLog(StatementEncoder("child", lambda sql: sql.decode()), "s",
                            None, audit_log.pending_from)
        def append(i):
            if not batches:
                return log.append(rec(i))
            slog.add_raw((1764451234.0 + i, 1764451234.5 + i, b"x" * 120, [], None, i, None))
            if i % 10 == 9 or i == 199:
                log.append_encoded([slog.take()])
        for i in range(150):                         # in bursts, as traffic would come
            append(i)
            if i % 10 == 9:
                await asyncio.sleep(0.02)
        await until(lambda: not log.healthy, "a failing write")
        out = {"failing": [log.healthy, log.refusing], "written_before": log.written}
        for i in range(150, 200):
            append(i)                                # appended while the disk refuses
        # two more write attempts (so at least one with the new records) fail as well
        tried = attempts[0]
        await until(lambda: attempts[0] >= tried + 2, "two more write attempts")
        out["still_failing"] = [log.healthy, log.refusing]
        resource.setrlimit(resource.RLIMIT_FSIZE, (HARD, HARD))
        await until(lambda: log.healthy and log.pending == 0, "the log to recover")
        out["recovered"] = [log.healthy, log.refusing]
        await log.close()
        out["written"], out["dropped"] = log.written, log.dropped
        res = verify(path)
        out["verify"] = [res.ok, res.records, res.first_seq, res.last_seq, res.describe()]
        recs = list(read_records(path))
        out["is"] = [r["i"] if "i" in r else r["masked"] for r in recs
                     if r["type"] == "statement"]
        out["notes"] = [r["count"] for r in recs if r["type"] == "audit.dropped"]
        return out

    base = sys.argv[1]
    print(json.dumps({
        "closed": asyncio.run(scenario(base + "/closed", "fail-closed", 100_000)),
        "open": asyncio.run(scenario(base + "/open", "fail-open", 100_000)),
        "open_small": asyncio.run(scenario(base + "/small", "fail-open", 40)),
        "closed_batches": asyncio.run(scenario(base + "/cb", "fail-closed", 100_000, True)),
        "small_batches": asyncio.run(scenario(base + "/sb", "fail-open", 40, True)),
    }))
""")


def test_write_failure_and_recovery_in_a_child(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], capture_output=True,
                          text=True, timeout=60, cwd=str(REPO), env=env)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    # One warning per failure episode, never record content.
    assert proc.stderr.count("write failed") == 5 and "xxxx" not in proc.stderr

    for mode, refusing in (("closed", True), ("open", False), ("closed_batches", True)):
        r = got[mode]
        assert r["failing"] == [False, refusing] and r["still_failing"] == [False, refusing]
        assert 0 < r["written_before"] < 150           # the limit cut the first batch short
        assert r["recovered"] == [True, False]
        assert (r["written"], r["dropped"]) == (200, 0)
        assert r["verify"][:4] == [True, 200, 1, 200], r["verify"]
        assert r["is"] == list(range(200))             # nothing lost, nothing doubled
        assert r["notes"] == []

    for mode in ("open_small", "small_batches"):       # fail-open with a full buffer
        r = got[mode]
        assert r["dropped"] > 0 and r["written"] + r["dropped"] == 200
        # The loss is in the log itself (a note can slip into the space a torn record left).
        assert sum(r["notes"]) == r["dropped"]
        assert r["verify"][0] and r["verify"][1] == r["written"] + len(r["notes"]), r["verify"]
        assert r["is"] == sorted(r["is"]) and r["is"][-1] == 199
