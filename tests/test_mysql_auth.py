"""Logging in to a mysql connection: the token as a mysql_clear_password answer over TLS, with
every client we support, and every way a login is refused (each with the server's error number
at the sequence id the client expects, and a log line for the operator).

The gateway greets each client itself and logs in upstream to the session's MariaDB
(tests/mysqlfixtures.py) with the stored credentials; tests/mysqlgw.py has the config and the
per-driver connect helpers.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import time

import pymysql
import pytest

from helpers import Gateway, wait_until
from hoopwire.mysql import packets as p
from mysqlfixtures import MY_DB
from mysqlgw import (MY_CONN, aiomysql_connect, connector_connect, mygw,  # noqa: F401
                     mysql_cli, mysql_gateway_config, mysql_gateway_env, mysqlclient_connect,
                     pymysql_connect)


def _who(conn) -> tuple:
    cur = conn.cursor()
    cur.execute("SELECT CURRENT_USER(), DATABASE()")
    row = tuple(cur.fetchone())
    cur.close()
    return row


def _connector_c_available() -> str | None:
    try:
        import mysql.connector.connection_cext  # noqa: F401
    except ImportError as e:
        return str(e)
    return None


# -- one login per client ----------------------------------------------------------------------

@pytest.mark.parametrize("client", ["pymysql", "mysqlclient", "connector-pure", "connector-c"])
def test_each_driver_logs_in_with_a_token(mygw, idp, client):
    if client == "connector-c":
        assert _connector_c_available() is None, _connector_c_available()
    token = idp.token(subject=f"drv-{client}")
    if client == "pymysql":
        conn = pymysql_connect(mygw, token)
    elif client == "mysqlclient":
        conn = mysqlclient_connect(mygw, token)
    else:
        conn = connector_connect(mygw, token, pure=client == "connector-pure")
    try:
        assert _who(conn) == ("app@%", MY_DB)
    finally:
        conn.close()
    line = wait_until(lambda: [ln for ln in mygw.log_text().splitlines()
                               if "session started" in ln and f"subject=drv-{client}" in ln],
                      10, "session started", mygw)[0]
    assert "tls=on" in line and "role=default" in line and "upstream_user=app" in line


def test_aiomysql_logs_in_with_a_token(mygw, idp):
    async def run():
        conn = await aiomysql_connect(mygw, idp.token())
        try:
            async with conn.cursor() as cur:
                await cur.execute("SELECT CURRENT_USER(), DATABASE()")
                return await cur.fetchone()
        finally:
            conn.close()
    assert tuple(asyncio.run(run())) == ("app@%", MY_DB)


def test_mariadb_cli_logs_in_with_a_token(mygw, idp):
    r = mysql_cli(mygw, idp.token(), "-e", "SELECT CURRENT_USER(), DATABASE()")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["app@%", MY_DB]


def test_api_key_logs_in(mygw, idp):
    conn = pymysql_connect(mygw, idp.api_keys["ci"])
    try:
        assert _who(conn) == ("app@%", MY_DB)
    finally:
        conn.close()


# -- refusals ------------------------------------------------------------------------------------

def _refused(gw, token, **kw) -> pymysql.err.MySQLError:
    with pytest.raises(pymysql.err.MySQLError) as e:
        pymysql_connect(gw, token, **kw).close()
    return e.value


def test_bad_token_is_the_servers_access_denied(mygw, idp):
    err = _refused(mygw, "not-a-token")
    assert err.args == (1045, "Access denied for user 'agent'@'127.0.0.1' (using password: YES)")
    wait_until(lambda: "reason=auth_failed" in mygw.log_text(), 10, "refusal logged", mygw)
    assert "not-a-token" not in mygw.log_text()


def test_expired_token(mygw, idp):
    err = _refused(mygw, idp.token(ttl=-120), user="someone")
    assert err.args[0] == 1045
    assert "'someone'@'127.0.0.1'" in err.args[1]
    wait_until(lambda: "detail=\"expired" in mygw.log_text() or "detail=expired" in
               mygw.log_text(), 10, "expiry logged", mygw)


def test_group_not_allowed(mygw, idp):
    err = _refused(mygw, idp.token(subject="outsider", groups=("nobody",)))
    assert err.args[0] == 1045
    assert "not allowed" in err.args[1]
    wait_until(lambda: "reason=denied" in mygw.log_text(), 10, "denial logged", mygw)


def test_every_client_hears_the_refusal_not_a_lost_connection(mygw, idp):
    # a refusal at the wrong sequence id reads as "packets out of order" / "lost connection"
    # in every driver: each must show the server's 1045 itself
    import MySQLdb
    import mysql.connector
    with pytest.raises(MySQLdb.OperationalError) as e:
        mysqlclient_connect(mygw, "bad-token")
    assert e.value.args[0] == 1045
    with pytest.raises(mysql.connector.Error) as e:
        connector_connect(mygw, "bad-token")
    assert e.value.errno == 1045
    r = mysql_cli(mygw, "bad-token", "-e", "SELECT 1")
    assert r.returncode != 0 and "ERROR 1045 (28000)" in r.stderr, r.stderr


def test_tls_required(mygw, idp):
    err = _refused(mygw, idp.token(), tls=False)
    assert err.args[0] == 3159
    assert "requires TLS" in err.args[1]
    wait_until(lambda: "reason=tls_required" in mygw.log_text(), 10, "refusal logged", mygw)


def test_unknown_user_name_is_the_default_role(mygw, idp):
    # as on postgres: a name that is no [[connection.role]] logs in as the connection's user
    conn = pymysql_connect(mygw, idp.token(), user="whoever")
    try:
        assert _who(conn) == ("app@%", MY_DB)
    finally:
        conn.close()


def test_too_many_connections(mariadb, idp, pki):
    with Gateway(mysql_gateway_config(mariadb, idp, pki, max_connections=1),
                 env=mysql_gateway_env(mariadb)) as gw:
        gw.pki = pki

        def first_in():
            # the slot is taken at accept, as the server does: the readiness probe's own
            # connection holds it until the gateway has seen it leave (its upstream greeting
            # fetched first), so the first login may meet 1040 for a moment
            try:
                return pymysql_connect(gw, idp.token())
            except pymysql.err.OperationalError as e:
                if e.args[0] != 1040:
                    raise
                return None
        first = wait_until(first_in, 10, "a first login once the probe's slot is free", gw=gw)
        try:
            err = _refused(gw, idp.token())
            assert err.args == (1040, "Too many connections")
        finally:
            first.close()


# -- roles, schema, cleartext without TLS ---------------------------------------------------------

@pytest.fixture(scope="module")
def plaingw(mariadb, idp, pki):
    """TLS offered but not required; the token in clear only from loopback; roles; the
    client's schema allowed."""
    cfg = mysql_gateway_config(
        mariadb, idp, pki, require_tls=False, cleartext_without_tls="loopback",
        allow_client_database=True,
        role=[{"name": "reader", "user": "eduser", "password_env": "MY_EDUSER_PASSWORD",
               "allow_groups": ["dba"]},
              {"name": "ed", "user": "eduser", "password_env": "MY_EDUSER_PASSWORD"}])
    with Gateway(cfg, env=mysql_gateway_env(mariadb)) as gw:
        gw.pki = pki
        yield gw


