"""A full PostgreSQL or MySQL listener, as the real command-line clients see it when they ask
for TLS: psql (sslmode=require) reads 53300 after the TLS handshake, as from the server; the
mariadb client and PyMySQL (TLS asked for) read ERR 1040 in place of the greeting, before any
TLS (libmariadb, verifying the server, words it "error 2002 ... cannot be verified: 1040 -
Too many connections", as it does for the server's own). And a run of such refusals is
logged as its first line and then a summary, as on http."""

from __future__ import annotations

import re

import psycopg
import pymysql
import pytest

from gwfixtures import conninfo, gateway_config, gateway_env
from helpers import APP_DB, Gateway, psql, wait_until
from mysqlgw import mysql_cli, mysql_gateway_config, mysql_gateway_env, pymysql_connect

pytestmark = pytest.mark.timeout(120)

FULL = r"connection refused .*reason=too_many_connections"
SUMMARY = r"connections refused since the last line .*refused=(\d+)"


def _summarised(g, at_least: int) -> None:
    """Every refusal is in the log: one in full (two if the readiness probe's slot made one
    earlier, in a window of its own) and the rest counted by a summary line (10 s windows)."""
    g.wait_log(SUMMARY, timeout=15)
    log = g.log_text()
    full = re.findall(FULL, log)
    counted = sum(int(n) for n in re.findall(SUMMARY, log))
    assert 1 <= len(full) <= 2, full
    assert len(full) + counted >= at_least, (full, counted)
    assert counted >= at_least - 2, counted


def test_psql_with_tls_reads_53300_from_a_full_listener(pg, idp, pki):
    cfg = gateway_config(pg, idp, max_connections=1, tls_cert=pki.server_cert,
                         tls_key=pki.server_key, require_tls=False)
    with Gateway(cfg, env=gateway_env(pg)) as g:
        token = idp.token()

        def first_in():
            try:
                return psycopg.connect(conninfo(g, token))
            except psycopg.OperationalError as e:
                if "too many clients" not in str(e):
                    raise
                return None      # the readiness probe's slot, for a moment
        held = wait_until(first_in, 10, "a first login", gw=g)
        try:
            out = psql(f"host=127.0.0.1 port={g.port('pg')} user=agent-7 dbname={APP_DB} "
                       f"sslmode=require connect_timeout=10", "-c", "SELECT 1",
                       password=token, timeout=30)
            assert out.returncode != 0
            assert "FATAL:  sorry, too many clients already" in out.stderr, out.stderr
            assert "SSL" not in out.stderr, out.stderr
            for _ in range(10):
                with pytest.raises(psycopg.OperationalError, match="too many clients"):
                    psycopg.connect(conninfo(g, token, sslmode="require")).close()
            _summarised(g, 11)
        finally:
            held.close()


def test_mysql_clients_with_tls_read_1040_from_a_full_listener(mariadb, idp, pki):
    cfg = mysql_gateway_config(mariadb, idp, pki, max_connections=1)
    with Gateway(cfg, env=mysql_gateway_env(mariadb)) as g:
        g.pki = pki
        token = idp.token()

        def first_in():
            try:
                return pymysql_connect(g, token)
            except pymysql.err.OperationalError as e:
                if e.args[0] != 1040:
                    raise
                return None
        held = wait_until(first_in, 10, "a first login", gw=g)
        try:
            out = mysql_cli(g, token, "-e", "SELECT 1")           # TLS, server cert verified
            assert out.returncode != 0
            # libmariadb, asked to verify the server, reads an ERR before TLS as it reads the
            # server's own 1040 (sent in place of the greeting too): error 2002 naming 1040
            assert "1040 - Too many connections" in out.stderr or \
                "ERROR 1040" in out.stderr, out.stderr
            for _ in range(10):
                with pytest.raises(pymysql.err.OperationalError) as ei:
                    pymysql_connect(g, token).close()             # ssl= given: TLS asked for
                assert ei.value.args == (1040, "Too many connections")
            _summarised(g, 11)
        finally:
            held.close()
