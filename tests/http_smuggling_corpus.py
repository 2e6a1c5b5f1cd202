"""Request-smuggling shapes for the HTTP/1.1 parser (issue 21), written from RFC 9110/9112.

CORPUS is a list of (name, raw bytes, expected): expected is "reject" (the gateway must refuse the
bytes: 400/501/505/414/431 and close) or the framing it must read: a list of (method, target,
body) for every request in the bytes, in order. Each request-smuggling attack needs two parsers
that cut the same bytes differently; for every entry here either the cut is unambiguous under RFC
9112 (and the expected framing says where it is) or the gateway refuses the bytes outright.

The gateway and both references (h11, httptools/llhttp) read them in tests/test_http_differential.py;
the HTTP relay tests send them over a real socket. Data only: nothing here runs.
"""

from __future__ import annotations

REJECT = "reject"


def _post(fields: bytes, body: bytes = b"", target: bytes = b"/") -> bytes:
    return b"POST " + target + b" HTTP/1.1\r\nHost: h\r\n" + fields + b"\r\n" + body


_SMUGGLED = b"GET /admin HTTP/1.1\r\nHost: h\r\n\r\n"
_CHUNKED_SMUGGLE = b"0\r\n\r\n" + _SMUGGLED          # 0-chunk, then a second request
TE = b"Transfer-Encoding: chunked\r\n"

