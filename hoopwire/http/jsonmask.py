"""Masking of HTTP response bodies: JSON by key path and detector, text and SSE streams.

    m = JsonMasker(conn.masks, engine, max_bytes=conn.mask_body_bytes, timeout=conn.mask_timeout)
    m.active, m.has_paths                 # any rule at all; any JSON key-path rule
    m.wants(b"application/json")          # "json" | "sniff" | "text" | "sse" | "pass"
    m.mask_json(body, m.deadline())       # (bytes, counts) | None; MaskTimeout past the deadline
    m.mask_json(body, d, offloaded=True)  # the same, in the relay's masking thread
    s = m.text_stream(); s.feed(chunk) -> bytes; s.end() -> bytes; s.take_counts()
    s = m.sse_stream();  s.feed(chunk) -> bytes; s.end() -> bytes; s.take_counts()

counts have the shape of RowPlan.take_counts: {"EMAIL": 2, "path:mask[0]": 5} (detector name,
or "path:" + the rule's label); counts, never values.

What the relay must do
----------------------
* mask_json returns None when the body cannot be masked as JSON: not JSON (RFC 8259, UTF-8, no
  BOM, no NaN), over max_bytes, nested deeper than MAX_DEPTH where it must be walked, or an
  integer that Python refuses (over 4300 digits).
  Then: when `has_paths`, answer 502 "response could not be masked" and forward nothing of the
  body (a value at a masked path may be in it); otherwise run the body through text_stream().
* A body over max_bytes, or a JSON body that is not complete within it: the same rule (paths:
  502; detectors only: text_stream()). Never forward a JSON body unmasked while rules apply.
* Content-Encoding other than identity: the masker reads plain bytes only. While `active`, ask
  the upstream for `Accept-Encoding: identity` and treat an encoded response of a type that
  wants() masks as one that could not be masked (502).
* wants() "sniff" (key paths, and a type a JSON body can hide under: text, JavaScript,
  octet-stream, a comma-list, none): gather; sniff(first bytes) says "json"/"jsonp" (then
  mask_sniffed, the same rules as mask_json: None or over max_bytes is 502) or "text" (then
  sniffed_text(): the detectors, or the body as it came).
* Unchanged bodies come back as the same object: the relay may then keep Content-Length.
* Stream counts: call take_counts() when the response ends.
* A stream's next feed costs about its backlog() plus the new bytes: over the relay's
  OFFLOAD_BYTES it feeds in the masking thread, the stream's `offloaded` set (the thread's
  Scanner) and its `deadline` set (SseStream: the JSON of an event is masked by it; MaskTimeout
  past it); one feed at a time, in order.
* MaskTimeout: the deadline passed (checked before the parse and every 256 containers of the
  walk): answer 504, nothing of the body. A body the relay masks in its masking thread is
  masked with offloaded=True (one thread: its Scanner is compiled there, once per masker).
* Building a JsonMasker compiles no Hyperscan database (it runs on the event loop at start and
  reload): detectors scan with the engine's Scanner, compiled with the engine in a thread.

Key paths (the `paths` of a [[connection.mask]])
------------------------------------------------
    $                     the whole document
    $.a.b                 member b of member a
    $["odd.key"] $['x']   a member whose name holds dots, brackets or quotes (\\" \\' \\\\ escape)
    $.users[*].email      [*] or .*: every element / every member
    $.items[0].card       [N]: the element at index N (from 0)
    $..password           `..`: at any depth below (zero or more levels); `$.a..b` too
    **.password           the same as $..password; `.**` is a step of its own
Member names match ignoring case (str.casefold: `Email` and `EMAIL` are the same key; over-
masking is the safe error), as they are after JSON decoding (`"e\\u006dail"` is `email`).
A name step looks through arrays: `$.users.email` is `$.users[*].email` (a path written for
one object still masks when the API answers with a list of them; nested arrays too).
Paths compile once per masker into one automaton whose states are cached sets of (rule, step):
each JSON node costs one dict lookup, whatever the number of paths, so masking is linear in
the document.

A value at a matched path is masked whole by the first matching rule's strategy:
* string: the strategy on its UTF-8 characters (`partial` keeps the last `keep` characters,
  \\uXXXX escapes and surrogate pairs decoded first: one emoji is one character); `null`: null.
* number: never keeps its value. `format` gives a number of the same shape (digits stay
  digits: a client parsing it still gets a number); `null` gives null; the others give the
  masked text as a string ("****", "************1111", "h:…"): a string where a number was is
  visibly masked, where a 0 would be read as data.
* true/false: "****" (null under `null`): two values cannot be masked by a deterministic
  rewrite without the rewrite telling which one it was.
* null stays null. Objects and arrays: every leaf below is masked; member names stay (they are
  the structure) but go through the detectors like every name.
Duplicate member names: the last one wins, as in the parsers clients use (orjson, the stdlib,
JavaScript); the document re-serialised holds it once, masked, also when nothing in it was
(`{"email": "a@b.c", "email": null}` is written again as `{"email":null}`: _dropped_members).

Detectors
---------
Every string value not masked by a path, every member name, and every integer of 13 digits or
more (card numbers sent as numbers) goes through the connection's detectors, in place, with the
strategy of the rule that lists the detector (MaskEngine.mask_text semantics). A value is scanned
with its member name in front (`client_secret:\\n<value>`) so the context-anchored detectors
(GENERIC_API_KEY, AWS_SECRET) see `{"client_secret": "…"}` as they see `client_secret=…` in text;
only the value's part of a hit is rewritten. A masked member name that collides with another
name of its object gets a `~2`, `~3`… suffix (dropping either would lose data).

All the strings of a document are scanned in ONE Hyperscan call (joined with "\\n\\0\\n", which
no built-in pattern crosses: `.` stops at the newline, `\\s` at the NUL) of the database without
start-of-match, which says which strings a match ends in; only those are scanned again, each
alone, for their spans (start-of-match, validators). A scan call costs more than the few bytes
of a value (0.3 µs before any data; STYLE.md), and a start-of-match scan several times more
per byte than one without, so this is what keeps a 64 KiB document cheap.

The walk is C (ext/hoopwire/http/_jsonwalk.pyx); _Job below is its Python reference, kept
for the tests, which mask a generated corpus both ways (JsonMasker(..., reference=True)).

Re-serialising: orjson, compact, key order kept. Unchanged documents are returned as received,
so numbers keep their text unless something was masked. orjson 3.8 reads an integer over 64 bits
as a float (losing digits) and refuses one over a double: a document that must be written again
and holds a run of 20+ digits is read and written by the stdlib json instead (exact integers,
bounded by max_bytes and MAX_DEPTH). Newline-delimited JSON (one document a line, the
application/x-ndjson family) is masked line by line.

Cost (bench/wrk_compare.py's documents and hoopwire-masked rules, CPU time, best of 3, on
2 cores at load average 8-9, so upper bounds; bench/README.md): key paths 10-15 µs/KiB (the
Python walk: 25-36), detectors alone with a hit in every record 34-42 µs/KiB (67-69), both
18-19 µs/KiB at 64 KiB (43-46) and 25 µs for the 1 KiB document (61). orjson's parse is
~4-7 µs/KiB of that.

The path language here reads a superset of what hoopwire.config's check accepts (config has
no `$..`, `$['x']`, escapes in brackets or a bare `$`); a path config accepts compiles here
with the same meaning.

Streams
-------
TextStream: detectors over a byte stream. It holds back the last TEXT_TAIL bytes (a match still
growing, or not yet recognisable, at the end of a chunk: an e-mail address is at most 320 bytes,
a JWT header a few hundred), any hit that reaches into them, and TEXT_CONTEXT bytes before
such a hit (GENERIC_API_KEY and AWS_SECRET need their key word, which their hit leaves out);
at most MAX_CARRY bytes (a PEM key of 8192-bit RSA is 6.4 KiB). A hit still open past
MAX_CARRY leaves masked as far as it goes, and its first TEXT_CONTEXT bytes are scanned again
in front of what follows (never sent again), so a hit that goes on is still one hit. The
hold-back is the price of masking a hit split across chunks: text streams lag by up to
2 x TEXT_TAIL bytes, and a rescan costs at most MAX_CARRY / TEXT_TAIL scans per byte.

SseStream: `text/event-stream` per event (lines end in CRLF, LF or CR; an event ends at a blank
line) and each event leaves as soon as it ends. Its data (the `data:` lines joined by "\\n") is
masked as JSON when it parses (then written as one `data:` line), else by the detectors; the
other lines (event, id, comments) by the detectors. An event over max_event bytes (1 MiB or
max_bytes) is not buffered: with key-path rules it is dropped (it cannot be masked; a comment
line says so), without them it streams through a TextStream.
"""

