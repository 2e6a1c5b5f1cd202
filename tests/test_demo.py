"""The README's demo command runs end to end and shows what it promises."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import REPO_ROOT


def test_demo_runs_and_shows_allowed_blocked_and_refused():
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    r = subprocess.run([sys.executable, "-m", "hoopwire", "demo"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "allowed  SELECT count(*) FROM orders" in out
    assert 'blocked  DROP TABLE orders' in out and 'rule "destructive-ddl"' in out
    assert 'rule "unbounded-write"' in out and 'rule "server-side-io"' in out
    assert "allowed  DELETE FROM orders WHERE id = 42" in out
    assert "refused  a tampered token" in out
    assert "hoopwire_guardrail_verdicts_total" in out
    assert "done: stopping" in out
