"""Guardrails: rules from the configuration, compiled to Hyperscan, applied to statements.

The engine is protocol neutral -- bytes of a query in, a Verdict out; the SQL dialect lives in
the normaliser (hoopwire._sqlnorm). See engine.py for the flow and packs.py for the built-in
packs and their limits.
"""

from hoopwire.policy.engine import GroupPolicy, PolicyEngine
from hoopwire.policy.packs import PACKS, pack_names
from hoopwire.policy.rules import PolicyError, Rule, Verdict

__all__ = ["PolicyEngine", "GroupPolicy", "Verdict", "PolicyError", "Rule", "PACKS",
           "pack_names"]
