"""The guardrail engine: rules compiled into Hyperscan databases, applied to statements.

Protocol neutral: it takes the bytes of a query string (one or more statements) and returns a
verdict. The SQL dialect comes in as `views`, the dialect's lexer (hoopwire.core.seams.Dialect:
PostgreSQL's is hoopwire._sqlnorm.statement_views); a MySQL connection brings its own.

    engine = PolicyEngine(connection.guardrails, views=dialect.statement_views,
                          path="connection[0].guardrail")                 # compiles
    policy = engine.for_groups(identity.groups)      # per group set, compiled once and cached
    verdict = policy.check(query_bytes)              # None: nothing matched

Per rule set there are up to three Hyperscan databases: one per view of the statement (the code
view with literals replaced, and the full view for rules that scan literals), and, when both
exist, their union for statements whose two views are the same text. They are compiled with
CASELESS | DOTALL | SINGLEMATCH: blocking needs to know *whether* and *which* rule matched, not
where, so no start-of-match tracking is paid for. Every pattern carries its rule's index as its
Hyperscan id.

Rules with `allow_kinds` judge what a statement *is* instead of how it reads. The engine does not
know any SQL grammar: the protocol side hands it a classifier (for PostgreSQL
hoopwire.pg.statements.CLASSIFIER), an object with

    names: Mapping[str, frozenset[str]]      # allow_kinds words -> the kinds each stands for
    classify(sql: bytes) -> frozenset[str]   # the kinds of a message's statements

A GroupPolicy with no kind rule never calls it. With some, the patterns go first (a block by
pattern needs no parse), then the classifier; a kind rule matches when the message has a kind
it does not allow. A classifier may also offer

    literal_form(sql: bytes) -> bytes | None  # the same statement, spelled for the packs

asked only when a pack blocks a message: the packs then judge the literal form instead (for
PostgreSQL, pg_dump's set_config(name, ...) FROM pg_settings WHERE name = '<literal>'), while
the connection's own patterns still judge the text as written.

A dialect may also offer `shape(sql, want_full) -> (key, code, full) | None` (PostgreSQL's is
hoopwire._sqlnorm.statement_shape): the two views with every integer set aside (written 0, or 1
where it is the integer 1), and one bytes key naming them. Verdicts are then cached by that key
and judged from those views, so a message that differs from one judged before only in its
literals and integers (pgbench's `WHERE aid = <n>`, an agent's `LIMIT 50`) costs one lexer pass
in C and one lookup. Only for rule sets whose every pattern judges the shape as it judges the
text: the dialect's own packs (a dialect that offers `shape` vouches for its packs: PostgreSQL's
read digits only as name bytes, and the integer 1 of `WHERE 1 = 1`), and patterns of one's own
that cannot match a digit (`_digit_blind`). Any other pattern turns the shape cache off for the
rule sets it is in; they are judged by the text as before.

Compiling is CPU work (milliseconds for a few rules, around a second for a thousand): build the
engine, and call for_groups for a group set not seen before, off the event loop, then swap the
result in by reference. A GroupPolicy is meant to be used from one thread at a time (each of its
databases has its own Hyperscan scratch); for_groups may be called from any thread.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from typing import Callable, Iterable, Mapping, Protocol

import hyperscan

from hoopwire.config import GuardrailConfig
from hoopwire.policy.rules import CODE, FULL, Pack, PolicyError, Rule, Verdict, build_rules

__all__ = ["PolicyEngine", "GroupPolicy", "HS_FLAGS", "KindClassifier"]


class KindClassifier(Protocol):
    """What a protocol supplies for allow_kinds rules (see the module docstring)."""

    names: Mapping[str, frozenset[str]]

    def classify(self, sql: bytes) -> frozenset[str]: ...

HS_FLAGS = hyperscan.HS_FLAG_CASELESS | hyperscan.HS_FLAG_DOTALL | hyperscan.HS_FLAG_SINGLEMATCH

_MISS = object()
_OBSERVE_EVERY = 16  # scan_seconds sees one cache miss in this many (a power of two)
_GROUP_CACHE = 1024          # group sets remembered by for_groups
_CACHE_ITEM_MAX = 64 * 1024  # longer messages are scanned every time rather than cached
# A pattern of one's own that cannot match a digit: every byte a literal that is no digit and no
# class, or \s \b \B, or an escaped punctuation byte, or \xHH of a byte that is no digit (MySQL's
# implied unreadable-statement rule is ^\x00...). Such a pattern's matches lie between
# digits, so rewriting runs of digits into other runs of digits changes none (\b too: a digit is
# a word byte either way). Anything else (., [...], \w, \d, \S, \x31, a digit, a {n}) might
# read an integer's value, and keeps its rule set judged by the text.
_DIGIT_BLIND = re.compile(rb"(?:[^.\[\]{}\\0-9]|\\[sbB]|\\[^A-Za-z0-9]"
                          rb"|\\x(?:[0-24-9a-fA-F][0-9a-fA-F]|3[a-fA-F]))*\Z")


def _digit_blind(pattern: bytes) -> bool:
    return _DIGIT_BLIND.match(pattern) is not None


def _compile(patterns: list[tuple[bytes, int]]) -> hyperscan.Database | None:
    if not patterns:
        return None
    db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    db.compile(expressions=[p for p, _ in patterns], ids=[i for _, i in patterns],
               elements=len(patterns), flags=HS_FLAGS)
    return db


def _compile_or_explain(rules: list[Rule], view: str, path: str) -> hyperscan.Database | None:
    """One database for every pattern of `rules` in `view`. When Hyperscan refuses the set,
    compile the patterns one by one to name each bad one (rule, pattern, reason)."""
    patterns = [(p, r.index) for r in rules for v, p, _ in r.patterns if v == view]
    # Hyperscan reads C strings: a NUL would cut a pattern short without a word
    nul = [(key, f"rule {r.name!r}: pattern {p.decode('utf-8', 'replace')!r} holds a NUL byte")
           for r in rules for v, p, key in r.patterns if v == view and b"\0" in p]
    if nul:
        raise PolicyError(nul)
    try:
        return _compile(patterns)
    except hyperscan.error as whole:
        problems = []
        for r in rules:
            for v, p, key in r.patterns:
                if v != view:
                    continue
                try:
                    _compile([(p, 0)])
                except hyperscan.error as e:
                    reason = e.args[0] if e.args else str(e)
                    problems.append((key, f"rule {r.name!r}: pattern "
                                          f"{p.decode('utf-8', 'replace')!r} does not compile: "
                                          f"{reason}"))
        if not problems:  # each compiles alone, the set does not (size limits)
            reason = whole.args[0] if whole.args else str(whole)
            problems.append((path, f"the {len(patterns)} patterns do not compile together: "
                                   f"{reason}"))
        raise PolicyError(problems) from None


def _key_order(key: str) -> list:
    """Sort "a[2].patterns[10]" after "a[2].patterns[9]"."""
    return [int(part) if part.isdigit() else part for part in re.split(r"\[(\d+)\]", key)]


class PolicyEngine:
    """The compiled guardrails of one connection.

    `scan_seconds`, when given, is called with the seconds one inspection took (normalising and
    scanning a message that was not in the verdict cache); cache hits are not observed.
    `cache_size` bounds each GroupPolicy's verdict cache in entries (0: no cache) and
    `cache_bytes` in the total length of the cached messages.
    """

    def __init__(self, guardrails: tuple[GuardrailConfig, ...], *, views: Callable,
                 cache_size: int = 4096, path: str = "guardrail",
                 scan_seconds: Callable[[float], None] | None = None,
                 cache_bytes: int = 8 * 1024 * 1024, classifier: KindClassifier | None = None,
                 packs: Mapping[str, Pack] | None = None, shape: Callable | None = None):
        if cache_size < 0 or cache_bytes < 0:
            raise ValueError("cache_size and cache_bytes must not be negative")
        self.views = views          # the dialect's lexer: (code, full, ambiguous) of a message
        self.shape = shape          # the dialect's shape key and views, or None (module docstring)
        # the dialect's pack patterns: a dialect that offers `shape` vouches for them
        self._vouched = frozenset(p.encode() for pk in (packs or {}).values()
                                  for _, p in pk.patterns) if shape is not None else frozenset()
        self.classifier = classifier
        self._rules: tuple[Rule, ...] = tuple(build_rules(
            tuple(guardrails), path, classifier.names if classifier is not None else None,
            packs))
        self._path = path
        self.cache_size = cache_size
        self.cache_bytes = cache_bytes
        self.scan_seconds = scan_seconds
        self._misses = 0
        n = len(self._rules)
        self._names = [r.name for r in self._rules]
        self._blocking = [r.action == "block" for r in self._rules]
        self._matches = [0] * n
        self._lock = threading.Lock()
        self._by_rules: OrderedDict[frozenset[int], GroupPolicy] = OrderedDict()
        self._by_groups: OrderedDict[frozenset[str], GroupPolicy] = OrderedDict()
        # compile every rule now: this is what reports bad patterns, at load and at reload
        everything = frozenset(range(n))
        self._by_rules[everything] = self._build(everything)

    # -- public ----------------------------------------------------------------------------------

    @property
    def empty(self) -> bool:
        """No rules at all: the gateway can skip inspection entirely."""
        return not self._rules

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self._rules

    @property
    def misses(self) -> int:
        """Messages inspected (not answered from a cache), over all group sets."""
        return self._misses

    def for_groups(self, groups: Iterable[str]) -> GroupPolicy:
        """The policy for an identity with these groups (rules scoped with groups /
        except_groups applied). Group sets with the same applicable rules share one
        GroupPolicy; the first request for a new rule set compiles it."""
        groups = groups if isinstance(groups, frozenset) else frozenset(groups)
        with self._lock:
            policy = self._by_groups.get(groups)
            if policy is not None:
                self._by_groups.move_to_end(groups)
                return policy
            ids = frozenset(r.index for r in self._rules if r.applies_to(groups))
            policy = self._by_rules.get(ids)
            if policy is None:
                policy = self._build(ids)
                self._by_rules[ids] = policy
                if len(self._by_rules) > _GROUP_CACHE:
                    self._by_rules.popitem(last=False)
            else:
                self._by_rules.move_to_end(ids)
            self._by_groups[groups] = policy
            if len(self._by_groups) > _GROUP_CACHE:
                self._by_groups.popitem(last=False)
            return policy

    def stats(self) -> dict[str, int]:
        """Messages each rule has matched so far (cache hits included), by rule name."""
        return dict(zip(self._names, self._matches))

    # -- internals -------------------------------------------------------------------------------

    def _build(self, ids: frozenset[int]) -> GroupPolicy:
        rules = [r for r in self._rules if r.index in ids]
        dbs, problems = [], []
        for view in (CODE, FULL):
            try:
                dbs.append(_compile_or_explain(rules, view, self._path))
            except PolicyError as e:
                problems += e.problems
        if problems:
            problems.sort(key=lambda p: _key_order(p[0]))
            raise PolicyError(problems)
        code, full = dbs
        both = full
        if code is not None and full is not None:
            # for statements whose two views are the same text (no literals, no quoted
            # keywords -- most parameterised statements): every pattern in one scan
            both = _compile([(p, r.index) for r in rules for _, p, _ in r.patterns])
        return GroupPolicy(self, tuple(rules), code, full, both)

    def _verdict(self, ids: Iterable[int], refused: dict[int, tuple[str, ...]] | None = None
                 ) -> tuple[Verdict, tuple[int, ...]]:
        order = tuple(sorted(set(ids)))
        rules = self._rules
        best = min(order, key=lambda i: (rules[i].rank, i))
        rule = rules[best]
        message, kinds = rule.message, ()
        if refused and best in refused:
            # an allow_kinds rule: the message names what it refused
            kinds = refused[best]
            message = (f"statement kind{'s' if len(kinds) > 1 else ''} "
                       f"{', '.join(kinds)} not allowed" + (f" ({rule.message})"
                                                            if rule.message else ""))
        return (Verdict(action=rule.action, rule=rule.name, message=message,
                        matched=tuple(rules[i].name for i in order), kinds=kinds), order)


class GroupPolicy:
    """The rules that apply to one group set, compiled, with a verdict cache."""

    __slots__ = ("_engine", "rules", "approves", "_code", "_full", "_both", "_want_full", "_cache",
                 "_old", "_gen_size", "_gen_bytes", "_cached_bytes", "_on_match", "_views",
                 "_scans", "_kind_rules", "_classify", "_literal_form", "_collect", "_shapes",
                 "_shape", "_by_shape", "_old_shape", "_shape_bytes", "_classify_shape",
                 "__weakref__")

    def __init__(self, engine: PolicyEngine, rules: tuple[Rule, ...],
                 code: hyperscan.Database | None, full: hyperscan.Database | None,
                 both: hyperscan.Database | None):
        self._engine = engine
        self._views = engine.views
        self.rules = rules
        # some rule holds statements for a person: the relay follows prepared statements
        self.approves = any(r.action == "approve" for r in rules)
        # bound scan methods, looked up once: patterns on the code view (literals as '?'), on
        # the full view (scan_literals), and all of them for statements whose views are equal
        self._code = code.scan if code is not None else None
        self._full = full.scan if full is not None else None
        self._both = both.scan if both is not None else None
        self._want_full = full is not None
        self._scans = code is not None or full is not None
        # the allow_kinds rules, (index, kinds allowed), and the classifier only if there are
        self._kind_rules = tuple((r.index, r.kinds) for r in rules if r.kinds is not None)
        self._classify = engine.classifier.classify if self._kind_rules else None
        # classify_shape(sql, code pieces of its shape), where the classifier offers it: no
        # second lexer pass on a shape not judged before
        self._classify_shape = getattr(engine.classifier, "classify_shape", None) \
            if self._kind_rules else None
        self._literal_form = getattr(engine.classifier, "literal_form", None)
        # Two generations of plain dicts: entries go to the young one; when it is full it
        # becomes the old one and the previous old one is dropped; a hit in the old one is
        # promoted. Constant time per miss -- an LRU's bookkeeping, or evicting from the front
        # of one dict (whose iteration then skips the holes), cost more than a small scan,
        # and with new literals in every statement most lookups miss.
        self._gen_size = max(1, engine.cache_size // 2)
        self._gen_bytes = max(1, engine.cache_bytes // 2)
        self._cache: dict[bytes, object] | None = (
            {} if engine.cache_size and engine.cache_bytes else None)
        self._old: dict[bytes, object] = {}
        # The rules that matched, by the statement views they scanned: the views are all a
        # scan reads, so a message that differs from one judged before only in its literals
        # (pgbench's select, a new key each time; most agents' statements) costs one lexer
        # pass and one lookup here instead of a Hyperscan scan per statement. Only while no
        # rule reads the literals (the code views are then everything scanned).
        self._shapes: dict[tuple, tuple] | None = (
            {} if engine.cache_size and full is None else None)
        # Verdicts by the dialect's shape key (see the module docstring): with it, the cache
        # above is not needed. Two generations, bounded like the text cache; a reload builds a
        # new engine, and with it empty caches.
        vouched = engine._vouched
        self._shape = engine.shape if (
            engine.shape is not None and self._cache is not None and
            all(p in vouched or _digit_blind(p) for r in rules for _, p, _ in r.patterns)) \
            else None
        if self._shape is not None:
            self._shapes = None
        self._by_shape: dict[bytes, object] = {}
        self._old_shape: dict[bytes, object] = {}
        self._shape_bytes = 0
        self._cached_bytes = 0
        blocking = engine._blocking

        def on_match(rule_id: int, start: int, end: int, flags: int, hits: list) -> bool:
            hits.append(rule_id)
            return blocking[rule_id]   # True stops the scan: a block needs no more evidence

        self._on_match = on_match

        def collect(rule_id: int, start: int, end: int, flags: int, hits: list) -> bool:
            hits.append(rule_id)
            return False   # every rule that matches: see _judge_literal_form

        self._collect = collect

    @property
    def empty(self) -> bool:
        """No rule applies to this group set."""
        return not self.rules

    def check(self, sql: bytes, kinds: frozenset[str] | None = None) -> Verdict | None:
        """The verdict on one message (one or more statements), or None if no rule matched.

        One blocked statement blocks the message. For a block, `matched` holds the rules found
        up to the first blocking match (the scan stops there); for log/approve it is complete.
        Verdicts are cached by the exact bytes of the message, and by its shape where the
        dialect offers one (module docstring). `kinds`, when given, are the
        message's statement kinds as the caller knows them (a text it wrote itself, such as a
        startup setting): allow_kinds rules judge those, and the verdict is not cached."""
        if type(sql) is not bytes:
            sql = bytes(sql)
        cache = self._cache if kinds is None else None
        if cache is not None:
            hit = cache.get(sql, _MISS)
            if hit is _MISS:
                hit = self._old.get(sql, _MISS)
                if hit is not _MISS:
                    self._remember(sql, hit)
            if hit is not _MISS:
                if hit is None:
                    return None
                matches = self._engine._matches
                for i in hit[1]:
                    matches[i] += 1
                return hit[0]
        if not self.rules:
            return None
        shaped = None
        if cache is not None and self._shape is not None and len(sql) <= _CACHE_ITEM_MAX:
            shaped = self._shape(sql, self._want_full)
            if shaped is not None:
                hit = self._by_shape.get(shaped[0], _MISS)
                if hit is _MISS:
                    hit = self._old_shape.get(shaped[0], _MISS)
                    if hit is not _MISS:
                        self._remember_shape(shaped[0], hit)
                if hit is not _MISS:
                    # the text too: sysbench's 10,000 ids repeat, and a text hit is one dict
                    # lookup against a lexer pass (mysql_call_profile guarded text: 14.5 Python
                    # calls per transaction without this, 12.5 with it)
                    self._remember(sql, hit)
                    if hit is None:
                        return None
                    matches = self._engine._matches
                    for i in hit[1]:
                        matches[i] += 1
                    return hit[0]
        engine = self._engine
        observe = engine.scan_seconds
        engine._misses += 1
        if observe is not None and not engine._misses & (_OBSERVE_EVERY - 1):
            # timing every miss costs about as much as a small scan: sample instead
            t0 = time.perf_counter()
            hits, refused, by_shape = self._judge(sql, kinds, shaped)
            observe(time.perf_counter() - t0)
        else:
            hits, refused, by_shape = self._judge(sql, kinds, shaped)
        result = None
        if hits:
            result = self._engine._verdict(hits, refused)
            matches = self._engine._matches
            for i in result[1]:
                matches[i] += 1
        if cache is not None and len(sql) <= _CACHE_ITEM_MAX:
            self._remember(sql, result)
            if by_shape:
                self._remember_shape(shaped[0], result)
        return result[0] if result is not None else None

    def _judge(self, sql: bytes, kinds: frozenset[str] | None, shaped: tuple | None
               ) -> tuple[list[int], dict | None, bool]:
        """(rule ids that match, kinds refused by rule, whether the verdict holds for every
        text of the shape). With a shape, its views are scanned: the verdict is then the
        shape's by construction. Not the shape's: pg_dump's literal form (read from the
        string literals), and a refusal of `unparsed` text (a bad literal the shape hides)."""
        refused = None
        if shaped is not None:
            hits = self._scan_views(shaped[1], shaped[2]) if self._scans else []
        else:
            hits = self._inspect(sql) if self._scans else []
        by_shape = shaped is not None
        if hits and self._literal_form is not None:
            judged = self._judge_literal_form(sql, hits)
            if judged is not hits:
                hits, by_shape = judged, False
        if self._kind_rules:
            if kinds is None and shaped is not None and self._classify_shape is not None and \
                    not any(self._engine._blocking[i] for i in hits):
                kinds = self._classify_shape(sql, shaped[1])
            refused = self._judge_kinds(sql, kinds, hits)
            if refused and any("unparsed" in k for k in refused.values()):
                by_shape = False
        return hits, refused, by_shape

    def _scan_views(self, code: list, full: list | None) -> list[int]:
        """The rules that match statement views already made (a shape's), in the order found."""
        hits: list[int] = []
        try:
            self._scan_into(code, full, self._on_match, hits)
        except hyperscan.ScanTerminated:
            pass  # a blocking rule matched
        return hits

    def _scan_into(self, code: list, full: list | None, on_match, hits: list) -> None:
        """One Hyperscan scan per statement and view into `hits`, or one of the combined database
        where a statement's two views are the same text. ScanTerminated (a blocking rule
        matched) goes to the caller, which decides what else is read."""
        if full is None:
            scan = self._code
            for stmt in code:
                scan(stmt, on_match, 0, hits)
        else:
            scan_code, scan_full, scan_both = self._code, self._full, self._both
            for c, f in zip(code, full):
                if c is f:
                    scan_both(c, on_match, 0, hits)
                else:
                    if scan_code is not None:
                        scan_code(c, on_match, 0, hits)
                    scan_full(f, on_match, 0, hits)

    def _judge_kinds(self, sql: bytes, kinds: frozenset[str] | None,
                     hits: list[int]) -> dict[int, tuple[str, ...]] | None:
        """Add to `hits` every allow_kinds rule the message's kinds break; the kinds each
        refuses, by rule index. Nothing to do (and no parse) when a pattern already blocks."""
        blocking = self._engine._blocking
        if any(blocking[i] for i in hits):
            return None
        if kinds is None:
            kinds = self._classify(sql)
        refused = {}
        for index, allowed in self._kind_rules:
            bad = kinds - allowed
            if bad:
                hits.append(index)
                refused[index] = tuple(sorted(bad))
        return refused

    def _judge_literal_form(self, sql: bytes, hits: list[int]) -> list[int]:
        """When a pack blocks the message and the classifier has a literal form of it: the packs
        judge the literal form, the other rules the text. Both scanned to the end (a scan
        stopped at the pack's match has not asked the others)."""
        rules = self._engine._rules
        blocking = self._engine._blocking
        if not any(blocking[i] and rules[i].pack is not None for i in hits):
            return hits
        alt = self._literal_form(sql)
        if alt is None:
            return hits
        as_written = self._inspect(sql, self._collect)
        literal = self._inspect(alt, self._collect)
        return [i for i in as_written if rules[i].pack is None] + \
               [i for i in literal if rules[i].pack is not None]

    def _inspect(self, sql: bytes, on_match=None) -> list[int]:
        """The ids of the rules that match, in the order found: one lexer pass for both views,
        then one Hyperscan scan per statement and view -- or a single scan of the combined
        database when the statement's two views are the same text."""
        hits: list[int] = []
        on_match = on_match or self._on_match
        want_full = self._want_full
        views = self._views
        code, full, ambiguous = views(sql, want_full)
        shapes = self._shapes
        key = None
        if shapes is not None and not ambiguous and on_match is self._on_match:
            key = tuple(code)
            seen = shapes.get(key)
            if seen is not None:
                return list(seen)
        try:
            while True:
                self._scan_into(code, full, on_match, hits)
                if not ambiguous:
                    if key is not None:
                        if len(shapes) >= self._gen_size:
                            shapes.clear()
                        shapes[key] = tuple(hits)
                    return hits
                # A '...' literal holds a backslash. Should the client have turned
                # standard_conforming_strings off, the server reads '\'' ... differently: read
                # the message that way too, and let whichever reading matches decide.
                code, full, ambiguous = views(sql, want_full, standard_conforming_strings=False)
                ambiguous = False
        except hyperscan.ScanTerminated:
            return hits  # a blocking rule matched

    def _remember(self, sql: bytes, result: object) -> None:
        cache = self._cache
        cache[sql] = result
        self._cached_bytes += len(sql)
        if len(cache) >= self._gen_size or self._cached_bytes >= self._gen_bytes:
            self._old = cache
            self._cache = {}
            self._cached_bytes = 0

    def passes_whole_shape(self, sql: bytes) -> bool:
        """Whether the answer for `sql` is None for every text of its shape: a None stored in
        the shape cache. Verdicts read from a literal form, and refusals of unparsed text, are
        kept by text alone, never there. False without a shape cache or a shape for `sql`.
        The MySQL relay asks it before remembering a statement shape (Relay._memo_put)."""
        if self._shape is None:
            return False
        shaped = self._shape(sql, self._want_full)
        if shaped is None:
            return False
        hit = self._by_shape.get(shaped[0], _MISS)
        if hit is _MISS:
            hit = self._old_shape.get(shaped[0], _MISS)
        return hit is None

    def _remember_shape(self, key: bytes, result: object) -> None:
        young = self._by_shape
        young[key] = result
        self._shape_bytes += len(key)
        if len(young) >= self._gen_size or self._shape_bytes >= self._gen_bytes:
            self._old_shape = young
            self._by_shape = {}
            self._shape_bytes = 0

    def clear_cache(self) -> None:
        if self._cache is not None:
            self._cache = {}
            self._old = {}
            self._cached_bytes = 0
        self._by_shape = {}
        self._old_shape = {}
        self._shape_bytes = 0
        if self._shapes is not None:
            self._shapes = {}