CORPUS: list[tuple[str, bytes, object]] = [
    # --- the baseline: unambiguous messages the gateway must read as the RFC says ----------------
    ("plain-get", b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", [(b"GET", b"/", b"")]),
    ("content-length", _post(b"Content-Length: 5\r\n", b"hello"), [(b"POST", b"/", b"hello")]),
    ("chunked", _post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n"),
     [(b"POST", b"/", b"hello")]),
    ("chunked-uppercase-value", _post(b"Transfer-Encoding: CHUNKED\r\n", b"5\r\nhello\r\n0\r\n\r\n"),
     [(b"POST", b"/", b"hello")]),
    ("chunked-lowercase-name", _post(b"transfer-encoding: chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n"),
     [(b"POST", b"/", b"hello")]),
    ("tab-ows-plain-field", b"GET / HTTP/1.1\r\nHost: h\r\nX-A:\tv\r\n\r\n", [(b"GET", b"/", b"")]),
    ("chunked-hex-upper", _post(b"Transfer-Encoding: chunked\r\n", b"A\r\n0123456789\r\n0\r\n\r\n"),
     [(b"POST", b"/", b"0123456789")]),
    ("chunk-extension-token", _post(b"Transfer-Encoding: chunked\r\n", b"5;name=val\r\nhello\r\n0\r\n\r\n"),
     [(b"POST", b"/", b"hello")]),
    ("chunk-extension-quoted", _post(b"Transfer-Encoding: chunked\r\n",
                                     b"5;n=\"a;b\\\"c\"\r\nhello\r\n0\r\n\r\n"),
     [(b"POST", b"/", b"hello")]),
    ("get-with-framed-body", b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi",
     [(b"GET", b"/", b"hi")]),
    ("pipelined-two", b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n",
     [(b"GET", b"/a", b""), (b"GET", b"/b", b"")]),
    ("pipelined-after-cl-body", _post(b"Content-Length: 5\r\n", b"hello" + _SMUGGLED),
     [(b"POST", b"/", b"hello"), (b"GET", b"/admin", b"")]),
    ("pipelined-after-chunked-body", _post(b"Transfer-Encoding: chunked\r\n",
                                           b"5\r\nhello\r\n" + _CHUNKED_SMUGGLE),
     [(b"POST", b"/", b"hello"), (b"GET", b"/admin", b"")]),
    ("absolute-form-matching-host", b"GET http://h/x HTTP/1.1\r\nHost: h\r\n\r\n",
     [(b"GET", b"http://h/x", b"")]),
    ("http10-no-host", b"GET / HTTP/1.0\r\n\r\n", [(b"GET", b"/", b"")]),

    # --- CL.TE / TE.CL: both framings present (RFC 9112 §6.1: MAY reject; we must) ----------------
    ("cl-te", _post(b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n", _CHUNKED_SMUGGLE), REJECT),
    ("te-cl", _post(b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
                    b"5c\r\n" + b"x" * 0x5c + b"\r\n0\r\n\r\n"), REJECT),
    ("cl-te-zero-cl", _post(b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n", _CHUNKED_SMUGGLE), REJECT),

    # --- TE.TE: a Transfer-Encoding one parser ignores and the other honours ----------------------
    ("te-xchunked", _post(b"Transfer-Encoding: xchunked\r\n", _CHUNKED_SMUGGLE), REJECT),
    ("te-chunkedx", _post(b"Transfer-Encoding: chunkedx\r\n", _CHUNKED_SMUGGLE), REJECT),
    ("te-leading-space-value", _post(b"Transfer-Encoding:  chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n"),
     [(b"POST", b"/", b"hello")]),     # OWS is not part of the value (RFC 9110 §5.5)
    ("te-chunked-identity", _post(b"Transfer-Encoding: chunked, identity\r\n", _CHUNKED_SMUGGLE), REJECT),
    ("te-identity-chunked", _post(b"Transfer-Encoding: identity, chunked\r\n", _CHUNKED_SMUGGLE), REJECT),
    ("te-gzip-chunked", _post(b"Transfer-Encoding: gzip, chunked\r\n", _CHUNKED_SMUGGLE), REJECT),
    ("te-chunked-twice-list", _post(b"Transfer-Encoding: chunked, chunked\r\n", _CHUNKED_SMUGGLE), REJECT),
    ("te-duplicate-headers", _post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                                   _CHUNKED_SMUGGLE), REJECT),
    ("te-duplicate-one-bogus", _post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n",
                                     _CHUNKED_SMUGGLE), REJECT),
    ("te-space-before-colon", _post(b"Transfer-Encoding : chunked\r\n", _CHUNKED_SMUGGLE), REJECT),
    ("te-tab-before-colon", _post(b"Transfer-Encoding\t: chunked\r\n", _CHUNKED_SMUGGLE), REJECT),
    ("te-vertical-tab-value", _post(b"Transfer-Encoding: \x0bchunked\r\n", _CHUNKED_SMUGGLE), REJECT),
    ("te-formfeed-value", _post(b"Transfer-Encoding: \x0cchunked\r\n", _CHUNKED_SMUGGLE), REJECT),
    ("te-trailing-tab", _post(b"Transfer-Encoding: chunked\t\r\n", _CHUNKED_SMUGGLE), REJECT),
    ("te-leading-tab", _post(b"Transfer-Encoding:\tchunked\r\n", _CHUNKED_SMUGGLE), REJECT),
    ("cl-trailing-tab", _post(b"Content-Length: 5\t\r\n", b"hello"), REJECT),
    ("te-obs-fold", _post(b"Transfer-Encoding:\r\n chunked\r\n", _CHUNKED_SMUGGLE), REJECT),
    ("te-folded-name-line", _post(b"X: y\r\n Transfer-Encoding: chunked\r\n", _CHUNKED_SMUGGLE), REJECT),
    ("te-quoted", _post(b"Transfer-Encoding: \"chunked\"\r\n", _CHUNKED_SMUGGLE), REJECT),
    ("te-with-param", _post(b"Transfer-Encoding: chunked;q=1\r\n", _CHUNKED_SMUGGLE), REJECT),
    ("te-empty", _post(b"Transfer-Encoding: \r\n", b""), REJECT),
    ("te-comma-only", _post(b"Transfer-Encoding: ,\r\n", b""), REJECT),
    ("te-nul-in-name", _post(b"Transfer-Encoding\x00: chunked\r\n", _CHUNKED_SMUGGLE), REJECT),
    ("te-on-http10", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n" + _CHUNKED_SMUGGLE, REJECT),
    ("te-bare-cr-name", _post(b"X: y\rTransfer-Encoding: chunked\r\n", _CHUNKED_SMUGGLE), REJECT),

    # --- Content-Length shapes -------------------------------------------------------------------
    ("cl-plus", _post(b"Content-Length: +5\r\n", b"hello"), REJECT),
    ("cl-minus", _post(b"Content-Length: -5\r\n", b"hello"), REJECT),
    ("cl-hex", _post(b"Content-Length: 0x5\r\n", b"hello"), REJECT),
    ("cl-inner-space", _post(b"Content-Length: 5 5\r\n", b"hello"), REJECT),
    ("cl-list-equal", _post(b"Content-Length: 5, 5\r\n", b"hello"), REJECT),
    ("cl-list-differ", _post(b"Content-Length: 5, 6\r\n", b"hello"), REJECT),
    ("cl-duplicate-equal", _post(b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"), REJECT),
    ("cl-duplicate-differ", _post(b"Content-Length: 5\r\nContent-Length: 0\r\n", b"hello"), REJECT),
    ("cl-space-before-colon", _post(b"Content-Length : 5\r\n", b"hello"), REJECT),
    ("cl-leading-zeros", _post(b"Content-Length: 005\r\n", b"hello"), [(b"POST", b"/", b"hello")]),
    ("cl-trailing-junk", _post(b"Content-Length: 5x\r\n", b"hello"), REJECT),
    ("cl-decimal", _post(b"Content-Length: 5.0\r\n", b"hello"), REJECT),
    ("cl-over-2^53", _post(b"Content-Length: 9007199254740993\r\n", b"hello"), REJECT),
    ("cl-overflow-u64", _post(b"Content-Length: 18446744073709551621\r\n", b"hello"), REJECT),
    ("cl-unicode-digit", _post("Content-Length: \u0665\r\n".encode(), b"hello"), REJECT),

    # --- chunk framing -------------------------------------------------------------------------
    ("chunk-size-0x", _post(b"Transfer-Encoding: chunked\r\n", b"0x5\r\nhello\r\n0\r\n\r\n"), REJECT),
    ("chunk-size-leading-space", _post(b"Transfer-Encoding: chunked\r\n", b" 5\r\nhello\r\n0\r\n\r\n"), REJECT),
    ("chunk-size-trailing-space", _post(b"Transfer-Encoding: chunked\r\n", b"5 \r\nhello\r\n0\r\n\r\n"), REJECT),
    ("chunk-size-plus", _post(b"Transfer-Encoding: chunked\r\n", b"+5\r\nhello\r\n0\r\n\r\n"), REJECT),
    ("chunk-size-semicolon-junk", _post(b"Transfer-Encoding: chunked\r\n", b"5;\r\nhello\r\n0\r\n\r\n"), REJECT),
    ("chunk-ext-bws-before-semicolon", _post(b"Transfer-Encoding: chunked\r\n", b"5 ;a=b\r\nhello\r\n0\r\n\r\n"), REJECT),
    ("chunk-ext-bws-around-equals", _post(b"Transfer-Encoding: chunked\r\n", b"5;a = b\r\nhello\r\n0\r\n\r\n"), REJECT),
    ("chunk-ext-space-in-value", _post(b"Transfer-Encoding: chunked\r\n", b"5;a=b c\r\nhello\r\n0\r\n\r\n"), REJECT),
    ("chunk-ext-bare-cr", _post(b"Transfer-Encoding: chunked\r\n", b"5;a\rb\r\nhello\r\n0\r\n\r\n"), REJECT),
    ("chunk-ext-bare-lf", _post(b"Transfer-Encoding: chunked\r\n", b"5;a\nhello\r\n0\r\n\r\n"), REJECT),
    ("chunk-size-overlong", _post(b"Transfer-Encoding: chunked\r\n",
                                  b"1" + b"0" * 16 + b"\r\nhello\r\n0\r\n\r\n"), REJECT),
    ("chunk-size-overflow-wrap", _post(b"Transfer-Encoding: chunked\r\n",
                                       b"10000000000000005\r\nhello\r\n0\r\n\r\n"), REJECT),
    ("chunk-size-17-zeros", _post(b"Transfer-Encoding: chunked\r\n",
                                  b"0" * 17 + b"\r\n\r\n"), REJECT),
    ("chunk-data-too-long", _post(b"Transfer-Encoding: chunked\r\n", b"3\r\nhello\r\n0\r\n\r\n"), REJECT),
    ("chunk-data-two-bytes-not-crlf", _post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhelloXY0\r\n\r\n"), REJECT),
    ("chunk-data-lf-only", _post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\n0\r\n\r\n"), REJECT),
    ("chunk-size-lf-only", _post(b"Transfer-Encoding: chunked\r\n", b"5\nhello\r\n0\r\n\r\n"), REJECT),
    ("chunk-last-lf-only", _post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\n\n"), REJECT),
    ("chunk-missing-last", _post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n"), REJECT),
    ("trailer-content-length", _post(b"Transfer-Encoding: chunked\r\n",
                                     b"0\r\nContent-Length: 40\r\n\r\n"), REJECT),
    ("trailer-transfer-encoding", _post(b"Transfer-Encoding: chunked\r\n",
                                        b"0\r\nTransfer-Encoding: chunked\r\n\r\n"), REJECT),
    ("trailer-host", _post(b"Transfer-Encoding: chunked\r\n", b"0\r\nHost: evil\r\n\r\n"), REJECT),
    ("trailer-plain", _post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n"),
     [(b"POST", b"/", b"hello")]),

    # --- line ends and field syntax ------------------------------------------------------------
    ("bare-lf-everywhere", b"GET / HTTP/1.1\nHost: h\n\n", REJECT),
    ("bare-lf-in-headers", b"GET / HTTP/1.1\r\nHost: h\nX: y\r\n\r\n", REJECT),
    ("bare-lf-end-of-head", b"GET / HTTP/1.1\r\nHost: h\r\n\n", REJECT),
    ("bare-cr-in-value", b"GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n", REJECT),
    ("bare-cr-line-end", b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\r\n\r\n", REJECT),
    ("nul-in-value", b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n", REJECT),
    ("nul-in-name", b"GET / HTTP/1.1\r\nHost: h\r\nX\x00Y: b\r\n\r\n", REJECT),
    ("del-in-value", b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x7f\r\n\r\n", REJECT),
    ("obs-fold-continuation", b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n\tb\r\n\r\n", REJECT),
    ("space-in-name", b"GET / HTTP/1.1\r\nHost: h\r\nX Y: b\r\n\r\n", REJECT),
    ("empty-name", b"GET / HTTP/1.1\r\nHost: h\r\n: b\r\n\r\n", REJECT),
    ("no-colon", b"GET / HTTP/1.1\r\nHost: h\r\nXY\r\n\r\n", REJECT),

    # --- Host and the target -------------------------------------------------------------------
    ("no-host-11", b"GET / HTTP/1.1\r\n\r\n", REJECT),
    ("two-hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", REJECT),
    ("host-list", b"GET / HTTP/1.1\r\nHost: a, b\r\n\r\n", REJECT),
    ("host-userinfo", b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n", REJECT),
    ("absolute-form-mismatching-host", b"GET http://evil/x HTTP/1.1\r\nHost: h\r\n\r\n", REJECT),
    ("absolute-form-other-scheme", b"GET file:///etc/passwd HTTP/1.1\r\nHost: h\r\n\r\n", REJECT),
    ("target-with-space", b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n", REJECT),
    ("target-with-tab", b"GET /a\tb HTTP/1.1\r\nHost: h\r\n\r\n", REJECT),
    ("target-fragment", b"GET /a#frag HTTP/1.1\r\nHost: h\r\n\r\n", REJECT),
    ("target-non-ascii", b"GET /\xff HTTP/1.1\r\nHost: h\r\n\r\n", REJECT),

    # --- request line -----------------------------------------------------------------------------
    ("http09", b"GET /\r\n\r\n", REJECT),
    ("http09-no-crlf-crlf", b"GET /index.html\r\n", REJECT),
    ("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", REJECT),
    ("http-1-2", b"GET / HTTP/1.2\r\nHost: h\r\n\r\n", REJECT),
    ("http-lowercase", b"GET / http/1.1\r\nHost: h\r\n\r\n", REJECT),
    ("double-space", b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n", REJECT),
    ("method-lowercase", b"get / HTTP/1.1\r\nHost: h\r\n\r\n", REJECT),   # `delete` run as DELETE
    ("method-extension", b"M-SEARCH / HTTP/1.1\r\nHost: h\r\n\r\n", [(b"M-SEARCH", b"/", b"")]),
    ("method-with-slash", b"GE/T / HTTP/1.1\r\nHost: h\r\n\r\n", REJECT),
    ("connect", b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n", REJECT),

    # --- garbage after a good request ------------------------------------------------------------
    ("pipelined-garbage", b"GET / HTTP/1.1\r\nHost: h\r\n\r\nGARBAGE", REJECT),
    ("pipelined-garbage-line", b"GET / HTTP/1.1\r\nHost: h\r\n\r\nGARBAGE\r\n\r\n", REJECT),
    ("empty-line-before-request", b"\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n", REJECT),
    ("crlf-between-pipelined", _post(b"Content-Length: 5\r\n", b"hello\r\n" + _SMUGGLED), REJECT),
    ("request-line-only", b"GET / HTTP/1.1\r\n", REJECT),
    ("cl-body-short", _post(b"Content-Length: 10\r\n", b"hello"), REJECT),

    # === the categories of published HTTP desync research (TE.TE obfuscation, CL parsing,
    # chunk-size and extension abuse, trailers, line ends, absolute-form authorities), in
    # bytes of our own. Where h11 or llhttp accept one of the refused shapes below, hoopwire is
    # the strict side (test_where_a_reference_refuses_hoopwire_refuses checks the other way).
    # --- TE.TE ---------------------------------------------------------------------------------
    ("te-underscore-name", _post(b"Transfer_Encoding: chunked\r\n", _CHUNKED_SMUGGLE), REJECT),
    ("te-name-space-and-tab-before-colon", _post(b"Transfer-Encoding \t: chunked\r\n", _CHUNKED_SMUGGLE), REJECT),
    ("te-first-field-leading-space", b"POST / HTTP/1.1\r\n Transfer-Encoding: chunked\r\nHost: h\r\n\r\n"
     + _CHUNKED_SMUGGLE, REJECT),
    ("te-leading-comma", _post(b"Transfer-Encoding: , chunked\r\n", _CHUNKED_SMUGGLE), REJECT),
    ("te-trailing-comma", _post(b"Transfer-Encoding: chunked,\r\n", _CHUNKED_SMUGGLE), REJECT),
    ("te-trailing-semicolon", _post(b"Transfer-Encoding: chunked;\r\n", _CHUNKED_SMUGGLE), REJECT),
    ("te-second-field-empty", _post(TE + b"Transfer-Encoding: \r\n", _CHUNKED_SMUGGLE), REJECT),
    ("te-kelvin-sign", _post("Transfer-Encoding: chun\u212aed\r\n".encode(), _CHUNKED_SMUGGLE), REJECT),
    ("te-nul-after-value", _post(b"Transfer-Encoding: chunked\x00\r\n", _CHUNKED_SMUGGLE), REJECT),
    ("te-cr-inside-value", _post(b"Transfer-Encoding: chun\rked\r\n", _CHUNKED_SMUGGLE), REJECT),
    ("te-mixed-case-value", _post(b"Transfer-Encoding: ChUnKeD\r\n", b"5\r\nhello\r\n0\r\n\r\n"),
     [(b"POST", b"/", b"hello")]),
    ("te-on-get-hides-request", b"GET / HTTP/1.1\r\nHost: h\r\n" + TE + b"\r\n" + _CHUNKED_SMUGGLE,
     [(b"GET", b"/", b""), (b"GET", b"/admin", b"")]),
    # --- CL shapes -----------------------------------------------------------------------------
    ("cl-empty", _post(b"Content-Length: \r\n", b"hello"), REJECT),
    ("cl-minus-zero", _post(b"Content-Length: -0\r\n", b""), REJECT),
    ("cl-trailing-comma", _post(b"Content-Length: 5,\r\n", b"hello"), REJECT),
    ("cl-twenty-leading-zeros", _post(b"Content-Length: 00000000000000000005\r\n", b"hello"), REJECT),
    ("cl-nul-after-digits", _post(b"Content-Length: 5\x00\r\n", b"hello"), REJECT),
    ("cl-underscore-name", _post(b"Content_Length: 5\r\n", b"hello"), REJECT),
    ("cl-vertical-tab-value", _post(b"Content-Length: \x0b5\r\n", b"hello"), REJECT),
    ("cl-hides-request-in-get", b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n"
     % len(_SMUGGLED) + _SMUGGLED, [(b"GET", b"/", _SMUGGLED)]),
    ("cl-zero-then-request", _post(b"Content-Length: 0\r\n", _SMUGGLED),
     [(b"POST", b"/", b""), (b"GET", b"/admin", b"")]),
    # --- chunk framing -------------------------------------------------------------------------
    ("chunk-size-0X-upper", _post(TE, b"0X5\r\nhello\r\n0\r\n\r\n"), REJECT),
    ("chunk-size-negative", _post(TE, b"-5\r\nhello\r\n0\r\n\r\n"), REJECT),
    ("chunk-size-tab-before-ext", _post(TE, b"5\t;a=b\r\nhello\r\n0\r\n\r\n"), REJECT),
    ("chunk-size-leading-zeros", _post(TE, b"0005\r\nhello\r\n0\r\n\r\n"), [(b"POST", b"/", b"hello")]),
    ("chunk-last-with-extension", _post(TE, b"5\r\nhello\r\n0;done=1\r\n\r\n"), [(b"POST", b"/", b"hello")]),
    ("chunk-ext-over-line-limit", _post(TE, b"5;" + b"a" * 9000 + b"\r\nhello\r\n0\r\n\r\n"), REJECT),
    ("chunk-ext-many-short", _post(TE, b"5" + b";a" * 5000 + b"\r\nhello\r\n0\r\n\r\n"), REJECT),
    ("chunk-data-bare-cr-end", _post(TE, b"5\r\nhello\r0\r\n\r\n"), REJECT),
    ("chunk-size-cr-only", _post(TE, b"5\rhello\r\n0\r\n\r\n"), REJECT),
    ("chunk-last-no-final-crlf", _post(TE, b"5\r\nhello\r\n0\r\n"), REJECT),
    ("chunk-nul-in-size", _post(TE, b"5\x00\r\nhello\r\n0\r\n\r\n"), REJECT),
    # --- trailers ------------------------------------------------------------------------------
    ("trailer-method-override", _post(TE, b"0\r\nX-HTTP-Method-Override: DELETE\r\n\r\n"), REJECT),
    ("trailer-original-url-underscore", _post(TE, b"0\r\nX_Original_URL: /admin\r\n\r\n"), REJECT),
    ("trailer-forwarded-for", _post(TE, b"0\r\nX-Forwarded-For: 127.0.0.1\r\n\r\n"), REJECT),
    ("trailer-obs-fold", _post(TE, b"0\r\nX-Sum: 1\r\n 2\r\n\r\n"), REJECT),
    ("trailer-bare-lf", _post(TE, b"0\r\nX-Sum: 1\n\r\n"), REJECT),
    ("trailer-space-before-colon", _post(TE, b"0\r\nX-Sum : 1\r\n\r\n"), REJECT),
    # --- line ends, fields, request line -------------------------------------------------------
    ("lf-only-before-pipelined", b"GET / HTTP/1.1\r\nHost: h\r\n\r\n\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n",
     REJECT),
    ("vertical-tab-in-value", b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x0bb\r\n\r\n", REJECT),
    ("formfeed-in-value", b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x0cb\r\n\r\n", REJECT),
    ("high-bit-in-name", b"GET / HTTP/1.1\r\nHost: h\r\nX\xff: b\r\n\r\n", REJECT),
    ("host-twice-other-case", b"GET / HTTP/1.1\r\nHost: h\r\nhost: h\r\n\r\n", REJECT),
    ("host-with-space", b"GET / HTTP/1.1\r\nHost: h x\r\n\r\n", REJECT),
    ("host-with-slash", b"GET / HTTP/1.1\r\nHost: h/admin\r\n\r\n", REJECT),
    ("request-line-tab-separator", b"GET\t/ HTTP/1.1\r\nHost: h\r\n\r\n", REJECT),
    ("request-line-trailing-space", b"GET / HTTP/1.1 \r\nHost: h\r\n\r\n", REJECT),
    ("nul-in-target", b"GET /a\x00b HTTP/1.1\r\nHost: h\r\n\r\n", REJECT),
    ("nul-in-method", b"G\x00T / HTTP/1.1\r\nHost: h\r\n\r\n", REJECT),
    ("absolute-form-userinfo", b"GET http://u@h/ HTTP/1.1\r\nHost: h\r\n\r\n", REJECT),
    ("absolute-form-at-in-authority", b"GET http://h:80@evil/ HTTP/1.1\r\nHost: h:80@evil\r\n\r\n", REJECT),
    ("absolute-form-port-vs-host", b"GET http://h:8080/ HTTP/1.1\r\nHost: h\r\n\r\n", REJECT),
    ("absolute-form-no-authority", b"GET http:///admin HTTP/1.1\r\nHost: h\r\n\r\n", REJECT),
    ("absolute-form-backslash", b"GET http://h\\@evil/ HTTP/1.1\r\nHost: h\r\n\r\n", REJECT),
    ("header-line-over-limit", b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"a" * 70000 + b"\r\n\r\n", REJECT),
    ("too-many-fields", b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X: a\r\n" * 200 + b"\r\n", REJECT),
    ("request-line-over-limit", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: h\r\n\r\n", REJECT),
    ("http10-cl-then-request", b"POST / HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello" + _SMUGGLED,
     [(b"POST", b"/", b"hello")]),
]
