"""The identity layer with real keys, real tokens and a real local JWKS server; no mocks."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import stat
import time
from types import SimpleNamespace

import jwt as pyjwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from hoopwire.config import ApiKeyConfig, IdentityConfig, IssuerConfig, Secret
from hoopwire.identity import AUTH_REASONS, Authenticator, AuthError, Identity
from hoopwire.identity.devtoken import create_dev_key, mint_token
from hoopwire.identity.jwks import JwksCache
from hoopwire.identity.jwt import JwtVerifier, claim_at, groups_from, looks_like_jwt

ISS = "https://idp.test"
AUD = "hoopwire"
SHARED = "s3cret-shared-value-at-least-32-bytes-long!"

pytestmark = pytest.mark.timeout(30)

# Every token a test makes, so the autouse fixture can prove none of them reached a log line.
_issued: list[str] = []


# ---------------------------------------------------------------------------------------------
# keys, JWKS documents and token helpers

def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwk(public_key, kid: str, alg: str) -> dict:
    algo = RSAAlgorithm if alg.startswith(("RS", "PS")) else ECAlgorithm
    jwk = algo.to_jwk(public_key, as_dict=True)
    jwk.update({"kid": kid, "alg": alg, "use": "sig"})
    return jwk


def _write_json(path, doc) -> str:
    path.write_text(json.dumps(doc))
    return path.as_uri()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    dev_key = str(d / "dev.pem")
    dev_jwks = create_dev_key(dev_key, kid="dev")
    ec1 = ec.generate_private_key(ec.SECP256R1())
    ec_impostor = ec.generate_private_key(ec.SECP256R1())  # same kid as ec1, different key
    ec2 = ec.generate_private_key(ec.SECP256R1())
    rsa1 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    main_doc = {"keys": [
        _jwk(ec1.public_key(), "ec1", "ES256"),
        _jwk(rsa1.public_key(), "rsa1", "RS256"),
        # Never usable: a symmetric key published in a JWKS is no secret.
        {"kty": "oct", "kid": "sym", "k": _b64(b"oct-key-material-oct-key-material!!")},
        # Broken entries must be skipped, not sink the set.
        {"kty": "RSA", "kid": "broken-rsa", "n": "AQAB"},
        {"kty": "EC", "kid": "broken-ec", "crv": "P-256", "x": "AAAA", "y": "AAAA"},
        {"kty": "XYZ", "kid": "weird"},
        "not-an-object",
    ]}
    two_ec_doc = {"keys": [_jwk(ec1.public_key(), "ec1", "ES256"),
                           _jwk(ec2.public_key(), "ec2", "ES256")]}
    return SimpleNamespace(
        dev_key=dev_key, dev_jwks=dev_jwks, dev_uri="file://" + dev_jwks,
        ec1=ec1, ec2=ec2, ec_impostor=ec_impostor, rsa1=rsa1,
        uri=_write_json(d / "main.jwks.json", main_doc),
        two_ec_uri=_write_json(d / "two-ec.jwks.json", two_ec_doc),
        missing_uri=(d / "does-not-exist.json").as_uri(),
    )


def claims(**over) -> dict:
    now = int(time.time())
    c = {"iss": ISS, "aud": AUD, "sub": "agent-7", "iat": now, "nbf": now, "exp": now + 300,
         "jti": "jti-1", "groups": ["analysts", "agents"]}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def sign(key, alg: str, kid: str | None, **over) -> str:
    headers = {"kid": kid} if kid is not None else {}
    token = pyjwt.encode(claims(**over), key, algorithm=alg, headers=headers)
    _issued.append(token)
    return token


def handmade(header: dict, payload: dict, signature: bytes | None = None,
             hmac_key: bytes | None = None) -> str:
    """A token assembled by hand, for shapes pyjwt refuses to produce."""
    signing_input = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(payload).encode())
    if hmac_key is not None:
        signature = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    token = signing_input + "." + _b64(signature or b"")
    _issued.append(token)
    return token


def issuer(keys, **over) -> IssuerConfig:
    kw = dict(issuer=ISS, audience=(AUD,), jwks_uri=keys.uri, algorithms=("ES256", "RS256"),
              leeway=5.0)
    kw.update(over)
    return IssuerConfig(**kw)


def config(*issuers: IssuerConfig, api_keys=()) -> IdentityConfig:
    return IdentityConfig(issuers=tuple(issuers), api_keys=tuple(api_keys))


async def _auth_once(cfg: IdentityConfig, token: str) -> Identity:
    auth = Authenticator(cfg)
    try:
        return await auth.authenticate(token)
    finally:
        await auth.close()


def authenticate(cfg: IdentityConfig, token: str) -> Identity:
    return asyncio.run(_auth_once(cfg, token))


class FakeClock:
    """The JWKS cache's clock (JwksCache takes one), moved by hand: ttl and refetch-interval
    tests step over their windows exactly instead of sleeping through them, so a slow machine
    can neither cut a window short nor stretch one."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ClockedAuth:
    """What Authenticator does for a JWT (a JwtVerifier over a JwksCache), with the cache on
    a FakeClock. Token times (exp, nbf) are still checked against the real time."""

    def __init__(self, cfg: IdentityConfig, clock: FakeClock):
        self._jwks = JwksCache(cfg.issuers, clock=clock)
        self._jwt = JwtVerifier(cfg.issuers, self._jwks)

    async def authenticate(self, token: str) -> Identity:
        return await self._jwt.verify(token)

    async def close(self) -> None:
        await self._jwks.close()


