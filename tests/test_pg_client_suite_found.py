"""What running psycopg2's own test suite through the gateway found (bench/client_suites.py
--suite psycopg2; bench/README.md, "Third-party client suites"), kept here as regression tests
with real parts: the session's PostgreSQL (`pg`), a gateway with a mask rule on a table no test
uses, psycopg over plain TCP with a token.

Found: psycopg2's `set_client_encoding('UNICODE')` (its test_quote's test_unicode and
test_bytes) ended the session through any gateway with a mask rule or a guardrail. UNICODE is
UTF8 by its old name, and the server reports every alias by its canonical name except that
exact string, which it keeps as sent (check_client_encoding, for pre-9.1 JDBC drivers); the
gateway's allow-list of client encodings held only canonical names, so it read "UNICODE" as an
encoding it cannot follow and closed the session with FATAL 42501.
"""

from __future__ import annotations

import psycopg
import pytest

from gwfixtures import conninfo, gateway_config, gateway_env
from helpers import Gateway


@pytest.fixture(scope="module")
def mgw(pg, idp):
    # one rule on a table the tests below never read: what the suite ran against
    cfg = gateway_config(pg, idp, mask=[{"columns": ["public.hw_nowhere.ssn"],
                                         "strategy": "redact"}])
    with Gateway(cfg, env=gateway_env(pg)) as g:
        yield g


def connect(gw, idp):
    return psycopg.connect(conninfo(gw, idp.token(groups=("agents",))), autocommit=True)


def test_client_encoding_unicode_keeps_the_session(mgw, idp):
    with connect(mgw, idp) as conn:
        conn.execute("SET client_encoding = 'UNICODE'")
        # the premise: the server reports the alias as sent, not as UTF8
        assert conn.info.parameter_status("client_encoding") == "UNICODE"
        text = "snow \u2603, euro \u20ac, a backslash \\ and 'quotes'"
        got = conn.execute("SELECT %s::text, length(%s::text)", (text, text)).fetchone()
        assert got == (text, len(text))
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize("name", ["unicode", "Unicode", "UTF-8", "utf8"])
def test_other_spellings_of_utf8_are_reported_canonically(mgw, idp, name):
    """Only the exact string UNICODE keeps its spelling; the rest come back as UTF8."""
    with connect(mgw, idp) as conn:
        conn.execute(f"SET client_encoding = '{name}'")
        assert conn.info.parameter_status("client_encoding") == "UTF8"
        assert conn.execute("SELECT 'ok'").fetchone() == ("ok",)


@pytest.mark.parametrize("name", ["SJIS", "GBK", "BIG5"])
def test_an_encoding_that_hides_a_backslash_still_ends_the_session(mgw, idp, name):
    """The fix widens the allow-list by one alias of UTF8 and nothing else."""
    with connect(mgw, idp) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
            conn.execute(f"SET client_encoding = '{name}'")
        assert "is not allowed through the gateway" in str(e.value), str(e.value)
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")        # the session is over
