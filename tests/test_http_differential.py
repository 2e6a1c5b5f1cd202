"""The HTTP/1.1 request parser against two independent ones: h11 (pure Python) and httptools
(llhttp, Node's parser), on the smuggling corpus and on hypothesis-generated messages.

The rule (issue 21): wherever hoopwire accepts bytes, both references accept them too and read
the same requests (method, target, header fields, body, trailers); wherever either reference
refuses, hoopwire refuses too -- unless the refusal is one REFERENCE_STRICTER lists, where the
reference refuses what RFC 9110/9112 allows (each with its section). Where the references
disagree with each other, hoopwire is on the refusing side.
"""

from __future__ import annotations

import pathlib
import sys

import h11
import httptools
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hoopwire.http._parse import BODY, END, ERROR, HEAD, RequestParser

from http_smuggling_corpus import CORPUS, REJECT

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "fuzz"))
# h11 read the way the fuzz harness reads it: one reader for both differential runs
from fuzz_http_parser import fields_of, read_h11, upgrades  # noqa: E402


# -- three readers, one result shape: (requests, refused) -----------------------------------------
# A request is (method, target, ((name lower-cased, value), ...), body). Reading stops after a
# request that does not keep the connection alive (what follows it is never read by a server);
# bytes that end inside a message are a refusal (the peer closed mid-message).

def read_hoopwire(data: bytes):
    p = RequestParser()
    reqs, cur = [], None
    for ev in p.feed(data) + p.feed_eof():
        if ev[0] == HEAD:
            cur = [ev[1], b""]
        elif ev[0] == BODY:
            cur[1] += ev[2]
        elif ev[0] == END:
            h = cur[0]
            reqs.append((h.method, h.target, fields_of(h.headers), cur[1], fields_of(ev[1])))
            if not h.keep_alive or upgrades(reqs[-1][2]):
                return reqs, False
        elif ev[0] == ERROR:
            return reqs, True
    return reqs, False


class _LlhttpReader:
    def __init__(self):
        self.parser = httptools.HttpRequestParser(self)
        self.reqs = []
        self.cur = None
        self.closed = False         # a request without keep-alive was read: stop there

    def on_message_begin(self):
        self.cur = {"url": b"", "headers": [], "body": b"", "trailers": None}

    def on_headers_complete(self):
        self.cur["trailers"] = []       # llhttp reports trailer fields through on_header too

    def on_url(self, url):
        self.cur["url"] += url

    def on_header(self, name, value):
        into = self.cur["headers"] if self.cur["trailers"] is None else self.cur["trailers"]
        into.append((name, value))

    def on_body(self, body):
        self.cur["body"] += body

    def on_message_complete(self):
        if not self.closed:
            c = self.cur
            self.reqs.append((self.parser.get_method(), c["url"], fields_of(c["headers"]), c["body"],
                              fields_of(c["trailers"])))
            self.closed = not self.parser.should_keep_alive() or upgrades(self.reqs[-1][2])
        self.cur = None


def read_httptools(data: bytes):
    r = _LlhttpReader()
    try:
        r.parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        return r.reqs, False
    except httptools.HttpParserError:
        return r.reqs, not r.closed
    return r.reqs, r.cur is not None and not r.closed


READERS = {"h11": read_h11, "httptools": read_httptools}

# Where a reference refuses what RFC 9110/9112 allows and hoopwire reads it as the RFC says:
# the shape -> why the reference is the one that is wrong. `reference_stricter` names the shape
# of a given refusal (None: not one of these, and hoopwire must refuse too).
REFERENCE_STRICTER = {
    "h11-http10-keep-alive":
        "RFC 9112 §9.3 and Appendix C.2.2: an HTTP/1.0 request with `Connection: keep-alive` "
        "keeps the connection; h11 closes every HTTP/1.0 connection after one request, so it "
        "reads fewer requests (those it reads must be the same)",
    "llhttp-unknown-method":
        "RFC 9110 §9.1 and §16.1: the method is an extensible token; llhttp reads only the "
        "methods in its own table and refuses the rest (a server answers an unknown one with "
        "501, after reading it)",
}

# llhttp's method table (llhttp/src/llhttp/constants.ts, METHODS_HTTP)
LLHTTP_METHODS = {
    b"DELETE", b"GET", b"HEAD", b"POST", b"PUT", b"CONNECT", b"OPTIONS", b"TRACE", b"COPY",
    b"LOCK", b"MKCOL", b"MOVE", b"PROPFIND", b"PROPPATCH", b"SEARCH", b"UNLOCK", b"BIND",
    b"REBIND", b"UNBIND", b"ACL", b"REPORT", b"MKACTIVITY", b"CHECKOUT", b"MERGE", b"M-SEARCH",
    b"NOTIFY", b"SUBSCRIBE", b"UNSUBSCRIBE", b"PATCH", b"PURGE", b"MKCALENDAR", b"LINK",
    b"UNLINK", b"SOURCE", b"QUERY"}


def reference_stricter(reader: str, reqs: list, mine: list):
    """The REFERENCE_STRICTER shape that explains `reader` refusing bytes hoopwire read as
    `mine`, having read `reqs` before it refused; None when there is none."""
    if reader == "httptools" and len(reqs) < len(mine) and mine[len(reqs)][0] not in LLHTTP_METHODS:
        return "llhttp-unknown-method"
    return None


def check(data: bytes):
    """The differential rule for one byte string; returns what each reader made of it."""
    mine = read_hoopwire(data)
    theirs = {name: read(data) for name, read in READERS.items()}
    for name, (reqs, refused, *stop) in theirs.items():
        if not mine[1]:
            want = mine[0]
            if stop and stop[0] and len(reqs) < len(want):
                want = want[:len(reqs)]                     # h11-http10-keep-alive
            if refused and reference_stricter(name, reqs, want):
                continue
            assert not refused, f"{name} refuses what hoopwire reads: {data!r} -> {want!r}"
            assert reqs == want, f"{name} reads {data!r} otherwise:\n{reqs!r}\n{want!r}"
    return mine, theirs


