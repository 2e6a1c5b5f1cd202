#!/usr/bin/env python3
"""Fuzz hoopwire.masking RowPlan.rewrite: the Cython DataRow rewriter, fed bytes that came
from the upstream server (or whoever sits in its place).

    python fuzz/fuzz_mask_rows.py -max_total_time=60 [corpus_dir] [libFuzzer args]

Input layout (all choices wrap, so every input is valid):
  byte 0    engine: which of the ENGINES below (they differ in strategies and detectors)
  byte 1    columns: low 3 bits how many (0-6); bits 3-4 how the message is given to rewrite
            (bytes, bytearray, memoryview)
  next n    one byte per column: low 4 bits its (type oid, format) from TYPES, bits 4-6 its
            source from SOURCES (a column rule matches it, no rule, unresolved...); bit 7 of any
            column: unresolved columns are masked by the first rule (unresolved_columns=mask)
  next      message mode (low 3 bits): 0 the rest as the message; 1 b"D" + the rest; 2 a
            correct header (length and this plan's field count) + the rest; 3 a DataRow built
            from the rest with exactly the plan's field count (4-7: as many values as the rest
            gives, up to one more): one value at a time, a byte 0xff = NULL, else (its low 6
            bits) = how many bytes follow, each byte below len(PIECES) standing for a fragment
            that detectors look for (an e-mail, a card number, JSON quotes...) and any other
            byte for itself. Bit 3 of the mode (built rows): every non-NULL value v becomes
            v + "\n" + s + "\n" + v, s one of SECRETS (bits 4-7 pick the first, the next
            value takes the next one).

Properties:
* rewrite raises nothing but MaskRowError (SQLSTATE 08P01, or 54000 for a row too large), and
  raises it exactly when the message is not a well-formed DataRow with as many values as the
  plan has columns (checked against a plain-Python parser);
* the plan is what the configuration says: a column whose source a rule's globs match (or an
  unresolved column, with unresolved_columns=mask) is WHOLE, any other column DETECT when the
  engine has detectors (PASS for hex bytea), else PASS;
* a non-None result is a well-formed DataRow with the same field count; NULLs stay NULL;
  values of PASS columns are unchanged;
* a WHOLE column's value never comes out in clear: it comes out as its rule's strategy
  (hoopwire.masking.strategies, the Python reference) makes it for the column's kind -- NULL
  for `null` and for types that cannot hold text, "****" for format over hex bytea, a JSON
  string for json/jsonb -- so it equals the clear value only when the clear value is already
  its own masked form (`****` under redact, say);
* a detector hit cannot survive: every SECRETS entry (e-mail, card numbers with a valid Luhn
  sum, SSN, IBAN, AWS key id, GitHub/Slack tokens, JWT, phone, IPv6/IPv4, and the luhn and
  mod97 user detectors' formats) that stands on a line of its own inside a value of a column
  that is not PASS is absent from that column's output, whatever strategy the engine gives it;
  with engines that use no `format` strategy, so is the secret's tail after its first four
  bytes (another detector's match that runs into the secret across the line break may keep its
  own last `keep` characters, but must not leave the rest of the secret in clear);
* take_counts() gives {str: positive int}; rewriting the same rows inside one whole read
  (the relay's prescan path) gives the same bytes.

Detector validators and strategies (hoopwire.masking.detectors / .strategies) are Python and
are instrumented; the rewriter (hoopwire._mask) and Hyperscan are not.
test_one_input(data) is importable without atheris (tests/test_fuzz_smoke.py uses it).
"""

from __future__ import annotations

import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # harness.py beside us
from harness import fuzz, instrumented_import  # noqa: E402

if __name__ == "__main__":
    instrumented_import("hoopwire.masking")

from hoopwire.config import DetectorConfig, MaskConfig  # noqa: E402
import json  # noqa: E402

from hoopwire._mask import K_INPLACE, K_JSON, K_JSONB_BIN, K_OPAQUE, K_OTHER  # noqa: E402
from hoopwire.masking import (ACT_DETECT, ACT_PASS, ACT_WHOLE, BUILTIN,  # noqa: E402
                              MaskEngine, MaskRowError)
from hoopwire.pg._wire import DataRowPlan  # noqa: E402
from hoopwire.pg.kinds import PgColumn as Column, to_column  # noqa: E402


def row_plan(eng, columns, **kw):
    """A PostgreSQL row plan: type OIDs mapped to the masker's value kinds (hoopwire.pg.kinds)."""
    return eng.row_plan([to_column(c) for c in columns], plan_type=DataRowPlan, **kw)


TEXT, INT4, INT8, UUID, BYTEA, JSON, JSONB, TEXTARR, VARCHAR, NAME = (
    25, 23, 20, 2950, 17, 114, 3802, 1009, 1043, 19)
