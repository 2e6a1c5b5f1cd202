#!/usr/bin/env python3
"""How long the event loop stalls while the masking thread masks a big JSON body (issue 21).

The relay masks a gathered body over OFFLOAD_BYTES in one thread (hoopwire.http.relay
_mask_thread); the thread still needs the GIL, and C code that never lets it go stops the
loop for as long as it runs. Here an asyncio loop spins (`await asyncio.sleep(0)`) while the
thread runs mask_json on ~7 MiB of rows, and the largest gaps between the loop's iterations are
printed: a small request arriving then waits about that long. Also the thread's CPU for the
parse alone, orjson.dumps and the whole mask_json (best of 3).

    python bench/http_mask_loop_stall.py

What it showed (three runs at load average 7-9 on 2 cores, so wall times are inflated):
orjson's parse of 7.1 MiB took 82-102 ms of CPU and held the loop for 336-528 ms in one piece
(it builds Python objects, so it cannot release the GIL); the C walk yields every 256
containers, yet with detectors the largest gaps were 200-260 ms (the strings gathered for the
scan, the scan, the write). Cutting them needs a parse that builds no Python objects (a
byte-level walk that can drop the GIL) or a masking process rather than a thread: not done.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import orjson

from hoopwire.config import MaskConfig
from hoopwire.http.jsonmask import JsonMasker
from hoopwire.masking import MaskEngine

ROWS = 200_000
PATHS = MaskConfig(paths=("$.rows[*].v",), strategy="redact")
DETECTORS = MaskConfig(detectors=("EMAIL",), strategy="redact")


def _cpu_ms(fn, n: int = 3) -> float:
    best = 1e9
    for _ in range(n):
        t = time.thread_time()
        fn()
        best = min(best, time.thread_time() - t)
    return round(best * 1e3, 1)


async def _gaps(ex, fn) -> list[float]:
    """The four largest gaps (ms) between loop iterations while fn runs in the thread."""
    loop = asyncio.get_running_loop()
    fut = loop.run_in_executor(ex, fn)
    gaps = []
    last = time.perf_counter()
    while not fut.done():
        await asyncio.sleep(0)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
    gaps.sort()
    return [round(g * 1e3, 1) for g in gaps[-4:][::-1]]


async def main() -> None:
    body = orjson.dumps({"rows": [{"v": f"val{i:07d}", "w": i, "m": "x"} for i in range(ROWS)]})
    print(f"body {len(body) / 2**20:.2f} MiB")
    ex = ThreadPoolExecutor(1)
    loop = asyncio.get_running_loop()
    for name, masks in (("paths", (PATHS,)), ("detectors", (DETECTORS,)),
                        ("both", (PATHS, DETECTORS))):
        m = JsonMasker(masks, MaskEngine(masks, hash_key=b"bench"), 16 << 20, timeout=0)

        def run(m=m):
            return m.mask_json(body, 0.0, offloaded=True)

        await loop.run_in_executor(ex, run)          # the thread's Scanner compiled
        cpu = await loop.run_in_executor(ex, _cpu_ms, run)
        print(f"{name:10s} mask_json CPU {cpu} ms, largest loop gaps ms {await _gaps(ex, run)}")
    print(f"parse alone: CPU {_cpu_ms(lambda: orjson.loads(body))} ms, "
          f"largest loop gaps ms {await _gaps(ex, lambda: orjson.loads(body))}")
    doc = orjson.loads(body)
    print(f"orjson.dumps CPU {_cpu_ms(lambda: orjson.dumps(doc))} ms")


if __name__ == "__main__":
    asyncio.run(main())
