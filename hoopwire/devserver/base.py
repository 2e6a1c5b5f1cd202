"""What every throwaway server shares: a private directory handed to the OS user the server
binaries insist on when we are root, the commands run as that user, the loopback port, the
servers still running at interpreter exit.

The servers themselves (hoopwire/devserver/postgres.py, mariadb.py) say how theirs is installed,
configured, started and stopped.
"""

from __future__ import annotations

import atexit
import os
import pwd
import socket
import subprocess
import time

__all__ = ["ThrowawayServer", "free_loopback_port", "wait_for_listener", "wait_gone"]


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 right now (another process may still take it first)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_listener(port: int, proc, timeout: float = 20.0) -> None:
    """Wait until something accepts on 127.0.0.1:port; RuntimeError if `proc` (a Popen) exits
    first or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the process exited during startup")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listened on 127.0.0.1:{port} in time")


def wait_gone(pid: int, timeout: float) -> bool:
    """True once no process `pid` exists, False if it is still there after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


# Servers not yet stopped, so that an interpreter exit (a crashed test run, an uncaught
# exception in a benchmark) does not leave them running. Each remembers the pid that started it:
# a forked child exiting must not stop its parent's servers.
_live: dict[int, "ThrowawayServer"] = {}


@atexit.register
def _stop_live_servers() -> None:
    for server in list(_live.values()):
        if server._owner_pid == os.getpid():
            server.stop()


class ThrowawayServer:
    """The part of a throwaway server that is not about its database. A subclass sets the class
    attributes below, `workdir` / `logfile` / `tls_cert` / `_owner_pid` in its instances, and
    defines start(), stop() and _env() (the environment its commands run in)."""

    host = "127.0.0.1"
    _OS_USER: str                   # owns the directory, and runs the server, when we are root
    _ERROR: type[RuntimeError]      # what goes wrong is raised as this
    _OWNED = ""                     # what the OS user owns, and why root will not do, for the
    _ROOT_REFUSAL = ""              # error that says the user is missing, with the Debian
    _PACKAGE = ""                   # package that creates it
    _ERROR_TAIL: int | None = None  # keep only this many characters of a failed command's output

    workdir: str | None
    logfile: str | None
    tls_cert: str | None
    _owner_pid: int

    @property
    def running(self) -> bool:
        return self.workdir is not None

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"{self.host}:{self.port}" if self.running else "stopped"
        return f"<{type(self).__name__} {state} tls={'on' if self.tls else 'off'}>"

    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(self.logfile or "", encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no server log)"

    def _track(self) -> None:
        """Stop this server at interpreter exit unless stop() came first."""
        _live[id(self)] = self

    def _untrack(self) -> None:
        _live.pop(id(self), None)

    # -- running as the server's OS user -------------------------------------------------------

    def _as_owner(self, cmd: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return cmd
        return ["runuser", "-u", self._OS_USER, "--", *cmd]

    def _give_to_owner(self, path: str, mode: int | None = None) -> None:
        if mode is not None:
            os.chmod(path, mode)
        if os.geteuid() != 0:
            return
        try:
            entry = pwd.getpwnam(self._OS_USER)
        except KeyError:
            raise self._ERROR(
                f"running as root needs an OS user named {self._OS_USER!r} to own "
                f"{self._OWNED} ({self._ROOT_REFUSAL}); the Debian `{self._PACKAGE}` package "
                "creates it") from None
        os.chown(path, entry.pw_uid, entry.pw_gid)

    def _check_owner_can_reach(self, path: str) -> None:
        """As root, fail clearly when the OS user cannot reach our directory, e.g. a basedir
        under pytest's /tmp/pytest-of-root (mode 0700), instead of a cryptic install error."""
        if os.geteuid() != 0:
            return
        owner = pwd.getpwnam(self._OS_USER)
        parent = os.path.dirname(os.path.abspath(path))
        while True:
            st = os.stat(parent)
            if st.st_uid == owner.pw_uid:
                ok = st.st_mode & 0o100
            elif st.st_gid == owner.pw_gid:
                ok = st.st_mode & 0o010
            else:
                ok = st.st_mode & 0o001
            if not ok:
                raise self._ERROR(
                    f"the {self._OS_USER!r} OS user cannot enter {parent} (mode "
                    f"{st.st_mode & 0o777:o}); pass a basedir it can reach, such as /tmp")
            if parent == os.path.dirname(parent):
                return
            parent = os.path.dirname(parent)

    def _run(self, cmd: list[str], *, as_owner: bool = True, check: bool = True,
             timeout: float = 120, input: str | None = None, secret: str | None = None,
             new_session: bool = False) -> subprocess.CompletedProcess:
        """Run `cmd` (as the OS user unless `as_owner` is false) in our directory, bounded by
        `timeout`; with `check`, a failure raises with the command's output, `secret`
        scrubbed from it."""
        name = os.path.basename(cmd[0])
        if as_owner:
            cmd = self._as_owner(cmd)
        try:
            r = subprocess.run(cmd, input=input, capture_output=True, text=True, env=self._env(),
                               cwd=self.workdir, timeout=timeout, start_new_session=new_session)
        except subprocess.TimeoutExpired:
            raise self._ERROR(f"{name} timed out after {timeout} s") from None
        if check and r.returncode != 0:
            output = (r.stderr or r.stdout).strip()
            if self._ERROR_TAIL is not None:
                output = output[-self._ERROR_TAIL:]
            if secret:
                output = output.replace(secret, "***")
            raise self._ERROR(f"{name} failed (exit {r.returncode}): {output}")
        return r