def assert_clean(err: AuthError, token: str) -> None:
    assert err.reason in AUTH_REASONS
    for text in (str(err), repr(err), err.detail):
        assert not token or token not in text
        for piece in token.split("."):
            if len(piece) >= 8:
                assert piece not in text


def fails(cfg: IdentityConfig, token: str, reason: str) -> AuthError:
    with pytest.raises(AuthError) as info:
        authenticate(cfg, token)
    assert info.value.reason == reason, info.value
    assert_clean(info.value, token)
    return info.value


async def afails(auth: Authenticator, token: str, reason: str) -> AuthError:
    with pytest.raises(AuthError) as info:
        await auth.authenticate(token)
    assert info.value.reason == reason, info.value
    assert_clean(info.value, token)
    return info.value


@pytest.fixture(autouse=True)
def no_tokens_in_logs(caplog):
    caplog.set_level(logging.DEBUG, logger="hoopwire.identity")
    _issued.clear()
    yield
    for token in _issued:
        assert token not in caplog.text
        for piece in token.split("."):
            assert len(piece) < 8 or piece not in caplog.text


# ---------------------------------------------------------------------------------------------
# a real JWKS server

class JwksServer:
    def __init__(self):
        self.doc: dict = {"keys": []}
        self.status = 200
        self.hits = 0
        self.delay = 0.0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status != 200:
            return web.Response(status=self.status, text="down")
        return web.json_response(self.doc)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/jwks.json", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/jwks.json"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@contextlib.asynccontextmanager
async def jwks_server():
    server = JwksServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


# ---------------------------------------------------------------------------------------------
# valid tokens

def test_valid_es256_dev_token_via_file_jwks(keys):
    before = time.time()
    token = mint_token(keys.dev_key, issuer=ISS, audience=AUD, subject="agent-7",
                       groups=["analysts"], ttl=120)
    after = time.time()
    _issued.append(token)
    ident = authenticate(config(issuer(keys, jwks_uri=keys.dev_uri, algorithms=("ES256",))), token)
    assert ident.subject == "agent-7"
    assert ident.groups == frozenset({"analysts"})
    assert ident.method == "jwt"
    assert ident.issuer == ISS
    assert ident.token_id and len(ident.token_id) == 32
    # exp is the minting time + 120 s, whole seconds
    assert int(before + 120) <= ident.expires_at <= after + 120


def test_valid_es256_and_rs256_from_one_jwks(keys):
    cfg = config(issuer(keys))
    ident = authenticate(cfg, sign(keys.ec1, "ES256", "ec1"))
    assert (ident.subject, ident.groups, ident.token_id) == (
        "agent-7", frozenset({"analysts", "agents"}), "jti-1")
    ident = authenticate(cfg, sign(keys.rsa1, "RS256", "rsa1", sub="ci-job", jti=None))
    assert ident.subject == "ci-job" and ident.token_id is None


