"""Sibling workers answer for the cancel keys they issued.

With --workers N the kernel hands a CancelRequest to any worker (SO_REUSEPORT), most often not
the one holding the session. That worker asks its siblings, over Unix datagram sockets in a
directory the supervisor made (mode 0700, so only the gateway's own user can ask), whether one of
them issued the key; the one that did cancels -- upstream, or a held statement locally -- and
says yes. When nobody says yes within ASK_TIMEOUT the cancel is dropped: a key no worker issued
never costs the upstream a connection.

Why ask rather than share a table: a session's start and end would each write to shared state
(a file or shared memory, with its own locking and crash clean-up), on every connection; asking
costs only the cancels that land on the wrong worker, and the owner of a held statement is the
only process that can answer it anyway. A worker's socket is named after its slot, so a restarted
worker takes its predecessor's name and a dead one is simply not there (ECONNREFUSED: no).

Datagrams: ask  = b"Q" nonce(8) pid(4) secret(4) connection-name(utf-8)
           reply = b"Y" or b"N", then the same nonce; a "Y" may carry the owner's answer
                   (up to _MAX_ANSWER bytes: what the asker needs to act itself, e.g. the
                   upstream thread a MySQL KILL names)
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct

from hoopwire.logs import event

log = logging.getLogger("hoopwire.pg.cancel")

__all__ = ["CancelPeers", "ASK_TIMEOUT"]

# Siblings answer from their event loop without any I/O of their own, in well under a
# millisecond when idle; a worker whose loop is stalled this long could not run the cancel in time
# anyway. A client's cancel connection waits at most this for its answer.
ASK_TIMEOUT = 1.0
_MAX_DATAGRAM = 512      # a connection name is short; anything longer is not ours
_MAX_ANSWER = 64
_ASK = struct.Struct("!c8sII")


def socket_path(directory: str, index: int) -> str:
    return os.path.join(directory, f"w{index}.sock")


class CancelPeers:
    """One worker's end: answers its siblings' questions and asks them its own.

    `owns(connection, pid, secret)` is the worker's own check-and-cancel: it returns whether
    the key is one of its sessions (and if so has started the cancel), or for a yes that the
    asker acts on itself, the answer as bytes (at most _MAX_ANSWER)."""

    def __init__(self, directory: str, index: int, workers: int, owns):
        self.directory, self.index, self.workers, self._owns = directory, index, workers, owns
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: dict[bytes, list] = {}     # nonce -> [future, answers still expected]

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        path = socket_path(self.directory, self.index)
        try:
            os.unlink(path)        # a dead predecessor's
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.setblocking(False)
        self._sock = sock
        self._loop.add_reader(sock.fileno(), self._readable)

    def close(self) -> None:
        if self._sock is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        for fut, _ in self._waiting.values():
            if not fut.done():
                fut.set_result(False)
        self._waiting.clear()

    async def ask(self, connection: str, pid: int, secret: int) -> bool | bytes:
        """Whether a sibling issued this key (and has cancelled): False, True, or the
        sibling's answer bytes."""
        if self._sock is None:
            return False
        nonce = os.urandom(8)
        msg = _ASK.pack(b"Q", nonce, pid & 0xFFFFFFFF, secret & 0xFFFFFFFF) + connection.encode()
        fut = self._loop.create_future()
        entry = [fut, 0]
        self._waiting[nonce] = entry
        for i in range(self.workers):
            if i == self.index:
                continue
            try:
                self._sock.sendto(msg, socket_path(self.directory, i))
                entry[1] += 1
            except (FileNotFoundError, ConnectionRefusedError, BlockingIOError):
                pass          # a worker being restarted, or one too busy to read: not its key
            except OSError as e:
                event(log, "cannot ask a sibling worker about a cancel", logging.WARNING,
                      worker=i, error=str(e))
        try:
            if entry[1] == 0:
                return False
            return await asyncio.wait_for(fut, ASK_TIMEOUT)
        except asyncio.TimeoutError:
            return False
        finally:
            self._waiting.pop(nonce, None)

    def _readable(self) -> None:
        while self._sock is not None:
            try:
                data, addr = self._sock.recvfrom(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if data[:1] == b"Q" and len(data) >= _ASK.size:
                _, nonce, pid, secret = _ASK.unpack_from(data)
                try:
                    name = data[_ASK.size:].decode()
                except UnicodeDecodeError:
                    name = None
                mine = self._owns(name, pid, secret) if name is not None else False
                answer = mine if isinstance(mine, bytes) and len(mine) <= _MAX_ANSWER else b""
                if addr:
                    try:
                        self._sock.sendto((b"Y" + nonce + answer) if mine else (b"N" + nonce),
                                          addr)
                    except OSError:
                        pass      # the asker is gone or stalled: it times out
            elif data[:1] in (b"Y", b"N") and 9 <= len(data) <= 9 + _MAX_ANSWER:
                entry = self._waiting.get(data[1:9])
                if entry is None or entry[0].done():
                    continue
                if data[:1] == b"Y":
                    entry[0].set_result(data[9:] or True)
                else:
                    entry[1] -= 1
                    if entry[1] <= 0:
                        entry[0].set_result(False)
