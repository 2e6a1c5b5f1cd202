"""Built-in guardrail packs, enabled in a rule with `pack = "<name>"`.

Every pattern here is written against the *normalised* statement (hoopwire._sqlnorm), never the
raw text, and is matched with Hyperscan (caseless, dot-all, single match, no lookaround):

* the code view (`CODE`): lower-case, one space between words, no comments, every string literal
  and dollar body replaced by '?', keyword-like quoted identifiers written "_name" (so `"drop"` is
  not DROP) and ordinary quoted identifiers written bare (`"pg_read_file"` is pg_read_file).
  Statements are scanned one at a time, so `^` is the start of a statement.
* the full view (`FULL`): the same, with literals kept (decoded) as '...'. Packs use it only where
  the thing to catch lives inside a literal: `set_config('role', ...)`, `LANGUAGE 'c'`, and
  server-side file functions called from inside a DO / function body or an EXECUTE string.

A rule with `scan_literals = true` scans every pattern of its pack in the full view.

What each pack catches, and what it cannot (the README carries the same table):

destructive-ddl
    catches   what loses rows or values, or moves them out from under the rules keyed by a
              schema.table.column name (masking rules, guardrail patterns, grants):
              - every DROP statement (DROP TABLE / SCHEMA / DATABASE / VIEW / INDEX / FUNCTION /
                ROLE / OWNED ...); TRUNCATE; ALTER TABLE / ALTER FOREIGN TABLE ... DROP
                [COLUMN] col and DROP CONSTRAINT (but not ALTER [COLUMN] c DROP DEFAULT /
                NOT NULL / IDENTITY / EXPRESSION); ALTER TYPE ... DROP ATTRIBUTE;
              - ALTER TABLE ... ALTER [COLUMN] c [SET DATA] TYPE ... (and ALTER TYPE ... ALTER
                ATTRIBUTE ... TYPE): every value is rewritten; USING runs any expression per row
                (USING NULL blanks the column), and a narrower type cuts values without an
                error (numeric(10,2) -> numeric(4,0) rounds 12.34 to 12, timestamp -> date
                drops the time);
              - RENAME of a table, view, materialized view, foreign table or column (ALTER
                TABLE / VIEW ... RENAME [COLUMN] ... TO, RENAME TO), ALTER SCHEMA ... RENAME TO
                and ALTER DATABASE ... RENAME TO: a renamed object is no longer what the rules
                name (RENAME CONSTRAINT and ALTER SEQUENCE ... RENAME pass); ALTER INDEX ...
                RENAME too, since PostgreSQL lets ALTER INDEX rename a table;
              - ALTER TABLE / VIEW ... SET SCHEMA (the same move by another name);
              - ALTER TABLE ... DETACH PARTITION and NO INHERIT: the partition's or child's rows
                leave the parent table the rules name;
              - ALTER TABLE ... SET UNLOGGED: the table is emptied at the next crash recovery
                and reads as empty on every standby (unlogged tables are not replicated).
    passes    SELECT 'drop table', columns such as truncate_at or "drop", SELECT * FROM dropbox,
              ALTER TABLE ... ADD COLUMN, ALTER COLUMN ... SET DEFAULT / DROP DEFAULT / SET NOT
              NULL / SET STATISTICS, ATTACH PARTITION, SET LOGGED, RENAME CONSTRAINT, CREATE
              UNLOGGED TABLE, a CHECK ... NO INHERIT constraint, and
              columns named like the keywords (ADD COLUMN rename int, ALTER COLUMN type SET
              DEFAULT 1, ADD drop int): the ALTER keywords count only where a subcommand
              begins, after the relation's name or after a comma
    cannot    DDL run from a DO block, a function body or EXECUTE of a built string (they are
              literals here: the procedural-code pack refuses creating and running them);
              DELETE of all rows (see unbounded-write); DROP inside a CREATE EXTENSION script;
              REFRESH MATERIALIZED VIEW ... WITH NO DATA (rows that a REFRESH brings back).
              A keyword-named column after a comma inside parentheses (CHECK (f(a, rename
              ...))) can be taken for the keyword (blocked). Pair it with a role that does
              not own the objects.

unbounded-write
    catches   DELETE FROM and UPDATE ... SET with no WHERE at the top level of the statement:
              plain, in a WITH (either the main statement or a data-modifying CTE), after
              EXPLAIN [ANALYZE] (plain EXPLAIN does not run it, but is refused all the same),
              in PREPARE ... AS, in CREATE RULE ... DO [ALSO|INSTEAD], inside
              COPY (...) and BEGIN ATOMIC; a WHERE that only sits inside parentheses
              (USING (SELECT ... WHERE ...), SET a = (SELECT ... WHERE ...)) does not count;
              also WHERE true / WHERE 1=1 / WHERE 'x'='x' / WHERE NOT false as the whole condition
    passes    DELETE ... WHERE ..., UPDATE ... SET ... WHERE ..., UPDATE ... FROM ... WHERE,
              WHERE CURRENT OF, INSERT ... ON CONFLICT DO UPDATE, SELECT ... FOR UPDATE
    cannot    other always-true conditions (WHERE id > 0, WHERE x OR true, WHERE $1 with a
              parameter bound to true); MERGE (its ON clause bounds it: MERGE ... ON true
              WHEN MATCHED THEN DELETE is not seen); TRUNCATE (destructive-ddl has it); writes
              done inside functions, triggers, rules created earlier, or DO blocks; CREATE RULE
              ... DO UPDATE without ALSO/INSTEAD. Parentheses nested deeper than 8 levels before
              the WHERE make the statement count as unbounded (blocked), never the reverse.
              A column or alias literally named delete/update (`SELECT 1 AS update ...`) can
              trip it.

privilege-changes
    catches   GRANT (also inside CREATE SCHEMA and ALTER DEFAULT PRIVILEGES), REVOKE,
              CREATE / ALTER / DROP ROLE, USER and GROUP (also USER MAPPING), ALTER DEFAULT
              PRIVILEGES, REASSIGN OWNED, ALTER ... OWNER TO, CREATE / ALTER / DROP POLICY,
              ALTER TABLE ... DISABLE / NO FORCE ROW LEVEL SECURITY, SECURITY DEFINER functions
    cannot    privilege changes done by a function that runs them (SECURITY DEFINER functions
              created earlier, DO blocks, EXECUTE); what a role already has. Least privilege
              on the upstream role is the real control; this pack stops an agent from
              widening it through the gateway.

server-side-io
    catches   COPY ... TO/FROM PROGRAM and COPY ... TO/FROM '<file>' (COPY ... TO STDOUT /
              FROM STDIN pass); the server file and large-object functions pg_read_file,
              pg_read_binary_file, pg_ls_dir, pg_stat_file, the pg_ls_*dir family, lo_import,
              lo_export, adminpack's pg_file_* and pg_logdir_ls, and every dblink* function,
              however quoted or schema-qualified, and also when called as name(...) inside a
              DO / function body or an EXECUTE string; LOAD; ALTER SYSTEM; CREATE EXTENSION of
              adminpack, file_fdw, dblink, postgres_fdw and the untrusted languages; CREATE
              LANGUAGE; functions or DO blocks in LANGUAGE c / internal / plpythonu /
              plperlu / pltclu / plsh; CREATE SERVER, CREATE FOREIGN TABLE, IMPORT FOREIGN
              SCHEMA, CREATE TABLESPACE; SET of the *_preload_libraries / dynamic_library_path
              settings
    cannot    a function name assembled at run time ('pg_read' || '_file' in EXECUTE, or
              format('%I', ...)); functions created earlier that wrap these; psql's \\lo_import
              and \\copy (client side: they use the fast-path protocol or COPY ... STDIN/STDOUT,
              which is not server-side I/O). The upstream role should simply not hold
              pg_read_server_files, pg_write_server_files or pg_execute_server_program.

procedural-code
    catches   DO blocks; CREATE [OR REPLACE] FUNCTION / PROCEDURE / RULE / TRIGGER /
              CONSTRAINT TRIGGER / EVENT TRIGGER -- code whose text is a literal here (the
              other packs see a DO body or a function body only as far as a pattern can read
              a literal) or that runs later, when no statement shows it
    passes    CALL and SELECT of functions that exist; CREATE VIEW (its query is plain text
              the packs read); names such as do_list or triggers
    cannot    what existing functions, triggers and rules do when they run; EXECUTE of
              dynamic text happens only inside such bodies, so it is refused with them

session-tampering
    catches   SET [SESSION|LOCAL] ROLE, SET [SESSION|LOCAL] SESSION AUTHORIZATION, the same as
              SET "role" / SET session_authorization = ..., SET session_replication_role
              (it switches off triggers and foreign keys), RESET ROLE / SESSION AUTHORIZATION,
              set_config('role' | 'session_authorization' | 'session_replication_role', ...),
              and set_config whose first argument is not a plain string literal (a parameter,
              an expression, a cast) because its name cannot be checked; switching the client
              encoding to one whose characters can end in a backslash byte (SJIS,
              SHIFT_JIS_2004, BIG5, GBK, UHC, GB18030, JOHAB and their aliases) by SET client_encoding / SET NAMES /
              set_config / ALTER ROLE ... SET, which would let a quote hide from the normaliser
    cannot    role changes inside functions or DO blocks (SET ROLE in PL/pgSQL is in a
              literal); RESET ALL and DISCARD ALL (connection pools send them; they only
              return to the gateway's own upstream role, which is not an escalation); a client
              encoding chosen in the startup packet (client_encoding or options=-c ...) -- the
              PostgreSQL session itself must refuse those encodings

All packs, and rules of one's own
    * Only the text of a statement is seen. What runs later inside the server -- functions,
      triggers, rules, DO blocks and EXECUTE of a string built at run time -- is not; the
      upstream role's privileges are the control that covers those.
    * A message with a backslash inside a '...' literal is read twice: as the server reads it
      with standard_conforming_strings on, and as it would with it off; whichever reading
      matches a rule decides, so switching the setting off cannot hide text.
    * The normaliser reads the bytes as an ASCII-compatible encoding (UTF-8 and every server
      encoding are). Client-only encodings whose characters can end in a 0x5C byte (SJIS,
      SHIFT_JIS_2004, BIG5, GBK, UHC, GB18030, JOHAB) can hide a quote: whatever sets one (SET,
      set_config in a function, startup options, UPDATE pg_settings), the server reports it
      and the gateway ends the session (hoopwire/pg/encodings.py); a message with a backslash
      such an encoding could take into a character is refused while earlier statements are
      unanswered.
    * Hyperscan's \\b counts $ and non-ASCII bytes as non-word: an identifier such as a$drop or
      édrop can trip a keyword pattern. That errs towards blocking, never towards a bypass.
"""

