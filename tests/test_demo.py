"""The README's demo command runs end to end and shows what it promises."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import REPO_ROOT


def test_demo_runs_and_shows_allowed_blocked_masked_and_held():
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    r = subprocess.run([sys.executable, "-m", "hoopwire", "demo"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "allowed  SELECT count(*) FROM orders" in out
    # the gateway's role has the README's recommended grant set (test_posture.py checks it)
    assert "check-config --connect (what shop_app itself may do) -> 0 error(s), 0 finding(s)" in out
    assert 'blocked  DROP TABLE orders' in out and 'rule "destructive-ddl"' in out
    assert 'rule "unbounded-write"' in out and 'rule "server-side-io"' in out
    assert "masked  SELECT name, email, ssn AS tax_id" in out
    assert "'*******6789'" in out and "ada@example.com" not in out and "123-45-6789" not in out
    assert "held  DELETE FROM orders WHERE id = 42" in out and "waiting: approval apr_" in out
    assert "approved  by dana through the admin API" in out and "DELETE 1" in out
    assert "hoopwire audit verify -> ok" in out
    assert "refused  a tampered token" in out
    assert "hoopwire_guardrail_verdicts_total" in out
    assert "done: stopping" in out
