"""Masking: sensitive values never leave the gateway in clear text.

hoopwire.masking.detectors   what secrets and PII look like (Hyperscan patterns + validators)
hoopwire.masking.strategies  what a masked value becomes (redact, partial, hash, null, format)
hoopwire.masking.engine      one connection's rules compiled: column rules, free text, row plans
hoopwire._mask (ext/hoopwire/_mask.pyx) the Cython DataRow / COPY row rewriter the relay calls
"""

from hoopwire._mask import ACT_DETECT, ACT_PASS, ACT_WHOLE, MaskRowError, RowPlan, mask_copy_line
from hoopwire.masking.detectors import BUILTIN, Detector, DetectorError
from hoopwire.masking.engine import Column, MaskEngine, MaskRule
from hoopwire.masking.strategies import STRATEGIES, Strategy

__all__ = ["MaskEngine", "MaskRule", "Column", "RowPlan", "MaskRowError", "DetectorError",
           "Detector", "BUILTIN", "Strategy", "STRATEGIES", "mask_copy_line", "ACT_PASS",
           "ACT_WHOLE", "ACT_DETECT"]
