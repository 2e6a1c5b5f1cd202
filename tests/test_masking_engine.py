"""The masking engine without a database: detectors (hits and near misses), strategies, rules."""

import hmac
import hashlib

import pytest

from hoopwire.config import ConfigError, DetectorConfig, MaskConfig
from hoopwire.masking import BUILTIN, DetectorError, MaskEngine, Strategy
from hoopwire.masking.detectors import luhn_ok, mod97_ok
from hoopwire.masking.strategies import char_starts, format_preserving, partial

KEY = b"test-key"


def engine(strategy="redact", detectors=tuple(BUILTIN), columns=(), keep=4, user=()):
    return MaskEngine([MaskConfig(columns=columns, detectors=detectors, strategy=strategy,
                                  keep=keep)], user, hash_key=KEY, path="connection[0]")


@pytest.fixture(scope="module")
def redact():
    return engine()


def hits(eng, text):
    out, counts = eng.mask_text(text.encode() if isinstance(text, str) else text)
    return out, counts


# -- detectors: true positives --------------------------------------------------------------

POSITIVES = [
    ("EMAIL", "write to john.doe+tag@mail.example.co.uk today", "john.doe+tag@mail.example.co.uk"),
    ("EMAIL", "Key (email)=(alice@corp.io) already exists.", "alice@corp.io"),
    ("CREDIT_CARD", "card 4111111111111111 ok", "4111111111111111"),
    ("CREDIT_CARD", "card 4111 1111 1111 1111.", "4111 1111 1111 1111"),
    ("CREDIT_CARD", "amex 3782-822463-10005", "3782-822463-10005"),
    ("CREDIT_CARD", "mc 5555555555554444", "5555555555554444"),
    ("CREDIT_CARD", "qty 5 4111111111111111", "4111111111111111"),
    ("US_SSN", "ssn: 123-45-6789", "123-45-6789"),
    ("US_SSN", "ssn 078 05 1120 x", "078 05 1120"),
    ("PHONE", "call +14155552671", "+14155552671"),
    ("PHONE", "call +44 20 7946 0958 now", "+44 20 7946 0958"),
    ("PHONE", "call (415) 555-2671", "(415) 555-2671"),
    ("PHONE", "call 415-555-2671", "415-555-2671"),
    ("PHONE", "tel 020 7946 0958", "020 7946 0958"),
    ("IPV4", "from 192.168.1.10:5432", "192.168.1.10"),
    ("IPV4", "host=10.0.0.255,", "10.0.0.255"),
    ("IPV6", "addr 2001:db8:85a3::8a2e:370:7334 up", "2001:db8:85a3::8a2e:370:7334"),
    ("IPV6", "addr fe80:0:0:0:202:b3ff:fe1e:8329", "fe80:0:0:0:202:b3ff:fe1e:8329"),
    ("IPV6", "mapped ::ffff:192.0.2.128 here", "::ffff:192.0.2.128"),
    ("IPV6", "link fe80::1 up", "fe80::1"),
    ("IBAN", "iban GB82 WEST 1234 5698 7654 32", "GB82 WEST 1234 5698 7654 32"),
    ("IBAN", "DE89370400440532013000", "DE89370400440532013000"),
    ("AWS_ACCESS_KEY_ID", "key AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
    ("AWS_ACCESS_KEY_ID", "ASIAY34FZKBOKMUTVV7A", "ASIAY34FZKBOKMUTVV7A"),
    ("AWS_SECRET", 'aws_secret_access_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"',
     "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    ("AWS_SECRET", "AWS Secret Key: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
     "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    ("GITHUB_TOKEN", "token ghp_" + "A1b2" * 9, "ghp_" + "A1b2" * 9),
    ("GITHUB_TOKEN", "github_pat_" + "11ABCDEFG0" * 6, "github_pat_" + "11ABCDEFG0" * 6),
    ("SLACK_TOKEN", "xoxb-123456789012-1234567890123-AbCdEf", "xoxb-123456789012-1234567890123-AbCdEf"),
    ("GENERIC_API_KEY", "api_key=sk_live_4eC39HqLyjWDarjtT1zdp7dc", "sk_live_4eC39HqLyjWDarjtT1zdp7dc"),
    ("GENERIC_API_KEY", '{"client_secret": "Zq8x1Yb2Wc3Vd4Ue5Tf6"}', "Zq8x1Yb2Wc3Vd4Ue5Tf6"),
    ("JWT", "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
     "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"),
    ("PEM_PRIVATE_KEY", "k=-----BEGIN RSA PRIVATE KEY-----\nMIIEow+/=\nAbC\n-----END RSA PRIVATE KEY-----\nnext",
     "-----BEGIN RSA PRIVATE KEY-----\nMIIEow+/=\nAbC\n-----END RSA PRIVATE KEY-----"),
    ("PEM_PRIVATE_KEY", '{"pem": "-----BEGIN PRIVATE KEY-----\\nMIIEvQ\\n-----END PRIVATE KEY-----\\n"}',
     "-----BEGIN PRIVATE KEY-----\\nMIIEvQ\\n-----END PRIVATE KEY-----"),
]


@pytest.mark.parametrize("name,text,secret", POSITIVES, ids=[f"{p[0]}-{i}" for i, p in enumerate(POSITIVES)])
def test_detector_hits_exact_span(name, text, secret):
    eng = engine(detectors=(name,))
    out, counts = hits(eng, text)
    assert counts == {name: 1}
    assert out == text.replace(secret, "****").encode()


NEAR_MISSES = [
    ("CREDIT_CARD", "luhn-invalid 4111111111111112"),
    ("CREDIT_CARD", "order 1234567890123456"),          # starts with 1
    ("CREDIT_CARD", "id x4111111111111111"),             # glued to a letter
    ("CREDIT_CARD", "too short 411111111111"),
    ("US_SSN", "000-12-3456 666-12-3456 912-12-3456 123-00-4567 123-45-0000"),
    ("US_SSN", "mixed 123-45 6789 and 123456789"),
    ("PHONE", "date 2024-01-15 time 12:30:45 ts 2024-01-15T12:30:45Z"),
    ("PHONE", "amount 1234567.89 and 12345678"),
    ("PHONE", "ip 192.168.100.200"),
    ("IPV4", "version 1.2.3.4.5 and v1.2.3.4 and V10.0.0.1"),
    ("IPV4", "bad 256.1.1.1 and 1.2.3 and 01.02.03.04"),
    ("IPV6", "c++ std::vector a::b ::"),
    ("IPV6", "cafe::b and dead::"),
    ("IPV6", "time 12:30:45 mac 00:1a:2b:3c:4d:5e"),
    ("IBAN", "GB00 WEST 1234 5698 7654 32"),          # wrong check digits
    ("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPL and AIDAIOSFODNN7EXAMPLE"),
    ("AWS_SECRET", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY without its key word"),
    ("GITHUB_TOKEN", "ghp_short and ghx_" + "a" * 40),
    ("SLACK_TOKEN", "xoxz-1234567890 xoxb-short"),
    ("GENERIC_API_KEY", "token = process_env_SECRET_VALUE_NAME"),   # no digit: a name
    ("GENERIC_API_KEY", "token=abc123"),                             # too short
    ("JWT", "eyJhbGciOi.notajwt and eyJ.eyJ.x"),
    ("PEM_PRIVATE_KEY", "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----"),
    (None, "uuid 550e8400-e29b-41d4-a716-446655440000 is not a key"),
    (None, "sha 2fd4e1c67a2d28fced849ee1bb76e7391b93eb12 and date 2023-11-05 10:22:01+00"),
]


@pytest.mark.parametrize("name,text", NEAR_MISSES, ids=[f"{p[0]}-{i}" for i, p in enumerate(NEAR_MISSES)])
def test_detector_near_misses(name, text, redact):
    eng = engine(detectors=(name,)) if name else redact
    data = text.encode()
    out, counts = eng.mask_text(data)
    assert counts == {} and out is data


def test_validators():
    assert luhn_ok(b"4111111111111111") and not luhn_ok(b"4111111111111112")
    assert mod97_ok(b"GB82WEST12345698765432") and not mod97_ok(b"GB83WEST12345698765432")


def test_unchanged_text_is_same_object(redact):
    data = b"nothing to see here, 42 rows"
    out, counts = redact.mask_text(data)
    assert out is data and counts == {}


def test_several_hits_and_counts(redact):
    out, counts = redact.mask_text(b"a@b.io, c@d.io and 4111111111111111 AKIAIOSFODNN7EXAMPLE")
    assert out == b"****, **** and **** ****"
    assert counts == {"EMAIL": 2, "CREDIT_CARD": 1, "AWS_ACCESS_KEY_ID": 1}


def test_multibyte_text_around_hits(redact):
    text = "Ünïcødé → john@example.com ← 日本語 4111111111111111 ✓".encode()
    out, counts = redact.mask_text(text)
    assert out.decode("utf-8") == "Ünïcødé → **** ← 日本語 **** ✓"
    assert counts == {"EMAIL": 1, "CREDIT_CARD": 1}


# -- user detectors ---------------------------------------------------------------------------

def test_user_detector_and_validator():
    eng = engine(detectors=("EMPLOYEE_ID", "CARDISH"),
                 user=(DetectorConfig("EMPLOYEE_ID", r"\bEMP-[0-9]{6}\b"),
                       DetectorConfig("CARDISH", r"\b[0-9]{16}\b", "luhn")))
    out, counts = eng.mask_text(b"EMP-123456 1111111111111117 1111111111111111")
    assert out == b"**** **** 1111111111111111"
    assert counts == {"EMPLOYEE_ID": 1, "CARDISH": 1}


def test_bad_user_pattern_names_detector():
    with pytest.raises(DetectorError) as e:
        engine(detectors=("BROKEN",), user=(DetectorConfig("BROKEN", r"(unclosed"),))
    assert isinstance(e.value, ConfigError)
    assert "BROKEN" in str(e.value) and "connection[0].detector[0].pattern" in str(e.value)
    with pytest.raises(DetectorError, match="EMPTY"):
        engine(detectors=("EMPTY",), user=(DetectorConfig("EMPTY", r"x*"),))
    with pytest.raises(DetectorError, match="validator"):
        engine(detectors=("V",), user=(DetectorConfig("V", r"abc", "crc32"),))
    # libhs takes C strings: a NUL would cut the pattern short, so it is refused
    with pytest.raises(DetectorError, match="NUL"):
        engine(detectors=("Z",), user=(DetectorConfig("Z", "ab\x00cd"),))


def test_unknown_detector_in_rule():
    with pytest.raises(DetectorError, match="NOPE"):
        engine(detectors=("NOPE",))


# -- strategies -------------------------------------------------------------------------------

def test_partial_counts_characters():
    assert partial(b"4111111111111111", 4) == b"************1111"
    assert partial("jöhn€ürö".encode(), 3) == "*****ürö".encode()
    assert partial(b"abc", 4) == b"***"
    assert partial(b"abcdef", 0) == b"******"
    assert partial(b"", 4) == b""


def test_char_starts_with_invalid_utf8():
    assert char_starts("aé€😀".encode()) == [0, 1, 3, 6]
    assert char_starts(b"\x80\xffa\xc3") == [0, 1, 2, 3]


def test_hash_is_keyed_and_stable():
    s = Strategy("hash", key=KEY)
    v = s.inline(b"123-45-6789")
    assert v == b"h:" + hmac.new(KEY, b"123-45-6789", hashlib.sha256).hexdigest()[:16].encode()
    assert v == Strategy("hash", key=KEY).whole(b"123-45-6789")
    assert v != Strategy("hash", key=b"other").inline(b"123-45-6789")


def test_null_strategy():
    s = Strategy("null")
    assert s.whole(b"x") is None and s.inline(b"x") == b"****"


def test_format_keeps_classes_and_length():
    v = "Ab-12 x€é9".encode()
    out = format_preserving(v, KEY)
    d = out.decode()
    assert len(d) == len(v.decode())
    for a, b in zip(v.decode(), d):
        if a.isdigit():
            assert b.isdigit()
        elif a.isascii() and a.isalpha():
            assert b.isalpha() and a.isupper() == b.isupper()
        elif a.isascii():
            assert a == b
        else:
            assert b.isalpha()
    assert out == format_preserving(v, KEY) and out != format_preserving(v, b"k2")


@pytest.mark.parametrize("strategy,expect", [
    ("redact", "card **** end"),
    ("partial", "card ***************1111 end"),
    ("null", "card **** end"),
])
def test_strategies_on_detector_hits(strategy, expect):
    eng = engine(strategy, detectors=("CREDIT_CARD",))
    out, _ = eng.mask_text(b"card 4111 1111 1111 1111 end")
    assert out.decode() == expect


def test_hash_and_format_change_length_inline():
    out, _ = engine("hash", detectors=("EMAIL",)).mask_text("é a@b.io é".encode())
    assert out.decode().startswith("é h:") and out.decode().endswith(" é") and len(out) == 2 + 1 + 18 + 1 + 2
    out, _ = engine("format", detectors=("US_SSN",)).mask_text(b"ssn 123-45-6789.")
    assert len(out) == len(b"ssn 123-45-6789.") and out[7:8] == b"-" and out != b"ssn 123-45-6789."


# -- column rules ---------------------------------------------------------------------------------

def test_column_globs():
    eng = MaskEngine([MaskConfig(columns=("*.password", "public.users.ssn"), strategy="redact"),
                      MaskConfig(columns=("billing.*",), strategy="hash")], hash_key=KEY)
    assert eng.column_rule("public", "users", "password").index == 0
    assert eng.column_rule("auth", "accounts", "password").index == 0
    assert eng.column_rule("public", "users", "PASSWORD").index == 0
    assert eng.column_rule("public", "users", "ssn").index == 0
    assert eng.column_rule("public", "users", "ssn2") is None
    assert eng.column_rule("public", "users", "password_hint") is None
    assert eng.column_rule("billing", "cards", "number").index == 1
    assert eng.column_rule("public", "billing", "x") is None
    assert eng.detector_names == ()
    assert eng.mask_text(b"a@b.io") == (b"a@b.io", {})


def test_partial_counts_characters_as_the_client_encoding_does():
    """LATIN1 'Ü²' is two characters and also one valid UTF-8 one: counted as UTF-8, partial
    would keep more than `keep` characters of a LATIN1 client's value in clear."""
    from hoopwire.masking.strategies import Strategy, chars_of
    s = Strategy("partial", 4)
    latin1 = "zz-Ü²Ü²Ü²".encode("latin1")
    assert s.measured(chars_of("LATIN1")).inline(latin1) == b"*****" + "Ü²Ü²".encode("latin1")
    assert s.inline("zz-Ü²Ü²Ü²".encode()) == b"*****" + "Ü²Ü²".encode()
    euc = "ab東京都庁".encode("euc_jp")
    assert s.measured(chars_of("EUC_JP")).inline(euc).decode("euc_jp") == "**東京都庁"
    # an encoding with no rule here keeps nothing
    assert s.measured(chars_of("MULE_INTERNAL")).inline("xyzé".encode()) == b"*****"
    engine = MaskEngine([MaskConfig(columns=("s.t.c",), strategy="partial", keep=2)])
    assert engine.for_encoding("UTF8") is engine
    assert engine.for_encoding("LATIN1") is engine.for_encoding("WIN1252")
    assert engine.for_encoding("LATIN1").column_rule("s", "t", "c").strategy.chars == "bytes"
