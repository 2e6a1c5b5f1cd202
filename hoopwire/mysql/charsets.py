"""Which client character sets the guardrails and the masker can read, by name and by the
collation id a handshake carries.

The server lexes a statement in the session's character_set_client: a byte that belongs to a
multibyte character is part of that character, whatever its value. The lexer
(hoopwire/mysql/_sqllex.pyx) reads bytes as ASCII. For most character sets the two agree --
multibyte characters are made of bytes >= 0x80, single-byte sets keep ASCII at 0x00-0x7F -- but
not for these, which MariaDB 10.11 and MySQL 8 accept as a client character set:

    big5, cp932, gbk, sjis, gb18030 (MySQL 8)   a multibyte character can end in 0x5C (a
                                                backslash) or 0x60 (a backtick): `'\\xbf\\x5c'`
                                                is one character and a closing quote to the
                                                server, an escaped quote to the lexer
    swe7                                        7-bit Swedish: 0x40 0x5B-0x5D 0x60 0x7B-0x7D
                                                are letters, so a backtick is part of a name

(ucs2, utf16, utf16le and utf32 are not ASCII-compatible; the server itself refuses them as a
client character set.) tests/test_mysql_lexer.py asks the real server which character sets have
a multibyte character with a byte below 0x80 after its first, and which single-byte ones do not
map 0x20-0x7E to ASCII, and checks this module agrees.

So the gateway allows only SAFE_CHARSETS: at the handshake (the client's collation id), in the
server's session-state reports (character_set_client), and -- as a belt -- the packs refuse a
SET NAMES / SET CHARACTER SET / character_set_client to anything else (hoopwire/mysql/packs.py).
A few single-byte sets take 0xA0 or 0xFF for a space; the lexer reads text holding those bytes
both ways, so they are safe here.
"""

from __future__ import annotations

__all__ = ["SAFE_CHARSETS", "UNSAFE_CHARSETS", "COLLATION_CHARSET", "charset_of",
           "safe_charset", "safe_collation"]

# the allow-list: every character set MariaDB 10.11 and MySQL 8 accept as a client's whose
# bytes below 0x80 always mean their ASCII character
SAFE_CHARSETS = frozenset((
    "utf8mb4", "utf8mb3", "utf8", "ascii", "binary", "latin1", "latin2", "latin5", "latin7",
    "cp1250", "cp1251", "cp1256", "cp1257", "cp850", "cp852", "cp866", "dec8", "hp8",
    "koi8r", "koi8u", "greek", "hebrew", "armscii8", "geostd8", "keybcs2", "macce", "macroman",
    "tis620", "euckr", "ujis", "eucjpms", "gb2312",
))

# the ones refused (see the module docstring); listed for messages and for the packs
UNSAFE_CHARSETS = frozenset(("big5", "cp932", "gbk", "sjis", "gb18030", "swe7",
                             "ucs2", "utf16", "utf16le", "utf32"))

# collation id (the handshake's one byte) -> character set: MariaDB 10.11's SHOW COLLATION for
# ids below 256 (the classic ids are the same on MySQL 8), plus MySQL 8's own in that range:
# 248-250 gb18030, 255 utf8mb4_0900_ai_ci (what MySQL 8 clients send by default).
_IDS = {
    "armscii8": (32, 64), "ascii": (11, 65), "big5": (1, 84), "binary": (63,),
    "cp1250": (26, 34, 44, 66, 99), "cp1251": (14, 23, 50, 51, 52), "cp1256": (57, 67),
    "cp1257": (29, 58, 59), "cp850": (4, 80), "cp852": (40, 81), "cp866": (36, 68),
    "cp932": (95, 96), "dec8": (3, 69), "eucjpms": (97, 98), "euckr": (19, 85),
    "gb2312": (24, 86), "gbk": (28, 87), "geostd8": (92, 93), "greek": (25, 70),
    "hebrew": (16, 71), "hp8": (6, 72), "keybcs2": (37, 73), "koi8r": (7, 74),
    "koi8u": (22, 75), "latin1": (5, 8, 15, 31, 47, 48, 49, 94), "latin2": (2, 9, 21, 27, 77),
    "latin5": (30, 78), "latin7": (20, 41, 42, 79), "macce": (38, 43), "macroman": (39, 53),
    "sjis": (13, 88), "swe7": (10, 82), "tis620": (18, 89),
    "ucs2": (35, 90, *range(128, 152), 159), "ujis": (12, 91),
    "utf16": (54, 55, *range(101, 125)), "utf16le": (56, 62),
    "utf32": (60, 61, *range(160, 184)),
    "utf8mb3": (33, 83, *range(192, 216), 223),
    "utf8mb4": (45, 46, *range(224, 248), 255),
    "gb18030": (248, 249, 250),
}
COLLATION_CHARSET: dict[int, str] = {i: cs for cs, ids in _IDS.items() for i in ids}


def charset_of(collation_id: int) -> str | None:
    """The character set of a collation id, None for an id neither server defines."""
    return COLLATION_CHARSET.get(collation_id)


def safe_charset(name: str | None) -> bool:
    """Whether the lexer reads text in this client character set as the server does. Compared
    as the server compares names: case aside. An unknown name is not safe."""
    return bool(name) and name.lower() in SAFE_CHARSETS


def safe_collation(collation_id: int) -> bool:
    """safe_charset of a handshake's collation id; an id no server defines is not safe."""
    return safe_charset(COLLATION_CHARSET.get(collation_id))
