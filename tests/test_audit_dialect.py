"""The audit encoder masks statement texts with the session dialect's lexer in C, through the
function pointer the dialect hands out (ext/hoopwire/core/dialect.pxd), without cimporting any
dialect: a masker that carries a `c_dialect` capsule is run in C, any other is called in Python.
"""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from hoopwire._auditlog import StatementEncoder, StatementLog, chain, keep_literals
from hoopwire._sqlnorm import mask_literals
from hoopwire.audit.log import GENESIS, pending_from

SQL = st.lists(st.sampled_from([b"select ", b"'x'", b"42", b" from t where a = ", b"$1", b"--c\n",
                                b"E'a\\'b'", b"$$body$$", b"\"Q\"", b"; ", b"1.5e3"]),
               max_size=10).map(b"".join)


def recorded_texts(masker, sqls, limit=4096):
    """The "statement" of every record a StatementLog with this masker writes in chain()."""
    import orjson
    slog = StatementLog(StatementEncoder("gw", masker, limit), "s", None, pending_from)
    for s in sqls:
        slog.add_raw((1764451234.25, 1764451234.2513, s, [b"SELECT 1"], None, 0, None))
    lines = chain([slog.take()], 0, GENESIS).data.splitlines()
    return [orjson.loads(line)["statement"] for line in lines]


def test_the_postgres_lexer_is_found_through_its_capsule():
    assert StatementEncoder("gw", mask_literals).c_dialect == "postgres"
    assert StatementEncoder("gw", keep_literals).c_dialect is None
    assert StatementEncoder("gw", lambda sql: sql.decode()).c_dialect is None


@settings(max_examples=200, deadline=None)
@given(st.lists(SQL, min_size=1, max_size=6), st.sampled_from([8, 64, 4096]))
def test_a_masker_carrying_a_c_dialect_is_run_in_c(sqls, limit):
    """A Python masker that says "my dialect's C lexer does this" is never called: the records
    hold what the C lexer gives (mask_literals' text), not what the Python function returns."""
    def python_side(sql):
        return "called in Python"
    python_side.c_dialect = mask_literals.c_dialect
    got = recorded_texts(python_side, sqls * 2, limit)
    assert got == [mask_literals(s[:limit]) for s in sqls * 2]
    # the same function without the capsule is called
    del python_side.c_dialect
    assert recorded_texts(python_side, sqls, limit) == ["called in Python"] * len(sqls)
