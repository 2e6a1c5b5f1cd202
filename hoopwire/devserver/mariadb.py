"""A throwaway MariaDB server on a loopback port.

    with MariaDbServer(tls_cert="server.pem", tls_key="server.key", tls_ca="ca.pem") as db:
        db.create_database("shop")
        db.create_user("app", "s3cret", grants=["SELECT ON shop.*"])
        db.create_user("ed", "s3cret", plugin="ed25519", require_ssl=True)
        db.sql("SELECT VERSION()")          # as the admin, over the unix socket -> text
        pymysql.connect(host=db.host, port=db.port, user="app", password="s3cret")

The tests' `mariadb` fixture (tests/mysqlfixtures.py), bench/sysbench_compare.py and `hoopwire
demo mysql` all start their servers through this class.

The server lives in one temporary directory (data, unix socket, pid file, error log, and its
tmpdir) that stop() removes. It is tuned for tests and benchmarks, not for keeping data: the redo
log is not flushed at commit and the doublewrite buffer is off.

mariadbd refuses to run as root without `--user`, and a data directory made by root is not the
server's to write, so when we are root the directory is handed to the `mysql` OS user and the
server binaries run through `runuser`. The administrative account is root@localhost identified
by unix_socket (the OS user who runs `mariadb` must be the one named at install time), reachable
only over the private socket: nothing on the TCP port logs in without a password. The `mariadb`
CLI, which only talks to the server, runs as whoever we are.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Any, Iterable

from hoopwire.devserver.base import ThrowawayServer, free_loopback_port, wait_gone

__all__ = ["MariaDbServer", "MariaDbServerError", "find_mariadb_binaries", "quote_ident",
           "quote_string"]

_START_TIMEOUT = 60         # seconds to wait for the server to answer a query
_STOP_TIMEOUT = 30
# installed names first, then the MySQL-compatible aliases older packages ship
_NAMES = {"install_db": ("mariadb-install-db", "mysql_install_db"),
          "server": ("mariadbd", "mysqld"),
          "client": ("mariadb", "mysql")}
_SEARCH = ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin", "/usr/libexec")


class MariaDbServerError(RuntimeError):
    """A throwaway server could not be found, set up, started or queried."""


def find_mariadb_binaries() -> dict[str, str]:
    """Paths of the install script, the server and the CLI ({"install_db", "server", "client"}).

    HOOPWIRE_MARIADB_BINDIR wins (all three there), then PATH, then the usual system directories
    (Debian puts mariadbd in /usr/sbin, which a non-root PATH often lacks)."""
    found = {}
    forced = os.environ.get("HOOPWIRE_MARIADB_BINDIR")
    for role, names in _NAMES.items():
        for name in names:
            if forced:
                path = os.path.join(forced, name)
                path = path if os.access(path, os.X_OK) else None
            else:
                path = shutil.which(name) or next(
                    (os.path.join(d, name) for d in _SEARCH
                     if os.access(os.path.join(d, name), os.X_OK)), None)
            if path:
                found[role] = path
                break
        else:
            raise MariaDbServerError(
                f"MariaDB {role.replace('_', ' ')} binary not found ({' or '.join(names)}): "
                "install it, e.g. `apt-get install mariadb-server mariadb-client`, or set "
                "HOOPWIRE_MARIADB_BINDIR to the directory that holds them")
    return found


def quote_string(value: str) -> str:
    """A string literal under the default sql_mode (backslash escapes on)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def quote_ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


