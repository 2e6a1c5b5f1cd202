"""Why a client's connection ends before it becomes a session, in terms every protocol shares.

A protocol's handshake raises these; the base listener logs each, counts it under
hoopwire_connections{result=...}, and asks the protocol's adapter for the bytes that tell the
client (PostgreSQL: a FATAL ErrorResponse with the SQLSTATE in `code`).
"""

from __future__ import annotations

__all__ = ["Refused", "HandshakeDone", "ClientProtocolError", "UpstreamLoginError"]


class Refused(Exception):
    """Refuse the client. `reason` labels the metric and the log; `code` is the protocol's own
    error code (a SQLSTATE for PostgreSQL); `detail` is for the operator's log only."""

    def __init__(self, reason: str, code: str, message: str, detail: str = ""):
        super().__init__(message)
        self.reason, self.code, self.message, self.detail = reason, code, message, detail


class HandshakeDone(Exception):
    """The connection did what it came for without a session (a cancel request): it ends
    quietly, counted as `result`."""

    def __init__(self, result: str = "cancel"):
        super().__init__(result)
        self.result = result


class ClientProtocolError(Exception):
    """The client broke its protocol during the handshake; `code` is what to report."""

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code


class UpstreamLoginError(Exception):
    """The upstream could not be reached or refused our login. The exception text is for the
    operator; `client_message`/`code` are what the client may see, and `server_error`, when
    set, is the server's own answer, safe to pass on as it is."""

    def __init__(self, operator_text: str, *, code: str, client_message: str,
                 server_error: bytes | None = None):
        super().__init__(operator_text)
        self.code = code
        self.client_message = client_message
        self.server_error = server_error
