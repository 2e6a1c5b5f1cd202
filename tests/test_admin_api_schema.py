"""The admin API against its own OpenAPI document (hoopwire/openapi.py), on a real gateway.

One gateway in front of the test PostgreSQL, with an approve rule, a state store and an audit
log, so every endpoint has something to serve: one recorded session, and statements held for
approval (one is denied on the way, one stays pending). Then:

* the document is a valid OpenAPI 3.1 description, and it lists exactly the routes admin.py
  serves under /api/v1/;
* schemathesis generates requests (valid and invalid) for every operation and checks each
  response against the document: no 5xx, only documented status codes and content types, bodies
  that match their schemas, invalid input refused, a missing token refused;
* explicit requests with real ids reach the 200 answers fuzzing cannot guess, every path is
  routed, and every secured operation refuses a request without a valid token with a JSON 401.

The fuzzing is bounded (a fixed seed, a few examples per operation) so the file stays fast and
deterministic. POST /api/v1/reload is fuzzed too: it only re-reads the unchanged config file.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import hypothesis
import psycopg
import pytest

from gwfixtures import conninfo, gateway_config, gateway_env
from helpers import Gateway

import schemathesis  # noqa: E402  (a test dependency: never skipped)

from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

# a longer, different exploration: HOOPWIRE_SCHEMA_EXAMPLES=500 HOOPWIRE_SCHEMA_SEED=7 pytest ...
MAX_EXAMPLES = int(os.environ.get("HOOPWIRE_SCHEMA_EXAMPLES", "15"))
SEED = int(os.environ.get("HOOPWIRE_SCHEMA_SEED", "20250611"))
DOC_PATH = "/api/v1/openapi.json"
HELD = "DELETE FROM items WHERE id = -1"   # matches the approve rule; deletes nothing either way
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, negative_data_rejection, positive_data_acceptance,
          ignored_auth, unsupported_method]
CONFORMANCE = CHECKS[:4]   # for hand-made requests: what the response must be, whatever was sent
FUZZ_SETTINGS = hypothesis.settings(deadline=None, max_examples=MAX_EXAMPLES, database=None,
                                    suppress_health_check=list(hypothesis.HealthCheck))


@dataclass
class Live:
    gw: Gateway
    token: str              # in admin_groups and in the approve rule's approvers
    session_id: str         # a recorded session (not one of the held ones)
    approval_ids: list[str]  # pending requests (held statements)


class Held(threading.Thread):
    """A statement sent on its own connection that the gateway holds for approval."""

    def __init__(self, dsn: str, sql: str):
        super().__init__(daemon=True)
        self.dsn, self.sql, self.error = dsn, sql, None

    def run(self):
        try:
            with psycopg.connect(self.dsn, autocommit=True) as c:
                c.execute(self.sql)
        except Exception as e:  # noqa: BLE001 -- denied, or the gateway stopped: both expected
            self.error = e


def request(gw: Gateway, method: str, path: str, token: str | None = None, body=None,
            headers: dict | None = None):
    """(status, headers, body bytes) of one admin API call."""
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        hdrs["Content-Type"] = "application/json"
    req = urllib.request.Request(gw.admin_url + path, method=method, data=data, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def _wait(what: str, fn, timeout: float = 20.0):
    deadline, out = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        out = fn()
        if out:
            return out
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}: {fn.__name__} last gave {out!r}")


@pytest.fixture(scope="module")
def live(pg, idp, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("apischema")
    cfg = gateway_config(pg, idp, allow_groups=["agents", "dba"], guardrail=[
        {"name": "deletes-need-a-human", "patterns": [r"\bdelete\b"], "action": "approve",
         "approvers": ["dba"], "timeout": "300s"}])
    cfg["admin"] = {"admin_groups": ["admins"]}
    cfg["state"] = {"url": f"sqlite:///{tmp}/state.db", "poll_interval": "100ms"}
    cfg["audit"] = {"path": str(tmp / "audit"), "flush_interval": "50ms"}
    token = idp.admin_token("root", ["admins", "dba"])
    agent = idp.token("agent-7", ["agents"])
    held: list[Held] = []
    with Gateway(cfg, env=gateway_env(pg)) as gw:
        with psycopg.connect(conninfo(gw, agent), autocommit=True) as c:
            c.execute("SELECT id, name FROM items WHERE id = %s", (1,)).fetchall()
            c.execute("SELECT count(*) FROM items").fetchall()
        for _ in range(2):
            t = Held(conninfo(gw, agent), HELD)
            t.start()
            held.append(t)

        def pending():
            status, _, body = request(gw, "GET", "/api/v1/approvals?status=pending", token)
            assert status == 200, body
            rows = json.loads(body)["approvals"]
            return rows if len(rows) == 2 else None

        def first_session():
            # the one that ran the SELECTs (not a held one); its end may not be indexed yet
            status, _, body = request(gw, "GET", "/api/v1/sessions?identity=agent-7", token)
            assert status == 200, body
            ids = [s["id"] for s in json.loads(body)["sessions"] if s["id"] not in held_sessions]
            return ids[0] if ids else None

        try:
            approvals = _wait("two pending approval requests", pending)
            held_sessions = {a["session_id"] for a in approvals}
            session_id = _wait("the recorded session", first_session)
        except AssertionError:
            print(gw.log_text())
            raise
        approval_ids = [a["id"] for a in approvals]
        yield Live(gw=gw, token=token, session_id=session_id, approval_ids=approval_ids)
    for t in held:
        t.join(5)


@pytest.fixture(scope="module")
def doc(live) -> dict:
    status, headers, body = request(live.gw, "GET", DOC_PATH)
    assert status == 200 and headers.get_content_type() == "application/json"
    return json.loads(body)


def _operations(doc: dict):
    for path, item in doc["paths"].items():
        for method, op in item.items():
            yield path, method.upper(), op


def _secured(doc: dict, op: dict) -> bool:
    return bool(op.get("security", doc.get("security")))


# -- the document itself ------------------------------------------------------------------------

def test_document_is_valid_openapi_31(doc):
    from hoopwire.openapi import document
    assert doc == json.loads(json.dumps(document()))   # what is served is what is written
    assert doc["openapi"].startswith("3.1")
    schemathesis.openapi.from_dict(doc).validate()     # raises on a meta-schema violation


def test_document_agrees_with_the_code_it_describes(doc):
    from hoopwire.state import APPROVAL_STATUSES
    approval = doc["components"]["schemas"]["Approval"]["properties"]
    status_param = next(p for p in doc["paths"]["/api/v1/approvals"]["get"]["parameters"]
                        if p["name"] == "status")
    assert approval["status"]["enum"] == status_param["schema"]["enum"]
    assert set(status_param["schema"]["enum"]) == set(APPROVAL_STATUSES)
    for path, method, op in _operations(doc):
        if _secured(doc, op):
            assert {"200", "401", "403"} <= set(op["responses"]), (method, path)
        for code, response in op["responses"].items():
            response = doc["components"]["responses"]["Error"] if "$ref" in response else response
            assert list(response["content"]) == ["application/json"], (method, path, code)


def test_document_passes_openapi_spec_validator(doc):
    import openapi_spec_validator as validator
    validator.validate(doc)


def test_document_lists_exactly_the_served_routes(doc):
    from hoopwire.admin import AdminServer
    served = set()
    for route in AdminServer(None, None).app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if path.startswith("/api/") and route.method != "HEAD":
            served.add((path, route.method))
    documented = {(path, method) for path, method, _ in _operations(doc)}
    assert documented == served


# -- the live API, fuzzed ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def api_schema(live):
    # the token through schemathesis' own auth (not a header of ours), so it knows which
    # requests carry it and which it generated without one on purpose
    config = schemathesis.Config.from_dict({
        "seed": SEED, "auth": {"openapi": {"bearer": {"bearer": live.token}}}})
    return schemathesis.openapi.from_url(live.gw.admin_url + DOC_PATH,
                                         config=config, timeout=10)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@FUZZ_SETTINGS
def test_live_api_conforms_to_document(case, live):
    case.call_and_validate(checks=CHECKS, timeout=10)


def test_fuzzing_gets_past_authentication(api_schema, doc):
    """Guard for the run above: its cases carry the token through schemathesis' auth config,
    and with a token that did not reach the API every answer would be a (conforming) 401.

    It draws its own cases the same way -- the same `api_schema` (config and token), seed and
    budget, valid requests -- rather than reading what that run saw, so it stands alone in any
    order. Each operation must be answered by its handler (anything but 401) at least once."""
    seen: dict[str, set[int]] = {}
    for result in api_schema.get_all_operations():
        operation = result.ok()

        @FUZZ_SETTINGS
        @hypothesis.seed(SEED)
        @hypothesis.given(case=operation.as_strategy())
        def probe(case):
            response = case.call(timeout=10)
            seen.setdefault(case.operation.label, set()).add(response.status_code)

        probe()
    # schemathesis leaves out the operation its schema was loaded from (the explicit tests
    # below cover GET /api/v1/openapi.json)
    assert set(seen) == {f"{m} {p}" for p, m, _ in _operations(doc)} - {f"GET {DOC_PATH}"}
    for op, statuses in seen.items():
        assert statuses - {401}, (op, statuses)


# -- explicit requests ----------------------------------------------------------------------------

def _auth(live: Live) -> dict:
    """For cases built by hand (the config's auth is applied to generated ones only)."""
    return {"Authorization": f"Bearer {live.token}"}


def _real_id(path: str, live: Live) -> str:
    return live.session_id if path.startswith("/api/v1/sessions/") else live.approval_ids[0]


def _concrete(path: str, live: Live) -> str:
    return path.replace("{id}", _real_id(path, live))


def test_real_ids_answer_200_as_documented(live, api_schema):
    """The answers fuzzing cannot reach (it cannot guess ids), validated against the document."""
    headers = _auth(live)
    for path, method, _ in _operations(api_schema.raw_schema):
        if method != "GET" or ("{id}" not in path and path != DOC_PATH):
            continue
        params = {"id": _real_id(path, live)} if "{id}" in path else {}
        case = api_schema[path][method].Case(path_parameters=params)
        response = case.call_and_validate(headers=headers, checks=CONFORMANCE, timeout=10)
        assert response.status_code == 200, (path, response.text)
    # a decision on a real pending request, then the same decision again: 200, then 409
    deny = api_schema["/api/v1/approvals/{id}/deny"]["POST"]
    for expected in (200, 409):
        case = deny.Case(path_parameters={"id": live.approval_ids[1]},
                         body={"reason": "schema test"}, media_type="application/json")
        response = case.call_and_validate(headers=headers, checks=CONFORMANCE, timeout=10)
        assert response.status_code == expected, response.text
    assert response.json()["error"]["code"] == "conflict"


def _router_404(status: int, body: bytes) -> bool:
    """aiohttp's own 404 (no route), as the error middleware words it."""
    return status == 404 and json.loads(body)["error"]["message"].endswith("Not Found")


def test_every_documented_path_is_routed(live, doc):
    status, _, body = request(live.gw, "GET", "/api/v1/no-such-thing", live.token)
    assert _router_404(status, body)                   # the control: what an unrouted path gets
    for path, method, _ in _operations(doc):
        # GETs with real ids; decisions on an unknown id (answered by the handler, not the router)
        url = _concrete(path, live) if method == "GET" else path.replace("{id}", "apr_unknown")
        status, _, body = request(live.gw, method, url, live.token,
                                  body={} if method == "POST" else None)
        assert not _router_404(status, body) and status != 405, (method, path, status, body)
        assert status == (404 if "{id}" in path and method == "POST" else 200), (method, path, body)


@pytest.mark.parametrize("token", [None, "not-a-token", ""], ids=["none", "garbage", "empty"])
def test_secured_operations_refuse_without_a_valid_token(live, doc, token):
    seen = 0
    for path, method, op in _operations(doc):
        url = _concrete(path, live)
        headers = {"Authorization": "Bearer " + token} if token is not None else {}
        status, resp_headers, body = request(live.gw, method, url, headers=headers,
                                             body={} if method == "POST" else None)
        if not _secured(doc, op):
            assert status == 200, (method, path, status)
            continue
        seen += 1
        assert status == 401, (method, path, status, body)
        assert resp_headers.get_content_type() == "application/json"
        assert resp_headers.get("WWW-Authenticate", "").startswith("Bearer")
        err = json.loads(body)["error"]
        assert err["code"] == "unauthenticated" and err["message"], (method, path, err)
    assert seen == len(doc["paths"]) - 1


def test_oversized_body_is_a_documented_json_error(live, api_schema):
    big = {"reason": "x" * (70 * 1024)}                # over the admin app's client_max_size
    for path in ("/api/v1/approvals/{id}/approve", "/api/v1/approvals/{id}/deny"):
        case = api_schema[path]["POST"].Case(path_parameters={"id": live.approval_ids[0]},
                                             body=big, media_type="application/json")
        response = case.call_and_validate(headers=_auth(live), checks=CONFORMANCE, timeout=10)
        assert response.status_code == 413, response.text


def test_failed_reload_answers_as_documented(live, api_schema):
    """A config file with errors: 422 with the errors, the running configuration stays."""
    reload = api_schema["/api/v1/reload"]["POST"]
    with open(live.gw.config_path, "a", encoding="utf-8") as f:
        f.write('\n[no_such_section]\nx = 1\n')
    try:
        response = reload.Case().call_and_validate(headers=_auth(live), checks=CONFORMANCE,
                                                   timeout=10)
        assert response.status_code == 422, response.text
        body = response.json()
        assert body["reloaded"] is False and any("no_such_section" in e for e in body["errors"])
    finally:
        live.gw.write_config()
    response = reload.Case().call_and_validate(headers=_auth(live), checks=CONFORMANCE,
                                               timeout=10)
    assert response.status_code == 200 and response.json() == {"reloaded": True, "errors": []}


def test_gateway_without_state_store_answers_as_documented(pg, idp, api_schema):
    """No [state], no [audit], no approve rule: every operation still answers as documented
    (the store-backed ones with a 404 not_configured)."""
    cfg = gateway_config(pg, idp, admin={"admin_groups": ["admins"]})
    cfg["audit"] = {"enabled": False}     # on by default, and it brings the state store
    token = idp.admin_token("root", ["admins"])
    with Gateway(cfg, env=gateway_env(pg)) as gw:
        for path, method, _ in _operations(api_schema.raw_schema):
            params = {"id": "x"} if "{id}" in path else {}
            case = api_schema[path][method].Case(path_parameters=params)
            response = case.call_and_validate(base_url=gw.admin_url, checks=CONFORMANCE,
                                              headers={"Authorization": f"Bearer {token}"},
                                              timeout=10)
            if path not in (DOC_PATH, "/api/v1/reload"):
                assert response.status_code == 404, (method, path, response.text)
                assert response.json()["error"]["code"] in ("not_configured", "not_found")