# -- the corpus ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name,data,expected", CORPUS, ids=[c[0] for c in CORPUS])
def test_corpus(name, data, expected):
    (reqs, refused), _ = check(data)
    if expected == REJECT:
        assert refused, f"{name}: hoopwire read {reqs!r}"
    else:
        assert not refused, name
        assert [(m, t, b) for m, t, _, b, _ in reqs] == expected


def test_corpus_names_are_unique_and_both_outcomes_present():
    names = [c[0] for c in CORPUS]
    assert len(names) == len(set(names))
    assert sum(c[2] == REJECT for c in CORPUS) > 60
    assert sum(c[2] != REJECT for c in CORPUS) > 10


def corpus_disagreements():
    """For the report: corpus entries where h11 and httptools disagree with each other, or with
    hoopwire, on refusing."""
    out = []
    for name, data, _ in CORPUS:
        mine = read_hoopwire(data)[1]
        h = read_h11(data)[1]
        t = read_httptools(data)[1]
        if not (mine == h == t):
            out.append((name, {"hoopwire": mine, "h11": h, "httptools": t}))
    return out


def test_where_a_reference_refuses_hoopwire_refuses():
    for name, refused in corpus_disagreements():
        if refused["h11"] or refused["httptools"]:
            assert refused["hoopwire"], (name, refused)


# -- generated messages ---------------------------------------------------------------------------

NASTY = [b"", b"\r", b"\n", b" ", b"\t", b"\x00", b"\x0b", b":", b",", b";", b"0", b"x", b"\r\n",
         b"-", b"+", b"\"", b"\x7f", b"\xff", b"a", b"F", b"="]
NAMES = [b"X-A", b"Accept", b"Content-Type", b"Connection", b"Expect", b"Upgrade", b"Trailer",
         b"Cookie", b"X_B", b"x-c"]
VALUES = [b"1", b"a b", b"close", b"keep-alive", b"100-continue", b"text/plain", b"\tv\t", b"",
          b"a,b", b"\x80\xff", b"\"q\""]


@st.composite
def one_request(draw):
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS",
                                   b"HEAD"]))
    target = b"/" + draw(st.text(alphabet="ab/?=&%-._~+!", max_size=8)).encode()
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]))
    body = draw(st.binary(max_size=12))
    framing = draw(st.sampled_from(["none", "cl", "cl", "chunked", "chunked", "both"]))
    fields = []
    if version == b"HTTP/1.1" or draw(st.booleans()):
        fields.append((b"Host", draw(st.sampled_from([b"h", b"api.example:8443", b"[::1]"]))))
    for _ in range(draw(st.integers(0, 3))):
        fields.append((draw(st.sampled_from(NAMES)), draw(st.sampled_from(VALUES))))
    cl = str(len(body)).encode()
    cl = draw(st.sampled_from([cl] * 6 + [b"+" + cl, b"0" + cl, cl + b", " + cl, b" " + cl + b" "]))
    te = draw(st.sampled_from([b"chunked"] * 6 + [b"Chunked", b"gzip, chunked", b"chunked, identity",
                                                  b"identity"]))
    if framing in ("cl", "both"):
        fields.append((b"Content-Length", cl))
    if framing in ("chunked", "both"):
        fields.append((b"Transfer-Encoding", te))
    fields = draw(st.permutations(fields))
    sep = draw(st.sampled_from([b": "] * 8 + [b":", b":\t", b" : "]))
    head = method + b" " + target + b" " + version + b"\r\n"
    head += b"".join(n + sep + v + b"\r\n" for n, v in fields) + b"\r\n"
    if framing in ("chunked", "both"):
        payload, rest = b"", body
        while rest:
            k = draw(st.integers(1, len(rest)))
            size = draw(st.sampled_from(["%x", "%X", "%02x", "%x;e=1", "%x;e=\"q\"", "%x;e",
                                         "%x ;e=1", "%x;e = 1"])) % k
            payload += size.encode() + b"\r\n" + rest[:k] + b"\r\n"
            rest = rest[k:]
        trailer = draw(st.sampled_from([b"", b"", b"X-T: 1\r\n"]))
        payload += b"0\r\n" + trailer + b"\r\n"
    elif framing == "cl":
        payload = body
    else:
        payload = b""
    return head + payload


@st.composite
def messages(draw):
    data = b"".join(draw(st.lists(one_request(), min_size=1, max_size=2)))
    for _ in range(draw(st.integers(0, 2))):     # a few byte-level mutations
        i = draw(st.integers(0, len(data)))
        k = draw(st.integers(0, 2))
        data = data[:i] + draw(st.sampled_from(NASTY)) + data[i + k:]
    return data


@settings(max_examples=1500, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_generated_messages_differential(data):
    check(data)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(messages(), st.integers(0, 400), st.integers(0, 400))
def test_generated_messages_split_anywhere(data, i, j):
    i, j = sorted((i % (len(data) + 1), j % (len(data) + 1)))

    def events(pieces):
        p = RequestParser()
        out = []
        for piece in pieces:
            out += p.feed(piece)
        out += p.feed_eof()
        joined = []
        for ev in out:
            if ev[0] == BODY and joined and joined[-1][0] == BODY:
                joined[-1] = (BODY, joined[-1][1] + ev[1], joined[-1][2] + ev[2])
            else:
                joined.append(ev)
        return joined

    assert events([data[:i], data[i:j], data[j:]]) == events([data])
