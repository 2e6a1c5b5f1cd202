"""Observability as an operator meets it: a real Prometheus (Debian's `prometheus` package, which
ships the server and promtool) scrapes a real gateway with deploy/prometheus/alerts.yml loaded;
every metric the Grafana dashboard queries and the alerts read must be a series it scraped;
the rules pass `promtool check rules` and `promtool test rules`. Plus the metrics this part
added (build info, reloads, pending approvals, no `_created`) and RFC 3339 log timestamps.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from datetime import datetime, timezone

import psycopg
import pytest
import yaml
from hypothesis import given, settings, strategies as st

from gwfixtures import conninfo, gateway_config, gateway_env
from helpers import REPO_ROOT, Gateway, free_port, psql, wait_until

DEPLOY = os.path.join(REPO_ROOT, "deploy")
ALERTS = os.path.join(DEPLOY, "prometheus", "alerts.yml")
ALERTS_TEST = os.path.join(DEPLOY, "prometheus", "alerts_test.yml")
DASHBOARD = os.path.join(DEPLOY, "grafana", "hoopwire.json")

needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None or shutil.which("promtool") is None,
    reason="Debian's prometheus package is not installed (apt-get install -y prometheus: "
           "the README's test command does it)")

_NAME = re.compile(r"\bhoopwire_[a-z0-9_]+")


def metric_names(expr: str) -> set[str]:
    return set(_NAME.findall(expr))


def dashboard_metrics() -> set[str]:
    with open(DASHBOARD, encoding="utf-8") as f:
        dash = json.load(f)
    names: set[str] = set()
    for panel in dash["panels"]:
        for target in panel["targets"]:
            names |= metric_names(target["expr"])
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            names |= metric_names(var["definition"])
    return names


def alert_metrics() -> set[str]:
    with open(ALERTS, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    return {n for g in doc["groups"] for r in g["rules"] for n in metric_names(r["expr"])}


def scrape(gw: Gateway) -> str:
    with urllib.request.urlopen(gw.admin_url + "/metrics", timeout=10) as r:
        return r.read().decode()


def sample(text: str, name: str, **labels) -> float | None:
    """The value of one series in a /metrics text (labels must match exactly those given)."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(m.group(4))
    return None


# -- the rules on their own ----------------------------------------------------------------------

