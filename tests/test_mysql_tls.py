"""TLS on both sides of a mysql connection: the client's (SSLRequest, the listener's certificate,
require_tls) and the upstream's (upstream_tls disable / require / verify-full against the test
PKI's CA), with the session's MariaDB whose `tlsapp` user the server itself refuses without TLS.
"""

from __future__ import annotations

import socket
import ssl

import pymysql
import pytest

from helpers import Gateway, wait_until
from hoopwire.mysql import packets as p
from mysqlfixtures import MY_DB
from mysqlgw import (mygw, mysql_cli, mysql_gateway_config,  # noqa: F401
                     mysql_gateway_env, pymysql_connect)


def _conn(mariadb, name: str, **kw) -> dict:
    c = {"name": name, "protocol": "mysql", "upstream": f"127.0.0.1:{mariadb.port}",
         "database": MY_DB, "user": "tlsapp", "password_env": "MY_TLSAPP_PASSWORD",
         "allow_groups": ["agents"]}
    c.update(kw)
    return c


@pytest.fixture(scope="module")
def tlsgw(mariadb, idp, pki):
    tls = {"tls_cert": pki.server_cert, "tls_key": pki.server_key}
    cfg = mysql_gateway_config(mariadb, idp, pki)
    cfg["connection"] = [
        _conn(mariadb, "vf", upstream_tls="verify-full", upstream_ca=pki.ca_pem, **tls),
        _conn(mariadb, "badca", upstream_tls="verify-full", upstream_ca=pki.other_ca_pem, **tls),
        _conn(mariadb, "req", upstream_tls="require", upstream_ca=pki.other_ca_pem, **tls),
        _conn(mariadb, "dis", upstream_tls="disable", **tls),
        # no certificate: the listener offers no TLS (the token then only from loopback)
        _conn(mariadb, "notls", user="app", password_env="MY_APP_PASSWORD",
              cleartext_without_tls="loopback"),
    ]
    with Gateway(cfg, env=mysql_gateway_env(mariadb)) as gw:
        gw.pki = pki
        yield gw


def _upstream_cipher(conn) -> str:
    cur = conn.cursor()
    cur.execute("SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS "
                "WHERE VARIABLE_NAME = 'Ssl_cipher'")
    (cipher,) = cur.fetchone()
    cur.close()
    return cipher


def test_client_tls_is_verified_by_the_ca(mygw, idp):
    conn = pymysql_connect(mygw, idp.token(), ssl={"ca": mygw.pki.ca_pem, "check_hostname": True,
                                                   "verify_mode": ssl.CERT_REQUIRED})
    try:
        sock = conn._sock
        assert isinstance(sock, ssl.SSLSocket)
        assert sock.version() in ("TLSv1.2", "TLSv1.3")
        # the upstream leg is the gateway's own (upstream_tls disable on loopback here)
        assert _upstream_cipher(conn) == ""
    finally:
        conn.close()


def test_client_refuses_a_gateway_it_cannot_verify(mygw, idp, pki):
    with pytest.raises(pymysql.err.OperationalError) as e:
        pymysql_connect(mygw, idp.token(), ssl={"ca": pki.other_ca_pem,
                                                "verify_mode": ssl.CERT_REQUIRED})
    assert "CERTIFICATE_VERIFY_FAILED" in str(e.value)


def test_upstream_verify_full(tlsgw, idp):
    # tlsapp is REQUIRE SSL on the server: only a TLS login gets in
    conn = pymysql_connect(tlsgw, idp.token(subject="vf-user"), name="vf")
    try:
        assert _upstream_cipher(conn) != ""
        cur = conn.cursor()
        cur.execute("SELECT CURRENT_USER()")
        assert cur.fetchone() == ("tlsapp@%",)
    finally:
        conn.close()
    wait_until(lambda: any("subject=vf-user" in ln and "upstream_tls=on" in ln
                           for ln in tlsgw.log_text().splitlines()), 10, "logged", tlsgw)


def test_upstream_certificate_from_another_ca_is_refused(tlsgw, idp):
    with pytest.raises(pymysql.err.MySQLError) as e:
        pymysql_connect(tlsgw, idp.token(), name="badca")
    assert e.value.args == (1105, "the gateway could not connect to the upstream server")
    wait_until(lambda: "TLS certificate rejected" in tlsgw.log_text(), 10, "logged", tlsgw)


def test_upstream_require_encrypts_without_verifying(tlsgw, idp):
    conn = pymysql_connect(tlsgw, idp.token(), name="req")
    try:
        assert _upstream_cipher(conn) != ""
    finally:
        conn.close()


def test_upstream_disable_meets_the_servers_own_require_ssl(tlsgw, idp):
    # the server refuses tlsapp in clear: an operator's problem, told to the client in general
    # words (the stored user's name is not the client's business) and to the log in full
    with pytest.raises(pymysql.err.MySQLError) as e:
        pymysql_connect(tlsgw, idp.token(), name="dis")
    assert e.value.args == (1105, "the gateway could not log in to the upstream server")
    wait_until(lambda: "Access denied for user 'tlsapp'" in tlsgw.log_text(), 10, "logged",
               tlsgw)


def test_listener_without_certificate_offers_no_tls(tlsgw, idp):
    with socket.create_connection(tlsgw.address("notls"), timeout=10) as s:
        head = s.recv(4)
        greeting = s.recv(int.from_bytes(head[:3], "little"))
        assert not p.HandshakeV10.decode(greeting).capabilities & p.CLIENT.SSL
        # an SSLRequest it did not offer is a broken client: refused, logged
        s.sendall(p.frame(p.ssl_request(p.CLIENT.PROTOCOL_41), 1))
        head = s.recv(4)
        e = p.parse_err(s.recv(int.from_bytes(head[:3], "little")))
        assert (head[3], e.errno) == (2, 1043)
        assert e.message == b"SSLRequest on a listener without TLS (it offered none)"
    # a client that insists on TLS hears it is not there
    with pytest.raises(pymysql.err.OperationalError):
        pymysql_connect(tlsgw, idp.token(), name="notls",
                        ssl={"ca": tlsgw.pki.ca_pem, "verify_mode": ssl.CERT_REQUIRED})
    # and plaintext from loopback is taken (cleartext_without_tls = "loopback")
    conn = pymysql_connect(tlsgw, idp.token(), name="notls", tls=False)
    conn.close()
    assert "Traceback" not in tlsgw.log_text()


def test_cli_verifies_the_gateway(mygw, idp):
    r = mysql_cli(mygw, idp.token(), "-e", "SHOW SESSION STATUS LIKE 'Ssl_version'")
    assert r.returncode == 0, r.stderr


def test_garbage_instead_of_a_tls_client_hello(mygw, idp):
    # an SSLRequest followed by bytes that are no TLS record: the TLS layer refuses them, the
    # gateway closes, and goes on serving
    with socket.create_connection(mygw.address("my"), timeout=10) as s:
        head = s.recv(4)
        s.recv(int.from_bytes(head[:3], "little"))
        s.sendall(p.frame(p.ssl_request(p.CLIENT.PROTOCOL_41), 1) + b"\x00" * 64)
        s.settimeout(10)
        try:
            assert s.recv(1024) == b""
        except ConnectionResetError:
            pass
    conn = pymysql_connect(mygw, idp.token())
    conn.close()
    assert "Traceback" not in mygw.log_text()
