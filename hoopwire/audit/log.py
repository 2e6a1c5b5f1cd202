"""The audit log writer: append-only JSON-lines segments joined into one hash chain.

Format. One JSON object per line, encoded canonically (orjson, keys sorted, no spaces, then
`hash` appended as the last key). Every record carries `seq` (consecutive from 1, across
segments and restarts), `ts` (epoch seconds: when the event was appended; for a statement, when
it completed), `gw` (the gateway id), `prev` (the previous record's hash, `GENESIS` for seq 1)
and `hash` = sha256 hex of `prev` followed by the canonical encoding of the record without
`hash`. Editing, removing, inserting or reordering any line therefore breaks the chain at a
precise record (verify.py finds it). Statement records hold their times to the microsecond.

Chains. Every writer process has a chain of its own: the gateway (each `--workers` worker, and a
single process too) starts a new one at every start, named `<gateway id>-<UTC start>-<24 random
bits>` (new_chain_id), so writers sharing a directory never coordinate per record and a
restarted worker never appends after a batch its predecessor may have left half-written. Its
segments are `audit-<chain>-<seq of their first record, 12 digits>.jsonl`; seq starts at 1 in
every chain. An AuditLog built without a chain id writes the directory's one unnamed chain,
`audit-<seq>.jsonl` (the format before per-writer chains; a restart resumes it), and must be the
directory's only writer of it.

So that a chain deleted whole is found, every named chain is registered before its first record
in the manifest, `chains.jsonl`: itself a hash chain (same format), appended under an exclusive
flock, one record per chain ever started (and one per chain retention removed whole). The
chain's first record (`chain.start`) repeats its registration's hash. verify() then knows every
chain that existed; deleting one is found unless its registration is the manifest's last record
and is cut off too -- cutting off the end, which no chain can show. A live writer holds an
flock on `audit-<chain>.lock` for as long as it runs (SIGKILL releases it), which is how others
tell a finished chain from a live one.

A new segment is started when the next record would take the current one past `segment_bytes` (a
record larger than that gets a segment of its own), and at start when the newest is already full.

Write path. `append()` stamps `ts`/`gw` on a shallow copy, encodes it (pending_from: the
canonical body cut where "prev" and "seq" go) and queues it: no I/O and no hashing on the
caller's path. The recorder queues its statement records already encoded (append_encoded). The
flusher task hands batches to a single worker thread, which assigns `seq`/`prev`/`hash` (chain()
in ext/hoopwire/_auditlog.pyx, without the GIL) and writes them with one os.write per batch (unbuffered,
so a batch is "written and flushed" at once); fsync happens only on rotation, retention and
close. Because the
chain is extended only when records actually reach the file, a record that is never written (the
buffer overflowed while the disk was failing) never receives a seq: the chain stays whole and the
loss is recorded by an `audit.dropped` record carrying the count.

Write failures (ENOSPC, EFBIG, EACCES, ...) make the log unhealthy until a later write succeeds.
Lines that made it to the file before the error stay; a torn last line is cut off (ftruncate back
to the last complete record) before anything else is written. Unwritten records stay queued, up to
MAX_PENDING; beyond that the oldest are dropped and counted. `healthy`/`refusing` describe the
last write attempt, so statements started within one flush interval of a failure still run; their
records are held like any other and written on recovery.

Crash recovery. A crash can leave the newest segment ending in a partial line. On start the
partial bytes are moved aside into `<segment>.partial` (appended, one fragment per line) and the
segment is truncated after its last complete record, so the chain resumes from a record that is
whole and the evidence of the crash is kept next to it rather than destroyed. A named writer does
this for every other chain whose writer is gone (its lock is free).

Retention (at start, then at most once a minute by the injected clock) deletes closed segments
from the oldest end only -- those whose newest record is older than `retention_days`, then more
while the total size exceeds `max_bytes` -- so what remains is always a contiguous tail of the
chain. First it writes and fsyncs a `retention` record naming the removed segments and the seq and
`prev` of the first record that stays; verify() accepts a log that starts after seq 1 only when
such a record vouches for that exact start. With named chains `max_bytes` bounds the whole
directory and a live writer also applies retention to the chains of writers that are gone (oldest
first, holding their lock): a chain that loses its oldest segments gets the `retention` record
appended to itself, as its own writer would have done, and one removed whole gets a
`chain.retired` record in the manifest -- so what vouches for a removal lasts as long as what it
explains. The unnamed chain is left alone by named writers.

What the chain cannot show: cutting records off the END, or rewriting and re-hashing everything
after some point. Only a copy of a recent (seq, hash) kept elsewhere can prove those.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import logging
import math
import os
import re
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson

from hoopwire._auditlog import Chained, Pending, PendingBatch, chain

from hoopwire.config import AuditConfig

__all__ = ["AuditLog", "AuditLogError", "GENESIS", "MAX_PENDING", "RETENTION_TYPE", "segment_files",
           "chain_segments", "canonical", "chain_hash", "with_hash", "pending_from", "new_chain_id",
           "MANIFEST", "CHAIN_START_TYPE", "CHAIN_TYPE", "CHAIN_RETIRED_TYPE"]

log = logging.getLogger("hoopwire.audit")

GENESIS = "0" * 64
# audit-<seq>.jsonl: the one unnamed chain of a log written by a single AuditLog without a chain
# id (and by hoopwire before per-writer chains); audit-<chain>-<seq>.jsonl: a named chain.
SEGMENT_RE = re.compile(r"^audit-(?:(?P<chain>[A-Za-z0-9._]+-\d{8}T\d{6}-[0-9a-f]{6})-)?"
                        r"(?P<seq>\d{12,})\.jsonl$")
CHAIN_ID_RE = re.compile(r"^[A-Za-z0-9._]+-\d{8}T\d{6}-[0-9a-f]{6}$")
MANIFEST = "chains.jsonl"     # every named chain, registered when its writer starts (chained too)
CHAIN_TYPE = "chain"          # a manifest record
CHAIN_START_TYPE = "chain.start"   # the first record of every named chain
CHAIN_RETIRED_TYPE = "chain.retired"   # a manifest record: retention removed a chain whole
MAX_PENDING = 100_000        # records held in memory while the disk refuses them
RETENTION_EVERY = 60.0       # seconds (by the log's clock) between retention passes
RETENTION_TYPE = "retention"
DROPPED_TYPE = "audit.dropped"
# Records chained and written per os.write. Bounds the work thrown away when a write fails
# (the next attempt re-chains), so retrying a 100k-record backlog every flush stays cheap.
_CHUNK = 4096
# Records taken from the queue per flush; more waiting wakes the flusher again at once.
_MAX_BATCH = 16384
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC


class AuditLogError(Exception):
    """The log cannot be opened or its chain cannot be resumed (raised by start())."""


# ---- the format, shared with verify.py ----------------------------------------------------------

def segment_name(seq: int, chain: str | None = None) -> str:
    return f"audit-{chain}-{seq:012d}.jsonl" if chain else f"audit-{seq:012d}.jsonl"


def lock_name(chain: str) -> str:
    return f"audit-{chain}.lock"


def new_chain_id(gateway_id: str, now: float | None = None) -> str:
    """A chain id for one start of one writer: its gateway id (host/worker, or
    HOOPWIRE_GATEWAY_ID/worker) made safe for a file name, the start time (UTC) and 24 random
    bits, so two starts never share a chain, not even in the same second."""
    slot = re.sub(r"[^A-Za-z0-9._]", "_", gateway_id.replace("/", "."))[:64] or "gw"
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(time.time() if now is None else now))
    return f"{slot}-{stamp}-{os.urandom(3).hex()}"


def chain_segments(path: str) -> dict[str | None, list[tuple[int, str]]]:
    """Every chain's segments in `path`: chain id (None: the unnamed chain) -> (first seq from
    the name, file name), oldest first. Raises OSError when the directory cannot be listed."""
    found: dict[str | None, list[tuple[int, str]]] = {}
    for name in os.listdir(path):
        m = SEGMENT_RE.match(name)
        if m:
            found.setdefault(m.group("chain"), []).append((int(m.group("seq")), name))
    for segs in found.values():
        segs.sort()
    return found


def segment_files(path: str, chain: str | None = ...) -> list[tuple[int, str]]:
    """(first seq from the name, file name) of the segments in `path` -- of one chain when
    `chain` is given (None: the unnamed one), else of all, chain by chain (the unnamed first,
    then by id), each oldest first. Raises OSError when the directory cannot be listed."""
    found = chain_segments(path)
    if chain is not ...:
        return found.get(chain, [])
    return [s for c in sorted(found, key=lambda c: (c is not None, c or "")) for s in found[c]]


def canonical(record: dict) -> bytes:
    """The one encoding that is hashed and written. verify.py relies on orjson giving back the
    same bytes for a line it has just parsed."""
    try:
        return orjson.dumps(record, default=str, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        # Non-string keys, integers beyond 64 bits, lone surrogates: written as text rather
        # than losing the record or wedging the queue behind it.
        return orjson.dumps(_plain(record), default=str, option=orjson.OPT_SORT_KEYS)


def chain_hash(prev: str, body: bytes) -> str:
    return hashlib.sha256(prev.encode("ascii") + body).hexdigest()


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {_plain_str(str(k)): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, str):
        return _plain_str(v)
    if isinstance(v, bool) or v is None or isinstance(v, float):
        return v
    if isinstance(v, int):
        return v if -(2**63) <= v < 2**64 else str(v)
    return _plain_str(str(v))


def _plain_str(s: str) -> str:
    return s.encode("utf-8", "replace").decode("utf-8")


def with_hash(body: bytes, h: str) -> bytes:
    """The line of a record: its canonical body with `hash` appended as the last key (so the
    body is encoded once, and hashed exactly as written)."""
    return body[:-1] + b',"hash":"' + h.encode("ascii") + b'"}'


def pending_from(rec: dict) -> Pending:
    """A record ready for the chain: its canonical encoding without "prev"/"seq"/"hash", cut
    where those two sort in (the statement records of the data path skip this: the recorder
    writes them directly, see ext/hoopwire/_auditlog.pyx)."""
    head, mid, tail = {}, {}, {}
    for k, v in rec.items():
        k = k if isinstance(k, str) else str(k)
        if k == "prev" or k == "seq" or k == "hash":
            continue
        (head if k < "prev" else mid if k < "seq" else tail)[k] = v
    h = canonical(head)[:-1] + b"," if head else b"{"
    m = canonical(mid)[1:-1] + b"," if mid else b""
    t = b"," + canonical(tail)[1:] if tail else b"}"
    ts = rec.get("ts")
    return Pending(h + m + t, len(h), len(h) + len(m),
                   float(ts) if isinstance(ts, (int, float)) and not isinstance(ts, bool)
                   else math.nan)


# ---- the files (worker thread only) -------------------------------------------------------------

@dataclass
class _Segment:
    name: str
    size: int
    first_seq: int | None = None     # of its first record (or the next one, while empty)
    first_prev: str | None = None
    last_ts: float | None = None     # of its newest record: what retention_days looks at


class _Writer:
    """Owns the segment files and the chain head. Called only from the audit thread, one call at
    a time, so it needs no locks."""

    def __init__(self, cfg: AuditConfig, gateway_id: str, chain: str | None = None) -> None:
        self.cfg = cfg
        self.dir = cfg.path
        self.gw = gateway_id
        self.chain = chain                # None: the unnamed chain (resumed across restarts)
        self.segments: list[_Segment] = []
        self.fd: int | None = None        # the current (newest) segment, O_APPEND
        self.seq = 0                      # the chain head: last record on disk
        self.prev = GENESIS
        self.torn = False                 # a failed write may have left part of a line
        self.lock_fd: int | None = None   # a named chain's lock, held while this process lives
        self.registered: str | None = None   # hash of its manifest record, once written

    def _path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    # -- start

    def open(self) -> None:
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        if self.chain is not None:
            self._open_chain()
            return
        segs = []
        for _, name in segment_files(self.dir, None):
            segs.append(_Segment(name, os.stat(self._path(name)).st_size))
        if segs:
            self._set_aside_partial(segs[-1])
        head = None
        for seg in reversed(segs):
            last = self._scan(seg)
            if head is None and last is not None:
                head = (seg, last)
        if head is not None:
            seg, last = head
            seq, h = last.get("seq"), last.get("hash")
            if type(seq) is not int or not _is_hex64(h):
                raise AuditLogError(f"cannot resume the audit chain: the last record of {seg.name}"
                                    " has no valid seq/hash (verify the log)")
            self.seq, self.prev = seq, h
        if segs and segs[-1].size == 0:
            newest = segs[-1]
            if newest.name != segment_name(self.seq + 1):
                # An empty file named for some other seq would make the next record look renamed.
                os.unlink(self._path(newest.name))
                segs.pop()
            else:
                newest.first_seq, newest.first_prev = self.seq + 1, self.prev
        self.segments = segs

    def _open_chain(self) -> None:
        """A named chain is new at every start: no segment of it exists yet. Its lock file tells
        other writers it is alive (a flock dies with the process, SIGKILL included); chains whose
        lock is free belong to processes that are gone, and a torn last line of theirs is set
        aside here as a restart of the unnamed chain does for its own."""
        fd = os.open(self._path(lock_name(self.chain)), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
        try:
            # Blocking: no other writer looks at a chain before it has a segment, so this waits
            # for nobody; it is never shared.
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self.lock_fd = fd
        for cid in sorted(c for c in chain_segments(self.dir) if c not in (None, self.chain)):
            lock = self._dead_lock(cid)
            if lock is None:
                continue
            try:
                segs = chain_segments(self.dir).get(cid)
                if segs:
                    name = segs[-1][1]
                    self._set_aside_partial(_Segment(name, os.stat(self._path(name)).st_size))
            except OSError as e:
                log.warning("audit log: cannot check the last segment of chain %s (%s)", cid,
                            e.strerror or e)
            finally:
                os.close(lock)

    def _dead_lock(self, chain: str) -> int | None:
        """The lock of another chain, held (an fd to close) when its writer is gone; None while
        it is alive. Taken only for chains that have segments (see _open_chain)."""
        try:
            fd = os.open(self._path(lock_name(chain)), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                         0o600)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        return fd

    def _register(self, now: float) -> str:
        """Append this chain to the manifest and return that record's hash, which the chain's
        first record repeats. A chain whose segments are all deleted is then still known to
        have existed."""
        return self._manifest_append({"type": CHAIN_TYPE, "chain": self.chain, "gw": self.gw,
                                      "pid": os.getpid(), "ts": now})

    def _manifest_append(self, rec: dict) -> str:
        """One record onto the manifest: itself a hash chain, with a record per chain ever
        started and per chain retention removed whole, written under an exclusive flock
        (writers start concurrently) and fsynced before the caller goes on."""
        fd = os.open(self._path(MANIFEST), os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                     0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            data = os.pread(fd, size, 0) if size else b""
            keep = data.rfind(b"\n") + 1
            if keep < size:
                # a record torn by a crash: kept aside, as a segment's torn line is
                aside = os.open(self._path(MANIFEST + ".partial"),
                                os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
                try:
                    _write_all(aside, data[keep:] + b"\n")
                    os.fsync(aside)
                finally:
                    os.close(aside)
                os.ftruncate(fd, keep)
            seq, prev = 0, GENESIS
            if keep:
                last = _parse(data[data.rfind(b"\n", 0, keep - 1) + 1:keep - 1])
                if last is None or type(last.get("seq")) is not int or \
                        not _is_hex64(last.get("hash")):
                    raise AuditLogError(f"cannot extend {MANIFEST}: its last record has no "
                                        "valid seq/hash (verify the log)")
                seq, prev = last["seq"], last["hash"]
            lines = chain([pending_from(rec)], seq, prev)
            try:
                _write_all(fd, lines.data)
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, keep)
                raise
            return lines.hash(0)
        finally:
            os.close(fd)            # and with it the flock

    def _set_aside_partial(self, seg: _Segment) -> None:
        if seg.size == 0:
            return
        path = self._path(seg.name)
        with open(path, "rb") as f:
            f.seek(seg.size - 1)
            if f.read(1) == b"\n":
                return
            keep = _last_newline(f, seg.size) + 1
            f.seek(keep)
            tail = f.read()
        aside = path + ".partial"
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, tail + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, keep)
            os.fsync(fd)
        finally:
            os.close(fd)
        seg.size = keep
        log.warning("audit segment %s ended in a partial record (%d bytes, likely a crash); "
                    "moved it to %s", seg.name, len(tail), os.path.basename(aside))

    def _scan(self, seg: _Segment) -> dict | None:
        """Fill in what retention needs from the segment's first and last lines; return the last
        record (None when the segment is empty)."""
        if seg.size == 0:
            return None
        with open(self._path(seg.name), "rb") as f:
            first = _parse(f.readline())
            last = _parse(_last_line(f, seg.size))
        if first is not None:
            seg.first_seq = first.get("seq")
            seg.first_prev = first.get("prev")
        if last is not None and isinstance(last.get("ts"), (int, float)):
            seg.last_ts = float(last["ts"])
        return last if last is not None else {}

    # -- writing

    def flush(self, batch: list[Pending | PendingBatch], dropped: int, now: float,
              retain: bool) -> tuple[int, bool, BaseException | None]:
        """Write a `dropped` note (when > 0), then the batch, then run retention. Returns how many
        batch records were written, whether the note was, and the error that stopped it."""
        written, noted = 0, False
        try:
            self._ensure_current(now)
            if self.chain is not None and self.seq == 0:
                # a named chain opens with a record naming it and its manifest record
                self._append([pending_from({"type": CHAIN_START_TYPE, "chain": self.chain,
                                            "registration": self.registered, "pid": os.getpid(),
                                            "ts": now, "gw": self.gw})])
            if dropped:
                self._append([pending_from({"type": DROPPED_TYPE, "count": dropped, "ts": now,
                                            "gw": self.gw})])
                noted = True
            for chunk in _chunks(batch, _CHUNK):
                before = self.seq
                try:
                    self._append(chunk)
                finally:
                    written += self.seq - before
            if retain:
                self._retain(now)
        except Exception as e:  # the caller keeps what was not written; nothing is lost here
            return written, noted, e
        return written, noted, None

    def _ensure_current(self, now: float) -> None:
        if self.fd is None:
            if self.segments and self.segments[-1].size < self.cfg.segment_bytes:
                self.fd = os.open(self._path(self.segments[-1].name), _OPEN_FLAGS)
            else:
                self._rotate(self.seq + 1, self.prev)
        if self.chain is not None and self.registered is None:
            # After the first segment exists: a crash between the two leaves an empty segment
            # of an unregistered chain (nothing lost), never a registered chain without files.
            self.registered = self._register(now)

    def _rotate(self, seq: int, prev: str) -> None:
        name = segment_name(seq, self.chain)
        fd = os.open(self._path(name), _OPEN_FLAGS | os.O_CREAT, 0o600)
        if self.fd is not None:
            try:
                os.fsync(self.fd)
            except OSError:
                os.close(fd)
                raise
            os.close(self.fd)
        self.fd = fd
        self.torn = False
        self.segments.append(_Segment(name, 0, seq, prev))
        _fsync_dir(self.dir)

    def _append(self, records: list[Pending | PendingBatch]) -> None:
        """Chain and write records; on OSError the chain head covers exactly the complete lines
        that reached the file."""
        assert self.fd is not None
        if self.torn:
            os.ftruncate(self.fd, self.segments[-1].size)
            self.torn = False
        lines = chain(records, self.seq, self.prev)     # releases the GIL while it hashes
        view = memoryview(lines.data)
        limit = self.cfg.segment_bytes
        i, n = 0, len(lines)
        while i < n:
            cur = self.segments[-1]
            if cur.size > 0 and cur.size + lines.start(i + 1) - lines.start(i) > limit:
                self._rotate(lines.seq(i), lines.prev(i))
                cur = self.segments[-1]
            j = lines.fit(i, limit - cur.size)
            base, data = lines.start(i), view[lines.start(i):lines.start(j)]
            done = 0
            try:
                while done < len(data):
                    done += os.write(self.fd, data[done:])
            finally:
                k = lines.complete(i, done)
                if k > i:
                    self._commit(cur, lines, i, k)
                if done > lines.start(k) - base:
                    self._cut_torn(cur)
            i = j

    def _commit(self, seg: _Segment, lines: Chained, i: int, k: int) -> None:
        """Lines i..k-1 of a chained batch are in the file."""
        seg.size += lines.start(k) - lines.start(i)
        if seg.first_seq is None:
            seg.first_seq, seg.first_prev = lines.seq(i), lines.prev(i)
        ts = lines.last_ts(i, k)
        if ts is not None:
            seg.last_ts = ts
        self.seq, self.prev = lines.seq(k - 1), lines.hash(k - 1)

    def _cut_torn(self, seg: _Segment) -> None:
        # Part of a line reached the file. Cut it now if we can; otherwise before the next write,
        # so a record never follows half of another.
        self.torn = True
        try:
            os.ftruncate(self.fd, seg.size)
            self.torn = False
        except OSError:
            pass

    # -- retention

    def _retain(self, now: float) -> None:
        days, cap = self.cfg.retention_days, self.cfg.max_bytes
        cutoff = now - days * 86400.0 if days is not None else None
        total = sum(s.size for s in self.segments)
        if self.chain is not None:
            # max_bytes bounds the whole directory: the chains of writers that are gone go
            # first (oldest segments first within each), then this chain's own
            try:
                total = self._retain_dead(now, cutoff, cap, total)
            except (OSError, AuditLogError) as e:
                # other writers' leftovers: a problem there is not this log failing to write
                log.warning("audit retention: cannot retire finished chains (%s); retrying "
                            "later", getattr(e, "strerror", None) or e)
        remove = _prefix(self.segments[:-1], cutoff, cap, total)   # never the current segment
        if not remove:
            return
        kept = self.segments[len(remove)]
        note = {"type": RETENTION_TYPE, "removed": [s.name for s in remove],
                "oldest_kept_seq": kept.first_seq, "oldest_kept_prev": kept.first_prev,
                "ts": now, "gw": self.gw}
        if self.chain is not None:
            note["chain"] = self.chain
        self._append([pending_from(note)])
        # The note must be durable before the segments it explains disappear.
        os.fsync(self.fd)
        for seg in self._unlink(remove):
            self.segments.remove(seg)
        _fsync_dir(self.dir)

    def _unlink(self, segs: list) -> list:
        """Remove these segment files, oldest first, up to the first that cannot go (the next
        pass retries it): the ones removed."""
        gone = []
        for seg in segs:
            try:
                os.unlink(self._path(seg.name))
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("audit retention: cannot remove %s (%s); retrying later",
                            seg.name, e.strerror or e)
                break
            gone.append(seg)
        return gone

    def _retain_dead(self, now: float, cutoff: float | None, cap: int | None, own: int) -> int:
        """Retention over the named chains whose writers are gone (their lock is free; held
        while we work on one, so two live writers never retire the same chain at once). What
        vouches for a removal stays as long as what it explains: a chain that loses its oldest
        segments gets its retention record appended to ITSELF (as its own writer would have
        done), and one removed whole gets a `chain.retired` record in the manifest. Returns the
        bytes left in the directory's named chains."""
        sizes: dict[str, list[_Segment]] = {}
        total = own
        for cid, segs in chain_segments(self.dir).items():
            if cid is None or cid == self.chain:
                continue
            sizes[cid] = []
            for _, name in segs:
                try:
                    seg = _Segment(name, os.stat(self._path(name)).st_size)
                except FileNotFoundError:
                    continue
                sizes[cid].append(seg)
                total += seg.size
        order = []
        try:
            for cid, segs in sizes.items():
                lock = self._dead_lock(cid) if segs else None
                if lock is None:
                    continue
                order.append([0.0, cid, segs, lock, None])
                self._set_aside_partial(segs[-1])
                for seg in segs:
                    last = self._scan(seg)
                    if last:
                        order[-1][4] = (seg, last)       # the chain's head: its newest record
                order[-1][0] = segs[-1].last_ts or 0.0
            # the chain that went quiet first goes first
            order.sort(key=lambda o: (o[0], o[1]))
            for _, cid, segs, _lock, head in order:
                remove = _prefix(segs, cutoff, cap, total)
                if not remove:
                    continue
                whole = len(remove) == len(segs)
                if whole:
                    self._manifest_append({"type": CHAIN_RETIRED_TYPE, "chain": cid,
                                           "removed": [s.name for s in remove], "ts": now,
                                           "gw": self.gw})
                else:
                    if head is None or head[0] in remove:
                        continue        # nothing of it left to carry the note
                    self._note_into(cid, segs[-1], head[1], {
                        "type": RETENTION_TYPE, "chain": cid,
                        "removed": [s.name for s in remove],
                        "oldest_kept_seq": segs[len(remove)].first_seq,
                        "oldest_kept_prev": segs[len(remove)].first_prev,
                        "ts": now, "gw": self.gw})
                gone = self._unlink(remove)
                total -= sum(seg.size for seg in gone)
                whole = whole and len(gone) == len(remove)
                if whole:
                    try:
                        os.unlink(self._path(lock_name(cid)))
                    except OSError:
                        pass
            if order:
                _fsync_dir(self.dir)
        finally:
            for o in order:
                os.close(o[3])
        return total

    def _note_into(self, cid: str, newest: _Segment, head: dict, note: dict) -> None:
        """Append a record to another (finished) chain after its newest record `head`."""
        seq, prev = head.get("seq"), head.get("hash")
        if type(seq) is not int or not _is_hex64(prev):
            raise AuditLogError(f"cannot extend chain {cid}: its last record has no valid "
                                "seq/hash (verify the log)")
        lines = chain([pending_from(note)], seq, prev)
        fd = os.open(self._path(newest.name), _OPEN_FLAGS)
        try:
            try:
                _write_all(fd, lines.data)
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, newest.size)
                raise
        finally:
            os.close(fd)
        newest.size += len(lines.data)

    def close(self) -> None:
        if self.lock_fd is not None and self.fd is None:
            os.close(self.lock_fd)
            self.lock_fd = None
        if self.fd is None:
            return
        try:
            if self.torn:
                os.ftruncate(self.fd, self.segments[-1].size)
            os.fsync(self.fd)
        except OSError as e:
            log.warning("audit log: final fsync failed (%s)", e.strerror or e)
        finally:
            os.close(self.fd)
            self.fd = None
            if self.lock_fd is not None:
                os.close(self.lock_fd)      # the chain is finished: others may retire it
                self.lock_fd = None


