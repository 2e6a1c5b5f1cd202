"""`hoopwire demo http`: the demo's HTTP part -- an agent calling an internal REST API through
the gateway.

The counterpart of hoopwire/demo.py and demo_mysql.py on HTTP/1.1: a throwaway JSON API (the
shop's users and orders, served by aiohttp in a thread of this process, answering only callers
that present its own service token), `hoopwire serve` in front of it (TLS with a throwaway
certificate, guardrails on method + path, JSON masking by key path and by detector, an approval
rule, session recording), a token minted for an agent identity, and the agent's requests sent
through the gateway with the standard library's http.client on one keep-alive connection --
what was allowed, blocked (path and method-override evasions included), masked and held for a
human (who approves it through the admin API as a second identity); then the recorded session
and the audit chain check. Everything runs in a temporary directory and is removed on exit or
Ctrl-C.

    hoopwire demo http [--keep]        (or: python -m hoopwire.demo_http [--keep])

`ShopApi` is also the internal REST API of the LangGraph example (examples/langgraph_agent).
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import os
import secrets
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time

from hoopwire.demo import (DETECTOR_MASK, _say, _wait_pending, approve_held, config_head,
                           self_signed, show_records, start_gateway, stop_all)

__all__ = ["ShopApi", "main"]

USERS = [
    {"id": 1, "name": "Ada Lovelace", "email": "ada@example.com", "plan": "pro",
     "password": "analytical-engine-1843", "note": "prefers a.lovelace@example.net for invoices"},
    {"id": 2, "name": "Alan Turing", "email": "alan@example.org", "plan": "free",
     "password": "enigma-bombe-1940", "note": "no note"},
    {"id": 3, "name": "Grace Hopper", "email": "grace@example.net", "plan": "pro",
     "password": "cobol-compiler-1959", "note": "call before noon"},
]
ADMIN_KEYS = {"keys": [{"name": "billing", "secret": "sk_live_do_not_show_an_agent"}]}


class ShopApi:
    """The shop's internal JSON API on 127.0.0.1 (aiohttp, in a thread with its own event loop).
    It answers only requests carrying `Authorization: Bearer <token>` -- its own service token,
    which the gateway stores and injects -- and remembers every Authorization value it was sent
    (`seen`), so that a demo can show the agent's token never reached it.

        GET    /v1/users, /v1/users/{id}     users, e-mail and password included
        GET    /v1/orders[?customer=&limit=], /v1/orders/count
        DELETE /v1/orders/{id}               one order
        DELETE /v1/orders                    every order (also POST + X-HTTP-Method-Override)
        GET    /v1/whoami                    which credential the API saw
        GET    /admin/keys                   the API's own secrets
    """

    def __init__(self, token: str, orders: int = 42):
        self.token = token
        self.orders = {n: {"id": n, "customer_id": 1 + n % 3,
                           "total": round((10 + n * 7.31) % 500, 2)} for n in range(1, orders + 1)}
        self.seen: list[str] = []
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner = None

    # -- the API ------------------------------------------------------------------------------

    def _app(self):
        from aiohttp import web

        @web.middleware
        async def service_token(request, handler):
            got = request.headers.get("Authorization", "")
            self.seen.append(got)
            if not secrets.compare_digest(got.encode(), f"Bearer {self.token}".encode()):
                return web.json_response({"error": "unauthorized"}, status=401)
            return await handler(request)

        async def users(request):
            return web.json_response({"users": USERS})

        async def user(request):
            found = [u for u in USERS if str(u["id"]) == request.match_info["id"]]
            if not found:
                return web.json_response({"error": "no such user"}, status=404)
            return web.json_response({"user": found[0]})

        async def orders(request):
            rows = sorted(self.orders.values(), key=lambda o: o["id"])
            customer = request.query.get("customer")
            if customer is not None:
                rows = [o for o in rows if str(o["customer_id"]) == customer]
            limit = request.query.get("limit", "")
            return web.json_response({"orders": rows[:int(limit)] if limit.isdigit() else rows})

        async def count(request):
            return web.json_response({"count": len(self.orders)})

        async def delete_one(request):
            n = request.match_info["id"]
            if not n.isdigit() or self.orders.pop(int(n), None) is None:
                return web.json_response({"error": "no such order"}, status=404)
            return web.json_response({"deleted": int(n)})

        async def delete_all(request):
            gone = len(self.orders)
            self.orders.clear()
            return web.json_response({"deleted": gone})

        async def post_orders(request):
            # the convention some frameworks follow, and so the evasion a rule must see through
            if request.headers.get("X-HTTP-Method-Override", "").upper() == "DELETE":
                return await delete_all(request)
            return web.json_response({"error": "read-only"}, status=405)

        async def whoami(request):
            return web.json_response({"caller": "the gateway's service token"})

        async def admin_keys(request):
            return web.json_response(ADMIN_KEYS)

        app = web.Application(middlewares=[service_token])
        app.router.add_get("/v1/users", users)
        app.router.add_get("/v1/users/{id}", user)
        app.router.add_get("/v1/orders", orders)
        app.router.add_get("/v1/orders/count", count)
        app.router.add_delete("/v1/orders", delete_all)
        app.router.add_post("/v1/orders", post_orders)
        app.router.add_delete("/v1/orders/{id}", delete_one)
        app.router.add_get("/v1/whoami", whoami)
        app.router.add_get("/admin/keys", admin_keys)
        return app

    # -- its thread ---------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> "ShopApi":
        from aiohttp import web

        # bound here, before the thread starts: the port is ours, no other process can take it
        # between choosing and listening
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        ready = threading.Event()
        failed: list[BaseException] = []

        async def serve() -> None:
            self._runner = web.AppRunner(self._app(), access_log=None)
            await self._runner.setup()
            await web.SockSite(self._runner, sock).start()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(serve())
            except BaseException as e:  # noqa: BLE001 -- reported by start()
                failed.append(e)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._runner.cleanup())
            self._loop.close()

        self._thread = threading.Thread(target=run, name="shop-api", daemon=True)
        self._thread.start()
        if not ready.wait(timeout) or failed:
            raise RuntimeError(f"the shop API did not start: {failed[0] if failed else 'timeout'}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


# What the agent sends (method, path, extra headers), and what we expect the gateway to do.
AGENT_STEPS = [
    ("allowed", "GET", "/v1/orders/count", {}),
    ("allowed", "GET", "/v1/orders?customer=1&limit=2", {}),
    ("allowed", "GET", "/v1/whoami", {}),
    ("blocked", "GET", "/admin/keys", {}),
    ("blocked", "DELETE", "/v1/orders", {}),
    # dot segments and a percent-encoded letter: the gateway judges (and forwards) the path the
    # server would resolve, /admin/keys
    ("blocked", "GET", "/v1/../admin/keys", {}),
    ("blocked", "GET", "/%61dmin/keys", {}),
    # the API honours the override, so the rule on DELETE must judge it as one
    ("blocked", "POST", "/v1/orders", {"X-HTTP-Method-Override": "DELETE"}),
    ("masked", "GET", "/v1/users", {}),
    ("masked", "GET", "/v1/users/1", {}),
]
HELD_STEP = ("DELETE", "/v1/orders/42")


def _config(api_port: int, gw_port: int, admin_port: int, jwks: str, api_key_sha: str,
            work: str, cert: str, key: str) -> str:
    return config_head(admin_port, jwks, api_key_sha, work) + f"""\
