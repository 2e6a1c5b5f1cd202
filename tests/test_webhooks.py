"""Webhook delivery against real local HTTP receivers (aiohttp.web on 127.0.0.1, port 0).

Timing: tests wait for events (a hit arrived, a counter moved) with generous deadlines, which
only bound how long a failure takes to show. Where a test is about waiting -- backoff, close()'s
timeout -- the schedule is read from the sender itself (the delays it asks for), the wall clock
only gives lower bounds (load can only make them easier), and an upper bound is kept only where
it is the behaviour, far from where it would pass wrongly. How fast publish() is lives in bench/test_bench_webhooks.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import orjson
import pytest
from aiohttp import web

from hoopwire.approvals.webhooks import WebhookSender, redact_url, sign, verify_signature
from hoopwire.config import Secret, WebhookConfig

FAST = {"backoff": 0.05, "max_backoff": 0.2}
EVENT = "approval.created"
DATA = {"id": "req-1", "status": "pending", "requester": "alice@example.com",
        "connection": "prod-pg", "rule": "no-delete", "statement": "DELETE FROM users WHERE id = 1",
        "expires_at": "2030-01-01T00:00:00Z"}


@dataclass
class Hit:
    at: float
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    url: str
    hits: list[Hit] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_for(self, n: int, timeout: float = 30.0) -> None:
        async def enough() -> None:
            while len(self.hits) < n:
                self.arrived.clear()
                await self.arrived.wait()
        await asyncio.wait_for(enough(), timeout)


Answer = Callable[[int], Awaitable[web.StreamResponse]]  # hit number (0-based) -> response


async def _ok(_: int) -> web.StreamResponse:
    return web.Response(status=204)


@contextlib.asynccontextmanager
async def receiver(answer: Answer = _ok, path: str = "/hook") -> AsyncIterator[Receiver]:
    rec: Receiver | None = None

    async def handle(request: web.Request) -> web.StreamResponse:
        assert rec is not None
        rec.hits.append(Hit(time.monotonic(), dict(request.headers), await request.read()))
        rec.arrived.set()
        return await answer(len(rec.hits) - 1)

    app = web.Application()
    app.router.add_post(path, handle)
    # handler_cancellation: a hanging handler ends when the sender gives up, so cleanup is quick.
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    rec = Receiver(f"http://{host}:{port}{path}")
    try:
        yield rec
    finally:
        await runner.cleanup()


def _refused_url() -> str:
    """A URL where nothing listens (connection refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


@dataclass
class Silent:
    url: str
    connected: asyncio.Event  # set once a client has connected (and is left waiting)


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[Silent]:
    """Accepts connections and never answers."""
    connected = asyncio.Event()

    async def handle(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        connected.set()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await asyncio.sleep(3600)
        w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield Silent(f"http://127.0.0.1:{port}/hook", connected)
    finally:
        server.close()


def hook(url: str, **kw) -> WebhookConfig:
    # The receivers here answer at once; a per-attempt timeout a loaded machine could reach
    # would turn a slow answer into a retry and a duplicate hit.
    kw.setdefault("timeout", 30.0)
    return WebhookConfig(url=url, **kw)


async def until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll `condition` until it holds; the deadline only bounds how long a failure takes."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"still not true after {timeout:g} s"
        await asyncio.sleep(0.005)


def record_delays(monkeypatch) -> list[float]:
    """Every retry delay a WebhookSender decides on, in order: the backoff schedule, read
    without a stopwatch."""
    asked: list[float] = []
    decide = WebhookSender._delay

    def spy(self, attempt, retry_after):
        asked.append(decide(self, attempt, retry_after))
        return asked[-1]
    monkeypatch.setattr(WebhookSender, "_delay", spy)
    return asked


# -- signatures ---------------------------------------------------------------------------------

def test_sign_is_hmac_sha256_over_timestamp_dot_body():
    expected = hmac.new(b"k", b"1700000000.{}", hashlib.sha256).hexdigest()
    assert sign(b"k", "1700000000", b"{}") == "sha256=" + expected


def test_verify_signature_rejects_malformed_and_skewed():
    body, ts = b'{"a":1}', "1700000000"
    good = sign(b"k", ts, body)
    assert verify_signature(b"k", ts, body, good, now=1700000000)
    assert verify_signature(b"k", ts, body, good, now=1700000000 - 299)  # receiver clock behind
    assert not verify_signature(b"k", ts, body, good, now=1700000000 - 301)  # from the future
    assert not verify_signature(b"k", ts, body, good, now=1700000301)
    assert not verify_signature(b"other", ts, body, good, now=1700000000)
    assert not verify_signature(b"k", "1700000001", body, good, now=1700000000)
    assert not verify_signature(b"k", ts, body, good[7:], now=1700000000)  # no sha256= prefix
    assert not verify_signature(b"k", ts, body, "sha256=é", now=1700000000)
    assert not verify_signature(b"k", "soon", body, good, now=1700000000)
    assert not verify_signature(b"k", "nan", body, good, now=1700000000)


def test_redact_url_drops_userinfo_query_fragment():
    assert redact_url("https://u:p@hooks.example.com:8443/a/b?token=t#f") == \
        "https://hooks.example.com:8443/a/…"
    assert redact_url("http://[::1]:80/x?q") == "http://[::1]:80/x"
    # a Slack incoming webhook's secret lives in its path
    assert "XXSECRET" not in redact_url("https://hooks.slack.com/services/T0/B0/XXSECRET")


def test_signed_json_delivery():
    async def main() -> None:
        async with receiver() as rec:
            sender = WebhookSender([hook(rec.url, secret=Secret("s3cret", "env:T"))], **FAST)
            await sender.start()
            before = int(time.time())
            sender.publish(EVENT, DATA)
            await rec.wait_for(1)
            after = time.time()
            await sender.close()
            assert sender.stats[rec.url] == {"delivered": 1, "failed": 0, "dropped": 0,
                                             "retries": 0}
        (hit,) = rec.hits
        h = hit.headers
        assert h["Content-Type"] == "application/json"
        assert h["X-Hoopwire-Event"] == EVENT
        assert uuid.UUID(h["X-Hoopwire-Delivery"]).version == 4
        ts = h["X-Hoopwire-Timestamp"]
        # the time of sending, in unix seconds: between publish() and the hit's arrival
        assert ts.isdigit() and before <= int(ts) <= after
        sig = h["X-Hoopwire-Signature"]
        assert verify_signature(b"s3cret", ts, hit.body, sig)
        assert not verify_signature(b"s3cret", ts, hit.body.replace(b"alice", b"mallory"), sig)
        assert not verify_signature(b"s3cret", ts, hit.body, sig, now=int(ts) + 301)
        doc = orjson.loads(hit.body)
        assert doc["event"] == EVENT and doc["delivery"] == h["X-Hoopwire-Delivery"]
        assert doc["data"] == DATA
        assert doc["time"].endswith("Z") and doc["time"][:4].isdigit()

    asyncio.run(main())


def test_no_signature_header_without_secret():
    async def main() -> None:
        async with receiver() as rec:
            sender = WebhookSender([hook(rec.url)], **FAST)
            await sender.start()
            sender.publish(EVENT, {"id": "x"})
            await rec.wait_for(1)
            await sender.close()
        assert "X-Hoopwire-Signature" not in rec.hits[0].headers

    asyncio.run(main())


def test_slack_format():
    async def main() -> None:
        async with receiver() as rec:
            sender = WebhookSender([hook(rec.url, format="slack")], **FAST)
            await sender.start()
            data = dict(DATA, statement="SELECT '<!channel>'\n```x```", reason=None)
            sender.publish(EVENT, data)
            sender.publish("approval.decided", {"status": "denied", "decided_by": "bob",
                                                "reason": "not\nnow"})
            await rec.wait_for(2)
            await sender.close()
        created, decided = (orjson.loads(h.body) for h in rec.hits)
        text = created["text"]
        assert "\n" not in text
        for part in ("req-1", "pending", "alice@example.com", "prod-pg", "no-delete"):
            assert part in text
        assert all(b["type"] == "section" for b in created["blocks"])
        fields = " ".join(f["text"] for b in created["blocks"] for f in b.get("fields", ()))
        assert "*Requester*" in fields and "*Rule*" in fields and "Reason" not in fields
        code = created["blocks"][-1]["text"]["text"]
        assert code.startswith("```") and code.endswith("```")
        assert "&lt;!channel&gt;" in code and "<!channel>" not in code
        assert code[3:-3].count("```") == 0  # the statement's own fence cannot close ours
        # missing keys are fine; the decision's reason is kept on one line
        assert decided["text"] == "Approval request denied, by bob: not now"
        assert len(decided["blocks"]) == 2  # summary + fields, no statement block

    asyncio.run(main())


def test_5xx_retried_with_same_delivery_id(monkeypatch):
    asked = record_delays(monkeypatch)

    async def answer(n: int) -> web.StreamResponse:
        return web.Response(status=500 if n < 2 else 200)

    async def main() -> None:
        async with receiver(answer) as rec:
            sender = WebhookSender([hook(rec.url, secret=Secret("k", "env:K"))], **FAST)
            await sender.start()
            sender.publish(EVENT, DATA)
            await rec.wait_for(3)
            await until(lambda: sender.stats[rec.url]["delivered"] == 1)  # the 200 was counted
            await sender.close()
            assert sender.stats[rec.url] == {"delivered": 1, "failed": 0, "dropped": 0,
                                             "retries": 2}
        assert len(rec.hits) == 3
        assert len({h.headers["X-Hoopwire-Delivery"] for h in rec.hits}) == 1
        assert len({h.body for h in rec.hits}) == 1
        for h in rec.hits:  # each attempt signed with its own timestamp
            assert verify_signature(b"k", h.headers["X-Hoopwire-Timestamp"], h.body,
                                    h.headers["X-Hoopwire-Signature"])
        # exponential backoff from 0.05 s, +-20% jitter: 0.05, then 0.1
        assert len(asked) == 2
        assert asked[0] == pytest.approx(0.05, rel=0.2 + 1e-9), asked
        assert asked[1] == pytest.approx(0.1, rel=0.2 + 1e-9), asked
        # and it really waited that long (lower bounds only: load can only lengthen a wait)
        gaps = [b.at - a.at for a, b in zip(rec.hits, rec.hits[1:])]
        assert gaps[0] >= asked[0] * 0.9 and gaps[1] >= asked[1] * 0.9, (gaps, asked)

    asyncio.run(main())


def test_429_retry_after_honoured_and_capped(monkeypatch):
    asked = record_delays(monkeypatch)

    async def answer(n: int) -> web.StreamResponse:
        if n == 0:
            return web.Response(status=429, headers={"Retry-After": "60"})
        return web.Response(status=200)

    async def main() -> None:
        async with receiver(answer) as rec:
            # own backoff would be ~0.01 s; Retry-After says 60, capped to max_backoff 0.3
            sender = WebhookSender([hook(rec.url)], backoff=0.01, max_backoff=0.3)
            await sender.start()
            sender.publish(EVENT, DATA)
            await rec.wait_for(2)
            await sender.close()
            await until(lambda: sender.stats[rec.url]["delivered"] == 1)
        assert asked == [0.3]                                # Retry-After, capped; no jitter
        assert rec.hits[1].at - rec.hits[0].at >= 0.3 * 0.9  # and it waited (a lower bound)

    asyncio.run(main())


def test_4xx_is_final_and_logged_without_secrets(caplog):
    async def answer(_: int) -> web.StreamResponse:
        return web.Response(status=400)

    async def main() -> None:
        async with receiver(answer) as rec:
            url = rec.url.replace("http://", "http://user:pw@") + "?token=tok"
            sender = WebhookSender([hook(url, secret=Secret("s3cret", "env:T"))], **FAST)
            await sender.start()
            sender.publish(EVENT, DATA)
            await rec.wait_for(1)
            # the sender is done with the delivery (a retry would come before giving up)
            await until(lambda: sender.stats[url]["failed"] == 1)
            await sender.close()
            assert len(rec.hits) == 1
            assert sender.stats[url] == {"delivered": 0, "failed": 1, "dropped": 0, "retries": 0}
            return rec.url

    with caplog.at_level(logging.WARNING, logger="hoopwire.approvals.webhooks"):
        plain_url = asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert plain_url in lines[0] and "400" in lines[0]
    for leak in ("pw", "user", "tok", "s3cret", "DELETE", "alice"):
        assert leak not in lines[0]


def test_connection_errors_retried_then_fail():
    async def main() -> None:
        url = _refused_url()
        sender = WebhookSender([hook(url, max_attempts=3)], backoff=0.01, max_backoff=0.02)
        await sender.start()
        sender.publish(EVENT, DATA)
        await until(lambda: sender.stats[url]["failed"] == 1)
        await sender.close()
        assert sender.stats[url] == {"delivered": 0, "failed": 1, "dropped": 0, "retries": 2}

    asyncio.run(main())


def test_hanging_receiver_does_not_delay_another_hook():
    async def main() -> None:
        async with silent_server() as stuck, receiver() as healthy:
            stuck_url = stuck.url
            # The stuck hook waits an hour for its answer, so "not delayed" needs no stopwatch:
            # the healthy hook's three deliveries arrive while the stuck one still hangs.
            sender = WebhookSender([hook(stuck_url, timeout=3600), hook(healthy.url)],
                                   **FAST)
            await sender.start()
            for i in range(3):
                sender.publish(EVENT, {"id": i})
            await asyncio.wait_for(stuck.connected.wait(), 30)
            await healthy.wait_for(3)
            assert sender.stats[stuck_url] == {"delivered": 0, "failed": 0, "dropped": 0,
                                               "retries": 0}   # still in its first attempt
            # Timing bound that is the behaviour: close() gives up after its own timeout
            # (0.2 s), not the stuck hook's hour; 30 s is slack for a loaded machine.
            await asyncio.wait_for(sender.close(timeout=0.2), 30)
            assert sender.stats[healthy.url]["delivered"] == 3
            assert sender.stats[stuck_url]["dropped"] == 3  # in flight + queued at shutdown

    asyncio.run(main())


def test_publish_drops_when_full(caplog):
    # (publish()'s cost is measured by bench/test_bench_webhooks.py, not asserted here)
    async def main() -> None:
        url = _refused_url()
        # retries an hour apart: draining the queue would take hours, so close() returning at
        # all shows it gave up after its own timeout
        sender = WebhookSender([hook(url)], queue_size=10, backoff=3600, max_backoff=3600)
        await sender.start()
        for i in range(2000):  # no await in between: the worker cannot drain meanwhile
            sender.publish(EVENT, {"id": i, "statement": "SELECT 1"})
        assert sender.stats[url]["dropped"] == 1990
        await asyncio.wait_for(sender.close(timeout=0.1), 30)
        assert sender.stats[url]["dropped"] == 2000  # the queued ten were lost at shutdown

    with caplog.at_level(logging.WARNING, logger="hoopwire.approvals.webhooks"):
        asyncio.run(main())
    drops = [r for r in caplog.records if "queue full" in r.getMessage()]
    assert len(drops) == 1  # one line per overflow, not one per dropped event


def test_publish_never_raises():
    async def main() -> None:
        async with receiver() as rec:
            sender = WebhookSender([hook(rec.url)], **FAST)
            sender.publish(EVENT, {"id": object(), 1: "int key"})  # before start(): queued
            sender.publish(EVENT, None)  # type: ignore[arg-type]  # a caller bug, swallowed
            await sender.start()
            await rec.wait_for(1)
            await sender.close()
            sender.publish(EVENT, DATA)  # after close(): dropped, counted
            assert sender.stats[rec.url] == {"delivered": 1, "failed": 0, "dropped": 1,
                                             "retries": 0}
        assert orjson.loads(rec.hits[0].body)["data"]["1"] == "int key"

    asyncio.run(main())


def test_close_with_dead_receiver_returns_promptly():
    async def main() -> None:
        async with silent_server() as dead:
            sender = WebhookSender([hook(dead.url, timeout=3600, max_attempts=5)], **FAST)
            await sender.start()
            sender.publish(EVENT, DATA)
            await asyncio.wait_for(dead.connected.wait(), 30)  # the delivery is in flight
            t = time.monotonic()
            # Timing bound that is the behaviour: close() gives up after its own 0.2 s, not
            # the hook's 1 h timeout; 30 s is slack for a loaded machine.
            await asyncio.wait_for(sender.close(timeout=0.2), 30)
            # ...and it did give the in-flight delivery those 0.2 s (a lower bound: load only
            # lengthens it)
            assert time.monotonic() - t >= 0.2 * 0.9
            assert sender.stats[dead.url]["dropped"] == 1

    asyncio.run(main())


def test_close_without_start():
    async def main() -> None:
        sender = WebhookSender([hook(_refused_url())])
        sender.publish(EVENT, DATA)
        await sender.close()
        assert list(sender.stats.values())[0]["dropped"] == 1

    asyncio.run(main())


def test_events_filtered_per_hook():
    async def main() -> None:
        async with receiver() as decided_only, receiver() as default:
            sender = WebhookSender([hook(decided_only.url, events=("approval.decided",)),
                                    hook(default.url)], **FAST)
            await sender.start()
            sender.publish("approval.created", {"id": 1})
            sender.publish("approval.decided", {"id": 1, "status": "approved"})
            sender.publish("approval.cancelled", {"id": 1})  # nobody subscribed
            # A barrier both hooks take: each hook delivers in order, so once it has this one,
            # anything routed to it before has arrived too. No waiting for what must not come.
            sender.publish("approval.decided", {"id": "barrier"})
            await default.wait_for(3)
            await decided_only.wait_for(2)
            await sender.close()
        events = lambda rec: [(h.headers["X-Hoopwire-Event"], orjson.loads(h.body)["data"]["id"])  # noqa: E731
                              for h in rec.hits]
        assert events(decided_only) == [("approval.decided", 1), ("approval.decided", "barrier")]
        assert events(default) == [("approval.created", 1), ("approval.decided", 1),
                                   ("approval.decided", "barrier")]

    asyncio.run(main())
