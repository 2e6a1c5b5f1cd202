"""PostgreSQL's words for what the core says to a client, and what the recorder reads back out
of the messages a relay captured (hoopwire.core.seams.ProtocolAdapter)."""

from __future__ import annotations

from typing import Optional

from hoopwire.pg._wire import REFUSED_MARK, error_response, notice_response
from hoopwire.pg.messages import datarow_values

__all__ = ["PgAdapter", "ADAPTER", "rows_from_tags"]

# the core's conditions as SQLSTATEs, each the code PostgreSQL itself gives the same situation
_SQLSTATE = {
    "shutting_down": "57P01",       # admin_shutdown
    "idle_timeout": "57P05",        # idle_session_timeout
    "handshake_timeout": "08006",   # connection_failure
    "read_timeout": "08006",        # connection_failure (the server itself has no such bound)
    "internal": "XX000",            # internal_error
    "not_approved": "42501",        # insufficient_privilege
    "query_cancelled": "57014",     # query_canceled
    "audit_unavailable": "53100",   # disk_full: what an unwritable audit log amounts to
    "policy_reload": "42501",
    "blocked": "42501",             # a guardrail refused the statement
    "access_revoked": "28000",      # invalid_authorization_specification
}


def rows_from_tags(tags: list[bytes]) -> Optional[int]:
    """Rows a statement touched, from its CommandComplete tags (`SELECT 5`, `INSERT 0 3`...)."""
    total = None
    for tag in tags:
        last = tag.rsplit(b" ", 1)[-1]
        if last.isdigit():
            total = (total or 0) + int(last)
    return total


class PgAdapter:
    protocol = "postgres"
    too_many_clients_code = "53300"
    # what the relay puts after the marker prefix of a statement refused for the audit
    refused_mark = REFUSED_MARK

    def code(self, name: str) -> str:
        """The SQLSTATE of one of the core's conditions (as audit records carry it)."""
        return _SQLSTATE[name]

    def fatal(self, code: str, message: str) -> bytes:
        return error_response("FATAL", code, message)

    def condition(self, name: str, message: str, *, fatal: bool = False,
                  hint: Optional[str] = None) -> bytes:
        return error_response("FATAL" if fatal else "ERROR", _SQLSTATE[name], message,
                              hint=hint)

    def notice(self, message: str) -> bytes:
        return notice_response("NOTICE", "01000", message)

    def error_fields(self, body: Optional[bytes]) -> Optional[dict]:
        """An ErrorResponse's body (fields after the header) as {"code", "message"}."""
        if not body:
            return None
        out = {}
        for part in body.split(b"\0"):
            if part[:1] in (b"C", b"M"):
                out["code" if part[:1] == b"C" else "message"] = part[1:].decode("utf-8", "replace")
        return out

    def row_values(self, msg: bytes) -> list:
        """A DataRow as the client saw it: text values decoded, binary ones as hex, NULL as
        None. A CopyData message: its line (text or CSV COPY) as one value, binary COPY data
        as hex."""
        if msg[:1] == b"d":
            try:
                return [msg[5:].decode("utf-8").rstrip("\n")]
            except UnicodeDecodeError:
                return ["\\x" + msg[5:].hex()]
        out = []
        for v in datarow_values(msg[5:]):
            if v is None:
                out.append(None)
                continue
            try:
                out.append(v.decode("utf-8"))
            except UnicodeDecodeError:
                out.append("\\x" + v.hex())
        return out

    rows_affected = staticmethod(rows_from_tags)


ADAPTER = PgAdapter()
