"""PostgreSQL result tracking (ext/hoopwire/pg/_results.pxi) driven in-process through the
relay (_relay.pxi), without a socket or a server: tests/relaywire.py gives the relay two
recording transports, the test plays client and server with real protocol bytes.

Every scenario runs with masking (the real MaskEngine, a column rule on public.users.ssn) and
recording on, and again with recording only (the relay's `light` path, _follow, which reads
the same stream without the framer), fed whole, cut at every single split point of every
read, and cut at many random points at once (hypothesis). Each run must give the same bytes to
each side and the same statement records. A generated family of pipelines (statements that
return rows, fail, or are skipped after a failure) checks the error-skip to ReadyForQuery.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relaywire import (BIND_COMPLETE, COPY_DONE, PARSE_COMPLETE, PORTAL_SUSPENDED, USERS_OID,
                       Wire, bind, complete, copy_data, copy_out_response, data_row, describe,
                       error, execute, parameter_description, parse, query, ready,
                       row_description, split_messages, sync)

SSNS = {1: b"123-45-6789", 2: b"987-65-4321", 3: b"555-12-3456", 4: b"111-22-3333"}
MASKED = b"****"                  # redact of a text value
USERS = [(b"id", USERS_OID, 1, 23), (b"ssn", USERS_OID, 2, 25)]
EXPR = [(b"?column?", 0, 0, 23)]  # a computed column: no table behind it
SEL = b"select id, ssn from users"


class Ours:
    """The server's answer to a Describe the relay added before an Execute (masking only):
    swallowed, the client never sees it."""

    def __init__(self, data: bytes):
        self.data = data


class Row:
    """A users row: the ssn is masked on the way to the client."""

    def __init__(self, i: int):
        self.i = i


class Line:
    """A users COPY line (text format)."""

    def __init__(self, i: int):
        self.i = i


def server_bytes(pieces, masking: bool) -> bytes:
    out = b""
    for p in pieces:
        if isinstance(p, Ours):
            out += p.data if masking else b""
        elif isinstance(p, Row):
            out += data_row([str(p.i).encode(), SSNS[p.i]])
        elif isinstance(p, Line):
            out += copy_data(str(p.i).encode() + b"\t" + SSNS[p.i] + b"\n")
        else:
            out += p
    return out


def client_bytes(pieces, masking: bool) -> bytes:
    out = b""
    for p in pieces:
        if isinstance(p, Ours):
            continue
        if isinstance(p, Row):
            out += data_row([str(p.i).encode(), MASKED if masking else SSNS[p.i]])
        elif isinstance(p, Line):
            out += copy_data(str(p.i).encode() + b"\t" + (MASKED if masking else SSNS[p.i]) + b"\n")
        else:
            out += p
    return out


DESC_OURS = describe(b"P")        # what the relay adds before an Execute nobody described


def scenario(rounds, records):
    """rounds: (client bytes, upstream bytes expected with masking, server pieces);
    records: (sql, tags, SQLSTATE, values masked) per statement, with masking."""
    return {"rounds": rounds, "records": records}


SCENARIOS = {
    "simple-query": scenario(
        [(query(SEL), query(SEL),
          [row_description(USERS), Row(1), Row(2), complete(b"SELECT 2"), ready()])],
        [(SEL, (b"SELECT 2",), None, 2)]),
    # psycopg's shape (Describe portal then Execute) and one nobody describes, one Sync
    "extended-pipeline": scenario(
        [(parse(SEL) + bind() + describe(b"P") + execute()
          + parse(SEL + b" where id = 2") + bind() + execute() + sync(),
          parse(SEL) + bind() + describe(b"P") + execute()
          + parse(SEL + b" where id = 2") + bind() + DESC_OURS + execute() + sync(),
          [PARSE_COMPLETE, BIND_COMPLETE, row_description(USERS), Row(1), complete(b"SELECT 1"),
           PARSE_COMPLETE, BIND_COMPLETE, Ours(row_description(USERS)), Row(2),
           complete(b"SELECT 1"), ready()])],
        [(SEL, (b"SELECT 1",), None, 1), (SEL + b" where id = 2", (b"SELECT 1",), None, 1)]),
    # asyncpg's shape: a named statement described once, then Bind/Execute per run
    "named-statement": scenario(
        [(parse(SEL, b"s1") + describe(b"S", b"s1") + sync(),
          parse(SEL, b"s1") + describe(b"S", b"s1") + sync(),
          [PARSE_COMPLETE, parameter_description(), row_description(USERS), ready()]),
         (bind(b"", b"s1") + execute() + sync(), bind(b"", b"s1") + DESC_OURS + execute() + sync(),
          [BIND_COMPLETE, Ours(row_description(USERS)), Row(3), Row(4), complete(b"SELECT 2"),
           ready()])],
        [(SEL, (b"SELECT 2",), None, 2)]),
    # the second statement fails: the server skips the third up to Sync; a Query after it runs
    "error-mid-pipeline": scenario(
        [(parse(SEL) + bind() + describe(b"P") + execute() + parse(b"select 1/0") + bind()
          + execute() + parse(SEL) + bind() + describe(b"P") + execute() + sync(),
          parse(SEL) + bind() + describe(b"P") + execute() + parse(b"select 1/0") + bind()
          + DESC_OURS + execute() + parse(SEL) + bind() + describe(b"P") + execute() + sync(),
          [PARSE_COMPLETE, BIND_COMPLETE, row_description(USERS), Row(1), complete(b"SELECT 1"),
           PARSE_COMPLETE, BIND_COMPLETE, Ours(row_description(EXPR)),
           error("22012", "division by zero"), ready()]),
         (query(SEL), query(SEL),
          [row_description(USERS), Row(2), complete(b"SELECT 1"), ready()])],
        [(SEL, (b"SELECT 1",), None, 1), (b"select 1/0", (), "22012", 0),
         (SEL, (b"SELECT 1",), None, 1)]),
    # an error after some rows of a multi-statement Query: the rest of it never runs
    "query-error-after-rows": scenario(
        [(query(SEL + b"; select 1/0; select 2"), query(SEL + b"; select 1/0; select 2"),
          [row_description(USERS), Row(1), Row(2), complete(b"SELECT 2"),
           row_description(EXPR), error("22012", "division by zero"), ready()])],
        [(SEL + b"; select 1/0; select 2", (b"SELECT 2",), "22012", 2)]),
    "copy-out": scenario(
        [(query(b"copy users (id, ssn) to stdout"), query(b"copy users (id, ssn) to stdout"),
          [copy_out_response(2), Line(1), Line(2), Line(3), COPY_DONE, complete(b"COPY 3"),
           ready()])],
        [(b"copy users (id, ssn) to stdout", (b"COPY 3",), None, 3)]),
    # a named portal read one row at a time inside a transaction (JDBC's fetch size)
    "portal-suspension": scenario(
        [(query(b"begin"), query(b"begin"), [complete(b"BEGIN"), ready(b"T")]),
         (parse(SEL) + bind(b"c1") + describe(b"P", b"c1") + execute(b"c1", 1) + sync(),
          parse(SEL) + bind(b"c1") + describe(b"P", b"c1") + execute(b"c1", 1) + sync(),
          [PARSE_COMPLETE, BIND_COMPLETE, row_description(USERS), Row(1), PORTAL_SUSPENDED,
           ready(b"T")]),
         (execute(b"c1", 1) + sync(), describe(b"P", b"c1") + execute(b"c1", 1) + sync(),
          [Ours(row_description(USERS)), Row(2), PORTAL_SUSPENDED, ready(b"T")]),
         (execute(b"c1", 0) + sync(), describe(b"P", b"c1") + execute(b"c1", 0) + sync(),
          [Ours(row_description(USERS)), complete(b"SELECT 0"), ready(b"T")]),
         (query(b"commit"), query(b"commit"), [complete(b"COMMIT"), ready()])],
        [(b"begin", (b"BEGIN",), None, 0), (SEL, (), None, 1), (SEL, (), None, 1),
         (SEL, (b"SELECT 0",), None, 0), (b"commit", (b"COMMIT",), None, 0)]),
}


def run(sc, masking: bool, cuts=None):
    """Play a scenario; cuts[(round, side)] = split points of that read. The bytes each side
    got per round, and the records."""
    w = Wire(mask=masking, record=True)
    up, down = [], []
    for r, (cbytes, _up, pieces) in enumerate(sc["rounds"]):
        for chunk in _cut(cbytes, (cuts or {}).get((r, "c"), ())):
            w.from_client(chunk)
        up.append(w.upstream.drain())
        for chunk in _cut(server_bytes(pieces, masking), (cuts or {}).get((r, "s"), ())):
            w.from_server(chunk)
        down.append(w.client.drain())
    assert not w.relay.is_closed, w.relay.close_reason
    return up, down, w.take_records()


def _cut(data: bytes, points) -> list[bytes]:
    points = sorted(set(p for p in points if 0 < p < len(data)))
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:])]


def expected(sc, masking: bool):
    up = [u if masking else c for c, u, _ in sc["rounds"]]
    down = [client_bytes(p, masking) for _, _, p in sc["rounds"]]
    recs = [(sql, tags, code, masked if masking else 0) for sql, tags, code, masked in sc["records"]]
    return up, down, recs


def check(sc, masking, got):
    up, down, recs = got
    assert up == expected(sc, masking)[0]
    assert down == expected(sc, masking)[1]
    assert recs == expected(sc, masking)[2]
    if masking:
        assert not any(ssn in b"".join(down) for ssn in SSNS.values())


@pytest.mark.parametrize("masking", [True, False], ids=["mask+record", "record"])
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_whole(name, masking):
    check(SCENARIOS[name], masking, run(SCENARIOS[name], masking))


def test_literal_masked_row():
    """One answer spelled out in full, not derived: the DataRow the client gets."""
    up, down, recs = run(SCENARIOS["simple-query"], True)
    msgs = split_messages(down[0])
    assert msgs[1] == b"D\x00\x00\x00\x13\x00\x02\x00\x00\x00\x011\x00\x00\x00\x04****"
    assert [m[:1] for m in msgs] == [b"T", b"D", b"D", b"C", b"Z"]


@pytest.mark.parametrize("masking", [True, False], ids=["mask+record", "record"])
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_split_point(name, masking):
    """Each read cut in two at every byte, one read at a time."""
    sc = SCENARIOS[name]
    runs = 0
    for r, (cbytes, _up, pieces) in enumerate(sc["rounds"]):
        for side, data in (("c", cbytes), ("s", server_bytes(pieces, masking))):
            for i in range(1, len(data)):
                check(sc, masking, run(sc, masking, {(r, side): (i,)}))
                runs += 1
    assert runs > 100


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(SCENARIOS)), st.booleans(), st.data())
def test_random_cuts(name, masking, data):
    """Many cuts at once in every read (down to one byte per read)."""
    sc = SCENARIOS[name]
    cuts = {}
    for r, (cbytes, _up, pieces) in enumerate(sc["rounds"]):
        for side, n in (("c", len(cbytes)), ("s", len(server_bytes(pieces, masking)))):
            cuts[(r, side)] = data.draw(st.lists(st.integers(1, max(1, n - 1)), max_size=n))
    check(sc, masking, run(sc, masking, cuts))


# -- generated pipelines: rows, failures and what the server skips after one -------------------

stmt = st.tuples(st.sampled_from(["rows", "fail"]), st.integers(0, 3), st.booleans())


@settings(max_examples=200, deadline=None)
@given(st.lists(stmt, min_size=1, max_size=6), st.booleans(), st.data())
def test_generated_pipeline(stmts, masking, data):
    """One Sync after N statements: each returns rows or fails; once one fails the server
    answers nothing more before ReadyForQuery. Each statement the client describes itself or
    not (then the relay describes it, with masking). Cut anywhere."""
    cbytes, up, pieces, recs = b"", b"", [], []
    failed = False
    for k, (what, nrows, described) in enumerate(stmts):
        sql = SEL + b" limit %d" % nrows if what == "rows" else b"select %d/0" % k
        msg = parse(sql) + bind() + (describe(b"P") if described else b"")
        cbytes += msg + execute()
        up += msg + (b"" if described or not masking else DESC_OURS) + execute()
        if failed:
            continue                    # skipped by the server: no answer, no record
        pieces += [PARSE_COMPLETE, BIND_COMPLETE]
        desc = row_description(USERS if what == "rows" else EXPR)
        pieces.append(desc if described else Ours(desc))
        if what == "rows":
            pieces += [Row(1 + i % 4) for i in range(nrows)] + [complete(b"SELECT %d" % nrows)]
            recs.append((sql, (b"SELECT %d" % nrows,), None, nrows if masking else 0))
        else:
            pieces.append(error("22012", "division by zero"))
            recs.append((sql, (), "22012", 0))
            failed = True
    cbytes += sync()
    up += sync()
    pieces.append(ready())
    sbytes = server_bytes(pieces, masking)
    cuts = {(0, "c"): data.draw(st.lists(st.integers(1, len(cbytes)), max_size=8)),
            (0, "s"): data.draw(st.lists(st.integers(1, len(sbytes)), max_size=8))}
    sc = scenario([(cbytes, up, pieces)], recs)
    got = run(sc, masking, cuts)
    check(sc, masking, got)
    # and again after it: the session is in step (a Query's answer is its own)
    assert split_messages(got[1][0])[-1] == ready()


# -- one module builds PostgreSQL messages on the Python side ----------------------------------

def test_message_builders_live_in_messages_py():
    """A PostgreSQL header (type byte + int32 length, or an untyped packet's length) packed by
    hand anywhere in hoopwire/ but hoopwire/pg/messages.py: a second builder to keep right."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parent.parent / "hoopwire"
    header = re.compile(r'struct\.pack\(\s*"!I{1,4}"|\.to_bytes\(\s*4\s*,\s*"big"\s*\)|'
                        r'b"[A-Za-z0-9]"\s*\+\s*struct\.pack')
    found = []
    for path in root.rglob("*.py"):
        if path == root / "pg" / "messages.py":
            continue
        for no, line in enumerate(path.read_text().splitlines(), 1):
            if header.search(line):
                found.append(f"{path.relative_to(root.parent)}:{no}: {line.strip()}")
    assert not found, "\n".join(found)
