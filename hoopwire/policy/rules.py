"""The guardrail rule model: what a configured rule compiles to, verdicts, and policy errors.

A `[[connection.guardrail]]` (hoopwire.config.GuardrailConfig) becomes one `Rule`: its own
patterns, or the patterns of a built-in pack (the dialect's: hoopwire/pg/packs.py), each tagged with the view of
the statement it is matched against -- the code view (literals replaced by '?') unless the rule
says `scan_literals = true`, in which case the full view (literals kept). Or, with `allow_kinds`,
an allow-list of statement kinds: the kind names come from the protocol's classifier (for
PostgreSQL hoopwire.pg.statements), passed in as `kind_names`, never imported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from hoopwire.config import ConfigError, GuardrailConfig

__all__ = ["ACTIONS", "CODE", "FULL", "Pack", "Verdict", "PolicyError", "Rule", "build_rules"]

CODE = "code"   # a pattern scanned against the code view: literals replaced by '?'
FULL = "full"   # a pattern scanned against the full view: literals kept


@dataclass(frozen=True)
class Pack:
    """A built-in rule set a dialect offers (PostgreSQL's: hoopwire/pg/packs.py)."""
    name: str
    summary: str
    patterns: tuple[tuple[str, str], ...]  # (view, Hyperscan regex)
    message: str                           # the default message of a rule using the pack

# what a rule can decide, strongest first: block beats approve beats log
ACTIONS = ("block", "approve", "log")
_RANK = {a: i for i, a in enumerate(ACTIONS)}


@dataclass(frozen=True)
class Verdict:
    """The decision on one message: the deciding rule (block beats approve beats log; among rules
    with the same action, the first in the configuration) and every rule that matched."""

    action: str                 # "block" | "log" | "approve"
    rule: str                   # the deciding rule's name
    message: str                # the deciding rule's message
    matched: tuple[str, ...]    # every rule that matched, in configuration order
    kinds: tuple[str, ...] = ()  # the statement kinds the deciding rule does not allow


class PolicyError(ConfigError):
    """Rules that cannot be compiled, each as (key path, reason). A ConfigError, so a caller that
    reports configuration problems reports these the same way."""

    def __init__(self, problems: list[tuple[str, str]]):
        super().__init__(problems)


@dataclass(frozen=True)
class Rule:
    index: int                            # position in the configuration: the Hyperscan id
    name: str
    action: str
    message: str
    groups: frozenset[str]                # applies only to these groups (empty: everyone) ...
    except_groups: frozenset[str]         # ... or to everyone but these
    patterns: tuple[tuple[str, bytes, str], ...]  # (view, pattern bytes, key path for errors)
    pack: str | None = None
    kinds: frozenset[str] | None = None   # an allow_kinds rule: the kinds it lets through

    def applies_to(self, groups: frozenset[str]) -> bool:
        if self.groups:
            return not self.groups.isdisjoint(groups)
        if self.except_groups:
            return self.except_groups.isdisjoint(groups)
        return True

    @property
    def rank(self) -> int:
        return _RANK[self.action]


def build_rules(guardrails: tuple[GuardrailConfig, ...], path: str,
                kind_names: Mapping[str, frozenset[str]] | None = None,
                packs: Mapping[str, Pack] | None = None) -> list[Rule]:
    """Turn configured guardrails into rules; raise PolicyError listing every problem found
    (patterns are only checked for shape here -- the engine compiles them). `kind_names` maps
    each word an allow_kinds list may hold to the kinds it stands for (None: this protocol
    has no statement kinds); `packs` are the dialect's built-in packs by name."""
    packs = packs or {}
    problems: list[tuple[str, str]] = []
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for i, g in enumerate(guardrails):
        key = f"{path}[{i}]"
        if g.name in seen:
            problems.append((f"{key}.name", f"duplicate rule name {g.name!r} "
                                            f"(also {path}[{seen[g.name]}])"))
        seen.setdefault(g.name, i)
        if g.action not in _RANK:
            problems.append((f"{key}.action",
                             f"rule {g.name!r}: action must be one of block, log, approve; "
                             f"got {g.action!r}"))
            continue
        patterns: list[tuple[str, bytes, str]] = []
        message = g.message
        kinds = None
        if g.allow_kinds is not None:
            if kind_names is None:
                problems.append((f"{key}.allow_kinds", f"rule {g.name!r}: statement kinds are "
                                                       "not available for this protocol"))
                continue
            kinds = set()
            for j, word in enumerate(g.allow_kinds):
                if word not in kind_names:
                    problems.append((f"{key}.allow_kinds[{j}]",
                                     f"rule {g.name!r}: unknown statement kind {word!r}; the "
                                     f"kinds are {', '.join(kind_names)}"))
                    continue
                kinds |= kind_names[word]
            kinds = frozenset(kinds)
        elif g.pack is not None:
            if g.patterns:
                problems.append((f"{key}.patterns", f"rule {g.name!r}: a rule is either a "
                                                    "built-in pack or its own patterns, not both"))
            pack = packs.get(g.pack)
            if pack is None:
                problems.append((f"{key}.pack", f"rule {g.name!r}: unknown pack {g.pack!r}; "
                                                f"the built-in packs are {', '.join(packs) or '(none)'}"))
                continue
            for view, pattern in pack.patterns:
                patterns.append((FULL if g.scan_literals else view, pattern.encode(),
                                 f"{key}.pack"))
            message = message or pack.message
        else:
            if not g.patterns:
                problems.append((f"{key}.patterns", f"rule {g.name!r}: is required "
                                                    "(or pack = \"<name>\" for a built-in pack)"))
            for j, pattern in enumerate(g.patterns):
                if not isinstance(pattern, str) or not pattern:
                    problems.append((f"{key}.patterns[{j}]",
                                     f"rule {g.name!r}: a pattern must be a non-empty string"))
                    continue
                try:
                    raw = pattern.encode("utf-8")
                except UnicodeEncodeError:
                    problems.append((f"{key}.patterns[{j}]",
                                     f"rule {g.name!r}: pattern {pattern!r} is not valid text"))
                    continue
                if b"\0" in raw:
                    problems.append((f"{key}.patterns[{j}]", f"rule {g.name!r}: pattern "
                                                             f"{pattern!r} holds a NUL; write \\x00"))
                    continue
                patterns.append((FULL if g.scan_literals else CODE, raw, f"{key}.patterns[{j}]"))
        if g.groups and g.except_groups:
            problems.append((f"{key}.except_groups",
                             f"rule {g.name!r}: give groups or except_groups, not both"))
        if kinds is None:
            message = message or f"guardrail {g.name!r}"
        rules.append(Rule(index=i, name=g.name, action=g.action, message=message,
                          groups=frozenset(g.groups), except_groups=frozenset(g.except_groups),
                          patterns=tuple(patterns), pack=g.pack, kinds=kinds))
    if problems:
        raise PolicyError(problems)
    return rules
