"""What /readyz answers: every check a gateway must pass to be worth sending clients to.

    upstream   every connection's upstream accepts a login with the stored credentials
    jwks       every issuer's key source has keys (fetched now, or kept from before a reload)
    state      the state store answers a query
    audit      the audit directory takes a file, and statements are not refused for it

The login is the expensive one, so it never runs on a request: a task logs in once per
connection every `[admin] upstream_check_interval` seconds (10 by default) and /readyz reads the
result. Ten seconds is Kubernetes' default readinessProbe period, so a probe rarely reads a
result older than the one before it; and one login per connection per worker every 10 s is
0.1 logins/s, nothing next to the logins the data path makes. An upstream that stops
accepting logins is seen within interval + connect_timeout.

With --workers each worker runs its own checks (it holds the listeners, the recorder and its
authenticator) and publishes them next to its metrics snapshot (ready-PID.json); the parent's
/readyz combines the live workers' files (`combine`). A file older than three intervals counts
as not ready: its worker stopped publishing.

Nothing here holds a secret: the failure texts are the operator texts the listeners already log
(server messages, addresses), never a password or a token.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

import orjson

from hoopwire.logs import event

log = logging.getLogger("hoopwire.readiness")

__all__ = ["Readiness", "combine", "publish_path"]

STATE_TIMEOUT = 5.0     # seconds the state store gets to answer SELECT 1
JWKS_WAIT = 2.0         # seconds a check waits for key fetches under way (HTTP_TIMEOUT is more)


def publish_path(directory: str, pid: int) -> str:
    return os.path.join(directory, f"ready-{pid}.json")


class Readiness:
    """One process's checks. `run()` refreshes them off the request path; `report()` is what
    /readyz shows (and a worker publishes)."""

    def __init__(self, gateway):
        self.gateway = gateway
        # connection name -> (ok, detail, monotonic time of the attempt)
        self.upstream: dict[str, tuple[bool, str, float]] = {}
        self.state: tuple[bool, str] | None = None
        self.audit: tuple[bool, str] | None = None
        self._task: asyncio.Task | None = None
        self.first = asyncio.Event()    # set once every check has run (and been published)

    @property
    def interval(self) -> float:
        return self.gateway.config.admin.upstream_check_interval

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
            self._task = None

    async def run(self) -> None:
        while True:
            try:
                await self.check_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 -- a bug here must not end the checks
                log.exception("readiness check failed")
            mp = self.gateway.multiproc_dir
            if mp is not None:
                self.publish(mp)
            self.first.set()
            # a failing check is looked at again sooner: recovery shows within a second
            failing = not self.report()["ready"]
            await asyncio.sleep(min(1.0, self.interval) if failing else self.interval)

    async def check_once(self) -> None:
        gw = self.gateway
        now = time.monotonic()
        jobs = {}
        for name, lst in list(gw.listeners.items()):
            probe = getattr(lst, "probe_upstream", None)
            if probe is None:
                continue
            last = self.upstream.get(name)
            # a failing upstream is tried every second, a good one every interval
            due = last is None or not last[0] or now - last[2] >= self.interval
            if due:
                jobs[name] = probe
        if jobs:
            results = await asyncio.gather(*(self._login(n, p) for n, p in jobs.items()))
            for name, (ok, detail) in zip(jobs, results):
                prev = self.upstream.get(name)
                if prev is None or prev[0] != ok:
                    event(log, "readiness: upstream " + ("accepts logins" if ok else
                                                         "refuses logins"),
                          logging.INFO if ok else logging.WARNING, connection=name,
                          detail=detail)
                self.upstream[name] = (ok, detail, time.monotonic())
        for name in list(self.upstream):
            if name not in gw.listeners:
                del self.upstream[name]
        # the key fetches under way (the start-up prefetch): their outcome, not "missing"
        await gw.authenticator.keys_settled(JWKS_WAIT)
        if gw.store is not None:
            try:
                # retried once on a new connection: a server restart since the last look is
                # no reason for a 503
                await asyncio.wait_for(gw.store._fetch("SELECT 1"), STATE_TIMEOUT)
                self.state = (True, "answers")
            except asyncio.TimeoutError:
                self.state = (False, f"no answer within {STATE_TIMEOUT:g}s")
            except Exception as e:  # noqa: BLE001 -- StoreError, OSError, a driver's error
                self.state = (False, f"{type(e).__name__}: {e}"[:300])
        if gw.config.audit is not None:
            from hoopwire.checks import check_audit_dir
            c = await asyncio.to_thread(check_audit_dir, gw.config.audit.path)
            self.audit = (c.ok, c.detail)

    async def _login(self, name: str, probe) -> tuple[bool, str]:
        lst = self.gateway.listeners.get(name)
        timeout = max(getattr(lst.cfg, "connect_timeout", 10.0), 1.0) + 1.0
        try:
            detail = await asyncio.wait_for(probe(), timeout)
            return True, detail or "logged in"
        except asyncio.TimeoutError:
            return False, f"no login within {timeout:g}s"
        except Exception as e:  # noqa: BLE001 -- UpstreamLoginError carries operator text
            return False, str(e)[:300] or type(e).__name__

    def report(self) -> dict:
        """{"ready": bool, "checks": {...}, "failed": [...]}, every entry {"ok", "detail"}."""
        gw = self.gateway
        checks: dict[str, dict] = {}
        failed: list[str] = []

        def put(key: str, ok: bool, detail: str) -> None:
            checks[key] = {"ok": ok, "detail": detail}
            if not ok:
                failed.append(key)

        for name in gw.listeners:
            r = self.upstream.get(name)
            if r is None:
                put(f"upstream:{name}", False, "not checked yet")
            else:
                put(f"upstream:{name}", r[0], r[1])
        auth = gw.authenticator
        for issuer in auth.issuers_without_keys():
            put(f"jwks:{issuer}", False, "no keys: the key source has not been fetched "
                                         "(see the log)")
        if gw.store is not None:
            ok, detail = self.state or (False, "not checked yet")
            put("state", ok, detail)
        if gw.config.audit is not None:
            ok, detail = self.audit or (False, "not checked yet")
            refusing = gw.recorder is not None and gw.recorder.refusing
            if refusing:
                ok, detail = False, ("audit log unwritable: statements are refused "
                                     "(on_write_failure = fail-closed)")
            put("audit", ok, detail)
        out = {"ready": not failed, "checks": checks, "failed": failed,
               "degraded": auth.degraded_issuers(), "at": time.time()}
        return out

    def publish(self, directory: str) -> None:
        path = publish_path(directory, os.getpid())
        tmp = path + ".tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(orjson.dumps(self.report()))
            os.replace(tmp, path)   # the parent never reads half a file
        except OSError as e:
            # a full disk: the parent's copy goes stale and reads as not ready
            event(log, "cannot publish readiness", logging.WARNING, error=str(e))


def combine(directory: str, live: list[int], serving: list[int], stale_after: float) -> dict:
    """The --workers parent's view: ready when every worker that serves (`serving`) or has
    published a report (a worker publishes before it opens its ports) reports ready, fresh, and
    there is at least one; the failed checks are named with the worker's pid. A worker still
    starting that has published nothing serves nobody yet and is not counted."""
    pids = [p for p in live if p in serving or os.path.exists(publish_path(directory, p))]
    if not pids:
        return {"ready": False, "checks": {}, "failed": ["workers"],
                "reason": "no worker is serving"}
    checks: dict[str, dict] = {}
    failed: list[str] = []
    degraded: set[str] = set()
    now = time.time()
    for pid in pids:
        try:
            with open(publish_path(directory, pid), "rb") as f:
                rep = orjson.loads(f.read())
        except (OSError, orjson.JSONDecodeError):
            rep = None
        if rep is None or now - float(rep.get("at", 0)) > stale_after:
            checks[f"worker:{pid}"] = {"ok": False, "detail": "no recent readiness report"}
            failed.append(f"worker:{pid}")
            continue
        degraded.update(rep.get("degraded") or ())
        for key, c in (rep.get("checks") or {}).items():
            if not c.get("ok"):
                checks[key] = {"ok": False, "detail": f"worker {pid}: {c.get('detail', '')}"}
                if key not in failed:
                    failed.append(key)
            else:
                checks.setdefault(key, c)
    return {"ready": not failed, "checks": checks, "failed": failed,
            "degraded": sorted(degraded)}


def clean(directory: str, pid: int) -> None:
    """Supervisor side: an exited worker's report goes with it."""
    for p in (publish_path(directory, pid), publish_path(directory, pid) + ".tmp"):
        try:
            os.unlink(p)
        except OSError:   # gone already, or the disk is the problem
            pass
