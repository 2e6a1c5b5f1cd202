"""The HTTP/1.1 listener: each client connection's start (TLS when configured), then the relay
(hoopwire.http.relay.Relay) owns the socket. There is no login: identity is per request, so
the "handshake" ends as soon as the first byte shows whether the client speaks TLS.

HttpConf holds what one configuration means for every request (the head's fixed parts, the
credential line, the limits), made once per (re)load so that a request does no lookups.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time

from hoopwire.config import ConnectionConfig
from hoopwire.core.errors import Refused
from hoopwire.core.listener import Admission, Listener
from hoopwire.core.session import Session
from hoopwire.core.tls import start_server_tls, upstream_ssl_context
from hoopwire.http import errors
from hoopwire.http.adapter import ADAPTER
from hoopwire.http.upstream import Pool, host_header
from hoopwire.logs import event

log = logging.getLogger("hoopwire.http")

# How often the timeouts are checked: a request_timeout or upstream_timeout ends within this
# much after it is due (250 ms against bounds of seconds)
TICK = 0.25

__all__ = ["HttpListener", "HttpConf", "DIALECT", "request_reads_body", "BadTarget"]

# H4's dialect: the request text guardrails scan, the canonical target, the packs
from hoopwire.http.dialect import (DIALECT, SELECTED_HEADERS, BadTarget, canonical_target,
                                   request_reads_body, request_text)

try:  # H3's JSON masker
    from hoopwire.http.jsonmask import JsonMasker
except ImportError:  # pragma: no cover
    JsonMasker = None


def _parse_module():
    from hoopwire.http import _parse
    return _parse


def _relay_module():
    from hoopwire.http import _relay
    return _relay


def server_ssl_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class HttpConf:
    """One configuration's constants for the relay."""

    def __init__(self, cfg: ConnectionConfig, marker_prefix: bytes):
        p = _parse_module()
        self.new_request_parser = lambda: p.RequestParser(
            max_line=cfg.max_request_line, max_header_bytes=cfg.max_header_bytes,
            max_headers=cfg.max_headers)
        self.identity_header = cfg.identity_header.lower().encode()
        self.allow_groups = frozenset(cfg.allow_groups)
        self.inspect_body_bytes = cfg.inspect_body_bytes
        self.mask_body_bytes = cfg.mask_body_bytes
        self.request_timeout = cfg.request_timeout
        self.upstream_timeout = cfg.upstream_timeout
        self.base = cfg.upstream_path.encode()
        self.marker = marker_prefix.decode("ascii", "replace")
        host, port = cfg.upstream
        self.host = host_header(cfg.upstream_scheme, host, port)
        self.keep_client_host = cfg.host_header == "client"
        secret = cfg.password.get() if cfg.password is not None else ""
        value = cfg.credential_format.replace("{secret}", secret)
        self.credential_ok = not any(c in value for c in "\r\n\0")
        try:
            self.cred_line = (cfg.credential_header.encode("ascii") + b": "
                              + value.encode("latin-1") + b"\r\n") if secret else b""
        except UnicodeEncodeError:
            self.credential_ok = False
            self.cred_line = b""
        # the stored credential's forms a response is checked for (relay: "upstream-credential")
        self.secret_scan = None
        self.secret_short = bool(secret) and len(secret.encode("utf-8")) < SECRET_MIN
        if secret and self.cred_line:
            needles = secret_forms(secret, value)
            if needles:
                self.secret_scan = _relay_module().SecretScan(needles)
        # dropped from what the client sent: the identity header, the credential header (ours
        # replaces it), and the hop-by-hop set (relay._HOP)
        from hoopwire.http.relay import _HOP
        self._drop = _HOP | {cfg.credential_header.lower().encode(), self.identity_header}
        self._drops: dict = {}             # Connection tokens -> drop set (_drop_with)
        self._resp_drops: dict = {}        # the same for response heads
        # a response the secret scan cannot read (compressed) is refused: the upstream is asked
        # for identity whenever there is a credential to look for, not only when masking applies
        self.identity_encoding = False     # masking applies: set by the listener

    @property
    def identity_encoding(self) -> bool:
        """Masking applies (set by the listener): the client's Accept-Encoding is replaced by
        identity, so that the masker reads plain bytes."""
        return self._identity_encoding

    @identity_encoding.setter
    def identity_encoding(self, on: bool) -> None:
        on = bool(on) or self.secret_scan is not None
        self._identity_encoding = on
        self.drop = self._drop | {b"accept-encoding"} if on else self._drop
        self._drops = {}
        # the relay's per-request rewrites in C (hoopwire.http._relay): build_head and
        # response_head below are their reference, used where a body is re-framed
        self.rw = _relay_module().Rewriter(self.base, self.host, self.keep_client_host,
                                           self.drop, self.cred_line, on, _RESP_HOP,
                                           self.identity_header, frozenset(SELECTED_HEADERS))

    def canonical(self, target: bytes, method: bytes) -> bytes:
        """The origin-form target the upstream gets (and the guardrails judge); ValueError
        (BadTarget) with the reason when it is refused."""
        if target == b"*" and method == b"OPTIONS":
            return target
        return canonical_target(target)

    def request_text(self, head, path: bytes, body: bytes | None) -> bytes:
        return request_text(head, path, body)

    def build_head(self, req, relay) -> bytes:
        """The request head the upstream gets, built once: one join over a flat list of
        pieces (no per-field %-format: 8 fields cost 1.5 us formatted, 1.1 us as pieces)."""
        head = req.head
        tokens = head.connection_tokens
        drop = self.drop if not tokens else self._drop_with(tokens)
        client_host = head.get(b"host")
        out = [head.method, b" ", self.base, req.path, b" HTTP/1.1\r\nHost: ",
               (client_host or self.host) if self.keep_client_host else self.host, b"\r\n"]
        for name, value in head.headers:
            if name.lower() not in drop:
                out += (name, b": ", value, b"\r\n")
        out.append(self.cred_line)
        if self._identity_encoding:
            # the masker reads plain bytes: a compressed body could not be masked (502)
            out.append(b"Accept-Encoding: identity\r\n")
        out += (relay.xff, b"X-Forwarded-Host: " + client_host + b"\r\nX-Request-Id: "
                if client_host else b"X-Request-Id: ", req.rid, b"\r\n\r\n")
        return b"".join(out)

    def _drop_with(self, tokens: frozenset) -> frozenset:
        """self.drop plus a request's Connection tokens, cached per token set (a client
        sends the same few on every request: the union cost 0.2 us a request)."""
        drop = self._drops.get(tokens)
        if drop is None:
            if len(self._drops) >= 64:
                self._drops.clear()
            drop = self._drops[tokens] = self.drop | tokens
        return drop

    def response_head(self, req, head, *, length: int | None = -1,
                      chunked: bool = False) -> bytes:
        """The response head the client gets: hop-by-hop fields out, our framing in. A
        masked body is re-framed: `length` (its Content-Length), or None for a stream
        (`chunked` to an HTTP/1.1 client, else to the close)."""
        tokens = head.connection_tokens
        out = [b"HTTP/1.1 %d " % head.status, head.reason, b"\r\n"]
        client10 = req.head.version == 10
        reframe = length != -1
        if head.body == 2 and client10 and not reframe:   # chunked to HTTP/1.0: data only
            req.dechunk = True
        drop = _RESP_HOP
        if tokens:
            # the upstream's Connection tokens (keep-alive on every nginx answer): the union
            # cached per token set, as for requests
            drop = self._resp_drops.get(tokens)
            if drop is None:
                if len(self._resp_drops) >= 64:
                    self._resp_drops.clear()
                drop = self._resp_drops[tokens] = _RESP_HOP | tokens
        if req.dechunk:
            drop = drop | {b"transfer-encoding"}
        if reframe:
            drop = drop | _FRAMING
        for name, value in head.headers:
            if name.lower() not in drop:
                out += (name, b": ", value, b"\r\n")
        if reframe:
            if length is not None:
                out.append(b"Content-Length: %d\r\n" % length)
            elif chunked:
                out.append(b"Transfer-Encoding: chunked\r\n")
        # the client's connection ends with this response when: the body runs to the close,
        # the request is not read whole yet, or the client asked
        close = (head.body == 3 and not reframe) or req.dechunk or not req.req_done \
            or not req.keep_alive or (reframe and length is None and not chunked)
        req.resp_close = close
        if close:
            out.append(b"Connection: close\r\n")
        elif client10:
            out.append(b"Connection: keep-alive\r\n")
        out += (b"X-Request-Id: ", req.rid, b"\r\n\r\n")
        return b"".join(out)


