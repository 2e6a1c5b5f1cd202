"""Masking strategies: what a sensitive value becomes.

| strategy | a whole column value                    | a detector hit inside text     |
|----------|-----------------------------------------|--------------------------------|
| redact   | `****`                                  | `****`                         |
| partial  | `*` per character but the last `keep` (`************1111`); a value of `keep` characters or fewer is all `*` | same, on the hit |
| hash     | `h:` + 16 hex of HMAC-SHA256(key, value): stable for one key, so masked values still join and group | same |
| null     | SQL NULL                                | `****` (text cannot hold a NULL) |
| format   | same length in characters; digits -> digits, ASCII letters -> letters of the same case, everything else kept; pseudo-random from HMAC(key, value) so it is deterministic for one key | same |

Characters are UTF-8 code points (a byte that is not valid UTF-8 counts as one character), so
`partial` never cuts a multibyte character and `format` keeps the length a reader sees.

Without a configured key (the configuration requires one for `hash`), the engine draws a random
key per process: hashes are then stable only within that process, and `format` output cannot be
matched against a dictionary of likely values (an unkeyed hash of an SSN or a phone number can).
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["STRATEGIES", "Strategy", "REDACTED", "char_starts", "chars_of"]

STRATEGIES = ("redact", "partial", "hash", "null", "format")
REDACTED = b"****"

_DIGITS = b"0123456789"
_LOWER = b"abcdefghijklmnopqrstuvwxyz"
_UPPER = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"


# How a client encoding's characters are measured (see chars_of): the strategies that keep or
# rewrite characters must count them as the client will, or `partial` keeps more than `keep`
# (a LATIN1 'Ü²' is two characters, and also one valid UTF-8 character).
UTF8, BYTES, EUC, OPAQUE = "utf8", "bytes", "euc", "opaque"


def chars_of(client_encoding: str | None) -> str:
    """The measure for a client encoding as the server reports it (None: not reported, the
    database's, UTF-8 here)."""
    if not client_encoding:
        return UTF8
    e = client_encoding.upper().replace("-", "_")
    if e in ("UTF8", "UNICODE"):
        return UTF8
    if e.startswith("EUC_"):
        return EUC
    if e == "MULE_INTERNAL" or e not in _SINGLE_BYTE and not e.startswith(("LATIN", "WIN", "ISO_8859")):
        return OPAQUE        # no rule here to find its characters: keep none of them
    return BYTES


_SINGLE_BYTE = {"SQL_ASCII", "KOI8R", "KOI8U"}


def char_starts(value: bytes, chars: str = UTF8) -> list[int] | None:
    """Byte offsets where each character starts; None when the measure cannot tell (OPAQUE).
    UTF-8: stray continuation bytes that follow no lead byte count as characters of their own.
    EUC: a high byte leads two bytes, SS2 (0x8E) two, SS3 (0x8F) three."""
    if chars == BYTES:
        return list(range(len(value)))
    if chars == OPAQUE:
        return None
    if chars == EUC:
        out, i, n = [], 0, len(value)
        while i < n:
            out.append(i)
            c = value[i]
            i += 1 if c < 0x80 else 3 if c == 0x8F else 2
        return out
    out = []
    i = 0
    n = len(value)
    while i < n:
        out.append(i)
        c = value[i]
        w = 1 if c < 0xC0 else 2 if c < 0xE0 else 3 if c < 0xF0 else 4 if c < 0xF8 else 1
        j = i + 1
        while j < i + w and j < n and 0x80 <= value[j] < 0xC0:
            j += 1
        i = j
    return out


class Strategy:
    """One rule's strategy, bound to the connection's hash key."""

    __slots__ = ("name", "keep", "key", "whole_is_null", "chars")

    def __init__(self, name: str, keep: int = 4, key: bytes = b"", chars: str = UTF8):
        if name not in STRATEGIES:
            raise ValueError(f"unknown masking strategy {name!r}")
        self.name = name
        self.keep = max(0, int(keep))
        self.key = key
        self.whole_is_null = name == "null"
        self.chars = chars              # how the session's characters are measured

    def measured(self, chars: str) -> "Strategy":
        """The same strategy for a session whose characters are measured by `chars`."""
        return self if chars == self.chars else Strategy(self.name, self.keep, self.key, chars)

    def __repr__(self) -> str:
        return f"Strategy({self.name!r}, keep={self.keep})"

    def inline(self, value: bytes) -> bytes:
        """The replacement of `value` inside text (never NULL)."""
        name = self.name
        if name == "redact" or name == "null":
            return REDACTED
        if name == "partial":
            return partial(value, self.keep, self.chars)
        if name == "hash":
            return b"h:" + hmac.new(self.key, value, hashlib.sha256).hexdigest()[:16].encode()
        return format_preserving(value, self.key, self.chars)

    def whole(self, value: bytes) -> bytes | None:
        """The replacement of a whole value; None means SQL NULL."""
        if self.whole_is_null:
            return None
        return self.inline(value)


def partial(value: bytes, keep: int, chars: str = UTF8) -> bytes:
    if value.isascii():
        n = len(value)
        if n <= keep:
            return b"*" * n
        return b"*" * (n - keep) + (value[n - keep:] if keep else b"")
    starts = char_starts(value, chars)
    if starts is None:
        return b"*" * len(value)
    n = len(starts)
    if n <= keep:
        return b"*" * n
    return b"*" * (n - keep) + (value[starts[n - keep]:] if keep else b"")


def _stream(key: bytes, value: bytes, need: int) -> bytes:
    out = b""
    counter = 0
    while len(out) < need:
        out += hmac.new(key, b"format:%d:" % counter + value, hashlib.sha256).digest()
        counter += 1
    return out


def format_preserving(value: bytes, key: bytes, chars: str = UTF8) -> bytes:
    """Same number of characters, each digit a digit, each ASCII letter a letter of its case,
    each other ASCII byte kept, each non-ASCII character a lower-case letter."""
    starts = char_starts(value, chars)
    if starts is None:
        starts = list(range(len(value)))     # every byte rewritten: nothing kept in clear
    rnd = _stream(key, value, len(starts))
    out = bytearray()
    for k, i in enumerate(starts):
        c = value[i]
        r = rnd[k]
        if 48 <= c <= 57:
            out.append(_DIGITS[r % 10])
        elif 97 <= c <= 122:
            out.append(_LOWER[r % 26])
        elif 65 <= c <= 90:
            out.append(_UPPER[r % 26])
        elif c < 0x80:
            out.append(c)
        else:
            out.append(_LOWER[r % 26])
    return bytes(out)
