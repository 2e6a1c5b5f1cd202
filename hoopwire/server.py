"""The gateway process: listeners, reload, shutdown, and the worker supervisor.

One process runs one uvloop. `--workers N` forks N such processes that share each listen port
with SO_REUSEPORT; the parent then only supervises them and serves the admin listener, reading
the workers' metrics from a shared directory (see hoopwire.metrics).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
import time

from hoopwire._sqlnorm import mask_literals
from hoopwire.config import Config, ConfigError, load_config
from hoopwire.logs import configure as configure_logging, event

log = logging.getLogger("hoopwire.server")

STATEMENT_TEXT_LIMIT = 4096      # bytes of a statement that logs and audit records show
# How often a worker publishes its relay counters for the parent's /metrics. What a worker
# counted since its last publication is lost if it is killed (the counters live in its memory),
# so this is also the most a SIGKILL can take from /metrics; an unchanged snapshot is not
# rewritten, so an idle worker costs nothing.
STATS_PUBLISH_INTERVAL = 0.25

__all__ = ["Gateway", "run"]


def _build_policy(cfg):
    """The guardrail engine for one connection (None when it has no rules)."""
    if not cfg.guardrails:
        return None
    from hoopwire.config import GuardrailConfig
    from hoopwire.policy import PolicyEngine
    from hoopwire.policy.packs import UNSAFE_ENCODING_PATTERNS
    from hoopwire.metrics import GUARDRAIL_SCAN_SECONDS
    rules = cfg.guardrails
    if not any(g.pack == "session-tampering" for g in rules):
        # An encoding whose characters can end in a backslash byte would let a quote hide from
        # the normaliser, and with it any statement from every other rule.
        rules = rules + (GuardrailConfig(
            name="unsafe-client-encoding", patterns=tuple(p for _, p in UNSAFE_ENCODING_PATTERNS),
            scan_literals=True, message="this client encoding is not allowed while guardrails apply"),)
    classifier = None
    if cfg.protocol == "postgres" and any(g.allow_kinds is not None
                                          or g.pack == "session-tampering" for g in rules):
        # statement kinds, and pg_dump's set_config(name, ...) told apart for session-tampering:
        # only then is PostgreSQL's parser loaded (the engine itself knows no grammar)
        from hoopwire.pg.statements import CLASSIFIER as classifier
    return PolicyEngine(rules, path=f"connection[{cfg.name}].guardrail",
                        scan_seconds=GUARDRAIL_SCAN_SECONDS.labels(cfg.name).observe,
                        classifier=classifier)


def build_policies(config: Config) -> dict:
    """Compile every connection's guardrails; raise ConfigError naming each bad rule."""
    if not any(c.guardrails for c in config.connections):
        return {}
    from hoopwire.policy import PolicyError
    engines, problems = {}, []
    for i, c in enumerate(config.connections):
        try:
            engines[c.name] = _build_policy(c)
        except PolicyError as e:
            problems.extend((k.replace(f"connection[{c.name}]", f"connection[{i}]"), r)
                            for k, r in e.problems)
    if problems:
        raise ConfigError(problems)
    return engines


def build_mask_engines(config: Config) -> dict:
    """Compile every connection's masking (detectors into one Hyperscan database each)."""
    from hoopwire.masking import MaskEngine
    from hoopwire.masking.detectors import DetectorError
    engines, problems = {}, []
    for i, c in enumerate(config.connections):
        if not c.masks:
            continue
        try:
            engines[c.name] = MaskEngine(
                c.masks, c.detectors, path=f"connection[{i}]",
                hash_key=c.mask_hash_key.get().encode() if c.mask_hash_key else None)
        except DetectorError as e:
            problems.extend(e.problems)
    if problems:
        raise ConfigError(problems)
    return engines


def build_engines(config: Config) -> tuple[dict, dict]:
    """(guardrail engines, mask engines) by connection name; ConfigError lists every problem."""
    return build_policies(config), build_mask_engines(config)


