"""Identity: turn the token a client presents into an `Identity`, or refuse it with an `AuthError`.

A token that looks like a JWT (three base64url segments) is verified as one (`jwt.py`, keys from
`jwks.py`); anything else is looked up as a static API key (`apikeys.py`). The session code only
sees `Authenticator.authenticate()`, an `Identity` and an `AuthError` with a short stable reason
(both in `types.py`, which every submodule imports).
"""

from __future__ import annotations

from hoopwire.config import IdentityConfig
from hoopwire.identity.apikeys import ApiKeyStore
from hoopwire.identity.jwks import JwksCache
from hoopwire.identity.jwt import JwtVerifier, looks_like_jwt
from hoopwire.identity.types import AUTH_REASONS, MAX_TOKEN_LENGTH, AuthError, Identity

__all__ = ["Identity", "AuthError", "AUTH_REASONS", "Authenticator", "MAX_TOKEN_LENGTH"]


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

    def revoked(self, identity: Identity) -> str | None:
        """Why an identity admitted under an earlier configuration would not be admitted as
        it is under this one (a reload removed its issuer or API key, rotated the key, or
        narrowed what they may grant); None while it stands. Open sessions are checked with
        this at a reload: a leaked key rotated out must not keep the sessions it opened."""
        if identity.method == "api_key":
            key = next((k for k in self._cfg.api_keys if k.name == identity.token_id), None)
            if key is None or (identity.key_digest is not None
                               and key.sha256 != identity.key_digest):
                return "its API key is no longer configured"
            if key.use != "database":
                return "its API key is no longer for database use"
            if frozenset(key.groups) != identity.groups:
                return "its API key's groups changed"
            return None
        cfg = next((i for i in self._cfg.issuers if i.issuer == identity.issuer), None)
        if cfg is None:
            return "its issuer is no longer configured"
        if cfg.allowed_groups is not None and not identity.groups <= frozenset(cfg.allowed_groups):
            return "its issuer may no longer grant its groups"
        return None

    def degraded_issuers(self) -> list[str]:
        """Issuers whose key source failed at its latest fetch: they run on the last good keys
        (or, never fetched, on none). For /readyz and operators; [] when all is well."""
        return sorted(i.issuer for i in self._cfg.issuers
                      if i.jwks_uri is not None and self._jwks.degraded(i.jwks_uri))

    def issuers_without_keys(self) -> list[str]:
        """Issuers whose key source has no keys at all (never fetched, none kept from before a
        reload): their tokens cannot be checked, so /readyz is not ready. Asks for another
        fetch of those sources (at most every COLD_RETRY seconds, jwks.py) so recovery shows."""
        missing = self._jwks.sources_without_keys()
        if missing:
            self._jwks.prefetch()
        return sorted(i.issuer for i in self._cfg.issuers if i.jwks_uri in missing)

    async def keys_settled(self, timeout: float) -> None:
        """Wait (bounded) for the key fetches running now (see JwksCache.settle)."""
        await self._jwks.settle(timeout)

    async def close(self) -> None:
        await self._jwks.close()
