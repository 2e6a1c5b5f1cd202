"""The audit log's C encoder and chain (ext/hoopwire/_auditlog.pyx) against the definition they replace.

verify.py re-encodes every parsed line with orjson and hashes that, so a statement record
written by StatementEncoder must be byte-for-byte what `canonical()` gives for the same dict,
and a line made by chain() what `with_hash(canonical({..., seq, prev}), chain_hash(...))` gives.
"""

import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hoopwire._auditlog import (Pending, StatementEncoder, StatementLog, chain, json_ascii,
                                json_float, json_text, keep_literals, record_times)
from hoopwire._sqlnorm import mask_literals
from hoopwire.audit.log import GENESIS, canonical, chain_hash, pending_from, with_hash
from hoopwire.pg.adapter import rows_from_tags


def expected_line(rec: dict, seq: int, prev: str) -> bytes:
    body = canonical({**rec, "seq": seq, "prev": prev})
    return with_hash(body, chain_hash(prev, body)) + b"\n"


def statement_dict(raw, n, sid, gw, mask):
    started, ended, sql, tags, error, masked, kept = raw
    started, duration, ts = record_times(started, ended)
    return {"type": "statement", "session": sid, "n": n, "started": started,
            "statement": mask(sql or b""), "verdict": "allow",
            "tags": [t.decode("ascii", "replace") for t in tags], "rows": rows_from_tags(tags),
            "masked": masked, "duration_ms": duration, "ts": ts, "gw": gw}


def decode(sql: bytes) -> str:
    return sql.decode("utf-8", "replace")


def statement_log(sid, gw, calls=None, all_slow=False, mask=decode, limit=4096):
    def slow(raw, n):
        if calls is not None:
            calls.append(n)
        return statement_dict(raw, n, sid, gw, lambda sql: mask(sql[:limit]))
    return StatementLog(StatementEncoder(gw, mask, limit), sid, slow, pending_from, all_slow)


# decode: a Python masker (called with the GIL from the audit thread); mask_literals and
# keep_literals: the encoder's own C paths (lexer / text as sent), Python only for texts that
# are not valid UTF-8
MASKERS = [decode, mask_literals, keep_literals]


floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                   st.floats(min_value=1.0e9, max_value=2.5e9),
                   st.floats(min_value=4.2e9, max_value=4.3e9),   # around the 2**32 s limit
                   st.integers(0, 2**32).map(lambda us: us / 1e6),
                   st.floats(min_value=-1e3, max_value=1e6))
tags = st.lists(st.one_of(st.binary(max_size=24),
                          st.builds(lambda w, n: w + b" " + str(n).encode(),
                                    st.sampled_from([b"SELECT", b"INSERT 0", b"UPDATE", b"COPY"]),
                                    st.integers(0, 10**20))), max_size=4)
raws = st.tuples(floats, floats, st.one_of(st.none(), st.binary(max_size=64)), tags,
                 st.just(None), st.integers(0, 2**62), st.just(None))


@pytest.mark.parametrize("mask", MASKERS, ids=lambda m: m.__name__)
@settings(max_examples=300, deadline=None)
@given(st.lists(raws, min_size=1, max_size=5), st.text(max_size=12), st.text(max_size=12),
       st.integers(1, 2**40), st.integers(0, 5), st.sampled_from([8, 4096]))
def test_statement_records_are_canonical(mask, raw, sid, gw, seq, cut, limit):
    slog = statement_log(sid, gw, mask=mask, limit=limit)
    for r in raw:
        slog.add_raw(r)
    batch = slog.take()
    assert len(batch) == len(raw) and slog.take() is None
    prev = "ab" * 32
    # chained as the log does after a partial write: a single record, then the batch's rest
    cut = min(cut, len(raw))
    items = [batch[i] for i in range(cut)] + [batch.tail(cut)]
    lines = chain(items, seq - 1, prev)
    want = b""
    for i, r in enumerate(raw):
        rec = statement_dict(r, 1 + i, sid, gw, lambda sql: mask(sql[:limit]))
        line = expected_line(rec, seq + i, prev)
        prev = chain_hash(prev, line[:line.rindex(b',"hash":')] + b"}")
        want += line
    assert lines.data == want, (raw, sid, gw, seq)
    assert lines.hash(len(raw) - 1) == prev


