"""What the bench scripts share: throwaway processes that are stopped whatever happens, the CPU
and memory of a process tree and the machine's busy time from /proc (so a report can say how
much of the machine others took during a run), and the medians and per-round ratios the
reports are made of. Used by pgbench_compare, sysbench_compare, wrk_compare and masking_e2e.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time
from typing import Callable, Iterable, Optional, TypeVar

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
for _p in (os.path.join(REPO_ROOT, "tests"), REPO_ROOT):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from helpers import wait_port  # noqa: E402  (tests/helpers.py)

T = TypeVar("T")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# processes

class Service:
    """A long-running child process with its output in a log file; its own process group, so
    that a stop reaches whatever it forked (nginx and PgBouncer workers) too."""

    def __init__(self, name: str, cmd: list[str], workdir: str, port: int, timeout: float = 20):
        self.name, self.port, self.workdir = name, port, workdir
        self.logfile = os.path.join(workdir, f"{name}.log")
        with open(self.logfile, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, cwd=workdir,
                                         start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    wait_port("127.0.0.1", port, timeout=0.2)
                    break
                except TimeoutError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{name} is not listening on {port}:\n{self.log_tail()}")
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 30) -> str:
        with open(self.logfile, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def run_main(main: Callable[[], int]) -> None:
    """A bench script's entry point. SIGTERM (and SIGINT, even when the script was started with
    it ignored, as a background job of a shell script is) unwinds like Ctrl-C, so the ExitStack
    in main() stops every process it started; exit status 130 then."""
    def on_sigterm(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted; everything started here has been stopped")
        sys.exit(130)


# ------------------------------------------------------------------------------------------------
# CPU and memory from /proc

def _tree(pid: int) -> Iterable[int]:
    """A process and its descendants (gateway workers, nginx workers), those alive now."""
    todo = [pid]
    while todo:
        p = todo.pop()
        yield p
        with contextlib.suppress(OSError, ValueError):
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its descendants, in seconds."""
    total = 0
    for p in _tree(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def tree_rss_kib(pid: int) -> int:
    """VmRSS of a process and its descendants, in KiB."""
    total = 0
    for p in _tree(pid):
        with contextlib.suppress(OSError, ValueError):
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
    return total


def machine_busy_seconds() -> float:
    """All CPUs' busy time since boot, in seconds, counted the way a process's utime + stime
    are: user, nice, system, irq and softirq (/proc/stat's first line). With tick-based
    accounting (CONFIG_TICK_CPU_ACCOUNTING, no IRQ_TIME_ACCOUNTING: this machine's kernel) a
    tick that lands in softirq -- where loopback packets are delivered -- is charged to the
    running task's stime too, so leaving irq/softirq out here would hide our own traffic from
    the machine's side and not from ours. Idle, iowait and steal are no one's."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in f.readline().split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def load_average() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


class CpuWindow:
    """The CPU seconds of some named process trees, and the machine's busy time, over one
    window: CpuWindow(proxy=pid, server=pid) opens it, close() ends it. A pid of None is not
    sampled (used() is None for it)."""

    def __init__(self, **pids: Optional[int]):
        self.pids = pids
        self._before = self._sample()
        self._t0 = time.monotonic()
        self._after: Optional[tuple[dict[str, Optional[float]], float]] = None
        self.seconds = 0.0

    def _sample(self) -> tuple[dict[str, Optional[float]], float]:
        return ({name: tree_cpu_seconds(pid) if pid else None for name, pid in self.pids.items()},
                machine_busy_seconds())

    def close(self) -> "CpuWindow":
        self._after = self._sample()
        self.seconds = time.monotonic() - self._t0
        return self

    def used(self, name: str) -> Optional[float]:
        before, after = self._before[0][name], self._after[0][name]
        return None if before is None or after is None else after - before

    def others(self, also_ours: float = 0.0) -> float:
        """CPUs' worth of time the machine was busy outside the named trees (and `also_ours`,
        e.g. a client's CPU from its rusage) during the window: other people's load."""
        ours = sum(u for u in map(self.used, self.pids) if u is not None) + also_ours
        busy = self._after[1] - self._before[1]
        return max(0.0, busy - ours) / self.seconds if self.seconds > 0 else 0.0


# ------------------------------------------------------------------------------------------------
# statistics

def median_or_none(values: Iterable[Optional[float]]) -> Optional[float]:
    values = [x for x in values if x is not None]
    return statistics.median(values) if values else None


def paired(results: dict[str, list[Optional[T]]], target: str, base: str) -> list[tuple[T, T]]:
    """The rounds in which both `target` and `base` ran (results: target -> one run or None
    per round): (target's run, base's run) per round."""
    return [(a, b) for a, b in zip(results.get(target, []), results.get(base, []))
            if a is not None and b is not None]


def ratios(results: dict[str, list[Optional[T]]], target: str, base: str,
           value: Callable[[T], float] = lambda r: r.tps) -> list[float]:
    """value(target's run) / value(base's run) per round in which both ran (TPS by default).
    Taken within a round, where the runs are seconds apart, a ratio cancels most of the
    machine's drift between rounds; the report then takes the median."""
    return [value(a) / value(b) for a, b in paired(results, target, base) if value(b) > 0]


def median_interval(values: list[float], level: float = 0.95, draws: int = 4000) -> tuple[float, float]:
    """A bootstrap interval for the median of `values` (seeded: the same runs print the same)."""
    rng = random.Random(0)
    meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(draws))
    cut = int(draws * (1 - level) / 2)
    return meds[cut], meds[draws - 1 - cut]


def fmt(value: Optional[float], spec: str) -> str:
    """`spec` as in format(); a missing value is a right-aligned '-' of the same width."""
    width = int(re.match(r"\d*", spec).group() or 0)
    return "-".rjust(width) if value is None else format(value, spec)
