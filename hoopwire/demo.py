"""`hoopwire demo`: an agent's session through the gateway, start to finish, on this machine.

Starts a throwaway PostgreSQL with a small shop database, starts `hoopwire serve` in front of
it with guardrails, masking, an approval rule and session recording on, mints a token for an
agent identity, and runs the agent's statements through the gateway with psycopg -- printing
what was allowed, blocked, masked and held for a human (who approves it through the admin API
as a second identity), then the recorded session and the audit chain check. Everything runs in a
temporary directory and is removed on exit or Ctrl-C.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

__all__ = ["main"]

# Made as shop_owner, the application's own role: the raw customers table lives in a schema the
# gateway's role has no privilege on, and agents read it through a view that shows the database's
# own masked copy of ssn (the README's "Posture check": the role cannot read a masked column raw,
# so no expression or function the gateway fails to follow can show it). The copy is a stored
# generated column rather than an expression in the view: the view's column is then a plain
# column, which the gateway passes as it is, not a value derived from the masked one. The table's
# name is not the view's: the gateway resolves a name in every schema (it does not know the
# session's search_path), and `customers` would then also be the table with the raw ssn.
SAMPLE_DATA = """
CREATE SCHEMA private;
CREATE TABLE private.customer_records (
  id int PRIMARY KEY, name text, email text, plan text, ssn text,
  ssn_last4 text GENERATED ALWAYS AS (repeat('*', length(ssn) - 4) || right(ssn, 4)) STORED);
CREATE VIEW customers AS
  SELECT id, name, email, plan, ssn_last4 AS ssn FROM private.customer_records;
CREATE TABLE orders (id int PRIMARY KEY, customer_id int REFERENCES private.customer_records,
                     total numeric(10,2), placed_at timestamptz DEFAULT now());
INSERT INTO private.customer_records VALUES
  (1, 'Ada Lovelace', 'ada@example.com', 'pro', '123-45-6789'),
  (2, 'Alan Turing', 'alan@example.org', 'free', '219-09-9999'),
  (3, 'Grace Hopper', 'grace@example.net', 'pro', '078-05-1120');
INSERT INTO orders (id, customer_id, total)
  SELECT g, 1 + g % 3, round((10 + g * 7.31)::numeric % 500, 2) FROM generate_series(1, 42) g;
"""

# The gateway's role (shop_app): the README's recommended grant set, no more. It reads the
# view and orders, deletes orders (the held step); no TEMP, no CREATE, no memberships.
APP_GRANTS = """
ALTER ROLE shop_app NOINHERIT;
REVOKE TEMP ON DATABASE shop FROM PUBLIC;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT CONNECT ON DATABASE shop TO shop_app;
GRANT USAGE ON SCHEMA public TO shop_app;
GRANT SELECT ON customers TO shop_app;
GRANT SELECT, DELETE ON orders TO shop_app;
"""

# What the agent runs, and what we expect the gateway to do with each.
AGENT_STEPS = [
    ("allowed", "SELECT count(*) FROM orders"),
    ("allowed", "SELECT c.name, sum(o.total) FROM customers c JOIN orders o ON o.customer_id = c.id "
                "GROUP BY c.name ORDER BY 2 DESC LIMIT 1"),
    ("blocked", "DROP TABLE orders"),
    ("blocked", "DELETE FROM orders"),
    ("blocked", "SELECT pg_read_file('/etc/passwd')"),
    ("blocked", "DrOp/**/TaBlE customers"),
    ("allowed", "SELECT 'drop table orders' AS just_a_string"),
    ("masked", "SELECT name, email, ssn AS tax_id FROM customers ORDER BY id"),
]
HELD_STEP = "DELETE FROM orders WHERE id = 42"


def _say(tag: str, text: str) -> None:
    colours = {"allowed": "32", "allow": "32", "blocked": "31", "block": "31", "refused": "31",
               "info": "36", "log": "90", "masked": "33", "held": "35", "approved": "32",
               "audit": "36"}
    if sys.stdout.isatty():
        tag = f"\033[{colours.get(tag, '0')}m{tag:>8}\033[0m"
    else:
        tag = f"{tag:>8}"
    print(f"{tag}  {text}", flush=True)


def config_head(admin_port: int, jwks: str, api_key_sha: str, work: str) -> str:
    """The demo configuration's admin API, state, audit log and identities: the same for every
    protocol's demo."""
    return f"""\
[admin]
listen = "127.0.0.1:{admin_port}"
admin_groups = ["dba"]

[state]
url = "sqlite:///{work}/state.db"

[audit]
path = "{work}/audit"

[[identity.issuer]]
issuer = "https://idp.demo.local"
audience = "hoopwire"
jwks_uri = "file://{jwks}"
algorithms = ["ES256"]

[[identity.api_key]]
name = "nightly-etl"
sha256 = "{api_key_sha}"
groups = ["etl"]

"""