class MariaDbServer(ThrowawayServer):
    """One throwaway server. Not started until start() (or `with`).

    `tls_cert`/`tls_key` turn TLS on (the server reads private copies in its directory);
    `tls_ca` is also the CA it checks client certificates against (sysbench offers one, and
    mariadbd refuses the handshake with "unknown ca" if it cannot verify it). `options` are extra
    mariadbd command-line options (`{"max_connections": 300}` becomes `--max-connections=300`;
    True is a bare flag, False or None drops a default), applied after the defaults below."""

    _OS_USER = "mysql"  # owns the data directory when we run as root
    _ERROR = MariaDbServerError
    _OWNED, _ROOT_REFUSAL = "the data directory", "mariadbd will not run as root"
    _PACKAGE = "mariadb-server"
    _ERROR_TAIL = 2000  # mariadb-install-db is verbose: the error is at the end

    def __init__(self, *, tls_cert: str | None = None, tls_key: str | None = None,
                 tls_ca: str | None = None, port: int | None = None,
                 options: dict[str, Any] | None = None, basedir: str | None = None,
                 binaries: dict[str, str] | None = None):
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        self.bin = binaries or find_mariadb_binaries()
        # the caller's files, kept as given so that a stopped server can start again
        self.tls_cert, self.tls_key, self.tls_ca = tls_cert, tls_key, tls_ca
        self.port = port
        self._fixed_port = port is not None
        self.options = dict(options or {})
        self.basedir = basedir
        self.workdir: str | None = None
        self.datadir: str | None = None
        self.tmpdir: str | None = None
        self.socket: str | None = None
        self.logfile: str | None = None
        self.pidfile: str | None = None
        self.passwords: dict[str, str] = {}     # every password create_user set, by user name
        self._proc: subprocess.Popen | None = None
        self._owner_pid = os.getpid()
        # the unix_socket account the install creates for whoever runs the CLI: root@localhost
        # when we are root, else one named after our OS user
        self.admin_user = "root" if os.geteuid() == 0 else getpass.getuser()

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """mariadbd's own pid (not runuser's), from its pid file."""
        try:
            with open(self.pidfile or "", encoding="ascii") as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def start(self) -> "MariaDbServer":
        if self.running:
            return self
        self.workdir = tempfile.mkdtemp(prefix="hoopwire-mariadb-", dir=self.basedir)
        self._owner_pid = os.getpid()
        self._track()  # before anything can fail: stop() cleans up half-made servers
        self.datadir = os.path.join(self.workdir, "data")
        self.tmpdir = os.path.join(self.workdir, "tmp")
        self.socket = os.path.join(self.workdir, "mariadbd.sock")
        self.logfile = os.path.join(self.workdir, "error.log")
        self.pidfile = os.path.join(self.workdir, "mariadbd.pid")
        try:
            # mariadb-install-db's word splitting breaks on blanks in a path (it passes the
            # options on to `mariadbd --bootstrap` unquoted)
            if any(c.isspace() for c in self.workdir):
                raise MariaDbServerError(f"the work directory {self.workdir!r} has a blank in "
                                         "its path: pass a basedir without one")
            self._give_to_owner(self.workdir)
            self._check_owner_can_reach(self.workdir)
            # The server's temporary tables and files go here, not to the shared /tmp: under
            # load mariadb-install-db once failed with "Could not remove temporary table
            # '/tmp/#sql-temptable-...'" there, and a private tmpdir also goes away with stop().
            os.mkdir(self.tmpdir, 0o700)
            self._give_to_owner(self.tmpdir)
            self._install()
            self._start_server()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """SIGTERM (a clean shutdown; open sessions are cut), SIGKILL after a bound, then remove
        the directory. Safe to repeat."""
        if self.workdir is None:
            return
        try:
            self._terminate()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
            self._untrack()

    # -- helpers for callers ---------------------------------------------------------------------

    def sql(self, script: str, database: str | None = None, *, secret: str | None = None,
            timeout: float = 120) -> str:
        """Run SQL as the administrative account over the unix socket; tab-separated rows
        without a header (`mariadb -N -B`), the final newline removed. Several statements work;
        the first error stops the script and raises. `secret` is scrubbed from error text."""
        if not self.running:
            raise MariaDbServerError("the server is not running")
        cmd = [self.bin["client"], "--no-defaults", "-S", self.socket, "-u", self.admin_user,
               "-N", "-B", "--connect-timeout=10"] + ([database] if database else [])
        # the script goes through stdin, never argv: passwords in it stay out of `ps`
        r = self._run(cmd, as_owner=False, input=script, secret=secret, timeout=timeout)
        out = r.stdout
        return out[:-1] if out.endswith("\n") else out

    def create_database(self, name: str, charset: str = "utf8mb4") -> None:
        self.sql(f"CREATE DATABASE {quote_ident(name)} CHARACTER SET {charset};")

    def create_user(self, name: str, password: str, *, plugin: str = "mysql_native_password",
                    host: str = "%", grants: Iterable[str] = (), require_ssl: bool = False) -> None:
        """An account that logs in from `host` with `password` stored for `plugin`
        (mysql_native_password, or ed25519: MariaDB's plugin, loaded at start), `grants`
        ("SELECT ON shop.*", ...) given to it, and with `require_ssl` a plaintext login refused
        by the server itself."""
        account = f"{quote_string(name)}@{quote_string(host)}"
        if plugin == "mysql_native_password":
            how = f"IDENTIFIED BY {quote_string(password)}"
        else:
            how = f"IDENTIFIED VIA {plugin} USING PASSWORD({quote_string(password)})"
        script = (f"CREATE USER {account} {how}{' REQUIRE SSL' if require_ssl else ''};\n"
                  + "".join(f"GRANT {g} TO {account};\n" for g in grants))
        self.sql(script, secret=password)
        self.passwords[name] = password

    # -- setting up ------------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        # MYSQL_* variables of the caller's shell (MYSQL_PWD, MYSQL_HOST, MYSQL_TCP_PORT...)
        # must not steer the CLI; messages untranslated; TMPDIR for the install script's and
        # the server's own temporary files (the server's --tmpdir says it again)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("MYSQL", "MARIADB")) and not k.startswith("LC_")}
        env["LC_ALL"] = "C"
        if self.tmpdir:
            env["TMPDIR"] = self.tmpdir
        return env

    def _install(self) -> None:
        # socket authentication for the admin account: no password exists to leak or guess,
        # and the TCP port has no account without one (no anonymous users, no test database).
        # Options the script does not know itself (--tmpdir) go on to `mariadbd --bootstrap`.
        self._run([self.bin["install_db"], "--no-defaults", f"--datadir={self.datadir}",
                   f"--tmpdir={self.tmpdir}",
                   "--auth-root-authentication-method=socket",
                   f"--auth-root-socket-user={self.admin_user}", "--skip-test-db",
                   "--skip-name-resolve"], input="", timeout=180)

    def _server_args(self) -> list[str]:
        settings: dict[str, Any] = {
            "datadir": self.datadir,
            "tmpdir": self.tmpdir,
            "socket": self.socket,
            "pid-file": self.pidfile,
            "log-error": self.logfile,
            "port": self.port,
            "bind-address": self.host,
            "skip-name-resolve": True,   # accounts are 'x'@'%': no reverse lookups per login
            "character-set-server": "utf8mb4",
            "collation-server": "utf8mb4_general_ci",
            "max-connections": 300,
            # MariaDB's ed25519 authentication: create_user(plugin="ed25519") needs it loaded
            "plugin-load-add": "auth_ed25519",
            # a throwaway server: durability only costs time
            "innodb-flush-log-at-trx-commit": 0,
            "innodb-doublewrite": 0,
            "innodb-buffer-pool-size": "128M",
            "skip-log-bin": True,
        }
        for attr, name in (("tls_cert", "ssl-cert"), ("tls_key", "ssl-key"), ("tls_ca", "ssl-ca")):
            if getattr(self, attr) and self.tls:
                settings[name] = self._tls_copy(attr)
        for key, value in self.options.items():  # last: callers override any of the above
            settings[key.replace("_", "-")] = value
        args = [self.bin["server"], "--no-defaults"]
        for key, value in settings.items():
            if value is True:
                args.append(f"--{key}")
            elif value is not False and value is not None:
                args.append(f"--{key}={value}")
        return args

    def _tls_copy(self, attr: str) -> str:
        return os.path.join(self.workdir, attr + ".pem")

    def _copy_tls_files(self) -> None:
        """The server reads its certificate, key and CA as the mysql user: private copies it
        owns (the key 0600), in our directory."""
        if not self.tls:
            return
        for attr, mode in (("tls_cert", 0o644), ("tls_key", 0o600), ("tls_ca", 0o644)):
            src = getattr(self, attr)
            if src:
                dst = self._tls_copy(attr)
                shutil.copyfile(src, dst)
                self._give_to_owner(dst, mode)

    def _start_server(self) -> None:
        self._copy_tls_files()
        # A port picked by us may be taken before mariadbd binds it; then pick another.
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            if not self._fixed_port:
                self.port = free_loopback_port()
            with open(os.path.join(self.workdir, "mariadbd.out"), "ab") as out:
                # a new session keeps a terminal's Ctrl-C away from the server: stop() ends it
                self._proc = subprocess.Popen(
                    self._as_owner(self._server_args()), stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, env=self._env(), cwd=self.workdir,
                    start_new_session=True)
            if self._wait_ready():
                return
            tail = self.log_tail()
            self._terminate()
            if "already in use" not in tail or attempt == attempts - 1:
                raise MariaDbServerError(
                    f"MariaDB did not start on {self.host}:{self.port} (waited up to "
                    f"{_START_TIMEOUT} s)\n--- error log (tail) ---\n{tail}")

    def _wait_ready(self) -> bool:
        """Ready means it answers a real query over its socket, not just a pid file."""
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            if os.path.exists(self.socket):
                try:
                    self.sql("SELECT 1", timeout=15)
                    return True
                except MariaDbServerError:
                    pass
            time.sleep(0.1)
        return False

    def _terminate(self) -> None:
        pid = self.pid
        proc, self._proc = self._proc, None
        if pid is not None:
            for sig, wait in ((signal.SIGTERM, _STOP_TIMEOUT), (signal.SIGKILL, 5)):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    break
                if wait_gone(pid, wait):
                    break
        if proc is not None:
            if proc.poll() is None:
                # runuser (or a server that never wrote its pid file) is still there
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(_STOP_TIMEOUT)
                except (ProcessLookupError, PermissionError):
                    pass
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
