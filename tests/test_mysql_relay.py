"""The MySQL relay (ext/hoopwire/mysql/_relay.pxi, _results.pxi) driven in-process, without a
socket: the test plays the client and the server with real protocol bytes (built with the
reference codecs, hoopwire.mysql.packets) through two recording transports
(tests/relaywire.py's MemoryTransport), and reads what each side was written. The command
phase's state machine is checked packet by packet: result sets with and without
CLIENT_DEPRECATE_EOF, multi-results, prepared statements, errors; every split point of an
answer; guardrails (block, approve, in-flight waits); sequence ids; backpressure.
"""

from __future__ import annotations

import struct

import pytest

from hoopwire.core._frames import ConnStats
from hoopwire.mysql import packets as ref
from hoopwire.mysql._wire import Relay, err_fields, frame
from relaywire import MemoryTransport

C = ref.CLIENT
CAPS = (C.PROTOCOL_41 | C.TRANSACTIONS | C.SECURE_CONNECTION | C.MULTI_STATEMENTS |
        C.MULTI_RESULTS | C.PS_MULTI_RESULTS | C.PLUGIN_AUTH | C.DEPRECATE_EOF | C.SESSION_TRACK)
CAPS_EOF = CAPS & ~C.DEPRECATE_EOF
MORE = ref.SERVER_STATUS.MORE_RESULTS_EXISTS
AUTOCOMMIT = ref.SERVER_STATUS.AUTOCOMMIT
T_LONG, T_VAR_STRING, T_LONGLONG = 3, 253, 8


# -- packets -----------------------------------------------------------------------------------

def com(cmd: int, body: bytes = b"") -> bytes:
    return frame(bytes((cmd,)) + body, 0)


def com_query(sql: bytes) -> bytes:
    return com(0x03, sql)


def ok(seq: int, *, affected: int = 0, status: int = AUTOCOMMIT, header: int = 0x00,
       caps: int = CAPS, state: bytes = b"") -> bytes:
    if state:
        status |= ref.SERVER_STATUS.SESSION_STATE_CHANGED
    return frame(ref.ok_packet(ref.OK(affected_rows=affected, status=status, header=header,
                                      session_state=state), caps), seq)


def err(seq: int, errno: int = 1064, state: str = "42000", msg: str = "syntax") -> bytes:
    return frame(ref.err_packet(errno, state, msg), seq)


def coldef(name: str, typ: int = T_VAR_STRING, table: str = "customers") -> bytes:
    return ref.column_definition("app", table, table, name, name, 45, 256, typ)


def result(rows, names=("id", "name"), *, seq: int = 1, deprecate: bool = True,
           status: int = AUTOCOMMIT, binary_types=None) -> bytes:
    """A whole result set from sequence id `seq`: count, definitions, [EOF], rows, EOF/OK."""
    out = [frame(ref.lenenc_int(len(names)), seq)]
    seq += 1
    for i, n in enumerate(names):
        out.append(frame(coldef(n, binary_types[i] if binary_types else T_VAR_STRING), seq))
        seq += 1
    if not deprecate:
        out.append(frame(ref.eof_packet(status=status), seq))
        seq += 1
    for r in rows:
        payload = ref.binary_row(r, binary_types) if binary_types else ref.text_row(r)
        out.append(frame(payload, seq))
        seq += 1 + len(payload) // 0xFFFFFF
    if deprecate:
        out.append(ok(seq, header=0xFE, status=status))
    else:
        out.append(frame(ref.eof_packet(status=status), seq))
    return b"".join(out)


def payloads(data: bytes):
    out, rest = ref.read_payloads(data)
    assert rest == b""
    return out


# -- the relay between two memory transports -----------------------------------------------------

class Verdict:
    def __init__(self, action, rule="r", message=""):
        self.action, self.rule, self.message, self.matched = action, rule, message, (rule,)


class Policy:
    """policy.check(sql) as GroupPolicy answers it: rules by substring (the real engine is
    tested elsewhere; here only the relay's handling of each verdict matters)."""

    def __init__(self, **rules):
        self.rules = rules          # substring -> action
        self.checked = []
        self.approves = "approve" in rules.values()

    def check(self, sql):
        self.checked.append(sql)
        for needle, action in self.rules.items():
            if needle.encode() in sql.lower():
                return Verdict(action, rule=f"{action}-{needle}")
        return None


class Events:
    def __init__(self, hold=True):
        self.log = []
        self.hold = hold

    def session_closed(self, relay, reason):
        self.log.append(("closed", reason))

    def statement_blocked(self, relay, verdict, sql):
        self.log.append(("blocked", verdict.rule, sql))

    def statement_matched(self, relay, verdict, sql):
        self.log.append(("matched", verdict.rule, sql))

    def statement_held(self, relay, verdict, sql):
        self.log.append(("held", verdict.rule, sql))
        return "req-1" if self.hold else None

    def masking_failed(self, relay, reason):
        self.log.append(("mask_failed", reason))