def connection_head(protocol: str, gw_port: int, db_port: int) -> str:
    """The demo connection "shop": where it listens, its upstream and who may use it."""
    return f"""\
[[connection]]
name = "shop"
protocol = "{protocol}"
listen = "127.0.0.1:{gw_port}"
upstream = "127.0.0.1:{db_port}"
database = "shop"
user = "shop_app"
password_env = "SHOP_DB_PASSWORD"
allow_groups = ["agents", "etl"]
"""


# the connection's guardrails, and its masking of what a detector finds, in every demo
GUARDRAILS = """
  [[connection.guardrail]]
  pack = "destructive-ddl"
  message = "DDL goes through a migration, not an agent"

  [[connection.guardrail]]
  pack = "unbounded-write"
  message = "DELETE and UPDATE need a WHERE clause"

  [[connection.guardrail]]
  pack = "server-side-io"

  [[connection.guardrail]]
  name = "deletes-need-a-human"
  patterns = ['\\bdelete\\b']
  action = "approve"
  approvers = ["dba"]
  timeout = "60s"
"""
DETECTOR_MASK = """
  [[connection.mask]]
  detectors = ["EMAIL", "US_SSN", "CREDIT_CARD", "AWS_ACCESS_KEY_ID"]
  strategy = "redact"
"""


def self_signed(work: str) -> tuple[str, str]:
    """A throwaway certificate for 127.0.0.1 (the client pins it as its CA)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hoopwire demo")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = os.path.join(work, "gateway.pem"), os.path.join(work, "gateway.key")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


def _config(pg_port: int, gw_port: int, admin_port: int, jwks: str, api_key_sha: str,
            work: str) -> str:
    return (config_head(admin_port, jwks, api_key_sha, work)
            + connection_head("postgres", gw_port, pg_port) + GUARDRAILS + """
  [[connection.mask]]
  columns = ["private.customer_records.ssn"]  # shop_app cannot read it; should a grant let it
  strategy = "partial"
  keep = 4
""" + DETECTOR_MASK)


def _admin(port: int, method: str, path: str, token: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _recorded_session(port: int, token: str, identity: str,
                      timeout: float = 15.0) -> tuple[dict, dict]:
    """The identity's first session once it has ended and all its statements are in the log:
    the gateway writes them in batches, up to the audit flush_interval after they ran."""
    deadline = time.monotonic() + timeout
    while True:
        rows = _admin(port, "GET", f"/api/v1/sessions?identity={identity}", token)["sessions"]
        if rows:
            shown = _admin(port, "GET", f"/api/v1/sessions/{rows[-1]['id']}", token)
            row = shown["session"]
            done = row["ended_at"] is not None and len(shown["statements"]) >= row["statements"]
            if done or time.monotonic() > deadline:
                return rows[-1], shown
        elif time.monotonic() > deadline:
            raise SystemExit(f"demo: no session of {identity} was recorded within {timeout:.0f} s")
        time.sleep(0.1)


def _wait_pending(port: int, token: str, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pending = _admin(port, "GET", "/api/v1/approvals?status=pending", token)["approvals"]
        if pending:
            return pending[0]
        time.sleep(0.05)
    raise RuntimeError("the held statement's approval request did not appear")


def start_gateway(cfg_path: str, env: dict[str, str], log_path: str,
                  gw_port: int) -> subprocess.Popen:
    """`hoopwire serve` on `cfg_path`, its output to `log_path`, once it accepts on gw_port."""
    from hoopwire.devserver import wait_for_listener

    log_file = open(log_path, "wb")
    gw = subprocess.Popen([sys.executable, "-m", "hoopwire", "serve", "--config", cfg_path],
                          env=env, stdout=log_file, stderr=subprocess.STDOUT)
    wait_for_listener(gw_port, gw)
    return gw


def approve_held(admin_port: int, approver: str, statement: str, request: dict,
                 worker: threading.Thread, held: dict) -> None:
    """Show the held `statement`'s approval request, approve it as `approver`, and show what the
    agent's waiting call (`worker`, which puts it in held["result"]) got."""
    _say("held", f"{statement}\n          -> waiting: approval {request['id']} "
                 f"(rule \"{request['rule']}\", approvers: {', '.join(request['approvers'])})")
    decided = _admin(admin_port, "POST", f"/api/v1/approvals/{request['id']}/approve",
                     approver, {"reason": "order 42 was a test order"})
    worker.join(15)
    _say("approved", f"by {decided['decided_by']} through the admin API -> the agent's "
                     f"statement ran: {held.get('result')}")


