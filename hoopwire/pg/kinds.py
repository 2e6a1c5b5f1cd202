"""PostgreSQL types -> the masker's value kinds (hoopwire._mask K_*).

The masker is protocol neutral: it knows how a value's bytes may be rewritten (a string, JSON
text, an opaque encoding...), never a type OID. This module is PostgreSQL's half of that seam:
what a column of a given type OID in a given format code (0 text, 1 binary) is to the masker.
PgColumn is what the PostgreSQL side knows of a result column before the map is applied.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

from hoopwire._mask import K_INPLACE, K_JSON, K_JSONB_BIN, K_OPAQUE, K_OTHER, K_STR
from hoopwire.masking.engine import Column

__all__ = ["PgColumn", "column_kind", "to_column", "STRING_OIDS", "STRING_ARRAY_OIDS"]

# strings whatever the format: text, varchar, bpchar, name, "char", unknown, xml; 0 = not given
# (COPY, where the relay knows no types)
STRING_OIDS = frozenset({25, 1043, 1042, 19, 18, 705, 142, 0})
# text-format arrays of strings: text[], varchar[], bpchar[], name[], json[], jsonb[], xml[]
STRING_ARRAY_OIDS = frozenset({1009, 1015, 1014, 1003, 199, 3807, 143})
JSON_OID = 114
JSONB_OID = 3802
BYTEA_OID = 17


def column_kind(type_oid: int, fmt: int, extra_string_oids=()) -> int:
    """K_* for a column of this type in this format (0 text, 1 binary)."""
    if type_oid in STRING_OIDS or type_oid in extra_string_oids:
        return K_STR
    if type_oid == JSON_OID:
        return K_JSON
    if type_oid == JSONB_OID:
        return K_JSONB_BIN if fmt == 1 else K_JSON      # binary jsonb: a version byte first
    if type_oid == BYTEA_OID:
        return K_STR if fmt == 1 else K_OPAQUE          # text bytea is hex: detectors see nothing
    if type_oid in STRING_ARRAY_OIDS and fmt == 0:
        return K_INPLACE
    return K_OTHER


class PgColumn(NamedTuple):
    """A result column as PostgreSQL describes it: the source column's names (from
    RowDescription's table OID and attribute number, looked up in the catalog; None when the
    column is an expression or not resolved), its type OID and format code."""
    schema: Optional[str]
    table: Optional[str]
    column: Optional[str]
    type_oid: int = 0
    format: int = 0


def to_column(c, extra_string_oids=()) -> Column:
    """The masker's Column (a value kind, no OID) for a PgColumn or a 5-tuple."""
    c = c if isinstance(c, PgColumn) else PgColumn(*c)
    return Column(c.schema, c.table, c.column, column_kind(c.type_oid, c.format, extra_string_oids))
