"""The demo's MariaDB part runs end to end and shows what it promises (as test_demo.py does for
the PostgreSQL part): a real MariaDB, the real gateway, PyMySQL over TLS -- started the way the
README says, `hoopwire demo mysql`."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import REPO_ROOT


def test_mysql_demo_runs_and_shows_allowed_blocked_masked_and_held():
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    r = subprocess.run([sys.executable, "-m", "hoopwire", "demo", "mysql"], capture_output=True,
                       text=True, env=env, timeout=180)
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    assert "allowed  SELECT COUNT(*) FROM orders\n          -> (42,)" in out
    assert "-> ('Ada Lovelace', Decimal('2442.65'))" in out   # a join the masker leaves alone
    assert "blocked  DROP TABLE orders" in out and 'rule "destructive-ddl"' in out
    assert 'rule "unbounded-write"' in out and 'rule "server-side-io"' in out
    # what the server would run as DROP TABLE, hidden in an executable comment, and after `#`
    lines = out.splitlines()
    for evasion in ("/*!50000 DrOp */ TaBlE `customers`", "# just a comment\\nDROP TABLE orders"):
        at = next(i for i, ln in enumerate(lines) if evasion in ln)
        # refused by the gateway's rule, not merely by the server (shop_app holds no DROP)
        assert lines[at].lstrip().startswith("blocked"), lines[at:at + 2]
        assert 'hoopwire rule "destructive-ddl"' in lines[at + 1], lines[at:at + 2]
    assert "allowed  SELECT 'drop table orders' AS just_a_string" in out
    # the column rule through an alias (partial, last 4 kept), the e-mail found by a detector
    assert "masked  SELECT name, email, ssn AS tax_id" in out
    assert "('Ada Lovelace', '****', '*******6789')" in out
    assert "ada@example.com" not in out and "123-45-6789" not in out and "6789'," not in out
    # an expression over ssn has no column name in its metadata: lineage masks it whole
    assert "masked  SELECT CONCAT(name, ' / ', ssn) AS who FROM customers WHERE id = 1\n" \
           "          -> ('****',)" in out
    assert "held  DELETE FROM orders WHERE id = 42" in out and "waiting: approval apr_" in out
    assert "approved  by dana through the admin API" in out and "1 row deleted" in out
    assert "refused  a tampered token -> ERROR 1045" in out
    assert "the nightly-etl API key (stored only as its sha256): 3 customers" in out
    assert "hoopwire audit verify -> ok" in out
    recorded = [ln for ln in lines if "TaBlE `customers`" in ln and " #" in ln]
    assert len(recorded) == 1 and recorded[0].lstrip().startswith("block"), recorded
    assert "hoopwire_guardrail_verdicts_total" in out
    assert "done: stopping" in out
    assert "hoopwire demo (MariaDB)" in out      # the CLI ran the MariaDB demo, not PostgreSQL's
    # every refusal was an answer, never a crash
    assert "Traceback" not in out + r.stderr