[[connection]]
name = "shop-api"
protocol = "http"
listen = "127.0.0.1:{gw_port}"
upstream = "http://127.0.0.1:{api_port}"
# the API's own service token, injected as `Authorization: Bearer <it>`; the agent's is removed
password_env = "SHOP_API_TOKEN"
allow_groups = ["agents", "etl"]
# the agent's token travels in a header: only inside TLS
tls_cert = "{cert}"
tls_key = "{key}"

  [[connection.guardrail]]
  pack = "http-admin-paths"
  message = "admin endpoints are for people, not agents"

  [[connection.guardrail]]
  name = "no-bulk-deletes"
  patterns = ['^DELETE /v1/[a-z]+/?(\\?[^\\n]*)?\\n']
  message = "delete one resource at a time"

  [[connection.guardrail]]
  name = "deletes-need-a-human"
  patterns = ['^DELETE ']
  action = "approve"
  approvers = ["dba"]
  timeout = "60s"

  [[connection.mask]]
  paths = ["$.users[*].email", "$.user.email", "**.password"]
  strategy = "redact"
""" + DETECTOR_MASK


class _Client:
    """One keep-alive HTTPS connection to the gateway, as an agent's HTTP client keeps one."""

    def __init__(self, port: int, cafile: str, token: str):
        self.token = token
        self.conn = http.client.HTTPSConnection(
            "127.0.0.1", port, timeout=120, context=ssl.create_default_context(cafile=cafile))

    def call(self, method: str, path: str, headers: dict | None = None) -> tuple[int, object]:
        """(status, the JSON body, or its text when it is not JSON)."""
        hdrs = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        body = b"" if method in ("POST", "PUT", "PATCH") else None
        try:
            self.conn.request(method, path, body=body, headers=hdrs)
            resp = self.conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            # the gateway closed the connection after its last answer: open a new one
            self.conn.close()
            self.conn.request(method, path, body=body, headers=hdrs)
            resp = self.conn.getresponse()
        raw = resp.read()
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            return resp.status, raw.decode("utf-8", "replace")

    def close(self) -> None:
        self.conn.close()


