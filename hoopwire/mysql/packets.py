"""MySQL/MariaDB client/server packets in pure Python: the reference codecs.

The handshake (both sides) is built and read here; after it the Cython relay
(ext/hoopwire/mysql/) frames and rewrites the traffic, and is differential-tested against these
codecs (column definitions, text and binary rows, OK/ERR/EOF). Nothing else in hoopwire/ packs a
MySQL header by hand.

A packet on the wire is a 3-byte little-endian payload length, a 1-byte sequence id and the
payload. A payload of 2^24-1 bytes or more is split into 0xFFFFFF-byte packets, the last one
shorter (empty when the payload is an exact multiple); `frame` and `read_payloads` do that.
Every decoder here reads through `Reader`, which raises PacketError (never IndexError or
struct.error) on a truncated or overlong field, so a bad packet is one exception type.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from hoopwire.core.errors import ClientProtocolError

__all__ = [
    "PacketError", "Reader", "CLIENT", "SERVER_STATUS", "COM", "TYPE", "MAX_PAYLOAD",
    "lenenc_int", "lenenc_str", "frame", "read_payloads",
    "HandshakeV10", "HandshakeResponse41", "ssl_request", "is_ssl_request",
    "auth_switch_request", "parse_auth_switch", "auth_more_data",
    "OK", "ERR", "EOF", "ok_packet", "err_packet", "eof_packet", "parse_ok", "parse_err",
    "parse_eof", "is_ok", "is_err", "is_eof",
    "column_definition", "parse_column_definition", "text_row", "parse_text_row",
    "binary_row", "parse_binary_row", "binary_value", "pack_binary_value",
]

MAX_PAYLOAD = 0xFFFFFF          # one packet's payload at most; longer payloads continue

# lenenc prefixes: 0xFB is NULL in a text row, 0xFC/0xFD/0xFE say 2/3/8 bytes follow; 0xFF is
# never a length (it would read as an ERR header)
_LENENC_NULL = 0xFB
_LENENC_2 = 0xFC
_LENENC_3 = 0xFD
_LENENC_8 = 0xFE

_HEADER_OK = 0x00
_HEADER_EOF = 0xFE              # EOF, or an OK that replaces EOF under CLIENT_DEPRECATE_EOF,
                                # or an AuthSwitchRequest during the handshake
_HEADER_ERR = 0xFF
_HEADER_MORE_DATA = 0x01        # AuthMoreData during the handshake


class PacketError(ClientProtocolError):
    """A packet is truncated or malformed. `code` ("errno/SQLSTATE", as every MySQL refusal
    carries it through the core) is the server's own answer to a bad handshake: 1043
    ER_HANDSHAKE_ERROR, 08S01."""

    def __init__(self, message: str, code: str = "1043/08S01"):
        super().__init__(message, code)


class CLIENT:
    """Capability flags (the low 32 bits; MariaDB's extended ones go in MARIADB_*)."""
    LONG_PASSWORD = 1 << 0           # MariaDB: unset means "MariaDB extended caps follow"
    FOUND_ROWS = 1 << 1
    LONG_FLAG = 1 << 2
    CONNECT_WITH_DB = 1 << 3
    NO_SCHEMA = 1 << 4
    COMPRESS = 1 << 5
    ODBC = 1 << 6
    LOCAL_FILES = 1 << 7
    IGNORE_SPACE = 1 << 8
    PROTOCOL_41 = 1 << 9
    INTERACTIVE = 1 << 10
    SSL = 1 << 11
    IGNORE_SIGPIPE = 1 << 12
    TRANSACTIONS = 1 << 13
    RESERVED = 1 << 14
    SECURE_CONNECTION = 1 << 15
    MULTI_STATEMENTS = 1 << 16
    MULTI_RESULTS = 1 << 17
    PS_MULTI_RESULTS = 1 << 18
    PLUGIN_AUTH = 1 << 19
    CONNECT_ATTRS = 1 << 20
    PLUGIN_AUTH_LENENC_CLIENT_DATA = 1 << 21
    CAN_HANDLE_EXPIRED_PASSWORDS = 1 << 22
    SESSION_TRACK = 1 << 23
    DEPRECATE_EOF = 1 << 24
    OPTIONAL_RESULTSET_METADATA = 1 << 25
    ZSTD_COMPRESSION = 1 << 26
    QUERY_ATTRIBUTES = 1 << 27
    MULTI_FACTOR_AUTH = 1 << 28
    SSL_VERIFY_SERVER_CERT = 1 << 30
    REMEMBER_OPTIONS = 1 << 31
    # MariaDB's extended capabilities (the 4 bytes at the end of the handshake filler)
    MARIADB_PROGRESS = 1 << 0
    MARIADB_COM_MULTI = 1 << 1
    MARIADB_STMT_BULK_OPERATIONS = 1 << 2
    MARIADB_EXTENDED_METADATA = 1 << 3
    MARIADB_CACHE_METADATA = 1 << 4


class SERVER_STATUS:
    IN_TRANS = 0x0001
    AUTOCOMMIT = 0x0002
    MORE_RESULTS_EXISTS = 0x0008
    NO_GOOD_INDEX_USED = 0x0010
    NO_INDEX_USED = 0x0020
    CURSOR_EXISTS = 0x0040
    LAST_ROW_SENT = 0x0080
    DB_DROPPED = 0x0100
    NO_BACKSLASH_ESCAPES = 0x0200
    METADATA_CHANGED = 0x0400
    QUERY_WAS_SLOW = 0x0800
    PS_OUT_PARAMS = 0x1000
    IN_TRANS_READONLY = 0x2000
    SESSION_STATE_CHANGED = 0x4000


class COM:
    SLEEP = 0x00
    QUIT = 0x01
    INIT_DB = 0x02
    QUERY = 0x03
    FIELD_LIST = 0x04
    CREATE_DB = 0x05
    DROP_DB = 0x06
    REFRESH = 0x07
    SHUTDOWN = 0x08
    STATISTICS = 0x09
    PROCESS_INFO = 0x0A
    CONNECT = 0x0B
    PROCESS_KILL = 0x0C
    DEBUG = 0x0D
    PING = 0x0E
    TIME = 0x0F
    DELAYED_INSERT = 0x10
    CHANGE_USER = 0x11
    BINLOG_DUMP = 0x12
    TABLE_DUMP = 0x13
    CONNECT_OUT = 0x14
    REGISTER_SLAVE = 0x15
    STMT_PREPARE = 0x16
    STMT_EXECUTE = 0x17
    STMT_SEND_LONG_DATA = 0x18
    STMT_CLOSE = 0x19
    STMT_RESET = 0x1A
    SET_OPTION = 0x1B
    STMT_FETCH = 0x1C
    DAEMON = 0x1D
    BINLOG_DUMP_GTID = 0x1E
    RESET_CONNECTION = 0x1F
    STMT_BULK_EXECUTE = 0xFA       # MariaDB


class TYPE:
    DECIMAL = 0
    TINY = 1
    SHORT = 2
    LONG = 3
    FLOAT = 4
    DOUBLE = 5
    NULL = 6
    TIMESTAMP = 7
    LONGLONG = 8
    INT24 = 9
    DATE = 10
    TIME = 11
    DATETIME = 12
    YEAR = 13
    NEWDATE = 14
    VARCHAR = 15
    BIT = 16
    TIMESTAMP2 = 17
    DATETIME2 = 18
    TIME2 = 19
    VECTOR = 242          # MariaDB 11.7
    JSON = 245
    NEWDECIMAL = 246
    ENUM = 247
    SET = 248
    TINY_BLOB = 249
    MEDIUM_BLOB = 250
    LONG_BLOB = 251
    BLOB = 252
    VAR_STRING = 253
    STRING = 254
    GEOMETRY = 255


UNSIGNED_FLAG = 0x20             # column flag: integer columns read as unsigned

# binary protocol: fixed width by type; the temporal types carry a 1-byte length instead and
# every other type is a lenenc string
_FIXED = {TYPE.TINY: 1, TYPE.SHORT: 2, TYPE.YEAR: 2, TYPE.LONG: 4, TYPE.INT24: 4,
          TYPE.FLOAT: 4, TYPE.LONGLONG: 8, TYPE.DOUBLE: 8, TYPE.NULL: 0}
_TEMPORAL = frozenset((TYPE.DATE, TYPE.DATETIME, TYPE.TIMESTAMP, TYPE.TIME, TYPE.NEWDATE))
_TEMPORAL_LENGTHS = {TYPE.TIME: (0, 8, 12)}          # days/h/m/s [+ microseconds]
_DATE_LENGTHS = (0, 4, 7, 11)                          # date [time [microseconds]]


# -- primitives ----------------------------------------------------------------------------------

class Reader:
    """A payload and a read position. Every read checks the bounds."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0):
        self.data = data
        self.pos = pos

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise PacketError(f"packet truncated: {n} bytes wanted at offset {self.pos}, "
                              f"{len(self.data) - self.pos} left")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "little")

    def uint8(self) -> int:
        return self.uint(1)

    def uint16(self) -> int:
        return self.uint(2)

    def uint24(self) -> int:
        return self.uint(3)

    def uint32(self) -> int:
        return self.uint(4)

    def uint64(self) -> int:
        return self.uint(8)

    def lenenc_int(self) -> int | None:
        """A length-encoded integer; None for 0xFB (NULL in a text row)."""
        first = self.uint8()
        if first < _LENENC_NULL:
            return first
        if first == _LENENC_NULL:
            return None
        if first == _LENENC_2:
            return self.uint(2)
        if first == _LENENC_3:
            return self.uint(3)
        if first == _LENENC_8:
            return self.uint(8)
        raise PacketError("0xff is not a length-encoded integer")

    def lenenc_str(self) -> bytes | None:
        n = self.lenenc_int()
        return None if n is None else self.take(n)

    def nul_str(self) -> bytes:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise PacketError(f"unterminated string at offset {self.pos}")
        out = self.data[self.pos:end]
        self.pos = end + 1
        return out

    def rest(self) -> bytes:
        out = self.data[self.pos:]
        self.pos = len(self.data)
        return out


def lenenc_int(n: int) -> bytes:
    if n < 0 or n >= 1 << 64:
        raise ValueError(f"{n} does not fit a length-encoded integer")
    if n < _LENENC_NULL:
        return bytes((n,))
    if n < 1 << 16:
        return bytes((_LENENC_2,)) + n.to_bytes(2, "little")
    if n < 1 << 24:
        return bytes((_LENENC_3,)) + n.to_bytes(3, "little")
    return bytes((_LENENC_8,)) + n.to_bytes(8, "little")


def lenenc_str(s: bytes) -> bytes:
    return lenenc_int(len(s)) + s


def frame(payload: bytes, seq: int) -> bytes:
    """The packets carrying `payload`, the first with sequence id `seq` (mod 256)."""
    out = []
    pos = 0
    while True:
        chunk = payload[pos:pos + MAX_PAYLOAD]
        out.append(len(chunk).to_bytes(3, "little") + bytes((seq & 0xFF,)) + chunk)
        seq += 1
        pos += MAX_PAYLOAD
        if len(chunk) < MAX_PAYLOAD:
            return b"".join(out)


def read_payloads(buf: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Whole payloads in `buf`: ([(first sequence id, payload)], the bytes left over). A payload
    split over packets (0xFFFFFF-byte packets and the shorter last one) comes out joined; its
    packets must have consecutive sequence ids."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    while True:
        start, parts, first_seq, expect = pos, [], None, None
        while True:
            if len(buf) - pos < 4:
                return out, buf[start:]
            n = int.from_bytes(buf[pos:pos + 3], "little")
            seq = buf[pos + 3]
            if len(buf) - pos - 4 < n:
                return out, buf[start:]
            if first_seq is None:
                first_seq = seq
            elif seq != expect:
                raise PacketError(f"packets out of order: sequence id {seq}, expected {expect}")
            expect = (seq + 1) & 0xFF
            parts.append(buf[pos + 4:pos + 4 + n])
            pos += 4 + n
            if n < MAX_PAYLOAD:
                break
        out.append((first_seq, b"".join(parts)))


# -- handshake -----------------------------------------------------------------------------------

@dataclass
class HandshakeV10:
    """The server's first packet."""
    server_version: str
    connection_id: int
    auth_data: bytes                      # the nonce: 20 bytes in practice (8 + 12 or more)
    capabilities: int
    charset: int = 45                     # utf8mb4_general_ci
    status: int = SERVER_STATUS.AUTOCOMMIT
    auth_plugin: str = "mysql_native_password"
    mariadb_capabilities: int = 0         # MariaDB's extended caps (when CLIENT_LONG_PASSWORD is unset)
    protocol_version: int = 10

    def encode(self) -> bytes:
        nonce = self.auth_data
        if len(nonce) < 8:
            raise ValueError("the handshake nonce is at least 8 bytes")
        caps = self.capabilities
        out = [bytes((self.protocol_version,)), self.server_version.encode() + b"\0",
               struct.pack("<I", self.connection_id), nonce[:8], b"\0",
               struct.pack("<HBHH", caps & 0xFFFF, self.charset & 0xFF, self.status,
                           (caps >> 16) & 0xFFFF)]
        # auth data length counts the terminating NUL of part 2, as servers send it (21)
        out.append(bytes((len(nonce) + 1,)) if caps & CLIENT.PLUGIN_AUTH else b"\0")
        out.append(b"\0" * 6 + struct.pack("<I", self.mariadb_capabilities))
        if caps & CLIENT.SECURE_CONNECTION:
            part2 = nonce[8:]
            out.append(part2 + b"\0" * (max(13, len(part2) + 1) - len(part2)))
        if caps & CLIENT.PLUGIN_AUTH:
            out.append(self.auth_plugin.encode() + b"\0")
        return b"".join(out)

    @classmethod
    def decode(cls, payload: bytes) -> "HandshakeV10":
        r = Reader(payload)
        version = r.uint8()
        if version != 10:
            raise PacketError(f"handshake protocol version {version}, not 10")
        server_version = r.nul_str().decode("utf-8", "replace")
        conn_id = r.uint32()
        nonce1 = r.take(8)
        r.take(1)
        caps = r.uint16()
        charset, status, caps_hi = 45, 0, 0
        auth_len, mariadb_caps, nonce2, plugin = 0, 0, b"", ""
        if not r.at_end():
            charset = r.uint8()
            status = r.uint16()
            caps_hi = r.uint16()
            caps |= caps_hi << 16
            auth_len = r.uint8()
            r.take(6)
            mariadb_caps = r.uint32()
            if caps & CLIENT.SECURE_CONNECTION:
                n = max(13, auth_len - 8)
                nonce2 = r.take(min(n, r.remaining()))
                # the second part ends with a NUL that is not part of the nonce
                if nonce2.endswith(b"\0"):
                    nonce2 = nonce2[:-1]
            if caps & CLIENT.PLUGIN_AUTH and not r.at_end():
                rest = r.rest()
                plugin = rest.split(b"\0", 1)[0].decode("ascii", "replace")
        if caps & CLIENT.LONG_PASSWORD:
            mariadb_caps = 0        # a MySQL server: those bytes are filler
        return cls(server_version=server_version, connection_id=conn_id,
                   auth_data=nonce1 + nonce2, capabilities=caps, charset=charset,
                   status=status, auth_plugin=plugin, mariadb_capabilities=mariadb_caps,
                   protocol_version=version)


@dataclass
class HandshakeResponse41:
    """The client's answer (or, cut after the filler, its SSLRequest)."""
    capabilities: int
    user: str
    auth_response: bytes = b""
    database: str | None = None
    auth_plugin: str | None = None
    attrs: dict[str, str] = field(default_factory=dict)
    max_packet: int = 1 << 24
    charset: int = 45
    mariadb_capabilities: int = 0

    def _head(self) -> bytes:
        return (struct.pack("<IIB", self.capabilities, self.max_packet, self.charset & 0xFF)
                + b"\0" * 19 + struct.pack("<I", self.mariadb_capabilities))

    def encode(self) -> bytes:
        caps = self.capabilities
        out = [self._head(), self.user.encode() + b"\0"]
        if caps & CLIENT.PLUGIN_AUTH_LENENC_CLIENT_DATA:
            out.append(lenenc_str(self.auth_response))
        elif caps & CLIENT.SECURE_CONNECTION:
            if len(self.auth_response) > 255:
                raise ValueError("an auth response over 255 bytes needs "
                                 "CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA")
            out.append(bytes((len(self.auth_response),)) + self.auth_response)
        else:
            out.append(self.auth_response + b"\0")
        if caps & CLIENT.CONNECT_WITH_DB:
            out.append((self.database or "").encode() + b"\0")
        if caps & CLIENT.PLUGIN_AUTH:
            out.append((self.auth_plugin or "").encode() + b"\0")
        if caps & CLIENT.CONNECT_ATTRS:
            body = b"".join(lenenc_str(k.encode()) + lenenc_str(v.encode())
                            for k, v in self.attrs.items())
            out.append(lenenc_str(body))
        return b"".join(out)

    def ssl_request(self) -> bytes:
        return self._head()

    @classmethod
    def decode(cls, payload: bytes) -> "HandshakeResponse41":
        r = Reader(payload)
        caps = r.uint32()
        if not caps & CLIENT.PROTOCOL_41:
            raise PacketError("the client does not speak protocol 4.1 (HandshakeResponse320)")
        max_packet = r.uint32()
        charset = r.uint8()
        r.take(19)
        mariadb_caps = r.uint32()
        if caps & CLIENT.LONG_PASSWORD:
            mariadb_caps = 0
        user = _text(r.nul_str(), "user name")
        if caps & CLIENT.PLUGIN_AUTH_LENENC_CLIENT_DATA:
            auth = r.lenenc_str() or b""
        elif caps & CLIENT.SECURE_CONNECTION:
            auth = r.take(r.uint8())
        else:
            auth = r.nul_str()
        database = None
        if caps & CLIENT.CONNECT_WITH_DB and not r.at_end():
            database = _text(r.nul_str(), "database name")
        plugin = None
        if caps & CLIENT.PLUGIN_AUTH and not r.at_end():
            plugin = _text(r.nul_str(), "auth plugin name")
        attrs: dict[str, str] = {}
        if caps & CLIENT.CONNECT_ATTRS and not r.at_end():
            body = Reader(r.lenenc_str() or b"")
            while not body.at_end():
                k = (body.lenenc_str() or b"").decode("utf-8", "replace")
                attrs[k] = (body.lenenc_str() or b"").decode("utf-8", "replace")
        return cls(capabilities=caps, user=user, auth_response=auth, database=database,
                   auth_plugin=plugin, attrs=attrs, max_packet=max_packet, charset=charset,
                   mariadb_capabilities=mariadb_caps)


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PacketError(f"the {what} is not valid UTF-8") from None


SSL_REQUEST_SIZE = 32


def ssl_request(capabilities: int, charset: int = 45, max_packet: int = 1 << 24,
                mariadb_capabilities: int = 0) -> bytes:
    """An SSLRequest payload: the first 32 bytes of a HandshakeResponse41, with CLIENT_SSL."""
    return HandshakeResponse41(capabilities | CLIENT.SSL, "", max_packet=max_packet,
                               charset=charset,
                               mariadb_capabilities=mariadb_capabilities).ssl_request()


def is_ssl_request(payload: bytes) -> bool:
    return (len(payload) == SSL_REQUEST_SIZE
            and bool(int.from_bytes(payload[:4], "little") & CLIENT.SSL))


def auth_switch_request(plugin: str, data: bytes = b"") -> bytes:
    return bytes((_HEADER_EOF,)) + plugin.encode() + b"\0" + data


def parse_auth_switch(payload: bytes) -> tuple[str, bytes]:
    """(plugin name, its data) of an AuthSwitchRequest, the data as sent: servers add a NUL
    after a 20-byte nonce (take the first 20), but client_ed25519's 32 random bytes have no
    terminator and may end in a zero byte themselves."""
    r = Reader(payload)
    if r.uint8() != _HEADER_EOF:
        raise PacketError("not an AuthSwitchRequest")
    if r.at_end():        # the pre-4.1 "old auth switch": no name, means mysql_old_password
        return "mysql_old_password", b""
    plugin = r.nul_str().decode("ascii", "replace")
    return plugin, r.rest()


def auth_more_data(data: bytes) -> bytes:
    return bytes((_HEADER_MORE_DATA,)) + data


# -- OK / ERR / EOF ------------------------------------------------------------------------------

@dataclass
class OK:
    affected_rows: int = 0
    last_insert_id: int = 0
    status: int = SERVER_STATUS.AUTOCOMMIT
    warnings: int = 0
    info: bytes = b""
    session_state: bytes = b""           # the raw session-state-change block, when present
    header: int = _HEADER_OK             # 0xFE for the OK that ends a result under DEPRECATE_EOF


@dataclass
class ERR:
    errno: int
    sqlstate: str
    message: bytes


@dataclass
class EOF:
    warnings: int = 0
    status: int = SERVER_STATUS.AUTOCOMMIT


def ok_packet(ok: OK | None = None, capabilities: int = CLIENT.PROTOCOL_41) -> bytes:
    ok = ok or OK()
    out = [bytes((ok.header,)), lenenc_int(ok.affected_rows), lenenc_int(ok.last_insert_id)]
    if capabilities & CLIENT.PROTOCOL_41:
        out.append(struct.pack("<HH", ok.status, ok.warnings))
    elif capabilities & CLIENT.TRANSACTIONS:
        out.append(struct.pack("<H", ok.status))
    if capabilities & CLIENT.SESSION_TRACK:
        # info is lenenc under SESSION_TRACK; the state block follows when the flag says so
        if ok.info or ok.status & SERVER_STATUS.SESSION_STATE_CHANGED:
            out.append(lenenc_str(ok.info))
        if ok.status & SERVER_STATUS.SESSION_STATE_CHANGED:
            out.append(lenenc_str(ok.session_state))
    else:
        out.append(ok.info)
    return b"".join(out)


def parse_ok(payload: bytes, capabilities: int = CLIENT.PROTOCOL_41) -> OK:
    r = Reader(payload)
    header = r.uint8()
    if header not in (_HEADER_OK, _HEADER_EOF):
        raise PacketError(f"not an OK packet (header 0x{header:02x})")
    ok = OK(header=header)
    ok.affected_rows = r.lenenc_int() or 0
    ok.last_insert_id = r.lenenc_int() or 0
    if capabilities & CLIENT.PROTOCOL_41:
        ok.status, ok.warnings = r.uint16(), r.uint16()
    elif capabilities & CLIENT.TRANSACTIONS:
        ok.status = r.uint16()
    if capabilities & CLIENT.SESSION_TRACK:
        if not r.at_end():
            ok.info = r.lenenc_str() or b""
            if ok.status & SERVER_STATUS.SESSION_STATE_CHANGED and not r.at_end():
                ok.session_state = r.lenenc_str() or b""
    else:
        ok.info = r.rest()
    return ok


def err_packet(errno: int, sqlstate: str, message: str | bytes) -> bytes:
    """An ERR payload (protocol 4.1: '#' and the 5-character SQLSTATE)."""
    if isinstance(message, str):
        message = message.encode("utf-8")
    state = sqlstate.encode("ascii")
    if len(state) != 5:
        raise ValueError(f"SQLSTATE {sqlstate!r} is not 5 characters")
    return bytes((_HEADER_ERR,)) + struct.pack("<H", errno) + b"#" + state + message


def parse_err(payload: bytes) -> ERR:
    r = Reader(payload)
    if r.uint8() != _HEADER_ERR:
        raise PacketError("not an ERR packet")
    errno = r.uint16()
    if errno == 0xFFFF:
        # a progress report (MariaDB), not an error: the caller must not get here with one
        raise PacketError("a progress report is not an ERR")
    sqlstate = "HY000"
    if r.remaining() >= 6 and payload[r.pos] == ord("#"):
        r.take(1)
        sqlstate = r.take(5).decode("ascii", "replace")
    return ERR(errno, sqlstate, r.rest())


def eof_packet(warnings: int = 0, status: int = SERVER_STATUS.AUTOCOMMIT) -> bytes:
    return bytes((_HEADER_EOF,)) + struct.pack("<HH", warnings, status)


def parse_eof(payload: bytes) -> EOF:
    r = Reader(payload)
    if r.uint8() != _HEADER_EOF:
        raise PacketError("not an EOF packet")
    return EOF(*struct.unpack("<HH", r.take(4))) if r.remaining() >= 4 else EOF(0, 0)


def is_err(payload: bytes) -> bool:
    return payload[:1] == b"\xff"


def is_ok(payload: bytes) -> bool:
    # 0x00 with at least the two lenenc integers and status/warnings
    return payload[:1] == b"\x00" and len(payload) >= 7


def is_eof(payload: bytes) -> bool:
    # 0xFE starts an EOF (or, under DEPRECATE_EOF, an OK ending a result) only in a short
    # packet: a text row's first value may also start with 0xFE (an 8-byte lenenc length),
    # but such a row is at least 9 bytes. 0xFFFFFF is the limit the server uses for "short".
    return payload[:1] == b"\xfe" and len(payload) < 0xFFFFFF and len(payload) < 9


# -- result sets ---------------------------------------------------------------------------------

# (schema, table, org_table, name, org_name, charset, length, type, flags, decimals), as the
# contracts give the masker a column
Column = tuple


def column_definition(schema: str, table: str, org_table: str, name: str, org_name: str,
                      charset: int, length: int, type: int, flags: int = 0,
                      decimals: int = 0, catalog: str = "def") -> bytes:
    return (b"".join(lenenc_str(s.encode("utf-8"))
                     for s in (catalog, schema, table, org_table, name, org_name))
            + b"\x0c" + struct.pack("<HIBHB", charset, length, type, flags, decimals)
            + b"\0\0")


def parse_column_definition(payload: bytes) -> Column:
    """A ColumnDefinition41 as the contract's tuple (str fields decoded utf-8, 'replace')."""
    r = Reader(payload)
    names = []
    for _ in range(6):
        names.append((r.lenenc_str() or b"").decode("utf-8", "replace"))
    fixed = r.lenenc_int()
    if fixed is None or fixed < 0x0C:
        raise PacketError(f"column definition: fixed-length block of {fixed} bytes")
    charset, length, type_, flags, decimals = struct.unpack("<HIBHB", r.take(10))
    return (names[1], names[2], names[3], names[4], names[5], charset, length, type_, flags,
            decimals)


def text_row(values: list[bytes | None]) -> bytes:
    return b"".join(b"\xfb" if v is None else lenenc_str(v) for v in values)


def parse_text_row(payload: bytes, ncols: int) -> list[bytes | None]:
    r = Reader(payload)
    out = [r.lenenc_str() for _ in range(ncols)]
    if not r.at_end():
        raise PacketError(f"text row: {r.remaining()} bytes after {ncols} values")
    return out


def _bitmap_len(ncols: int) -> int:
    return (ncols + 7 + 2) // 8        # binary rows offset the NULL bitmap by 2 bits


def binary_row(values: list[bytes | None], types: list[int]) -> bytes:
    """A binary-protocol row from raw values as parse_binary_row returns them: the fixed-width
    bytes for numbers, the bytes after the length byte for temporals, the string otherwise."""
    bitmap = bytearray(_bitmap_len(len(types)))
    body = []
    for i, (v, t) in enumerate(zip(values, types, strict=True)):
        if v is None:
            bit = i + 2
            bitmap[bit >> 3] |= 1 << (bit & 7)
        elif t in _FIXED:
            if len(v) != _FIXED[t]:
                raise ValueError(f"type {t} is {_FIXED[t]} bytes, got {len(v)}")
            body.append(v)
        elif t in _TEMPORAL:
            body.append(bytes((len(v),)) + v)
        else:
            body.append(lenenc_str(v))
    return b"\0" + bytes(bitmap) + b"".join(body)


def parse_binary_row(payload: bytes, types: list[int]) -> list[bytes | None]:
    r = Reader(payload)
    if r.uint8() != 0:
        raise PacketError("binary row: header is not 0x00")
    bitmap = r.take(_bitmap_len(len(types)))
    out: list[bytes | None] = []
    for i, t in enumerate(types):
        bit = i + 2
        if bitmap[bit >> 3] & (1 << (bit & 7)):
            out.append(None)
        elif t in _FIXED:
            out.append(r.take(_FIXED[t]))
        elif t in _TEMPORAL:
            n = r.uint8()
            allowed = _TEMPORAL_LENGTHS.get(t, _DATE_LENGTHS)
            if n not in allowed:
                raise PacketError(f"binary row: type {t} value of {n} bytes")
            out.append(r.take(n))
        else:
            v = r.lenenc_str()
            if v is None:
                raise PacketError("binary row: 0xfb length (NULLs go in the bitmap)")
            out.append(v)
    if not r.at_end():
        raise PacketError(f"binary row: {r.remaining()} bytes after {len(types)} values")
    return out


_INT_FORMATS = {TYPE.TINY: "b", TYPE.SHORT: "h", TYPE.YEAR: "h", TYPE.LONG: "i",
                TYPE.INT24: "i", TYPE.LONGLONG: "q"}


def binary_value(type_: int, raw: bytes | None, unsigned: bool = False):
    """A raw binary-protocol value as Python: int / float for numbers, a tuple of the fields
    for temporals (year, month, day, hour, minute, second, microsecond) or (negative, days,
    hours, minutes, seconds, microseconds) for TIME, bytes for everything else."""
    if raw is None:
        return None
    if type_ in _INT_FORMATS:
        fmt = _INT_FORMATS[type_]
        return struct.unpack("<" + (fmt.upper() if unsigned else fmt), raw)[0]
    if type_ == TYPE.FLOAT:
        return struct.unpack("<f", raw)[0]
    if type_ == TYPE.DOUBLE:
        return struct.unpack("<d", raw)[0]
    if type_ == TYPE.TIME:
        if not raw:
            return (False, 0, 0, 0, 0, 0)
        neg, days, h, m, s = struct.unpack("<BIBBB", raw[:8])
        us = struct.unpack("<I", raw[8:12])[0] if len(raw) == 12 else 0
        return (bool(neg), days, h, m, s, us)
    if type_ in _TEMPORAL:
        fields = [0, 0, 0, 0, 0, 0, 0]
        if len(raw) >= 4:
            fields[0] = struct.unpack("<H", raw[:2])[0]
            fields[1], fields[2] = raw[2], raw[3]
        if len(raw) >= 7:
            fields[3], fields[4], fields[5] = raw[4], raw[5], raw[6]
        if len(raw) == 11:
            fields[6] = struct.unpack("<I", raw[7:11])[0]
        return tuple(fields)
    return raw


def pack_binary_value(type_: int, value, unsigned: bool = False) -> bytes:
    """The inverse of binary_value."""
    if type_ in _INT_FORMATS:
        fmt = _INT_FORMATS[type_]
        return struct.pack("<" + (fmt.upper() if unsigned else fmt), value)
    if type_ == TYPE.FLOAT:
        return struct.pack("<f", value)
    if type_ == TYPE.DOUBLE:
        return struct.pack("<d", value)
    if type_ == TYPE.TIME:
        neg, days, h, m, s, us = value
        if not (neg or days or h or m or s or us):
            return b""
        out = struct.pack("<BIBBB", int(neg), days, h, m, s)
        return out + struct.pack("<I", us) if us else out
    if type_ in _TEMPORAL:
        y, mo, d, h, mi, s, us = value
        if us:
            return struct.pack("<HBBBBBI", y, mo, d, h, mi, s, us)
        if h or mi or s:
            return struct.pack("<HBBBBB", y, mo, d, h, mi, s)
        if y or mo or d:
            return struct.pack("<HBB", y, mo, d)
        return b""
    return bytes(value)