def show_records(admin_port: int, approver: str, work: str, log_path: str) -> None:
    """What the gateway kept of it all: agent-7's recorded session, the audit chain check, the
    operator's log lines and the metrics."""
    first, shown = _recorded_session(admin_port, approver, "agent-7")
    print(f"\nThe recorded session (hoopwire sessions show {first['id']}):")
    for st in shown["statements"]:
        _say(st["verdict"], f"#{st['seq']} {st['statement']}".replace("\n", "\\n")
             + (f"  ({st['masked']} values masked)" if st.get("masked") else ""))
    check = subprocess.run([sys.executable, "-m", "hoopwire", "audit", "verify",
                            os.path.join(work, "audit")], capture_output=True, text=True)
    _say("audit", f"hoopwire audit verify -> {check.stdout.strip()}")

    print("\nWhat the operator's log saw (secrets and literals never appear):")
    with open(log_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if any(w in line for w in ("session started", "blocked", "refused", "held for",
                                       "decided", "session closed")):
                _say("log", line.rstrip()[:220])
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics",
                                     timeout=5).read().decode()
    print("\nMetrics (/metrics):")
    for line in metrics.splitlines():
        if line.startswith(("hoopwire_connections_total", "hoopwire_guardrail_verdicts_total",
                            "hoopwire_auth_failures_total", "hoopwire_statements_total",
                            "hoopwire_masked_values_total")):
            if 'result="client_gone"' in line:
                # start_gateway's wait_for_listener connected and left; without the note a user
                # looks for the client the demo never showed vanishing
                line += "   (the demo's own check that the port was open)"
            _say("log", line)


def stop_all(gw: subprocess.Popen | None, server, work: str) -> None:
    """Stop the gateway (SIGTERM, SIGKILL after 10 s) and the throwaway server; remove `work`."""
    if gw is not None and gw.poll() is None:
        gw.terminate()
        try:
            gw.wait(10)
        except subprocess.TimeoutExpired:
            gw.kill()
    if server is not None:
        server.stop()
    shutil.rmtree(work, ignore_errors=True)


