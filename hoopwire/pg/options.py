"""A startup packet's `options`, read the way the server reads them.

The server splits `options` into words (whitespace separates, a backslash takes the next
character as it is) and hands them to getopt as a command line: `-c name=value` and
`--name=value` set a setting, and so do several single-letter switches (`-S 4MB` is work_mem,
`-e` the European date style). getopt lets switches share a word and a switch's argument follow
it in the same word, so `-ecrole=postgres` is `-e -c role=postgres`: a reader that looks for
words starting with `-c` misses it, and the guardrails with it.

`settings` returns every setting the words make, as (name, value), for the guardrails to judge
as the SETs they amount to. A switch that sets something the guardrails cannot judge, or that a
client has no business sending (the server's own start-up switches), and anything getopt would
not take as a switch, is refused: the server would refuse most of them too, after the gateway
had let them through.
"""

from __future__ import annotations

__all__ = ["OptionsRefused", "settings", "split_words"]

# the server's getopt string for backend switches: a letter followed by ':' takes an argument
_GETOPT = "B:bc:C:D:d:EeFf:h:ijk:lN:nOPp:r:S:sTt:v:W:-:"
_TAKES_ARG = {ch for i, ch in enumerate(_GETOPT) if ch != ":" and _GETOPT[i + 1:i + 2] == ":"}
_SWITCHES = set(_GETOPT.replace(":", ""))

# -f forbids a plan type: the setting it turns off
_FORBID = {"s": "enable_seqscan", "i": "enable_indexscan", "o": "enable_indexonlyscan",
           "b": "enable_bitmapscan", "t": "enable_tidscan", "n": "enable_nestloop",
           "m": "enable_mergejoin", "h": "enable_hashjoin"}
# -t names which statistics to log
_STATS = {"pa": "log_parser_stats", "pl": "log_planner_stats", "e": "log_executor_stats"}


class OptionsRefused(ValueError):
    """`options` holds something the gateway does not pass on."""


def split_words(options: str) -> list[str]:
    """The server's split: whitespace between words, backslash escapes the next character."""
    words, cur, esc, has = [], [], False, False
    for ch in options:
        if esc:
            cur.append(ch)
            esc = False
        elif ch == "\\":
            esc, has = True, True
        elif ch.isspace():
            if cur or has:
                words.append("".join(cur))
            cur, has = [], False
        else:
            cur.append(ch)
            has = True
    if cur or has:
        words.append("".join(cur))
    return words


def _name_value(arg: str, switch: str) -> tuple[str, str]:
    name, eq, value = arg.partition("=")
    if not eq or not name:
        raise OptionsRefused(f"-{switch} {arg!r} is not name=value")
    # the server folds dashes in a long option's name to underscores
    return name.replace("-", "_"), value


def _setting(switch: str, arg: str | None) -> tuple[str, str]:
    if switch in ("c", "-"):
        return _name_value(arg or "", switch)
    if switch == "e":
        return ("datestyle", "euro")
    if switch == "S":
        return ("work_mem", arg or "")
    if switch == "f" and arg and arg[:1] in _FORBID:
        return (_FORBID[arg[:1]], "false")
    if switch == "P":
        return ("ignore_system_indexes", "true")
    if switch == "O":
        return ("allow_system_table_mods", "true")
    if switch == "s":
        return ("log_statement_stats", "true")
    if switch == "t" and arg:
        for prefix, name in _STATS.items():
            if arg.startswith(prefix):
                return (name, "true")
    raise OptionsRefused(f"startup option -{switch} is not passed on by the gateway")


def settings(options: str) -> list[tuple[str, str]]:
    """Every (setting, value) that `options` makes, in order; OptionsRefused for anything else."""
    words = split_words(options)
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(words):
        w = words[i]
        i += 1
        if len(w) < 2 or w[0] != "-":
            raise OptionsRefused(f"{w!r} in options is not a switch")
        j = 1
        while j < len(w):
            switch = w[j]
            j += 1
            if switch not in _SWITCHES:
                raise OptionsRefused(f"unknown startup option -{switch}")
            arg = None
            if switch in _TAKES_ARG:
                if j < len(w):
                    arg, j = w[j:], len(w)
                elif i < len(words):
                    arg, i = words[i], i + 1
                else:
                    raise OptionsRefused(f"startup option -{switch} needs a value")
            out.append(_setting(switch, arg))
    return out
