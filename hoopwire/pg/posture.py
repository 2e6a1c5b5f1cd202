"""What a connection's upstream PostgreSQL role can do that masking cannot stop.

`hoopwire check-config --connect` logs in as each configured upstream role (the connection's
`user` and every [[connection.role]]), with the stored credentials and the configured TLS, the
way a session does (hoopwire/pg/upstream.py), and asks the server -- never guesses from names:

    raw_masked_read         SELECT on a column a [[connection.mask]] column rule masks, on the
                            table itself or through a view column that passes it through
                            unchanged (the catalog's view lineage, hoopwire/pg/catalog.py)
    masked_stats_read       pg_stats rows of a masked column are visible (most_common_vals and
                            the histogram are raw values)
    temp, create_database   TEMP / CREATE on the connection's database
    create_schema           CREATE on a schema (a function, a table to copy rows into)
    superuser, createrole,  the attribute, on the role itself or on a role it can SET ROLE to
    bypassrls               (attributes are never inherited, only reached by SET ROLE)
    read_server_files, write_server_files, execute_server_program
                            membership in pg_read_server_files / pg_write_server_files /
                            pg_execute_server_program, direct or through other roles
    read_all_stats          pg_read_all_stats (pg_monitor includes it): every session's
                            pg_stat_activity.query, literals and all
    set_role                any other role it can SET ROLE to

Memberships count when their privileges apply without SET ROLE (`USAGE`) or when SET ROLE can
reach them (`MEMBER` on PostgreSQL 15 and older, the SET option from 16 on): either way a
statement through the gateway can use them.

A view column that is an expression over a masked column (`right(ssn, 4)`) is not a finding:
that is the in-database mask the README recommends, and what it reveals is its owner's choice.

Every query names objects by OID and number or uses current_user: nothing from the config or
the catalog is spliced into SQL text.
"""

from __future__ import annotations

import asyncio
import re

from hoopwire.checks import Finding, roles_of     # what every protocol's posture reports
from hoopwire.config import ConnectionConfig
from hoopwire.masking.engine import glob_regex     # the masker's own reading of a column glob
from hoopwire.pg import messages as m
from hoopwire.pg.catalog import FIRST_NORMAL_OID, Catalog
from hoopwire.pg.upstream import Upstream, UpstreamError, connect_upstream, upstream_ssl_context

__all__ = ["Finding", "PostureError", "check_role", "roles_of"]

_SYSTEM_SCHEMAS = ("pg_catalog", "information_schema")
# The server's built-in roles that hand out the file system and programs of the server host.
_SERVER_ROLES = {"pg_read_server_files": "read_server_files",
                 "pg_write_server_files": "write_server_files",
                 "pg_execute_server_program": "execute_server_program"}
_ATTRIBUTES = ("superuser", "createrole", "bypassrls")
_CHUNK = 1000               # masked columns per privilege query: a bounded statement size
_NAMES_SHOWN = 8            # role and schema names listed in one finding line


class PostureError(Exception):
    """A role could not be checked (login refused, a query failed); the text is safe to print."""


def database_of(cfg: ConnectionConfig) -> str:
    """The database a role is checked in: a connection without one lets clients pick, and the
    server's own default database is then the one checked (privileges on others can differ)."""
    return cfg.database or "postgres"


async def check_role(cfg: ConnectionConfig, user: str, password, database: str) -> list[Finding]:
    """Log in as `user` to `database` and return what it can do. Raises PostureError."""
    host, port = cfg.upstream
    try:
        up = await connect_upstream(
            host, port, user=user, password=password.get() if password is not None else None,
            params={"database": database, "application_name": "hoopwire-check-config"},
            tls_mode=cfg.upstream_tls,
            ssl_context=upstream_ssl_context(cfg.upstream_tls, cfg.upstream_ca),
            timeout=cfg.connect_timeout)
    except UpstreamError as e:
        raise PostureError(str(e)) from None   # operator text: server message, never a password
    try:
        return await asyncio.wait_for(_inspect(cfg, up, user, database),
                                      max(cfg.connect_timeout, 1.0) * 3)
    except asyncio.TimeoutError:
        raise PostureError(f"no answer from {host}:{port} within "
                           f"{max(cfg.connect_timeout, 1.0) * 3:g}s") from None
    except (OSError, asyncio.IncompleteReadError, m.ProtocolError) as e:
        raise PostureError(f"lost the connection to {host}:{port}: {e!r}") from None
    finally:
        try:
            up.writer.write(m.message(b"X"))
            up.writer.close()
        except Exception:  # noqa: BLE001 -- closing a connection that may be gone already
            pass


