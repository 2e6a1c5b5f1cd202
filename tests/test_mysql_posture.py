"""`hoopwire check-config --connect` for a mysql connection: the upstream account is part of
the boundary.

Real MariaDB (the session's `mariadb`), accounts made per test, the real CLI as a subprocess. An
account with a strict grant set (column-level SELECT beside the masked column, DML on another
table) passes; the same set plus one broad privilege shows that privilege's finding and fails
the run, for every privilege in BAD -- granted directly, or through a role it can SET ROLE to.
Pure-function cases for the SHOW GRANTS reader too.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys

import pytest

from helpers import REPO_ROOT, to_toml
from hoopwire.mysql.posture import parse_grant
from mysqlgw import mysql_gateway_config

DB = "posture_my"
MASKS = [{"columns": [f"{DB}.people.ssn"], "strategy": "redact"}]


@pytest.fixture(scope="module")
def db(mariadb):
    """people(id, name, ssn) with persistent statistics (MariaDB's mysql.column_stats: min, max
    and a histogram of ssn), and orders."""
    mariadb.sql(f"CREATE DATABASE IF NOT EXISTS {DB}")
    mariadb.sql(f"CREATE TABLE IF NOT EXISTS {DB}.people (id int PRIMARY KEY, name varchar(40), "
                "ssn varchar(11)); "
                f"CREATE TABLE IF NOT EXISTS {DB}.orders (id int PRIMARY KEY, person int, "
                "total int); "
                f"DELETE FROM {DB}.people; "
                f"INSERT INTO {DB}.people SELECT seq, CONCAT('person ', seq), "
                "CONCAT(LPAD(seq % 7, 3, '0'), '-45-6789') FROM seq_1_to_200; "
                f"ANALYZE TABLE {DB}.people PERSISTENT FOR ALL", DB)
    assert mariadb.sql(f"SELECT COUNT(*) FROM mysql.column_stats WHERE db_name = '{DB}' "
                       "AND column_name = 'ssn'") == [(1,)]
    return DB


# The strict set: every column of people but the masked one, DML on orders.
GOOD = [f"SELECT (id, name) ON {DB}.people", f"SELECT, INSERT, UPDATE, DELETE ON {DB}.orders"]

# (the finding, what to add to the strict set). {grp} is a role made for the test and granted
# to the account when the line names it; "role:" grants the privilege to {grp} instead.
BAD = [
    ("raw_masked_read", f"GRANT SELECT (ssn) ON {DB}.people TO {{r}}"),
    ("raw_masked_read", f"GRANT SELECT ON {DB}.people TO {{r}}"),
    ("raw_masked_read", f"GRANT SELECT ON {DB}.* TO {{r}}"),
    ("raw_masked_read", "GRANT SELECT ON *.* TO {r}"),
    ("raw_masked_read", f"GRANT SELECT ON {DB}.people TO {{grp}}; GRANT {{grp}} TO {{r}}"),
    ("raw_masked_read", f"GRANT SELECT ON {DB}.people TO {{grp}}; GRANT {{grp}} TO {{r}}; "
                        "SET DEFAULT ROLE {grp} FOR {r}"),                  # a default role
    ("masked_stats_read", "GRANT SELECT ON mysql.column_stats TO {r}"),
    ("temp", f"GRANT CREATE TEMPORARY TABLES ON {DB}.* TO {{r}}"),
    ("create_database", "GRANT CREATE ON *.* TO {r}"),
    ("create_schema", f"GRANT CREATE ON {DB}.* TO {{r}}"),
    ("create_schema", f"GRANT CREATE VIEW ON {DB}.* TO {{r}}"),
    ("create_schema", f"GRANT CREATE ROUTINE ON {DB}.* TO {{r}}"),
    ("superuser", "GRANT SUPER ON *.* TO {r}"),
    ("superuser", "GRANT ALL PRIVILEGES ON *.* TO {r}"),
    ("superuser", "GRANT SUPER ON *.* TO {grp}; GRANT {grp} TO {r}"),          # by SET ROLE
    ("createrole", "GRANT CREATE USER ON *.* TO {r}"),
    ("read_server_files", "GRANT FILE ON *.* TO {r}"),
    ("write_server_files", "GRANT FILE ON *.* TO {r}"),
    ("read_all_stats", "GRANT PROCESS ON *.* TO {r}"),
    ("read_all_stats", "GRANT SELECT ON performance_schema.* TO {r}"),
    ("set_role", "GRANT {grp} TO {r}"),
    ("grant_option", f"GRANT SELECT ON {DB}.orders TO {{r}} WITH GRANT OPTION"),
]


@pytest.fixture
def accounts(mariadb, db):
    """make(extra_sql) -> a new account with the strict set plus `extra_sql`; dropped after."""
    made = []

    def make(extra: str = "") -> str:
        tag = secrets.token_hex(4)
        r, grp = f"gw_{tag}", f"grp_{tag}"
        mariadb.server.create_user(r, secrets.token_urlsafe(18), grants=GOOD)
        mariadb.sql(f"CREATE ROLE {grp}")
        made.extend([(r, "USER"), (grp, "ROLE")])
        if extra:
            mariadb.sql(extra.format(r=f"'{r}'@'%'", grp=grp))
        return r

    yield make
    for name, kind in made:
        mariadb.sql(f"DROP {kind} IF EXISTS " + (f"'{name}'@'%'" if kind == "USER" else name))


def _config(tmp_path, mariadb, idp, user: str, posture: dict | None = None, **conn) -> str:
    cfg = mysql_gateway_config(mariadb, idp, listen="127.0.0.1:0", database=DB, user=user,
                               password_env="POSTURE_PW", mask=MASKS, **conn)
    if posture is not None:
        cfg["posture"] = posture
    path = tmp_path / f"{user}.toml"
    path.write_text(to_toml(cfg))
    return str(path)


def _check(path: str, password: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, POSTURE_PW=password)
    return subprocess.run([sys.executable, "-m", "hoopwire", "check-config", path, "--connect",
                           *args], capture_output=True, text=True, env=env, timeout=120)


def _findings(r: subprocess.CompletedProcess) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for f in json.loads(r.stdout)["findings"]:
        out.setdefault(f["kind"], []).append(f)
    return out


def test_the_strict_grant_set_passes(tmp_path, mariadb, idp, accounts):
    user = accounts()
    pw = mariadb.passwords[user]
    path = _config(tmp_path, mariadb, idp, user)
    r = _check(path, pw)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 error(s), 0 finding(s)" in r.stdout, r.stdout
    assert f"upstream my ({user}@127.0.0.1:{mariadb.port}/{DB}" in r.stdout, r.stdout
    r = _check(path, pw, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["findings"] == [], r.stdout
    assert pw not in r.stdout + r.stderr


@pytest.mark.parametrize("kind,extra", BAD, ids=[f"{k}:{e.split(' TO ')[0][6:40]}"
                                                 for k, e in BAD])
def test_each_broad_privilege_shows_its_finding(tmp_path, mariadb, idp, accounts, kind, extra):
    user = accounts(extra)
    pw = mariadb.passwords[user]
    path = _config(tmp_path, mariadb, idp, user)
    r = _check(path, pw, "--json")
    assert r.returncode == 3, r.stdout + r.stderr
    found = _findings(r)
    assert kind in found, r.stdout
    assert all(f["fail"] and f["user"] == user for f in found[kind])
    assert pw not in r.stdout + r.stderr
    assert "IDENTIFIED BY" not in r.stdout + r.stderr     # no SHOW GRANTS line (a hash) shown
    r = _check(path, pw)
    assert r.returncode == 3
    assert any(line.startswith(f"FAIL {kind}: connection my, role {user} on {DB}: ")
               for line in r.stdout.splitlines()), r.stdout


def test_the_findings_say_what_and_through_which_role(tmp_path, mariadb, idp, accounts):
    user = accounts(f"GRANT SELECT ON {DB}.people TO {{grp}}; GRANT {{grp}} TO {{r}}; "
                    "GRANT FILE ON *.* TO {grp}")
    grp = user.replace("gw_", "grp_")
    r = _check(_config(tmp_path, mariadb, idp, user), mariadb.passwords[user], "--json")
    found = _findings(r)
    assert [f["detail"] for f in found["raw_masked_read"]] == [
        f"can SET ROLE to {grp}, which can SELECT {DB}.people.ssn (masked by mask[0]) raw"]
    assert [f["detail"] for f in found["read_server_files"]] == [
        f"can SET ROLE to {grp}, which has FILE (LOAD_FILE, LOAD DATA INFILE) on *.*"]
    assert [f["detail"] for f in found["set_role"]] == [f"can SET ROLE to {grp}"]
    # a column grant on the other columns is not a read of the masked one
    assert not any("people.name" in f["detail"] or "people.id" in f["detail"]
                   for f in found["raw_masked_read"])


def test_fail_on_decides_the_exit_status(tmp_path, mariadb, idp, accounts):
    user = accounts(f"GRANT CREATE TEMPORARY TABLES ON {DB}.* TO {{r}}")
    pw = mariadb.passwords[user]
    r = _check(_config(tmp_path, mariadb, idp, user, posture={"fail_on": []}), pw)
    assert r.returncode == 0, r.stdout + r.stderr
    assert any(line.startswith(f"warn temp: connection my, role {user}")
               for line in r.stdout.splitlines()), r.stdout
    r = _check(_config(tmp_path, mariadb, idp, user, posture={"fail_on": ["temp"]}), pw)
    assert r.returncode == 3 and "FAIL temp:" in r.stdout


def test_a_refused_login_is_an_error_without_the_password(tmp_path, mariadb, idp, accounts):
    user = accounts()
    r = _check(_config(tmp_path, mariadb, idp, user), "not-the-password")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "1045" in r.stdout or "Access denied" in r.stdout, r.stdout
    assert "not-the-password" not in r.stdout + r.stderr


@pytest.mark.parametrize("line,privs,on,grant_option,role", [
    ("GRANT SELECT (`name`, `id`), INSERT ON `app`.`people` TO `u`@`%`",
     {"SELECT", "INSERT"}, ("app", "people"), False, None),
    ("GRANT PROCESS, FILE ON *.* TO `u`@`%` IDENTIFIED BY PASSWORD '*2B60'",
     {"PROCESS", "FILE"}, ("*", "*"), False, None),
    ("GRANT CREATE TEMPORARY TABLES, CREATE VIEW ON `a``b`.* TO 'u'@'%' WITH GRANT OPTION",
     {"CREATE TEMPORARY TABLES", "CREATE VIEW"}, ("a`b", "*"), True, None),
    ("GRANT EXECUTE ON PROCEDURE `app`.`p` TO `u`@`%`", {"EXECUTE"}, ("app", "p"), False, None),
    ("GRANT `rr` TO `u`@`%`", set(), None, False, "rr"),
    ("GRANT `rr`@`%` TO `u`@`%` WITH ADMIN OPTION", set(), None, True, "rr"),
])
def test_show_grants_lines_are_read(line, privs, on, grant_option, role):
    g = parse_grant(line)
    assert set(g.privileges) == privs and g.on == on and g.grant_option == grant_option \
        and g.role == role
    assert "SUPER" in parse_grant("GRANT ALL PRIVILEGES ON *.* TO `u`@`%`").privileges
    assert parse_grant("REVOKE nothing") is None
