"""One client session, whatever its protocol: the one place that calls identity-aware
services (approvals, the recorder, metrics, the log) for it.

A protocol's listener makes the Session once the handshake is done, hands it to its relay as
the relay's event sink (RelayEvents), and registers it with `Listener.session_started`. From
then on the relay reports straight here -- a block, a guardrail match, a hold, a masking
failure, the close -- and nothing hops back through the listener.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING

from hoopwire import metrics
from hoopwire.identity import Identity
from hoopwire.logs import event

if TYPE_CHECKING:
    from hoopwire.core.listener import Listener

log = logging.getLogger("hoopwire.session")

__all__ = ["Session"]


class Session:
    """A relayed client session: who, from where, over which relay."""

    __slots__ = ("listener", "identity", "role", "peer", "started", "relay", "tls", "database",
                 "id", "writers", "params", "masker", "statements", "pid", "client_secret",
                 "expiry", "__weakref__")

    def __init__(self, listener: "Listener", identity: Identity, role: str, peer: str,
                 tls: bool, database: str):
        self.listener = listener
        self.identity = identity
        self.role = role
        self.peer = peer
        self.tls = tls
        self.database = database
        self.started = time.time()
        self.relay = None            # the protocol's relay (a RelayHandle) once it runs
        self.id = os.urandom(8).hex()
        # asyncio's StreamWriter closes its transport when collected, so the handshake's
        # writers live as long as the session that took over their transports.
        self.writers: tuple = ()
        self.params: dict[str, str] = {}   # what the client asked for at its start
        self.masker = None           # the protocol's result masker while masking applies
        self.statements = None       # its StatementLog while recording
        # the protocol's cancel key: the backend's id and the secret the client was given
        self.pid = 0
        self.client_secret = 0
        self.expiry = None           # the timer that ends it when its token expires (opt-in)

    @property
    def adapter(self):
        return self.listener.adapter

    # -- events from the relay (RelayEvents) ------------------------------------------------------

    def session_closed(self, relay, reason: str) -> None:
        self.listener.session_ended(self, reason)

    def statement_blocked(self, relay, verdict, sql: bytes) -> None:
        self._verdict("block", verdict, sql)

    def statement_matched(self, relay, verdict, sql: bytes) -> None:
        self._verdict(verdict.action, verdict, sql)

    def statement_held(self, relay, verdict, sql: bytes):
        """An `approve` rule matched: the request id (the relay holds the statement), or None
        when a standing grant lets it through now."""
        lst = self.listener
        gw = lst.gateway
        approvals = gw.approvals
        rule = next((g for g in lst.cfg.guardrails if g.name == verdict.rule), None)
        statement = lst.mask_statement(sql)
        metrics.STATEMENT_VERDICTS.labels(lst.name, "approve", verdict.rule).inc()
        adapter = self.adapter
        if approvals is None or rule is None:
            # a rule from before a reload, or no approval service: nobody could approve it
            err = adapter.condition("not_approved", f"statement needs an approval under rule "
                                    f"\"{verdict.rule}\" and no approver can be reached")
            asyncio.get_running_loop().call_soon(relay.decide, False, err)
            return "unavailable"

        def deny_error(rid: str, reason: str) -> bytes:
            return adapter.condition(
                "not_approved", f"statement not approved under hoopwire rule \"{verdict.rule}\": "
                f"{reason} (approval {rid})", hint="the session is still usable")

        from hoopwire.approvals.manager import format_duration
        rid = approvals.hold(
            relay=relay, session=self, identity=self.identity, connection=lst.name,
            client_addr=self.peer, rule=verdict.rule, approvers=rule.approvers,
            timeout=rule.timeout, reason_required=rule.reason_required, statement=statement,
            deny_error=deny_error, notice=None)
        if rid is None:
            event(log, "statement allowed by a standing approval grant", connection=lst.name,
                  session=self.id, issuer=self.identity.issuer or "",
                  subject=self.identity.subject, rule=verdict.rule)
            return None
        if gw.recorder is not None:
            gw.recorder.session_event(self, "approval.held", request=rid, rule=verdict.rule,
                                      statement=statement)
        relay.notify_client(adapter.notice(
            f"statement held for approval {rid} under hoopwire rule \"{verdict.rule}\" "
            f"(approvers: {', '.join(rule.approvers)}); waiting up to "
            f"{format_duration(rule.timeout)}"))
        return rid

    def masking_failed(self, relay, reason: str) -> None:
        event(log, "masking failed: session closed", logging.ERROR, connection=self.listener.name,
              session=self.id, subject=self.identity.subject, error=reason)

    def _verdict(self, action: str, verdict, sql: bytes) -> None:
        lst = self.listener
        statement = lst.mask_statement(sql)
        metrics.STATEMENT_VERDICTS.labels(lst.name, action, verdict.rule).inc()
        recorder = lst.gateway.recorder
        kinds = getattr(verdict, "kinds", ())     # an allow_kinds rule: what it refused
        if recorder is not None:
            recorder.session_event(
                self, "statement.blocked" if action == "block" else "statement.matched",
                rule=verdict.rule, rules=list(verdict.matched), statement=statement,
                **({"kinds": list(kinds)} if kinds else {}))
        event(log, "statement blocked" if action == "block" else "guardrail matched",
              logging.WARNING if action == "block" else logging.INFO,
              connection=lst.name, session=self.id, issuer=self.identity.issuer or "",
              subject=self.identity.subject, groups=",".join(sorted(self.identity.groups)),
              rule=verdict.rule, rules=",".join(verdict.matched), action=action,
              **({"kinds": ",".join(kinds)} if kinds else {}), statement=statement)
