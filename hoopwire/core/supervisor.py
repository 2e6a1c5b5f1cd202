"""Several workers: the supervisor forks them, restarts those that die, and serves the admin
listener (`hoopwire serve --workers N`)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time

from hoopwire.config import Config, ConfigError, load_config
from hoopwire.core.gateway import Gateway, _run_loop, build_engines
from hoopwire.logs import event

log = logging.getLogger("hoopwire.server")

__all__ = ["supervise"]

# A worker that dies after it served is restarted after a delay that starts at RESTART_DELAY_MIN
# and doubles with each further death of its slot up to RESTART_DELAY_MAX: one crash costs half
# a second, a crash loop cannot become a fork loop. A worker that then serves for STABLE_AFTER
# seconds has shown the crashes were not a loop, and its slot's next death starts again from the
# minimum.
RESTART_DELAY_MIN = 0.5
RESTART_DELAY_MAX = 30.0
STABLE_AFTER = 60.0
# A replacement that fails at start-up while its siblings serve is retried (at the capped delay)
# rather than taking them down; once no worker serves and a slot has failed at start-up this
# many times in a row, the gateway serves nothing, and it stops so that whatever runs it sees.
STARTUP_GIVE_UP = 5
# Seconds the workers get after SIGTERM beyond `[admin] shutdown_grace`: their listeners'
# cancels of running statements (core.listener.CANCEL_BOUND, 3 s) and the audit's last flush.
STOP_MARGIN = 7.0


def _exit_description(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


class _Slot:
    """One worker position -- its index names it in logs, gateway ids and audit records -- and
    the process that fills it now."""

    __slots__ = ("index", "pid", "pidfd", "ready_fd", "started", "ready_at", "ever_ready",
                 "delay", "startup_failures", "restart", "generation")

    def __init__(self, index: int):
        self.index = index
        self.pid: int | None = None       # None while the slot waits for a restart
        self.pidfd: int | None = None     # becomes readable when the process exits
        self.ready_fd: int | None = None  # read end of the pipe the worker reports ready on
        self.started = 0.0
        self.ready_at: float | None = None  # when this process reported ready; None: starting
        self.ever_ready = False           # some process in this slot has served
        self.delay = 0.0                  # the last restart delay; 0: the next is the minimum
        self.startup_failures = 0         # deaths before ready, in a row
        self.restart: asyncio.TimerHandle | None = None
        self.generation = 0               # the configuration generation it was forked with


class _Supervisor:
    """Forks the workers, restarts those that die, serves the admin listener.

    A worker reports ready over a pipe once all its listeners are up. Dying before that is a
    start-up failure; dying after it is a crash. A start-up failure of a slot that never served
    is a configuration or environment problem every worker meets (a port in use, a certificate,
    the state store): the gateway stops with that line. A crash is restarted with backoff, and
    never touches the other workers or their sessions.
    """

    def __init__(self, config: Config, protocols, workers: int, mpdir: str):
        self.config = config
        self.protocols = protocols
        self.generation = 0       # bumped by each accepted reload
        self.workers = workers
        self.mpdir = mpdir
        self.cancel_key = os.urandom(32)
        self.cancel_dir: str | None = None   # the workers' cancel sockets (core.cancelpeers)
        self.slots = [_Slot(i) for i in range(workers)]
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping: asyncio.Event | None = None
        self.exited: asyncio.Event | None = None
        self.failed = False
        self.ctl: Gateway | None = None     # the parent's control objects (admin API)

    # -- processes -------------------------------------------------------------------------------

    def spawn(self, slot: _Slot) -> None:
        r, w = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(r)
            os.close(w)
            raise
        if pid == 0:
            self._worker(slot.index, r, w)   # never returns
        os.close(w)
        os.set_blocking(r, False)
        slot.pid, slot.ready_fd, slot.ready_at = pid, r, None
        slot.pidfd = os.pidfd_open(pid)
        slot.started = time.monotonic()
        slot.generation = self.generation
        if self.loop is not None:
            self._watch(slot)
        event(log, "worker started", worker=slot.index, pid=pid)

    def _worker(self, index: int, r: int, w: int) -> None:
        status = 0
        try:
            # Until its loop handles SIGHUP a worker must not die of one (a reload meanwhile
            # reaches it once it is ready, see _on_ready_pipe); SIGTERM and SIGINT may end it.
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            for s in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                signal.signal(s, signal.SIG_DFL)
            # a replacement is forked from the parent's running loop: its signal wake-up
            # descriptor is the parent's
            signal.set_wakeup_fd(-1)
            # The supervisor's descriptors for the other workers (their readiness pipes and
            # pidfds): a worker has no use for them, and each restart would leak more.
            os.close(r)
            for s in self.slots:
                for fd in (s.ready_fd, s.pidfd):
                    if fd is not None:
                        os.close(fd)

            def ready() -> None:
                os.write(w, b"R")
                os.close(w)
            gw = Gateway(self.config, self.protocols, workers=self.workers, cancel_key=self.cancel_key,
                         serve_admin=False, multiproc_dir=self.mpdir, worker_index=index,
                         on_ready=ready, cancel_dir=self.cancel_dir)
            _run_loop(gw.serve_forever)
        except BaseException:  # noqa: BLE001 - the worker must never return into the parent's code
            log.exception("worker failed")
            status = 1
        finally:
            os._exit(status)

    def _watch(self, slot: _Slot) -> None:
        self.loop.add_reader(slot.ready_fd, self._on_ready_pipe, slot)
        self.loop.add_reader(slot.pidfd, self._on_exit, slot)

    def _close_ready(self, slot: _Slot) -> None:
        if slot.ready_fd is not None:
            self.loop.remove_reader(slot.ready_fd)
            os.close(slot.ready_fd)
            slot.ready_fd = None

    def _on_ready_pipe(self, slot: _Slot) -> None:
        try:
            data = os.read(slot.ready_fd, 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data and slot.ready_at is None:
            slot.ready_at = time.monotonic()
            slot.ever_ready = True
            slot.startup_failures = 0
            event(log, "worker ready", worker=slot.index, pid=slot.pid,
                  after=f"{slot.ready_at - slot.started:.2f}s")
            if slot.generation < self.generation:
                # forked before a reload it could not take yet: it takes it now
                os.kill(slot.pid, signal.SIGHUP)
                slot.generation = self.generation
        if not data:
            self._close_ready(slot)   # EOF: the worker reported (or died) and closed its end

    def _on_exit(self, slot: _Slot) -> None:
        pid = slot.pid
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done, status = pid, 0
        if done == 0:
            return
        self.loop.remove_reader(slot.pidfd)
        os.close(slot.pidfd)
        slot.pidfd = None
        if slot.ready_fd is not None:
            # a report written just before the worker died is still in the pipe
            self._on_ready_pipe(slot)
            self._close_ready(slot)
        slot.pid = None
        self._retire(pid)
        self.exited.set()
        self._after_death(slot, pid, status)

    def _retire(self, pid: int) -> None:
        from hoopwire.metrics import retire_process
        from hoopwire.readiness import clean
        clean(self.mpdir, pid)
        try:
            retire_process(self.mpdir, pid)
        except OSError as e:   # a full disk must not keep the worker from being restarted
            event(log, "cannot keep an exited worker's metrics", logging.ERROR, pid=pid,
                  error=str(e))

    def _serving(self) -> bool:
        return any(s.pid is not None and s.ready_at is not None for s in self.slots)

    def _after_death(self, slot: _Slot, pid: int, status: int) -> None:
        how = _exit_description(status)
        if self.stopping.is_set():
            event(log, "worker exited", worker=slot.index, pid=pid, status=how)
            return
        if slot.ready_at is None:
            slot.startup_failures += 1
            if not slot.ever_ready:
                event(log, "worker failed at start-up; stopping the gateway", logging.ERROR,
                      worker=slot.index, pid=pid, status=how,
                      cause="a configuration or environment problem every worker meets "
                            "(see the error above: a port in use, a certificate, the state store)")
                self._give_up()
                return
            if slot.startup_failures >= STARTUP_GIVE_UP and not self._serving():
                event(log, "no worker can start; stopping the gateway", logging.ERROR,
                      worker=slot.index, pid=pid, status=how, failures=slot.startup_failures)
                self._give_up()
                return
            what = "worker failed at start-up; restarting"
        else:
            if time.monotonic() - slot.ready_at >= STABLE_AFTER:
                slot.delay = 0.0
            what = "worker died; restarting"
        self._schedule_restart(slot, what, pid=pid, status=how)

    def _schedule_restart(self, slot: _Slot, what: str, **fields) -> None:
        slot.delay = RESTART_DELAY_MIN if slot.delay <= 0 else min(slot.delay * 2,
                                                                   RESTART_DELAY_MAX)
        event(log, what, logging.ERROR, worker=slot.index, **fields,
              restart_in=f"{slot.delay:g}s")
        slot.restart = self.loop.call_later(slot.delay, self._restart, slot)

    def _restart(self, slot: _Slot) -> None:
        slot.restart = None
        if self.stopping.is_set():
            return
        try:
            self.spawn(slot)
        except OSError as e:   # EAGAIN, ENOMEM: try again later rather than end the parent
            self._schedule_restart(slot, "cannot fork a worker; retrying", error=str(e))

    def _give_up(self) -> None:
        self.failed = True
        self.stopping.set()

    async def _stop_workers(self) -> None:
        for slot in self.slots:
            if slot.restart is not None:
                slot.restart.cancel()
                slot.restart = None
            if slot.pid is not None:
                os.kill(slot.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.config.admin.shutdown_grace + STOP_MARGIN
        while any(s.pid is not None for s in self.slots):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.exited.clear()
            try:
                await asyncio.wait_for(self.exited.wait(), left)
            except asyncio.TimeoutError:
                break
        for slot in self.slots:
            if slot.pid is None:
                continue
            event(log, "worker did not stop; killing it", logging.WARNING, worker=slot.index,
                  pid=slot.pid)
            os.kill(slot.pid, signal.SIGKILL)
            os.waitpid(slot.pid, 0)
            self.loop.remove_reader(slot.pidfd)
            os.close(slot.pidfd)
            self._close_ready(slot)
            self._retire(slot.pid)
            slot.pid = slot.pidfd = None

    # -- the parent ------------------------------------------------------------------------------

    def reload(self) -> list[str]:
        """SIGHUP or POST /api/v1/reload: check the file, then have every worker reload it."""
        try:
            new = load_config(self.config.path)
            build_engines(new, self.protocols)
        except ConfigError as e:
            for line in e.lines():
                event(log, "reload rejected: config error", logging.ERROR, problem=line)
            from hoopwire.metrics import count_reload
            count_reload(False)
            return e.lines()
        from hoopwire.metrics import count_reload
        count_reload(True)
        # replacements start with what their siblings now run
        self.config = new
        self.generation += 1
        if self.ctl is not None:
            # the admin API served here takes the new identity and admin settings too (it
            # kept the start-up ones: a removed admin key still listed sessions)
            self.loop.create_task(self.ctl.reload_control(new))
        for slot in self.slots:
            if slot.pid is not None and slot.ready_at is not None:
                os.kill(slot.pid, signal.SIGHUP)
                slot.generation = self.generation
        return []

    async def parent(self) -> None:
        from hoopwire.admin import AdminServer
        from hoopwire.approvals.manager import gateway_id
        self.loop = loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        self.exited = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGINT, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        for slot in self.slots:
            if slot.pid is not None:
                self._watch(slot)
        # The parent serves the admin API: it decides approvals through the shared store, and
        # the worker holding a statement finds the decision there.
        ctl = Gateway(self.config, self.protocols, workers=self.workers, serve_admin=False,
                      serve_data=False)
        self.ctl = ctl
        ctl.gateway_id = gateway_id("parent")
        ctl.reload_hook = self.reload
        # /readyz combines the reports of the workers that serve (hoopwire.readiness)
        ctl.worker_pids = lambda: ([s.pid for s in self.slots if s.pid is not None],
                                   [s.pid for s in self.slots
                                    if s.pid is not None and s.ready_at is not None])
        admin = None
        try:
            await ctl.start_control(holds_statements=False)
            if self.config.admin.listen is not None:
                admin = AdminServer(ctl, self.mpdir, parent=True)
                await admin.start(*self.config.admin.listen)
            await self.stopping.wait()
        finally:
            # whatever ended the parent, no worker outlives it
            await self._stop_workers()
            if admin is not None:
                await admin.stop()
            await ctl.stop_control()
            await ctl.authenticator.close()


def supervise(config: Config, protocols, workers: int, own_metrics_dir: bool = False) -> int:
    """Fork the workers, serve the admin listener, restart a worker that dies."""
    import shutil
    import tempfile
    mpdir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    own_dir = own_metrics_dir or mpdir is None
    if mpdir is None:
        mpdir = tempfile.mkdtemp(prefix="hoopwire-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = mpdir
    from hoopwire.metrics import mark_started
    mark_started()
    sup = _Supervisor(config, protocols, workers, mpdir)
    sup.cancel_dir = tempfile.mkdtemp(prefix="hoopwire-cancel-")   # 0700: only we can ask
    try:
        # the first workers are forked before the parent's loop exists
        try:
            for slot in sup.slots:
                sup.spawn(slot)
        except OSError:
            for slot in sup.slots:
                if slot.pid is not None:
                    os.kill(slot.pid, signal.SIGKILL)
                    os.waitpid(slot.pid, 0)
            raise
        _run_loop(sup.parent)
    except OSError as e:
        event(log, "cannot start", logging.ERROR, error=str(e))
        return 1
    finally:
        if own_dir:
            shutil.rmtree(mpdir, ignore_errors=True)
        shutil.rmtree(sup.cancel_dir, ignore_errors=True)
    return 1 if sup.failed else 0
