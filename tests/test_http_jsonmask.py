"""HTTP response masking without a socket: JSON key paths and detectors, text and SSE streams
(hoopwire/http/jsonmask.py)."""

import functools
import json
import random

import orjson
import pytest

from hoopwire.config import MaskConfig
from hoopwire.http.jsonmask import (MAX_CARRY, MAX_DEPTH, TEXT_TAIL, JsonMasker, PathError,
                                    compile_path)
from hoopwire.masking import MaskEngine

KEY = b"test-key"
DETECTORS = ("EMAIL", "CREDIT_CARD", "GENERIC_API_KEY", "US_SSN", "PEM_PRIVATE_KEY", "JWT")


@functools.lru_cache(maxsize=None)
def _masker(paths, strategy, keep, detectors, det_strategy, max_bytes):
    masks = []
    if paths:
        masks.append(MaskConfig(paths=tuple(paths), strategy=strategy, keep=keep))
    if detectors:
        masks.append(MaskConfig(detectors=tuple(detectors), strategy=det_strategy, keep=keep))
    eng = MaskEngine(masks, hash_key=KEY, path="connection[0]")
    return JsonMasker(tuple(masks), eng, max_bytes)


def masker(paths=(), strategy="redact", keep=4, detectors=(), det_strategy="redact",
           max_bytes=1 << 20):
    """A masker per distinct rule set, compiled once for the module (Hyperscan: ~0.5 s)."""
    return _masker(tuple(paths), strategy, keep, tuple(detectors), det_strategy, max_bytes)


def mj(m, doc):
    body = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    r = m.mask_json(body)
    assert r is not None, body
    return orjson.loads(r[0]), r[1]


# -- the path language -------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["$", "$.a.b", "$.users[*].email", "$..password", "**.password",
                                  "$.items[0].card", '$["odd.key"]', "$['x y']",
                                  "$.a.*.b", "$.a.**.b", "**", '$["q\\"uote"]', "$.$ref"])
def test_paths_compile(text):
    assert compile_path(text) is not None


@pytest.mark.parametrize("text", ["users.email", "$.", "$[", "$[x]", "$[-1]", "$.a[", '$["a',
                                  "$.a b", "$[0"])
def test_bad_paths_refused(text):
    with pytest.raises(ValueError):
        compile_path(text)


def test_bad_path_is_a_config_error_naming_the_key():
    masks = (MaskConfig(paths=("$.ok", "nope")),)
    with pytest.raises(PathError) as e:
        JsonMasker(masks, MaskEngine(masks, hash_key=KEY), 1 << 20)
    assert e.value.problems[0][0] == "connection.mask[0].paths[1]"


# -- paths ---------------------------------------------------------------------------------------

def test_users_star_email_and_nothing_else():
    m = masker(["$.users[*].email"])
    out, counts = mj(m, {"users": [{"email": "a@b.io", "name": "A"},
                                   {"email": "c@d.io", "name": "C"}],
                         "email": "top@x.io", "other": [{"email": "o@x.io"}]})
    assert out == {"users": [{"email": "****", "name": "A"}, {"email": "****", "name": "C"}],
                   "email": "top@x.io", "other": [{"email": "o@x.io"}]}
    assert counts == {"path:mask[0]": 2}


def test_name_steps_look_through_nested_arrays():
    m = masker(["$.users.email"])
    out, _ = mj(m, {"users": [[{"email": "a@b.io"}], [[{"email": "c@d.io", "k": 1}]]]})
    assert out == {"users": [[{"email": "****"}], [[{"email": "****", "k": 1}]]]}


def test_any_depth_both_spellings():
    for p in ("$..password", "**.password", "$.**.password"):
        m = masker([p])
        out, counts = mj(m, {"password": "p0", "a": {"b": [{"c": {"password": "p1"}}]},
                             "x": [{"password": ["p2", {"deep": "p3"}]}], "passwords": "keep"})
        assert out == {"password": "****", "a": {"b": [{"c": {"password": "****"}}]},
                       "x": [{"password": ["****", {"deep": "****"}]}], "passwords": "keep"}, p
        assert counts == {"path:mask[0]": 4}


def test_index_step_masks_only_that_element():
    m = masker(["$.items[0].card"])
    out, _ = mj(m, {"items": [{"card": "4111"}, {"card": "5555"}]})
    assert out == {"items": [{"card": "****"}, {"card": "5555"}]}