TYPES = (
    (TEXT, 0), (TEXT, 1), (VARCHAR, 0), (INT4, 0), (INT8, 1), (UUID, 1), (BYTEA, 0), (BYTEA, 1),
    (JSON, 0), (JSONB, 0), (JSONB, 1), (TEXTARR, 0), (TEXTARR, 1), (NAME, 0), (12345, 0),
    (0, 0),
)
SOURCES = (
    ("public", "users", "ssn"),          # rule 0
    ("app", "accounts", "password"),     # rule 0 (glob *.password)
    ("public", "users", "api_secret"),   # rule 1 (glob *.*secret*)
    ("public", "users", "note"),         # no rule: detectors
    (None, None, None),                  # unresolved: detectors, or rule 0 when set so
    ("PUBLIC", "USERS", "SSN"),          # globs ignore case
    ("public", "users", "id"),           # no rule
    (None, None, None),
)

_ALL = tuple(BUILTIN)
_HALF = len(_ALL) // 2
_USER = (DetectorConfig("ACCOUNT_NO", r"\bACCT[0-9]{8,19}\b", "luhn"),
         DetectorConfig("REF_CODE", r"\bRF[0-9]{2}[A-Z0-9]{4,20}\b", "mod97"))


def _engine(s0: str, s1: str, keep: int = 4, split: bool = True) -> MaskEngine:
    first = _ALL[:_HALF] + ("ACCOUNT_NO",) if split else _ALL + ("ACCOUNT_NO", "REF_CODE")
    second = _ALL[_HALF:] + ("REF_CODE",) if split else ()
    return MaskEngine([MaskConfig(columns=("public.users.ssn", "*.password"), detectors=first,
                                  strategy=s0, keep=keep),
                       MaskConfig(columns=("*.*secret*",), detectors=second, strategy=s1,
                                  keep=keep)],
                      _USER, hash_key=b"fuzz-key")


ENGINES = (
    _engine("redact", "partial", 2),
    _engine("partial", "hash", 4),
    _engine("hash", "format"),
    _engine("null", "redact"),
    _engine("format", "null", 0, split=False),
    _engine("partial", "partial", 0, split=False),
    MaskEngine([MaskConfig(columns=("*",), strategy="format")], hash_key=b"k"),  # all WHOLE
    MaskEngine([MaskConfig(columns=("x.y.z",))], hash_key=b"k"),                 # passthrough
)

PIECES = (
    b"a@b.io", b"john.doe+x@example.co.uk", b"4111111111111111", b"4111 1111 1111 1111",
    b"5500-0000-0000-0004", b"123-45-6789", b"123 45 6789", b"(415) 555-2671", b"+14155552671",
    b"415-555-2671", b"192.168.0.1", b"255.255.255.255", b"::1", b"2001:db8::ff00:42:8329",
    b"::ffff:10.0.0.1", b"DE89370400440532013000", b"GB82 WEST 1234 5698 7654 32",
    b"AKIAIOSFODNN7EXAMPLE", b"aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    b"ghp_" + b"a1B2" * 9, b"xoxb-1234567890-abcdef", b"api_key: 'Zx9_aB3-cD4.eF5+gH6'",
    b"token=abcdefghijklmnopQRSTUV123456", b"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.sig",
    b"-----BEGIN PRIVATE KEY-----\nMIIEvQ\n-----END PRIVATE KEY-----",
    b"-----BEGIN RSA PRIVATE KEY-----\\nMIIE", b"ACCT4111111111111111", b"RF18539007547034",
    b'{"k": "', b'"}', b'\\"', b"\\", b'"', b"'", b",", b"{", b"}", b"\\x", b"\\u00e9", b" ",
    b"\n", b"\t", b"@", b"-", b".", b":", b"\xc3\xa9", b"\xe2\x82\xac", b"\xf0\x9f\x98\x80",
    b"\xff", b"\x80", b"\xc3", b"\x00", b"\x01", b"0", b"9", b"A", b"z",
)

# Secrets every engine with detectors (ENGINES[:6]) must mask when one stands on a line of its
# own (a "\n" or the value's edge on both sides: no detector pattern reaches across a line
# break into it, so its own match is whole). Long enough that `format` (random letters and
# digits of the same shape) gives them back unchanged only with negligible probability.
SECRETS = (
    b"john.doe+x@example.co.uk", b"4111111111111111", b"5500-0000-0000-0004",
    b"4111 1111 1111 1111", b"123-45-6789", b"DE89370400440532013000",
    b"GB82 WEST 1234 5698 7654 32", b"AKIAIOSFODNN7EXAMPLE", b"ghp_" + b"a1B2" * 9,
    b"ACCT4111111111111111", b"RF18539007547034",
    b"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.sig", b"+14155552671",
    b"(415) 555-2671", b"2001:db8::ff00:42:8329", b"192.168.0.1", b"xoxb-1234567890-abcdef",
    b"aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
)


