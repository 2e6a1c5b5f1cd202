"""The gateway process: listeners, reload, shutdown (hoopwire.core.supervisor runs several).

One process runs one uvloop. `--workers N` forks N such processes that share each listen port
with SO_REUSEPORT; the parent then only supervises them and serves the admin listener, reading
the workers' metrics from a shared directory (see hoopwire.metrics).

The gateway knows protocols only through the registry it is given (hoopwire.protocols maps a
connection's `protocol` to its listener class, dialect and adapter): nothing here imports one.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
import time

from hoopwire.config import Config, ConfigError, load_config
from hoopwire.logs import configure as configure_logging, event

log = logging.getLogger("hoopwire.server")

STATEMENT_TEXT_LIMIT = 4096      # bytes of a statement that logs and audit records show
# How often a worker publishes its relay counters for the parent's /metrics. What a worker
# counted since its last publication is lost if it is killed (the counters live in its memory),
# so this is also the most a SIGKILL can take from /metrics; an unchanged snapshot is not
# rewritten, so an idle worker costs nothing.
STATS_PUBLISH_INTERVAL = 0.25
# Seconds start() waits for the readiness checks' first round (one login per connection).
FIRST_CHECK_WAIT = 3.0

__all__ = ["Gateway", "run", "build_engines"]


def _build_policy(cfg, protocols):
    """The guardrail engine for one connection (None when it has no rules), in its
    protocol's dialect, with the rules that dialect gives every connection."""
    if not cfg.guardrails:
        return None
    from hoopwire.policy import PolicyEngine
    from hoopwire.metrics import GUARDRAIL_SCAN_SECONDS
    dialect = protocols.get(cfg.protocol).dialect
    rules = dialect.implied_guardrails(cfg.guardrails)
    return PolicyEngine(rules, path=f"connection[{cfg.name}].guardrail",
                        scan_seconds=GUARDRAIL_SCAN_SECONDS.labels(cfg.name).observe,
                        views=dialect.statement_views, classifier=dialect.classifier(rules),
                        packs=dialect.packs, shape=getattr(dialect, "statement_shape", None))


def build_policies(config: Config, protocols) -> dict:
    """Compile every connection's guardrails; raise ConfigError naming each bad rule."""
    if not any(c.guardrails for c in config.connections):
        return {}
    from hoopwire.policy import PolicyError
    engines, problems = {}, []
    for i, c in enumerate(config.connections):
        try:
            engines[c.name] = _build_policy(c, protocols)
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


def build_engines(config: Config, protocols) -> tuple[dict, dict]:
    """(guardrail engines, mask engines) by connection name; ConfigError lists every problem."""
    return build_policies(config, protocols), build_mask_engines(config)


