"""MySQL column types -> the masker's value kinds (hoopwire._mask K_*).

The masker is protocol neutral: it knows how a value's bytes may be rewritten, never a MySQL
type code. This is MySQL's half of that seam (hoopwire/pg/kinds.py is PostgreSQL's): what a
column of a given type, character set and protocol (text rows of COM_QUERY, binary rows of
COM_STMT_EXECUTE) is to the masker.

* Strings (CHAR, VARCHAR, TEXT, ENUM, SET) are K_STR in both protocols: a text row and a binary
  row both carry them as length-encoded bytes in the result's character set.
* Binary strings (BINARY, VARBINARY, BLOB: character set 63) are K_STR too. MySQL sends their
  raw bytes in both protocols (no hex encoding, unlike PostgreSQL's text bytea), so a detector
  sees a secret stored in a VARBINARY column, and a value rewritten in place is still a valid
  byte string. (K_OPAQUE is for encodings the detectors cannot read, which MySQL has none of.)
* JSON (MySQL 8's type 245) is K_JSON: JSON text in both protocols, kept valid when masked.
  MariaDB's JSON is a LONGTEXT alias and arrives as a string: K_STR.
* Numbers, dates, times, BIT, GEOMETRY, VECTOR are K_OTHER: text digits or fixed-width binary
  encodings a masked value cannot keep its shape in -- a masked one leaves as NULL (the relay
  sets the NULL bitmap's bit in a binary row). DECIMAL is a string of digits on the wire in
  both protocols, still a number to every driver: K_OTHER.
"""

from __future__ import annotations

from hoopwire._mask import K_JSON, K_OTHER, K_STR
from hoopwire.mysql.packets import TYPE

__all__ = ["column_kind", "T", "BINARY_CHARSET", "STRING_TYPES", "is_string"]


# MySQL column type codes: one table, the reference codecs' (hoopwire.mysql.packets)
T = TYPE


# the collation id of the `binary` character set: BINARY, VARBINARY, BLOB and every non-string
BINARY_CHARSET = 63

# types whose value is a byte string on the wire in both protocols
STRING_TYPES = frozenset({T.VARCHAR, T.ENUM, T.SET, T.TINY_BLOB, T.MEDIUM_BLOB, T.LONG_BLOB,
                          T.BLOB, T.VAR_STRING, T.STRING})


def is_string(type_code: int) -> bool:
    """Whether values of this type are byte strings (text or binary) the detectors read."""
    return type_code in STRING_TYPES


def column_kind(type_code: int, charset: int = 0, binary: bool = False) -> int:
    """K_* for a result column of MySQL type `type_code` with collation id `charset`, in text
    rows (binary=False) or binary rows (binary=True). The protocol does not change a kind
    today (both carry strings and JSON as length-encoded bytes, and everything else becomes
    NULL when masked); it is an argument so that a future type whose two encodings differ has
    one place to say so."""
    if type_code in STRING_TYPES:
        return K_STR
    if type_code == T.JSON:
        return K_JSON
    return K_OTHER