def test_bracket_names_with_dots_and_quotes():
    m = masker(['$["odd.key"]', "$['a b'].c", '$["q\\"t"]'])
    out, _ = mj(m, {"odd.key": "s", "odd": {"key": "k"}, "a b": {"c": "s2"}, 'q"t': "s3"})
    assert out == {"odd.key": "****", "odd": {"key": "k"}, "a b": {"c": "****"}, 'q"t': "****"}


def test_names_match_ignoring_case_and_after_unescaping():
    m = masker(["$.email"])
    out, _ = mj(m, b'{"EMail": "a@b.io"}')
    assert out == {"EMail": "****"}
    out, _ = mj(m, b'{"e\\u006dail": "a@b.io"}')
    assert out == {"email": "****"}


def test_wildcards_and_root():
    out, _ = mj(masker(["$.a.*"]), {"a": {"x": 1, "y": "s"}, "b": 2})
    assert out == {"a": {"x": "****", "y": "****"}, "b": 2}
    out, _ = mj(masker(["$"]), {"a": [1, "x", None, True]})
    assert out == {"a": ["****", "****", None, "****"]}
    out, _ = mj(masker(["$"]), b'"top secret"')
    assert out == "****"


def test_first_rule_wins():
    masks = (MaskConfig(paths=("$.a",), strategy="hash"), MaskConfig(paths=("$.*",)))
    m = JsonMasker(masks, MaskEngine(masks, hash_key=KEY), 1 << 20)
    out, counts = mj(m, {"a": "v", "b": "w"})
    assert out["a"].startswith("h:") and out["b"] == "****"
    assert counts == {"path:mask[0]": 1, "path:mask[1]": 1}


def test_many_paths_one_lookup_per_node():
    # 200 rules and 20 000 members: the automaton caches transitions, so this stays fast
    m = masker([f"$.k{i}" for i in range(200)] + ["**.secret"])
    doc = {"rows": [{"id": i, "secret": f"s{i}", "k5": "no"} for i in range(5000)], "k7": "x"}
    out, counts = mj(m, doc)
    assert counts == {"path:mask[0]": 5001}
    assert out["k7"] == "****" and out["rows"][3] == {"id": 3, "secret": "****", "k5": "no"}


# -- what a masked value becomes -------------------------------------------------------------

def test_value_types_under_each_strategy():
    doc = {"s": "4111111111111111", "n": 4111111111111111, "f": 12.5, "b": True, "z": None,
           "o": {"x": "abcdef", "y": [1, "q"]}}
    paths = ["$.s", "$.n", "$.f", "$.b", "$.z", "$.o"]
    out, counts = mj(masker(paths), doc)
    assert out == {"s": "****", "n": "****", "f": "****", "b": "****", "z": None,
                   "o": {"x": "****", "y": ["****", "****"]}}
    assert counts == {"path:mask[0]": 7}          # null stays null: nothing to count
    out, _ = mj(masker(paths, "null"), doc)
    assert out == {"s": None, "n": None, "f": None, "b": None, "z": None,
                   "o": {"x": None, "y": [None, None]}}
    out, _ = mj(masker(paths, "partial"), doc)
    assert out["s"] == "************1111" and out["n"] == "************1111"
    assert out["b"] == "****"
    out, _ = mj(masker(paths, "format"), doc)
    # format keeps the JSON type of a number (a client still parses a number) but not its value
    assert isinstance(out["n"], int) and out["n"] != doc["n"] and len(str(out["n"])) <= 16
    assert isinstance(out["f"], float) and out["f"] != 12.5
    assert out["b"] == "****"                     # two values: any rewrite would tell which
    assert len(out["s"]) == 16 and out["s"].isdigit() and out["s"] != doc["s"]
    out, _ = mj(masker(paths, "hash"), doc)
    assert out["s"].startswith("h:") and out["n"].startswith("h:")


def test_unicode_masks_by_characters():
    m = masker(["$.name", "$.emoji"], "partial", keep=2)
    out, _ = mj(m, b'{"name": "J\\u00fcrgen M\\u00fcller", '
                   b'"emoji": "\\ud83d\\ude00ab\\ud83d\\ude01"}')
    assert out == {"name": "*" * 11 + "er", "emoji": "**b\U0001F601"}
    out, _ = mj(m, '{"name": "日本語テキスト"}'.encode())
    assert out == {"name": "*****スト"}
    out, _ = mj(masker(["$.name"], "format"), '{"name": "Åsa Öberg"}'.encode())
    assert len(out["name"]) == 9 and out["name"][3] == " " and "Å" not in out["name"]


# -- detectors -------------------------------------------------------------------------------