class Gateway:
    statement_text_limit = STATEMENT_TEXT_LIMIT

    def __init__(self, config: Config, protocols, *, workers: int = 1,
                 cancel_key: bytes | None = None, serve_admin: bool = True,
                 multiproc_dir: str | None = None, worker_index: int = 0,
                 serve_data: bool = True, on_ready=None, cancel_dir: str | None = None):
        from hoopwire.core.cancels import CancelLimiter, LogBurst
        from hoopwire.identity import Authenticator
        self.config = config
        self.protocols = protocols      # hoopwire.protocols.Registry
        # called once every listener is up: how a worker tells its supervisor it serves
        self.on_ready = on_ready
        self.workers = workers
        self.serve_admin = serve_admin
        self.multiproc_dir = multiproc_dir
        # shared by every worker of one gateway: a protocol derives its cancel keys from it
        self.cancel_key = cancel_key or os.urandom(32)
        self.cancel_limiter = CancelLimiter()
        self.cancel_log = LogBurst()
        # --workers: where the siblings answer for the cancel keys they issued
        self.cancel_dir = cancel_dir
        self.worker_index = worker_index
        self.cancel_peers = None   # hoopwire.core.cancelpeers.CancelPeers, once serving
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
        self.readiness = None      # hoopwire.readiness.Readiness: what /readyz reports
        # the --workers parent: (pids of the live workers, pids of those that serve)
        self.worker_pids = lambda: ([], [])
        self.ready = False
        self._stopping: asyncio.Event | None = None

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
            self.recorder = Recorder(cfg.audit, self.store, gateway_id=self.gateway_id,
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
        from hoopwire.metrics import CONNECTIONS_MAX
        engines, maskers = build_engines(self.config, self.protocols)
        await self.start_control()
        if self.cancel_dir is not None and self.workers > 1:
            # before the listeners: a cancel this worker accepts can be asked about at once
            from hoopwire.core.cancelpeers import CancelPeers
            self.cancel_peers = CancelPeers(self.cancel_dir, self.worker_index, self.workers,
                                            self._cancel_owned)
            self.cancel_peers.start()
        for c in self.config.connections:
            self.listeners[c.name] = self.protocols.get(c.protocol).listener(
                self, c, engines.get(c.name), maskers.get(c.name))
        # checked only where someone asks: this process's admin listener, or a worker's
        # parent's (no upstream logins for a gateway without [admin] listen)
        if self.listeners and self.config.admin.listen is not None and (
                self.serve_admin or self.multiproc_dir is not None):
            from hoopwire.readiness import Readiness
            self.readiness = Readiness(self)
            self.readiness.start()
            # the first look before the ports open, so /readyz does not start with "not
            # checked yet" (a worker has published it by then: the parent counts the workers
            # that did). Bounded: an upstream that does not answer is the check's answer.
            try:
                await asyncio.wait_for(asyncio.shield(self.readiness.first.wait()),
                                       FIRST_CHECK_WAIT)
            except asyncio.TimeoutError:
                pass
        for c in self.config.connections:
            await self.listeners[c.name].start()
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
            engines, maskers = await asyncio.to_thread(build_engines, new, self.protocols)
        except ConfigError as e:
            for line in e.lines():
                event(log, "reload rejected: config error", logging.ERROR, problem=line)
            if self.multiproc_dir is None:   # a worker's reload was counted by its parent
                from hoopwire.metrics import count_reload
                count_reload(False)
            return e.lines()
        from hoopwire.identity import Authenticator
        from hoopwire.metrics import CONNECTIONS_MAX
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
        if self.readiness is not None:
            await self.readiness.stop()
        grace = self.config.admin.shutdown_grace
        await asyncio.gather(*(lst.stop(grace) for lst in self.listeners.values()))
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


def run(config_path: str, protocols, workers: int = 1, *, own_metrics_dir: bool = False) -> int:
    """`hoopwire serve`: returns the process exit status. `own_metrics_dir`: the caller made
    PROMETHEUS_MULTIPROC_DIR for this run, so it goes when the gateway stops."""
    try:
        config = load_config(config_path)
    except ConfigError as e:
        for line in e.lines():
            print(f"config error: {line}", file=sys.stderr)
        return 1
    configure_logging(config.log.level, config.log.format)
    for key, reason in config.warnings:     # valid but risky: said at every start, not only
        event(log, "config warning", logging.WARNING, key=key, reason=reason)   # by check-config
    # A file-size limit must surface as EFBIG to the audit writer (which has a policy for it),
    # not kill the gateway.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        build_engines(config, protocols)
    except ConfigError as e:
        for line in e.lines():
            print(f"config error: {line}", file=sys.stderr)
        return 1
    if workers <= 1:
        from hoopwire.metrics import mark_started
        mark_started()
        gw = Gateway(config, protocols)
        try:
            _run_loop(gw.serve_forever)
        except OSError as e:
            event(log, "cannot start", logging.ERROR, error=str(e))
            return 1
        return 0
    from hoopwire.core.supervisor import supervise
    return supervise(config, protocols, workers, own_metrics_dir)
