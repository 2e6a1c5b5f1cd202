"""Limits on cancel requests, whatever the protocol: a token bucket per source address
(`CancelLimiter`), and one log line per burst of drops rather than one per packet (`LogBurst`).

A cancel request arrives unauthenticated (PostgreSQL's CancelRequest; MySQL's KILL QUERY comes
on a connection of its own too), so these bound what a sprayer costs the gateway before any key
is looked at.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict

__all__ = ["CancelLimiter", "LogBurst", "source_of", "CANCEL_BURST", "CANCEL_RATE",
           "CANCEL_ADDRESSES"]

# A client cancels a statement it gave up on: psql's ^C, a driver's timeout. 20 in a row and 5 a
# second after that is far above what one client host does (a cancel follows a statement that
# ran for a while; the tests' busiest client sends 12, each a few hundred ms apart) and far below
# a spray (one sequential loopback client sent 685 a second, measured against --workers 2: 946
# of 1000 were dropped by the buckets). Each worker keeps its own buckets (a cancel lands on any
# of them), so with --workers N an address gets up to N times this.
CANCEL_BURST = 20
CANCEL_RATE = 5.0               # tokens a second
# Source addresses remembered at once: 250 bytes each (tracemalloc), so 4096 cost 1 MiB. An
# attacker who cycles through more addresses than this evicts the oldest and starts them afresh;
# that spray still never reaches the upstream (unknown keys are dropped) -- the bucket bounds
# the gateway's own work per address, not the attacker's address count.
CANCEL_ADDRESSES = 4096


def source_of(peer: str) -> str:
    """The bucket a peer ("host:port") counts against: its address, and for IPv6 its /64 (one
    host usually holds a whole /64, so a per-address bucket would be 2^64 buckets)."""
    host = peer.rpartition(":")[0] or peer
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class CancelLimiter:
    """A token bucket per source, the least recently seen sources forgotten first."""

    def __init__(self, burst: int = CANCEL_BURST, rate: float = CANCEL_RATE,
                 capacity: int = CANCEL_ADDRESSES, clock=time.monotonic):
        self.burst, self.rate, self.capacity, self._clock = burst, rate, capacity, clock
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()   # source -> [tokens, at]

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, source: str) -> bool:
        now = self._clock()
        b = self._buckets.get(source)
        if b is None:
            if len(self._buckets) >= self.capacity:
                self._buckets.popitem(last=False)
            b = self._buckets[source] = [float(self.burst), now]
        else:
            self._buckets.move_to_end(source)
            b[0] = min(float(self.burst), b[0] + (now - b[1]) * self.rate)
            b[1] = now
        if b[0] < 1.0:
            return False
        b[0] -= 1.0
        return True


class LogBurst:
    """One log line per burst of one kind of drop: the first drop is told, the ones in the next
    `window` seconds only counted, and the first after it is told with how many were not."""

    def __init__(self, window: float = 10.0, clock=time.monotonic):
        self.window, self._clock = window, clock
        self._state: dict[str, list] = {}    # kind -> [told at, drops not told since]

    def note(self, kind: str) -> int | None:
        """None: stay quiet; a number: log now, and say this many were left out before it."""
        now = self._clock()
        s = self._state.get(kind)
        if s is None or now - s[0] >= self.window:
            quiet = 0 if s is None else s[1]
            self._state[kind] = [now, 0]
            return quiet
        s[1] += 1
        return None
