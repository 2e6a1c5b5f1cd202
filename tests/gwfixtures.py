"""Fixtures for tests that go through a real gateway: a development identity provider (keys and a
file:// JWKS), API keys, and a gateway in front of the session's PostgreSQL (`pg`).

Imported into conftest.py so every test module can ask for them.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass, field
from typing import Iterator

import pytest

from helpers import APP_DB, Gateway
from hoopwire.identity.devtoken import create_dev_key, mint_token

ISSUER = "https://idp.hoopwire.test"
AUDIENCE = "hoopwire"
ADMIN_AUDIENCE = "hoopwire-admin"   # the admin API's own audience ([admin] audience default)


@dataclass
class Idp:
    """A development identity provider: an ES256 key whose JWKS the gateway reads from a file."""

    dir: str
    key: str
    jwks: str
    issuer: str = ISSUER
    audience: str = AUDIENCE
    api_keys: dict[str, str] = field(default_factory=dict)  # name -> the key itself

    def token(self, subject: str = "agent-7", groups=("agents",), **kw) -> str:
        kw.setdefault("issuer", self.issuer)
        kw.setdefault("audience", self.audience)
        return mint_token(self.key, subject=subject, groups=list(groups), **kw)

    def admin_token(self, subject: str = "root", groups=("admins",), **kw) -> str:
        """A token for the admin API (its own audience): no database password."""
        return self.token(subject, groups, audience=ADMIN_AUDIENCE, **kw)

    def issuer_config(self, **overrides) -> dict:
        cfg = {"issuer": self.issuer, "audience": self.audience,
               "jwks_uri": "file://" + self.jwks, "algorithms": ["ES256", "RS256"],
               "jwks_refetch_interval": "1s"}
        cfg.update(overrides)
        return cfg

    def api_key_config(self) -> list[dict]:
        groups = {"ci": ["ci"], "nogroup": []}
        return [{"name": name, "sha256": hashlib.sha256(key.encode()).hexdigest(),
                 "groups": groups.get(name, [])} for name, key in self.api_keys.items()]


@pytest.fixture(scope="session")
def idp(tmp_path_factory) -> Idp:
    d = str(tmp_path_factory.mktemp("idp"))
    key = os.path.join(d, "dev-key.pem")
    jwks = create_dev_key(key, kid="dev")
    return Idp(dir=d, key=key, jwks=jwks,
               api_keys={"ci": "ci-" + secrets.token_urlsafe(24),
                         "nogroup": "ng-" + secrets.token_urlsafe(24)})


def gateway_config(pg, idp: Idp, *, identity: dict | None = None, admin: dict | None = None,
                   **connection) -> dict:
    """A one-connection config in front of `pg` (name "pg"); keyword arguments override keys
    of the [[connection]] table."""
    conn = {"name": "pg", "protocol": "postgres", "upstream": f"127.0.0.1:{pg.port}",
            "database": APP_DB, "user": "app", "password_env": "APP_DB_PASSWORD",
            "allow_groups": ["agents", "ci", "analysts"]}
    conn.update(connection)
    cfg = {"identity": identity or {"issuer": [idp.issuer_config()],
                                    "api_key": idp.api_key_config()},
           "connection": [conn]}
    if admin is not None:
        cfg["admin"] = admin
    return cfg


def gateway_env(pg) -> dict[str, str]:
    return {"APP_DB_PASSWORD": pg.passwords["app"], "MD5_PASSWORD": pg.passwords["md5user"],
            "PASS_PASSWORD": pg.passwords["passuser"]}


@pytest.fixture(scope="module")
def gw(pg, idp) -> Iterator[Gateway]:
    """A gateway with the plain default config, shared by a module's tests."""
    with Gateway(gateway_config(pg, idp), env=gateway_env(pg)) as g:
        yield g


def conninfo(gw: Gateway, password: str, *, name: str = "pg", user: str = "agent-7",
             dbname: str = APP_DB, **kw) -> str:
    parts = {"host": "127.0.0.1", "port": gw.port(name), "user": user, "dbname": dbname,
             "password": password, "sslmode": "disable", "connect_timeout": 10}
    parts.update(kw)
    return " ".join(f"{k}='{v}'" for k, v in parts.items())