class Wire:
    def __init__(self, caps=CAPS, policy=None, events=None, masker=None, record=None,
                 high_water=None, capture=0, **kw):
        self.stats = ConnStats()
        self.events = events or Events()
        self.relay = Relay(self.stats, policy, self.events, capabilities=caps, **kw)
        if masker is not None or record is not None:
            self.relay.enable_results(masker, record=record, capture_bytes=capture)
        self.client = MemoryTransport(high_water)
        self.upstream = MemoryTransport(high_water)
        self.relay.start(self.client, self.upstream)

    def send(self, data: bytes) -> bytes:
        """The client sends; what reached the server."""
        self.relay.client.data_received(data)
        return self.upstream.drain()

    def answer(self, data: bytes) -> bytes:
        """The server answers; what reached the client."""
        self.relay.upstream.data_received(data)
        return self.client.drain()


# -- tests ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("deprecate", [True, False])
def test_query_result_passes_unchanged(deprecate):
    w = Wire(caps=CAPS if deprecate else CAPS_EOF)
    q = com_query(b"SELECT id, name FROM customers")
    assert w.send(q) == q
    assert w.relay.units_sent == 1 and w.relay.units_done == 0
    answer = result([[b"1", b"ann"], [b"2", None]], deprecate=deprecate)
    assert w.answer(answer) == answer
    assert w.relay.units_done == 1 and w.relay.in_flight == 0
    assert w.stats.queries == 1 and w.stats.rtt_count == 1
    # the next command and its OK
    assert w.send(com(0x0E)) == com(0x0E)
    assert w.answer(ok(1)) == ok(1)
    assert w.relay.units_done == 2


@pytest.mark.parametrize("deprecate", [True, False])
def test_every_split_point_of_an_answer(deprecate):
    """Multi-results (OK, a result set, an ERR) cut at every byte: the client gets exactly what
    the server sent, and the relay ends idle with every command answered."""
    caps = CAPS if deprecate else CAPS_EOF
    answer = (ok(1, affected=3, status=AUTOCOMMIT | MORE) +
              result([[b"1", b"x" * 300], [None, b""]], seq=2, deprecate=deprecate,
                     status=AUTOCOMMIT | MORE))
    n = len(payloads(answer))
    answer += err(n + 1)
    for cut in range(1, len(answer)):
        w = Wire(caps=caps)
        w.send(com_query(b"UPDATE t SET a=1; SELECT 1; SELECT bad"))
        got = w.answer(answer[:cut]) + w.answer(answer[cut:])
        assert got == answer, cut
        assert w.relay.in_flight == 0 and w.relay.units_done == 1, cut
    w = Wire(caps=caps)
    w.send(com_query(b"x"))
    assert b"".join(w.answer(answer[i:i + 1]) for i in range(len(answer))) == answer
    assert w.relay.in_flight == 0


def test_client_commands_at_every_split_point():
    stream = com_query(b"SELECT 1") + com(0x0E)
    for cut in range(1, len(stream)):
        w = Wire()
        got = w.send(stream[:cut]) + w.send(stream[cut:])
        assert got == stream
        assert w.relay.units_sent == 2


def test_blocked_statement_is_never_sent():
    pol = Policy(drop="block")
    w = Wire(policy=pol)
    assert w.send(com_query(b"DROP TABLE customers")) == b""
    (seq, payload), = payloads(w.client.drain())
    assert seq == 1
    errno, state, msg = err_fields(payload)
    assert (errno, state) == (1227, "42000") and b"block-drop" in msg
    assert w.events.log[0][:2] == ("blocked", "block-drop")
    assert w.relay.units_sent == 0
    # the session goes on
    assert w.send(com_query(b"SELECT 1")) == com_query(b"SELECT 1")


def test_blocked_while_another_is_in_flight_waits_its_turn():
    """Pipelined: the gateway's ERR goes after the answer to the command before it."""
    w = Wire(policy=Policy(drop="block"))
    w.send(com(0x0E))                          # a ping: it changes nothing, no wait
    assert w.send(com_query(b"DROP TABLE t")) == b""
    assert w.client.drain() == b""             # not before the ping's OK
    got = payloads(w.answer(ok(1)))
    assert [s for s, _ in got] == [1, 1]
    assert got[0][1][0] == 0x00 and err_fields(got[1][1])[0] == 1227


def test_statement_waits_for_one_in_flight_that_may_change_sql_mode():
    pol = Policy()
    w = Wire(policy=pol)
    assert w.send(com_query(b"SET sql_mode='ANSI_QUOTES'")) != b""
    assert w.send(com_query(b"SELECT \"a\"")) == b""      # held until the SET is answered
    assert pol.checked == [b"SET sql_mode='ANSI_QUOTES'"]
    assert not w.relay.held                                  # (waiting is not an approval)
    state = b"\x00" + ref.lenenc_str(ref.lenenc_str(b"sql_mode") + ref.lenenc_str(b"ANSI_QUOTES"))
    w.relay.upstream.data_received(ok(1, state=state))
    assert w.relay.mode == 2 and w.relay.sql_mode == "ANSI_QUOTES"
    assert w.upstream.drain() == com_query(b"SELECT \"a\"")
    assert pol.checked[-1] == b"SELECT \"a\""


