"""Tokens presented as the password, through a real gateway and real drivers.

Every refusal must look like a server's own: a FATAL ErrorResponse with SQLSTATE 28P01 (bad
credentials) or 28000 (not allowed), no hint of why -- the reason goes to the operator log.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import time
import urllib.request
import uuid

import asyncpg
import jwt as pyjwt
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from gwfixtures import gateway_config, gateway_env
from helpers import Gateway


def b64(doc) -> str:
    raw = doc if isinstance(doc, bytes) else json.dumps(doc, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def claims(idp, **kw) -> dict:
    now = int(time.time())
    c = {"iss": idp.issuer, "aud": idp.audience, "sub": "agent-7", "groups": ["agents"],
         "iat": now, "nbf": now, "exp": now + 600, "jti": uuid.uuid4().hex}
    c.update(kw)
    return {k: v for k, v in c.items() if v is not None}


class RsaIdp:
    """A second issuer whose RS256 keys live in a JWKS file we can rotate."""

    audience = "hoopwire"

    def __init__(self, directory: str, issuer: str = "https://rsa-idp.hoopwire.test"):
        self.issuer = issuer
        self.jwks = os.path.join(directory, "rsa-jwks.json")
        self.keys: dict[str, rsa.RSAPrivateKey] = {}

    def new_key(self, kid: str) -> None:
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def publish(self, *kids: str) -> None:
        docs = []
        for kid in kids:
            jwk = json.loads(RSAAlgorithm.to_jwk(self.keys[kid].public_key()))
            jwk.update({"kid": kid, "alg": "RS256", "use": "sig"})
            docs.append(jwk)
        tmp = self.jwks + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"keys": docs}, f)
        os.replace(tmp, self.jwks)

    def token(self, kid: str, **kw) -> str:
        c = claims(self, **kw)
        return pyjwt.encode(c, self.keys[kid], algorithm="RS256", headers={"kid": kid})

    def public_pem(self, kid: str) -> bytes:
        return self.keys[kid].public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def rsa_idp(tmp_path_factory):
    r = RsaIdp(str(tmp_path_factory.mktemp("rsa-idp")))
    r.new_key("k1")
    r.new_key("k2")
    r.publish("k1")
    return r


@pytest.fixture(scope="module")
def agw(pg, idp, rsa_idp):
    """Two issuers, API keys, and roles with their own groups."""
    identity = {
        "issuer": [idp.issuer_config(),
                   {"issuer": rsa_idp.issuer, "audience": "hoopwire", "algorithms": ["RS256"],
                    "jwks_uri": "file://" + rsa_idp.jwks, "jwks_refetch_interval": "1s",
                    "jwks_cache_ttl": "1h"}],
        "api_key": idp.api_key_config(),
    }
    cfg = gateway_config(pg, idp, identity=identity,
                         role=[{"name": "md5", "user": "md5user", "password_env": "MD5_PASSWORD",
                                "allow_groups": ["dba"]}])
    with Gateway(cfg, env=gateway_env(pg)) as g:
        yield g


async def _connect(gw, password: str, user: str = "agent-7"):
    return await asyncpg.connect(host="127.0.0.1", port=gw.port("pg"), user=user,
                                 password=password, database="appdb", ssl=False, timeout=10)


def login(gw, password: str, user: str = "agent-7") -> str:
    """Connect, run one query, return current_user."""
    async def main():
        conn = await _connect(gw, password, user)
        try:
            return await conn.fetchval("select current_user")
        finally:
            await conn.close()
    return asyncio.run(main())


def refused(gw, password: str, user: str = "agent-7") -> asyncpg.PostgresError:
    with pytest.raises(asyncpg.PostgresError) as e:
        login(gw, password, user)
    return e.value


def assert_bad_password(gw, password: str, reason: str) -> None:
    err = refused(gw, password)
    assert err.sqlstate == "28P01"
    assert err.severity == "FATAL"
    assert str(err) == 'password authentication failed for user "agent-7"'  # nothing more
    gw.wait_log(rf"reason=auth_failed detail=\"?{reason}")
    assert password not in gw.log_text()


def test_valid_tokens(agw, idp, rsa_idp):
    assert login(agw, idp.token()) == "app"
    assert login(agw, rsa_idp.token("k1")) == "app"
    assert login(agw, idp.api_keys["ci"], user="ci-job") == "app"


def test_expired(agw, idp):
    assert_bad_password(agw, idp.token(ttl=-120), "expired")


def test_not_yet_valid(agw, idp):
    assert_bad_password(agw, idp.token(not_before=time.time() + 600), "not_yet_valid")


def test_wrong_issuer(agw, idp):
    assert_bad_password(agw, idp.token(issuer="https://evil.example"), "bad_issuer")


def test_wrong_audience(agw, idp):
    assert_bad_password(agw, idp.token(audience="someone-else"), "bad_audience")


def test_bad_signature(agw, rsa_idp):
    forged = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = pyjwt.encode(claims(rsa_idp), forged, algorithm="RS256",
                         headers={"kid": "k1"})
    assert_bad_password(agw, token, "bad_signature")


def test_alg_none(agw, idp):
    token = b64({"alg": "none", "typ": "JWT"}) + "." + b64(claims(idp)) + "."
    assert_bad_password(agw, token, "bad_algorithm")


def test_hs256_signed_with_the_public_key(agw, rsa_idp):
    """The classic key-confusion attack: HMAC keyed with the issuer's public RSA key."""
    head = b64({"alg": "HS256", "typ": "JWT", "kid": "k1"})
    body = b64(claims(rsa_idp))
    sig = hmac.new(rsa_idp.public_pem("k1"), f"{head}.{body}".encode(), hashlib.sha256).digest()
    assert_bad_password(agw, f"{head}.{body}.{b64(sig)}", "bad_algorithm")


