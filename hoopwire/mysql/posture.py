"""What a connection's upstream MySQL/MariaDB account can do that masking cannot stop.

`hoopwire check-config --connect` logs in as each configured upstream user (the connection's
`user` and every [[connection.role]]) with the stored credentials and the configured TLS, the
way a session does (hoopwire/mysql/upstream.py), and asks the server. The findings keep the
PostgreSQL names (hoopwire/pg/posture.py) where they mean the same:

    raw_masked_read         SELECT on a base-table column a [[connection.mask]] column rule
                            masks (information_schema.COLUMNS.PRIVILEGES: global, schema,
                            table and column grants, and the enabled roles', in one word)
    masked_stats_read       mysql.column_stats (MariaDB's persistent statistics: min, max and
                            histogram are raw values) or information_schema.COLUMN_STATISTICS
                            (MySQL 8's histograms) show a masked column
    temp                    CREATE TEMPORARY TABLES (a copy of rows the masker does not know)
    create_database         global CREATE: may CREATE DATABASE
    create_schema           CREATE, CREATE VIEW or CREATE ROUTINE in a schema: a table to copy
                            rows into, a view or a stored function that hides a column's lineage
    superuser               SUPER (or ALL PRIVILEGES on *.*)
    createrole              CREATE USER (and MySQL 8's CREATE ROLE)
    read_server_files, write_server_files
                            FILE: LOAD_FILE() and LOAD DATA INFILE read the server host's
                            files, SELECT ... INTO OUTFILE writes them
    read_all_stats          PROCESS (every session's statement text, literals and all, in
                            SHOW PROCESSLIST) or SELECT on performance_schema (its statement
                            history)
    set_role                a role it can SET ROLE to (its default roles apply at login)
    grant_option            WITH GRANT OPTION anywhere: it can hand its privileges to another
                            account, which does not log in through the gateway

A role's privileges count as the account's, named "can SET ROLE to r, which has ...": a
statement through the gateway can run SET ROLE. Global and schema privileges come from SHOW
GRANTS (the account's, then SHOW GRANTS FOR each role it has, and theirs); information_schema's
USER_PRIVILEGES and SCHEMA_PRIVILEGES leave roles out. The column check reads COLUMNS as the
account, then again under SET ROLE of each role. A view column that passes a masked column
through is not inspected (the gateway masks it by the view's lineage at run time; the base
column's grant is what this check reports). No SHOW GRANTS line is printed: one may carry a
password hash.
"""

from __future__ import annotations

import asyncio
import re

from hoopwire.config import ConnectionConfig
from hoopwire.masking.engine import glob_regex     # the masker's own reading of a column glob
from hoopwire.mysql.packets import CLIENT, PacketError
from hoopwire.mysql.upstream import (Upstream, UpstreamError, connect_upstream,
                                     upstream_ssl_context)
from hoopwire.checks import Finding, roles_of     # what every protocol's posture reports

__all__ = ["Finding", "PostureError", "check_role", "roles_of", "database_of", "parse_grant",
           "Grant"]

_SYSTEM_SCHEMAS = ("information_schema", "mysql", "performance_schema", "sys")
_NAMES_SHOWN = 8
_ROLES_MAX = 64             # roles followed from one account: a bounded number of queries
# What ALL [PRIVILEGES] stands for, at the levels the findings look at
_ALL = {"SELECT", "CREATE", "CREATE TEMPORARY TABLES", "CREATE VIEW", "CREATE ROUTINE",
        "SUPER", "FILE", "PROCESS", "CREATE USER"}


class PostureError(Exception):
    """An account could not be checked (login refused, a query failed); safe to print."""


def database_of(cfg: ConnectionConfig) -> str:
    """The schema an account is checked in: the connection's, or none (clients pick one)."""
    return cfg.database or ""


