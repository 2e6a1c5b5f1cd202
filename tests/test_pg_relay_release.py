"""What the PostgreSQL relay keeps of a read once it has written it: nothing.

A masked read reaches the client as pieces: memoryviews into the received chunk for what
passes unchanged and the rewritten rows. A session's objects refer to each other (relay, its
two sides, the results tracker, the masker), so whatever a side still holds when the session
ends waits for the cyclic collector's full pass, which can be hundreds of sessions away: with
the last read's pieces kept, the masking gateway's RSS grew by about 175 KiB per 50,000-row
read (bench/README.md, masking_e2e.py --soak). Driven in-process (tests/relaywire.py).
"""

from __future__ import annotations

import sys

from relaywire import USERS_OID, Wire, complete, data_row, query, ready, row_description

SSN = b"123-45-6789"
USERS = [(b"id", USERS_OID, 1, 23), (b"ssn", USERS_OID, 2, 25)]


def _answer(rows: int) -> bytes:
    return (row_description(USERS)
            + b"".join(data_row([str(i).encode(), SSN]) for i in range(1, rows + 1))
            + complete(b"SELECT %d" % rows) + ready())


def test_masked_read_is_not_kept_after_its_write():
    w = Wire(mask=True, record=False)
    w.from_client(query(b"select id, ssn from users"))
    chunk = _answer(200)
    before = sys.getrefcount(chunk)
    w.from_server(chunk)
    got = w.client.drain()
    assert SSN not in got and got.count(b"****") == 200     # it was masked, and written
    # a memoryview slice of the chunk still in the side's pieces would add a reference
    assert sys.getrefcount(chunk) == before

