"""MySQL's words for what the core says to a client, and what the recorder reads back out of
what the relay captured (hoopwire.core.seams.ProtocolAdapter).

A MySQL error carries two codes, an error number and a SQLSTATE; the core carries one string,
so a code here is "errno/sqlstate" (as the listener's refusals are: "1045/28000").
"""

from __future__ import annotations

import struct
from typing import Optional

from hoopwire.mysql import packets
from hoopwire.mysql._wire import REFUSED_MARK, err_packet

__all__ = ["MysqlAdapter", "ADAPTER", "CODES", "split_code", "rows_from_tags"]

# The core's conditions, each as the code MySQL/MariaDB itself gives the same situation
CODES = {
    "shutting_down": "1053/08S01",      # ER_SERVER_SHUTDOWN
    "idle_timeout": "4031/HY000",       # ER_CLIENT_INTERACTION_TIMEOUT (MySQL 8.0.24's wait_timeout)
    "handshake_timeout": "1043/08S01",  # ER_HANDSHAKE_ERROR ("Bad handshake")
    "read_timeout": "1159/08S01",       # ER_NET_READ_INTERRUPTED (net_read_timeout passed)
    "internal": "1105/HY000",           # ER_UNKNOWN_ERROR
    "not_approved": "1227/42000",       # ER_SPECIFIC_ACCESS_DENIED_ERROR
    "query_cancelled": "1317/70100",    # ER_QUERY_INTERRUPTED
    "audit_unavailable": "1021/HY000",  # ER_DISK_FULL: what an unwritable audit log amounts to
    "policy_reload": "1227/42000",
    "blocked": "1227/42000",            # a guardrail refused the statement (the relay's own ERR)
    "access_revoked": "1045/28000",     # ER_ACCESS_DENIED_ERROR
}


def split_code(code: str) -> tuple[int, str]:
    """"1045/28000" -> (1045, "28000"); a bare SQLSTATE -> ER_UNKNOWN_ERROR (1105) with it."""
    errno, sep, state = code.partition("/")
    if sep and errno.isdigit():
        return int(errno), (state + "00000")[:5]
    if len(code) == 5:
        return 1105, code
    return 1105, "HY000"


def rows_from_tags(tags: list[bytes]) -> Optional[int]:
    """Rows a statement touched or returned, from the relay's tags ("OK 3" per OK packet's
    affected rows, "ROWS 5" per result set): their sum, None when there is none."""
    total = None
    for tag in tags:
        last = tag.rsplit(b" ", 1)[-1]
        if last.isdigit():
            total = (total or 0) + int(last)
    return total


def _text(v: bytes) -> str:
    try:
        return v.decode("utf-8")
    except UnicodeDecodeError:
        return "\\x" + v.hex()


def _binary_text(t: int, raw: bytes, unsigned: bool) -> str:
    value = packets.binary_value(t, raw, unsigned)
    if isinstance(value, bytes):
        return _text(value)
    if isinstance(value, tuple):
        if t == packets.TYPE.TIME:
            neg, days, h, m, s, us = value
            out = f"{'-' if neg else ''}{days * 24 + h:02d}:{m:02d}:{s:02d}"
        else:
            y, mo, d, h, mi, s, us = value
            out = f"{y:04d}-{mo:02d}-{d:02d}"
            if t != packets.TYPE.DATE:
                out += f" {h:02d}:{mi:02d}:{s:02d}"
        return out + (f".{us:06d}" if us else "")
    return str(value)


class MysqlAdapter:
    protocol = "mysql"
    too_many_clients_code = "1040/08004"      # ER_CON_COUNT_ERROR
    # what the relay puts after the marker prefix in a refused statement's recorded error
    refused_mark = REFUSED_MARK

    def code(self, name: str) -> str:
        return CODES[name]

    def fatal(self, code: str, message: str) -> bytes:
        """An ERR packet, sequence id 0 (whoever sends it numbers it)."""
        errno, state = split_code(code)
        return err_packet(errno, state, message)

    def condition(self, name: str, message: str, *, fatal: bool = False,
                  hint: Optional[str] = None) -> bytes:
        errno, state = split_code(CODES[name])
        return err_packet(errno, state, message + (f" ({hint})" if hint else ""))

    def notice(self, message: str) -> bytes:
        """MySQL has no message a server sends unasked: the text, which the relay logs
        (Relay.notify_client) and never writes to the client."""
        return message.encode("utf-8", "replace")

    def error_fields(self, body: Optional[bytes]) -> Optional[dict]:
        """An ERR payload as the relay recorded it -> {"code": "errno/sqlstate", "message"}."""
        if not body or body[0] != 0xFF or len(body) < 3:
            return None
        (errno,) = struct.unpack_from("<H", body, 1)
        if len(body) >= 9 and body[3:4] == b"#":
            state, msg = body[4:9].decode("ascii", "replace"), body[9:]
        else:
            state, msg = "HY000", body[3:]
        return {"code": f"{errno}/{state}", "message": msg.decode("utf-8", "replace")}

    def row_values(self, msg: bytes) -> list:
        """A captured row as the client saw it: b"T" + a text row's payload, or b"B" + the
        column count (uint16) + each column's type + each one's unsigned flag + a binary row's
        payload. Text values decoded, undecodable bytes as \\x hex, NULL as None."""
        if msg[:1] == b"T":
            r = packets.Reader(msg[1:])
            out = []
            while not r.at_end():
                v = r.lenenc_str()
                out.append(None if v is None else _text(v))
            return out
        if msg[:1] == b"B":
            (n,) = struct.unpack_from("<H", msg, 1)
            types = list(msg[3:3 + n])
            unsigned = msg[3 + n:3 + 2 * n]
            raw = packets.parse_binary_row(msg[3 + 2 * n:], types)
            return [None if v is None else _binary_text(t, v, bool(u))
                    for v, t, u in zip(raw, types, unsigned)]
        return ["\\x" + msg.hex()]

    rows_affected = staticmethod(rows_from_tags)


ADAPTER = MysqlAdapter()
