"""Prometheus metrics.

Per-session events (connections, auth failures, upstream connect time, blocks) use
prometheus-client directly. Per-message counts (bytes, statements, round trips) are C counters
in hoopwire.core._frames.ConnStats, read only at scrape time by `RelayStatsCollector`, so the relay
loop never calls into Python to count.

With several worker processes the parent serves /metrics: prometheus-client runs in its
multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set before this module is imported), and each
worker publishes its ConnStats snapshot to that directory as relay-PID.json a few times a second.

A worker's death must not take anything it published from /metrics (counters never go back):
prometheus-client's own files of a dead process stay and keep counting in the sums (only its
live gauges go, `mark_process_dead`), and the supervisor folds a dead worker's last relay
snapshot into relay-dead.json (`retire_process`) -- rather than leave relay-PID.json, which a
later process given the same pid would overwrite with its own, smaller, counts.
"""

from __future__ import annotations

import glob
import os
import platform
import time

import orjson
from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, REGISTRY,
                               disable_created_metrics, multiprocess)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from hoopwire import __version__
from hoopwire.core._frames import RTT_BOUNDS, ConnStats

# No `_created` series: one more series per counter and histogram child, which no dashboard or
# alert here reads.
disable_created_metrics()

__all__ = [
    "CONNECTIONS_ACTIVE", "CONNECTIONS_TOTAL", "AUTH_FAILURES", "UPSTREAM_CONNECT_SECONDS",
    "SESSIONS_CLOSED", "STATEMENT_VERDICTS", "GUARDRAIL_SCAN_SECONDS", "MASKED_VALUES",
    "MASK_REFUSED", "CANCEL_DROPPED", "JWKS_FETCH_FAILURES", "JWKS_DEGRADED", "conn_stats",
    "RelayStatsCollector", "write_snapshot", "retire_process", "registry_for_scrape",
    "BUILD_INFO", "CONNECTIONS_MAX", "RELOADS", "LAST_RELOAD", "PENDING_APPROVALS",
    "count_reload", "mark_started",
]

_MULTIPROC = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

CONNECTIONS_ACTIVE = Gauge(
    "hoopwire_connections_active", "Client sessions open now", ["connection"],
    multiprocess_mode="livesum")
CONNECTIONS_TOTAL = Counter(
    "hoopwire_connections", "Client connections by how their startup ended", ["connection", "result"])
AUTH_FAILURES = Counter(
    "hoopwire_auth_failures", "Client authentication failures by reason", ["connection", "reason"])