def _shown(status: int, doc: object) -> str:
    """`<status> <body>`, a gateway refusal as `<status> <error>: <message>`."""
    if isinstance(doc, dict) and "error" in doc and "message" in doc:
        return f"{status} {doc['error']}: {doc['message']}"
    return f"{status} {json.dumps(doc, separators=(', ', ': '))}"


def main(keep: bool = False) -> int:
    try:
        import aiohttp  # noqa: F401 -- the throwaway API's server
    except ImportError:
        print("the demo's API server is aiohttp: pip install aiohttp", file=sys.stderr)
        return 1
    from hoopwire.devserver import free_loopback_port
    from hoopwire.identity.devtoken import create_dev_key, mint_token

    work = tempfile.mkdtemp(prefix="hoopwire-demo-http-")
    api = gw = None
    # Ctrl-C anywhere: fall through to the cleanup below.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        print("hoopwire demo (HTTP): an AI agent calling an internal REST API, through the "
              "gateway\n")
        api_token = "svc-" + secrets.token_urlsafe(24)
        api = ShopApi(api_token).start()
        _say("info", f"the shop's internal API (aiohttp) on 127.0.0.1:{api.port}: users (with "
                     "e-mails and passwords), orders, admin keys; it answers only its own "
                     "service token")

        key = os.path.join(work, "dev-key.pem")
        jwks = create_dev_key(key, kid="demo")
        cert, cert_key = self_signed(work)
        api_key = "etl-" + secrets.token_urlsafe(24)
        gw_port, admin_port = free_loopback_port(), free_loopback_port()
        cfg_path = os.path.join(work, "hoopwire.toml")
        with open(cfg_path, "w") as f:
            f.write(_config(api.port, gw_port, admin_port, jwks,
                            hashlib.sha256(api_key.encode()).hexdigest(), work, cert, cert_key))
        log_path = os.path.join(work, "gateway.log")
        env = dict(os.environ, SHOP_API_TOKEN=api_token)
        gw = start_gateway(cfg_path, env, log_path, gw_port)
        _say("info", f"hoopwire on https://127.0.0.1:{gw_port} (admin and /metrics on "
                     f"127.0.0.1:{admin_port})")
        token = mint_token(key, issuer="https://idp.demo.local", audience="hoopwire",
                           subject="agent-7", groups=["agents"], ttl=900, kid="demo")
        _say("info", "minted a 15-minute token for agent-7 (group: agents) -- the agent's only "
                     "change is the base URL and the token it sends:")
        print(f"          curl --cacert gateway.pem -H 'Authorization: Bearer {token[:12]}...' "
              f"https://127.0.0.1:{gw_port}/v1/orders/count\n")

        agent = _Client(gw_port, cert, token)
        try:
            for expected, method, path, headers in AGENT_STEPS:
                shown_req = f"{method} {path}" + "".join(f"  ({k}: {v})" for k, v in headers.items())
                status, doc = agent.call(method, path, headers)
                if status == 403 and isinstance(doc, dict) and doc.get("error") == "blocked":
                    tag = "blocked"
                elif status >= 400:
                    tag = "error"
                else:
                    # what came back decides the tag, not what the step expected
                    tag = "masked" if "****" in json.dumps(doc) else "allowed"
                _say(tag, f"{shown_req}\n          -> {_shown(status, doc)}"
                     + ("" if tag == expected else f"  (UNEXPECTED: the demo expected {expected})"))
        finally:
            agent.close()

        # A request that needs a human: the agent's call waits; a DBA approves it.
        # the admin API's own audience ([admin] audience): an agent's token is no admin token
        approver = mint_token(key, issuer="https://idp.demo.local", audience="hoopwire-admin",
                              subject="dana", groups=["dba"], ttl=900, kid="demo")
        held: dict = {}

        def agent_delete() -> None:
            c = _Client(gw_port, cert, token)
            try:
                held["result"] = _shown(*c.call(*HELD_STEP))
            except (OSError, http.client.HTTPException) as e:
                held["result"] = f"failed: {e}"
            finally:
                c.close()
        worker = threading.Thread(target=agent_delete, daemon=True)
        worker.start()
        try:
            request = _wait_pending(admin_port, approver)
        except RuntimeError as e:
            worker.join(5)
            with open(log_path, encoding="utf-8", errors="replace") as f:
                tail = f.readlines()[-8:]
            print(f"demo: {e}; the agent got: {held.get('result', '(no answer yet)')}; the "
                  "gateway's log ends with:\n" + "".join(tail), file=sys.stderr)
            return 1
        approve_held(admin_port, approver, " ".join(HELD_STEP), request, worker, held)

        tampered = _Client(gw_port, cert, token[:-4] + "AAAA")
        try:
            status, doc = tampered.call("GET", "/v1/orders/count")
            _say("refused" if status == 401 else "allowed",
                 f"a tampered token -> {_shown(status, doc)}")
        finally:
            tampered.close()
        etl = _Client(gw_port, cert, api_key)
        try:
            status, doc = etl.call("GET", "/v1/orders/count")
            _say("allowed" if status == 200 else "error",
                 f"the nightly-etl API key (stored only as its sha256): {_shown(status, doc)}")
        finally:
            etl.close()
        leaked = sum(1 for seen in api.seen if token in seen or api_key in seen)
        _say("info", f"the API was called {len(api.seen)} times, each with the gateway's service "
                     f"token; the agent's token or API key reached it {leaked} times")

        show_records(admin_port, approver, work, log_path)

        if keep:
            fresh = mint_token(key, issuer="https://idp.demo.local", audience="hoopwire",
                               subject="you", groups=["agents"], ttl=3600, kid="demo")
            print(f"\nStill running. Try it yourself (Ctrl-C to stop):\n  curl --cacert {cert} "
                  f"-H 'Authorization: Bearer {fresh}' https://127.0.0.1:{gw_port}/v1/users")
            while gw.poll() is None:
                time.sleep(0.5)
        print("\ndone: stopping the gateway and the API.")
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the gateway and the API.")
        return 130
    finally:
        stop_all(gw, api, work)


if __name__ == "__main__":
    sys.exit(main(keep="--keep" in sys.argv[1:]))
