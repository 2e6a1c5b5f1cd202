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

Each chain (the unnamed one, and every named one -- one per writer process start) is walked
like this on its own. A chain that starts after seq 1 is accepted only when a `retention` record
of that chain whose own hash is intact names that first seq and its `prev`; the start can only
be judged after reading the whole chain, because the vouching record comes later.

Across chains, the manifest (chains.jsonl, a hash chain too) must verify, and:

    chain X is not in chains.jsonl          a named chain with records that was never registered
    first record ... does not match its registration   chain.start missing, or another chain's
    chain X is registered but none of its segments exist ...  a chain deleted whole

A chain retention removed whole (a chain.retired record) may be gone; its leftovers are not
checked. Every chain's first problem is kept (VerifyResult.problems); `broken` is the first of
them: the manifest's, then the unnamed chain's, then by chain id.

Everything here is synchronous and needs no event loop (the CLI calls it directly).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TextIO

import orjson

from hoopwire.audit.log import (CHAIN_RETIRED_TYPE, CHAIN_START_TYPE, CHAIN_TYPE, GENESIS,
                                MANIFEST, RETENTION_TYPE, canonical, chain_hash, chain_segments,
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
    first_seq: int | None     # seq of the first and last lines that parsed (one chain only)
    last_seq: int | None
    segments: int
    broken: BrokenRecord | None          # the first problem (the manifest's, then by chain)
    chains: int = 1
    problems: tuple[BrokenRecord, ...] = ()   # the first of every chain that has one
    retained: bool = False    # some chain starts after seq 1 (or is gone) by retention
    named: bool = False       # written by per-process chains (a manifest)

    def describe(self) -> str:
        if self.broken is not None:
            b = self.broken
            seq = f" (seq {b.seq})" if b.seq is not None else ""
            text = f"BROKEN at {b.segment} line {b.line}{seq}: {b.reason}"
            if len(self.problems) > 1:
                text += f" (and {len(self.problems) - 1} more broken chain(s))"
            return text
        segs = f"{self.segments} segment{'' if self.segments == 1 else 's'}"
        if not self.named:
            if not self.records:
                return f"ok: 0 records in {segs}"
            text = f"ok: {self.records} records (seq {self.first_seq}..{self.last_seq}) in {segs}"
        else:
            text = (f"ok: {self.records} records in {self.chains} "
                    f"chain{'' if self.chains == 1 else 's'} ({segs})")
        if self.retained:
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


@dataclass
class _Chain:
    """What one chain's walk found."""
    broken: BrokenRecord | None = None
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    start: tuple[str, int, int, str, dict] | None = None   # first record: where, seq, prev, it
    notes: list[dict] = None        # intact retention records (they vouch for starts)


def _walk(path: str, chain: str | None, segs: list[tuple[int, str]]) -> _Chain:
    """One chain's segments in order: the first record that breaks it, and what the checks
    across chains need."""
    out = _Chain(notes=[])
    head_seq, head_hash = 0, GENESIS                 # the record the next one must follow
    for idx, (name_seq, name) in enumerate(segs):
        first_in_segment = True
        for lineno, raw, complete in _lines(path, name):
            if not complete:
                if out.broken is None:
                    reason = ("truncated final record" if idx == len(segs) - 1
                              else "truncated record (segment does not end with a newline)")
                    out.broken = BrokenRecord(name, lineno, None, reason)
                continue
            out.records += 1
            rec, problem = _check(raw)
            seq = rec.get("seq") if rec is not None else None
            if type(seq) is not int:
                seq = None
            if seq is not None:
                out.first_seq = seq if out.first_seq is None else out.first_seq
                out.last_seq = seq
            if problem is None and rec.get("type") == RETENTION_TYPE:
                out.notes.append(rec)
            was_first_in_segment, first_in_segment = first_in_segment, False
            if out.broken is not None:
                continue                      # keep reading only to collect retention records
            if problem is not None:
                out.broken = BrokenRecord(name, lineno, seq, problem)
                continue
            prev = rec["prev"]
            if out.start is None:
                out.start = (name, lineno, seq, prev, rec)
                if seq == 1 and prev != GENESIS:
                    out.broken = BrokenRecord(name, lineno, seq, _REMOVED)
                    continue
            elif seq < head_seq + 1:
                out.broken = BrokenRecord(name, lineno, seq, _REORDERED)
                continue
            elif seq != head_seq + 1 or prev != head_hash:
                out.broken = BrokenRecord(name, lineno, seq, _REMOVED)
                continue
            if was_first_in_segment and seq != name_seq:
                out.broken = BrokenRecord(name, lineno, seq, "segment file name does not match "
                                                             "its first record (segment renamed?)")
                continue
            head_seq, head_hash = seq, rec["hash"]
    return out


def _manifest(path: str) -> tuple[dict[str, tuple[int, str]], set[str], BrokenRecord | None]:
    """The manifest's registered chains (id -> (line, record hash)), the chains retention
    removed whole, and the manifest's first break. It is a hash chain of its own, checked like
    a segment."""
    chains: dict[str, tuple[int, str]] = {}
    retired: set[str] = set()
    try:
        it = list(_lines(path, MANIFEST))
    except FileNotFoundError:
        return chains, retired, None
    head_seq, head_hash = 0, GENESIS
    for lineno, raw, complete in it:
        if not complete:
            return chains, retired, BrokenRecord(MANIFEST, lineno, None, "truncated final record")
        rec, problem = _check(raw)
        seq = rec.get("seq") if rec is not None and type(rec.get("seq")) is int else None
        if problem is None and (seq != head_seq + 1 or rec["prev"] != head_hash):
            problem = _REORDERED if seq is not None and seq <= head_seq else _REMOVED
        if problem is None:
            kind, chain = rec.get("type"), rec.get("chain")
            if kind == CHAIN_TYPE and isinstance(chain, str) and chain not in chains:
                chains[chain] = (lineno, rec["hash"])
            elif kind == CHAIN_RETIRED_TYPE and isinstance(chain, str):
                # twice when a removal was retried; or an unregistered chain's empty segment
                # (a writer killed at birth): harmless either way
                retired.add(chain)
            else:
                problem = "not a chain registration or retirement (or a chain registered twice)"
        if problem is not None:
            return chains, retired, BrokenRecord(MANIFEST, lineno, seq, problem)
        head_seq, head_hash = seq, rec["hash"]
    return chains, retired, None


def verify(path: str) -> VerifyResult:
    """Check every chain in `path` and the manifest that names them. Raises OSError when the
    directory or a file cannot be read (main_verify turns that into exit code 2)."""
    found = chain_segments(path)
    registered, retired, broken = _manifest(path)
    walks = {c: _walk(path, c, found[c]) for c in sorted(found, key=lambda c: (c is not None,
                                                                              c or ""))}
    # a chain's retention records vouch for its own start: (chain, oldest kept seq, its prev)
    vouched: set[tuple[str | None, int, str]] = set()
    for c, w in walks.items():
        for note in w.notes:
            kept_seq, kept_prev = note.get("oldest_kept_seq"), note.get("oldest_kept_prev")
            if note.get("chain", c) == c and type(kept_seq) is int and isinstance(kept_prev, str):
                vouched.add((c, kept_seq, kept_prev))

    problems: list[BrokenRecord] = [broken] if broken is not None else []
    for c, w in walks.items():
        segs = found[c]
        if c is not None and c not in registered:
            if w.records:
                problems.append(BrokenRecord(segs[0][1], 1, w.first_seq,
                                             f"chain {c} is not in {MANIFEST} (manifest edited?)"))
            continue                          # an empty segment of a writer killed at birth
        if c in retired:
            # retention removed it whole and some segment survived the removal (it is retried)
            continue
        if w.start is not None:
            name, lineno, seq, prev, rec = w.start
            if seq > 1 and (c, seq, prev) not in vouched:
                # The first record precedes any other break, so it is the one to report.
                w.broken = BrokenRecord(name, lineno, seq, _UNEXPLAINED_START)
            elif seq == 1 and c is not None and w.broken is None and (
                    rec.get("type") != CHAIN_START_TYPE or rec.get("chain") != c or
                    rec.get("registration") != registered[c][1]):
                w.broken = BrokenRecord(name, lineno, seq, f"first record of chain {c} does not "
                                                           f"match its registration in {MANIFEST}")
        if w.broken is not None:
            problems.append(w.broken)
    for c, (lineno, _) in registered.items():
        if c not in found and c not in retired:
            problems.append(BrokenRecord(MANIFEST, lineno, None,
                                         f"chain {c} is registered but none of its segments "
                                         "exist and no retention record removed it "
                                         "(segments deleted?)"))
    records = sum(w.records for w in walks.values())    # the manifest's are not counted
    segments = sum(len(v) for v in found.values())
    named = [c for c in walks if c is not None]
    first_seq = last_seq = None
    if len(walks) == 1:
        (w,) = walks.values()
        first_seq, last_seq = w.first_seq, w.last_seq
    return VerifyResult(ok=not problems, records=records, first_seq=first_seq,
                        last_seq=last_seq, segments=segments,
                        broken=problems[0] if problems else None,
                        chains=len(walks), problems=tuple(problems),
                        retained=any(w.first_seq is not None and w.first_seq > 1
                                     for w in walks.values()) or bool(retired),
                        named=bool(named or registered))


def read_records(path: str, *, session_id: str | None = None) -> Iterator[dict]:
    """Every record, chain by chain (the unnamed chain first, then by chain id), each in order
    across its segments (the log's own retention/dropped records too); only those whose
    "session" is `session_id` when it is given -- a session is recorded by one process, so
    all of its records are in one chain and come in their order. A partial last line of a
    chain is a record still being written (or torn by a crash) and is not returned; any other
    line that is not a record raises AuditReadError rather than being skipped."""
    found = chain_segments(path)
    for c in sorted(found, key=lambda c: (c is not None, c or "")):
        segs = found[c]
        for idx, (_, name) in enumerate(segs):
            for lineno, raw, complete in _lines(path, name):
                if not complete:
                    if idx == len(segs) - 1:
                        break
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