from __future__ import annotations

import bisect
from itertools import accumulate
import json
import logging
import os
import re
import time
from typing import Iterable, Optional

import orjson

try:
    from hoopwire.http import _jsonwalk
except ImportError:  # pragma: no cover -- a tree without its extensions built
    _jsonwalk = None

from hoopwire.config import ConfigError, MaskConfig
from hoopwire.logs import event
from hoopwire.masking.engine import MaskEngine
from hoopwire.masking.jsonpath import ANY, DEEP, INDEX, NAME, compile_path
from hoopwire.masking.strategies import REDACTED, Strategy

__all__ = ["JsonMasker", "TextStream", "SseStream", "PathError", "MaskTimeout", "compile_path",
           "sniff", "SNIFF_BYTES",
           "MAX_DEPTH", "TEXT_TAIL", "MAX_CARRY", "MAX_EVENT", "MASK_TIMEOUT"]

log = logging.getLogger("hoopwire.http.mask")

MAX_DEPTH = 254           # JSON nesting: orjson writes at most 254 levels (reads 1024)
TEXT_TAIL = 1024          # bytes a text stream holds back (see the module doc)
MAX_CARRY = 64 * 1024     # most a text stream holds back for one open hit
TEXT_CONTEXT = 256        # text kept before a hit near the cut: its key word (token: …)
MAX_EVENT = 1024 * 1024   # an SSE event buffered whole up to this
_SEP = b"\n\0\n"          # between the strings of one scan (see the module doc)
_DIGITS = bytes(48 if 48 <= c <= 57 else 32 for c in range(256))   # digits -> 0, rest -> space
_RUN_20 = b"0" * 20
_LEADING_ZEROS = re.compile(rb"^(-?)0+(?=[0-9])")
_DETECT_INT = 10 ** 12    # integers of 13+ digits go to the detectors (cards start at 13)
_KEY_CACHE = 4096         # member names cached per automaton state


MASK_TIMEOUT = 2.0        # seconds one response's masking may take (JsonMasker.timeout)


_clock = _jsonwalk.monotonic if _jsonwalk is not None else time.monotonic


class PathError(ConfigError):
    """Key paths that do not compile, each as (key path, reason)."""


class MaskTimeout(Exception):
    """mask_json passed its deadline: the relay answers 504, nothing of the body leaves."""


# ---------------------------------------------------------------------------------------------
# key paths: the language is hoopwire.masking.jsonpath (config checks paths with it too)

class _State:
    """One set of (rule, step) positions of the path automaton; its transitions are built when
    a document first needs them and then cached (a dict lookup per JSON node).
    final: the rule index that masks a value reached in this state (lowest wins), or None."""

    __slots__ = ("auto", "final", "dead", "names", "other_m", "other_e", "indexes", "by_key",
                 "by_index", "_member_other", "_elem_other")

    def __init__(self, auto: "_Automaton", positions: frozenset):
        self.auto = auto
        finals = [r for r, p in positions if p == len(auto.paths[r])]
        self.final = min(finals) if finals else None
        self.dead = not positions
        names: dict[str, set] = {}
        other_m: set = set()     # where a member whose name no NAME step wants goes
        other_e: set = set()     # where an element at an index no INDEX step wants goes
        idx: dict[int, set] = {}
        for r, p in positions:
            steps = auto.paths[r]
            if p == len(steps):
                continue
            kind, arg = steps[p]
            if kind == NAME:
                names.setdefault(arg, set()).add((r, p + 1))
                other_e.add((r, p))                 # a name step looks through arrays
            elif kind == ANY:
                other_m.add((r, p + 1))
                other_e.add((r, p + 1))
            elif kind == DEEP:
                other_m.add((r, p))
                other_e.add((r, p))
            else:
                idx.setdefault(arg, set()).add((r, p + 1))
        self.names = names
        self.other_m = other_m
        self.other_e = other_e
        self.indexes = idx
        self.by_key: dict[str, _State] = {}
        self.by_index: dict[int, _State] = {}
        self._member_other: Optional[_State] = None
        self._elem_other: Optional[_State] = None

    def member(self, key: str) -> "_State":
        st = self.by_key.get(key)
        if st is None:
            want = self.names.get(key.casefold()) if self.names else None
            if want is None:
                st = self._member_other
                if st is None:
                    st = self._member_other = self.auto.state(self.other_m)
            else:
                st = self.auto.state(want | self.other_m)
            if len(self.by_key) >= _KEY_CACHE:
                self.by_key.clear()
            self.by_key[key] = st
        return st

    def element(self, index: int) -> "_State":
        if self.indexes:
            want = self.indexes.get(index)
            if want is not None:
                st = self.by_index.get(index)
                if st is None:
                    st = self.by_index[index] = self.auto.state(want | self.other_e)
                return st
        st = self._elem_other
        if st is None:
            st = self._elem_other = self.auto.state(self.other_e)
        return st


