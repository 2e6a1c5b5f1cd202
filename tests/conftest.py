"""Shared fixtures: a test PKI and one real PostgreSQL cluster per test session.

`pg` is a hoopwire.devserver.PgServer with TLS (the `pki` server cert) and these roles, passwords
in `pg.passwords[name]`:

    app       SCRAM-SHA-256, owns database `appdb` and its table items(id, name)
    md5user   md5 verifier, pg_hba asks for md5
    passuser  pg_hba asks for the cleartext password
    postgres  superuser (also reachable without a password over the cluster's unix socket)

Tests that change state should make their own objects (or their own PgServer) rather than
modify these.
"""

from __future__ import annotations

# mysql-connector's C extension first, before the suite's other imports: loaded late (after
# psycopg's, cryptography's and our own extensions), dlopen fails with "libstdc++.so.6: cannot
# allocate memory in static TLS block" -- glibc's static TLS surplus is gone by then -- and the
# driver silently has no C implementation, which the tests must drive.
import mysql.connector  # noqa: F401,E402  (must stay first)

import os
import secrets
from dataclasses import dataclass
from typing import Iterator

import pytest
import trustme

from helpers import APP_DB, ITEMS
from hoopwire.devserver import PgServer


def pytest_configure(config: pytest.Config) -> None:
    # An exception in a thread (an assert in a helper thread, a crashed pump) or one Python could
    # only report as "unraisable" (in __del__, a callback) is otherwise a warning at most: the
    # test that caused it would still pass. Errors, so such a test fails.
    config.addinivalue_line("filterwarnings", "error::pytest.PytestUnhandledThreadExceptionWarning")
    config.addinivalue_line("filterwarnings", "error::pytest.PytestUnraisableExceptionWarning")


@dataclass(frozen=True)
class PKI:
    dir: str
    ca_pem: str            # the CA that signed server.pem
    server_cert: str       # leaf + chain, for "localhost" and 127.0.0.1
    server_key: str
    other_ca_pem: str      # an unrelated CA: verification against it must fail
    ca: trustme.CA         # to issue more certificates (client certs, other hosts)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    for i, blob in enumerate(server.cert_chain_pems):
        blob.write_to_path(str(d / "server.pem"), append=i > 0)
    server.private_key_pem.write_to_path(str(d / "server.key"))
    os.chmod(d / "server.key", 0o600)
    trustme.CA().cert_pem.write_to_path(str(d / "other-ca.pem"))
    return PKI(dir=str(d), ca_pem=str(d / "ca.pem"), server_cert=str(d / "server.pem"),
               server_key=str(d / "server.key"), other_ca_pem=str(d / "other-ca.pem"), ca=ca)


@pytest.fixture(scope="session")
def pg(pki: PKI) -> Iterator[PgServer]:
    with PgServer(tls_cert=pki.server_cert, tls_key=pki.server_key, hba="scram-sha-256") as server:
        server.create_role("app", secrets.token_urlsafe(18))
        server.create_role("md5user", secrets.token_urlsafe(18), method="md5")
        server.create_role("passuser", secrets.token_urlsafe(18), method="password")
        server.create_database(APP_DB, owner="app")
        rows = ", ".join(f"({i}, '{name}')" for i, name in ITEMS)
        server.sql(
            # made as `app`, so app owns the table like an application's own schema
            "SET ROLE app;\n"
            "CREATE TABLE items (id int PRIMARY KEY, name text);\n"
            f"INSERT INTO items VALUES {rows};\n"
            "GRANT SELECT ON items TO md5user, passuser;\n",
            dbname=APP_DB)
        yield server


# Gateway fixtures (identity provider, a gateway in front of `pg`) live in gwfixtures.py.
from gwfixtures import gw, idp  # noqa: E402,F401

# The MariaDB server the MySQL tests use (a session fixture, started on first use).
from mysqlfixtures import mariadb  # noqa: E402,F401
