"""The PostgreSQL relay (ext/hoopwire/pg/_relay.pxi) driven in-process, without a socket.

`Relay.start` takes two transports and only ever calls write / writelines / set_protocol /
pause_reading / resume_reading / close / is_closing on them, so a small recording object stands
in for each socket. The test plays both peers by feeding real protocol bytes to
`relay.client.data_received` (what the client sent) and `relay.upstream.data_received` (what
the server answered), and reads what each side was written. Masking uses the real MaskEngine
and SessionMasker over a catalog filled in-process (the rows a catalog read would return);
recording uses the real StatementLog, every statement through its slow path so each raw record
is seen here.
"""

from __future__ import annotations

import struct
import time

from hoopwire._auditlog import StatementEncoder, StatementLog
from hoopwire.audit.log import pending_from
from hoopwire.config import MaskConfig
from hoopwire.core._frames import ConnStats
from hoopwire.masking import MaskEngine
from hoopwire.pg._wire import Relay
from hoopwire.pg.catalog import _relations
from hoopwire.pg.masker import NO_INFO, ConnectionMasking, SessionMasker, StatementInfo
from hoopwire.pg.messages import message

USERS_OID = 16400
# what the catalog read returns for public.users(id int4, ssn text, note text)
USERS_COLUMNS = [(str(USERS_OID), "public", "users", "r", "1", "id", "23"),
                 (str(USERS_OID), "public", "users", "r", "2", "ssn", "25"),
                 (str(USERS_OID), "public", "users", "r", "3", "note", "25")]


class MemoryTransport:
    """One side's socket: records what the relay writes and whether it reads."""

    def __init__(self, high_water: int | None = None):
        self.data = bytearray()
        self.writes = 0
        self.reading = False
        self.closed = False
        self.protocol = None
        # with a high-water mark, behave like asyncio's write buffer: past it the protocol is
        # told pause_writing, and resume_writing once drain() empties it
        self.high_water = high_water
        self.paused_writing = False

    def write(self, data) -> None:
        self.data += data
        self.writes += 1
        self._check()

    def writelines(self, pieces) -> None:
        for p in pieces:
            self.data += p
        self.writes += 1
        self._check()

    def _check(self) -> None:
        if self.high_water is not None and not self.paused_writing and \
                len(self.data) > self.high_water:
            self.paused_writing = True
            self.protocol.pause_writing()

    def drain(self) -> bytes:
        """What the peer read: the buffer empties (and writing resumes)."""
        out = bytes(self.data)
        self.data.clear()
        if self.paused_writing:
            self.paused_writing = False
            self.protocol.resume_writing()
        return out

    def set_protocol(self, protocol) -> None:
        self.protocol = protocol

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


class Records:
    """The statement records a relay produced: (n, sql, tags, error fields, masked, kept)."""

    def __init__(self):
        self.raw: list[tuple] = []

    def slow(self, raw, n):
        started, ended, sql, tags, error, masked, kept = raw
        assert started <= ended
        self.raw.append((n, sql, tuple(tags), error, masked, kept))
        return {"type": "statement", "session": "s", "n": n}

    def plain(self) -> list[tuple]:
        """(sql, tags, SQLSTATE or None, masked) per statement, in order."""
        out = []
        for _n, sql, tags, error, masked, _kept in self.raw:
            code = None
            if error is not None:
                code = error["C"] if isinstance(error, dict) else _sqlstate(error)
            out.append((sql, tags, code, masked))
        return out


def _sqlstate(body: bytes) -> str:
    for part in body.split(b"\0"):
        if part[:1] == b"C":
            return part[1:].decode()
    return "?"


async def _no_server():
    raise AssertionError("the in-process catalog is never read from a server")


def mask_engine(columns=("public.users.ssn",), strategy="redact") -> MaskEngine:
    return MaskEngine([MaskConfig(columns=columns, strategy=strategy)], hash_key=b"k")


def filled_masking(engine: MaskEngine, rows=USERS_COLUMNS) -> ConnectionMasking:
    conn = ConnectionMasking(engine, unresolved="redact", binary_copy="refuse",
                             connect=lambda db: _no_server(), connection="pg",
                             catalog_ttl=1e9)
    cat = conn.catalog("appdb")
    cat.relations = _relations(rows)
    cat._system = {}                    # noqa: SLF001 -- no system relations read
    cat.stale = False
    cat.loaded_at = time.monotonic()
    cat.on_load(cat)
    return conn