class _Automaton:
    _MAX_STATES = 4096      # distinct state sets remembered (dedupe only; a state stays valid)

    def __init__(self, paths: list[tuple], state_type=_State):
        self.paths = paths
        self.state_type = state_type     # _State, or its C twin _jsonwalk.State
        self._states: dict[frozenset, _State] = {}

    def closure(self, positions: Iterable) -> frozenset:
        out = set()
        todo = list(positions)
        while todo:
            r, p = todo.pop()
            if (r, p) in out:
                continue
            out.add((r, p))
            steps = self.paths[r]
            if p < len(steps) and steps[p][0] == DEEP:
                todo.append((r, p + 1))      # zero levels
        return frozenset(out)

    def state(self, positions) -> _State:
        key = self.closure(positions)
        st = self._states.get(key)
        if st is None:
            if len(self._states) >= self._MAX_STATES:
                self._states.clear()
            st = self._states[key] = self.state_type(self, key)
        return st


# ---------------------------------------------------------------------------------------------
# detector spans


class _Mark:
    """A stand-in strategy that records each hit and leaves a marker: the Scanner (Cython,
    shared with the SQL protocols) reports rewritten text, not spans; the markers say where."""

    __slots__ = ("name", "keep", "ident", "hits", "marker")

    def __init__(self, ident: int, hits: list, marker: bytes):
        self.name = "mark"          # not a fast-path name: the Scanner calls inline()
        self.keep = 0
        self.ident = ident
        self.hits = hits
        self.marker = marker

    def inline(self, value: bytes) -> bytes:
        self.hits.append((self.ident, len(value)))
        return self.marker


class _SpanFinder:
    """The validated detector spans [(start, end, detector)] of a text, as MaskEngine.mask_text
    would rewrite them (overlaps joined under the leftmost's strategy).

    With the C walk (_jsonwalk) it reads them straight from a Scanner's C API: the engine's
    own (compiled with the engine, off the event loop; used on the loop thread only) or, for
    the masking thread, one compiled in that thread (`scanner`: a Scanner has one scratch per
    database, so two threads must not share one). The reference route (reference=True, or
    no extension) compiles a Scanner of marker strategies here, as the first version did."""

    def __init__(self, engine: MaskEngine, scanner=None, reference: bool = False):
        self.names = engine.detector_names
        # MaskEngine keeps each detector's strategy privately; the strategies must be the
        # engine's own (same hash key) for a value to mask alike in SQL rows and HTTP bodies.
        self.strategies = list(engine._detector_strategies)
        self.fast = _jsonwalk is not None and not reference
        if self.fast:
            self.scanner = scanner if scanner is not None else engine.scanner
            return
        from hoopwire._mask import Scanner
        self.hits: list[tuple[int, int]] = []
        self.marker = b"\0hoopwire-" + os.urandom(16).hex().encode() + b"\0"
        marks = [_Mark(i, self.hits, self.marker) for i in range(len(self.names))]
        self.scanner = Scanner(list(engine.detectors), marks)

    def spans(self, data: bytes) -> list[tuple[int, int, int]]:
        if self.fast:
            return _jsonwalk.text_spans(self.scanner, bytes(data))
        hits = self.hits
        hits.clear()
        out, _ = self.scanner.mask(data)
        if not hits:
            return []
        pieces = out.split(self.marker)
        if len(pieces) != len(hits) + 1:
            # the text held the marker: 128 random bits nobody outside this process saw
            return [(0, len(data), hits[0][0])]
        res = []
        pos = 0
        for piece, (ident, ln) in zip(pieces, hits):
            pos += len(piece)
            res.append((pos, pos + ln, ident))
            pos += ln
        hits.clear()
        return res

    def apply(self, data: bytes, spans, counts: dict, lo: int = 0, hi: int | None = None) -> bytes:
        """data[lo:hi] with the spans (clipped to it) rewritten; counts[name] += hits."""
        hi = len(data) if hi is None else hi
        if len(spans) == 1 and lo <= spans[0][0] and spans[0][1] <= hi:    # the usual case
            s, e, ident = spans[0]
            name = self.names[ident]
            counts[name] = counts.get(name, 0) + 1
            return data[lo:s] + self.strategies[ident].inline(data[s:e]) + data[e:hi]
        out = []
        last = lo
        for s, e, ident in spans:
            s = max(s, lo)
            e = min(e, hi)
            if s >= e:
                continue
            out.append(data[last:s])
            out.append(self.strategies[ident].inline(data[s:e]))
            last = e
            name = self.names[ident]
            counts[name] = counts.get(name, 0) + 1
        out.append(data[last:hi])
        return b"".join(out)


# ---------------------------------------------------------------------------------------------
# JSON


class _TooDeep(Exception):
    pass


