"""What identity hands the rest of the gateway: an `Identity`, or an `AuthError` with a short
stable reason. A module of its own so that every part of the package (and the sessions) can
import them without importing the package that imports that part back."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Identity", "AuthError", "AUTH_REASONS", "MAX_TOKEN_LENGTH"]

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
    # An API key's sha256: a reload that rotates the key under the same name ends the
    # sessions the old key opened (Authenticator.revoked). Never logged, never compared.
    key_digest: bytes | None = field(default=None, repr=False, compare=False)

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
