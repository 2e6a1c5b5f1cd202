"""Operator logging: one line per event, as `key=value` text or JSON lines.

Callers pass fields explicitly (`event(log, "session closed", connection=..., reason=...)`);
nothing here ever formats a token, a password or a statement's literals -- callers hand over
only what is safe (statements go through the normaliser's literal masking first).
"""

from __future__ import annotations

import logging
import re
import sys
import time

import orjson

__all__ = ["configure", "event", "rfc3339"]


# C0 and C1 controls, DEL, and the Unicode line and paragraph separators (some log viewers
# break lines there). Field values come from clients (a token's subject, a JWT header, a
# statement): unescaped, a newline in one would start a forged log line.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_control(m: re.Match) -> str:
    c = m.group()
    if c in _NAMED:
        return _NAMED[c]
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def escape(text: str) -> str:
    """`text` with every control character written as an escape (\\n, \\x1b, \\u2028)."""
    return _CONTROL.sub(_escape_control, text)


def rfc3339(created: float) -> str:
    """`created` (unix seconds) as an RFC 3339 UTC timestamp with milliseconds,
    2026-12-07T11:53:19.042Z: what log shippers (Loki, Elasticsearch, journald exports) parse
    without a pattern, in both formats. A float of seconds in JSON needed a per-shipper rule."""
    whole = int(created)
    ms = int((created - whole) * 1000)     # truncated, never rounded up into the next second
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{ms:03d}Z"


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        # the message too: %-arguments of library and module loggers are not ours to vet
        parts = [rfc3339(record.created), record.levelname.lower(), record.name,
                 escape(record.getMessage())]
        for k, v in getattr(record, "fields", {}).items():
            # backslashes are doubled first, so an escape written by the client ("\\n" as two
            # characters) stays distinguishable from a real newline
            s = escape(str(v).replace("\\", "\\\\"))
            if not s or any(c in s for c in ' "='):
                s = '"' + s.replace('"', '\\"') + '"'
            parts.append(f"{escape(str(k))}={s}")
        line = " ".join(parts)
        if record.exc_info:
            # A traceback keeps its lines, each indented: an exception's message can quote a
            # client's bytes, and only a record's own first line may start at column 0.
            line += "".join("\n  " + escape(ln)
                            for ln in self.formatException(record.exc_info).split("\n"))
        return line


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": rfc3339(record.created), "level": record.levelname.lower(), "logger": record.name,
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
