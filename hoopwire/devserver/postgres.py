"""A throwaway PostgreSQL cluster on a loopback port.

    with PgServer(tls_cert="server.pem", tls_key="server.key") as pg:
        pg.create_role("app", "s3cret")
        pg.create_database("appdb", owner="app")
        psycopg.connect(pg.dsn(user="app", dbname="appdb", sslmode="require"))

The cluster lives in one temporary directory (data, unix socket, log) that stop() removes. It is
tuned for tests, not for keeping data: fsync and friends are off.

initdb and postgres refuse to run as root, so when we are root the directory is handed to the
`postgres` OS user and the server binaries run through `runuser`. psql, which only talks to the
server, runs as whoever we are.
"""

from __future__ import annotations

import glob
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
from typing import Any, Iterable

from hoopwire.devserver.base import ThrowawayServer, free_loopback_port, wait_gone

__all__ = ["PgServer", "PgServerError", "find_pg_bindir"]

_START_TIMEOUT = 60        # seconds pg_ctl waits for the server to accept connections
_STOP_TIMEOUT = 30
_PASSWORD_METHODS = ("scram-sha-256", "md5", "password")


class PgServerError(RuntimeError):
    """A throwaway server could not be found, set up, started or queried."""


def find_pg_bindir() -> str:
    """The directory holding initdb/postgres/pg_ctl/psql.

    HOOPWIRE_PG_BINDIR wins, then `pg_config --bindir`, then the newest /usr/lib/postgresql/*/bin
    (Debian installs major versions side by side and pg_config may come from a client-only
    package whose bindir has no server binaries, hence the fallback).
    """
    candidates = []
    if os.environ.get("HOOPWIRE_PG_BINDIR"):
        candidates.append(os.environ["HOOPWIRE_PG_BINDIR"])
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                 timeout=10, check=True).stdout.strip()
            if out:
                candidates.append(out)
        except (OSError, subprocess.SubprocessError):
            pass
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_major_version, reverse=True)
    for bindir in candidates:
        if os.access(os.path.join(bindir, "initdb"), os.X_OK):
            return bindir
    raise PgServerError(
        "PostgreSQL server binaries not found (no initdb): install them, e.g. "
        "`apt-get install postgresql` on Debian/Ubuntu, or set HOOPWIRE_PG_BINDIR to the "
        "directory that holds initdb")


def _major_version(bindir: str) -> tuple[int, ...]:
    m = re.search(r"/postgresql/([\d.]+)/bin$", bindir)
    return tuple(int(p) for p in m.group(1).split(".") if p) if m else ()


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    # standard_conforming_strings is on (the default), so only quotes need doubling
    return "'" + value.replace("'", "''") + "'"


def _conf_value(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (int, float)):
        return str(value)
    return quote_literal(str(value))


