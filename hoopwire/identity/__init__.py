"""Identity: turn the token a client presents into an `Identity`, or refuse it with an `AuthError`.

A token that looks like a JWT (three base64url segments) is verified as one (`jwt.py`, keys from
`jwks.py`); anything else is looked up as a static API key (`apikeys.py`). The session code only
sees `Authenticator.authenticate()`, an `Identity` and an `AuthError` with a short stable reason.

`Identity` and `AuthError` are defined here, before the submodules are imported, because every
submodule raises or returns them: the package is always initialised first, so a submodule's
`from hoopwire.identity import AuthError` finds them whichever module is imported first.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Identity", "AuthError", "AUTH_REASONS", "Authenticator", "MAX_TOKEN_LENGTH"]

# Longer than any real JWT or API key; refusing early bounds the work an unauthenticated
# client can make us do (base64, JSON, hashing) before we know who it is.
MAX_TOKEN_LENGTH = 16384

# Every reason an AuthError can carry. Stable: they are Prometheus label values, so a dashboard
# can pre-create its series, and operators grep logs for them.
AUTH_REASONS = frozenset({
    "malformed", "expired", "not_yet_valid", "bad_issuer", "bad_audience", "bad_signature",
    "bad_algorithm", "unknown_kid", "unknown_api_key", "jwks_unavailable", "missing_claim",
    "no_issuer", "lifetime_too_long", "wrong_use",
})


@dataclass(frozen=True)
class Identity:
    """Who is on the other end of a session, as far as policy is concerned."""

    subject: str
    groups: frozenset[str]
    method: str               # "jwt" | "api_key"
    issuer: str | None        # the JWT issuer; None for API keys
    token_id: str | None      # the JWT's jti (or None), or the API key's configured name
    expires_at: float | None  # unix time; None for API keys

    @property
    def principal(self) -> tuple[str, str]:
        """Who this is, as (issuer, subject): a subject means nothing without its issuer (two
        issuers may both mint "agent-7"). API keys have the issuer "" (no JWT issuer may be
        empty, config.py), so "apikey:x" of an API key is never a JWT subject "apikey:x"."""
        return (self.issuer or "", self.subject)


class AuthError(Exception):
    """A refused token. `reason` is one of AUTH_REASONS; `detail` is for the operator log and
    never contains the token or any key material."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


# Imported after the types above on purpose (see the module docstring).
from hoopwire.identity.apikeys import ApiKeyStore  # noqa: E402
from hoopwire.identity.jwks import JwksCache  # noqa: E402
from hoopwire.identity.jwt import JwtVerifier, looks_like_jwt  # noqa: E402

from hoopwire.config import IdentityConfig  # noqa: E402


class Authenticator:
    """The one entry point the sessions and the admin API use.

    Build one per configuration (a reload builds a new one and closes the old); it keeps the
    JWKS cache and, when an issuer serves its JWKS over HTTP, one aiohttp session.
    """

    def __init__(self, cfg: IdentityConfig):
        self._cfg = cfg
        self._api_keys = ApiKeyStore(cfg.api_keys)
        self._jwks = JwksCache(cfg.issuers)
        self._jwt = JwtVerifier(cfg.issuers, self._jwks)
        # Fetch every key set now, not at the first token: after a reload this is when a
        # broken source shows (logged, counted, degraded_issuers()), while the keys the last
        # configuration fetched stay in use (jwks.py).
        self._jwks.prefetch()

    async def authenticate(self, token: str, *, admin_audience: str | None = None) -> Identity:
        """The identity a token stands for; AuthError when refused.

        With `admin_audience` (the admin API) a JWT must carry that audience instead of its
        issuer's, and only API keys configured with `use = "admin"` pass; without it (the data
        path) the issuer's audience and `use = "database"` keys.
        """
        if not isinstance(token, str) or not token:
            raise AuthError("malformed", "empty token")
        if len(token) > MAX_TOKEN_LENGTH:
            raise AuthError("malformed", f"token longer than {MAX_TOKEN_LENGTH} characters")
        if token != token.strip():
            # A key pasted with a newline or a space is not the key; accepting it would make
            # two different strings the same credential.
            raise AuthError("malformed", "the token has surrounding whitespace")
        if looks_like_jwt(token):
            return await self._jwt.verify(token, admin_audience=admin_audience)
        return self._api_keys.lookup(token, "admin" if admin_audience is not None else "database")

    def degraded_issuers(self) -> list[str]:
        """Issuers whose key source failed at its latest fetch: they run on the last good keys
        (or, never fetched, on none). For /readyz and operators; [] when all is well."""
        return sorted(i.issuer for i in self._cfg.issuers
                      if i.jwks_uri is not None and self._jwks.degraded(i.jwks_uri))

    async def close(self) -> None:
        await self._jwks.close()
