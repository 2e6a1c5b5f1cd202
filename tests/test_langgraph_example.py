"""The LangGraph example (examples/langgraph_agent) runs end to end and tells the seed story:
an allowed query, a blocked DROP, masked customer data, a DELETE held until a human approves it;
then its HTTP tool through the gateway: a masked CRM record and a blocked admin path."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import langgraph.graph  # the example needs it; the suite must not silently skip

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "langgraph_agent")
RUN = os.path.join(EXAMPLE, "run.py")

CLEAR_SECRETS = ["536-22-8741", "412-67-0935", "601-38-2254",
                 "ada@example.com", "alan@example.org", "grace@example.net",
                 # the CRM API's (hoopwire/demo_http.py): a password, an e-mail in free text,
                 # the admin key behind the blocked path
                 "analytical-engine-1843", "a.lovelace@example.net", "sk_live_"]


def test_langgraph_example_runs_the_story():
    p = subprocess.run([sys.executable, RUN], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    out = p.stdout
    assert p.returncode == 0, out + p.stderr

    # allowed: the top customers' rows came back
    step = re.search(r"\[1\] ALLOWED +top_customers:.*?(?=\n\[2\])", out, re.S)
    assert step, out
    for name in ("Ada Lovelace", "Grace Hopper", "Alan Turing"):
        assert name in step.group(0)
    assert "-> SELECT 3" in step.group(0)

    # blocked, by name, and the graph went on
    assert re.search(r"\[2\] BLOCKED +drop_old_orders: DROP TABLE orders\n"
                     r" +-> ERROR 42501: statement blocked by hoopwire rule \"destructive-ddl\"",
                     out), out

    # masked: partial SSNs and redacted e-mails; nothing in the clear anywhere
    assert re.search(r"\[3\] MASKED +customer_contacts:", out), out
    assert "1 | Ada Lovelace | **** | *******8741" in out
    assert "3 | Grace Hopper | **** | *******2254" in out
    for secret in CLEAR_SECRETS:
        assert secret not in out + p.stderr

    # held, shown to the human with literals masked, approved, then executed
    m = re.search(r"dana sees a pending request (apr_[0-9a-f]+): agent-7 wants to run\n"
                  r" +DELETE FROM orders WHERE id = \?\n +\(rule deletes-need-a-human\)", out)
    assert m, out
    assert "dana approves it: approved by dana" in out
    held = re.search(r"\[4\] HELD -> APPROVED +delete_order: DELETE FROM orders WHERE id = 7\n"
                     r" +notice: statement held for approval (apr_[0-9a-f]+).*\n +-> DELETE 1\n",
                     out)
    assert held and held.group(1) == m.group(1), out
    assert "order 7 is gone" in out and "still there with 41 rows" in out

    # the HTTP tool, through the gateway with the agent's token: the CRM record comes back with
    # its e-mail (key path), password (key path) and the e-mail in its note (detector) masked
    crm = re.search(r"\[5\] MASKED +crm_profile: GET /v1/users/1\n +-> HTTP 200\n +body\n +(.*)\n",
                    out)
    assert crm, out
    user = json.loads(crm.group(1))["user"]
    assert user["name"] == "Ada Lovelace" and user["plan"] == "pro"
    assert user["email"] == "****" and user["password"] == "****", user
    assert user["note"] == "prefers **** for invoices", user
    # an admin path: refused by the gateway's pack, with a JSON error naming the rule
    assert re.search(r"\[6\] BLOCKED +api_keys: GET /admin/keys\n +-> ERROR 403 blocked: "
                     r".*hoopwire rule \"http-admin-paths\"", out), out
    assert "summary: 6 statements and requests: 4 succeeded, 2 failed (drop_old_orders, api_keys)" \
        in out
    # the API saw the gateway's stored credential on every request, never the agent's token
    assert re.search(r"on the CRM API itself: [1-9]\d* request\(s\), each with the gateway's "
                     r"service token; the agent's token reached it 0 times", out), out
    assert "removed the temporary directory" in out


def test_the_graph_is_plain_langgraph_and_psycopg():
    """The graph knows nothing of the gateway: its DSN is the only difference."""
    sys.path.insert(0, EXAMPLE)
    try:
        import agent
    finally:
        sys.path.remove(EXAMPLE)
    nodes = set(agent.build_graph().get_graph().nodes)
    assert {"plan", "top_customers", "drop_old_orders", "customer_contacts", "delete_order",
            "crm_profile", "api_keys", "summarize", langgraph.graph.START,
            langgraph.graph.END} <= nodes
    with open(agent.__file__, encoding="utf-8") as f:
        source = f.read()
    assert not re.search(r"^\s*(from|import) hoopwire", source, re.M)
    assert 'os.environ.get("HOOPWIRE_DSN")' in source
    # the HTTP tool: a base URL and a bearer token, nothing gateway-specific
    assert 'os.environ.get("HOOPWIRE_API_URL")' in source
    assert 'os.environ.get("HOOPWIRE_API_TOKEN")' in source
