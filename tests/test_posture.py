"""`hoopwire check-config --connect`: the upstream role is part of the boundary.

Real PostgreSQL (the session's `pg`), roles made per test, the real CLI as a subprocess. A role
with exactly the README's recommended grant set passes; the same set plus one bad privilege
shows that privilege's finding (and fails the run), for every privilege in BAD.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys

import pytest

from gwfixtures import gateway_config
from helpers import REPO_ROOT, to_toml

DB = "posture"
MASKS = [{"columns": ["public.people.ssn"], "strategy": "redact"}]


@pytest.fixture(scope="module")
def db(pg):
    """A database owned by a NOLOGIN role, as an application's migrations would leave it:
    people(id, name, ssn) with statistics, a view that passes ssn through (people_all) and one
    that masks it in the database (people_masked), and orders. TEMP on the database and CREATE
    on public are revoked from PUBLIC (the recommended set's first half)."""
    pg.sql("CREATE ROLE posture_owner NOLOGIN;")
    pg.create_database(DB, owner="posture_owner")
    pg.sql("SET ROLE posture_owner;\n"
           "CREATE TABLE people (id int PRIMARY KEY, name text, ssn text);\n"
           "INSERT INTO people SELECT g, 'person ' || g, "
           "lpad((g % 7)::text, 3, '0') || '-45-6789' FROM generate_series(1, 200) g;\n"
           "ANALYZE people;\n"
           "CREATE VIEW people_all AS SELECT * FROM people;\n"
           "CREATE VIEW people_masked AS SELECT id, name, "
           "repeat('*', length(ssn) - 4) || right(ssn, 4) AS ssn FROM people;\n"
           "CREATE TABLE orders (id int PRIMARY KEY, person int REFERENCES people, total int);\n"
           "RESET ROLE;\n"
           f"REVOKE TEMP ON DATABASE {DB} FROM PUBLIC;\n"
           "REVOKE CREATE ON SCHEMA public FROM PUBLIC;\n", dbname=DB)
    return DB


# The README's recommended set for a gateway role ("Posture check"), {r} being the role: both
# of its ways for the masked column (column-level SELECT on the others, and a masking view).
GOOD = """
ALTER ROLE {r} NOINHERIT;
GRANT CONNECT ON DATABASE posture TO {r};
GRANT USAGE ON SCHEMA public TO {r};
GRANT SELECT (id, name) ON people TO {r};
GRANT SELECT ON people_masked TO {r};
GRANT SELECT, INSERT, UPDATE, DELETE ON orders TO {r};
"""

# (the finding, what to add to the good set). {grp} is a NOLOGIN role made for the test,
# {su} a NOLOGIN superuser role.
BAD = [
    ("raw_masked_read", "GRANT SELECT (ssn) ON people TO {r}"),
    ("raw_masked_read", "GRANT SELECT ON people TO {r}"),
    ("raw_masked_read", "GRANT SELECT ON people_all TO {r}"),            # a pass-through view
    ("raw_masked_read", "GRANT SELECT ON people TO {grp}; ALTER ROLE {r} INHERIT; "
                        "GRANT {grp} TO {r}"),                             # inherited
    ("raw_masked_read", "GRANT SELECT (ssn) ON people TO {grp}; GRANT {grp} TO {r}"),  # SET ROLE
    ("masked_stats_read", "GRANT SELECT (ssn) ON people TO {r}"),
    ("temp", "GRANT TEMP ON DATABASE posture TO {r}"),
    ("create_database", "GRANT CREATE ON DATABASE posture TO {r}"),
    ("create_schema", "GRANT CREATE ON SCHEMA public TO {r}"),
    ("superuser", "ALTER ROLE {r} SUPERUSER"),
    ("superuser", "GRANT {su} TO {r}"),                                   # by SET ROLE
    ("createrole", "ALTER ROLE {r} CREATEROLE"),
    ("bypassrls", "ALTER ROLE {r} BYPASSRLS"),
    ("read_server_files", "GRANT pg_read_server_files TO {r}"),
    ("read_server_files", "GRANT pg_read_server_files TO {grp}; GRANT {grp} TO {r}"),
    ("write_server_files", "GRANT pg_write_server_files TO {r}"),
    ("execute_server_program", "GRANT pg_execute_server_program TO {r}"),
    ("read_all_stats", "GRANT pg_read_all_stats TO {r}"),
    ("read_all_stats", "GRANT pg_monitor TO {r}"),
    ("set_role", "GRANT {grp} TO {r}"),
]


@pytest.fixture
def roles(pg, db):
    """make(extra_sql) -> a new LOGIN role with the good set plus `extra_sql`; all dropped after."""
    made = []

    def make(extra: str = "") -> str:
        tag = secrets.token_hex(4)
        r, grp, su = f"gw_{tag}", f"grp_{tag}", f"su_{tag}"
        pg.create_role(r, secrets.token_urlsafe(18))
        pg.sql(f"CREATE ROLE {grp} NOLOGIN; CREATE ROLE {su} NOLOGIN SUPERUSER;")
        made.extend([r, grp, su])
        sql = GOOD + (extra + ";\n" if extra else "")
        pg.sql(sql.format(r=r, grp=grp, su=su), dbname=db)
        return r

    yield make
    for name in made:
        pg.sql(f"DROP OWNED BY {name} CASCADE;", dbname=db)
        pg.sql(f"DROP OWNED BY {name} CASCADE; DROP ROLE {name};")


def _config(tmp_path, pg, idp, pki, user: str, posture: dict | None = None, **conn) -> str:
    cfg = gateway_config(pg, idp, listen="127.0.0.1:0", database=DB, user=user,
                         password_env="POSTURE_PW", upstream_tls="verify-full",
                         upstream_ca=pki.ca_pem, mask=MASKS, **conn)
    cfg["connection"][0]["upstream"] = f"localhost:{pg.port}"   # the certificate's name
    if posture is not None:
        cfg["posture"] = posture
    path = tmp_path / f"{user}.toml"
    path.write_text(to_toml(cfg))
    return str(path)


def _check(path: str, password: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, POSTURE_PW=password)
    return subprocess.run([sys.executable, "-m", "hoopwire", "check-config", path, "--connect",
                           *args], capture_output=True, text=True, env=env, timeout=120)


def _findings(r: subprocess.CompletedProcess) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for f in json.loads(r.stdout)["findings"]:
        out.setdefault(f["kind"], []).append(f)
    return out


def test_the_recommended_grant_set_passes(tmp_path, pg, idp, pki, roles):
    role = roles()
    path = _config(tmp_path, pg, idp, pki, role)
    r = _check(path, pg.passwords[role])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 error(s), 0 finding(s)" in r.stdout, r.stdout
    assert f"upstream pg ({role}@localhost:{pg.port}/{DB}, tls verify-full): ok" in r.stdout
    r = _check(path, pg.passwords[role], "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["findings"] == []
    assert pg.passwords[role] not in r.stdout + r.stderr


@pytest.mark.parametrize("kind,extra", BAD, ids=[f"{k}:{e.split(' TO ')[0][:40]}" for k, e in BAD])
def test_each_bad_privilege_shows_its_finding(tmp_path, pg, idp, pki, roles, kind, extra):
    good, bad = roles(), roles(extra)
    r = _check(_config(tmp_path, pg, idp, pki, good), pg.passwords[good], "--json")
    assert r.returncode == 0 and kind not in _findings(r), r.stdout + r.stderr
    path = _config(tmp_path, pg, idp, pki, bad)
    r = _check(path, pg.passwords[bad], "--json")
    assert r.returncode == 3, r.stdout + r.stderr
    found = _findings(r)
    assert kind in found, r.stdout
    assert all(f["fail"] and f["user"] == bad for f in found[kind])
    assert pg.passwords[bad] not in r.stdout + r.stderr
    # the human-readable report: one line per finding, the failing ones marked
    r = _check(path, pg.passwords[bad])
    assert r.returncode == 3
    assert any(line.startswith(f"FAIL {kind}: connection pg, role {bad} on {DB}: ")
               for line in r.stdout.splitlines()), r.stdout


def test_the_findings_name_the_column_and_the_view(tmp_path, pg, idp, pki, roles):
    role = roles("GRANT SELECT ON people TO {r}; GRANT SELECT ON people_all TO {r}")
    r = _check(_config(tmp_path, pg, idp, pki, role), pg.passwords[role], "--json")
    details = [f["detail"] for f in _findings(r)["raw_masked_read"]]
    assert details == ["can SELECT public.people.ssn (masked by mask[0]) raw",
                       "can SELECT public.people_all.ssn raw: it passes public.people.ssn "
                       "(masked by mask[0]) through unchanged"], details
    # the view that masks in the database reads ssn through an expression: no finding
    assert not any("people_masked" in d for d in details)
    # NOINHERIT keeps a group's privileges out of reach until SET ROLE, which the role can do
    role = roles("GRANT SELECT (ssn) ON people TO {grp}; GRANT {grp} TO {r}")
    r = _check(_config(tmp_path, pg, idp, pki, role), pg.passwords[role], "--json")
    grp = role.replace("gw_", "grp_")
    assert [f["detail"] for f in _findings(r)["raw_masked_read"]] == [
        f"can SET ROLE to {grp}, which can SELECT public.people.ssn (masked by mask[0]) raw"]


def test_fail_on_decides_the_exit_status(tmp_path, pg, idp, pki, roles):
    role = roles("GRANT TEMP ON DATABASE posture TO {r}")
    pw = pg.passwords[role]
    r = _check(_config(tmp_path, pg, idp, pki, role, posture={"fail_on": []}), pw)
    assert r.returncode == 0, r.stdout + r.stderr
    assert any(line.startswith(f"warn temp: connection pg, role {role}")
               for line in r.stdout.splitlines()), r.stdout
    r = _check(_config(tmp_path, pg, idp, pki, role, posture={"fail_on": ["superuser"]}), pw)
    assert r.returncode == 0, r.stdout
    r = _check(_config(tmp_path, pg, idp, pki, role, posture={"fail_on": ["temp"]}), pw)
    assert r.returncode == 3 and "FAIL temp:" in r.stdout


def test_every_configured_role_is_checked(tmp_path, pg, idp, pki, roles):
    main, other = roles(), roles("GRANT CREATE ON SCHEMA public TO {r}")
    pw_file = tmp_path / "other.pw"
    pw_file.write_text(pg.passwords[other] + "\n")
    path = _config(tmp_path, pg, idp, pki, main,
                   role=[{"name": "reporting", "user": other, "password_file": str(pw_file),
                          "allow_groups": ["analysts"]}])
    r = _check(path, pg.passwords[main], "--json")
    assert r.returncode == 3, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert [(f["user"], f["kind"]) for f in report["findings"]] == [(other, "create_schema")]
    assert sum(c["check"] == "upstream" and c["ok"] for c in report["checks"]) == 2


def test_what_cannot_be_checked_is_an_error_without_secrets(tmp_path, pg, idp, pki, roles):
    role = roles()
    audit = tmp_path / "audit-is-a-file"     # (a read-only directory would not stop root)
    audit.write_text("")
    missing_jwks = tmp_path / "nope.jwks.json"
    identity = {"issuer": [idp.issuer_config(jwks_uri="file://" + str(missing_jwks))]}
    cfg = gateway_config(pg, idp, identity=identity, listen="127.0.0.1:0", database=DB,
                         user=role, password_env="POSTURE_PW")
    cfg["audit"] = {"path": str(audit)}
    cfg["state"] = {"url": f"sqlite:///{tmp_path}/state.db"}
    path = tmp_path / "broken.toml"
    path.write_text(to_toml(cfg))
    wrong = "not-" + secrets.token_urlsafe(12)
    r = _check(str(path), wrong)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert any(line.startswith("upstream pg (") and ": ERROR -- " in line and
               "password authentication failed" in line for line in lines), r.stdout
    assert any(line.startswith(f"jwks file://{missing_jwks}: ERROR -- cannot read")
               for line in lines), r.stdout
    assert f"audit {audit}: ERROR -- exists and is not a directory" in lines, r.stdout
    assert any(line.startswith(f"state sqlite:///{tmp_path}/state.db: ok") for line in lines)
    assert wrong not in r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    # and with the right password the same file reaches the role (only the JWKS and audit fail)
    r = _check(str(path), pg.passwords[role], "--json")
    report = json.loads(r.stdout)
    assert {c["check"]: c["ok"] for c in report["checks"]} == {
        "upstream": True, "jwks": False, "audit": False, "state": True}


def test_the_other_checks_pass_when_they_can(tmp_path, pg, idp, pki, roles):
    role = roles()
    cfg = gateway_config(pg, idp, listen="127.0.0.1:0", database=DB, user=role,
                         password_env="POSTURE_PW")
    (tmp_path / "audit").mkdir()
    cfg["audit"] = {"path": str(tmp_path / "audit")}
    cfg["state"] = {"url": f"sqlite:///{tmp_path}/state.db"}
    path = tmp_path / "others.toml"
    path.write_text(to_toml(cfg))
    r = _check(str(path), pg.passwords[role])
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert f"jwks file://{idp.jwks}: ok -- 1 key(s) usable for ES256, RS256" in lines, r.stdout
    assert f"audit {tmp_path}/audit: ok -- writable" in lines
    assert os.listdir(tmp_path / "audit") == []           # the probe file is gone
    cfg["audit"] = {"path": str(tmp_path / "not-yet" / "audit")}
    path.write_text(to_toml(cfg))
    r = _check(str(path), pg.passwords[role])
    assert r.returncode == 0 and f"audit {tmp_path}/not-yet/audit: ok -- does not exist yet; " \
        f"serve creates it in {tmp_path}" in r.stdout, r.stdout
    assert not (tmp_path / "not-yet").exists()


# -- [posture] in the configuration (tests/test_config.py style: parse_config, no server) ------

def test_posture_config_is_validated(monkeypatch):
    from hoopwire.config import POSTURE_FINDINGS, ConfigError, parse_config
    from test_config import GOOD as CONFIG
    monkeypatch.setenv("ORDERS_PW", "x")

    def problems(doc) -> dict[str, str]:
        with pytest.raises(ConfigError) as e:
            parse_config(doc)
        return dict(e.value.problems)

    assert parse_config(CONFIG).posture.fail_on == POSTURE_FINDINGS       # every kind by default
    assert parse_config({**CONFIG, "posture": {"fail_on": []}}).posture.fail_on == ()
    cfg = parse_config({**CONFIG, "posture": {"fail_on": ["temp", "superuser", "temp"]}})
    assert cfg.posture.fail_on == ("temp", "superuser")
    p = problems({**CONFIG, "posture": {"fail_on": ["temp", "superusr"]}})
    assert p["posture.fail_on"].startswith("unknown finding 'superusr' (known: raw_masked_read,")
    assert problems({**CONFIG, "posture": {"fal_on": ["temp"]}})["posture.fal_on"] == \
        'unknown key (did you mean "fail_on"?)'
    assert "list of non-empty strings" in problems({**CONFIG, "posture": {"fail_on": [1]}})[
        "posture.fail_on"]
    assert problems({**CONFIG, "posture": {"fail_on": True}})["posture.fail_on"].startswith(
        "expected list or str")
    assert problems({**CONFIG, "posture": "all"})["posture"] == "expected a table"


def test_a_jwks_without_a_usable_key_is_an_error(tmp_path, pg, idp, pki, roles):
    role = roles()
    empty = tmp_path / "empty.jwks.json"
    empty.write_text('{"keys": []}')
    identity = {"issuer": [idp.issuer_config(jwks_uri="file://" + str(empty)),
                           idp.issuer_config(issuer="https://eddsa.test", algorithms=["EdDSA"])]}
    cfg = gateway_config(pg, idp, identity=identity, listen="127.0.0.1:0", database=DB,
                         user=role, password_env="POSTURE_PW")
    path = tmp_path / "jwks.toml"
    path.write_text(to_toml(cfg))
    r = _check(str(path), pg.passwords[role])
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert f"jwks file://{empty}: ERROR -- 0 key(s), none usable for ES256, RS256" in lines, \
        r.stdout
    # the dev key is P-256: no use to an issuer that signs with EdDSA only
    assert f"jwks file://{idp.jwks}: ERROR -- 1 key(s), none usable for EdDSA" in lines, r.stdout