from __future__ import annotations

from hoopwire.policy.patterns import END, IDC, NEST, group, no_word, too_deep
from hoopwire.policy.patterns import word_except as _word_except
from hoopwire.policy.rules import CODE, FULL, Pack

__all__ = ["CODE", "FULL", "Pack", "PACKS", "pack_names", "UNSAFE_ENCODING_PATTERNS",
           "UNSAFE_CLIENT_ENCODINGS"]


# ---------------------------------------------------------------------------------------------
# building blocks for patterns on the normalised text (hoopwire/policy/patterns.py)


def word_except(*words: str) -> str:
    """An identifier that is none of `words` (hoopwire.policy.patterns.word_except). The class
    of other bytes keeps every digit: no word here has one, and the patterns stay as they were."""
    return _word_except(*words, digits_apart=False)


# Text at the top level of one statement with no WHERE in it
_NO_WHERE = no_word(word_except("where"))
# where a DML statement of interest may begin: the statement start, a CTE or rule-action list
# paren, after a WITH list, and after EXPLAIN [ANALYZE] [VERBOSE], BEGIN ATOMIC, CREATE RULE's
# DO [ALSO|INSTEAD] and PREPARE name [(types)] AS
_DML_START = (r"(?:^|[(;)]\s*|\b(?:explain|analyze|analyse|verbose|atomic|also|instead)\s+"
              r"|\bprepare\s+[^\s(]+\s*(?:" + group(3) + r"\s*)?as\s+)")