def test_audience_list_and_multiple_configured_audiences(keys):
    cfg = config(issuer(keys, audience=("other", AUD)))
    assert authenticate(cfg, sign(keys.ec1, "ES256", "ec1", aud=["x", AUD])).subject == "agent-7"


def test_token_without_kid_needs_exactly_one_usable_key(keys):
    # main JWKS: one ES256 key (plus keys of other types) -> unambiguous
    assert authenticate(config(issuer(keys)), sign(keys.ec1, "ES256", None)).subject == "agent-7"
    # two ES256 keys -> ambiguous, refused
    fails(config(issuer(keys, jwks_uri=keys.two_ec_uri)), sign(keys.ec1, "ES256", None),
          "unknown_kid")


# ---------------------------------------------------------------------------------------------
# time

def test_expired(keys):
    now = int(time.time())
    fails(config(issuer(keys)), sign(keys.ec1, "ES256", "ec1", iat=now - 900, nbf=now - 900,
                                      exp=now - 60), "expired")


def test_not_yet_valid(keys):
    now = int(time.time())
    fails(config(issuer(keys)), sign(keys.ec1, "ES256", "ec1", nbf=now + 120, exp=now + 900),
          "not_yet_valid")


def test_leeway_honoured(keys):
    # a minute off either way: a ten-minute leeway accepts both, none refuses both; the margins
    # (a minute for the refusals, nine for the acceptances) are far beyond what the test takes
    now = int(time.time())
    expired_a_bit = sign(keys.ec1, "ES256", "ec1", iat=now - 900, nbf=now - 900, exp=now - 60)
    early_a_bit = sign(keys.ec1, "ES256", "ec1", nbf=now + 60, exp=now + 900)
    lenient = config(issuer(keys, leeway=600.0))
    strict = config(issuer(keys, leeway=0.0))
    assert authenticate(lenient, expired_a_bit).subject == "agent-7"
    assert authenticate(lenient, early_a_bit).subject == "agent-7"
    fails(strict, expired_a_bit, "expired")
    fails(strict, early_a_bit, "not_yet_valid")


def test_exp_is_required(keys):
    err = fails(config(issuer(keys)), sign(keys.ec1, "ES256", "ec1", exp=None), "missing_claim")
    assert "exp" in err.detail


# ---------------------------------------------------------------------------------------------
# issuer, audience, subject

def test_wrong_issuer(keys):
    fails(config(issuer(keys)), sign(keys.ec1, "ES256", "ec1", iss="https://evil.test"),
          "bad_issuer")


def test_missing_issuer_claim(keys):
    fails(config(issuer(keys)), sign(keys.ec1, "ES256", "ec1", iss=None), "missing_claim")


def test_wrong_audience(keys):
    fails(config(issuer(keys)), sign(keys.ec1, "ES256", "ec1", aud="someone-else"), "bad_audience")
    fails(config(issuer(keys)), sign(keys.ec1, "ES256", "ec1", aud=None), "missing_claim")


def test_issuer_chosen_by_iss_among_several(keys):
    other = issuer(keys, issuer="https://other.test", jwks_uri=keys.dev_uri,
                   algorithms=("ES256",), audience=("elsewhere",))
    cfg = config(other, issuer(keys))
    assert authenticate(cfg, sign(keys.ec1, "ES256", "ec1")).issuer == ISS
    # the other issuer's JWKS does not hold ec1, and its audience differs
    fails(cfg, sign(keys.ec1, "ES256", "ec1", iss="https://other.test", aud="elsewhere"),
          "unknown_kid")


def test_subject_claim_configurable_and_required(keys):
    cfg = config(issuer(keys, subject_claim="client_id"))
    token = sign(keys.ec1, "ES256", "ec1", client_id="etl-bot")
    assert authenticate(cfg, token).subject == "etl-bot"
    fails(cfg, sign(keys.ec1, "ES256", "ec1"), "missing_claim")


