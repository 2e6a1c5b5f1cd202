"""`hoopwire check-config --connect`: what a valid configuration still needs from the world.

Protocol-neutral checks live here -- every JWKS source answers and parses into keys the issuer
can use, the approvals state store opens, the audit directory is writable -- and the report:
for each connection, each upstream role is logged in and inspected by its protocol's posture
module (hoopwire/pg/posture.py for PostgreSQL). A check that cannot run (a refused login, an
unreachable JWKS) is an error and always fails the run; a posture finding fails it when its kind
is in `[posture] fail_on` (every kind by default).

Nothing printed holds a secret: URIs are shown without credentials or query, passwords are never
read into a message, upstream errors are the server's own words.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from dataclasses import asdict, dataclass, field

from hoopwire.config import Config, IssuerConfig, StateConfig

__all__ = ["Check", "Report", "run_checks"]

STEP_TIMEOUT = 15.0     # seconds for one JWKS fetch or one state store open


@dataclass(frozen=True)
class Check:
    check: str          # upstream | jwks | state | audit
    target: str         # what was checked, safe to print
    ok: bool
    detail: str


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    findings: list = field(default_factory=list)       # protocol posture Findings
    fail_on: tuple[str, ...] = ()

    @property
    def failing(self) -> list:
        return [f for f in self.findings if f.kind in self.fail_on]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks) and not self.failing

    def lines(self) -> list[str]:
        out = []
        for c in self.checks:
            out.append(f"{c.check} {c.target}: {'ok' if c.ok else 'ERROR'} -- {c.detail}")
        for f in self.findings:
            verdict = "FAIL" if f.kind in self.fail_on else "warn"
            out.append(f"{verdict} {f.kind}: connection {f.connection}, role {f.user} on "
                       f"{f.database}: {f.detail}")
        errors = sum(not c.ok for c in self.checks)
        out.append(f"{errors} error(s), {len(self.findings)} finding(s), "
                   f"{len(self.failing)} failing ([posture] fail_on)")
        return out

    def as_json(self) -> dict:
        return {"ok": self.ok, "checks": [asdict(c) for c in self.checks],
                "findings": [dict(asdict(f), fail=f.kind in self.fail_on) for f in self.findings],
                "fail_on": list(self.fail_on)}


@dataclass(frozen=True)
class Finding:
    """One thing an upstream role can do that masking cannot stop (a protocol's posture module
    reports them; hoopwire/pg/posture.py lists the kinds)."""
    connection: str
    user: str               # the upstream role
    database: str
    kind: str               # one of hoopwire.config.POSTURE_FINDINGS
    detail: str


def roles_of(cfg) -> list[tuple[str, object]]:
    """(upstream user, Secret | None) of every role the connection logs in as, each user once."""
    out: dict[str, object] = {cfg.user: cfg.password}
    for r in cfg.roles:
        out.setdefault(r.user, r.password)
    return list(out.items())


async def run_checks(config: Config, protocols) -> Report:
    """Every check of `check-config --connect`; `protocols` is the registry
    (hoopwire.protocols), whose entries bring their posture module (or none yet)."""
    report = Report(fail_on=config.posture.fail_on)
    for c in config.connections:
        posture = protocols.get(c.protocol).posture
        if posture is None:
            report.checks.append(await check_reachable(c))
            continue
        database = posture.database_of(c)
        host, port = c.upstream
        for user, password in posture.roles_of(c):
            target = f"{c.name} ({user}@{host}:{port}/{database}, tls {c.upstream_tls})"
            try:
                found = await posture.check_role(c, user, password, database)
            except posture.PostureError as e:
                report.checks.append(Check("upstream", target, False, str(e)))
                continue
            except Exception as e:  # noqa: BLE001 -- a bug here must not hide the other checks
                report.checks.append(Check("upstream", target, False,
                                           f"the check failed: {type(e).__name__}"))
                continue
            report.checks.append(Check("upstream", target, True,
                                       f"logged in; {len(found)} finding(s)"))
            report.findings += found
    report.checks += await check_jwks(config.identity.issuers)
    if config.state is not None:
        report.checks.append(await check_state(config.state))
    if config.audit is not None:
        report.checks.append(check_audit_dir(config.audit.path))
    return report


async def check_reachable(c) -> Check:
    """A protocol without a posture check (http): the upstream takes a connection, TCP and TLS as
    the gateway would open it, and nothing is sent -- any request could do something, which is
    why /readyz probes it the same way. Reporting "no posture check" as a check that could not
    run made every config with an HTTP connection exit 2, so no CI gate could ever pass it."""
    from hoopwire.core.tls import upstream_ssl_context
    host, port = c.upstream
    scheme = getattr(c, "upstream_scheme", None) or "tcp"
    https = scheme == "https"
    target = f"{c.name} ({scheme}://{host}:{port}, tls {c.upstream_tls if https else 'off'})"
    try:
        ctx = upstream_ssl_context(c.upstream_tls, c.upstream_ca) if https else None
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ctx,
                                    server_hostname=host if ctx is not None else None),
            c.connect_timeout)
    except asyncio.TimeoutError:
        return Check("upstream", target, False, f"no connection within {c.connect_timeout:g}s")
    except OSError as e:         # refused, unreachable, and ssl.SSLError (a bad certificate)
        return Check("upstream", target, False, f"cannot connect: {e}")
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return Check("upstream", target, True,
                 f"connected; no posture check for protocol {c.protocol} (no upstream role "
                 "to read)")


async def check_jwks(issuers: tuple[IssuerConfig, ...]) -> list[Check]:
    """Each jwks_uri once: fetched, parsed, and holding a key for one of its issuers' algorithms."""
    from hoopwire.identity.jwks import JwksCache, JwksFetchError, _display, key_fits
    by_uri: dict[str, list[IssuerConfig]] = {}
    for iss in issuers:
        if iss.jwks_uri is not None:
            by_uri.setdefault(iss.jwks_uri, []).append(iss)
    out = []
    cache = JwksCache([i for group in by_uri.values() for i in group], http_timeout=STEP_TIMEOUT)
    try:
        for uri, group in by_uri.items():
            shown = _display(uri)
            try:
                keys = await asyncio.wait_for(cache._load(uri), STEP_TIMEOUT + 1)
            except JwksFetchError as e:
                out.append(Check("jwks", shown, False, str(e)))
                continue
            except asyncio.TimeoutError:
                out.append(Check("jwks", shown, False, f"no answer within {STEP_TIMEOUT:g}s"))
                continue
            algs = sorted({a for i in group for a in i.algorithms if not a.startswith("HS")})
            usable = [k for k in keys if any(key_fits(k, a) for a in algs)]
            if not usable:
                out.append(Check("jwks", shown, False, f"{len(keys)} key(s), none usable for "
                                                       f"{', '.join(algs)}"))
            else:
                out.append(Check("jwks", shown, True, f"{len(usable)} key(s) usable for "
                                                      f"{', '.join(algs)}"))
    finally:
        await cache.close()
    return out