def main(keep: bool = False) -> int:
    try:
        import psycopg
    except ImportError:
        print("the demo's client is psycopg: pip install 'psycopg[binary]'", file=sys.stderr)
        return 1
    from hoopwire.devserver import PgServer, PgServerError, free_loopback_port
    from hoopwire.identity.devtoken import create_dev_key, mint_token

    work = tempfile.mkdtemp(prefix="hoopwire-demo-")
    pg = gw = None
    # Ctrl-C anywhere: fall through to the cleanup below.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        print("hoopwire demo: an AI agent's database session, through the gateway\n")
        _say("info", "starting a throwaway PostgreSQL (initdb in a temp dir)...")
        db_password = secrets.token_urlsafe(18)
        try:
            pg = PgServer().start()
        except PgServerError as e:
            print(f"cannot start PostgreSQL: {e}", file=sys.stderr)
            return 1
        pg.sql("CREATE ROLE shop_owner NOLOGIN;")
        pg.create_role("shop_app", db_password)
        pg.create_database("shop", owner="shop_owner")
        pg.sql("SET ROLE shop_owner;\n" + SAMPLE_DATA + "RESET ROLE;\n" + APP_GRANTS,
               dbname="shop")
        _say("info", f"PostgreSQL on 127.0.0.1:{pg.port}, database shop (customers, orders)")

        key = os.path.join(work, "dev-key.pem")
        jwks = create_dev_key(key, kid="demo")
        api_key = "etl-" + secrets.token_urlsafe(24)
        gw_port, admin_port = free_loopback_port(), free_loopback_port()
        cfg_path = os.path.join(work, "hoopwire.toml")
        with open(cfg_path, "w") as f:
            f.write(_config(pg.port, gw_port, admin_port, jwks,
                            hashlib.sha256(api_key.encode()).hexdigest(), work))
        log_path = os.path.join(work, "gateway.log")
        env = dict(os.environ, SHOP_DB_PASSWORD=db_password)
        gw = start_gateway(cfg_path, env, log_path, gw_port)
        _say("info", f"hoopwire on 127.0.0.1:{gw_port} (admin and /metrics on 127.0.0.1:{admin_port})")
        posture = subprocess.run([sys.executable, "-m", "hoopwire", "check-config", "--connect",
                                  cfg_path], env=env, capture_output=True, text=True, timeout=60)
        report = posture.stdout.strip().splitlines()
        _say("info" if posture.returncode == 0 else "refused",
             "hoopwire check-config --connect (what shop_app itself may do) -> "
             + (report[-1] if report else posture.stderr.strip()[-200:]))
        for line in report:
            if line.startswith(("FAIL ", "warn ")) or ": ERROR -- " in line:
                print(f"          {line}")
        token = mint_token(key, issuer="https://idp.demo.local", audience="hoopwire",
                           subject="agent-7", groups=["agents"], ttl=900, kid="demo")
        _say("info", "minted a 15-minute token for agent-7 (group: agents) -- the agent's only "
                     "change is its DSN:")
        dsn = f"host=127.0.0.1 port={gw_port} dbname=shop user=agent-7 password={token[:12]}..."
        print(f"          {dsn}\n")

        with psycopg.connect(host="127.0.0.1", port=gw_port, dbname="shop", user="agent-7",
                             password=token, autocommit=True) as conn:
            for expected, sql in AGENT_STEPS:
                try:
                    cur = conn.execute(sql)
                    if expected == "masked":
                        rows = cur.fetchall()
                        _say("masked", f"{sql}\n          -> " +
                             "\n             ".join(str(r) for r in rows))
                        continue
                    shown = cur.fetchone() if cur.description else f"ok ({cur.statusmessage})"
                    _say("allowed", f"{sql}\n          -> {shown}")
                except psycopg.errors.InsufficientPrivilege as e:
                    _say("blocked", f"{sql}\n          -> ERROR {e.sqlstate}: {e.diag.message_primary}")
                except psycopg.Error as e:
                    _say("blocked", f"{sql}\n          -> ERROR {e.sqlstate}: {e}")

        # A statement that needs a human: the agent's call waits; a DBA approves it.
        # the admin API's own audience ([admin] audience): a database token is no admin token
        approver = mint_token(key, issuer="https://idp.demo.local", audience="hoopwire-admin",
                              subject="dana", groups=["dba"], ttl=900, kid="demo")
        held = {}

        def agent_delete() -> None:
            with psycopg.connect(host="127.0.0.1", port=gw_port, dbname="shop", user="agent-7",
                                 password=token, autocommit=True) as c:
                c.add_notice_handler(lambda d: held.setdefault("notice", d.message_primary))
                held["result"] = c.execute(HELD_STEP).statusmessage
        worker = threading.Thread(target=agent_delete, daemon=True)
        worker.start()
        request = _wait_pending(admin_port, approver)
        approve_held(admin_port, approver, HELD_STEP, request, worker, held)

        try:
            psycopg.connect(host="127.0.0.1", port=gw_port, dbname="shop", user="agent-7",
                            password=token[:-4] + "AAAA", connect_timeout=5).close()
            _say("allowed", "a tampered token (unexpected!)")
        except psycopg.OperationalError as e:
            _say("refused", f"a tampered token -> {str(e).strip().splitlines()[-1]}")
        with psycopg.connect(host="127.0.0.1", port=gw_port, dbname="shop", user="etl",
                             password=api_key) as conn:
            n = conn.execute("SELECT count(*) FROM customers").fetchone()[0]
            _say("allowed", f"the nightly-etl API key (stored only as its sha256): {n} customers")

        show_records(admin_port, approver, work, log_path)

        if keep:
            fresh = mint_token(key, issuer="https://idp.demo.local", audience="hoopwire",
                               subject="you", groups=["agents"], ttl=3600, kid="demo")
            print(f"\nStill running. Try it yourself (Ctrl-C to stop):\n  psql \"host=127.0.0.1 "
                  f"port={gw_port} dbname=shop user=you password={fresh}\"")
            while gw.poll() is None:
                time.sleep(0.5)
        print("\ndone: stopping the gateway and PostgreSQL.")
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the gateway and PostgreSQL.")
        return 130
    finally:
        stop_all(gw, pg, work)