def test_no_issuer_configured(keys):
    fails(config(), sign(keys.ec1, "ES256", "ec1"), "no_issuer")


# ---------------------------------------------------------------------------------------------
# signatures and algorithms

def test_bad_signature_other_key_same_kid(keys):
    fails(config(issuer(keys)), sign(keys.ec_impostor, "ES256", "ec1"), "bad_signature")


def test_tampered_payload(keys):
    token = sign(keys.ec1, "ES256", "ec1")
    h, _, s = token.split(".")
    forged = h + "." + _b64(json.dumps(claims(sub="root", groups=["dba"])).encode()) + "." + s
    _issued.append(forged)
    fails(config(issuer(keys)), forged, "bad_signature")


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_never_accepted(keys, alg):
    token = handmade({"alg": alg, "typ": "JWT", "kid": "ec1"}, claims())
    assert token.endswith(".")
    fails(config(issuer(keys)), token, "bad_algorithm")
    # not even when the configuration (built by hand, past validation) lists it
    fails(config(issuer(keys, algorithms=("none", "ES256"))), token, "bad_algorithm")
    # a non-empty bogus signature changes nothing
    fails(config(issuer(keys)), handmade({"alg": alg}, claims(), b"x" * 32), "bad_algorithm")


def test_alg_not_allowed_for_issuer(keys):
    fails(config(issuer(keys, algorithms=("ES256",))), sign(keys.rsa1, "RS256", "rsa1"),
          "bad_algorithm")


def test_hs256_signed_with_rsa_public_key_pem_fails(keys):
    pem = keys.rsa1.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    token = handmade({"alg": "HS256", "typ": "JWT", "kid": "rsa1"}, claims(), hmac_key=pem)
    # HS256 not allowed for this issuer
    fails(config(issuer(keys)), token, "bad_algorithm")
    # HS256 allowed but only with the configured secret: the PEM is not it
    with_hs = issuer(keys, algorithms=("RS256", "HS256"), shared_secret=Secret(SHARED, "env:T"))
    fails(config(with_hs), token, "bad_signature")
    # HS256 allowed but no shared secret: never falls back to a JWKS key
    fails(config(issuer(keys, algorithms=("RS256", "HS256"))), token, "bad_algorithm")


def test_hs256_with_shared_secret(keys):
    cfg = config(issuer(keys, jwks_uri=None, algorithms=("HS256",),
                        shared_secret=Secret(SHARED, "env:T")))
    ident = authenticate(cfg, sign(SHARED.encode(), "HS256", None))
    assert ident.subject == "agent-7" and ident.method == "jwt"
    fails(cfg, sign(b"another-secret-another-secret-another!!", "HS256", None), "bad_signature")


def test_hs256_without_shared_secret_fails(keys):
    cfg = config(issuer(keys, jwks_uri=None, algorithms=("HS256",)))
    fails(cfg, sign(SHARED.encode(), "HS256", None), "bad_algorithm")


def test_oct_jwk_never_used(keys):
    oct_secret = b"oct-key-material-oct-key-material!!"
    # an HS256 token keyed with the JWKS's published oct key
    hs = sign(oct_secret, "HS256", "sym")
    fails(config(issuer(keys, algorithms=("ES256", "RS256", "HS256"))), hs, "bad_algorithm")
    fails(config(issuer(keys, algorithms=("ES256", "HS256"), shared_secret=Secret(SHARED, "e"))),
          hs, "bad_signature")
    # an asymmetric alg pointing at the oct key by kid
    fails(config(issuer(keys)), sign(keys.rsa1, "RS256", "sym"), "unknown_kid")


def test_kid_of_wrong_key_type_refused(keys):
    # an ES256 token whose kid names the RSA key
    fails(config(issuer(keys)), sign(keys.ec1, "ES256", "rsa1"), "bad_algorithm")


def test_unusable_jwks_entries_skipped_with_warning(keys, caplog):
    assert authenticate(config(issuer(keys)), sign(keys.ec1, "ES256", "ec1")).subject == "agent-7"
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    for kid in ("broken-rsa", "broken-ec", "weird", "sym"):
        assert kid in warned
    fails(config(issuer(keys)), sign(keys.ec1, "ES256", "broken-ec"), "unknown_kid")


