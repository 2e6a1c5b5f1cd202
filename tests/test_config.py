"""The configuration contract: every error named by key and reason, secrets never shown."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import REPO_ROOT, to_toml
from hoopwire.config import ConfigError, parse_config, parse_duration, parse_size

GOOD = {
    "identity": {"api_key": [{"name": "etl", "sha256": "ab" * 32, "groups": ["etl"]}]},
    "connection": [{"name": "orders", "protocol": "postgres", "listen": "127.0.0.1:6432",
                    "upstream": "db.internal:5432", "database": "orders", "user": "app_ro",
                    "password_env": "ORDERS_PW"}],
}


def problems(doc, monkeypatch=None) -> dict[str, str]:
    with pytest.raises(ConfigError) as e:
        parse_config(doc)
    return dict(e.value.problems)


def test_a_good_config(monkeypatch):
    monkeypatch.setenv("ORDERS_PW", "s3cret-value")
    cfg = parse_config(GOOD)
    c = cfg.connections[0]
    assert c.upstream == ("db.internal", 5432)
    assert c.password.get() == "s3cret-value"
    assert "s3cret-value" not in repr(cfg)  # secrets never print


def test_unknown_keys_are_errors(monkeypatch):
    monkeypatch.setenv("ORDERS_PW", "x")
    doc = {**GOOD, "connection": [{**GOOD["connection"][0], "upstrem_tls": "require"}], "extra": 1}
    p = problems(doc)
    assert p["connection[0].upstrem_tls"] == 'unknown key (did you mean "upstream_tls"?)'
    assert p["extra"] == "unknown key"


def test_every_problem_is_reported_at_once(monkeypatch):
    monkeypatch.delenv("ORDERS_PW", raising=False)
    doc = {"identity": {"issuer": [{"issuer": "x", "audience": "a", "algorithms": ["none"],
                                    "jwks_uri": "ftp://nope"}]},
           "connection": [{"name": "a b", "listen": "nope", "upstream": "h:99999", "user": "u",
                           "password": "inline", "upstream_tls": "maybe", "database": "d"}]}
    p = problems(doc)
    assert "never accepted" in p["identity.issuer[0].algorithms"]
    assert "jwks_uri" in "".join(p)
    assert "connection[0].name" in p
    assert "connection[0].listen" in p
    assert "bad port" in p["connection[0].upstream"]
    assert "never written in the config" in p["connection[0].password"]
    assert "must be one of" in p["connection[0].upstream_tls"]


def test_missing_secret_env_is_named(monkeypatch):
    monkeypatch.delenv("ORDERS_PW", raising=False)
    assert problems(GOOD)["connection[0].password_env"] == "environment variable ORDERS_PW is not set"


def test_hs_algorithms_need_a_shared_secret(monkeypatch):
    monkeypatch.setenv("ORDERS_PW", "x")
    doc = {**GOOD, "identity": {"issuer": [{"issuer": "i", "audience": "a", "algorithms": ["HS256"]}]}}
    assert "shared_secret" in problems(doc)["identity.issuer[0].algorithms"]


def test_roles_and_limits(monkeypatch, tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("from-a-file\n")
    monkeypatch.setenv("ORDERS_PW", "x")
    conn = {**GOOD["connection"][0], "max_message_size": "1MiB", "idle_timeout": "15m",
            "handshake_timeout": 5,
            "role": [{"name": "reporting", "user": "app_rep", "password_file": str(secret),
                      "allow_groups": ["analysts"]}]}
    c = parse_config({**GOOD, "connection": [conn]}).connections[0]
    assert c.max_message_size == 1 << 20 and c.idle_timeout == 900 and c.handshake_timeout == 5
    assert c.roles[0].password.get() == "from-a-file"


def test_scalar_parsers():
    assert parse_duration("30s") == 30 and parse_duration("2h") == 7200 and parse_duration(5) == 5
    assert parse_size("64KiB") == 65536 and parse_size(10) == 10
    with pytest.raises(ValueError):
        parse_duration("soon")
    with pytest.raises(ValueError):
        parse_size("-1")


def _cli(*args, env=None):
    import os
    e = dict(os.environ, PYTHONPATH=REPO_ROOT, **(env or {}))
    return subprocess.run([sys.executable, "-m", "hoopwire", *args], capture_output=True,
                          text=True, env=e, timeout=60)


def test_check_config_cli(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text(to_toml(GOOD))
    r = _cli("check-config", str(good), env={"ORDERS_PW": "pw"})
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(to_toml({**GOOD, "conection": []}))
    r = _cli("check-config", str(bad), env={"ORDERS_PW": "pw"})
    assert r.returncode == 1
    assert "conection: unknown key" in r.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("[[connection]\nname=")
    r = _cli("check-config", str(broken))
    assert r.returncode == 1 and "not valid TOML" in r.stderr


def test_version_and_token_cli(tmp_path):
    r = _cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("hoopwire ")
    key = tmp_path / "dev.pem"
    r = _cli("token", "--key", str(key), "--create-key", "--subject", "agent-7", "--groups", "a,b")
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert token.count(".") == 2
    assert (tmp_path / "dev.pem.jwks.json").exists()
    import jwt
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["sub"] == "agent-7" and claims["groups"] == ["a", "b"]


def test_a_poll_interval_of_zero_is_refused(monkeypatch):
    """0 would spin the approval poller without a pause."""
    monkeypatch.setenv("ORDERS_PW", "x")
    p = problems({**GOOD, "state": {"url": "sqlite:////tmp/x.db", "poll_interval": 0}})
    assert "at least 10ms" in p["state.poll_interval"]
    monkeypatch.setenv("ORDERS_PW", "x")
    assert parse_config({**GOOD, "state": {"poll_interval": "1h"}}).state.poll_interval == 3600.0


# -- secure defaults (see the README's "Upgrade notes") -------------------------------------------

def _conn(cfg):
    return cfg.connections[0]


def _with(**conn) -> dict:
    return {**GOOD, "connection": [{**GOOD["connection"][0], **conn}]}


def test_a_listener_with_a_certificate_requires_tls_unless_told_otherwise(monkeypatch, tmp_path):
    monkeypatch.setenv("ORDERS_PW", "x")
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("-")
    key.write_text("-")
    tls = {"tls_cert": str(cert), "tls_key": str(key)}
    assert _conn(parse_config(_with(**tls))).require_tls is True
    assert _conn(parse_config(_with(**tls, require_tls=False))).require_tls is False
    assert _conn(parse_config(GOOD)).require_tls is False          # no certificate: no TLS
    assert "needs tls_cert" in problems(_with(require_tls=True))["connection[0].require_tls"]


LOOPBACK = ["127.0.0.1", "127.8.9.10", "localhost", "[::1]"]
REMOTE = ["db.internal", "10.0.0.5", "192.168.1.20", "[2001:db8::5]", "localhost.example.com",
          "128.0.0.1"]


@pytest.mark.parametrize("host", LOOPBACK + REMOTE)
def test_upstream_tls_defaults_to_verify_full_off_loopback(monkeypatch, host):
    monkeypatch.setenv("ORDERS_PW", "x")
    cfg = parse_config(_with(upstream=f"{host}:5432"))
    assert _conn(cfg).upstream_tls == ("disable" if host in LOOPBACK else "verify-full")
    assert cfg.warnings == ()
    # an explicit choice is kept; "disable" across a network is kept too, but said out loud
    cfg = parse_config(_with(upstream=f"{host}:5432", upstream_tls="disable"))
    assert _conn(cfg).upstream_tls == "disable"
    if host in LOOPBACK:
        assert cfg.warnings == ()
    else:
        assert [k for k, _ in cfg.warnings] == ["connection[0].upstream_tls"]
        assert "clear text" in cfg.warnings[0][1]
    cfg = parse_config(_with(upstream=f"{host}:5432", upstream_tls="require"))
    assert _conn(cfg).upstream_tls == "require" and cfg.warnings == ()


def test_the_audit_log_is_on_by_default_next_to_the_state_file(monkeypatch, tmp_path):
    from hoopwire.config import load_config
    monkeypatch.setenv("ORDERS_PW", "x")
    path = tmp_path / "etc" / "hoopwire.toml"
    path.parent.mkdir()
    path.write_text(to_toml(GOOD))
    cfg = load_config(str(path))
    assert cfg.audit is not None and cfg.audit.path == str(tmp_path / "etc" / "hoopwire-audit")
    assert cfg.state.url == f"sqlite:///{tmp_path}/etc/hoopwire-state.db"
    assert cfg.audit.on_write_failure == "fail-closed"
    # a state file elsewhere (a data directory) takes the log with it
    path.write_text(to_toml({**GOOD, "state": {"url": f"sqlite:///{tmp_path}/data/state.db"}}))
    assert load_config(str(path)).audit.path == str(tmp_path / "data" / "hoopwire-audit")
    # a PostgreSQL store has no directory: next to the config then
    path.write_text(to_toml({**GOOD, "state": {"url": "postgresql://hw@db:5432/hw"}}))
    assert load_config(str(path)).audit.path == str(tmp_path / "etc" / "hoopwire-audit")
    # the other [audit] keys apply to the default directory
    path.write_text(to_toml({**GOOD, "audit": {"retention_days": 30}}))
    cfg = load_config(str(path))
    assert cfg.audit.path == str(tmp_path / "etc" / "hoopwire-audit")
    assert cfg.audit.retention_days == 30
    # the container's (and the systemd unit's) data directory, when the config names no path
    monkeypatch.setenv("HOOPWIRE_DATA_DIR", str(tmp_path / "var"))
    path.write_text(to_toml(GOOD))
    cfg = load_config(str(path))
    assert cfg.state.url == f"sqlite:///{tmp_path}/var/hoopwire-state.db"
    assert cfg.audit.path == str(tmp_path / "var" / "hoopwire-audit")
    path.write_text(to_toml({**GOOD, "state": {"url": "postgresql://hw@db:5432/hw"}}))
    assert load_config(str(path)).audit.path == str(tmp_path / "var" / "hoopwire-audit")
    monkeypatch.delenv("HOOPWIRE_DATA_DIR")
    # explicit off: no log, and no state store it would have needed
    path.write_text(to_toml({**GOOD, "audit": {"enabled": False}}))
    cfg = load_config(str(path))
    assert cfg.audit is None and cfg.state is None
    assert "expected true or false" in \
        problems({**GOOD, "audit": {"enabled": "no"}})["audit.enabled"]


def test_check_config_prints_warnings_and_still_passes(tmp_path):
    path = tmp_path / "clear.toml"
    path.write_text(to_toml(_with(upstream="db.internal:5432", upstream_tls="disable")))
    r = _cli("check-config", str(path), env={"ORDERS_PW": "pw"})
    assert r.returncode == 0, r.stderr
    assert "WARNING connection[0].upstream_tls:" in r.stderr and "clear text" in r.stderr
    r = _cli("check-config", "--json", str(path), env={"ORDERS_PW": "pw"})
    out = json.loads(r.stdout)
    assert r.returncode == 0 and out["exit"] == 0
    assert [w["key"] for w in out["warnings"]] == ["connection[0].upstream_tls"]


def test_check_config_exit_status_says_what_failed(tmp_path):
    """0 ok, 1 invalid; with --connect 2 when a check cannot run (here: nothing listens where
    the upstream should be). 3, a posture finding, is tests/test_posture.py's."""
    import socket
    with socket.socket() as s:                 # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "down.toml"
    path.write_text(to_toml(_with(upstream=f"127.0.0.1:{port}", connect_timeout="3s")))
    env = {"ORDERS_PW": "pw"}
    assert _cli("check-config", str(path), env=env).returncode == 0
    r = _cli("check-config", "--connect", "--json", str(path), env=env)
    assert r.returncode == 2, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["exit"] == 2
    failed = [c for c in out["checks"] if not c["ok"]]
    assert [c["check"] for c in failed] == ["upstream"], out
    # the state store and the default audit directory were checked, and are fine
    assert {c["check"] for c in out["checks"] if c["ok"]} == {"state", "audit"}
    path.write_text(to_toml(_with(upstream=f"127.0.0.1:{port}", max_connections=0)))
    r = _cli("check-config", "--connect", "--json", str(path), env=env)
    assert r.returncode == 1 and json.loads(r.stdout)["exit"] == 1


