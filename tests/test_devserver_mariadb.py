"""The MariaDB starter itself (hoopwire.devserver.MariaDbServer), which the `mariadb` fixture, the
benchmark and `hoopwire demo mysql` share: its TLS, its accounts, its admin path, its private
tmpdir and its cleanup."""

from __future__ import annotations

import os

import pymysql
import pytest

from hoopwire.devserver import MariaDbServer, MariaDbServerError
from mysqlfixtures import MY_DB, MY_ITEMS


def _login(mariadb, user: str, **kw):
    return pymysql.connect(host=mariadb.host, port=mariadb.port, user=user,
                           password=kw.pop("password", mariadb.passwords.get(user)),
                           database=MY_DB, connect_timeout=10, **kw)


def test_tmpdir_is_private_to_the_server(mariadb):
    # not the shared /tmp: a busy machine once made mariadb-install-db fail there
    (tmpdir,) = mariadb.sql("SELECT @@tmpdir")[0]
    assert tmpdir == mariadb.server.tmpdir
    assert os.path.dirname(tmpdir) == mariadb.server.workdir


def test_accounts_have_their_plugins_and_tls_requirement(mariadb):
    rows = dict((u, (plugin, ssl)) for u, plugin, ssl in mariadb.sql(
        "SELECT user, plugin, ssl_type FROM mysql.user WHERE host = '%'"))
    assert rows == {"app": ("mysql_native_password", ""),
                    "tlsapp": ("mysql_native_password", "ANY"),
                    "eduser": ("ed25519", "")}


def test_require_ssl_is_enforced_by_the_server(mariadb):
    # PyMySQL 1.2 turns TLS on by itself when the server offers it: plaintext must be asked for
    with pytest.raises(pymysql.err.OperationalError) as e:
        _login(mariadb, "tlsapp", ssl_disabled=True)
    assert e.value.args[0] == 1045
    with _login(mariadb, "app", ssl_disabled=True) as conn, conn.cursor() as cur:
        cur.execute("SHOW SESSION STATUS LIKE 'Ssl_version'")
        assert cur.fetchone()[1] == ""          # the same login without REQUIRE SSL gets in
    with _login(mariadb, "tlsapp", ssl={"ca": mariadb.ca}) as conn, conn.cursor() as cur:
        cur.execute("SHOW SESSION STATUS LIKE 'Ssl_version'")
        assert cur.fetchone()[1].startswith("TLS")
        cur.execute("SELECT id, name FROM items ORDER BY id")
        assert cur.fetchall() == tuple(MY_ITEMS)


def test_server_certificate_verifies_with_the_ca_only(mariadb, pki):
    with _login(mariadb, "app", ssl={"ca": mariadb.ca}) as conn:
        assert conn.get_server_info()
    with pytest.raises(pymysql.err.OperationalError):
        _login(mariadb, "app", ssl={"ca": pki.other_ca_pem})


def test_admin_is_reachable_only_over_the_socket(mariadb):
    # root authenticates by unix_socket: over TCP there is no password that works
    for password in ("", "root"):
        with pytest.raises(pymysql.err.OperationalError) as e:
            pymysql.connect(host=mariadb.host, port=mariadb.port, user="root",
                            password=password, connect_timeout=10)
        assert e.value.args[0] == 1045
    assert mariadb.server.sql("SELECT CURRENT_USER()").startswith(mariadb.server.admin_user + "@")


def test_failing_sql_raises_without_the_password(mariadb):
    secret = "never-in-an-error-1"
    with pytest.raises(MariaDbServerError) as e:
        # a syntax error: the server quotes the statement from there on, password included
        mariadb.server.create_user("nobody", secret, plugin="no such plugin")
    assert "syntax" in str(e.value) and "***" in str(e.value)
    assert secret not in str(e.value) and "nobody" not in mariadb.server.passwords


def test_stop_removes_everything_and_a_stopped_server_starts_again(pki):
    server = MariaDbServer(tls_cert=pki.server_cert, tls_key=pki.server_key, tls_ca=pki.ca_pem,
                           basedir="/tmp", options={"innodb_buffer_pool_size": "16M",
                                                    "max_connections": 42})
    try:
        for _ in range(2):
            server.start()
            workdir, pid = server.workdir, server.pid
            assert server.sql("SELECT @@max_connections, @@have_ssl") == "42\tYES"
            server.create_user("u", "pw-u")
            with pymysql.connect(host=server.host, port=server.port, user="u", password="pw-u",
                                 ssl={"ca": pki.ca_pem}, connect_timeout=10) as conn:
                assert conn.get_server_info()
            server.stop()
            server.stop()
            assert not os.path.exists(workdir)
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        server.stop()
