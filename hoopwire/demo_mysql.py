"""`hoopwire demo mysql`: the demo's MariaDB part -- an agent's session through the gateway.

The counterpart of hoopwire/demo.py on the MySQL wire protocol: a throwaway MariaDB with the
same small shop database, `hoopwire serve` in front of it (TLS with a throwaway certificate,
guardrails, masking, an approval rule, session recording), a token minted for an agent
identity, and the agent's statements run through the gateway with PyMySQL -- what was allowed,
blocked (MySQL evasions included: executable comments, `#` comments, backticks), masked and
held for a human (who approves it through the admin API as a second identity); then the
recorded session and the audit chain check. Everything runs in a temporary directory and is
removed on exit or Ctrl-C.

    hoopwire demo mysql [--keep]        (or: python -m hoopwire.demo_mysql [--keep])
"""

from __future__ import annotations

import hashlib
import os
import secrets
import signal
import sys
import tempfile
import threading
import time

from hoopwire.demo import (DETECTOR_MASK, GUARDRAILS, _say, _wait_pending, approve_held,
                           config_head, connection_head, self_signed, show_records, start_gateway,
                           stop_all)

__all__ = ["main"]

# The gateway's account (shop_app) may read customers and orders and delete orders (the held
# step); nothing else -- no FILE, no PROCESS, no other schema. Unlike the PostgreSQL demo's
# view over a private table (which keeps the raw ssn from the gateway's role itself), here the
# gateway masks ssn by its column rule: MariaDB shows an account only the catalog it has
# privileges on, so the gateway could not follow a view into a schema its account cannot see,
# and would then mask every column of it as unresolved.
SAMPLE_DATA = """
CREATE DATABASE shop CHARACTER SET utf8mb4;
CREATE TABLE shop.customers (id int PRIMARY KEY, name varchar(64), email varchar(128),
                             plan varchar(16), ssn varchar(11));
CREATE TABLE shop.orders (id int PRIMARY KEY, customer_id int, total decimal(10,2),
                          placed_at timestamp DEFAULT CURRENT_TIMESTAMP);
INSERT INTO shop.customers VALUES
  (1, 'Ada Lovelace', 'ada@example.com', 'pro', '123-45-6789'),
  (2, 'Alan Turing', 'alan@example.org', 'free', '219-09-9999'),
  (3, 'Grace Hopper', 'grace@example.net', 'pro', '078-05-1120');
INSERT INTO shop.orders (id, customer_id, total)
  WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 42)
  SELECT n, 1 + n % 3, ROUND(MOD(10 + n * 7.31, 500), 2) FROM g;
"""
APP_GRANTS = ["SELECT ON shop.customers", "SELECT, DELETE ON shop.orders"]

# What the agent runs, and what we expect the gateway to do with each.
AGENT_STEPS = [
    ("allowed", "SELECT COUNT(*) FROM orders"),
    ("allowed", "SELECT c.name, SUM(o.total) FROM customers c "
                "JOIN orders o ON o.customer_id = c.id "
                "GROUP BY c.name ORDER BY 2 DESC LIMIT 1"),
    ("blocked", "DROP TABLE orders"),
    ("blocked", "DELETE FROM orders"),
    ("blocked", "SELECT LOAD_FILE('/etc/passwd')"),
    # MySQL runs what is inside /*! ... */: a comment to a naive filter, a statement to the server
    ("blocked", "/*!50000 DrOp */ TaBlE `customers`"),
    ("blocked", "# just a comment\nDROP TABLE orders"),
    ("allowed", "SELECT 'drop table orders' AS just_a_string"),
    ("masked", "SELECT name, email, ssn AS tax_id FROM customers ORDER BY id"),
    # an expression loses the column's name in the result's metadata: lineage still finds it
    ("masked", "SELECT CONCAT(name, ' / ', ssn) AS who FROM customers WHERE id = 1"),
]
HELD_STEP = "DELETE FROM orders WHERE id = 42"


def _config(db_port: int, gw_port: int, admin_port: int, jwks: str, api_key_sha: str,
            work: str, cert: str, key: str) -> str:
    return (config_head(admin_port, jwks, api_key_sha, work)
            + connection_head("mysql", gw_port, db_port) + f"""\
# the token travels as a cleartext password (mysql_clear_password): only inside TLS
tls_cert = "{cert}"
tls_key = "{key}"
""" + GUARDRAILS + """
  [[connection.mask]]
  columns = ["shop.customers.ssn"]
  strategy = "partial"
  keep = 4
""" + DETECTOR_MASK)


def _error_text(e: Exception) -> str:
    """`ERROR <errno> (<sqlstate>): <message>` as the mariadb CLI shows it, from a PyMySQL error
    (which keeps errno and message; the SQLSTATE is not kept, so it is left out)."""
    args = getattr(e, "args", ())
    if len(args) >= 2 and isinstance(args[0], int):
        return f"ERROR {args[0]}: {args[1]}"
    return f"ERROR: {e}"