def test_unknown_kid_then_rotated_jwks(agw, rsa_idp):
    token = rsa_idp.token("k2")
    err = refused(agw, token)
    assert err.sqlstate == "28P01"
    agw.wait_log(r"detail=\"?unknown_kid")
    rsa_idp.publish("k1", "k2")  # the IdP rotates its keys
    deadline = time.monotonic() + 10
    while True:
        try:
            assert login(agw, token) == "app"
            break
        except asyncpg.InvalidPasswordError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)  # the refetch is rate-limited to one per second


def test_wrong_api_key(agw, idp):
    assert_bad_password(agw, "not-a-key-" + "x" * 20, "unknown_api_key")


def test_group_not_allowed(agw, idp):
    err = refused(agw, idp.token(groups=["interns"]))
    assert err.sqlstate == "28000"
    agw.wait_log(r"reason=denied")


def test_role_picked_by_startup_user_with_its_own_groups(agw, idp):
    # `md5` maps to the upstream role md5user and admits only group dba
    assert login(agw, idp.token(groups=["dba"]), user="md5") == "md5user"
    err = refused(agw, idp.token(groups=["agents"]), user="md5")
    assert err.sqlstate == "28000"
    # any other user name is the connection's default role
    assert login(agw, idp.token(groups=["agents"]), user="whoever") == "app"


def connections_total(gw, result: str) -> float:
    """hoopwire_connections_total{connection="pg",result=...}: startups that ended so."""
    text = urllib.request.urlopen(gw.admin_url + "/metrics", timeout=10).read().decode()
    m = re.search(r'^hoopwire_connections_total\{connection="pg",result="%s"\} (\S+)$'
                  % re.escape(result), text, re.M)
    return float(m.group(1)) if m else 0.0


def test_no_password_offered(agw, idp):
    """psql without a password: the gateway asks, the client gives up, nothing breaks.

    The client is libpq (as psql's) with no password to give -- the empty one given here, and
    PGPASSFILE pointing nowhere so no ~/.pgpass can supply one. libpq's own "no password
    supplied" is what it says when the server asked for a password it does not have: a
    gateway that refused (28P01/28000), let the client in, or dropped the connection would
    have produced another error or none. The gateway then counts a client that left during
    startup, and serves the next client."""
    before = connections_total(agw, "client_gone")
    with pytest.raises(psycopg.OperationalError, match="no password supplied") as e:
        psycopg.connect(host="127.0.0.1", port=agw.port("pg"), user="agent-7", dbname="appdb",
                        sslmode="disable", connect_timeout=10, password="",
                        passfile="/nonexistent/hoopwire-tests/pgpass")
    assert e.value.sqlstate is None   # the client's own error: nothing came from the gateway
    deadline = time.monotonic() + 10
    while connections_total(agw, "client_gone") < before + 1:
        assert time.monotonic() < deadline, "the gateway never counted the client that left"
        time.sleep(0.05)
    assert connections_total(agw, "client_gone") == before + 1
    assert "startup failed" not in agw.log_text()   # the internal-error path
    assert login(agw, idp.token()) == "app"


def test_metrics_count_auth_failures(agw, idp):
    refused(agw, idp.token(ttl=-60))
    text = urllib.request.urlopen(agw.admin_url + "/metrics", timeout=5).read().decode()
    assert 'hoopwire_auth_failures_total{connection="pg",reason="expired"}' in text
    assert 'hoopwire_connections_total{connection="pg",result="ok"}' in text
