"""The admin listener: /metrics, /healthz, /readyz and the JSON API under /api/v1/.

aiohttp serves it on the gateway's own event loop; in multi-worker mode the parent process
serves it, renders every worker's metrics, and decides approvals through the shared state store
(the worker holding a statement finds the decision there).

The API authenticates every request with `Authorization: Bearer <token>` against the same
identity configuration as the data path. Who may do what:

* approvals: list and show -- members of `admin.admin_groups` (every request) and of any
  approve rule's approver groups (the requests of the connections whose approve rules name
  one of their groups); approve and deny -- a member of *that request's* approver groups on
  such a connection, never its requester, an identity being (issuer, subject)
  (hoopwire.approvals.manager decides).
* JWTs must carry `admin.audience` (default "hoopwire-admin"), never the data path's
  audience; API keys must have `use = "admin"`.
* sessions, replay and reload -- members of `admin.admin_groups` only (nobody when it is empty).

Errors are JSON: {"error": {"code": "...", "message": "..."}} with the HTTP status.
"""

from __future__ import annotations

import asyncio
import logging
import math

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hoopwire.logs import event
from hoopwire.metrics import registry_for_scrape

log = logging.getLogger("hoopwire.admin")

__all__ = ["AdminServer"]

_MAX_LIMIT = 1000
_AUDIT_REFUSING = "audit log unwritable: statements are refused (on_write_failure = fail-closed)"


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _dumps(obj) -> str:
    return orjson.dumps(obj).decode()


def _json(data, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=_dumps)


@web.middleware
async def _errors(request: web.Request, handler):
    """Every failure of the API is a JSON error; nothing else (tracebacks) reaches the caller."""
    try:
        return await handler(request)
    except ApiError as e:
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        return web.json_response({"error": {"code": e.code, "message": e.message}},
                                 status=e.status, headers=headers)
    except web.HTTPException as e:
        if not request.path.startswith("/api/"):
            raise
        # keep what the exception says beyond its text body (a 405's Allow, RFC 9110 15.5.6)
        headers = {k: v for k, v in e.headers.items()
                   if k.lower() not in ("content-type", "content-length")}
        return web.json_response({"error": {"code": e.reason.lower().replace(" ", "_"),
                                            "message": e.text or e.reason}}, status=e.status,
                                 headers=headers)
    except Exception:
        log.exception("admin API request failed", extra={"fields": {"path": request.path}})
        return web.json_response({"error": {"code": "internal", "message": "internal error"}},
                                 status=500)


