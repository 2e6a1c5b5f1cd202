"""The admin listener: /metrics, /healthz, /readyz (the JSON API under /api/v1/ comes next).

aiohttp serves it on the gateway's own event loop; in multi-worker mode the parent process
serves it and renders every worker's metrics.
"""

from __future__ import annotations

import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hoopwire.logs import event
from hoopwire.metrics import registry_for_scrape

log = logging.getLogger("hoopwire.admin")

__all__ = ["AdminServer"]


class AdminServer:
    def __init__(self, gateway, multiproc_dir: str | None):
        self.gateway = gateway  # None in the multi-worker parent
        self.registry = registry_for_scrape(multiproc_dir)
        self.runner: web.AppRunner | None = None
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        self.app = app

    async def start(self, host: str, port: int) -> None:
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, reuse_address=True)
        await site.start()
        event(log, "admin listening", address=f"{host}:{port}")

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        ready = self.gateway is None or self.gateway.ready
        return web.json_response({"ready": ready}, status=200 if ready else 503)
