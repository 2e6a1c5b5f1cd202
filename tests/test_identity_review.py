"""A review of issue 26's identity changes, as an attacker holding one issuer's valid token.

Each test is one attempt to get around a guarantee, through the real gateway (real clients, the
real admin API, real processes with --workers) or the real Authenticator where the attempt is a
token's claims. Generated variants (hypothesis) where the attack is a family of shapes:

* a token's lifetime: iat/exp of every type and offset never buy more than max_token_lifetime;
* an issuer's groups: no shape of the groups claim (lists, separators, nested paths, look-alike
  names) gets a group its issuer may not grant;
* the admin audience: no near-miss `aud` is the admin audience, and a database credential never
  opens the admin API;
* an approver: no admin-only endpoint (sessions, replay, reload) opens to approver groups;
* (issuer, subject): an API key's window grant is not a JWT subject's named "apikey:<name>";
* the log: fields an unauthenticated client chooses (user, database, application_name, a JWT
  header) and an approver's reason never start a line;
* --workers: a reload through the parent's admin API takes an issuer's group away in the parent
  and the workers alike; a cancel of a held statement answers it on whichever worker it lands.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import signal
import socket
import struct
import threading
import time
import uuid

import jwt as pyjwt
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from gwfixtures import conninfo, gateway_config, gateway_env
from helpers import APP_DB, Gateway, api, wait_pending, wait_until
from hoopwire.config import IdentityConfig, IssuerConfig, Secret
from hoopwire.identity import Authenticator, AuthError

pytestmark = pytest.mark.timeout(180)

ADMIN_AUD = "hoopwire-admin"
HS_ISSUER = "https://svc.review.test"
HS_SECRET = "review-service-shared-secret-at-least-32-bytes"
LIMIT = 3600.0     # max_token_lifetime of the review's HS issuer


def hs(claims: dict, secret: str = HS_SECRET) -> str:
    return pyjwt.encode(claims, secret, algorithm="HS256")


def hs_claims(subject="svc", groups=("etl",), audience=("hoopwire",), **extra) -> dict:
    now = int(time.time())
    claims = {"iss": HS_ISSUER, "aud": list(audience), "sub": subject, "iat": now,
              "exp": now + 600, "groups": list(groups)}
    claims.update(extra)
    return claims


def authenticator(**issuer) -> Authenticator:
    fields = dict(issuer=HS_ISSUER, audience=("hoopwire",), jwks_uri=None,
                  algorithms=("HS256",), shared_secret=Secret(HS_SECRET, "env:REVIEW"))
    fields.update(issuer)
    return Authenticator(IdentityConfig(issuers=(IssuerConfig(**fields),)))


def authenticate(auth: Authenticator, token: str, **kw):
    """The identity, or the AuthError's reason."""
    async def run():
        try:
            return await auth.authenticate(token, **kw)
        except AuthError as e:
            return e.reason
    return asyncio.run(run())


# ------------------------------------------------------------------------------------------------
# max_token_lifetime: no iat/exp shape buys a longer token

