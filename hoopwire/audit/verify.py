"""Offline reading and checking of an audit log directory (see log.py for the format).

verify() walks every segment in order and names the FIRST record that breaks the chain:

    not valid JSON / not a JSON object      the line cannot be a record at all
    missing or malformed seq/prev/hash      a record without its chain fields
    hash mismatch (record edited?)          the record's content no longer matches its hash
    record not in canonical form            same content, different bytes (hand-reformatted)
    seq gap / prev mismatch (record removed?)  does not follow the record before it
    seq out of order (record inserted or reordered?)  repeats an earlier seq
    segment file name does not match ...    a segment renamed or a record moved between files
    truncated final record                  the last line has no newline (a crash mid-write)

A log that starts after seq 1 is accepted only when a `retention` record whose own hash is
intact names that first seq and its `prev`; the start can only be judged after reading the
whole log, because the vouching record comes later.

Everything here is synchronous and needs no event loop (the CLI calls it directly).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TextIO

import orjson

from hoopwire.audit.log import (GENESIS, RETENTION_TYPE, canonical, chain_hash, segment_files,
                                with_hash)

__all__ = ["BrokenRecord", "VerifyResult", "AuditReadError", "verify", "read_records",
           "main_verify"]

_EDITED = "hash mismatch (record edited?)"
_REMOVED = "seq gap / prev mismatch (record removed?)"
_REORDERED = "seq out of order (record inserted or reordered?)"
_UNEXPLAINED_START = ("log does not start at seq 1 and no retention record explains it "
                      "(segments removed?)")


@dataclass(frozen=True)
class BrokenRecord:
    segment: str          # file name
    line: int             # 1-based, within the segment
    seq: int | None       # when the line still says which record it is
    reason: str


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    records: int              # complete lines read (all of them, also past a break)
    first_seq: int | None     # seq of the first and last lines that parsed
    last_seq: int | None
    segments: int
    broken: BrokenRecord | None

    def describe(self) -> str:
        if self.broken is not None:
            b = self.broken
            seq = f" (seq {b.seq})" if b.seq is not None else ""
            return f"BROKEN at {b.segment} line {b.line}{seq}: {b.reason}"
        segs = f"{self.segments} segment{'' if self.segments == 1 else 's'}"
        if not self.records:
            return f"ok: 0 records in {segs}"
        text = f"ok: {self.records} records (seq {self.first_seq}..{self.last_seq}) in {segs}"
        if self.first_seq is not None and self.first_seq > 1:
            text += "; older records removed by retention"
        return text


class AuditReadError(ValueError):
    """read_records() met a line that is not a record (run verify for the whole picture)."""

    def __init__(self, segment: str, line: int, reason: str) -> None:
        super().__init__(f"{segment} line {line}: {reason}")
        self.segment, self.line, self.reason = segment, line, reason


def _lines(path: str, name: str) -> Iterator[tuple[int, bytes, bool]]:
    """(1-based line number, bytes without the newline, whether the newline was there)."""
    with open(os.path.join(path, name), "rb") as f:
        for n, raw in enumerate(f, 1):
            if raw.endswith(b"\n"):
                yield n, raw[:-1], True
            else:
                yield n, raw, False


def _check(raw: bytes) -> tuple[dict | None, str | None]:
    """Parse one line and check it against its own hash: (record or None, problem or None)."""
    try:
        rec = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, "not valid JSON"
    if not isinstance(rec, dict):
        return None, "not a JSON object"
    seq, prev, h = rec.get("seq"), rec.get("prev"), rec.get("hash")
    if type(seq) is not int or not _is_hex64(prev) or not _is_hex64(h):
        return rec, "missing or malformed seq/prev/hash"
    body = canonical({k: v for k, v in rec.items() if k != "hash"})
    if chain_hash(prev, body) != h:
        return rec, _EDITED
    if with_hash(body, h) != raw:
        return rec, "record not in canonical form (record edited?)"
    return rec, None


def _is_hex64(v: object) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def verify(path: str) -> VerifyResult:
    """Check the whole chain in `path`. Raises OSError when the directory or a segment cannot
    be read (main_verify turns that into exit code 2)."""
    segs = segment_files(path)
    broken: BrokenRecord | None = None
    records = 0
    first_seq = last_seq = None
    start: tuple[str, int, int, str] | None = None   # the first record: where, seq, prev
    head_seq, head_hash = 0, GENESIS                 # the record the next one must follow
    vouched: set[tuple[int, str]] = set()            # (oldest_kept_seq, oldest_kept_prev)

    for idx, (name_seq, name) in enumerate(segs):
        first_in_segment = True
        for lineno, raw, complete in _lines(path, name):
            if not complete:
                if broken is None:
                    reason = ("truncated final record" if idx == len(segs) - 1
                              else "truncated record (segment does not end with a newline)")
                    broken = BrokenRecord(name, lineno, None, reason)
                continue
            records += 1
            rec, problem = _check(raw)
            seq = rec.get("seq") if rec is not None else None
            if type(seq) is not int:
                seq = None
            if seq is not None:
                first_seq = seq if first_seq is None else first_seq
                last_seq = seq
            if problem is None and rec.get("type") == RETENTION_TYPE:
                kept_seq, kept_prev = rec.get("oldest_kept_seq"), rec.get("oldest_kept_prev")
                if type(kept_seq) is int and isinstance(kept_prev, str):
                    vouched.add((kept_seq, kept_prev))
            was_first_in_segment, first_in_segment = first_in_segment, False
            if broken is not None:
                continue                      # keep reading only to collect retention records
            if problem is not None:
                broken = BrokenRecord(name, lineno, seq, problem)
                continue
            prev = rec["prev"]
            if start is None:
                start = (name, lineno, seq, prev)
                if seq == 1 and prev != GENESIS:
                    broken = BrokenRecord(name, lineno, seq, _REMOVED)
                    continue
            elif seq < head_seq + 1:
                broken = BrokenRecord(name, lineno, seq, _REORDERED)
                continue
            elif seq != head_seq + 1 or prev != head_hash:
                broken = BrokenRecord(name, lineno, seq, _REMOVED)
                continue
            if was_first_in_segment and seq != name_seq:
                broken = BrokenRecord(name, lineno, seq, "segment file name does not match its "
                                                         "first record (segment renamed?)")
                continue
            head_seq, head_hash = seq, rec["hash"]

    if start is not None:
        name, lineno, seq, prev = start
        if seq > 1 and (seq, prev) not in vouched:
            # The first record precedes any other break, so it is the one to report.
            broken = BrokenRecord(name, lineno, seq, _UNEXPLAINED_START)
    return VerifyResult(ok=broken is None, records=records, first_seq=first_seq,
                        last_seq=last_seq, segments=len(segs), broken=broken)


def read_records(path: str, *, session_id: str | None = None) -> Iterator[dict]:
    """Every record in order across segments (the log's own retention/dropped records too),
    only those whose "session" is `session_id` when it is given. A partial last line is a
    record still being written (or torn by a crash) and is not returned; any other line that
    is not a record raises AuditReadError rather than being skipped."""
    segs = segment_files(path)
    for idx, (_, name) in enumerate(segs):
        for lineno, raw, complete in _lines(path, name):
            if not complete:
                if idx == len(segs) - 1:
                    return
                raise AuditReadError(name, lineno, "truncated record")
            try:
                rec = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise AuditReadError(name, lineno, "not valid JSON") from None
            if not isinstance(rec, dict):
                raise AuditReadError(name, lineno, "not a JSON object")
            if session_id is None or rec.get("session") == session_id:
                yield rec


def main_verify(path: str, out: TextIO | None = None) -> int:
    """Print one line about the log in `path`: exit code 0 ok, 1 broken, 2 unreadable."""
    out = out if out is not None else sys.stdout   # looked up now, so redirected stdout works
    try:
        result = verify(path)
    except OSError as e:
        print(f"cannot read audit log {path}: {e.strerror or e}", file=out)
        return 2
    print(result.describe(), file=out)
    return 0 if result.ok else 1
