"""PostgreSQL's SQL as the neutral layers need it (hoopwire.core.seams.Dialect): the lexer's two
views of a statement for guardrails, literal masking for logs and the audit, and the rule every
PostgreSQL connection with guardrails gets."""

from __future__ import annotations

from hoopwire._sqlnorm import mask_literals, statement_shape, statement_views
from hoopwire.config import GuardrailConfig
from hoopwire.pg.packs import PACKS, UNSAFE_ENCODING_PATTERNS

__all__ = ["PgDialect", "DIALECT"]


class PgDialect:
    name = "postgres"
    # the functions themselves, not wrappers: the audit's encoder recognises mask_literals and
    # runs the lexer in C without a call into Python per statement
    mask_literals = staticmethod(mask_literals)
    statement_views = staticmethod(statement_views)
    # the guardrail verdict cache's key (hoopwire.policy.engine): integers set aside, which
    # PACKS read only as name bytes and as the 1 of `WHERE 1 = 1` -- kept apart from 0 here
    statement_shape = staticmethod(statement_shape)
    packs = PACKS                   # the built-in guardrail packs (hoopwire/pg/packs.py)

    @staticmethod
    def classifier(rules: tuple):
        """Statement kinds (hoopwire.pg.statements) for a rule set that needs them: allow_kinds
        rules, and session-tampering, which tells pg_dump's computed set_config apart by them.
        None otherwise, so PostgreSQL's parser is loaded only where it is used."""
        if not any(g.allow_kinds is not None or g.pack == "session-tampering" for g in rules):
            return None
        from hoopwire.pg.statements import CLASSIFIER
        return CLASSIFIER

    @staticmethod
    def implied_guardrails(rules: tuple) -> tuple:
        if any(g.pack == "session-tampering" for g in rules):
            return rules
        # An encoding whose characters can end in a backslash byte would let a quote hide from
        # the normaliser, and with it any statement from every other rule.
        return rules + (GuardrailConfig(
            name="unsafe-client-encoding", patterns=tuple(p for _, p in UNSAFE_ENCODING_PATTERNS),
            scan_literals=True,
            message="this client encoding is not allowed while guardrails apply"),)


DIALECT = PgDialect()