class _Job:
    """One document's walk: path masking in place, detector candidates collected. The walk is
    the hot loop of JSON masking: one Python frame per container, none per scalar."""

    __slots__ = ("m", "counts", "changed", "items", "keys", "dicts", "detect")

    def __init__(self, m: "JsonMasker"):
        self.m = m
        self.counts: dict[str, int] = {}
        self.changed = False
        self.detect = m._finder is not None
        self.items: list = []          # (container, slot, member name for context, value)
        self.keys: dict[str, None] = {}
        self.dicts: list[dict] = []

    def root(self, holder: list, st: _State) -> None:
        v = holder[0]
        if st.final is not None:
            holder[0] = self.whole(v, st.final, 0)
        elif type(v) is dict:
            self.walk_dict(v, st, 0)
        elif type(v) is list:
            self.walk_list(v, st, "", 0)
        elif self.detect and (type(v) is str and v or type(v) is int and
                              (v >= _DETECT_INT or v <= -_DETECT_INT)):
            self.items.append((holder, 0, "", v))

    def walk_dict(self, d: dict, st: _State, depth: int) -> None:
        if depth >= MAX_DEPTH:
            raise _TooDeep()
        depth += 1
        detect = self.detect
        dead = st.dead
        if detect:
            self.dicts.append(d)
            keys = self.keys
            items = self.items
        by_key = st.by_key
        for k, x in d.items():
            c = st if dead else by_key.get(k) or st.member(k)
            if c.final is not None:
                d[k] = self.whole(x, c.final, depth)
                if detect:
                    keys[k] = None
                continue
            t = type(x)
            if not detect:
                if not c.dead:
                    if t is dict:
                        self.walk_dict(x, c, depth)
                    elif t is list:
                        self.walk_list(x, c, k, depth)
                continue
            keys[k] = None
            if t is str:
                if x:
                    items.append((d, k, k, x))
            elif t is dict:
                self.walk_dict(x, c, depth)
            elif t is list:
                self.walk_list(x, c, k, depth)
            elif t is int and (x >= _DETECT_INT or x <= -_DETECT_INT):
                items.append((d, k, k, x))

    def walk_list(self, v: list, st: _State, ctx: str, depth: int) -> None:
        if depth >= MAX_DEPTH:
            raise _TooDeep()
        depth += 1
        detect = self.detect
        items = self.items
        same = None if st.indexes else st.element(0)    # no [N] step: one state for all
        for i, x in enumerate(v):
            c = same if same is not None else st.element(i)
            if c.final is not None:
                v[i] = self.whole(x, c.final, depth)
                continue
            t = type(x)
            if t is dict:
                if detect or not c.dead:
                    self.walk_dict(x, c, depth)
            elif t is list:
                if detect or not c.dead:
                    self.walk_list(x, c, ctx, depth)
            elif detect and (t is str and x or t is int and
                             (x >= _DETECT_INT or x <= -_DETECT_INT)):
                items.append((v, i, ctx, x))

    # -- a value at a masked path ------------------------------------------------------------

    def whole(self, v, rule: int, depth: int):
        label, strategy = self.m._rules[rule]
        t = type(v)
        if v is None:
            return None
        if t is dict or t is list:
            if depth >= MAX_DEPTH:
                raise _TooDeep()
            items = v.items() if t is dict else enumerate(v)
            for k, x in items:
                if t is dict and self.detect:
                    self.keys[k] = None
                v[k] = self.whole(x, rule, depth + 1)
            if t is dict and self.detect:
                self.dicts.append(v)
            return v
        self.changed = True
        self.counts[label] = self.counts.get(label, 0) + 1
        if strategy.whole_is_null:
            return None
        if t is str:
            return strategy.whole(v.encode("utf-8", "surrogatepass")).decode("utf-8", "replace")
        if t is bool:
            return REDACTED.decode()
        text = json.dumps(v).encode() if t is int else orjson.dumps(v)
        return _number_or_text(strategy, strategy.whole(text))

    # -- detectors -----------------------------------------------------------------------------

    def scan(self) -> None:
        finder = self.m._finder
        keys = list(self.keys)
        key_bytes = [k.encode("utf-8", "surrogatepass") for k in keys]
        prefix = {k: kb + b":\n" for k, kb in zip(keys, key_bytes)}
        prefix[""] = b""
        items = self.items
        texts = key_bytes[:]
        for _, _, ctx, x in items:
            if type(x) is str:
                texts.append(prefix[ctx] + x.encode("utf-8", "surrogatepass"))
            else:
                texts.append(str(x).encode())
        if not texts:
            return
        spans_of = _spans_each(finder, texts)
        nk = len(keys)
        counts = self.counts
        renamed: dict[str, str] = {}
        for i, spans in spans_of.items():
            if i < nk:
                new = finder.apply(key_bytes[i], spans, counts)
                renamed[keys[i]] = new.decode("utf-8", "replace")
                continue
            parent, slot, ctx, x = items[i - nk]
            clen = len(prefix[ctx]) if type(x) is str else 0
            if spans[-1][1] <= clen:
                continue                    # the hits are in the member name (sorted spans)
            new = finder.apply(texts[i], spans, counts, clen)
            self.changed = True
            if type(x) is str:
                parent[slot] = new.decode("utf-8", "replace")
            else:
                parent[slot] = _number_or_text(finder.strategies[spans[0][2]], new)
        if renamed:
            self.changed = True
            for d in self.dicts:
                if any(k in renamed for k in d):
                    _rename(d, renamed)


def _spans_each(finder: _SpanFinder, texts: list[bytes]) -> dict[int, list]:
    """{text index: its spans} for the texts with hits, from one scan of them all joined."""
    joined = _SEP.join(texts)
    spans = finder.spans(joined)
    if not spans:
        return {}
    sep = len(_SEP)
    ends = list(accumulate(map(sep.__add__, map(len, texts))))   # text i ends at ends[i] - sep
    out: dict[int, list] = {}
    alone: set[int] = set()
    for s, e, ident in spans:
        i = bisect.bisect_right(ends, s)
        j = bisect.bisect_right(ends, e - 1)
        start = ends[i - 1] if i else 0
        if i != j or e > ends[i] - sep:
            alone.update(range(i, min(j, len(texts) - 1) + 1))   # crosses a joint: alone
            continue
        out.setdefault(i, []).append((s - start, e - start, ident))
    for i in alone:
        out.pop(i, None)
        sp = finder.spans(texts[i])
        if sp:
            out[i] = sp
    return out


def _rename(d: dict, renamed: dict[str, str]) -> None:
    """d with its member names masked, in place and in order; a collision gets ~2, ~3..."""
    pairs = list(d.items())
    d.clear()
    for k, v in pairs:
        nk = renamed.get(k, k)
        if nk in d:
            n = 2
            while f"{nk}~{n}" in d:
                n += 1
            nk = f"{nk}~{n}"
        d[nk] = v


def _whole_scalar(strategy: Strategy, v):
    """A number or true/false at a masked path, under a strategy that is not `null` (the C
    walk's share of _Job.whole that is not about strings)."""
    if type(v) is bool:
        return REDACTED.decode()
    text = json.dumps(v).encode() if type(v) is int else orjson.dumps(v)
    return _number_or_text(strategy, strategy.whole(text))


def _number_or_text(strategy: Strategy, masked: bytes | None):
    if masked is None:
        return None
    if strategy.name == "format":
        # digits stay digits: 09.5 is not JSON, 9.5 is (the value is random either way)
        masked = _LEADING_ZEROS.sub(rb"\1", masked)
        try:
            v = json.loads(masked)
            if type(v) in (int, float):
                return v
        except ValueError:
            pass
    return masked.decode("utf-8", "replace")


def _long_digits(body: bytes) -> bool:
    """A run of 20+ digits (an integer over 64 bits, or a string holding one). translate +
    find: 1 µs a KiB where re's [0-9]{20} took 30."""
    return _RUN_20 in body.translate(_DIGITS)


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _std_loads(body: bytes):
    return json.loads(body.decode("utf-8"), parse_constant=_refuse_constant)


