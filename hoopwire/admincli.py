"""`hoopwire approvals …`, `hoopwire sessions …`, `hoopwire audit verify`: the admin CLI.

The first two talk to a running gateway's admin API (`--admin URL` or HOOPWIRE_ADMIN_URL) with
the caller's own token -- an approver decides as themselves -- read from `--token-file PATH`,
HOOPWIRE_TOKEN or HOOPWIRE_TOKEN_FILE. `--token T` still works but warns: a command line is
readable by every local user (/proc/<pid>/cmdline, `ps`) and lands in shell history.
`audit verify` reads the log files and needs no gateway.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from hoopwire.logs import escape

__all__ = ["add_commands"]


class CliError(Exception):
    pass


def _when(ts) -> str:
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _emit(line: str, file=None) -> None:
    """Print one line for a human, every control character written as an escape. What is printed
    comes from clients (a statement's identifiers, an HTTP request's head, a subject): a raw ESC
    or CR in a held statement could redraw the approver's terminal line (`\\x1b[2K\\r`), and an
    HTTP request's head would spread one row of `approvals list` over several lines."""
    print(escape(line), file=file)


def _call(args, method: str, path: str, body: dict | None = None) -> dict:
    base = args.admin or os.environ.get("HOOPWIRE_ADMIN_URL") or "http://127.0.0.1:9187"
    token = _token(args)
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base.rstrip("/") + path, data=data, method=method,
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json",
                                          "Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=args.timeout) as r:
            return json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        try:
            msg = json.loads(e.read())["error"]["message"]
        except Exception:  # noqa: BLE001
            msg = e.reason
        if e.code == 401:
            # The API keeps its reasons to the gateway's log; the usual one for a newcomer is a
            # database token (aud "hoopwire") used for the admin API.
            msg += (" (the admin API takes a JWT whose aud is [admin] audience, default "
                    "\"hoopwire-admin\", or an API key with use = \"admin\"; the gateway's log "
                    "names the reason)")
        raise CliError(f"{e.code}: {msg}") from None
    except (urllib.error.URLError, OSError) as e:
        raise CliError(f"cannot reach the admin API at {base}: {getattr(e, 'reason', e)}") from None


