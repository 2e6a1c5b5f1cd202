#!/usr/bin/env python3
"""What column lineage (hoopwire/pg/lineage.py) costs per statement, without a server.

    python bench/lineage_cost.py            # 2,000 repetitions per statement
    python bench/lineage_cost.py -n 500

For a few statement shapes, over a catalog of 200 tables plus the masked one and a view over it
(a Catalog filled in memory, as a catalog read would fill it):

- `first sight`: ConnectionMasking.lineage on a text it has not seen: normalise, parse with
  pglast, follow every output (views parsed too, once per statement);
- `new literal`: the same statement with another string literal -- another raw text, the same
  normalised one (hoopwire._sqlnorm folds string literals, comments, case and spacing; numbers
  stay): normalise + one dict lookup;
- `cache hit`: the same text again: one dict lookup on the raw text.

Figures are medians in microseconds. A first sight happens once per statement text per catalog
read (the caches are dropped when the catalog is read again, at most every 60 s or after DDL).
"""

from __future__ import annotations

import argparse
import statistics
import time

from hoopwire.masking.engine import MaskEngine
from hoopwire.pg.catalog import Catalog, _relations
from hoopwire.pg.masker import ConnectionMasking

STATEMENTS = {
    "plain": "SELECT id, name, ssn FROM public.users WHERE name = '{n}'",
    "expressions": "SELECT upper(ssn), count(*), length(name) FROM public.users "
                   "WHERE name > '{n}' GROUP BY 1, 3",
    "join+cte": "WITH x AS (SELECT id, ssn FROM public.users) SELECT x.ssn || o.note, o.total "
                "FROM x JOIN public.t17 o ON o.id = x.id WHERE o.note > '{n}'",
    "union+view": "SELECT s FROM public.user_view WHERE s = '{n}' UNION ALL "
                  "SELECT name FROM public.users",
    "orm-ish": "SELECT u.id AS u_id, u.name AS u_name, u.ssn AS u_ssn, t.id AS t_id, "
               "t.total AS t_total FROM public.users AS u LEFT OUTER JOIN public.t3 AS t "
               "ON t.id = u.id WHERE u.name IN ('{n}', 'b') ORDER BY u.id LIMIT 50",
}


def _catalog() -> Catalog:
    cat = Catalog(lambda: None, database="d")
    rows = [("16384", "public", "users", "r", "1", "id", "23"),
            ("16384", "public", "users", "r", "2", "name", "25"),
            ("16384", "public", "users", "r", "3", "ssn", "25"),
            ("16390", "public", "user_view", "v", "1", "id", "23"),
            ("16390", "public", "user_view", "v", "2", "s", "25")]
    for i in range(200):
        oid = str(17000 + i)
        rows += [(oid, "public", f"t{i}", "r", "1", "id", "23"),
                 (oid, "public", f"t{i}", "r", "2", "total", "23"),
                 (oid, "public", f"t{i}", "r", "3", "note", "25")]
    cat.relations = _relations(rows)
    cat.view_defs = {16390: " SELECT users.id,\n    lower(users.ssn) AS s\n   FROM users;"}
    return cat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=2000, help="repetitions per statement")
    args = ap.parse_args()
    conn = ConnectionMasking(_engine(), unresolved="mask", binary_copy="mask", connect=None,
                             connection="bench")
    conn.catalogs["d"] = _catalog()
    print(f"{'statement':12} {'first sight us':>15} {'new literal us':>15} {'cache hit us':>13}")
    for name, template in STATEMENTS.items():
        first, literal, hit = [], [], []
        for i in range(args.n):
            sql = template.format(n=i).encode()
            conn._lineage.clear()
            conn._lineage_raw.clear()
            t0 = time.perf_counter_ns()
            got = conn.lineage("d", sql)
            t1 = time.perf_counter_ns()
            assert got is not None, name
            other = template.format(n=i + 1_000_000).encode()
            conn.lineage("d", other)
            t2 = time.perf_counter_ns()
            conn.lineage("d", sql)
            t3 = time.perf_counter_ns()
            first.append(t1 - t0)
            literal.append(t2 - t1)
            hit.append(t3 - t2)
        print(f"{name:12} {statistics.median(first) / 1000:15.1f} "
              f"{statistics.median(literal) / 1000:15.1f} {statistics.median(hit) / 1000:13.2f}")


def _engine() -> MaskEngine:
    from hoopwire.config import MaskConfig
    return MaskEngine((MaskConfig(columns=("public.users.ssn",), strategy="redact"),), ())


if __name__ == "__main__":
    main()
