"""Prometheus metrics.

Per-session events (connections, auth failures, upstream connect time, blocks) use
prometheus-client directly. Per-message counts (bytes, statements, round trips) are C counters
in hoopwire._pgwire.ConnStats, read only at scrape time by `RelayStatsCollector`, so the relay
loop never calls into Python to count.

With several worker processes the parent serves /metrics: prometheus-client runs in its
multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set before this module is imported), and each
worker writes its ConnStats snapshot to that directory once a second.
"""

from __future__ import annotations

import glob
import os

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, REGISTRY
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from hoopwire._pgwire import RTT_BOUNDS, ConnStats

__all__ = [
    "CONNECTIONS_ACTIVE", "CONNECTIONS_TOTAL", "AUTH_FAILURES", "UPSTREAM_CONNECT_SECONDS",
    "SESSIONS_CLOSED", "STATEMENT_VERDICTS", "GUARDRAIL_SCAN_SECONDS", "MASKED_VALUES",
    "MASK_REFUSED", "conn_stats",
    "RelayStatsCollector", "write_snapshot", "registry_for_scrape",
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

_stats: dict[str, ConnStats] = {}


def conn_stats(name: str) -> ConnStats:
    """The process-wide counters of one configured connection (kept across reloads)."""
    s = _stats.get(name)
    if s is None:
        s = _stats[name] = ConnStats()
    return s


def _snapshot() -> dict:
    out = {}
    for name, s in _stats.items():
        buckets, total = s.rtt_histogram()
        out[name] = {
            "bytes_from_client": s.bytes_from_client, "bytes_from_upstream": s.bytes_from_upstream,
            "queries": s.queries, "executes": s.executes, "rtt_count": s.rtt_count,
            "rtt_sum": total, "rtt_buckets": [c for _, c in buckets],
        }
    return out


def write_snapshot(directory: str) -> None:
    """Worker side: publish this process's relay counters for the parent's /metrics."""
    path = os.path.join(directory, f"relay-{os.getpid()}.json")
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(orjson.dumps(_snapshot()))
    os.replace(tmp, path)


def _merged(directory: str | None) -> dict:
    if directory is None:
        return _snapshot()
    merged: dict[str, dict] = {}
    for path in glob.glob(os.path.join(directory, "relay-*.json")):
        try:
            with open(path, "rb") as f:
                snap = orjson.loads(f.read())
        except (OSError, orjson.JSONDecodeError):
            continue
        for name, s in snap.items():
            m = merged.setdefault(name, {k: (list(v) if isinstance(v, list) else 0)
                                         for k, v in s.items()})
            for k, v in s.items():
                if isinstance(v, list):
                    m[k] = [a + b for a, b in zip(m[k], v)] if m[k] else list(v)
                else:
                    m[k] += v
    return merged


class RelayStatsCollector:
    """Exposes the relay's C counters (this process's, or every worker's snapshot)."""

    def __init__(self, directory: str | None = None):
        self.directory = directory

    def collect(self):
        data = _merged(self.directory)
        b = CounterMetricFamily("hoopwire_bytes", "Bytes relayed", labels=["connection", "direction"])
        st = CounterMetricFamily("hoopwire_statements", "Statements relayed (simple Query and "
                                 "extended Execute messages)", labels=["connection", "protocol"])
        h = HistogramMetricFamily("hoopwire_statement_seconds", "Round trip from Query or Sync to "
                                  "ReadyForQuery, as seen by the gateway", labels=["connection"])
        for name, s in sorted(data.items()):
            b.add_metric([name, "client_to_upstream"], s["bytes_from_client"])
            b.add_metric([name, "upstream_to_client"], s["bytes_from_upstream"])
            st.add_metric([name, "simple"], s["queries"])
            st.add_metric([name, "extended"], s["executes"])
            bounds = [str(x) for x in RTT_BOUNDS] + ["+Inf"]
            h.add_metric([name], list(zip(bounds, s["rtt_buckets"])), s["rtt_sum"])
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
    from prometheus_client import multiprocess
    reg = CollectorRegistry()
    multiprocess.MultiProcessCollector(reg, path=multiproc_dir)
    reg.register(RelayStatsCollector(multiproc_dir))
    return reg
