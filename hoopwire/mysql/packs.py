"""Built-in guardrail packs for MySQL and MariaDB, enabled in a rule with `pack = "<name>"`.

A pack that means the same as a PostgreSQL one has its name (hoopwire/pg/packs.py), so a
configuration's `pack = "destructive-ddl"` works on both protocols. Every pattern is written
against the *normalised* statement (hoopwire/mysql/_sqllex.pyx) and matched with Hyperscan
(caseless, dot-all, single match, no lookaround):

* the code view (`CODE`): lower-case, one space between words, comments gone, the bodies of
  executable comments (`/*! ... */`, `/*!50000 ... */`, `/*M! ... */`) kept as code, every string
  literal '?', a quoted name written bare when it is a plain name and no keyword (`load_file`,
  `mysql`.`user` is mysql.user), `_name` in backticks when it is a keyword or not plain (so
  `drop` is not DROP). Statements are scanned one at a time, split at `;`, so `^` is the start
  of a statement; the text of `PREPARE s FROM '...'` and `EXECUTE IMMEDIATE '...'` is scanned as
  statements of its own.
* the full view (`FULL`): the same, literals kept (decoded) as '...'.
* A message that another sql_mode, server or version could read differently (a backslash in a
  literal, a double quote, a [, a versioned comment) is read every such way, and any reading
  that matches decides: switching NO_BACKSLASH_ESCAPES, ANSI_QUOTES or MariaDB's MSSQL ([name]
  quoting), or a versioned comment only some servers run, cannot hide text.

What each pack catches, and what it cannot (the README carries the same table):

destructive-ddl
    catches   what loses rows or values, or moves them out from under the rules keyed by a name:
              every DROP of a table, database / schema, view, index, sequence, procedure,
              function, trigger, event, server, tablespace, package (also TEMPORARY and IF
              EXISTS); a statement starting with DROP; TRUNCATE; MariaDB's CREATE OR REPLACE
              TABLE; and ALTER TABLE (also ONLINE, IF EXISTS) with
              - DROP [COLUMN] / INDEX / KEY / PRIMARY KEY / FOREIGN KEY / CONSTRAINT / CHECK /
                PARTITION (not DROP DEFAULT), TRUNCATE PARTITION, DISCARD [PARTITION ...]
                TABLESPACE;
              - MODIFY / CHANGE [COLUMN] and CONVERT TO CHARACTER SET: every value is rewritten
                into the new type; a narrower one cuts them (MariaDB 10.11 with strict mode
                off stores 'abcdef' -> VARCHAR(2) as 'ab' with warning 1265), and whether it
                is narrower is not in the text; CHANGE also renames the column;
              - IGNORE: ALTER IGNORE TABLE t ADD UNIQUE (c) deletes the duplicate rows, and
                IGNORE turns every cut value into a warning, strict mode or not;
              - RENAME [TO|AS] / RENAME COLUMN, and RENAME TABLE: masking rules, guardrail
                patterns and grants name a table and a column, and a renamed one is no longer
                what they name (RENAME INDEX / KEY pass);
              - EXCHANGE PARTITION, CONVERT PARTITION ... TO TABLE / CONVERT TABLE ... TO
                PARTITION (rows moved to another table's name), ENGINE = BLACKHOLE (every row
                discarded);
              at a statement's start, and inside BEGIN NOT ATOMIC / THEN / ELSE / DO / LOOP /
              REPEAT bodies (a procedure or event created through procedural-code's gap).
              ALTER COLUMN ... TYPE is PostgreSQL's spelling: MariaDB and MySQL refuse it as a
              syntax error (the tests send it), so there is nothing to catch.
    passes    SELECT 'drop table', a column named `drop`, `modify` or truncate_at, SELECT * FROM
              dropbox, ALTER TABLE ... ADD COLUMN / ADD INDEX / ALTER COLUMN ... SET DEFAULT /
              ENGINE = InnoDB / FORCE / RENAME INDEX, ALTER TABLE ... REMOVE PARTITIONING (no
              row is lost)
    cannot    DDL assembled at run time (PREPARE s FROM @sql / CONCAT(...), a stored procedure
              that runs it); DELETE of every row (see unbounded-write). A column named modify
              or change written bare in an ALTER TABLE is taken for the keyword (blocked). Pair
              it with an upstream user that does not hold DROP or ALTER.

unbounded-write
    catches   DELETE and UPDATE with no WHERE at the top level of the statement (also
              multi-table DELETE t FROM ... and UPDATE a JOIN b SET ..., after EXPLAIN /
              ANALYZE, after BEGIN [NOT ATOMIC], THEN / ELSE / DO / FOR EACH ROW in compound
              statements), and WHERE 1 / WHERE true / WHERE 1=1 / WHERE 'x'='x' / WHERE NOT false
              as the whole condition; a WHERE only inside parentheses does not count. LIMIT
              does not bound a write here: DELETE ... LIMIT 10 deletes ten arbitrary rows.
    passes    DELETE ... WHERE, UPDATE ... SET ... WHERE, INSERT ... ON DUPLICATE KEY UPDATE,
              SELECT ... FOR UPDATE, ON DELETE CASCADE
    cannot    other always-true conditions (WHERE id > 0, WHERE x OR 1); writes done by
              triggers, procedures and events created earlier; REPLACE INTO ... SELECT.

privilege-changes
    catches   GRANT, REVOKE, CREATE / ALTER / DROP / RENAME USER and ROLE, SET PASSWORD, SET
              DEFAULT ROLE, FLUSH PRIVILEGES, DEFINER = ... and SQL SECURITY DEFINER (an object
              that runs as another user), and INSERT / UPDATE / DELETE / REPLACE / LOAD DATA
              into the grant tables (mysql.user, mysql.global_priv, mysql.db, ...)
    cannot    what a user already holds; privileges changed by a procedure created earlier.

server-side-io
    catches   SELECT ... INTO OUTFILE / DUMPFILE, LOAD_FILE(), LOAD DATA / LOAD XML INFILE
              read by the server (LOAD DATA LOCAL, which reads the client's file, passes: the
              gateway refuses it at the protocol level unless load_data_local is set),
              INSTALL / UNINSTALL PLUGIN and SONAME, CREATE FUNCTION ... SONAME (UDFs), the
              sys_exec / sys_eval UDFs, SET GLOBAL / SET PERSIST / SET PERSIST_ONLY and
              @@global. / @@persist. assignments (MySQL's ALTER SYSTEM), CREATE / ALTER SERVER,
              and tables on the CONNECT, FEDERATED(X) and SPIDER engines (the server reaching
              out to files and other servers)
    cannot    a file name or engine assembled at run time; plugins already installed. The
              upstream user should not hold FILE, SUPER or INSERT on mysql.*.

procedural-code
    catches   CREATE [OR REPLACE] [DEFINER=...] FUNCTION / PROCEDURE / TRIGGER / EVENT /
              PACKAGE, ALTER EVENT, MariaDB's anonymous BEGIN NOT ATOMIC ... END blocks, and
              dynamic SQL whose text cannot be read: PREPARE ... FROM @var or an expression,
              EXECUTE IMMEDIATE of anything but a plain string
    passes    CALL and SELECT of routines that exist; PREPARE s FROM '<text>' (its text is
              judged as a statement); CREATE VIEW
    cannot    what existing routines, triggers and events do when they run.

session-tampering
    catches   SET ROLE; switching session state tracking (session_track_*) off or changing its
              list, which is how the gateway learns the session's real character set; SET
              NAMES / SET CHARACTER SET / character_set_client to a character set outside the
              allow-list (hoopwire/mysql/charsets.py) or to a value that is not a plain name
              (a collation number, a variable, an expression); the same inside SET STATEMENT
    passes    SET NAMES utf8mb4 (drivers send it at connect), SET sql_mode = ... (the lexer
              reads every statement under every sql_mode, so the guardrails do not depend on
              it), character_set_results, collation_connection
    cannot    a variable changed inside a procedure created earlier; the gateway follows the
              server's own session-state reports for those.

server-admin (MySQL only)
    catches   SHUTDOWN, RESTART, HANDLER (reads a table by its index, bypassing what a view
              would show), FLUSH, RESET MASTER / SLAVE / REPLICA / QUERY CACHE, PURGE BINARY /
              MASTER LOGS, CHANGE MASTER / REPLICATION, START / STOP SLAVE / REPLICA, SET
              sql_log_bin
    not here  KILL: the gateway never sends one as the client wrote it; it maps KILL
              [QUERY|CONNECTION] <id> of a session of the same identity to the upstream's
              thread id and refuses every other form (hoopwire.mysql._wire)
    cannot    the same statements inside routines created earlier.

All packs
    * Only the text of a statement is seen; what routines, triggers and events do when they
      run is not, and the upstream user's privileges are the control that covers those.
    * A client character set whose characters can end in a backslash or a quote byte (big5,
      cp932, gbk, sjis, gb18030; hoopwire/mysql/charsets.py) could hide a quote from the
      lexer: every rule set gets a rule refusing SET NAMES / SET CHARACTER SET /
      character_set_client to one (and to a value it cannot read: a variable, a number, an
      expression), and the gateway allows only safe ones at the handshake and follows the
      server's reports.
    * Hyperscan's \\b counts $ and non-ASCII bytes as non-word: a name such as a$drop or édrop
      can trip a keyword pattern. That errs towards blocking, never towards a bypass.
"""

