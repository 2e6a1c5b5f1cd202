"""The OpenAPI 3.1 description of the admin API (served at /api/v1/openapi.json).

Written by hand next to hoopwire/admin.py and checked against the live API in tests, so the two
cannot drift apart silently.
"""

from __future__ import annotations

from hoopwire import __version__

_ERROR = {"$ref": "#/components/responses/Error"}


def _obj(props: dict, required=()) -> dict:
    return {"type": "object", "properties": props, "required": list(required)}


_STR = {"type": "string"}
_NSTR = {"type": ["string", "null"]}
_NUM = {"type": "number"}
_NNUM = {"type": ["number", "null"]}
_INT = {"type": "integer"}
_NINT = {"type": ["integer", "null"]}
_STRS = {"type": "array", "items": {"type": "string"}}

APPROVAL = _obj({
    "id": _STR, "status": {"type": "string", "enum": ["pending", "approved", "denied", "expired",
                                                       "cancelled", "abandoned"]},
    "created_at": _NUM, "expires_at": _NUM, "decided_at": _NNUM, "requester": _STR,
    # with the subject, who asked: "" for an API key, null for requests stored before it was
    "requester_issuer": _NSTR, "decided_by_issuer": _NSTR,
    "requester_groups": _STRS, "connection": _STR, "session_id": _STR, "client_addr": _STR,
    "statement": _STR, "rule": _STR, "approvers": _STRS, "reason_required": {"type": "boolean"},
    "decided_by": _NSTR, "reason": _NSTR, "scope": {"type": "string", "enum": ["once", "window"]},
    "grant_until": _NNUM, "gateway_id": _STR,
}, ["id", "status", "created_at", "expires_at", "requester", "connection", "statement", "rule",
    "approvers"])

SESSION = _obj({
    "id": _STR, "subject": _STR, "issuer": _NSTR, "groups": _STRS, "token_id": _NSTR,
    "method": _STR, "connection": _STR, "role": _NSTR, "database": _NSTR, "client_addr": _STR,
    "tls": {"type": "boolean"}, "started_at": _NUM, "ended_at": _NNUM, "bytes_in": _INT,
    "bytes_out": _INT, "close_reason": _NSTR, "statements": _INT, "gateway_id": _STR,
}, ["id", "subject", "connection", "started_at"])

STATEMENT = _obj({
    "session_id": _STR, "seq": _INT, "ts": _NUM, "statement": _STR, "verdict": _STR,
    "rules": _STRS, "approval_id": _NSTR, "rows": _NINT, "masked": _INT, "duration_ms": _NNUM,
    "error": _NSTR,
}, ["session_id", "seq", "statement", "verdict"])

ERROR = _obj({"error": _obj({"code": _STR, "message": _STR}, ["code", "message"])}, ["error"])

DECISION = {"type": "object", "additionalProperties": False, "properties": {
    "reason": {"type": "string", "maxLength": 2000},
    "scope": {"type": "string", "enum": ["once", "window"]},
    "window_seconds": {"type": "integer", "minimum": 1, "maximum": 86400}}}


def _json(schema: dict, description: str = "OK") -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


RELOADED = _obj({"reloaded": {"type": "boolean"}, "errors": _STRS}, ["reloaded", "errors"])


def _op(summary: str, ok: dict, *, params=(), body=None, secured=True, errors=(401, 403),
        other=None) -> dict:
    op = {"summary": summary, "responses": {"200": ok}}
    for code in errors:
        op["responses"][str(code)] = _ERROR
    op["responses"].update(other or {})
    if params:
        op["parameters"] = list(params)
    if body is not None:
        op["requestBody"] = {"required": False, "content": {"application/json": {"schema": body}}}
    if not secured:
        op["security"] = []
    return op


_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 64}}