def test_common_statements_take_the_c_path():
    calls = []
    slog = statement_log("s", "gw-1", calls)
    slog.add_raw((1764451234.25, 1764451234.2513, b"SELECT 1", [b"SELECT 1"], None, 0, None))
    slog.add_raw((1764451234.25, 1764451234.2513, b"SELECT 1", [b"SELECT 1"],
                  b"CXX000\0Mboom\0", 0, None))
    batch = slog.take()
    assert calls == [2]                   # only the one with an error went the dict way
    assert b'"duration_ms":1.3,' in batch[0].body
    assert b'"started":1764451234.25,' in batch[0].body
    assert b'"ts":1764451234.2513,' in batch[0].body
    assert slog.statements == 2 and slog.lost == 0


def test_index_mode_sends_everything_the_dict_way_and_failures_are_counted():
    calls = []
    slog = statement_log("s", "gw", calls, all_slow=True)
    raw = (1764451234.25, 1764451234.2513, b"SELECT 1", [b"SELECT 1"], None, 0, None)
    slog.add_raw(raw)
    assert calls == [1] and len(slog) == 1

    def broken(raw, n):
        raise RuntimeError("boom")
    slog = StatementLog(StatementEncoder("gw", decode), "s", broken, pending_from, True)
    slog.add_raw(raw)             # never raises into the relay
    assert slog.lost == 1 and slog.take() is None and slog.statements == 1

    def bad_masker(sql):
        raise ValueError("cannot mask")
    slog = StatementLog(StatementEncoder("gw", bad_masker), "s",
                        lambda r, n: statement_dict(r, n, "s", "gw", decode), pending_from)
    slog.add_raw(raw)             # the fast path fails half-way: the dict path takes over
    batch = slog.take()
    assert slog.lost == 0 and len(batch) == 1 and b'"statement":"SELECT 1"' in batch[0].body


@settings(deadline=None)  # no per-example time limit: a loaded machine stalls any example
@given(floats)
def test_floats_match_orjson(v):
    got = json_float(v)
    if got is not None:
        assert got == orjson.dumps(v)
    else:
        assert "e" in repr(v) or not math.isfinite(v)


@settings(deadline=None)  # no per-example time limit: a loaded machine stalls any example
@given(st.one_of(st.binary(max_size=40), st.text(max_size=20).map(lambda t: t.encode("utf-8",
                                                                               "surrogatepass"))))
def test_text_strings_match_orjson(b):
    """Valid UTF-8 is written as orjson writes the str it decodes to (what Python's strict
    decoder refuses is declined); tags get one U+FFFD per byte >= 0x80."""
    try:
        want = orjson.dumps(b.decode("utf-8"))
    except UnicodeDecodeError:
        want = None
    assert json_text(b, 1) == want
    assert json_text(b, 2) == orjson.dumps(b.decode("ascii", "replace"))


@settings(deadline=None)  # no per-example time limit: a loaded machine stalls any example
@given(st.binary(max_size=40))
def test_ascii_strings_match_orjson(b):
    got = json_ascii(b)
    if any(c >= 0x80 for c in b):
        assert got is None
    else:
        assert got == orjson.dumps(b.decode("ascii"))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=8), st.one_of(st.integers(-5, 5), st.text(max_size=6),
                                                       st.none(), st.floats(allow_nan=False)),
                       max_size=8),
       st.integers(0, 2**50))
def test_any_record_chains_like_canonical(rec, seq):
    rec = {k: v for k, v in rec.items() if k not in ("prev", "seq", "hash")}
    line = chain([pending_from(rec)], seq, GENESIS).data
    assert line == expected_line(rec, seq + 1, GENESIS)


def test_chain_bookkeeping():
    recs = [pending_from({"type": "x", "i": i, "ts": 10.0 + i}) for i in range(5)]
    recs.append(pending_from({"type": "no-ts"}))
    lines = chain(recs, 41, GENESIS)
    assert len(lines) == 6 and lines.seq(0) == 42 and lines.prev(0) == GENESIS
    assert lines.prev(3) == lines.hash(2)
    assert lines.start(6) == len(lines.data)
    one = lines.start(1)
    assert lines.fit(0, one) == 1 and lines.fit(0, 0) == 1 and lines.fit(0, 10**9) == 6
    assert lines.complete(0, one - 1) == 0 and lines.complete(0, one) == 1
    assert lines.last_ts(0, 6) == 14.0 and lines.last_ts(5, 6) is None
    with pytest.raises(IndexError):
        lines.hash(6)
    with pytest.raises(ValueError):
        chain(recs, 0, "short")
    with pytest.raises(ValueError):
        Pending(b"{}", 1, 2)
    with pytest.raises(TypeError):
        chain([b"not pending"], 0, GENESIS)


