"""The SQL normaliser (hoopwire._sqlnorm): the evasion corpus and its properties.

The normaliser decides what a guardrail pattern sees, so every case here is about one thing:
agreeing with PostgreSQL's lexer on where literals, quoted identifiers and comments begin and end,
and turning every spelling of the same command into the same text.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hoopwire._sqlnorm import (KEYWORDS, mask_literals, normalize, normalize_statements,
                               split_statements)


def code(sql: bytes) -> bytes:
    return normalize(sql)


def full(sql: bytes) -> bytes:
    return normalize(sql, keep_literals=True)


DROP_TABLE = re.compile(rb"\bdrop\s+table\b")


# ---------------------------------------------------------------------------------------------
# comments, case and whitespace

@pytest.mark.parametrize("sql", [
    b"DROP TABLE t",
    b"drop table t",
    b"dRoP\n\tTABLE\r\n t",
    b"DROP/**/TABLE t",
    b"DROP/* a comment */TABLE t",
    b"DROP/* /* nested */ still comment */TABLE t",
    b"DROP -- comment\nTABLE t",
    b"DROP--\rTABLE t",
    b"  \t\n DROP \x0b\x0c TABLE   t  \n",
    b"/* leading */ DROP TABLE t -- trailing",
])
def test_spellings_of_one_command_normalise_alike(sql):
    assert code(sql) == b"drop table t"
    assert full(sql) == b"drop table t"


def test_nested_comment_hides_only_what_the_server_hides():
    assert code(b"/* /* */ drop table t */ select 1") == b"select 1"
    assert code(b"/* /* */ */ drop table t") == b"drop table t"
    assert code(b"select 1 /* a /* b */ c */ + 1") == b"select 1 + 1"
    assert code(b"/**/drop/**/table/**/t") == b"drop table t"
    assert code(b"select 1 **/ 2") == b"select 1 **/ 2"   # no comment open: operators stay


def test_comment_inside_an_operator_ends_it():
    assert code(b"select a*/*x*/b") == b"select a* b"
    assert code(b"select a+--x\nb") == b"select a+ b"
    assert code(b"select a-/**/-b") == b"select a- -b"    # must not become a -- comment


def test_whitespace_only_and_comment_only():
    assert code(b"") == b""
    assert code(b" \n\t ") == b""
    assert code(b"-- only a comment") == b""
    assert code(b"/* only a comment */") == b""


# ---------------------------------------------------------------------------------------------
# literals

@pytest.mark.parametrize("sql", [
    b"select 'drop table t'",
    b"select 'it''s; drop table t'",
    b"select E'drop table t'",
    b"select e'\\'; drop table t; --'",
    b"select E'\\\\'",
    b"select N'drop table t'",
    b"select U&'drop table t'",
    b"select U&'\\0064rop table' UESCAPE '\\'",
    b"select $$drop table t$$",
    b"select $body$ drop table t; $$ not the end $body$",
    b"select $a$ $b$ drop table t $b$ $a$",
    b"select 'drop'\n'table t'",
    b"select 'a' -- comment\n'drop table t'",
])
def test_literal_text_never_reaches_the_code_view(sql):
    out = code(sql)
    assert not DROP_TABLE.search(out), out
    assert b"'?'" in out


def test_string_placeholders():
    assert code(b"SELECT 'a', E'b', N'c', U&'d', B'01', X'ff', $$e$$, $t$f$t$") == \
        b"select '?', '?', '?', '?', '?', '?', '?', '?'"


def test_full_view_keeps_decoded_literals():
    assert full(b"select 'It''s'") == b"select 'It''s'"
    assert full(b"select E'It\\'s \\x41\\102\\u0043\\n'") == b"select 'It''s ABC\n'"
    assert full(b"select U&'d\\0061t\\+000061'") == b"select 'data'"
    assert full(b"select U&'d!0061t!+000061' UESCAPE '!'") == b"select 'data'"
    assert full(b"select U&'d!0061ta' /* c */ uescape -- c\n '!' || 'x'") == \
        b"select 'data' || 'x'"
    assert full(b"select $$It's$$, $q$a$$b$q$") == b"select 'It''s', 'a$$b'"
    assert full(b"select B'0101', x'FF'") == b"select b'0101', x'FF'"
    assert full(b"select 'a'\n'b'") == b"select 'ab'"
    assert full(b"select E'\\uD83D\\uDE00'") == "select '\U0001F600'".encode()


def test_continuation_keeps_the_escape_mode():
    # E'a' continued on the next line is still an E string: \' does not end it
    assert code(b"select E'a'\n'\\' ; drop table t; --'") == b"select '?'"
    # a standard string continued: the backslash is a character, the quote ends it
    assert code(b"select 'a'\n'\\' ; drop table t; --'") == b"select '?' ; drop table t;"
    # no newline between the parts: two literals (the server rejects that)
    assert code(b"select 'a' 'b'") == b"select '?' '?'"
    # /* */ between the parts is not a continuation
    assert code(b"select 'a' /*\n*/ 'b'") == b"select '?' '?'"


def test_standard_conforming_strings_off():
    sql = b"select '\\'' ; drop table t; --'"
    assert code(sql) == b"select '?'"                    # the setting is on (the default)
    off = normalize(sql, standard_conforming_strings=False)
    assert off == b"select '?' ; drop table t;"          # off: \' escapes, the second ' ends it
    assert normalize(off, standard_conforming_strings=False) == off
    assert normalize(b"select 'a\\\\b'", True, standard_conforming_strings=False) == \
        b"select 'a\\\\b'"


def test_bit_and_hex_strings_end_where_the_server_ends_them():
    # the server reads X'00' then a new literal '...' (scan.l's xb/xh states have no '' rule)
    assert code(b"select X'00''; drop table t; --'") == b"select '?' '?'"
    # and that new literal is a plain one, where a backslash escapes with
    # standard_conforming_strings off: the DROP is code then (and `ambiguous` says so)
    sql = b"select B'1''\\'' ; drop table t; --'"
    from hoopwire._sqlnorm import statement_views
    assert statement_views(sql)[2] is True
    assert normalize_statements(sql, standard_conforming_strings=False) == [
        b"select '?' '?'", b"drop table t"]


# ---------------------------------------------------------------------------------------------
# dollar quotes and parameters

def test_dollar_quotes():
    assert code(b"select $$a$$, $tag$b$tag$, $_x1$c$_x1$") == b"select '?', '?', '?'"
    assert code(b"do $$ begin drop table t; end $$") == b"do '?'"
    assert code(b"select $TAG$ x $tag$ y $TAG$") == b"select '?'"         # tags are exact
    assert code(b"select $a$ unterminated drop table") == b"select '?'"


def test_parameters_are_not_tags():
    assert code(b"select $1, $2 from t where a = $1") == b"select $1, $2 from t where a = $1"
    assert code(b"select $1$2") == b"select $1 $2"   # two parameters, never a $tag$
    assert code(b"delete from t where id = $1 and $2 = $3") == \
        b"delete from t where id = $1 and $2 = $3"


def test_dollar_inside_identifiers():
    assert code(b"select a$$b$$ from t") == b"select a$$b$$ from t"    # one identifier
    assert code(b"select 1 as x$$ drop table t") == b"select 1 as x$$ drop table t"
    # not a tag (no closing $): the server reads $ then abc, and so do we
    assert code(b"select $abc from t") == b"select $ abc from t"


def test_number_then_literal_prefix():
    # PostgreSQL 14 reads 1e'x' as 1 then E'x' (15+ reject it): follow 14, it is the risky one
    assert code(b"select 1e'\\' ; drop table t; --'") == b"select 1 '?'"
    assert code(b"select 1$$ ' $$ ; drop table t") == b"select 1 '?' ; drop table t"
    assert code(b"select 0x1F, 0o17, 0b101, 1_000, 1.5e-3, .5, 1..2") == \
        b"select 0x1f, 0o17, 0b101, 1_000, 1.5e-3, .5, 1..2"


# ---------------------------------------------------------------------------------------------
# quoted identifiers

@pytest.mark.parametrize("sql, out", [
    (b'select "drop" from t', b'select "_drop" from t'),
    (b'select "DROP" from t', b'select "_drop" from t'),
    (b'select "drop table" from t', b'select "_drop_table" from t'),
    (b'select U&"\\0064rop" from t', b'select "_drop" from t'),
    (b'select U&"d!0072op" UESCAPE \'!\' from t', b'select "_drop" from t'),
    (b'select "where" from t', b'select "_where" from t'),
    (b'select "$drop" from t', b'select "__drop" from t'),
    (b'select "a""b" from t', b'select "_a_b" from t'),
    (b'select "" from t', b'select "_" from t'),
    (b'select "_x" from t', b'select "_x" from t'),
])
def test_quoted_keywords_cannot_pass_for_keywords(sql, out):
    assert code(sql) == out


@pytest.mark.parametrize("sql, out", [
    (b'select "pg_read_file"(\'x\')', b"select pg_read_file('?')"),
    (b'select "pg_catalog"."pg_read_file"(\'x\')', b"select pg_catalog.pg_read_file('?')"),
    (b'select U&"pg\\005fread\\005ffile"(\'x\')', b"select pg_read_file('?')"),
    (b'select "Users"."ID" from "Billing".invoices', b"select users.id from billing.invoices"),
    (b'select x from"t"where a', b"select x from t where a"),
    (b'select 1"e"\'x\'', b"select 1 e '?'"),
])
def test_plain_quoted_names_are_written_bare(sql, out):
    assert code(sql) == out


def test_full_view_shows_quoted_identifiers():
    assert full(b'select "drop", "My Table", "users" from t') == \
        b'select "drop", "my table", users from t'
    assert full(b'set "role" to \'x\'') == b"set \"role\" to 'x'"


def test_every_keyword_in_quotes_is_hidden():
    for word in KEYWORDS:
        out = code(b'select "' + word + b'"')
        assert out == b'select "_' + word + b'"'
        assert not re.search(rb"\b" + word + rb"\b", out[len(b"select "):]), (word, out)
        assert full(b'select "' + word + b'"') == b'select "' + word + b'"'


# ---------------------------------------------------------------------------------------------
# unterminated input

@pytest.mark.parametrize("sql, out", [
    (b"select 'unterminated; drop table t", b"select '?'"),
    (b"select E'\\", b"select '?'"),
    (b'select "unterminated; drop table t', b'select "_unterminated__drop_table_t"'),
    (b"select /* unterminated; drop table t", b"select"),
    (b"select $$ unterminated; drop table t", b"select '?'"),
    (b"select U&'x", b"select '?'"),
    (b"select U&'x' UESCAPE", b"select '?' uescape"),
    (b"select 'x' -- comment; drop table t", b"select '?'"),
])
def test_unterminated_runs_to_the_end(sql, out):
    assert code(sql) == out
    assert split_statements(sql) == [sql]


# ---------------------------------------------------------------------------------------------
# statements

def test_split_statements():
    assert split_statements(b"select 1; select 2;select 3;") == \
        [b"select 1", b" select 2", b"select 3"]
    assert split_statements(b"select ';'; select \";\"; select $$;$$") == \
        [b"select ';'", b' select ";"', b" select $$;$$"]
    assert split_statements(b"select 1 -- ; not here\n; select 2 /* ; */") == \
        [b"select 1 -- ; not here\n", b" select 2 /* ; */"]
    assert split_statements(b";; ;\n") == []
    assert split_statements(b"create rule r as on insert to t do instead (delete from a; "
                            b"delete from b); select 1") == \
        [b"create rule r as on insert to t do instead (delete from a; delete from b)",
         b" select 1"]
    assert split_statements(b"select 1); select 2") == [b"select 1)", b" select 2"]
    assert split_statements(b"select E'\\';'; drop table t") == \
        [b"select E'\\';'", b" drop table t"]


def test_normalize_statements():
    assert normalize_statements(b"SELECT 1;\n DROP/**/TABLE t; -- bye\n;") == \
        [b"select 1", b"drop table t"]
    assert normalize_statements(b"select 'a;b'; select 2", keep_literals=True) == \
        [b"select 'a;b'", b"select 2"]
    assert normalize_statements(b"") == []


def test_begin_atomic_bodies_are_split_too():
    sql = (b"create function f() returns int language sql begin atomic "
           b"delete from t; select 1; end")
    assert normalize_statements(sql) == [
        b"create function f() returns int language sql begin atomic delete from t",
        b"select 1", b"end"]


# ---------------------------------------------------------------------------------------------
# masking for logs

def test_mask_literals():
    assert mask_literals(b"SELECT * FROM t WHERE a = 'secret' AND b = 42 -- note") == \
        "SELECT * FROM t WHERE a = ? AND b = ?"
    assert mask_literals(b"insert into \"Users\" (n) values (E'x\\'y', $$z$$, 1.5e3, $1)") == \
        'insert into "Users" (n) values (?, ?, ?, $1)'
    assert mask_literals(b"select U&'\\0041' UESCAPE '\\', x'ff', t2.c1") == \
        "select ?, ?, t2.c1"
    assert mask_literals(b"select '\xff\xfe'\n/* c */, \xff") == "select ? , \ufffd"


def test_inputs_other_than_bytes():
    assert normalize(bytearray(b"DROP TABLE t")) == b"drop table t"
    assert normalize(memoryview(b"DROP TABLE t")) == b"drop table t"
    with pytest.raises(TypeError):
        normalize("DROP TABLE t")


# ---------------------------------------------------------------------------------------------
# properties

# tokens chosen to hit every lexer state and the joints between them
_PIECES = [b"'", b'"', b"$", b"$$", b"$a$", b"$1", b"--", b"/*", b"*/", b"\n", b"\r", b" ",
           b"\t", b";", b"(", b")", b"e", b"E", b"u&", b"U&", b"x", b"b", b"n", b"\\", b"1",
           b".", b"0x", b"_", b"a", b"drop", b"table", b"where", b"uescape", b"!", b"+", b"&",
           b"\x80", b"\xff", b"\x00", b"-", b"*", b"/", b"0041", b"select", b"''", b"\"\""]
sql_like = st.lists(st.sampled_from(_PIECES), max_size=40).map(b"".join)
any_bytes = st.one_of(st.binary(max_size=300), sql_like)
PROPS = settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))


@PROPS
@given(any_bytes, st.booleans(), st.booleans())
def test_never_crashes_and_is_idempotent(sql, keep_literals, scs):
    once = normalize(sql, keep_literals, standard_conforming_strings=scs)
    assert normalize(once, keep_literals, standard_conforming_strings=scs) == once
    assert not once.startswith(b" ") and not once.endswith(b" ")
    mask_literals(sql, standard_conforming_strings=scs)


@PROPS
@given(any_bytes, st.booleans())
def test_split_pieces_hold_no_top_level_semicolon(sql, scs):
    pieces = split_statements(sql, standard_conforming_strings=scs)
    for piece in pieces:
        # lexed alone, a piece is one statement: any ; left in it is inside something
        assert split_statements(piece, standard_conforming_strings=scs) == [piece]
    assert normalize_statements(sql, standard_conforming_strings=scs) == [
        n for n in (normalize(p, standard_conforming_strings=scs) for p in pieces) if n]


@PROPS
@given(st.binary(max_size=60))
def test_literal_contents_never_show_in_the_code_view(text):
    assert code(b"select '" + text.replace(b"'", b"''") + b"'") == b"select '?'"
    # A body ending in "$q" would meet the closing "$q$" and end the literal early (as the
    # server reads it too), so no "$q" may stay in the body, not only no "$q$".
    body = text
    while b"$q" in body:
        body = body.replace(b"$q", b"")
    assert code(b"select $q$" + body + b"$q$") == b"select '?'"


@PROPS
@given(st.binary(max_size=40))
def test_quoted_identifier_contents_never_look_like_keywords(name):
    out = code(b'select "' + name.replace(b'"', b'""') + b'" from t')
    inner = out[len(b"select "):-len(b" from t")]
    if inner.startswith(b'"'):
        # the "_name" form: no word boundary before any letter inside
        assert re.fullmatch(rb'"_[a-z0-9_]*"', inner), out
    else:
        assert inner.lower() not in KEYWORDS and re.fullmatch(rb"[a-z\x80-\xff][a-z0-9_$\x80-\xff]*",
                                                              inner), out
