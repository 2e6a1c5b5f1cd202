"""The PostgreSQL side of hoopwire: startup, authentication, cancel and the session glue.

The per-message relay loop lives in the Cython extension hoopwire.pg._wire (ext/hoopwire/pg/_wire.pyx).
"""
