"""Whom the gateway trusts, and for what: through real clients (psycopg to a real gateway in front
of the test PostgreSQL, the admin API over HTTP) with real signed tokens.

* an identity is (issuer, subject): one issuer's "agent-7" never uses another's window grant, and
  may decide the other's requests;
* an issuer grants only the groups it is allowed to (`allowed_groups`), and `groups_claim` is read
  as a nested path only (a top-level claim named like the path is ignored);
* a reload keeps the last good keys of an issuer whose JWKS went bad, and says so;
* nothing a client sends can write a line of its own into the text log;
* the admin API has its own audience; tokens may be limited in lifetime; API keys are for one use
  and are taken exactly as configured;
* an approver sees and decides only the requests of connections whose rules name their groups.

Waits are for events (a pending request listed, a log line, a thread ending) under deadlines
that only bound how long a failure takes to show.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import secrets
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid

import jwt as pyjwt
import psycopg
import pytest

from gwfixtures import conninfo, gateway_config, gateway_env
from helpers import Gateway, api
from hoopwire.config import IdentityConfig, IssuerConfig
from hoopwire.identity import Authenticator, AuthError
from hoopwire.identity.devtoken import create_dev_key, mint_token

ADMIN_AUD = "hoopwire-admin"          # the admin API's default audience
OTHER_ISSUER = "https://other-idp.hoopwire.test"
HS_ISSUER = "https://etl-service.hoopwire.test"
HS_SECRET = "etl-service-shared-secret-of-at-least-32-bytes"


# -- helpers -------------------------------------------------------------------------------------

def wait_pending(gw, token, table, *, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = api(gw, "GET", "/api/v1/approvals?status=pending", token)
        assert status == 200, body
        for a in body["approvals"]:
            if table in a["statement"]:
                return a
        time.sleep(0.05)
    raise AssertionError(f"no pending approval request for {table} appeared")


class Run(threading.Thread):
    """A statement on its own connection in a thread; keeps the result or the error."""

    def __init__(self, dsn, sql):
        super().__init__(daemon=True)
        self.dsn, self.sql = dsn, sql
        self.result = self.error = None

    def run(self):
        try:
            with psycopg.connect(self.dsn, autocommit=True) as c:
                self.result = c.execute(self.sql).statusmessage
        except Exception as e:  # noqa: BLE001 -- the test looks at it
            self.error = e

    def finish(self, timeout=60.0):
        self.join(timeout)
        assert not self.is_alive(), f"the client still waits after {timeout:g} s"


def connects(gw, token, name="pg", user="agent-7") -> bool:
    try:
        with psycopg.connect(conninfo(gw, token, name=name, user=user), autocommit=True) as c:
            return c.execute("SELECT 1").fetchone() == (1,)
    except psycopg.OperationalError as e:
        assert "password authentication failed" in str(e), e
        return False


@pytest.fixture(scope="module")
def other_key(tmp_path_factory):
    """A second identity provider: its own key, JWKS file and issuer name."""
    d = tmp_path_factory.mktemp("other-idp")
    key = str(d / "other.pem")
    return key, create_dev_key(key, kid="other")


def other_token(other_key, subject, groups, audience=("hoopwire",), **kw):
    return mint_token(other_key[0], issuer=OTHER_ISSUER, audience=list(audience), subject=subject,
                      groups=list(groups), kid="other", **kw)


def both(idp, subject, groups, **kw):
    """A token whose IdP meant it for the database and the admin API alike (aud names both)."""
    return idp.token(subject, groups, audience=["hoopwire", ADMIN_AUD], **kw)


def hs_token(subject, groups, audience=("hoopwire", ADMIN_AUD)):
    now = int(time.time())
    return pyjwt.encode({"iss": HS_ISSUER, "aud": list(audience), "sub": subject, "iat": now,
                         "exp": now + 600, "groups": list(groups)}, HS_SECRET, algorithm="HS256")


@pytest.fixture
def table(pg):
    name = "trust_" + uuid.uuid4().hex[:8]
    pg.sql(f"CREATE TABLE {name} (id int primary key, v text);"
           f"INSERT INTO {name} VALUES (1, 'a'), (2, 'b'), (3, 'c');"
           f"ALTER TABLE {name} OWNER TO app;", dbname="appdb")
    yield name
    pg.sql(f"DROP TABLE IF EXISTS {name}", dbname="appdb")


def approve_rule(approvers=("dba",)):
    return [{"name": "deletes-need-a-human", "patterns": [r"\bdelete\b"], "action": "approve",
             "approvers": list(approvers), "timeout": "10m"}]


# -- 1. an identity is (issuer, subject) ---------------------------------------------------------

@pytest.fixture(scope="module")
def two_issuers_gw(pg, idp, other_key, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("two-issuers")
    identity = {"issuer": [idp.issuer_config(),
                           {"issuer": OTHER_ISSUER, "audience": "hoopwire", "algorithms": ["ES256"],
                            "jwks_uri": "file://" + other_key[1]}]}
    cfg = gateway_config(pg, idp, identity=identity, guardrail=approve_rule(),
                         allow_groups=["agents", "dba"])
    cfg["admin"] = {"admin_groups": ["admins"]}
    cfg["state"] = {"url": f"sqlite:///{tmp}/state.db", "poll_interval": "100ms"}
    with Gateway(cfg, env=gateway_env(pg)) as g:
        yield g


def test_window_grant_is_for_one_issuers_subject(two_issuers_gw, pg, idp, other_key, table):
    gw = two_issuers_gw
    dana = both(idp, "dana", ["dba"])
    agent_b = other_token(other_key, "agent-7", ["agents"])
    agent_a = idp.token("agent-7", ["agents"])

    # agent-7 of the other issuer is granted a 10-minute window
    t = Run(conninfo(gw, agent_b), f"DELETE FROM {table} WHERE id = 1")
    t.start()
    req = wait_pending(gw, dana, table)
    assert req["requester"] == "agent-7"
    status, row = api(gw, "POST", f"/api/v1/approvals/{req['id']}/approve", dana,
                      {"scope": "window", "window_seconds": 600})
    assert status == 200, row
    t.finish()
    assert t.error is None and t.result == "DELETE 1"

    # agent-7 of the first issuer is someone else: held, not waved through by that window
    t = Run(conninfo(gw, agent_a), f"DELETE FROM {table} WHERE id = 2")
    t.start()
    req = wait_pending(gw, dana, table)
    assert t.is_alive()
    assert (req["requester"], req["requester_issuer"]) == ("agent-7", idp.issuer)
    assert int(pg.sql(f"SELECT count(*) FROM {table}", dbname="appdb")) == 2
    status, _ = api(gw, "POST", f"/api/v1/approvals/{req['id']}/deny", dana, {"reason": "no"})
    assert status == 200
    t.finish()
    assert isinstance(t.error, psycopg.errors.InsufficientPrivilege)
    assert int(pg.sql(f"SELECT count(*) FROM {table}", dbname="appdb")) == 2


def test_same_subject_of_another_issuer_is_not_the_requester(two_issuers_gw, idp, other_key,
                                                              table):
    gw = two_issuers_gw
    # "dana" of the other issuer asks; "dana" of the first issuer, an approver, may decide
    requester = other_token(other_key, "dana", ["agents"])
    approver = both(idp, "dana", ["dba"])
    t = Run(conninfo(gw, requester, user="dana"), f"DELETE FROM {table} WHERE id = 3")
    t.start()
    req = wait_pending(gw, approver, table)
    status, row = api(gw, "POST", f"/api/v1/approvals/{req['id']}/approve", approver, {})
    assert status == 200, row
    assert (row["decided_by"], row["decided_by_issuer"]) == ("dana", idp.issuer)
    t.finish()
    assert t.error is None and t.result == "DELETE 1"

    # and the very same identity still may not decide its own request
    both_dana = both(idp, "dana", ["agents", "dba"])
    t = Run(conninfo(gw, both_dana, user="dana"), f"DELETE FROM {table} WHERE id = 2")
    t.start()
    req = wait_pending(gw, approver, table)
    status, body = api(gw, "POST", f"/api/v1/approvals/{req['id']}/approve", both_dana, {})
    assert status == 403 and "requester" in body["error"]["message"]
    other_dana = other_token(other_key, "dana", ["dba"], audience=("hoopwire", ADMIN_AUD))
    assert api(gw, "POST", f"/api/v1/approvals/{req['id']}/deny", other_dana, {})[0] == 200
    t.finish()


# -- 2. which issuer may grant which groups ------------------------------------------------------

def admin_gateway(pg, idp, tmp, identity, env=None):
    cfg = gateway_config(pg, idp, identity=identity, allow_groups=["agents", "etl", "platform"])
    cfg["admin"] = {"admin_groups": ["platform"]}
    cfg["state"] = {"url": f"sqlite:///{tmp}/state.db"}
    return Gateway(cfg, env={**gateway_env(pg), **(env or {})})


@pytest.fixture(scope="module")
def trust_gw(pg, idp, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trust")
    identity = {"issuer": [
        idp.issuer_config(),
        {"issuer": HS_ISSUER, "audience": "hoopwire", "algorithms": ["HS256"],
         "shared_secret_env": "ETL_SHARED_SECRET", "allowed_groups": ["etl"]}]}
    with admin_gateway(pg, idp, tmp, identity, {"ETL_SHARED_SECRET": HS_SECRET}) as g:
        yield g


@pytest.fixture(scope="module")
def plain_admin_gw(pg, idp, tmp_path_factory):
    """Keys every version knows: groups at realm_access.roles, admins in "platform"."""
    tmp = tmp_path_factory.mktemp("plain-admin")
    identity = {"issuer": [idp.issuer_config(groups_claim="realm_access.roles")]}
    with admin_gateway(pg, idp, tmp, identity) as g:
        yield g


def test_issuer_grants_only_its_allowed_groups(trust_gw):
    # the service's HS256 issuer may grant "etl": its token gets in with that group ...
    assert connects(trust_gw, hs_token("etl-job", ["etl"]), user="etl-job")
    # ... but the "platform" it also minted is not honoured: no admin rights, and no database
    # access either when "platform" is the only group it claims
    platform = hs_token("etl-job", ["platform", "etl"])
    status, body = api(trust_gw, "GET", "/api/v1/sessions", platform)
    assert status == 403, body
    with pytest.raises(psycopg.OperationalError, match="not allowed"):
        psycopg.connect(conninfo(trust_gw, hs_token("etl-job", ["platform"]), user="etl-job"))


def test_groups_claim_is_the_nested_path_only(plain_admin_gw, idp):
    gw = plain_admin_gw
    # groups at realm_access.roles are read ...
    nested = idp.token("alice", ["platform"], audience=["hoopwire", ADMIN_AUD],
                       groups_claim="realm_access.roles")
    assert api(gw, "GET", "/api/v1/sessions", nested)[0] == 200
    # ... and a top-level claim literally named "realm_access.roles" does not override them
    forged = idp.token("mallory", ["agents"], audience=["hoopwire", ADMIN_AUD],
                       groups_claim="realm_access.roles",
                       extra_claims={"realm_access.roles": ["platform"]})
    status, body = api(gw, "GET", "/api/v1/sessions", forged)
    assert status == 403, body


# -- 3. a reload keeps the last good keys ---------------------------------------------------------

def test_reload_keeps_last_good_keys_of_a_broken_jwks(pg, idp, tmp_path):
    jwks = tmp_path / "jwks.json"
    shutil.copy(idp.jwks, jwks)
    identity = {"issuer": [idp.issuer_config(jwks_uri=jwks.as_uri())]}
    cfg = gateway_config(pg, idp, identity=identity)
    cfg["admin"] = {"admin_groups": ["platform"]}
    cfg["state"] = {"url": f"sqlite:///{tmp_path}/state.db"}
    admin = both(idp, "root", ["platform"])
    with Gateway(cfg, env=gateway_env(pg)) as gw:
        assert connects(gw, idp.token())                           # the keys are fetched
        assert api(gw, "GET", "/api/v1/sessions", admin)[0] == 200
        jwks.write_text('{"keys": [')                               # the source goes bad
        gw.signal(signal.SIGHUP)
        gw.wait_log(r"configuration reloaded")
        # every user of that issuer, and its admins, still get in
        assert connects(gw, idp.token())
        assert api(gw, "GET", "/api/v1/sessions", admin)[0] == 200
        # and the operator is told
        gw.wait_log(r"fetch failed \(not JSON\); keeping the last good keys")
        text = urllib.request.urlopen(gw.admin_url + "/metrics", timeout=10).read().decode()
        assert re.search(r'^hoopwire_jwks_degraded\{source="file://[^"]*jwks.json"\} 1\.0$',
                         text, re.M), text
        assert re.search(r'^hoopwire_jwks_fetch_failures_total\{source="file://[^"]*"\} [1-9]',
                         text, re.M), text
        # /readyz stays ready (every replica would leave the pool when the IdP is down) and
        # names the issuer running on old keys
        ready = json.loads(urllib.request.urlopen(gw.admin_url + "/readyz", timeout=10).read())
        assert ready["ready"] is True and ready["degraded"]["issuers"] == [idp.issuer], ready


def test_degraded_issuers_after_a_failed_refetch(idp, tmp_path):
    """What /readyz is to use: Authenticator.degraded_issuers()."""
    jwks = tmp_path / "jwks.json"
    shutil.copy(idp.jwks, jwks)
    cfg = IdentityConfig(issuers=(IssuerConfig(issuer=idp.issuer, audience=("hoopwire",),
                                               jwks_uri=jwks.as_uri(),
                                               algorithms=("ES256",)),))

    async def run():
        first = Authenticator(cfg)
        assert (await first.authenticate(idp.token("s"))).subject == "s"
        assert first.degraded_issuers() == []
        jwks.write_text("not json")
        second = Authenticator(cfg)              # what a reload builds
        assert (await second.authenticate(idp.token("t"))).subject == "t"
        assert second.degraded_issuers() == [idp.issuer]
        shutil.copy(idp.jwks, jwks)              # the source heals
        third = Authenticator(cfg)
        assert (await third.authenticate(idp.token("u"))).subject == "u"
        assert third.degraded_issuers() == []
        for a in (first, second, third):
            await a.close()
    asyncio.run(run())


# -- 4. nothing a client sends writes a log line of its own --------------------------------------

def _b64(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def test_no_forged_log_lines(gw, idp):
    # unsigned, no key needed: a JWT header whose `crit` carries a line of its own
    header = {"alg": "ES256", "kid": "dev", "typ": "JWT",
              "crit": ["x\n2026-01-01T00:00:00.000Z error hoopwire.admin FORGED-BY-CRIT"]}
    payload = {"iss": idp.issuer, "aud": "hoopwire", "sub": "x", "exp": int(time.time()) + 600}
    token = f"{_b64(header)}.{_b64(payload)}.AAAA"
    assert not connects(gw, token)
    # a signed token whose subject has a newline and an escape sequence in it
    subject = "agent\n2026-01-01T00:00:00.000Z info hoopwire FORGED-BY-SUBJECT\x1b[2J"
    assert connects(gw, idp.token(subject))
    gw.wait_log(r"FORGED-BY-SUBJECT")
    gw.wait_log(r"auth_failed|password authentication failed")
    assert not [ln for ln in gw.log_text().splitlines() if ln.startswith("2026-01-01")]
    assert "\x1b" not in gw.log_text()
    assert r"agent\n2026-01-01" in gw.log_text()      # written as an escape


# -- 5. the admin API's own audience; token lifetime; API keys ----------------------------------

ADMIN_KEY = "hw_admin_" + secrets.token_urlsafe(24)
DB_KEY = "hw_db_" + secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def aud_gw(pg, idp, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("audience")
    def sha(key):
        return hashlib.sha256(key.encode()).hexdigest()
    identity = {"issuer": [idp.issuer_config(max_token_lifetime="1h")],
                "api_key": [{"name": "ops", "sha256": sha(ADMIN_KEY), "groups": ["platform"],
                             "use": "admin"},
                            {"name": "etl", "sha256": sha(DB_KEY),
                             "groups": ["platform", "agents"]}]}
    cfg = gateway_config(pg, idp, identity=identity, allow_groups=["agents", "platform"])
    cfg["admin"] = {"admin_groups": ["platform"]}
    cfg["state"] = {"url": f"sqlite:///{tmp}/state.db"}
    with Gateway(cfg, env=gateway_env(pg)) as g:
        yield g


def test_database_token_is_no_admin_token(plain_admin_gw, idp):
    gw = plain_admin_gw
    database = idp.token("root", ["platform"], groups_claim="realm_access.roles")  # aud: hoopwire
    admin = idp.token("root", ["platform"], audience=ADMIN_AUD, groups_claim="realm_access.roles")
    assert connects(gw, database)
    status, body = api(gw, "GET", "/api/v1/sessions", database)
    assert status == 401, body
    assert api(gw, "GET", "/api/v1/sessions", admin)[0] == 200
    assert not connects(gw, admin)
    # waited for: the 401 can reach us before the log line has come through the pipe
    gw.wait_log(r"admin API token refused .*reason=bad_audience", timeout=30)


def test_max_token_lifetime(aud_gw, idp):
    assert connects(aud_gw, idp.token(ttl=3000))
    assert not connects(aud_gw, idp.token(ttl=2 * 3600))
    aud_gw.wait_log(r"lifetime_too_long")
    # with a limit, a token must say when it was issued
    no_iat = idp.token(extra_claims={"iat": None})
    assert not connects(aud_gw, no_iat)


def test_api_keys_have_one_use_and_no_slack(aud_gw):
    assert api(aud_gw, "GET", "/api/v1/sessions", ADMIN_KEY)[0] == 200
    assert not connects(aud_gw, ADMIN_KEY)                          # an admin key is no password
    assert connects(aud_gw, DB_KEY)
    assert api(aud_gw, "GET", "/api/v1/sessions", DB_KEY)[0] == 401  # nor a password an admin key
    # the key with whitespace around it is not the key
    for raw in (f"Bearer  {ADMIN_KEY}", f"Bearer \t{ADMIN_KEY}"):
        assert api(aud_gw, "GET", "/api/v1/sessions", None, raw_auth=raw)[0] == 401, repr(raw)
    # ... on the database path too (the password was stripped there)
    for padded in (" " + DB_KEY, DB_KEY + "\n", "\t" + DB_KEY):
        assert not connects(aud_gw, padded), repr(padded)


def test_authenticator_refuses_surrounding_whitespace(idp):
    async def run():
        auth = Authenticator(IdentityConfig(issuers=(IssuerConfig(
            issuer=idp.issuer, audience=("hoopwire",), jwks_uri="file://" + idp.jwks,
            algorithms=("ES256",)),)))
        token = idp.token()
        assert (await auth.authenticate(token)).subject == "agent-7"
        for bad in (" " + token, token + "\n", "\t" + token):
            with pytest.raises(AuthError) as e:
                await auth.authenticate(bad)
            assert e.value.reason == "malformed"
        await auth.close()
    asyncio.run(run())


# -- 6. approvers see the requests of their connections only --------------------------------------

@pytest.fixture(scope="module")
def scoped_gw(pg, idp, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scoped")
    cfg = gateway_config(pg, idp, guardrail=approve_rule(["dba"]), allow_groups=["agents"])
    second = dict(cfg["connection"][0], name="pg-billing", guardrail=approve_rule(["billing-dba"]))
    cfg["connection"].append(second)
    cfg["admin"] = {"admin_groups": ["admins"]}
    cfg["state"] = {"url": f"sqlite:///{tmp}/state.db", "poll_interval": "100ms"}
    with Gateway(cfg, env=gateway_env(pg)) as g:
        yield g


def test_approver_sees_only_their_connections(scoped_gw, idp, table):
    gw = scoped_gw
    dana = both(idp, "dana", ["dba"])
    bill = both(idp, "bill", ["billing-dba"])
    root = both(idp, "root", ["admins"])
    t = Run(conninfo(gw, idp.token(), name="pg-billing"), f"DELETE FROM {table} WHERE id = 1")
    t.start()
    req = wait_pending(gw, bill, table)
    assert req["connection"] == "pg-billing"
    # dana approves for "pg" only: she neither lists, reads nor decides billing's request
    status, body = api(gw, "GET", "/api/v1/approvals", dana)
    assert status == 200 and req["id"] not in [a["id"] for a in body["approvals"]]
    assert api(gw, "GET", f"/api/v1/approvals/{req['id']}", dana)[0] == 404
    assert api(gw, "POST", f"/api/v1/approvals/{req['id']}/approve", dana, {})[0] == 404
    # an admin sees every request
    status, body = api(gw, "GET", "/api/v1/approvals", root)
    assert status == 200 and req["id"] in [a["id"] for a in body["approvals"]]
    assert api(gw, "POST", f"/api/v1/approvals/{req['id']}/deny", bill, {})[0] == 200
    t.finish()
    assert isinstance(t.error, psycopg.errors.InsufficientPrivilege)


# -- the configuration of all this ----------------------------------------------------------------

def _doc(issuer=None, api_key=None, admin=None):
    doc = {"identity": {"issuer": [{"issuer": "https://idp.example.com", "audience": "hoopwire",
                                    "jwks_uri": "file:///dev/null", **(issuer or {})}],
                        "api_key": [{"name": "k", "sha256": "ab" * 32, **(api_key or {})}]},
           "connection": [{"name": "orders", "protocol": "postgres", "listen": "127.0.0.1:6432",
                           "upstream": "db.internal:5432", "database": "orders",
                           "user": "app_ro", "password_env": "H7_TRUST_PW"}]}
    if admin is not None:
        doc["admin"] = admin
    return doc


def _problems(doc) -> dict[str, str]:
    from hoopwire.config import ConfigError, parse_config
    with pytest.raises(ConfigError) as e:
        parse_config(doc)
    return dict(e.value.problems)


def test_trust_configuration(monkeypatch):
    from hoopwire.config import parse_config
    monkeypatch.setenv("H7_TRUST_PW", "x")
    cfg = parse_config(_doc())
    iss, key = cfg.identity.issuers[0], cfg.identity.api_keys[0]
    # the defaults: every group, no lifetime limit, database keys, the admin audience
    assert (iss.allowed_groups, iss.max_token_lifetime) == (None, None)
    assert key.use == "database" and cfg.admin.audience == ADMIN_AUD
    cfg = parse_config(_doc({"allowed_groups": [], "max_token_lifetime": "1h"}, {"use": "admin"},
                            {"audience": "ops-api"}))
    iss, key = cfg.identity.issuers[0], cfg.identity.api_keys[0]
    assert (iss.allowed_groups, iss.max_token_lifetime) == ((), 3600.0)
    assert key.use == "admin" and cfg.admin.audience == "ops-api"

    p = _problems(_doc({"allowed_groups": ["a", ""], "max_token_lifetime": "0"}, {"use": "both"}))
    assert "non-empty" in p["identity.issuer[0].allowed_groups"]
    assert "positive" in p["identity.issuer[0].max_token_lifetime"]
    assert "database, admin" in p["identity.api_key[0].use"]
    # the admin audience cannot also be a database audience, nor an issuer be ""
    p = _problems(_doc({"audience": ["hoopwire", ADMIN_AUD]}))
    assert "admin API's audience" in p["identity.issuer[0].audience"]
    p = _problems(_doc({"issuer": ""}))
    assert p["identity.issuer[0].issuer"] == "must not be empty"


# -- stores written by the version before issuers were recorded ------------------------------------

def _old_schema(cursor) -> None:
    """The tables as the version before made them: without the columns added since."""
    from hoopwire.state.store import ADDED_COLUMNS, TABLES, q
    added = set(ADDED_COLUMNS)
    for table, (cols, pkey) in TABLES.items():
        defs = [f"{q(c.name)} {'double precision' if c.kind == 'float' else 'text'}"
                for c in cols if (table, c.name) not in added]
        cursor.execute(f"CREATE TABLE {table} ({', '.join(defs)}, "
                       f"PRIMARY KEY ({', '.join(q(k) for k in pkey)}))")


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_old_store_gets_issuer_columns_and_its_grants_match_nobody(backend, tmp_path, request):
    import sqlite3

    from hoopwire.approvals.manager import ApprovalManager
    from hoopwire.config import Secret, StateConfig
    from hoopwire.identity import Identity
    from hoopwire.state import open_store

    until = time.time() + 3600
    old_grant = ('INSERT INTO hoopwire_grants ("subject", "connection", "rule", "until", '
                 '"approval_id") VALUES (?, ?, ?, ?, ?)')
    old_values = ("agent-7", "pg", "r", until, "apr_old")
    if backend == "sqlite":
        path = tmp_path / "state.db"
        conn = sqlite3.connect(path)
        _old_schema(conn)
        conn.execute(old_grant, old_values)
        conn.commit()
        conn.close()
        cfg = StateConfig(url=f"sqlite://{path}")
    else:
        pg = request.getfixturevalue("pg")
        name = "h7_old_" + secrets.token_hex(4)
        pg.create_database(name, owner="app")
        with psycopg.connect(host=pg.host, port=pg.port, user="app", dbname=name,
                             password=pg.passwords["app"], autocommit=True) as conn:
            with conn.cursor() as cur:
                _old_schema(cur)
                cur.execute(old_grant.replace("?", "%s"), old_values)
        cfg = StateConfig(url=f"postgresql://app@{pg.host}:{pg.port}/{name}",
                          password=Secret(pg.passwords["app"], "test"))

    agent = Identity(subject="agent-7", groups=frozenset(), method="jwt",
                     issuer="https://idp.example.com", token_id=None, expires_at=None)

    async def run():
        store = await open_store(cfg)
        try:
            (grant,) = await store.active_grants(time.time())
            assert grant["subject"] == "agent-7" and grant["issuer"] is None
            await store.add_grant(subject="agent-7", issuer="https://idp.example.com",
                                  connection="pg", rule="r2", until=until, approval_id="apr_new")
            manager = ApprovalManager(store, gateway_id="h7-test")
            await manager.start(abandon=False)
            try:
                # whose the old grant was cannot be told: it lets nobody through
                assert not manager.granted(agent, "pg", "r")
                assert manager.granted(agent, "pg", "r2")
            finally:
                await manager.close()
        finally:
            await store.close()
        # opening the migrated store again changes nothing
        store = await open_store(cfg)
        await store.close()
    asyncio.run(run())