def test_detectors_on_values_keys_and_long_integers():
    m = masker(detectors=DETECTORS)
    doc = {"note": "mail bob@example.com now", "bob@example.com": {"id": 1},
           "card": 4111111111111111, "small": 123, "list": ["x", "ssn 123-45-6789"],
           "nested": {"deep": [{"a": "carol@example.org"}]}}
    out, counts = mj(m, doc)
    assert out == {"note": "mail **** now", "****": {"id": 1}, "card": "****", "small": 123,
                   "list": ["x", "ssn ****"], "nested": {"deep": [{"a": "****"}]}}
    assert counts == {"EMAIL": 3, "CREDIT_CARD": 1, "US_SSN": 1}


def test_detector_sees_the_member_name_as_context():
    m = masker(detectors=DETECTORS)
    out, counts = mj(m, {"client_secret": "abcdef1234567890XYZ", "other": "abcdef1234567890XYZ",
                         "api_key": ["k1a2b3c4d5e6f7g8h9"]})
    assert out == {"client_secret": "****", "other": "abcdef1234567890XYZ",
                   "api_key": ["****"]}
    assert counts == {"GENERIC_API_KEY": 2}


def test_detector_strategy_and_partial_unicode():
    m = masker(detectors=("EMAIL",), det_strategy="partial", keep=4)
    out, _ = mj(m, {"ü": "Grüße an bob@example.com!"})
    assert out == {"ü": "Grüße an ***********.com!"}


def test_masked_keys_that_collide_keep_both_members():
    m = masker(detectors=("EMAIL",))
    out, _ = mj(m, b'{"a@b.io": 1, "c@d.io": 2, "****": 3}')
    assert out == {"****": 1, "****~2": 2, "****~3": 3}
    assert list(orjson.loads(m.mask_json(b'{"x": 0, "a@b.io": 1}')[0])) == ["x", "****"]


def test_a_hit_that_crosses_a_joint_is_scanned_alone():
    # a user pattern that crosses anything: the joined scan's hit spans two values, each is
    # then scanned on its own
    from hoopwire.config import DetectorConfig
    masks = (MaskConfig(detectors=("WIDE",)),)
    eng = MaskEngine(masks, (DetectorConfig("WIDE", r"zz[^q]{0,8}zz"),), hash_key=KEY)
    m = JsonMasker(masks, eng, 1 << 20)
    out, counts = mj(m, ["azz", "zzb", "c zz1zz d"])
    assert out == ["azz", "zzb", "c **** d"] and counts == {"WIDE": 1}


def test_many_values_few_hits_and_all_hits():
    m = masker(detectors=DETECTORS)
    doc = [{"i": i, "t": f"row {i} text"} for i in range(3000)]
    doc[1234]["t"] = "mail x@example.com"
    out, counts = mj(m, doc)
    assert out[1234]["t"] == "mail ****" and counts == {"EMAIL": 1}
    assert out[1233] == doc[1233]
    doc = [f"u{i}@example.com" for i in range(2000)]
    out, counts = mj(m, doc)
    assert out == ["****"] * 2000 and counts == {"EMAIL": 2000}


def test_paths_and_detectors_together():
    m = masker(["$.users[*].email"], detectors=DETECTORS)
    out, counts = mj(m, {"users": [{"email": "a@b.io", "bio": "reach me at a@b.io"}]})
    assert out == {"users": [{"email": "****", "bio": "reach me at ****"}]}
    assert counts == {"path:mask[0]": 1, "EMAIL": 1}


# -- parsing: duplicates, numbers, depth, bad input -------------------------------------------

def test_duplicate_keys_never_let_a_value_escape():
    m = masker(["$.email"])
    body = b'{"email": "first@x.io", "n": 1, "email": "second@x.io"}'
    out, _ = m.mask_json(body)
    assert b"first" not in out and b"second" not in out
    assert json.loads(out) == {"email": "****", "n": 1}
    # a client that keeps the first and one that keeps the last read the same masked value
    pairs = json.loads(out, object_pairs_hook=lambda p: p)
    assert [k for k, _ in pairs].count("email") == 1


def test_integers_over_64_bits_keep_every_digit():
    m = masker(["$.email"])
    body = b'{"id": 123456789012345678901234567890, "neg": -98765432109876543210, ' \
           b'"email": "a@b.io", "f": 1.5}'
    out, _ = m.mask_json(body)
    assert b"123456789012345678901234567890" in out and b"-98765432109876543210" in out
    assert json.loads(out)["email"] == "****"