claim_value = st.one_of(
    st.integers(-10 ** 12, 10 ** 12),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.integers(-10 ** 7, 10 ** 7).map(str),            # pyjwt takes int("123")
    st.integers(-10 ** 7, 10 ** 7).map(lambda n: f" {n} "),
    st.booleans(), st.none(), st.just("1e309"), st.just("nan"),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(iat=st.one_of(claim_value, st.integers(-3 * 86400, 3 * 86400)),
       exp=st.one_of(claim_value, st.integers(-3 * 86400, 3 * 86400)),
       relative=st.booleans())
def test_no_claim_shape_outlives_max_token_lifetime(iat, exp, relative):
    now = int(time.time())
    if relative:     # offsets around now, where a token is otherwise valid
        iat = now + iat if isinstance(iat, int) and not isinstance(iat, bool) else iat
        exp = now + exp if isinstance(exp, int) and not isinstance(exp, bool) else exp
    auth = authenticator(max_token_lifetime=LIMIT, leeway=30.0)
    got = authenticate(auth, hs(hs_claims(iat=iat, exp=exp)))
    if isinstance(got, str):
        return                                   # refused: nothing to check
    # accepted: its exp and iat are numbers whose difference is within the limit, and it is
    # valid now
    e, i = float(exp), float(iat)
    assert e - i <= LIMIT, (iat, exp)
    assert i <= time.time() + 30 + 1 and e > time.time() - 30 - 1, (iat, exp)


# ------------------------------------------------------------------------------------------------
# allowed_groups and groups_claim: no shape of the claim gets another group

group_names = st.sampled_from(["etl", "platform", "Platform", "platform ", " platform", "platform\u200b",
                               "platform\x00", "etl,platform", "etl platform", "ETL", "admins"])
group_claims = st.one_of(
    st.lists(group_names, max_size=5),
    st.lists(group_names, max_size=5).map(" ".join),
    st.lists(group_names, max_size=5).map(",".join),
    st.lists(group_names, max_size=5).map(lambda g: {"roles": g}),
    st.lists(st.one_of(group_names, st.integers(), st.lists(group_names, max_size=2)), max_size=4),
    st.dictionaries(group_names, group_names, max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(claim=group_claims, top=group_claims, path=st.sampled_from(["groups", "realm.roles"]))
def test_no_groups_claim_shape_gets_a_group_the_issuer_may_not_grant(claim, top, path):
    auth = authenticator(allowed_groups=("etl",), groups_claim=path)
    claims = hs_claims()
    claims.pop("groups")
    if path == "groups":
        claims["groups"] = claim
    else:
        claims["realm"] = {"roles": claim}
        claims["realm.roles"] = top           # a top-level claim named like the path
    got = authenticate(auth, hs(claims))
    assert not isinstance(got, str), got
    assert got.groups <= {"etl"}, (claim, got.groups)
    # and they are read from the nested path, never from the top-level look-alike
    assert got.groups == expected_groups(claim) & {"etl"}, (claim, top, got.groups)


def expected_groups(claim) -> set[str]:
    """What the README promises: a list of strings, or one string split at spaces and commas;
    any other shape grants nothing."""
    if isinstance(claim, str):
        return {g for g in re.split(r"[\s,]+", claim) if g}
    if isinstance(claim, list) and all(isinstance(g, str) for g in claim):
        return {g for g in claim if g}
    return set()


# ------------------------------------------------------------------------------------------------
# the admin audience: near misses are not it; database credentials never open the admin API

@pytest.mark.parametrize("aud", [
    "hoopwire", ["hoopwire"], "hoopwire-admin ", " hoopwire-admin", "HOOPWIRE-ADMIN",
    "hoopwire-admin\x00", ["hoopwire hoopwire-admin"], "hoopwire,hoopwire-admin", ["hoopwire-admin/"],
    {"aud": "hoopwire-admin"}, 1, None,
])
def test_near_miss_audiences_are_not_the_admin_audience(aud):
    auth = authenticator(audience=("hoopwire",))
    claims = hs_claims(groups=("platform",))
    if aud is None:
        claims.pop("aud")
    else:
        claims["aud"] = aud
    got = authenticate(auth, hs(claims), admin_audience=ADMIN_AUD)
    assert isinstance(got, str), (aud, got)
    # and the real one works, so the refusals above are about the audience
    claims["aud"] = ADMIN_AUD
    assert not isinstance(authenticate(auth, hs(claims), admin_audience=ADMIN_AUD), str)


# ------------------------------------------------------------------------------------------------
# through a gateway: an approver on admin-only endpoints; the log

def approve_rule(approvers=("dba",)):
    return [{"name": "deletes-need-a-human", "patterns": [r"\bdelete\b"], "action": "approve",
             "approvers": list(approvers), "timeout": "10m"}]


@pytest.fixture(scope="module")
def review_gw(pg, idp, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("review")
    audit = str(tmp / "audit")
    cfg = gateway_config(pg, idp, guardrail=approve_rule(), allow_groups=["agents", "ci"])
    cfg["admin"] = {"admin_groups": ["admins"]}
    cfg["state"] = {"url": f"sqlite:///{tmp}/state.db", "poll_interval": "100ms"}
    cfg["audit"] = {"path": audit, "flush_interval": "50ms"}
    with Gateway(cfg, env=gateway_env(pg)) as g:
        yield g


@pytest.fixture
def table(pg):
    name = "review_" + uuid.uuid4().hex[:8]
    pg.sql(f"CREATE TABLE {name} (id int primary key, v text);"
           f"INSERT INTO {name} VALUES (1, 'a'), (2, 'b'), (3, 'c');"
           f"ALTER TABLE {name} OWNER TO app;", dbname=APP_DB)
    yield name
    pg.sql(f"DROP TABLE IF EXISTS {name}", dbname=APP_DB)


def test_an_approver_is_no_admin(review_gw, idp):
    dana = idp.admin_token("dana", ["dba"])
    root = idp.admin_token("root", ["admins"])
    sid = "0" * 16
    for method, path in [("GET", "/api/v1/sessions"), ("GET", f"/api/v1/sessions/{sid}"),
                         ("GET", f"/api/v1/sessions/{sid}/replay"), ("POST", "/api/v1/reload")]:
        status, body = api(review_gw, method, path, dana, {} if method == "POST" else None)
        assert status == 403, (path, status, body)
    assert api(review_gw, "GET", "/api/v1/approvals", dana)[0] == 200     # what dana may do
    assert api(review_gw, "GET", "/api/v1/sessions", root)[0] == 200
    # an approver's group named in a database token does not open the API either
    assert api(review_gw, "GET", "/api/v1/approvals", idp.token("dana", ["dba"]))[0] == 401


def run_delete(gw, token, table, row, user="agent-7") -> threading.Thread:
    out: list = []

    def run():
        try:
            with psycopg.connect(conninfo(gw, token, user=user), autocommit=True) as c:
                out.append(c.execute(f"DELETE FROM {table} WHERE id = {row}").statusmessage)
        except psycopg.Error as e:
            out.append(e)
    t = threading.Thread(target=run, daemon=True)
    t.out = out
    t.start()
    return t


def test_an_api_keys_window_is_not_a_jwt_subjects(review_gw, idp, table, pg):
    """An API key's identity is ("", "apikey:<name>"): a JWT whose sub is "apikey:ci" is someone
    else, and does not inherit the key's window grant."""
    gw = review_gw
    dana = idp.admin_token("dana", ["dba"])
    t = run_delete(gw, idp.api_keys["ci"], table, 1, user="ci")
    req = wait_pending(gw, dana, f"{table} WHERE")
    assert (req["requester"], req["requester_issuer"]) == ("apikey:ci", "")
    status, row = api(gw, "POST", f"/api/v1/approvals/{req['id']}/approve", dana,
                      {"scope": "window", "window_seconds": 600})
    assert status == 200, row
    t.join(30)
    assert t.out == ["DELETE 1"], t.out
    # the same key again: waved through by its window
    t = run_delete(gw, idp.api_keys["ci"], table, 2, user="ci")
    t.join(30)
    assert t.out == ["DELETE 1"], t.out
    # a JWT named like the key is held
    t = run_delete(gw, idp.token("apikey:ci", ["agents"]), table, 3)
    req = wait_pending(gw, dana, f"{table} WHERE")
    assert (req["requester"], req["requester_issuer"]) == ("apikey:ci", idp.issuer)
    assert int(pg.sql(f"SELECT count(*) FROM {table}", dbname=APP_DB)) == 1
    assert api(gw, "POST", f"/api/v1/approvals/{req['id']}/deny", dana, {})[0] == 200
    t.join(30)
    assert isinstance(t.out[0], psycopg.errors.InsufficientPrivilege), t.out


FORGED = "2026-01-01T00:00:00.000Z error hoopwire.admin FORGED"


def raw_startup(host: str, port: int, params: dict[str, str], password: str) -> bytes:
    body = struct.pack("!I", 196608) + b"".join(k.encode() + b"\0" + v.encode() + b"\0"
                                                for k, v in params.items()) + b"\0"
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(struct.pack("!I", len(body) + 4) + body)
        data = s.recv(4096)
        if data[:1] == b"R":                     # asked for the token
            pw = password.encode() + b"\0"
            s.sendall(b"p" + struct.pack("!I", len(pw) + 4) + pw)
            try:
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                    if b"Z" in chunk or chunk[:1] == b"E":
                        break
            except socket.timeout:
                pass
        return data


def _b64(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def test_no_client_chosen_field_starts_a_log_line(review_gw, idp, table):
    gw = review_gw
    host, port = gw.address("pg")
    nl = "\n" + FORGED
    # unauthenticated: startup parameters, and a token with control characters in its header
    raw_startup(host, port, {"user": "agent-7" + nl, "database": APP_DB}, idp.token())
    raw_startup(host, port, {"user": "agent-7", "database": "other" + nl}, idp.token())
    raw_startup(host, port, {"user": "agent-7", "database": APP_DB,
                             "application_name": "a" + nl, "options": "-c x=1" + nl},
                idp.token())
    header = {"alg": "ES256", "kid": "dev" + nl + "\u2028" + FORGED}
    payload = {"iss": idp.issuer + nl, "aud": "hoopwire", "sub": "x" + nl,
               "exp": int(time.time()) + 60}
    raw_startup(host, port, {"user": "agent-7"}, f"{_b64(header)}.{_b64(payload)}.AAAA")
    payload["iss"] = idp.issuer
    raw_startup(host, port, {"user": "agent-7"}, f"{_b64(header)}.{_b64(payload)}.AAAA")
    # an approver's free-text reason
    dana = idp.admin_token("dana", ["dba"])
    t = threading.Thread(target=lambda: _delete(gw, idp, table), daemon=True)
    t.start()
    req = wait_pending(gw, dana, table)
    assert api(gw, "POST", f"/api/v1/approvals/{req['id']}/deny", dana,
               {"reason": "no" + nl + "\u2029" + FORGED})[0] == 200
    t.join(30)
    gw.wait_log(r"approval request decided .*status=denied")
    # the refusals quote the database name, the issuer and the kid (escaped); the user name,
    # application_name and the reason are not logged at all
    wait_until(lambda: gw.log_text().count("FORGED") >= 3, 10, "the refusals logged", gw)
    lines = gw.log_text().splitlines()
    assert not [ln for ln in lines if "FORGED" in ln and not re.match(r"\d{4}-\d\d-\d\dT", ln)
                and not ln.startswith("  ")], "\n".join(ln for ln in lines if "FORGED" in ln)
    assert not [ln for ln in lines if ln.startswith("2026-01-01")]
    assert "\u2028" not in gw.log_text() and "\u2029" not in gw.log_text()


def _delete(gw, idp, table):
    try:
        with psycopg.connect(conninfo(gw, idp.token()), autocommit=True) as c:
            c.execute(f"DELETE FROM {table} WHERE id = 1")
    except psycopg.Error:
        pass


# ------------------------------------------------------------------------------------------------
# --workers: the parent's reload takes a group away everywhere; a held statement's cancel

def workers_config(pg, idp, tmp, allowed=None) -> dict:
    hs_issuer = {"issuer": HS_ISSUER, "audience": "hoopwire", "algorithms": ["HS256"],
                 "shared_secret_env": "REVIEW_HS_SECRET"}
    if allowed is not None:
        hs_issuer["allowed_groups"] = allowed
    cfg = gateway_config(pg, idp, identity={"issuer": [idp.issuer_config(), hs_issuer]},
                         guardrail=approve_rule(), allow_groups=["agents", "platform"])
    cfg["admin"] = {"admin_groups": ["platform"]}
    cfg["state"] = {"url": f"sqlite:///{tmp}/state.db", "poll_interval": "100ms"}
    return cfg


def connects(gw, token, user="svc") -> bool:
    try:
        with psycopg.connect(conninfo(gw, token, user=user), autocommit=True) as c:
            return c.execute("SELECT 1").fetchone() == (1,)
    except psycopg.OperationalError as e:
        assert "password authentication failed" in str(e) or "not allowed" in str(e), e
        return False


def test_parent_reload_takes_an_issuers_group_away_everywhere(pg, idp, tmp_path):
    env = {**gateway_env(pg), "REVIEW_HS_SECRET": HS_SECRET}
    with Gateway(workers_config(pg, idp, tmp_path), env=env, workers=2) as gw:
        platform_admin = hs(hs_claims(groups=("platform",), audience=(ADMIN_AUD,)))
        platform_db = hs(hs_claims(groups=("platform",)))
        assert api(gw, "GET", "/api/v1/sessions", platform_admin)[0] == 200
        assert all(connects(gw, platform_db) for _ in range(4))      # both workers
        # the operator restricts the service's issuer to "etl" and reloads through the API
        new = workers_config(pg, idp, tmp_path, allowed=["etl"])
        new["admin"]["listen"] = gw.config["admin"]["listen"]          # the same listeners
        new["connection"][0]["listen"] = gw.config["connection"][0]["listen"]
        gw.write_config(new)
        root = idp.admin_token("root", ["platform"])
        status, body = api(gw, "POST", "/api/v1/reload", root, {})
        assert status == 200 and body["reloaded"], body
        wait_until(lambda: gw.log_text().count("configuration reloaded") >= 2, 20,
                   "both workers reloaded", gw)
        # the parent's admin API and every worker now drop "platform" from that issuer
        assert api(gw, "GET", "/api/v1/sessions", platform_admin)[0] == 403
        assert not any(connects(gw, platform_db) for _ in range(6))
        assert api(gw, "GET", "/api/v1/sessions", root)[0] == 200


def test_cancel_of_a_held_statement_on_either_worker(pg, idp, tmp_path, table):
    """The held statement is answered 57014 and its request cancelled, also when the kernel
    hands the CancelRequest to the worker that does not hold the session."""
    env = {**gateway_env(pg), "REVIEW_HS_SECRET": HS_SECRET}
    with Gateway(workers_config(pg, idp, tmp_path), env=env, workers=2) as gw:
        dana = idp.admin_token("dana", ["dba"])
        for round_no in range(12):
            with psycopg.connect(conninfo(gw, idp.token()), autocommit=True) as conn:
                result: list = []

                def run():
                    try:
                        conn.execute(f"DELETE FROM {table} WHERE id = 1")
                        result.append("ran")
                    except psycopg.Error as e:
                        result.append(e)
                t = threading.Thread(target=run, daemon=True)
                t.start()
                req = wait_pending(gw, dana, table)
                conn.cancel_safe(timeout=5)
                t.join(15)
                if t.is_alive():
                    # release the client (deny) so the failure shows now, not at the timeout
                    api(gw, "POST", f"/api/v1/approvals/{req['id']}/deny", dana, {})
                    t.join(15)
                    pytest.fail(f"round {round_no}: the cancel did not answer the held statement")
                assert isinstance(result[0], psycopg.errors.QueryCanceled), result
                wait_until(lambda: api(gw, "GET", f"/api/v1/approvals/{req['id']}",
                                       dana)[1]["status"] == "cancelled", 10,
                           "the request marked cancelled", gw)
                assert conn.execute("select 1").fetchone() == (1,)
            if re.search(r"cancel of a held statement .*peer=other-worker", gw.log_text()):
                break
        else:
            pytest.fail("no cancel landed on the other worker in 12 rounds (p = 2^-12)")
        assert int(pg.sql(f"SELECT count(*) FROM {table}", dbname=APP_DB)) == 3


# ------------------------------------------------------------------------------------------------
# a reload's revocations reach the sessions opened before it

def revocation_config(pg, idp, *, after: bool) -> dict:
    hs_issuer = {"issuer": HS_ISSUER, "audience": "hoopwire", "algorithms": ["HS256"],
                 "shared_secret_env": "REVIEW_HS_SECRET"}
    keys = idp.api_key_config()
    groups = ["agents", "ci", "analysts"]
    if after:
        hs_issuer["allowed_groups"] = ["etl"]       # the service's issuer is narrowed
        for k in keys:
            if k["name"] == "ci":
                k["sha256"] = "ab" * 32              # the leaked "ci" key is rotated
        groups = ["agents", "ci", "etl"]             # analysts may no longer connect
    return gateway_config(pg, idp, identity={"issuer": [idp.issuer_config(), hs_issuer],
                                             "api_key": keys}, allow_groups=groups)


def test_a_reload_ends_the_sessions_it_no_longer_admits(pg, idp):
    env = {**gateway_env(pg), "REVIEW_HS_SECRET": HS_SECRET}
    with Gateway(revocation_config(pg, idp, after=False), env=env) as gw:
        conns = {
            "kept": psycopg.connect(conninfo(gw, idp.token("a", ["agents"])), autocommit=True),
            "narrowed issuer": psycopg.connect(conninfo(gw, hs(hs_claims(groups=("agents",)))),
                                               autocommit=True),
            "rotated key": psycopg.connect(conninfo(gw, idp.api_keys["ci"], user="ci"),
                                           autocommit=True),
            "group not allowed": psycopg.connect(conninfo(gw, idp.token("b", ["analysts"])),
                                                 autocommit=True),
        }
        try:
            for c in conns.values():
                assert c.execute("select 1").fetchone() == (1,)
            new = revocation_config(pg, idp, after=True)
            new["admin"] = {"listen": gw.config["admin"]["listen"]}
            new["connection"][0]["listen"] = gw.config["connection"][0]["listen"]
            gw.write_config(new)
            gw.signal(signal.SIGHUP)
            gw.wait_log(r"configuration reloaded")
            assert conns["kept"].execute("select 2").fetchone() == (2,)
            for name in ("narrowed issuer", "rotated key", "group not allowed"):
                with pytest.raises(psycopg.OperationalError, match="no longer admits"):
                    conns[name].execute("select 3")
            assert len(re.findall(r"session ended by a reload", gw.log_text())) == 3
            wait_until(lambda: len(re.findall(r"session closed .*reason=identity_revoked",
                                              gw.log_text())) == 3, 10,
                       "three sessions closed as identity_revoked", gw)
            # and none of them gets back in with the same credential and groups
            assert not connects(gw, hs(hs_claims(groups=("agents",))))
            assert not connects(gw, idp.api_keys["ci"], user="ci")
        finally:
            for c in conns.values():
                c.close()


# ------------------------------------------------------------------------------------------------
# [identity] end_sessions_at_expiry

@pytest.mark.parametrize("end_at_expiry", [True, False])
def test_sessions_end_at_token_expiry_only_when_asked(pg, idp, end_at_expiry):
    cfg = gateway_config(pg, idp)
    cfg["identity"]["end_sessions_at_expiry"] = end_at_expiry
    with Gateway(cfg, env=gateway_env(pg)) as gw:
        # 6 s: the two logins and the first query must land before the expiry ends the
        # session. With 2 s (exp is whole seconds, so 1-2 s after minting) a loaded machine's
        # logins could outlast it and the first query met the ending instead.
        short = idp.token("agent-7", ["agents"], ttl=6.0)
        exp = pyjwt.decode(short, options={"verify_signature": False})["exp"]
        long = idp.token("agent-8", ["agents"], ttl=600.0)
        with psycopg.connect(conninfo(gw, short), autocommit=True) as a, \
                psycopg.connect(conninfo(gw, long), autocommit=True) as b:
            assert a.execute("select 1").fetchone() == (1,)
            if end_at_expiry:
                gw.wait_log(r"session ended: its token expired", timeout=30)
                with pytest.raises(psycopg.OperationalError, match="token expired"):
                    a.execute("select 2")
            else:
                # past the token's expiry (by the claim itself, plus a second): it goes on
                while time.time() < exp + 1:
                    time.sleep(0.1)
                assert a.execute("select 2").fetchone() == (2,)
                assert "its token expired" not in gw.log_text()
            # a session whose token has not expired is never touched
            assert b.execute("select 3").fetchone() == (3,)