async def _query(up: Upstream, sql: str) -> list[tuple]:
    """One simple Query; the rows as tuples of text (None for NULL)."""
    up.writer.write(m.message(b"Q", sql.encode() + b"\0"))
    rows, error = [], None
    while True:
        kind, body = await m.read_message(up.reader, max_size=64 * 1024 * 1024)
        if kind == b"D":
            rows.append(tuple(None if v is None else v.decode("utf-8", "replace")
                              for v in m.datarow_values(body)))
        elif kind == b"E":
            error = m.parse_fields(body).get("M", "error")
        elif kind == b"Z":
            break
    if error is not None:
        raise PostureError(f"query failed: {error}")
    return rows


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_NAMES_SHOWN])
    return shown + (f" and {len(names) - _NAMES_SHOWN} more" if len(names) > _NAMES_SHOWN else "")


async def _inspect(cfg: ConnectionConfig, up: Upstream, user: str, database: str) -> list[Finding]:
    found: list[Finding] = []

    def add(kind: str, detail: str) -> None:
        found.append(Finding(cfg.name, user, database, kind, detail))

    (row,) = await _query(up, (
        "SELECT r.rolsuper, r.rolcreaterole, r.rolbypassrls, "
        "has_database_privilege(current_database(), 'TEMP'), "
        "has_database_privilege(current_database(), 'CREATE'), "
        "current_setting('server_version_num')::int "
        "FROM pg_catalog.pg_roles r WHERE r.rolname = current_user"))
    superuser, createrole, bypassrls, temp, create_db = (v == "t" for v in row[:5])
    # PostgreSQL 16 split membership into INHERIT and SET options; before it, a member could
    # always SET ROLE.
    set_priv = "SET" if int(row[5]) >= 160000 else "MEMBER"

    if temp:
        add("temp", f"may create temporary tables in database {database}")
    if create_db:
        add("create_database", f"may CREATE schemas (and publications) in database {database}")
    schemas = [r[0] for r in await _query(up, (
        "SELECT n.nspname FROM pg_catalog.pg_namespace n "
        "WHERE has_schema_privilege(n.oid, 'CREATE') "
        "AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)' ORDER BY 1"))]
    if schemas:
        add("create_schema", f"may CREATE in schema {_names(schemas)}")

    reach = await _query(up, (
        "SELECT r.rolname, r.rolsuper, r.rolcreaterole, r.rolbypassrls, "
        f"pg_has_role(r.oid, 'USAGE'), pg_has_role(r.oid, '{set_priv}') "
        "FROM pg_catalog.pg_roles r WHERE r.rolname <> current_user "
        f"AND (pg_has_role(r.oid, 'USAGE') OR pg_has_role(r.oid, '{set_priv}')) ORDER BY 1"))
    reach = [(name, su == "t", cr == "t", br == "t", usage == "t", can_set == "t")
             for name, su, cr, br, usage, can_set in reach]
    for attr, own, i in zip(_ATTRIBUTES, (superuser, createrole, bypassrls), (1, 2, 3)):
        via = [r[0] for r in reach if r[i] and r[5]]
        if own:
            add(attr, f"the role has {attr.upper()}")
        elif superuser:
            add(attr, f"superuser: has what {attr.upper()} gives")
        elif via:
            add(attr, f"can SET ROLE to {_names(via)}, which has {attr.upper()}")

    def how(r) -> str:
        return "its privileges apply without SET ROLE" if r[4] else "reachable by SET ROLE"
    by_name = {r[0]: r for r in reach}
    for role, kind in _SERVER_ROLES.items():
        r = by_name.get(role)
        if superuser:
            add(kind, f"superuser: has what {role} gives")
        elif r is not None:
            add(kind, f"member of {role} ({how(r)})")
    stats = by_name.get("pg_read_all_stats")
    if superuser:
        add("read_all_stats", "superuser: reads every session's pg_stat_activity.query")
    elif stats is not None:
        through = " through pg_monitor" if "pg_monitor" in by_name else ""
        add("read_all_stats", f"member of pg_read_all_stats{through} ({how(stats)}): reads "
                              "every session's pg_stat_activity.query")
    settable = [r[0] for r in reach if r[5]]
    if superuser:
        add("set_role", "superuser: can SET ROLE to any role")
    elif settable:
        add("set_role", f"can SET ROLE to {_names(settable)}")

    # a superuser reads everything as itself: the roles it could become add nothing
    await _masked_columns(cfg, up, add, set_priv if not superuser else None)
    return found