UPSTREAM_CONNECT_SECONDS = Histogram(
    "hoopwire_upstream_connect_seconds", "Upstream connect + login time", ["connection"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
SESSIONS_CLOSED = Counter(
    "hoopwire_sessions_closed", "Relayed sessions by close reason", ["connection", "reason"])
STATEMENT_VERDICTS = Counter(
    "hoopwire_guardrail_verdicts", "Statements that matched a guardrail, by verdict and rule",
    ["connection", "verdict", "rule"])
GUARDRAIL_SCAN_SECONDS = Histogram(
    "hoopwire_guardrail_scan_seconds", "Time to normalise and scan one message (cache misses, sampled 1 in 16)",
    ["connection"],
    buckets=(1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2))
MASKED_VALUES = Counter(
    "hoopwire_masked_values", "Values masked on the way to the client, by column rule or detector "
    "(kind = column | detector); never the values", ["connection", "kind", "name"])
MASK_REFUSED = Counter(
    "hoopwire_mask_refused_results", "Results refused because they read a masked column through "
    "an expression (unresolved_columns = block)", ["connection"])

CANCEL_DROPPED = Counter(
    "hoopwire_cancel_dropped", "CancelRequests dropped without contacting the upstream, by reason "
    "(unknown_key: no worker issued the key; rate_limited: its source address is over the "
    "bucket)", ["connection", "reason"])

JWKS_FETCH_FAILURES = Counter(
    "hoopwire_jwks_fetch_failures", "Failed fetches of an issuer's JWKS, by source (the URI "
    "without credentials or query)", ["source"])
JWKS_DEGRADED = Gauge(
    "hoopwire_jwks_degraded", "1 while the latest fetch of this JWKS failed: its issuer runs on "
    "the last good keys (or none)", ["source"], multiprocess_mode="livemax")

CONNECTIONS_MAX = Gauge(
    "hoopwire_connections_max", "The listener's max_connections (summed over workers, which "
    "each have it): hoopwire_connections_active over this is the saturation", ["connection"],
    multiprocess_mode="livesum")
BUILD_INFO = Gauge(
    "hoopwire_build_info", "Always 1; the labels say which hoopwire and Python run",
    ["version", "python"], multiprocess_mode="max")
BUILD_INFO.labels(__version__, platform.python_version()).set(1)
RELOADS = Counter(
    "hoopwire_config_reloads", "Configuration reloads (SIGHUP or POST /api/v1/reload) by result: "
    "success | failure (the file was rejected; the old config keeps running)", ["result"])
for _result in ("success", "failure"):
    RELOADS.labels(_result)   # the zeros, so increase() alerts work before the first reload
LAST_RELOAD = Gauge(
    "hoopwire_config_last_reload_success_timestamp_seconds", "Unix time of the last accepted "
    "reload (the start, until one)", multiprocess_mode="max")
# set only by the process that decides reloads (mark_started, count_reload), never at import:
# a worker's (re)start is no reload
PENDING_APPROVALS = Gauge(
    "hoopwire_approvals_pending", "Statements held for a decision in this process (summed over "
    "replicas: every pending approval)", multiprocess_mode="livesum")


def mark_started() -> None:
    """The config in force was loaded now (the single process, or the --workers parent)."""
    LAST_RELOAD.set(time.time())


def count_reload(ok: bool) -> None:
    """Count one reload where it was decided (the single process, or the --workers parent:
    its workers then reload the file it accepted, and count nothing)."""
    RELOADS.labels("success" if ok else "failure").inc()
    if ok:
        LAST_RELOAD.set(time.time())


_stats: dict[str, ConnStats] = {}
_protocols: dict[str, str] = {}     # connection name -> its protocol (the `protocol` label)


def conn_stats(name: str, protocol: str) -> ConnStats:
    """The process-wide counters of one configured connection (kept across reloads)."""
    s = _stats.get(name)
    if s is None:
        s = _stats[name] = ConnStats()
    _protocols[name] = protocol
    return s


def _snapshot() -> dict:
    out = {}
    for name, s in _stats.items():
        buckets, total = s.rtt_histogram()
        out[name] = {"protocol": _protocols.get(name, ""),
            "bytes_from_client": s.bytes_from_client, "bytes_from_upstream": s.bytes_from_upstream,
            "queries": s.queries, "executes": s.executes, "rtt_count": s.rtt_count,
            "rtt_sum": total, "rtt_buckets": [c for _, c in buckets],
        }
    return out


_published: tuple[int, bytes] | None = None    # (pid, what it last wrote)


def write_snapshot(directory: str) -> None:
    """Worker side: publish this process's relay counters for the parent's /metrics (not again
    while they have not changed)."""
    global _published
    pid = os.getpid()
    data = orjson.dumps(_snapshot())
    if _published == (pid, data):
        return
    path = os.path.join(directory, f"relay-{pid}.json")
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)   # a reader (or a SIGKILL) never meets half a snapshot
    _published = (pid, data)


DEAD_SNAPSHOT = "relay-dead.json"   # the sum of every dead worker's last snapshot


def _read(path: str) -> dict | None:
    try:
        with open(path, "rb") as f:
            return orjson.loads(f.read())
    except (OSError, orjson.JSONDecodeError):
        return None


def _add(into: dict, snap: dict) -> None:
    """Add one process's snapshot (connection name -> counters) into `into`."""
    for name, s in snap.items():
        m = into.get(name)
        if m is None:
            into[name] = {k: (list(v) if isinstance(v, list) else v) for k, v in s.items()}
            continue
        for k, v in s.items():
            if isinstance(v, str):
                m[k] = v
            elif isinstance(v, list):
                old = m.get(k) or []
                if len(old) < len(v):
                    old = old + [0] * (len(v) - len(old))
                m[k] = [a + b for a, b in zip(old, v)] + old[len(v):]
            else:
                m[k] = m.get(k, 0) + v


def retire_process(directory: str, pid: int) -> None:
    """Supervisor side, once worker `pid` has exited (and can publish nothing more): keep what
    it last published, and drop its live gauges."""
    from prometheus_client import multiprocess
    path = os.path.join(directory, f"relay-{pid}.json")
    snap = _read(path)
    if snap:
        dead_path = os.path.join(directory, DEAD_SNAPSHOT)
        dead = _read(dead_path) or {}
        _add(dead, snap)
        tmp = dead_path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(orjson.dumps(dead))
        # Only the supervisor writes this file and reads the directory (to render /metrics),
        # on one thread: no scrape sees the snapshot both folded and still in its own file.
        os.replace(tmp, dead_path)
    for p in (path, path + ".tmp"):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
    multiprocess.mark_process_dead(pid, directory)


def _merged(directory: str | None) -> dict:
    if directory is None:
        return _snapshot()
    merged: dict[str, dict] = {}
    # every live worker's relay-PID.json and the dead workers' relay-dead.json
    for path in glob.glob(os.path.join(directory, "relay-*.json")):
        snap = _read(path)
        if snap:
            _add(merged, snap)
    return merged


class RelayStatsCollector:
    """Exposes the relay's C counters (this process's, or every worker's snapshot)."""

    def __init__(self, directory: str | None = None):
        self.directory = directory

    def collect(self):
        data = _merged(self.directory)
        b = CounterMetricFamily("hoopwire_bytes", "Bytes relayed",
                                labels=["connection", "protocol", "direction"])
        st = CounterMetricFamily("hoopwire_statements", "Statements relayed, by the wire "
                                 "protocol's way of sending them (postgres: simple Query and "
                                 "extended Execute messages)",
                                 labels=["connection", "protocol", "query_protocol"])
        h = HistogramMetricFamily("hoopwire_statement_seconds", "Round trip from a statement "
                                  "(postgres: Query or Sync) to its end (ReadyForQuery), as seen "
                                  "by the gateway", labels=["connection", "protocol"])
        bounds = [str(x) for x in RTT_BOUNDS] + ["+Inf"]
        for name, s in sorted(data.items()):
            proto = s.get("protocol", "")
            b.add_metric([name, proto, "client_to_upstream"], s["bytes_from_client"])
            b.add_metric([name, proto, "upstream_to_client"], s["bytes_from_upstream"])
            st.add_metric([name, proto, "simple"], s["queries"])
            st.add_metric([name, proto, "extended"], s["executes"])
            h.add_metric([name, proto], list(zip(bounds, s["rtt_buckets"])), s["rtt_sum"])
        yield b
        yield st
        yield h


def registry_for_scrape(multiproc_dir: str | None) -> CollectorRegistry:
    """The registry /metrics renders."""
    if multiproc_dir is None:
        if not getattr(registry_for_scrape, "_registered", False):
            REGISTRY.register(RelayStatsCollector(None))
            registry_for_scrape._registered = True
        return REGISTRY
    reg = CollectorRegistry()
    _StartedFilesCollector(reg, path=multiproc_dir)
    reg.register(RelayStatsCollector(multiproc_dir))
    return reg


class _StartedFilesCollector(multiprocess.MultiProcessCollector):
    """prometheus-client's own, without the files of a process that is creating them.

    A process creates its NAME_PID.db empty and then sizes it (mmap_dict: open, then truncate);
    a scrape between the two failed with struct.error, a 500 on /metrics (seen in 1 of 6
    `--workers 2` starts scraped at once). An empty file holds no value yet: skip it."""

    def collect(self):
        files = [f for f in glob.glob(os.path.join(self._path, "*.db")) if _size(f) >= 8]
        return self.merge(files, accumulate=True)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:     # removed meanwhile (mark_process_dead)
        return 0