# DELETE FROM / UPDATE at such a place (CREATE RULE's plain DO DELETE too; not DO UPDATE, which
# is INSERT ... ON CONFLICT DO UPDATE, bounded by the conflict)
_WRITE = rf"(?:{_DML_START}(?:delete\s+from\b|update\s)|\bdo\s+delete\s+from\b)"
_TAUTOLOGY = (r"where\s+(?:\(\s*)*(?:true|not\s+false|1\s*=\s*1|'\?'\s*=\s*'\?'|'\?'"
              r"|'\?'\s*::\s*bool(?:ean)?)(?:\s*\))*")

# ALTER [FOREIGN] TABLE, and the relations whose names rules also key on (a view's columns are
# what a SELECT through it returns)
_ALTER_TABLE = r"^alter\s+(?:foreign\s+)?table"
_ALTER_RELATION = r"^alter\s+(?:foreign\s+table|table|view|materialized\s+view)"
_ALTER_RENAMED = r"^alter\s+(?:foreign\s+table|table|view|materialized\s+view|index)"
# a relation's name as the code view writes it: bare or quoted ("_name") parts, dotted
_PART = r'(?:"[^"]*"|[^\s"(),;.*]+)'
_NAME = _PART + r"(?:\s*\.\s*" + _PART + ")*"


