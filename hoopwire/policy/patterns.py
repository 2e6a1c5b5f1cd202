"""Building blocks for guardrail patterns on a normalised statement, shared by every dialect's
packs (hoopwire/pg/packs.py, hoopwire/mysql/packs.py): the packs of two protocols may not import
each other (tests/test_layering.py), so what they both build stands here.

The patterns are matched with Hyperscan, which has no lookahead and no backreferences: "a word
that is not X" and "balanced parentheses" are spelled out in full.
"""

from __future__ import annotations

__all__ = ["IDC", "NEST", "END", "SEP", "word_except", "group", "too_deep", "no_word"]

# bytes that continue an identifier in both dialects (their lexers lower-case ASCII)
IDC = r"a-z0-9_$\x80-\xff"
NEST = 8  # parentheses this deep are matched exactly; deeper ones count as suspicious
END = r"\s*(?:;|\)|$)"  # the end of a statement, or of the parenthesised one it sits in


def _ranges(chars: str) -> str:
    """`chars` (in order) as the ranges of a character class: abcdefh -> a-fh."""
    out, i = [], 0
    while i < len(chars):
        j = i
        while j + 1 < len(chars) and ord(chars[j + 1]) == ord(chars[j]) + 1:
            j += 1
        out.append(chars[i] if i == j else f"{chars[i]}-{chars[j]}")
        i = j + 1
    return "".join(out)


def _name_bytes_except(chars: str, digits_apart: bool) -> str:
    """A class of the bytes that continue a name, without `chars`. With digits_apart false the
    class keeps every digit (PostgreSQL's packs, whose words have none: its pattern strings stay
    what they were); with it true digits are left out like letters, so that words differing
    only by a digit (utf8mb3 / utf8mb4) are told apart."""
    if digits_apart:
        keep = [c for c in "0123456789abcdefghijklmnopqrstuvwxyz" if c not in chars]
        return "[" + _ranges("".join(keep)) + r"_$\x80-\xff]"
    letters = [c for c in "abcdefghijklmnopqrstuvwxyz" if c not in chars]
    return "[" + _ranges("".join(letters)) + r"0-9_$\x80-\xff]"


def word_except(*words: str, digits_apart: bool = True) -> str:
    """A name that is none of `words` (a trie, Hyperscan has no lookahead): leave the words'
    letters at some position, stop before a word ends, or run past its end. It means "a whole
    word" only where the caller puts a non-name byte (or the end) right after it: alone it also
    matches a prefix."""

    def build(suffixes: list[str], top: bool) -> str:
        ends_here = "" in suffixes
        firsts = sorted({s[0] for s in suffixes if s})
        parts = [f"{_name_bytes_except(''.join(firsts), digits_apart)}[{IDC}]*"]
        for ch in firsts:
            parts.append(ch + build([s[1:] for s in suffixes if s and s[0] == ch], False))
        alt = "(?:" + "|".join(parts) + ")"
        if not top and not ends_here:
            alt += "?"  # a proper prefix of a word is a different word
        return alt

    return build([w.lower() for w in words], True)


def group(depth: int) -> str:
    """Balanced parentheses nested at most `depth` deep, any content."""
    g = r"\([^()]*\)"
    for _ in range(depth - 1):
        g = r"\((?:[^()]|" + g + r")*\)"
    return g


def too_deep(depth: int) -> str:
    """The start of a parenthesised group that reaches `depth` levels."""
    r = r"\("
    for level in range(2, depth + 1):
        inner = r"[^()]" if level == 2 else r"(?:[^()]|" + group(level - 2) + ")"
        r = r"\(" + inner + "*" + r
    return r


# what lies between words at the top level of one statement: separators and parenthesised
# groups, whose insides do not matter
SEP = rf"(?:[^{IDC}();]|{group(NEST)})"


def no_word(other: str) -> str:
    """Text at the top level of one statement with no word in it but those `other` (a
    word_except pattern) matches: a DELETE or UPDATE with no WHERE is followed by this."""
    return rf"{SEP}*(?:{other}{SEP}+)*(?:{other})?"