class Plan:
    """A RowPlan with what the harness expects of each column: (action, kind, the strategy of
    its rule or None)."""

    __slots__ = ("plan", "expect", "tails")

    def __init__(self, plan, expect, tails):
        self.plan = plan
        self.expect = expect
        self.tails = tails


_PLANS: dict = {}


def plan_for(engine: int, cols: tuple[int, ...]) -> Plan:
    key = (engine, cols)
    p = _PLANS.get(key)
    if p is None:
        eng = ENGINES[engine]
        columns = []
        for c in cols:
            oid, fmt = TYPES[c & 15]
            schema, table, column = SOURCES[(c >> 4) & 7]
            columns.append(Column(schema, table, column, oid, fmt))
        unresolved = eng.rules[0] if eng.rules and any(c >> 7 for c in cols) else None
        plan = row_plan(eng, columns, unresolved_rule=unresolved)
        expect = []
        for col, (_action, kind) in zip(columns, plan.actions()):
            # the kind (what the type and format allow) is the plan's; the action is decided
            # here from the rules and compared with the plan's in test_one_input
            rule = unresolved if col.column is None else \
                eng.column_rule(col.schema, col.table, col.column)
            if rule is not None:
                expect.append((ACT_WHOLE, kind, rule.strategy))
            elif eng.scanner is not None and kind != K_OPAQUE:
                expect.append((ACT_DETECT, kind, None))
            else:
                expect.append((ACT_PASS, kind, None))
        p = Plan(plan, expect, not any(r.strategy.name == "format" for r in eng.rules))
        if len(_PLANS) > 4096:
            _PLANS.clear()
        _PLANS[key] = p
    return p


def _json_text(masked: bytes | None) -> bytes:
    if masked is None:
        return b"null"
    return json.dumps(masked.decode("utf-8", "replace"), ensure_ascii=False).encode("utf-8")


def expected_whole(strategy, kind: int, value: bytes) -> bytes | None:
    """What a WHOLE column's non-NULL value must become (None: SQL NULL)."""
    if strategy.name == "null" or kind in (K_OTHER, K_INPLACE):
        return None     # a number, uuid or array cannot hold "****": NULL
    if kind == K_OPAQUE:
        # hex bytea: "format" would keep the \x... shape and reveal the length; redact
        return b"****" if strategy.name == "format" else strategy.whole(value)
    if kind == K_JSONB_BIN:
        return b"\x01" + _json_text(strategy.whole(value[1:]))   # version byte, then text
    if kind == K_JSON:
        return _json_text(strategy.whole(value))
    return strategy.whole(value)


def secrets_in(value: bytes, kind: int) -> list[tuple[bytes, int]]:
    """(secret, how many times it stands on a line of its own in value) for the SECRETS that
    do (binary jsonb: after its version byte, which the detectors do not see)."""
    lines = (value[1:] if kind == K_JSONB_BIN else value).split(b"\n")
    return [(s, lines.count(s)) for s in SECRETS if s in lines]


def check_masked(expect, before: bytes | None, after: bytes | None, tails: bool) -> None:
    """The properties of one column's value, given what the harness expects of the column.
    tails: the engine uses no `format` strategy, whose random letters and digits could give
    back a short tail of a secret by chance."""
    action, kind, strategy = expect
    if before is None:
        assert after is None, "a NULL value was replaced"
        return
    if action == ACT_PASS:
        assert after == before, "a pass-through column was changed"
        return
    if action == ACT_WHOLE:
        want = expected_whole(strategy, kind, before)
        assert not (after == before and want != before), (
            "a column under a masking rule came out in clear", strategy, before)
        assert after == want, ("a column under a masking rule was not masked as its strategy "
                               "says", strategy, before, after, want)
    if after is None:
        return
    for s, alone in secrets_in(before, kind):
        # the same text glued to other text elsewhere in the value may rightly stay (a card
        # number inside a longer number is no hit): only fewer copies than before may remain
        assert after.count(s) <= before.count(s) - alone, (
            "a detector hit came out in clear", s, before, after)
        if tails:
            # Nor its tail: a match of another detector that runs across the line break
            # (a PEM body, `token =`) and ends inside the secret may keep its own last
            # `keep` (<= 4) characters, but the rest of the secret must not stay in clear.
            t = s[4:]
            left = _occurrences(before, t) - alone * _occurrences(s, t)
            assert _occurrences(after, t) <= left, (
                "the rest of a detector hit came out in clear", s, before, after)


