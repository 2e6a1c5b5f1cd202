"""What a PostgreSQL session leaves behind once it is over, and what a statement costs on the
recommended configuration's path (issue 25). Behaviour only: speed is measured in bench/.

A session's objects refer to each other: the relay and its two sides, the results tracker,
the masker (whose .relay is the relay), the write guard holding the masker, the Session (the
relay's event sink, whose .relay is the relay). Left like that when the session ends, all of
it waits for the cyclic collector's full pass, which a busy gateway may not run for hundreds of
sessions. Once both transports have reported connection_lost, the relay breaks those links
itself. Driven in-process (tests/relaywire.py), with the objects pg/session.py wires up.
"""

from __future__ import annotations

import gc
import weakref

from relaywire import USERS_OID, Wire, complete, data_row, query, ready, row_description

from hoopwire.pg.masker import WriteGuard

SSN = b"123-45-6789"
USERS = [(b"id", USERS_OID, 1, 23), (b"ssn", USERS_OID, 2, 25)]


class _Session:
    """Like hoopwire.core.session.Session where it matters here: the relay's event sink, that
    keeps the relay (session.relay) and the masker (session.masker)."""

    def __init__(self):
        self.relay = None
        self.masker = None
        self.closed_with = None

    def session_closed(self, relay, reason):
        self.closed_with = reason

    def statement_matched(self, relay, verdict, sql):
        pass

    def statement_blocked(self, relay, verdict, sql):
        pass


def _session():
    """One masked, recorded session that reads a masked row and ends, both transports
    reporting connection_lost (as asyncio's do after close); weak references to what must go
    with it."""
    sess = _Session()
    w = Wire(mask=True, record=True, events=sess)
    relay = w.relay
    # the wiring of PgListener._startup: session.relay, session.masker, the guarded policy
    masker = _masker_of(w)
    sess.relay = relay
    sess.masker = masker
    relay.policy = WriteGuard(None, masker, refuse=True)
    w.from_client(query(b"select id, ssn from users"))
    w.from_server(row_description(USERS) + data_row([b"1", SSN]) + complete(b"SELECT 1")
                  + ready())
    got = w.client.drain()
    assert SSN not in got and b"SELECT 1" in got          # masked, and answered
    assert w.take_records()[0][0] == b"select id, ssn from users"
    relay.client.connection_lost(None)
    relay.upstream.connection_lost(None)
    assert relay.is_closed and sess.closed_with == "client_closed"
    refs = [weakref.ref(o) for o in (sess, masker, w.client, w.upstream)]
    # the connection's masking (engine, catalog, caches) outlives its sessions in a gateway;
    # made per Wire here, it is kept so that only the session's own objects are counted
    return refs, masker.conn


def _masker_of(w: Wire):
    # the masker the Wire made (relaywire sets masker.relay); found through the referrers of
    # the relay rather than a new accessor on the relay
    for o in gc.get_referrers(w.relay):
        if type(o).__name__ == "SessionMasker":
            return o
    raise AssertionError("no SessionMasker refers to the relay")


def test_closed_session_is_freed_without_the_cyclic_collector():
    gc.collect()
    gc.disable()
    try:
        refs, conn = _session()
        alive = [r() for r in refs if r() is not None]
        assert alive == [], f"kept after the session ended: {[type(o).__name__ for o in alive]}"
        del alive
        # nothing of the session was left in a cycle either
        assert gc.collect() == 0
        del conn
    finally:
        gc.enable()


def test_session_is_kept_while_a_transport_may_still_call_in():
    # only the client's connection_lost so far: the upstream's transport will still call its
    # side (connection_lost), which must find the relay whole
    gc.collect()
    gc.disable()
    try:
        sess = _Session()
        w = Wire(mask=True, record=True, events=sess)
        sess.relay = w.relay
        w.from_client(query(b"select 1"))
        w.relay.client.connection_lost(None)
        assert w.relay.is_closed
        assert w.relay.events is sess               # not released yet
        w.relay.upstream.connection_lost(None)      # the last call: handled, then released
        assert w.relay.events is None and w.relay.policy is None
        # a late read or a buffer signal after the release is ignored, not a crash
        w.relay.upstream.data_received(ready())
        w.relay.client.data_received(query(b"select 1"))
        w.relay.client.pause_writing()
        w.relay.upstream.resume_writing()
        assert w.relay.close_reason == "client_closed"
    finally:
        gc.enable()


def test_masked_counts_reach_the_record_and_an_unmasked_result_counts_none():
    # a result ends without the masker's result_done when its plan counted nothing; one that
    # masked a value still reports it (the statement record's masked count)
    w = Wire(mask=True, record=True)
    w.from_client(query(b"select id, ssn from users"))
    w.from_server(row_description(USERS) + data_row([b"1", SSN]) + data_row([b"2", SSN])
                  + complete(b"SELECT 2") + ready())
    w.from_client(query(b"select id from users"))
    w.from_server(row_description(USERS[:1]) + data_row([b"1"]) + complete(b"SELECT 1")
                  + ready())
    assert SSN not in w.client.drain()
    assert [(sql, masked) for sql, _tags, _code, masked in w.take_records()] == [
        (b"select id, ssn from users", 2), (b"select id from users", 0)]