SQL_PIECES = [b"SELECT ", b"a", b" FROM t WHERE x = ", b"42", b"'it''s'", b"E'\\n\\t'", b"$$body$$",
              b"-- c\n", b"/* c */", b"\"Q\"", b"\xc3\xa9", b"\xff", b"\x01", b"\t", b"\\", b"\"",
              b";", b" ", b"1.5e3", b"$1", b"U&'d\\0061t'", b"\n"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.sampled_from(SQL_PIECES), max_size=12).map(b"".join),
                min_size=1, max_size=8),
       st.integers(0, 3), st.sampled_from([8, 64, 4096]))
def test_statement_text_through_the_lexer_is_what_mask_literals_gives(sqls, repeat, limit):
    """With sqlnorm's mask_literals as the masker the encoder runs the lexer itself and escapes
    the result in C (non-ASCII results go the general way): byte for byte the record orjson
    writes for mask_literals' text, for new texts, texts seen again (cached), cut ones."""
    from hoopwire._sqlnorm import mask_literals
    slog = StatementLog(StatementEncoder("gw", mask_literals, limit), "s", None, pending_from)
    texts = [s for s in sqls for _ in range(1 + repeat)]
    raw = [(1764451234.25, 1764451234.2513, s, [b"SELECT 1"], None, 0, None) for s in texts]
    for r in raw:
        slog.add_raw(r)
    lines = chain([slog.take()], 0, GENESIS)
    prev, want = GENESIS, b""
    for i, r in enumerate(raw):
        line = expected_line(statement_dict(r, 1 + i, "s", "gw",
                                            lambda sql: mask_literals(sql[:limit])), 1 + i, prev)
        prev = chain_hash(prev, line[:line.rindex(b',"hash":')] + b"}")
        want += line
    assert lines.data == want


def test_raw_statements_become_json_in_chain_and_keep_their_order():
    """The relay's statements are only copied into the log; chain() writes their JSON, between
    records that were already encoded (errors go the dict way at once), in the order added."""
    calls = []
    slog = statement_log("s", "gw", calls, mask=mask_literals)
    ok = (1764451234.25, 1764451234.2513, b"SELECT * FROM t WHERE id = 42", [b"SELECT 1"], None,
          0, None)
    err = (1764451234.25, 1764451234.2513, b"SELECT 1/0", [], b"C22012\0Mdivision by zero\0", 0,
           None)
    for r in (ok, err, ok, ok):
        slog.add_raw(r)
    assert calls == [2]
    batch = slog.take()
    assert len(batch) == 4
    lines = chain([batch], 0, GENESIS).data.splitlines()
    recs = [orjson.loads(line) for line in lines]
    assert [r["n"] for r in recs] == [1, 2, 3, 4]
    assert recs[0]["statement"] == "SELECT * FROM t WHERE id = ?" == recs[3]["statement"]
    assert recs[1]["statement"] == "SELECT ?/?"


def test_a_raw_statement_the_dict_path_cannot_write_is_counted_lost():
    def broken(raw, n):
        raise RuntimeError("boom")
    slog = StatementLog(StatementEncoder("gw", mask_literals), "s", broken, pending_from)
    slog.add_raw((1764451234.25, 1764451234.2513, b"SELECT 1", [b"SELECT 1"], None, 0, None))
    slog.add_raw((float("nan"), 1.0, b"SELECT 2", [b"SELECT 1"], None, 0, None))  # dict path
    slog.add_raw((1764451234.25, 1764451234.2513, b"SELECT 3", [b"SELECT 1"], None, 0, None))
    batch = slog.take()
    assert slog.lost == 0                 # found out when the audit thread writes the batch
    lines = chain([batch], 0, GENESIS)
    assert len(lines) == 2 and slog.lost == 1
    assert [orjson.loads(x)["n"] for x in lines.data.splitlines()] == [1, 3]


def test_encoding_from_two_threads_shares_the_text_cache_safely():
    """One encoder for all sessions; its text cache belongs to whichever thread holds its lock."""
    import threading
    enc = StatementEncoder("gw", mask_literals)
    texts = [f"SELECT {i % 7} FROM t{i % 5}".encode() for i in range(300)]
    results, errors = {}, []

    def run(name):
        try:
            out = []
            for round_ in range(20):
                slog = StatementLog(enc, name, None, pending_from)
                for t in texts:
                    slog.add_raw((1764451234.25, 1764451234.2513, t, [b"SELECT 1"], None, 0, None))
                out.append(chain([slog.take()], 0, GENESIS).data)
            results[name] = out
        except Exception as e:  # noqa: BLE001
            errors.append(e)
    threads = [threading.Thread(target=run, args=(f"s{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for name, outs in results.items():
        assert len(set(outs)) == 1
        got = [orjson.loads(x)["statement"] for x in outs[0].splitlines()]
        assert got == [mask_literals(t) for t in texts]
