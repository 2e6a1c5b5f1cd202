#!/usr/bin/env python3
"""A client library's own test suite run against one throwaway server (MariaDB for the MySQL
drivers, PostgreSQL for the PostgreSQL ones): straight to the server, then through hoopwire's
gateway with a realistic config. The table printed is every test whose outcome differs; each
gateway-only failure is a gateway bug or one of the gateway's policies (bench/README.md,
"Third-party client suites", says which).

    python bench/client_suites.py                                   # pip download + git clone
    python bench/client_suites.py --sdist pymysql-1.2.4.tar.gz --tests /path/to/PyMySQL
    python bench/client_suites.py --suite mysqlclient --sdist mysqlclient-2.3.2.tar.gz
    python bench/client_suites.py --suite psycopg2 --sdist psycopg2-2.9.13.tar.gz
    python bench/client_suites.py --suite asyncpg --sdist asyncpg-0.32.0.tar.gz
    python bench/client_suites.py --suite pg8000 --sdist pg8000-1.31.6.tar.gz
    python bench/client_suites.py ... -- -k test_issues             # a part of the suite

The library comes from its sdist at the version requirements/pins.txt pins (`--sdist` takes a
downloaded one and then nothing is downloaded; else `pip download --no-deps --no-binary :all:`).
PyMySQL's sdist ships no tests since 1.1 (its MANIFEST keeps only the package), so the tests
come from the project's repository: `--tests` is a checkout or a bare git directory (with
`--tests-ref`, default HEAD) holding pymysql/tests; without it the script clones
https://github.com/PyMySQL/PyMySQL. The library's code under test is the sdist's; only
pymysql/tests is taken from the repository. mysqlclient's sdist ships its tests/ (read from
tests/default.cnf); its library is the installed one (a C extension), which must be the pin.

The suite reads its servers from pymysql/tests/databases.json (a list of pymysql.connect
keyword sets: [0] the main one, user root in the project's CI, database test1 with
local_infile; [1] user test2 on database test2). Here:

    direct    [0] user `suite` (ALL ON *.* WITH GRANT OPTION, as CI's root) on test1,
              [1] user `test2` (ALL ON test2.*) on test2; both over TLS to MariaDB
    hoopwire  the same two logins through the gateway: the API key as the password (PyMySQL
              answers the gateway's switch to mysql_clear_password as is), TLS required,
              role `test2` -> upstream test2, allow_client_database on (the suite uses two
              schemas), load_data_local off (the default); then the same gateway with
    +mask     a redact rule on test1.hw_private.ssn (a table the suite never touches), and
    +packs    the five guardrail packs as well: the realistic config. The three gateway runs
              tell the relay's own differences from masking's and the packs'.

PostgreSQL (no TLS: loopback, as pgbench_compare.py): a superuser `suite` (the suites' CI runs
as postgres) owning database `suite`, which holds public.hw_private (id, ssn) for the mask rule
(so does `postgres`), and `allow_client_database` on (asyncpg's and pg8000's tests use
`postgres` and databases they create). psycopg2's sdist ships tests/ (read from
PSYCOPG2_TESTDB*); its library is psycopg2-binary at the sdist's version, which must be
importable (e.g. `pip install --target DIR psycopg2-binary==2.9.13` and PYTHONPATH=DIR).
asyncpg's sdist ships tests/ too; with PGHOST set its test base uses that server
(RunningCluster, PG* variables) instead of starting its own; its library is the installed
asyncpg, which must be the pin. pg8000's sdist (pure Python) gives both its library and its
test/ (user postgres, PGHOST/PGPORT/PGPASSWORD; postgres's password is set to the suite's).
Through the gateway: user `agent` (pg8000: `postgres`) with the API key as the password; the
packs are the six PostgreSQL ones, run twice: with `action = "log"` (every feature on, nothing
refused: what the suite's DDL meets in a configuration that records) and blocking.

Each run is `python -m pytest` in a subprocess (junit XML read back), 60 s per test.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))
sys.path.insert(0, BENCH_DIR)

from helpers import Gateway  # noqa: E402  (tests/helpers.py)
from sysbench_compare import PACKS, make_pki  # noqa: E402
from hoopwire.devserver import MariaDbServer, PgServer  # noqa: E402

TESTS_GIT = "https://github.com/PyMySQL/PyMySQL"
CONN = "suite"
UPSTREAM_USER = "suite"
PW_ENV, TEST2_PW_ENV = "SUITE_DB_PASSWORD", "SUITE_TEST2_PASSWORD"
TEST2_PASSWORD = "some password"     # what the suite's CI sets for test2 (ci/docker.json)
# the gateway runs, in this order (the packs run last: its refused DROP TABLEs leave tables
# behind): the relay alone, then the mask rule, then the mask rule and the five packs
TARGETS = (("hoopwire", False, False), ("hoopwire+mask", False, True),
           ("hoopwire+mask+packs", True, True))
PER_TEST_TIMEOUT = 60                # s: the slowest test here takes ~3 s (a 16 MB row)
# PostgreSQL: the gateway runs, the packs last for the same reason; "log" records what the
# packs would refuse and refuses nothing, so the suite's own DDL runs with every feature on
PG_TARGETS = (("hoopwire", None, False), ("hoopwire+mask", None, True),
              ("hoopwire+mask+packs(log)", "log", True),
              ("hoopwire+mask+packs", "block", True))
PG_PACKS = ("destructive-ddl", "unbounded-write", "privilege-changes", "server-side-io",
            "procedural-code", "session-tampering")
PG_DB = "suite"
# the driver suites that are no dependency of ours, so requirements/pins.txt has no version
UNPINNED = {"psycopg2": "2.9.13", "pg8000": "1.31.6"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pinned(package: str) -> str:
    if package in UNPINNED:
        return UNPINNED[package]
    with open(os.path.join(REPO_ROOT, "requirements", "pins.txt")) as f:
        for line in f:
            name, _, version = line.strip().partition("==")
            if name.lower() == package:
                return version
    raise SystemExit(f"{package} is not pinned in requirements/pins.txt")


def get_sdist(package: str, path: str | None, workdir: str) -> str:
    if path:
        return path
    version = pinned(package)
    dest = os.path.join(workdir, "dl")
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                    f"{package}=={version}", "-d", dest], check=True, timeout=300)
    (name,) = os.listdir(dest)
    return os.path.join(dest, name)


def build_pymysql(sdist: str, tests: str | None, ref: str, dest: str) -> str:
    """dest/pymysql = the sdist's package + the repository's pymysql/tests; returns where the
    tests came from (what the report names)."""
    os.makedirs(dest)
    if os.path.isdir(sdist):
        shutil.copytree(os.path.join(sdist, "pymysql"), os.path.join(dest, "pymysql"))
    else:
        with tarfile.open(sdist) as tar:
            top = tar.getnames()[0].split("/")[0]
            members = [m for m in tar.getmembers() if m.name.startswith(f"{top}/pymysql/")]
            for m in members:
                m.name = m.name[len(top) + 1:]
            tar.extractall(dest, members=members, filter="data")
    if tests is None:
        tests = os.path.join(os.path.dirname(dest), "PyMySQL.git")
        subprocess.run(["git", "clone", "--bare", "--depth", "1", TESTS_GIT, tests], check=True,
                       timeout=300)
    git = ["git", f"--git-dir={tests}"] if not os.path.isdir(os.path.join(tests, ".git")) \
        else ["git", "-C", tests]
    commit = subprocess.run(git + ["rev-parse", ref], check=True, capture_output=True,
                            text=True).stdout.strip()
    archive = subprocess.run(git + ["archive", commit, "pymysql/tests"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "x", "-C", dest], input=archive, check=True)
    return f"library {os.path.basename(sdist)}, tests {TESTS_GIT} @ {commit}"


def build_mysqlclient(sdist: str, tests: str | None, ref: str, dest: str) -> str:
    """dest/tests = the sdist's tests (mysqlclient ships them); the library is the installed
    mysqlclient (a C extension: the sdist would need libmariadb's headers to build), which
    must be the pinned version."""
    from importlib.metadata import version
    os.makedirs(dest)
    if os.path.isdir(sdist):
        shutil.copytree(os.path.join(sdist, "tests"), os.path.join(dest, "tests"))
    else:
        with tarfile.open(sdist) as tar:
            top = tar.getnames()[0].split("/")[0]
            members = [m for m in tar.getmembers() if m.name.startswith(f"{top}/tests/")]
            for m in members:
                m.name = m.name[len(top) + 1:]
            tar.extractall(dest, members=members, filter="data")
    return (f"library mysqlclient {version('mysqlclient')} (installed), tests from "
            f"{os.path.basename(sdist)}")


def start_mariadb(pki: tuple[str, str, str]) -> MariaDbServer:
    return MariaDbServer(tls_cert=pki[0], tls_key=pki[1],
                         tls_ca=os.path.join(pki[2], "cacert.pem"),
                         options={"innodb_buffer_pool_size": "64M",
                                  # test_issues' 16 MB row (issue 17) and the 16 MB packet tests
                                  "max_allowed_packet": "64M"})


def provision(db: MariaDbServer) -> str:
    """What the suite's CI sets up (ci/docker-entrypoint-initdb.d), with `suite` in root's
    place (root here is the unix-socket admin), and the table the mask rule names."""
    password = secrets.token_urlsafe(18)
    db.sql("CREATE DATABASE test1 DEFAULT CHARACTER SET utf8mb4;\n"
           "CREATE DATABASE test2 DEFAULT CHARACTER SET utf8mb4;\n"
           "SET GLOBAL local_infile = ON;\n"
           "CREATE TABLE test1.hw_private (id int PRIMARY KEY, ssn char(11));\n"
           "INSERT INTO test1.hw_private VALUES (1, '123-45-6789');\n")
    db.create_user(UPSTREAM_USER, password, grants=["ALL ON *.*"])
    db.sql(f"GRANT ALL ON *.* TO '{UPSTREAM_USER}'@'%' WITH GRANT OPTION;")
    db.create_user("test2", TEST2_PASSWORD, grants=["ALL ON test2.*"])
    return password


def start_gateway(db: MariaDbServer, password: str, api_key: str,
                  pki: tuple[str, str, str], packs: bool, mask: bool) -> Gateway:
    conn = {"name": CONN, "protocol": "mysql", "upstream": f"{db.host}:{db.port}",
            "database": "test1", "allow_client_database": True,
            "user": UPSTREAM_USER, "password_env": PW_ENV,
            "tls_cert": pki[0], "tls_key": pki[1], "upstream_tls": "require",
            "allow_groups": ["suite"],
            "role": [{"name": "test2", "user": "test2", "password_env": TEST2_PW_ENV}]}
    config = {"identity": {"api_key": [{"name": "suite",
                                        "sha256": hashlib.sha256(api_key.encode()).hexdigest(),
                                        "groups": ["suite"]}]},
              "connection": [conn], "audit": {"enabled": False}}
    if mask:
        conn["mask"] = [{"columns": ["test1.hw_private.ssn"], "strategy": "redact"}]
    if packs:
        conn["guardrail"] = [{"pack": p} for p in PACKS]
    return Gateway(config, env={PW_ENV: password, TEST2_PW_ENV: TEST2_PASSWORD})


def configure_pymysql(tree: str, host: str, port: int, ca: str, main: tuple[str, str],
                      test2: tuple[str, str]) -> str:
    """pymysql/tests/databases.json; returns the directory pytest runs."""
    ssl = {"ca": ca}
    dbs = [{"host": host, "port": port, "user": main[0], "password": main[1],
            "database": "test1", "use_unicode": True, "local_infile": True, "ssl": ssl},
           {"host": host, "port": port, "user": test2[0], "password": test2[1],
            "database": "test2", "ssl": ssl}]
    with open(os.path.join(tree, "pymysql", "tests", "databases.json"), "w") as f:
        json.dump(dbs, f)
    return os.path.join(tree, "pymysql", "tests"), {}


def configure_mysqlclient(tree: str, host: str, port: int, ca: str, main: tuple[str, str],
                          test2: tuple[str, str]) -> str:
    """tests/default.cnf, the option file (group [MySQLdb-tests]) tests/configdb.py reads; the
    suite has one login. The password sits in a 0600 file, never on a command line."""
    path = os.path.join(tree, "tests", "default.cnf")
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(f"[MySQLdb-tests]\nhost = {host}\nport = {port}\nuser = {main[0]}\n"
                f"password = {main[1]}\ndatabase = test1\ndefault-character-set = utf8mb4\n"
                f"ssl-ca = {ca}\nssl-verify-server-cert\n")
    return os.path.join(tree, "tests"), {}


def extract_tests(sdist: str, dest: str, folder: str = "tests") -> None:
    """dest/<folder> = the sdist's (a .tar.gz or an unpacked directory)."""
    os.makedirs(dest)
    if os.path.isdir(sdist):
        shutil.copytree(os.path.join(sdist, folder), os.path.join(dest, folder))
        return
    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        members = [m for m in tar.getmembers() if m.name.startswith(f"{top}/{folder}/")]
        for m in members:
            m.name = m.name[len(top) + 1:]
        tar.extractall(dest, members=members, filter="data")


def build_psycopg2(sdist: str, tests: str | None, ref: str, dest: str) -> str:
    """dest/tests = the sdist's tests; the library is the importable psycopg2 (psycopg2-binary
    of the same version: the sdist would need libpq's headers and pg_config to build)."""
    import psycopg2
    extract_tests(sdist, dest)
    return (f"library psycopg2 {psycopg2.__version__.split()[0]} "
            f"({os.path.dirname(psycopg2.__file__)}), tests from {os.path.basename(sdist)}")


def build_asyncpg(sdist: str, tests: str | None, ref: str, dest: str) -> str:
    """dest/tests = the sdist's tests; the library is the installed asyncpg (the pin)."""
    from importlib.metadata import version
    extract_tests(sdist, dest)
    return f"library asyncpg {version('asyncpg')} (installed), tests from {os.path.basename(sdist)}"


def build_pg8000(sdist: str, tests: str | None, ref: str, dest: str) -> str:
    """dest/test = the sdist's tests, dest/pg8000 = its library (pure Python: the sdist's
    code is what runs; it needs scramp and python-dateutil, both installed here)."""
    extract_tests(sdist, dest, "test")
    with tempfile.TemporaryDirectory() as tmp:
        extract_tests(sdist, os.path.join(tmp, "x"), "src/pg8000")
        shutil.move(os.path.join(tmp, "x", "src", "pg8000"), os.path.join(dest, "pg8000"))
    # pg8000 reads its own version from its distribution's metadata: the sdist's PKG-INFO is
    # that metadata, in a dist-info directory beside the package
    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        info = tar.extractfile(f"{top}/PKG-INFO").read()
    meta = os.path.join(dest, f"{top}.dist-info")
    os.makedirs(meta)
    with open(os.path.join(meta, "METADATA"), "wb") as f:
        f.write(info)
    return f"library and tests from {os.path.basename(sdist)}"


def pg_env(host: str, port: int, user: str, password: str) -> dict[str, str]:
    """libpq's variables (asyncpg reads the same) for one login on PG_DB, no TLS."""
    return {"PGHOST": host, "PGPORT": str(port), "PGUSER": user, "PGPASSWORD": password,
            "PGDATABASE": PG_DB, "PGSSLMODE": "disable", "PGGSSENCMODE": "disable"}


def configure_psycopg2(tree: str, host: str, port: int, ca: str, main: tuple[str, str],
                       test2: tuple[str, str]) -> tuple[str, dict[str, str]]:
    """tests/testconfig.py reads PSYCOPG2_TESTDB*; the password goes in the environment."""
    env = pg_env(host, port, *main)
    env.update(PSYCOPG2_TESTDB=PG_DB, PSYCOPG2_TESTDB_HOST=host, PSYCOPG2_TESTDB_PORT=str(port),
               PSYCOPG2_TESTDB_USER=main[0], PSYCOPG2_TESTDB_PASSWORD=main[1])
    return os.path.join(tree, "tests"), env


def configure_pg8000(tree: str, host: str, port: int, ca: str, main: tuple[str, str],
                     test2: tuple[str, str]) -> tuple[str, dict[str, str]]:
    """test/*/conftest.py: user postgres, PGHOST / PGPORT / PGPASSWORD, database postgres."""
    return os.path.join(tree, "test"), pg_env(host, port, "postgres", main[1])


def configure_asyncpg(tree: str, host: str, port: int, ca: str, main: tuple[str, str],
                      test2: tuple[str, str]) -> tuple[str, dict[str, str]]:
    """With PGHOST set, asyncpg._testbase uses that server (RunningCluster) and the PG*
    variables; the tests that start clusters of their own (HBA, SSL, replication) need a
    local PostgreSQL and fail alike on every target."""
    return os.path.join(tree, "tests"), pg_env(host, port, *main)


def start_postgres(pki: tuple[str, str, str]) -> PgServer:
    return PgServer()


def provision_postgres(pg: PgServer) -> str:
    """The suites' CI logs in as postgres: a superuser `suite` in its place, owning PG_DB,
    which holds the table the mask rule names (no suite uses it)."""
    password = secrets.token_urlsafe(18)
    pg.create_role(UPSTREAM_USER, password, superuser=True)
    pg.create_database(PG_DB, owner=UPSTREAM_USER)
    # pg8000's tests log in as postgres (fixed in their conftest) with PGPASSWORD
    pg.sql(f"ALTER ROLE postgres PASSWORD '{password}'")
    for db in (PG_DB, "postgres"):
        pg.sql("CREATE TABLE public.hw_private (id int PRIMARY KEY, ssn text);\n"
               f"ALTER TABLE public.hw_private OWNER TO {UPSTREAM_USER};\n"
               "INSERT INTO public.hw_private VALUES (1, '123-45-6789');\n", dbname=db)
    return password


def start_pg_gateway(pg: PgServer, password: str, api_key: str, pki: tuple[str, str, str],
                     packs: str | None, mask: bool) -> Gateway:
    # allow_client_database: asyncpg's and pg8000's tests use `postgres` and databases they
    # create; without it each such login gets FATAL 3D000 (by design, issue 17)
    conn = {"name": CONN, "protocol": "postgres", "upstream": f"{pg.host}:{pg.port}",
            "database": PG_DB, "allow_client_database": True, "user": UPSTREAM_USER,
            "password_env": PW_ENV, "allow_groups": ["suite"]}
    config = {"identity": {"api_key": [{"name": "suite",
                                        "sha256": hashlib.sha256(api_key.encode()).hexdigest(),
                                        "groups": ["suite"]}]},
              "connection": [conn], "audit": {"enabled": False}}
    if mask:
        conn["mask"] = [{"columns": ["public.hw_private.ssn"], "strategy": "redact"}]
    if packs:
        conn["guardrail"] = [{"pack": p, "action": packs} for p in PG_PACKS]
    return Gateway(config, env={PW_ENV: password})


def start_my_gateway(db, password, api_key, pki, packs, mask) -> Gateway:
    return start_gateway(db, password, api_key, pki, bool(packs), mask)


# suite -> (build, configure, backend); backend -> (start server, provision, start gateway,
# the gateway runs as (label, packs: None / "log" / "block", mask))
SUITES = {"pymysql": (build_pymysql, configure_pymysql, "mariadb"),
          "mysqlclient": (build_mysqlclient, configure_mysqlclient, "mariadb"),
          "psycopg2": (build_psycopg2, configure_psycopg2, "postgres"),
          "asyncpg": (build_asyncpg, configure_asyncpg, "postgres"),
          "pg8000": (build_pg8000, configure_pg8000, "postgres")}
BACKENDS = {"mariadb": (start_mariadb, provision, start_my_gateway,
                        tuple((label, "block" if packs else None, mask)
                              for label, packs, mask in TARGETS)),
            "postgres": (start_postgres, provision_postgres, start_pg_gateway, PG_TARGETS)}


def run_suite(tree: str, tests: str, label: str, extra: list[str],
              extra_env: dict[str, str] | None = None) -> dict[str, tuple]:
    """{test id: (outcome, first line of the message)}; outcome passed/failed/error/skipped."""
    xml = os.path.join(tree, f"{label}.xml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(extra_env or {})
    env["PYTHONPATH"] = os.pathsep.join([tree] + [p for p in (os.environ.get("PYTHONPATH"),) if p])
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
           # --tb=native: pytest's own traceback re-parses the source and crashed (SystemError
           # in ast.parse, an INTERNALERROR that ended the run) on one of PyMySQL's failures
           "--tb=native", f"--timeout={PER_TEST_TIMEOUT}", f"--junitxml={xml}", "--rootdir", tree,
           tests, *extra]
    log(f"[{label}] {' '.join(cmd[3:])}")
    r = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=3600)
    with open(os.path.join(tree, f"{label}.log"), "w") as f:
        f.write(r.stdout + r.stderr)
    log(f"[{label}] " + (r.stdout.strip().splitlines() or ["(no output)"])[-1])
    out: dict[str, tuple] = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        outcome, message = "passed", ""
        # a test that failed and then failed its teardown has both: the failure is the cause
        # (mysqlclient's "Commands out of sync" at teardown follows a failed assertion that
        # left an unbuffered result unread)
        tags = {child.tag: child for child in case}
        for tag in ("failure", "error", "skipped"):
            if tag in tags:
                outcome = {"failure": "failed"}.get(tag, tag)
                message = (tags[tag].get("message") or tags[tag].text or "").strip()
                break
        out[name] = (outcome, " ".join(message.split())[:160])
    return out