def test_approval_holds_then_approved():
    w = Wire(policy=Policy(delete="approve"))
    q = com_query(b"DELETE FROM t")
    assert w.send(q) == b""
    assert w.relay.held and w.events.log[-1][0] == "held"
    w.relay.decide(True, None)
    assert w.upstream.drain() == q
    assert not w.relay.held
    assert w.answer(ok(1, affected=2)) == ok(1, affected=2)


def test_approval_denied_answers_the_error():
    w = Wire(policy=Policy(delete="approve"))
    w.send(com_query(b"DELETE FROM t"))
    deny = frame(ref.err_packet(1227, "42000", "not approved"), 0)
    w.relay.decide(False, deny)
    assert w.upstream.drain() == b""
    (seq, payload), = payloads(w.client.drain())
    assert seq == 1 and b"not approved" in payload
    assert w.send(com(0x0E)) == com(0x0E)


def test_prepared_statement_execute_is_held_not_the_prepare():
    w = Wire(policy=Policy(delete="approve"))
    prep = com(0x16, b"DELETE FROM t WHERE id = ?")
    assert w.send(prep) == prep                  # preparing runs nothing
    answer = (frame(b"\x00" + struct.pack("<IHHBH", 7, 0, 1, 0, 0), 1) +
              frame(coldef("?"), 2))
    assert w.answer(answer) == answer
    execute = com(0x17, struct.pack("<IBI", 7, 0, 1) + b"\x00\x01" + b"\x03\x00" + b"\x01\x00\x00\x00")
    assert w.send(execute) == b""
    assert w.relay.held
    w.relay.decide(True, None)
    assert w.upstream.drain() == execute
    assert w.answer(ok(1, affected=1)) == ok(1, affected=1)
    assert w.stats.executes == 1
    # each run waits again
    assert w.send(execute) == b""
    assert w.relay.held


@pytest.mark.parametrize("deprecate", [True, False])
def test_prepare_answer_and_binary_rows(deprecate):
    caps = CAPS if deprecate else CAPS_EOF
    w = Wire(caps=caps)
    w.send(com(0x16, b"SELECT id, name FROM customers WHERE id > ?"))
    seq = 1
    parts = [frame(b"\x00" + struct.pack("<IHHBH", 3, 2, 1, 0, 0), seq)]
    for p in [coldef("?")] + ([ref.eof_packet()] if not deprecate else []) + \
            [coldef("id", T_LONG), coldef("name")] + ([ref.eof_packet()] if not deprecate else []):
        seq += 1
        parts.append(frame(p, seq))
    answer = b"".join(parts)
    assert w.answer(answer) == answer
    assert w.relay.in_flight == 0
    w.send(com(0x17, struct.pack("<IBI", 3, 0, 1) + b"\x00\x01\x03\x00\x05\x00\x00\x00"))
    rows = result([[struct.pack("<i", 1), b"ann"], [None, b"bob"]], deprecate=deprecate,
                  binary_types=[T_LONG, T_VAR_STRING])
    assert w.answer(rows) == rows
    assert w.relay.in_flight == 0 and w.stats.executes == 1


def test_no_answer_commands_do_not_wait_for_one():
    w = Wire()
    for c in (com(0x19, struct.pack("<I", 3)), com(0x18, struct.pack("<IH", 3, 0) + b"data")):
        assert w.send(c) == c
    assert w.relay.units_sent == 0 and w.relay.in_flight == 0
    assert w.send(com(0x0E)) == com(0x0E)
    assert w.answer(ok(1)) == ok(1)


@pytest.mark.parametrize("cmd,errno", [(0x11, 1227), (0x1C, 1235), (0x20, 1047), (0x08, 1047),
                                       (0x0D, 1227), (0x00, 1047)])
def test_refused_commands_get_an_error_and_the_session_goes_on(cmd, errno):
    w = Wire()
    assert w.send(com(cmd, b"\x00" * 8)) == b""
    (seq, payload), = payloads(w.client.drain())
    assert seq == 1 and err_fields(payload)[0] == errno
    assert w.send(com(0x0E)) == com(0x0E)


def test_server_side_cursor_refused():
    w = Wire()
    assert w.send(com(0x17, struct.pack("<IBI", 1, 1, 1))) == b""
    assert err_fields(payloads(w.client.drain())[0][1])[0] == 1235


def test_local_infile_refused_by_default():
    w = Wire()
    w.send(com_query(b"LOAD DATA LOCAL INFILE '/etc/passwd' INTO TABLE t"))
    # the server asks for the file; the gateway sends it an empty one and tells the client
    got = w.answer(frame(b"\xfb/etc/passwd", 1))
    assert w.upstream.drain() == frame(b"", 2)
    (seq, payload), = payloads(got)
    assert seq == 1 and err_fields(payload)[:2] == (1148, "42000")
    assert w.answer(ok(3)) == b""              # the server's answer is not the client's
    assert w.relay.in_flight == 0
    assert w.send(com(0x0E)) == com(0x0E) and w.answer(ok(1)) == ok(1)


