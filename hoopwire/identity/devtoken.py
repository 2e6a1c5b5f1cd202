"""DEVELOPMENT ONLY: a throwaway signing key and tokens for demos and tests.

This stands in for an identity provider on a laptop: `create_dev_key` writes an EC P-256 private
key and the matching public JWKS (point an issuer's `jwks_uri` at it with file://), and
`mint_token` signs ES256 tokens with that key. A real deployment gets its tokens from its IdP;
nothing in the gateway imports this module.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

__all__ = ["create_dev_key", "mint_token", "jwks_path_for"]


def jwks_path_for(key_path: str) -> str:
    return key_path + ".jwks.json"


def create_dev_key(key_path: str, kid: str = "dev") -> str:
    """Write a new P-256 private key (PEM, mode 0600) and its public JWKS; return the JWKS path."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    # Created 0600 from the start (not chmod-ed after writing) so the key is never readable by
    # others, even for a moment; fchmod covers a file that already existed with wider rights.
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(pem)
    jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk.update({"kid": kid, "alg": "ES256", "use": "sig"})
    jwks_path = jwks_path_for(key_path)
    tmp = jwks_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"keys": [jwk]}, f, indent=2)
        f.write("\n")
    os.replace(tmp, jwks_path)  # a gateway reading the JWKS never sees half a file
    return jwks_path


def mint_token(key_path: str, *, issuer: str, audience: str | Sequence[str], subject: str,
               groups: Iterable[str] = (), ttl: float = 900.0, kid: str = "dev",
               not_before: float | None = None, extra_claims: Mapping[str, Any] | None = None,
               groups_claim: str = "groups") -> str:
    """Sign an ES256 token with the key at `key_path`.

    `not_before` is a unix time (default: now). `groups` go at `groups_claim`, a dotted path
    ("realm_access.roles" nests them). `extra_claims` are added last and may override anything.
    """
    with open(key_path, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    now = time.time()
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience if isinstance(audience, str) else list(audience),
        "sub": subject,
        "iat": int(now),
        "nbf": int(now if not_before is None else not_before),
        "exp": int(now + ttl),
        "jti": secrets.token_hex(16),
    }
    *parents, leaf = groups_claim.split(".")
    node = claims
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = list(groups)
    if extra_claims:
        claims.update(extra_claims)
    return pyjwt.encode(claims, key, algorithm="ES256", headers={"kid": kid})