def _occurrences(hay: bytes, needle: bytes) -> int:
    """Occurrences of needle in hay, overlapping ones too (so that they add up per line)."""
    return sum(1 for i in range(len(hay) - len(needle) + 1) if hay.startswith(needle, i))


def datarow(values) -> bytes:
    body = struct.pack("!h", len(values))
    for v in values:
        body += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    return b"D" + struct.pack("!i", len(body) + 4) + body


def parse_datarow(msg: bytes):
    """The values of a well-formed DataRow, or None when it is not one."""
    if len(msg) < 7 or msg[0] != 0x44:
        return None
    if int.from_bytes(msg[1:5], "big") + 1 != len(msg):
        return None
    n = int.from_bytes(msg[5:7], "big")
    pos, out = 7, []
    for _ in range(n):
        if len(msg) - pos < 4:
            return None
        flen = int.from_bytes(msg[pos:pos + 4], "big", signed=True)
        pos += 4
        if flen == -1:
            out.append(None)
            continue
        if flen < 0 or flen > len(msg) - pos:
            return None
        out.append(msg[pos:pos + flen])
        pos += flen
    return out if pos == len(msg) else None


def _values(data: bytes, ncols: int, exact: bool, plant: int | None) -> list:
    out = []
    i = 0
    while i < len(data) and len(out) < ncols + (0 if exact else 1):
        b = data[i]
        i += 1
        if b == 0xFF:
            out.append(None)
            continue
        raw = data[i:i + (b & 63)]
        i += len(raw)
        v = b"".join(PIECES[c] if c < len(PIECES) else bytes((c,)) for c in raw)
        if plant is not None:
            v = v + b"\n" + SECRETS[(plant + len(out)) % len(SECRETS)] + b"\n" + v
        out.append(v)
    if exact:
        out += [b""] * (ncols - len(out))
    return out


def message_of(data: bytes):
    """(Plan, the message, how to hand it over) from the input."""
    engine = data[0] % len(ENGINES) if data else 0
    shape = data[1] if len(data) > 1 else 0
    ncols = (shape & 7) % 7
    cols = tuple(data[2:2 + ncols])
    cols += (0,) * (ncols - len(cols))
    rest = data[2 + ncols:]
    mode = rest[0] & 7 if rest else 0
    plant = rest[0] >> 4 if rest and rest[0] & 8 else None
    rest = rest[1:]
    if mode == 0:
        msg = rest
    elif mode == 1:
        msg = b"D" + rest
    elif mode == 2:
        msg = b"D" + struct.pack("!iH", len(rest) + 6, ncols) + rest
    else:
        # 3: exactly the plan's field count; 4-7: as many values as the bytes give, up to one
        # more than the plan has columns
        msg = datarow(_values(rest, ncols, mode == 3, plant))
    return plan_for(engine, cols), msg, (shape >> 3) & 3


def test_one_input(data: bytes) -> None:
    p, msg, how = message_of(data)
    plan = p.plan
    actions = plan.actions()
    assert [a for a, _ in actions] == [e[0] for e in p.expect], (
        "the plan's actions are not what the rules say", actions, p.expect)
    given = bytearray(msg) if how == 1 else memoryview(msg) if how == 2 else msg
    expect = parse_datarow(msg)
    if expect is not None and len(expect) != len(actions):
        expect = None
    try:
        plan.prescan_bytes(bytes(data))        # arbitrary bytes as a network read
        plan.prescan_clear()
        out = plan.rewrite(given)
    except MaskRowError as e:
        assert e.code in ("08P01", "54000"), e.code
        assert expect is None, ("a well-formed DataRow was refused", str(e))
        return
    assert expect is not None, "a malformed DataRow was accepted"
    counts = plan.take_counts()
    assert isinstance(counts, dict) and all(
        isinstance(k, str) and isinstance(v, int) and v > 0 for k, v in counts.items()), counts
    if out is None:
        got = expect        # None: nothing changed, the relay forwards the original bytes
    else:
        assert type(out) is bytes
        got = parse_datarow(out)
        assert got is not None, "the rewritten DataRow is not well formed"
        assert len(got) == len(expect), ("field count changed", len(got), len(expect))
    for col, before, after in zip(p.expect, expect, got):
        check_masked(col, before, after, p.tails)
    # the same message twice inside a whole read (the prescan takes reads of two rows or
    # more: one find pass, one span pass over the values it flagged): the same answer
    chunk = msg + msg + msg[: len(msg) // 2]
    assert plan.rewrite_chunk(chunk)[:2] == [out, out], "prescanned rewrite differs"


if __name__ == "__main__":
    fuzz(globals(), test_one_input, sys.argv)
