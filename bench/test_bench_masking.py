"""Row rewriter cost: DataRows of realistic PII through DataRowPlan.rewrite (hoopwire.pg._wire).

    python -m pytest bench/test_bench_masking.py --benchmark-only -q -p no:cacheprovider -s

Rows are ~200 bytes: id, name, email, phone, city, a free-text note, created_at (7 text-format
columns). Every column but id is ACT_DETECT with all 14 built-in detectors (one Hyperscan pass 1
per row, pass 2 only over the values it flags), plus one column rule (`*.ssn`) on an 8th column in
the "rule" case. Three mixes: 0% of the values hold a detector hit, 10%, 100%. Each benchmark
rewrites 2,000 rows per round and reports rows/s and MB/s (of DataRow bytes) in extra_info, from
the fastest round; a table is printed at the end (use -s to see it).
"""

from __future__ import annotations

import random
import struct

import pytest

from hoopwire.config import MaskConfig
from hoopwire.masking import BUILTIN, MaskEngine
from hoopwire.pg._wire import DataRowPlan
from hoopwire.pg.kinds import PgColumn as Column, to_column

N = 2000
TEXT = 25
RESULTS: dict[str, tuple[float, float, float]] = {}

FIRST = ["Ana", "Bjorn", "Chen", "Dara", "Elif", "Farid", "Grace", "Hiro", "Ines", "Jonas"]
LAST = ["Moreau", "Okafor", "Lindqvist", "Tanaka", "Silva", "Novak", "Haddad", "Kowalski"]
CITIES = ["Lisbon", "Osaka", "Nairobi", "Toronto", "Krakow", "Valparaiso", "Tampere"]
NOTES_CLEAN = ["customer asked about the delivery window for order {n}, resolved",
               "prefers contact in the afternoon; loyalty tier gold since {n}",
               "ticket {n}: invoice address updated after the move, no further action",
               "called twice about the refund of order {n}; escalated to billing team"]
NOTES_PII = ["card on file 4111 1111 1111 1111 expires soon, ticket {n}",
             "asked to use backup mail ana.{n}@example.org and api_key=sk_live_{n}a9F3kq2Lx7",
             "reach at +44 20 7946 0958; SSN 123-45-6789 on the form {n}"]


def _datarow(values):
    body = struct.pack("!h", len(values))
    for v in values:
        body += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    return b"D" + struct.pack("!i", len(body) + 4) + body


def _row(rnd: random.Random, i: int, pii_share: float) -> list[bytes]:
    def pick(clean, dirty):
        return dirty if rnd.random() < pii_share else clean
    first, last = rnd.choice(FIRST), rnd.choice(LAST)
    return [
        str(i).encode(),
        f"{first} {last}".encode(),
        pick(f"{first.lower()} {last.lower()} (no mail)", f"{first.lower()}.{last.lower()}{i}@example.com").encode(),
        pick(f"ext {rnd.randint(100, 999)} desk", f"+1 415 555 {rnd.randint(1000, 9999)}").encode(),
        pick(rnd.choice(CITIES), f"{rnd.choice(CITIES)} 10.{i % 250}.{i % 7}.{i % 200}").encode(),
        pick(rnd.choice(NOTES_CLEAN), rnd.choice(NOTES_PII)).format(n=100000 + i).encode(),
        f"2024-{1 + i % 12:02d}-{1 + i % 28:02d} 12:{i % 60:02d}:07.{i % 1000:03d}+00".encode(),
    ]


def _plan(eng, cols):
    return eng.row_plan([to_column(c) for c in cols], plan_type=DataRowPlan)


COLS = [Column("public", "customers", c, TEXT, 0)
        for c in ("id", "name", "email", "phone", "city", "note", "created_at")]


@pytest.fixture(scope="module")
def engine():
    return MaskEngine([MaskConfig(columns=("*.ssn",), detectors=tuple(BUILTIN), strategy="partial")],
                      hash_key=b"bench-key")


def _rows(pii_share: float, seed: int = 7) -> list[bytes]:
    rnd = random.Random(seed)
    return [_datarow(_row(rnd, i, pii_share)) for i in range(N)]


def _run(benchmark, plan, rows, label):
    rewrite = plan.rewrite

    def go():
        for r in rows:
            rewrite(r)

    benchmark.pedantic(go, rounds=15, iterations=1, warmup_rounds=2)
    best = benchmark.stats.stats.min
    nbytes = sum(map(len, rows))
    rps = len(rows) / best
    mbs = nbytes / best / 1e6
    benchmark.extra_info.update(rows_per_s=round(rps), mb_per_s=round(mbs, 1),
                                mean_row_bytes=round(nbytes / len(rows)),
                                rewritten=plan.rows_rewritten, seen=plan.rows_seen)
    RESULTS[label] = (rps, mbs, nbytes / len(rows))


@pytest.mark.parametrize("share", [0.0, 0.1, 1.0], ids=["0pct", "10pct", "100pct"])
def test_rewrite_detect(benchmark, engine, share):
    plan = _plan(engine, COLS)
    _run(benchmark, plan, _rows(share), f"detect {int(share * 100)}% hits")


def test_rewrite_column_rule_only(benchmark):
    eng = MaskEngine([MaskConfig(columns=("*.ssn",), strategy="redact")], hash_key=b"k")
    plan = _plan(eng, COLS + [Column("public", "customers", "ssn", TEXT, 0)])
    rows = [_datarow(_row(random.Random(i), i, 0.0) + [b"123-45-6789"]) for i in range(N)]
    _run(benchmark, plan, rows, "column rule only (every row rewritten)")


def test_passthrough_plan(benchmark):
    eng = MaskEngine([MaskConfig(columns=("*.ssn",), strategy="redact")], hash_key=b"k")
    plan = _plan(eng, COLS)
    _run(benchmark, plan, _rows(0.0), "no rule applies (walk only)")


def teardown_module(module):
    if RESULTS:
        print("\n\nrow rewriter (fastest round)")
        print(f"{'case':42} {'rows/s':>12} {'MB/s':>8} {'B/row':>6}")
        for label, (rps, mbs, size) in RESULTS.items():
            print(f"{label:42} {rps:12,.0f} {mbs:8.1f} {size:6.0f}")
