"""Session recording: what the data path did, into the audit log and the session index.

Each session's relay writes every finished statement straight into the session's StatementLog
(ext/hoopwire/_auditlog.pyx): the common record (no error, no captured rows) as a copy of its fields, in
C, with no Python object per statement -- the audit thread writes its JSON; the others through
`_statement` here, as a dict (statement text with literals masked unless configured otherwise,
error messages through the masker). Every `flush_interval` (default 1 s) the recorder takes
each log's records as one batch, queues it on the audit log and wakes the log's flusher, which
chains and writes them in its own thread; index rows (with `index_statements`, which sends
every statement the dict way) go to the store in one batched call. The interval is what a
statement may wait before it is on disk, and what a crash may lose; each flush also has a
fixed cost on a busy machine (bench/README.md, "Recording"), which is why it is not shorter.

If the log cannot be written and `on_write_failure = "fail-closed"`, every open session (and
every new one) answers new statements with an error until writing works again; with
`fail-open` they carry on and `hoopwire_audit_write_failures_total` counts the failing flushes.
A refused statement is recorded with verdict "refused", reason "audit-unavailable" and the
53100 its client got (not as a guardrail block, although the relay refuses it the same way: its
marker says which, see _marker_verdict); /readyz answers 503 meanwhile (audit_refusing).

Each process writes a chain of its own (a new one at every start), so `--workers` processes
share the log's directory; a session is served by one process, so its records are in one chain.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from typing import Any

from prometheus_client import Counter, Gauge

from hoopwire._auditlog import StatementEncoder, StatementLog, keep_literals, record_times
from hoopwire.audit.log import AuditLog, new_chain_id, pending_from
from hoopwire.config import AuditConfig
from hoopwire.logs import event

log = logging.getLogger("hoopwire.audit")

__all__ = ["Recorder", "audit_refusing"]

AUDIT_RECORDS = Counter("hoopwire_audit_records", "Audit records handed to the log", ["type"])
AUDIT_FAILURES = Counter("hoopwire_audit_write_failures",
                         "Flushes that found the audit log unwritable")
AUDIT_REFUSING = Gauge("hoopwire_audit_refusing",
                       "1 while statements are refused because the audit log cannot be written "
                       "(fail-closed)", multiprocess_mode="livemax")
# livemax: a worker that dies while refusing (SIGKILL) must not keep the parent's /readyz
# failing -- the supervisor drops a dead process's live gauges (mark_process_dead).

_PRUNE_EVERY = 3600.0
REFUSED_MESSAGE = ("the gateway cannot write its audit log; statements are refused until it can "
                   "(on_write_failure = fail-closed)")


def audit_refusing(gateway, registry=None) -> bool:
    """Whether statements are being refused because the audit log cannot be written: this
    process's recorder, or (the multi-worker parent, which records nothing itself) any worker's
    hoopwire_audit_refusing in the shared metrics `registry`."""
    recorder = getattr(gateway, "recorder", None)
    if recorder is not None:
        return recorder.refusing
    if registry is None:
        return False
    for family in registry.collect():
        if family.name == "hoopwire_audit_refusing":
            return any(sample.value > 0 for sample in family.samples)
    return False


class Recorder:

    def __init__(self, cfg: AuditConfig, store=None, *, gateway_id: str,
                 statement_limit: int = 4096, marker_prefix: bytes = b"", clock=time.time):
        self.cfg = cfg
        self.store = store
        # A chain of its own for every process start: workers share the directory, and a
        # restarted worker never appends to a chain its predecessor may have left mid-batch.
        self.log = AuditLog(cfg, gateway_id=gateway_id, clock=clock,
                            chain=new_chain_id(gateway_id))
        self.gateway_id = gateway_id
        self._statement_limit = statement_limit
        # one encoder per dialect: statement text is masked by the session's own SQL lexer
        self._encoders: dict[object, StatementEncoder] = {}
        self._by_type: dict[str, int] = {}         # records per type since the last flush
        self.marker_prefix = marker_prefix
        self.clock = clock
        self._open: dict[str, Any] = {}            # session id -> Session
        self._logs: dict[str, StatementLog] = {}   # session id -> its statements (the relay's)
        self._lost_seen: dict[str, int] = {}       # session id -> failures already reported
        self._index_sessions: list[dict] = []
        self._index_statements: list[dict] = []
        self._task: asyncio.Task | None = None
        self._refusing = False
        self._pruned_at = 0.0

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.log.start()
        await self._close_orphans()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _close_orphans(self) -> None:
        """Sessions this gateway id left open in the index when it last stopped without ending
        them (crash, SIGKILL): their clients are gone with the old process. Closed in the index
        and noted in the log (their session.end records were never written)."""
        if self.store is None:
            return
        try:
            n = await self.store.close_orphaned_sessions(self.gateway_id, self.clock())
        except Exception as e:  # noqa: BLE001 -- the index can lag; serving must not wait
            event(log, "closing sessions left open by a previous run failed", logging.WARNING,
                  error=str(e))
            return
        if n:
            event(log, "sessions left open by a previous run closed", logging.WARNING, count=n)
            self.append({"type": "sessions.orphaned", "count": n, "reason": "gateway_restart"})

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for sid, s in list(self._open.items()):
            self._drain(sid, s)
        self._count_records()
        await self._write_index()
        await self.log.close()

    @property
    def refusing(self) -> bool:
        return self._refusing

    # -- events from the sessions ---------------------------------------------------------------

    def statement_log(self, s) -> StatementLog:
        """The log the session's relay writes its statements into (before session_started)."""
        ref = weakref.ref(s)             # the relay holds the log: no cycle back to the session
        encoder = self._encoder_for(s.listener.dialect)
        adapter = s.listener.adapter
        s.statements = StatementLog(encoder, s.id,
                                    lambda raw, n: self._statement(ref(), raw, n, encoder, adapter),
                                    pending_from, self.cfg.index_statements)
        return s.statements

    def session_started(self, s) -> None:
        self._open[s.id] = s
        if getattr(s, "statements", None) is not None:
            self._logs[s.id] = s.statements
        ident = s.identity
        self.append({"type": "session.start", "session": s.id,
                     "issuer": ident.issuer or "", "subject": ident.subject,
                     "groups": sorted(ident.groups), "token_id": ident.token_id,
                     "method": ident.method, "connection": s.listener.name, "role": s.role,
                     "database": s.database, "client": s.peer, "tls": s.tls})
        self._index_sessions.append(self._session_row(s))

    def session_ended(self, s, reason: str, bytes_in: int, bytes_out: int) -> None:
        if s.id not in self._open:
            return
        self._drain(s.id, s)
        self._open.pop(s.id, None)
        slog = self._logs.pop(s.id, None)
        self._lost_seen.pop(s.id, None)
        n = slog.statements if slog is not None else 0
        now = self.clock()
        self.append({"type": "session.end", "session": s.id, "reason": reason,
                     "bytes_in": bytes_in, "bytes_out": bytes_out, "statements": n,
                     "seconds": round(now - s.started, 3)})
        row = self._session_row(s)
        row.update(ended_at=now, bytes_in=bytes_in, bytes_out=bytes_out, close_reason=reason,
                   statements=n)
        self._index_sessions.append(row)

    def session_event(self, s, kind: str, **fields) -> None:
        """A decision worth its own record: a block, a hold, an approval outcome."""
        self._drain(s.id, s)            # after the statements that came before it
        rec = {"type": kind, "session": s.id}
        rec.update(fields)
        self.append(rec)

    def append(self, record: dict) -> None:
        t = record.get("type", "?")
        self._by_type[t] = self._by_type.get(t, 0) + 1
        self.log.append(record)

    def _count_records(self) -> None:
        by, self._by_type = self._by_type, {}
        for t, n in by.items():
            AUDIT_RECORDS.labels(t).inc(n)

    # -- the flusher -------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.flush_interval)
            try:
                for sid, s in list(self._open.items()):
                    self._drain(sid, s)
                self.log.flush_soon()
                self._count_records()
                self._check_health()
                await self._write_index()
                await self._prune()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 -- the recorder must outlive one bad flush
                log.exception("audit flush failed")

    def _drain(self, sid: str, s) -> None:
        slog = self._logs.get(sid)
        if slog is None:
            return
        batch = slog.take()
        if slog.lost != self._lost_seen.get(sid, 0):
            event(log, "statements could not be recorded", logging.ERROR, session=sid,
                  count=slog.lost - self._lost_seen.get(sid, 0))
            self._lost_seen[sid] = slog.lost
        if batch is None:
            return
        self._by_type["statement"] = self._by_type.get("statement", 0) + len(batch)
        self.log.append_encoded([batch])

    def _encoder_for(self, dialect) -> StatementEncoder:
        enc = self._encoders.get(dialect)
        if enc is None:
            mask = dialect.mask_literals if self.cfg.statement_literals == "mask" else keep_literals
            enc = self._encoders[dialect] = StatementEncoder(self.gateway_id, mask,
                                                             self._statement_limit)
        return enc

    def _statement(self, s, raw: tuple, n: int, encoder: StatementEncoder, adapter) -> dict:
        """A statement record as a dict: the StatementLog's path for errors and captured rows
        (and for every statement with index_statements, which also indexes it here)."""
        started, ended, sql, tags, error, masked, kept = raw
        sid = s.id if s is not None else None
        started, duration, ts = record_times(started, ended)
        err = adapter.error_fields(error)
        verdict = "allow"
        reason = None
        if err is not None:
            msg = err.get("message", "")
            if self.marker_prefix and self.marker_prefix.decode() in msg:
                if self._marker_verdict(msg, adapter) == "refused":
                    verdict, reason = "refused", "audit-unavailable"
                    err = {"code": adapter.code("audit_unavailable"), "message": REFUSED_MESSAGE}
                else:
                    verdict, err = "block", {"code": adapter.code("blocked"),
                                             "message": "blocked by a hoopwire rule"}
            else:
                verdict = "error"
                if s is not None and s.masker is not None and msg:
                    err["message"] = s.masker.engine.mask_text(msg.encode())[0].decode(
                        "utf-8", "replace")
        rec = {"type": "statement", "session": sid, "n": n, "started": started,
               "statement": encoder.text(sql or b""), "verdict": verdict,
               "tags": [t.decode("ascii", "replace") for t in tags],
               "rows": adapter.rows_affected(tags), "masked": masked, "duration_ms": duration,
               "ts": ts, "gw": self.gateway_id}
        if err is not None:
            rec["error"] = err
        if reason is not None:
            rec["reason"] = reason
        if kept:
            rec["result"] = [adapter.row_values(r) for r in kept]
        if self.cfg.index_statements:
            self._index_statements.append({
                "session_id": sid, "seq": n, "ts": started, "statement": rec["statement"],
                "verdict": verdict, "rules": [], "approval_id": None, "rows": rec["rows"],
                "masked": masked, "duration_ms": duration,
                "error": (err or {}).get("message")})
        return rec

    def _marker_verdict(self, message: str, adapter) -> str:
        """"refused" or "block" for a statement the relay replaced by a marker (the server's
        error names the marker either way): a refusal's marker carries the relay's refused
        mark (adapter.refused_mark) after the prefix, a guardrail block's or a denied
        approval's does not. Exact, whatever the clock, the session's other statements or the
        refusal episodes did meanwhile."""
        refused = self.marker_prefix.decode() + adapter.refused_mark.decode()
        return "refused" if refused in message else "block"

    def _check_health(self) -> None:
        refusing = self.log.refusing
        if not self.log.healthy:
            AUDIT_FAILURES.inc()
        if refusing == self._refusing:
            return
        self._refusing = refusing
        AUDIT_REFUSING.set(1 if refusing else 0)
        event(log, "audit log unwritable: refusing statements" if refusing else
              "audit log writable again: statements accepted",
              logging.ERROR if refusing else logging.WARNING)
        for s in self._open.values():
            if s.relay is not None:
                s.relay.refuse_statements(self.refuse_error(s) if refusing else None)

    @staticmethod
    def refuse_error(s) -> bytes:
        """What a statement of session `s` is answered with while the audit is unwritable."""
        return s.listener.adapter.condition("audit_unavailable", REFUSED_MESSAGE)

    async def _write_index(self) -> None:
        if self.store is None:
            self._index_sessions.clear()
            self._index_statements.clear()
            return
        sessions, self._index_sessions = self._index_sessions, []
        statements, self._index_statements = self._index_statements, []
        try:
            if sessions:
                # one row per session: the newest state wins
                latest = {}
                for r in sessions:
                    latest[r["id"]] = r
                await self.store.record_sessions(list(latest.values()))
            if statements:
                await self.store.record_statements(statements)
        except Exception as e:  # noqa: BLE001 -- the log is the record; the index can lag
            event(log, "session index write failed", logging.WARNING, error=str(e))

    async def _prune(self) -> None:
        if self.store is None or not self.cfg.retention_days:
            return
        now = self.clock()
        if now - self._pruned_at < _PRUNE_EVERY:
            return
        self._pruned_at = now
        try:
            n = await self.store.prune(now - self.cfg.retention_days * 86400.0)
            if n:
                event(log, "session index pruned", rows=n)
        except Exception as e:  # noqa: BLE001
            event(log, "session index prune failed", logging.WARNING, error=str(e))

    def _session_row(self, s) -> dict:
        ident = s.identity
        return {"id": s.id, "issuer": ident.issuer or "", "subject": ident.subject,
                "groups": sorted(ident.groups),
                "token_id": ident.token_id, "method": ident.method, "connection": s.listener.name,
                "role": s.role, "database": s.database, "client_addr": s.peer, "tls": s.tls,
                "started_at": s.started, "ended_at": None, "bytes_in": 0, "bytes_out": 0,
                "close_reason": None,
                "statements": self._logs[s.id].statements if s.id in self._logs else 0,
                "gateway_id": self.gateway_id}