@needs_prometheus
def test_promtool_checks_and_tests_the_rules():
    r = subprocess.run(["promtool", "check", "rules", ALERTS], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    # every alert the issue asks for is there
    doc = yaml.safe_load(open(ALERTS, encoding="utf-8"))
    alerts = {r["alert"] for g in doc["groups"] for r in g["rules"]}
    assert {"HoopwireAuthFailureRate", "HoopwireUpstreamErrors", "HoopwireAuditRefusing",
            "HoopwireWebhookDrops", "HoopwireStatementLatencyP99",
            "HoopwireConnectionSaturation"} <= alerts
    r = subprocess.run(["promtool", "test", "rules", os.path.basename(ALERTS_TEST)],
                       cwd=os.path.dirname(ALERTS_TEST), capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    # each alert is exercised by the unit tests (one that no test names could be broken unseen)
    tested = {t["alertname"] for t in yaml.safe_load(open(ALERTS_TEST))["tests"][0]["alert_rule_test"]}
    assert alerts <= tested, alerts - tested


# -- a real Prometheus against a real gateway ----------------------------------------------------

class Prometheus:
    """`prometheus` scraping `target` every second, with `rule_files`, in a temporary dir."""

    def __init__(self, target: str, rule_files: list[str]):
        self.dir = tempfile.mkdtemp(prefix="hoopwire-prom-")
        self.port = free_port()
        cfg = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
               "rule_files": rule_files,
               "scrape_configs": [{"job_name": "hoopwire",
                                   "static_configs": [{"targets": [target]}]}]}
        path = os.path.join(self.dir, "prometheus.yml")
        with open(path, "w") as f:
            yaml.safe_dump(cfg, f)
        r = subprocess.run(["promtool", "check", "config", path], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        self.log = open(os.path.join(self.dir, "log"), "w+")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={path}", f"--storage.tsdb.path={self.dir}/data",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            self.log.seek(0)
            raise AssertionError(f"prometheus exited {self.proc.returncode}:\n{self.log.read()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def names(self) -> set[str]:
        return set(self.get("/api/v1/label/__name__/values"))

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def observed_gw(pg, idp, tmp_path_factory):
    """A gateway with every feature the dashboard shows: a guardrail, masking, approvals (state
    store), a webhook, the audit log."""
    d = tmp_path_factory.mktemp("observe")
    cfg = gateway_config(pg, idp, guardrail=[
        {"pack": "destructive-ddl"},
        {"name": "hold-deletes", "patterns": [r"(?i)^\s*delete\b"], "action": "approve",
         "approvers": ["admins"]}],
        mask=[{"detectors": ["EMAIL"], "strategy": "redact"}])
    cfg["admin"] = {"admin_groups": ["admins"]}
    cfg["state"] = {"url": f"sqlite:///{d}/state.db"}
    cfg["audit"] = {"path": str(d / "audit")}
    # nothing listens there: deliveries fail, which is all the metric needs
    cfg["webhook"] = [{"url": f"http://127.0.0.1:{free_port()}/hook", "events": ["approval.created"]}]
    with Gateway(cfg, env=gateway_env(pg)) as g:
        yield g


def _traffic(gw: Gateway, idp) -> None:
    """One of each event the dashboard plots."""
    good = idp.token()
    r = psql(conninfo(gw, good), "-c", "SELECT 'ada@example.com' AS email")
    assert r.returncode == 0 and "ada@example.com" not in r.stdout, r.stdout + r.stderr
    r = psql(conninfo(gw, good), "-c", "DROP TABLE items")
    assert r.returncode != 0 and "items" in psql(conninfo(gw, good), "-c", r"\dt").stdout
    r = psql(conninfo(gw, "not-a-token"), "-c", "SELECT 1")
    assert r.returncode != 0


@needs_prometheus
def test_prometheus_scrapes_every_metric_the_dashboard_and_alerts_read(observed_gw, idp):
    gw = observed_gw
    _traffic(gw, idp)
    prom = Prometheus(f"127.0.0.1:{gw.admin_port}", [ALERTS])
    try:
        wait_until(prom.ready, 60, "prometheus ready")

        def scraped_after_traffic():
            targets = prom.get("/api/v1/targets")["activeTargets"]
            return (targets and targets[0]["health"] == "up"
                    and "hoopwire_guardrail_verdicts_total" in prom.names())
        wait_until(scraped_after_traffic, 60, "a successful scrape of the gateway", gw=gw)
        names = prom.names()
        missing = sorted(dashboard_metrics() - names)
        assert not missing, f"the dashboard queries metrics the gateway does not export: {missing}"
        missing = sorted(alert_metrics() - names)
        assert not missing, f"alerts.yml reads metrics the gateway does not export: {missing}"
        assert not [n for n in names if n.endswith("_created")], "a _created series is exported"

        # the rules, loaded in the real server, evaluate without error on the real series
        def evaluated():
            groups = prom.get("/api/v1/rules")["groups"]
            rules = [r for g in groups for r in g["rules"]]
            return rules and all(r.get("lastEvaluation", "").startswith("20") for r in rules) and rules
        rules = wait_until(evaluated, 60, "every rule evaluated once")
        bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
        assert not bad, bad
        # a gateway that answers and refuses nothing fires none of them
        firing = [a for a in prom.get("/api/v1/alerts")["alerts"] if a["state"] == "firing"]
        assert not firing, firing
    finally:
        prom.close()


def test_build_info_and_no_created_series(observed_gw):
    from hoopwire import __version__
    text = scrape(observed_gw)
    assert sample(text, "hoopwire_build_info", version=__version__) == 1.0
    assert "_created" not in text
    # the configured receiver's zeros are there before any event
    from hoopwire.approvals.webhooks import redact_url
    receiver = redact_url(observed_gw.config["webhook"][0]["url"])
    for result in ("delivered", "failed", "dropped"):
        assert sample(text, "hoopwire_webhook_deliveries_total", result=result,
                      receiver=receiver) is not None
    assert sample(text, "hoopwire_connections_max", connection="pg") == 1000.0


def _hold_a_delete(gw: Gateway, idp):
    """A DELETE held for approval on a thread of its own; returns (thread, connection box)."""
    box: dict = {}

    def run():
        try:
            with psycopg.connect(conninfo(gw, idp.token()), autocommit=True) as conn:
                box["conn"] = conn
                conn.execute("DELETE FROM items WHERE id = -1")
        except Exception as e:  # noqa: BLE001 -- the test reads it
            box["error"] = e
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


@pytest.mark.parametrize("workers", [None, 2], ids=["single", "workers2"])
def test_pending_approvals_gauge(pg, idp, tmp_path, workers):
    cfg = gateway_config(pg, idp, guardrail=[
        {"name": "hold-deletes", "patterns": [r"(?i)^\s*delete\b"], "action": "approve",
         "approvers": ["admins"], "timeout": "60s"}])
    cfg["admin"] = {"admin_groups": ["admins"]}
    cfg["state"] = {"url": f"sqlite:///{tmp_path}/state.db"}
    with Gateway(cfg, env=gateway_env(pg), workers=workers) as gw:
        assert sample(scrape(gw), "hoopwire_approvals_pending") == 0.0
        t, box = _hold_a_delete(gw, idp)
        wait_until(lambda: sample(scrape(gw), "hoopwire_approvals_pending") == 1.0, 30,
                   "hoopwire_approvals_pending = 1 while a statement is held", gw=gw)
        from helpers import api, wait_pending
        req = wait_pending(gw, idp.admin_token(), "DELETE")
        status, body = api(gw, "POST", f"/api/v1/approvals/{req['id']}/deny", idp.admin_token(),
                           {"reason": "test"})
        assert status == 200, body
        t.join(30)
        assert not t.is_alive()
        wait_until(lambda: sample(scrape(gw), "hoopwire_approvals_pending") == 0.0, 30,
                   "hoopwire_approvals_pending back to 0", gw=gw)


@pytest.mark.parametrize("workers", [None, 2], ids=["single", "workers2"])
def test_reload_metrics(pg, idp, workers):
    with Gateway(gateway_config(pg, idp), env=gateway_env(pg), workers=workers) as gw:
        text = scrape(gw)
        assert sample(text, "hoopwire_config_reloads_total", result="success") == 0.0
        assert sample(text, "hoopwire_config_reloads_total", result="failure") == 0.0
        started = sample(text, "hoopwire_config_last_reload_success_timestamp_seconds")
        assert started is not None and abs(started - time.time()) < 300
        time.sleep(0.01)     # the timestamp must move: distinct from the start's
        gw.signal(signal.SIGHUP)
        wait_until(lambda: sample(scrape(gw), "hoopwire_config_reloads_total",
                                  result="success") == 1.0, 30, "one successful reload counted",
                   gw=gw)
        after = sample(scrape(gw), "hoopwire_config_last_reload_success_timestamp_seconds")
        assert after > started
        good = gw.config
        bad = dict(good, connection=[dict(good["connection"][0], max_connections="many")])
        gw.write_config(bad)
        gw.signal(signal.SIGHUP)
        wait_until(lambda: sample(scrape(gw), "hoopwire_config_reloads_total",
                                  result="failure") == 1.0, 30, "one failed reload counted", gw=gw)
        text = scrape(gw)
        # counted once, where it was decided (not again by each worker)
        assert sample(text, "hoopwire_config_reloads_total", result="success") == 1.0
        assert sample(text, "hoopwire_config_last_reload_success_timestamp_seconds") == after
        if workers:
            # a worker's restart is no reload: the timestamp stays
            # the listener answers once one worker serves: worker 0 may still be starting
            pid = int(wait_until(lambda: re.findall(r"worker ready worker=0 pid=(\d+)",
                                                    gw.log_text()), 30, "worker 0 ready",
                                 gw=gw)[-1])
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: len(re.findall(r"worker ready worker=0 pid=", gw.log_text())) >= 2,
                       30, "worker 0 restarted", gw=gw)
            assert sample(scrape(gw), "hoopwire_config_last_reload_success_timestamp_seconds") == after


# -- RFC 3339 log timestamps ----------------------------------------------------------------------

RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=0, max_value=4102444800, allow_nan=False, allow_infinity=False))
def test_rfc3339_round_trips(created):
    from hoopwire.logs import rfc3339
    s = rfc3339(created)
    assert RFC3339.match(s), s
    back = datetime.fromisoformat(s.replace("Z", "+00:00"))
    assert back.tzinfo is not None and back.utcoffset().total_seconds() == 0
    # truncated to the millisecond: never later than the event, less than 1 ms earlier
    assert 0 <= created - back.timestamp() < 0.001 + 1e-6 * max(1.0, created / 1e9)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_log_lines_carry_rfc3339_timestamps(pg, idp, fmt):
    cfg = gateway_config(pg, idp)
    cfg["log"] = {"format": fmt}
    before = time.time()
    with Gateway(cfg, env=gateway_env(pg)) as gw:
        r = psql(conninfo(gw, idp.token()), "-c", "SELECT 1")
        assert r.returncode == 0, r.stderr
        gw.wait_log("session closed|session ended|closed", timeout=15)
        lines = [ln for ln in gw.log_text().splitlines() if ln.strip()]
    after = time.time()
    stamps = []
    for ln in lines:
        if fmt == "json":
            try:
                doc = json.loads(ln)
            except ValueError:
                continue      # not a log record (a library's own print)
            stamps.append(doc["ts"])
        elif re.match(r"^\d{4}-", ln):
            stamps.append(ln.split(" ", 1)[0])
    assert len(stamps) >= 3, lines
    for s in stamps:
        assert isinstance(s, str) and RFC3339.match(s), s
        t = datetime.fromisoformat(s.replace("Z", "+00:00")).astimezone(timezone.utc).timestamp()
        assert before - 1 <= t <= after + 1


def test_metrics_survive_a_process_creating_its_file(pg, idp, tmp_path):
    """A --workers process creates its NAME_PID.db empty, then sizes it: a scrape in between
    was a 500 (struct.error) in 1 of 6 starts. The empty file is left there deterministically
    here, as a starting process would for a moment."""
    mpdir = tmp_path / "mp"
    mpdir.mkdir()
    with Gateway(gateway_config(pg, idp), env=dict(gateway_env(pg), PROMETHEUS_MULTIPROC_DIR=str(mpdir)),
                 workers=2) as gw:
        wait_until(lambda: list(mpdir.glob("*.db")), 30, "the workers' metric files", gw=gw)
        (mpdir / "gauge_livesum_999999.db").write_bytes(b"")
        (mpdir / "counter_999999.db").write_bytes(b"")
        text = scrape(gw)
        assert sample(text, "hoopwire_build_info") == 1.0
        with urllib.request.urlopen(gw.admin_url + "/readyz", timeout=10) as r:
            assert r.status == 200
