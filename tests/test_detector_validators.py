"""The C validators of the built-in detectors (ext/hoopwire/_mask.pyx) against the Python reference they
replaced: same answer for any bytes and any span. The references are kept here, not in the
product, so that there is one implementation to run and one to check it against."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from hoopwire import _mask

_WORD = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_DIGITS = frozenset(b"0123456789")


def _luhn(digits: bytes) -> bool:
    total, alt = 0, False
    for c in reversed(digits):
        d = c - 48
        if alt:
            d = d * 2 - 9 if d * 2 > 9 else d * 2
        total += d
        alt = not alt
    return total % 10 == 0


def ref_card(data, s, e):
    starts = [s] + [i + 1 for i in range(s, e) if data[i] in b" -"]
    for st_ in starts:
        if st_ >= e or data[st_] not in b"23456":
            continue
        if st_ > 0 and data[st_ - 1] in _WORD:
            continue
        digits = bytes(c for c in data[st_:e] if c in _DIGITS)
        if 13 <= len(digits) <= 19 and _luhn(digits):
            return st_, e
    return None


def ref_ssn(data, s, e):
    v = data[s:e]
    if len(v) != 11 or v[3] != v[6]:
        return None
    area, group, serial = v[0:3], v[4:6], v[7:11]
    if area in (b"000", b"666") or area[0:1] == b"9" or group == b"00" or serial == b"0000":
        return None
    if s >= 1 and data[s - 1] in b"-." or e < len(data) and data[e] in b"-" and \
            e + 1 < len(data) and data[e + 1] in _DIGITS:
        return None
    return s, e


def ref_phone(data, s, e):
    n = sum(1 for c in data[s:e] if c in _DIGITS)
    if not 8 <= n <= 15:
        return None
    if s > 0 and (data[s - 1] in _WORD or data[s - 1] in b"+-./"):
        return None
    if e < len(data) and data[e] in b"-/" and e + 1 < len(data) and data[e + 1] in _DIGITS:
        return None
    return s, e


def ref_ipv4(data, s, e):
    if s > 0:
        p = data[s - 1]
        if p in _WORD or p == 46 and s > 1 and data[s - 2] in _WORD:
            return None
    if e < len(data) and data[e] == 46 and e + 1 < len(data) and data[e + 1] in _WORD:
        return None
    return s, e


def ref_aws_secret(data, s, e):
    # the C version also refuses a span shorter than 40 (the pattern never reports one)
    if e < len(data) and (data[e] in _WORD or data[e] in b"/+="):
        return None
    return (e - 40, e) if e - 40 >= s else None


def ref_bounded(data, s, e):
    if s > 0 and data[s - 1] in _WORD:
        return None
    return s, e


PAIRS = [(_mask.validate_card, ref_card), (_mask.validate_ssn, ref_ssn),
         (_mask.validate_phone, ref_phone), (_mask.validate_ipv4, ref_ipv4),
         (_mask.validate_aws_secret, ref_aws_secret), (_mask.validate_bounded, ref_bounded)]

# bytes that matter to the validators, plus a few that do not
ALPHABET = b"0123456789" * 3 + b" -./+=_aZv9\n\xc3"


@settings(max_examples=1500, deadline=None)
@given(st.binary(min_size=1, max_size=60).map(lambda b: bytes(ALPHABET[c % len(ALPHABET)]
                                                               for c in b)),
       st.integers(0, 59), st.integers(1, 60))
def test_c_validators_agree_with_the_reference(data, s, length):
    s = min(s, len(data) - 1)
    e = min(s + length, len(data))
    for c_version, reference in PAIRS:
        assert c_version(data, s, e) == reference(data, s, e), (c_version, data, s, e)


def test_known_answers():
    assert _mask.validate_card(b"pay 4111 1111 1111 1111 now", 4, 23) == (4, 23)
    assert _mask.validate_card(b"5 4111 1111 1111 1111", 0, 21) == (2, 21)   # leading number
    assert _mask.validate_card(b"4111 1111 1111 1112", 0, 19) is None          # Luhn fails
    assert _mask.validate_ssn(b"123-45-6789", 0, 11) == (0, 11)
    assert _mask.validate_ssn(b"666-45-6789", 0, 11) is None
    assert _mask.validate_ssn(b"123-45-6789-1", 0, 11) is None
    assert _mask.validate_phone(b"+14155552671", 0, 12) == (0, 12)
    assert _mask.validate_phone(b"x+14155552671", 1, 13) is None
    assert _mask.validate_ipv4(b"v1.2.3.4", 1, 8) is None
    assert _mask.validate_ipv4(b"at 10.0.0.1.", 3, 11) == (3, 11)
    key = b"k=" + b"A" * 40
    assert _mask.validate_aws_secret(key, 0, 42) == (2, 42)
    assert _mask.validate_aws_secret(key + b"B", 0, 42) is None
    assert _mask.validate_bounded(b"xeyJ", 1, 4) is None
    # spans outside the data are refused, never read
    assert all(f(b"123", 2, 9) is None and f(b"123", 3, 3) is None for f, _ in PAIRS)
