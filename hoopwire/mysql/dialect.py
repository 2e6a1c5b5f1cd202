"""MySQL's and MariaDB's SQL as the neutral layers need it (hoopwire.core.seams.Dialect): the
lexer's views of a statement for guardrails, literal masking for logs and the audit, the
built-in packs, the rules every MySQL connection with guardrails gets, and the statement-kind
classifier for allow_kinds."""

from __future__ import annotations

from hoopwire.config import GuardrailConfig
from hoopwire.mysql._sqllex import mask_literals, statement_shape, statement_views
from hoopwire.mysql.packs import PACKS, UNREADABLE_PATTERN, UNSAFE_CHARSET_PATTERNS

# the wrapper's code view: `set statement <assignments> for <statement>`
SET_STATEMENT_PATTERN = r"^set statement\b"

__all__ = ["MysqlDialect", "DIALECT"]


class MysqlDialect:
    name = "mysql"
    # the functions themselves, not wrappers: the audit's encoder recognises mask_literals by
    # its c_dialect capsule and runs the lexer in C without a call into Python per statement.
    # statement_views(sql, full, *, mode=<sql_mode bits>): see hoopwire/mysql/_sqllex.pyx
    mask_literals = staticmethod(mask_literals)
    statement_views = staticmethod(statement_views)
    # the guardrail verdict cache's key (hoopwire.policy.engine): integers written 0, 1, 00 or 2,
    # the four classes PACKS tell apart (unbounded-write's WHERE 0 / 1 / 1=1 / [1-9][0-9]*);
    # tests/test_mysql_shapes.py holds every pack's examples to that
    statement_shape = staticmethod(statement_shape)
    packs = PACKS                   # the built-in guardrail packs (hoopwire/mysql/packs.py)

    @staticmethod
    def classifier(rules: tuple):
        """Statement kinds (hoopwire.mysql.statements) for a rule set with allow_kinds rules;
        None otherwise: a GroupPolicy with no kind rule never classifies."""
        if not any(g.allow_kinds is not None for g in rules):
            return None
        from hoopwire.mysql.statements import CLASSIFIER
        return CLASSIFIER

    @staticmethod
    def implied_guardrails(rules: tuple) -> tuple:
        """Two rules every rule set gets (an empty one gets none: no guardrails, nothing to
        protect). A client charset whose characters can end in a backslash or quote byte would
        let a quote hide from the lexer, and with it any statement from every other rule; a
        text with more readings than the lexer tries is refused rather than half read."""
        if not rules:
            return rules
        extra = []
        if not any(g.pack == "session-tampering" for g in rules):
            extra.append(GuardrailConfig(
                name="unsafe-client-charset", patterns=tuple(p for _, p in UNSAFE_CHARSET_PATTERNS),
                scan_literals=True,
                message="this client character set is not allowed while guardrails apply"))
        extra.append(GuardrailConfig(
            name="unreadable-statement", patterns=(UNREADABLE_PATTERN,),
            message="the statement can be read too many ways (versioned comments) to be checked"))
        # MariaDB's SET STATEMENT var = value FOR <statement> runs the statement after FOR,
        # where no pattern anchored at the statement's start looks: the red team emptied and
        # dropped columns of tables through it past unbounded-write and destructive-ddl. Until
        # the lexer hands the inner statement to the rules, the wrapper is refused.
        extra.append(GuardrailConfig(
            name="set-statement-for", patterns=(SET_STATEMENT_PATTERN,),
            message="SET STATEMENT ... FOR is not allowed while guardrails apply: send the "
                    "statement without it"))
        return rules + tuple(extra)


DIALECT = MysqlDialect()
