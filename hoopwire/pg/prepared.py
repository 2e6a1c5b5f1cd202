"""Which prepared statements and portals need an approval for each run, as the server has them.

An approve rule that matches a Parse holds every Execute of a portal bound to that statement
(approving one run must not approve the next). For that the relay keeps names: statement ->
why it is held, portal -> why it is held. Those names are the client's to choose, and a
message the server refuses changes nothing on the server: a second Parse of a name that exists,
a Bind of a portal that exists, anything after an error up to Sync. If the gateway changed its
picture on the client's word, `Parse S (DELETE)`, then `Parse S (SELECT 1)` (refused by the
server: S exists), then `Bind/Execute S` would run the DELETE with no approval.

So a definition or a removal is pending until the server answers it (ParseComplete,
BindComplete, CloseComplete, in order), and dropped when the unit it was sent in ends without
that answer. Until then a decision takes the pending change only where it cannot be wrong: in
the batch that made it (after a failed Parse the server skips the rest of the batch, so a later
message of that batch runs only if the Parse took). Anywhere else it takes whichever of the
server's picture and the pending changes holds the statement: holding a run that needs no
approval is a false alarm a person clears; running one that needed it is the bug.

SQL PREPARE / EXECUTE are the same statements by another route (a statement made by a protocol
Parse can be run by SQL EXECUTE and the other way round). A PREPARE that an approve rule matches
makes its name held at once (adding a hold needs no confirmation); an EXECUTE of a held name is
held like an Execute. SQL names are compared without case, since the normaliser folds it: a
name that could be a held one is held.

Pure bookkeeping, no socket: the relay (ext/hoopwire/pg/_relay.pxi) calls it for the messages of a
session once an approve rule has matched a Parse or a PREPARE, and tests drive it directly.
"""

from __future__ import annotations

import re

__all__ = ["PreparedNames", "mentions_prepared", "sql_prepares", "sql_executes"]

# kinds of pending change
_PARSE, _BIND, _CLOSE_S, _CLOSE_P = 0, 1, 2, 3


class PreparedNames:
    __slots__ = ("stmts", "portals", "pending", "sql_held")

    def __init__(self):
        self.stmts: dict[bytes, tuple] = {}      # the server's: statement -> (verdict, sql)
        self.portals: dict[bytes, tuple] = {}    # the server's: portal -> (verdict, sql)
        # changes the server has not answered yet: [unit, kind, name, entry or None]; unit is
        # the number of the ReadyForQuery that ends the batch they were sent in
        self.pending: list[list] = []
        self.sql_held: dict[bytes, tuple] = {}   # PREPAREd names (lower case) -> (verdict, sql)

    # -- the client's messages (unit: the batch's ReadyForQuery number) --------------------

    def parse(self, unit: int, name: bytes, entry) -> None:
        self.pending.append([unit, _PARSE, name, entry])

    def bind(self, unit: int, portal: bytes, stmt: bytes) -> None:
        self.pending.append([unit, _BIND, portal, self.statement(unit, stmt)])

    def close(self, unit: int, what: int, name: bytes) -> None:
        self.pending.append([unit, _CLOSE_S if what == ord("S") else _CLOSE_P, name, None])

    def statement(self, unit: int, name: bytes):
        """Why a run of statement `name` is held (an entry), or None."""
        return self._lookup(unit, name, self.stmts, (_PARSE, _CLOSE_S))

    def portal(self, unit: int, name: bytes):
        """Why an Execute of portal `name` is held, or None."""
        return self._lookup(unit, name, self.portals, (_BIND, _CLOSE_P))

    def _lookup(self, unit, name, confirmed, kinds):
        current = _MISSING
        held = confirmed.get(name)
        for u, kind, n, entry in self.pending:
            if n != name or kind not in kinds:
                continue
            if u == unit:
                current = entry         # the batch's own latest change decides within it
            elif entry is not None and held is None:
                held = entry            # an earlier batch's change not yet answered: either
        if current is not _MISSING:
            return current
        if held is None and name.lower() in self.sql_held and kinds[0] == _PARSE:
            held = self.sql_held[name.lower()]
        return held

    # -- the server's answers ------------------------------------------------------------------

    def parse_complete(self) -> None:
        self._confirm((_PARSE,), self.stmts)

    def bind_complete(self) -> None:
        self._confirm((_BIND,), self.portals)

    def close_complete(self) -> None:
        for i, (_u, kind, name, _e) in enumerate(self.pending):
            if kind in (_CLOSE_S, _CLOSE_P):
                del self.pending[i]
                (self.stmts if kind == _CLOSE_S else self.portals).pop(name, None)
                if kind == _CLOSE_S:
                    self.sql_held.pop(name.lower(), None)
                return

    def _confirm(self, kinds, confirmed) -> None:
        for i, (_u, kind, name, entry) in enumerate(self.pending):
            if kind in kinds:
                del self.pending[i]
                if entry is None:
                    confirmed.pop(name, None)
                else:
                    confirmed[name] = entry
                return

    def ready(self, unit: int, idle: bool) -> None:
        """ReadyForQuery number `unit`: what that batch sent and the server did not answer never
        happened; outside a transaction block every portal is gone."""
        if self.pending:
            self.pending = [p for p in self.pending if p[0] > unit]
        if idle:
            self.portals.clear()

    # -- SQL PREPARE / EXECUTE -----------------------------------------------------------------

    def prepared_in_sql(self, names: list[bytes], entry) -> None:
        for n in names:
            self.sql_held[n.lower()] = entry

    def executed_in_sql(self, names: list[bytes]):
        """Why one of the statements a Query runs by SQL EXECUTE is held, or None. Any
        statement whose name could be it counts (case aside), confirmed or pending."""
        for n in names:
            low = n.lower()
            if low in self.sql_held:
                return self.sql_held[low]
            for name, entry in self.stmts.items():
                if name.lower() == low:
                    return entry
            for _u, kind, name, entry in self.pending:
                if kind == _PARSE and entry is not None and name.lower() == low:
                    return entry
        return None


_MISSING = object()

# in the full view (literals kept, quoted identifiers decoded and kept in quotes)
_NAME = rb'("(?:[^"]|"")*"|[^\s(;"]+)'
_PREPARE = re.compile(rb"^prepare\s+" + _NAME)
_MENTIONS = re.compile(rb"(?i)execute|prepare")


def mentions_prepared(sql: bytes) -> bool:
    """Whether a Query's raw text may hold SQL PREPARE or EXECUTE (a cheap first look)."""
    return _MENTIONS.search(sql) is not None
_EXECUTE = re.compile(rb"\bexecute\s+" + _NAME)


def _unquote(name: bytes) -> bytes:
    if name[:1] == b'"':
        return name[1:-1].replace(b'""', b'"')
    return name


def sql_prepares(statements: list[bytes]) -> list[bytes]:
    """The names that SQL PREPARE statements define (normalised full view, one per statement)."""
    out = []
    for s in statements:
        m = _PREPARE.match(s)
        if m:
            out.append(_unquote(m.group(1)))
    return out


def sql_executes(statements: list[bytes]) -> list[bytes]:
    """The names SQL EXECUTE runs anywhere in the statements (EXPLAIN ANALYZE EXECUTE,
    CREATE TABLE ... AS EXECUTE too). PL/pgSQL's EXECUTE lives in a literal: not here."""
    out = []
    for s in statements:
        if b"execute" in s:
            out.extend(_unquote(m.group(1)) for m in _EXECUTE.finditer(s))
    return out