def test_cleartext_over_plaintext_refused_by_default(mariadb, idp, pki):
    with Gateway(mysql_gateway_config(mariadb, idp, pki, require_tls=False),
                 env=mysql_gateway_env(mariadb)) as gw:
        gw.pki = pki
        err = _refused(gw, idp.token(), tls=False)
        assert err.args[0] == 1251
        assert "over TLS only" in err.args[1]
        # over TLS the same gateway takes it
        conn = pymysql_connect(gw, idp.token())
        conn.close()
        wait_until(lambda: "reason=cleartext_refused" in gw.log_text(), 10, "logged", gw)


def test_cleartext_from_loopback_when_allowed(plaingw, idp):
    conn = pymysql_connect(plaingw, idp.token(subject="plain"), tls=False)
    try:
        assert _who(conn) == ("app@%", MY_DB)
    finally:
        conn.close()
    wait_until(lambda: any("subject=plain" in ln and "tls=off" in ln
                           for ln in plaingw.log_text().splitlines()), 10, "logged", plaingw)


def test_role_picks_the_upstream_user_ed25519(plaingw, idp):
    # `ed` maps to eduser, whose MariaDB plugin is client_ed25519: the gateway signs its nonce
    conn = pymysql_connect(plaingw, idp.token(subject="ed-user"), user="ed")
    try:
        assert _who(conn) == ("eduser@%", MY_DB)
    finally:
        conn.close()
    wait_until(lambda: any("subject=ed-user" in ln and "auth_plugin=client_ed25519" in ln
                           for ln in plaingw.log_text().splitlines()), 10, "logged", plaingw)


