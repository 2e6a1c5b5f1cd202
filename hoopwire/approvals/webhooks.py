"""Webhooks: approval events announced to HTTP receivers, off the data path.

`WebhookSender.publish()` is what the approval code calls. It only appends to a bounded per-hook
queue and returns: a statement waiting for approval must never wait on Slack. When a queue is
full the event is dropped and counted; a lost announcement is recoverable (the request is still
listed by the admin API), a stalled gateway is not.

Each hook has its own queue and its own worker task, so a receiver that hangs or keeps failing
only delays its own deliveries. A delivery is retried on connection errors, timeouts, 5xx and
429 with jittered exponential backoff (Retry-After honoured, capped by `max_backoff`); any other
non-2xx answer is final. Every attempt of one delivery carries the same `X-Hoopwire-Delivery` id
so a receiver can de-duplicate.

Signing: `X-Hoopwire-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`, with the
timestamp sent in `X-Hoopwire-Timestamp`. Binding the timestamp into the MAC is what lets a
receiver reject replays of an old, validly signed request (`verify_signature`'s tolerance).

Logs name a hook by its URL without userinfo or query string (where receivers tend to keep
tokens); neither secrets nor bodies are ever logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import re
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from prometheus_client import Counter

from hoopwire import __version__
from hoopwire.config import WebhookConfig

__all__ = ["WebhookSender", "sign", "verify_signature", "redact_url", "DELIVERIES"]

log = logging.getLogger("hoopwire.approvals.webhooks")

DELIVERIES = Counter(
    "hoopwire_webhook_deliveries", "Webhook deliveries by receiver (its URL as logged: "
    "redact_url) and final result (delivered | failed: gave up after retries or a final 4xx | "
    "dropped: queue full or shut down first)", ["receiver", "result"])
RESULTS = ("delivered", "failed", "dropped")

FORMATS = ("json", "slack")
USER_AGENT = f"hoopwire-webhooks/{__version__}"
JITTER = 0.2  # +-20%: hooks that failed together must not retry in lockstep

# Slack rejects a section text over 3000 characters; leave room for the fences and escapes.
_SLACK_STATEMENT_MAX = 2500
_WS = re.compile(r"\s+")


# -- signatures ---------------------------------------------------------------------------------

def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The X-Hoopwire-Signature value for `body` sent at `timestamp` (unix seconds, as sent)."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(secret: bytes, timestamp: str, body: bytes, header: str, *,
                     tolerance: float = 300, now: float | None = None) -> bool:
    """True when `header` signs exactly `body` at `timestamp` and the timestamp is within
    `tolerance` seconds of `now` (either side: a clock ahead of ours is as suspect as one behind).

    For receivers (and tests). Never raises on malformed input: anything odd is simply False.
    """
    try:
        sent = float(timestamp)
    except (TypeError, ValueError):
        return False
    if sent != sent or abs((time.time() if now is None else now) - sent) > tolerance:  # NaN too
        return False
    try:
        given = header.encode("ascii")
    except (AttributeError, UnicodeEncodeError):
        return False
    # compare_digest: the time taken must not tell an attacker how many leading characters match.
    return hmac.compare_digest(given, sign(secret, timestamp, body).encode("ascii"))


def redact_url(url: str) -> str:
    """`url` without userinfo, query or fragment, and with only the first path segment: the
    form that may appear in logs. Incoming-webhook URLs (Slack's /services/T…/B…/secret) carry
    their credential in the path."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"  # IPv6 literal
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return "<unparseable url>"
    segs = [p for p in parts.path.split("/") if p]
    path = "/" + segs[0] + ("/…" if len(segs) > 1 else "") if segs else ""
    return f"{parts.scheme}://{host}{port}{path}"


# -- bodies -------------------------------------------------------------------------------------

def _iso_utc(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _json_body(event: str, delivery: str, at: float, data: dict) -> bytes:
    # default=str: a value orjson cannot encode (a Decimal, an enum) is announced as its text
    # instead of losing the whole event.
    return orjson.dumps({"event": event, "delivery": delivery, "time": _iso_utc(at), "data": data},
                        default=str, option=orjson.OPT_NON_STR_KEYS)


def _slack_escape(text: str) -> str:
    # Slack parses <...> as links and mentions even in code blocks; statements and reasons come
    # from users, so `<!channel>` inside one must stay text.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _one_line(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _iso_utc(value)  # expires_at and friends may arrive as unix seconds
    return _WS.sub(" ", str(value)).strip()


# event -> status to show when the data does not carry one
_EVENT_STATUS = {"approval.created": "pending", "approval.decided": "decided",
                 "approval.expired": "expired", "approval.cancelled": "cancelled"}


def slack_summary(event: str, data: dict) -> str:
    """One line for notifications and the message preview, from whichever keys are present."""
    rid = data.get("id")
    status = data.get("status") or _EVENT_STATUS.get(event, event)
    parts = [f"Approval request {_one_line(rid)}" if rid is not None else "Approval request",
             _one_line(status)]
    line = " ".join(parts)
    who = data.get("requester")
    conn = data.get("connection")
    if who is not None or conn is not None:
        line += ":"
        if who is not None:
            line += f" {_one_line(who)}"
        if conn is not None:
            line += f" on {_one_line(conn)}"
    if data.get("rule") is not None:
        line += f" (rule {_one_line(data['rule'])})"
    if data.get("decided_by") is not None:
        line += f", by {_one_line(data['decided_by'])}"
    if data.get("reason"):
        line += f": {_one_line(data['reason'])}"
    if status == "pending" and data.get("expires_at") is not None:
        line += f", expires {_one_line(data['expires_at'])}"
    return line


def _slack_body(event: str, data: dict) -> bytes:
    summary = _slack_escape(slack_summary(event, data))
    blocks: list[dict] = [{"type": "section", "text": {"type": "mrkdwn", "text": f"*{summary}*"}}]
    fields = []
    for key, label in (("id", "Request"), ("requester", "Requester"), ("connection", "Connection"),
                       ("rule", "Rule"), ("status", "Status"), ("decided_by", "Decided by"),
                       ("reason", "Reason"), ("expires_at", "Expires")):
        value = data.get(key)
        if value is not None and value != "":
            fields.append({"type": "mrkdwn",
                           "text": f"*{label}*\n{_slack_escape(_one_line(value))[:1900]}"})
    if fields:  # Slack refuses an empty `fields`; it allows at most 10 (we have 8 at most)
        blocks.append({"type": "section", "fields": fields})
    statement = data.get("statement")
    if statement:
        text = str(statement)
        if len(text) > _SLACK_STATEMENT_MAX:
            text = text[:_SLACK_STATEMENT_MAX] + "\n…"
        # A ``` inside the statement would close the fence early; a zero-width space breaks it.
        text = _slack_escape(text).replace("```", "`\u200b``")
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"```{text}```"}})
    return orjson.dumps({"text": summary, "blocks": blocks})


