"""Connect to the upstream MySQL/MariaDB server and log in with the connection's stored credentials.

The client never sees these credentials: it authenticated to hoopwire with a token, and hoopwire
answers whatever the server asks with the role's password -- mysql_native_password,
caching_sha2_password (its fast path, and its full authentication: the password over TLS, or
RSA-OAEP-encrypted with the server's public key without TLS), sha256_password, MariaDB's
client_ed25519, and auth switches between them. mysql_clear_password is answered only over TLS
or to a loopback upstream.

Every step (TCP connect, TLS, each packet of the login) is bounded by `timeout` (the connection's
connect_timeout): a server that accepts and never speaks costs one timeout, not a stuck task.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from dataclasses import dataclass

from hoopwire.core.errors import UpstreamLoginError
from hoopwire.core.tls import is_loopback, upstream_ssl_context
from hoopwire.mysql import packets as p
from hoopwire.mysql.packets import CLIENT

__all__ = ["UpstreamError", "Upstream", "connect_upstream", "upstream_ssl_context",
           "native_password_scramble", "caching_sha2_scramble", "ed25519_sign",
           "rsa_encrypt_password", "read_packet", "LOGIN_CAPABILITIES"]

# what the gateway itself needs on its upstream login, whatever the client negotiated
LOGIN_CAPABILITIES = (CLIENT.LONG_PASSWORD | CLIENT.PROTOCOL_41 | CLIENT.SECURE_CONNECTION
                      | CLIENT.PLUGIN_AUTH | CLIENT.PLUGIN_AUTH_LENENC_CLIENT_DATA
                      | CLIENT.CONNECT_WITH_DB | CLIENT.TRANSACTIONS)
# a login's packets are small (the greeting, auth switches, an RSA key of 4096 bits is 800 bytes);
# more than this from a server mid-login is not a server we want to read further
_LOGIN_PACKET_MAX = 64 * 1024


class UpstreamError(UpstreamLoginError):
    """The upstream could not be reached or refused us. `server_err`, when set, is the server's
    own ERR payload (no header), safe to pass on to the client."""

    def __init__(self, operator_text: str, *, code: str = "1105/HY000",
                 client_message: str = "the gateway could not connect to the upstream server",
                 server_err: bytes | None = None):
        super().__init__(operator_text, code=code, client_message=client_message)
        self.server_err = server_err


@dataclass
class Upstream:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    greeting: p.HandshakeV10 | None = None
    capabilities: int = 0            # what this login negotiated
    thread_id: int = 0               # the server's connection id (KILL's argument)
    status: int = 0                  # the server status flags of the login's OK
    tls: bool = False
    plugin: str = ""                 # the auth plugin the login ended with
    connect_seconds: float = 0.0
    seq: int = 0                     # the next sequence id of the current exchange
    session_info: bytes = b""        # the login OK's session-state block (SESSION_TRACK)
    ok_payload: bytes = b""          # the server's OK to the login, as sent

    async def query(self, sql: str, timeout: float = 10.0) -> list[tuple]:
        """Run one statement on a side connection; its rows as tuples of str (None for NULL).
        ERR raises UpstreamError. Only for connections the gateway owns (catalog reads, the
        login's own settings), never a relayed client's."""
        return await asyncio.wait_for(self._query(sql.encode("utf-8")), timeout)

    async def _query(self, sql: bytes) -> list[tuple]:
        self.writer.write(p.frame(bytes((p.COM.QUERY,)) + sql, 0))
        await self.writer.drain()
        _, first = await read_packet(self.reader, 1 << 24)
        if p.is_err(first):
            e = p.parse_err(first)
            raise UpstreamError(f"upstream query failed: {e.errno} ({e.sqlstate}) "
                                f"{e.message.decode('utf-8', 'replace')}", server_err=first)
        if first[:1] == b"\x00":
            return []
        ncols = p.Reader(first).lenenc_int() or 0
        for _ in range(ncols):
            await read_packet(self.reader, 1 << 24)
        deprecate_eof = bool(self.capabilities & CLIENT.DEPRECATE_EOF)
        if not deprecate_eof:
            await read_packet(self.reader, 1 << 24)      # the EOF after the definitions
        rows = []
        while True:
            _, payload = await read_packet(self.reader, 1 << 30)
            if p.is_err(payload):
                e = p.parse_err(payload)
                raise UpstreamError(f"upstream query failed: {e.errno} "
                                    f"{e.message.decode('utf-8', 'replace')}", server_err=payload)
            if payload[:1] == b"\xfe" and len(payload) < 0xFFFFFF and (
                    deprecate_eof or len(payload) < 9):
                return rows
            rows.append(tuple(None if v is None else v.decode("utf-8", "replace")
                              for v in p.parse_text_row(payload, ncols)))

    def close(self) -> None:
        """COM_QUIT, then close: the server logs a clean quit rather than an aborted connection
        (which it counts, and past max_connect_errors blocks the host)."""
        try:
            if not self.writer.is_closing():
                self.writer.write(p.frame(bytes((p.COM.QUIT,)), 0))
        except (OSError, RuntimeError):
            pass
        self.writer.close()


async def read_packet(reader: asyncio.StreamReader, max_size: int) -> tuple[int, bytes]:
    """One payload (continuation packets joined): (sequence id of its first packet, payload)."""
    parts, total, first_seq = [], 0, None
    while True:
        head = await reader.readexactly(4)
        n = int.from_bytes(head[:3], "little")
        if first_seq is None:
            first_seq = head[3]
        total += n
        if total > max_size:
            raise p.PacketError(f"packet of more than {max_size} bytes")
        parts.append(await reader.readexactly(n))
        if n < p.MAX_PAYLOAD:
            return first_seq, b"".join(parts)


# -- the scrambles -------------------------------------------------------------------------------

def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def native_password_scramble(password: bytes, nonce: bytes) -> bytes:
    """mysql_native_password: SHA1(pw) XOR SHA1(nonce + SHA1(SHA1(pw))); empty for no password."""
    if not password:
        return b""
    h1 = hashlib.sha1(password).digest()
    h2 = hashlib.sha1(h1).digest()
    return _xor(h1, hashlib.sha1(nonce[:20] + h2).digest())


def caching_sha2_scramble(password: bytes, nonce: bytes) -> bytes:
    """caching_sha2_password's fast path: SHA256(pw) XOR SHA256(SHA256(SHA256(pw)) + nonce)."""
    if not password:
        return b""
    h1 = hashlib.sha256(password).digest()
    h2 = hashlib.sha256(h1).digest()
    return _xor(h1, hashlib.sha256(h2 + nonce[:20]).digest())


def rsa_encrypt_password(password: bytes, nonce: bytes, public_key_pem: bytes) -> bytes:
    """Full authentication without TLS (caching_sha2_password, sha256_password): the password
    and a NUL, XORed with the nonce repeated, encrypted with the server's key (RSA-OAEP, SHA-1:
    what MySQL 8.0.5+ servers decrypt with)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    key = serialization.load_pem_public_key(public_key_pem)
    if not isinstance(key, rsa.RSAPublicKey):
        raise UpstreamError("the upstream's public key is not an RSA key")
    plain = password + b"\0"
    nonce = nonce[:20]
    masked = bytes(c ^ nonce[i % len(nonce)] for i, c in enumerate(plain))
    return key.encrypt(masked, padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA1()),
                                            algorithm=hashes.SHA1(), label=None))


# MariaDB's client_ed25519 signs the nonce with a key whose 64-byte expansion is SHA-512 of the
# password itself (not of a 32-byte seed), so no Ed25519 library that takes a seed can produce
# it; this is RFC 8032's signing over that expansion (edwards25519, extended coordinates).
_Q = 2 ** 255 - 19
_L = 2 ** 252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, _Q - 2, _Q) % _Q
_BY = 4 * pow(5, _Q - 2, _Q) % _Q


def _recover_x(y: int, sign: int) -> int:
    x2 = (y * y - 1) * pow(_D * y * y + 1, _Q - 2, _Q) % _Q
    x = pow(x2, (_Q + 3) // 8, _Q)
    if (x * x - x2) % _Q:
        x = x * pow(2, (_Q - 1) // 4, _Q) % _Q
    if x & 1 != sign:
        x = _Q - x
    return x


_B = (_recover_x(_BY, 0), _BY, 1, _recover_x(_BY, 0) * _BY % _Q)


def _add(P, Q):
    a = (P[1] - P[0]) * (Q[1] - Q[0]) % _Q
    b = (P[1] + P[0]) * (Q[1] + Q[0]) % _Q
    c = 2 * P[3] * Q[3] * _D % _Q
    d = 2 * P[2] * Q[2] % _Q
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % _Q, g * h % _Q, f * g % _Q, e * h % _Q)


def _mul(s: int, P):
    R = (0, 1, 1, 0)
    while s:
        if s & 1:
            R = _add(R, P)
        P = _add(P, P)
        s >>= 1
    return R


def _encode(P) -> bytes:
    zi = pow(P[2], _Q - 2, _Q)
    x, y = P[0] * zi % _Q, P[1] * zi % _Q
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def ed25519_sign(password: bytes, message: bytes) -> bytes:
    az = hashlib.sha512(password).digest()
    a = int.from_bytes(az[:32], "little")
    a &= (1 << 254) - 8
    a |= 1 << 254
    public = _encode(_mul(a, _B))
    r = int.from_bytes(hashlib.sha512(az[32:] + message).digest(), "little") % _L
    R = _encode(_mul(r, _B))
    k = int.from_bytes(hashlib.sha512(R + public + message).digest(), "little") % _L
    return R + ((r + k * a) % _L).to_bytes(32, "little")


# -- the login ------------------------------------------------------------------------------------

async def connect_upstream(host: str, port: int, *, user: str, password: str | None,
                           database: str | None, capabilities: int, charset: int = 45,
                           attrs: dict[str, str] | None = None,
                           ssl_context: ssl.SSLContext | None = None,
                           timeout: float = 10.0, track_session: bool = False) -> Upstream:
    """Open, (TLS,) authenticate; returns at the server's OK with the login's capabilities:
    `capabilities` (what the client negotiated) & what the server offers, plus what the login
    itself needs. Raises UpstreamError (a capability the client uses that the server lacks
    too: the gateway does not translate between capability sets). `track_session`: negotiate
    SESSION_TRACK whenever the server has it, whether or not the client asked (the relay reads
    the server's word on sql_mode and the character sets from it)."""
    t0 = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, asyncio.TimeoutError) as e:
        raise UpstreamError(f"cannot connect to upstream {host}:{port}: "
                            f"{e!r}") from None
    up = Upstream(reader, writer)
    try:
        await asyncio.wait_for(_login(up, host, user, password, database, capabilities, charset,
                                      attrs or {}, ssl_context, track_session), timeout)
        up.connect_seconds = time.monotonic() - t0
        return up
    except UpstreamError:
        writer.close()
        raise
    except ssl.SSLCertVerificationError as e:
        writer.close()
        raise UpstreamError(f"upstream {host}:{port} TLS certificate rejected: "
                            f"{e.verify_message}") from None
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ssl.SSLError,
            p.PacketError) as e:
        writer.close()
        raise UpstreamError(f"upstream {host}:{port} failed during login: "
                            f"{type(e).__name__}: {e}") from None


