"""Helpers shared by the tests (and the end-to-end benchmarks): ports, a TOML writer, and
`Gateway`, which runs `hoopwire serve` as a real subprocess.

    gw = Gateway({"identity": {...}, "connection": [{"name": "pg", "upstream": ..., ...}]},
                 env={"APP_DB_PASSWORD": pg.passwords["app"]})
    psycopg.connect(host="127.0.0.1", port=gw.port("pg"), password=token, ...)
    assert "session started" in gw.log_text()
    gw.stop()

`psql(...)` runs the psql of the PostgreSQL the fixtures run, in an environment no PG* variable
of the caller's can steer.
"""

from __future__ import annotations

import copy
import math
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

__all__ = ["free_port", "port_open", "wait_port", "to_toml", "Gateway", "GatewayError",
           "Forwarder", "SMALL_PIECES", "REPO_ROOT", "APP_DB", "ITEMS", "psql", "psql_env",
           "wait_until", "api", "wait_pending"]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# what the session `pg` fixture (conftest.py) puts in its application database
APP_DB = "appdb"
ITEMS = [(1, "apple"), (2, "banana"), (3, "cherry")]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now (another process may still take it first)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Wait until host:port accepts a TCP connection; TimeoutError when it never does."""
    deadline = time.monotonic() + timeout
    while not port_open(host, port):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"nothing accepts connections on {host}:{port} after {timeout} s")
        time.sleep(0.05)


def wait_until(predicate, timeout: float, what: str = "condition", gw: "Gateway | None" = None,
               interval: float = 0.05):
    """Poll `predicate` until it returns something true, and return that. AssertionError after
    `timeout` s, naming `what` (and the gateway's log tail when `gw` is given). The timeout is
    a hang guard, never a speed claim: tests wait for the event itself through this."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout} s"
                                 + (f"; log:\n{gw.log_text()[-4000:]}" if gw is not None else ""))
        time.sleep(interval)


def api(gw: "Gateway", method: str, path: str, token: str | None, body=None, *,
        raw_auth: str | None = None) -> tuple[int, dict]:
    """One admin API call as a client makes it: (HTTP status, JSON body). `raw_auth` sends that
    Authorization header as it is (to try malformed ones)."""
    import json
    import urllib.error
    import urllib.request
    headers = {"Authorization": raw_auth if raw_auth is not None else f"Bearer {token}",
               "Content-Type": "application/json"}
    req = urllib.request.Request(gw.admin_url + path, method=method, headers=headers,
                                 data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def wait_pending(gw: "Gateway", token: str, statement_part: str = "",
                 timeout: float = 30.0) -> dict:
    """The first pending approval request whose statement contains `statement_part`, as the
    admin API lists it to `token`'s holder (the deadline is a hang guard)."""
    def find():
        status, body = api(gw, "GET", "/api/v1/approvals?status=pending", token)
        assert status == 200, body
        return next((a for a in body["approvals"] if statement_part in a["statement"]), None)
    return wait_until(find, timeout, "a pending approval request")


# ------------------------------------------------------------------------------------------------
# psql, as the fixtures find it and untouched by the caller's environment

# Where libpq would find a password file if PGPASSFILE did not name one: a path that never
# exists, so a developer's ~/.pgpass cannot answer a password request the test meant to leave
# unanswered.
_NO_PASSFILE = "/nonexistent/hoopwire-tests/pgpass"


def psql_env(password: str | None = None) -> dict[str, str]:
    """This process's environment without anything libpq or psql reads from it: every PG*
    variable (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGSSLMODE, PGOPTIONS, PGSERVICE, ...) and
    every PSQL* one goes, so only the test's own arguments say where psql connects and how.
    Messages come untranslated (LC_ALL=C) and the client encoding is fixed (UTF8) rather than
    taken from the caller's locale. `password`, if given, is passed as PGPASSWORD (never on the
    command line, where ps would show it)."""
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith(("PG", "PSQL")) and not k.startswith("LC_")}
    env["LC_ALL"] = "C"
    env["PGCLIENTENCODING"] = "UTF8"
    env["PGPASSFILE"] = _NO_PASSFILE
    if password is not None:
        env["PGPASSWORD"] = password
    return env