def _subcommand(head: str) -> str:
    """`head` (ALTER TABLE, ALTER TYPE ...) up to where one of its subcommands begins: right
    after `[IF EXISTS] [ONLY] name [*]`, or after a comma (gram.y's alter_table_cmds). A keyword
    counts only there: read anywhere, a column named rename, type, no, set, detach or drop
    (all unreserved: ADD COLUMN rename int is valid) blocked 2,622 of the 9,399 harmless
    statements tests/test_pg_redteam_ddl.py generates, and DROP identity (a column so named)
    passed. Any comma, not only a top-level one, is taken: one inside parentheses can only make
    the pack block more, never less. ONLY, IF and EXISTS may also be a name's first part: every
    reading is tried (Hyperscan reports a match if any path matches). gram.y's relation_expr
    also takes ONLY ( name ): without that form, ALTER TABLE ONLY (t) DROP COLUMN c passed,
    and so did all 156 spellings of 13 destructive subcommands tests/test_redteam_session5.py
    sends that way."""
    return (head + r"\s+(?:(?:if\s+exists\s+)?(?:only\s*\(\s*" + _NAME + r"\s*\)\s*|"
            + r"(?:only\s+)?" + _NAME + r"(?:\s+|\s*\*\s*))|.*,\s*)")


# a column name after ALTER [COLUMN]: quoted (the code view writes it "_name" or bare), or a
# bare word that is not COLUMN (so ALTER COLUMN type SET DEFAULT is not read as a type change)
_COLUMN = r'(?:"[^"]*"|' + word_except("column") + ")"

_SERVER_FUNCTIONS = (
    r"pg_read_file|pg_read_binary_file|pg_ls_dir|pg_stat_file|pg_ls_logdir|pg_ls_waldir"
    r"|pg_ls_tmpdir|pg_ls_archive_statusdir|pg_ls_logicalsnapdir|pg_ls_logicalmapdir"
    r"|pg_ls_replslotdir|lo_import|lo_export|pg_file_write|pg_file_rename|pg_file_unlink"
    r"|pg_file_sync|pg_file_read|pg_logdir_ls|dblink[a-z0-9_]*")
_UNTRUSTED_LANGUAGES = r"c|internal|plpython[23]?u|plperlu|pltclu|plsh"
_SET = r"\bset\s+(?:(?:session|local)\s+)?"
# client encodings whose multi-byte characters can end in a 0x5C byte: the server converts such
# text to its own encoding before lexing, so a backslash we see may not be one to the server.
# The server compares encoding names with everything but letters and digits removed.
_UNSAFE_ENCODINGS = ("shiftjis2004", "sjis", "shiftjis", "mskanji", "win932", "windows932", "cp932", "big5",
                     "win950", "windows950", "cp950", "gbk", "win936", "windows936", "cp936",
                     "uhc", "win949", "windows949", "cp949", "gb18030", "johab")
