"""The test infrastructure itself: the PostgreSQL fixture, its auth methods and TLS, and the
helpers the gateway tests build on (TOML writer, Gateway launcher)."""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import tomllib

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from helpers import APP_DB, ITEMS, Gateway, GatewayError, free_port, to_toml, wait_port
from hoopwire.config import parse_config
from hoopwire.devserver import PgServer

# AuthenticationRequest codes (the int32 after an 'R' message's length)
AUTH_CLEARTEXT, AUTH_MD5, AUTH_SASL = 3, 5, 10


def first_auth_request(host: str, port: int, user: str, dbname: str) -> int:
    """Send a plaintext StartupMessage and return the server's authentication request code."""
    params = b"".join(k.encode() + b"\0" + v.encode() + b"\0"
                      for k, v in (("user", user), ("database", dbname))) + b"\0"
    startup = struct.pack("!ii", 8 + len(params), 196608) + params  # protocol 3.0
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(startup)
        head = b""
        while len(head) < 9:
            chunk = s.recv(9 - len(head))
            assert chunk, "server closed the connection during startup"
            head += chunk
    kind, _length, code = struct.unpack("!cii", head)
    assert kind == b"R", f"expected an AuthenticationRequest, got {kind!r}"
    return code


def tls_connect(pg: PgServer, pki, user: str, **kw) -> psycopg.Connection:
    return psycopg.connect(host="localhost", port=pg.port, user=user, password=pg.passwords[user],
                           dbname=APP_DB, sslmode="verify-full", sslrootcert=pki.ca_pem,
                           connect_timeout=10, **kw)


@pytest.mark.parametrize("user, auth_code", [("app", AUTH_SASL), ("md5user", AUTH_MD5),
                                             ("passuser", AUTH_CLEARTEXT)])
def test_each_role_connects_over_verified_tls(pg, pki, user, auth_code):
    with tls_connect(pg, pki, user) as conn:
        assert conn.execute("SHOW ssl").fetchone() == ("on",)
        assert conn.execute("SELECT current_user").fetchone() == (user,)
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
                            ).fetchone() == (True,)
        assert conn.execute("SELECT id, name FROM items ORDER BY id").fetchall() == ITEMS
    # and the server really asks for the method the role is there to exercise
    assert first_auth_request(pg.host, pg.port, user, APP_DB) == auth_code


def test_md5user_has_an_md5_verifier(pg):
    verifiers = dict(line.split("|") for line in pg.sql(
        "SELECT rolname, left(rolpassword, 6) FROM pg_authid "
        "WHERE rolname IN ('app', 'md5user', 'passuser')").splitlines())
    assert verifiers["md5user"].startswith("md5")
    assert verifiers["app"] == "SCRAM-"


def test_plaintext_is_accepted_too(pg):
    with psycopg.connect(pg.dsn(user="app", dbname=APP_DB, sslmode="disable")) as conn:
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
                            ).fetchone() == (False,)


def test_wrong_ca_fails_verify_full(pg, pki):
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(host="localhost", port=pg.port, user="app", password=pg.passwords["app"],
                        dbname=APP_DB, sslmode="verify-full", sslrootcert=pki.other_ca_pem,
                        connect_timeout=10)


def test_wrong_password_fails(pg, pki):
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(host="localhost", port=pg.port, user="app", password="not-it",
                        dbname=APP_DB, sslmode="verify-full", sslrootcert=pki.ca_pem,
                        connect_timeout=10)


def test_listens_on_loopback_only(pg):
    assert pg.sql("SHOW listen_addresses") == "127.0.0.1"
    assert pg.sql("SHOW unix_socket_directories") == pg.socket_dir


def test_dsn_quotes_awkward_values():
    server = PgServer(port=1)  # never started: dsn() only formats
    server.passwords["odd"] = "it's a \\ pass word"
    parsed = conninfo_to_dict(server.dsn(user="odd", dbname="my db", sslmode="require"))
    assert parsed == {"host": "127.0.0.1", "port": "1", "user": "odd", "dbname": "my db",
                      "password": "it's a \\ pass word", "sslmode": "require"}


def test_stop_is_idempotent_and_removes_the_cluster():
    server = PgServer().start()
    workdir = server.workdir
    assert server.sql("SELECT 1") == "1"
    server.stop()
    server.stop()
    assert not server.running
    assert not os.path.exists(workdir)


# -- helpers for the gateway tests ----------------------------------------------------------------

GATEWAY_CONFIG = {
    "log": {"level": "debug"},
    "identity": {
        "api_key": [{"name": "ci", "sha256": hashlib.sha256(b"k").hexdigest(), "groups": ["ci"]}],
    },
    "connection": [{
        "name": "orders-db",
        "protocol": "postgres",
        "upstream": "127.0.0.1:5999",
        "database": "orders",
        "user": "app",
        "password_env": "HW_TEST_ORDERS_PASSWORD",
        "allow_groups": ["ci"],
        "guardrail": [
            {"name": "no-ddl", "patterns": [r"\bdrop\s+(table|schema)\b", r'say "hi"\t'],
             "action": "block", "message": "not here"},
            {"name": "deletes", "patterns": [r"\bdelete\b"], "action": "log"},
        ],
        "mask": [{"columns": ["*.password"], "strategy": "partial", "keep": 4}],
    }],
}


def test_toml_writer_round_trips():
    doc = {"a": 1, "b": -2.5, "c": True, "d": "quo\"te \\ \n tab\t \x01 ü", "e": [1, 2],
           "f": [], "g key": "x", "t": {"x": 1, "sub": {"y": "z"}},
           "arr": [{"n": 1, "inner": [{"m": 2}]}, {"n": 3}], "mixed": [{"k": 1}, "s"]}
    assert tomllib.loads(to_toml(doc)) == doc
    assert tomllib.loads(to_toml(GATEWAY_CONFIG)) == GATEWAY_CONFIG


def test_gateway_fills_ports_and_writes_a_valid_config(monkeypatch):
    gw = Gateway(GATEWAY_CONFIG, start=False)
    try:
        assert gw.port("orders-db") > 0 and gw.admin_port > 0
        assert gw.port("orders-db") != gw.admin_port
        with pytest.raises(KeyError):
            gw.port("nope")
        with open(gw.config_path, "rb") as f:
            doc = tomllib.load(f)
        assert doc["connection"][0]["listen"] == f"127.0.0.1:{gw.port('orders-db')}"
        monkeypatch.setenv("HW_TEST_ORDERS_PASSWORD", "x")
        config = parse_config(doc)  # the real loader accepts what the helper writes
        patterns = GATEWAY_CONFIG["connection"][0]["guardrail"][0]["patterns"]
        assert list(config.connections[0].guardrails[0].patterns) == patterns
        assert "listen" not in GATEWAY_CONFIG["connection"][0]  # the caller's dict is kept
    finally:
        gw.stop()


def test_gateway_that_exits_early_raises_with_its_log():
    broken = {"connection": [{"name": "x", "bogus_key": 1}]}
    with pytest.raises(GatewayError) as info:
        Gateway(broken, timeout=60)   # only a deadline for exiting; typically well under 1 s
    assert "exited with" in str(info.value)


def test_wait_port():
    port = free_port()
    with pytest.raises(TimeoutError):
        wait_port("127.0.0.1", port, timeout=0.2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        wait_port("127.0.0.1", port, timeout=30)   # listening already: the first look finds it