def test_big_integer_at_a_masked_path_is_masked():
    m = masker(["$.id"], "partial")
    out, _ = m.mask_json(b'{"id": 123456789012345678901234567890}')
    assert json.loads(out) == {"id": "**************************7890"}


def test_unchanged_document_is_returned_as_received():
    m = masker(["$.email"], detectors=DETECTORS)
    body = b'{ "a" : 1.10, "b": [ 1e2 ] }\n'
    r = m.mask_json(body)
    assert r[0] is body and r[1] == {}


def test_deep_nesting_is_refused_not_crashed():
    m = masker(["**.x"])
    ok = b'{"a":' * (MAX_DEPTH - 2) + b'{"x": 1}' + b'}' * (MAX_DEPTH - 2)
    assert json.loads(m.mask_json(ok)[0]) is not None
    deep = b"[" * (MAX_DEPTH + 5) + b'{"x": 1}' + b"]" * (MAX_DEPTH + 5)
    assert m.mask_json(deep) is None
    nothing = b"[" * (MAX_DEPTH + 5) + b"]" * (MAX_DEPTH + 5)
    assert m.mask_json(nothing)[0] is nothing       # no name a path needs: not walked at all
    assert masker(detectors=("EMAIL",)).mask_json(nothing) is None
    deeper = b"[" * 100000 + b"]" * 100000          # over orjson's own limit too
    assert m.mask_json(deeper) is None
    big = b'{"n": ' + b"9" * 30 + b', "a": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert m.mask_json(big) is None                 # the stdlib path is bounded as well


@pytest.mark.parametrize("body", [b"", b"{", b'{"a": NaN}', b'{"a": Infinity}', b"\xef\xbb\xbf{}",
                                  b'{"a": "\\ud800"}', b"{'a': 1}", b'{"a": 1} x',
                                  b'\xff\xfe{\x00}\x00', b'{"n": 1' + b"0" * 30 + b", }"])
def test_not_json_is_none(body):
    assert masker(["$.a"]).mask_json(body) is None


def test_over_max_bytes_is_none():
    m = masker(["$.a"], max_bytes=100)
    assert m.mask_json(b'{"a": "' + b"x" * 200 + b'"}') is None
    assert m.mask_json(b'{"a": "x"}') is not None


def test_top_level_scalars():
    m = masker(detectors=DETECTORS)
    assert mj(m, b'"bob@example.com"')[0] == "****"
    assert mj(m, b"4111111111111111")[0] == "****"
    assert m.mask_json(b"42")[0] == b"42"
    assert m.mask_json(b"null")[0] == b"null"


def test_ndjson_masked_line_by_line():
    m = masker(["$.email"])
    body = b'{"email": "a@b.io"}\r\n{"email": "c@d.io", "k": 1}\n\n'
    out, counts = m.mask_json(body)
    assert out == b'{"email":"****"}\r\n{"email":"****","k":1}\n\n'
    assert counts == {"path:mask[0]": 2}
    assert m.mask_json(b'{"email": "a@b.io"}\nnot json\n') is None


def test_wants():
    both = masker(["$.a"], detectors=("EMAIL",))
    paths = masker(["$.a"])
    dets = masker(detectors=("EMAIL",))
    none = JsonMasker((), MaskEngine((), hash_key=KEY), 1 << 20)
    assert not none.active and none.wants(b"application/json") == "pass"
    for m in (both, paths, dets):
        assert m.active
        assert m.wants(b"application/json") == "json"
        assert m.wants(b"Application/Problem+JSON; charset=utf-8") == "json"
        assert m.wants(b"text/event-stream") == "sse"
        assert m.wants(b"image/png") == "pass"
    # key paths sniff text for JSON (test_http_masking_types.py); detectors alone stream it
    assert paths.wants(b"text/plain") == "sniff" and dets.wants(b"text/plain") == "text"
    assert dets.wants(None) == "text" and dets.wants(b"application/xml") == "text"
    assert paths.wants(b"application/x-ndjson") == "json"
    assert dets.wants(b"application/x-ndjson") == "text"


# -- text streams ----------------------------------------------------------------------------

def stream_all(s, chunks):
    return b"".join(s.feed(c) for c in chunks) + s.end()


