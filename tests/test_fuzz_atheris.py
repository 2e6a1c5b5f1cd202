"""Time-bounded atheris runs of every fuzz harness (fuzz/fuzz_*.py): `pytest -m fuzz`.

Not in the default run (the `fuzz` marker is excluded by addopts). Each harness runs as its
own process -- libFuzzer owns the process and exits on the first failure -- for
HOOPWIRE_FUZZ_SECONDS (default 60) seconds, starting from the seed corpus kept in
fuzz/corpus/<harness>/. libFuzzer adds every input that finds new coverage to its first corpus
directory, so it is given a temporary copy: the kept corpus never grows during a run (grow it
on purpose with -merge, see fuzz/README.md). A failed property or an unexpected exception
fails the test; libFuzzer writes the input to fuzz/crashes/<harness>-crash-<sha1> (or
-timeout-/-oom-), which the failure message names. Needs atheris: pip install -e '.[fuzz]'.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.fuzz

ROOT = pathlib.Path(__file__).resolve().parent.parent
FUZZ = ROOT / "fuzz"
CRASHES = FUZZ / "crashes"
SECONDS = int(os.environ.get("HOOPWIRE_FUZZ_SECONDS", "60"))
HARNESSES = sorted(p.stem for p in FUZZ.glob("fuzz_*.py"))
# the kinds of file libFuzzer writes for a failing input (slow units are not failures, and
# -report_slow_units below keeps it from writing them at all)
FINDINGS = ("crash-", "timeout-", "oom-", "leak-")


def _env() -> dict:
    env = dict(os.environ)
    # This checkout, not whichever one an editable install points at (so a copy of the
    # repository fuzzes its own code); after anything already on PYTHONPATH, so an
    # instrumented build put there (fuzz/README.md) still wins.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(ROOT)) if p)
    return env


def test_every_harness_has_a_seed_corpus():
    for name in HARNESSES:
        assert any((FUZZ / "corpus" / name).iterdir()), f"fuzz/corpus/{name}/ is empty"


@pytest.mark.timeout(SECONDS + 180)
@pytest.mark.parametrize("name", HARNESSES)
def test_atheris_finds_nothing(name, tmp_path):
    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    shutil.copytree(FUZZ / "corpus" / name, corpus)
    CRASHES.mkdir(exist_ok=True)
    before = set(CRASHES.iterdir())
    cmd = [sys.executable, str(FUZZ / f"{name}.py"), str(corpus),
           f"-max_total_time={SECONDS}",
           f"-artifact_prefix={CRASHES}{os.sep}{name}-",
           "-timeout=30",                      # one input taking 30 s is a hang: a finding
           "-report_slow_units=1000000",       # no slow-unit-* files in fuzz/crashes/
           "-rss_limit_mb=3072",
           "-print_final_stats=1"]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=_env(), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, errors="replace",
                              timeout=SECONDS + 150)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{name} ran past its time limit\n{(e.stderr or '')[-3000:]}")
    found = sorted(str(p.relative_to(ROOT)) for p in set(CRASHES.iterdir()) - before
                   if any(k in p.name for k in FINDINGS))
    log = proc.stderr[-6000:]
    assert proc.returncode == 0 and not found, (
        f"{name} found a failing input (exit {proc.returncode}); reproducers: {found}; "
        f"replay: python fuzz/{name}.py <reproducer>\n{log}")
    # the run really fuzzed: libFuzzer reports how many inputs it executed
    assert "stat::number_of_executed_units" in proc.stderr, log
