"""When the relay may remember a statement shape's verdict (Relay.memo, ext/hoopwire/mysql/_relay.pxi).

The relay keys COM_QUERY texts by hoopwire.mysql._sqllex's memo key, which tells texts apart at
least as finely as the guardrail engine's shape and masking's text_key. After a statement of a
new key was judged with no verdict, it asks here, once, whether that holds for every text of the
key; if so, the next texts of it go upstream without a call into Python (sysbench's text point
select made ~15 Python calls and three lexer passes a statement for WriteGuard.check,
write_verdict, the engine's check and SessionMasker.statement; bench/README.md).

It holds when each cache the policy answered from is keyed by something the memo key is finer
than: masking's write verdicts are cached by (schema, text_key) -- the schema is part of the
memo's validity -- and the guardrail engine's by its shape key, but only for verdicts it found
true for the whole shape (a verdict read from a literal form, or a refusal of unparsed text, is
kept for its text alone). So the engine's own shape cache is what is asked
(GroupPolicy.passes_whole_shape): a None stored there is a None for every text of the shape. An engine without shape verdicts (a rule that reads
digits, no cache) says no, and the relay asks the policy every time, as before.
"""

from __future__ import annotations

import sys


def verdict_holds_for_shape(policy, sql: bytes) -> bool:
    """Whether `policy` (the relay's: None, a WriteGuard, or a guardrail GroupPolicy), having
    just answered None for `sql`, answers None for every text of its shape."""
    # a WriteGuard exists only where masking is loaded: a guardrails-only gateway does not
    # import the masker (and its SQL parser) on its event loop for this
    masker = sys.modules.get("hoopwire.mysql.masker")
    if masker is not None and isinstance(policy, masker.WriteGuard):
        # write verdicts are kept by (schema, text_key): shape-wide already
        policy = policy.inner
    if policy is None:
        return True
    passes = getattr(policy, "passes_whole_shape", None)
    return passes is not None and passes(sql)