class Gateway:
    def __init__(self, config: Config, *, workers: int = 1, cancel_key: bytes | None = None,
                 serve_admin: bool = True, multiproc_dir: str | None = None,
                 worker_index: int = 0, serve_data: bool = True, on_ready=None,
                 cancel_dir: str | None = None):
        from hoopwire.identity import Authenticator
        from hoopwire.pg.cancel import CancelKeys, CancelLimiter, LogBurst
        self.config = config
        # called once every listener is up: how a worker tells its supervisor it serves
        self.on_ready = on_ready
        self.workers = workers
        self.serve_admin = serve_admin
        self.multiproc_dir = multiproc_dir
        self.cancel_keys = CancelKeys(cancel_key)
        self.cancel_limiter = CancelLimiter()
        self.cancel_log = LogBurst()
        # --workers: where the siblings answer for the cancel keys they issued
        self.cancel_dir = cancel_dir
        self.worker_index = worker_index
        self.cancel_peers = None   # hoopwire.pg.cancelpeers.CancelPeers, once serving
        # Prefix of the marker statement that stands in for a blocked one (see the relay);
        # random per process so a client cannot forge it.
        self.marker_prefix = b"hoopwire_blocked_" + os.urandom(6).hex().encode() + b"_"
        self.authenticator = Authenticator(config.identity)
        from hoopwire.approvals.manager import gateway_id
        self.gateway_id = gateway_id(worker_index)
        self.store = None          # hoopwire.state.Store: approvals, grants, the session index
        self.webhooks = None       # hoopwire.approvals.webhooks.WebhookSender
        self.approvals = None      # hoopwire.approvals.manager.ApprovalManager
        self.recorder = None       # hoopwire.audit.recorder.Recorder
        self.reload_hook = None    # the multi-worker parent reloads by signalling its workers
        self.listeners: dict[str, object] = {}
        self.admin = None
        self.ready = False
        self._stopping: asyncio.Event | None = None

    def mask_statement(self, sql: bytes) -> str:
        """A statement as it may appear in a log line: literals replaced by '?'."""
        return mask_literals(sql[:STATEMENT_TEXT_LIMIT])

    async def start_control(self, *, holds_statements: bool = True) -> None:
        """The state store, webhooks and approvals (when configured)."""
        cfg = self.config
        if cfg.state is not None:
            from hoopwire.state import open_store
            self.store = await open_store(cfg.state)
        if cfg.webhooks:
            from hoopwire.approvals.webhooks import WebhookSender
            self.webhooks = WebhookSender(cfg.webhooks)
            await self.webhooks.start()
        if cfg.has_approvals:
            from hoopwire.approvals.manager import ApprovalManager
            self.approvals = ApprovalManager(self.store, self.webhooks, gateway_id=self.gateway_id,
                                             poll_interval=cfg.state.poll_interval)
            await self.approvals.start(abandon=holds_statements)
            if self.multiproc_dir is None:    # workers publish it with their relay counters
                from hoopwire.metrics import PENDING_APPROVALS
                PENDING_APPROVALS.set_function(lambda: self.approvals.held_count)
        if cfg.audit is not None and holds_statements:
            from hoopwire.audit.recorder import Recorder
            # mask_literals itself rather than the method: called for every new statement text
            self.recorder = Recorder(cfg.audit, self.store, gateway_id=self.gateway_id,
                                     mask_statement=mask_literals,
                                     statement_limit=STATEMENT_TEXT_LIMIT,
                                     marker_prefix=self.marker_prefix)
            await self.recorder.start()

    async def stop_control(self) -> None:
        if self.recorder is not None:
            await self.recorder.close()
        if self.approvals is not None:
            await self.approvals.close()
        if self.webhooks is not None:
            await self.webhooks.close()
        if self.store is not None:
            await self.store.close()

    async def start(self) -> None:
        from hoopwire.pg.session import PgListener
        engines, maskers = build_engines(self.config)
        await self.start_control()
        if self.cancel_dir is not None and self.workers > 1:
            # before the listeners: a cancel this worker accepts can be asked about at once
            from hoopwire.pg.cancelpeers import CancelPeers
            self.cancel_peers = CancelPeers(self.cancel_dir, self.worker_index, self.workers,
                                            self._cancel_owned)
            self.cancel_peers.start()
        for c in self.config.connections:
            listener = PgListener(self, c, engines.get(c.name), maskers.get(c.name))
            await listener.start()
            self.listeners[c.name] = listener
            from hoopwire.metrics import CONNECTIONS_MAX
            CONNECTIONS_MAX.labels(c.name).set(c.max_connections)
        if self.serve_admin and self.config.admin.listen is not None:
            from hoopwire.admin import AdminServer
            self.admin = AdminServer(self, self.multiproc_dir)
            await self.admin.start(*self.config.admin.listen)
        self.ready = True

    def _cancel_owned(self, connection: str, pid: int, secret: int) -> bool:
        listener = self.listeners.get(connection)
        return listener is not None and listener.cancel_owned(pid, secret, "other-worker")

    async def reload_from_api(self) -> list[str]:
        """POST /api/v1/reload: the config errors, or [] when it was applied."""
        if self.reload_hook is not None:
            return self.reload_hook()
        return await self.reload()

    async def reload(self) -> list[str]:
        """Re-read the config file; on any error keep running on the old one."""
        try:
            new = load_config(self.config.path)
            # Compiling a large rule set takes CPU time: keep the event loop serving meanwhile.
            engines, maskers = await asyncio.to_thread(build_engines, new)
        except ConfigError as e:
            for line in e.lines():
                event(log, "reload rejected: config error", logging.ERROR, problem=line)
            if self.multiproc_dir is None:   # a worker's reload was counted by its parent
                from hoopwire.metrics import count_reload
                count_reload(False)
            return e.lines()
        from hoopwire.identity import Authenticator
        old_auth = self.authenticator
        self.authenticator = Authenticator(new.identity)
        await old_auth.close()
        for c in new.connections:
            listener = self.listeners.get(c.name)
            if listener is None:
                event(log, "reload: new connections need a restart", logging.WARNING, connection=c.name)
                continue
            if c.listen != listener.cfg.listen:
                event(log, "reload: a changed listen address needs a restart", logging.WARNING,
                      connection=c.name)
            engine = engines.get(c.name)
            if engine is not None and not engine.empty:
                groups = listener.open_group_sets()
                await asyncio.to_thread(lambda: [engine.for_groups(g) for g in groups])
            listener.apply(c, engine, maskers.get(c.name))
            from hoopwire.metrics import CONNECTIONS_MAX
            CONNECTIONS_MAX.labels(c.name).set(c.max_connections)
        self.config = new
        event(log, "configuration reloaded", path=new.path)
        if self.multiproc_dir is None:
            from hoopwire.metrics import count_reload
            count_reload(True)
        return []

    async def reload_control(self, new: Config) -> None:
        """The --workers parent's share of a reload: its admin API authenticates and scopes
        by the new identity and admin settings (the workers reload their own)."""
        from hoopwire.identity import Authenticator
        old_auth = self.authenticator
        self.authenticator = Authenticator(new.identity)
        self.config = new
        await old_auth.close()

    async def stop(self) -> None:
        self.ready = False
        if self.approvals is not None:
            await self.approvals.shutdown()
        await asyncio.gather(*(lst.stop() for lst in self.listeners.values()))
        if self.cancel_peers is not None:
            self.cancel_peers.close()
        if self.admin is not None:
            await self.admin.stop()
        await self.stop_control()
        await self.authenticator.close()

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, self._stopping.set)
        loop.add_signal_handler(signal.SIGINT, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        await self.start()
        snap = None
        if self.multiproc_dir is not None:
            snap = loop.create_task(self._publish_stats())
        if self.on_ready is not None:
            self.on_ready()
        await self._stopping.wait()
        event(log, "stopping")
        if snap is not None:
            snap.cancel()
        await self.stop()
        if self.multiproc_dir is not None:
            from hoopwire.metrics import write_snapshot
            write_snapshot(self.multiproc_dir)

    async def _publish_stats(self) -> None:
        from hoopwire.metrics import PENDING_APPROVALS, write_snapshot
        while True:
            write_snapshot(self.multiproc_dir)
            if self.approvals is not None:
                PENDING_APPROVALS.set(self.approvals.held_count)
            await asyncio.sleep(STATS_PUBLISH_INTERVAL)


def _run_loop(coro_factory) -> None:
    import uvloop
    _tune_gc()
    uvloop.run(coro_factory())


def _tune_gc() -> None:
    """The data path allocates small containers per message (request entries, statement
    records) that reference counting frees; with CPython's default threshold of 700 the cyclic
    collector still ran every few hundred statements and walked them, and every full collection
    walked the whole start-up heap too (config, compiled rule databases, modules). Freezing that
    heap takes it out of every collection, and a higher first threshold makes young collections
    rarer without letting real cycles live long."""
    gc.collect()
    gc.freeze()
    _, g1, g2 = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD0, g1, g2)