# ---------------------------------------------------------------------------------------------
# JWKS fetching: rotation, rate limit, outages

def test_unknown_kid_rotation_and_refetch_rate_limit(keys):
    interval = 60.0
    key_a, key_b = keys.ec1, keys.ec2
    clock = FakeClock()

    async def scenario():
        async with jwks_server() as server:
            server.doc = {"keys": [_jwk(key_a.public_key(), "A", "ES256")]}
            server.delay = 0.05  # so concurrent requests really overlap one fetch
            auth = ClockedAuth(config(issuer(keys, jwks_uri=server.url, algorithms=("ES256",),
                                             jwks_cache_ttl=3600.0,
                                             jwks_refetch_interval=interval)), clock)
            try:
                token_a = sign(key_a, "ES256", "A")
                token_b = sign(key_b, "ES256", "B")
                assert (await auth.authenticate(token_a)).subject == "agent-7"
                assert server.hits == 1
                # B unknown, and the last fetch was just now: no refetch
                await afails(auth, token_b, "unknown_kid")
                assert server.hits == 1
                # the IdP rotates; still within the interval, so still no refetch
                server.doc = {"keys": server.doc["keys"] + [_jwk(key_b.public_key(), "B", "ES256")]}
                await afails(auth, token_b, "unknown_kid")
                clock.advance(interval - 1)
                await afails(auth, token_b, "unknown_kid")
                assert server.hits == 1
                # past the interval: one fetch, shared by every concurrent request
                clock.advance(1)
                idents = await asyncio.gather(*(auth.authenticate(token_b) for _ in range(10)))
                assert {i.subject for i in idents} == {"agent-7"}
                assert server.hits == 2
                # now cached: no more fetches for known keys
                await auth.authenticate(token_b)
                await auth.authenticate(token_a)
                assert server.hits == 2
                # a random kid right after a fetch does not reach the server...
                token_c = sign(keys.ec_impostor, "ES256", "C")
                await afails(auth, token_c, "unknown_kid")
                assert server.hits == 2
                # ...and after the interval it costs one fetch, then is still unknown
                clock.advance(interval - 1)
                await afails(auth, token_c, "unknown_kid")
                assert server.hits == 2
                clock.advance(1)
                await asyncio.gather(*(afails(auth, token_c, "unknown_kid") for _ in range(5)))
                assert server.hits == 3
            finally:
                await auth.close()

    asyncio.run(scenario())


def test_stale_jwks_used_when_refetch_fails(keys, caplog):
    clock = FakeClock()

    async def scenario():
        async with jwks_server() as server:
            server.doc = {"keys": [_jwk(keys.ec1.public_key(), "ec1", "ES256")]}
            auth = ClockedAuth(config(issuer(keys, jwks_uri=server.url, algorithms=("ES256",),
                                             jwks_cache_ttl=300.0, jwks_refetch_interval=60.0)),
                               clock)
            try:
                token = sign(keys.ec1, "ES256", "ec1")
                await auth.authenticate(token)
                server.status = 500
                clock.advance(299)
                await auth.authenticate(token)   # still fresh: no fetch
                assert server.hits == 1
                clock.advance(1)
                # the cache expired, the refetch fails, the stale copy keeps working
                assert (await auth.authenticate(token)).subject == "agent-7"
                assert server.hits == 2
                # and a failing IdP is not hammered: no new attempt within the interval
                clock.advance(59)
                await auth.authenticate(token)
                assert server.hits == 2
                clock.advance(1)                 # ...but one once it has passed
                assert (await auth.authenticate(token)).subject == "agent-7"
                assert server.hits == 3
            finally:
                await auth.close()

    asyncio.run(scenario())
    assert any("refetch failed" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)


