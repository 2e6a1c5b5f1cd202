"""JWKS: the public keys an issuer signs with, fetched, parsed and cached per `jwks_uri`.

One `_Source` per URI holds the last good key set. It is refreshed when it is older than the
issuer's `jwks_cache_ttl`, or when a token names a `kid` it does not hold (key rotation), but no
source is fetched more than once per `jwks_refetch_interval`: a client minting tokens with random
`kid`s must not turn the gateway into a load generator against the identity provider. Requests
that arrive while a fetch is running wait for that fetch instead of starting their own.

When a refetch fails the previous key set stays in use (with a warning): an identity provider
blip must not lock every client out. With no key set at all, tokens fail with
`jwks_unavailable`.

The last good key set of every URI is also kept per process (`_LAST_GOOD`), outside any one
cache: a reload builds a new Authenticator and cache, and a new cache starts from these keys
(stale, so it refetches at once). A source that is broken at reload time then leaves its
issuer on the keys it had -- logged, counted (hoopwire_jwks_fetch_failures_total, and
hoopwire_jwks_degraded at 1) and reported by `degraded()` -- instead of refusing all of its
users, admins included.

Only asymmetric keys are kept. A JWKS is public, so an `oct` (shared secret) key in it is not a
secret; HS* tokens are verified with the issuer's configured shared secret only (jwt.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt import PyJWK

from hoopwire import metrics
from hoopwire.config import IssuerConfig
from hoopwire.identity.types import AuthError

__all__ = ["JwkEntry", "JwksCache", "JwksFetchError", "parse_jwks", "key_fits", "select_key"]

log = logging.getLogger("hoopwire.identity")

HTTP_TIMEOUT = 5.0
MAX_JWKS_BYTES = 1024 * 1024  # real key sets are a few KiB
# With no key set at all every token fails anyway, so retry a failed first fetch sooner than
# jwks_refetch_interval (but never more than once per this many seconds).
COLD_RETRY = 1.0

# token alg -> (JWK kty, JWK crv or None, the cryptography public key types that may verify it)
_ALG_KEYS: dict[str, tuple[str, str | None, tuple[type, ...]]] = {
    **{a: ("RSA", None, (rsa.RSAPublicKey,))
       for a in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
    "ES256": ("EC", "P-256", (ec.EllipticCurvePublicKey,)),
    "ES384": ("EC", "P-384", (ec.EllipticCurvePublicKey,)),
    "ES512": ("EC", "P-521", (ec.EllipticCurvePublicKey,)),
    "EdDSA": ("OKP", None, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)),
}
# How pyjwt should load a JWK of each shape. Chosen from kty/crv, never from the JWK's own
# `alg`, so a hostile `alg` member cannot pick the loader (the member is checked separately).
_LOADER_ALG = {("EC", "P-256"): "ES256", ("EC", "P-384"): "ES384", ("EC", "P-521"): "ES512",
               ("OKP", "Ed25519"): "EdDSA", ("OKP", "Ed448"): "EdDSA"}
_PRIVATE = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey,
            ed448.Ed448PrivateKey)


# jwks_uri -> the last key set fetched from it by any cache of this process. Key sets are public
# keys, so keeping them past a reload leaks nothing; they are replaced by the next good fetch.
_LAST_GOOD: dict[str, tuple[JwkEntry, ...]] = {}


class JwksFetchError(Exception):
    """A JWKS could not be read or parsed; the message is safe to log."""


@dataclass(frozen=True)
class JwkEntry:
    kid: str | None
    kty: str
    crv: str | None
    alg: str | None  # the JWK's own `alg` member; when present a token must use exactly it
    key: Any         # a cryptography public key object


def key_fits(entry: JwkEntry, alg: str) -> bool:
    """Whether `entry` may verify a token signed with `alg`. HS* and unknown algs never fit."""
    shape = _ALG_KEYS.get(alg)
    if shape is None:
        return False
    kty, crv, types = shape
    if entry.kty != kty or (crv is not None and entry.crv != crv):
        return False
    if entry.alg is not None and entry.alg != alg:
        return False
    # Belt and braces: the loaded object must really be the right kind of public key.
    return isinstance(entry.key, types)


def select_key(keys: Iterable[JwkEntry], kid: str | None, alg: str) -> JwkEntry | None:
    """The key for a token's (kid, alg); None when the set holds no such key (refetch may help).

    Raises AuthError when looking again cannot help: the kid names a key of the wrong kind
    (an algorithm-confusion attempt or a misconfigured IdP), or a kid-less token is ambiguous.
    """
    keys = tuple(keys)
    if kid is not None:
        named = [e for e in keys if e.kid == kid]
        if not named:
            return None
        for e in named:
            if key_fits(e, alg):
                return e
        raise AuthError("bad_algorithm", f"key {_short(kid)} cannot verify {alg} tokens")
    usable = [e for e in keys if key_fits(e, alg)]
    if len(usable) == 1:
        return usable[0]
    if not usable:
        return None
    raise AuthError("unknown_kid",
                    f"the token has no kid and the JWKS holds {len(usable)} keys for {alg}")


def parse_jwks(doc: Any, where: str = "JWKS") -> tuple[JwkEntry, ...]:
    """The usable signature keys of a JWKS document; keys that cannot be used are skipped."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise JwksFetchError("not a JWKS document (no \"keys\" array)")
    entries = []
    for i, jwk in enumerate(doc["keys"]):
        entry = _parse_jwk(jwk, f"{where} keys[{i}]")
        if entry is not None:
            entries.append(entry)
    return tuple(entries)