class Grant:
    """One SHOW GRANTS line, read: privileges (upper case, column lists dropped) on `on`
    (("*", "*") global, (schema, "*"), (schema, table)), or a role granted (`role`); to
    `grantee` (the user or role name, without its host)."""

    __slots__ = ("privileges", "on", "grant_option", "role", "grantee")

    def __init__(self, privileges=frozenset(), on=None, grant_option=False, role=None,
                 grantee=""):
        self.privileges, self.on, self.grant_option, self.role, self.grantee = \
            privileges, on, grant_option, role, grantee

    def __repr__(self) -> str:
        return (f"Grant({sorted(self.privileges)}, {self.on}, {self.grant_option}, {self.role}, "
                f"{self.grantee})")


_IDENT = r"(?:`(?:[^`]|``)*`|'(?:[^']|'')*'|[A-Za-z0-9_$*%-]+)"
_GRANT = re.compile(r"\AGRANT\s+(?P<what>.*?)\s+ON\s+(?:(?:TABLE|FUNCTION|PROCEDURE|PACKAGE"
                    r"(?:\s+BODY)?)\s+)?(?P<on>" + _IDENT + r"(?:\." + _IDENT + r")?)\s+TO\s+"
                    r"(?P<rest>.*)\Z", re.S | re.I)
_ROLE_GRANT = re.compile(r"\AGRANT\s+(?P<role>" + _IDENT + r")(?:@" + _IDENT + r")?\s+TO\s+",
                         re.S | re.I)


def _unquote(name: str) -> str:
    if len(name) >= 2 and name[0] == name[-1] and name[0] in "`'":
        q = name[0]
        return name[1:-1].replace(q + q, q)
    return name


def _split_privileges(what: str) -> list[str]:
    """`SELECT (a, b), INSERT, CREATE TEMPORARY TABLES` -> the names, column lists dropped."""
    out, depth, cur = [], 0, []
    for ch in what:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
            continue
        elif depth == 0:
            cur.append(ch)
    out.append("".join(cur))
    return [" ".join(p.split()).upper() for p in out if p.strip()]


def parse_grant(line: str) -> Grant | None:
    """One SHOW GRANTS line (MariaDB's and MySQL's), or None when it is not one we read."""
    line = line.strip()
    m = _GRANT.match(line)
    if m is not None:
        privs = set(_split_privileges(m.group("what")))
        if privs & {"ALL", "ALL PRIVILEGES"}:
            privs |= _ALL
        on = m.group("on")
        parts = re.findall(_IDENT, on)
        parts = [_unquote(p) for p in parts if p != "."]
        if len(parts) == 1:
            parts = ["", parts[0]]          # a table of the current schema: not in SHOW GRANTS
        rest = m.group("rest")
        return Grant(frozenset(privs), (parts[0], parts[1]),
                     "WITH GRANT OPTION" in rest.upper() or "GRANT OPTION" in privs,
                     grantee=_grantee(rest))
    m = _ROLE_GRANT.match(line)
    if m is not None:
        return Grant(role=_unquote(m.group("role")),
                     grant_option="WITH ADMIN OPTION" in line.upper(),
                     grantee=_grantee(line[m.end():]))
    return None


def _grantee(rest: str) -> str:
    m = re.match(_IDENT, rest.strip())
    return _unquote(m.group(0)) if m else ""


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _names(names) -> str:
    names = list(names)
    shown = ", ".join(names[:_NAMES_SHOWN])
    return shown + (f" and {len(names) - _NAMES_SHOWN} more" if len(names) > _NAMES_SHOWN else "")


async def check_role(cfg: ConnectionConfig, user: str, password, database: str) -> list[Finding]:
    """Log in as `user` (to `database`, when set) and return what it can do. PostureError."""
    host, port = cfg.upstream
    try:
        up = await connect_upstream(
            host, port, user=user, password=password.get() if password is not None else None,
            database=database or None, capabilities=CLIENT.PROTOCOL_41 | CLIENT.LONG_FLAG,
            attrs={"program_name": "hoopwire-check-config"},
            ssl_context=upstream_ssl_context(cfg.upstream_tls, cfg.upstream_ca),
            timeout=cfg.connect_timeout)
    except UpstreamError as e:
        raise PostureError(str(e)) from None   # operator text: server message, never a password
    bound = max(cfg.connect_timeout, 1.0) * 3
    try:
        return await asyncio.wait_for(_inspect(cfg, up, user, database), bound)
    except asyncio.TimeoutError:
        raise PostureError(f"no answer from {host}:{port} within {bound:g}s") from None
    except UpstreamError as e:
        raise PostureError(str(e)) from None
    except (OSError, asyncio.IncompleteReadError, PacketError) as e:
        raise PostureError(f"lost the connection to {host}:{port}: {e!r}") from None
    finally:
        up.close()


