"""JWT verification: pick the issuer, pick the key, let pyjwt check the rest, map its errors.

The order matters for safety. The unverified header and `iss` are read only to choose *which*
configuration and key to verify with; nothing from them is trusted until pyjwt has checked the
signature with a key we chose:
- `alg: none` is refused outright, whatever the configuration says;
- the token's `alg` must be one the issuer allows, and pyjwt is told to accept exactly that one;
- HS* tokens verify only with the issuer's configured shared secret, never with a JWKS key, so a
  token "signed" with an RSA public key as HMAC secret fails (the classic algorithm confusion);
- asymmetric tokens verify only with a JWKS key of the matching type (jwks.py).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable
from typing import Any

import jwt as pyjwt

from hoopwire.config import IssuerConfig
from hoopwire.identity.types import AuthError, Identity
from hoopwire.identity.jwks import JwksCache

__all__ = ["JwtVerifier", "looks_like_jwt", "claim_at", "groups_from"]

# header.payload.signature, each base64url. The signature may be empty so that an unsigned
# (`alg: none`) token is still recognised as a JWT and refused as one, not tried as an API key.
_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_GROUP_SPLIT = re.compile(r"[\s,]+")

# pyjwt exception -> reason, most specific first (InvalidSignatureError is a DecodeError).
_ERRORS: tuple[tuple[type[Exception], str], ...] = (
    (pyjwt.ExpiredSignatureError, "expired"),
    (pyjwt.ImmatureSignatureError, "not_yet_valid"),
    (pyjwt.InvalidAudienceError, "bad_audience"),
    (pyjwt.InvalidIssuerError, "bad_issuer"),
    (pyjwt.InvalidSignatureError, "bad_signature"),
    (pyjwt.InvalidAlgorithmError, "bad_algorithm"),
    (pyjwt.MissingRequiredClaimError, "missing_claim"),
    (pyjwt.DecodeError, "malformed"),
    # The key was refused by pyjwt (e.g. a shared secret that looks like a PEM key): to the
    # client it is a signature that cannot be verified; the detail tells the operator why.
    (pyjwt.InvalidKeyError, "bad_signature"),
    (pyjwt.InvalidTokenError, "malformed"),  # iat/sub/jti of the wrong type, bad crit, ...
)


def looks_like_jwt(token: str) -> bool:
    return _JWT_SHAPE.fullmatch(token) is not None


def claim_at(claims: dict, path: str) -> Any:
    """The claim at a dotted path ("realm_access.roles" is claims["realm_access"]["roles"]);
    None when absent.

    One reading only: a top-level claim literally named "realm_access.roles" is never looked
    at. Were it preferred, whoever can add a claim to a token (a client-controlled field an
    IdP copies in) could shadow the groups the IdP put at the nested path.
    """
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def groups_from(value: Any) -> frozenset[str]:
    """Groups from a claim value: a list of strings, or one space/comma separated string.

    Anything else gives no groups: groups grant access, so an odd shape must grant nothing.
    """
    if isinstance(value, str):
        return frozenset(g for g in _GROUP_SPLIT.split(value) if g)
    if isinstance(value, list) and all(isinstance(g, str) for g in value):
        return frozenset(g for g in value if g)
    return frozenset()


class JwtVerifier:
    def __init__(self, issuers: Iterable[IssuerConfig], jwks: JwksCache):
        self._jwks = jwks
        self._issuers: dict[str, IssuerConfig] = {}
        for iss in issuers:
            if not iss.audience:
                raise ValueError(f"issuer {iss.issuer!r} has no audience")
            self._issuers.setdefault(iss.issuer, iss)  # the first of duplicates wins

    async def verify(self, token: str, *, admin_audience: str | None = None) -> Identity:
        try:
            return await self._verify(token, admin_audience)
        except AuthError as e:
            # Details are built from our own words and pyjwt's messages; make sure neither
            # can ever carry the token (or a piece of it) into a log line.
            clean = _scrub(e.detail, token)
            if clean != e.detail:
                raise AuthError(e.reason, clean) from None
            raise

    async def _verify(self, token: str, admin_audience: str | None) -> Identity:
        if not looks_like_jwt(token):
            raise AuthError("malformed", "not three base64url segments")
        header_b64, payload_b64, _ = token.split(".")
        header = _b64json(header_b64, "header")
        alg = header.get("alg")
        if not isinstance(alg, str) or not alg:
            raise AuthError("malformed", "the header has no alg")
        if alg.lower() == "none":
            raise AuthError("bad_algorithm", "unsigned tokens (alg none) are never accepted")
        if not self._issuers:
            raise AuthError("no_issuer", "a JWT was presented but no issuer is configured")

        unverified = _b64json(payload_b64, "payload")
        iss = unverified.get("iss")
        if iss is None:
            raise AuthError("missing_claim", "the token has no iss claim")
        if not isinstance(iss, str):
            raise AuthError("malformed", "the iss claim is not a string")
        cfg = self._issuers.get(iss)
        if cfg is None:
            raise AuthError("bad_issuer", f"issuer {_short(iss)} is not configured")
        if alg not in cfg.algorithms:
            raise AuthError("bad_algorithm",
                            f"{_short(alg)} is not among the algorithms allowed for {cfg.issuer}")

        key = await self._key(cfg, header, alg)
        audience = [admin_audience] if admin_audience is not None else list(cfg.audience)
        require = ["exp", "iss"]
        if cfg.max_token_lifetime is not None:
            require.append("iat")
        try:
            claims = pyjwt.decode(
                token, key, algorithms=[alg], audience=audience, issuer=cfg.issuer,
                leeway=cfg.leeway, options={"require": require})
        except (pyjwt.PyJWTError, TypeError, ValueError) as e:
            raise _map_error(e, cfg, unverified, audience) from None
        _check_lifetime(cfg, claims)
        return _identity(cfg, claims)

    async def _key(self, cfg: IssuerConfig, header: dict, alg: str) -> Any:
        if alg.startswith("HS"):
            if cfg.shared_secret is None:
                raise AuthError("bad_algorithm", f"{alg} needs a shared secret and {cfg.issuer} "
                                "has none configured")
            return cfg.shared_secret.get().encode("utf-8")
        if cfg.jwks_uri is None:
            raise AuthError("bad_algorithm", f"{alg} needs a JWKS and {cfg.issuer} has no jwks_uri")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthError("malformed", "the kid header is not a string")
        return await self._jwks.key_for(cfg.jwks_uri, kid, alg)


def _check_lifetime(cfg: IssuerConfig, claims: dict) -> None:
    """exp - iat within the issuer's max_token_lifetime: a leaked long-lived token is the
    kind that outlives its holder's rights."""
    limit = cfg.max_token_lifetime
    if limit is None:
        return
    try:
        lifetime = float(claims["exp"]) - float(claims["iat"])
    except (KeyError, TypeError, ValueError, OverflowError):
        raise AuthError("malformed", "exp or iat is not a number") from None
    if not lifetime <= limit:   # NaN-proof
        raise AuthError("lifetime_too_long", f"exp - iat is {lifetime:.0f}s, more than the "
                                             f"{limit:g}s allowed for {cfg.issuer}")