def print_table(results: dict[str, dict]) -> int:
    """Counts per target, then one row per test whose outcome is not the same everywhere, with
    the first gateway answer that was not a pass."""
    labels = list(results)
    names = sorted(set().union(*results.values()))
    print(f"\n{len(names)} tests")
    for label, res in results.items():
        c: dict[str, int] = {}
        for outcome, _ in res.values():
            c[outcome] = c.get(outcome, 0) + 1
        print(f"  {label}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
    print("\n| test | " + " | ".join(labels) + " | answer |")
    print("|---" * (len(labels) + 2) + "|")
    diff = 0
    for n in names:
        got = [results[label].get(n, ("absent", "")) for label in labels]
        if len({g[0] for g in got}) == 1:
            continue
        diff += 1
        why = next((g[1] for g in got[1:] if g[0] != "passed"), got[0][1])
        short = re.sub(r"^(pymysql\.tests\.(thirdparty\.test_MySQLdb\.)?|tests\.)", "", n)
        print(f"| {short} | " + " | ".join(g[0] for g in got) + f" | {why.replace('|', '/')} |")
    return diff


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", choices=sorted(SUITES), default="pymysql")
    ap.add_argument("--sdist", help="the library's sdist (.tar.gz or unpacked directory); "
                                    "default: pip download of the pinned version")
    ap.add_argument("--tests", help="PyMySQL repository (checkout or bare git directory) "
                                    "holding pymysql/tests; default: git clone")
    ap.add_argument("--tests-ref", default="HEAD")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = ap.parse_args(argv)

    workdir = tempfile.mkdtemp(prefix="hoopwire-suites-")
    try:
        with contextlib.ExitStack() as stack:
            build, configure, backend = SUITES[args.suite]
            start_server, provision_server, start_gw, targets = BACKENDS[backend]
            sdist = get_sdist(args.suite, args.sdist, workdir)
            origin = build(sdist, args.tests, args.tests_ref, os.path.join(workdir, "suite"))
            shutil.copytree(os.path.join(workdir, "suite"), os.path.join(workdir, "direct"))
            log(origin)
            pki = make_pki(workdir)
            ca = os.path.join(pki[2], "cacert.pem")
            db = stack.enter_context(start_server(pki))
            password = provision_server(db)
            api_key = secrets.token_urlsafe(24)
            tree = os.path.join(workdir, "direct")
            tests, env = configure(tree, db.host, db.port, ca, (UPSTREAM_USER, password),
                                   ("test2", TEST2_PASSWORD))
            results = {"direct": run_suite(tree, tests, "direct", args.pytest_args, env)}
            for label, packs, mask in targets:
                tree = os.path.join(workdir, label)
                shutil.copytree(os.path.join(workdir, "suite"), tree)
                with start_gw(db, password, api_key, pki, packs, mask) as gw:
                    host, port = gw.address(CONN)
                    tests, env = configure(tree, host, port, ca, ("agent", api_key),
                                           ("test2", api_key))
                    results[label] = run_suite(tree, tests, label, args.pytest_args, env)
                    with open(os.path.join(workdir, f"{label}.gateway.log"), "w") as f:
                        f.write(gw.log_text())
            print(origin)
            print_table(results)
            if args.keep:
                log(f"work directory: {workdir} (<target>/<target>.log, <target>.gateway.log)")
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

if __name__ == "__main__":
    sys.exit(main())