async def _grants(up: Upstream, user: str, roles: list[str]) -> dict[str, list[Grant]]:
    """The account's grants ("") and, for each role it can SET ROLE to, what that role brings
    (its own grants and its roles'): {"" or role: grants}. Read by SHOW GRANTS, at login
    (default roles enabled) and again under SET ROLE of each role: a role's lines name the
    role as grantee, and SHOW GRANTS FOR a role needs access to the mysql schema."""
    out: dict[str, list[Grant]] = {"": []}

    def split(rows, role: str | None) -> None:
        for g in (parse_grant(r[0] or "") for r in rows):
            if g is None:
                continue
            if g.grantee == user:
                out[""].append(g)
            else:
                # under SET ROLE, everything not the account's own comes with that role;
                # at login, with the default role that granted it
                out.setdefault(role if role is not None else g.grantee, []).append(g)

    split(await up.query("SHOW GRANTS"), None)
    for role in roles[:_ROLES_MAX]:
        try:
            await up.query(f"SET ROLE {_quote(role)}")
            rows = await up.query("SHOW GRANTS")
        except UpstreamError:
            continue            # a role it cannot enable: its SET ROLE is still a finding
        split(rows, role)
    for gs in out.values():     # the same line seen at login and again under SET ROLE
        gs[:] = list({repr(g): g for g in gs}.values())
    return out


async def _inspect(cfg: ConnectionConfig, up: Upstream, user: str, database: str) -> list[Finding]:
    found: list[Finding] = []

    def add(kind: str, detail: str) -> None:
        found.append(Finding(cfg.name, user, database, kind, detail))

    roles: dict[str, bool] = {}     # roles granted to the account itself -> a default role
    for grantee, name, default in await up.query(
            "SELECT GRANTEE, ROLE_NAME, IS_DEFAULT FROM information_schema.APPLICABLE_ROLES"):
        if name and _unquote((grantee or "").split("@", 1)[0].strip("'`")) == user:
            roles[name] = roles.get(name, False) or (default or "").upper() == "YES"
    grants = await _grants(up, user, list(roles))

    def via(who: str) -> str:
        if who == "":
            return ""
        return (f"its default role {who} has " if roles.get(who)
                else f"can SET ROLE to {who}, which has ")

    def holders(test) -> list[tuple[str, Grant]]:
        return [(who, g) for who, gs in grants.items() for g in gs
                if g.role is None and test(g)]

    def report(kind: str, test, what: str) -> None:
        seen = set()
        for who, g in holders(test):
            on = "*.*" if g.on == ("*", "*") else f"{g.on[0]}.{g.on[1]}"
            key = (who, on)
            if key in seen:
                continue
            seen.add(key)
            add(kind, f"{via(who)}{what} on {on}")

    def has(priv: str, level: str = "any"):
        def test(g: Grant) -> bool:
            if priv not in g.privileges:
                return False
            return level == "any" or (level == "global" and g.on == ("*", "*"))
        return test

    report("superuser", has("SUPER", "global"), "SUPER")
    report("read_server_files", has("FILE", "global"), "FILE (LOAD_FILE, LOAD DATA INFILE)")
    report("write_server_files", has("FILE", "global"), "FILE (SELECT ... INTO OUTFILE)")
    report("createrole", lambda g: g.on == ("*", "*") and bool(
        g.privileges & {"CREATE USER", "CREATE ROLE"}), "CREATE USER")
    report("read_all_stats", has("PROCESS", "global"),
           "PROCESS: every session's statement text in SHOW PROCESSLIST")
    report("read_all_stats", lambda g: "SELECT" in g.privileges and (
        g.on == ("*", "*") or g.on[0].lower() == "performance_schema"),
        "SELECT on performance_schema: every session's statement history")
    report("temp", has("CREATE TEMPORARY TABLES"), "CREATE TEMPORARY TABLES")
    report("create_database", has("CREATE", "global"), "CREATE (CREATE DATABASE)")
    for priv in ("CREATE", "CREATE VIEW", "CREATE ROUTINE"):
        report("create_schema", lambda g, p=priv: p in g.privileges and g.on[1] == "*",
               priv)
    report("grant_option", lambda g: g.grant_option, "WITH GRANT OPTION")
    for name, default in roles.items():
        add("set_role", f"has the default role {name} (enabled at login)" if default
            else f"can SET ROLE to {name}")
    for who, gs in grants.items():
        for g in gs:
            if g.role is not None and g.grant_option:
                add("grant_option", f"{via(who)}WITH ADMIN OPTION on role {g.role}")

    await _masked_columns(cfg, up, add, list(roles))
    return found