def test_local_infile_relayed_when_allowed():
    w = Wire(load_data_local=True)
    w.send(com_query(b"LOAD DATA LOCAL INFILE 'f' INTO TABLE t"))
    req = frame(b"\xfbf", 1)
    assert w.answer(req) == req
    data = frame(b"1\tann\n", 2) + frame(b"2\tbob\n", 3) + frame(b"", 4)
    assert w.send(data) == data
    assert w.answer(ok(5, affected=2)) == ok(5, affected=2)
    assert w.relay.in_flight == 0
    assert w.send(com(0x0E)) == com(0x0E)


def test_unsolicited_server_error_passes_and_session_ends_quietly():
    w = Wire()
    e = err(0, 4031, "HY000", "inactivity")
    assert w.answer(e) == e
    w.relay.upstream.connection_lost(None)
    assert w.client.drain() == b"" and w.client.closed


def test_empty_packet_in_a_result_closes_the_session():
    w = Wire()
    w.send(com_query(b"SELECT 1"))
    w.answer(frame(ref.lenenc_int(1), 1) + frame(coldef("a"), 2) + frame(b"", 3))
    assert w.relay.is_closed and ("closed", "upstream_protocol_error") in w.events.log


def test_server_packet_with_nothing_asked_closes_the_session():
    w = Wire()
    w.answer(ok(1))
    assert w.relay.is_closed and w.events.log[-1] == ("closed", "upstream_protocol_error")


def test_client_packet_out_of_order_closes_with_an_error():
    w = Wire()
    w.send(frame(b"\x03SELECT 1", 5))
    assert w.relay.is_closed
    (seq, payload), = payloads(w.client.data)
    assert err_fields(payload)[0] == 1156


def test_shutdown_error_numbered_for_the_client():
    w = Wire()
    w.send(com_query(b"SELECT SLEEP(10)"))
    w.answer(frame(ref.lenenc_int(1), 1) + frame(coldef("s"), 2))
    w.relay.shutdown("shutting_down", frame(ref.err_packet(1053, "08S01", "Server shutdown"), 0))
    (seq, payload), = payloads(bytes(w.client.data))
    assert seq == 3 and err_fields(payload)[0] == 1053
    assert w.client.closed and w.upstream.closed


def test_backpressure_pauses_the_other_side():
    w = Wire(high_water=1000)
    w.send(com_query(b"SELECT 1"))
    w.relay.upstream.data_received(result([[b"x" * 2000]], names=("a",)))
    assert not w.upstream.reading              # the client's buffer is full: upstream not read
    w.client.drain()
    assert w.upstream.reading


def test_session_track_rewritten_for_a_client_without_it():
    """The upstream tracks session state for the gateway; a client that did not ask gets the
    OK in its own format (info as the rest of the packet, no state block)."""
    client_caps = CAPS & ~C.SESSION_TRACK
    w = Wire(caps=client_caps, upstream_capabilities=CAPS)
    w.send(com_query(b"SET NAMES latin1"))
    state = b"\x00" + ref.lenenc_str(ref.lenenc_str(b"character_set_client") + ref.lenenc_str(b"latin1"))
    got = w.answer(ok(1, state=state))
    (seq, payload), = payloads(got)
    parsed = ref.parse_ok(payload, client_caps)
    assert seq == 1 and not parsed.status & ref.SERVER_STATUS.SESSION_STATE_CHANGED
    assert parsed.info == b""
    assert w.relay.character_set_client == "latin1"


def test_unsafe_character_set_ends_a_guarded_session():
    w = Wire(policy=Policy())
    w.send(com_query(b"SET NAMES gbk"))
    state = b"\x00" + ref.lenenc_str(ref.lenenc_str(b"character_set_client") + ref.lenenc_str(b"gbk"))
    got = payloads(bytes(w.client.data))
    w.relay.upstream.data_received(ok(1, state=state))
    assert w.relay.is_closed and ("closed", "unsafe_client_charset") in w.events.log
    (seq, payload), = payloads(bytes(w.client.data))
    assert got == [] and seq == 1 and err_fields(payload)[0] == 1227 and b"gbk" in payload


def test_shutdown_before_any_answer_numbers_the_error_as_the_first():
    w = Wire()
    w.send(com_query(b"SELECT 1"))
    w.answer(ok(1))
    w.send(com_query(b"SELECT SLEEP(5)"))          # no answer yet: the client expects seq 1
    w.relay.shutdown("shutting_down", frame(ref.err_packet(1053, "08S01", "Server shutdown"), 0))
    (seq, payload), = payloads(bytes(w.client.data))
    assert seq == 1 and err_fields(payload)[0] == 1053


def test_kill_mapped_to_the_upstream_thread():
    targets = {42: 9001}
    w = Wire(kill_target=targets.get)
    assert w.send(com_query(b"KILL QUERY 42")) == com_query(b"KILL QUERY 9001")
    w.answer(ok(1))
    assert w.send(com_query(b"kill 7")) == b""
    assert err_fields(payloads(w.client.drain())[0][1])[:2] == (1094, "HY000")
    assert w.send(com(0x0C, struct.pack("<I", 42))) == com(0x0C, struct.pack("<I", 9001))
    w.answer(ok(1))
    assert w.send(com(0x0C, struct.pack("<I", 43))) == b""
    assert err_fields(payloads(w.client.drain())[0][1])[0] == 1094