def document() -> dict:
    return {
        "openapi": "3.1.0",
        "info": {"title": "hoopwire admin API", "version": __version__,
                 "description": "Approvals, recorded sessions and configuration reload. "
                                "Authenticate with `Authorization: Bearer <token>`: a JWT whose "
                                "audience is the admin API's own (`[admin] audience`, default "
                                "\"hoopwire-admin\"), or an API key configured with "
                                "`use = \"admin\"`. Approvers see and decide only the requests "
                                "of connections whose approve rules name one of their groups."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Approval": APPROVAL, "Session": SESSION, "Statement": STATEMENT,
                        "Error": ERROR, "Decision": DECISION, "Reload": RELOADED},
            "responses": {"Error": _json({"$ref": "#/components/schemas/Error"}, "an error")},
        },
        "paths": {
            "/api/v1/approvals": {"get": _op(
                "List approval requests (newest first)",
                _json(_obj({"approvals": {"type": "array",
                                          "items": {"$ref": "#/components/schemas/Approval"}}},
                           ["approvals"])),
                params=[{"name": "status", "in": "query", "required": False,
                         "schema": {"type": "string", "enum": ["pending", "approved", "denied",
                                                               "expired", "cancelled", "abandoned"]}},
                        {"name": "limit", "in": "query", "required": False,
                         "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}],
                errors=(400, 401, 403, 404))},
            "/api/v1/approvals/{id}": {"get": _op(
                "One approval request", _json({"$ref": "#/components/schemas/Approval"}),
                params=[_ID], errors=(401, 403, 404))},
            "/api/v1/approvals/{id}/approve": {"post": _op(
                "Approve a pending request (never your own; only a member of its approver groups)",
                _json({"$ref": "#/components/schemas/Approval"}), params=[_ID],
                body={"$ref": "#/components/schemas/Decision"},
                errors=(400, 401, 403, 404, 409, 413))},
            "/api/v1/approvals/{id}/deny": {"post": _op(
                "Deny a pending request", _json({"$ref": "#/components/schemas/Approval"}),
                params=[_ID], body={"$ref": "#/components/schemas/Decision"},
                errors=(400, 401, 403, 404, 409, 413))},
            "/api/v1/sessions": {"get": _op(
                "List recorded sessions (newest first)",
                _json(_obj({"sessions": {"type": "array",
                                         "items": {"$ref": "#/components/schemas/Session"}}},
                           ["sessions"])),
                params=[{"name": "identity", "in": "query", "required": False, "schema": _STR},
                        {"name": "issuer", "in": "query", "required": False, "schema": _STR},
                        {"name": "connection", "in": "query", "required": False, "schema": _STR},
                        {"name": "since", "in": "query", "required": False, "schema": _NUM},
                        {"name": "limit", "in": "query", "required": False,
                         "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}],
                errors=(400, 401, 403, 404))},
            "/api/v1/sessions/{id}": {"get": _op(
                "One session with its statements",
                _json(_obj({"session": {"$ref": "#/components/schemas/Session"},
                            "statements": {"type": "array",
                                           "items": {"$ref": "#/components/schemas/Statement"}}},
                           ["session", "statements"])),
                params=[_ID], errors=(401, 403, 404))},
            "/api/v1/sessions/{id}/replay": {"get": _op(
                "The session's audit records in order (statements and, where recorded, results)",
                _json(_obj({"session": _STR, "records": {"type": "array",
                                                         "items": {"type": "object"}}},
                           ["session", "records"])),
                params=[_ID], errors=(401, 403, 404))},
            "/api/v1/reload": {"post": _op(
                "Reload the configuration file",
                _json({"$ref": "#/components/schemas/Reload"}), errors=(401, 403),
                other={"422": _json({"$ref": "#/components/schemas/Reload"},
                                    "the file has errors (listed); the running configuration "
                                    "stays in force")})},
            "/api/v1/openapi.json": {"get": _op(
                "This document", _json({"type": "object"}), secured=False, errors=())},
        },
    }