def _identity(cfg: IssuerConfig, claims: dict) -> Identity:
    subject = claim_at(claims, cfg.subject_claim)
    if not isinstance(subject, str) or not subject:
        raise AuthError("missing_claim", f"no {cfg.subject_claim!r} claim (or not a string)")
    jti = claims.get("jti")
    try:
        expires_at = float(claims["exp"])
    except (TypeError, ValueError, OverflowError):
        raise AuthError("malformed", "the exp claim is not a number") from None
    groups = groups_from(claim_at(claims, cfg.groups_claim))
    if cfg.allowed_groups is not None:
        # An issuer grants only what it is trusted for: a service's HS256 issuer minting
        # "platform" must not make an admin. The rest are dropped, not refused: the token
        # is still who it says, just without the groups its issuer may not hand out.
        groups = groups & frozenset(cfg.allowed_groups)
    return Identity(subject=subject, groups=groups,
                    method="jwt", issuer=cfg.issuer,
                    token_id=jti if isinstance(jti, str) else None, expires_at=expires_at)


def _map_error(e: Exception, cfg: IssuerConfig, unverified: dict,
               audience: list[str]) -> AuthError:
    for cls, reason in _ERRORS:
        if isinstance(e, cls):
            break
    else:
        reason = "malformed"
    if reason == "expired":
        detail = f"exp {_short(unverified.get('exp'))} is past (leeway {cfg.leeway:g}s)"
    elif reason == "not_yet_valid":
        detail = f"nbf/iat is in the future (leeway {cfg.leeway:g}s)"
    elif reason == "bad_audience":
        detail = f"aud {_short(unverified.get('aud'))} is none of {audience}"
    elif reason == "missing_claim":
        detail = f"no {_short(getattr(e, 'claim', '?'))} claim"
    else:
        # Only the exception's type: pyjwt's text quotes the unverified token (an unknown
        # `crit` entry, a bad header value) -- anyone, with no key, could write it into the log.
        detail = f"{type(e).__name__} from the JWT library"
    return AuthError(reason, detail)


def _b64json(segment: str, what: str) -> dict:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise AuthError("malformed", f"the {what} is not base64url") from None
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        raise AuthError("malformed", f"the {what} is not JSON") from None
    if not isinstance(obj, dict):
        raise AuthError("malformed", f"the {what} is not a JSON object")
    return obj


def _scrub(text: str, token: str) -> str:
    for piece in (token, *token.split(".")):
        if len(piece) >= 8 and piece in text:
            text = text.replace(piece, "<token>")
    return text


def _short(value: Any, limit: int = 100) -> str:
    """repr() of an untrusted value from the token, cut short for the log."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"