def test_the_kill_word_test_finds_what_a_case_blind_search_finds():
    # the relay's per-query test for KILL (a byte loop in C) must see every KILL the regular
    # expression it replaced saw, and nothing it did not: any case, anywhere, any neighbours
    import random
    import re
    from hoopwire.mysql._wire import has_kill
    word = re.compile(rb"kill", re.I)
    fixed = [b"", b"kil", b"KILL", b"kIlL 4", b"/*!kiLL*/ 1", b"skilled", b"k i l l", b"KIL L",
             b"\xcb\xc9\xcc\xcc", b"\x4bILL", b"KILl"[:3], b"x" * 100 + b"Kill"]
    rng = random.Random(20)
    alphabet = b"kKiIlL\x4b\x6b\xcb\xeb \x00;"
    texts = fixed + [bytes(rng.choice(alphabet) for _ in range(rng.randrange(12)))
                     for _ in range(5000)]
    for t in texts:
        assert has_kill(t) == (word.search(t) is not None), t


def test_a_kill_in_any_case_is_mapped_or_refused():
    w = Wire(kill_target={42: 9001}.get)
    assert w.send(com_query(b"kIlL QuErY 42")) == com_query(b"KILL QuErY 9001")
    w.answer(ok(1))
    assert w.send(com_query(b"KiLL 43")) == b""
    assert err_fields(payloads(w.client.drain())[0][1])[:2] == (1094, "HY000")


@pytest.mark.parametrize("sql", [b"KILL USER app", b"KILL QUERY ID 5", b"/*!KILL 42*/",
                                 b"SELECT 1; KILL 42", b"KILL 42 /* x */ + 1"])
def test_kill_forms_that_cannot_be_mapped_are_refused(sql):
    from hoopwire.mysql._sqllex import statement_views

    class D:
        def statement_views(self, s, full=False, mode=0):
            return statement_views(s, full, mode=mode)

    w = Wire(kill_target={42: 9001}.get, dialect=D())
    assert w.send(com_query(sql)) == b""
    assert err_fields(payloads(w.client.drain())[0][1])[0] in (1227, 1094)


def test_refuse_statements_while_the_audit_is_down():
    w = Wire()
    w.relay.refuse_statements(frame(ref.err_packet(1021, "HY000", "audit unavailable"), 0))
    assert w.send(com_query(b"SELECT 1")) == b""
    assert err_fields(payloads(w.client.drain())[0][1])[0] == 1021
    w.relay.refuse_statements(None)
    assert w.send(com_query(b"SELECT 1")) == com_query(b"SELECT 1")


def test_notify_client_is_dropped():
    w = Wire()
    assert w.relay.notify_client(b"held for approval") is False
    assert w.client.drain() == b""


def test_quit_forwarded_and_session_ends_as_terminate():
    w = Wire()
    assert w.send(com(0x01)) == com(0x01)
    w.relay.upstream.connection_lost(None)
    assert ("closed", "client_terminate") in w.events.log


# -- masking and recording -------------------------------------------------------------------------
# The masker here is the real MaskEngine planning from the column definitions the relay decoded
# (org_table / org_name) -- H4's SessionMasker adds lineage and the catalog on top of the same
# contract calls; the relay's side of it is what these tests check.

from hoopwire._auditlog import StatementEncoder, StatementLog   # noqa: E402
from hoopwire._mask import K_OTHER, K_STR                        # noqa: E402
from hoopwire.audit.log import pending_from                      # noqa: E402
from hoopwire.config import MaskConfig                           # noqa: E402
from hoopwire.masking import MaskEngine                          # noqa: E402
from hoopwire.masking.engine import Column                       # noqa: E402
from hoopwire.mysql.adapter import ADAPTER                       # noqa: E402

FIXED_TYPES = {1, 2, 3, 4, 5, 8, 9, 13, 7, 10, 11, 12, 14}


class _Info(tuple):
    """What the relay reads of a statement's info (hoopwire.mysql.masker.StatementInfo): its
    `ddl` flag, whose answer has the relay ask for a catalog read (pending_read)."""
    ddl = False


class PlanningMasker:
    def __init__(self, columns=("app.customers.ssn",), strategy="redact", refuse=None):
        self.engine = MaskEngine([MaskConfig(columns=tuple(columns), strategy=strategy)],
                                 hash_key=b"k")
        self.calls = []
        self.refuse = refuse
        self.done = 0

    def statement(self, sql):
        return _Info(("info", sql))

    def pending_read(self):         # no catalog: nothing to wait for after a DDL
        return None

    def answered(self, info):
        pass

    def result_plan(self, info, index, columns, binary):
        self.calls.append((info, index, [c[4] for c in columns], binary))
        if self.refuse is not None:
            from hoopwire.mysql.masker import MaskRefused
            raise MaskRefused(1142, "42000", "result refused by hoopwire")
        cols = [Column(c[0], c[2], c[4], K_OTHER if binary and c[7] in FIXED_TYPES else K_STR)
                for c in columns]
        plan = self.engine.row_plan(cols)
        return plan

    def result_done(self, plan):
        self.done += 1
        return plan.rows_rewritten

    def error_message(self, msg, errno=None, sql=None):
        return msg.replace(b"123-45-6789", b"***") if b"123-45-6789" in msg else None

    def schema_changed(self, schema):
        self.calls.append(("schema", schema))


