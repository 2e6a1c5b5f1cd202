"""The demo's HTTP part runs end to end and shows what it promises (as test_demo_mysql.py does for
the MariaDB part): a real JSON API (aiohttp), the real gateway, the standard library's
http.client over TLS -- started the way the README says, `hoopwire demo http`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from helpers import REPO_ROOT


def _answer(out: str, request: str) -> tuple[str, str]:
    """(the tag, the `-> ...` line) printed for the agent's `request` (its first occurrence)."""
    lines = out.splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.strip().split("  ", 1)[-1] == request)
    return lines[at].split()[0], lines[at + 1].strip()


def test_http_demo_runs_and_shows_allowed_blocked_masked_and_held():
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    r = subprocess.run([sys.executable, "-m", "hoopwire", "demo", "http"], capture_output=True,
                       text=True, env=env, timeout=180)
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    assert "hoopwire demo (HTTP)" in out      # the CLI ran the HTTP demo, not PostgreSQL's
    assert "UNEXPECTED" not in out, out       # every step came out as the demo says it does

    # allowed, and answered by the API itself (which takes only its own service token: so the
    # gateway swapped the agent's token for the stored one)
    assert _answer(out, "GET /v1/orders/count") == ("allowed", '-> 200 {"count": 42}')
    tag, line = _answer(out, "GET /v1/orders?customer=1&limit=2")
    assert tag == "allowed" and line.startswith('-> 200 {"orders": [{"id": 3, "customer_id": 1')
    assert _answer(out, "GET /v1/whoami") == (
        "allowed", '-> 200 {"caller": "the gateway\'s service token"}')

    # blocked by the admin-paths pack, also when the path only resolves to it, and by the rule
    # on bulk deletes, also when the DELETE hides in a method-override header
    for request, rule in (("GET /admin/keys", "http-admin-paths"),
                          ("GET /v1/../admin/keys", "http-admin-paths"),
                          ("GET /%61dmin/keys", "http-admin-paths"),
                          ("DELETE /v1/orders", "no-bulk-deletes"),
                          ("POST /v1/orders  (X-HTTP-Method-Override: DELETE)", "no-bulk-deletes")):
        tag, line = _answer(out, request)
        assert tag == "blocked", (request, tag, line)
        assert line.startswith("-> 403 blocked: ") and f'hoopwire rule "{rule}"' in line, line
    assert "sk_live_" not in out                  # the admin key never came back

    # masked: e-mails and passwords by key path, the e-mail in a note by the detector
    tag, line = _answer(out, "GET /v1/users")
    assert tag == "masked" and line.startswith("-> 200 "), line
    users = json.loads(line[len("-> 200 "):])["users"]
    assert [u["name"] for u in users] == ["Ada Lovelace", "Alan Turing", "Grace Hopper"]
    assert all(u["email"] == "****" and u["password"] == "****" for u in users), users
    tag, line = _answer(out, "GET /v1/users/1")
    user = json.loads(line[len("-> 200 "):])["user"]
    assert tag == "masked" and user["note"] == "prefers **** for invoices", user
    for secret in ("ada@example.com", "alan@example.org", "grace@example.net",
                   "a.lovelace@example.net", "analytical-engine-1843", "enigma-bombe-1940"):
        assert secret not in out + r.stderr

    # held until a DBA approved it through the admin API; then the API ran it
    assert "held  DELETE /v1/orders/42" in out and "waiting: approval apr_" in out
    assert '(rule "deletes-need-a-human", approvers: dba)' in out
    assert "approved  by dana through the admin API" in out
    assert 'the agent\'s statement ran: 200 {"deleted": 42}' in out

    assert re.search(r"refused  a tampered token -> 401 \w+", out), out
    assert 'the nightly-etl API key (stored only as its sha256): 200 {"count": 41}' in out
    assert re.search(r"the API was called \d+ times, each with the gateway's service token; the "
                     r"agent's token or API key reached it 0 times", out), out

    # the recorded session: one keep-alive connection's requests, the blocks among them
    assert "The recorded session (hoopwire sessions show" in out
    recorded = [ln.strip() for ln in out.splitlines() if re.match(r"\s*(allow|block|log)\s+#\d", ln)]
    assert any(ln.startswith("block") and "/admin/keys" in ln for ln in recorded), recorded
    assert any(ln.startswith("allow") and "/v1/orders/count" in ln for ln in recorded), recorded
    # three e-mails and three passwords by key path, one e-mail in a note by the detector
    assert any("GET /v1/users\\n" in ln and ln.endswith("(7 values masked)") for ln in recorded), \
        recorded
    assert "hoopwire audit verify -> ok" in out
    assert "hoopwire_guardrail_verdicts_total" in out
    assert "done: stopping" in out
    # every refusal was an answer, never a crash
    assert "Traceback" not in out + r.stderr