def test_jwks_unavailable(keys, caplog):
    fails(config(issuer(keys, jwks_uri=keys.missing_uri)), sign(keys.ec1, "ES256", "ec1"),
          "jwks_unavailable")

    async def scenario():
        async with jwks_server() as server:
            server.status = 503
            await _expect(server.url)
        # and with nothing listening at all (the server is gone now)
        await _expect(server.url)

    async def _expect(url):
        auth = Authenticator(config(issuer(keys, jwks_uri=url)))
        try:
            await afails(auth, sign(keys.ec1, "ES256", "ec1"), "jwks_unavailable")
        finally:
            await auth.close()

    asyncio.run(scenario())
    assert any("cannot fetch" in r.getMessage() for r in caplog.records)


def test_jwks_first_fetch_failure_retried_soon(keys, tmp_path):
    # With no key set at all, a failed first fetch is retried after about a second, not after
    # the (longer) refetch interval, and not on every request either.
    path = tmp_path / "late.jwks.json"
    clock = FakeClock()

    async def scenario():
        auth = ClockedAuth(config(issuer(keys, jwks_uri=path.as_uri(),
                                         jwks_refetch_interval=60.0)), clock)
        try:
            token = sign(keys.ec1, "ES256", "ec1")
            await afails(auth, token, "jwks_unavailable")
            path.write_text(json.dumps({"keys": [_jwk(keys.ec1.public_key(), "ec1", "ES256")]}))
            await afails(auth, token, "jwks_unavailable")  # too soon to look again
            clock.advance(0.5)
            await afails(auth, token, "jwks_unavailable")  # still too soon
            clock.advance(1.0)                             # 1.5 s: well before 60
            assert (await auth.authenticate(token)).subject == "agent-7"
        finally:
            await auth.close()

    asyncio.run(scenario())