async def check_state(cfg: StateConfig) -> Check:
    from hoopwire.state import StoreError, open_store
    # the URL without what could be a password: the store validates that none is in it, but
    # the scheme and path are all an operator needs to know which store it is
    shown = cfg.url.split("?", 1)[0]
    if "@" in shown:
        scheme, rest = shown.split("://", 1)
        shown = f"{scheme}://{rest.split('@', 1)[1]}"
    try:
        store = await asyncio.wait_for(open_store(cfg), STEP_TIMEOUT)
    except asyncio.TimeoutError:
        return Check("state", shown, False, f"did not open within {STEP_TIMEOUT:g}s")
    except (StoreError, OSError) as e:
        return Check("state", shown, False, str(e))
    await store.close()
    return Check("state", shown, True, "opens (approvals, grants and the session index)")


def check_audit_dir(path: str) -> Check:
    """The directory exists and takes a file, or its nearest existing parent lets the gateway
    create it (serve does, mode 0700). Writes nothing but a temporary file, removed at once."""
    if os.path.isdir(path):
        try:
            with tempfile.NamedTemporaryFile(dir=path, prefix=".hoopwire-check-"):
                pass
        except OSError as e:
            return Check("audit", path, False, f"not writable: {e.strerror}")
        return Check("audit", path, True, "writable")
    if os.path.exists(path):
        return Check("audit", path, False, "exists and is not a directory")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if os.path.isdir(parent) and os.access(parent, os.W_OK | os.X_OK):
        return Check("audit", path, True, f"does not exist yet; serve creates it in {parent}")
    return Check("audit", path, False, f"does not exist and {parent} is not writable")