class AdminServer:
    def __init__(self, gateway, multiproc_dir: str | None, *, parent: bool = False):
        # the Gateway (its control objects: authenticator, store, approvals; in the multi-worker
        # parent a Gateway that serves no listener)
        self.gateway = gateway
        self.parent = parent
        self.registry = registry_for_scrape(multiproc_dir)
        self._mpdir = multiproc_dir
        self.runner: web.AppRunner | None = None
        app = web.Application(client_max_size=64 * 1024, middlewares=[_errors])
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        r = app.router
        r.add_get("/api/v1/openapi.json", self.openapi)
        r.add_get("/api/v1/approvals", self.approvals_list)
        r.add_get("/api/v1/approvals/{id}", self.approvals_show)
        r.add_post("/api/v1/approvals/{id}/approve", self.approve)
        r.add_post("/api/v1/approvals/{id}/deny", self.deny)
        r.add_get("/api/v1/sessions", self.sessions_list)
        r.add_get("/api/v1/sessions/{id}", self.sessions_show)
        r.add_get("/api/v1/sessions/{id}/replay", self.sessions_replay)
        r.add_post("/api/v1/reload", self.reload)
        self.app = app
        self.probes_runner: web.AppRunner | None = None
        self.bound: tuple[str, int] | None = None
        self.probes_bound: tuple[str, int] | None = None

    async def start(self, host: str, port: int) -> None:
        """The admin listener (`[admin] listen`, HTTPS with tls_cert/tls_key) and, with
        `[admin] probes_listen`, the probes' own plain-HTTP listener."""
        cfg = self.gateway.config.admin
        ctx = None
        if cfg.tls_cert is not None:
            import ssl
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, reuse_address=True, ssl_context=ctx)
        await site.start()
        self.bound = site._server.sockets[0].getsockname()[:2]  # noqa: SLF001 -- port 0
        event(log, "admin listening", address=f"{self.bound[0]}:{self.bound[1]}",
              tls="on" if ctx else "off")
        if cfg.probes_listen is not None:
            # the probes and /metrics apart: kubelets and Prometheus reach them without the
            # admin API's TLS or its firewall rules
            probes = web.Application(client_max_size=1024)
            probes.router.add_get("/metrics", self.metrics)
            probes.router.add_get("/healthz", self.healthz)
            probes.router.add_get("/readyz", self.readyz)
            self.probes_runner = web.AppRunner(probes, access_log=None, handle_signals=False)
            await self.probes_runner.setup()
            phost, pport = cfg.probes_listen
            psite = web.TCPSite(self.probes_runner, phost, pport, reuse_address=True)
            await psite.start()
            self.probes_bound = psite._server.sockets[0].getsockname()[:2]  # noqa: SLF001
            event(log, "probes listening",
                  address=f"{self.probes_bound[0]}:{self.probes_bound[1]}")

    async def stop(self) -> None:
        if self.probes_runner is not None:
            await self.probes_runner.cleanup()
        if self.runner is not None:
            await self.runner.cleanup()

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        """200 {"ready": true} when every check of hoopwire.readiness passes (the parent: in
        every serving worker); else 503 naming the failed checks. Never a secret."""
        ready = self.parent or self.gateway is None or self.gateway.ready
        if not ready:
            return web.json_response({"ready": False, "reason": "starting or stopping",
                                      "failed": ["starting"]}, status=503)
        from hoopwire.audit.recorder import audit_refusing
        try:
            if self.parent:
                from hoopwire.readiness import combine
                gw = self.gateway
                live, serving = gw.worker_pids()
                report = combine(gw.multiproc_dir or self._mpdir, live, serving,
                                 3 * gw.config.admin.upstream_check_interval + 2)
                # fail-closed with an unwritable audit log: the workers' gauge says so at
                # once, before their next report
                if audit_refusing(gw, self.registry) and "audit" not in report["failed"]:
                    report["failed"].append("audit")
                    report["checks"]["audit"] = {"ok": False, "detail": _AUDIT_REFUSING}
                    report["ready"] = False
            else:
                rd = getattr(self.gateway, "readiness", None)
                if rd is not None:
                    report = rd.report()
                else:
                    report = {"ready": True, "checks": {}, "failed": [],
                              "degraded": self.gateway.authenticator.degraded_issuers()}
                    if audit_refusing(self.gateway):
                        report.update(ready=False, failed=["audit"],
                                      checks={"audit": {"ok": False, "detail": _AUDIT_REFUSING}})
        except Exception as e:  # noqa: BLE001
            # the parent reads its workers' state from the shared metrics files; on a full
            # disk one of them can be cut short (seen: a 500 here). Unknown counts as not ready.
            event(log, "readiness: cannot read the workers' state", logging.WARNING,
                  error=f"{type(e).__name__}: {e}")
            return web.json_response({"ready": False, "reason": "cannot read the workers' "
                                                                "state (see the log)"}, status=503)
        if not report["ready"]:
            checks = report["checks"]
            reason = report.get("reason") or "; ".join(
                f"{k}: {checks[k]['detail']}" if k in checks else k for k in report["failed"])
            return _json({"ready": False, "reason": reason, "failed": report["failed"],
                          "checks": checks}, status=503)
        # An issuer whose key source failed still logs its users in with the last good keys:
        # ready, and said so (a 503 would take every replica out when the identity provider
        # is down, which is when the last good keys matter)
        if report.get("degraded"):
            return _json({"ready": True, "degraded": {
                "issuers": report["degraded"], "reason": "key source unreachable: running on "
                                                         "the last good keys"}})
        return _json({"ready": True})

    # -- API: authentication and authorisation ---------------------------------------------------

    async def _identity(self, request: web.Request):
        from hoopwire.identity import AuthError
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "unauthenticated", "send Authorization: Bearer <token>")
        try:
            # not stripped: a token with whitespace around it is refused, as on the data
            # path; and JWTs must carry the admin audience, not the database one
            return await self.gateway.authenticator.authenticate(
                token, admin_audience=self.gateway.config.admin.audience)
        except AuthError as e:
            event(log, "admin API token refused", logging.WARNING, reason=e.reason,
                  peer=request.remote)
            raise ApiError(401, "unauthenticated", "the token was not accepted") from None

    def _admin_groups(self) -> set[str]:
        return set(self.gateway.config.admin.admin_groups)

    def _approver_groups(self) -> set[str]:
        return {a for c in self.gateway.config.connections for g in c.guardrails
                if g.action == "approve" for a in g.approvers}

    def _approval_scope(self, ident) -> set[str] | None:
        """The connections whose approval requests `ident` may see: None (all) for admins,
        else those with an approve rule naming one of its groups. An approver for one
        database has no business reading the statements held on another."""
        if ident.groups & self._admin_groups():
            return None
        return {c.name for c in self.gateway.config.connections for g in c.guardrails
                if g.action == "approve" and ident.groups & set(g.approvers)}

    async def _require(self, request: web.Request, *, approvers: bool = False):
        ident = await self._identity(request)
        allowed = self._admin_groups() | (self._approver_groups() if approvers else set())
        if not ident.groups & allowed:
            raise ApiError(403, "forbidden", "this identity's groups may not use this endpoint")
        return ident

    def _store(self):
        if self.gateway.store is None:
            raise ApiError(404, "not_configured",
                           "no state store: configure approvals ([state]) or [audit] first")
        return self.gateway.store

    @staticmethod
    def _limit(request: web.Request) -> int:
        raw = request.query.get("limit", "100")
        try:
            n = int(raw)
        except ValueError:
            raise ApiError(400, "bad_request", "limit must be an integer") from None
        if not 1 <= n <= _MAX_LIMIT:
            raise ApiError(400, "bad_request", f"limit must be between 1 and {_MAX_LIMIT}")
        return n

    @staticmethod
    async def _body(request: web.Request) -> dict:
        if not request.can_read_body:
            return {}
        raw = await request.read()
        if not raw.strip():
            return {}
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ApiError(400, "bad_request", "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "bad_request", "the body must be a JSON object")
        unknown = set(body) - {"reason", "scope", "window_seconds"}
        if unknown:
            raise ApiError(400, "bad_request", f"unknown field(s): {', '.join(sorted(unknown))}")
        reason = body.get("reason")
        if reason is not None and (not isinstance(reason, str) or len(reason) > 2000):
            raise ApiError(400, "bad_request", "reason must be a string of at most 2000 characters")
        scope = body.get("scope", "once")
        if scope not in ("once", "window"):
            raise ApiError(400, "bad_request", "scope must be \"once\" or \"window\"")
        window = body.get("window_seconds")
        if isinstance(window, float) and window.is_integer():
            # JSON (and the document's "integer") does not tell 600 from 600.0
            window = body["window_seconds"] = int(window)
        if window is not None and (isinstance(window, bool) or not isinstance(window, int)
                                   or not 1 <= window <= 86400):
            raise ApiError(400, "bad_request", "window_seconds must be an integer from 1 to 86400")
        return body

    # -- API: approvals ----------------------------------------------------------------------------

    async def approvals_list(self, request: web.Request) -> web.Response:
        ident = await self._require(request, approvers=True)
        status = request.query.get("status")
        from hoopwire.state import APPROVAL_STATUSES
        if status is not None and status not in APPROVAL_STATUSES:
            raise ApiError(400, "bad_request", f"status must be one of {', '.join(APPROVAL_STATUSES)}")
        rows = await self._store().list_approvals(status, limit=self._limit(request),
                                                  connections=self._approval_scope(ident))
        return _json({"approvals": [_public(r) for r in rows]})

    async def approvals_show(self, request: web.Request) -> web.Response:
        ident = await self._require(request, approvers=True)
        row = await self._store().get_approval(request.match_info["id"])
        scope = self._approval_scope(ident)
        if row is None or (scope is not None and row["connection"] not in scope):
            # out of scope reads as missing: an approver learns nothing of other connections
            raise ApiError(404, "not_found", "no such approval request")
        return _json(_public(row))

    async def approve(self, request: web.Request) -> web.Response:
        return await self._decide(request, True)

    async def deny(self, request: web.Request) -> web.Response:
        return await self._decide(request, False)

    async def _decide(self, request: web.Request, approve: bool) -> web.Response:
        from hoopwire.approvals.manager import ApprovalError
        # who is neither admin nor approver anywhere may not use the endpoint at all (403);
        # an approver of other connections finds no such request (404, from the manager)
        ident = await self._require(request, approvers=True)
        body = await self._body(request)
        if self.gateway.approvals is None:
            raise ApiError(404, "not_configured", "no approve rules are configured")
        try:
            row = await self.gateway.approvals.decide(
                request.match_info["id"], approve, identity=ident, reason=body.get("reason"),
                scope=body.get("scope", "once"), window=body.get("window_seconds"),
                connections=self._approval_scope(ident))
        except ApprovalError as e:
            code = {400: "bad_request", 403: "forbidden", 404: "not_found", 409: "conflict"}
            raise ApiError(e.status, code.get(e.status, "error"), e.message) from None
        return _json(_public(row))

    # -- API: sessions -----------------------------------------------------------------------------

    async def sessions_list(self, request: web.Request) -> web.Response:
        await self._require(request)
        since = request.query.get("since")
        if since is not None:
            try:
                since = float(since)
            except ValueError:
                raise ApiError(400, "bad_request", "since must be a unix time in seconds") from None
            if not math.isfinite(since):
                raise ApiError(400, "bad_request", "since must be a finite number")
        rows = await self._store().list_sessions(
            identity=request.query.get("identity"), connection=request.query.get("connection"),
            issuer=request.query.get("issuer"), since=since, limit=self._limit(request))
        return _json({"sessions": rows})

    async def sessions_show(self, request: web.Request) -> web.Response:
        await self._require(request)
        store = self._store()
        sid = request.match_info["id"]
        row = await store.get_session(sid)
        if row is None:
            raise ApiError(404, "not_found", "no such session")
        audit = self.gateway.config.audit
        if audit is not None and not audit.index_statements:
            statements = await asyncio.to_thread(_statements_from_log, audit.path, sid)
        else:
            statements = await store.session_statements(sid)
        return _json({"session": row, "statements": statements})

    async def sessions_replay(self, request: web.Request) -> web.Response:
        await self._require(request)
        sid = request.match_info["id"]
        audit = self.gateway.config.audit
        if audit is None:
            raise ApiError(404, "not_configured", "no [audit] log to replay from")
        from hoopwire.audit import read_records
        records = await asyncio.to_thread(lambda: list(read_records(audit.path, session_id=sid)))
        if not records:
            raise ApiError(404, "not_found", "no recorded session with that id")
        return _json({"session": sid, "records": records})

    async def reload(self, request: web.Request) -> web.Response:
        await self._require(request)
        errors = await self.gateway.reload_from_api()
        return _json({"reloaded": not errors, "errors": errors}, status=422 if errors else 200)

    async def openapi(self, request: web.Request) -> web.Response:
        from hoopwire.openapi import document
        return _json(document())


def _statements_from_log(path: str, sid: str) -> list[dict]:
    """A session's statement records from the audit log, shaped as the index would give them."""
    from hoopwire.audit import read_records
    out = []
    for r in read_records(path, session_id=sid):
        if r.get("type") != "statement":
            continue
        out.append({"session_id": sid, "seq": r.get("n"), "ts": r.get("started"),
                    "statement": r.get("statement", ""), "verdict": r.get("verdict", ""),
                    "rules": [], "approval_id": None, "rows": r.get("rows"),
                    "masked": r.get("masked", 0), "duration_ms": r.get("duration_ms"),
                    "error": (r.get("error") or {}).get("message")})
    return out


def _public(row: dict) -> dict:
    """An approval as the API shows it (the token id stays in the store)."""
    return {k: v for k, v in row.items() if k != "token_id"}
