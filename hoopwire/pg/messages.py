"""PostgreSQL v3 messages: the one module the Python side builds them with.

Everything after authentication is framed in Cython (ext/hoopwire/pg/_wire.pyx); this module
reads and builds the messages the Python side handles: the startup phase, authentication and
cancel (control path), and the messages the masker rewrites (DataRow, CopyData, Notification,
Error/Notice fields). Nothing else in hoopwire/ packs a PostgreSQL header by hand.
"""

from __future__ import annotations

import asyncio
import struct

from hoopwire.core.errors import ClientProtocolError
from hoopwire.pg._wire import error_response, notice_response  # one builder for both paths

__all__ = [
    "ProtocolError", "error_response", "notice_response", "message", "read_message",
    "read_startup", "Startup", "SSL_REQUEST", "GSSENC_REQUEST", "CANCEL_REQUEST",
    "PROTOCOL_3_0", "auth_request", "parameter_status", "backend_key_data", "ready_for_query",
    "negotiate_protocol_version", "startup_message", "parse_fields", "ssl_request",
    "cancel_request", "sasl_initial_response", "copy_data", "data_row_body",
]

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
PROTOCOL_3_0 = 196608
STARTUP_MAX = 10000  # the server's own limit for a startup packet

AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12


class ProtocolError(ClientProtocolError):
    """The peer broke the protocol; `code` is the SQLSTATE to report."""

    def __init__(self, message: str, code: str = "08P01"):
        super().__init__(message, code)


def message(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def auth_request(code: int, data: bytes = b"") -> bytes:
    return message(b"R", struct.pack("!I", code) + data)


def parameter_status(name: str, value: str) -> bytes:
    return message(b"S", name.encode() + b"\0" + value.encode() + b"\0")


def backend_key_data(pid: int, secret: int) -> bytes:
    return message(b"K", struct.pack("!II", pid, secret))


def ready_for_query(status: bytes = b"I") -> bytes:
    return message(b"Z", status)


def negotiate_protocol_version(version: int, unrecognised: list[str]) -> bytes:
    # The field holds the whole version code (3 << 16 | minor), as servers send it and libpq
    # reads it -- not the bare minor number the protocol docs suggest.
    body = struct.pack("!II", version, len(unrecognised))
    body += b"".join(o.encode() + b"\0" for o in unrecognised)
    return message(b"v", body)


def ssl_request() -> bytes:
    return struct.pack("!II", 8, SSL_REQUEST)


def cancel_request(pid: int, secret: int) -> bytes:
    return struct.pack("!IIII", 16, CANCEL_REQUEST, pid, secret)


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return message(b"p", mechanism.encode() + b"\0" + struct.pack("!i", len(data)) + data)


def copy_data(body: bytes) -> bytes:
    return message(b"d", body)


def data_row_body(body: bytes) -> bytes:
    """A DataRow around a body (int16 count, then int32 length + bytes per value): binary COPY
    rows have exactly this shape."""
    return message(b"D", body)


def startup_message(params: dict[str, str]) -> bytes:
    body = struct.pack("!I", PROTOCOL_3_0)
    for k, v in params.items():
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


async def read_message(reader: asyncio.StreamReader, max_size: int = 1 << 20) -> tuple[bytes, bytes]:
    """One typed message: (type byte, body)."""
    head = await reader.readexactly(5)
    (length,) = struct.unpack("!I", head[1:])
    if length < 4 or length - 4 > max_size:
        raise ProtocolError(f"invalid message length {length}")
    return head[:1], await reader.readexactly(length - 4)


def parse_fields(body: bytes) -> dict[str, str]:
    """ErrorResponse / NoticeResponse fields by their one-letter code."""
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields


def datarow_values(body: bytes) -> list[bytes | None]:
    """The values of a DataRow body (after the type byte and length): bytes, None for NULL."""
    n = int.from_bytes(body[:2], "big")
    pos, out = 2, []
    for _ in range(n):
        ln = int.from_bytes(body[pos:pos + 4], "big", signed=True)
        pos += 4
        if ln < 0:
            out.append(None)
        else:
            out.append(body[pos:pos + ln])
            pos += ln
    return out


class Startup:
    """The first packet of a connection: what kind, and for v3 its parameters."""

    __slots__ = ("code", "params", "minor", "unrecognised", "cancel_pid", "cancel_secret")

    def __init__(self, code: int):
        self.code = code
        self.params: dict[str, str] = {}
        self.minor = 0
        self.unrecognised: list[str] = []
        self.cancel_pid = 0
        self.cancel_secret = 0


async def read_startup(reader: asyncio.StreamReader) -> Startup:
    """Read an untyped startup-phase packet (StartupMessage, SSLRequest, CancelRequest...)."""
    head = await reader.readexactly(4)
    (length,) = struct.unpack("!I", head)
    if length < 8 or length > STARTUP_MAX:
        raise ProtocolError(f"invalid startup packet length {length}")
    body = await reader.readexactly(length - 4)
    (code,) = struct.unpack("!I", body[:4])
    s = Startup(code)
    if code == CANCEL_REQUEST:
        if length != 16:
            raise ProtocolError("invalid CancelRequest")
        s.cancel_pid, s.cancel_secret = struct.unpack("!II", body[4:12])
        return s
    if code in (SSL_REQUEST, GSSENC_REQUEST):
        if length != 8:
            raise ProtocolError("invalid SSL or GSS encryption request")
        return s
    major, minor = code >> 16, code & 0xFFFF
    if major != 3:
        # Protocol 2 and anything else: the same answer a current server gives.
        raise ProtocolError(f"unsupported frontend protocol {major}.{minor}: "
                            "server supports 3.0 to 3.0", "0A000")
    s.minor = minor
    rest = body[4:]
    if not rest.endswith(b"\0"):
        raise ProtocolError("invalid startup packet layout: expected terminator as last byte")
    parts = rest[:-1].split(b"\0")
    if len(parts) % 2 != 1 or parts[-1] != b"":
        raise ProtocolError("invalid startup packet layout")
    for i in range(0, len(parts) - 1, 2):
        try:
            k, v = parts[i].decode(), parts[i + 1].decode()
        except UnicodeDecodeError:
            raise ProtocolError("invalid startup packet: parameters are not valid UTF-8") from None
        if not k:
            raise ProtocolError("invalid startup packet: empty parameter name")
        if k.startswith("_pq_."):
            s.unrecognised.append(k)  # protocol options we do not speak: negotiated away
        else:
            s.params[k] = v
    return s
