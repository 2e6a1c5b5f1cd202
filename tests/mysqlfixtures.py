"""A throwaway MariaDB server for the MySQL tests: the session fixture `mariadb`.

    def test_x(mariadb):
        mariadb.sql("SELECT 1")                       # as root over the unix socket -> rows
        pymysql.connect(host=mariadb.host, port=mariadb.port, user="app",
                        password=mariadb.passwords["app"], database="app",
                        ssl={"ca": mariadb.ca})

What it holds:

    root      admin, password in passwords["root"], over the unix socket (`mariadb.socket`) and TCP
    app       `app-secret`, mysql_native_password, all rights on database `app`
    tlsapp    same rights, REQUIRE SSL (a plaintext login is refused by the server itself)
    eduser    client_ed25519 (MariaDB's plugin), SELECT on `app`
    app.items(id int primary key, name varchar(64))            = MY_ITEMS
    app.customers(id, name, email, ssn)                        = MY_CUSTOMERS

TLS is on with the test PKI's server certificate (`pki` in conftest.py): `mariadb.ca` verifies
it. The server runs from the installed binaries (mariadb-install-db, mariadbd) in one temporary
directory (data, socket, log, pid) that stop() removes; as root the directory belongs to the
`mysql` OS user and the binaries run through runuser, since mariadbd refuses to run as root.
Tests that change state should make their own objects rather than modify these.
"""

from __future__ import annotations

import atexit
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Any, Iterator

import pymysql
import pytest

from hoopwire.devserver import free_loopback_port

__all__ = ["MariaDBServer", "MariaDBError", "mariadb", "MY_DB", "MY_ITEMS", "MY_CUSTOMERS"]

_OS_USER = "mysql"
# First start (the system tables are already made by mariadb-install-db) took 0.6-1.5 s here
# on 2 busy cores; 60 s only bounds a wedged server.
_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 30.0

MY_DB = "app"
MY_ITEMS = [(1, "apple"), (2, "banana"), (3, "cherry")]
MY_CUSTOMERS = [(1, "Ada Lovelace", "ada@example.com", "123-45-6789"),
                (2, "Alan Turing", "alan@example.org", "987-65-4321")]


class MariaDBError(RuntimeError):
    """The throwaway server could not be set up, started or queried."""


_live: dict[int, "MariaDBServer"] = {}


@atexit.register
def _stop_live_servers() -> None:
    # an interpreter exit (a crashed run) must not leave mariadbd running; keyed by the starting
    # pid so that a forked child exiting does not stop its parent's server
    for server in list(_live.values()):
        if server._owner_pid == os.getpid():
            server.stop()