def test_role_with_its_own_groups(plaingw, idp):
    err = _refused(plaingw, idp.token(groups=("agents",)), user="reader")
    assert err.args[0] == 1045 and "not allowed to use \"reader\"" in err.args[1]
    conn = pymysql_connect(plaingw, idp.token(groups=("dba",)), user="reader")
    try:
        assert _who(conn)[0] == "eduser@%"
    finally:
        conn.close()


def test_client_schema_only_where_allowed(mygw, plaingw, idp):
    # the default connection: its own schema, or none named; another one is refused (1044)
    conn = pymysql_connect(mygw, idp.token(), database=None)
    try:
        assert _who(conn) == ("app@%", MY_DB)
    finally:
        conn.close()
    err = _refused(mygw, idp.token(), database="information_schema")
    assert err.args == (1044, "Access denied for user 'agent'@'127.0.0.1' to database "
                              "'information_schema'")
    # allow_client_database: the client's schema goes upstream, and the server judges it
    conn = pymysql_connect(plaingw, idp.token(), database="information_schema")
    try:
        assert _who(conn) == ("app@%", "information_schema")
    finally:
        conn.close()
    # the server's refusals of the schema, without the stored user's name
    err = _refused(plaingw, idp.token(), database="mysql")
    assert err.args == (1044, "Access denied to database 'mysql'")
    # (MariaDB answers 1044, not 1049, for a schema that does not exist to a user without
    # global rights: it does not tell which schemas exist)
    err = _refused(plaingw, idp.token(), database="nosuchdb")
    assert err.args == (1044, "Access denied to database 'nosuchdb'")


# -- bad input on the raw wire --------------------------------------------------------------------

def _raw(gw, name: str = MY_CONN) -> socket.socket:
    s = socket.create_connection(gw.address(name), timeout=10)
    return s


def _read_packet(s: socket.socket) -> tuple[int, bytes]:
    head = b""
    while len(head) < 4:
        chunk = s.recv(4 - len(head))
        if not chunk:
            raise ConnectionError("closed")
        head += chunk
    n = int.from_bytes(head[:3], "little")
    body = b""
    while len(body) < n:
        chunk = s.recv(n - len(body))
        if not chunk:
            raise ConnectionError("closed")
        body += chunk
    return head[3], body