def test_the_admin_cli_reads_its_token_from_a_file_or_the_environment(tmp_path, pg, idp):
    """Against a real gateway's admin API: --token-file and HOOPWIRE_TOKEN(_FILE) work without a
    word; --token still works, with a warning on stderr; the token itself is never printed."""
    from gwfixtures import gateway_config, gateway_env
    from helpers import Gateway
    token = idp.admin_token()
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    cfg = gateway_config(pg, idp, admin={"admin_groups": ["admins"]})
    with Gateway(cfg, env=gateway_env(pg)) as gw:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("HOOPWIRE_")}

        def run(*args, **env):
            e = dict(clean, PYTHONPATH=REPO_ROOT, HOOPWIRE_ADMIN_URL=gw.admin_url, **env)
            return subprocess.run([sys.executable, "-m", "hoopwire", "sessions", "list",
                                   "--json", *args], capture_output=True, text=True, env=e,
                                  timeout=60)

        for args, env in ((("--token-file", str(token_file)), {}),
                          ((), {"HOOPWIRE_TOKEN": token}),
                          ((), {"HOOPWIRE_TOKEN_FILE": str(token_file)})):
            r = run(*args, **env)
            assert r.returncode == 0 and "sessions" in json.loads(r.stdout), r.stderr
            assert r.stderr == "" and token not in r.stdout
        r = run("--token", token)
        assert r.returncode == 0 and "sessions" in json.loads(r.stdout), r.stderr
        assert "warning: --token puts your token where every local user can read it" in r.stderr
        assert token not in r.stderr
        # a file that is not there or empty is named, and nothing is sent
        (tmp_path / "empty").write_text("\n")
        r = run("--token-file", str(tmp_path / "empty"))
        assert r.returncode == 1 and "is empty" in r.stderr
        r = run(HOOPWIRE_TOKEN_FILE=str(tmp_path / "absent"))
        assert r.returncode == 1 and "cannot read the token file" in r.stderr
        r = run()
        assert r.returncode == 1 and "no token: pass --token-file" in r.stderr
        # a wrong token really is refused: the file's content is what was sent
        token_file.write_text(idp.token() + "\n")      # a database token, not an admin one
        r = run("--token-file", str(token_file))
        assert r.returncode == 1 and "401" in r.stderr, r.stderr


def test_serve_logs_the_config_warnings_at_start(pg, idp):
    """What check-config warns about, serve says too (every start: an operator who never runs
    check-config still reads it). 192.0.2.1 (TEST-NET-1) is no loopback and answers nothing:
    the listener starts all the same."""
    from gwfixtures import gateway_config, gateway_env
    from helpers import Gateway
    cfg = gateway_config(pg, idp, upstream="192.0.2.1:5432", upstream_tls="disable")
    with Gateway(cfg, env=gateway_env(pg)) as gw:
        gw.wait_log(r"warning .*config warning key=connection\[0\]\.upstream_tls .*clear text",
                    timeout=20)