def _std_dumps(doc) -> bytes:
    # ensure_ascii: a lone surrogate the stdlib accepted leaves as an escape, still JSON
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


_JSON_TYPES = {"application/json", "text/json", "application/x-json", "text/x-json"}
_NDJSON_TYPES = {"application/x-ndjson", "application/ndjson", "application/jsonl",
                 "application/x-jsonlines", "application/jsonlines"}
_TEXT_TYPES = {"application/xml", "application/javascript", "application/x-www-form-urlencoded",
               "application/yaml", "application/x-yaml", "application/graphql",
               "application/sql", "application/csv", "application/ecmascript"}


# Types sniffed when key paths apply (JsonMasker.wants -> "sniff"): a JSON body served as any of
# these (text/plain, JSONP as javascript, a download, no type at all) is still read as JSON by
# the clients that asked for it, and a client can often pick the type (Accept, ?callback=,
# ?format=), so a path rule that looked at the Content-Type alone was dodged by all of them.
_SNIFF_TYPES = {"application/octet-stream", "application/x-javascript", "binary/octet-stream"}

# What makes a sniffed body JSON: after a BOM, whitespace and /* */ comments, `{` or `[`, or
# JSONP: a callback name (a.b.c, $cb) and `(` before one, after an optional guard
# `typeof cb === 'function' && ` (`/**/ typeof cb === 'function' && cb({...});` is Express's
# res.jsonp, `/**/cb({...})` Rails'). A JSONP of a scalar (`cb("x")`) is left to the
# detectors: a path rule addresses members and elements, and requiring `{`/`[` keeps text
# like `print("hi")` a text.
# A /* */ comment, unrolled so each byte has one way to match: the lazy `/\*.*?\*/` let one
# comment span several and took over 10 s on 4 KiB of `/**/` (backtracking); this is linear
_COMMENT = rb"/\*[^*]*\*+(?:[^/*][^*]*\*+)*/"
_SNIFF_JSON = re.compile(
    rb"(?:\xef\xbb\xbf)?(?:\s|" + _COMMENT + rb")*+(?:([\[{])|"
    rb"(?:typeof\s+[\w$.]+\s*===?\s*(['\"])function\2\s*&&\s*)?"
    rb"[A-Za-z_$][\w$.]*\s*(\()\s*[\[{])")
# A prefix that may still become one of those with more bytes (undecided): a part of a BOM,
# of a comment (not closed yet), of the typeof guard, or a callback name and its `(`
_SNIFF_OPEN = re.compile(
    rb"(?:\xef(?:\xbb\xbf?)?)?(?:\s|" + _COMMENT + rb")*+"
    rb"(?:/|/\*[^*]*(?:\*+[^/*][^*]*)*\**|typeof\s[^(]*|[A-Za-z_$][\w$.]*\s*(?:\(\s*)?)?")
_JSONP_TAIL = re.compile(rb"\)\s*;?\s*\Z")
_BOM = b"\xef\xbb\xbf"
SNIFF_BYTES = 4096       # the relay decides on at most this much of a body's start (a longer
                         # undecided prefix is gathered and decided whole, within max_bytes)


def sniff(prefix: bytes, final: bool = False) -> Optional[str]:
    """What a body of a sniffed type is, from its first bytes: "json", "jsonp", "text", or
    None while `prefix` could still become JSON (final: the body ends here, decide)."""
    m = _SNIFF_JSON.match(prefix)
    if m is not None:
        return "json" if m.group(1) else "jsonp"
    if not final and _SNIFF_OPEN.fullmatch(prefix):
        return None
    return "text"


def media_type(content_type: bytes | str | None) -> str:
    if content_type is None:
        return ""
    if isinstance(content_type, (bytes, bytearray)):
        content_type = bytes(content_type).decode("latin-1")
    return content_type.split(";", 1)[0].strip().lower()


class _PassStream:
    """A text_stream's interface that changes nothing: a sniffed body that is not JSON, with
    no detectors configured."""

    offloaded = False
    deadline = 0.0

    def backlog(self) -> int:
        return 0

    def feed(self, data: bytes) -> bytes:
        return bytes(data)

    def end(self) -> bytes:
        return b""

    def take_counts(self) -> dict[str, int]:
        return {}


