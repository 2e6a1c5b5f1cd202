"""JSON key paths, the language of a [[connection.mask]]'s `paths` (HTTP response bodies;
hoopwire/http/jsonmask.py compiles them into its automaton, hoopwire/config.py checks them at
load with the same reader, so a path config accepts always compiles).

    $.users[*].email   $.a.b   $["odd.key"]   $.items[0].card   $..password   **.password

Member names compare casefolded (over-masking is the safe error); a name step looks through
arrays. Pure: no import of config or the engine, so config can use it without a cycle.
"""

from __future__ import annotations

import re

__all__ = ["NAME", "INDEX", "ANY", "DEEP", "compile_path"]

NAME, INDEX, ANY, DEEP = range(4)
_NAME_CHARS = re.compile(r"[^.\[\]\s\"'*]+")


def compile_path(text: str) -> tuple[tuple[int, object], ...]:
    """The steps of one key path: (NAME, casefolded name) | (INDEX, n) | (ANY, None) |
    (DEEP, None). Raises ValueError saying where it is wrong."""
    steps: list[tuple[int, object]] = []
    s = text.strip()
    if s.startswith("**"):
        steps.append((DEEP, None))
        i = 2
    elif s.startswith("$"):
        i = 1
    else:
        raise ValueError(f"path {text!r} must start with $ or **")
    n = len(s)
    while i < n:
        c = s[i]
        if s.startswith("..", i):
            steps.append((DEEP, None))
            i += 2
            if i < n and s[i] == "[":
                continue
            i = _name_step(s, i, steps, text)
        elif c == ".":
            i = _name_step(s, i + 1, steps, text)
        elif c == "[":
            i = _bracket_step(s, i + 1, steps, text)
        else:
            raise ValueError(f"path {text!r}: unexpected {c!r} at {i}")
    # `$..**` and the like: one DEEP is enough
    out = [st for k, st in enumerate(steps)
           if not (st[0] == DEEP and k and steps[k - 1][0] == DEEP)]
    return tuple(out)


def _name_step(s: str, i: int, steps: list, text: str) -> int:
    if s.startswith("**", i):
        steps.append((DEEP, None))
        return i + 2
    if s.startswith("*", i):
        steps.append((ANY, None))
        return i + 1
    m = _NAME_CHARS.match(s, i)
    if m is None:
        raise ValueError(f"path {text!r}: a member name is missing at {i}")
    steps.append((NAME, m.group().casefold()))
    return m.end()


def _bracket_step(s: str, i: int, steps: list, text: str) -> int:
    n = len(s)
    if i < n and s[i] in "\"'":
        quote = s[i]
        i += 1
        name = []
        while i < n and s[i] != quote:
            if s[i] == "\\" and i + 1 < n:
                i += 1
            name.append(s[i])
            i += 1
        if i + 1 >= n or s[i + 1] != "]":
            raise ValueError(f"path {text!r}: unterminated [\"name\"]")
        steps.append((NAME, "".join(name).casefold()))
        return i + 2
    end = s.find("]", i)
    if end < 0:
        raise ValueError(f"path {text!r}: unterminated [")
    inner = s[i:end].strip()
    if inner == "*":
        steps.append((ANY, None))
    elif inner.isdigit() and inner.isascii():
        steps.append((INDEX, int(inner)))
    else:
        raise ValueError(f"path {text!r}: [{inner}] is not [*], [N] or [\"name\"]")
    return end + 1
