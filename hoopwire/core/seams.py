"""The seams between the core and a protocol: small typed interfaces, one per direction.

    ProtocolAdapter  bytes the core needs said to a client in the protocol's words (errors,
                     notices, refusals) and what the recorder reads back out of captured
                     messages (error fields, row values, rows affected).
    Dialect          a SQL protocol's language: the two views of a statement the guardrails
                     scan, literal masking for logs and the audit, its built-in packs, and the
                     rules every connection of it gets.
    RelayHandle      what the core may ask of a relay (the Cython object that owns both sockets
                     once a session starts).
    RelayEvents      what a relay tells the core: hoopwire.core.session.Session implements it.

Conditions are the core's names for the refusals it makes itself; each adapter maps them to
its protocol's codes (PostgreSQL: SQLSTATEs), so the core never writes a protocol's code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

__all__ = ["CONDITIONS", "ProtocolAdapter", "Dialect", "RelayHandle", "RelayEvents",
           "ProtocolSpec"]

CONDITIONS = (
    "shutting_down",       # the gateway stops; the session ends
    "idle_timeout",        # idle_timeout passed with nothing running
    "handshake_timeout",   # the handshake did not finish within handshake_timeout
    "read_timeout",        # the client stopped mid-message for longer than read_timeout
    "internal",            # a fault of ours; the log has the traceback
    "not_approved",        # a held statement was denied, expired, or nobody can approve it
    "query_cancelled",     # the client cancelled a held statement
    "audit_unavailable",   # the audit log cannot be written: statements are refused
    "policy_reload",       # a reload's rules refuse what the session set at its start
    "blocked",             # a guardrail refused the statement
    "access_revoked",      # a reload no longer admits the session, or its token expired
)


class ProtocolAdapter(Protocol):
    protocol: str          # the registry key and the `protocol` label of the metrics
    refused_mark: bytes    # follows the marker prefix in a statement refused for the audit

    def code(self, name: str) -> str:
        """The protocol's code for one of CONDITIONS, as audit records carry it."""

    def fatal(self, code: str, message: str) -> bytes:
        """A session-ending error carrying the protocol's own `code`."""

    def condition(self, name: str, message: str, *, fatal: bool = False,
                  hint: Optional[str] = None) -> bytes:
        """An error for one of CONDITIONS: the statement's (fatal=False) or the session's."""

    def notice(self, message: str) -> bytes:
        """An informational message the client's driver shows without failing anything."""

    def error_fields(self, body: Optional[bytes]) -> Optional[dict]:
        """{"code", "message"} of an error as the relay captured it (None: no error)."""

    def row_values(self, msg: bytes) -> list:
        """One captured result row as the client saw it: text values, binary as \\x hex,
        NULL as None."""

    def rows_affected(self, tags: list[bytes]) -> Optional[int]:
        """Rows a statement touched, from its completion messages."""


class Dialect(Protocol):
    name: str
    packs: dict            # its built-in guardrail packs by name (hoopwire.policy.rules.Pack)

    def mask_literals(self, sql: bytes) -> str:
        """The statement as logs and the audit show it: literals replaced by '?'."""

    def statement_views(self, sql: bytes, want_full: bool, *args) -> tuple:
        """(code view, full view, ambiguous) of a query string: what guardrails scan."""

    def implied_guardrails(self, rules: tuple) -> tuple:
        """Rules every connection of this dialect gets besides its configured ones."""

    def classifier(self, rules: tuple):
        """The statement-kind classifier (hoopwire.policy.engine.KindClassifier) the rules
        need, or None."""


class RelayHandle(Protocol):
    policy: object           # the session's GroupPolicy, or None: swapped on reload
    held: bool               # a statement waits for an approval
    units_sent: int          # statements (or requests) sent upstream ...
    units_done: int          # ... and answered: equal when nothing runs
    bytes_in: int
    bytes_out: int

    def decide(self, approved: bool, error: Optional[bytes]) -> None: ...
    def shutdown(self, reason: str, message: Optional[bytes]) -> None: ...
    def notify_client(self, message: bytes) -> None: ...
    def refuse_statements(self, error: Optional[bytes]) -> None: ...
    def idle_seconds(self) -> float: ...
    # seconds the client has left a message half sent (0 between messages); optional: a
    # relay that bounds its reads itself has none
    def read_stalled(self) -> float: ...


class RelayEvents(Protocol):
    def session_closed(self, relay: RelayHandle, reason: str) -> None: ...
    def statement_blocked(self, relay: RelayHandle, verdict, sql: bytes) -> None: ...
    def statement_matched(self, relay: RelayHandle, verdict, sql: bytes) -> None: ...
    def statement_held(self, relay: RelayHandle, verdict, sql: bytes) -> Optional[str]: ...
    def masking_failed(self, relay: RelayHandle, reason: str) -> None: ...


@dataclass(frozen=True)
class ProtocolSpec:
    """One protocol as the gateway sees it: what hoopwire.protocols maps its name to."""
    name: str
    listener: type          # a hoopwire.core.listener.Listener subclass
    dialect: Dialect        # its SQL (SQL protocols)
    adapter: ProtocolAdapter
    # `check-config --connect`'s look at an upstream role: a module with database_of(cfg),
    # roles_of(cfg), async check_role(cfg, user, password, database) and PostureError
    posture: object = None
