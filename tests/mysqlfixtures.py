"""The MariaDB server the MySQL tests use: the session fixture `mariadb`.

    def test_x(mariadb):
        mariadb.sql("SELECT 1")                       # as the admin over the unix socket -> rows
        pymysql.connect(host=mariadb.host, port=mariadb.port, user="app",
                        password=mariadb.passwords["app"], database="app",
                        ssl={"ca": mariadb.ca})

What it holds:

    root      the admin (unix_socket authentication): only over `mariadb.socket`, no password
    app       `app-secret`, mysql_native_password, all rights on database `app`
    tlsapp    same rights, REQUIRE SSL (a plaintext login is refused by the server itself)
    eduser    client_ed25519 (MariaDB's plugin), SELECT on `app`
    app.items(id int primary key, name varchar(64))            = MY_ITEMS
    app.customers(id, name, email, ssn)                        = MY_CUSTOMERS

The server is hoopwire.devserver's MariaDbServer (the one the benchmark and `hoopwire demo mysql`
start too) with TLS on from the test PKI's server certificate (`pki` in conftest.py):
`mariadb.ca` verifies it. Tests that change state should make their own objects rather than
modify these.
"""

from __future__ import annotations

import secrets
from typing import Any, Iterator

import pymysql
import pytest

from hoopwire.devserver import MariaDbServer
from hoopwire.devserver.mariadb import quote_string

__all__ = ["MariaDBFixture", "mariadb", "MY_DB", "MY_ITEMS", "MY_CUSTOMERS"]

MY_DB = "app"
MY_ITEMS = [(1, "apple"), (2, "banana"), (3, "cherry")]
MY_CUSTOMERS = [(1, "Ada Lovelace", "ada@example.com", "123-45-6789"),
                (2, "Alan Turing", "alan@example.org", "987-65-4321")]


class MariaDBFixture:
    """The running server as the tests see it: where it listens, the users' passwords, and
    PyMySQL access whose rows keep their types (the server's own `sql` returns the CLI's text)."""

    def __init__(self, server: MariaDbServer, ca: str | None):
        self.server = server
        self.ca = ca                        # the CA that verifies the server's certificate

    host = property(lambda self: self.server.host)
    port = property(lambda self: self.server.port)
    socket = property(lambda self: self.server.socket)
    passwords = property(lambda self: self.server.passwords)

    def log_tail(self, lines: int = 40) -> str:
        return self.server.log_tail(lines)

    def connect(self, user: str = "root", database: str | None = None, **kw: Any):
        """A PyMySQL connection straight to the server: "root" is the admin over the unix
        socket, anyone else goes over TCP with the password create_user set."""
        if user == "root":
            where: dict[str, Any] = {"unix_socket": self.server.socket,
                                     "user": self.server.admin_user}
        else:
            where = {"host": self.host, "port": self.port, "user": user,
                     "password": kw.pop("password", self.passwords.get(user))}
        return pymysql.connect(database=database, connect_timeout=10, read_timeout=60,
                               write_timeout=60, autocommit=True, **where, **kw)

    def sql(self, statement: str, database: str | None = None) -> list[tuple]:
        """Run one or more `;`-separated statements as the admin; the rows of the last result."""
        conn = self.connect("root", database,
                            client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS)
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
                rows = list(cur.fetchall() or ())
                while cur.nextset():
                    rows = list(cur.fetchall() or ())
                return rows
        finally:
            conn.close()

    def __repr__(self) -> str:
        return f"<MariaDBFixture {self.server!r}>"


def _values(rows: list[tuple]) -> str:
    return ", ".join("(" + ", ".join(str(v) if isinstance(v, int) else quote_string(v)
                                     for v in row) + ")" for row in rows)


def provision(server: MariaDbServer) -> None:
    """The fixture's database, users and tables."""
    server.create_database(MY_DB)
    server.create_user("app", "app-secret", grants=[f"ALL ON {MY_DB}.*"])
    server.create_user("tlsapp", secrets.token_urlsafe(18), grants=[f"ALL ON {MY_DB}.*"],
                       require_ssl=True)
    server.create_user("eduser", secrets.token_urlsafe(18), plugin="ed25519",
                       grants=[f"SELECT ON {MY_DB}.*"])
    server.sql(f"CREATE TABLE items (id int PRIMARY KEY, name varchar(64));\n"
               f"CREATE TABLE customers (id int PRIMARY KEY, name varchar(64), "
               f"email varchar(128), ssn char(11));\n"
               f"INSERT INTO items VALUES {_values(MY_ITEMS)};\n"
               f"INSERT INTO customers VALUES {_values(MY_CUSTOMERS)};\n", MY_DB)


@pytest.fixture(scope="session")
def mariadb(pki) -> Iterator[MariaDBFixture]:
    # 32M of buffer pool (the default is 128M): the tables here are a few rows, and the
    # machine's memory is shared with the PostgreSQL cluster and the gateways under test
    with MariaDbServer(tls_cert=pki.server_cert, tls_key=pki.server_key, tls_ca=pki.ca_pem,
                       basedir="/tmp", options={"innodb_buffer_pool_size": "32M",
                                                "innodb_log_file_size": "16M"}) as server:
        provision(server)
        yield MariaDBFixture(server, pki.ca_pem)