def test_text_stream_masks_a_hit_split_at_every_point():
    m = masker(detectors=DETECTORS)
    text = b"a" * 3000 + b" write to alice@example.com or 4111 1111 1111 1111 please " + b"b" * 3000
    want, _ = m.engine.mask_text(text)
    assert b"alice" not in want and b"4111 1111" not in want
    for cut in range(3000, 3070):
        s = m.text_stream()
        assert stream_all(s, [text[:cut], text[cut:]]) == want, cut
        assert s.take_counts() == {"EMAIL": 1, "CREDIT_CARD": 1}
    # and where the stream cuts on its own: the first feed keeps its last TEXT_TAIL bytes
    for pad in range(4000 - TEXT_TAIL - 70, 4000 - TEXT_TAIL + 10):
        text = b"a" * pad + b" mail alice@example.com or 4111 1111 1111 1111 now " + b"b" * 5000
        want, _ = m.engine.mask_text(text)
        assert stream_all(m.text_stream(), [text[:4000], text[4000:]]) == want, pad


def test_text_stream_byte_by_byte_and_random_chunks():
    m = masker(detectors=DETECTORS)
    rnd = random.Random(7)
    parts = []
    for i in range(200):
        parts.append(rnd.choice([b"user%d@example.com" % i, b"ssn 123-45-6789", b"plain words",
                                 b"\n", b"token: abcd1234efgh5678ijkl"]))
    text = b" ".join(parts)
    want, _ = m.engine.mask_text(text)
    assert stream_all(m.text_stream(), [text[i:i + 1] for i in range(len(text))]) == want
    for _ in range(20):
        cuts = sorted(rnd.sample(range(1, len(text)), 15))
        chunks = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
        assert stream_all(m.text_stream(), chunks) == want


def test_text_stream_holds_a_pem_key_until_it_ends():
    m = masker(detectors=DETECTORS)
    body = b"\n".join([b"A" * 64] * 60)
    pem = b"-----BEGIN PRIVATE KEY-----\n" + body + b"\n-----END PRIVATE KEY-----"
    text = b"x" * 5000 + b"\n" + pem + b"\n" + b"y" * 5000
    s = m.text_stream()
    out = b"".join(s.feed(text[i:i + 100]) for i in range(0, len(text), 100)) + s.end()
    assert b"AAAA" not in out and b"BEGIN PRIVATE" not in out
    assert out == m.engine.mask_text(text)[0]


def test_text_stream_carry_is_bounded():
    m = masker(detectors=DETECTORS)
    s = m.text_stream()
    # an endless open PEM body: held up to MAX_CARRY, then sent masked; its head stays as
    # context so the rest of the body still matches
    emitted = s.feed(b"x" * 100 + b"\n-----BEGIN PRIVATE KEY-----\n")
    for _ in range(3000):
        emitted += s.feed(b"A" * 63 + b"\n")
        assert len(s._buf) <= MAX_CARRY + TEXT_TAIL
    emitted += s.feed(b"-----END PRIVATE KEY-----\nbob@example.com and " + b"z" * 3000) + s.end()
    assert len(emitted) < 200000
    assert emitted.startswith(b"x" * 100 + b"\n****")
    assert b"BEGIN" not in emitted and b"AAAA" not in emitted and b"bob@" not in emitted
    assert emitted.endswith(b"**** and " + b"z" * 3000)


def test_text_stream_passes_plain_text_with_a_bounded_lag():
    m = masker(detectors=DETECTORS)
    s = m.text_stream()
    out = s.feed(b"x" * 10000)
    assert len(out) >= 10000 - TEXT_TAIL
    assert out + s.end() == b"x" * 10000


# -- SSE ---------------------------------------------------------------------------------------

SSE = (b": welcome bob@example.com\r\n"
       b"event: user\r\n"
       b"id: 7\r\n"
       b'data: {"users": [{"email": "a@b.io",\r\n'
       b'data:  "note": "mail c@d.io"}]}\r\n'
       b"\r\n"
       b"data: plain text e@f.io\n"
       b"data: second line\n"
       b"\n"
       b'data: {"users": [{"email": "z@z.io"}]}\r\r'
       b"data: [DONE]\r\r")


def sse_want():
    return (b": welcome ****\r\n"
            b"event: user\r\n"
            b"id: 7\r\n"
            b'data: {"users":[{"email":"****","note":"mail ****"}]}\r\n'
            b"\r\n"
            b"data: plain text ****\n"
            b"data: second line\n"
            b"\n"
            b'data: {"users":[{"email":"****"}]}\r\r'
            b"data: [DONE]\r\r")


def test_sse_events_masked_at_every_split_point():
    m = masker(["$.users[*].email"], detectors=DETECTORS)
    want = sse_want()
    for cut in range(len(SSE) + 1):
        s = m.sse_stream()
        assert stream_all(s, [SSE[:cut], SSE[cut:]]) == want, cut
        assert s.take_counts() == {"EMAIL": 3, "path:mask[0]": 2}, cut
    s = m.sse_stream()
    assert stream_all(s, [SSE[i:i + 1] for i in range(len(SSE))]) == want