from __future__ import annotations

from hoopwire.mysql.charsets import SAFE_CHARSETS
from hoopwire.policy.patterns import END, IDC, NEST, no_word, too_deep, word_except
from hoopwire.policy.rules import CODE, FULL, Pack

__all__ = ["CODE", "FULL", "Pack", "PACKS", "pack_names", "UNSAFE_CHARSET_PATTERNS",
           "UNREADABLE_PATTERN", "word_except"]


# ---------------------------------------------------------------------------------------------
# building blocks for patterns on the normalised text (hoopwire/policy/patterns.py; its
# word_except tells digits apart, so utf8mb3 and utf8mb4 are different words here)

# Text at the top level of one statement with no WHERE in it
_NO_WHERE = no_word(word_except("where"))
# where a DELETE / UPDATE of interest may begin: the statement start, a paren (a CTE of MySQL 8),
# after EXPLAIN / ANALYZE (MariaDB's ANALYZE runs it), and inside compound statements
_DML_START = (r"(?:^|[(;)]\s*|\b(?:explain|analyze|extended|partitions|atomic|begin|then|else"
              r"|do|row|loop|repeat)\s+|\bformat\s*=\s*[a-z]+\s+|:\s*)")
_WRITE = rf"{_DML_START}(?:delete|update)\b"
_TAUTOLOGY = (r"where\s+(?:\(\s*)*(?:true|not\s+false|not\s+0|[1-9][0-9]*|1\s*=\s*1|'\?'\s*=\s*'\?'"
              r"|'\?')(?:\s*\))*")

