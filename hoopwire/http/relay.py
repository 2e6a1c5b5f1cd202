"""The HTTP/1.1 relay: one per client connection, an asyncio Protocol on both sides.

Every byte the client sends is parsed once (hoopwire.http._parse.RequestParser) into events
(HEAD, BODY, END, ERROR); each request is authenticated (the identity cached per token string
for the connection), judged by the session's guardrails, its head rebuilt once (the identity
header and hop-by-hop fields out, the stored credential, Host and X-Forwarded-* and
X-Request-Id in) and sent upstream on a pooled connection; its body goes on as the raw slices
the parser cut, never re-framed. The response comes back through the upstream's
ResponseParser the same way. One request is in flight per client connection; pipelined ones
are parsed as they arrive and wait (the client is paused past 64 KiB of them).

The relay is the core's RelayHandle for the connection's current Session: a Session is per
identity, so a request that authenticates as someone else ends the first (reason
"identity_changed") and starts another on the same connection.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import time

from hoopwire.http import errors
from hoopwire.http._relay import plain_coding as _plain
from hoopwire.http.jsonmask import SNIFF_BYTES, MaskTimeout, _clock as _mask_clock, sniff
from hoopwire.identity import AuthError
from hoopwire.logs import event

log = logging.getLogger("hoopwire.http")

__all__ = ["Relay"]

HEAD, BODY, END, ERROR = 1, 2, 3, 4
B_NONE, B_LENGTH, B_CHUNKED, B_CLOSE = 0, 1, 2, 3

# Pipelined requests waiting behind the one in flight before the client is paused (the
# contract's 64 KiB); the body of a request whose upstream connection is not ready yet is
# bounded the same way.
BACKLOG_MAX = 64 * 1024
# Identities cached per connection: one token per connection is the rule; a client rotating
# through more is served, the oldest entry dropped.
TOKENS_MAX = 8
# Verdicts cached per connection (Relay.verdicts): an agent repeats a few method+target shapes;
# bounded, dropped whole when full (cheaper than an LRU per request)
VERDICTS_MAX = 256

# RFC 9110 7.6.1: the fields a proxy never forwards (with those the Connection field names);
# Transfer-Encoding is forwarded as is because the body is forwarded as it was framed.
_HOP = frozenset((b"connection", b"proxy-connection", b"keep-alive", b"te", b"upgrade",
                  b"http2-settings", b"expect", b"x-request-id", b"x-forwarded-for",
                  b"x-forwarded-proto", b"x-forwarded-host", b"forwarded",
                  b"proxy-authorization", b"authorization", b"host", b"trailer"))
_RESP_HOP = frozenset((b"connection", b"proxy-connection", b"keep-alive", b"upgrade",
                       b"proxy-authenticate"))
_IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"))
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

# Request ids: 16 hex digits, a random prefix per process and a counter (os.urandom per request
# cost 1.5 us of the ~30 us of Python a request takes here; unique across workers all the same)
_RID_PREFIX = os.urandom(4).hex().encode()
# the audit tags of a status ("HTTP 200"), made once per status
_STATUS_TAGS: dict[int, tuple] = {}
_rid_count = itertools.count(1)


def new_request_id() -> bytes:
    return b"%s%08x" % (_RID_PREFIX, next(_rid_count) & 0xFFFFFFFF)


class _Req:
    """One request, from its head to the end of its response."""

    __slots__ = ("head", "rid", "started", "method", "path", "text", "up", "out_head",
                 "pending", "pending_bytes", "req_done", "resp_started", "resp_close",
                 "skip_end", "up_deadline", "retried", "body_sent", "phase", "inspect", "status",
                 "close_after", "identity", "error", "keep_alive", "sent_at", "up_reusable",
                 "dechunk", "mask", "masked", "shape", "carry", "reframe", "redacted")

    def __init__(self, head, rid: bytes):
        self.head = head
        self.rid = rid
        self.started = time.time()
        self.method = head.method
        self.path = b""
        self.text = None
        self.up = None
        self.out_head = None
        self.pending = []            # body slices waiting for the upstream connection
        self.pending_bytes = 0
        self.req_done = False        # the request's END was parsed
        self.resp_started = False    # a byte of the response went to the client
        self.resp_close = False
        self.skip_end = False        # the END of a 1xx response
        self.up_deadline = 0.0       # monotonic time upstream_timeout ends (0: none)
        self.retried = False
        self.body_sent = False
        self.phase = "auth"          # auth -> inspect? -> held? -> connect -> forward
        self.inspect = None          # the body prefix guardrails see (bytearray)
        self.status = 0
        self.close_after = False
        self.identity = None
        self.error = None            # what the audit records as its error
        self.keep_alive = head.keep_alive
        self.sent_at = 0.0
        self.up_reusable = False     # the upstream allows another request on its connection
        self.dechunk = False         # an HTTP/1.0 client gets a chunked body's data only
        self.mask = None             # the response's _Masking while masking rules apply
        self.masked = 0              # values masked in its response
        self.shape = None            # the Host when the request text is method+target+Host
        self.carry = None            # the body's bytes held back by the secret scan, or None
        self.reframe = False         # a chunked body re-chunked as the scan sends it
        self.redacted = 0            # forms of the stored credential redacted (issue 21)


class Relay(asyncio.Protocol):
    """One client connection (RelayHandle for its current Session)."""

    def __init__(self, listener, peer: str, tls: bool, writer=None):
        self.listener = listener
        self.cfg = listener.cfg
        self.conf = listener.conf         # the per-configuration constants (HttpConf)
        self.stats = listener.stats
        self.peer = peer
        self.peer_ip = peer.rsplit(":", 1)[0].strip("[]").encode()
        self.tls = tls
        # the X-Forwarded-For and -Proto lines of every request of the connection, made once
        self.xff = b"X-Forwarded-For: " + self.peer_ip + (
            b"\r\nX-Forwarded-Proto: https\r\n" if tls else b"\r\nX-Forwarded-Proto: http\r\n")
        self.writer = writer              # the handshake's StreamWriter: it closes on collection
        self.transport = None
        c = self.conf
        self.parser = c.new_request_parser()
        self.queue: collections.deque = collections.deque()
        self.backlog = 0                  # bytes of events queued behind the request in flight
        self.cur: _Req | None = None
        self.session = None
        self.policy = None                # RelayHandle: the session's GroupPolicy (reload swaps)
        self.reads_body = False           # some rule of it reads request bodies
        self.tokens: dict[bytes, tuple] = {}   # token -> (identity, policy)
        # (method, target, Host) -> (canonical target, request text) of requests without a
        # body that no rule matched under the current policy: the next one skips the target's
        # canonical form, the request text and the policy lookup (set_policy empties it). Only
        # for heads whose guardrail text is made of the method, target and Host alone
        # (Rewriter.scan) and with no body (nothing of a body or trailer is in the text)
        self.verdicts: dict[tuple, tuple] = {}
        self.held = False
        self.units_sent = 0
        self.units_done = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.last_active = time.monotonic()
        self.refusing: bytes | None = None
        self.closed = False
        self.pauses: set[str] = set()
        self.out_paused = False           # the client's socket is full: upstream reading paused
        # monotonic time request_timeout ends (0: none): checked by the listener's tick
        # (hoopwire.http.session), not a loop timer per request -- arming and cancelling two
        # call_later handles cost 3.5 us a request here, the tick nothing per request
        self.deadline = 0.0
        self.busy = False                 # a coroutine (auth, connect) works on `cur`
        self.eof = False                  # the client half-closed: close once answered

    # -- the client's transport --------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        self._arm_request_timer()

    def data_received(self, data: bytes) -> None:
        n = len(data)
        self.bytes_in += n
        self.stats.bytes_from_client += n
        self.last_active = time.monotonic()
        cur = self.cur
        if cur is not None and cur.req_done:
            self.backlog += n
            if self.backlog > BACKLOG_MAX:
                self.pause_client("backlog")
        try:
            events = self.parser.feed(data)
        except Exception:  # noqa: BLE001 -- a parser fault is ours: the client hears 500
            log.exception("request parser failed", extra={"fields": {"connection": self.cfg.name}})
            self._fail(500, "internal", "internal error in the gateway")
            return
        if events:
            self.queue.extend(events)
            if not self.busy:
                self._pump()

    def eof_received(self):
        self.eof = True
        events = self.parser.feed_eof()
        if events:
            self.queue.extend(events)
            if not self.busy:
                self._pump()
        if self.cur is None and not self.queue:
            return False         # nothing in flight: close
        return True              # half-closed: answer what was asked, then close

    def connection_lost(self, exc) -> None:
        if self.closed:
            return
        self.closed = True
        self._cancel_timers()
        cur = self.cur
        if cur is not None and cur.up is not None:
            cur.up.abort()       # its response has no reader left
        self._end_session("client_closed" if cur is None else "client_gone")

    def pause_writing(self) -> None:
        # the client reads slower than the upstream sends: stop reading the upstream
        self.out_paused = True
        cur = self.cur
        if cur is not None and cur.up is not None and not cur.up.paused:
            cur.up.paused = True
            cur.up.transport.pause_reading()

    def resume_writing(self) -> None:
        self.out_paused = False
        cur = self.cur
        if cur is not None and cur.up is not None and cur.up.paused:
            cur.up.paused = False
            cur.up.transport.resume_reading()

    def pause_client(self, why: str) -> None:
        if not self.pauses and not self.closed:
            self.transport.pause_reading()
        self.pauses.add(why)

    def resume_client(self, why: str) -> None:
        if why in self.pauses:
            self.pauses.discard(why)
            if not self.pauses and not self.closed:
                self.transport.resume_reading()

    # -- reload ------------------------------------------------------------------------------------

    def reloaded(self) -> None:
        """The listener took a new configuration (HttpListener.apply_protocol). Identities
        and policies are looked up again from now on (a guardrail applies to the next
        judgement); the new HttpConf (credential, upstream Host, limits, the request
        parser's limits) is taken now if no request is in flight, else when it ends (_finish)
        or at the next request's start (_begin), so that a request finishes with the conf it
        was sent with. (The masker is the listener's, read per response: see upstream_data.)"""
        if self.closed:
            return
        if self.cur is None and not self.queue:
            self._take_conf(True)
            return
        self.tokens.clear()
        s = self.session
        if s is not None:
            self.set_policy(self.listener.policy_for(s.identity))

    def _take_conf(self, between: bool):
        """Take the listener's current conf, and look identities and the policy up again
        (an authentication in flight during the reload stored the old policy). The request
        parser (its limits) is remade only `between` requests with no byte of the next one
        parsed (nothing queued, nothing pending)."""
        lst = self.listener
        conf = self.conf = lst.conf
        self.cfg = lst.cfg
        self.tokens.clear()
        s = self.session
        if s is not None:
            self.set_policy(lst.policy_for(s.identity))
        if between and not self.queue and not self.parser.pending:
            self.parser = conf.new_request_parser()
        return conf

    # -- requests ----------------------------------------------------------------------------------

    def _pump(self) -> None:
        """Handle the queued events while nothing waits (auth, connect, approval, response)."""
        queue = self.queue
        while queue and not self.busy and not self.closed:
            cur = self.cur
            ev = queue[0]
            kind = ev[0]
            if cur is None or cur.req_done:
                if cur is not None:
                    return             # the next request waits for this response
                queue.popleft()
                if kind == HEAD:
                    self._begin(ev[1])
                elif kind == ERROR:
                    self._refuse_parse(ev[1], ev[2])
                # a stray BODY/END cannot come without a HEAD: the parser's contract
                continue
            queue.popleft()
            if kind == BODY:
                self._body(cur, ev[1], ev[2])
            elif kind == END:
                self._request_end(cur)
            elif kind == ERROR:
                # the request broke off mid-body: what reached the upstream is not a request
                self._refuse_parse(ev[1], ev[2], cur)
            elif kind == HEAD:
                queue.appendleft(ev)   # unreachable: the parser ends a message before a head
                return
        if not queue and self.backlog:
            self.backlog = 0
            self.resume_client("backlog")

    def _begin(self, head) -> None:
        conf = self.conf
        if conf is not self.listener.conf:
            conf = self._take_conf(False)   # a reload while a request was in flight
        rid = new_request_id()
        req = self.cur = _Req(head, rid)
        if self.refusing is not None:
            self._answer(req, errors.with_request_id(self.refusing, rid), error=self.refusing)
            return
        method = head.method
        if method == b"CONNECT" or (head.upgrade and not _h2c_only(head)):
            # a tunnel carries frames no rule or mask sees
            self._answer(req, errors.response(
                501, "not_implemented", "CONNECT and protocol upgrades (websocket) are not "
                "relayed by this gateway", rid, close=True), close=True)
            return
        # _bearer(head.get(identity_header)) and the verdict cache's Host, in one C pass
        token, req.shape = conf.rw.scan(head)
        if token is None:
            self._unauthorized(req, "no_token" if head.get(conf.identity_header) is None
                               else "bad_scheme")
            return
        hit = self.tokens.get(token)
        if hit is not None:
            identity = hit[0]
            if identity.expires_at is None or identity.expires_at > req.started:
                self._admit(req, identity, hit[1])
                return
            del self.tokens[token]
        self.busy = True
        asyncio.get_running_loop().create_task(self._authenticate(req, token))

    async def _authenticate(self, req: _Req, token: bytes) -> None:
        lst = self.listener
        try:
            try:
                identity = await lst.gateway.authenticator.authenticate(token.decode("latin-1"))
            except AuthError as e:
                from hoopwire import metrics
                metrics.AUTH_FAILURES.labels(self.cfg.name, e.reason).inc()
                event(log, "request refused: authentication failed", logging.WARNING,
                      connection=self.cfg.name, peer=self.peer, reason=e.reason, detail=e.detail,
                      request_id=req.rid.decode())
                self.busy = False
                if not self.closed:
                    self._unauthorized(req, "invalid_token")
                    self._pump()
                return
            policy = None
            engine = lst.policy_engine
            if engine is not None and not engine.empty:
                # a new group set compiles its rule set: off the event loop
                policy = await asyncio.to_thread(lst.policy_for, identity)
            if len(self.tokens) >= TOKENS_MAX:
                self.tokens.pop(next(iter(self.tokens)))
            self.tokens[token] = (identity, policy)
            self.busy = False
            if not self.closed:
                self._admit(req, identity, policy)
                self._pump()
        except Exception:  # noqa: BLE001
            self.busy = False
            log.exception("request failed", extra={"fields": {"connection": self.cfg.name}})
            self._fail(500, "internal", "internal error in the gateway")

    def _unauthorized(self, req: _Req, why: str) -> None:
        msg = {"no_token": "a Bearer token is required",
               "bad_scheme": "expected Authorization: Bearer <token>",
               "invalid_token": "the token was not accepted"}[why]
        if why != "invalid_token":
            from hoopwire import metrics
            metrics.AUTH_FAILURES.labels(self.cfg.name, why).inc()
        proxy = self.conf.identity_header == b"proxy-authorization"
        self._answer(req, errors.response(
            407 if proxy else 401, "unauthorized", msg, req.rid,
            headers=((b"Proxy-Authenticate" if proxy else b"WWW-Authenticate",
                      b'Bearer realm="hoopwire"'),)))

    def _admit(self, req: _Req, identity, policy) -> None:
        """Authenticated: groups, the session, the target, the guardrails."""
        lst = self.listener
        cfg = self.cfg
        allowed = self.conf.allow_groups
        if allowed and not (identity.groups & allowed):
            from hoopwire import metrics
            metrics.AUTH_FAILURES.labels(cfg.name, "group_not_allowed").inc()
            event(log, "request refused: groups not allowed", logging.WARNING,
                  connection=cfg.name, peer=self.peer, subject=identity.subject,
                  groups=",".join(sorted(identity.groups)), request_id=req.rid.decode())
            self._answer(req, errors.response(
                403, "forbidden", f"the identity is not allowed on connection \"{cfg.name}\"",
                req.rid))
            return
        s = self.session
        if s is None or s.identity is not identity and (
                (s.identity.issuer, s.identity.subject, s.identity.groups)
                != (identity.issuer, identity.subject, identity.groups)):
            if s is not None:
                self._end_session("identity_changed")
            self.session = lst.new_session(self, identity, self.peer, self.tls)
            self.set_policy(policy)
        req.identity = identity
        head = req.head
        if req.shape is not None and self.policy is not None and head.body == B_NONE:
            hit = self.verdicts.get((head.method, head.target, req.shape))
            if hit is not None:
                # judged before, nothing matched: the same canonical target and text
                req.path, req.text = hit
                self._forward(req)
                return
        try:
            req.path = self.conf.canonical(head.target, head.method)
        except ValueError as e:
            self._answer(req, errors.response(400, "bad_target", str(e), req.rid, close=True),
                         close=True)
            return
        if self.policy is not None:
            if self.reads_body and head.body != B_NONE and head.content_length != 0:
                if head.content_length > self.conf.inspect_body_bytes:
                    self._answer(req, errors.response(
                        413, "body_too_large", "the request body is larger than the "
                        f"{self.conf.inspect_body_bytes} bytes guardrails inspect", req.rid,
                        close=True), close=True)
                    return
                req.phase = "inspect"
                req.inspect = bytearray()
                if head.expect_continue:
                    self.transport.write(_CONTINUE)
                return                   # judged at the request's END (_request_end)
            if not self._judge(req, None):
                return
        elif head.expect_continue:
            self.transport.write(_CONTINUE)
        self._forward(req)

    def _judge(self, req: _Req, body: bytes | None) -> bool:
        """The guardrails' verdict: True to forward now; False when refused or held."""
        try:
            text = req.text = self.conf.request_text(req.head, req.path, body)
        except ValueError as e:      # errors.RequestRefused: BadTarget 400, UnreadableBody 415
            status, code = getattr(e, "status", 400), getattr(e, "code", "bad_target")
            event(log, "request refused", logging.WARNING, connection=self.cfg.name,
                  peer=self.peer, status=status, reason=code, request_id=req.rid.decode())
            close = not req.req_done    # a body read whole leaves the connection in step
            self._answer(req, errors.response(status, code, str(e), req.rid, close=close),
                         close=close)
            return False
        verdict = self.policy.check(text)
        if verdict is None:
            head = req.head
            if body is None and req.shape is not None and head.body == B_NONE and \
                    text == _shape_text(head.method, req.path, req.shape):
                verdicts = self.verdicts
                if len(verdicts) >= VERDICTS_MAX:
                    verdicts.clear()
                verdicts[(head.method, head.target, req.shape)] = (req.path, text)
            return True
        s = self.session
        if verdict.action == "block":
            s.statement_blocked(self, verdict, text)
            msg = f"request blocked by hoopwire rule \"{verdict.rule}\"" + (
                f": {verdict.message}" if verdict.message else "")
            self._answer(req, errors.response(403, "blocked", msg, req.rid),
                         error=errors.response(403, "blocked", self.conf.marker + " " + msg))
            return False
        if verdict.action == "approve":
            rid = s.statement_held(self, verdict, text)
            if rid is None:
                return True              # a standing grant
            req.phase = "held"
            self.held = True
            self.busy = True
            return False
        s.statement_matched(self, verdict, text)
        return True

    def set_policy(self, policy) -> None:
        from hoopwire.http.session import request_reads_body
        self.policy = policy
        self.reads_body = request_reads_body(policy)
        self.verdicts = {}               # judged by the policy before: judged again

    def decide(self, approved: bool, error) -> None:
        """RelayHandle: the held request's approval was decided (or expired)."""
        req = self.cur
        if not self.held or req is None or self.closed:
            return
        self.held = False
        self.busy = False
        if approved:
            self._forward(req)
        else:
            err = errors.with_request_id(error, req.rid) if error else errors.response(
                403, "not_approved", "the request was not approved", req.rid)
            self._answer(req, err, error=err)
        self._pump()

    def _body(self, req: _Req, raw, data) -> None:
        phase = req.phase
        if phase == "forward":
            req.up.write(raw)
            req.body_sent = True
            return
        if phase == "inspect":
            if len(req.inspect) + len(data) > self.conf.inspect_body_bytes:
                self._answer(req, errors.response(
                    413, "body_too_large", "the request body is larger than the "
                    f"{self.conf.inspect_body_bytes} bytes guardrails inspect", req.rid,
                    close=True), close=True)
                return
            req.inspect += data
        elif phase == "answered":
            return                       # the body of a refused request: read and dropped
        req.pending.append(bytes(raw))
        req.pending_bytes += len(raw)
        if req.pending_bytes > BACKLOG_MAX:
            self.pause_client("body")

    def _request_end(self, req: _Req) -> None:
        req.req_done = True
        self._cancel_request_timer()
        if req.phase == "inspect":
            if not self._judge(req, bytes(req.inspect)):
                return
            self._forward(req)
        elif req.phase == "answered":
            self._finish(req)

    # -- upstream ----------------------------------------------------------------------------------

    def _forward(self, req: _Req) -> None:
        req.phase = "connect"
        # HttpConf.build_head, in C
        req.out_head = self.conf.rw.request(req.head, req.path, self.xff, req.rid)
        pool = self.listener.pool
        up = pool.take_idle()
        if up is not None:
            self._attach(req, up)
            return
        self.busy = True
        asyncio.get_running_loop().create_task(self._connect(req, pool))

    async def _connect(self, req: _Req, pool) -> None:
        from hoopwire.http.upstream import UpstreamUnavailable
        try:
            up = await pool.open()
        except UpstreamUnavailable as e:
            self.busy = False
            event(log, "upstream unavailable", logging.ERROR, connection=self.cfg.name,
                  error=str(e), request_id=req.rid.decode())
            if not self.closed:
                self._upstream_failed(req, 502, "upstream_unavailable",
                                      "the upstream service cannot be reached")
                self._pump()
            return
        except Exception:  # noqa: BLE001
            self.busy = False
            log.exception("upstream connect failed",
                          extra={"fields": {"connection": self.cfg.name}})
            self._fail(500, "internal", "internal error in the gateway")
            return
        self.busy = False
        if self.closed or self.cur is not req:
            pool.release(up, True)
            return
        self._attach(req, up)
        self._pump()

    def _attach(self, req: _Req, up) -> None:
        req.up = up
        up.relay = self
        up.parser.expect(req.method)
        req.phase = "forward"
        if req.pending:
            up.transport.write(req.out_head + b"".join(req.pending))
            req.pending = []
            req.body_sent = True
            if req.pending_bytes > BACKLOG_MAX:
                self.resume_client("body")
            req.pending_bytes = 0
        else:
            up.transport.write(req.out_head)   # (up.write's body: a Python call less)
        if self.out_paused:
            up.paused = True
            up.transport.pause_reading()
        self.units_sent += 1
        self.stats.queries += 1
        req.sent_at = now = time.monotonic()
        req.up_deadline = now + self.conf.upstream_timeout

    def _upstream_timeout(self, req: _Req) -> None:
        req.up_deadline = 0.0
        if self.cur is not req or req.resp_started:
            return
        event(log, "upstream timed out", logging.WARNING, connection=self.cfg.name,
              timeout=self.conf.upstream_timeout, request_id=req.rid.decode())
        up = req.up
        req.up = None
        if up is not None:
            up.abort()
        self._upstream_failed(req, 504, "upstream_timeout",
                              f"the upstream did not answer within {self.conf.upstream_timeout:g}s")
        self._pump()

    def upstream_data(self, up, data: bytes) -> None:
        req = self.cur
        if req is None or req.up is not up:
            up.close()
            return
        req.up_deadline = 0.0
        n = len(data)
        self.bytes_out += n
        self.stats.bytes_from_upstream += n
        try:
            events = up.parser.feed(data)
        except Exception:  # noqa: BLE001
            log.exception("response parser failed",
                          extra={"fields": {"connection": self.cfg.name}})
            events = [(ERROR, 502, "parser fault")]
        # one write per read from the upstream: head and body in one send (two sends cost a
        # syscall more, and a client's stack may wait for the second)
        out: list = []
        write = out.append
        scan = self.conf.secret_scan
        for ev in events:
            kind = ev[0]
            if kind == BODY:
                if req.mask is not None:
                    if not req.mask.body(ev[2]):
                        self._unmaskable(req, up)
                        return
                elif scan is not None:
                    data = self._scan_body(req, scan, ev[2])
                    if data:
                        write(data)
                else:
                    write(ev[2] if req.dechunk else ev[1])
            elif kind == HEAD:
                head = ev[1]
                if head.status < 200:
                    # 1xx: the gateway answered 100-continue itself; interim responses are
                    # not relayed (an HTTP/1.0 client must never see one)
                    req.skip_end = True
                    continue
                req.status = head.status
                req.resp_started = True
                req.up_reusable = head.keep_alive and head.body != B_CLOSE
                # the listener's masker, not the conf's: rules a reload added apply to every
                # response not started yet, even of a request sent before it (a compressed one
                # is then refused, 502, never passed unmasked)
                lst = self.listener
                masker = lst.masker
                if masker is not None and head.body != B_NONE:
                    # what masking a Content-Type gets, cached per listener and masker
                    # (media_type and wants were 4 Python calls a masked response)
                    ctype = head.get(b"content-type")
                    kinds = lst.mask_kinds
                    kind = kinds.get(ctype)
                    if kind is None:
                        kind = masker.wants(ctype)
                        if len(kinds) < 64:
                            kinds[ctype] = kind
                    if kind != "pass":
                        if not _plain(head):
                            req.resp_started = False
                            self._unmaskable(req, up)     # the masker reads plain bytes only
                            return
                        req.mask = _Masking(self, req, head, masker, kind)
                        req.resp_started = False          # until the masked head is sent
                        if not req.mask.start():
                            self._unmaskable(req, up)
                            return
                        continue
                # HttpConf.response_head(req, head), in C
                data, req.resp_close, dechunk = self.conf.rw.response(
                    head, req.head.version == 10, req.req_done, req.keep_alive, req.rid)
                if dechunk:
                    req.dechunk = True
                if scan is not None:
                    if head.body != B_NONE and not _plain(head):
                        req.resp_started = False
                        self._unscannable(req, up)
                        return
                    req.reframe = head.body == B_CHUNKED and not req.dechunk
                    data, hits = scan.redact(data)
                    if hits:
                        self._credential_echo(req, hits, "head")
                write(data)
            elif kind == END:
                if req.skip_end:
                    req.skip_end = False
                    continue
                if req.mask is None and scan is not None and (req.carry is not None or
                                                              req.reframe):
                    write(self._scan_end(req, ev[1]))
                if out:
                    self.transport.write(b"".join(out))
                if req.mask is not None:
                    req.mask.end(up)    # answers, or hands the body to the masking thread
                    return
                self._response_end(req, up)
                return
            else:
                if out:
                    self.transport.write(b"".join(out))
                self._bad_upstream(req, up, ev[2])
                return
        if out:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def upstream_lost(self, up, exc) -> None:
        req = self.cur
        if req is None or req.up is not up:
            return
        if req.resp_started:
            events = up.parser.feed_eof()
            scan = self.conf.secret_scan
            for ev in events:
                if ev[0] == BODY:
                    if req.mask is not None:
                        if not req.mask.body(ev[2]):
                            self._unmaskable(req, None)
                            return
                    elif scan is not None:
                        self.transport.write(self._scan_body(req, scan, ev[2]))
                    else:
                        self.transport.write(ev[2] if req.dechunk else ev[1])
                elif ev[0] == END:
                    if req.mask is not None:
                        req.mask.end(None)
                        return
                    if scan is not None and (req.carry is not None or req.reframe):
                        self.transport.write(self._scan_end(req, ev[1]))
                    self._response_end(req, None)
                    return
            # cut off mid-response: the client must not take a partial body for a whole one
            event(log, "upstream closed mid-response", logging.WARNING,
                  connection=self.cfg.name, request_id=req.rid.decode())
            req.up = None
            self._close("upstream_closed", abort=True)
            return
        req.up_deadline = 0.0
        req.up = None
        if up.reused and not req.retried and req.method in _IDEMPOTENT and \
                req.head.body == B_NONE:
            # a pooled connection the server had closed: once more on a fresh one
            req.retried = True
            self.units_sent -= 1
            self.stats.queries -= 1
            self.busy = True
            asyncio.get_running_loop().create_task(self._connect(req, self.listener.pool))
            return
        event(log, "upstream closed before answering", logging.WARNING,
              connection=self.cfg.name, request_id=req.rid.decode(),
              error=type(exc).__name__ if exc else "eof")
        self._upstream_failed(req, 502, "upstream_closed",
                              "the upstream closed the connection without answering")
        self._pump()

    # -- the stored credential in responses (issue 21; the C twin: hoopwire.http._relay) ---------

    def _scan_body(self, req: _Req, scan, data: bytes) -> bytes:
        """A read of a response body with the stored credential's forms redacted; its last
        bytes that begin a form held back (req.carry); a chunked body re-chunked (req.reframe:
        the chunk framing the upstream sent is not where the data's bytes are)."""
        out, req.carry, hits = scan.step(req.carry, bytes(data), False)
        if hits:
            self._credential_echo(req, hits, "body")
        if req.reframe and out:
            return b"%x\r\n%b\r\n" % (len(out), out)
        return out

    def _scan_end(self, req: _Req, trailers) -> bytes:
        """The end of a scanned body: what was held back (no form completes in it any more)
        and, re-chunked, the last chunk and the trailers the upstream sent, redacted."""
        tail, req.carry = req.carry or b"", None
        if not req.reframe:
            return tail
        if tail:
            tail = b"%x\r\n%b\r\n" % (len(tail), tail)
        fields = b"".join(name + b": " + value + b"\r\n" for name, value in trailers)
        if fields:
            fields, hits = self.conf.secret_scan.redact(fields)
            if hits:
                self._credential_echo(req, hits, "trailer")
        return tail + b"0\r\n" + fields + b"\r\n"

    def _credential_echo(self, req: _Req, hits: int, where: str) -> None:
        """The upstream's response carried the stored credential, redacted: counted as
        hoopwire_masked_values{name="upstream-credential"} and in the request's audit count,
        logged once per response (never the secret)."""
        first = not req.redacted
        req.redacted += hits
        req.masked += hits
        k = (self.cfg.name, CREDENTIAL_KEY)
        _MASK_PENDING[k] = _MASK_PENDING.get(k, 0) + hits
        if first:
            event(log, "the upstream's response carried the stored credential: redacted",
                  logging.WARNING, connection=self.cfg.name, request_id=req.rid.decode(),
                  status=req.status, where=where)

    def _unscannable(self, req: _Req, up) -> None:
        """A compressed response on a connection with a stored credential: the gateway asked
        for identity (Accept-Encoding) and cannot read the body for the credential, so 502 and
        nothing of it leaves, as for a body masking cannot read."""
        event(log, "response refused: compressed, so it cannot be checked for the stored "
              "credential", logging.WARNING, connection=self.cfg.name,
              request_id=req.rid.decode(), status=req.status)
        if up is not None:
            up.abort()
        req.up = None
        self._upstream_failed(req, 502, "unscannable_response",
                              "the upstream's response is compressed although identity was "
                              "asked for: it cannot be checked for the stored credential")
        self._pump()

    def _unmaskable(self, req: _Req, up) -> None:
        """A response masking rules apply to that cannot be masked (not JSON where key paths
        apply, over mask_body_bytes, compressed): 502, and nothing of its body leaves."""
        event(log, "response could not be masked", logging.WARNING, connection=self.cfg.name,
              request_id=req.rid.decode(), status=req.status)
        if up is not None:
            up.abort()
        req.up = None
        if req.resp_started:
            self._close("mask_error", abort=True)
            return
        self._upstream_failed(req, 502, "unmaskable_response",
                              "the upstream's response could not be masked")
        self._pump()

    def _bad_upstream(self, req: _Req, up, reason: str) -> None:
        event(log, "bad response from the upstream", logging.ERROR, connection=self.cfg.name,
              error=reason, request_id=req.rid.decode())
        req.up = None
        up.abort()
        if req.resp_started:
            self._close("upstream_protocol_error", abort=True)
            return
        self._upstream_failed(req, 502, "bad_upstream_response",
                              "the upstream's response was not valid HTTP/1.1")
        self._pump()

    def _upstream_failed(self, req: _Req, status: int, code: str, message: str) -> None:
        """No response will come: the client hears `status`; the connection stays if the
        request was read whole."""
        if req.up is not None:
            req.up.abort()
            req.up = None
        self.units_done += 1 if req.phase == "forward" else 0
        close = not req.req_done
        self._answer(req, errors.response(status, code, message, req.rid, close=close),
                     close=close)

    def _response_end(self, req: _Req, up) -> None:
        self.units_done += 1
        if req.sent_at:
            # request sent -> response complete: hoopwire_statement_seconds, as a statement's
            self.stats.observe(time.monotonic() - req.sent_at)
        if up is not None:
            req.up = None
            # its own pool: a reload that changed the upstream made a new listener.pool, and
            # the old upstream's connection must close there, not serve the new one's requests
            up.pool.release(up, req.up_reusable and req.req_done)
        self._finish(req)

    # -- answers the gateway makes itself ----------------------------------------------------------

    def _answer(self, req: _Req, resp: bytes, *, close: bool = False, error=None) -> None:
        """Answer `req` with a gateway-made response; its body (if any) is read and dropped."""
        if req.up is not None:
            req.up.abort()
            req.up = None
        req.up_deadline = 0.0
        req.status = int(resp[9:12])
        req.error = error if error is not None else resp
        req.phase = "answered"
        self.transport.write(resp)
        req.resp_started = True
        if close or b"\r\nConnection: close\r\n" in resp[:resp.find(b"\r\n\r\n") + 2]:
            req.close_after = True
        if req.close_after or req.req_done:
            self._finish(req)
        # else: _request_end finishes it once the body is read

    def _refuse_parse(self, status: int, reason: str, req: _Req | None = None) -> None:
        """The parser refused the client's bytes: 4xx/5xx JSON and close (a parse error leaves
        no way to find where the next request would start)."""
        rid = new_request_id()
        event(log, "bad request", logging.WARNING, connection=self.cfg.name, peer=self.peer,
              status=status, reason=reason, request_id=rid.decode())
        code = {400: "bad_request", 413: "body_too_large", 414: "uri_too_long",
                431: "headers_too_large", 501: "not_implemented",
                505: "version_not_supported", 408: "request_timeout"}.get(status, "bad_request")
        resp = errors.response(status, code, reason, rid, close=True)
        if req is not None and req.resp_started:
            self._close("client_protocol_error", abort=True)
            return
        if req is not None and req.up is not None:
            req.up.abort()
            req.up = None
        self.transport.write(resp)
        self._close("client_protocol_error")

    def _finish(self, req: _Req) -> None:
        """The request's exchange is over: record it, then the next one (or close)."""
        if self.cur is not req:
            return
        self.cur = None
        self._record(req)
        if req.close_after or not req.keep_alive or req.resp_close or not req.req_done or \
                (self.eof and not self.queue):
            self._close("client_done")
            return
        if self.conf is not self.listener.conf and not self.queue:
            self._take_conf(True)       # a reload during the request: its conf from now on
        self.deadline = time.monotonic() + self.conf.request_timeout   # _arm_request_timer
        if self.queue and not self.busy:
            self._pump()

    def _fail(self, status: int, code: str, message: str) -> None:
        if self.closed:
            return
        req = self.cur
        if req is None or not req.resp_started:
            self.transport.write(errors.response(
                status, code, message, req.rid if req is not None else errors.RID_PLACEHOLDER,
                close=True))
        self._close("internal_error", abort=req is not None and req.resp_started)

    # -- recording ---------------------------------------------------------------------------------

    def _record(self, req: _Req) -> None:
        s = self.session
        if s is None or req.identity is None:
            return
        log_ = s.statements
        if log_ is None:
            return
        text = req.text
        if text is None:
            text = req.method + b" " + (req.path or req.head.target)
        tags = _STATUS_TAGS.get(req.status)
        if tags is None:
            tags = _STATUS_TAGS[req.status] = (b"HTTP %d" % req.status,)
        log_.add_raw((req.started, time.time(), text, tags, req.error, req.masked, None))

    # -- timers ------------------------------------------------------------------------------------

    def _arm_request_timer(self) -> None:
        self.deadline = time.monotonic() + self.conf.request_timeout

    def _cancel_request_timer(self) -> None:
        self.deadline = 0.0

    def tick(self, now: float) -> None:
        """The listener's tick (every TICK s): the timeouts due."""
        if self.deadline and now >= self.deadline:
            self._request_timeout()
        cur = self.cur
        if cur is not None and cur.up_deadline and now >= cur.up_deadline:
            self._upstream_timeout(cur)

    def _request_timeout(self) -> None:
        self.deadline = 0.0
        if self.closed:
            return
        cur = self.cur
        if cur is not None and cur.req_done:
            return                      # waiting for the upstream: upstream_timeout's case
        if cur is None and not self.queue and not self.parser.pending:
            self._close("idle_timeout")  # an idle keep-alive connection: closed quietly
            return
        rid = cur.rid if cur is not None else new_request_id()
        event(log, "request timed out", logging.WARNING, connection=self.cfg.name,
              peer=self.peer, timeout=self.conf.request_timeout, request_id=rid.decode())
        if cur is not None and cur.resp_started:
            self._close("request_timeout", abort=True)
            return
        if cur is not None and cur.up is not None:
            cur.up.abort()
            cur.up = None
        self.transport.write(errors.response(
            408, "request_timeout", f"the request was not received within "
            f"{self.conf.request_timeout:g}s", rid, close=True))
        self._close("request_timeout")

    def _cancel_timers(self) -> None:
        self.deadline = 0.0
        cur = self.cur
        if cur is not None:
            cur.up_deadline = 0.0
        self.listener.relays.discard(self)

    # -- the end -----------------------------------------------------------------------------------

    def _close(self, reason: str, abort: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        self._cancel_timers()
        cur = self.cur
        if cur is not None and cur.up is not None:
            cur.up.abort()
            cur.up = None
        if abort:
            self.transport.abort()
        else:
            self.transport.close()
        self._end_session(reason)

    def _end_session(self, reason: str) -> None:
        s = self.session
        if s is not None:
            self.session = None
            s.session_closed(self, reason)

    # -- RelayHandle -------------------------------------------------------------------------------

    def shutdown(self, reason: str, message) -> None:
        if self.closed:
            return
        cur = self.cur
        if message and (cur is None or not cur.resp_started):
            rid = cur.rid if cur is not None else errors.RID_PLACEHOLDER
            self.transport.write(errors.with_request_id(message, rid))
        self._close(reason)

    def notify_client(self, message: bytes) -> None:
        # HTTP has no unasked message to a client mid-request: the operator's log has it
        event(log, "held", connection=self.cfg.name, message=message.decode("utf-8", "replace"))

    def refuse_statements(self, error) -> None:
        self.refusing = error

    def idle_seconds(self) -> float:
        return time.monotonic() - self.last_active


# The event plumbing in C (hoopwire.http._relay, its comment has the profile that decided it):
# data_received, _pump, _forward, _attach, _request_end, upstream_data, _response_end and
# _finish are bound over the Python methods above, _Req and new_request_id replaced; the C
# hands every case but the common one back to the Python methods (_begin, _admit,
# upstream_data under masking). HOOPWIRE_HTTP_PURE=1 keeps the Python twin (the tests run
# both: tests/test_http_fastpath.py).
PURE = bool(os.environ.get("HOOPWIRE_HTTP_PURE"))
if not PURE:
    from hoopwire.http import _relay as _c

    _Req = _c.Req  # noqa: F811
    new_request_id = _c.new_request_id  # noqa: F811
    _c.install(Relay)


class _Masking:
    """One response under masking rules (hoopwire.http.jsonmask, its module doc says what the
    relay must do): a JSON body is gathered (up to mask_body_bytes), masked and sent with its
    Content-Length; text and event streams go through the detectors as they come, re-framed
    chunked (HTTP/1.1 clients) or to the close (HTTP/1.0). A body of a sniffed type found to
    be text is gathered whole when its length is known (Content-Length within max_bytes, or
    undecided until it ended) and sent with the masked length, as the unmasked one would be.

    A gathered body over OFFLOAD_BYTES is masked in the masking thread (_mask_thread) while the
    event loop serves the worker's other sessions; every gathered body has a deadline
    (JsonMasker.timeout) past which the client gets a 504 and nothing of the body. A stream's
    feed that would mask more than OFFLOAD_BYTES (its backlog, e.g. an SSE event, and the new
    bytes) goes to the thread too, one at a time and in order (what comes meanwhile is queued,
    the upstream paused), each feed under its own deadline: past it the connection is closed,
    the head having gone."""

    __slots__ = ("relay", "req", "head", "masker", "kind", "buf", "stream", "counts", "task",
                 "sniff_at", "queue", "ending", "held")

    def __init__(self, relay: Relay, req: _Req, head, masker, kind: str):
        self.relay, self.req, self.head, self.masker, self.kind = relay, req, head, masker, kind
        self.buf = None
        self.stream = None
        self.counts: dict[str, int] = {}
        self.task = None                 # the offloaded masking, while it runs
        self.sniff_at = 0                # "sniff": gathered bytes at which to decide again
        self.queue: list = []            # a stream's bytes that came while a feed was offloaded
        self.ending = False              # the upstream's response ended while one was
        self.held = False                # the upstream's reading paused by _hold

    def start(self) -> bool:
        head = self.head
        if self.kind == "sniff":
            # a type a JSON body may come under (jsonmask.wants): its first bytes decide
            # (body, _sniff); gathered meanwhile, nothing sent
            self.buf = bytearray()
            return True
        if self.kind == "json":
            too_big = head.body == B_LENGTH and head.content_length > self.masker.max_bytes
            if not too_big:
                self.buf = bytearray()
                return True
            if self.masker.has_paths:
                return False
            self.kind = "text"
        self.stream = self.masker.sse_stream() if self.kind == "sse" else \
            self.masker.text_stream()
        self._send_head(None)
        return True

    def _send_head(self, length: int | None, body: bytes = b"") -> None:
        """The response head, and with it `body` in the same write: a masked JSON body sent
        as a second write cost a second wake-up of the client (327 us of 940 per masked 1 KiB
        response under cProfile, against one write on the unmasked path)."""
        req = self.req
        req.dechunk = False
        chunked = length is None and req.head.version == 11
        relay = self.relay
        # HttpConf.response_head(req, head, length=, chunked=), in C
        head, req.resp_close = relay.conf.rw.reframed(
            self.head, req.head.version == 10, req.req_done, req.keep_alive, req.rid,
            -1 if length is None else length, chunked)
        scan = relay.conf.secret_scan
        if scan is not None:
            # what the masker made is what is scanned: it may have decoded an escaped form
            head, hits = scan.redact(head)
            if hits:
                relay._credential_echo(req, hits, "head")
            if body:
                body, hits = scan.redact(bytes(body))
                if hits:
                    relay._credential_echo(req, hits, "body")
        relay.transport.write(head + body if body else head)
        req.resp_started = True

    def _chunk(self, data: bytes, final: bool = False) -> None:
        scan = self.relay.conf.secret_scan
        if scan is not None:
            req = self.req
            data, req.carry, hits = scan.step(req.carry, bytes(data), final)
            if hits:
                self.relay._credential_echo(req, hits, "body")
        if not data:
            return
        if self.req.resp_close and self.req.head.version == 10:
            self.relay.transport.write(data)
        else:
            self.relay.transport.write(b"%x\r\n%b\r\n" % (len(data), data))

    def body(self, data) -> bool:
        if self.relay is None:
            return True                  # a stream's feed failed: the connection is closing
        if self.buf is not None:
            self.buf += data
            if self.kind == "sniff" and self.sniff_at <= min(len(self.buf), SNIFF_BYTES):
                # decided on the first SNIFF_BYTES, again each time what was gathered has
                # doubled: an open prefix costs ~75 ns a byte to sniff (~0.3 ms at 4 KiB), so
                # a pass per chunk was up to 4096 passes for a body trickled byte by byte;
                # doubling is at most 13, ~2 passes' worth. Still open past SNIFF_BYTES:
                # decided whole at the end (bounded by max_bytes)
                self.sniff_at = 2 * len(self.buf)
                if not self._sniff(False):
                    return True          # not JSON: now a stream
            if len(self.buf) <= self.masker.max_bytes:
                return True
            if self.masker.has_paths:
                return False
            # over the bound with detectors only: the text stream from here on
            pending, self.buf = bytes(self.buf), None
            self.kind = "text"
            self.stream = self.masker.text_stream()
            self._send_head(None)
            self._feed(pending)
            return True
        self._feed(bytes(data))
        return True

    def _feed(self, data: bytes) -> None:
        """A stream's next bytes, masked in order: on the loop, or queued while a feed is in
        the masking thread (the upstream paused meanwhile: _hold)."""
        if self.task is not None:
            self.queue.append(data)
            self._hold()
            return
        self._step(data, False)

    def _step(self, data: bytes, final: bool) -> None:
        """Feed the stream (and end it, final) here, or in the masking thread when the feed
        masks more than OFFLOAD_BYTES: an 8 MiB text body fed at once took 160 ms of CPU on
        the loop, a 530 KiB SSE event of JSON 38 ms (load 2.3), every other client of the
        worker stalled meanwhile."""
        stream = self.stream
        if len(data) + stream.backlog() > OFFLOAD_BYTES:
            if not final:
                self._hold()
            event(log, "masking a stream in the masking thread", logging.DEBUG,
                  connection=self.relay.cfg.name, request_id=self.req.rid.decode(),
                  bytes=len(data) + stream.backlog())
            self.task = asyncio.get_running_loop().create_task(self._offload_feed(data, final))
            return
        stream.deadline = self.masker.deadline()
        try:
            out = stream.feed(data) if data else b""
            if final:
                out += stream.end()
        except MaskTimeout:
            self._stream_failed(True)
            return
        self._chunk(out)
        if final:
            self._stream_end()

    async def _offload_feed(self, data: bytes, final: bool) -> None:
        relay, req, stream = self.relay, self.req, self.stream
        deadline = self.masker.deadline()
        stream.deadline = deadline
        stream.offloaded = True          # the thread's Scanner
        out = await self._in_thread(deadline, _mask_feed, stream, data, deadline, final)
        self.task = None
        if relay.closed or relay.cur is not req:
            return                       # the client left meanwhile
        if out is None or out is _TIMED_OUT:
            # the thread may still be in the stream: it is never fed again
            self._stream_failed(out is _TIMED_OUT)
            return
        stream.offloaded = False
        self._chunk(out)
        if final:
            self._stream_end()
            return
        data = b"".join(self.queue)
        self.queue = []
        if self.ending:
            self._step(data, True)
        elif data:
            self._step(data, False)
        if self.task is None:
            self._unhold()

    def _hold(self) -> None:
        up = self.req.up
        if up is not None and not self.held and not up.paused:
            self.held = True
            up.transport.pause_reading()

    def _unhold(self) -> None:
        up = self.req.up if self.req is not None else None
        if self.held:
            self.held = False
            if up is not None and not up.paused:
                up.transport.resume_reading()

    def _stream_end(self) -> None:
        relay, req = self.relay, self.req
        _merge_counts(self.counts, self.stream.take_counts())
        if req.carry is not None:
            self._chunk(b"", True)       # what the secret scan held back
        if not (req.resp_close and req.head.version == 10):
            relay.transport.write(b"0\r\n\r\n")
        self._count()
        self._done()
        relay._response_end(req, None)   # the upstream went back in end()

    def _stream_failed(self, timed_out: bool) -> None:
        """A stream's feed timed out or failed: its head went, so the connection is cut (a
        client must not take what came for the whole body)."""
        relay, req = self.relay, self.req
        if timed_out:
            event(log, "response masking timed out", logging.WARNING,
                  connection=relay.cfg.name, request_id=req.rid.decode(),
                  timeout=self.masker.timeout)
        self._done()
        relay._close("mask_timeout" if timed_out else "mask_error", abort=True)

    def _sniff(self, final: bool) -> bool:
        """Decide what a sniffed body is (jsonmask.sniff): JSON or JSONP stays gathered
        (True); otherwise it becomes a stream from here, with what was gathered (False)."""
        buf = self.buf
        kind = sniff(bytes(buf if final else buf[:SNIFF_BYTES]), final)
        if kind is None:
            return True
        if kind != "text":
            self.kind = "sniffed"        # JSON or JSONP: mask_sniffed (BOM, callback kept)
            return True
        head = self.head
        if final or head.body == B_LENGTH and head.content_length <= self.masker.max_bytes:
            # text of a known length: gathered whole and sent with its masked length, as the
            # unmasked body would be (streamed, it went chunked, or to an HTTP/1.0 client
            # delimited by the close, its keep-alive lost)
            self.kind = "sniffed_text"
            return True
        self.kind, self.buf = "text", None
        self.stream = self.masker.sniffed_text()
        self._send_head(None)
        self._feed(bytes(buf))
        return False

    def end(self, up) -> None:
        """The upstream's response is complete: mask what was gathered and answer (here, or
        from the masking thread's callback), then the relay's _response_end; or 502/504."""
        relay, req = self.relay, self.req
        if relay is None:
            return                       # a stream's feed failed: the connection is closing
        if self.kind == "sniff":
            self._sniff(True)
        if self.buf is None:
            # the upstream's part is over: its connection goes back to the pool now
            if up is not None:
                self._unhold()
                req.up = None
                up.pool.release(up, req.up_reusable and req.req_done)
            if self.task is not None:
                self.ending = True       # after the feed in the thread (_offload_feed)
                return
            self._step(b"", True)
            return
        body, self.buf = bytes(self.buf), None
        deadline = self.masker.deadline()
        if len(body) > OFFLOAD_BYTES:
            # the upstream's part is over: its connection goes back to the pool now, and a
            # close of it while the thread works is no concern of this response
            if up is not None:
                req.up = None
                up.pool.release(up, req.up_reusable and req.req_done)
            event(log, "masking a response in the masking thread", logging.DEBUG,
                  connection=relay.cfg.name, request_id=req.rid.decode(), bytes=len(body))
            self.task = asyncio.get_running_loop().create_task(self._offload(body, deadline))
            return
        masker = self.masker
        try:
            # _mask_body's steps, here on the loop: the tests hold _mask_body itself to stand
            # for a slow masking thread (tests/test_http_masking.py), and a Python call less
            kind = self.kind
            r = masker.mask_json(body, deadline) if kind == "json" else \
                masker.mask_sniffed(body, deadline) if kind == "sniffed" else \
                masker.mask_as_text(body, deadline)
            if r is None and not masker.has_paths:
                r = masker.mask_as_text(body, deadline)
        except MaskTimeout:
            self._timed_out(up, len(body))
            return
        except Exception:  # noqa: BLE001 -- a masker fault: the body cannot leave unmasked
            log.exception("response masking failed",
                          extra={"fields": {"connection": relay.cfg.name}})
            r = None
        self._answer(r, up)

    async def _in_thread(self, deadline: float, fn, *args):
        """fn(*args) in the masking thread: what it returns; _TIMED_OUT past the deadline (the
        walk stops itself there; MASK_GRACE covers what cannot be interrupted, orjson's parse
        of 8 MiB: 30-100 ms here); None after a masker fault, logged (nothing of the body
        leaves unmasked). A gathered body and a stream's feed alike."""
        name = self.relay.cfg.name
        fut = asyncio.get_running_loop().run_in_executor(_mask_thread(), fn, *args)
        try:
            if deadline:
                return await asyncio.wait_for(fut, max(0.0, deadline - _mask_clock()) +
                                              MASK_GRACE)
            return await fut
        except (MaskTimeout, asyncio.TimeoutError):
            return _TIMED_OUT
        except Exception:  # noqa: BLE001 -- a masker fault
            log.exception("response masking failed", extra={"fields": {"connection": name}})
            return None

    async def _offload(self, body: bytes, deadline: float) -> None:
        relay, req = self.relay, self.req
        r = await self._in_thread(deadline, _mask_body, self.masker, body, deadline, True,
                                  self.kind)
        self.task = None
        if relay.closed or relay.cur is not req:
            return                       # the client left meanwhile
        if r is _TIMED_OUT:
            self._timed_out(None, len(body))
        else:
            self._answer(r, None)

    def _answer(self, r, up) -> None:
        """The masked body (r: _mask_body's result) with its head, or the 502 of a body that
        could not be masked."""
        relay, req = self.relay, self.req
        if r is None:
            self._done()
            relay._unmaskable(req, up)
            return
        body, counts = r
        if counts:
            if self.counts:
                _merge_counts(self.counts, counts)
            else:
                self.counts = counts     # the masker's own dict: nothing else holds it
        self._send_head(len(body), body)
        self._count()
        self.relay = self.req = self.head = None     # _done, inlined
        relay._response_end(req, up)

    def _timed_out(self, up, size: int) -> None:
        relay, req = self.relay, self.req
        event(log, "response masking timed out", logging.WARNING, connection=relay.cfg.name,
              request_id=req.rid.decode(), timeout=self.masker.timeout, bytes=size)
        if up is not None:
            req.up = None
            up.pool.release(up, req.up_reusable and req.req_done)
        self._done()
        relay._upstream_failed(req, 504, "mask_timeout",
                               f"the response could not be masked within "
                               f"{self.masker.timeout:g}s")
        relay._pump()

    def _done(self) -> None:
        """The response is answered: drop the references back to the request and relay.
        req.mask -> this -> req was a reference cycle per masked response, left to the cyclic
        GC (gc_collect_main: ~3% of the masked gateway's perf samples, none unmasked)."""
        self.relay = self.req = self.head = None

    def _count(self) -> None:
        """The values masked: the request's audit count now, hoopwire_masked_values at the
        listener's next tick (flush_mask_counts)."""
        counts = self.counts
        if not counts:
            return
        name = self.relay.cfg.name
        pending = _MASK_PENDING
        total = 0
        for key, n in counts.items():
            total += n
            k = (name, key)
            pending[k] = pending.get(k, 0) + n
        self.req.masked += total


# A gathered body, or a stream's feed, over this many bytes is masked in the masking thread
# (text: ~20 us per KiB, 6.8 ms for a 256 KiB feed, the same order as JSON). Measured with
# the C walk (bench/README.md, wrk_compare): ~10-20 us per KiB, so 256 KiB holds the loop for
# ~3-5 ms at most, while the hand-off to the thread and back costs ~0.1 ms and two wake-ups:
# below this the thread would cost the small responses more than it saves the others.
OFFLOAD_BYTES = 256 * 1024
MASK_GRACE = 0.5                 # seconds the loop waits past the deadline for the thread
_TIMED_OUT = object()
_MASK_THREAD = None


def _mask_thread():
    """The worker's masking thread: one, so the masker's thread Scanner (one scratch) is
    never used by two threads, and big bodies queue rather than take the second core from
    the event loop (their deadline runs while they wait)."""
    global _MASK_THREAD
    if _MASK_THREAD is None:
        from concurrent.futures import ThreadPoolExecutor
        _MASK_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hoopwire-mask")
    return _MASK_THREAD


def _mask_body(masker, body: bytes, deadline: float, offloaded: bool, kind: str = "json"):
    """(masked body, counts) or None (502): mask_json (kind "sniffed": mask_sniffed for a body
    sniffed as JSON or JSONP; "sniffed_text": the detectors over a sniffed text), or with
    detectors only a body that is not JSON through the detectors as text. MaskTimeout past
    the deadline."""
    if kind == "sniffed_text":
        return masker.mask_as_text(body, deadline, offloaded=offloaded)
    r = masker.mask_sniffed(body, deadline, offloaded=offloaded) if kind == "sniffed" else \
        masker.mask_json(body, deadline, offloaded=offloaded)
    if r is not None or masker.has_paths:
        return r
    return masker.mask_as_text(body, deadline, offloaded=offloaded)


def _mask_feed(stream, data: bytes, deadline: float, final: bool) -> bytes:
    """One feed of a stream (and its end, final) in the masking thread: the masked bytes.
    MaskTimeout if it waited for the thread past its deadline."""
    if deadline and _mask_clock() > deadline:
        raise MaskTimeout()
    out = stream.feed(data) if data else b""
    return out + stream.end() if final else out


# (connection, count key) -> its hoopwire_masked_values child: a label lookup took a lock and
# two tuples per key per masked response (33 of 90 us profiled in _count)
_MASK_COUNTERS: dict = {}


# (connection, count key) -> values masked since the last flush_mask_counts. Counted here and
# added to the Prometheus counters on the HTTP listener's tick (every TICK, 250 ms): two
# Counter.inc a masked 1 KiB response (one per rule or detector that masked) were 4 Python
# calls and two locks, 23 of the ~240 us cProfile put on the masked path outside the walk.
_MASK_PENDING: dict = {}


def flush_mask_counts() -> None:
    """Add the values masked since the last call to hoopwire_masked_values (the listener's
    tick, and when it stops). On the event loop only, as _Masking._count."""
    global _MASK_PENDING
    if not _MASK_PENDING:
        return
    pending, _MASK_PENDING = _MASK_PENDING, {}
    for (name, key), n in pending.items():
        counter = _MASK_COUNTERS.get((name, key))
        if counter is None:
            counter = _mask_counter(name, key)
        counter.inc(n)


def _mask_counter(name: str, key: str):
    from hoopwire import metrics
    if key.startswith("path:"):
        counter = metrics.MASKED_VALUES.labels(name, "path", key[5:])
    else:
        counter = metrics.MASKED_VALUES.labels(name, "detector", key)
    if len(_MASK_COUNTERS) < 4096:
        _MASK_COUNTERS[(name, key)] = counter
    return counter


# the count key of a redacted stored credential: hoopwire_masked_values{kind="detector",
# name="upstream-credential"}
CREDENTIAL_KEY = "upstream-credential"


def _merge_counts(into: dict, counts: dict | None) -> None:
    for k, n in (counts or {}).items():
        into[k] = into.get(k, 0) + n


def _shape_text(method: bytes, path: bytes, host: bytes) -> bytes:
    """The request text of a method, canonical target and Host with no other field of it: what
    dialect.request_text must have made for a verdict to be cached (a field it reads that
    Rewriter.scan did not see would make it differ, and the verdict is then not cached)."""
    return method.upper() + b" " + path + b"\n" + (b"host: " + host + b"\n" if host else b"")


def _bearer(value: bytes | None) -> bytes | None:
    """The token of `Bearer <token>` (the scheme case-insensitive, RFC 9110 11.1)."""
    if value is None or len(value) < 8 or value[:7].lower() != b"bearer ":
        return None
    token = value[7:].strip()
    return token or None


def _h2c_only(head) -> bool:
    """An Upgrade asking only for h2c: dropped (an HTTP/1.1 answer), not refused."""
    ups = head.get_all(b"upgrade")
    if not ups:
        return b"upgrade" in head.connection_tokens and not head.get(b"upgrade")
    return all(t.strip().lower() == b"h2c" for v in ups for t in v.split(b","))
