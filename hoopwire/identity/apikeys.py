"""Static API keys for service accounts that have no identity provider.

The configuration stores only each key's sha256, so a leaked config file does not leak keys.
A presented key is hashed and compared against every configured digest in constant time, and
the loop never stops early, so the time taken says nothing about which digest came close.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from hoopwire.config import ApiKeyConfig
from hoopwire.identity.types import AuthError, Identity

__all__ = ["ApiKeyStore"]


class ApiKeyStore:
    def __init__(self, keys: Iterable[ApiKeyConfig]):
        self._keys = tuple(keys)
        for k in self._keys:
            if len(k.sha256) != 32:
                raise ValueError(f"api key {k.name!r}: sha256 must be 32 raw bytes")

    def lookup(self, token: str, use: str = "database") -> Identity:
        try:
            digest = hashlib.sha256(token.encode("utf-8")).digest()
        except UnicodeEncodeError:
            raise AuthError("malformed", "the token is not valid UTF-8") from None
        found: ApiKeyConfig | None = None
        for key in self._keys:
            # No break: every digest is compared whichever matches.
            if hmac.compare_digest(digest, key.sha256) and found is None:
                found = key
        if found is None:
            raise AuthError("unknown_api_key", "no configured API key matches")
        if found.use != use:
            # a key for the database is no admin credential, and the other way round
            raise AuthError("wrong_use", f"API key {found.name!r} is for use = {found.use!r}")
        return Identity(subject=f"apikey:{found.name}", groups=frozenset(found.groups),
                        method="api_key", issuer=None, token_id=found.name, expires_at=None,
                        key_digest=found.sha256)