class Records:
    def __init__(self):
        self.raw = []

    def slow(self, raw, n):
        self.raw.append(raw)
        return {"type": "statement", "session": "s", "n": n}


def recording():
    recs = Records()
    log = StatementLog(StatementEncoder("gw", lambda s: s.decode("utf-8", "replace")), "s",
                       recs.slow, pending_from, True)
    return recs, log


def take(recs, log):
    log.take()
    out = []
    for started, ended, sql, tags, error, masked, kept in recs.raw:
        out.append((sql, tuple(tags), ADAPTER.error_fields(error), masked,
                    [ADAPTER.row_values(k) for k in kept or ()]))
    recs.raw.clear()
    return out


SSN_ROWS = [[b"1", b"123-45-6789"], [b"2", None], [b"3", b"x" * 300]]


def masked_result(deprecate=True, seq=1, status=AUTOCOMMIT):
    return result(SSN_ROWS, names=("id", "ssn"), deprecate=deprecate, seq=seq, status=status)


@pytest.mark.parametrize("deprecate", [True, False])
def test_text_rows_masked_at_every_split_point(deprecate):
    caps = CAPS if deprecate else CAPS_EOF
    answer = masked_result(deprecate)
    want = result([[b"1", b"****"], [b"2", None], [b"3", b"****"]], names=("id", "ssn"),
                  deprecate=deprecate)
    for cut in list(range(1, len(answer), 7)) + [len(answer) - 1]:
        m = PlanningMasker()
        w = Wire(caps=caps, masker=m)
        w.send(com_query(b"SELECT id, ssn FROM customers"))
        got = w.answer(answer[:cut]) + w.answer(answer[cut:])
        assert got == want, cut
        assert m.calls[0][1:] == (0, ["id", "ssn"], False) and m.done == 1


def test_unmasked_result_is_zero_copy():
    """Nothing to mask in a result: the client is written the very bytes that arrived."""
    m = PlanningMasker(columns=("app.other.col",))
    w = Wire(masker=m)
    w.send(com_query(b"SELECT id, ssn FROM customers"))
    answer = masked_result()
    w.relay.upstream.data_received(answer)
    assert w.client.data == answer


def test_binary_row_masked_value_becomes_null_in_the_bitmap():
    m = PlanningMasker(columns=("app.customers.id", "app.customers.ssn"))
    w = Wire(masker=m)
    w.send(com(0x16, b"SELECT id, ssn FROM customers"))
    w.answer(frame(b"\x00" + struct.pack("<IHHBH", 1, 2, 0, 0, 0), 1) +
             frame(coldef("id", T_LONG), 2) + frame(coldef("ssn"), 3))
    w.send(com(0x17, struct.pack("<IBI", 1, 0, 1)))
    types = [T_LONG, T_VAR_STRING]
    got = w.answer(result([[struct.pack("<i", 5), b"123-45-6789"]], names=("id", "ssn"),
                          binary_types=types))
    rows = [p for s, p in payloads(got)][3:-1]
    assert ref.parse_binary_row(rows[0], types) == [None, b"****"]
    assert m.calls[-1][0] == ("info", b"SELECT id, ssn FROM customers") and m.calls[-1][3]


def test_row_that_shrinks_from_two_packets_to_one_moves_later_sequence_ids():
    """A 16 MB value masked to four bytes: the row needs one packet less, so every packet after
    it is numbered one lower -- the client sees an unbroken sequence."""
    m = PlanningMasker()
    w = Wire(masker=m)
    w.send(com_query(b"SELECT id, ssn FROM customers"))
    big = b"s" * (0xFFFFFF + 10)
    answer = result([[b"1", big], [b"2", b"123-45-6789"]], names=("id", "ssn"))
    got = w.answer(answer)
    seqs = [s for s, _ in payloads(got)]
    assert seqs == list(range(1, len(seqs) + 1))
    out = [p for _, p in payloads(got)]
    assert ref.parse_text_row(out[3], 2) == [b"1", b"****"]
    assert ref.parse_text_row(out[4], 2) == [b"2", b"****"]


def test_row_that_grows_past_16mb_is_split():
    m = PlanningMasker(strategy="partial")
    m.engine = MaskEngine([MaskConfig(columns=("app.customers.ssn",), strategy="hash")],
                          hash_key=b"k")
    w = Wire(masker=m)
    w.send(com_query(b"SELECT ssn FROM customers"))
    # a value just under a packet: its hash is shorter, so grow the other way: many short values
    answer = result([[b"a" * (0xFFFFFF - 20)], [b"b"]], names=("ssn",))
    got = w.answer(answer)
    seqs = [s for s, _ in ref.read_payloads(got)[0]]
    assert ref.read_payloads(got)[1] == b""
    assert seqs == sorted(seqs)


