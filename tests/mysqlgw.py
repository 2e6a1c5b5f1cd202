"""A gateway in front of the session's MariaDB (`mariadb`, tests/mysqlfixtures.py), and how each
MySQL client logs in through it with a token.

    def test_x(mygw, idp, mariadb):
        conn = pymysql_connect(mygw, idp.token())            # TLS, the token as the password
        mysql_cli(mygw, idp.token(), "-e", "SELECT 1")       # the `mariadb` command-line client

The connection is named "my": TLS on the client side (the `pki` server certificate, so
require_tls is on by default), upstream MariaDB on loopback (upstream_tls "disable" unless a
test asks), stored credentials app/app-secret, database `app`. The token goes as the password
with mysql_clear_password (the gateway asks for it with an auth switch); each driver needs:

    PyMySQL / aiomysql        nothing (they answer a mysql_clear_password switch as is)
    mysqlclient (libmariadb)  nothing (built on Oracle's libmysqlclient instead, it needs
                              LIBMYSQL_ENABLE_CLEARTEXT_PLUGIN=1 in the environment: not
                              the build tested here)
    mysql-connector           auth_plugin="mysql_clear_password" (C and pure-Python alike)
    mariadb CLI               nothing (--enable-cleartext-plugin is accepted, obsolete)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from typing import Iterator

import pytest

from helpers import Gateway
from mysqlfixtures import MY_DB

__all__ = ["mygw", "LockWaiter", "hold_lock", "mysql_gateway_config", "mysql_gateway_env", "pymysql_connect",
           "mysqlclient_connect", "connector_connect", "aiomysql_connect", "mysql_cli",
           "MY_CONN"]

MY_CONN = "my"


def mysql_gateway_config(mariadb, idp, pki=None, *, identity: dict | None = None,
                         **connection) -> dict:
    """A one-connection config in front of `mariadb` (name "my"); keyword arguments override
    keys of the [[connection]] table (None removes one)."""
    conn = {"name": MY_CONN, "protocol": "mysql", "upstream": f"127.0.0.1:{mariadb.port}",
            "database": MY_DB, "user": "app", "password_env": "MY_APP_PASSWORD",
            "allow_groups": ["agents", "ci", "analysts"]}
    if pki is not None:
        conn.update(tls_cert=pki.server_cert, tls_key=pki.server_key)
    conn.update(connection)
    conn = {k: v for k, v in conn.items() if v is not None}
    return {"identity": identity or {"issuer": [idp.issuer_config()],
                                     "api_key": idp.api_key_config()},
            "connection": [conn]}


def mysql_gateway_env(mariadb) -> dict[str, str]:
    return {"MY_APP_PASSWORD": mariadb.passwords["app"],
            "MY_TLSAPP_PASSWORD": mariadb.passwords["tlsapp"],
            "MY_EDUSER_PASSWORD": mariadb.passwords["eduser"]}


@pytest.fixture(scope="module")
def mygw(mariadb, idp, pki) -> Iterator[Gateway]:
    """A gateway with the plain mysql config (TLS on, required), shared by a module's tests."""
    with Gateway(mysql_gateway_config(mariadb, idp, pki), env=mysql_gateway_env(mariadb)) as g:
        g.pki = pki
        yield g


def _ssl_ca(gw) -> str:
    return gw.pki.ca_pem


def pymysql_connect(gw, token: str, *, user: str = "agent", database: str | None = MY_DB,
                    tls: bool = True, name: str = MY_CONN, **kw):
    import pymysql
    host, port = gw.address(name)
    if tls:
        kw.setdefault("ssl", {"ca": _ssl_ca(gw)})
    else:
        kw.setdefault("ssl_disabled", True)     # PyMySQL 1.2 tries TLS unless told not to
    return pymysql.connect(host=host, port=port, user=user, password=token, database=database,
                           connect_timeout=10, read_timeout=30, write_timeout=30, **kw)


