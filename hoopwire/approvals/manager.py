"""Held statements and their decisions: the approval workflow, protocol neutral.

A statement that hits an `approve` rule is held by the protocol relay (its client's socket stops
being read; nothing reaches the upstream). `ApprovalManager.hold` stores a request, announces it
(webhooks) and tells the client what it is waiting for; an approver decides through the admin
API (`decide`), possibly on another gateway process or replica; the manager that holds the
statement releases it -- on approve the statement runs, on deny or timeout the client gets an
error naming the request and the reason, and the session goes on.

Replicas and worker processes share the state store. A decision taken where the statement is
held releases it at once. One taken elsewhere is announced through the store: on PostgreSQL a
NOTIFY that every replica LISTENs for on a connection of its own, so a statement held in one
replica runs a few milliseconds after the approval went through another (an agent waiting on a
quarter-second poll cost more than the round trip it waits for). Every `poll_interval` (0.25 s
by default) the store is polled as well: that is how decisions reach worker processes sharing
SQLite, and how a replica catches up on what it missed while its listener was reconnecting.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Any, Optional

from hoopwire.logs import event

log = logging.getLogger("hoopwire.approvals")

__all__ = ["ApprovalManager", "ApprovalError", "gateway_id", "format_duration", "is_requester"]


def gateway_id(worker: int = 0) -> str:
    """A name for this gateway process that survives its restart (so the restarted process can
    mark what its predecessor held as abandoned): HOOPWIRE_GATEWAY_ID, or host/worker."""
    base = os.environ.get("HOOPWIRE_GATEWAY_ID") or socket.gethostname()
    return f"{base}/{worker}"


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds % 3600 == 0 and seconds >= 3600:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0 and seconds >= 60:
        return f"{seconds // 60}m"
    return f"{seconds}s"


def is_requester(request: dict, identity) -> bool:
    """Whether `identity` is the one who asked. Compared as (issuer, subject); a request
    stored before issuers were recorded compares subjects alone -- the stricter reading."""
    issuer, subject = identity.principal
    if request.get("requester_issuer") is None:
        return subject == request["requester"]
    return (issuer, subject) == (request["requester_issuer"], request["requester"])


class ApprovalError(Exception):
    """A decision that cannot be taken: `status` is the HTTP status the admin API answers."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class _Held:
    id: str
    relay: Any                    # the protocol relay: .decide(approved, error), .notify_client
    session: Any
    rule: str
    deny_error: Any               # callable(reason text) -> protocol error bytes
    timer: Optional[asyncio.TimerHandle] = None
    stored: bool = False


