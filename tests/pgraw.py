"""A few PostgreSQL v3 wire helpers for tests that talk to the gateway over a raw socket.

Written from the protocol documentation (Frontend/Backend Protocol, "Message Formats"), kept small
on purpose: build the untyped startup-phase packets, read typed messages with a deadline, log in
with a token, and read whatever arrives until the peer closes.
"""

from __future__ import annotations

import socket
import struct
import time

__all__ = ["PROTOCOL_3_0", "SSL_REQUEST", "GSSENC_REQUEST", "CANCEL_REQUEST", "startup_packet",
           "untyped", "typed", "cancel_request", "error_fields", "RawConn", "login",
           "parse_messages", "send_cancel"]

PROTOCOL_3_0 = 196608
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102


def untyped(body: bytes) -> bytes:
    """A startup-phase packet: Int32 length (counting itself), then the body."""
    return struct.pack("!I", len(body) + 4) + body


def startup_packet(params: dict[str, str], code: int = PROTOCOL_3_0) -> bytes:
    body = struct.pack("!I", code)
    for k, v in params.items():
        body += k.encode() + b"\0" + v.encode() + b"\0"
    return untyped(body + b"\0")


def typed(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def cancel_request(pid: int, secret: int) -> bytes:
    return struct.pack("!IIII", 16, CANCEL_REQUEST, pid, secret)


def error_fields(body: bytes) -> dict[str, str]:
    """ErrorResponse / NoticeResponse body -> {field code: value} (S, V, C, M, D, ...)."""
    out = {}
    for part in body.split(b"\0"):
        if part:
            out[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return out


def parse_messages(data: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Whole typed messages in `data` and the unparsed tail."""
    out, pos = [], 0
    while len(data) - pos >= 5:
        (length,) = struct.unpack("!I", data[pos + 1:pos + 5])
        if len(data) - pos < 1 + length:
            break
        out.append((data[pos:pos + 1], data[pos + 5:pos + 1 + length]))
        pos += 1 + length
    return out, data[pos:]


class RawConn:
    """A blocking socket with a read buffer; every read has a deadline."""

    def __init__(self, host: str, port: int, timeout: float = 5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.pid = 0
        self.secret = 0
        self.params: dict[str, str] = {}

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        """Read once more; False at EOF. TimeoutError past the deadline."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no data before the deadline")
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(1 << 16)
        except socket.timeout:
            raise TimeoutError("no data before the deadline") from None
        if not chunk:
            return False
        self.buf += chunk
        return True

    def read_exact(self, n: int, timeout: float = 5.0) -> bytes:
        deadline = time.monotonic() + timeout
        while len(self.buf) < n:
            if not self._fill(deadline):
                raise EOFError(f"closed after {len(self.buf)} of {n} bytes")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_message(self, timeout: float = 5.0) -> tuple[bytes, bytes]:
        """One typed message: (type byte, body)."""
        deadline = time.monotonic() + timeout
        head = self.read_exact(5, timeout)
        (length,) = struct.unpack("!I", head[1:])
        assert length >= 4, f"the gateway sent a message with length {length}"
        body = self.read_exact(length - 4, max(0.0, deadline - time.monotonic()) or 0.001)
        return head[:1], body

    def read_until_closed(self, timeout: float = 5.0) -> tuple[bytes, str]:
        """Everything the peer sends until it closes: (bytes, "eof" | "reset").

        TimeoutError when the socket is still open at the deadline.
        """
        deadline = time.monotonic() + timeout
        try:
            while self._fill(deadline):
                pass
            how = "eof"
        except (ConnectionResetError, BrokenPipeError):
            how = "reset"
        data, self.buf = self.buf, b""
        return data, how

    def expect_error_and_close(self, timeout: float = 5.0) -> dict[str, str]:
        """The peer sends one ErrorResponse and closes: its fields."""
        data, how = self.read_until_closed(timeout)
        msgs, tail = parse_messages(data)
        assert msgs, f"no message before the close ({how}); got {data!r}"
        errors = [error_fields(body) for kind, body in msgs if kind == b"E"]
        assert errors, f"no ErrorResponse before the close; got {msgs!r}"
        assert tail == b"", f"a partial message before the close: {tail!r}"
        return errors[-1]

    def close(self, reset: bool = False) -> None:
        if reset:
            # SO_LINGER 0: close sends a RST, like a crashed or killed client
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def __enter__(self) -> "RawConn":
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def login(host: str, port: int, token: str, *, user: str = "agent-7", dbname: str = "appdb",
          timeout: float = 5.0, **params: str) -> RawConn:
    """Open a raw connection and log in with `token` up to the first ReadyForQuery."""
    c = RawConn(host, port, timeout)
    c.send(startup_packet({"user": user, "database": dbname, **params}))
    kind, body = c.read_message(timeout)
    assert (kind, body) == (b"R", struct.pack("!I", 3)), \
        f"expected AuthenticationCleartextPassword, got {kind!r} {body!r}"
    c.send(typed(b"p", token.encode() + b"\0"))
    while True:
        kind, body = c.read_message(timeout)
        if kind == b"E":
            raise AssertionError(f"login refused: {error_fields(body)}")
        if kind == b"K":
            c.pid, c.secret = struct.unpack("!II", body)
        elif kind == b"S":
            k, v, _ = body.split(b"\0", 2)
            c.params[k.decode()] = v.decode()
        elif kind == b"Z":
            return c


def send_cancel(host: str, port: int, pid: int, secret: int) -> bytes:
    """Send a CancelRequest on a new connection; what came back before the close (nothing)."""
    with RawConn(host, port) as c:
        c.send(cancel_request(pid, secret))
        try:
            data, _ = c.read_until_closed(5.0)
        except TimeoutError:
            raise AssertionError("the gateway kept a CancelRequest's connection open") from None
    return data