def _prefix(segs: list[_Segment], cutoff: float | None, cap: int | None,
            total: int) -> list[_Segment]:
    """The oldest segments to remove: those whose newest record is older than `cutoff`, then
    more while `total` exceeds `cap` -- only ever a prefix, so the rest stays one chain."""
    remove = []
    for seg in segs:
        expired = cutoff is not None and seg.last_ts is not None and seg.last_ts < cutoff
        if not (expired or (cap is not None and total > cap)):
            break
        remove.append(seg)
        total -= seg.size
    return remove


def _size(item: Pending | PendingBatch) -> int:
    return 1 if type(item) is Pending else len(item)


def _chunks(items: list, records: int):
    """Runs of items of about `records` records each (a batch is never split here)."""
    run, n = [], 0
    for item in items:
        run.append(item)
        n += _size(item)
        if n >= records:
            yield run
            run, n = [], 0
    if run:
        yield run


def _skip(items: list, k: int) -> list:
    """items without their first k records (a batch cut where k falls inside it)."""
    out = []
    for item in items:
        size = _size(item)
        if k >= size:
            k -= size
            continue
        out.append(item.tail(k) if k else item)
        k = 0
    return out


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fsync_dir(path: str) -> None:
    # Makes new and removed segment names durable. Best effort: some filesystems refuse to
    # fsync a directory, and the records themselves are already safe.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _last_newline(f, size: int) -> int:
    """Offset of the last b"\\n" in the file, -1 when there is none."""
    pos, block = size, 65536
    while pos > 0:
        step = min(block, pos)
        pos -= step
        f.seek(pos)
        k = f.read(step).rfind(b"\n")
        if k != -1:
            return pos + k
    return -1