def _read_token_file(path: str, origin: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as e:
        raise CliError(f"cannot read the token file {path} ({origin}): {e.strerror}") from None
    if not token:
        raise CliError(f"the token file {path} ({origin}) is empty")
    return token


def _token(args) -> str:
    """--token-file, then --token (with a warning), then HOOPWIRE_TOKEN, then
    HOOPWIRE_TOKEN_FILE: what is named on this command line wins over the environment."""
    if getattr(args, "token_file", None):
        return _read_token_file(args.token_file, "--token-file")
    if args.token:
        print("warning: --token puts your token where every local user can read it (the process "
              "list) and in your shell history; use --token-file PATH or HOOPWIRE_TOKEN",
              file=sys.stderr)
        return args.token
    if os.environ.get("HOOPWIRE_TOKEN"):
        return os.environ["HOOPWIRE_TOKEN"]
    if os.environ.get("HOOPWIRE_TOKEN_FILE"):
        return _read_token_file(os.environ["HOOPWIRE_TOKEN_FILE"], "HOOPWIRE_TOKEN_FILE")
    raise CliError("no token: pass --token-file PATH or set HOOPWIRE_TOKEN (or "
                   "HOOPWIRE_TOKEN_FILE)")


def _out(args, data) -> bool:
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return True
    return False


# -- approvals -----------------------------------------------------------------------------------

def _approvals_list(args) -> int:
    q = "?" + urllib.parse.urlencode({"status": args.status}) if args.status else ""
    data = _call(args, "GET", "/api/v1/approvals" + q)
    if _out(args, data):
        return 0
    rows = data["approvals"]
    if not rows:
        _emit("no approval requests" + (f" with status {args.status}" if args.status else ""))
        return 0
    for a in rows:
        _emit(f"{a['id']}  {a['status']:<9}  {_when(a['created_at'])}  {a['requester']:<16} "
              f"{a['connection']:<12} {a['rule']:<20} {a['statement'][:60]}")
    return 0


def _approvals_show(args) -> int:
    a = _call(args, "GET", f"/api/v1/approvals/{urllib.parse.quote(args.id)}")
    if _out(args, a):
        return 0
    for k in ("id", "status", "requester", "requester_issuer", "requester_groups", "connection",
              "session_id", "client_addr", "rule", "approvers", "statement", "created_at",
              "expires_at", "decided_by", "decided_by_issuer", "decided_at", "reason", "scope",
              "grant_until"):
        v = a.get(k)
        if k.endswith("_at") or k == "grant_until":
            v = _when(v)
        elif isinstance(v, list):
            v = ", ".join(v)
        _emit(f"{k:>17}: {v if v is not None else '-'}")
    return 0


def _decide(args, verb: str) -> int:
    body = {}
    if args.reason:
        body["reason"] = args.reason
    if getattr(args, "window", None):
        from hoopwire.config import parse_duration
        body["scope"] = "window"
        body["window_seconds"] = int(parse_duration(args.window))
    a = _call(args, "POST", f"/api/v1/approvals/{urllib.parse.quote(args.id)}/{verb}", body)
    if not _out(args, a):
        _emit(f"{a['id']} {a['status']} by {a['decided_by']}"
              + (f" until {_when(a['grant_until'])}" if a.get("grant_until") else ""))
    return 0


# -- sessions --------------------------------------------------------------------------------------

def _sessions_list(args) -> int:
    params = {k: v for k, v in (("identity", args.identity), ("connection", args.connection))
              if v}
    if args.issuer is not None:      # "" is meaningful: API keys
        params["issuer"] = args.issuer
    if args.since:
        from hoopwire.config import parse_duration
        try:
            params["since"] = str(time.time() - parse_duration(args.since))
        except ValueError:
            params["since"] = args.since
    q = "?" + urllib.parse.urlencode(params) if params else ""
    data = _call(args, "GET", "/api/v1/sessions" + q)
    if _out(args, data):
        return 0
    for s in data["sessions"]:
        _emit(f"{s['id']}  {_when(s['started_at'])}  {s['subject']:<16} {s['connection']:<12} "
              f"{s['statements']:>5} stmts  {s.get('close_reason') or 'open'}")
    if not data["sessions"]:
        _emit("no sessions")
    return 0


def _sessions_show(args) -> int:
    data = _call(args, "GET", f"/api/v1/sessions/{urllib.parse.quote(args.id)}")
    if _out(args, data):
        return 0
    s = data["session"]
    _emit(f"session {s['id']}: {s['subject']} ({', '.join(s.get('groups') or [])}) on "
          f"{s['connection']} from {s['client_addr']}, {_when(s['started_at'])} -> "
          f"{_when(s.get('ended_at'))} ({s.get('close_reason') or 'open'})")
    for st in data["statements"]:
        extra = f" error: {st['error']}" if st.get("error") else ""
        rows = f" rows={st['rows']}" if st.get("rows") is not None else ""
        _emit(f"  #{st['seq']:<4} {st['verdict']:<7} {st.get('duration_ms') or 0:>9.3f} ms"
              f"{rows} masked={st.get('masked', 0)}  {st['statement']}{extra}")
    return 0


def _sessions_replay(args) -> int:
    data = _call(args, "GET", f"/api/v1/sessions/{urllib.parse.quote(args.id)}/replay")
    if _out(args, data):
        return 0
    last = None
    for r in data["records"]:
        ts = r.get("started", r.get("ts"))
        if args.pace == "recorded" and last is not None and ts is not None:
            time.sleep(min(max(ts - last, 0.0), args.max_pause))
        if ts is not None:
            last = ts
        kind = r.get("type")
        if kind == "session.start":
            _emit(f"[{_when(r['ts'])}] {r['subject']} connected to {r['connection']} "
                  f"as {r.get('role')} from {r.get('client')}")
        elif kind == "statement":
            _emit(f"[{_when(ts)}] {r['verdict'].upper():<7} {r['statement']}")
            if r.get("error"):
                _emit(f"          error {r['error'].get('code')}: {r['error'].get('message')}")
            else:
                _emit(f"          {', '.join(r.get('tags') or [])}"
                      + (f" ({r['masked']} values masked)" if r.get("masked") else ""))
            for row in r.get("result") or []:
                _emit(f"          | {row}")
        elif kind == "session.end":
            _emit(f"[{_when(r['ts'])}] session ended: {r['reason']} after {r['statements']} "
                  "statement(s)")
        else:
            fields = {k: v for k, v in r.items()
                      if k not in ("type", "session", "ts", "gw", "seq", "prev", "hash")}
            _emit(f"[{_when(r['ts'])}] {kind} {json.dumps(fields, sort_keys=True)}")
    return 0


def _audit_verify(args) -> int:
    from hoopwire.audit import main_verify
    return main_verify(args.path)


# -- wiring ------------------------------------------------------------------------------------------

def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--admin", help="admin API base URL (env HOOPWIRE_ADMIN_URL; "
                                   "default http://127.0.0.1:9187)")
    p.add_argument("--token-file", metavar="PATH",
                   help="a file holding your token (env HOOPWIRE_TOKEN_FILE, or the token "
                        "itself in HOOPWIRE_TOKEN)")
    p.add_argument("--token", help="your token -- discouraged: visible in the process list and "
                                   "shell history (warns); use --token-file or HOOPWIRE_TOKEN")
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    p.add_argument("--timeout", type=float, default=10.0, help=argparse.SUPPRESS)


def _guard(fn):
    def run(args) -> int:
        try:
            return fn(args)
        except CliError as e:
            _emit(f"error: {e}", file=sys.stderr)
            return 1
    return run


def add_commands(sub) -> None:
    a = sub.add_parser("approvals", help="list, show and decide approval requests")
    asub = a.add_subparsers(dest="action", required=True)
    p = asub.add_parser("list", help="approval requests, newest first")
    p.add_argument("--status", choices=["pending", "approved", "denied", "expired", "cancelled",
                                        "abandoned"])
    _common(p)
    p.set_defaults(func=_guard(_approvals_list))
    p = asub.add_parser("show", help="one request")
    p.add_argument("id")
    _common(p)
    p.set_defaults(func=_guard(_approvals_show))
    for verb in ("approve", "deny"):
        p = asub.add_parser(verb, help=f"{verb} a pending request (as yourself: --token)")
        p.add_argument("id")
        p.add_argument("--reason")
        if verb == "approve":
            p.add_argument("--window", help="also let this identity pass this rule on this "
                                            "connection for a while, e.g. 15m")
        _common(p)
        p.set_defaults(func=_guard(lambda args, v=verb: _decide(args, v)))

    s = sub.add_parser("sessions", help="recorded sessions")
    ssub = s.add_subparsers(dest="action", required=True)
    p = ssub.add_parser("list", help="sessions, newest first")
    p.add_argument("--identity", help="the subject")
    p.add_argument("--issuer", help="... of this issuer (an identity is issuer and subject; "
                                    "\"\" for API keys)")
    p.add_argument("--connection")
    p.add_argument("--since", help="a duration back from now (e.g. 2h) or a unix time")
    _common(p)
    p.set_defaults(func=_guard(_sessions_list))
    p = ssub.add_parser("show", help="a session's statements with their verdicts")
    p.add_argument("id")
    _common(p)
    p.set_defaults(func=_guard(_sessions_show))
    p = ssub.add_parser("replay", help="the session as it happened, statement by statement")
    p.add_argument("id")
    p.add_argument("--pace", choices=["fast", "recorded"], default="fast")
    p.add_argument("--max-pause", type=float, default=5.0, help="longest pause at recorded pace")
    _common(p)
    p.set_defaults(func=_guard(_sessions_replay))

    au = sub.add_parser("audit", help="the audit log")
    ausub = au.add_subparsers(dest="action", required=True)
    p = ausub.add_parser("verify", help="check a log directory's hash chain (offline)")
    p.add_argument("path")
    p.set_defaults(func=_audit_verify)