def main(keep: bool = False) -> int:
    try:
        import pymysql
    except ImportError:
        print("the demo's MySQL client is PyMySQL: pip install pymysql", file=sys.stderr)
        return 1
    from hoopwire.devserver import MariaDbServer, MariaDbServerError, free_loopback_port
    from hoopwire.identity.devtoken import create_dev_key, mint_token

    work = tempfile.mkdtemp(prefix="hoopwire-demo-mysql-")
    db = gw = None
    # Ctrl-C anywhere: fall through to the cleanup below.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        print("hoopwire demo (MariaDB): an AI agent's database session, through the gateway\n")
        _say("info", "starting a throwaway MariaDB (mariadb-install-db in a temp dir)...")
        db_password = secrets.token_urlsafe(18)
        try:
            db = MariaDbServer().start()
            db.sql(SAMPLE_DATA)
            db.create_user("shop_app", db_password, grants=APP_GRANTS)
        except MariaDbServerError as e:
            print(f"cannot start MariaDB: {e}", file=sys.stderr)
            return 1
        _say("info", f"MariaDB {db.sql('SELECT VERSION()')} on 127.0.0.1:{db.port}, database "
                     "shop (customers, orders)")

        key = os.path.join(work, "dev-key.pem")
        jwks = create_dev_key(key, kid="demo")
        cert, cert_key = self_signed(work)
        api_key = "etl-" + secrets.token_urlsafe(24)
        gw_port, admin_port = free_loopback_port(), free_loopback_port()
        cfg_path = os.path.join(work, "hoopwire.toml")
        with open(cfg_path, "w") as f:
            f.write(_config(db.port, gw_port, admin_port, jwks,
                            hashlib.sha256(api_key.encode()).hexdigest(), work, cert, cert_key))
        log_path = os.path.join(work, "gateway.log")
        env = dict(os.environ, SHOP_DB_PASSWORD=db_password)
        gw = start_gateway(cfg_path, env, log_path, gw_port)
        _say("info", f"hoopwire on 127.0.0.1:{gw_port}, TLS (admin and /metrics on "
                     f"127.0.0.1:{admin_port})")
        token = mint_token(key, issuer="https://idp.demo.local", audience="hoopwire",
                           subject="agent-7", groups=["agents"], ttl=900, kid="demo")
        _say("info", "minted a 15-minute token for agent-7 (group: agents) -- the agent's only "
                     "change is where it connects and the password it sends:")
        # the token in MYSQL_PWD, as the README tells users: -p'...' would put it in the process
        # list and the shell history
        print(f"          MYSQL_PWD='{token[:12]}...' mariadb -h 127.0.0.1 -P {gw_port} -u agent-7 "
              "--ssl-ca gateway.pem --ssl-verify-server-cert shop\n")

        def connect(user: str, password: str, **kw):
            # PyMySQL answers the gateway's switch to mysql_clear_password by itself; the
            # certificate pinned here is what makes sending the token that way safe
            return pymysql.connect(host="127.0.0.1", port=gw_port, user=user, password=password,
                                   database="shop", ssl={"ca": cert}, autocommit=True,
                                   connect_timeout=10, read_timeout=120, **kw)

        with connect("agent-7", token) as conn, conn.cursor() as cur:
            for expected, sql in AGENT_STEPS:
                shown_sql = sql.replace("\n", "\\n")
                try:
                    cur.execute(sql)
                    rows = cur.fetchall()
                    if expected == "masked":
                        _say("masked", f"{shown_sql}\n          -> " +
                             "\n             ".join(str(r) for r in rows))
                        continue
                    shown = rows[0] if cur.description else f"ok ({cur.rowcount} rows)"
                    _say("allowed", f"{shown_sql}\n          -> {shown}")
                except pymysql.MySQLError as e:
                    # the gateway's refusals name their rule; anything else is the server's
                    # own answer (an account without DROP refuses DROP whatever got through)
                    text = _error_text(e)
                    _say("blocked" if "hoopwire rule" in text else "error",
                         f"{shown_sql}\n          -> {text}")

        # A statement that needs a human: the agent's call waits; a DBA approves it.
        # the admin API's own audience ([admin] audience): a database token is no admin token
        approver = mint_token(key, issuer="https://idp.demo.local", audience="hoopwire-admin",
                              subject="dana", groups=["dba"], ttl=900, kid="demo")
        held: dict = {}

        def agent_delete() -> None:
            try:
                with connect("agent-7", token) as c, c.cursor() as cur:
                    held["result"] = f"{cur.execute(HELD_STEP)} row deleted"
            except pymysql.MySQLError as e:
                held["result"] = _error_text(e)
        worker = threading.Thread(target=agent_delete, daemon=True)
        worker.start()
        try:
            request = _wait_pending(admin_port, approver)
        except RuntimeError as e:
            worker.join(5)
            with open(log_path, encoding="utf-8", errors="replace") as f:
                tail = f.readlines()[-8:]
            print(f"demo: {e}; the agent got: {held.get('result', '(no answer yet)')}; the "
                  "gateway's log ends with:\n" + "".join(tail), file=sys.stderr)
            return 1
        approve_held(admin_port, approver, HELD_STEP, request, worker, held)

        try:
            connect("agent-7", token[:-4] + "AAAA").close()
            _say("allowed", "a tampered token (unexpected!)")
        except pymysql.MySQLError as e:
            _say("refused", f"a tampered token -> {_error_text(e)}")
        with connect("etl", api_key) as conn, conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM customers")
            n = cur.fetchone()[0]
            _say("allowed", f"the nightly-etl API key (stored only as its sha256): {n} customers")

        show_records(admin_port, approver, work, log_path)

        if keep:
            fresh = mint_token(key, issuer="https://idp.demo.local", audience="hoopwire",
                               subject="you", groups=["agents"], ttl=3600, kid="demo")
            print(f"\nStill running. Try it yourself (Ctrl-C to stop):\n  MYSQL_PWD='{fresh}' "
                  f"mariadb -h 127.0.0.1 -P {gw_port} -u you --ssl-ca {cert} "
                  "--ssl-verify-server-cert shop")
            while gw.poll() is None:
                time.sleep(0.5)
        print("\ndone: stopping the gateway and MariaDB.")
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the gateway and MariaDB.")
        return 130
    finally:
        stop_all(gw, db, work)


if __name__ == "__main__":
    sys.exit(main(keep="--keep" in sys.argv[1:]))
