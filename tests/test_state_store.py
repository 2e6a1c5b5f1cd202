"""The shared state store, against a real SQLite file and the session's real PostgreSQL server.

Every behaviour test runs on both backends (the `cfg` fixture), because the gateway must not care
which one it was given. Each test gets a fresh store: a new file, or a new database owned by `app`.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
import stat
import traceback

import pytest

from hoopwire.config import Secret, StateConfig
from hoopwire.state import Store, StoreError, open_store

NOW = 1_700_000_000.0


@pytest.fixture(params=["sqlite", "postgres"])
def cfg(request: pytest.FixtureRequest, tmp_path) -> StateConfig:
    if request.param == "sqlite":
        return StateConfig(url=f"sqlite://{tmp_path}/state.db")
    pg = request.getfixturevalue("pg")
    name = f"state_{secrets.token_hex(4)}"
    pg.create_database(name, owner="app")
    return StateConfig(url=f"postgresql://app@{pg.host}:{pg.port}/{name}",
                       password=Secret(pg.passwords["app"], "test"))


def run(cfg: StateConfig, scenario) -> None:
    """asyncio.run(scenario(store)) with a store that is closed afterwards."""
    async def main() -> None:
        store = await open_store(cfg)
        try:
            await scenario(store)
        finally:
            await store.close()
    asyncio.run(main())


def approval(id: str, **kw) -> dict:
    a = {
        "id": id, "status": "pending", "created_at": NOW, "expires_at": NOW + 300,
        "decided_at": None, "requester": "carol@example.com",
        "requester_issuer": "https://idp.example.com", "requester_groups": ["dev", "oncall"],
        "token_id": "jti-1", "connection": "pg-prod", "session_id": "s-1",
        "client_addr": "10.0.0.7:51234", "statement": "DELETE FROM orders WHERE id = ?",
        "rule": "prod-writes", "approvers": ["dba", "lead"], "reason_required": True,
        "decided_by": None, "decided_by_issuer": None, "reason": None, "scope": "once",
        "grant_until": None, "gateway_id": "gw-a",
    }
    a.update(kw)
    return a


def session(id: str, **kw) -> dict:
    s = {
        "id": id, "subject": "carol@example.com", "issuer": "https://idp.example.com",
        "groups": ["dev"], "token_id": "jti-1",
        "method": "jwt", "connection": "pg-prod", "role": "app", "database": "appdb",
        "client_addr": "10.0.0.7:51234", "tls": True, "started_at": NOW, "ended_at": None,
        "bytes_in": 0, "bytes_out": 0, "close_reason": None, "statements": 0, "gateway_id": "gw-a",
    }
    s.update(kw)
    return s


def statement(session_id: str, seq: int, **kw) -> dict:
    st = {
        "session_id": session_id, "seq": seq, "ts": NOW + seq, "statement": f"SELECT {seq}",
        "verdict": "allow", "rules": [], "approval_id": None, "rows": 1, "masked": 0,
        "duration_ms": 0.5, "error": None,
    }
    st.update(kw)
    return st


# -- approvals ---------------------------------------------------------------------------------------

def test_approval_round_trip(cfg: StateConfig) -> None:
    full = approval("a1", status="approved", decided_at=NOW + 5, decided_by="dave",
                    reason="ticket OPS-1", scope="window", grant_until=NOW + 3600,
                    requester_groups=["dev", "oncall", "ünïcode"], token_id=None)

    async def scenario(store: Store) -> None:
        await store.create_approval(full)
        assert await store.get_approval("a1") == full
        # omitted fields take their defaults; a frozenset of groups is stored as a sorted list
        minimal = {k: v for k, v in approval("a2", created_at=NOW + 1).items()
                   if k not in ("status", "decided_at", "token_id", "decided_by", "reason",
                                "scope", "grant_until", "reason_required")}
        minimal["requester_groups"] = frozenset({"b", "a"})
        await store.create_approval(minimal)
        got = await store.get_approval("a2")
        assert got["status"] == "pending" and got["scope"] == "once"
        assert got["reason_required"] is False and got["token_id"] is None
        assert got["requester_groups"] == ["a", "b"]
        await store.create_approval(approval("a3", created_at=NOW + 2))
        assert await store.get_approval("nope") is None

        assert [a["id"] for a in await store.list_approvals()] == ["a3", "a2", "a1"]
        assert [a["id"] for a in await store.list_approvals(limit=2)] == ["a3", "a2"]
        assert [a["id"] for a in await store.list_approvals("pending")] == ["a3", "a2"]
        assert await store.list_approvals("approved") == [full]
        assert await store.list_approvals("denied") == []

        with pytest.raises(StoreError, match="already exists"):
            await store.create_approval(approval("a1"))
        with pytest.raises(ValueError, match="requester"):
            await store.create_approval({k: v for k, v in approval("a4").items() if k != "requester"})
        with pytest.raises(ValueError, match="status"):
            await store.create_approval(approval("a5", status="maybe"))
    run(cfg, scenario)


def test_decide_is_compare_and_set(cfg: StateConfig) -> None:
    async def scenario(store: Store) -> None:
        for i in range(3):
            await store.create_approval(approval(f"a{i}"))
        won = await store.decide_approval("a0", "approved", decided_by="dave", reason="ok",
                                          scope="window", grant_until=NOW + 600, now=NOW + 10)
        assert won == approval("a0", status="approved", decided_by="dave", reason="ok",
                               scope="window", grant_until=NOW + 600, decided_at=NOW + 10)
        assert await store.decide_approval("a0", "denied", decided_by="eve", reason=None) is None
        assert (await store.get_approval("a0"))["status"] == "approved"
        assert await store.decide_approval("missing", "denied", decided_by="eve", reason=None) is None

        denied = await store.decide_approval("a1", "denied", decided_by=None, reason="no")
        assert denied["status"] == "denied" and denied["scope"] == "once"
        assert denied["decided_at"] is not None

        decided = await store.decided_among(["a0", "a1", "a2", "missing", "a0"])
        assert sorted(a["id"] for a in decided) == ["a0", "a1"]
        assert await store.decided_among([]) == []
        with pytest.raises(ValueError):
            await store.decide_approval("a2", "pending", decided_by="x", reason=None)
        with pytest.raises(ValueError):
            await store.decide_approval("a2", "approved", decided_by="x", reason=None, scope="forever")
    run(cfg, scenario)


def test_concurrent_decisions_from_two_stores(cfg: StateConfig) -> None:
    """Two gateways (two connections, for SQLite two threads on one file) decide the same
    requests at the same moment: every request has exactly one winner, and it is stored."""
    n = 25

    async def main() -> None:
        s1, s2 = await asyncio.gather(open_store(cfg), open_store(cfg))
        try:
            for i in range(n):
                await s1.create_approval(approval(f"a{i}"))
            results = await asyncio.gather(*(
                call for i in range(n) for call in (
                    s1.decide_approval(f"a{i}", "approved", decided_by="one", reason=None),
                    s2.decide_approval(f"a{i}", "denied", decided_by="two", reason=None))))
            for i in range(n):
                pair = results[2 * i:2 * i + 2]
                winners = [r for r in pair if r is not None]
                assert len(winners) == 1, pair
                stored = await s2.get_approval(f"a{i}")
                assert stored["decided_by"] == winners[0]["decided_by"]
                assert stored["status"] == winners[0]["status"]
        finally:
            await asyncio.gather(s1.close(), s2.close())
    asyncio.run(main())


def test_expire_due(cfg: StateConfig) -> None:
    async def main() -> None:
        s1, s2 = await asyncio.gather(open_store(cfg), open_store(cfg))
        try:
            for i in range(10):
                await s1.create_approval(approval(f"due{i}", expires_at=NOW + i))
            await s1.create_approval(approval("later", expires_at=NOW + 100))
            await s1.create_approval(approval("decided", expires_at=NOW))
            await s1.decide_approval("decided", "cancelled", decided_by="carol", reason=None)
            # both replicas sweep at once: each due row is expired and reported exactly once
            got1, got2 = await asyncio.gather(s1.expire_due(NOW + 9), s2.expire_due(NOW + 9))
            ids = sorted(a["id"] for a in got1 + got2)
            assert ids == sorted(f"due{i}" for i in range(10))
            assert all(a["status"] == "expired" and a["decided_at"] == NOW + 9 for a in got1 + got2)
            assert await s1.expire_due(NOW + 9) == []
            assert (await s2.get_approval("later"))["status"] == "pending"
            assert (await s2.get_approval("decided"))["status"] == "cancelled"
            assert [a["id"] for a in await s1.expire_due(NOW + 100)] == ["later"]
        finally:
            await asyncio.gather(s1.close(), s2.close())
    asyncio.run(main())


def test_abandon_pending_only_touches_that_gateway(cfg: StateConfig) -> None:
    async def scenario(store: Store) -> None:
        await store.create_approval(approval("a1", gateway_id="gw-a"))
        await store.create_approval(approval("a2", gateway_id="gw-a"))
        await store.create_approval(approval("a3", gateway_id="gw-a"))
        await store.decide_approval("a3", "approved", decided_by="dave", reason=None)
        await store.create_approval(approval("b1", gateway_id="gw-b"))
        assert await store.abandon_pending("gw-a", NOW + 1) == 2
        assert await store.abandon_pending("gw-a", NOW + 2) == 0
        for id in ("a1", "a2"):
            row = await store.get_approval(id)
            assert (row["status"], row["decided_at"]) == ("abandoned", NOW + 1)
        assert (await store.get_approval("a3"))["status"] == "approved"
        assert (await store.get_approval("b1"))["status"] == "pending"
    run(cfg, scenario)


def test_grants(cfg: StateConfig) -> None:
    async def scenario(store: Store) -> None:
        await store.add_grant(subject="carol", issuer="https://a", connection="pg-prod",
                              rule="prod-writes", until=NOW + 600, approval_id="a1")
        await store.add_grant(subject="carol", issuer="https://a", connection="pg-prod",
                              rule="prod-writes", until=NOW + 600,
                              approval_id="a1")  # repeated: harmless
        await store.add_grant(subject="dave", issuer="", connection="pg-stage", rule="ddl",
                              until=NOW + 60, approval_id="a2")
        assert await store.active_grants(NOW) == [
            {"subject": "dave", "issuer": "", "connection": "pg-stage", "rule": "ddl",
             "until": NOW + 60, "approval_id": "a2"},
            {"subject": "carol", "issuer": "https://a", "connection": "pg-prod",
             "rule": "prod-writes", "until": NOW + 600, "approval_id": "a1"},
        ]
        assert [g["subject"] for g in await store.active_grants(NOW + 60)] == ["carol"]
        assert await store.active_grants(NOW + 600) == []
    run(cfg, scenario)


# -- audit index -------------------------------------------------------------------------------------

def test_sessions_and_statements(cfg: StateConfig) -> None:
    async def scenario(store: Store) -> None:
        await store.record_sessions([
            session("s1", started_at=NOW),
            session("s2", started_at=NOW + 10, subject="dave", groups=["ops", "dba"], tls=False,
                    token_id=None, role=None, database=None),
            session("s3", started_at=NOW + 20, connection="pg-stage"),
        ])
        # written again when it ends: the last write wins
        ended = session("s1", started_at=NOW, ended_at=NOW + 30, bytes_in=1234, bytes_out=99_000,
                        close_reason="client", statements=3)
        await store.record_sessions([ended])
        assert await store.get_session("s1") == ended
        s2 = await store.get_session("s2")
        assert s2["groups"] == ["ops", "dba"] and s2["tls"] is False and s2["database"] is None
        assert await store.get_session("nope") is None

        ids = lambda rows: [r["id"] for r in rows]  # noqa: E731
        assert ids(await store.list_sessions()) == ["s3", "s2", "s1"]
        assert ids(await store.list_sessions(limit=1)) == ["s3"]
        assert ids(await store.list_sessions(identity="carol@example.com")) == ["s3", "s1"]
        assert ids(await store.list_sessions(connection="pg-prod")) == ["s2", "s1"]
        assert ids(await store.list_sessions(since=NOW + 10)) == ["s3", "s2"]
        assert ids(await store.list_sessions(identity="carol@example.com", connection="pg-prod",
                                             since=NOW)) == ["s1"]
        assert await store.list_sessions(identity="nobody") == []

        first = statement("s1", 2, verdict="approved", rules=["prod-writes", "pii"],
                          approval_id="a1", rows=None, masked=2, duration_ms=None,
                          error="canceled")
        await store.record_statements([statement("s1", 3), first, statement("s1", 1),
                                       statement("s2", 1)])
        # a batch written twice (a retried flush) changes nothing
        await store.record_statements([statement("s1", 2, statement="other"), statement("s1", 4)])
        got = await store.session_statements("s1")
        assert [s["seq"] for s in got] == [1, 2, 3, 4]
        assert got[1] == first
        assert got[0] == statement("s1", 1)
        assert await store.session_statements("nope") == []
        await store.record_sessions([])
        await store.record_statements([])
    run(cfg, scenario)


def test_close_orphaned_sessions_only_touches_that_gateway(cfg: StateConfig) -> None:
    async def scenario(store: Store) -> None:
        await store.record_sessions([
            session("open-a"), session("open-b", gateway_id="gw-b"),
            session("ended-a", ended_at=NOW + 5, close_reason="client_terminate"),
        ])
        assert await store.close_orphaned_sessions("gw-a", NOW + 60) == 1
        a = await store.get_session("open-a")
        assert (a["ended_at"], a["close_reason"]) == (NOW + 60, "gateway_restart")
        assert (await store.get_session("open-b"))["ended_at"] is None
        assert (await store.get_session("ended-a"))["close_reason"] == "client_terminate"
        assert await store.close_orphaned_sessions("gw-a", NOW + 70) == 0
    run(cfg, scenario)


def test_prune(cfg: StateConfig) -> None:
    cut = NOW + 1000

    async def scenario(store: Store) -> None:
        await store.record_sessions([
            session("old", ended_at=cut - 1),
            session("new", ended_at=cut + 1),
            session("open", ended_at=None),
        ])
        await store.record_statements([statement(s, i) for s in ("old", "new", "open")
                                       for i in (1, 2)])
        await store.create_approval(approval("old-decided"))
        await store.decide_approval("old-decided", "denied", decided_by="x", reason=None,
                                    now=cut - 1)
        await store.create_approval(approval("new-decided"))
        await store.decide_approval("new-decided", "approved", decided_by="x", reason=None,
                                    now=cut + 1)
        await store.create_approval(approval("old-pending", expires_at=cut + 5000))
        await store.add_grant(subject="c", connection="pg", rule="r", until=cut - 1,
                              approval_id="old-decided")
        await store.add_grant(subject="c", connection="pg", rule="r", until=cut + 1,
                              approval_id="new-decided")

        # 1 session + 2 statements + 1 approval + 1 grant
        assert await store.prune(cut) == 5
        assert await store.prune(cut) == 0
        assert await store.get_session("old") is None
        assert await store.session_statements("old") == []
        assert len(await store.session_statements("new")) == 2
        assert len(await store.session_statements("open")) == 2
        assert await store.get_approval("old-decided") is None
        assert await store.get_approval("new-decided") is not None
        assert await store.get_approval("old-pending") is not None
        assert [g["approval_id"] for g in await store.active_grants(0)] == ["new-decided"]
    run(cfg, scenario)


def test_open_is_idempotent_and_race_safe(cfg: StateConfig) -> None:
    async def main() -> None:
        stores = await asyncio.gather(*(open_store(cfg) for _ in range(4)))
        await stores[0].create_approval(approval("a1"))
        await asyncio.gather(*(s.close() for s in stores))
        await stores[0].close()  # closing twice is fine
        with pytest.raises(StoreError, match="closed"):
            await stores[0].get_approval("a1")
        again = await open_store(cfg)
        try:
            assert (await again.get_approval("a1"))["id"] == "a1"
        finally:
            await again.close()
    asyncio.run(main())


# -- backend specifics ---------------------------------------------------------------------------------

def test_sqlite_creates_missing_directory_private_file(tmp_path) -> None:
    path = tmp_path / "not" / "yet" / "state.db"
    run(StateConfig(url=f"sqlite://{path}"), lambda store: store.create_approval(approval("a1")))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"hoopwire_approvals", "hoopwire_grants", "hoopwire_sessions",
                      "hoopwire_statements"}


def test_sqlite_unusable_path_is_store_error(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    for url in (f"sqlite://{blocker}/state.db", "sqlite://relative.db"):
        with pytest.raises(StoreError):
            asyncio.run(open_store(StateConfig(url=url)))
    with pytest.raises(StoreError, match="sqlite:// or postgresql://"):
        asyncio.run(open_store(StateConfig(url="mysql://u:pw@h/db")))


def test_postgres_bad_password_is_store_error_without_it(pg) -> None:
    wrong = "Wr0ng-" + secrets.token_urlsafe(12)
    cfg = StateConfig(url=f"postgresql://app@{pg.host}:{pg.port}/postgres",
                      password=Secret(wrong, "test"))
    with pytest.raises(StoreError) as info:
        asyncio.run(open_store(cfg))
    text = "".join(traceback.format_exception(info.value))
    assert wrong not in text and pg.passwords["app"] not in text
    assert "password authentication failed" in str(info.value)
    assert f"{pg.host}:{pg.port}" in str(info.value)


def test_postgres_reconnects_after_the_server_drops_it(pg) -> None:
    name = f"state_{secrets.token_hex(4)}"
    pg.create_database(name, owner="app")
    cfg = StateConfig(url=f"postgresql://app@{pg.host}:{pg.port}/{name}",
                      password=Secret(pg.passwords["app"], "test"))

    def kill_connections() -> None:
        pg.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
               f"WHERE datname = '{name}' AND pid <> pg_backend_pid()")

    async def scenario(store: Store) -> None:
        await store.create_approval(approval("a1"))
        await store.create_approval(approval("a2"))
        kill_connections()
        assert (await store.get_approval("a1"))["id"] == "a1"      # a read: run again
        kill_connections()
        won = await store.decide_approval("a1", "approved", decided_by="d", reason=None)
        assert won is not None and won["status"] == "approved"     # the not-retried write path
        kill_connections()
        await store.create_approval(approval("a3"))
        assert (await store.get_approval("a3"))["status"] == "pending"
        kill_connections()
        assert await store.prune(NOW + 10**9) == 1                  # a transaction
    run(cfg, scenario)