class JsonMasker:
    """One connection's response masking (see the module doc)."""

    def __init__(self, masks: Iterable[MaskConfig], engine: MaskEngine, max_bytes: int,
                 *, path: str = "connection", timeout: float = MASK_TIMEOUT,
                 reference: bool = False):
        self.engine = engine
        self.max_bytes = int(max_bytes)
        self.timeout = timeout           # seconds per response; <= 0: unbounded
        # the C walk (_jsonwalk) unless asked for the Python reference (tests compare them)
        self._c = _jsonwalk is not None and not reference
        key = getattr(engine, "_key", b"") or os.urandom(32)
        rules: list[tuple[str, Strategy]] = []
        compiled: list[tuple] = []
        problems = []
        for i, m in enumerate(masks):
            paths = tuple(getattr(m, "paths", ()) or ())
            if not paths:
                continue
            strategy = Strategy(m.strategy, m.keep, key)
            for k, p in enumerate(paths):
                try:
                    compiled.append(compile_path(p))
                    rules.append((f"path:mask[{i}]", strategy))
                except ValueError as e:
                    problems.append((f"{path}.mask[{i}].paths[{k}]", str(e)))
        if problems:
            raise PathError(problems)
        self._rules = rules
        self.has_paths = bool(compiled)
        auto = _Automaton(compiled, _jsonwalk.State if self._c else _State)
        self._root = auto.state({(r, 0) for r in range(len(compiled))})
        self._dead = auto.state(())
        # per path, the member names it needs (quoted, as they appear in a body), or None when
        # some path needs none ($.*, $[0], $): then every document is walked
        needles = []
        for steps in compiled:
            names = [orjson.dumps(arg) for kind, arg in steps if kind == NAME]
            if not names or not all(n.isascii() for n in names):
                needles = None
                break
            needles.append([n.lower() for n in names])
        self._needles = needles if compiled else None
        # no Hyperscan compile here (this runs on the event loop at start and reload): the
        # C route scans with the engine's Scanner, compiled with the engine in a thread
        self._finder = _SpanFinder(engine, reference=reference) \
            if engine.scanner is not None else None
        self._off_finder: Optional[_SpanFinder] = None   # the masking thread's (offloaded)
        self.active = self.has_paths or self._finder is not None

    # -- what a response gets ------------------------------------------------------------------

    def wants(self, content_type: bytes | str | None) -> str:
        """"json" (buffer up to max_bytes, mask_json), "sniff" (JSON or not by its first
        bytes: sniff), "sse" (sse_stream), "text" (text_stream) or "pass" (forward as it
        comes)."""
        if not self.active:
            return "pass"
        mt = media_type(content_type)
        if "," in mt:
            # `application/json, text/plain`: which one a client reads is its own choice (the
            # Fetch standard takes the last), so the list gets the most any member gets, and
            # with key paths never less than a sniff
            kinds = {self._wants(t.strip()) for t in mt.split(",")}
            for kind in ("json", "sniff", "sse", "text"):
                if kind in kinds:
                    return kind
            return "sniff" if self.has_paths else "pass"
        return self._wants(mt)

    def _wants(self, mt: str) -> str:
        if mt == "text/event-stream":
            return "sse"
        if mt in _NDJSON_TYPES:
            # lines of JSON: mask_json masks them line by line; buffered, so only when key
            # paths need it (a path in a stream of lines cannot be masked by text rules)
            return "json" if self.has_paths else "text"
        if mt in _JSON_TYPES or "json" in mt.partition("/")[2]:
            return "json"                # +json, x-amz-json-1.1, json-seq, vnd.x.json ...
        textual = not mt or mt.startswith("text/") or mt in _TEXT_TYPES or \
            mt.endswith(("+xml", "+yaml"))
        if self.has_paths and (textual or mt in _SNIFF_TYPES):
            return "sniff"               # JSON by its first bytes (sniff), else as text
        if self._finder is None:
            return "pass"                # key paths only: nothing to look for in other types
        return "text" if textual else "pass"   # no type said: it may be read as text

    # -- whole JSON bodies ---------------------------------------------------------------------

    def deadline(self) -> float:
        """The deadline of a response whose masking starts now (0.0: none), on the clock
        mask_json reads (_jsonwalk.monotonic, CLOCK_MONOTONIC like time.monotonic)."""
        return _clock() + self.timeout if self.timeout > 0 else 0.0

    def mask_json(self, body: bytes, deadline: float = 0.0, *, offloaded: bool = False
                  ) -> Optional[tuple[bytes, dict[str, int]]]:
        """(the masked document, counts), or None when it cannot be masked as JSON (see the
        module doc for what the relay does then). An unchanged document is `body` itself.
        deadline (self.deadline()): MaskTimeout once it has passed (checked before the
        parse and every few hundred containers of the walk). offloaded: called in the
        relay's masking thread (relay._Masking), which has a Scanner of its own."""
        if len(body) > self.max_bytes:
            return None
        if not self.active:
            return body, {}
        if deadline and _clock() > deadline:
            raise MaskTimeout()         # e.g. queued behind another body for the thread
        finder = self._thread_finder() if offloaded and self._finder is not None \
            else self._finder
        body = bytes(body)
        try:
            doc = orjson.loads(body)
        except (ValueError, RecursionError):
            if not _long_digits(body):
                return self._ndjson(body, deadline, offloaded)
            try:
                doc = _std_loads(body)        # an integer too big even for a double
            except (ValueError, RecursionError):
                return None
            return self._mask_doc(body, doc, self._root, True, deadline, finder)
        root = self._root if self._may_match(body) else self._dead
        if root.dead and finder is None:
            return body, {}
        r = self._mask_doc(body, doc, root, False, deadline, finder)
        if r is not None and r[0] is not body and _long_digits(body):
            # orjson 3.8 reads an integer over 64 bits as a float: a document that must be
            # written again is read again by the stdlib, which keeps every digit
            try:
                doc = _std_loads(body)
            except (ValueError, RecursionError):
                return None
            r = self._mask_doc(body, doc, root, True, deadline, finder)
        return r

    def _thread_finder(self) -> "_SpanFinder":
        """The masking thread's span finder: its own Scanner, compiled in that thread on
        first use (one thread: relay._MASK_THREAD has a single worker)."""
        f = self._off_finder
        if f is None:
            if not self._finder.fast:
                return self._finder      # the reference route: tests only, one thread
            from hoopwire._mask import Scanner
            e = self.engine
            f = self._off_finder = _SpanFinder(
                e, Scanner(list(e.detectors), list(e._detector_strategies)))
        return f

    def _may_match(self, body: bytes) -> bool:
        """False when no path can match: each needs a member name that is nowhere in the
        body. Only for ASCII bodies without \\u escapes (a non-ASCII name may casefold to an
        ASCII one: 'ſecret' is 'secret') and without escapes (`"a\\/b"` is "a/b"); a few µs against
        a walk of the whole document."""
        if self._needles is None or not body.isascii() or b"\\" in body:
            return True
        low = body.lower()
        return any(all(n in low for n in needles) for needles in self._needles)

    def _mask_doc(self, body: bytes, doc, root: _State, std: bool, deadline: float = 0.0,
                  finder: Optional[_SpanFinder] = None):
        holder = [doc]
        if self._c:
            job = _jsonwalk.Walk(self._rules, _whole_scalar, finder is not None, deadline)
            try:
                job.root(holder, root)
                if finder is not None:
                    job.scan(finder.scanner, list(finder.names), finder.strategies,
                             _number_or_text, _rename)
            except (_jsonwalk.TooDeep, RecursionError):
                return None
            except _jsonwalk.TimedOut:
                raise MaskTimeout() from None
        else:
            job = _Job(self)
            try:
                job.root(holder, root)
                if job.detect:
                    job.scan()
            except (_TooDeep, RecursionError):
                return None
        try:
            out = _std_dumps(holder[0]) if std else orjson.dumps(holder[0])
        except (TypeError, ValueError, RecursionError, orjson.JSONEncodeError):
            out = None                   # e.g. deeper than orjson writes, in a part not walked
        if not job.changed and not _dropped_members(body, out):
            return body, job.counts
        return None if out is None else (out, job.counts)

    def _ndjson(self, body: bytes, deadline: float = 0.0, offloaded: bool = False):
        """Newline-delimited JSON (one document a line), masked line by line; None if a line
        is not JSON."""
        if b"\n" not in body.strip():
            return None
        out = []
        counts: dict[str, int] = {}
        changed = False
        for line in body.split(b"\n"):
            core = line.rstrip(b"\r")
            if not core.strip():
                out.append(line)
                continue
            r = self.mask_json(core, deadline, offloaded=offloaded)
            if r is None:
                return None
            if r[0] is not core:
                changed = True
                line = r[0] + line[len(core):]
            out.append(line)
            for k, n in r[1].items():
                counts[k] = counts.get(k, 0) + n
        return (b"\n".join(out) if changed else body), counts

    # -- streams -------------------------------------------------------------------------------

    def text_stream(self) -> "TextStream":
        return TextStream(self._finder, masker=self)

    def mask_sniffed(self, body: bytes, deadline: float = 0.0, *, offloaded: bool = False
                     ) -> Optional[tuple[bytes, dict[str, int]]]:
        """mask_json for a body of a sniffed type that sniff() found JSON or JSONP: a BOM is
        kept (mask_json refuses one), JSONP is masked inside its parentheses; the rest of the
        body is kept as it came. None: not JSON after all (502 where key paths apply)."""
        m = _SNIFF_JSON.match(body)
        if m is None:
            return None
        if m.group(1):
            start = body.startswith(_BOM) and 3
            head, inner, tail = body[:start], body[start:], b""
        else:
            t = _JSONP_TAIL.search(body)
            if t is None:
                return None
            head, inner, tail = body[:m.end(3)], body[m.end(3):t.start()], body[t.start():]
        r = self.mask_json(inner, deadline, offloaded=offloaded)
        if r is None or r[0] is inner:
            return r if r is None else (body, r[1])
        return head + r[0] + tail, r[1]

    def sniffed_text(self) -> "TextStream | _PassStream":
        """The stream for a sniffed body that is not JSON: the detectors, or nothing."""
        return self.text_stream() if self._finder is not None else _PassStream()

    def mask_as_text(self, body: bytes, deadline: float = 0.0, *, offloaded: bool = False
                     ) -> tuple[bytes, dict[str, int]]:
        """A whole body through the detectors as text (a text_stream fed once); offloaded:
        in the masking thread, with its Scanner. MaskTimeout if the deadline passed before
        it starts (queued behind another body); the scan itself is one uninterrupted
        Hyperscan pass, ~20 ms a MiB here."""
        if deadline and _clock() > deadline:
            raise MaskTimeout()
        finder = self._thread_finder() if offloaded and self._finder is not None \
            else self._finder
        s = TextStream(finder)
        out = s.feed(body) + s.end()
        return out, s.take_counts()

    def sse_stream(self) -> "SseStream":
        return SseStream(self, min(MAX_EVENT, max(self.max_bytes, 1)))

    def mask_text(self, data: bytes, counts: dict, offloaded: bool = False) -> bytes:
        """Detectors over one piece of text; counts updated (offloaded: in the masking
        thread, with its Scanner)."""
        if self._finder is None or not data:
            return data
        finder = self._thread_finder() if offloaded else self._finder
        spans = finder.spans(data)
        if not spans:
            return data
        return finder.apply(data, spans, counts)


