"""Procedural code through the gateway: the procedural-code pack refuses DO blocks and the
creation of functions, procedures, triggers and rules, whose bodies the other packs read only
as literals; server-side-io finds a file function inside a DO body however its name is quoted.
Each refused statement is checked not to have run (its side effect is absent)."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from gwfixtures import conninfo, gateway_config, gateway_env
from helpers import APP_DB, Gateway


@pytest.fixture(scope="module")
def pgw(pg, idp):
    cfg = gateway_config(pg, idp, guardrail=[{"pack": "procedural-code"}])
    with Gateway(cfg, env=gateway_env(pg)) as g:
        yield g


@pytest.fixture(scope="module")
def iogw(pg, idp):
    cfg = gateway_config(pg, idp, guardrail=[{"pack": "server-side-io"}])
    with Gateway(cfg, env=gateway_env(pg)) as g:
        yield g


def _marker(pg):
    name = "proc_" + uuid.uuid4().hex[:8]
    return name


def _exists(pg, name) -> bool:
    return pg.sql(f"SELECT count(*) FROM pg_class WHERE relname = '{name}'", dbname=APP_DB) != "0" \
        or pg.sql(f"SELECT count(*) FROM pg_proc WHERE proname = '{name}'", dbname=APP_DB) != "0"


STATEMENTS = [
    "DO $$ BEGIN EXECUTE 'CREATE TABLE {n} (i int)'; END $$",
    "do language plpgsql 'begin execute ''create table {n} (i int)''; end'",
    "/* x */ DO $q$ BEGIN CREATE TABLE {n} (i int); END $q$",
    "SELECT 1; DO $$ BEGIN CREATE TABLE {n} (i int); END $$",
    "CREATE FUNCTION {n}() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "create or replace procedure {n}() language plpgsql as $$ begin null; end $$",
]


@pytest.mark.parametrize("template", STATEMENTS)
def test_procedural_code_is_refused_and_does_not_run(pgw, pg, idp, template):
    name = _marker(pg)
    with psycopg.connect(conninfo(pgw, idp.token()), autocommit=True) as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as err:
            c.execute(template.format(n=name))
        assert 'rule "procedural-code"' in str(err.value)
        assert c.execute("SELECT 1").fetchall() == [(1,)]
    assert not _exists(pg, name)


def test_calling_existing_functions_still_works(pgw, idp):
    with psycopg.connect(conninfo(pgw, idp.token()), autocommit=True) as c:
        assert c.execute("SELECT lower('A'), now() IS NOT NULL").fetchall() == [("a", True)]
        c.execute("CREATE TEMP VIEW v AS SELECT 1 AS x")
        assert c.execute("SELECT x FROM v").fetchall() == [(1,)]


@pytest.mark.parametrize("call", ['"pg_read_file"', 'pg_catalog."pg_read_file"',
                                  'PG_READ_FILE', 'pg_catalog.pg_read_file'])
def test_file_function_inside_do_is_caught_however_quoted(iogw, idp, call):
    with psycopg.connect(conninfo(iogw, idp.token()), autocommit=True) as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as err:
            c.execute(f"DO $$ BEGIN PERFORM {call}('postgresql.conf'); END $$")
        assert 'rule "server-side-io"' in str(err.value)