def _rules(cfg: ConnectionConfig) -> list[tuple[str, re.Pattern]]:
    return [(f"mask[{i}]", re.compile("(?:" + "|".join(glob_regex(g) for g in mk.columns) +
                                      r")\Z", re.IGNORECASE | re.DOTALL))
            for i, mk in enumerate(cfg.masks) if mk.columns]


async def _masked_columns(cfg: ConnectionConfig, up: Upstream, add, roles: list[str]) -> None:
    """raw_masked_read and masked_stats_read, as the account and under each role."""
    rules = _rules(cfg)
    if not rules:
        return

    def rule_of(schema: str, table: str, column: str) -> str | None:
        name = f"{schema}.{table}.{column}"
        return next((label for label, rx in rules if rx.match(name)), None)

    # (column, rule[, source]) -> "" (the account itself) and the roles that read it
    readable: dict[tuple, list[str]] = {}
    stats: dict[tuple, list[str]] = {}
    for role in [None] + roles[:_ROLES_MAX]:
        if roles:
            # the account alone first (no role, not even a default one), then each role
            try:
                await up.query("SET ROLE NONE" if role is None else f"SET ROLE {_quote(role)}")
            except UpstreamError:
                continue
        rows = await up.query(
            "SELECT c.TABLE_SCHEMA, c.TABLE_NAME, c.COLUMN_NAME, c.PRIVILEGES "
            "FROM information_schema.COLUMNS c JOIN information_schema.TABLES t "
            "ON t.TABLE_SCHEMA = c.TABLE_SCHEMA AND t.TABLE_NAME = c.TABLE_NAME "
            "WHERE t.TABLE_TYPE = 'BASE TABLE' AND c.TABLE_SCHEMA NOT IN "
            "('information_schema', 'mysql', 'performance_schema', 'sys')")
        for schema, table, column, privileges in rows:
            label = rule_of(schema, table, column)
            if label and "select" in (privileges or "").lower().split(","):
                readable.setdefault((f"{schema}.{table}.{column}", label), []).append(role or "")
        for sql in ("SELECT db_name, table_name, column_name FROM mysql.column_stats",
                    "SELECT SCHEMA_NAME, TABLE_NAME, COLUMN_NAME "
                    "FROM information_schema.COLUMN_STATISTICS"):
            try:
                rows = await up.query(sql)
            except UpstreamError:
                continue      # not readable (1142), or not this server's (1109, 1146)
            source = sql.split(" FROM ")[1]
            for schema, table, column in rows:
                label = rule_of(schema, table, column)
                if label:
                    stats.setdefault((f"{schema}.{table}.{column}", label, source),
                                     []).append(role or "")
    for key in sorted(readable):
        column, label = key
        who = readable[key]
        how = "can SELECT" if "" in who else \
            f"can SET ROLE to {_names(who)}, which can SELECT"
        add("raw_masked_read", f"{how} {column} (masked by {label}) raw")
    for key in sorted(stats):
        column, label, source = key
        who = stats[key]
        how = "" if "" in who else f"as {_names(who)} (SET ROLE): "
        add("masked_stats_read", f"{how}{source} shows {column} (masked by {label}): its "
                                 "values and histogram are raw values")
