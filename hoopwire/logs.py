"""Operator logging: one line per event, as `key=value` text or JSON lines.

Callers pass fields explicitly (`event(log, "session closed", connection=..., reason=...)`);
nothing here ever formats a token, a password or a statement's literals -- callers hand over
only what is safe (statements go through the normaliser's literal masking first).
"""

from __future__ import annotations

import logging
import sys
import time

import orjson

__all__ = ["configure", "event"]


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [f"{ts}.{int(record.msecs):03d}Z", record.levelname.lower(), record.name,
                 record.getMessage()]
        for k, v in getattr(record, "fields", {}).items():
            s = str(v)
            if not s or any(c in s for c in ' "='):
                s = '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
            parts.append(f"{k}={s}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": record.created, "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage()}
        doc.update(getattr(record, "fields", {}))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def configure(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger("hoopwire")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def event(logger: logging.Logger, msg: str, level: int = logging.INFO, **fields) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, msg, extra={"fields": fields})