_ESCAPED_COLON = re.compile(rb"\\u003[aA]")


def _dropped_members(body: bytes, out: bytes | None) -> bool:
    """Whether the parse dropped members of `body` (a duplicate name: the parser kept the last,
    the walk saw only that one), `out` being the parsed document written again. Returned as
    received, `{"email": "a@b.c", "email": null}` would show the first value in clear to a
    person or agent reading the text and to parsers that keep the first (simdjson's
    find_field, Go's jsonparser). Every colon outside a string is one member and writing
    again adds or drops none, nor any inside a string, except that `\\u003a` becomes `:`; so
    without such an escape, fewer colons written means members dropped. Per unchanged
    document: orjson's write and two counts, 4.3 us/KiB CPU on a 77 KiB list of records
    against 8.9 for its parse (load 4-7); with the escape, or no
    `out` (a document orjson reads but cannot write), the stdlib parse tells."""
    if out is not None and _ESCAPED_COLON.search(body) is None:
        return out.count(b":") != body.count(b":")
    seen_dup = []

    def pairs(items):
        if len({k for k, _ in items}) != len(items):
            seen_dup.append(True)
        return dict(items)
    try:
        json.loads(body, object_pairs_hook=pairs)
    except (ValueError, RecursionError):
        return True                   # unreadable to the check: write it again, to be safe
    return bool(seen_dup)


def _merge(into: dict, counts: dict) -> None:
    for k, n in counts.items():
        into[k] = into.get(k, 0) + n


class TextStream:
    """Detectors over a byte stream; a hit split across chunks is still masked (module doc)."""

    offloaded = False        # the next feed/end runs in the masking thread (its Scanner)
    deadline = 0.0           # unused by text (a scan is not interrupted): SseStream's twin

    def __init__(self, finder: Optional[_SpanFinder], tail: int = TEXT_TAIL,
                 max_carry: int = MAX_CARRY, masker: Optional["JsonMasker"] = None):
        self._finder = finder
        self._masker = masker    # for its thread's finder, when offloaded
        self._tail = tail
        self._max = max(max_carry, tail)
        self._buf = bytearray()
        self._carried = 0             # of _buf, bytes already scanned once (held back)
        self._head = b""              # the head of an over-long hit already sent: context only
        self._counts: dict[str, int] = {}

    def feed(self, data: bytes) -> bytes:
        if self._finder is None:
            return bytes(data)
        self._buf += data
        # scan again only when a tail's worth of new bytes came: a byte-by-byte stream costs
        # at most max_carry / tail rescans per byte, not one scan per byte
        if len(self._buf) - self._carried < self._tail:
            return b""
        return self._flush(False)

    def end(self) -> bytes:
        if self._finder is None or not self._buf:
            return b""
        return self._flush(True)

    def take_counts(self) -> dict[str, int]:
        c, self._counts = self._counts, {}
        return c

    def backlog(self) -> int:
        """Bytes held back: what the next feed scans besides its own."""
        return len(self._buf) + len(self._head)

    def _flush(self, final: bool) -> bytes:
        finder = self._finder
        if self.offloaded and self._masker is not None:
            finder = self._masker._thread_finder()
        head = self._head
        p = len(head)
        buf = head + bytes(self._buf)
        n = len(buf)
        spans = finder.spans(buf)
        cut = n
        self._head = b""
        if not final:
            cut = n - self._tail
            # a hit reaching into the tail may still grow, and a hit just after the cut may
            # need the text before it (`token: <value>` masks only the value): the first of
            # them is held back with TEXT_CONTEXT bytes before it, or the text since the hit
            # before it (which leaves whole: a cut never splits a hit, nor puts one after
            # the cut without its context). The cut once moved back hit by hit: in text
            # with an address every 35 bytes that walked it to 0, read as one hit over
            # MAX_CARRY, and everything went, an address just begun at the end in clear.
            first, before = n, 0
            for s, e, _ in spans:
                if e > cut:
                    first = s
                    break
                before = e
            if first < cut + TEXT_CONTEXT:
                cut = max(first - TEXT_CONTEXT, before)
            if first < p or first < n - self._max:
                # an open hit longer than the bound: it all leaves masked, and its head stays
                # as context for what follows (a PEM body goes on matching after its BEGIN)
                cut = n
                for s, e, _ in reversed(spans):
                    if e > n - self._tail:
                        self._head = buf[s:s + TEXT_CONTEXT]
                        break
            else:
                cut = max(cut, p)        # the head went already: context, never sent again
                if first < n and first - TEXT_CONTEXT < cut:
                    # the hit before it ends inside its context, and may hold what it needs:
                    # in `u@corp.token: <value>` the key word is the address's end. Sent with
                    # that hit, the value was scanned next without it and left in clear
                    # (tests/test_redteam_session5.py); those bytes stay as context
                    self._head = buf[max(0, first - TEXT_CONTEXT):cut]
        out = finder.apply(buf, [sp for sp in spans if sp[0] < cut and sp[1] > p],
                           self._counts, p, cut)
        del self._buf[:cut - p]
        self._carried = len(self._buf)
        return out