def psql(*args: str, password: str | None = None, input: str | None = None,
         timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run `psql -X -w ARGS` (no ~/.psqlrc; never a password prompt on the terminal) from the
    directory the fixtures take the server's binaries from (hoopwire.devserver.find_pg_bindir:
    HOOPWIRE_PG_BINDIR, pg_config, the newest /usr/lib/postgresql/*/bin), not whichever psql
    comes first on PATH, with `psql_env()`.
    Returns the CompletedProcess (text stdout/stderr); checking returncode is the caller's.
    `timeout` only keeps a hung psql from hanging the run."""
    from hoopwire.devserver import find_pg_bindir   # the tree under test, like the fixtures
    cmd = [os.path.join(find_pg_bindir(), "psql"), "-X", "-w", *args]
    return subprocess.run(cmd, input=input if input is not None else "", capture_output=True,
                          text=True, env=psql_env(password), timeout=timeout)


# ------------------------------------------------------------------------------------------------
# TOML: just enough to write configuration files (strings, numbers, booleans, arrays of scalars,
# tables, arrays of tables, nested), so the tests need no TOML-writing dependency.

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
            "\r": "\\r"}


def _toml_key(key: str) -> str:
    if not isinstance(key, str):
        raise TypeError(f"TOML keys are strings, got {key!r}")
    return key if _BARE_KEY.match(key) else _toml_string(key)


def _toml_string(value: str) -> str:
    out = []
    for ch in value:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_scalar(v) for v in value) + "]"
    if isinstance(value, dict):
        # only reached inside arrays: an inline table
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_scalar(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML: {value!r}")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, dict) for v in value)


def _toml_table(table: dict, path: list[str], out: list[str]) -> None:
    # A table's own keys must come before its sub-tables, or they would land in the last one.
    subtables = []
    for key, value in table.items():
        if isinstance(value, dict) or _is_table_array(value):
            subtables.append((key, value))
        else:
            out.append(f"{_toml_key(key)} = {_toml_scalar(value)}")
    for key, value in subtables:
        sub = path + [_toml_key(key)]
        if isinstance(value, dict):
            out.append("")
            out.append(f"[{'.'.join(sub)}]")
            _toml_table(value, sub, out)
        else:
            for item in value:
                out.append("")
                out.append(f"[[{'.'.join(sub)}]]")
                _toml_table(item, sub, out)


class Forwarder:
    """A TCP forwarder between the gateway and a real server that the test can cut, and that
    can hand the server's replies on in small pieces (`pieces`: sizes that cycle, one socket
    write each with `pause` between), so that whoever reads them meets every message cut at
    every place a read can end: in a header, in a row, between a CommandComplete and its
    ReadyForQuery. What the client sends goes through unchanged. With `record`, `sent` and
    `received` keep every byte each way over all connections: what a client received, fields
    its driver never shows included."""

    def __init__(self, target: tuple[str, int], *, pieces: tuple[int, ...] = (),
                 pause: float = 0.0005, record: bool = False):
        self.target = target
        self.sent = bytearray() if record else None        # client -> target, all of it
        self.received = bytearray() if record else None    # target -> client, all of it
        self.pieces = pieces
        self.pause = pause
        self.writes = 0                           # replies' pieces written so far
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.doomed: set[socket.socket] = set()   # cut: to be reset, not closed
        self.from_server: list[bytearray] = []    # the first 64 KiB each server sent
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, name="forwarder", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                a, _ = self.listener.accept()
            except OSError:
                return
            b = socket.create_connection(self.target)
            if self.pieces:
                b.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                a.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self.sockets += [a, b]
            capture = bytearray()
            self.from_server.append(capture)
            threading.Thread(target=self._pump, args=(a, b, None, self.sent),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(b, a, capture, self.received),
                             daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, capture: bytearray | None = None,
              keep: bytearray | None = None) -> None:
        i = 0
        try:
            while src not in self.doomed:
                data = src.recv(1 << 16)
                if not data or src in self.doomed:
                    break
                if keep is not None:
                    with self.lock:
                        keep += data
                if capture is None:
                    dst.sendall(data)
                    continue
                if len(capture) < 1 << 16:
                    capture += data
                if not self.pieces:
                    dst.sendall(data)
                    continue
                pos = 0
                while pos < len(data):
                    n = self.pieces[i % len(self.pieces)]
                    i += 1
                    dst.sendall(data[pos:pos + n])
                    self.writes += 1
                    pos += n
                    time.sleep(self.pause)
        except OSError:
            pass
        for s in (src, dst):
            try:
                if s in self.doomed:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                else:
                    # a FIN now, even while the other pump thread still blocks in recv()
                    s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def cut(self) -> None:
        """The network goes away: every forwarded connection is reset, without a word."""
        with self.lock:
            self.doomed.update(self.sockets)
            for s in self.sockets:
                try:
                    s.shutdown(socket.SHUT_RD)   # wakes the pump, which resets both ends
                except OSError:
                    pass
            self.sockets.clear()

    def close(self) -> None:
        self.listener.close()
        self.cut()

    def __enter__(self) -> "Forwarder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# the server's replies in pieces of 1 to 700 bytes (Forwarder's `pieces`)
SMALL_PIECES = (1, 2, 3, 4, 5, 6, 7, 11, 64, 700)


def to_toml(doc: dict) -> str:
    """A TOML document for `doc`; tomllib.loads(to_toml(d)) == d for the types listed above."""
    out: list[str] = []
    _toml_table(doc, [], out)
    return "\n".join(out).lstrip("\n") + "\n"


# ------------------------------------------------------------------------------------------------
# the gateway as a subprocess

class GatewayError(RuntimeError):
    """The gateway did not come up (the message carries its log)."""


def _listen_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"  # where we can reach a wildcard listener from
    return host, int(port)


class Gateway:
    """`python -m hoopwire serve --config FILE` from a config dict.

    Connections (and [admin]) without a `listen` get a free loopback port. `env` is added to this
    process's environment: secrets go there, never into the config file. The process's stdout and
    stderr are read by a thread into one buffer (`log_text()`), so a chatty gateway never blocks
    on a full pipe and tests can assert on log lines.
    """

    def __init__(self, config: dict, *, env: dict[str, str] | None = None,
                 workers: int | None = None, start: bool = True, timeout: float = 20.0,
                 extra_args: list[str] | None = None, tree: str = REPO_ROOT):
        self.config = copy.deepcopy(config)
        self.tree = tree            # the source tree (with its built extensions) to run
        self.env = dict(env or {})
        self.workers = workers
        self.extra_args = list(extra_args or [])
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self._dir = tempfile.mkdtemp(prefix="hoopwire-gw-")
        self.config_path = os.path.join(self._dir, "hoopwire.toml")
        self._log: list[str] = []
        self._log_lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self._assign_ports()
        self.write_config()
        if start:
            self.start()

    # -- configuration ---------------------------------------------------------------------------

    def _assign_ports(self) -> None:
        admin = self.config.setdefault("admin", {})
        admin.setdefault("listen", f"127.0.0.1:{free_port()}")
        for conn in self.config.get("connection", []):
            conn.setdefault("listen", f"127.0.0.1:{free_port()}")

    def write_config(self, config: dict | None = None) -> None:
        """(Re)write the config file, e.g. before sending SIGHUP to test a reload."""
        if config is not None:
            self.config = copy.deepcopy(config)
            self._assign_ports()
        with open(self.config_path, "w", encoding="utf-8") as f:
            f.write(to_toml(self.config))

    @property
    def admin_port(self) -> int:
        return _listen_port(self.config["admin"]["listen"])[1]

    @property
    def admin_url(self) -> str:
        host, port = _listen_port(self.config["admin"]["listen"])
        return f"http://{host}:{port}"

    def address(self, name: str) -> tuple[str, int]:
        for conn in self.config.get("connection", []):
            if conn.get("name") == name:
                return _listen_port(conn["listen"])
        raise KeyError(f"no connection named {name!r} in this gateway's config")

    def port(self, name: str) -> int:
        return self.address(name)[1]

    # -- process ---------------------------------------------------------------------------------

    def start(self) -> "Gateway":
        if self.proc is not None:
            raise RuntimeError("already started")
        cmd = [sys.executable, "-m", "hoopwire", "serve", "--config", self.config_path]
        if self.workers is not None:
            cmd += ["--workers", str(self.workers)]
        cmd += self.extra_args
        env = dict(os.environ)
        # the source tree under test comes first, whatever is installed
        env["PYTHONPATH"] = os.pathsep.join(p for p in (self.tree, env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.env)
        # its own session: a stop can signal worker processes as a group
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=env, cwd=self._dir,
                                     start_new_session=True)
        self._reader = threading.Thread(target=self._read_log, name="gateway-log", daemon=True)
        self._reader.start()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _read_log(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            with self._log_lock:
                self._log.append(raw.decode("utf-8", "replace"))

    def _wait_ready(self) -> None:
        addresses = [_listen_port(c["listen"]) for c in self.config.get("connection", [])]
        addresses.append(_listen_port(self.config["admin"]["listen"]))
        deadline = time.monotonic() + self.timeout
        for host, port in addresses:
            while not port_open(host, port, timeout=0.2):
                if self.proc.poll() is not None:
                    self._reader.join(2)
                    raise GatewayError(f"the gateway exited with {self.proc.returncode} before "
                                       f"listening on {host}:{port}:\n{self.log_text()}")
                if time.monotonic() >= deadline:
                    raise GatewayError(f"the gateway did not listen on {host}:{port} within "
                                       f"{self.timeout} s:\n{self.log_text()}")
                time.sleep(0.05)

    def log_text(self) -> str:
        with self._log_lock:
            return "".join(self._log)

    def wait_log(self, pattern: str, timeout: float = 10.0) -> re.Match:
        """Wait for a log line matching the regex `pattern`; AssertionError with the log if none."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.log_text())
            if m:
                return m
            if time.monotonic() >= deadline:
                raise AssertionError(f"no log line matches {pattern!r} after {timeout} s; "
                                     f"log:\n{self.log_text()}")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL to the whole process group after `timeout`. Safe to repeat."""
        rc = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
            # workers that outlived their parent (or a parent that ignored SIGTERM)
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            rc = self.proc.wait()
            if self._reader is not None:
                self._reader.join(2)
        shutil.rmtree(self._dir, ignore_errors=True)
        return rc

    def __enter__(self) -> "Gateway":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
