"""Masking: sensitive values never leave the gateway in clear text.

hoopwire.masking.detectors   what secrets and PII look like (Hyperscan patterns + validators)
hoopwire.masking.strategies  what a masked value becomes (redact, partial, hash, null, format)
hoopwire.masking.engine      one connection's rules compiled: column rules, free text, row plans
hoopwire._mask (ext/hoopwire/_mask.pyx) detectors and row plans in Cython: a protocol hands a
                             plan its rows as (offset, length) spans and value kinds (K_*)
"""

from hoopwire._mask import (ACT_DETECT, ACT_PASS, ACT_WHOLE, K_INPLACE, K_JSON, K_JSONB_BIN,
                            K_OPAQUE, K_OTHER, K_STR, MASKED_NULL, MaskRowError, RowPlan)
from hoopwire.masking.detectors import BUILTIN, Detector, DetectorError
from hoopwire.masking.engine import Column, MaskEngine, MaskRule
from hoopwire.masking.strategies import STRATEGIES, Strategy

__all__ = ["MaskEngine", "MaskRule", "Column", "RowPlan", "MaskRowError", "DetectorError",
           "Detector", "BUILTIN", "Strategy", "STRATEGIES", "ACT_PASS", "ACT_WHOLE",
           "ACT_DETECT", "K_STR", "K_JSON", "K_JSONB_BIN", "K_INPLACE", "K_OTHER", "K_OPAQUE",
           "MASKED_NULL"]