def test_jwks_not_a_key_set(keys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a jwks"}')
    fails(config(issuer(keys, jwks_uri=bad.as_uri())), sign(keys.ec1, "ES256", "ec1"),
          "jwks_unavailable")


# ---------------------------------------------------------------------------------------------
# groups

def test_groups_from_dotted_claim(keys):
    cfg = config(issuer(keys, groups_claim="realm_access.roles"))
    token = sign(keys.ec1, "ES256", "ec1", groups=None,
                 realm_access={"roles": ["dba", "analysts"]})
    assert authenticate(cfg, token).groups == frozenset({"dba", "analysts"})
    # the claim missing -> no groups, still authenticated
    assert authenticate(cfg, sign(keys.ec1, "ES256", "ec1")).groups == frozenset()


def test_groups_claim_is_only_a_nested_path(keys):
    # groups_claim is read one way, as a path: a top-level claim whose name has dots in it is
    # never looked at, so it cannot shadow (or stand in for) the nested claim
    cfg = config(issuer(keys, groups_claim="https://hoopwire.test/groups"))
    token = sign(keys.ec1, "ES256", "ec1", **{"https://hoopwire.test/groups": "a b"})
    assert authenticate(cfg, token).groups == frozenset()
    cfg = config(issuer(keys, groups_claim="realm_access.roles"))
    token = sign(keys.ec1, "ES256", "ec1", groups=None, realm_access={"roles": ["x"]},
                 **{"realm_access.roles": ["admins"]})
    assert authenticate(cfg, token).groups == frozenset({"x"})


def test_groups_from_dev_token_nested_claim(keys):
    token = mint_token(keys.dev_key, issuer=ISS, audience=[AUD], subject="s", groups=["x", "y"],
                       groups_claim="realm_access.roles")
    _issued.append(token)
    cfg = config(issuer(keys, jwks_uri=keys.dev_uri, groups_claim="realm_access.roles"))
    assert authenticate(cfg, token).groups == frozenset({"x", "y"})


@pytest.mark.parametrize("value, expected", [
    (["a", "b"], {"a", "b"}),
    ("a b", {"a", "b"}),
    ("a,b, c", {"a", "b", "c"}),
    ("", set()),
    (["a", 1], set()),          # not a list of strings: nothing, never a partial guess
    ({"a": True}, set()),
    (42, set()),
    (None, set()),
])
def test_groups_from_values(value, expected):
    assert groups_from(value) == frozenset(expected)


def test_claim_at():
    c = {"a": {"b": {"c": 1}}, "x.y": 2}
    assert claim_at(c, "a.b.c") == 1
    assert claim_at(c, "x.y") is None        # a path, never a top-level name with dots
    assert claim_at(c, "a.z") is None
    assert claim_at(c, "a.b.c.d") is None


# ---------------------------------------------------------------------------------------------
# API keys

API_KEY = "hw_live_4f1c2e9a7b6d5c3e"


def _api_cfg() -> IdentityConfig:
    return config(api_keys=[
        ApiKeyConfig("nightly-etl", hashlib.sha256(API_KEY.encode()).digest(), ("etl",)),
        ApiKeyConfig("other", hashlib.sha256(b"something-else").digest(), ("ops",)),
    ])


def test_api_key_valid():
    ident = authenticate(_api_cfg(), API_KEY)
    assert ident == Identity(subject="apikey:nightly-etl", groups=frozenset({"etl"}),
                             method="api_key", issuer=None, token_id="nightly-etl",
                             expires_at=None)


def test_api_key_wrong():
    _issued.append(API_KEY + "x")
    fails(_api_cfg(), API_KEY + "x", "unknown_api_key")
    fails(_api_cfg(), "a.b", "unknown_api_key")
    fails(config(), API_KEY, "unknown_api_key")


# ---------------------------------------------------------------------------------------------
# malformed input

def test_looks_like_jwt():
    assert looks_like_jwt("eyJh.eyJi.c2ln")
    assert looks_like_jwt("eyJh.eyJi.")  # unsigned: still a JWT, refused as one
    assert not looks_like_jwt("eyJh.eyJi")
    assert not looks_like_jwt("a.b.c.d")
    assert not looks_like_jwt("eyJh.eyJi.c2ln\n")
    assert not looks_like_jwt("hw_live key")


def test_malformed_tokens(keys):
    cfg = config(issuer(keys))
    good = sign(keys.ec1, "ES256", "ec1")
    h, p, s = good.split(".")
    cases = [
        "abcdefghij.klmnopqrstu.vwxyz012345",        # base64url, but not JSON
        _b64(b"[1,2]") + "." + p + "." + s,           # header not an object
        _b64(b'{"typ":"JWT"}') + "." + p + "." + s,   # header without alg
        h + "." + _b64(b'"just a string"') + "." + s,  # payload not an object
        h + "." + p[:-1] + "." + s,                   # truncated payload
        h + "." + p + "." + s[:-1],                   # truncated signature (not base64)
        "x" * 20000,                                  # far too long for anything
    ]
    _issued.extend(cases)
    for bad in cases:
        fails(cfg, bad, "malformed")
    fails(cfg, "", "malformed")


def test_auth_error_interface():
    e = AuthError("expired")
    assert (e.reason, e.detail, str(e)) == ("expired", "", "expired")
    e = AuthError("bad_issuer", "issuer 'x' is not configured")
    assert str(e) == "bad_issuer: issuer 'x' is not configured"


# ---------------------------------------------------------------------------------------------
# the development helper

def test_dev_key_files(tmp_path):
    key_path = str(tmp_path / "dev.pem")
    jwks_path = create_dev_key(key_path, kid="k1")
    assert jwks_path == key_path + ".jwks.json"
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    with open(jwks_path) as f:
        doc = json.load(f)
    (jwk,) = doc["keys"]
    assert (jwk["kid"], jwk["alg"], jwk["use"], jwk["kty"], jwk["crv"]) == (
        "k1", "ES256", "sig", "EC", "P-256")
    assert "d" not in jwk  # public half only
    token = mint_token(key_path, issuer=ISS, audience=AUD, subject="s", kid="k1",
                       extra_claims={"scope": "read"})
    _issued.append(token)
    header = pyjwt.get_unverified_header(token)
    assert (header["alg"], header["kid"]) == ("ES256", "k1")
    body = pyjwt.decode(token, options={"verify_signature": False})
    assert {"exp", "iat", "nbf", "jti", "scope"} <= body.keys()


def test_dev_token_not_before(keys):
    token = mint_token(keys.dev_key, issuer=ISS, audience=AUD, subject="s",
                       not_before=time.time() + 300)
    _issued.append(token)
    fails(config(issuer(keys, jwks_uri=keys.dev_uri)), token, "not_yet_valid")