_LINE_END = re.compile(rb"\r\n|\r|\n")


class SseStream:
    """text/event-stream masked per event (module doc)."""

    offloaded = False        # the next feed/end runs in the masking thread (its Scanner)
    deadline = 0.0           # an event's JSON is masked by it (MaskTimeout past it)

    def __init__(self, masker: JsonMasker, max_event: int = MAX_EVENT):
        self._m = masker
        self._max = max_event
        self._buf = bytearray()          # bytes not yet split into lines
        self._lines: list[tuple[bytes, bytes]] = []   # this event's (line, terminator)
        self._size = 0
        self._text: Optional[TextStream] = None      # an over-size event streaming as text
        self._dropping = False                        # an over-size event being dropped
        self._partial = False                         # a line of it is part-way streamed
        self._started = False
        self._scan_from = 0                           # of _buf, searched for line ends
        self._counts: dict[str, int] = {}

    def take_counts(self) -> dict[str, int]:
        c, self._counts = self._counts, {}
        return c

    def backlog(self) -> int:
        """Bytes the next feed may mask besides its own: the event gathered so far (masked
        whole when it ends) and what is not split into lines yet."""
        text = self._text
        return len(self._buf) + self._size + (text.backlog() if text is not None else 0)

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        out: list[bytes] = []
        if not self._started:
            if len(self._buf) < 3 and b"\xef\xbb\xbf".startswith(bytes(self._buf)):
                return b""
            self._started = True
            if self._buf.startswith(b"\xef\xbb\xbf"):
                out.append(b"\xef\xbb\xbf")      # the spec's optional BOM: kept, not a field
                del self._buf[:3]
        buf = self._buf
        pos = 0
        while True:
            # from where the last feed stopped looking: a long line fed in small pieces is
            # searched once, not once per piece
            m = _LINE_END.search(buf, max(pos, self._scan_from))
            if m is None or m.group() == b"\r" and m.end() == len(buf):
                break                           # a final CR may be the CR of a CRLF to come
            self._line(bytes(buf[pos:m.start()]), m.group(), out)
            pos = m.end()
        del buf[:pos]
        if buf and (self._text is not None or self._dropping or
                    self._size + len(buf) > self._max):
            n = len(buf) - 1 if buf.endswith(b"\r") else len(buf)
            if n:
                self._overflow(bytes(buf[:n]), out)
                self._partial = True
                del buf[:n]
        self._scan_from = len(buf) - 1 if buf.endswith(b"\r") else len(buf)
        return b"".join(out)

    def end(self) -> bytes:
        out: list[bytes] = []
        if self._buf:
            rest = bytes(self._buf)
            self._buf.clear()
            term = b""
            if rest.endswith(b"\r"):
                rest, term = rest[:-1], b"\r"
            if rest or term:
                self._line(rest, term, out)
        self._finish_event(b"", out)
        return b"".join(out)

    def _line(self, line: bytes, term: bytes, out: list) -> None:
        if self._text is not None or self._dropping:
            if line or self._partial:           # the end of a line already streamed
                self._partial = False
                self._overflow(line + term, out)
                return
            self._finish_event(term, out)
            return
        if not line:
            self._finish_event(term, out)
            return
        self._size += len(line) + len(term)
        self._lines.append((line, term))
        if self._size > self._max:
            self._overflow(b"", out)

    def _overflow(self, raw: bytes, out: list) -> None:
        """The event is over max_event: stream it as text, or drop it (key paths)."""
        if self._text is None and not self._dropping:
            event(log, "sse event over the masking bound", logging.WARNING,
                  bound=self._max, action="dropped" if self._m.has_paths else "text")
            if self._m.has_paths:
                self._dropping = True
            else:
                self._text = self._m.text_stream()
                raw = b"".join(l + t for l, t in self._lines) + raw
            self._lines = []
        if self._text is not None:
            self._text.offloaded = self.offloaded
            out.append(self._text.feed(raw))

    def _finish_event(self, term: bytes, out: list) -> None:
        if self._text is not None:
            self._text.offloaded = self.offloaded
            out.append(self._text.end())
            _merge(self._counts, self._text.take_counts())
            self._text = None
            out.append(term)
        elif self._dropping:
            self._dropping = False
            out.append(b": hoopwire: event over %d bytes dropped (could not be masked)%s%s"
                       % (self._max, term or b"\n", term or b"\n"))
        elif self._lines:
            out.append(self._mask_event(self._lines))
            out.append(term)
        else:
            out.append(term)
        self._lines = []
        self._size = 0

    def _mask_event(self, lines: list[tuple[bytes, bytes]]) -> bytes:
        m = self._m
        counts = self._counts
        data_at = -1
        values = []
        for k, (line, _) in enumerate(lines):
            name, _, value = line.partition(b":")
            if name == b"data":
                if data_at < 0:
                    data_at = k
                values.append(value[1:] if value.startswith(b" ") else value)
        new_data = None
        if values:
            data = b"\n".join(values)
            r = m.mask_json(data, self.deadline, offloaded=self.offloaded) \
                if data.strip() else None
            if r is not None:
                if r[0] is not data:
                    new_data = r[0].split(b"\n")     # NDJSON data: one line per document
                _merge(counts, r[1])
            else:
                masked = m.mask_text(data, counts, self.offloaded)
                if masked is not data:
                    new_data = masked.split(b"\n")
        out = []
        for k, (line, term) in enumerate(lines):
            name = line.partition(b":")[0]
            if name == b"data" and new_data is not None:
                if k == data_at:
                    out.extend(b"data: " + d + term for d in new_data)
                continue
            if name != b"data" and line:
                line = m.mask_text(line, counts, self.offloaded)   # event, id, comments
            out.append(line + term)
        return b"".join(out)