def test_sse_event_leaves_as_soon_as_it_ends():
    m = masker(detectors=DETECTORS)
    s = m.sse_stream()
    assert s.feed(b"data: x@y.io\n") == b""           # not ended yet: held
    assert s.feed(b"\ndata: next") == b"data: ****\n\n"
    assert s.feed(b"\n\n") == b"data: next\n\n"
    assert s.end() == b""


def test_sse_unchanged_events_keep_their_bytes():
    m = masker(["$.secret"], detectors=DETECTORS)
    raw = b'data: {"a" :  1}\nretry: 10\n\n\xef\xbb\xbfnot a bom here\n\n'
    assert stream_all(m.sse_stream(), [raw]) == raw
    bom = b'\xef\xbb\xbfdata: {"secret": 1}\n\n'
    assert stream_all(m.sse_stream(), [bom[:1], bom[1:2], bom[2:]]) == \
        b'\xef\xbb\xbfdata: {"secret":"****"}\n\n'


def test_sse_oversize_event_streams_as_text_without_paths():
    m = masker(detectors=DETECTORS, max_bytes=1000)
    s = m.sse_stream()
    big = b"data: " + b"w" * 3000 + b" z@example.com " + b"w" * 3000 + b"\n\n"
    out = b""
    for i in range(0, len(big), 50):
        out += s.feed(big[i:i + 50])
        assert len(s._buf) + sum(len(l) for l, _ in s._lines) <= 1000 + 50   # never whole
    out += s.feed(b'data: {"k": "q@example.com"}\n\n') + s.end()
    assert b"z@example.com" not in out and out.count(b"w") == 6000
    assert out.endswith(b'data: {"k":"****"}\n\n')
    assert len(s._buf) == 0


def test_sse_oversize_event_is_dropped_with_paths():
    m = masker(["$.secret"], detectors=DETECTORS, max_bytes=1000)
    s = m.sse_stream()
    big = b'data: {"secret": "' + b"s" * 5000 + b'"}\n\n'
    out = b"".join(s.feed(big[i:i + 64]) for i in range(0, len(big), 64))
    out += s.feed(b'data: {"secret": "x"}\n\n') + s.end()
    assert b"sss" not in out
    assert out.startswith(b": hoopwire: event over 1000 bytes dropped")
    assert out.endswith(b'data: {"secret":"****"}\n\n')


def test_name_prefilter_never_skips_a_reachable_name():
    # bodies where the raw bytes do not spell the member name as the path does
    m = masker(["**.secret", "$.a/b"])
    for body in [b'{"SECRET": "v"}', b'{"s\\u0065cret": "v"}', b'{"a\\/b": "v"}',
                 '{"ſecret": "v"}'.encode(), b'{"x": [{"Secret": "v"}]}']:
        out = m.mask_json(body)[0]
        assert b'"v"' not in out, body
    body = b'{"public": "v", "n": 1}'
    assert m.mask_json(body)[0] is body


def test_integer_beyond_a_double():
    m = masker(["$.email"])
    big = b"1" + b"0" * 400
    out, _ = m.mask_json(b'{"n": ' + big + b', "email": "a@b.io"}')
    assert big in out and b"a@b.io" not in out


@pytest.mark.parametrize("path", ["$..password", "**.password", "$.users[*].email", "$",
                                  '$["odd.key"]', "$['x']", '$["a\\"b"]', '$["a\\"]', "$.a[",
                                  "x.y", "$.items[0].card", "$.a[b]"])
def test_config_accepts_exactly_the_paths_the_masker_compiles(path):
    """config.py checks a mask rule's paths with the masker's own reader: a path it accepts
    never fails at listener setup, and the brief's `$..password` is accepted."""
    from hoopwire.config import _json_path_problem
    try:
        compile_path(path)
        compiles = True
    except ValueError:
        compiles = False
    assert (_json_path_problem(path) is None) == compiles
    if path in ("$..password", "**.password", "$.users[*].email"):
        assert compiles


# -- the C walk (hoopwire/http/_jsonwalk.pyx) against the Python reference walk (issue 21) --------

import threading  # noqa: E402

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from hoopwire.http import jsonmask as jm  # noqa: E402

