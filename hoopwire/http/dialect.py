r"""HTTP as the neutral layers need it (hoopwire.core.seams.Dialect): the one canonical target the
gateway judges and forwards, the request text guardrails scan, its masking for logs and the
audit, the built-in packs and the rules every HTTP connection with guardrails gets.

    canonical = canonical_target(head.target)       # BadTarget(reason) -> 400, nothing sent
    text = request_text(head, canonical, body)      # body: None, or up to inspect_body_bytes
    verdict = policy.check(text)                    # the engine calls statement_views(text)
    forwarded target = connection.upstream_path + canonical

The upstream runs exactly the target that was judged: the relay sends canonical_target's output,
never the client's spelling. So the question for every spelling is whether the canonical form
has one meaning for every upstream framework. Where it has, the spelling is normalised and the
normal form forwarded; where upstreams read it differently, it is refused (400, BadTarget).

The canonical target, decision by decision
------------------------------------------
origin-form only   `/path[?query]`. An absolute-form `http(s)://authority/path?q` is cut to its
                   path and query (the relay owns the authority). `*` (OPTIONS *) and anything
                   else is refused: with a base path in front it has no meaning.
fragment `#`       refused: the request-target has no fragment (RFC 9112 3.2); some servers
                   drop it, some route `/a#/../admin` literally.
percent escapes    `%` must be followed by two hex digits, else refused (servers keep, drop or
                   reject a bad escape). Hex is written upper-case. `%uXXXX` (IIS) is a bad
                   escape and refused.
unreserved         `%41`..`%7E` escapes of ALPHA DIGIT - . _ ~ are decoded (RFC 3986 6.2.2.2:
                   the same name), in the path and in the query: `/v1/%75sers` is `/v1/users`.
path sub-delims    `%21 %24 %26 %27 %28 %29 %2A %2C %3D %3A %40` are decoded in the path: every
                   framework measured decodes them before routing, so the escape hides nothing.
                   `%2B` and a raw `+` are kept as sent (a few Java stacks read `+` in a path as
                   a space, so turning one into the other would change the path for them).
encoded `/` `\`    `%2F` and `%5C` refused: Tomcat refuses %2F, Apache 404s it, nginx and
                   Express decode it into a separator or keep it in the segment: four readings.
raw `\`            refused: IIS, ASP.NET and some Windows-hosted servers read it as `/`.
`;`                refused in the path, raw or `%3B`: Java servers (Tomcat, Jetty, Spring) cut
                   `;params` off each segment (`/v1/users;x/1` routes as `/v1/users/1`,
                   `/admin;/` as `/admin/`), every other stack keeps them as part of the
                   segment. A path parameter is ambiguous by nature; legitimate ones
                   (`;jsessionid=` URL rewriting) are rare in APIs.
`%3F` `%23` `%25`  refused in the path: an upstream or intermediate that decodes twice reads a
                   query, a fragment or a new escape (`%252e%252e` -> `%2e%2e` -> `..`).
controls           `%00`..`%1F` and `%7F` refused in the path (NUL ends a C string in some
                   servers, CR/LF split a line). The parser already refuses raw ones.
other ASCII        raw `" < > [ ] ^ \` { | }` and space escapes are written `%XX`; they mean the
                   same byte to every upstream, so one spelling is kept.
non-ASCII          raw bytes >= 0x80 are written as `%XX`. The decoded path must be valid UTF-8
                   (overlong `%C0%AE` is refused), in NFC (an upstream that normalises would
                   otherwise read `e` + U+0301 as U+00E9), and hold no character that NFKC or a
                   case mapping turns into ASCII: fullwidth `／`, U+212A KELVIN SIGN, dotless
                   `ı` (ASP.NET's case-insensitive routes read `/adm%C4%B1n` as `/ADMIN`), long
                   `ſ`, `ß` (upper-cases to SS). Refused, not normalised: a case-sensitive
                   upstream would run something else.
`.` `..`           resolved (RFC 3986 5.2.4) after decoding, so `%2e%2e` counts; a `..` above
                   the root is refused. `/v1/x/../users/1` is forwarded as `/v1/users/1`.
`//`               collapsed to `/` (nginx merge_slashes, Spring and most routers do the same;
                   the rare router that keeps an empty segment 404s, it does not run another
                   route). A leading `//` never reaches an upstream as a scheme-relative URL.
trailing `.` / sp  a segment ending in `.` (`admin.`, `...`) or a space (`%20`) is refused:
                   Windows servers strip trailing dots and spaces from names.
trailing `/`       kept: `/users/` and `/users` are the same route for some frameworks and
                   different for others, and both readings exist upstream; rules end a path
                   with `(?:[/?\n]|$)` (see packs.py) so both spellings match.
case               kept as sent (case-sensitive upstreams need it). Rules match without regard
                   to case (the engine compiles every pattern caseless), which covers the
                   case-insensitive routers (ASP.NET, IIS, Spring with the option set).
query              split from the path at the first raw `?`; unreserved escapes decoded, other
                   escapes upper-cased and kept (`%26` stays data, `&` stays a separator), raw
                   non-ASCII written `%XX`, order and `+` kept. `%25`, `;` and controls escaped
                   in a query are data and kept.

What the guardrails scan: request_text
--------------------------------------
    METHOD SP canonical-target LF
    name: value LF          (the selected headers below, names lower-case, in this order)
    LF body-prefix          (only when the relay passes a body)

Selected headers: host, content-type, content-encoding, x-http-method-override, x-http-method,
x-method-override, x-original-url, x-rewrite-url, x-forwarded-prefix, also spelled with `_` for
`-` (a WSGI server reads X_HTTP_Method_Override as the override). The URL headers are written
canonical (a bad one raises BadTarget like the target). The method is upper-cased. None of them
may come as a trailer: the parser refuses them there (a trailer arrives after the head was
judged and forwarded).

Views (statement_views). The code view is the request line and headers; the full view adds
the body. A rule sees the code view unless it says `scan_literals = true`, which here means
"this rule reads the body": then it scans the full view, and the relay reads up to
inspect_body_bytes of a body before judging (request_reads_body(policy) tells it).

Readings. A request that an upstream may run as another method or path is judged every way,
and any reading that matches decides (as the MySQL lexer reads every sql_mode):
* the method claimed by X-HTTP-Method-Override, X-HTTP-Method, X-Method-Override, and a
  `_method` query parameter (Laravel, Symfony, Express method-override), and with the body
  read, a `_method` form field (also `%5Fmethod`), multipart part or JSON member (also
  `"\u005fmethod"`) (Rails, Laravel, Symfony);
* HEAD is also read as GET (Flask, Express, Rails, Go's routers run the GET handler for it);
* the path in X-Original-URL / X-Rewrite-URL (IIS URL Rewrite, Symfony, Zend route by them).
So a rule `^DELETE /v1/users/` blocks `POST /v1/users/1` + `X-HTTP-Method-Override: DELETE`.
Each reading is a text of its own: `^` is the start of its request line. More than 16 readings
is padding, not a client: the request is then read as sent plus a marker that the rule every
rule set gets (`unreadable-request`) blocks, never a subset an attacker could pad past.

The body as the rules read it (body_text). Rules read text, so a body is read in the charset
the upstream will read it in and scanned as UTF-8: the Content-Type charset, else a byte order
mark, else, for JSON and XML, the NULs of its first bytes (Jackson, System.Text.Json and XML
parsers find UTF-16/32 so), and an XML declaration's encoding. `D\0R\0O\0P\0` is DROP to the
rules as it is to the upstream. Shift_JIS, Big5 and GBK bodies are read both ways (their second
bytes may be ASCII letters). A form body is also read with its fields decoded (`sql=DR%4FP+TABLE`)
and a JSON body with its strings unescaped (`"DR\\u004fP\\nTABLE"`), after the body as sent.
While a body rule applies, a body the rules cannot read as the upstream will is refused 415
(`unsupported_body`) before any rule runs: a Content-Encoding other than identity (Express,
Rails and Go middleware inflate what the rules would see packed), a charset outside the list
in body_text's table (UTF-7 spells `<` as `+ADw-`), bytes invalid in the charset, a BOM or XML
declaration that disagrees with the Content-Type, a multipart part in a transfer encoding (Go
decodes quoted-printable parts) or in UTF-16/32. Without a body rule
there is nothing to hide from.

Masking for logs and the audit (mask_literals): every query value (and a parameter with no `=`)
becomes `?`, also in the URL headers, and the body becomes `?`: an `access_token=` in a query
string is never logged.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import unquote_to_bytes


from hoopwire.config import GuardrailConfig
from hoopwire.http._literals import mask_literals   # C: the audit thread runs it without the GIL
from hoopwire.http.errors import RequestRefused
from hoopwire.http.packs import PACKS
from hoopwire.policy.rules import FULL

__all__ = ["BadTarget", "UnreadableBody", "canonical_target", "request_text", "body_text",
           "statement_views", "mask_literals", "request_reads_body", "HttpDialect", "DIALECT",
           "SELECTED_HEADERS"]


class BadTarget(RequestRefused):
    """A request target (or URL header) with more than one reading: answered 400."""

    status = 400
    code = "bad_target"


class UnreadableBody(RequestRefused):
    """A body a rule must read that the gateway cannot read as the upstream will (compressed,
    an unknown or undecodable charset): answered 415 (body_text)."""

    status = 415
    code = "unsupported_body"


# the headers the request text carries, in the order it writes them
SELECTED_HEADERS = (b"host", b"content-type", b"content-encoding", b"x-http-method-override",
                    b"x-http-method", b"x-method-override", b"x-original-url", b"x-rewrite-url",
                    b"x-forwarded-prefix")
_OVERRIDE_HEADERS = frozenset((b"x-http-method-override", b"x-http-method", b"x-method-override"))
_URL_HEADERS = frozenset((b"x-original-url", b"x-rewrite-url"))
_MAX_READINGS = 16   # method readings x target readings: more is refused (implied_guardrails)

_HEX = b"0123456789ABCDEF"
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# decoded in a path: unreserved, and the sub-delims every router decodes before matching
_PATH_DECODE = _UNRESERVED | frozenset(b"!$&'()*,=:@")
# raw bytes kept in a path as they are
_PATH_RAW = _PATH_DECODE | frozenset(b"+/")
# escapes refused in a path (a second decoding or a Java server reads them as syntax)
_PATH_REFUSED_ESCAPES = {0x2F: "an encoded '/' (%2F)", 0x5C: "an encoded '\\' (%5C)",
                         0x3B: "an encoded ';' (%3B)", 0x3F: "an encoded '?' (%3F)",
                         0x23: "an encoded '#' (%23)", 0x25: "a double encoding (%25)"}

# already canonical: only bytes kept raw, no escape, no dot segment, no '//', no trailing dot
_FAST_PATH = re.compile(rb"[A-Za-z0-9\-_~!$&'()*,=:@+/.]*")
_FAST_QUERY = re.compile(rb"[A-Za-z0-9\-._~!$&'()*+,;=:@/?\[\]]*")
_ABSOLUTE = re.compile(rb"(?i)https?://[^/?#]*")


def _hexval(c: int) -> int:
    if 48 <= c <= 57:
        return c - 48
    c |= 0x20
    if 97 <= c <= 102:
        return c - 87
    return -1


def _escape(out: bytearray, b: int) -> None:
    out += b"%"
    out.append(_HEX[b >> 4])
    out.append(_HEX[b & 15])


def _canonical_path(path: bytes) -> bytes:
    out = bytearray()
    i, n = 0, len(path)
    while i < n:
        c = path[i]
        if c == 0x25:  # %
            hi = _hexval(path[i + 1]) if i + 1 < n else -1
            lo = _hexval(path[i + 2]) if i + 2 < n else -1
            if hi < 0 or lo < 0:
                raise BadTarget("a '%' in the path is not followed by two hex digits")
            b = hi * 16 + lo
            i += 3
            if b in _PATH_DECODE:
                out.append(b)
            elif b in _PATH_REFUSED_ESCAPES:
                raise BadTarget(f"{_PATH_REFUSED_ESCAPES[b]} in the path")
            elif b < 0x20 or b == 0x7F:
                raise BadTarget(f"an encoded control character (%{b:02X}) in the path")
            else:
                _escape(out, b)
            continue
        i += 1
        if c in _PATH_RAW:
            out.append(c)
        elif c == 0x5C:
            raise BadTarget("a '\\' in the path (some servers read it as '/')")
        elif c == 0x3B:
            raise BadTarget("a ';' path parameter (Java servers cut it off, others keep it)")
        elif c == 0x23:
            raise BadTarget("a fragment ('#') in the request target")
        elif c <= 0x20 or c == 0x7F:
            raise BadTarget("a control character or space in the path")
        else:
            _escape(out, c)  # " < > [ ] ^ ` { | } and bytes >= 0x80
    if b"%" in out:
        _check_text(out)
    return _resolve(bytes(out))


def _check_text(path: bytearray) -> None:
    """The decoded path is UTF-8 in NFC with no character a normalisation makes ASCII."""
    raw = re.sub(rb"%([0-9A-F]{2})", lambda m: bytes((int(m.group(1), 16),)), bytes(path))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadTarget("the path is not valid UTF-8 once decoded") from None
    if text.isascii():
        return
    if not unicodedata.is_normalized("NFC", text):
        raise BadTarget("the path is not in Unicode NFC (an upstream that normalises would "
                        "read another path)")
    for ch in set(text):
        if ch.isascii():
            continue
        for form in (unicodedata.normalize("NFKC", ch), ch.lower(), ch.upper(), ch.casefold()):
            if any(x.isascii() for x in form):
                raise BadTarget(f"the path holds U+{ord(ch):04X}, which some upstreams read "
                                f"as {form!r}")


def _resolve(path: bytes) -> bytes:
    """Dot segments removed (RFC 3986 5.2.4), empty segments collapsed, trailing dots and
    spaces refused."""
    segments = path.split(b"/")[1:]
    out: list[bytes] = []
    last = len(segments) - 1
    trailing = False
    for k, seg in enumerate(segments):
        if seg == b"." or seg == b"..":
            if seg == b"..":
                if not out:
                    raise BadTarget("a '..' segment above the root of the path")
                out.pop()
            trailing = True
            continue
        if not seg:
            trailing = k == last
            continue
        if seg.endswith(b".") or seg.endswith(b"%20"):
            raise BadTarget("a path segment ends in '.' or a space (Windows servers strip it)")
        out.append(seg)
        trailing = False
    result = b"/" + b"/".join(out)
    if trailing and out:
        result += b"/"
    return result


def _canonical_query(query: bytes) -> bytes:
    out = bytearray()
    i, n = 0, len(query)
    while i < n:
        c = query[i]
        if c == 0x25:
            hi = _hexval(query[i + 1]) if i + 1 < n else -1
            lo = _hexval(query[i + 2]) if i + 2 < n else -1
            if hi < 0 or lo < 0:
                raise BadTarget("a '%' in the query is not followed by two hex digits")
            b = hi * 16 + lo
            i += 3
            if b in _UNRESERVED:
                out.append(b)
            else:
                _escape(out, b)
            continue
        i += 1
        if c == 0x23:
            raise BadTarget("a fragment ('#') in the request target")
        if c <= 0x20 or c >= 0x7F:
            if c < 0x80:
                raise BadTarget("a control character or space in the query")
            _escape(out, c)
        else:
            out.append(c)
    return bytes(out)


def canonical_target(target: bytes) -> bytes:
    """The one spelling of a request target the gateway judges and forwards (module docstring);
    BadTarget when the target has more than one reading."""
    if type(target) is not bytes:
        target = bytes(target)
    hit = _CANONICAL.get(target)
    if hit is not None:
        return hit
    out = _canonical(target)
    if len(target) <= _CACHE_TARGET_MAX:
        if len(_CANONICAL) >= _CACHE_ENTRIES:
            _CANONICAL.clear()          # a new generation: cheaper than an LRU per request
        _CANONICAL[target] = out
    return out


# Most clients repeat a few targets: a hit costs a dict lookup, where the fast path below costs
# a regex and four scans (about 5x). Bounded: 4096 targets of at most 512 bytes (2 MiB).
_CANONICAL: dict[bytes, bytes] = {}
_CACHE_ENTRIES = 4096
_CACHE_TARGET_MAX = 512


def _canonical(target: bytes) -> bytes:
    if target[:1] != b"/":
        m = _ABSOLUTE.match(target)
        if m is None:
            raise BadTarget("the request target is not a path (origin-form) or an http(s) URL")
        target = target[m.end():]
        if target[:1] == b"?":
            target = b"/" + target
        elif not target:
            target = b"/"
        elif target[:1] != b"/":
            raise BadTarget("a fragment or bad authority in an absolute-form target")
    path, sep, query = target.partition(b"?")
    # (a dot segment is always followed by '/' or the end: "./" and the end cover it)
    if (_FAST_PATH.fullmatch(path) and b"//" not in path and b"./" not in path
            and not path.endswith(b".")
            and (not sep or _FAST_QUERY.fullmatch(query))):
        return target
    path = _canonical_path(path)
    if not sep:
        return path
    return path + b"?" + _canonical_query(query)


# -- the request text --------------------------------------------------------------------------

def request_text(head, path: bytes, body: bytes | None = None) -> bytes:
    """What guardrails scan (module docstring): `path` is canonical_target's output, `body`
    the body prefix when a rule reads bodies, else None. Raises BadTarget for a URL header
    that has more than one reading."""
    picked = None
    for name, value in head.headers:
        if len(name) in _SELECTED_LENGTHS:        # most headers are ruled out by length alone
            # `_` read as `-`: CGI and WSGI servers put X_HTTP_Method_Override in the same
            # environ key as X-HTTP-Method-Override (Werkzeug and uWSGI pass both through)
            lname = name.lower().replace(b"_", b"-")
            order = _SELECTED.get(lname)
            if order is not None:
                if picked is None:
                    picked = []
                picked.append((order, lname, value))
    parts = [head.method.upper(), b" ", path, b"\n"]
    if picked is not None:
        picked.sort(key=_first)                  # stable: a repeated header keeps its order
        for _, name, value in picked:
            if name in _OVERRIDE_HEADERS:
                value = value.strip().upper()
            elif name in _URL_HEADERS:
                value = canonical_target(value.strip())
            parts += (name, b": ", value, b"\n")
    if body is not None:
        if body:
            body = body_text(body, [v for _, n, v in picked or () if n == b"content-type"],
                             [v for _, n, v in picked or () if n == b"content-encoding"])
        parts += (b"\n", body)
    return b"".join(parts)


def _first(item):
    return item[0]


_SELECTED = {name: i for i, name in enumerate(SELECTED_HEADERS)}
_SELECTED_LENGTHS = frozenset(len(name) for name in SELECTED_HEADERS)
_METHOD_PARAM = re.compile(rb"(?:^|[&;])_method=([^&;]*)")
# `_method` in a body, as a form field or a multipart part (Rails, Laravel, Symfony)
_BODY_METHOD = re.compile(rb'(?:^|&)_method=([A-Za-z%0-9+]*)'
                          rb'|name="?_method"?\r?\n(?:[^\r\n]+\r?\n)*\r?\n([A-Za-z]+)', re.I | re.M)
_CONTENT_TYPE = re.compile(rb"^content-type: ([^\n]*)", re.M)
# What a request with more readings than _MAX_READINGS is scanned as: the rule every rule set
# gets (implied_guardrails) refuses it. It starts with a NUL: no request line does.
UNREADABLE = b"\x00hoopwire:too-many-readings"
UNREADABLE_PATTERN = r"^\x00hoopwire:too-many-readings"


# -- the body as the rules read it -------------------------------------------------------------

# The charsets a body may declare while a body rule applies, by label (lower-case: IANA names
# and the WHATWG aliases clients send), and the codec that reads them. Any other label is
# refused: a body in a charset we cannot read hides its words from the rules. Left out on
# purpose: UTF-7 (spells `<` as `+ADw-`; WHATWG dropped it), the stateful ISO-2022 family (an
# escape turns ASCII bytes into other characters), and Python's own codecs (`unicode_escape`
# reads `\x44` as `D`, `punycode` rewrites ASCII: readings no upstream shares).
_CHARSETS: dict[bytes, str] = {
    b"utf-8": "utf-8", b"utf8": "utf-8", b"unicode-1-1-utf-8": "utf-8",
    b"us-ascii": "latin-1", b"ascii": "latin-1", b"iso-8859-1": "latin-1",
    b"iso8859-1": "latin-1", b"iso_8859-1": "latin-1", b"latin1": "latin-1",
    b"latin-1": "latin-1", b"l1": "latin-1",
    b"utf-16": "utf-16", b"utf-16le": "utf-16-le", b"utf-16be": "utf-16-be",
    b"utf-32": "utf-32", b"utf-32le": "utf-32-le", b"utf-32be": "utf-32-be",
    b"koi8-r": "koi8-r", b"koi8-u": "koi8-u",
    b"shift_jis": "shift_jis", b"shift-jis": "shift_jis", b"sjis": "shift_jis",
    b"windows-31j": "cp932", b"cp932": "cp932", b"euc-jp": "euc-jp", b"euc-kr": "euc-kr",
    b"gbk": "gbk", b"gb2312": "gbk", b"gb18030": "gb18030", b"big5": "big5",
}
_CHARSETS.update({b"windows-%d" % n: "cp%d" % n for n in range(1250, 1259)})
_CHARSETS.update({b"cp%d" % n: "cp%d" % n for n in range(1250, 1259)})
for _n in (2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 14, 15, 16):
    for _label in (b"iso-8859-%d", b"iso8859-%d", b"iso_8859-%d"):
        _CHARSETS[_label % _n] = "iso8859-%d" % _n
# Multi-byte charsets whose second byte may be an ASCII letter (Shift_JIS 0x40-0x7E, Big5 and
# GBK 0x40-0x7E): `\x81DROP` is one character and "ROP" to us, "DROP" to an upstream that
# ignores the charset and reads bytes. The rules read such a body both ways.
_KEEP_RAW = frozenset(("shift_jis", "cp932", "big5", "gbk", "gb18030"))
# UTF-32 before UTF-16: FF FE 00 00 is UTF-32LE's mark
_BOMS = ((b"\x00\x00\xfe\xff", "utf-32-be"), (b"\xff\xfe\x00\x00", "utf-32-le"),
         (b"\xef\xbb\xbf", "utf-8"), (b"\xfe\xff", "utf-16-be"), (b"\xff\xfe", "utf-16-le"))
_CHARSET = re.compile(rb'(?i);\s*charset\s*=\s*"?([^";\s]*)')
# the first bytes of a body with a BOM, or NULs a JSON reader may sniff
_MAYBE_MARKED = frozenset((b"\x00", b"\xef", b"\xfe", b"\xff"))
# The media types whose readers find the charset in the body itself, from a BOM or the NULs of
# its first bytes (Jackson, System.Text.Json and XML parsers do: RFC 4627 3, XML 1.0 F.1; text/*
# too, where a reader may do the same)
_SNIFFED = re.compile(rb"(?i)^\s*(?:application/(?:[\w.+-]*\+)?(?:json|xml)|text/[\w.+-]+)\s*(?:;|$)")
_XML_TYPE = re.compile(rb"(?i)^\s*(?:application|text)/(?:[\w.+-]*\+)?xml\s*(?:;|$)")
_XML_DECL = re.compile(r"^\ufeff?<\?xml[^>]*?\sencoding\s*=\s*[\"']([A-Za-z0-9._:-]+)[\"']")


def _codec(label: bytes) -> str:
    codec = _CHARSETS.get(label.strip().lower())
    if codec is None:
        raise UnreadableBody(f"the body's charset {label.decode('latin-1')!r} is not one the "
                             "guardrails read")
    return codec


def _family(codec: str) -> str:
    """'utf-16' for utf-16, utf-16-le and utf-16-be (a BOM names one of them)."""
    return codec[:6] if codec.startswith(("utf-16", "utf-32")) else codec


def _sniff(body: bytes) -> str | None:
    """The UTF-16/32 a JSON or XML reader finds in a body without a BOM, from where its first
    bytes are NUL (RFC 4627 3); None for a body without NUL there."""
    head = body[:4]
    if b"\x00" not in head[:2]:
        return None
    if len(head) == 4:
        if head[:3] == b"\x00\x00\x00":
            return "utf-32-be"
        if head[1:] == b"\x00\x00\x00":
            return "utf-32-le"
    if head[:1] == b"\x00" and head[1:2] != b"\x00":
        return "utf-16-be"
    if head[:1] != b"\x00" and head[1:2] == b"\x00":
        return "utf-16-le"
    raise UnreadableBody("the body starts with NUL bytes no text encoding explains")


def body_text(body: bytes, ctypes: list, encodings: list) -> bytes:
    """The body as the rules read it: UTF-8, decoded from the charset it declares (the
    Content-Type charset, a BOM, or for JSON and XML the NULs of its first bytes; an XML
    declaration's encoding too). UnreadableBody (415) for a body the rules cannot read as the
    upstream will: a Content-Encoding (the upstream inflates what the rules would see packed:
    decoding here would mean a second inflater that must agree with the upstream's on
    `deflate`, which servers read as zlib or raw, and a bomb to bound, for a rare request
    shape), an unknown charset, bytes invalid in it, or two declarations that disagree.
    Multipart bodies are read as bytes (each part has its own type); one with a part in a
    transfer encoding or a UTF-16/32 charset is refused (_check_parts)."""
    if not encodings and len(ctypes) < 2 and body[:1] not in _MAYBE_MARKED and \
            b"\x00" not in body[1:4]:
        ctype = ctypes[0] if ctypes else b""
        if b"=" not in ctype and b"xml" not in ctype.lower() and b"\\" not in body and \
                b"urlencoded" not in ctype.lower():
            # no charset parameter (it has an '='), no BOM, no NUL to sniff, no XML
            # declaration, no escape, not a form: the bytes as sent. The common request pays
            # this test alone.
            return body
    for value in encodings:
        if any(t.strip().lower() not in (b"identity", b"") for t in value.split(b",")):
            raise UnreadableBody("a compressed request body (Content-Encoding: "
                                 f"{value.decode('latin-1')}) cannot be inspected: send it "
                                 "uncompressed")
    labels = {m.lower() for v in ctypes for m in _CHARSET.findall(v)}
    ctype = ctypes[0] if ctypes else b""
    if len(ctypes) > 1 and len({v.strip().lower() for v in ctypes}) > 1:
        raise UnreadableBody("more than one Content-Type, and they differ")
    if ctype.lower().lstrip().startswith(b"multipart/"):
        _check_parts(body)
        # a part's own JSON or XML is read by the upstream's part parser (Spring's
        # @RequestPart through Jackson): its escapes are read here as a body's are
        return _value_readings(body, ctype)
    declared = None
    if labels:
        if len(labels) > 1:
            raise UnreadableBody("the Content-Type declares more than one charset")
        declared = _codec(labels.pop())
    text_like = not ctype.strip() or _SNIFFED.match(ctype) is not None or \
        ctype.lower().lstrip().startswith(b"application/x-www-form-urlencoded")
    bom = None
    if text_like or declared is not None:
        bom = next((c for mark, c in _BOMS if body.startswith(mark)), None)
    codec = declared
    if bom is not None:
        # `utf-16` takes either mark; `utf-16le` only its own (Java's UTF-16LE reads an FE FF
        # mark as a character and the rest little-endian, whatever the mark says)
        if declared is not None and bom != declared and _family(bom) != declared:
            raise UnreadableBody("the body's byte order mark and its declared charset disagree")
        codec = bom
    elif declared is None and (not ctype.strip() or _SNIFFED.match(ctype)):
        codec = _sniff(body)
    if codec is None or codec == "utf-8":
        text = None if bom is None else body[3:]
    elif codec in ("utf-16", "utf-32"):
        # no mark: big-endian to Java and RFC 2781 4.3, little-endian to .NET's "utf-16":
        # the rules read it both ways
        text = _decode(body, codec + "-be", False) + b"\n" + _decode(body, codec + "-le", False)
    else:
        text = _decode(body, codec, bom is not None)
    if _XML_TYPE.match(ctype):
        if body.startswith(b"\x4c\x6f\xa7\x94"):
            # `<?xm` in EBCDIC: XML parsers detect it (XML 1.0 F.1) and read DROP from bytes
            # that are no ASCII word
            raise UnreadableBody("an EBCDIC XML body cannot be inspected")
        _check_xml_declaration(body if text is None else text, codec or "utf-8",
                               declared is not None or bom is not None)
    if text is None:
        text = body
    elif codec in _KEEP_RAW:
        text = text + b"\n" + body
    return _value_readings(text, ctype)


# between a body and its values reading: a NUL, which no JSON text and no form parser's
# input holds raw, so _body_readings finds the body as sent before it
_VALUES_SEP = b"\n\0\n"


def _value_readings(text: bytes, ctype: bytes) -> bytes:
    """`text` and, after it, the values as the upstream's parser hands them over where they
    are spelled otherwise: a form's fields decoded (`sql=DR%4FP+TABLE` is DROP TABLE to every
    form parser); JSON's escapes (`"DR\\u004fP\\nTABLE"` is DROP TABLE to every JSON parser)
    and XML's character references (`DR&#79;P`) read wherever they stand. The rules match
    either reading.

    The escapes are read over the whole text, not through a JSON parser: a parse that failed
    where the upstream's succeeds left the values unread (orjson refuses NaN and a lone
    \\ud800, which Python's json, Flask and Django take), and a top-level string or a
    multipart part is no document. Read outside strings too, they only make a rule match
    more."""
    low = ctype.lower().lstrip()
    if low.startswith(b"application/x-www-form-urlencoded"):
        if b"%" in text or b"+" in text:
            # unquote_to_bytes: _form_decode's reading (a bad escape kept as sent), 2.3x faster
            # on a 3.6 KiB form of 150 fields (66 against 149 us, load average 7)
            return text + _VALUES_SEP + unquote_to_bytes(text.replace(b"+", b" "))
        return text
    read = text
    if b"\\" in read:
        read = _JSON_ESCAPE.sub(_json_unescaped, read)
    if b"&#" in read:
        read = _CHAR_REF.sub(_char_ref, read)
    return text if read is text else text + _VALUES_SEP + read


# JSON's escapes, a surrogate pair first (one character). `\\` is one escape, so a `u0041`
# after it stays as sent, as a JSON parser reads it
_JSON_ESCAPE = re.compile(rb'\\(?:u([dD][89abAB][0-9a-fA-F]{2})\\u([dD][c-fC-F][0-9a-fA-F]{2})'
                          rb'|u([0-9a-fA-F]{4})|(["\\/bfnrt]))')
_JSON_SIMPLE = {b'"': b'"', b"\\": b"\\", b"/": b"/", b"b": b"\b", b"f": b"\f", b"n": b"\n",
                b"r": b"\r", b"t": b"\t"}
_CHAR_REF = re.compile(rb"&#(?:[xX]([0-9a-fA-F]{1,6})|([0-9]{1,7}));")


def _json_unescaped(m) -> bytes:
    if m.group(4) is not None:
        return _JSON_SIMPLE[m.group(4)]
    if m.group(3) is not None:
        return chr(int(m.group(3), 16)).encode("utf-8", "surrogatepass")
    hi, lo = int(m.group(1), 16), int(m.group(2), 16)
    return chr(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)).encode("utf-8")


def _char_ref(m) -> bytes:
    code = int(m.group(1), 16) if m.group(1) is not None else int(m.group(2))
    return chr(code).encode("utf-8", "surrogatepass") if code <= 0x10FFFF else m.group(0)


# A part's own transfer encoding or charset: Go's mime/multipart decodes a quoted-printable part
# as it reads it (`DR=4FP` is DROP to a Go upstream, bytes to the rules), and Commons FileUpload
# reads a field in its part's charset (UTF-16 hides every ASCII word). Read anywhere in the
# body, not only in part heads: a line of data that looks like one is refused too (errs safe).
_PART_CTE = re.compile(rb"(?im)^content-transfer-encoding[ \t]*:[ \t]*([^\r\n]*)")
_PART_CHARSET = re.compile(rb'(?im)^content-type[ \t]*:[^\r\n]*?;[ \t]*charset[ \t]*=[ \t]*"?'
                           rb'([^";\s]*)')


def _check_parts(body: bytes) -> None:
    """UnreadableBody for a multipart body with a part the upstream may decode into words the
    bytes do not spell: a transfer encoding other than 7bit/8bit/binary, or a part charset that
    is not ASCII-compatible (UTF-16/32) or not one body_text reads."""
    low = body.lower()
    if b"content-transfer-encoding" in low:
        for m in _PART_CTE.finditer(body):
            if m.group(1).strip().lower() not in (b"7bit", b"8bit", b"binary"):
                raise UnreadableBody("a multipart part with Content-Transfer-Encoding: "
                                     f"{m.group(1).strip().decode('latin-1')} cannot be "
                                     "inspected: send it as 8bit or binary")
    if b"charset" in low:
        for m in _PART_CHARSET.finditer(body):
            if _codec(m.group(1)).startswith(("utf-16", "utf-32")):
                raise UnreadableBody("a multipart part in "
                                     f"{m.group(1).decode('latin-1')} cannot be inspected: "
                                     "send it as UTF-8")


def _decode(body: bytes, codec: str, strip_bom: bool) -> bytes:
    try:
        text = body.decode(codec)
    except UnicodeDecodeError:
        raise UnreadableBody(f"the body is not valid {codec}") from None
    if strip_bom and text[:1] == "\ufeff":
        text = text[1:]
    return text.encode("utf-8", "surrogatepass")


def _check_xml_declaration(text: bytes, codec: str, declared: bool) -> None:
    """An XML parser reads the encoding an `<?xml ... encoding="x"?>` names when nothing else
    does: a declaration that disagrees with what the rules read is refused."""
    m = _XML_DECL.match(text[:256].decode("utf-8", "replace"))
    if m is None:
        return
    named = _codec(m.group(1).encode("ascii"))
    if _family(named) != _family(codec) and not ({named, codec} <= {"utf-8", "latin-1"}
                                                 and not declared):
        raise UnreadableBody(f"the XML declaration names {m.group(1)!r}, the body reads as "
                             f"{codec}")


def _claimed(value: bytes) -> bytes:
    """A `_method` value as a framework reads it: form-decoded, trimmed, upper-cased."""
    return _form_decode(value).strip().upper()


def _form_decode(value: bytes) -> bytes:
    value = value.replace(b"+", b" ")
    if b"%" not in value:
        return value
    return re.sub(rb"%([0-9A-Fa-f]{2})", lambda m: bytes((int(m.group(1), 16),)), value)


def _body_readings(rest: bytes, body: bytes, methods: list) -> None:
    """Add the methods a body claims to `methods` (the body is UTF-8 already: body_text)."""
    ctype = b""
    for m in _CONTENT_TYPE.finditer(rest):
        ctype += m.group(1).lower() + b"\n"
    if b"_method" in body:
        for m in _BODY_METHOD.finditer(body):
            methods.append(_claimed(m.group(1) or m.group(2)))
    sent = body.partition(_VALUES_SEP)[0]       # the body before its values reading
    if b"x-www-form-urlencoded" in ctype and b"%" in sent:
        # a field name spelled with escapes (%5Fmethod) is `_method` to every form parser
        for field in sent.split(b"&"):
            name, eq, value = field.partition(b"=")
            if eq and b"%" in name and _form_decode(name) == b"_method":
                methods.append(_claimed(value))
    if b'"_method"' in body:
        # the values reading is part of `body`: Laravel reads a JSON body's members as its
        # input, and "\u005fmethod" is _method there
        for m in _JSON_METHOD.finditer(body):
            methods.append(m.group(1).strip().upper())


_JSON_METHOD = re.compile(rb'"_method"\s*:\s*"([^"\\]*)"')


def statement_views(text: bytes, want_full: bool, *args, **kwargs) -> tuple:
    """(code views, full views or None, False): one view per reading of the request (module
    docstring); the code view stops before the body, the full view keeps it."""
    if type(text) is not bytes:
        text = bytes(text)
    cut = text.find(b"\n\n")
    head = text if cut < 0 else text[:cut + 1]
    line_end = head.find(b"\n")
    if line_end < 0:
        line_end = len(head)
    method, _, target = head[:line_end].partition(b" ")
    rest = head[line_end:]
    body = None if cut < 0 else text[cut + 1:]   # "\n" + body
    methods = [method]
    targets = [target]
    if method == b"HEAD":
        methods.append(b"GET")
    if rest:
        for line in rest.split(b"\n"):
            name, _, value = line.partition(b": ")
            if name in _OVERRIDE_HEADERS and value:
                methods.append(value)
            elif name in _URL_HEADERS and value:
                targets.append(value)
    query = target.partition(b"?")[2]
    if b"_method=" in query:
        for m in _METHOD_PARAM.finditer(query):
            methods.append(_claimed(m.group(1)))
    if body is not None and want_full and len(body) > 1:
        _body_readings(rest, body[1:], methods)
    if len(methods) == 1 and len(targets) == 1:
        code = [head]
    else:
        methods = list(dict.fromkeys(methods))
        targets = list(dict.fromkeys(targets))
        if len(methods) * len(targets) > _MAX_READINGS:
            # more readings than a real client makes: scan the request as sent and a marker
            # the implied rule refuses, never a chosen subset an attacker could pad past
            code = [head, UNREADABLE]
        else:
            code = [head if (m is method and t is target) else b"".join((m, b" ", t, rest))
                    for m in methods for t in targets]
    if not want_full:
        return code, None, False
    if body is None:
        return code, code, False
    full = [c if c[:1] == b"\x00" else c + body for c in code]
    return code, full, False


# -- masking for logs and the audit ----------------------------------------------------------

_QUERY_VALUE = re.compile(rb"([&;]|^)([^&;=]*)(=[^&;]*)?")


def _mask_query(query: bytes) -> bytes:
    def one(m):
        if not m.group(2) and not m.group(3):
            return m.group(0)
        if m.group(3) is None:
            return m.group(1) + b"?"      # a bare parameter may be a token itself
        return m.group(1) + m.group(2) + b"=?"
    return _QUERY_VALUE.sub(one, query)


def _mask_target(target: bytes) -> bytes:
    path, sep, query = target.partition(b"?")
    return path + sep + _mask_query(query) if sep else path


def mask_literals_reference(text: bytes) -> str:
    """The request text as logs and the audit show it: query values and the body as '?'.
    The text may be cut short (statement_text_limit): whatever part is there is masked.
    The gateway runs the same in C (hoopwire.http._literals.mask_literals, which the audit
    thread calls without the GIL); this one is its reference in the tests."""
    if type(text) is not bytes:
        text = bytes(text)
    cut = text.find(b"\n\n")
    head = text if cut < 0 else text[:cut]
    lines = head.split(b"\n")
    method, sp, target = lines[0].partition(b" ")
    lines[0] = method + sp + _mask_target(target)
    for k in range(1, len(lines)):
        name, colon, value = lines[k].partition(b": ")
        if name in _URL_HEADERS:
            lines[k] = name + colon + _mask_target(value)
    out = b"\n".join(lines)
    if cut >= 0:
        out += b"\n\n?" if cut + 2 < len(text) else b"\n\n"
    return out.decode("utf-8", "replace")


def request_reads_body(policy) -> bool:
    """Whether some rule of this GroupPolicy reads bodies (scan_literals): the relay then
    reads up to inspect_body_bytes of a request body and passes it to request_text."""
    if policy is None:
        return False
    return any(view == FULL for rule in policy.rules for view, _, _ in rule.patterns)


class HttpDialect:
    name = "http"
    packs = PACKS                   # the built-in guardrail packs (hoopwire/http/packs.py)
    mask_literals = staticmethod(mask_literals)
    statement_views = staticmethod(statement_views)

    @staticmethod
    def classifier(rules: tuple):
        return None                 # no statement kinds: methods are in the text

    @staticmethod
    def implied_guardrails(rules: tuple) -> tuple:
        """The rule every rule set gets (an empty one gets none): `unreadable-request` (too
        many readings). Bodies the rules cannot read are refused 415 before any rule runs
        (body_text)."""
        if not rules:
            return rules
        return rules + (GuardrailConfig(
            name="unreadable-request", patterns=(UNREADABLE_PATTERN,),
            message="the request claims too many methods or paths (override headers, "
                    "_method) to be checked"),)


DIALECT = HttpDialect()
