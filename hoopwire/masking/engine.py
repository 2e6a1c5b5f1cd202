"""The masking engine of one connection: column rules, detectors and strategies, protocol neutral.

    engine = MaskEngine(conn.masks, conn.detectors,
                        hash_key=conn.mask_hash_key.get().encode() if conn.mask_hash_key else None,
                        path="connection[0]")            # compiles: build it off the event loop
    rule = engine.column_rule("public", "users", "ssn")   # MaskRule | None, cached
    text, counts = engine.mask_text(b"Key (email)=(a@b.io) already exists.")
    plan = engine.row_plan([Column("public", "users", "ssn", K_STR), Column(None, None, None)])
    plan.off[i], plan.ln[i] = ...; plan.mask_row(base)    # a protocol's row walk, in Cython
    plan.mask_spans(row, [(off, len), ...])               # the same from Python
    plan.take_counts()                                    # {"US_SSN": 3, "column:mask[0]": 10}

Semantics of the configuration:

* `columns` globs name source columns as `schema.table.column`; `*` matches any run of
  characters, dots included (`*.password` is every column named password in every table), `?`
  one character; matching ignores ASCII case (over-masking is the safe error). A value of a
  matched column is masked whole, whatever it holds, with the rule's strategy.
* `detectors` of every rule apply to every value that no column rule masks (and to free text:
  error and notice fields, notification payloads, COPY rows); a hit is masked in place with the
  strategy of the first rule that lists the detector.

Hyperscan: all detectors compile into one Scanner (hoopwire._mask) with two databases -- pass 1
without start-of-match over every candidate value of a row at once (end offsets say which values
hold a hit), pass 2 with SOM_LEFTMOST over only those values to find the spans. Most values hold
no hit, so most bytes never pay for start-of-match.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple, Optional

from hoopwire._mask import (ACT_DETECT, ACT_PASS, ACT_WHOLE, K_OPAQUE, K_STR, MaskRowError,
                            RowPlan, Scanner)
from hoopwire.config import DetectorConfig, MaskConfig
from hoopwire.masking.detectors import BUILTIN, Detector, DetectorError, build_detectors
from hoopwire.masking.strategies import UTF8, Strategy, chars_of

__all__ = ["MaskEngine", "MaskRule", "Column", "MaskRowError", "glob_regex"]

_RULE_CACHE = 4096


class Column(NamedTuple):
    """What a protocol knows of one result column, in the masker's terms. schema/table/column
    are the source column's names (None when the column is an expression or not resolved);
    kind is the value kind (hoopwire._mask K_*) the protocol mapped the column's type to
    (PostgreSQL: hoopwire.pg.kinds)."""
    schema: Optional[str]
    table: Optional[str]
    column: Optional[str]
    kind: int = K_STR


@dataclass(frozen=True)
class MaskRule:
    index: int                   # position among the connection's mask rules
    label: str                   # "mask[0]": the name counts use
    globs: tuple[str, ...]
    strategy: Strategy = field(compare=False)


def glob_regex(glob: str) -> str:
    """`*` any run of characters (dots too), `?` one character, the rest literal."""
    out = []
    for ch in glob:
        out.append(".*" if ch == "*" else "." if ch == "?" else re.escape(ch))
    return "".join(out)


class MaskEngine:

    def __init__(self, masks: Iterable[MaskConfig], detectors: Iterable[DetectorConfig] = (), *,
                 hash_key: bytes | None = None, path: str = "connection"):
        masks = tuple(masks)
        # Without a key (the configuration requires one for `hash`) a random per-process key:
        # never an unkeyed hash, which a dictionary of likely values would reverse.
        self._key = bytes(hash_key) if hash_key else os.urandom(32)
        known = build_detectors(tuple(detectors), path=path)
        self.rules: list[MaskRule] = []
        problems = []
        chosen: dict[str, Strategy] = {}
        for i, m in enumerate(masks):
            try:
                strategy = Strategy(m.strategy, m.keep, self._key)
            except ValueError as e:
                problems.append((f"{path}.mask[{i}].strategy", str(e)))
                continue
            if m.columns:
                self.rules.append(MaskRule(i, f"mask[{i}]", tuple(m.columns), strategy))
            for name in m.detectors:
                if name not in known:
                    problems.append((f"{path}.mask[{i}].detectors",
                                     f"unknown detector {name!r} (built in: "
                                     f"{', '.join(sorted(BUILTIN))}, or a [[connection.detector]])"))
                    continue
                chosen.setdefault(name, strategy)
        if problems:
            raise DetectorError(problems)
        self._globs = [re.compile("(?:" + "|".join(glob_regex(g) for g in r.globs) + r")\Z",
                                  re.IGNORECASE | re.DOTALL) for r in self.rules]
        self._rule_cache: dict[tuple[str, str, str], Optional[MaskRule]] = {}
        self.detectors: tuple[Detector, ...] = tuple(known[n] for n in chosen)
        self._detector_strategies = [chosen[d.name] for d in self.detectors]
        self.scanner: Optional[Scanner] = (
            Scanner(list(self.detectors), self._detector_strategies)
            if self.detectors else None)
        self._variants: dict[str, "MaskEngine"] = {}
        self.rule_names = tuple(r.label for r in self.rules)
        self._rule_pos = {r.index: k for k, r in enumerate(self.rules)}

    def for_encoding(self, client_encoding: str | None) -> "MaskEngine":
        """This engine for a session in `client_encoding` (as the server reports it): the same
        rules and detectors, with strategies that count characters as that encoding does.
        Built once per measure and kept."""
        chars = chars_of(client_encoding)
        if chars == UTF8:
            return self
        v = self._variants.get(chars)
        if v is None:
            v = copy.copy(self)
            v._variants = {}
            v._rule_cache = {}
            v.rules = [dataclasses.replace(r, strategy=r.strategy.measured(chars))
                       for r in self.rules]
            v._detector_strategies = [st.measured(chars) for st in self._detector_strategies]
            v.scanner = (Scanner(list(self.detectors), v._detector_strategies)
                         if self.detectors else None)
            self._variants[chars] = v
        return v

    @property
    def detector_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.detectors)

    # -- column rules ------------------------------------------------------------------------

    def column_rule(self, schema: str, table: str, column: str) -> Optional[MaskRule]:
        """The first rule whose globs match schema.table.column, or None. Cached."""
        key = (schema, table, column)
        try:
            return self._rule_cache[key]
        except KeyError:
            pass
        name = f"{schema}.{table}.{column}"
        found = None
        for rule, rx in zip(self.rules, self._globs):
            if rx.match(name):
                found = rule
                break
        if len(self._rule_cache) >= _RULE_CACHE:
            self._rule_cache.clear()
        self._rule_cache[key] = found
        return found

    # -- free text ---------------------------------------------------------------------------

    def mask_text(self, data: bytes) -> tuple[bytes, dict[str, int]]:
        """Detectors over free text (error and notice fields, notification payloads): the
        rewritten bytes and {detector: hits}. Unchanged input comes back as the same object."""
        if self.scanner is None or not data:
            return data, {}
        return self.scanner.mask(data)

    # -- result sets -------------------------------------------------------------------------

    def row_plan(self, columns: Iterable[Column | tuple], *, unresolved_rule: MaskRule | None = None,
                 detect: bool = True, plan_type: type = RowPlan) -> RowPlan:
        """A RowPlan for one result set. A column whose source resolves to a column rule is
        masked whole; with `unresolved_rule` (unresolved_columns = "mask"), every column without
        a source is masked whole by that rule; every other column goes to the detectors (when
        there are any, and detect is true). plan_type: RowPlan, or a protocol's subclass of it that
        adds its row walk (hoopwire.pg._wire.DataRowPlan)."""
        cols = []
        names = self.rule_names
        # the unresolved rule is no configured one: it gets the counter after them, or what
        # it masked (every value of `COPY (SELECT upper(ssn) ...)`) would be counted nowhere
        extra = -1
        if unresolved_rule is not None and unresolved_rule.index not in self._rule_pos:
            extra, names = len(names), names + (unresolved_rule.label,)
        for c in columns:
            c = c if isinstance(c, Column) else Column(*c)
            kind = c.kind
            if not K_STR <= kind <= K_OPAQUE:
                raise ValueError(f"column {c!r}: unknown value kind")
            rule = None
            if c.column is not None:
                rule = self.column_rule(c.schema or "", c.table or "", c.column)
            elif unresolved_rule is not None:
                rule = unresolved_rule
            if rule is not None:
                cols.append((ACT_WHOLE, kind, rule.strategy,
                             self._rule_pos.get(rule.index, extra)))
            elif self.scanner is not None and detect:
                cols.append((ACT_DETECT, kind, None, -1))
            else:
                cols.append((ACT_PASS, kind, None, -1))
        return plan_type(cols, self.scanner, names)

    def copy_plan(self, columns: Iterable[Column | tuple], **kw) -> RowPlan:
        """A RowPlan for rows of text values (COPY TO STDOUT in text or CSV): every value is
        a string there."""
        return self.row_plan([Column(*(tuple(c)[:3] + (K_STR,))) for c in columns], **kw)
