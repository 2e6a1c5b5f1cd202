"""bench/pgbench_compare.py --pool: rounds pair within the run that made them, then pool."""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "bench", "pgbench_compare.py")
VARIANT = {"script": "select-only", "mode": "simple", "clients": 8, "threads": 2}


def _run_file(path, targets):
    """A --json file as pgbench_compare writes it: {target: [(tps, cpu) or None per round]}."""
    results = [{"variant": VARIANT, "target": t,
                "runs": [None if r is None else {"tps": r[0], "latency_ms": 0.4, "failed": 0,
                                                 "transactions": 1000, "proxy_cpu_us": r[1]}
                         for r in runs]}
               for t, runs in targets.items()]
    with open(path, "w") as f:
        json.dump({"args": {}, "results": results}, f)


def test_pool_pairs_rounds_within_each_run(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    # run a: the recording gateway at 0.90 of plain in every round; run b: at 1.00, with one
    # failed round that must drop out rather than shift the pairing
    _run_file(a, {"hoopwire": [(100.0, 20.0), (200.0, 20.0), (50.0, 20.0)],
                  "hoopwire-audit": [(90.0, 22.0), (180.0, 22.0), (45.0, 22.0)]})
    _run_file(b, {"hoopwire": [(300.0, 21.0), None, (150.0, 21.0)],
                  "hoopwire-audit": [(300.0, 23.0), (999.0, 23.0), (150.0, 23.0)]})
    out = subprocess.run([sys.executable, SCRIPT, "--pool", str(a), str(b)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "pooled over 2 runs" in out.stdout
    line = next(ln for ln in out.stdout.splitlines() if "hoopwire-audit / hoopwire" in ln)
    # 5 paired rounds: 0.9 three times, 1.0 twice
    assert "5 rounds, median 0.900" in line
    assert "share of rounds >= 0.95 0.40" in line
    assert "CPU +2.00 us/tx" in line


def test_pool_without_a_baseline_says_so(tmp_path):
    a = tmp_path / "a.json"
    _run_file(a, {"direct": [(100.0, None)], "pgbouncer": [(90.0, 5.0)]})
    out = subprocess.run([sys.executable, SCRIPT, "--pool", str(a)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "no rounds with both hoopwire" in out.stdout
