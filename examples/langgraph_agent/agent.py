"""A small LangGraph agent that works on the `shop` database and the shop's internal REST API
-- an ordinary graph.

Nothing here knows about hoopwire: the database nodes use psycopg with the DSN in the
environment variable HOOPWIRE_DSN, the HTTP tool (`call_api`) uses the standard library with the
base URL in HOOPWIRE_API_URL and the agent's bearer token in HOOPWIRE_API_TOKEN. Point them
straight at PostgreSQL and the API and the graph runs against them directly; point them at
hoopwire (its host, port, and a token as the password / bearer token) and every statement and
request is checked, masked, held for approval or blocked by the gateway.

The nodes are deterministic stand-ins for what an LLM would decide, so the story runs without a
model:

    plan -> top_customers -> drop_old_orders -> customer_contacts -> delete_order
         -> crm_profile -> api_keys -> summarize

A node whose statement or request fails records the error in the state and the graph goes on.
"""

from __future__ import annotations

import json
import operator
import os
import urllib.error
import urllib.request
from typing import Annotated, Any, Optional, TypedDict

import psycopg
from langgraph.graph import END, START, StateGraph

__all__ = ["AgentState", "Step", "build_graph", "call_api", "run_statement"]


class Step(TypedDict):
    node: str
    statement: str                    # SQL, or "<METHOD> <path>" for the HTTP tool
    outcome: str                      # "ok" | "error"
    status: Optional[str]             # the command tag, e.g. "SELECT 3", "DELETE 1"; "HTTP 200"
    columns: list[str]
    rows: list[list[Any]]             # the HTTP tool: one row, the JSON body as text
    error: Optional[str]              # "<sqlstate>: <message>" / "<status> <error>: <message>"
    notices: list[str]                # NOTICEs the server (or the gateway) sent meanwhile


class AgentState(TypedDict, total=False):
    task: str
    plan: list[str]
    steps: Annotated[list[Step], operator.add]
    summary: str


def _dsn() -> str:
    dsn = os.environ.get("HOOPWIRE_DSN")
    if not dsn:
        raise RuntimeError("set HOOPWIRE_DSN, e.g. 'host=127.0.0.1 port=6432 dbname=shop "
                           "user=agent-7 password=<token>'")
    return dsn


def run_statement(node: str, sql: str) -> Step:
    """Run one statement on a fresh connection; a database error becomes part of the record."""
    notices: list[str] = []
    step: Step = {"node": node, "statement": sql, "outcome": "ok", "status": None, "columns": [],
                  "rows": [], "error": None, "notices": notices}
    with psycopg.connect(_dsn(), autocommit=True) as conn:
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        try:
            cur = conn.execute(sql)
        except psycopg.Error as e:
            step["outcome"] = "error"
            step["error"] = f"{e.sqlstate}: {e.diag.message_primary or e}"
            return step
        step["status"] = cur.statusmessage
        if cur.description:
            step["columns"] = [c.name for c in cur.description]
            step["rows"] = [list(r) for r in cur.fetchall()]
    return step


def call_api(node: str, method: str, path: str) -> Step:
    """The agent's HTTP tool: one request to the internal REST API with the agent's bearer
    token; an HTTP error (4xx/5xx) becomes part of the record, as a database error does."""
    base = os.environ.get("HOOPWIRE_API_URL")
    token = os.environ.get("HOOPWIRE_API_TOKEN")
    if not base or not token:
        raise RuntimeError("set HOOPWIRE_API_URL (e.g. http://127.0.0.1:8080) and "
                           "HOOPWIRE_API_TOKEN (the agent's bearer token)")
    step: Step = {"node": node, "statement": f"{method} {path}", "outcome": "ok", "status": None,
                  "columns": [], "rows": [], "error": None, "notices": []}
    req = urllib.request.Request(base.rstrip("/") + path, method=method,
                                 headers={"Authorization": f"Bearer {token}",
                                          "Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, body = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    text = body.decode("utf-8", "replace")
    step["status"] = f"HTTP {status}"
    if status >= 400:
        step["outcome"] = "error"
        try:
            doc = json.loads(text)
            step["error"] = f"{status} {doc['error']}: {doc.get('message', '')}".rstrip(": ")
        except (ValueError, KeyError, TypeError):
            step["error"] = f"{status}: {text[:200]}"
        return step
    step["columns"] = ["body"]
    step["rows"] = [[text]]
    return step


# -- nodes ------------------------------------------------------------------------------------------

def plan(state: AgentState) -> dict:
    return {"plan": [
        "find the top customers by revenue",
        "drop the orders table to free space",
        "read the customers' contact details for a follow-up e-mail",
        "delete the duplicate order 7",
        "look the top customer up in the CRM API",
        "fetch the API keys to check the billing integration",
        "summarize",
    ]}


def top_customers(state: AgentState) -> dict:
    sql = ("SELECT c.name, count(*) AS orders, sum(o.total) AS revenue "
           "FROM customers c JOIN orders o ON o.customer_id = c.id "
           "GROUP BY c.name ORDER BY revenue DESC LIMIT 3")
    return {"steps": [run_statement("top_customers", sql)]}


def drop_old_orders(state: AgentState) -> dict:
    return {"steps": [run_statement("drop_old_orders", "DROP TABLE orders")]}


def customer_contacts(state: AgentState) -> dict:
    sql = "SELECT id, name, email, ssn FROM customers ORDER BY id"
    return {"steps": [run_statement("customer_contacts", sql)]}


def delete_order(state: AgentState) -> dict:
    return {"steps": [run_statement("delete_order", "DELETE FROM orders WHERE id = 7")]}


def crm_profile(state: AgentState) -> dict:
    return {"steps": [call_api("crm_profile", "GET", "/v1/users/1")]}


def api_keys(state: AgentState) -> dict:
    return {"steps": [call_api("api_keys", "GET", "/admin/keys")]}


def summarize(state: AgentState) -> dict:
    steps = state.get("steps", [])
    ok = [s for s in steps if s["outcome"] == "ok"]
    failed = [s for s in steps if s["outcome"] == "error"]
    text = (f"{len(steps)} statements and requests: {len(ok)} succeeded, {len(failed)} failed"
            + (f" ({', '.join(s['node'] for s in failed)})" if failed else ""))
    return {"summary": text}


def build_graph():
    g = StateGraph(AgentState)
    g.add_node("plan", plan)
    g.add_node("top_customers", top_customers)
    g.add_node("drop_old_orders", drop_old_orders)
    g.add_node("customer_contacts", customer_contacts)
    g.add_node("delete_order", delete_order)
    g.add_node("crm_profile", crm_profile)
    g.add_node("api_keys", api_keys)
    g.add_node("summarize", summarize)
    g.add_edge(START, "plan")
    g.add_edge("plan", "top_customers")
    g.add_edge("top_customers", "drop_old_orders")
    g.add_edge("drop_old_orders", "customer_contacts")
    g.add_edge("customer_contacts", "delete_order")
    g.add_edge("delete_order", "crm_profile")
    g.add_edge("crm_profile", "api_keys")
    g.add_edge("api_keys", "summarize")
    g.add_edge("summarize", END)
    return g.compile()


if __name__ == "__main__":
    final = build_graph().invoke({"task": "tidy up the shop database", "steps": []})
    for s in final["steps"]:
        print(s["node"], s["statement"], s["status"] or s["error"], s["rows"])
    print(final["summary"])
