"""The configuration contract: every error named by key and reason, secrets never shown."""

from __future__ import annotations

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
    assert p["connection[0].upstrem_tls"] == "unknown key"
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