class MariaDBServer:
    host = "127.0.0.1"

    def __init__(self, *, tls_cert: str | None = None, tls_key: str | None = None,
                 tls_ca: str | None = None, basedir: str = "/tmp",
                 extra_args: list[str] | None = None):
        self.tls_cert, self.tls_key, self.ca = tls_cert, tls_key, tls_ca
        self.basedir = basedir
        self.extra_args = list(extra_args or [])
        self.passwords: dict[str, str] = {"root": secrets.token_urlsafe(18), "app": "app-secret",
                                          "tlsapp": secrets.token_urlsafe(18),
                                          "eduser": secrets.token_urlsafe(18)}
        self.port: int | None = None
        self.workdir: str | None = None
        self.socket: str | None = None
        self.logfile: str | None = None
        self._proc: subprocess.Popen | None = None
        self._owner_pid = os.getpid()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> "MariaDBServer":
        if self.workdir is not None:
            return self
        self.workdir = tempfile.mkdtemp(prefix="hoopwire-my-", dir=self.basedir)
        self._owner_pid = os.getpid()
        _live[id(self)] = self            # before anything can fail: stop() cleans half-made dirs
        os.chmod(self.workdir, 0o755)
        self.socket = os.path.join(self.workdir, "mysqld.sock")
        self.logfile = os.path.join(self.workdir, "mariadbd.err")
        try:
            self._give_to_owner(self.workdir)
            self._install_db()
            self._copy_tls()
            self._launch()
            self._provision()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """SIGTERM (a clean shutdown), SIGKILL after _STOP_TIMEOUT, then remove the directory."""
        if self.workdir is None:
            return
        try:
            proc = self._proc
            if proc is not None and proc.poll() is None:
                # runuser execs nothing itself: it forks mariadbd as a child and waits, relaying
                # signals; killing the whole process group reaches both
                for sig, wait in ((signal.SIGTERM, _STOP_TIMEOUT), (signal.SIGKILL, 5.0)):
                    try:
                        os.killpg(proc.pid, sig)
                    except ProcessLookupError:
                        break
                    try:
                        proc.wait(timeout=wait)
                        break
                    except subprocess.TimeoutExpired:
                        continue
        finally:
            self._proc = None
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
            _live.pop(id(self), None)

    def __enter__(self) -> "MariaDBServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"{self.host}:{self.port}" if self.workdir else "stopped"
        return f"<MariaDBServer {state} tls={'on' if self.tls_cert else 'off'}>"

    # -- helpers for tests -------------------------------------------------------------------

    def connect(self, user: str = "root", database: str | None = None, **kw: Any):
        """A PyMySQL connection straight to the server (root over the unix socket, others TCP)."""
        password = kw.pop("password", self.passwords.get(user))
        where: dict[str, Any] = ({"unix_socket": self.socket} if user == "root"
                                 else {"host": self.host, "port": self.port})
        return pymysql.connect(user=user, password=password, database=database,
                               connect_timeout=10, read_timeout=60, write_timeout=60,
                               autocommit=True, **where, **kw)

    def sql(self, statement: str, database: str | None = None) -> list[tuple]:
        """Run one or more `;`-separated statements as root; the rows of the last result."""
        conn = self.connect("root", database, client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS)
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
                rows = list(cur.fetchall() or ())
                while cur.nextset():
                    rows = list(cur.fetchall() or ())
                return rows
        finally:
            conn.close()

    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(self.logfile or "", encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no server log)"

    # -- setting up --------------------------------------------------------------------------

    def _as_owner(self, cmd: list[str]) -> list[str]:
        return ["runuser", "-u", _OS_USER, "--", *cmd] if os.geteuid() == 0 else cmd

    def _give_to_owner(self, path: str, mode: int | None = None) -> None:
        if mode is not None:
            os.chmod(path, mode)
        if os.geteuid() == 0:
            entry = pwd.getpwnam(_OS_USER)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _install_db(self) -> None:
        datadir = os.path.join(self.workdir, "data")
        # --auth-root-authentication-method=normal: root starts with an empty password we set at
        # once over the private socket (the socket variant would bind root to the OS user)
        cmd = self._as_owner(["mariadb-install-db", "--no-defaults", f"--datadir={datadir}",
                              "--auth-root-authentication-method=normal", "--skip-test-db",
                              "--skip-name-resolve"])
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=self.workdir)
        except subprocess.TimeoutExpired:
            raise MariaDBError("mariadb-install-db timed out after 180 s") from None
        if r.returncode != 0:
            raise MariaDBError(f"mariadb-install-db failed ({r.returncode}): "
                               f"{(r.stderr or r.stdout)[-2000:]}")

    def _copy_tls(self) -> None:
        if not self.tls_cert:
            return
        for src, name, mode in ((self.tls_cert, "server.pem", 0o644),
                                (self.tls_key, "server.key", 0o600),
                                (self.ca, "ca.pem", 0o644)):
            if src:
                dst = os.path.join(self.workdir, name)
                shutil.copyfile(src, dst)
                self._give_to_owner(dst, mode)

    def _args(self) -> list[str]:
        w = self.workdir
        args = ["mariadbd", "--no-defaults", f"--datadir={w}/data", f"--socket={self.socket}",
                f"--pid-file={w}/mariadbd.pid", f"--log-error={self.logfile}",
                f"--bind-address={self.host}", f"--port={self.port}", "--skip-name-resolve",
                f"--tmpdir={w}",
                # a test server is thrown away: durability only costs time
                "--innodb-flush-log-at-trx-commit=0", "--innodb-buffer-pool-size=32M",
                "--innodb-log-file-size=16M", "--skip-log-bin", "--max-connections=300",
                "--character-set-server=utf8mb4", "--collation-server=utf8mb4_general_ci",
                "--plugin-load-add=auth_ed25519"]
        if self.tls_cert:
            args += [f"--ssl-cert={w}/server.pem", f"--ssl-key={w}/server.key"]
            if self.ca:
                args.append(f"--ssl-ca={w}/ca.pem")
        return args + self.extra_args

    def _launch(self) -> None:
        # a port we picked may be taken before mariadbd binds it: then pick another
        for attempt in range(3):
            self.port = free_loopback_port()
            log = open(self.logfile, "ab")
            try:
                # its own session: a terminal's Ctrl-C does not reach it, stop() kills the group
                self._proc = subprocess.Popen(self._as_owner(self._args()), stdout=log,
                                              stderr=subprocess.STDOUT, start_new_session=True,
                                              cwd=self.workdir)
            finally:
                log.close()
            if self._wait_ready():
                return
            tail = self.log_tail()
            self.stop_process()
            if "Address already in use" not in tail or attempt == 2:
                raise MariaDBError(f"mariadbd did not start on {self.host}:{self.port} within "
                                   f"{_START_TIMEOUT} s\n--- server log (tail) ---\n{tail}")

    def stop_process(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
        self._proc = None

    def _wait_ready(self) -> bool:
        """True once root can run a query over the socket; False if mariadbd exits or the time
        runs out."""
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            if os.path.exists(self.socket):
                try:
                    pymysql.connect(unix_socket=self.socket, user="root", password="",
                                    connect_timeout=2).close()
                    return True
                except pymysql.err.OperationalError:
                    pass
            time.sleep(0.05)
        return False

    def _provision(self) -> None:
        pw = self.passwords
        q = pymysql.converters.escape_string
        conn = pymysql.connect(unix_socket=self.socket, user="root", password="",
                               connect_timeout=10, autocommit=True)
        try:
            with conn.cursor() as cur:
                for stmt in (
                    f"ALTER USER root@localhost IDENTIFIED BY '{q(pw['root'])}'",
                    # mariadb-install-db made root@127.0.0.1 (and ::1) too: the admin over TCP
                    f"ALTER USER root@'127.0.0.1' IDENTIFIED BY '{q(pw['root'])}'",
                    f"CREATE DATABASE {MY_DB} CHARACTER SET utf8mb4",
                    f"CREATE USER app@'%' IDENTIFIED VIA mysql_native_password "
                    f"USING PASSWORD('{q(pw['app'])}')",
                    f"GRANT ALL ON {MY_DB}.* TO app@'%'",
                    f"CREATE USER tlsapp@'%' IDENTIFIED BY '{q(pw['tlsapp'])}' REQUIRE SSL",
                    f"GRANT ALL ON {MY_DB}.* TO tlsapp@'%'",
                    f"CREATE USER eduser@'%' IDENTIFIED VIA ed25519 "
                    f"USING PASSWORD('{q(pw['eduser'])}')",
                    f"GRANT SELECT ON {MY_DB}.* TO eduser@'%'",
                    f"CREATE TABLE {MY_DB}.items (id int PRIMARY KEY, name varchar(64))",
                    f"CREATE TABLE {MY_DB}.customers (id int PRIMARY KEY, name varchar(64), "
                    "email varchar(128), ssn char(11))",
                ):
                    cur.execute(stmt)
                cur.executemany(f"INSERT INTO {MY_DB}.items VALUES (%s, %s)", MY_ITEMS)
                cur.executemany(f"INSERT INTO {MY_DB}.customers VALUES (%s, %s, %s, %s)",
                                MY_CUSTOMERS)
        finally:
            conn.close()


@pytest.fixture(scope="session")
def mariadb(pki) -> Iterator[MariaDBServer]:
    with MariaDBServer(tls_cert=pki.server_cert, tls_key=pki.server_key,
                       tls_ca=pki.ca_pem) as server:
        yield server