RULE_SETS = [
    # (paths, strategy, keep, detectors, detector strategy)
    (("$.users[*].email", "**.password", "$.a[1].b", "$.*.card"), "redact", 4, DETECTORS,
     "redact"),
    (("$..email", "$.a.*", "$.n"), "partial", 2, DETECTORS, "partial"),
    (("**.Card", "$.a[0]"), "hash", 4, ("EMAIL", "CREDIT_CARD"), "hash"),
    (("$.a", "**.note"), "format", 4, (), "redact"),
    (("$.users.password",), "null", 4, ("EMAIL", "US_SSN"), "format"),
    (("$",), "redact", 4, (), "redact"),
    ((), "redact", 4, DETECTORS, "partial"),
]


@functools.lru_cache(maxsize=None)
def _pair(rules):
    """(the Python reference masker, the C one) of one rule set, on one engine."""
    paths, strategy, keep, detectors, det_strategy = rules
    masks = []
    if paths:
        masks.append(MaskConfig(paths=paths, strategy=strategy, keep=keep))
    if detectors:
        masks.append(MaskConfig(detectors=detectors, strategy=det_strategy, keep=keep))
    eng = MaskEngine(masks, hash_key=KEY, path="connection[0]")
    return (JsonMasker(tuple(masks), eng, 1 << 20, reference=True),
            JsonMasker(tuple(masks), eng, 1 << 20))


_PII = ["bob@example.com", "Jürgen.Müller@example.org", "4111 1111 1111 1111",
        "4111111111111111", "123-45-6789", "token: abcdef0123456789",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlX3g",
        "note bob@example.com and 5555555555554444",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----",
        "", "x", "✓ 日本 🎉", "a@b", "4111111111111111111111"]
_KEYS = ["email", "Email", "password", "users", "card", "a", "b", "n", "note", "client_secret",
         "api_key", "odd.key", "é", "bob@example.com"]
_scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-10 ** 16, max_value=10 ** 16),
    st.sampled_from([4111111111111111, 10 ** 12, -10 ** 13, 123456789012, 2 ** 63, 10 ** 25]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(_PII), st.text(max_size=12),
    st.builds(lambda a, b: a + b, st.sampled_from(_PII), st.text(max_size=6)))
_keys = st.one_of(st.sampled_from(_KEYS), st.text(max_size=6))


def _obj(pairs):
    return ("obj", pairs)


_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5),
                            st.lists(st.tuples(_keys, inner), max_size=5).map(_obj)),
    max_leaves=40)


def _text(v, ascii_only: bool) -> str:
    """JSON text of a generated value; objects from pairs, so duplicate names stay in."""
    if type(v) is tuple:
        return "{" + ",".join(json.dumps(k, ensure_ascii=ascii_only) + ":" + _text(x, ascii_only)
                              for k, x in v[1]) + "}"
    if type(v) is list:
        return "[" + ",".join(_text(x, ascii_only) for x in v) + "]"
    return json.dumps(v, ensure_ascii=ascii_only)


def _nest(v, depth: int, kinds: list[bool]):
    for i in range(depth):
        v = [v] if kinds[i % len(kinds)] else ("obj", [("users", v)])
    return v


_docs = st.one_of(
    st.tuples(_values, st.booleans()).map(lambda t: _text(t[0], t[1]).encode()),
    st.tuples(_values, st.integers(1, 300), st.lists(st.booleans(), min_size=1, max_size=3))
    .map(lambda t: _text(_nest(t[0], t[1], t[2]), False).encode()))


@pytest.mark.parametrize("rules", RULE_SETS, ids=[str(i) for i in range(len(RULE_SETS))])
@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(body=_docs)
def test_c_walk_masks_as_the_reference(rules, body):
    """Nested arrays, unicode (escaped and not), numbers and numbers as strings, duplicate
    member names, nesting to 300 levels: the C walk gives the reference walk's bytes and
    counts, on the event loop's Scanner and on the masking thread's."""
    ref, fast = _pair(rules)
    want = ref.mask_json(body)
    assert fast.mask_json(body) == want
    assert fast.mask_json(body, offloaded=True) == want


@settings(max_examples=200, deadline=None)
@given(text=st.lists(st.one_of(st.sampled_from(_PII), st.text(max_size=20)), max_size=8)
       .map(" \n".join))
def test_c_spans_are_the_reference_spans(text):
    ref, fast = _pair(RULE_SETS[0])
    data = text.encode("utf-8", "surrogatepass")
    assert fast._finder.spans(data) == ref._finder.spans(data)