def _dsn_value(value: Any) -> str:
    text = str(value)
    if text and not re.search(r"[\s'\\]", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


class PgServer(ThrowawayServer):
    """One throwaway cluster. Not started until start() (or `with`)."""

    superuser = "postgres"
    _OS_USER = "postgres"  # owns the cluster when we run as root
    _ERROR = PgServerError
    _OWNED, _ROOT_REFUSAL = "the cluster", "initdb and postgres refuse to run as root"
    _PACKAGE = "postgresql"

    def __init__(self, *, tls_cert: str | None = None, tls_key: str | None = None,
                 superuser_password: str | None = None, port: int | None = None,
                 hba: str = "scram-sha-256", hba_lines: Iterable[str] | None = None,
                 extra_conf: dict[str, Any] | None = None, basedir: str | None = None,
                 bindir: str | None = None):
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        self.bindir = bindir or find_pg_bindir()
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self.superuser_password = superuser_password or secrets.token_urlsafe(24)
        # every password this object set, by role name, so tests can build DSNs from a name
        self.passwords: dict[str, str] = {self.superuser: self.superuser_password}
        self.port = port
        self._fixed_port = port is not None
        self.hba = hba
        self.hba_lines = list(hba_lines) if hba_lines is not None else None
        self.extra_conf = dict(extra_conf or {})
        self.basedir = basedir
        self.workdir: str | None = None
        self.datadir: str | None = None
        self.socket_dir: str | None = None
        self.logfile: str | None = None
        self._owner_pid = os.getpid()

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> "PgServer":
        if self.running:
            return self
        self.workdir = tempfile.mkdtemp(prefix="hoopwire-pg-", dir=self.basedir)
        self._owner_pid = os.getpid()
        self._track()  # before anything can fail: stop() cleans up half-made clusters
        self.datadir = os.path.join(self.workdir, "data")
        self.socket_dir = os.path.join(self.workdir, "sock")
        self.logfile = os.path.join(self.workdir, "postgres.log")
        try:
            self._give_to_owner(self.workdir)
            self._check_owner_can_reach(self.workdir)
            os.mkdir(self.socket_dir, 0o700)
            self._give_to_owner(self.socket_dir)
            self._initdb()
            self._configure()
            self._start_postmaster()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Fast shutdown (open sessions are cut), then remove the directory. Safe to repeat."""
        if self.workdir is None:
            return
        try:
            if self.datadir and os.path.exists(os.path.join(self.datadir, "postmaster.pid")):
                r = self._run([self._bin("pg_ctl"), "stop", "-D", self.datadir, "-m", "fast",
                               "-w", "-t", str(_STOP_TIMEOUT), "-s"],
                              check=False, timeout=_STOP_TIMEOUT + 15)
                if r.returncode != 0:
                    self._kill_postmaster()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
            self._untrack()

    # -- helpers for callers ---------------------------------------------------------------------

    def sql(self, statement: str, dbname: str = "postgres") -> str:
        """Run SQL as the superuser over the unix socket; psql's unaligned, tuples-only output.

        The text goes through psql's stdin as a script, so several statements (and ones that
        refuse transaction blocks, such as CREATE DATABASE) work. The final newline is removed.
        """
        return self._psql(statement, dbname)

    def create_role(self, name: str, password: str, *, method: str = "scram-sha-256",
                    superuser: bool = False) -> None:
        """A LOGIN role whose stored verifier suits `method`.

        `method` picks how the password is stored (md5 needs an md5 verifier; scram-sha-256 and
        password work with a SCRAM one); which method the server asks for is pg_hba.conf's call.
        """
        if method not in _PASSWORD_METHODS:
            raise ValueError(f"method must be one of {', '.join(_PASSWORD_METHODS)}")
        encryption = "md5" if method == "md5" else "scram-sha-256"
        self._psql(
            f"SET password_encryption = {quote_literal(encryption)};\n"
            f"CREATE ROLE {quote_ident(name)} LOGIN {'SUPERUSER' if superuser else 'NOSUPERUSER'}"
            f" PASSWORD {quote_literal(password)};\n",
            "postgres", secret=password)
        self.passwords[name] = password

    def create_database(self, name: str, owner: str | None = None) -> None:
        owner_clause = f" OWNER {quote_ident(owner)}" if owner else ""
        self._psql(f"CREATE DATABASE {quote_ident(name)}{owner_clause};\n", "postgres")

    def dsn(self, user: str | None = None, password: str | None = None, dbname: str = "postgres",
            sslmode: str | None = None, host: str | None = None, **extra: Any) -> str:
        """A libpq keyword/value DSN for TCP; the password defaults to the one we set for `user`."""
        user = user or self.superuser
        if password is None:
            password = self.passwords.get(user)
        params: dict[str, Any] = {"host": host or self.host, "port": self.port, "user": user,
                                  "dbname": dbname}
        if password is not None:
            params["password"] = password
        if sslmode is not None:
            params["sslmode"] = sslmode
        params.update(extra)
        return " ".join(f"{k}={_dsn_value(v)}" for k, v in params.items())

    # -- setting up ------------------------------------------------------------------------------

    def _bin(self, name: str) -> str:
        return os.path.join(self.bindir, name)

    def _env(self) -> dict[str, str]:
        # PG* variables from the caller's shell (PGDATA, PGPORT, PGHOST...) must not redirect us
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_MESSAGES"] = "C"
        return env

    def _initdb(self) -> None:
        pwfile = os.path.join(self.workdir, "pwfile")
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.superuser_password + "\n")
        self._give_to_owner(pwfile)
        try:
            self._run([self._bin("initdb"), "-D", self.datadir, "-U", self.superuser,
                       "--pwfile", pwfile, "--auth-local=trust", "--auth-host=scram-sha-256",
                       "-E", "UTF8", "--locale=C", "--no-sync"])
        finally:
            os.unlink(pwfile)

    def _configure(self) -> None:
        if self.tls:
            for src, name, mode in ((self.tls_cert, "server.crt", 0o644),
                                    (self.tls_key, "server.key", 0o600)):
                dst = os.path.join(self.datadir, name)
                shutil.copyfile(src, dst)
                # postgres refuses a key readable by others or not owned by itself (or root)
                self._give_to_owner(dst, mode)
        with open(os.path.join(self.datadir, "postgresql.conf"), "a", encoding="utf-8") as f:
            f.write("\n# settings of this throwaway cluster, rewritten on each start attempt\n"
                    "include 'hoopwire.conf'\n")
        with open(os.path.join(self.datadir, "pg_hba.conf"), "w", encoding="utf-8") as f:
            f.write("\n".join(self._hba_rules()) + "\n")

    def _hba_rules(self) -> list[str]:
        rules = ["# written by hoopwire.devserver",
                 "# the unix socket lives in our private directory: only we (and root) reach it",
                 "local all all trust"]
        if self.hba_lines is not None:
            return rules + self.hba_lines
        # `host` lines match both TLS and plaintext, so tests can try either
        for net in ("127.0.0.1/32", "::1/128"):
            rules += [f"host all md5user {net} md5",
                      f"host all passuser {net} password",
                      f"host all all {net} {self.hba}"]
        return rules

    def _write_conf(self) -> None:
        settings: dict[str, Any] = {
            "listen_addresses": self.host,
            "port": self.port,
            "unix_socket_directories": self.socket_dir,  # never the system's /var/run/postgresql
            "max_connections": 200,
            # a test cluster is thrown away: durability only costs time
            "fsync": False,
            "synchronous_commit": False,
            "full_page_writes": False,
        }
        if self.tls:
            settings.update(ssl=True, ssl_cert_file="server.crt", ssl_key_file="server.key")
        settings.update(self.extra_conf)  # last, so callers can override any of the above
        path = os.path.join(self.datadir, "hoopwire.conf")
        with open(path, "w", encoding="utf-8") as f:
            for key, value in settings.items():
                f.write(f"{key} = {_conf_value(value)}\n")
        self._give_to_owner(path)

    def _start_postmaster(self) -> None:
        # A port picked by us may be taken before postgres binds it; then pick another.
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            if not self._fixed_port:
                self.port = free_loopback_port()
            self._write_conf()
            # a new session keeps a terminal's Ctrl-C away from the server: stop() shuts it down
            r = self._run([self._bin("pg_ctl"), "start", "-w", "-t", str(_START_TIMEOUT),
                           "-D", self.datadir, "-l", self.logfile, "-s"],
                          check=False, timeout=_START_TIMEOUT + 30, new_session=True)
            if r.returncode == 0:
                self.sql("SELECT 1")  # ready means ready for a real query, not just a pid file
                return
            tail = self.log_tail()
            if "already in use" not in tail or attempt == attempts - 1:
                raise PgServerError(
                    f"PostgreSQL did not start on {self.host}:{self.port} (pg_ctl waits up to "
                    f"{_START_TIMEOUT} s): {(r.stderr or r.stdout).strip()}\n"
                    f"--- server log (tail) ---\n{tail}")

    def _kill_postmaster(self) -> None:
        """pg_ctl could not stop it: immediate shutdown by signal, then SIGKILL."""
        try:
            with open(os.path.join(self.datadir, "postmaster.pid"), encoding="ascii") as f:
                pid = int(f.readline())
        except (OSError, ValueError):
            return
        for sig in (signal.SIGQUIT, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            if wait_gone(pid, 5):
                return

    def _psql(self, script: str, dbname: str, secret: str | None = None) -> str:
        if not self.running:
            raise PgServerError("the server is not running")
        r = self._run([self._bin("psql"), "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
                       "-h", self.socket_dir, "-p", str(self.port), "-U", self.superuser,
                       "-d", dbname, "-f", "-"],
                      as_owner=False, input=script, secret=secret, timeout=120)
        out = r.stdout
        return out[:-1] if out.endswith("\n") else out