async def _masked_columns(cfg: ConnectionConfig, up: Upstream, add, set_priv: str | None) -> None:
    """raw_masked_read and masked_stats_read for the connection's column rules. A column counts
    as readable when this role can read it (its own and inherited privileges) or a role it can
    SET ROLE to can (`set_priv`: the pg_has_role privilege that says so; None: not asked)."""
    rules = [(f"mask[{i}]", re.compile("(?:" + "|".join(glob_regex(g) for g in mk.columns) + r")\Z",
                                      re.IGNORECASE | re.DOTALL))
             for i, mk in enumerate(cfg.masks) if mk.columns]
    if not rules:
        return

    async def connect():
        return up
    # the catalog as this role sees it, read over the session being inspected
    catalog = Catalog(connect, database="", timeout=max(cfg.connect_timeout, 1.0) * 2)
    try:
        await catalog.load()
    except Exception as e:  # noqa: BLE001 -- CatalogError, or what the connection raised
        raise PostureError(f"cannot read the catalog: {e}") from None

    # (oid, attnum) -> (what to call it, the masked base column, the rule)
    masked: dict[tuple[int, int], tuple[str, str, str]] = {}
    for oid, rel in catalog.relations.items():
        if rel.placeholder or oid < FIRST_NORMAL_OID or rel.schema in _SYSTEM_SCHEMAS \
                or rel.kind == "S":
            continue
        for attnum, (col, _type) in rel.columns.items():
            src = catalog.source(oid, attnum)
            if src is None:
                continue     # an expression (a view's in-database mask): no source column
            base = ".".join(src)
            for label, rx in rules:
                if rx.match(base):
                    masked[(oid, attnum)] = (f"{rel.schema}.{rel.name}.{col}", base, label)
                    break
    keys = sorted(masked)
    roles = "r.rolname = current_user"
    if set_priv is not None:
        roles += f" OR pg_has_role(r.oid, '{set_priv}')"
    readable: dict[tuple[int, int], list[str]] = {}      # column -> roles that read it
    for i in range(0, len(keys), _CHUNK):
        part = keys[i:i + _CHUNK]
        oids = ",".join(str(o) for o, _ in part)
        nums = ",".join(str(a) for _, a in part)
        rows = await _query(up, (
            "SELECT t.o::int8, t.a, r.rolname = current_user, r.rolname "
            f"FROM unnest('{{{oids}}}'::oid[], '{{{nums}}}'::int2[]) AS t(o, a) "
            f"CROSS JOIN (SELECT r.oid, r.rolname FROM pg_catalog.pg_roles r WHERE {roles}) r "
            "WHERE has_column_privilege(r.oid, t.o, t.a, 'SELECT') ORDER BY 3 DESC, 4"))
        for o, a, own, role in rows:
            readable.setdefault((int(o), int(a)), []).append("" if own == "t" else role)
    for key in sorted(readable, key=lambda k: masked[k][0]):
        name, base, label = masked[key]
        who = readable[key]
        how = "can SELECT" if who[0] == "" else f"can SET ROLE to {_names(who)}, which can SELECT"
        if name == base:
            add("raw_masked_read", f"{how} {name} (masked by {label}) raw")
        else:
            add("raw_masked_read", f"{how} {name} raw: it passes {base} (masked by "
                                   f"{label}) through unchanged")

    tables = sorted({o for (o, _), (name, base, _l) in masked.items() if name == base})
    if tables:
        rows = await _query(up, (
            "SELECT s.schemaname::text, s.tablename::text, s.attname::text "
            "FROM pg_catalog.pg_stats s WHERE (s.schemaname, s.tablename) IN ("
            "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            f"WHERE c.oid = ANY('{{{','.join(map(str, tables))}}}'::oid[])) ORDER BY 1, 2, 3"))
        bases = {base: label for (name, base, label) in masked.values() if name == base}
        for schema, table, col in dict.fromkeys(rows):
            full = f"{schema}.{table}.{col}"
            if full in bases:
                add("masked_stats_read", f"pg_stats shows {full} (masked by {bases[full]}): "
                                         "its most common values and histogram are raw values")
