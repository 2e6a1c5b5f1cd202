"""Helpers shared by the tests (and the end-to-end benchmarks): ports, a TOML writer, and
`Gateway`, which runs `hoopwire serve` as a real subprocess.

    gw = Gateway({"identity": {...}, "connection": [{"name": "pg", "upstream": ..., ...}]},
                 env={"APP_DB_PASSWORD": pg.passwords["app"]})
    psycopg.connect(host="127.0.0.1", port=gw.port("pg"), password=token, ...)
    assert "session started" in gw.log_text()
    gw.stop()
"""

from __future__ import annotations

import copy
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

__all__ = ["free_port", "port_open", "wait_port", "to_toml", "Gateway", "GatewayError",
           "Rechunker", "REPO_ROOT", "APP_DB", "ITEMS"]

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


class Rechunker:
    """A TCP relay in front of a real server that hands its replies on in small pieces, one
    socket write each with a pause between, so that whoever reads them meets every message cut
    at every place a read can end: in a header, in a row, between a CommandComplete and its
    ReadyForQuery. What the client sends goes through unchanged. `sizes` cycle."""

    def __init__(self, port: int, sizes: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 11, 64, 700),
                 pause: float = 0.0005, host: str = "127.0.0.1"):
        self.target = (host, port)
        self.sizes = sizes
        self.pause = pause
        self.listener = socket.create_server((host, 0))
        self.port = self.listener.getsockname()[1]
        self.pieces = 0
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, name="rechunker", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            for sk in (client, server):
                sk.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._socks += [client, server]
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, cut: bool) -> None:
        i = 0
        try:
            while data := src.recv(65536):
                if not cut:
                    dst.sendall(data)
                    continue
                pos = 0
                while pos < len(data):
                    n = self.sizes[i % len(self.sizes)]
                    i += 1
                    dst.sendall(data[pos:pos + n])
                    self.pieces += 1
                    pos += n
                    time.sleep(self.pause)
        except OSError:
            pass
        finally:
            for sk in (src, dst):
                try:
                    sk.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()
        for sk in self._socks:
            sk.close()

    def __enter__(self) -> "Rechunker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
                 extra_args: list[str] | None = None):
        self.config = copy.deepcopy(config)
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
        env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
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