# where DDL of interest may begin: the statement start, and the bodies of compound statements
# (MariaDB's BEGIN NOT ATOMIC, IF ... THEN / ELSE, an event's DO, LOOP / REPEAT, a label)
_DDL_START = r"(?:^|\b(?:atomic|begin|then|else|do|loop|repeat)\s+|:\s*)"
# ALTER [ONLINE] [IGNORE] TABLE: the statement every ALTER pattern below is about
_ALTER_TABLE = _DDL_START + r"alter\s+(?:online\s+|ignore\s+)*table\b"

# SET ... (also after a comma in a SET list, and inside SET STATEMENT ... FOR)
_SET_ITEM = r"(?:^set\b|\bset\s+statement\b)(?:[^;]*[\s,@.])?"
_SCOPE = r"(?:(?:@@)?(?:session|local)\s*\.?\s*|@@)?"

# A client character set the lexer cannot read the server's way (hoopwire/mysql/charsets.py):
# SET NAMES / CHARACTER SET / character_set_client to any name outside the allow-list (bare,
# quoted, or an introducer such as _latin1'gbk'), or to anything that is not a plain name (a
# number is a collation id; a variable, a subquery or a function call is computed). Part of
# session-tampering, and added on its own to every rule set that does not enable that pack
# (hoopwire/mysql/dialect.py).
_CHARSET_OK = word_except(*sorted(SAFE_CHARSETS), "default")
_NOT_A_SAFE_NAME = (rf"(?:['\"`]?{_CHARSET_OK}(?:[^{IDC}]|$)|['\"`]?[^a-z0-9_$\x80-\xff'\"`\s]"
                    r"|['\"`](?:['\"`]|$))")
