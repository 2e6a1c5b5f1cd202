"""The audit trail: an append-only, hash-chained JSON-lines log (log.py) and its offline
checker and reader (verify.py)."""

from hoopwire.audit.log import AuditLog, AuditLogError
from hoopwire.audit.verify import (AuditReadError, BrokenRecord, VerifyResult, main_verify,
                                   read_records, verify)

__all__ = ["AuditLog", "AuditLogError", "AuditReadError", "BrokenRecord", "VerifyResult",
           "main_verify", "read_records", "verify"]