def _last_line(f, size: int) -> bytes:
    """The last complete line (the file is known to end with a newline)."""
    end = size - 1
    start = _last_newline(f, end) + 1
    f.seek(start)
    return f.read(end - start)


def _parse(raw: bytes) -> dict | None:
    try:
        rec = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return rec if isinstance(rec, dict) else None


def _is_hex64(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


# ---- the event-loop side ------------------------------------------------------------------------

class AuditLog:
    """The gateway's audit log. `append()` from the event loop; `start()`/`close()` around use."""

    def __init__(self, cfg: AuditConfig, *, gateway_id: str,
                 clock: Callable[[], float] = time.time, chain: str | None = None) -> None:
        """`chain`: this writer's own chain (new_chain_id(); one per process start, so any
        number of processes can share the directory), or None for the directory's one unnamed
        chain, which a restart resumes (one writer at a time)."""
        if chain is not None and not CHAIN_ID_RE.match(chain):
            raise ValueError(f"not a chain id: {chain!r}")
        self._cfg = cfg
        self._gw = gateway_id
        self._clock = clock
        self.chain = chain
        self._writer = _Writer(cfg, gateway_id, chain)
        self._pending: deque[Pending | PendingBatch] = deque()
        self._npending = 0                # records in _pending (a batch holds many)
        self._unreported_drops = 0        # dropped records not yet noted in the log itself
        self._healthy = True
        self._drop_warned = False
        self._last_retention: float | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._closing = False
        self._closed = False
        self.dropped = 0
        self.written = 0

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def refusing(self) -> bool:
        return not self._healthy and self._cfg.on_write_failure == "fail-closed"

    @property
    def pending(self) -> int:
        """Records appended but not yet on disk."""
        return self._npending

    async def start(self) -> None:
        if self._task is not None:
            return
        self._closing = self._closed = False
        loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hoopwire-audit")
        self._wake = asyncio.Event()
        try:
            await loop.run_in_executor(self._executor, self._writer.open)
        except OSError as e:
            self._executor.shutdown(wait=False)
            raise AuditLogError(f"cannot open the audit log in {self._cfg.path}: "
                                f"{e.strerror or e}") from e
        except BaseException:
            self._executor.shutdown(wait=False)
            raise
        # Opens or starts the current segment, runs retention, writes anything appended so far.
        # A failure here is an ordinary write failure: the log starts unhealthy and keeps trying.
        await self._flush_once()
        self._task = asyncio.create_task(self._run(), name="hoopwire-audit-flusher")

    def append(self, record: dict) -> None:
        if self._closed:
            self.dropped += 1
            if not self._drop_warned:
                self._drop_warned = True
                log.warning("audit log: record appended after close() was dropped")
            return
        rec = dict(record)
        rec["ts"] = float(self._clock())
        rec["gw"] = self._gw
        self._queue([pending_from(rec)])

    def append_encoded(self, records: list[Pending | PendingBatch]) -> None:
        """Records already encoded (with their own ts and gw): the recorder's statements."""
        if self._closed:
            self.dropped += sum(_size(r) for r in records)
            if not self._drop_warned:
                self._drop_warned = True
                log.warning("audit log: records appended after close() were dropped")
            return
        self._queue(records)

    def flush_soon(self) -> None:
        """Wake the flusher now instead of at its next interval: the recorder calls this after
        queueing a drain, so statements wait for one interval, not for two timers in turn."""
        if self._wake is not None and (self._pending or self._unreported_drops):
            self._wake.set()

    def _queue(self, records: list[Pending | PendingBatch]) -> None:
        for r in records:
            self._pending.append(r)
            self._npending += _size(r)
        if self._npending > MAX_PENDING:
            self._trim()
        if self._npending >= _MAX_BATCH and self._wake is not None:
            self._wake.set()

    async def close(self) -> None:
        if self._task is None:
            return
        self._closing = True
        self._wake.set()
        await self._task
        self._task = None
        while self._pending or self._unreported_drops:
            if not await self._flush_once():
                break
        if self._pending:
            lost = self._npending
            log.warning("audit log: closing with %d records that could not be written", lost)
            self.dropped += lost
            self._pending.clear()
            self._npending = 0
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._writer.close)
        self._executor.shutdown(wait=True)
        self._closed = True

    async def _run(self) -> None:
        while not self._closing:
            try:
                await asyncio.wait_for(self._wake.wait(), self._cfg.flush_interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            if self._closing:
                break
            try:
                await self._flush_once()
            except Exception:  # a bug must not silently stop all auditing
                log.exception("audit log: flusher error")

    def _retention_due(self, now: float) -> bool:
        if self._cfg.retention_days is None and self._cfg.max_bytes is None:
            return False
        last = self._last_retention
        # A clock that stepped backwards must not postpone retention until it catches up.
        return last is None or now - last >= RETENTION_EVERY or now < last

    async def _flush_once(self) -> bool:
        """One batch to the worker thread. True when everything attempted was written."""
        now = self._clock()
        retain = self._retention_due(now)
        if not self._pending and not self._unreported_drops and not retain \
                and self._writer.fd is not None and (self.chain is None or self._writer.seq):
            return True
        if retain:
            self._last_retention = now
        batch, n = [], 0
        while self._pending and n < _MAX_BATCH:
            item = self._pending.popleft()
            batch.append(item)
            n += _size(item)
        self._npending -= n
        dropped, self._unreported_drops = self._unreported_drops, 0
        loop = asyncio.get_running_loop()
        # Never cancelled (close() waits for the flusher instead), so the batch cannot be lost
        # between the thread writing it and this side learning what was written.
        written, noted, err = await loop.run_in_executor(
            self._executor, self._writer.flush, batch, dropped, now, retain)
        self.written += written
        if not noted:
            self._unreported_drops += dropped
        if err is None:
            if not self._healthy:
                self._healthy = True
                self._drop_warned = False
                log.warning("audit log: writable again; %d records waiting", self._npending)
            if self._npending >= _MAX_BATCH:
                self._wake.set()
            return True
        rest = _skip(batch, written)
        self._pending.extendleft(reversed(rest))
        # counted again as they are now: a batch's raw statements the audit thread could not
        # write at all were left out of it when it was encoded (and counted as lost)
        self._npending += sum(_size(r) for r in rest)
        if self._npending > MAX_PENDING:
            self._trim()
        if self._healthy:
            self._healthy = False
            code = errno.errorcode.get(getattr(err, "errno", None) or 0, type(err).__name__)
            action = ("refusing new statements" if self._cfg.on_write_failure == "fail-closed"
                      else "statements continue (fail-open)")
            why = getattr(err, "strerror", None) or str(err) or type(err).__name__
            log.warning("audit log: write failed (%s: %s); %d records held in memory, retrying; "
                        "%s", code, why,
                        self._npending, action)
        return False

    def _trim(self) -> None:
        excess = self._npending - MAX_PENDING
        left = excess
        while left > 0:
            item = self._pending.popleft()
            size = _size(item)
            if size > left:
                self._pending.appendleft(item.tail(left))
                size = left
            left -= size
        self._npending -= excess
        self.dropped += excess
        self._unreported_drops += excess
        if not self._drop_warned:
            self._drop_warned = True
            log.warning("audit log: %d records held in memory; dropping the oldest",
                        MAX_PENDING)