# A secret shorter than this is not looked for on its own in responses: 7 bytes or fewer of an
# API key (a PIN-like "12345", "admin") also occur in ordinary data, and each false match would
# change a client's bytes; only its full header value ("Bearer 12345", itself at least this
# long) is, and the listener logs a warning. Every real API key seen (32-64 bytes) is far above.
SECRET_MIN = 8


def secret_forms(secret: str, value: str) -> list[bytes]:
    """The byte strings a response is checked for so that the stored credential never reaches
    the client (relay, issue 21): the secret (or, shorter than SECRET_MIN, the full header
    value), and the encodings an echoing upstream commonly applies -- URL-encoded, JSON- and
    HTML-escaped (each escapes character by character, so the secret's form is a substring of
    any longer string's), and base64 at each of the three alignments a longer string may put it
    at. For a `Basic` format, the decoded user:password and the password too. Longest first."""
    import base64
    import html
    import json
    from urllib.parse import quote, quote_plus
    seeds = []
    if len(secret.encode("utf-8")) >= SECRET_MIN:
        seeds.append(secret)
    elif secret in value and len(value.encode("utf-8")) >= SECRET_MIN:
        seeds.append(value)
    if value[:6].lower() == "basic ":
        try:
            plain = base64.b64decode(secret.strip(), validate=True).decode("utf-8")
        except ValueError:
            plain = ""
        seeds += [t for t in (plain, plain.partition(":")[2])
                  if len(t.encode("utf-8")) >= SECRET_MIN]
    forms: set[bytes] = set()
    for seed in seeds:
        raw = seed.encode("utf-8")
        forms.add(raw)
        try:
            forms.add(seed.encode("latin-1"))      # as it went in the header
        except UnicodeEncodeError:
            pass
        for text in (quote(seed, safe=""), quote_plus(seed, safe=""),
                     json.dumps(seed)[1:-1], json.dumps(seed, ensure_ascii=False)[1:-1],
                     json.dumps(seed)[1:-1].replace("/", "\\/"), html.escape(seed)):
            forms.add(text.encode("utf-8"))
        for k in range(3):
            # the characters that depend on the secret's bytes alone when k bytes precede it
            enc = base64.b64encode(b"\0" * k + raw)
            a, b = -(-8 * k // 6), 8 * (k + len(raw)) // 6
            forms.add(enc[a:b])
            forms.add(enc[a:b].translate(_URLSAFE))
    return sorted((f for f in forms if len(f) >= SECRET_MIN), key=lambda f: (-len(f), f))


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def redact_reference(needles, data: bytes) -> tuple[bytes, int]:
    """What SecretScan.redact does, in Python (tests/test_http_secret_echo.py compares them):
    every occurrence of every needle, longest first, replaced by as many `*`."""
    out = bytearray(data)
    hits = 0
    for nd in needles:
        at = out.find(nd)
        while at >= 0:
            out[at:at + len(nd)] = b"*" * len(nd)
            hits += 1
            at = out.find(nd, at + len(nd))
    return bytes(out), hits


_FRAMING = frozenset((b"content-length", b"transfer-encoding", b"trailer"))
_RESP_HOP = frozenset((b"connection", b"proxy-connection", b"keep-alive", b"upgrade",
                       b"proxy-authenticate", b"x-request-id"))


class HttpListener(Listener):
    """Serves one [[connection]] with protocol = "http"."""

    adapter = ADAPTER
    dialect = DIALECT
    log = log

    def __init__(self, gateway, cfg: ConnectionConfig, policy_engine=None, mask_engine=None):
        self.relays: set = set()        # every open client connection's relay (timeouts)
        self._ticker = None
        self.pool: Pool | None = None
        self.conf: HttpConf | None = None
        self.masker = None
        self.mask_kinds: dict = {}       # Content-Type -> masker.wants() of it (relay)
        self.tls_context = None
        super().__init__(gateway, cfg, policy_engine, mask_engine)

    def apply_protocol(self, cfg: ConnectionConfig, mask_engine=None) -> None:
        self.tls_context = server_ssl_context(cfg.tls_cert, cfg.tls_key) if cfg.tls_cert else None
        self.conf = HttpConf(cfg, self.gateway.marker_prefix)
        if not self.conf.credential_ok:
            event(log, "the stored credential cannot go in a header (a line break or a "
                  "character outside latin-1): requests are sent without it", logging.ERROR,
                  connection=cfg.name)
        elif self.conf.secret_short:
            event(log, f"the stored credential is shorter than {SECRET_MIN} bytes: only its full "
                  "header value is redacted from responses, not the secret alone",
                  logging.WARNING, connection=cfg.name)
        old = self.pool
        host, port = cfg.upstream
        if old is None or (old.host, old.port) != (host, port) or \
                old.max_connections != cfg.upstream_max_connections:
            ctx = upstream_ssl_context(cfg.upstream_tls, cfg.upstream_ca) \
                if cfg.upstream_scheme == "https" else None
            self.pool = Pool(name=cfg.name, host=host, port=port, ssl_context=ctx,
                             max_connections=cfg.upstream_max_connections,
                             connect_timeout=cfg.connect_timeout,
                             parser_factory=self._response_parser(cfg))
            if old is not None:
                old.close()
        self.masker = None
        self.mask_kinds = {}
        if mask_engine is not None and JsonMasker is not None:
            masker = JsonMasker(cfg.masks, mask_engine, cfg.mask_body_bytes,
                                path=f"connection[{cfg.name}]", timeout=cfg.mask_timeout)
            if masker.active:
                self.masker = masker
                self.conf.identity_encoding = True
        # Every open connection, authenticated or not, takes the new conf at its next request
        # boundary (Relay.reloaded): only those with a session were updated before, so a
        # keep-alive connection that had not authenticated kept sending the old credential
        # to the old upstream for as long as it lived.
        for relay in list(self.relays):
            relay.reloaded()

    @staticmethod
    def _response_parser(cfg: ConnectionConfig):
        p = _parse_module()
        return lambda: p.ResponseParser(max_line=cfg.max_request_line,
                                        max_header_bytes=cfg.max_header_bytes,
                                        max_headers=cfg.max_headers)

    async def start(self) -> None:
        await super().start()
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        """request_timeout and upstream_timeout of every connection, TICK apart; and the
        values masked since the last tick to hoopwire_masked_values."""
        from hoopwire.http.relay import flush_mask_counts
        while True:
            await asyncio.sleep(TICK)
            try:
                flush_mask_counts()
            except Exception:  # noqa: BLE001 -- a metrics fault must not stop the timeouts
                log.exception("masked values count failed",
                              extra={"fields": {"connection": self.name}})
            now = time.monotonic()
            for relay in list(self.relays):
                try:
                    relay.tick(now)
                except Exception:  # noqa: BLE001 -- one relay's fault must not stop the others
                    log.exception("timeout handling failed",
                                  extra={"fields": {"connection": self.name}})

    def stopped(self) -> None:
        from hoopwire.http.relay import flush_mask_counts
        flush_mask_counts()
        if self._ticker is not None:
            self._ticker.cancel()
        if self.pool is not None:
            self.pool.close()

    def open_connections(self) -> int:
        """Every client connection with a relay counts against max_connections, authenticated
        or not: an HTTP session starts only with a request's token, so counting sessions let
        idle or 401'd sockets pile up without bound (each a socket and a relay); the
        request_timeout closes one that sends no request."""
        return len(self.relays)

    def new_session(self, relay, identity, peer: str, tls: bool) -> Session:
        """A Session for `identity` on `relay`'s connection, recorded and counted."""
        s = Session(self, identity, "default", peer, tls, "")
        s.writers = (relay.writer,)
        recorder = self.gateway.recorder
        if recorder is not None:
            recorder.statement_log(s)
        self.session_started(s, relay)
        return s

    # -- the start of a connection ----------------------------------------------------------------

    async def handshake(self, reader, writer, peer: str, admission: Admission) -> None:
        from hoopwire.http.relay import Relay
        cfg = self.cfg
        tls = False
        first = b""
        if self.tls_context is not None:
            first = await reader.read(1)
            if not first:
                raise ConnectionResetError("client left")
            if first == b"\x16":              # a TLS handshake record
                if not await start_server_tls(reader, writer, self.tls_context, first):
                    raise ConnectionResetError("TLS did not start")
                tls = True
                first = b""
            elif cfg.require_tls:
                writer.write(errors.response(400, "tls_required",
                                             f"connection \"{cfg.name}\" requires TLS (https)",
                                             close=True))
                writer.close()
                raise Refused("tls_required", "400 tls_required", "TLS required")
        # The slot is taken once TLS is up, so that the 503 of a full listener goes over TLS
        # (written before the handshake, a TLS client read it as a bad record) and a
        # slow TLS client waits on max_handshakes, not on a session slot, as in PostgreSQL.
        # Answered rather than closed: the handshake costs the gateway 1.4 ms of CPU with an
        # RSA-2048 key, 0.55 ms with P-256, the same as an admitted client's, which a flood
        # gets from every listener that is not full anyway; a client told 503 backs off,
        # one whose handshake is cut reports a TLS fault and is debugged as one.
        admission.take(Refused("too_many_connections", ADAPTER.too_many_clients_code,
                               "too many connections"))
        transport = writer.transport
        relay = Relay(self, peer, tls, writer)
        self.relays.add(relay)
        pending = first + bytes(reader._buffer)  # noqa: SLF001 -- read before the swap
        reader._buffer.clear()  # noqa: SLF001
        transport.set_protocol(relay)
        relay.connection_made(transport)
        try:
            transport.resume_reading()
        except (AttributeError, RuntimeError):
            pass
        if pending:
            relay.data_received(pending)

    async def probe_upstream(self) -> str:
        """/readyz: the upstream accepts a connection (no request: any request could do
        something)."""
        t0 = time.monotonic()
        conn = await self.pool.open()
        self.pool.release(conn, False)
        host, port = self.cfg.upstream
        return f"connected to {host}:{port} in {1000 * (time.monotonic() - t0):.0f} ms"