def _parse_jwk(jwk: Any, where: str) -> JwkEntry | None:
    if not isinstance(jwk, dict):
        log.warning("%s: not a JSON object; skipped", where)
        return None
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        log.warning("%s: kid is not a string; skipped", where)
        return None
    where = f"{where} (kid {_short(kid)})" if kid is not None else where
    kty, crv, alg, use = jwk.get("kty"), jwk.get("crv"), jwk.get("alg"), jwk.get("use")
    if use is not None and use != "sig":
        return None  # encryption keys are normal in a JWKS; nothing to warn about
    if kty == "oct":
        log.warning("%s: symmetric (oct) keys in a JWKS are never used; skipped", where)
        return None
    if kty == "RSA":
        loader = "RS256"
    else:
        loader = _LOADER_ALG.get((kty, crv))
    if loader is None:
        log.warning("%s: unsupported key type %s/%s; skipped", where, _short(kty), _short(crv))
        return None
    if alg is not None and not isinstance(alg, str):
        log.warning("%s: alg is not a string; skipped", where)
        return None
    try:
        key = PyJWK(jwk, algorithm=loader).key
    except Exception as e:  # pyjwt raises several kinds; a bad key must not sink the set
        # The exception text can echo the JWK itself, so only its type is logged.
        log.warning("%s: cannot load the key (%s); skipped", where, type(e).__name__)
        return None
    if isinstance(key, _PRIVATE):
        # A JWKS should never carry private keys; if one slipped in, verify with its public half.
        log.warning("%s: the JWKS holds a private key; using its public half", where)
        key = key.public_key()
    return JwkEntry(kid=kid, kty=kty, crv=crv if isinstance(crv, str) else None, alg=alg, key=key)


class _Source:
    """One jwks_uri: its last good key set and the bookkeeping for refetching it."""

    def __init__(self, uri: str, ttl: float, interval: float):
        self.uri = uri
        self.ttl = ttl
        self.interval = interval
        self.keys: tuple[JwkEntry, ...] | None = None
        self.fetched_at: float | None = None    # clock() of the last successful fetch
        self.last_attempt: float | None = None  # clock() of the last fetch started
        self.attempts = 0
        self.inflight: asyncio.Task | None = None
        self.failing = False                   # the latest fetch failed

    def may_fetch(self, now: float) -> bool:
        if self.last_attempt is None:
            return True
        gap = self.interval if self.keys is not None else min(self.interval, COLD_RETRY)
        return now - self.last_attempt >= gap