class Wire:
    """A relay between two MemoryTransports."""

    def __init__(self, *, mask: bool = True, record: bool = True, policy=None, events=None,
                 engine: MaskEngine | None = None, high_water: int | None = None):
        self.records = Records()
        self.relay = Relay(ConnStats(), policy, events)
        log = None
        if record:
            log = StatementLog(StatementEncoder("gw", lambda s: s.decode("utf-8", "replace")),
                               "s", self.records.slow, pending_from, True)
        masker = None
        if mask:
            masker = SessionMasker(filled_masking(engine or mask_engine()), "appdb")
        if mask or record:
            self.relay.enable_results(masker, NO_INFO, StatementInfo(True), record=log)
        if masker is not None:
            masker.relay = self.relay
        self.log = log
        self.client = MemoryTransport(high_water)     # the client's socket: what it receives
        self.upstream = MemoryTransport(high_water)   # the upstream's: what the server receives
        self.relay.start(self.client, self.upstream)

    def from_client(self, data: bytes) -> None:
        self.relay.client.data_received(data)

    def from_server(self, data: bytes) -> None:
        self.relay.upstream.data_received(data)

    def take_records(self) -> list[tuple]:
        """Records finished so far (the log's batch is taken so they reach `records`)."""
        if self.log is not None:
            self.log.take()
        return self.records.plain()


# -- frontend messages ---------------------------------------------------------------------------

def cstr(s: bytes) -> bytes:
    return s + b"\0"


def query(sql: bytes) -> bytes:
    return message(b"Q", cstr(sql))


def parse(sql: bytes, name: bytes = b"") -> bytes:
    return message(b"P", cstr(name) + cstr(sql) + struct.pack("!H", 0))


def bind(portal: bytes = b"", stmt: bytes = b"", params=()) -> bytes:
    body = cstr(portal) + cstr(stmt) + struct.pack("!H", 0) + struct.pack("!H", len(params))
    for p in params:
        body += struct.pack("!i", -1) if p is None else struct.pack("!I", len(p)) + p
    return message(b"B", body + struct.pack("!H", 0))


def describe(what: bytes, name: bytes = b"") -> bytes:
    return message(b"D", what + cstr(name))


def execute(portal: bytes = b"", max_rows: int = 0) -> bytes:
    return message(b"E", cstr(portal) + struct.pack("!I", max_rows))


def sync() -> bytes:
    return message(b"S")


# -- backend messages ----------------------------------------------------------------------------

def row_description(fields) -> bytes:
    """fields: (name, table oid, attnum, type oid)."""
    body = struct.pack("!H", len(fields))
    for name, oid, attnum, typ in fields:
        body += cstr(name) + struct.pack("!IHIhih", oid, attnum, typ, -1, -1, 0)
    return message(b"T", body)


def data_row(values) -> bytes:
    body = struct.pack("!H", len(values))
    for v in values:
        body += struct.pack("!i", -1) if v is None else struct.pack("!I", len(v)) + v
    return message(b"D", body)


def complete(tag: bytes) -> bytes:
    return message(b"C", cstr(tag))


def ready(status: bytes = b"I") -> bytes:
    return message(b"Z", status)


def error(code: str, text: str) -> bytes:
    body = b"SERROR\0VERROR\0C" + code.encode() + b"\0M" + text.encode() + b"\0\0"
    return message(b"E", body)


PARSE_COMPLETE = message(b"1")
BIND_COMPLETE = message(b"2")
NO_DATA = message(b"n")
PORTAL_SUSPENDED = message(b"s")
COPY_DONE = message(b"c")


def copy_out_response(ncols: int) -> bytes:
    return message(b"H", b"\0" + struct.pack("!H", ncols) + b"\0\0" * ncols)


def copy_data(line: bytes) -> bytes:
    return message(b"d", line)


def parameter_description(types=()) -> bytes:
    return message(b"t", struct.pack("!H", len(types)) + b"".join(struct.pack("!I", t) for t in types))


def split_messages(data: bytes) -> list[bytes]:
    """Whole messages of a typed stream, each with its header."""
    out, pos = [], 0
    while pos < len(data):
        (n,) = struct.unpack_from("!I", data, pos + 1)
        out.append(data[pos:pos + 1 + n])
        pos += 1 + n
    assert pos == len(data)
    return out
