"""Connect to the upstream PostgreSQL server and log in with the connection's stored credentials.

The client never sees these credentials: it authenticated to hoopwire with a token, and hoopwire
answers whatever the server asks -- SCRAM-SHA-256, MD5 or cleartext -- with the role's password.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import struct
import time
from dataclasses import dataclass, field

import scramp

from hoopwire.core.errors import UpstreamLoginError
from hoopwire.core.tls import upstream_ssl_context
from hoopwire.pg import messages as m

__all__ = ["UpstreamError", "Upstream", "connect_upstream", "send_cancel", "upstream_ssl_context"]


class UpstreamError(UpstreamLoginError):
    """The upstream could not be reached or refused us (PostgreSQL's defaults for the client's
    part: SQLSTATE 08006)."""

    def __init__(self, operator_text: str, *, code: str = "08006",
                 client_message: str = "could not connect to the upstream server",
                 server_error: bytes | None = None):
        super().__init__(operator_text, code=code, client_message=client_message,
                         server_error=server_error)


@dataclass
class Upstream:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    pid: int = 0
    secret: int = 0
    status: list[bytes] = field(default_factory=list)   # ParameterStatus / Notice messages, raw
    tx_status: bytes = b"I"
    connect_seconds: float = 0.0
    tls: bool = False


async def _open(host: str, port: int, ctx: ssl.SSLContext | None, timeout: float):
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    if ctx is None:
        return reader, writer
    writer.write(m.ssl_request())
    answer = await asyncio.wait_for(reader.readexactly(1), timeout)
    if answer != b"S":
        writer.close()
        raise UpstreamError(f"upstream {host}:{port} refused TLS (answered {answer!r})")
    await asyncio.wait_for(writer.start_tls(ctx, server_hostname=host), timeout)
    return reader, writer


async def connect_upstream(host: str, port: int, *, user: str, password: str | None,
                           params: dict[str, str], tls_mode: str = "disable",
                           ssl_context: ssl.SSLContext | None = None,
                           timeout: float = 10.0) -> Upstream:
    """Open, authenticate and run the upstream to its first ReadyForQuery."""
    t0 = time.monotonic()
    try:
        reader, writer = await _open(host, port, ssl_context, timeout)
    except UpstreamError:
        raise
    except ssl.SSLCertVerificationError as e:
        raise UpstreamError(f"upstream {host}:{port} TLS certificate rejected: {e.verify_message}") from None
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ssl.SSLError) as e:
        raise UpstreamError(f"cannot connect to upstream {host}:{port}: {e!r}") from None
    up = Upstream(reader, writer, tls=ssl_context is not None)
    try:
        startup = dict(params)
        startup["user"] = user
        writer.write(m.startup_message(startup))
        await asyncio.wait_for(_authenticate(up, user, password), timeout)
        up.connect_seconds = time.monotonic() - t0
        return up
    except UpstreamError:
        writer.close()
        raise
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ssl.SSLError,
            m.ProtocolError) as e:
        writer.close()
        raise UpstreamError(f"upstream {host}:{port} failed during login: {e!r}") from None


async def _authenticate(up: Upstream, user: str, password: str | None) -> None:
    reader, writer = up.reader, up.writer
    scram = None
    while True:
        kind, body = await m.read_message(reader)
        if kind == b"E":
            fields = m.parse_fields(body)
            code = fields.get("C", "")
            text = f"upstream refused login: {fields.get('M', '')} (SQLSTATE {code})"
            if code.startswith("28"):
                # Our stored credentials are wrong: the operator's problem, and the upstream
                # role name is not the client's business.
                raise UpstreamError(text, code="08006",
                                    client_message="the gateway could not log in to the upstream server")
            raise UpstreamError(text, code=code or "08006", client_message=fields.get("M", ""),
                                server_error=m.message(kind, body))
        if kind == b"R":
            (code,) = struct.unpack("!I", body[:4])
            if code == m.AUTH_OK:
                break
            if password is None:
                raise UpstreamError("upstream asked for a password and none is configured")
            if code == m.AUTH_CLEARTEXT:
                writer.write(m.message(b"p", password.encode() + b"\0"))
            elif code == m.AUTH_MD5:
                inner = hashlib.md5(password.encode() + user.encode()).hexdigest()
                outer = hashlib.md5(inner.encode() + body[4:8]).hexdigest()
                writer.write(m.message(b"p", b"md5" + outer.encode() + b"\0"))
            elif code == m.AUTH_SASL:
                mechs = [x.decode() for x in body[4:].split(b"\0") if x]
                if "SCRAM-SHA-256" not in mechs:
                    raise UpstreamError(f"upstream offers no supported SASL mechanism: {mechs}")
                # Channel binding (-PLUS) is not used: the TLS session is ours, not the client's.
                scram = scramp.ScramClient(["SCRAM-SHA-256"], user, password)
                first = scram.get_client_first().encode()
                writer.write(m.sasl_initial_response("SCRAM-SHA-256", first))
            elif code == m.AUTH_SASL_CONTINUE and scram is not None:
                try:
                    scram.set_server_first(body[4:].decode())
                except scramp.ScramException as e:
                    raise UpstreamError(f"upstream SCRAM exchange failed: {e}") from None
                writer.write(m.message(b"p", scram.get_client_final().encode()))
            elif code == m.AUTH_SASL_FINAL and scram is not None:
                try:
                    scram.set_server_final(body[4:].decode())
                except scramp.ScramException as e:
                    raise UpstreamError(f"upstream SCRAM server signature invalid: {e}") from None
            else:
                raise UpstreamError(f"upstream asked for unsupported authentication {code}")
            continue
        if kind == b"v":
            continue  # NegotiateProtocolVersion: we asked for 3.0 plain, nothing to adjust
        raise UpstreamError(f"unexpected message {kind!r} from upstream during authentication")
    # After AuthenticationOk: parameters, the key, notices, then ReadyForQuery (or a failure).
    while True:
        kind, body = await m.read_message(reader)
        if kind == b"Z":
            up.tx_status = body[:1]
            return
        if kind == b"K":
            up.pid, up.secret = struct.unpack("!II", body[:8])
        elif kind in (b"S", b"N"):
            up.status.append(m.message(kind, body))
        elif kind == b"E":
            fields = m.parse_fields(body)
            raise UpstreamError(f"upstream failed the session start: {fields.get('M', '')}",
                                code=fields.get("C", "08006"), client_message=fields.get("M", ""),
                                server_error=m.message(kind, body))
        else:
            raise UpstreamError(f"unexpected message {kind!r} from upstream during startup")


async def send_cancel(host: str, port: int, pid: int, secret: int,
                      ssl_context: ssl.SSLContext | None, timeout: float = 5.0) -> None:
    """Deliver a CancelRequest; the server answers nothing and closes."""
    reader, writer = await _open(host, port, ssl_context, timeout)
    try:
        writer.write(m.cancel_request(pid, secret))
        await asyncio.wait_for(writer.drain(), timeout)
        try:
            await asyncio.wait_for(reader.read(1), timeout)
        except asyncio.TimeoutError:
            pass
    finally:
        writer.close()