class JwksCache:
    """Key sets for every jwks_uri of the configured issuers.

    Issuers that share a jwks_uri share one source, refreshed as often as the most eager of them
    asks (the smallest ttl and refetch interval).
    """

    def __init__(self, issuers: Iterable[IssuerConfig], *,
                 clock: Callable[[], float] = time.monotonic, http_timeout: float = HTTP_TIMEOUT):
        self._clock = clock
        self._http_timeout = http_timeout
        self._session: aiohttp.ClientSession | None = None
        self._sources: dict[str, _Source] = {}
        for iss in issuers:
            if iss.jwks_uri is None:
                continue
            src = self._sources.get(iss.jwks_uri)
            if src is None:
                src = self._sources[iss.jwks_uri] = _Source(iss.jwks_uri, iss.jwks_cache_ttl,
                                                            iss.jwks_refetch_interval)
                # Keys an earlier configuration fetched: used while a refetch fails. fetched_at
                # stays None, so the first use (or prefetch) fetches anew.
                src.keys = _LAST_GOOD.get(iss.jwks_uri)
            else:
                src.ttl = min(src.ttl, iss.jwks_cache_ttl)
                src.interval = min(src.interval, iss.jwks_refetch_interval)

    def prefetch(self) -> None:
        """Start fetching every source now (a no-op outside a running event loop)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        for src in self._sources.values():
            if src.inflight is None and src.may_fetch(self._clock()):
                src.last_attempt = self._clock()
                src.attempts += 1
                src.inflight = asyncio.ensure_future(self._fetch_into(src))

    def degraded(self, uri: str) -> bool:
        """Whether the latest fetch of `uri` failed (its issuer runs on old keys, or none)."""
        src = self._sources.get(uri)
        return src is not None and src.failing

    def sources_without_keys(self) -> set[str]:
        """The jwks_uris that have no key set yet (for /readyz)."""
        return {uri for uri, src in self._sources.items() if src.keys is None}

    async def settle(self, timeout: float) -> None:
        """Wait (at most `timeout` s) for the fetches running now: /readyz's first look waits
        for the start-up prefetch rather than call a source that is being fetched missing."""
        now = self._clock()
        for src in self._sources.values():
            # a source with no keys yet is fetched now (the constructor's prefetch does
            # nothing outside a running loop: a --workers worker builds its gateway before)
            if src.keys is None and src.inflight is None and src.may_fetch(now):
                src.last_attempt = now
                src.attempts += 1
                src.inflight = asyncio.ensure_future(self._fetch_into(src))
        running = [src.inflight for src in self._sources.values() if src.inflight is not None]
        if running:
            await asyncio.wait([asyncio.shield(t) for t in running], timeout=timeout)

    def fetch_attempts(self, uri: str) -> int:
        """How many times `uri` has been fetched (for metrics and tests)."""
        src = self._sources.get(uri)
        return src.attempts if src else 0

    async def key_for(self, uri: str, kid: str | None, alg: str) -> Any:
        """The public key to verify a token with this (kid, alg) from `uri`; raises AuthError."""
        src = self._sources.get(uri)
        if src is None:
            # Only issuers passed to the constructor have sources; anything else is a bug.
            raise AuthError("jwks_unavailable", f"no JWKS source for {_display(uri)}")
        if src.fetched_at is None or self._clock() - src.fetched_at >= src.ttl:
            await self._refresh(src)
        if src.keys is None:
            raise AuthError("jwks_unavailable", f"cannot fetch the JWKS from {_display(uri)}")
        entry = select_key(src.keys, kid, alg)
        if entry is None and await self._refresh(src):
            # An unknown kid usually means the IdP rotated its keys since we last looked.
            entry = select_key(src.keys, kid, alg)
        if entry is None:
            what = f"kid {_short(kid)}" if kid is not None else f"a key for {alg}"
            raise AuthError("unknown_kid", f"the JWKS at {_display(uri)} has no {what}")
        return entry.key

    async def close(self) -> None:
        for src in self._sources.values():
            if src.inflight is not None:
                src.inflight.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- fetching ---------------------------------------------------------------------------

    async def _refresh(self, src: _Source) -> bool:
        """Fetch `src` unless rate-limited; join a fetch already running. True if one ran."""
        if src.inflight is None:
            now = self._clock()
            if not src.may_fetch(now):
                return False
            src.last_attempt = now
            src.attempts += 1
            src.inflight = asyncio.ensure_future(self._fetch_into(src))
        # shield: a client that hangs up mid-fetch must not cancel the fetch others wait on.
        await asyncio.shield(src.inflight)
        return True

    async def _fetch_into(self, src: _Source) -> None:
        try:
            keys = await self._load(src.uri)
        except JwksFetchError as e:
            self._fetch_failed(src, str(e))
        except Exception as e:  # never let a fetch bug escape into every waiting session
            self._fetch_failed(src, f"unexpected {type(e).__name__}")
        else:
            if not keys:
                log.warning("JWKS %s holds no usable signature keys", _display(src.uri))
            src.keys = keys
            src.fetched_at = self._clock()
            _LAST_GOOD[src.uri] = keys
            if src.failing:
                log.warning("JWKS %s: fetched again; using the new keys", _display(src.uri))
            src.failing = False
            metrics.JWKS_DEGRADED.labels(_display(src.uri)).set(0)
        finally:
            src.inflight = None

    def _fetch_failed(self, src: _Source, why: str) -> None:
        src.failing = True
        where = _display(src.uri)
        metrics.JWKS_FETCH_FAILURES.labels(where).inc()
        metrics.JWKS_DEGRADED.labels(where).set(1)
        if src.keys is not None and src.fetched_at is None:
            log.warning("JWKS %s: fetch failed (%s); keeping the last good keys from before "
                        "the reload", where, why)
        elif src.keys is not None:
            log.warning("JWKS %s: refetch failed (%s); still using the copy fetched %.0fs ago",
                        where, why, self._clock() - src.fetched_at)
        else:
            log.warning("JWKS %s: cannot fetch (%s)", where, why)

    async def _load(self, uri: str) -> tuple[JwkEntry, ...]:
        if uri.startswith("file://"):
            raw = await asyncio.to_thread(_read_file, uri)
        elif uri.startswith(("https://", "http://")):
            raw = await self._get(uri)
        else:
            raise JwksFetchError("unsupported URI scheme")
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError):
            raise JwksFetchError("not JSON") from None
        return parse_jwks(doc, f"JWKS {_display(uri)}")

    async def _get(self, uri: str) -> bytes:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._http_timeout))
        try:
            async with self._session.get(uri, max_redirects=3,
                                         headers={"Accept": "application/json"}) as resp:
                if resp.status != 200:
                    raise JwksFetchError(f"HTTP {resp.status}")
                body = bytearray()
                async for chunk in resp.content.iter_chunked(65536):
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise JwksFetchError(f"larger than {MAX_JWKS_BYTES} bytes")
                return bytes(body)
        except asyncio.TimeoutError:
            raise JwksFetchError(f"no answer within {self._http_timeout:g}s") from None
        except aiohttp.ClientError as e:
            raise JwksFetchError(f"{type(e).__name__}") from None


def _read_file(uri: str) -> bytes:
    parts = urllib.parse.urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise JwksFetchError("file:// URIs must name a local path")
    path = urllib.request.url2pathname(parts.path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_JWKS_BYTES + 1)
    except OSError as e:
        raise JwksFetchError(f"cannot read {path}: {e.strerror}") from None
    if len(raw) > MAX_JWKS_BYTES:
        raise JwksFetchError(f"larger than {MAX_JWKS_BYTES} bytes")
    return raw


def _display(uri: str) -> str:
    """The URI without credentials or query string, which may hold secrets."""
    try:
        p = urllib.parse.urlsplit(uri)
        host = p.hostname or ""
        if p.port:
            host = f"{host}:{p.port}"
    except ValueError:
        return "<bad uri>"
    return f"{p.scheme}://{host}{p.path}"


def _short(value: Any, limit: int = 64) -> str:
    """repr() of an untrusted value, cut short: it comes from a token or a remote document."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"