class ApprovalManager:

    def __init__(self, store, webhooks=None, *, gateway_id: str, poll_interval: float = 0.25,
                 clock=time.time):
        self.store = store
        self.webhooks = webhooks
        self.gateway_id = gateway_id
        self.poll_interval = poll_interval
        self.clock = clock
        self._held: dict[str, _Held] = {}
        # (issuer, subject, connection, rule) -> until; issuer "" for API keys
        self._grants: dict[tuple[str, str, str, str], float] = {}
        self._grants_at = 0.0
        self._poller: asyncio.Task | None = None
        self._watcher: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, *, abandon: bool = True) -> None:
        if abandon:
            n = await self.store.abandon_pending(self.gateway_id, self.clock())
            if n:
                event(log, "requests held before a restart marked abandoned", logging.WARNING,
                      gateway=self.gateway_id, count=n)
        await self._refresh_grants()
        loop = asyncio.get_running_loop()
        self._poller = loop.create_task(self._poll())
        self._watcher = loop.create_task(self.store.watch_decided(self._on_announced))

    async def shutdown(self) -> None:
        """The gateway is stopping: what it holds is abandoned now (stored, and the clients
        told), rather than left pending for the next start to find."""
        for rid in list(self._held):
            try:
                row = await self.store.decide_approval(rid, "abandoned", decided_by=None,
                                                       reason="the gateway stopped",
                                                       now=self.clock())
            except Exception as e:  # noqa: BLE001 -- the next start marks it
                event(log, "abandoning a request failed", logging.WARNING, request=rid,
                      error=str(e))
                row = None
            self._release(rid, False, "the gateway is stopping")
            if row is not None:
                self._publish("approval.decided", row)

    async def close(self) -> None:
        for t in (self._poller, self._watcher):
            if t is not None:
                t.cancel()
        for t in list(self._tasks):
            t.cancel()
        self._held.clear()

    def _spawn(self, coro) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    @property
    def held_count(self) -> int:
        return len(self._held)

    # -- the data path --------------------------------------------------------------------------

    def granted(self, identity, connection: str, rule: str) -> bool:
        """Whether a window grant lets `identity` pass `rule` on `connection` now. Keyed by
        (issuer, subject): another issuer's "agent-7" is another identity."""
        issuer, subject = identity.principal
        until = self._grants.get((issuer, subject, connection, rule))
        return until is not None and until > self.clock()

    def hold(self, *, relay, session, identity, connection: str, client_addr: str, rule: str,
             approvers: tuple[str, ...], timeout: float, reason_required: bool, statement: str,
             deny_error, notice=None) -> Optional[str]:
        """Hold a statement for approval: the request id, or None when a standing grant for this
        identity, connection and rule lets it through. Never waits: storing and announcing run
        in a task; `relay.decide(...)` is called once it is decided."""
        if self.granted(identity, connection, rule):
            return None
        issuer, subject = identity.principal
        now = self.clock()
        rid = "apr_" + secrets.token_hex(8)
        request = {
            "id": rid, "status": "pending", "created_at": now, "expires_at": now + timeout,
            "decided_at": None, "requester": subject, "requester_issuer": issuer,
            "requester_groups": sorted(identity.groups), "token_id": identity.token_id,
            "connection": connection, "session_id": session.id, "client_addr": client_addr,
            "statement": statement, "rule": rule, "approvers": list(approvers),
            "reason_required": reason_required, "decided_by": None, "reason": None,
            "scope": "once", "grant_until": None, "gateway_id": self.gateway_id,
        }
        held = _Held(rid, relay, session, rule, deny_error)
        self._held[rid] = held
        loop = asyncio.get_running_loop()
        held.timer = loop.call_later(timeout, lambda: self._spawn(self._expire(rid)))
        self._spawn(self._announce(held, request, notice))
        event(log, "statement held for approval", request=rid, connection=connection,
              issuer=issuer, subject=subject, rule=rule, timeout=format_duration(timeout),
              statement=statement)
        return rid

    async def _announce(self, held: _Held, request: dict, notice) -> None:
        try:
            await self.store.create_approval(request)
            held.stored = True
        except Exception as e:  # noqa: BLE001 -- no store, no approval: deny now, keep serving
            event(log, "approval request could not be stored; denied", logging.ERROR,
                  request=held.id, error=str(e))
            self._release(held.id, False, "the approval store is unavailable")
            return
        if notice is not None:
            held.relay.notify_client(notice)
        self._publish("approval.created", request)

    def session_closed(self, session) -> None:
        """The client left while held: its requests are cancelled."""
        for rid, held in list(self._held.items()):
            if held.session is session:
                self._held.pop(rid, None)
                if held.timer is not None:
                    held.timer.cancel()
                self._spawn(self._cancel(rid))

    def client_cancelled(self, session, error: bytes) -> bool:
        """The client sent a CancelRequest while a statement of its session was held: the
        statement is answered with `error` (57014) in its place, as a cancel answers a running
        one, and its request is cancelled (a later approval must not run what the client was
        told is cancelled). Whether anything was held."""
        found = False
        for rid, held in list(self._held.items()):
            if held.session is session:
                self._held.pop(rid, None)
                if held.timer is not None:
                    held.timer.cancel()
                held.relay.decide(False, error)
                self._spawn(self._cancel(rid, "the client cancelled the statement"))
                found = True
        return found

    async def _cancel(self, rid: str, reason: str = "the client disconnected") -> None:
        try:
            row = await self.store.decide_approval(rid, "cancelled", decided_by=None,
                                                   reason=reason, now=self.clock())
        except Exception as e:  # noqa: BLE001
            event(log, "cancelling a request failed", logging.WARNING, request=rid, error=str(e))
            return
        if row is not None:
            event(log, "approval request cancelled", request=rid, reason=reason)
            self._publish("approval.cancelled", row)

    async def _expire(self, rid: str) -> None:
        try:
            row = await self.store.decide_approval(rid, "expired", decided_by=None,
                                                   reason="no decision in time", now=self.clock())
        except Exception as e:  # noqa: BLE001 -- retried by the poller's expire_due
            event(log, "expiring a request failed", logging.WARNING, request=rid, error=str(e))
            self._release(rid, False, "no decision in time (the approval store is unavailable)")
            return
        if row is not None:
            self._apply(row)
            self._publish("approval.expired", row)

    # -- decisions ------------------------------------------------------------------------------

    async def decide(self, rid: str, approve: bool, *, identity, reason: str | None = None,
                     scope: str = "once", window: float | None = None,
                     connections: set[str] | None = None) -> dict:
        """An approver's decision (admin API / CLI). Raises ApprovalError with the HTTP status.

        `connections`: the connections this approver may decide for (None: any); a request
        of another connection is answered as missing, so its existence does not leak."""
        a = await self.store.get_approval(rid)
        if a is None or (connections is not None and a["connection"] not in connections):
            raise ApprovalError(404, f"no approval request {rid}")
        if a["status"] != "pending":
            raise ApprovalError(409, f"request {rid} is already {a['status']}")
        if is_requester(a, identity):
            raise ApprovalError(403, "the requester cannot decide their own request")
        if not set(a["approvers"]) & set(identity.groups):
            raise ApprovalError(403, "only members of " + ", ".join(a["approvers"]) +
                                " may decide this request")
        if a["reason_required"] and not (reason or "").strip():
            raise ApprovalError(400, "this rule requires a reason")
        if scope not in ("once", "window"):
            raise ApprovalError(400, "scope is \"once\" or \"window\"")
        grant_until = None
        if approve and scope == "window":
            if not window or window <= 0 or window > 24 * 3600:
                raise ApprovalError(400, "a window grant needs window_seconds between 1 and 86400")
            grant_until = self.clock() + window
        issuer, subject = identity.principal
        row = await self.store.decide_approval(
            rid, "approved" if approve else "denied", decided_by=subject,
            decided_by_issuer=issuer,
            reason=reason, scope=scope if approve else "once", grant_until=grant_until,
            now=self.clock())
        if row is None:
            cur = await self.store.get_approval(rid)
            raise ApprovalError(409, f"request {rid} is already "
                                     f"{cur['status'] if cur else 'gone'}")
        if grant_until is not None and row.get("requester_issuer") is not None:
            # (a request stored before issuers were recorded gets no window: whose it would
            # be cannot be told)
            await self.store.add_grant(subject=row["requester"], issuer=row["requester_issuer"],
                                       connection=row["connection"], rule=row["rule"],
                                       until=grant_until, approval_id=rid)
            key = (row["requester_issuer"], row["requester"], row["connection"], row["rule"])
            self._grants[key] = grant_until
        event(log, "approval request decided", request=rid, status=row["status"],
              decided_by=subject, decided_by_issuer=issuer, scope=row.get("scope"))
        held_here = rid in self._held
        self._apply(row)
        if not held_here or grant_until is not None:
            # held by another process or replica, or a time-window grant they should know of
            try:
                await self.store.announce_decided(rid)
            except Exception as e:  # noqa: BLE001 -- the decision is stored: polling finds it
                event(log, "announcing a decision failed", logging.WARNING, request=rid,
                      error=str(e))
        self._publish("approval.decided", row)
        return row

    def _apply(self, row: dict) -> None:
        """A decided request: release its statement if this process holds it."""
        status = row["status"]
        if status == "approved":
            self._release(row["id"], True, None)
            return
        who = row.get("decided_by")
        why = row.get("reason") or ""
        if status == "denied":
            text = f"denied by {who}" + (f": {why}" if why else "")
        elif status == "expired":
            text = "no decision in time"
        elif status == "abandoned":
            text = "the gateway holding it restarted"
        else:
            text = status
        self._release(row["id"], False, text)

    def _release(self, rid: str, approved: bool, reason: str | None) -> None:
        held = self._held.pop(rid, None)
        if held is None:
            return
        if held.timer is not None:
            held.timer.cancel()
        held.relay.decide(approved, None if approved else held.deny_error(rid, reason or "denied"))

    # -- other processes' decisions --------------------------------------------------------------

    def _on_announced(self, rid: str | None) -> None:
        """A decision announced through the store (None: any may have been missed)."""
        if rid is None:
            ids = [r for r, h in self._held.items() if h.stored]
        elif rid in self._held and self._held[rid].stored:
            ids = [rid]
        else:
            ids = []                # not ours to release; it may have come with a grant
        self._spawn(self._check_decided(ids))

    async def _check_decided(self, ids: list[str]) -> None:
        try:
            if ids:
                for row in await self.store.decided_among(ids):
                    self._apply(row)
            else:
                await self._refresh_grants()
        except Exception as e:  # noqa: BLE001 -- polling tries again
            event(log, "looking up an announced decision failed", logging.WARNING,
                  error=str(e))

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                mine = [rid for rid, h in self._held.items() if h.stored]
                if mine:
                    for row in await self.store.decided_among(mine):
                        self._apply(row)
                now = self.clock()
                if now - self._grants_at > 5.0:
                    await self._refresh_grants()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 -- a store hiccup: try again next round
                event(log, "approval poll failed", logging.WARNING, error=str(e))

    async def _refresh_grants(self) -> None:
        now = self.clock()
        grants = {}
        for g in await self.store.active_grants(now):
            if g.get("issuer") is None:
                continue            # stored before issuers were recorded: whose is unknown
            key = (g["issuer"], g["subject"], g["connection"], g["rule"])
            grants[key] = max(grants.get(key, 0.0), g["until"])
        self._grants = grants
        self._grants_at = now

    def _publish(self, name: str, row: dict) -> None:
        if self.webhooks is not None:
            self.webhooks.publish(name, {k: v for k, v in row.items() if k != "token_id"})
