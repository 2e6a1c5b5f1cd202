"""Which words of a server's ErrorResponse or NoticeResponse may reach a client while column
rules apply: an allow-list of message shapes that carry no data, and a generic text for the rest.

Scrubbing by SQLSTATE class missed most leaks: `SELECT ssn::regclass FROM users` answers
42P01 `relation "123-45-6789" does not exist`, `current_setting(ssn)` 42704, `ssn::regtype`
42601 `syntax error at or near "123"` (with a cursor position, and the value again in the
context), `xmlparse(document ssn)` 2200M with the text in the detail, a `RAISE` P0001 or 00000
with whatever the function put there. So the message is withheld unless its shape is known:

* shapes whose quoted words come from the catalog (constraint, table and column names) or are
  fixed text: `division by zero`, `duplicate key value violates unique constraint "users_pkey"`,
  `permission denied for table users`, a cancelled statement. Their detail is withheld, except
  the key of a `Key (cols)=(values)` detail, which keeps its column list and loses its values.
* shapes that echo a name the client wrote -- `relation "x" does not exist`, `syntax error at
  or near "x"`, `column "x" does not exist`: only when every quoted name is in the statement's
  own text, the message came from no function or dynamic SQL (no context, no internal query),
  and, for an error, the server points at the statement (a cursor position). Each of these
  alone lets `ssn::regtype` or `nextval(ssn)` through; together they do not.

What passes still goes through the detectors (masker.SessionMasker.fields). The fields that
name catalog objects (schema, table, column, data type, constraint) are kept: the server fills
them from the catalog, never from a value, and drivers and ORMs map errors by constraint name.
The context keeps only the lines that name a function and a line number (PL/pgSQL, SQL
functions); `SQL statement "..."` lines carry dynamic SQL built from values and are dropped.
The internal query and its position are always dropped: that text is built at run time.
"""

from __future__ import annotations

import re
from typing import Optional

__all__ = ["scrub", "withheld_text", "KEPT_FIELDS"]

# severity, non-localized severity, code, cursor position, schema, table, column, data type,
# constraint, source file, line, routine. Any other field -- M D H W q p and codes a later
# server may add -- is rewritten or dropped.
KEPT_FIELDS = frozenset(b"SVCPstcdnFLR")

ANY, NAMES = 0, 1           # where a shape's quoted words come from: the catalog, the statement
DETAIL_DROP, DETAIL_KEY = 0, 1


def _shape(code: str, pattern: str, source: int = ANY, detail: int = DETAIL_DROP,
           needs_position: bool = True):
    return code.encode(), re.compile(pattern.encode(), re.S), source, detail, needs_position


# (SQLSTATE, message, source of its quoted words, detail treatment, an error needs P)
_SHAPES = [
    _shape("22012", r"division by zero"),
    _shape("42501", r"permission denied for (?:table|sequence|view|materialized view|schema|"
                    r"function|procedure|routine|database|foreign table|type|language|column|"
                    r"relation|tablespace|foreign-data wrapper|foreign server) [^\n]+"),
    _shape("23505", r'duplicate key value violates unique constraint "[^"\n]*"',
           detail=DETAIL_KEY),
    _shape("23503", r'(?:insert or update|update or delete) on table "[^"\n]*" violates foreign '
                    r'key constraint "[^"\n]*"(?: on table "[^"\n]*")?', detail=DETAIL_KEY),
    _shape("23502", r'null value in column "[^"\n]*"(?: of relation "[^"\n]*")? violates '
                    r'not-null constraint'),
    _shape("23514", r'new row for relation "[^"\n]*" violates check constraint "[^"\n]*"'),
    _shape("23P01", r'conflicting key value violates exclusion constraint "[^"\n]*"',
           detail=DETAIL_KEY),
    _shape("25P02", r"current transaction is aborted, commands ignored until end of "
                    r"transaction block"),
    _shape("25P01", r"there is no transaction in progress"),
    _shape("25001", r"there is already a transaction in progress"),
    _shape("25006", r"cannot execute [A-Z ]+ in a read-only transaction"),
    _shape("57014", r"canceling statement due to (?:statement timeout|user request|lock timeout)"),
    _shape("57P01", r"terminating connection due to administrator command"),
    _shape("25P03", r"terminating connection due to idle-in-transaction timeout"),
    _shape("40001", r"could not serialize access due to (?:concurrent update|concurrent delete|"
                    r"read/write dependencies among transactions)"),
    _shape("40P01", r"deadlock detected"),
    _shape("55P03", r'could not obtain lock on (?:row in )?relation "[^"\n]*"'),
    _shape("42P07", r'relation "[^"\n]*" already exists(?:, skipping)?'),
    _shape("42P06", r'schema "[^"\n]*" already exists(?:, skipping)?'),
    _shape("00000", r"drop cascades to \d+ other objects?"),
    # names the client wrote
    _shape("42601", r'syntax error at or near "([^\n]*)"', NAMES),
    _shape("42601", r"syntax error at end of input", NAMES),
    _shape("42P01", r'relation "([^"\n]*)" does not exist', NAMES),
    _shape("42P01", r'missing FROM-clause entry for table "([^"\n]*)"', NAMES),
    _shape("42P01", r'invalid reference to FROM-clause entry for table "([^"\n]*)"', NAMES),
    _shape("42703", r'column "([^"\n]*)" does not exist', NAMES),
    _shape("42703", r'column "([^"\n]*)" of relation "([^"\n]*)" does not exist', NAMES),
    _shape("42703", r"column ([A-Za-z_][\w$]*)\.([A-Za-z_][\w$]*) does not exist", NAMES),
    _shape("42883", r"function ([A-Za-z_][\w$.]*)\([\w ,.\[\]\"]*\) does not exist", NAMES),
    _shape("42883", r"operator does not exist: [\w .\[\]\"]+ [^\w\s\"]+ [\w .\[\]\"]+", NAMES),
    _shape("42704", r'type "([^"\n]*)" does not exist', NAMES),
    _shape("3F000", r'schema "([^"\n]*)" does not exist', NAMES),
    _shape("42702", r'column reference "([^"\n]*)" is ambiguous', NAMES),
    _shape("26000", r'prepared statement "([^"\n]*)" does not exist', NAMES,
           needs_position=False),
    _shape("34000", r'cursor "([^"\n]*)" does not exist', NAMES, needs_position=False),
    _shape("42P05", r'prepared statement "([^"\n]*)" already exists', NAMES, needs_position=False),
    _shape("00000", r'(?:table|view|index|sequence|schema|type|function|materialized view|'
                    r'extension|trigger|rule|policy|role|database) "([^"\n]*)" does not exist, '
                    r'skipping', NAMES),
]
_BY_CODE: dict[bytes, list] = {}
for _s in _SHAPES:
    _BY_CODE.setdefault(_s[0], []).append(_s)

