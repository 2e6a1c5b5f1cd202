"""The responses the gateway makes itself: every one JSON,
{"error": "<code>", "message": "...", "request_id": "..."}, with Connection: close when the
gateway closes after it (the contract of issue 21).

Built as bytes once per call, no templating engine: a 401 is on the hot path of a client with
a bad token, and orjson plus one bytes join is ~2 us here.
"""

from __future__ import annotations

import orjson

__all__ = ["response", "REASONS", "RID_PLACEHOLDER", "with_request_id", "code_of",
           "RequestRefused"]

REASONS = {
    100: b"Continue", 200: b"OK", 400: b"Bad Request", 401: b"Unauthorized",
    403: b"Forbidden", 404: b"Not Found", 408: b"Request Timeout",
    413: b"Content Too Large", 414: b"URI Too Long", 415: b"Unsupported Media Type",
    417: b"Expectation Failed",
    431: b"Request Header Fields Too Large", 500: b"Internal Server Error",
    501: b"Not Implemented", 502: b"Bad Gateway", 503: b"Service Unavailable",
    504: b"Gateway Timeout", 505: b"HTTP Version Not Supported",
}


class RequestRefused(ValueError):
    """A request the gateway answers itself before any rule runs, as `status` with the JSON
    `code` and the exception's text as its message (hoopwire.http.dialect raises them while
    it builds the request text: BadTarget 400, UnreadableBody 415)."""

    status = 400
    code = "bad_request"


# The core asks the adapter for an error before the relay knows which request it answers
# (a denied approval): such a body carries this placeholder, as long as a request id (16 hex
# digits), and the relay swaps the id in without changing Content-Length.
RID_PLACEHOLDER = b"-" * 16


def response(status: int, code: str, message: str, request_id: str | bytes = RID_PLACEHOLDER,
             *, close: bool = False, headers: tuple = ()) -> bytes:
    """A whole HTTP/1.1 response with a JSON error body."""
    if isinstance(request_id, bytes):
        request_id = request_id.decode("ascii")
    body = orjson.dumps({"error": code, "message": message, "request_id": request_id})
    head = [b"HTTP/1.1 %d %s" % (status, REASONS.get(status, b"Error")),
            b"Content-Type: application/json",
            b"Content-Length: %d" % len(body)]
    if close:
        head.append(b"Connection: close")
    for name, value in headers:
        head.append(name + b": " + value)
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def with_request_id(resp: bytes, request_id: bytes) -> bytes:
    """An adapter-made response (RID_PLACEHOLDER in its body) for one request."""
    return resp.replace(b'"request_id":"' + RID_PLACEHOLDER + b'"',
                        b'"request_id":"' + request_id + b'"', 1)


def code_of(resp: bytes) -> dict | None:
    """{"code": "<status> <error>", "message"} of a response this module made; None if not."""
    head, sep, body = resp.partition(b"\r\n\r\n")
    if not sep or not head.startswith(b"HTTP/1.1 "):
        return None
    try:
        doc = orjson.loads(body)
        return {"code": f"{int(head[9:12])} {doc['error']}", "message": doc["message"]}
    except (orjson.JSONDecodeError, KeyError, ValueError, TypeError):
        return None