def test_a_passed_deadline_stops_before_parsing():
    m = masker(paths=["$.a"])
    with pytest.raises(jm.MaskTimeout):
        m.mask_json(b'{"a": 1}', jm._clock() - 1)
    assert m.mask_json(b'{"a": 1}', jm._clock() + 60)[0] == b'{"a":"****"}'


def test_the_walk_stops_at_its_deadline():
    """40,000 containers take milliseconds: a deadline 0.1 ms away is passed at the walk's
    first clock check, and the walk raises instead of finishing."""
    body = orjson.dumps({"rows": [{"a": i, "b": [i]} for i in range(20000)]})
    m = masker(paths=["$.rows[*].a"], strategy="hash")
    with pytest.raises(jm.MaskTimeout):
        m.mask_json(body, jm._clock() + 1e-4)
    with pytest.raises(jm.MaskTimeout):
        m.mask_json(body, jm._clock() + 1e-4, offloaded=True)
    assert m.mask_json(body) is not None          # no deadline: it finishes


def test_a_masker_compiles_no_hyperscan_database_on_the_loop(monkeypatch):
    """Building a JsonMasker (at start and at every reload, on the event loop) compiles
    nothing: it scans with its engine's Scanner, compiled with the engine off the loop. The
    masking thread compiles its own Scanner once, in that thread."""
    import hoopwire._mask as hm
    made = []

    class Counting(hm.Scanner):
        def __init__(self, *a):
            made.append(threading.get_ident())
            super().__init__(*a)

    masks = (MaskConfig(paths=("$.a",)), MaskConfig(detectors=("EMAIL", "US_SSN")))
    eng = MaskEngine(masks, hash_key=KEY)
    monkeypatch.setattr(hm, "Scanner", Counting)
    m = JsonMasker(masks, eng, 1 << 20)
    assert m.mask_json(b'{"a": 1, "b": "bob@example.com"}')[0] == b'{"a":"****","b":"****"}'
    assert made == []
    out = []
    t = threading.Thread(target=lambda: out.append(
        m.mask_json(b'{"b": "123-45-6789"}', offloaded=True)))
    t.start()
    t.join(30)
    assert out[0][0] == b'{"b":"****"}'
    assert made == [t.ident]
    m.mask_json(b'{"b": "x@example.com"}', offloaded=True)
    assert made == [t.ident]                       # once per masker


# -- the relay's _Masking without a socket -------------------------------------------------------

class _FakeRelay:
    def __init__(self):
        from types import SimpleNamespace as NS
        self.written, self.ended, self.unmaskable = [], [], []
        self.cfg = NS(name="api")
        self.closed = False
        # the masked head is Rewriter.reframed's (C): (head, the connection closes)
        self.conf = NS(rw=NS(reframed=lambda head, client10, req_done, keep_alive, rid, length,
                             chunked: (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n"
                                       % length, False)), secret_scan=None)
        self.transport = NS(write=self.written.append)

    def _response_end(self, req, up):
        self.ended.append(req)

    def _unmaskable(self, req, up):
        self.unmaskable.append(req)


def _masking(masker, body: bytes):
    from types import SimpleNamespace as NS
    from hoopwire.http.relay import _Masking
    relay = _FakeRelay()
    req = NS(head=NS(version=11), resp_close=False, rid=b"r1", masked=0, dechunk=False,
             resp_started=False, up=None, req_done=True, keep_alive=True)
    m = _Masking(relay, req, NS(body=0, content_length=len(body)), masker, "json")
    assert m.start()
    assert m.body(body)
    m.end(None)
    return relay, req, m


def test_a_masked_response_leaves_no_reference_cycle():
    """req.mask -> _Masking -> req was a cycle per masked response, for the cyclic GC to find:
    once answered, the _Masking holds neither the request nor the relay."""
    relay, req, m = _masking(masker(paths=["$.a"]), b'{"a": "x", "b": 1}')
    assert relay.written == [b'HTTP/1.1 200 OK\r\nContent-Length: 18\r\n\r\n{"a":"****","b":1}']
    assert relay.ended == [req] and req.masked == 1
    assert m.req is None and m.relay is None


def test_a_masker_fault_is_a_502_not_a_traceback_into_the_loop(monkeypatch, caplog):
    mk = masker(paths=["$.b"])

    def broken(*a, **k):
        raise KeyError("bug")

    monkeypatch.setattr(mk, "mask_json", broken)
    relay, req, m = _masking(mk, b'{"b": 1}')
    assert relay.unmaskable == [req] and relay.written == [] and relay.ended == []
    assert "response masking failed" in caplog.text
