"""Which client encodings the guardrails can read, and which bytes another one could hide.

The normaliser lexes a statement's bytes as an ASCII-compatible encoding: a byte below 0x80 is
that ASCII character. PostgreSQL converts what a client sends from the session's
client_encoding to the server's before it lexes, and for seven client-only encodings (the
Shift-JIS family with its 2004 variant, BIG5, GBK, UHC, GB18030, JOHAB) a multibyte character
can end in 0x5C: the server sees one character where the normaliser sees a backslash, and an
E'...' literal ends in a different place for each -- text the packs would take for a literal
runs as SQL.

So the gateway does not guess the encoding from statement text (a function can call
set_config, `options` has getopt's forms, `UPDATE pg_settings` is a SET): it takes the one the
server reports in ParameterStatus, allows only encodings whose multibyte characters are made of
bytes >= 0x80, and ends a session that reports another. What the client pipelined after a
statement that changed the encoding and before the report arrives cannot be judged by that
report; `backslash_may_hide` tells whether such a message's reading could differ, and the
relay refuses it rather than guess.
"""

from __future__ import annotations

import re

__all__ = ["SAFE_CLIENT_ENCODINGS", "safe_client_encoding", "backslash_may_hide"]

# The names the server reports client_encoding by (its canonical names, pg_enc2name): every
# server-side encoding. Their multibyte characters use bytes >= 0x80 only, so ASCII bytes
# mean what they mean in ASCII whichever of them the session uses.
SAFE_CLIENT_ENCODINGS = frozenset(
    ["SQL_ASCII", "UTF8", "MULE_INTERNAL", "KOI8R", "KOI8U",
     "EUC_JP", "EUC_CN", "EUC_KR", "EUC_TW", "EUC_JIS_2004"]
    + [f"LATIN{i}" for i in range(1, 11)]
    + [f"ISO_8859_{i}" for i in range(5, 9)]
    + ["WIN866", "WIN874"] + [f"WIN{i}" for i in range(1250, 1259)]
    # UTF8 by its old name: the server reports every alias by its canonical name except the
    # exact string UNICODE, which it keeps for pre-9.1 JDBC drivers (check_client_encoding);
    # psycopg2's set_client_encoding('UNICODE') ended the session (its own suite's test_quote)
    + ["UNICODE"])


def safe_client_encoding(name: str | None) -> bool:
    """Whether the guardrails read text in this client encoding (as the server reports it)
    the way the server does. Compared as the server compares names: case and every
    non-alphanumeric character aside."""
    if not name:
        return True         # not reported yet: the server's default, the database's encoding
    key = _key(name)
    return key in _SAFE_KEYS


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_SAFE_KEYS = frozenset(_key(n) for n in SAFE_CLIENT_ENCODINGS)

_HIGH = re.compile(rb"[\x80-\xff]")


def _width_sjis(b: int, _nxt: int) -> int:
    # Shift-JIS and Shift-JIS-2004: 0xA1-0xDF are one-byte katakana, other high bytes lead two
    return 1 if 0xA1 <= b <= 0xDF else 2


def _width_double(b: int, _nxt: int) -> int:
    # BIG5, GBK, UHC: every high byte leads a two-byte character
    return 2


def _width_gb18030(b: int, nxt: int) -> int:
    return 4 if 0x30 <= nxt <= 0x39 else 2


def _width_johab(b: int, _nxt: int) -> int:
    # the server measures JOHAB as EUC: SS3 (0x8F) leads three bytes, other high bytes two
    return 3 if b == 0x8F else 2


_FAMILIES = (_width_sjis, _width_double, _width_gb18030, _width_johab)


def backslash_may_hide(text: bytes) -> bool:
    """Whether some client encoding the gateway refuses would take a 0x5C byte of `text` into
    a multibyte character (measured character by character from the start, as the server
    measures them; whether the character is valid does not matter here)."""
    if b"\\" not in text or _HIGH.search(text) is None:
        return False        # the common case: no backslash, or ASCII only
    n = len(text)
    for width in _FAMILIES:
        i = 0
        while i < n:
            b = text[i]
            if b < 0x80:
                i += 1
                continue
            w = width(b, text[i + 1] if i + 1 < n else 0)
            if 0x5C in text[i + 1:i + w]:
                return True
            i += w
    return False
