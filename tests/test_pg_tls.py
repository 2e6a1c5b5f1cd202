"""TLS on both sides of the gateway, and each way the upstream may ask for a password."""

from __future__ import annotations

import psycopg

import pgraw
import pytest

from gwfixtures import conninfo, gateway_config, gateway_env
from helpers import Gateway

UPSTREAM_SSL = "select ssl from pg_stat_ssl where pid = pg_backend_pid()"


@pytest.fixture(scope="module")
def tls_gw(pg, idp, pki):
    cfg = gateway_config(pg, idp, tls_cert=pki.server_cert, tls_key=pki.server_key,
                         require_tls=False,   # a certificate alone would require TLS
                         upstream_tls="verify-full", upstream_ca=pki.ca_pem)
    cfg["connection"].append({
        "name": "strict", "protocol": "postgres", "upstream": f"127.0.0.1:{pg.port}",
        "database": "appdb", "user": "app", "password_env": "APP_DB_PASSWORD",
        "tls_cert": pki.server_cert, "tls_key": pki.server_key, "require_tls": True})
    with Gateway(cfg, env=gateway_env(pg)) as g:
        yield g


def test_client_tls_verify_full(tls_gw, idp, pki):
    dsn = conninfo(tls_gw, idp.token(), host="localhost", sslmode="verify-full",
                   sslrootcert=pki.ca_pem)
    with psycopg.connect(dsn) as conn:
        assert conn.pgconn.ssl_in_use
        # and the gateway reached the upstream over TLS, verifying its certificate
        assert conn.execute(UPSTREAM_SSL).fetchone()[0] is True
    tls_gw.wait_log(r"session started .*tls=on upstream_tls=on", timeout=30)


def test_client_tls_against_the_wrong_ca_fails_on_the_client(tls_gw, idp, pki):
    dsn = conninfo(tls_gw, idp.token(), host="localhost", sslmode="verify-full",
                   sslrootcert=pki.other_ca_pem)
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(dsn)


def test_plaintext_allowed_with_require_tls_false(tls_gw, idp):
    with psycopg.connect(conninfo(tls_gw, idp.token(), sslmode="disable")) as conn:
        assert not conn.pgconn.ssl_in_use


def test_require_tls_refuses_plaintext(tls_gw, idp, pki):
    with pytest.raises(psycopg.OperationalError, match="requires TLS"):
        psycopg.connect(conninfo(tls_gw, idp.token(), name="strict", sslmode="disable"))
    dsn = conninfo(tls_gw, idp.token(), name="strict", sslmode="require")
    with psycopg.connect(dsn) as conn:
        assert conn.execute("select 1").fetchone()[0] == 1


@pytest.mark.parametrize("name", ["pg", "strict"])
def test_direct_tls_of_postgresql_17_clients(tls_gw, idp, pki, name):
    """sslnegotiation=direct: TLS from the first byte, no SSLRequest, ALPN "postgresql"
    (libpq 17+; psycopg's bundled libpq is newer than that)."""
    assert psycopg.pq.version() >= 170000
    dsn = conninfo(tls_gw, idp.token(), name=name, host="localhost", sslmode="verify-full",
                   sslrootcert=pki.ca_pem, sslnegotiation="direct")
    with psycopg.connect(dsn) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("select 41 + 1").fetchone()[0] == 42
    # and the plain ways still work beside it
    with psycopg.connect(conninfo(tls_gw, idp.token(), name=name, sslmode="require")) as conn:
        assert conn.execute("select 1").fetchone()[0] == 1


def test_direct_tls_without_alpn_is_refused(tls_gw, pki):
    """PostgreSQL refuses direct TLS without ALPN (a TLS client not meant for it)."""
    import socket
    import ssl
    ctx = ssl.create_default_context(cafile=pki.ca_pem)
    with socket.create_connection(("127.0.0.1", tls_gw.port("pg")), timeout=15) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as t:
            t.sendall(pgraw.startup_packet({"user": "agent-7", "database": "appdb"}))
            data = b""
            while True:
                chunk = t.recv(4096)
                if not chunk:
                    break
                data += chunk
    msgs, _ = pgraw.parse_messages(data)
    errors = [pgraw.error_fields(b) for k, b in msgs if k == b"E"]
    assert errors and errors[0]["C"] == "08P01" and "ALPN" in errors[0]["M"], msgs


def test_upstream_verify_full_with_a_wrong_ca_fails_closed(pg, idp, pki):
    cfg = gateway_config(pg, idp, upstream_tls="verify-full", upstream_ca=pki.other_ca_pem)
    with Gateway(cfg, env=gateway_env(pg)) as g:
        with pytest.raises(psycopg.OperationalError, match="could not connect to the upstream"):
            psycopg.connect(conninfo(g, idp.token()))
        g.wait_log(r"upstream login failed .*certificate", timeout=30)


def test_upstream_tls_require_encrypts_without_verifying(pg, idp):
    cfg = gateway_config(pg, idp, upstream_tls="require")
    with Gateway(cfg, env=gateway_env(pg)) as g:
        with psycopg.connect(conninfo(g, idp.token())) as conn:
            assert conn.execute(UPSTREAM_SSL).fetchone()[0] is True


@pytest.mark.parametrize("user,secret_env", [("app", "APP_DB_PASSWORD"),        # SCRAM-SHA-256
                                             ("md5user", "MD5_PASSWORD"),       # MD5
                                             ("passuser", "PASS_PASSWORD")])    # cleartext
def test_upstream_password_methods(pg, idp, user, secret_env):
    cfg = gateway_config(pg, idp, user=user, password_env=secret_env)
    with Gateway(cfg, env=gateway_env(pg)) as g:
        with psycopg.connect(conninfo(g, idp.token())) as conn:
            assert conn.execute("select current_user").fetchone()[0] == user


def test_wrong_upstream_password_is_the_operators_problem(pg, idp):
    cfg = gateway_config(pg, idp)
    with Gateway(cfg, env={"APP_DB_PASSWORD": "wrong-password"}) as g:
        with pytest.raises(psycopg.OperationalError) as e:
            psycopg.connect(conninfo(g, idp.token()))
        # the client learns nothing about the upstream role or why
        assert "could not log in to the upstream" in str(e.value)
        assert '"app"' not in str(e.value)
        g.wait_log(r"upstream login failed .*password authentication failed", timeout=30)
        assert "wrong-password" not in g.log_text()