GC_THRESHOLD0 = 20_000


def run(config_path: str, workers: int = 1, *, own_metrics_dir: bool = False) -> int:
    """`hoopwire serve`: returns the process exit status. `own_metrics_dir`: the caller made
    PROMETHEUS_MULTIPROC_DIR for this run, so it goes when the gateway stops."""
    try:
        config = load_config(config_path)
    except ConfigError as e:
        for line in e.lines():
            print(f"config error: {line}", file=sys.stderr)
        return 1
    configure_logging(config.log.level, config.log.format)
    # A file-size limit must surface as EFBIG to the audit writer (which has a policy for it),
    # not kill the gateway.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        build_engines(config)
    except ConfigError as e:
        for line in e.lines():
            print(f"config error: {line}", file=sys.stderr)
        return 1
    if workers <= 1:
        from hoopwire.metrics import mark_started
        mark_started()
        gw = Gateway(config)
        try:
            _run_loop(gw.serve_forever)
        except OSError as e:
            event(log, "cannot start", logging.ERROR, error=str(e))
            return 1
        return 0
    return _supervise(config, workers, own_metrics_dir)




# ------------------------------------------------------------------------------------------------
# several workers: the supervisor

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
STOP_GRACE = 10.0       # seconds the workers get after SIGTERM to end their sessions


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

    def __init__(self, config: Config, workers: int, mpdir: str):
        self.config = config
        self.generation = 0       # bumped by each accepted reload
        self.workers = workers
        self.mpdir = mpdir
        self.cancel_key = os.urandom(32)
        self.cancel_dir: str | None = None   # the workers' cancel sockets (see pg.cancelpeers)
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
            gw = Gateway(self.config, workers=self.workers, cancel_key=self.cancel_key,
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
        deadline = time.monotonic() + STOP_GRACE
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
            build_engines(new)
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
        ctl = Gateway(self.config, workers=self.workers, serve_admin=False, serve_data=False)
        self.ctl = ctl
        ctl.gateway_id = gateway_id("parent")
        ctl.reload_hook = self.reload
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


def _supervise(config: Config, workers: int, own_metrics_dir: bool = False) -> int:
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
    sup = _Supervisor(config, workers, mpdir)
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