def test_masker_refusal_replaces_the_result_and_drains_the_answer():
    m = PlanningMasker(refuse=True)
    w = Wire(masker=m)
    w.send(com_query(b"SELECT ssn FROM customers; SELECT 1"))
    answer = masked_result(status=AUTOCOMMIT | MORE)
    answer += result([[b"1"]], names=("x",), seq=len(payloads(answer)) + 1)
    got = payloads(w.answer(answer))
    assert len(got) == 1 and got[0][0] == 1
    assert err_fields(got[0][1])[:2] == (1142, "42000")
    assert w.relay.in_flight == 0
    assert w.send(com(0x0E)) == com(0x0E) and w.answer(ok(1)) == ok(1)


def test_error_message_masked():
    m = PlanningMasker()
    w = Wire(masker=m)
    w.send(com_query(b"INSERT INTO t VALUES ('123-45-6789')"))
    got = payloads(w.answer(err(1, 1062, "23000", "Duplicate entry '123-45-6789' for key")))
    assert err_fields(got[0][1]) == (1062, "23000", b"Duplicate entry '***' for key")


def test_statements_recorded_with_tags_errors_and_rows():
    recs, log = recording()
    m = PlanningMasker()
    w = Wire(masker=m, record=log, capture=1 << 20)
    w.send(com_query(b"SELECT id, ssn FROM customers"))
    w.answer(masked_result())
    w.send(com_query(b"UPDATE t SET a = 1"))
    w.answer(ok(1, affected=3))
    w.send(com_query(b"SELEC 1"))
    w.answer(err(1))
    got = take(recs, log)
    assert got[0][0] == b"SELECT id, ssn FROM customers" and got[0][1] == (b"ROWS 3",)
    assert got[0][3] == 2 and got[0][4] == [["1", "****"], ["2", None], ["3", "****"]]
    assert got[1][:3] == (b"UPDATE t SET a = 1", (b"OK 3",), None)
    assert ADAPTER.rows_affected(list(got[1][1])) == 3
    assert got[2][2] == {"code": "1064/42000", "message": "syntax"}


def test_blocked_statement_recorded_with_its_marker():
    recs, log = recording()
    w = Wire(policy=Policy(drop="block"), record=log, marker_prefix=b"hoopwire_blocked")
    w.send(com_query(b"DROP TABLE t"))
    w.relay.refuse_statements(frame(ref.err_packet(1021, "HY000", "audit"), 0))
    w.send(com_query(b"SELECT 1"))
    got = take(recs, log)
    assert got[0][0] == b"DROP TABLE t" and got[0][2]["code"] == "1227/42000"
    assert got[0][2]["message"] == "hoopwire_blocked1"
    assert got[1][2] == {"code": "1021/HY000", "message": "hoopwire_blockedr2"}


def test_binary_rows_recorded_as_text():
    recs, log = recording()
    w = Wire(record=log, capture=1 << 20)
    w.send(com(0x16, b"SELECT id, d FROM t"))
    w.answer(frame(b"\x00" + struct.pack("<IHHBH", 1, 2, 0, 0, 0), 1) +
             frame(coldef("id", T_LONGLONG), 2) + frame(coldef("d", 12), 3))
    w.send(com(0x17, struct.pack("<IBI", 1, 0, 1)))
    w.answer(result([[struct.pack("<q", -5), struct.pack("<HBBBBB", 2024, 2, 29, 13, 5, 9)]],
                    names=("id", "d"), binary_types=[T_LONGLONG, 12]))
    got = take(recs, log)
    assert got[-1][4] == [["-5", "2024-02-29 13:05:09"]]


def test_schema_switch_judged_as_use():
    pol = Policy(secret="block")
    m = PlanningMasker()
    w = Wire(policy=pol, masker=m)
    assert w.send(com(0x02, b"secret_db")) == b""
    assert pol.checked[-1] == b"USE `secret_db`"
    assert err_fields(payloads(w.client.drain())[0][1])[0] == 1227
    assert w.send(com(0x02, b"app")) == com(0x02, b"app")
    w.answer(ok(1))
    assert w.relay.schema == "app" and ("schema", "app") in m.calls


def test_command_of_more_than_16mb_judged_whole_and_forwarded_as_it_came():
    pol = Policy(drop="block")
    w = Wire(policy=pol, max_message_size=64 * 1024 * 1024)
    sql = b"SELECT '" + b"a" * (0xFFFFFF + 100) + b"'"
    q = com_query(sql)
    assert len(payloads(q)) == 1 and q.count(b"\xff\xff\xff") >= 1
    got = b"".join(w.send(q[i:i + 5_000_000]) for i in range(0, len(q), 5_000_000))
    assert got == q and pol.checked == [sql]
    w2 = Wire(max_message_size=0xFFFFFF)            # the limit counts the whole logical packet
    w2.relay.client.data_received(q)
    assert w2.relay.is_closed
    assert err_fields(payloads(bytes(w2.client.data))[0][1])[0] == 1153


from hypothesis import given, settings, strategies as st   # noqa: E402