# -- the sender ---------------------------------------------------------------------------------

@dataclass(slots=True)
class _Item:
    event: str
    data: dict
    at: float                      # when it was published; the body's "time"


@dataclass(slots=True)
class _Hook:
    config: WebhookConfig
    log_url: str                   # redact_url(config.url)
    secret: bytes | None
    queue: deque[_Item] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    busy: _Item | None = None      # the item being delivered, so close() can count it
    overflowing: bool = False      # a drop was logged and the queue has not accepted since
    delivered: int = 0
    failed: int = 0
    dropped: int = 0
    retries: int = 0


class WebhookSender:
    """Delivers published approval events to every hook subscribed to them.

    `publish()` may be called before `start()` (events wait in the queues) and after `close()`
    (they are dropped and counted).
    """

    def __init__(self, hooks: Sequence[WebhookConfig], *, queue_size: int = 1000,
                 backoff: float = 0.5, max_backoff: float = 30.0):
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self._queue_size = queue_size
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._hooks: list[_Hook] = []
        # event -> hooks subscribed to it, built once so publish() does no filtering
        self._routes: dict[str, list[_Hook]] = {}
        for cfg in hooks:
            if cfg.format not in FORMATS:
                raise ValueError(f"webhook {redact_url(cfg.url)}: unknown format {cfg.format!r}")
            hook = _Hook(cfg, redact_url(cfg.url),
                         cfg.secret.get().encode() if cfg.secret is not None else None)
            self._hooks.append(hook)
            for result in RESULTS:
                # export the zeros, so an alert on rate() works before the first event
                DELIVERIES.labels(hook.log_url, result)
            for event in dict.fromkeys(cfg.events):
                self._routes.setdefault(event, []).append(hook)
        self._session: aiohttp.ClientSession | None = None
        self._workers: list[asyncio.Task] = []
        self._closed = False

    async def start(self) -> None:
        if self._session is not None or self._closed:
            raise RuntimeError("WebhookSender.start() called twice or after close()")
        # limit=0: each worker holds at most one connection, and a hook that hangs must not
        # occupy pool slots another hook's worker is waiting for.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), headers={"User-Agent": USER_AGENT})
        self._workers = [asyncio.create_task(self._run(h), name=f"webhook {h.log_url}")
                         for h in self._hooks]

    def publish(self, event: str, data: dict) -> None:
        """Queue `event` for every hook subscribed to it. Never blocks, never raises."""
        try:
            hooks = self._routes.get(event)
            if not hooks:
                return
            # A shallow copy: the caller may reuse its dict. Serialising happens in the worker,
            # where its cost and any encoding error stay off the caller's path.
            item = _Item(event, dict(data), time.time())
            for hook in hooks:
                if self._closed or len(hook.queue) >= self._queue_size:
                    self._drop(hook, event)
                    continue
                hook.queue.append(item)
                hook.overflowing = False
                hook.wake.set()
        except Exception:  # a bug here must not fail the statement being approved
            log.exception("webhook publish of %r failed", event)

    def _drop(self, hook: _Hook, event: str) -> None:
        hook.dropped += 1
        DELIVERIES.labels(hook.log_url, "dropped").inc()
        # One line per overflow episode, not per event: a flood of drops must not become a
        # flood of log lines on the same path we are keeping fast.
        if not hook.overflowing:
            hook.overflowing = True
            log.warning("webhook %s: %s, dropping %s (and further events until it drains)",
                        hook.log_url, "sender closed" if self._closed else
                        f"queue full ({self._queue_size})", event)

    @property
    def stats(self) -> dict[str, dict[str, int]]:
        """Per configured hook URL (as configured: the caller owns it; hooks sharing a URL are
        summed): delivered, failed (gave up), dropped, retries."""
        out: dict[str, dict[str, int]] = {}
        for h in self._hooks:
            s = out.setdefault(h.config.url,
                               {"delivered": 0, "failed": 0, "dropped": 0, "retries": 0})
            s["delivered"] += h.delivered
            s["failed"] += h.failed
            s["dropped"] += h.dropped
            s["retries"] += h.retries
        return out

    async def close(self, timeout: float = 2.0) -> None:
        """Let the workers finish what is queued for up to `timeout` seconds, then cancel them.
        Whatever was still queued or in flight is counted as dropped."""
        if self._closed:
            return
        self._closed = True
        for h in self._hooks:
            h.wake.set()
        if self._workers:
            done, pending = await asyncio.wait(self._workers, timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        lost = 0
        for h in self._hooks:
            n = len(h.queue) + (h.busy is not None)
            h.queue.clear()
            h.busy = None
            if n:
                h.dropped += n
                lost += n
                DELIVERIES.labels(h.log_url, "dropped").inc(n)
        if lost:
            log.warning("webhooks: %d deliveries not made before shutdown", lost)
        if self._session is not None:
            await self._session.close()

    # -- worker ---------------------------------------------------------------------------------

    async def _run(self, hook: _Hook) -> None:
        while True:
            while hook.queue:
                hook.busy = hook.queue.popleft()
                try:
                    await self._deliver(hook, hook.busy)
                except Exception:  # a bug must cost one delivery, not the hook's worker
                    log.exception("webhook %s: delivery crashed", hook.log_url)
                    self._count(hook, "failed")
                hook.busy = None
            if self._closed:
                return
            hook.wake.clear()
            await hook.wake.wait()

    def _count(self, hook: _Hook, result: str) -> None:
        if result == "delivered":
            hook.delivered += 1
        else:
            hook.failed += 1
        DELIVERIES.labels(hook.log_url, result).inc()

    async def _deliver(self, hook: _Hook, item: _Item) -> None:
        cfg = hook.config
        delivery = str(uuid.uuid4())
        try:
            body = (_slack_body(item.event, item.data) if cfg.format == "slack"
                    else _json_body(item.event, delivery, item.at, item.data))
        except (TypeError, ValueError, orjson.JSONEncodeError) as e:
            log.error("webhook %s: cannot encode %s event: %s", hook.log_url, item.event,
                      type(e).__name__)
            self._count(hook, "failed")
            return
        timeout = aiohttp.ClientTimeout(total=cfg.timeout)
        assert self._session is not None
        attempts = max(1, cfg.max_attempts)
        outcome = "?"
        for attempt in range(attempts):
            if attempt:
                hook.retries += 1
            # Fresh per attempt: a retry minutes later must still pass the receiver's tolerance.
            stamp = str(int(time.time()))
            headers = {"Content-Type": "application/json", "X-Hoopwire-Event": item.event,
                       "X-Hoopwire-Delivery": delivery, "X-Hoopwire-Timestamp": stamp}
            if hook.secret is not None:
                headers["X-Hoopwire-Signature"] = sign(hook.secret, stamp, body)
            retry_after: str | None = None
            try:
                # No redirects: following one would send the signed body to a host nobody
                # configured.
                async with self._session.post(cfg.url, data=body, headers=headers,
                                              timeout=timeout, allow_redirects=False) as resp:
                    status = resp.status
                    retry_after = resp.headers.get("Retry-After")
            except asyncio.TimeoutError:
                outcome = "timeout"
            except aiohttp.ClientError as e:
                outcome = type(e).__name__  # never str(e): some carry the full URL
            else:
                if 200 <= status < 300:
                    self._count(hook, "delivered")
                    return
                outcome = f"HTTP {status}"
                if not (status >= 500 or status == 429):
                    break  # the receiver refused this request; sending it again will not help
            if attempt + 1 < attempts:
                await asyncio.sleep(self._delay(attempt, retry_after))
        log.warning("webhook %s: giving up on %s delivery %s after %d attempt(s): %s",
                    hook.log_url, item.event, delivery, attempt + 1, outcome)
        self._count(hook, "failed")

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after is not None:
            # Only the delta-seconds form; an HTTP-date falls back to our own backoff.
            try:
                wanted = float(retry_after)
            except ValueError:
                pass
            else:
                if wanted >= 0 and wanted == wanted:
                    return min(wanted, self._max_backoff)
        base = self._backoff * 2 ** attempt
        return min(self._max_backoff, base * random.uniform(1 - JITTER, 1 + JITTER))
