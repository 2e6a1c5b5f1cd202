"""What `WebhookSender.publish()` costs the approval path that calls it.

    python -m pytest bench/test_bench_webhooks.py --benchmark-only -q -p no:cacheprovider -s

publish() runs on the gateway's event loop, inline in the code that holds or decides a
statement, so it must stay a queue append (the sender's docstring promises "never blocks").
tests/test_webhooks.py used to assert its cost (mean under 50 us, p99 under 0.5 ms) with a
stopwatch inside the test; on a loaded machine that measured the machine, so the figure lives
here instead. Two paths, each with 1, 3 and 10 subscribed hooks, 1,000 publishes per round on
a sender that is never started (no worker drains the queues, nothing goes on the network):

    accepted  every queue has room: the copy of the data and one append per hook
    dropped   every queue is full: counted and dropped (the one warning per overflow is
              logged in the set-up, before the clock starts)

Each benchmark reports ns per publish() in extra_info, from the fastest round (the cost
undisturbed by other processes; the median is kept beside it); a table is printed at the end
(use -s to see it).
"""

from __future__ import annotations

import logging

import pytest

from hoopwire.approvals.webhooks import WebhookSender
from hoopwire.config import WebhookConfig

N = 1000
EVENT = "approval.created"
DATA = {"id": "apr_5f0c2a9e", "status": "pending", "requester": "agent-7",
        "connection": "prod-pg", "rule": "deletes-need-a-human",
        "statement": "DELETE FROM orders WHERE id = ?", "expires_at": 1_900_000_000.0}
RESULTS: dict[tuple[str, int], tuple[float, float]] = {}


@pytest.fixture(autouse=True, scope="module")
def quiet_sender_log():
    # the overflow warning would otherwise go to the terminal once per round
    logger = logging.getLogger("hoopwire.approvals.webhooks")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


def _sender(hooks: int, full: bool) -> WebhookSender:
    cfgs = [WebhookConfig(url=f"http://127.0.0.1:9/hook{i}") for i in range(hooks)]
    sender = WebhookSender(cfgs, queue_size=1 if full else N)
    if full:
        sender.publish(EVENT, DATA)     # each queue now holds its one item
        sender.publish(EVENT, DATA)     # the first drop, and its log line, happen here
    return sender


def _run(sender: WebhookSender) -> None:
    publish = sender.publish
    for _ in range(N):
        publish(EVENT, DATA)


@pytest.mark.parametrize("hooks", [1, 3, 10])
@pytest.mark.parametrize("path", ["accepted", "dropped"])
def test_publish(benchmark, path, hooks):
    full = path == "dropped"
    benchmark.pedantic(_run, setup=lambda: ((_sender(hooks, full),), {}), rounds=50,
                       iterations=1, warmup_rounds=2)
    best = benchmark.stats.stats.min / N * 1e9
    median = benchmark.stats.stats.median / N * 1e9
    benchmark.extra_info.update({"ns_per_publish": round(best), "median_ns": round(median)})
    RESULTS[(path, hooks)] = (best, median)


def teardown_module(_module) -> None:
    if not RESULTS:
        return
    print("\n\npublish() cost, ns per call (fastest round / median round)")
    print(f"{'path':<10}{'hooks':>6}{'fastest':>10}{'median':>10}")
    for (path, hooks), (best, median) in sorted(RESULTS.items()):
        print(f"{path:<10}{hooks:>6}{best:>10.0f}{median:>10.0f}")
