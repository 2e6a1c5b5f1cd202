"""Cancel keys: the client gets the upstream's process id and a secret of ours.

The client's secret is the upstream's secret run through a keyed 32-bit permutation (a Feistel
network over HMAC-SHA256, tweaked with the pid and the connection name). Every worker process
of one gateway shares the key, so a CancelRequest that the kernel hands to another worker (the
listeners share a port with SO_REUSEPORT) is still mapped back -- with no shared state. The
client never learns the upstream secret.

The permutation alone would turn every forged secret into an upstream cancel (a connection to
the server each, and one in 2^32 lands), so a key no process of this gateway issued is dropped
without contacting the upstream: with one worker the session table says so; with several, a
worker that does not hold the session asks its siblings (hoopwire.core.cancelpeers) and only the
one that holds it cancels. In front of all that, hoopwire.core.cancels keeps a token bucket per
source address and makes a spray one log line rather than one per packet.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

__all__ = ["CancelKeys"]

_ROUNDS = 4


class CancelKeys:
    def __init__(self, key: bytes | None = None):
        self._key = key or os.urandom(32)
        self._local: dict[tuple[str, int, int], object] = {}

    @property
    def key(self) -> bytes:
        return self._key

    def _round(self, i: int, half: int, pid: int, conn: str) -> int:
        mac = hmac.digest(self._key, struct.pack("!BIH", i, pid, half) + conn.encode(), hashlib.sha256)
        return int.from_bytes(mac[:2], "big")

    def to_client(self, conn: str, pid: int, upstream_secret: int) -> int:
        left, right = upstream_secret >> 16, upstream_secret & 0xFFFF
        for i in range(_ROUNDS):
            left, right = right, left ^ self._round(i, right, pid, conn)
        return (left << 16) | right

    def to_upstream(self, conn: str, pid: int, client_secret: int) -> int:
        left, right = client_secret >> 16, client_secret & 0xFFFF
        for i in reversed(range(_ROUNDS)):
            left, right = right ^ self._round(i, left, pid, conn), left
        return (left << 16) | right

    def register(self, conn: str, pid: int, client_secret: int, session: object) -> None:
        self._local[(conn, pid, client_secret)] = session

    def unregister(self, conn: str, pid: int, client_secret: int) -> None:
        self._local.pop((conn, pid, client_secret), None)

    def lookup(self, conn: str, pid: int, client_secret: int) -> object | None:
        return self._local.get((conn, pid, client_secret))
