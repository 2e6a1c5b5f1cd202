"""Guardrails: rules from the configuration, compiled to Hyperscan, applied to statements.

The engine is protocol neutral -- bytes of a query in, a Verdict out; the SQL dialect (its lexer,
statement kinds and built-in packs) comes from the protocol (hoopwire/pg/dialect.py,
hoopwire/pg/packs.py for PostgreSQL's packs and their limits). See engine.py for the flow.
"""

from hoopwire.policy.engine import GroupPolicy, PolicyEngine
from hoopwire.policy.rules import PolicyError, Rule, Verdict

__all__ = ["PolicyEngine", "GroupPolicy", "Verdict", "PolicyError", "Rule"]
