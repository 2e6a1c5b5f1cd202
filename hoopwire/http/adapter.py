"""HTTP's words for what the core says to a client (hoopwire.core.seams.ProtocolAdapter).

A code here is "<status> <error>", e.g. "403 blocked": the status the client gets and the
`error` of the JSON body, so the audit record carries both.
"""

from __future__ import annotations

from typing import Optional

from hoopwire.http import errors

__all__ = ["HttpAdapter", "ADAPTER", "CODES", "split_code"]

CODES = {
    "shutting_down": "503 shutting_down",
    "idle_timeout": "408 idle_timeout",
    "handshake_timeout": "408 request_timeout",
    "internal": "500 internal",
    "not_approved": "403 not_approved",
    "query_cancelled": "499 cancelled",
    "audit_unavailable": "503 audit_unavailable",
    "policy_reload": "403 policy_reload",
    "blocked": "403 blocked",
    "access_revoked": "401 access_revoked",
}
# conditions that end the connection whatever `fatal` says: the client learns it now
_CLOSING = {"shutting_down", "idle_timeout", "handshake_timeout", "internal", "access_revoked"}


def split_code(code: str) -> tuple[int, str]:
    """"403 blocked" -> (403, "blocked"); anything else -> (500, code)."""
    status, _, name = code.partition(" ")
    if status.isdigit() and len(status) == 3:
        return int(status), name or "error"
    return 500, code or "error"


class HttpAdapter:
    protocol = "http"
    too_many_clients_code = "503 too_many_connections"
    # follows the marker prefix in a recorded refusal (the audit tells blocks from refusals)
    refused_mark = b"refused"

    def code(self, name: str) -> str:
        return CODES[name]

    def fatal(self, code: str, message: str) -> bytes:
        status, name = split_code(code)
        return errors.response(status, name, message, close=True)

    def condition(self, name: str, message: str, *, fatal: bool = False,
                  hint: Optional[str] = None) -> bytes:
        status, err = split_code(CODES[name])
        return errors.response(status, err, message + (f" ({hint})" if hint else ""),
                               close=fatal or name in _CLOSING)

    def notice(self, message: str) -> bytes:
        """HTTP has nothing a server sends unasked mid-request: the text, which the relay logs
        (notify_client) and never writes to the client."""
        return message.encode("utf-8", "replace")

    def error_fields(self, body: Optional[bytes]) -> Optional[dict]:
        """The relay records a refused request's response (one of ours) as its error."""
        if not body:
            return None
        return errors.code_of(body)

    def row_values(self, msg: bytes) -> list:
        return [msg.decode("utf-8", "replace")]

    def rows_affected(self, tags: list[bytes]) -> Optional[int]:
        return None


ADAPTER = HttpAdapter()
