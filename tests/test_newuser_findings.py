"""What a newcomer met following README.md alone (issues 17, 20, 21: "tested also as a new user
would"), one test per finding that was fixed in the command line: the admin CLI writing what a
client wrote raw to the approver's terminal, a 401 with no hint, a traceback when output is piped
into `head`, a development key that does not say which issuer accepts its tokens, and an unknown
key that belongs to another table.

Real gateway, real PostgreSQL, the real `hoopwire` command in a subprocess (run from this tree).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import tomllib
import uuid

import jwt
import psycopg
import pytest

from gwfixtures import ADMIN_AUDIENCE, AUDIENCE, conninfo, gateway_config, gateway_env
from helpers import APP_DB, REPO_ROOT, Gateway, api, wait_pending
from hoopwire.config import ConfigError, parse_config


def hoopwire(*args: str, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    """The `hoopwire` command of this tree (cwd: python imports the tree it runs in)."""
    return subprocess.run([sys.executable, "-m", "hoopwire", *args], cwd=REPO_ROOT,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=60, **kw)


def test_a_key_in_the_wrong_table_names_the_table_it_belongs_to(monkeypatch):
    # record_results is a [[connection]] key; a newcomer put it under [audit], which is about
    # recording too. "unknown key" alone sent them looking for a typo that was not there.
    monkeypatch.setenv("ORDERS_PW", "x")
    doc = {"audit": {"record_results": True},
           "log": {"levell": "info"},
           "connection": [{"name": "orders", "protocol": "postgres", "listen": "127.0.0.1:6432",
                           "upstream": "db.internal:5432", "database": "orders",
                           "user": "app_ro", "password_env": "ORDERS_PW"}]}
    with pytest.raises(ConfigError) as e:
        parse_config(doc)
    problems = dict(e.value.problems)
    assert problems["audit.record_results"] == "unknown key (it is a key of [[connection]])"
    assert problems["log.levell"] == 'unknown key (did you mean "level"?)'   # a typo stays one


def test_output_into_a_closed_pipe_is_no_traceback():
    # `hoopwire sessions replay ID | head` printed a BrokenPipeError traceback once head left.
    # The reading end is closed before the command writes, so the first write meets EPIPE
    # whatever the machine's speed.
    r, w = os.pipe()
    os.close(r)
    try:
        p = subprocess.run([sys.executable, "-m", "hoopwire", "config-schema"], cwd=REPO_ROOT,
                           stdout=w, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(w)
    assert p.returncode == 141, p.stderr
    assert "Traceback" not in p.stderr and "BrokenPipeError" not in p.stderr, p.stderr


def test_a_new_dev_key_says_which_issuer_accepts_its_tokens(tmp_path):
    # The README's `hoopwire token --create-key` wrote a key and a JWKS, but the iss and aud the
    # gateway must be told were only to be found by decoding a token.
    key = str(tmp_path / "dev.pem")
    made = hoopwire("token", "--key", key, "--create-key")
    assert made.returncode == 0, made.stderr
    block = made.stderr[made.stderr.index("[[identity.issuer]]"):]
    block = block[:block.index("(admin API tokens")]
    issuer = tomllib.loads(block)["identity"]["issuer"][0]
    assert issuer["jwks_uri"] == "file://" + key + ".jwks.json"
    assert os.path.exists(key + ".jwks.json")
    minted = hoopwire("token", "--key", key, "--subject", "agent-7")
    claims = jwt.decode(minted.stdout.strip(), options={"verify_signature": False})
    assert (claims["iss"], claims["aud"]) == (issuer["issuer"], issuer["audience"])
    assert jwt.get_unverified_header(minted.stdout.strip())["alg"] in issuer["algorithms"]


@pytest.fixture
def held_gw(pg, idp, tmp_path):
    cfg = gateway_config(pg, idp, guardrail=[{
        "name": "deletes-need-a-human", "patterns": [r"\bdelete\b"], "action": "approve",
        "approvers": ["dba"], "timeout": "10m"}], allow_groups=["agents"])
    cfg["state"] = {"url": f"sqlite:///{tmp_path}/state.db", "poll_interval": "100ms"}
    with Gateway(cfg, env=gateway_env(pg)) as g:
        yield g


def test_the_admin_cli_escapes_what_a_client_wrote(held_gw, pg, idp):
    # A quoted identifier is kept in the stored statement (only literals are masked): raw, its
    # ESC [2K CR erased the approver's terminal line and wrote "SELECT 1 -- harmless" over the
    # DELETE in `approvals list`. An HTTP request's head ("...\nhost: ...\n") likewise broke one
    # row of the list over three lines.
    table = "nu_" + uuid.uuid4().hex[:8]
    pg.sql(f"CREATE TABLE {table} (id int primary key); INSERT INTO {table} VALUES (1);"
           f"ALTER TABLE {table} OWNER TO app;", dbname=APP_DB)
    agent = idp.token("agent-7", ["agents"], audience=AUDIENCE)
    dana = idp.token("dana", ["dba"], audience=ADMIN_AUDIENCE)
    sql = f'DELETE FROM {table} WHERE id = 1 OR "\x1b[2K\rSELECT 1 -- harmless" IS NULL'
    outcome: dict = {}

    def run():
        try:
            with psycopg.connect(conninfo(held_gw, agent), autocommit=True) as c:
                c.execute(sql)
        except psycopg.Error as e:
            outcome["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    req = None
    try:
        req = wait_pending(held_gw, dana, statement_part=table)
        assert "\x1b" in req["statement"]          # the API keeps what the client sent
        env = {"HOOPWIRE_ADMIN_URL": held_gw.admin_url, "HOOPWIRE_TOKEN": dana}
        listed = hoopwire("approvals", "list", "--status", "pending", env=env)
        shown = hoopwire("approvals", "show", req["id"], env=env)
        for out in (listed, shown):
            assert out.returncode == 0, out.stderr
            assert not any(c in out.stdout for c in "\x1b\r"), repr(out.stdout)
            assert "\\x1b[2K\\r" in out.stdout
        row = [ln for ln in listed.stdout.splitlines() if req["id"] in ln]
        assert len(row) == 1 and "DELETE FROM" in row[0]

        # a database token (aud "hoopwire") on the admin API: 401, and now what to do about it
        wrong = hoopwire("approvals", "list", env={**env, "HOOPWIRE_TOKEN": agent})
        assert wrong.returncode == 1
        assert "401" in wrong.stderr and '"hoopwire-admin"' in wrong.stderr, wrong.stderr
    finally:
        if req is not None:
            api(held_gw, "POST", f"/api/v1/approvals/{req['id']}/deny", dana, {})
        t.join(60)
        pg.sql(f"DROP TABLE IF EXISTS {table}", dbname=APP_DB)
    assert not t.is_alive()
    assert outcome["error"].sqlstate == "42501"


def test_check_config_connect_passes_a_reachable_http_upstream(tmp_path):
    # `check-config --connect` reported "no posture check for protocol http yet" as a check that
    # could not run: any config with an HTTP connection exited 2, so the README's CI / init
    # container gate could never pass it. Now it checks what it can: the upstream connects.
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from helpers import free_port, to_toml

    seen: list[str] = []

    class Api(BaseHTTPRequestHandler):
        def do_GET(self):   # never called: the check sends nothing
            seen.append(self.path)
            self.send_error(500)

        def log_message(self, *args):
            pass

    api_server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    upstream_port = api_server.server_address[1]
    served = threading.Thread(target=api_server.serve_forever, daemon=True)
    served.start()
    cfg = tmp_path / "hoopwire.toml"
    cfg.write_text(to_toml({
        "identity": {"api_key": [{"name": "etl", "sha256": "ab" * 32, "groups": ["etl"]}]},
        "connection": [{"name": "users-api", "protocol": "http",
                        "listen": f"127.0.0.1:{free_port()}",
                        "upstream": f"http://127.0.0.1:{upstream_port}",
                        "password_env": "USERS_API_KEY"}]}))
    env = {"USERS_API_KEY": "k"}
    try:
        ok = hoopwire("check-config", "--connect", str(cfg), env=env)
    finally:
        api_server.shutdown()
        api_server.server_close()
        served.join(30)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"upstream users-api (http://127.0.0.1:{upstream_port}, tls off): ok" in ok.stdout
    assert seen == []
    # the same upstream gone: a check that could not run. The port stays bound, not listening
    # (connections to it are refused), so no other process on the machine can take it meanwhile.
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("127.0.0.1", upstream_port))
    try:
        gone = hoopwire("check-config", "--connect", str(cfg), env=env)
    finally:
        blocker.close()
    assert gone.returncode == 2, gone.stdout + gone.stderr
    assert "cannot connect" in gone.stdout