_ENC_SEP = r"[^a-z0-9'\";]*"
_UNSAFE_ENCODING = "(?:" + "|".join(_ENC_SEP.join(name) for name in _UNSAFE_ENCODINGS) + ")"

# A client encoding that can hide a quote from the normaliser (see above). Part of
# session-tampering, and added on its own to every rule set that does not enable that pack:
# without it no other rule could be trusted.
UNSAFE_ENCODING_PATTERNS = (
    (FULL, r"(?:\bclient_encoding\b|\bset\s+(?:(?:session|local)\s+)?names\b)['\"]?\s*"
           r"(?:=|\bto\b|,)?\s*['\"]?" + _ENC_SEP + _UNSAFE_ENCODING + _ENC_SEP + r"(?:['\"]|\b)"),
    (FULL, r"\bset_config\s*\(\s*'client_encoding'\s*,\s*(?:[^'\s]|'[^']*'\s*(?:\|\||::))"),
)
UNSAFE_CLIENT_ENCODINGS = frozenset(_UNSAFE_ENCODINGS)

PACKS: dict[str, Pack] = {p.name: p for p in (
    Pack(
        name="destructive-ddl",
        summary="DROP, TRUNCATE, and ALTER that drops, retypes, renames or moves data",
        message="destructive DDL goes through a migration, not this connection",
        patterns=(
            (CODE, r"^drop\b"),
            (CODE, r"\bdrop\s+(?:table|schema|database|view|materialized\s+view|index|sequence"
                   r"|function|procedure|extension|owned)\b"),
            (CODE, r"^truncate\b"),
            (CODE, r"\btruncate\s+(?:table|only)\b"),
            # DROP [COLUMN] / DROP CONSTRAINT: at a subcommand's start DROP is nothing else
            # (ALTER [COLUMN] c DROP DEFAULT / NOT NULL / IDENTITY / EXPRESSION is not there)
            (CODE, _subcommand(_ALTER_TABLE) + r"drop\b"),
            (CODE, _subcommand(r"^alter\s+type") + r"drop\s+attribute\b"),
            # every value rewritten (USING runs any expression; a narrower type rounds or cuts)
            (CODE, _subcommand(_ALTER_TABLE) + r"alter\s+(?:column\s+)?" + _COLUMN
                   + r"\s+(?:set\s+data\s+)?type\b"),
            (CODE, _subcommand(r"^alter\s+type") + r"alter\s+attribute\s+" + _COLUMN
                   + r"\s+(?:set\s+data\s+)?type\b"),
            # renamed or moved to another schema: no longer what the rules name
            # ALTER INDEX too: it renames any relation, a table included (checked on
            # PostgreSQL 15: ALTER INDEX t RENAME TO t2 renames table t), so an index rename is
            # blocked with it; SET SCHEMA has no ALTER INDEX form
            (CODE, _subcommand(_ALTER_RENAMED) + r"rename\s+(?:\"|"
                   + word_except("constraint")
                   + rf"(?:[^{IDC}]|$))"),
            (CODE, r"^alter\s+(?:schema|database)\b.*\brename\s+to\b"),
            (CODE, _subcommand(_ALTER_RELATION) + r"set\s+schema\b"),
            # rows leave the table the rules name: now, or at the next crash (and on standbys)
            (CODE, _subcommand(_ALTER_TABLE)
                   + r"(?:detach\s+partition|no\s+inherit|set\s+unlogged)\b"),
        ),
    ),
    Pack(
        name="unbounded-write",
        summary="DELETE or UPDATE without a WHERE",
        message="DELETE and UPDATE need a WHERE clause",
        patterns=(
            # ... then no top-level WHERE up to the end of the statement (or of its CTE / rule
            # action), or only an always-true one, or parentheses too deep to follow before any
            # WHERE (refuse rather than guess). One pattern: these share most of their automaton.
            (CODE, _WRITE + _NO_WHERE + rf"(?:{END}|{_TAUTOLOGY}\s*(?:;|\)|$|returning\b)"
                   rf"|{too_deep(NEST + 1)})"),
        ),
    ),
    Pack(
        name="privilege-changes",
        summary="GRANT, REVOKE, roles, ownership and row-level security",
        message="privilege changes are not made through this connection",
        patterns=(
            (CODE, r"\bgrant\b"),
            (CODE, r"^revoke\b"),
            (CODE, r"^(?:create|alter|drop)\s+(?:role|user|group)\b"),
            (CODE, r"^alter\s+default\s+privileges\b"),
            (CODE, r"^reassign\s+owned\b"),
            (CODE, r"^alter\b.*\bowner\s+to\b"),
            (CODE, r"^(?:create|alter|drop)\s+policy\b"),
            (CODE, r"\b(?:disable|no\s+force)\s+row\s+level\s+security\b"),
            (CODE, r"\bsecurity\s+definer\b"),
        ),
    ),
    Pack(
        name="server-side-io",
        summary="COPY to/from files and programs, server file functions, dblink, LOAD",
        message="server-side file, program and network access is not allowed",
        patterns=(
            (CODE, r"^copy\b.*\b(?:to|from)\s+(?:program\s*)?'"),
            (CODE, rf"\b(?:{_SERVER_FUNCTIONS})\b"),
            # inside a DO / function body or an EXECUTE string the name may be quoted
            (FULL, rf"\b(?:{_SERVER_FUNCTIONS})\"?\s*\("),
            (CODE, r"^load\b"),
            (CODE, r"^alter\s+system\b"),
            (CODE, r"^create\s+extension\b.*\b(?:adminpack|file_fdw|dblink|postgres_fdw"
                   r"|plpython[23]?u|plperlu|pltclu)\b"),
            (CODE, r"^create\s+(?:or\s+replace\s+)?(?:trusted\s+)?(?:procedural\s+)?language\b"),
            (CODE, rf"\blanguage\s+(?:{_UNTRUSTED_LANGUAGES})\b"),
            (FULL, rf"\blanguage\s+'(?:{_UNTRUSTED_LANGUAGES})'"),
            (CODE, r"^(?:create\s+(?:server|foreign\s+table|tablespace)"
                   r"|import\s+foreign\s+schema)\b"),
            (CODE, _SET + r"(?:local_preload_libraries|session_preload_libraries"
                   r"|shared_preload_libraries|dynamic_library_path)\b"),
            (FULL, r"\bset_config\s*\(\s*'(?:local_preload_libraries|session_preload_libraries"
                   r"|dynamic_library_path)'"),
        ),
    ),
    Pack(
        name="procedural-code",
        summary="DO blocks, and functions, procedures, triggers and rules created",
        message="procedural and deferred code is not run or created through this connection",
        patterns=(
            (CODE, r"^do\b"),
            (CODE, r"^create\s+(?:or\s+replace\s+)?(?:function|procedure|rule|trigger"
                   r"|constraint\s+trigger|event\s+trigger)\b"),
        ),
    ),
    Pack(
        name="session-tampering",
        summary="SET ROLE, SET SESSION AUTHORIZATION and their set_config forms",
        message="changing the session's role or client encoding is not allowed",
        patterns=(
            (CODE, _SET + r"(?:role\b|\"_role\"|session\s+authorization\b"
                   r"|session_authorization\b|session_replication_role\b)"),
            (CODE, r"^reset\s+(?:role\b|\"_role\"|session\s+authorization\b"
                   r"|session_authorization\b)"),
            (FULL, r"\bset_config\s*\(\s*'(?:role|session_authorization"
                   r"|session_replication_role)'"),
            # a computed setting name cannot be checked: $1, an expression, a cast
            (CODE, r"\bset_config\s*\(\s*(?:[^'\s)]|'\?'\s*(?:\|\||::))"),
            *UNSAFE_ENCODING_PATTERNS,
        ),
    ),
)}


def pack_names() -> tuple[str, ...]:
    return tuple(PACKS)
