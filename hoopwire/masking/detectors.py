"""Detectors: what a secret or a piece of PII looks like, as a Hyperscan pattern plus a validator.

A detector finds *spans* in text. Its Hyperscan pattern is written to over-match a little (no
look-around in Hyperscan); its validator then looks at the span with its context and either
refuses it, or returns the exact part to mask (a context-anchored detector such as
`aws_secret_access_key = …` masks only the value, never the key word or the quotes around it).

Every built-in detector, what it catches and where it is known to be wrong:

| name              | catches                                             | known false positives / negatives |
|-------------------|-----------------------------------------------------|-----------------------------------|
| EMAIL             | local@domain.tld (ASCII; TLD of 2-24 letters)       | FN: IDN / non-ASCII addresses, quoted local parts. FP: `user@host.internal`-like strings in logs |
| CREDIT_CARD       | 13-19 digits starting 2-6, optional single space/dash separators, Luhn-valid | FP: any Luhn-valid 13-19 digit id starting 2-6 (1 in 10 random ones). FN: cards glued to letters/digits (`x4111…`) |
| US_SSN            | AAA-GG-SSSS or AAA GG SSSS (same separator twice); area not 000/666/9xx, group not 00, serial not 0000 | FN: undashed 9-digit SSNs (too many ordinary numbers look alike). FP: other ids of that shape |
| PHONE             | E.164 (`+14155552671`), `+CC` with separated groups, NANP `(415) 555-2671` / `415-555-2671` / `415.555.2671`, trunk-prefixed national `020 7946 0958` | FN: unseparated national numbers (`4155552671`), extensions. FP: ids of the NANP 3-3-4 shape. ISO dates/times and IPs are not phones |
| IPV4              | dotted quads with octets 0-255, no leading zeros    | Version strings are refused: a quad glued to a further `.N` (`1.2.3.4.5`) or following `v`/`V` (`v1.2.3.4`) or a letter/digit. FN: an address written right after `v`, `10.0.0.1.` at a sentence end is still caught |
| IPV6              | full and `::`-compressed forms, IPv4-mapped tails   | FP: hex words joined by `::` (`cafe::beef`) — three groups are required, or two with a digit and one of 3+ characters (`fe80::1`), so `std::`, `a::b` and `cafe::b` are not hits. FN: zone ids (`%eth0`) stay in clear |
| IBAN              | 2 letters, 2 check digits, 11-30 alphanumerics (groups of 4 may be space-separated), mod-97 valid | FN: lower-case IBANs. FP: mod-97-valid codes of that shape (1 in 97) |
| AWS_ACCESS_KEY_ID | AKIA… / ASIA… + 16 upper-case alphanumerics        | FP: none known. FN: other AWS unique-id prefixes (AIDA, AROA…) which are not credentials |
| AWS_SECRET        | 40 base64 characters after `aws_secret_access_key`, `secret_access_key`, `aws secret key`, … then `=`/`:`/`=>` | FN: a bare secret without its key word (indistinguishable from any 40-char base64) |
| GITHUB_TOKEN      | ghp_/gho_/ghu_/ghs_/ghr_ + 36+ alphanumerics; github_pat_ + 50+ | FP: none known |
| SLACK_TOKEN       | xoxa-/xoxb-/xoxp-/xoxr-/xoxs- + 10+ token characters | FP: none known |
| GENERIC_API_KEY   | a value of 16+ token characters holding a letter and a digit after api_key / apikey / api_secret / secret / token (any prefix/suffix, e.g. `client_secret`, `access_token`) and `=`, `:` or `=>` | FN: values of letters only, or far from their key word. FP: long ids assigned to variables named like a token |
| JWT               | eyJ….eyJ….signature (base64url)                     | FN: JWTs whose payload does not start `{"` |
| PEM_PRIVATE_KEY   | -----BEGIN … PRIVATE KEY----- and its base64 body (real newlines or JSON `\\n`), up to -----END … PRIVATE KEY----- | a truncated key (no END line) is masked up to where its body stops. FN: encrypted legacy keys are masked only up to their `Proc-Type:` header |

User-defined detectors (`[[connection.detector]]`) bring a Hyperscan pattern and optionally the
`luhn` or `mod97` validator (applied to the digits / alphanumerics of the span).

Patterns must not rely on `\\A`/`\\z`; `^` and `$` match at the start and end of a value and of
every line in it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional

from hoopwire._mask import HS_CASELESS, compile_error as _compile_error, luhn_ok as _luhn_c
# The validators that run for nearly every hit are C (ext/hoopwire/_mask.pyx: the rules are documented
# there); the masking scanner calls them without a Python call.
from hoopwire._mask import (validate_aws_secret as _aws_secret, validate_bounded as _bounded,
                            validate_card as _card, validate_ipv4 as _ipv4,
                            validate_phone as _phone, validate_ssn as _ssn)
from hoopwire.config import ConfigError, DetectorConfig

__all__ = ["Detector", "DetectorError", "BUILTIN", "build_detectors", "luhn_ok", "mod97_ok",
           "check_pattern"]


class DetectorError(ConfigError):
    """Detectors that cannot be built, each as (key path, reason naming the detector)."""


# A validator looks at data[s:e] (the span Hyperscan reported, leftmost start) with its context
# and returns the (start, end) to mask, or None to refuse the span.
Validator = Callable[[bytes, int, int], Optional[tuple[int, int]]]


@dataclass(frozen=True)
class Detector:
    name: str
    pattern: bytes                 # Hyperscan syntax
    validator: Optional[Validator] = None
    flags: int = 0                 # extra Hyperscan flags (CASELESS...)
    doc: str = ""


# ---------------------------------------------------------------------------------------------
# validators

_WORD = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_DIGITS = frozenset(b"0123456789")


def luhn_ok(digits: bytes) -> bool:
    """The Luhn checksum over the ASCII digits of `digits` (other bytes are skipped)."""
    return _luhn_c(digits)


def _luhn_py(digits: bytes) -> bool:
    """The reference the C version (hoopwire._mask.luhn_ok) is tested against."""
    total = 0
    alt = False
    for c in reversed(digits):
        d = c - 48
        if alt:
            d *= 2
            if d > 9:
                d -= 9
        total += d
        alt = not alt
    return total % 10 == 0


def mod97_ok(code: bytes) -> bool:
    """ISO 7064 mod 97-10 as IBAN uses it: the first four characters moved to the end, letters
    as 10..35, the number mod 97 is 1."""
    code = code.upper()
    if len(code) < 5 or not code.isalnum():
        return False
    moved = code[4:] + code[:4]
    n = 0
    for c in moved:
        if 48 <= c <= 57:
            n = (n * 10 + c - 48) % 97
        elif 65 <= c <= 90:
            n = (n * 100 + c - 55) % 97
        else:
            return False
    return n == 1


def _ipv6(data: bytes, s: int, e: int):
    v = data[s:e]
    groups = [g for g in re.split(rb"[:.]", v) if g]
    # two groups only when one is long and a digit shows (fe80::1, not a::b or cafe::b)
    if len(groups) < 2 or len(groups) == 2 and not (
            max(len(g) for g in groups) >= 3 and any(c in _DIGITS for c in v)):
        return None
    if s > 0 and (data[s - 1] in _WORD or data[s - 1] == 58):
        return None
    if e < len(data) and (data[e] in _WORD or data[e] == 58):
        return None
    return s, e


def _iban(data: bytes, s: int, e: int):
    code = data[s:e].replace(b" ", b"")
    if not 15 <= len(code) <= 34 or not mod97_ok(code):
        return None
    return s, e


_VALUE_AFTER = re.compile(rb"(?:=>|[:=])\s*[\"']?")


def _after_operator(min_len: int, need_mixed: bool) -> Validator:
    def validate(data: bytes, s: int, e: int):
        span = data[s:e]
        last = None
        for last in _VALUE_AFTER.finditer(span):
            pass
        if last is None:
            return None
        vs = s + last.end()
        if e - vs < min_len:
            return None
        if need_mixed:
            value = data[vs:e]
            if not (any(48 <= c <= 57 for c in value) and
                    any(65 <= (c & 0xDF) <= 90 for c in value)):
                return None
        return vs, e
    return validate


def _digits_luhn(data: bytes, s: int, e: int):
    digits = bytes(c for c in data[s:e] if c in _DIGITS)
    return (s, e) if len(digits) >= 2 and luhn_ok(digits) else None


def _alnum_mod97(data: bytes, s: int, e: int):
    code = bytes(c for c in data[s:e] if c in _WORD and c != 95)
    return (s, e) if mod97_ok(code) else None


USER_VALIDATORS: dict[str, Validator] = {"luhn": _digits_luhn, "mod97": _alnum_mod97}


# ---------------------------------------------------------------------------------------------
# built-ins

_H = rb"[0-9A-Fa-f]{1,4}"
_V4 = rb"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = _V4 + rb"(?:\." + _V4 + rb"){3}"
_IPV6 = b"|".join([
    rb"(?:" + _H + rb":){7}" + _H,
    rb"(?:" + _H + rb":){1,7}:",
    rb"(?:" + _H + rb":){1,6}:" + _H,
    rb"(?:" + _H + rb":){1,5}(?::" + _H + rb"){1,2}",
    rb"(?:" + _H + rb":){1,4}(?::" + _H + rb"){1,3}",
    rb"(?:" + _H + rb":){1,3}(?::" + _H + rb"){1,4}",
    rb"(?:" + _H + rb":){1,2}(?::" + _H + rb"){1,5}",
    _H + rb":(?::" + _H + rb"){1,6}",
    rb":(?::" + _H + rb"){1,7}",
    rb"::(?:[fF]{4}(?::0{1,4})?:)?" + _IPV4,
    rb"(?:" + _H + rb":){1,4}:" + _IPV4,
])
_KEY_SEP = rb"[\"']?\s{0,3}(?:=>|[:=])\s{0,3}[\"']?"

BUILTIN: dict[str, Detector] = {d.name: d for d in [
    Detector("EMAIL",
             rb"[A-Za-z0-9._%+\-]+@(?:[A-Za-z0-9\-]+\.)+[A-Za-z]{2,24}\b",
             None, doc="an e-mail address"),
    Detector("CREDIT_CARD", rb"\b[2-6](?:[0-9][ \-]?){11,17}[0-9]\b", _card,
             doc="a payment card number (Luhn)"),
    Detector("US_SSN", rb"\b[0-8][0-9]{2}-[0-9]{2}-[0-9]{4}\b|\b[0-8][0-9]{2} [0-9]{2} [0-9]{4}\b",
             _ssn, doc="a US social security number"),
    Detector("PHONE", b"|".join([
        rb"\+[1-9][0-9]{7,14}\b",
        rb"\+[1-9][0-9]{0,2}[ .\-]\(?[0-9]{1,4}\)?(?:[ .\-][0-9]{2,4}){2,4}\b",
        rb"\([0-9]{3}\) ?[0-9]{3}[\-. ][0-9]{4}\b",
        rb"\b[0-9]{3}-[0-9]{3}-[0-9]{4}\b",
        rb"\b[0-9]{3}\.[0-9]{3}\.[0-9]{4}\b",
        rb"\b0[1-9][0-9]{1,3} [0-9]{3,4} [0-9]{3,4}\b",
    ]), _phone, doc="a telephone number"),
    Detector("IPV4", rb"\b" + _IPV4 + rb"\b", _ipv4, doc="an IPv4 address"),
    Detector("IPV6", rb"(?:" + _IPV6 + rb")", _ipv6, doc="an IPv6 address"),
    Detector("IBAN", rb"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b", _iban,
             doc="an international bank account number (mod 97)"),
    Detector("AWS_ACCESS_KEY_ID", rb"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b", None,
             doc="an AWS access key id"),
    Detector("AWS_SECRET",
             rb"(?:aws[ _.\-]?)?secret[ _.\-]?(?:access[ _.\-]?)?key" + _KEY_SEP +
             rb"[A-Za-z0-9/+]{40}|aws[ _.\-]?secret" + _KEY_SEP + rb"[A-Za-z0-9/+]{40}",
             _aws_secret, HS_CASELESS,
             doc="an AWS secret access key next to its key word"),
    Detector("GITHUB_TOKEN", rb"\bgh[pousr]_[A-Za-z0-9]{36,}\b|\bgithub_pat_[A-Za-z0-9_]{50,}\b",
             None, doc="a GitHub token"),
    Detector("SLACK_TOKEN", rb"\bxox[abprs]-[A-Za-z0-9\-]{10,}", None, doc="a Slack token"),
    Detector("GENERIC_API_KEY",
             rb"(?:api[_\-]?key|apikey|api[_\-]?secret|secret|token)[A-Za-z0-9_\-]*" + _KEY_SEP +
             rb"[A-Za-z0-9_\-./+=~]{16,}",
             _after_operator(16, True), HS_CASELESS,
             doc="a key, secret or token value assigned to a key word"),
    Detector("JWT", rb"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*", _bounded,
             doc="a JSON Web Token"),
    Detector("PEM_PRIVATE_KEY",
             rb"-----BEGIN[A-Z ]{0,24} PRIVATE KEY-----(?:[A-Za-z0-9+/=\s]|\\[nr])*"
             rb"(?:-----END[A-Z ]{0,24} PRIVATE KEY-----)?",
             None, doc="a PEM private key block"),
]}


def check_pattern(pattern: bytes, flags: int = 0) -> Optional[str]:
    """None when Hyperscan compiles the pattern (with and without start-of-match), else why.
    Asks the libhs that masking scans with, not the Python binding the guardrails use."""
    return _compile_error(pattern, flags)


def build_detectors(user: tuple[DetectorConfig, ...] = (), *,
                    path: str = "connection") -> dict[str, Detector]:
    """The built-ins plus the connection's own detectors (a user detector may replace a built-in
    of the same name). Raises DetectorError naming each detector whose pattern does not compile."""
    out = dict(BUILTIN)
    problems: list[tuple[str, str]] = []
    for i, d in enumerate(user):
        key = f"{path}.detector[{i}]"
        pattern = d.pattern.encode("utf-8") if isinstance(d.pattern, str) else bytes(d.pattern)
        if d.validator is not None and d.validator not in USER_VALIDATORS:
            problems.append((f"{key}.validator", f"detector {d.name!r}: unknown validator "
                             f"{d.validator!r} (luhn or mod97)"))
            continue
        why = check_pattern(pattern)  # Hyperscan also refuses a pattern matching the empty string
        if why is not None:
            problems.append((f"{key}.pattern", f"detector {d.name!r}: pattern {d.pattern!r} does "
                             f"not compile: {why}"))
            continue
        out[d.name] = Detector(d.name, pattern, USER_VALIDATORS.get(d.validator or ""),
                               doc="user-defined")
    if problems:
        raise DetectorError(problems)
    return out