SQL_MODES = st.lists(st.sampled_from(["ANSI_QUOTES", "NO_BACKSLASH_ESCAPES", "STRICT_TRANS_TABLES",
                                      "PIPES_AS_CONCAT", "ONLY_FULL_GROUP_BY"]), unique=True)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**40), st.integers(0, 2**40), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF),
       st.binary(max_size=80), SQL_MODES, st.one_of(st.none(), st.text(
           st.characters(min_codepoint=97, max_codepoint=122), min_size=1, max_size=12)),
       st.booleans())
def test_ok_packets_differential(affected, insert_id, status, warnings, info, modes, schema,
                                 client_tracks):
    """OK packets with session-state changes, encoded by the reference: the relay reads the
    server's sql_mode and schema from them, and a client without CLIENT_SESSION_TRACK gets
    exactly the OK the reference encodes for its capabilities."""
    status &= ~(ref.SERVER_STATUS.SESSION_STATE_CHANGED | MORE)
    mode = ",".join(modes)
    state = b"\x00" + ref.lenenc_str(ref.lenenc_str(b"sql_mode") + ref.lenenc_str(mode.encode()))
    if schema is not None:
        state += b"\x01" + ref.lenenc_str(ref.lenenc_str(schema.encode()))
    pkt = ref.OK(affected_rows=affected, last_insert_id=insert_id, warnings=warnings, info=info,
                 status=status | ref.SERVER_STATUS.SESSION_STATE_CHANGED, session_state=state)
    client_caps = CAPS if client_tracks else CAPS & ~C.SESSION_TRACK
    w = Wire(caps=client_caps, upstream_capabilities=CAPS, sql_mode="STRICT_TRANS_TABLES",
             schema="app")
    w.send(com_query(b"SET sql_mode = ..."))
    got = payloads(w.answer(frame(ref.ok_packet(pkt, CAPS), 1)))
    assert w.relay.sql_mode == mode
    assert w.relay.mode == (("NO_BACKSLASH_ESCAPES" in modes) | 2 * ("ANSI_QUOTES" in modes))
    assert w.relay.schema == (schema if schema is not None else "app")
    if client_tracks:
        want = ref.ok_packet(pkt, CAPS)
    else:
        want = ref.ok_packet(ref.OK(affected_rows=affected, last_insert_id=insert_id,
                                    warnings=warnings, info=info, status=status), client_caps)
    assert got == [(1, want)]


def test_text_value_masked_to_null_is_0xfb():
    m = PlanningMasker(strategy="null")
    w = Wire(masker=m)
    w.send(com_query(b"SELECT id, ssn FROM customers"))
    got = [p for _, p in payloads(w.answer(masked_result()))][3:-1]
    assert [ref.parse_text_row(p, 2) for p in got] == [[b"1", None], [b"2", None], [b"3", None]]
    assert got[0] == ref.text_row([b"1", None])


@st.composite
def conversations(draw):
    """A run of COM_QUERY commands and the server's answers to them: OKs, ERRs and result
    sets (text rows, NULLs, values long enough for 2- and 3-byte lengths), several results per
    answer as multi-statements give them."""
    deprecate = draw(st.booleans())
    exchanges = []
    for _ in range(draw(st.integers(1, 4))):
        parts = draw(st.lists(st.sampled_from(["ok", "rows", "empty"]), min_size=1, max_size=3))
        end_err = draw(st.booleans())
        seq, chunks = 1, []
        for i, kind in enumerate(parts):
            last = i == len(parts) - 1 and not end_err
            status = AUTOCOMMIT | (0 if last else MORE)
            if kind == "ok":
                chunks.append(ok(seq, affected=draw(st.integers(0, 70000)), status=status))
                seq += 1
            else:
                ncols = draw(st.integers(1, 3))
                rows = [] if kind == "empty" else draw(st.lists(st.lists(
                    st.one_of(st.none(), st.binary(max_size=300)), min_size=ncols, max_size=ncols),
                    max_size=4))
                data = result(rows, names=[f"c{j}" for j in range(ncols)], seq=seq,
                              deprecate=deprecate, status=status)
                chunks.append(data)
                seq += len(payloads(data))
        if end_err:
            chunks.append(err(seq))
        exchanges.append(b"".join(chunks))
    return deprecate, exchanges


@settings(max_examples=150, deadline=None)
@given(conversations(), st.lists(st.integers(1, 3000), max_size=5))
def test_random_conversations_at_random_cuts(conv, cuts):
    """Whatever the answers and wherever the reads cut them, the client gets the server's bytes
    unchanged and the relay counts every command answered, one at a time."""
    deprecate, exchanges = conv
    w = Wire(caps=CAPS if deprecate else CAPS_EOF)
    for i, answer in enumerate(exchanges):
        w.send(com_query(b"SELECT %d" % i))
        points = [0] + sorted(set(c for c in cuts if 0 < c < len(answer))) + [len(answer)]
        got = b"".join(w.answer(answer[a:b]) for a, b in zip(points, points[1:]))
        assert got == answer
        assert w.relay.units_done == i + 1 and w.relay.in_flight == 0
    assert not w.relay.is_closed
