"""The seed story: a LangGraph agent on a production-like database and an internal REST API,
through hoopwire. No LLM needed.

    python examples/langgraph_agent/run.py

Starts a throwaway PostgreSQL with a small shop database and the shop's internal JSON API (the
one `hoopwire demo http` uses: users with e-mails and passwords, admin keys), starts `hoopwire
serve` in front of both (guardrails, masking, a human approval rule; the API's own service token
stored in the gateway), mints a token for the agent (agent-7) and one for a human approver
(dana), runs the graph of agent.py in a thread with HOOPWIRE_DSN and HOOPWIRE_API_URL pointing
at the gateway (the agent's token as the password and as its bearer token), and plays the human
meanwhile: waits for the held statement on the admin API, shows it, and approves it. Then prints
what happened to each step. Everything lives in a temporary directory removed on exit or
Ctrl-C. Needs the PostgreSQL server binaries (Debian: postgresql).
"""

from __future__ import annotations

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
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
for p in (ROOT, HERE):
    if p not in sys.path:
        sys.path.insert(0, p)

ISSUER = "https://idp.example.local"
AUDIENCE = "hoopwire"

SHOP = """
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, email text, ssn text, plan text);
CREATE TABLE orders (id int PRIMARY KEY, customer_id int REFERENCES customers, total numeric(10,2));
INSERT INTO customers VALUES
  (1, 'Ada Lovelace', 'ada@example.com',  '536-22-8741', 'pro'),
  (2, 'Alan Turing',  'alan@example.org', '412-67-0935', 'free'),
  (3, 'Grace Hopper', 'grace@example.net', '601-38-2254', 'pro');
INSERT INTO orders
  SELECT g, 1 + g % 3, round((10 + g * 7.31)::numeric % 500, 2) FROM generate_series(1, 42) g;
"""


def config(pg_port: int, gw_port: int, admin_port: int, jwks: str, state_db: str,
           api_port: int, api_gw_port: int) -> str:
    return f"""\
[admin]
listen = "127.0.0.1:{admin_port}"

[state]
url = "sqlite:///{state_db}"
poll_interval = "100ms"

[[identity.issuer]]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
jwks_uri = "file://{jwks}"
algorithms = ["ES256"]

[[connection]]
name = "shop"
protocol = "postgres"
listen = "127.0.0.1:{gw_port}"
upstream = "127.0.0.1:{pg_port}"
database = "shop"
user = "shop_app"
password_env = "SHOP_DB_PASSWORD"
allow_groups = ["agents"]

  [[connection.guardrail]]
  pack = "destructive-ddl"
  message = "DDL goes through a migration, not an agent"

  [[connection.guardrail]]
  name = "deletes-need-a-human"
  patterns = ['\\bdelete\\b']
  action = "approve"
  approvers = ["dba"]
  timeout = "60s"

  [[connection.mask]]
  columns = ["public.customers.ssn"]
  strategy = "partial"
  keep = 4

  [[connection.mask]]
  detectors = ["EMAIL"]
  strategy = "redact"

[[connection]]
name = "crm-api"
protocol = "http"
listen = "127.0.0.1:{api_gw_port}"
upstream = "http://127.0.0.1:{api_port}"
password_env = "CRM_API_TOKEN"      # the API's service token, sent upstream instead of the agent's
allow_groups = ["agents"]

  [[connection.guardrail]]
  pack = "http-admin-paths"
  message = "admin endpoints are for people, not agents"

  [[connection.mask]]
  paths = ["$.user.email", "**.password"]
  strategy = "redact"

  [[connection.mask]]
  detectors = ["EMAIL"]
  strategy = "redact"
"""