async def _read(up: Upstream) -> bytes:
    seq, payload = await read_packet(up.reader, _LOGIN_PACKET_MAX)
    if seq != up.seq:
        raise p.PacketError(f"upstream packet with sequence id {seq}, expected {up.seq}")
    up.seq = (seq + 1) & 0xFF
    return payload


def _send(up: Upstream, payload: bytes) -> None:
    up.writer.write(p.frame(payload, up.seq))
    up.seq = (up.seq + 1 + len(payload) // p.MAX_PAYLOAD) & 0xFF


def _refused(payload: bytes, host: str, port: int, database: str | None = None) -> UpstreamError:
    e = p.parse_err(payload)
    text = (f"upstream {host}:{port} refused the login: {e.errno} ({e.sqlstate}) "
            f"{e.message.decode('utf-8', 'replace')}")
    if e.errno == 1044 and database is not None:
        # the schema is not the stored user's to use: the client's to know (it may have asked
        # for it), in words that do not name the upstream user
        return UpstreamError(text, code=f"{e.errno}/{e.sqlstate}",
                             client_message=f"Access denied to database '{database}'")
    if e.sqlstate.startswith("28") or e.errno in (1044, 1045, 1698, 1251):
        # our stored credentials (or the upstream user's plugin) are wrong: the operator's
        # problem, and the upstream user name is not the client's business
        return UpstreamError(text, client_message="the gateway could not log in to the "
                                                  "upstream server")
    return UpstreamError(text, code=f"{e.errno}/{e.sqlstate}",
                         client_message=e.message.decode("utf-8", "replace"), server_err=payload)


# the client capabilities that change what the stream carries: a server lacking one of these
# would answer in a shape the client does not expect
_STREAM_CAPS = (CLIENT.DEPRECATE_EOF, CLIENT.SESSION_TRACK, CLIENT.MULTI_RESULTS,
                CLIENT.PS_MULTI_RESULTS, CLIENT.MULTI_STATEMENTS, CLIENT.PROTOCOL_41)


async def _login(up: Upstream, host: str, user: str, password: str | None,
                 database: str | None, client_caps: int, charset: int, attrs: dict[str, str],
                 ctx: ssl.SSLContext | None, track_session: bool) -> None:
    port = up.writer.get_extra_info("peername")[1]
    payload = await _read(up)
    if p.is_err(payload):
        # refused before any login: too many connections, host blocked
        raise _refused(payload, host, port)
    g = p.HandshakeV10.decode(payload)
    up.greeting, up.thread_id = g, g.connection_id
    server = g.capabilities
    if not server & CLIENT.PROTOCOL_41 or not server & CLIENT.SECURE_CONNECTION:
        raise UpstreamError(f"upstream {host}:{port} ({g.server_version}) does not speak "
                            "protocol 4.1 with secure authentication")
    missing = [c for c in _STREAM_CAPS if client_caps & c and not server & c]
    if missing:
        names = [n for n, v in vars(CLIENT).items() if v in missing and not n.startswith("MARIADB")]
        raise UpstreamError(f"upstream {host}:{port} ({g.server_version}) lacks capabilities the "
                            f"client negotiated: {', '.join(names)}",
                            client_message="the upstream server does not support what this "
                                           "client asked for (" + ", ".join(names) + ")")
    caps = (client_caps & server & ~(CLIENT.SSL | CLIENT.COMPRESS | CLIENT.ZSTD_COMPRESSION
                                     | CLIENT.CONNECT_ATTRS | CLIENT.CONNECT_WITH_DB)) \
        | LOGIN_CAPABILITIES
    if database is None:
        caps &= ~CLIENT.CONNECT_WITH_DB
    if track_session:
        caps |= server & CLIENT.SESSION_TRACK
    if attrs and server & CLIENT.CONNECT_ATTRS:
        caps |= CLIENT.CONNECT_ATTRS
    if ctx is not None:
        if not server & CLIENT.SSL:
            raise UpstreamError(f"upstream {host}:{port} does not offer TLS (upstream_tls is set)")
        caps |= CLIENT.SSL
        _send(up, p.ssl_request(caps, charset))
        await up.writer.drain()
        await up.writer.start_tls(ctx, server_hostname=host)
        up.tls = True
    up.capabilities = caps
    pw = (password or "").encode("utf-8")
    nonce = g.auth_data[:20]
    plugin = g.auth_plugin or "mysql_native_password"
    first = _first_response(plugin, pw, nonce, up.tls, host)
    if first is None:           # a plugin we do not speak: ask for native, the server switches
        plugin, first = "mysql_native_password", native_password_scramble(pw, nonce)
    _send(up, p.HandshakeResponse41(
        capabilities=caps, user=user, auth_response=first, database=database,
        auth_plugin=plugin, attrs=attrs, charset=charset if charset < 256 else 45).encode())
    await up.writer.drain()
    await _auth_exchange(up, host, port, plugin, pw, nonce, database)


def _first_response(plugin: str, pw: bytes, nonce: bytes, tls: bool, host: str) -> bytes | None:
    if plugin == "mysql_native_password":
        return native_password_scramble(pw, nonce)
    if plugin == "caching_sha2_password":
        return caching_sha2_scramble(pw, nonce)
    if plugin == "client_ed25519":
        return ed25519_sign(pw, nonce[:32])
    if plugin == "sha256_password":
        # the password itself over TLS; without, ask for the server's key (one 0x01 byte)
        return (pw + b"\0") if tls else (b"\x01" if pw else b"")
    if plugin == "mysql_clear_password":
        if not (tls or is_loopback(host)):
            raise UpstreamError("the upstream asks for the password in clear text over a "
                                "connection without TLS: set upstream_tls")
        return pw + b"\0"
    return None


async def _auth_exchange(up: Upstream, host: str, port: int, plugin: str, pw: bytes,
                         nonce: bytes, database: str | None) -> None:
    switches = 0
    while True:
        payload = await _read(up)
        head = payload[:1]
        if head == b"\x00":
            ok = p.parse_ok(payload, up.capabilities)
            up.status, up.plugin, up.session_info = ok.status, plugin, ok.session_state
            up.ok_payload = payload
            return
        if head == b"\xff":
            raise _refused(payload, host, port, database)
        if head == b"\xfe":
            switches += 1
            if switches > 2:       # a server that switches back and forth is not logging us in
                raise UpstreamError(f"upstream {host}:{port} switched auth plugins {switches} times")
            plugin, data = p.parse_auth_switch(payload)
            if data:
                nonce = data[:32] if plugin == "client_ed25519" else data[:20]
            answer = _first_response(plugin, pw, nonce, up.tls, host)
            if answer is None:
                raise UpstreamError(f"upstream {host}:{port} asks for auth plugin {plugin!r}, "
                                    "which the gateway does not speak")
            _send(up, answer)
            await up.writer.drain()
            continue
        if head == b"\x01" and plugin in ("caching_sha2_password", "sha256_password"):
            data = payload[1:]
            if plugin == "caching_sha2_password" and data == b"\x03":
                continue                       # fast auth succeeded: the OK follows
            if plugin == "caching_sha2_password" and data == b"\x04":
                # full authentication: the server has no cached hash for this user
                if up.tls:
                    _send(up, pw + b"\0")
                else:
                    _send(up, b"\x02")         # request the server's public key
                await up.writer.drain()
                continue
            if data.startswith(b"-----BEGIN"):
                _send(up, rsa_encrypt_password(pw, nonce, data))
                await up.writer.drain()
                continue
        raise UpstreamError(f"upstream {host}:{port} sent an unexpected packet during login "
                            f"(0x{payload[:1].hex() or 'empty'}, plugin {plugin})")
