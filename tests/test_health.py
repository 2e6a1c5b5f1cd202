"""Health that tells the truth (issue 24, part 2), against a real gateway and the real PostgreSQL.

/readyz is 503 while a connection's upstream refuses the stored credentials, the audit directory
cannot take a file, or an issuer's key source has never loaded, names the failed check, holds no
secret, and is 200 again once the cause is gone; /healthz stays 200 throughout. With --workers the
parent combines its workers' reports. The probes can listen apart from the admin API, which can
use TLS. A stopping gateway cancels the statements still running upstream after its grace and
ends their sessions with FATAL 57P01.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import ssl
import threading
import time
import urllib.error
import urllib.request

import psycopg
import pytest
from hypothesis import given, settings, strategies as st

from gwfixtures import conninfo, gateway_config, gateway_env
from helpers import APP_DB, Gateway, free_port, wait_until

pytestmark = pytest.mark.timeout(120)


def get(url: str, *, context: ssl.SSLContext | None = None) -> tuple[int, dict | str]:
    try:
        with urllib.request.urlopen(url, timeout=10, context=context) as r:
            body = r.read().decode()
            status = r.status
    except urllib.error.HTTPError as e:
        body, status = e.read().decode(), e.code
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def readyz(gw: Gateway, base: str | None = None) -> tuple[int, dict]:
    return get((base or gw.admin_url) + "/readyz")


def healthz(gw: Gateway) -> int:
    return get(gw.admin_url + "/healthz")[0]


def _pg_checked(gw: Gateway) -> tuple[int, dict] | None:
    """/readyz's answer once the "pg" connection's upstream check has passed, else None."""
    status, body = readyz(gw)
    ok = isinstance(body, dict) and body.get("checks", {}).get("upstream:pg", {}).get("ok")
    return (status, body) if ok else None


@pytest.fixture
def role(pg):
    """An upstream role of its own whose password a test may change under the gateway."""
    name = "ready_" + secrets.token_hex(4)
    password = secrets.token_urlsafe(18)
    pg.create_role(name, password)
    yield name, password
    pg.sql(f"DROP ROLE IF EXISTS {name}")


def _config(pg, idp, role_name: str, **admin) -> dict:
    return gateway_config(pg, idp, user=role_name, password_env="READY_PASSWORD",
                          admin={"upstream_check_interval": "1s", **admin})


# ---- the upstream ---------------------------------------------------------------------------------

@pytest.mark.parametrize("workers", [None, 2])
def test_readyz_follows_the_upstream_login(pg, idp, role, workers):
    name, password = role
    env = {**gateway_env(pg), "READY_PASSWORD": password}
    with Gateway(_config(pg, idp, name), env=env, workers=workers) as g:
        wait_until(lambda: readyz(g) == (200, {"ready": True}), 20, "ready at start", g)
        wrong = secrets.token_urlsafe(18)
        pg.sql(f"ALTER ROLE {name} PASSWORD '{wrong}'")
        status, body = wait_until(lambda: (lambda r: r if r[0] == 503 else None)(readyz(g)),
                                  15, "503 once the upstream refuses the login", g)
        assert body["ready"] is False and body["failed"] == ["upstream:pg"], body
        detail = body["checks"]["upstream:pg"]["detail"]
        assert "password authentication failed" in detail, body
        if workers:
            assert detail.startswith("worker "), body     # the parent says whose report
        text = json.dumps(body)
        assert password not in text and wrong not in text
        assert healthz(g) == 200                      # alive, just not ready
        pg.sql(f"ALTER ROLE {name} PASSWORD '{password}'")
        wait_until(lambda: readyz(g) == (200, {"ready": True}), 15, "ready again", g)
        # and the gateway serves through it all
        with psycopg.connect(conninfo(g, idp.token())) as c:
            assert c.execute("SELECT 1").fetchone() == (1,)


def test_readyz_unreachable_upstream_at_start(pg, idp):
    cfg = gateway_config(pg, idp)
    down = dict(cfg["connection"][0], name="down", upstream=f"127.0.0.1:{free_port()}")
    down.pop("listen", None)
    cfg["connection"].append(down)
    with Gateway(cfg, env=gateway_env(pg)) as g:
        # Waits for pg's check rather than reading /readyz once: the gateway waits at most
        # FIRST_CHECK_WAIT (3 s) for the first checks before it listens, and a loaded machine's
        # first login to pg can take longer (then pg is not checked yet, and not ok).
        status, body = wait_until(
            lambda: _pg_checked(g), 30, "pg's upstream check passed", g)
        assert status == 503 and body["failed"] == ["upstream:down"], body
        assert body["checks"]["upstream:pg"]["ok"] is True, body


# ---- the audit directory and the key sources ------------------------------------------------------

def test_readyz_audit_directory_unwritable(pg, idp, tmp_path):
    audit = tmp_path / "audit"
    cfg = gateway_config(pg, idp, admin={"upstream_check_interval": "1s"})
    cfg["audit"] = {"path": str(audit), "flush_interval": "50ms"}
    cfg["state"] = {"url": f"sqlite:///{tmp_path}/state.db"}
    with Gateway(cfg, env=gateway_env(pg)) as g:
        wait_until(lambda: readyz(g) == (200, {"ready": True}), 20, "ready at start", g)
        # the volume is gone from under it (the tests run as root: a mode is no obstacle, a
        # file where the directory was is)
        aside = tmp_path / "audit-aside"
        audit.rename(aside)
        audit.write_text("not a directory")
        try:
            status, body = wait_until(lambda: (lambda r: r if r[0] == 503 else None)(readyz(g)),
                                      15, "503 with the audit directory gone", g)
            assert body["failed"] == ["audit"], body
            assert "not a directory" in body["checks"]["audit"]["detail"], body
            assert healthz(g) == 200
        finally:
            audit.unlink()
            aside.rename(audit)
        wait_until(lambda: readyz(g) == (200, {"ready": True}), 15, "ready again", g)


def test_readyz_jwks_source_down_at_start(pg, idp, tmp_path):
    jwks = tmp_path / "jwks.json"          # not there yet: the identity provider is down
    identity = {"issuer": [idp.issuer_config(jwks_uri="file://" + str(jwks))],
                "api_key": idp.api_key_config()}
    with Gateway(gateway_config(pg, idp, identity=identity,
                                admin={"upstream_check_interval": "1s"}),
                 env=gateway_env(pg)) as g:
        # as above: pg's first check may land after the gateway listens (FIRST_CHECK_WAIT)
        status, body = wait_until(
            lambda: _pg_checked(g), 30, "pg's upstream check passed", g)
        assert status == 503 and body["failed"] == [f"jwks:{idp.issuer}"], body
        shutil.copy(idp.jwks, jwks)
        wait_until(lambda: readyz(g) == (200, {"ready": True}), 15, "ready once the keys load", g)
        with psycopg.connect(conninfo(g, idp.token())) as c:
            assert c.execute("SELECT 1").fetchone() == (1,)


def test_readyz_state_store_not_answering(pg, idp):
    name = "readystate_" + secrets.token_hex(4)
    password = secrets.token_urlsafe(18)
    pg.create_role(name, password)
    pg.create_database(name, owner=name)
    cfg = gateway_config(pg, idp, admin={"upstream_check_interval": "1s"})
    cfg["state"] = {"url": f"postgresql://{name}@127.0.0.1:{pg.port}/{name}",
                    "password_env": "STATE_PASSWORD"}
    try:
        with Gateway(cfg, env={**gateway_env(pg), "STATE_PASSWORD": password}) as g:
            wait_until(lambda: readyz(g) == (200, {"ready": True}), 20, "ready at start", g)
            # the store's role may no longer log in, and its connection is gone
            pg.sql(f"ALTER ROLE {name} NOLOGIN; SELECT pg_terminate_backend(pid) "
                   f"FROM pg_stat_activity WHERE usename = '{name}'")
            status, body = wait_until(lambda: (lambda r: r if r[0] == 503 else None)(readyz(g)),
                                      15, "503 with the state store gone", g)
            assert body["failed"] == ["state"], body
            assert password not in json.dumps(body)
            pg.sql(f"ALTER ROLE {name} LOGIN")
            wait_until(lambda: readyz(g) == (200, {"ready": True}), 15, "ready again", g)
    finally:
        pg.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        pg.sql(f"DROP ROLE IF EXISTS {name}")


# ---- where the probes and the admin API listen ----------------------------------------------------

def test_probes_apart_and_admin_over_tls(pg, idp, tmp_path):
    import trustme
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = tmp_path / "admin.pem", tmp_path / "admin.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    probes_port = free_port()
    cfg = gateway_config(pg, idp, admin={"probes_listen": f"127.0.0.1:{probes_port}",
                                         "tls_cert": str(cert_path), "tls_key": str(key_path),
                                         "admin_groups": ["admins"]})
    with Gateway(cfg, env=gateway_env(pg)) as g:
        probes = f"http://127.0.0.1:{probes_port}"
        # the probes' port opens just after the admin one (which the helper waits for)
        wait_until(lambda: _answers(probes), 10, "the probes' listener", g)
        assert readyz(g, probes) == (200, {"ready": True})
        assert get(probes + "/healthz")[0] == 200
        status, metrics = get(probes + "/metrics")
        assert status == 200 and "hoopwire_build_info" in metrics
        assert get(probes + "/api/v1/openapi.json")[0] == 404   # no API on the probes' port
        g.wait_log(r"admin listening.*tls=on")
        https = f"https://127.0.0.1:{g.admin_port}"
        trusted = ssl.create_default_context()
        ca.configure_trust(trusted)
        req = urllib.request.Request(https + "/api/v1/sessions",
                                     headers={"Authorization": f"Bearer {idp.admin_token()}"})
        with urllib.request.urlopen(req, timeout=10, context=trusted) as r:
            assert r.status in (200, 404)     # 404: no state store; served over TLS either way
        assert get(https + "/readyz", context=trusted) == (200, {"ready": True})
        with pytest.raises(urllib.error.URLError) as e:   # a certificate, and not the system's
            urllib.request.urlopen(https + "/healthz", timeout=10,
                                   context=ssl.create_default_context())
        assert isinstance(e.value.reason, ssl.SSLCertVerificationError), e.value
        with pytest.raises((urllib.error.URLError, ConnectionError, http_errors())):
            urllib.request.urlopen(f"http://127.0.0.1:{g.admin_port}/healthz", timeout=10)


def _answers(base: str) -> bool:
    try:
        return get(base + "/healthz")[0] == 200
    except (urllib.error.URLError, ConnectionError):
        return False


def http_errors():
    import http.client
    return http.client.HTTPException


@pytest.mark.parametrize("bad, problem", [
    ({"probes_listen": "nope"}, "admin.probes_listen"),
    ({"tls_cert": "/nonexistent.pem", "tls_key": "/nonexistent.key"}, "admin.tls_cert"),
    ({"shutdown_grace": "2h"}, "admin.shutdown_grace"),
    ({"upstream_check_interval": 0}, "admin.upstream_check_interval"),
])
def test_admin_keys_are_validated(bad, problem, pg, idp):
    from hoopwire.config import ConfigError, parse_config
    cfg = gateway_config(pg, idp, admin=bad)
    cfg["connection"][0]["listen"] = "127.0.0.1:1"
    with pytest.raises(ConfigError) as e:
        parse_config(cfg)
    assert any(k == problem for k, _ in e.value.problems), e.value.problems


@settings(max_examples=60, deadline=None)
@given(key=st.sampled_from([("shutdown_grace", 0, 3600), ("upstream_check_interval", 1, 3600)]),
       seconds=st.one_of(st.integers(-10, 10_000), st.floats(-10, 10_000, allow_nan=False)),
       unit=st.sampled_from(["", "ms", "s", "m", "h"]))
def test_admin_durations_accepted_exactly_in_range(key, seconds, unit):
    """Generated values of both durations, as numbers and as strings with every unit: accepted
    exactly when they are within the key's range, and then read as that many seconds."""
    from hoopwire.config import ConfigError, parse_config
    name, low, high = key
    scale = {"": 1, "ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    if unit:
        seconds = abs(int(seconds))
        value, expect = f"{seconds}{unit}", seconds * scale
    else:
        value, expect = seconds, float(seconds)
    doc = {"identity": {"api_key": [{"name": "k", "sha256": "0" * 64, "groups": ["g"]}]},
           "connection": [{"name": "c", "protocol": "postgres", "listen": "127.0.0.1:1",
                           "upstream": "127.0.0.1:2", "user": "u", "database": "d"}],
           "admin": {name: value}}
    try:
        cfg = parse_config(doc)
    except ConfigError as e:
        assert any(k == f"admin.{name}" for k, _ in e.problems) == (not low <= expect <= high), \
            e.problems
        return
    assert low <= expect <= high
    assert getattr(cfg.admin, name) == pytest.approx(expect)


# ---- shutdown -------------------------------------------------------------------------------------

def _backend(pg, marker: str) -> list[str]:
    out = pg.sql(f"SELECT pid FROM pg_stat_activity WHERE query LIKE '%{marker}%' "
                 f"AND pid <> pg_backend_pid()")
    return [line.strip() for line in out.splitlines() if line.strip().isdigit()]


@pytest.mark.parametrize("workers", [None, 2])
def test_shutdown_cancels_the_running_statement(pg, idp, workers):
    grace = 1.0
    cfg = gateway_config(pg, idp, admin={"shutdown_grace": f"{grace:g}s"})
    marker = "hw_shutdown_" + secrets.token_hex(4)
    g = Gateway(cfg, env=gateway_env(pg), workers=workers)
    try:
        outcome: dict = {}

        def run() -> None:
            try:
                with psycopg.connect(conninfo(g, idp.token())) as c:
                    c.execute(f"SELECT pg_sleep(60) AS {marker}")
                outcome["result"] = "finished"
            except psycopg.Error as e:
                outcome["result"] = e.sqlstate
                outcome["message"] = str(e)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        wait_until(lambda: _backend(pg, marker), 15, "the statement runs upstream", g)
        t0 = time.monotonic()
        g.signal(signal.SIGTERM)
        t.join(grace + 10)
        assert outcome.get("result") == "57P01", (outcome, g.log_text()[-3000:])
        wait_until(lambda: not _backend(pg, marker), grace + 5,
                   "the upstream statement ended with the gateway", g)
        gone = time.monotonic() - t0
        assert g.proc.wait(grace + 15) == 0
        print(f"statement gone upstream {gone:.2f}s after SIGTERM (grace {grace:g}s)")
        # waited for: the process has exited, but its last lines may still be in the pipe
        g.wait_log(r"running statement cancelled", timeout=30)
    finally:
        g.stop()