def _closed(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def _no_traceback(gw) -> None:
    assert "Traceback" not in gw.log_text(), gw.log_text()[-3000:]


def test_garbage_instead_of_a_handshake_response(plaingw):
    s = _raw(plaingw)
    with s:
        seq, greeting = _read_packet(s)
        assert seq == 0 and greeting[0] == 10
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        # "GET " is a 5.5 MB packet with sequence id 0x20: refused at its header, no waiting
        seq, err = _read_packet(s)
        e = p.parse_err(err)
        assert (e.errno, e.sqlstate) == (1043, "08S01")
        assert seq == 1
        assert _closed(s)
    wait_until(lambda: "bad startup" in plaingw.log_text(), 10, "logged", plaingw)
    _no_traceback(plaingw)


@pytest.mark.parametrize("payload", [
    b"\x00\x02",                                          # shorter than the fixed part
    struct.pack("<IIB", p.CLIENT.PROTOCOL_41, 1 << 24, 45) + b"\0" * 23,   # no user's NUL
    struct.pack("<IIB", p.CLIENT.PROTOCOL_41 | p.CLIENT.SECURE_CONNECTION, 1 << 24, 45)
    + b"\0" * 23 + b"agent\0" + b"\x50abc",              # auth length past the end
    struct.pack("<IIB", 0, 1 << 24, 45) + b"\0" * 23 + b"agent\0",   # pre-4.1 client
    struct.pack("<IIB", p.CLIENT.PROTOCOL_41, 1 << 24, 45) + b"\0" * 23 + b"\xff\xfe\0",
])
def test_malformed_handshake_response(plaingw, payload):
    with _raw(plaingw) as s:
        _read_packet(s)
        s.sendall(p.frame(payload, 1))
        seq, err = _read_packet(s)
        e = p.parse_err(err)
        assert (e.errno, e.sqlstate, seq) == (1043, "08S01", 2), e
        assert _closed(s)
    _no_traceback(plaingw)


def test_wrong_sequence_id(plaingw):
    with _raw(plaingw) as s:
        _read_packet(s)
        hello = p.HandshakeResponse41(p.CLIENT.PROTOCOL_41 | p.CLIENT.SECURE_CONNECTION
                                      | p.CLIENT.PLUGIN_AUTH, "agent")
        s.sendall(p.frame(hello.encode(), 5))
        _, err = _read_packet(s)
        assert p.parse_err(err).errno == 1043
        assert b"sequence id 5" in err
    _no_traceback(plaingw)


def test_truncated_handshake_response_then_gone(plaingw, idp):
    with _raw(plaingw) as s:
        _read_packet(s)
        s.sendall(b"\x40\x00\x00\x01" + b"\x00" * 10)       # 64 bytes announced, 10 sent
    # nobody to tell; the gateway goes on serving
    conn = pymysql_connect(plaingw, idp.token())
    conn.close()
    _no_traceback(plaingw)


def test_clear_password_in_the_first_response_is_taken(plaingw, idp):
    # a client that already answers with mysql_clear_password (over TLS) needs no switch
    token = idp.token(subject="eager")
    with _raw(plaingw) as raw:
        _, greeting = _read_packet(raw)
        g = p.HandshakeV10.decode(greeting)
        caps = (p.CLIENT.PROTOCOL_41 | p.CLIENT.SECURE_CONNECTION | p.CLIENT.PLUGIN_AUTH
                | p.CLIENT.PLUGIN_AUTH_LENENC_CLIENT_DATA | p.CLIENT.SSL) & g.capabilities
        raw.sendall(p.frame(p.ssl_request(caps), 1))
        ctx = ssl.create_default_context(cafile=plaingw.pki.ca_pem)
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(p.frame(p.HandshakeResponse41(
                caps, "agent", token.encode() + b"\0", auth_plugin="mysql_clear_password").encode(),
                2))
            seq, ok = _read_packet(s)
            assert (seq, ok[:1]) == (3, b"\x00"), ok
    wait_until(lambda: "subject=eager" in plaingw.log_text(), 10, "logged", plaingw)


def test_handshake_timeout(mariadb, idp, pki):
    with Gateway(mysql_gateway_config(mariadb, idp, pki, handshake_timeout="1s"),
                 env=mysql_gateway_env(mariadb)) as gw:
        # timed from before the connect: the gateway's clock starts at accept, after it.
        # (Timed from the greeting, the lower bound lost whatever the greeting took, and a
        # loaded machine's greeting could take half the 1 s.)
        t0 = time.monotonic()
        with _raw(gw) as s:
            _read_packet(s)
            seq, err = _read_packet(s)      # we say nothing: the gateway gives up
            took = time.monotonic() - t0
            e = p.parse_err(err)
            assert seq == 1 and e.errno == 1043, e
            assert b"timed out" in e.message
            # the 1 s setting, not before it, nor the 15 s default (the upper bound only
            # tells them apart)
            assert 0.9 < took < 10, took
            assert _closed(s)
        wait_until(lambda: "startup timed out" in gw.log_text(), 10, "logged", gw)
        _no_traceback(gw)


# -- the upstream login's scrambles, checked the way a server checks them -------------------------

def test_native_password_scramble_as_the_server_verifies_it():
    import hashlib
    import os

    from hoopwire.mysql.upstream import native_password_scramble
    pw, nonce = b"app-secret", os.urandom(20)
    stored = hashlib.sha1(hashlib.sha1(pw).digest()).digest()     # mysql.user's hash
    s = native_password_scramble(pw, nonce)
    stage1 = bytes(a ^ b for a, b in zip(s, hashlib.sha1(nonce + stored).digest()))
    assert hashlib.sha1(stage1).digest() == stored
    assert native_password_scramble(b"", nonce) == b""


def test_caching_sha2_scramble_as_the_server_verifies_it():
    # MariaDB has no caching_sha2_password: its fast path is checked here as MySQL 8's server
    # checks it (sha2_password::Validate_scramble: SHA256(scramble XOR SHA256(stored + nonce))
    # must equal the cached SHA256(SHA256(pw))), for several passwords and nonces
    import hashlib
    import os

    from hoopwire.mysql.upstream import caching_sha2_scramble
    for pw in (b"x", b"app-secret", "p\u00e4ss".encode(), os.urandom(40)):
        nonce = os.urandom(20)
        stored = hashlib.sha256(hashlib.sha256(pw).digest()).digest()
        s = caching_sha2_scramble(pw, nonce)
        digest = bytes(a ^ b for a, b in zip(s, hashlib.sha256(stored + nonce).digest()))
        assert hashlib.sha256(digest).digest() == stored
    assert caching_sha2_scramble(b"", os.urandom(20)) == b""


def test_rsa_full_authentication_decrypts_to_the_password():
    # caching_sha2_password / sha256_password without TLS: what the server decrypts with its
    # private key (RSA-OAEP, SHA-1), XORed with the nonce, is the password and a NUL
    import os

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    from hoopwire.mysql.upstream import rsa_encrypt_password
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    nonce = os.urandom(20)
    pw = b"a password longer than the twenty-byte nonce"
    blob = rsa_encrypt_password(pw, nonce, pem)
    plain = key.decrypt(blob, padding.OAEP(mgf=padding.MGF1(hashes.SHA1()),
                                           algorithm=hashes.SHA1(), label=None))
    assert bytes(c ^ nonce[i % 20] for i, c in enumerate(plain)) == pw + b"\0"


def test_ed25519_signature_verifies_with_the_servers_stored_key(mariadb):
    # MariaDB stores an ed25519 user's public key (base64, unpadded): the gateway's signature
    # over a nonce must verify with it (a library check, not our own arithmetic). Several
    # passwords: one in 16 would pass even an unclamped scalar (its low bits already clear)
    import base64
    import os
    import secrets

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from hoopwire.mysql.upstream import ed25519_sign
    users = {f"ed_kat_{i}": secrets.token_urlsafe(12 + i) for i in range(6)}
    try:
        for user, pw in users.items():
            mariadb.sql(f"CREATE USER {user}@localhost IDENTIFIED VIA ed25519 "
                        f"USING PASSWORD('{pw}')")
            (stored,) = mariadb.sql("SELECT JSON_VALUE(Priv, '$.authentication_string') "
                                    f"FROM mysql.global_priv WHERE User = '{user}'")[0]
            public = Ed25519PublicKey.from_public_bytes(base64.b64decode(stored + "="))
            nonce = os.urandom(32)
            public.verify(ed25519_sign(pw.encode(), nonce), nonce)
    finally:
        for user in users:
            mariadb.sql(f"DROP USER IF EXISTS {user}@localhost")


def test_reference_codecs_read_the_real_greeting(mariadb):
    with socket.create_connection((mariadb.host, mariadb.port), timeout=10) as s:
        seq, payload = _read_packet(s)
    g = p.HandshakeV10.decode(payload)
    assert seq == 0 and "MariaDB" in g.server_version and len(g.auth_data) == 20
    assert g.capabilities & p.CLIENT.SSL and g.auth_plugin == "mysql_native_password"
    # MariaDB clears LONG_PASSWORD to say its extended capabilities follow
    assert not g.capabilities & p.CLIENT.LONG_PASSWORD and g.mariadb_capabilities
    assert g.encode() == payload


def test_config_keys_of_one_protocol_only():
    from hoopwire.config import ConfigError, parse_config

    def conn(protocol, **kw):
        c = {"name": "c", "protocol": protocol, "listen": "127.0.0.1:0",
             "upstream": "127.0.0.1:3306", "user": "u", "database": "d"}
        c.update(kw)
        return {"identity": {"api_key": [{"name": "k", "sha256": "0" * 64}]}, "connection": [c]}

    c = parse_config(conn("mysql")).connections[0]
    assert (c.cleartext_without_tls, c.load_data_local) == ("never", False)
    c = parse_config(conn("mysql", cleartext_without_tls="loopback",
                          load_data_local=True)).connections[0]
    assert (c.cleartext_without_tls, c.load_data_local) == ("loopback", True)
    for doc, words in ((conn("mysql", binary_copy="mask"), "binary_copy: applies to protocol "
                        "= \"postgres\""),
                       (conn("postgres", load_data_local=True), "load_data_local: applies to "
                        "protocol = \"mysql\""),
                       (conn("mysql", cleartext_without_tls="always"), "must be one of never, "
                        "loopback")):
        with pytest.raises(ConfigError) as e:
            parse_config(doc)
        assert words in str(e.value)


def test_unsafe_client_character_set_refused_while_rules_apply(mariadb, idp, pki, mygw):
    # gbk's second bytes include 0x5c: a lexer reading bytes sees an escape the server does not
    cfg = mysql_gateway_config(mariadb, idp, pki,
                               guardrail=[{"name": "no-drop", "patterns": [r"\bdrop\b"]}])
    with Gateway(cfg, env=mysql_gateway_env(mariadb)) as gw:
        gw.pki = pki
        err = _refused(gw, idp.token(), charset="gbk")
        assert err.args[0] == 1227 and "character set" in err.args[1]
        wait_until(lambda: "reason=blocked" in gw.log_text(), 10, "logged", gw)
        conn = pymysql_connect(gw, idp.token(), charset="utf8mb4")
        conn.close()
    # without rules the gateway reads no statement text: gbk is the server's business
    conn = pymysql_connect(mygw, idp.token(), charset="gbk")
    try:
        cur = conn.cursor()
        cur.execute("SELECT @@character_set_client")
        assert cur.fetchone() == ("gbk",)
    finally:
        conn.close()


# -- the reference codecs (hoopwire/mysql/packets.py) ----------------------------------------------

@pytest.mark.parametrize("n", [0, 250, 251, 0xFFFF, 0x10000, 0xFFFFFF, 0x1000000, 2 ** 64 - 1])
def test_lenenc_boundaries(n):
    raw = p.lenenc_int(n)
    assert len(raw) == (1 if n < 251 else 3 if n < 1 << 16 else 4 if n < 1 << 24 else 9)
    r = p.Reader(raw + b"x")
    assert r.lenenc_int() == n and r.rest() == b"x"
    with pytest.raises(p.PacketError):
        p.Reader(raw[:-1]).lenenc_int() if len(raw) > 1 else p.Reader(b"").lenenc_int()


@pytest.mark.parametrize("size", [0, 1, p.MAX_PAYLOAD - 1, p.MAX_PAYLOAD, p.MAX_PAYLOAD + 1,
                                  2 * p.MAX_PAYLOAD])
def test_frame_splits_and_joins_at_16mb(size):
    payload = (bytes(range(256)) * (size // 256 + 1))[:size]
    wire = p.frame(payload, 250)
    # a payload of exactly k * 0xFFFFFF bytes ends with an empty packet
    assert len(wire) == size + 4 * (size // p.MAX_PAYLOAD + 1)
    got, rest = p.read_payloads(wire + b"\x05\x00")
    assert got == [(250, payload)] and rest == b"\x05\x00"
    # any cut before the end leaves the payload unread, whole
    got, rest = p.read_payloads(wire[:-1])
    assert got == [] and rest == wire[:-1]


def test_read_payloads_checks_continuation_sequence_ids():
    wire = bytearray(p.frame(b"x" * (p.MAX_PAYLOAD + 3), 0))
    wire[p.MAX_PAYLOAD + 4 + 3] = 7                      # the continuation's sequence id
    with pytest.raises(p.PacketError):
        p.read_payloads(bytes(wire))


def test_handshake_response_round_trips_every_layout():
    base = p.CLIENT.PROTOCOL_41 | p.CLIENT.PLUGIN_AUTH
    for extra in (p.CLIENT.SECURE_CONNECTION, p.CLIENT.PLUGIN_AUTH_LENENC_CLIENT_DATA
                  | p.CLIENT.SECURE_CONNECTION | p.CLIENT.CONNECT_WITH_DB | p.CLIENT.CONNECT_ATTRS):
        hello = p.HandshakeResponse41(
            base | extra, "r\u00f6le", b"\x01" * 300 if extra & p.CLIENT.CONNECT_ATTRS
            else b"\x02" * 20, database="app" if extra & p.CLIENT.CONNECT_WITH_DB else None,
            auth_plugin="mysql_clear_password",
            attrs={"_client_name": "x", "k": "v" * 300} if extra & p.CLIENT.CONNECT_ATTRS else {},
            charset=224)
        assert p.HandshakeResponse41.decode(hello.encode()) == hello
        assert p.is_ssl_request(p.ssl_request(hello.capabilities))
        # every cut of a response is a PacketError, never another exception
        raw = hello.encode()
        for cut in range(0, len(raw) - 1, 7):
            try:
                p.HandshakeResponse41.decode(raw[:cut])
            except p.PacketError:
                pass


def test_ok_err_eof_and_rows_round_trip():
    caps = p.CLIENT.PROTOCOL_41 | p.CLIENT.SESSION_TRACK
    ok = p.OK(3, 7, p.SERVER_STATUS.AUTOCOMMIT | p.SERVER_STATUS.SESSION_STATE_CHANGED, 1,
              b"Rows matched: 3", b"\x01\x05\x04test")
    assert p.parse_ok(p.ok_packet(ok, caps), caps) == ok
    assert p.parse_err(p.err_packet(1045, "28000", "no")) == p.ERR(1045, "28000", b"no")
    assert p.parse_eof(p.eof_packet(2, 0x22)) == p.EOF(2, 0x22)
    col = ("app", "t", "items", "n", "name", 45, 256, p.TYPE.VAR_STRING, 0, 0)
    assert p.parse_column_definition(p.column_definition(*col)) == col
    row = [b"1", None, b"", b"x" * 300]
    assert p.parse_text_row(p.text_row(row), 4) == row
    types = [p.TYPE.LONG, p.TYPE.VAR_STRING, p.TYPE.DATETIME, p.TYPE.TIME, p.TYPE.DOUBLE,
             p.TYPE.NULL, p.TYPE.TINY, p.TYPE.LONGLONG, p.TYPE.BLOB]
    values = [p.pack_binary_value(p.TYPE.LONG, -5), b"abc",
              p.pack_binary_value(p.TYPE.DATETIME, (2024, 2, 29, 23, 59, 58, 123456)),
              p.pack_binary_value(p.TYPE.TIME, (True, 1, 2, 3, 4, 0)),
              p.pack_binary_value(p.TYPE.DOUBLE, 1.5), None, None,
              p.pack_binary_value(p.TYPE.LONGLONG, 2 ** 64 - 1, unsigned=True), b"\x00\xff"]
    raw = p.binary_row(values, types)
    assert raw[1:3] == bytes((0b10000000, 0b1))          # NULL bits 5 and 6, offset by 2
    assert p.parse_binary_row(raw, types) == values
    assert p.binary_value(p.TYPE.LONGLONG, values[7], unsigned=True) == 2 ** 64 - 1
    assert p.binary_value(p.TYPE.TIME, values[3]) == (True, 1, 2, 3, 4, 0)
    assert p.binary_value(p.TYPE.DATETIME, values[2]) == (2024, 2, 29, 23, 59, 58, 123456)


def test_silent_upstream_is_bounded_by_connect_timeout(idp, pki, mariadb):
    # an upstream that accepts and never speaks (a wedged server, a wrong port behind a
    # firewall that accepts): every step of the login waits connect_timeout at most
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    held = []
    stop = False

    def accept():
        silent.settimeout(0.2)
        while not stop:
            try:
                held.append(silent.accept()[0])
            except OSError:
                pass

    import threading
    t = threading.Thread(target=accept, daemon=True)
    t.start()
    cfg = mysql_gateway_config(mariadb, idp, pki, connect_timeout="1s",
                               upstream=f"127.0.0.1:{silent.getsockname()[1]}")
    try:
        with Gateway(cfg, env=mysql_gateway_env(mariadb)) as gw:
            gw.pki = pki
            t0 = time.monotonic()
            err = _refused(gw, idp.token())
            took = time.monotonic() - t0
            assert err.args == (1105, "the gateway could not connect to the upstream server")
            # the greeting's version probe (1 s) and the login (1 s), not the 15 s
            # handshake_timeout (the bound only tells them apart: 6 s left a loaded machine
            # 4 s for the rest)
            assert took < 12, took
            wait_until(lambda: "TimeoutError" in gw.log_text(), 10, "logged", gw)
            _no_traceback(gw)
    finally:
        stop = True
        t.join(2)
        for s in held:
            s.close()
        silent.close()


def test_empty_user_name_refused(plaingw):
    # (drivers fill in the OS user for an empty name: this one comes on the raw wire)
    with _raw(plaingw) as s:
        _read_packet(s)
        s.sendall(p.frame(p.HandshakeResponse41(p.CLIENT.PROTOCOL_41 | p.CLIENT.PLUGIN_AUTH
                                                | p.CLIENT.SECURE_CONNECTION, "").encode(), 1))
        seq, err = _read_packet(s)
    e = p.parse_err(err)
    assert (seq, e.errno, e.message) == (
        2, 1045, b"Access denied for user ''@'127.0.0.1' (using password: NO)")


def test_no_secret_in_the_log(mygw, idp, mariadb):
    token = idp.token(subject="secretive")
    pymysql_connect(mygw, token).close()
    _refused(mygw, token + "x")
    wait_until(lambda: "subject=secretive" in mygw.log_text(), 10, "logged", mygw)
    text = mygw.log_text()
    assert token not in text and mariadb.passwords["app"] not in text
    assert token.split(".")[2] not in text             # not even the signature


def test_greeting_shows_the_upstreams_version(mygw, idp, mariadb):
    # drivers pick features by the version string (MariaDB or MySQL): the gateway's greeting
    # carries the upstream's own
    (version,) = mariadb.sql("SELECT @@version")[0]
    conn = pymysql_connect(mygw, idp.token())
    try:
        assert conn.get_server_info().endswith(version)
    finally:
        conn.close()