UNSAFE_CHARSET_PATTERNS = (
    (FULL, r"\bset\s+(?:names|character\s+set|charset)\s+" + _NOT_A_SAFE_NAME),
    (FULL, r"\bcharacter_set_client\b\s*(?::?=|\bto\b)\s*" + _NOT_A_SAFE_NAME),
)

# what the lexer's other readings give when there are too many to try (hoopwire.mysql._sqllex
# UNREADABLE, which starts with a NUL byte)
UNREADABLE_PATTERN = r"^\x00hoopwire:unreadable"

PACKS: dict[str, Pack] = {p.name: p for p in (
    Pack(
        name="destructive-ddl",
        summary="DROP, TRUNCATE, and ALTER TABLE that drops, retypes, renames or moves data",
        message="destructive DDL goes through a migration, not this connection",
        patterns=(
            (CODE, r"^drop\b"),
            (CODE, r"\bdrop\s+(?:temporary\s+)?(?:table|tables|database|schema|view|index"
                   r"|sequence|procedure|function|trigger|event|server|tablespace|package"
                   r"|logfile|spatial)\b"),
            (CODE, r"^truncate\b"),
            (CODE, r"\btruncate\s+(?:table|partition)\b"),
            (CODE, _ALTER_TABLE + r".*\bdrop\s+(?:`|" + word_except("default")
                   + rf"(?:[^{IDC}]|$))"),
            (CODE, _ALTER_TABLE + r".*\b(?:discard\s+(?:partition\b.*\b)?tablespace"
                   r"|truncate\s+partition)\b"),
            # every value rewritten into a type the text does not show to be as wide
            (CODE, _ALTER_TABLE + r".*\b(?:modify|change)\b"),
            (CODE, _ALTER_TABLE + r".*\bconvert\s+to\s+(?:character\s+set|charset)\b"),
            # IGNORE deletes the rows a new unique key refuses and cuts values without an error
            (CODE, _DDL_START + r"alter\s+(?:online\s+)?ignore\b"),
            # a renamed table or column is no longer the one masking rules and patterns name
            (CODE, _DDL_START + r"rename\s+tables?\b"),
            (CODE, _ALTER_TABLE + r".*\brename\s+(?:`|" + word_except("index", "key")
                   + rf"(?:[^{IDC}]|$))"),
            # rows moved to another table's name, or discarded by the engine
            (CODE, _ALTER_TABLE + r".*\b(?:exchange\s+partition|convert\s+(?:partition|table))\b"),
            (CODE, _ALTER_TABLE + r".*\bengine\s*=?\s*blackhole\b"),
            # MariaDB's CREATE OR REPLACE drops what it replaces: a table's rows are gone
            # (the red team emptied a table with CREATE OR REPLACE TABLE t (x int))
            (CODE, _DDL_START + r"create\s+or\s+replace\s+(?:temporary\s+)?table\b"),
        ),
    ),
    Pack(
        name="unbounded-write",
        summary="DELETE or UPDATE without a WHERE",
        message="DELETE and UPDATE need a WHERE clause",
        patterns=(
            (CODE, _WRITE + _NO_WHERE + rf"(?:{END}|{_TAUTOLOGY}\s*(?:;|\)|$|order\b|limit\b)"
                   rf"|{too_deep(NEST + 1)})"),
        ),
    ),
    Pack(
        name="privilege-changes",
        summary="GRANT, REVOKE, users, roles, passwords and definers",
        message="privilege changes are not made through this connection",
        patterns=(
            (CODE, r"\bgrant\b"),
            (CODE, r"\brevoke\b"),
            (CODE, r"\b(?:create|alter|drop|rename)\s+(?:or\s+replace\s+)?(?:user|role)\b"),
            (CODE, r"^set\s+(?:password|default\s+role)\b"),
            (CODE, r"\bflush\s+(?:[a-z_]+\s+)*privileges\b"),
            (CODE, r"\bdefiner\s*="),
            (CODE, r"\bsql\s+security\s+definer\b"),
            # (a name that is a keyword, `mysql` or `user`, reads `_mysql` in the code view)
            (CODE, r"^(?:insert|update|delete|replace|load)\b.*(?:\b|`_)mysql`?\s*\.\s*(?:`_)?(?:user"
                   r"|global_priv|db|tables_priv|columns_priv|procs_priv|proxies_priv"
                   r"|roles_mapping|default_roles|role_edges|password_history)(?:`|\b)"),
        ),
    ),
    Pack(
        name="server-side-io",
        summary="INTO OUTFILE, LOAD_FILE, LOAD DATA INFILE, plugins, UDFs, SET GLOBAL, "
                "remote tables",
        message="server-side file, plugin and network access is not allowed",
        patterns=(
            (CODE, r"\binto\s+(?:outfile|dumpfile)\b"),
            (CODE, r"\bload_file\b"),
            (CODE, r"\bload\s+(?:data|xml)\s+(?:(?:low_priority|concurrent)\s+)?infile\b"),
            (CODE, r"\b(?:install|uninstall)\s+(?:plugin|soname)\b"),
            (CODE, r"\bsoname\b"),
            (CODE, r"\bsys_(?:exec|eval|get|set)\b"),
            (CODE, r"^set\b(?:.*,)?\s*(?:global|persist|persist_only)\b"),
            (CODE, r"^set\b.*@@(?:global|persist|persist_only)\s*\."),
            (CODE, r"\b(?:create|alter)\s+(?:or\s+replace\s+)?server\b"),
            (CODE, r"\bengine\s*=?\s*(?:connect|federated|federatedx|spider)\b"),
        ),
    ),
    Pack(
        name="procedural-code",
        summary="functions, procedures, triggers, events, anonymous blocks and unreadable "
                "dynamic SQL",
        message="procedural and deferred code is not run or created through this connection",
        patterns=(
            (CODE, r"^create\s+(?:or\s+replace\s+)?(?:definer\s*=\s*\S+\s+)?"
                   r"(?:(?:aggregate|sql\s+security\s+[a-z]+)\s+)*"
                   r"(?:function|procedure|trigger|event|package)\b"),
            (CODE, r"^alter\s+(?:definer\s*=\s*\S+\s+)?event\b"),
            (CODE, r"^(?:[a-z0-9_$]+\s*:\s*)?begin\s+not\s+atomic\b"),
            (CODE, r"^prepare\s+\S+\s+from\s+[^'\s]"),
            (CODE, r"^execute\s+immediate\s+[^'\s]"),
        ),
    ),
    Pack(
        name="session-tampering",
        summary="SET ROLE, session tracking switched off, and unsafe client character sets",
        message="changing the session's role, its tracking or its client character set is not "
                "allowed",
        patterns=(
            (CODE, r"^set\s+role\b"),
            (CODE, r"\bset\s+statement\b.*\bsession_track_[a-z_]+\b"),
            (CODE, _SET_ITEM + _SCOPE + r"session_track_[a-z_]+\b"),
            *UNSAFE_CHARSET_PATTERNS,
        ),
    ),
    Pack(
        name="server-admin",
        summary="SHUTDOWN, HANDLER, FLUSH, replication and binary log control",
        message="server administration is not done through this connection",
        patterns=(
            (CODE, r"^(?:shutdown|restart)\b"),
            (CODE, r"^handler\b"),
            (CODE, r"^flush\b"),
            (CODE, r"^reset\s+(?:master|slave|replica|query\s+cache)\b"),
            (CODE, r"^purge\s+(?:binary|master)\s+logs\b"),
            (CODE, r"^change\s+(?:master|replication)\b"),
            (CODE, r"^(?:start|stop)\s+(?:all\s+)?(?:slave|slaves|replica|replicas|group_replication)\b"),
            (CODE, _SET_ITEM + _SCOPE + r"sql_log_bin\b"),
        ),
    ),
)}


def pack_names() -> tuple[str, ...]:
    return tuple(PACKS)