def admin_api(base: str, method: str, path: str, token: str, body: dict | None = None):
    req = urllib.request.Request(base + path, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def fmt_row(row) -> str:
    return " | ".join("NULL" if v is None else str(v) for v in row)


def label(step: dict, approval_id: str | None) -> str:
    if step["outcome"] == "error":
        return "BLOCKED"
    if approval_id and any(approval_id in n for n in step["notices"]):
        return "HELD -> APPROVED"
    if any(isinstance(v, str) and "****" in v for row in step["rows"] for v in row):
        return "MASKED"
    return "ALLOWED"


def main() -> int:
    work = tempfile.mkdtemp(prefix="hoopwire-langgraph-")
    pg = gw = api = None
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    log_path = os.path.join(work, "gateway.log")
    try:
        from agent import build_graph   # the graph: ordinary LangGraph + psycopg + urllib code
        from hoopwire.demo_http import ShopApi
        from hoopwire.devserver import (PgServer, PgServerError, free_loopback_port,
                                        wait_for_listener)
        from hoopwire.identity.devtoken import create_dev_key, mint_token

        print("LangGraph agent through hoopwire: a throwaway PostgreSQL, the gateway, two people\n")
        db_password = secrets.token_urlsafe(18)
        try:
            pg = PgServer().start()
        except PgServerError as e:
            print(f"cannot start PostgreSQL: {e}", file=sys.stderr)
            return 1
        pg.create_role("shop_app", db_password)
        pg.create_database("shop", owner="shop_app")
        pg.sql("SET ROLE shop_app;\n" + SHOP, dbname="shop")
        api_token = "svc-" + secrets.token_urlsafe(24)
        api = ShopApi(api_token).start()

        key = os.path.join(work, "dev-key.pem")
        jwks = create_dev_key(key, kid="example")
        gw_port, admin_port = free_loopback_port(), free_loopback_port()
        api_gw_port = free_loopback_port()
        cfg = os.path.join(work, "hoopwire.toml")
        with open(cfg, "w") as f:
            f.write(config(pg.port, gw_port, admin_port, jwks, os.path.join(work, "state.db"),
                           api.port, api_gw_port))
        with open(log_path, "wb") as log_file:
            gw = subprocess.Popen([sys.executable, "-m", "hoopwire", "serve", "--config", cfg],
                                  env=dict(os.environ, SHOP_DB_PASSWORD=db_password,
                                           CRM_API_TOKEN=api_token), cwd=ROOT,
                                  stdout=log_file, stderr=subprocess.STDOUT)
        wait_for_listener(gw_port, gw)
        wait_for_listener(api_gw_port, gw)
        wait_for_listener(admin_port, gw)
        admin = f"http://127.0.0.1:{admin_port}"
        print(f"PostgreSQL 127.0.0.1:{pg.port} (shop) <- hoopwire 127.0.0.1:{gw_port} "
              f"(admin API {admin})")
        print(f"CRM API 127.0.0.1:{api.port} <- hoopwire http://127.0.0.1:{api_gw_port}")

        def token(subject: str, groups: list[str], audience: str = AUDIENCE) -> str:
            return mint_token(key, issuer=ISSUER, audience=audience, subject=subject,
                              groups=groups, ttl=900, kid="example")

        # the approver's token is for the admin API, whose audience is its own
        # ([admin] audience, "hoopwire-admin" by default): a database token is no admin token
        agent_token = token("agent-7", ["agents"])
        dana_token = token("dana", ["dba"], audience="hoopwire-admin")
        os.environ["HOOPWIRE_DSN"] = (f"host=127.0.0.1 port={gw_port} dbname=shop user=agent-7 "
                                      f"password={agent_token} sslmode=disable")
        os.environ["HOOPWIRE_API_URL"] = f"http://127.0.0.1:{api_gw_port}"
        os.environ["HOOPWIRE_API_TOKEN"] = agent_token
        print(f"agent's DSN: host=127.0.0.1 port={gw_port} dbname=shop user=agent-7 "
              f"password={agent_token[:12]}...")
        print(f"agent's API: HOOPWIRE_API_URL=http://127.0.0.1:{api_gw_port} "
              f"HOOPWIRE_API_TOKEN={agent_token[:12]}...\n")

        # the agent: the graph in a thread (its delete blocks until a human decides)
        out: dict = {}

        def run_graph() -> None:
            try:
                out["state"] = build_graph().invoke({"task": "tidy up the shop database",
                                                     "steps": []})
            except BaseException as e:  # noqa: BLE001 -- reported by the main thread
                out["error"] = e

        agent = threading.Thread(target=run_graph, name="agent", daemon=True)
        agent.start()

        # the human: dana watches the approvals queue
        approval_id = None
        deadline = time.monotonic() + 60
        while approval_id is None and agent.is_alive() and time.monotonic() < deadline:
            status, body = admin_api(admin, "GET", "/api/v1/approvals?status=pending", dana_token)
            if status != 200:
                print(f"admin API: HTTP {status} {body}", file=sys.stderr)
                return 1
            for req in body["approvals"]:
                print(f"dana sees a pending request {req['id']}: {req['requester']} wants to run\n"
                      f"    {req['statement']}\n    (rule {req['rule']})")
                status, row = admin_api(admin, "POST", f"/api/v1/approvals/{req['id']}/approve",
                                        dana_token, {"reason": "order 7 is a duplicate"})
                if status != 200:
                    print(f"approve: HTTP {status} {row}", file=sys.stderr)
                    return 1
                print(f"dana approves it: {row['status']} by {row['decided_by']} "
                      f"(\"{row['reason']}\")\n")
                approval_id = req["id"]
                break
            else:
                time.sleep(0.1)
        agent.join(30)
        if agent.is_alive() or "error" in out:
            print(f"the graph did not finish: {out.get('error', 'still running')}", file=sys.stderr)
            return 1

        state = out["state"]
        print("The graph's final state:")
        for i, step in enumerate(state["steps"], 1):
            print(f"[{i}] {label(step, approval_id):<17} {step['node']}: {step['statement']}")
            if step["outcome"] == "error":
                print(f"      -> ERROR {step['error']}")
                continue
            for notice in step["notices"]:
                print(f"      notice: {notice}")
            print(f"      -> {step['status']}")
            if step["columns"]:
                print(f"         {' | '.join(step['columns'])}")
                for row in step["rows"]:
                    print(f"         {fmt_row(row)}")
        print(f"summary: {state['summary']}")

        # check on PostgreSQL directly (as its superuser, not through the gateway)
        left = pg.sql("SELECT count(*), count(*) FILTER (WHERE id = 7) FROM orders", dbname="shop")
        total, seven = (int(x) for x in left.split("|"))
        print(f"on PostgreSQL itself: the orders table is still there with {total} rows; "
              f"order 7 {'is gone' if seven == 0 else 'is still there'}")

        # the API's side: every request it got carried its own service token, none the agent's
        leaked = sum(1 for seen in api.seen if agent_token in seen)
        print(f"on the CRM API itself: {len(api.seen)} request(s), each with the gateway's "
              f"service token; the agent's token reached it {leaked} times")

        labels = [label(s, approval_id) for s in state["steps"]]
        expected = ["ALLOWED", "BLOCKED", "MASKED", "HELD -> APPROVED", "MASKED", "BLOCKED"]
        ok = labels == expected and total == 41 and seven == 0 and leaked == 0
        if not ok:
            print(f"unexpected outcome: {labels}", file=sys.stderr)
        return 0 if ok else 1
    except KeyboardInterrupt:
        print("\ninterrupted")
        return 130
    except Exception as e:  # noqa: BLE001
        print(f"error: {e}", file=sys.stderr)
        try:
            with open(log_path, encoding="utf-8", errors="replace") as f:
                sys.stderr.write("gateway log (tail):\n" + "".join(f.readlines()[-20:]))
        except OSError:
            pass
        return 1
    finally:
        if gw is not None and gw.poll() is None:
            gw.terminate()
            try:
                gw.wait(10)
            except subprocess.TimeoutExpired:
                gw.kill()
                gw.wait()
        if pg is not None:
            pg.stop()
        if api is not None:
            api.stop()
        shutil.rmtree(work, ignore_errors=True)
        print("stopped the gateway, PostgreSQL and the API; removed the temporary directory")


if __name__ == "__main__":
    sys.exit(main())