def mysqlclient_connect(gw, token: str, *, user: str = "agent", database: str | None = MY_DB,
                        tls: bool = True, name: str = MY_CONN, **kw):
    import MySQLdb
    host, port = gw.address(name)
    if tls:
        kw.setdefault("ssl", {"ca": _ssl_ca(gw)})
    else:
        kw.setdefault("ssl_mode", "DISABLED")
    return MySQLdb.connect(host=host, port=port, user=user, password=token,
                           database=database or "", connect_timeout=10, **kw)


def connector_connect(gw, token: str, *, user: str = "agent", database: str | None = MY_DB,
                      tls: bool = True, pure: bool = True, name: str = MY_CONN, **kw):
    import mysql.connector
    host, port = gw.address(name)
    if tls:
        kw.setdefault("ssl_ca", _ssl_ca(gw))
        kw.setdefault("ssl_verify_cert", True)
    else:
        kw.setdefault("ssl_disabled", True)
    if database:
        kw["database"] = database
    return mysql.connector.connect(host=host, port=port, user=user, password=token,
                                   auth_plugin="mysql_clear_password", use_pure=pure,
                                   connection_timeout=10, **kw)


async def aiomysql_connect(gw, token: str, *, user: str = "agent",
                           database: str | None = MY_DB, tls: bool = True,
                           name: str = MY_CONN, **kw):
    import ssl

    import aiomysql
    host, port = gw.address(name)
    if tls:
        kw.setdefault("ssl", ssl.create_default_context(cafile=_ssl_ca(gw)))
    return await aiomysql.connect(host=host, port=port, user=user, password=token,
                                  db=database, connect_timeout=10, **kw)


def mysql_cli(gw, token: str, *args: str, user: str = "agent", database: str | None = MY_DB,
              tls: bool = True, name: str = MY_CONN, timeout: float = 30.0,
              input: str | None = None) -> subprocess.CompletedProcess:
    """Run the `mariadb` command-line client against the gateway; the token goes through the
    environment's MYSQL_PWD, never the command line (ps shows that to everyone)."""
    host, port = gw.address(name)
    cli = shutil.which("mariadb") or shutil.which("mysql")
    cmd = [cli, "--no-defaults", f"--host={host}", f"--port={port}", f"--user={user}",
           "--protocol=TCP", "--connect-timeout=10", "--batch", "--skip-column-names"]
    if tls:
        cmd += [f"--ssl-ca={_ssl_ca(gw)}", "--ssl-verify-server-cert"]
    else:
        cmd += ["--skip-ssl"]
    if database:
        cmd.append(f"--database={database}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYSQL")}
    env["MYSQL_PWD"] = token
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout,
                          env=env, input=input)


class LockWaiter(threading.Thread):
    """SELECT GET_LOCK(lock, 60) on `conn`, a lock the test holds (hold_lock): the statement
    runs until the test releases it, however slow the machine. (SLEEP(3) and SLEEP(6) here
    ended by themselves when the KILLs and checks took longer, and then the check that the
    statement still ran failed.) It answers 1 once it has the lock; a KILL QUERY would end it
    with NULL or ERR 1317."""

    def __init__(self, conn, lock: str):
        super().__init__(daemon=True)
        self.conn, self.lock = conn, lock
        self.rows = self.err = None

    def run(self):
        import pymysql
        try:
            cur = self.conn.cursor()
            cur.execute(f"SELECT GET_LOCK('{self.lock}', 60)")
            self.rows = cur.fetchall()
        except pymysql.err.MySQLError as e:
            self.err = e.args[0]


def hold_lock(mariadb, lock: str):
    """A connection straight to the server holding the user lock `lock` (close it or
    RELEASE_LOCK to let a LockWaiter go on)."""
    conn = mariadb.connect("root")
    cur = conn.cursor()
    cur.execute(f"SELECT GET_LOCK('{lock}', 0)")
    assert cur.fetchall() == ((1,),)
    return conn