# Hints of fixed text, or naming catalog columns of a statement the server pointed at
_HINTS = re.compile(
    rb"(?:No (?:function|operator) matches the given name and argument types\. You might need to "
    rb"add explicit type casts\.|Could not choose a best candidate (?:function|operator)\. You "
    rb'might need to add explicit type casts\.|Perhaps you meant to reference the column "[^"\n]*"'
    rb'(?: or the column "[^"\n]*")?\.|Perhaps you meant to reference the table alias "[^"\n]*"\.|'
    rb'There is (?:a column named "[^"\n]*" in table|an entry for table) "[^"\n]*", but it cannot '
    rb"be referenced from this part of the query\.|To call a procedure, use CALL\.)")

# Context lines that name where, never what: a function (its signature: names and types) and a
# line, or an SQL function's statement number
_CONTEXT_LINE = re.compile(
    rb"PL/pgSQL function [^\n]*? (?:line \d+ at [A-Za-z /]+|during [a-z ]+)|"
    rb'SQL function "[^"\n]*"(?: statement \d+| during (?:startup|inlining))?')

_KEY = re.compile(rb"Key \(([^\n]*?)\)=\(")
_KEY_TAIL = re.compile(rb'\) (already exists|is not present in table "[^"\n]*"|is still '
                       rb'referenced from table "[^"\n]*"|conflicts with existing key)')


def withheld_text(kind: bytes, code: bytes) -> bytes:
    what = b"error" if kind == b"E" else b"notice"
    return what + b" text withheld by hoopwire masking (SQLSTATE " + code + b")"


def _key_detail(value: bytes) -> Optional[bytes]:
    """`Key (cols)=(values) already exists.` and its kin with the values withheld; None when
    the detail has another shape."""
    mt = _KEY.match(value)
    if mt is None:
        return None
    cols = mt.group(1)
    tail = None
    for t in _KEY_TAIL.finditer(value, mt.end()):
        tail = t                     # the last one: a value may hold such words too
    if tail is None:
        return None
    out = b"Key (" + cols + b")=(****) " + tail.group(1)
    if tail.group(1) == b"conflicts with existing key":
        out += b" (" + cols + b")=(****)"
    return out + b"."


def _names_in(sql: Optional[bytes], names) -> bool:
    """Every name (maybe dotted) appears in the statement's text: the client wrote it."""
    if sql is None:
        return False
    low = sql.lower()
    for name in names:
        for part in name.split(b"."):
            if part and part.lower() not in low:
                return False
    return True


def _context(value: bytes) -> Optional[bytes]:
    lines = [ln for ln in value.split(b"\n") if _CONTEXT_LINE.fullmatch(ln)]
    return b"\n".join(lines) if lines else None


def scrub(kind: bytes, by: dict, sql: Optional[bytes]) -> dict:
    """The fields (code -> value) an ErrorResponse (kind b"E") or NoticeResponse (b"N") with
    fields `by` may carry to the client, answering the statement `sql` (None: not known).
    Returns a new dict; M is always there."""
    code = by.get(b"C", b"XX000")
    msg = by.get(b"M", b"")
    own_text = b"W" not in by and b"q" not in by and b"p" not in by
    shape = None
    for s in _BY_CODE.get(code, ()):
        _c, pattern, source, _detail, needs_position = s
        mt = pattern.fullmatch(msg)
        if mt is None:
            continue
        if source == NAMES and not (own_text and _names_in(sql, mt.groups()) and
                                    (kind != b"E" or not needs_position or b"P" in by)):
            continue
        shape = s
        break
    out = {k: v for k, v in by.items() if k[0] in KEPT_FIELDS}
    if shape is None:
        out[b"M"] = withheld_text(kind, code)
        return out
    out[b"M"] = msg
    if b"D" in by and shape[3] == DETAIL_KEY:
        d = _key_detail(by[b"D"])
        if d is not None:
            out[b"D"] = d
    if b"H" in by and _HINTS.fullmatch(by[b"H"]):
        out[b"H"] = by[b"H"]
    if b"W" in by:
        w = _context(by[b"W"])
        if w is not None:
            out[b"W"] = w
    return out
