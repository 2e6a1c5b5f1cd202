"""The configuration file: one TOML document, validated on load.

The keys are the user-facing contract described in DESIGN.md. Validation collects every problem
(key path + reason) instead of stopping at the first, so `hoopwire check-config` can print them
all. Unknown keys are errors: a typo must never silently turn a guardrail off.

Secrets (upstream passwords, HS shared secrets) are read from the environment or from files named
in the config; the values live in `Secret` objects whose repr never shows them.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any, Callable

from hoopwire.core.tls import is_loopback

__all__ = [
    "ConfigError", "Secret", "Config", "AdminConfig", "LogConfig", "IdentityConfig",
    "IssuerConfig", "ApiKeyConfig", "ConnectionConfig", "RoleConfig", "GuardrailConfig",
    "MaskConfig", "DetectorConfig", "PostureConfig", "POSTURE_FINDINGS", "load_config", "parse_config", "parse_duration", "parse_size", "parse_listen",
]


class ConfigError(Exception):
    """Every problem found in one configuration, each as (key path, reason)."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{k}: {r}" for k, r in problems))

    def lines(self) -> list[str]:
        return [f"{key}: {reason}" for key, reason in self.problems]


class Secret:
    """A secret value that never prints itself."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str):
        self._value = value
        self.source = source  # "env:NAME" or "file:/path" -- safe to log

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret(<{self.source}>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class AdminConfig:
    listen: tuple[str, int] | None = None
    admin_groups: tuple[str, ...] = ()
    # The `aud` a JWT must carry to be accepted by the admin API, in place of its issuer's
    # `audience`: a token minted for the data path (a database password) is then no admin
    # bearer token, and the other way round.
    audience: str = "hoopwire-admin"
    # /healthz, /readyz and /metrics on a listener of their own (plain HTTP, no API): the
    # admin API can then take TLS and a firewall while kubelets and Prometheus keep theirs
    probes_listen: tuple[str, int] | None = None
    tls_cert: str | None = None            # the admin API (listen) over HTTPS
    tls_key: str | None = None
    # seconds a stopping gateway waits for sessions to end before it cancels the statements
    # still running upstream and ends every session with FATAL 57P01
    shutdown_grace: float = 5.0
    # seconds between /readyz's login attempts per connection (hoopwire.readiness)
    upstream_check_interval: float = 10.0


@dataclass(frozen=True)
class AuditConfig:
    path: str                              # directory of the hash-chained JSON-lines segments
    retention_days: float | None = None    # segments (and index rows) older than this go
    max_bytes: int | None = None           # ... and the oldest go while the log is larger
    segment_bytes: int = 64 * 1024 * 1024  # a segment is closed and a new one started past this
    on_write_failure: str = "fail-closed"  # fail-closed: refuse new statements | fail-open
    statement_literals: str = "mask"       # mask: literals in recorded statements become ?
    flush_interval: float = 1.0            # seconds between batched writes
    index_statements: bool = False         # statements in the state store too (else: read
                                           # from the log by `sessions show`)


@dataclass(frozen=True)
class StateConfig:
    url: str                               # sqlite:///path | postgresql://user@host:port/db
    password: "Secret | None" = None       # for postgresql:// (password_env / password_file)
    poll_interval: float = 0.25            # how often decisions taken elsewhere are looked for


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    secret: "Secret | None" = None         # HMAC-SHA256 key of the signature header
    format: str = "json"                   # json | slack
    events: tuple[str, ...] = ("approval.created", "approval.decided", "approval.expired")
    timeout: float = 5.0
    max_attempts: int = 6


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    format: str = "text"  # text | json


@dataclass(frozen=True)
class IssuerConfig:
    issuer: str
    audience: tuple[str, ...]
    jwks_uri: str | None
    groups_claim: str = "groups"
    subject_claim: str = "sub"
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    shared_secret: Secret | None = None  # HS* only, and only when this is set
    leeway: float = 30.0
    jwks_cache_ttl: float = 300.0
    jwks_refetch_interval: float = 30.0  # at most one refetch on an unknown kid per interval
    # The groups this issuer may grant; a token's other groups are dropped. None: all of them.
    allowed_groups: tuple[str, ...] | None = None
    # Longest exp - iat accepted (seconds); None: no limit. Set, a token must carry iat.
    max_token_lifetime: float | None = None


@dataclass(frozen=True)
class ApiKeyConfig:
    name: str
    sha256: bytes
    groups: tuple[str, ...] = ()
    use: str = "database"   # database: the data path only | admin: the admin API only


@dataclass(frozen=True)
class IdentityConfig:
    issuers: tuple[IssuerConfig, ...] = ()
    api_keys: tuple[ApiKeyConfig, ...] = ()
    # end a JWT's sessions when the token expires (default: a session outlives its token;
    # max_token_lifetime bounds how long a token can open sessions)
    end_sessions_at_expiry: bool = False


@dataclass(frozen=True)
class RoleConfig:
    name: str  # what the client puts in its startup `user`
    user: str  # upstream user
    password: Secret | None
    allow_groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class GuardrailConfig:
    name: str
    patterns: tuple[str, ...] = ()
    pack: str | None = None
    action: str = "block"  # block | log | approve
    message: str = ""
    groups: tuple[str, ...] = ()
    except_groups: tuple[str, ...] = ()
    scan_literals: bool = False
    approvers: tuple[str, ...] = ()
    timeout: float = 900.0
    reason_required: bool = False
    # statement kinds this rule lets through (hoopwire.pg.statements); None: a pattern rule
    allow_kinds: tuple[str, ...] | None = None


@dataclass(frozen=True)
class MaskConfig:
    columns: tuple[str, ...] = ()      # schema.table.column globs masked whatever they hold
    paths: tuple[str, ...] = ()        # http: JSON key paths ($.users[*].email, **.password)
    detectors: tuple[str, ...] = ()    # built-in or [[connection.detector]] names
    strategy: str = "redact"           # redact | partial | hash | null | format
    keep: int = 4                      # partial: trailing characters kept


@dataclass(frozen=True)
class DetectorConfig:
    name: str
    pattern: str                       # Hyperscan regex
    validator: str | None = None       # luhn | mod97 | None


@dataclass(frozen=True)
class ConnectionConfig:
    name: str
    protocol: str
    listen: tuple[str, int]
    upstream: tuple[str, int]
    database: str | None
    user: str
    password: Secret | None
    upstream_tls: str = "disable"  # disable | require | verify-full (parsed default: verify-full
                                   # unless the upstream is on a loopback address)
    upstream_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    require_tls: bool = False       # parsed default: true when tls_cert is set
    allow_groups: tuple[str, ...] = ()
    allow_client_database: bool = False
    roles: tuple[RoleConfig, ...] = ()
    guardrails: tuple[GuardrailConfig, ...] = ()
    masks: tuple[MaskConfig, ...] = ()
    detectors: tuple[DetectorConfig, ...] = ()
    unresolved_columns: str = "mask"    # detect | mask | block (columns lineage cannot place)
    binary_copy: str = "mask"           # mask (by column rules) | refuse
    masked_writes: str = "refuse"       # refuse | allow: storing a masked value (INSERT ... SELECT)
    mask_hash_key: Secret | None = None # the HMAC key of the hash strategy
    max_connections: int = 1000
    max_handshakes: int = 256       # connections not yet sessions (TLS, startup, token, login)
    max_message_size: int = 64 * 1024 * 1024
    handshake_timeout: float = 15.0
    idle_timeout: float = 0.0  # 0: never
    # a client that stops in the middle of a message (a header, part of a body) for this long
    # loses its session: MySQL's own net_read_timeout for the same wait is 30 s
    read_timeout: float = 30.0
    connect_timeout: float = 10.0
    record_results: bool = False          # keep what the client saw (after masking) for replay
    record_results_max_bytes: int = 1024 * 1024   # per session
    # mysql only: where the token may cross without TLS ("never", or "loopback": a client on a
    # loopback address), and whether LOAD DATA LOCAL INFILE may send the client's files up
    cleartext_without_tls: str = "never"
    load_data_local: bool = False
    # http only (hoopwire/http): the base URL the [[connection]] `upstream` named, split; the
    # stored credential's header; the client's identity header; bounds of a request
    upstream_url: str | None = None
    upstream_scheme: str = "http"         # http | https
    upstream_path: str = ""               # base path prefix ("" if none), no trailing "/"
    credential_header: str = "Authorization"
    credential_format: str = "Bearer {secret}"
    identity_header: str = "Authorization"    # or Proxy-Authorization
    host_header: str = "upstream"         # upstream | client
    max_request_line: int = 8192
    max_header_bytes: int = 65536
    max_headers: int = 100
    inspect_body_bytes: int = 65536
    mask_body_bytes: int = 8 * 1024 * 1024
    upstream_max_connections: int = 100
    request_timeout: float = 30.0         # head + body of one request (slowloris) -> 408
    upstream_timeout: float = 60.0        # request sent -> first response byte -> 504
    mask_timeout: float = 2.0             # masking one gathered JSON response -> 504


# What `hoopwire check-config --connect` can find about an upstream role (hoopwire/pg/posture.py
# says what each one means). They live here so [posture] fail_on is checked against them.
POSTURE_FINDINGS = (
    "raw_masked_read", "masked_stats_read", "temp", "create_database", "create_schema",
    "superuser", "createrole", "bypassrls", "read_server_files", "write_server_files",
    "execute_server_program", "read_all_stats", "set_role",
    "grant_option",     # MySQL/MariaDB: WITH GRANT OPTION (hoopwire/mysql/posture.py)
)


@dataclass(frozen=True)
class PostureConfig:
    # The findings that make `check-config --connect` exit 1. Every one by default: the check is
    # run on purpose, and one wired into CI that exits 0 beside a superuser gateway role would
    # never be looked at again. An operator who accepts one (a role that needs TEMP) lists the
    # rest; `[]` reports without failing.
    fail_on: tuple[str, ...] = POSTURE_FINDINGS


@dataclass(frozen=True)
class Config:
    path: str | None
    admin: AdminConfig
    log: LogConfig
    identity: IdentityConfig
    connections: tuple[ConnectionConfig, ...]
    audit: AuditConfig | None = None
    state: StateConfig | None = None
    webhooks: tuple[WebhookConfig, ...] = ()
    posture: PostureConfig = PostureConfig()
    # (key path, reason): valid but worth a loud line from check-config and serve
    warnings: tuple[tuple[str, str], ...] = ()
    raw: dict = field(repr=False, compare=False, default_factory=dict)

    @property
    def has_approvals(self) -> bool:
        return any(g.action == "approve" for c in self.connections for g in c.guardrails)


# ---------------------------------------------------------------------------------------------
# scalar parsers

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_SIZE = re.compile(r"^\s*(\d+)\s*(b|kb|kib|mb|mib|gb|gib|k|m|g)?\s*$", re.I)
_SIZE_UNITS = {None: 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024**2, "mb": 1000**2,
               "mib": 1024**2, "g": 1024**3, "gb": 1000**3, "gib": 1024**3}


def parse_duration(value: Any) -> float:
    """'30s', '15m', '2h', '1d', '250ms' or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as \"30s\", \"15m\" or a number of seconds")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    raise ValueError(f"expected a duration such as \"30s\", \"15m\" or a number of seconds, got {value!r}")


def parse_size(value: Any) -> int:
    """'16MiB', '64k' or a number of bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError("must be positive")
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            n = int(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower() or None]
            if n > 0:
                return n
    raise ValueError(f"expected a size such as \"16MiB\" or a number of bytes, got {value!r}")


def parse_listen(value: Any, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """'host:port', '[v6]:port' or ':port'."""
    if not isinstance(value, str) or not value:
        raise ValueError("expected \"host:port\"")
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
        if not sep:
            raise ValueError(f"expected \"[ipv6]:port\", got {value!r}")
        ipaddress.IPv6Address(host)
    else:
        host, sep, port = value.rpartition(":")
        if not sep:
            raise ValueError(f"expected \"host:port\", got {value!r}")
        host = host or default_host
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"bad port in {value!r}")
    return host, int(port)


# ---------------------------------------------------------------------------------------------
# the validating reader

class _Problems(list):
    """The problems of one parse, and beside them its warnings."""

    def __init__(self) -> None:
        super().__init__()
        self.warnings: list[tuple[str, str]] = []


class _Reader:
    """Walks one table, records problems, and remembers which keys were used."""

    def __init__(self, problems: list[tuple[str, str]], table: dict, path: str):
        self.problems = problems
        # every reader of one parse shares its problems list, which carries the warnings too
        self.warnings: list[tuple[str, str]] = getattr(problems, "warnings", [])
        self.table = table if isinstance(table, dict) else {}
        self.path = path
        self.used: set[str] = set()
        if not isinstance(table, dict):
            self.error("", "expected a table")

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def warn(self, name: str, reason: str) -> None:
        self.warnings.append((self.key(name), reason))

    def error(self, name: str, reason: str) -> None:
        self.problems.append((self.key(name) if name else self.path or "<root>", reason))

    def get(self, name: str, kind: type | tuple, default: Any = None, required: bool = False,
            convert: Callable[[Any], Any] | None = None, choices: tuple | None = None) -> Any:
        self.used.add(name)
        if _key_listener is not None:
            _key_listener(self.path, name, kind=kind, default=default, required=required,
                          convert=convert, choices=choices)
        if name not in self.table:
            if required:
                self.error(name, "is required")
            return default
        value = self.table[name]
        if kind is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            self.error(name, f"expected {_tomlname(names)}, got {type(value).__name__}")
            return default
        if choices is not None and value not in choices:
            self.error(name, f"must be one of {', '.join(map(str, choices))}; got {value!r}")
            return default
        if convert is not None:
            try:
                return convert(value)
            except (ValueError, TypeError) as e:
                self.error(name, str(e))
                return default
        return value

    def strings(self, name: str, required: bool = False, default: tuple = ()) -> tuple[str, ...]:
        value = self.get(name, (list, str), None, required)
        if value is None:
            return default
        if isinstance(value, str):
            value = [value]
        bad = [v for v in value if not isinstance(v, str) or not v]
        if bad:
            self.error(name, "expected a list of non-empty strings")
            return default
        return tuple(value)

    def tables(self, name: str) -> list[tuple[dict, str]]:
        self.used.add(name)
        if _key_listener is not None:
            _key_listener(self.path, name, table=True)
        value = self.table.get(name)
        if value is None:
            return []
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            self.error(name, "expected an array of tables ([[" + self.key(name) + "]])")
            return []
        return [(v, f"{self.key(name)}[{i}]") for i, v in enumerate(value)]

    def secret(self, base: str, required: bool = False) -> Secret | None:
        """`<base>_env` or `<base>_file`, one of them."""
        env = self.get(f"{base}_env", str)
        path = self.get(f"{base}_file", str)
        if env and path:
            self.error(f"{base}_env", f"give {base}_env or {base}_file, not both")
            return None
        if env:
            value = os.environ.get(env)
            if value is None:
                self.error(f"{base}_env", f"environment variable {env} is not set")
                return None
            return Secret(value, f"env:{env}")
        if path:
            try:
                with open(path, encoding="utf-8") as f:
                    value = f.read().rstrip("\r\n")
            except OSError as e:
                self.error(f"{base}_file", f"cannot read {path}: {e.strerror}")
                return None
            return Secret(value, f"file:{path}")
        if base in self.table:
            self.used.add(base)
            self.error(base, f"secrets are never written in the config: use {base}_env or {base}_file")
            return None
        if required:
            self.error(f"{base}_env", f"is required (or {base}_file)")
        return None

    def finish(self) -> None:
        for k in self.table:
            if k not in self.used:
                self.error(k, "unknown key" + _did_you_mean(k, self.path, self.used))


# While hoopwire.configschema walks its probe document, every key a _Reader looks up is reported
# here: the JSON Schema is made from the same calls that validate, so the two cannot drift.
_key_listener: Callable[..., None] | None = None


def _did_you_mean(key: str, path: str, used: set[str]) -> str:
    """' (did you mean "listen"?)' for a key one typo away from a known one at that level."""
    known = set(used)
    if _key_listener is None:      # not while the schema itself is being made
        from hoopwire.configschema import keys_at
        known |= keys_at(path)
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    if close:
        return f' (did you mean "{close[0]}"?)'
    if _key_listener is None:
        # A key put in the wrong table (record_results under [audit] rather than
        # [[connection]]) is no typo: name the tables where it belongs.
        from hoopwire.configschema import tables_with
        here = re.sub(r"\[\d+\]", "", path)
        elsewhere = [t for t in tables_with(key) if t.strip("[]") != here]
        if elsewhere:
            return f" (it is a key of {' and '.join(elsewhere)})"
    return ""


def _tomlname(name: str) -> str:
    return {"str": "a string", "int": "an integer", "bool": "true or false", "list": "an array",
            "dict": "a table", "float": "a number"}.get(name, name)


_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,63}$")
_TLS_MODES = ("disable", "require", "verify-full")
_PROTOCOLS = ("postgres", "mysql", "http")
_IMPLEMENTED_PROTOCOLS = ("postgres", "mysql", "http")
_ACTIONS = ("block", "log", "approve")
_STRATEGIES = ("redact", "partial", "hash", "null", "format")
_ALLOWED_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
                 "EdDSA", "HS256", "HS384", "HS512")


def _issuer(r: _Reader) -> IssuerConfig | None:
    issuer = r.get("issuer", str, required=True)
    if issuer == "":
        # "" is how the state store marks API-key identities (no issuer): never a JWT issuer
        r.error("issuer", "must not be empty")
        issuer = None
    audience = r.strings("audience", required=True)
    jwks_uri = r.get("jwks_uri", str)
    if jwks_uri is not None and not jwks_uri.startswith(("file://", "https://", "http://")):
        r.error("jwks_uri", "must be a file://, https:// or http:// URI")
    groups_claim = r.get("groups_claim", str, "groups")
    subject_claim = r.get("subject_claim", str, "sub")
    algorithms = r.strings("algorithms", default=("RS256", "ES256"))
    for alg in algorithms:
        if alg.lower() == "none":
            r.error("algorithms", "'none' is never accepted")
        elif alg not in _ALLOWED_ALGS:
            r.error("algorithms", f"unsupported algorithm {alg!r}")
    shared = r.secret("shared_secret")
    has_hs = any(a.startswith("HS") for a in algorithms)
    if has_hs and shared is None:
        r.error("algorithms", "HS* algorithms need shared_secret_env or shared_secret_file")
    if shared is not None and not has_hs:
        r.error("shared_secret_env", "a shared secret is only used with HS* algorithms")
    if shared is not None and len(shared.get()) < 32:
        r.error("shared_secret_env", "an HS shared secret must be at least 32 bytes")
    if jwks_uri is None and not has_hs:
        r.error("jwks_uri", "is required unless only HS* algorithms are used")
    leeway = r.get("leeway", (int, str, float), 30.0, convert=parse_duration)
    ttl = r.get("jwks_cache_ttl", (int, str, float), 300.0, convert=parse_duration)
    refetch = r.get("jwks_refetch_interval", (int, str, float), 30.0, convert=parse_duration)
    allowed = None
    if "allowed_groups" in r.table:
        # an empty list is allowed and means "this issuer grants no group at all"
        raw = r.get("allowed_groups", list, None)
        if raw is not None:
            if all(isinstance(g, str) and g for g in raw):
                allowed = tuple(raw)
            else:
                r.error("allowed_groups", "expected a list of non-empty strings")
    lifetime = r.get("max_token_lifetime", (int, str, float), None, convert=parse_duration)
    if lifetime is not None and lifetime <= 0:
        r.error("max_token_lifetime", "must be positive (leave it out for no limit)")
        lifetime = None
    r.finish()
    if issuer is None or not audience:
        return None
    return IssuerConfig(issuer=issuer, audience=audience, jwks_uri=jwks_uri,
                        groups_claim=groups_claim, subject_claim=subject_claim,
                        algorithms=algorithms, shared_secret=shared, leeway=leeway,
                        jwks_cache_ttl=ttl, jwks_refetch_interval=refetch,
                        allowed_groups=allowed, max_token_lifetime=lifetime)


def _api_key(r: _Reader) -> ApiKeyConfig | None:
    name = r.get("name", str, required=True)
    digest = r.get("sha256", str, required=True)
    groups = r.strings("groups")
    use = r.get("use", str, "database", choices=("database", "admin"))
    if "key" in r.table:
        r.used.add("key")
        r.error("key", "store the key's sha256 (hoopwire hash-key), never the key itself")
    raw = None
    if digest is not None:
        try:
            raw = bytes.fromhex(digest)
            if len(raw) != 32:
                raise ValueError
        except ValueError:
            r.error("sha256", "expected 64 hex digits (the sha256 of the key)")
            raw = None
    r.finish()
    if name is None or raw is None:
        return None
    return ApiKeyConfig(name=name, sha256=raw, groups=groups, use=use)


def _guardrail(r: _Reader) -> GuardrailConfig | None:
    name = r.get("name", str)
    pack = r.get("pack", str)
    patterns = r.strings("patterns")
    action = r.get("action", str, "block", choices=_ACTIONS)
    message = r.get("message", str, "")
    groups = r.strings("groups")
    except_groups = r.strings("except_groups")
    scan_literals = r.get("scan_literals", bool, False)
    approvers = r.strings("approvers")
    timeout = r.get("timeout", (int, str, float), 900.0, convert=parse_duration)
    reason_required = r.get("reason_required", bool, False)
    allow_kinds = None
    if "allow_kinds" in r.table:
        # the kind names are checked where the engine is built, against the protocol's list
        allow_kinds = r.strings("allow_kinds", default=None)
        if allow_kinds == ():
            r.error("allow_kinds", "name at least one statement kind (an empty list refuses "
                                   "every statement)")
        elif allow_kinds is None:
            allow_kinds = ()  # not a list of names: reported
        if pack is not None or patterns:
            r.error("allow_kinds", "a rule is either allow_kinds, a built-in pack or its own "
                                   "patterns, one of them")
        if scan_literals:
            r.error("scan_literals", "an allow_kinds rule has no patterns to scan literals with")
    if groups and except_groups:
        r.error("except_groups", "give groups or except_groups, not both")
    if pack is None and not patterns and allow_kinds is None:
        r.error("patterns", "is required (or pack = \"<name>\" for a built-in pack, or "
                            "allow_kinds = [...])")
    if pack is not None and patterns:
        r.error("patterns", "a rule is either a built-in pack or its own patterns, not both")
    if name is None:
        if pack is None:
            r.error("name", "is required")
        name = pack
    if action == "approve" and not approvers:
        r.error("approvers", "an approve rule needs approvers (the groups whose members decide)")
    if action != "approve" and approvers:
        r.error("approvers", "only approve rules have approvers")
    r.finish()
    if name is None:
        return None
    return GuardrailConfig(name=name, patterns=patterns, pack=pack, action=action, message=message,
                           groups=groups, except_groups=except_groups, scan_literals=scan_literals,
                           approvers=approvers, timeout=timeout, reason_required=reason_required,
                           allow_kinds=allow_kinds)


def _mask(r: _Reader, protocol: str | None = None) -> MaskConfig:
    columns = r.strings("columns")
    paths = r.strings("paths")
    if protocol == "http":
        if columns:
            r.error("columns", "an http connection masks JSON key paths: use paths = [...]")
        for path in paths:
            why = _json_path_problem(path)
            if why is not None:
                r.error("paths", f"{path!r}: {why}")
    elif paths:
        r.error("paths", "applies to protocol = \"http\" connections only (JSON key paths)")
    detectors = r.strings("detectors")
    strategy = r.get("strategy", str, "redact", choices=_STRATEGIES)
    keep = r.get("keep", int, 4)
    if keep is not None and not 0 <= keep <= 64:
        r.error("keep", "must be between 0 and 64")
    if not columns and not paths and not detectors:
        r.error("columns", "a mask rule needs columns (http: paths) or detectors")
    for c in columns:
        # a glob over "schema.table.column"; `*` spans dots, so "*.password" is any table's
        if "." not in c or c.count(".") > 2:
            r.error("columns", f"{c!r}: expected schema.table.column (globs allowed: *.password)")
    r.finish()
    return MaskConfig(columns=columns, paths=paths, detectors=detectors, strategy=strategy,
                      keep=keep)


def _json_path_problem(path: str) -> str | None:
    """Why `path` is not a JSON key path this gateway reads ($.a.b, $.users[*].email,
    $["odd key"], $..password, **.password), or None: the masker's own reader
    (hoopwire.masking.jsonpath), imported here because that package imports this module."""
    from hoopwire.masking.jsonpath import compile_path
    try:
        compile_path(path)
    except ValueError as e:
        return str(e)
    return None


def _detector(r: _Reader) -> DetectorConfig | None:
    name = r.get("name", str, required=True)
    pattern = r.get("pattern", str, required=True)
    validator = r.get("validator", str, None, choices=("luhn", "mod97"))
    if name is not None and not re.match(r"^[A-Z][A-Z0-9_]{0,63}$", name):
        r.error("name", "detector names are UPPER_CASE (letters, digits, _)")
    r.finish()
    if name is None or pattern is None:
        return None
    return DetectorConfig(name=name, pattern=pattern, validator=validator)


def _role(r: _Reader) -> RoleConfig | None:
    name = r.get("name", str, required=True)
    user = r.get("user", str, required=True)
    password = r.secret("password")
    allow_groups = r.strings("allow_groups")
    r.finish()
    if name is None or user is None:
        return None
    return RoleConfig(name=name, user=user, password=password, allow_groups=allow_groups)


def _connection(r: _Reader) -> ConnectionConfig | None:
    name = r.get("name", str, required=True)
    if name is not None and not _NAME.match(name):
        r.error("name", "use letters, digits and . _ @ - (at most 63)")
    protocol = r.get("protocol", str, "postgres", choices=_PROTOCOLS)
    if protocol not in _IMPLEMENTED_PROTOCOLS:
        r.error("protocol", f"{protocol!r} is not supported by this version yet "
                            f"({' and '.join(_IMPLEMENTED_PROTOCOLS)} are)")
    listen = r.get("listen", str, required=True, convert=parse_listen)
    http = protocol == "http"
    upstream_url = None
    upstream_scheme, upstream_path = "http", ""
    if http:
        parsed = r.get("upstream", str, required=True, convert=parse_upstream_url)
        upstream = None
        if parsed is not None:
            upstream_scheme, host, port, upstream_path = parsed
            upstream = (host, port)
            upstream_url = r.table["upstream"]
    else:
        upstream = r.get("upstream", str, required=True, convert=parse_listen)
    database = r.get("database", str)
    user = r.get("user", str, "" if http else None, required=not http)
    password = r.secret("password")
    # Secure by default: a gateway's upstream is usually another host, and what crosses that
    # hop is every statement and every (unmasked) result. Loopback is the one place where TLS
    # buys nothing, so an upstream on 127.0.0.0/8, ::1 or localhost keeps "disable".
    loopback = upstream is not None and is_loopback(upstream[0])
    tls_default = "disable" if loopback else "verify-full"
    if http:
        # the URL's scheme says whether the hop is TLS; upstream_tls says how it is checked
        tls_default = "verify-full" if upstream_scheme == "https" else "disable"
    upstream_tls = r.get("upstream_tls", str, tls_default, choices=_TLS_MODES)
    if http and upstream is not None and (upstream_tls == "disable") != (upstream_scheme == "http"):
        r.error("upstream_tls", f"{upstream_tls!r} does not fit an {upstream_scheme}:// upstream "
                                "(http:// is disable; https:// is require or verify-full)")
    if upstream_tls == "disable" and upstream is not None and not loopback:
        r.warn("upstream_tls", f"\"disable\" sends statements and results to {upstream[0]} in "
                               "clear text: use verify-full (or require) outside a private network")
    upstream_ca = r.get("upstream_ca", str)
    if upstream_ca is not None and not os.path.isfile(upstream_ca):
        r.error("upstream_ca", f"no such file: {upstream_ca}")
    if upstream_tls == "verify-full" and upstream_ca is None:
        pass  # the system trust store is used
    tls_cert = r.get("tls_cert", str)
    tls_key = r.get("tls_key", str)
    for k, v in (("tls_cert", tls_cert), ("tls_key", tls_key)):
        if v is not None and not os.path.isfile(v):
            r.error(k, f"no such file: {v}")
    if (tls_cert is None) != (tls_key is None):
        r.error("tls_key" if tls_key is None else "tls_cert", "tls_cert and tls_key go together")
    # a listener given a certificate is one meant to be reached over TLS: plaintext there
    # (sslmode=disable, a driver that never sends SSLRequest) is an opt-in, require_tls = false
    require_tls = r.get("require_tls", bool, tls_cert is not None)
    if require_tls and tls_cert is None:
        r.error("require_tls", "needs tls_cert and tls_key")
    allow_groups = r.strings("allow_groups")
    allow_client_database = r.get("allow_client_database", bool, False)
    if database is None and not allow_client_database and not http:
        r.error("database", "is required unless allow_client_database = true")
    max_connections = r.get("max_connections", int, 1000)
    if max_connections is not None and max_connections < 1:
        r.error("max_connections", "must be at least 1")
    max_handshakes = r.get("max_handshakes", int, 256)
    if max_handshakes is not None and max_handshakes < 1:
        r.error("max_handshakes", "must be at least 1")
    max_message_size = r.get("max_message_size", (int, str), 64 * 1024 * 1024, convert=parse_size)
    if max_message_size is not None and max_message_size < 1024:
        r.error("max_message_size", "must be at least 1KiB")
    handshake_timeout = r.get("handshake_timeout", (int, str, float), 15.0, convert=parse_duration)
    idle_timeout = r.get("idle_timeout", (int, str, float), 0.0, convert=parse_duration)
    read_timeout = r.get("read_timeout", (int, str, float), 30.0, convert=parse_duration)
    if read_timeout is not None and read_timeout <= 0:
        r.error("read_timeout", "must be more than 0 (a half-sent message would hold its "
                                "session for ever)")
    connect_timeout = r.get("connect_timeout", (int, str, float), 10.0, convert=parse_duration)
    record_results = r.get("record_results", bool, False)
    record_results_max_bytes = r.get("record_results_max_bytes", (int, str), 1024 * 1024,
                                     convert=parse_size)

    roles = []
    for t, p in r.tables("role"):
        role = _role(_Reader(r.problems, t, p))
        if role is not None:
            roles.append(role)
    seen = set()
    for i, role in enumerate(roles):
        if role.name in seen:
            r.problems.append((f"{r.key('role')}[{i}].name", f"duplicate role name {role.name!r}"))
        seen.add(role.name)
    guardrails = []
    for t, p in r.tables("guardrail"):
        g = _guardrail(_Reader(r.problems, t, p))
        if g is not None:
            guardrails.append(g)
    masks = [_mask(_Reader(r.problems, t, p), protocol) for t, p in r.tables("mask")]
    detectors = [d for d in (_detector(_Reader(r.problems, t, p)) for t, p in r.tables("detector"))
                 if d is not None]
    unresolved = r.get("unresolved_columns", str, "mask", choices=("detect", "mask", "block"))
    binary_copy = r.get("binary_copy", str, "mask", choices=("mask", "refuse"))
    for key, owner in _ONLY_FOR.items():
        if protocol is not None and protocol != owner and key in r.table:
            r.error(key, f"applies to protocol = \"{owner}\" connections only")
    # mysql: the token (a cleartext password) without TLS only from loopback clients, if at all
    cleartext_without_tls = r.get("cleartext_without_tls", str, "never",
                                  choices=("never", "loopback"))
    load_data_local = r.get("load_data_local", bool, False)
    masked_writes = r.get("masked_writes", str, "refuse", choices=("refuse", "allow"))
    mask_hash_key = r.secret("mask_hash_key")
    # read on every connection (the schema's probe sees them; a stray one is reported by
    # _ONLY_FOR above), kept on http ones
    http_keys = _http_keys(r)
    if not http:
        http_keys = {}
    if any(m.strategy == "hash" for m in masks) and mask_hash_key is None:
        r.error("mask_hash_key_env", "the hash strategy needs a key (mask_hash_key_env or _file)")
    r.finish()
    if None in (name, listen, upstream, user):
        return None
    return ConnectionConfig(
        name=name, protocol=protocol, listen=listen, upstream=upstream, database=database,
        user=user, password=password, upstream_tls=upstream_tls, upstream_ca=upstream_ca,
        tls_cert=tls_cert, tls_key=tls_key, require_tls=require_tls, allow_groups=allow_groups,
        allow_client_database=allow_client_database, roles=tuple(roles),
        guardrails=tuple(guardrails), masks=tuple(masks), detectors=tuple(detectors),
        unresolved_columns=unresolved, binary_copy=binary_copy, masked_writes=masked_writes,
        mask_hash_key=mask_hash_key,
        max_connections=max_connections, max_handshakes=max_handshakes,
        max_message_size=max_message_size, handshake_timeout=handshake_timeout,
        idle_timeout=idle_timeout, read_timeout=read_timeout, connect_timeout=connect_timeout,
        record_results=record_results, record_results_max_bytes=record_results_max_bytes,
        cleartext_without_tls=cleartext_without_tls, load_data_local=load_data_local,
        upstream_url=upstream_url, upstream_scheme=upstream_scheme, upstream_path=upstream_path,
        **http_keys)


_HTTP_KEYS = ("credential_header", "credential_format", "identity_header", "host_header",
              "max_request_line", "max_header_bytes", "max_headers", "inspect_body_bytes",
              "mask_body_bytes", "upstream_max_connections", "request_timeout",
              "upstream_timeout", "mask_timeout")
_TOKEN_CHARS = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _http_keys(r: _Reader) -> dict:
    """The keys of a protocol = "http" connection (DESIGN.md, the HTTP/1.1 section)."""
    out = {}
    header = r.get("credential_header", str, "Authorization")
    if header is not None and not _TOKEN_CHARS.match(header):
        r.error("credential_header", "expected a header name (letters, digits, -)")
    out["credential_header"] = header or "Authorization"
    fmt = r.get("credential_format", str, "Bearer {secret}")
    if fmt is not None and (fmt.count("{secret}") != 1 or any(c in fmt for c in "\r\n\0")):
        r.error("credential_format", "must hold {secret} once and no line break")
    out["credential_format"] = fmt or "Bearer {secret}"
    out["identity_header"] = r.get("identity_header", str, "Authorization",
                                   choices=("Authorization", "Proxy-Authorization"))
    out["host_header"] = r.get("host_header", str, "upstream", choices=("upstream", "client"))
    for key, default, low, high in (("max_request_line", 8192, 256, 1024 * 1024),
                                    ("max_header_bytes", 65536, 1024, 16 * 1024 * 1024),
                                    ("max_headers", 100, 8, 10000)):
        v = r.get(key, int, default)
        if v is not None and not low <= v <= high:
            r.error(key, f"must be from {low} to {high}")
            v = default
        out[key] = v if v is not None else default
    for key, default in (("inspect_body_bytes", 65536), ("mask_body_bytes", 8 * 1024 * 1024)):
        v = r.get(key, (int, str), default, convert=parse_size)
        out[key] = v if v is not None else default
    n = r.get("upstream_max_connections", int, 100)
    if n is not None and n < 1:
        r.error("upstream_max_connections", "must be at least 1")
        n = 100
    out["upstream_max_connections"] = n if n is not None else 100
    for key, default in (("request_timeout", 30.0), ("upstream_timeout", 60.0),
                         ("mask_timeout", 2.0)):
        v = r.get(key, (int, str, float), default, convert=parse_duration)
        if v is not None and v <= 0:
            r.error(key, "must be positive")
            v = default
        out[key] = v if v is not None else default
    return out


def parse_upstream_url(value: Any) -> tuple[str, str, int, str]:
    """An http connection's `upstream`: "https://billing.internal:8443/base" ->
    (scheme, host, port, base path without a trailing "/"). No user info, query or fragment:
    the credential is the configured header, and a base URL is a path prefix."""
    if not isinstance(value, str) or not value:
        raise ValueError("expected a base URL such as \"https://api.internal:8443/v1\"")
    scheme, sep, rest = value.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("http", "https"):
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    if any(c in value for c in "?#") or any(ord(c) <= 32 or ord(c) == 127 for c in value):
        raise ValueError(f"a base URL has no query, fragment, spaces or controls: {value!r}")
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        raise ValueError("no user:password@ in the URL: the credential comes from "
                         "password_env / password_file")
    if authority.startswith("["):
        host, close, port_s = authority[1:].partition("]")
        if not close:
            raise ValueError(f"unclosed [ in {value!r}")
        ipaddress.IPv6Address(host)
        port_s = port_s[1:] if port_s.startswith(":") else port_s
    else:
        host, _, port_s = authority.partition(":")
    if not host:
        raise ValueError(f"no host in {value!r}")
    if port_s:
        if not port_s.isdigit() or not 0 < int(port_s) < 65536:
            raise ValueError(f"bad port in {value!r}")
        port = int(port_s)
    else:
        port = 443 if scheme == "https" else 80
    path = ("/" + path).rstrip("/") if slash else ""
    return scheme, host.lower(), port, path


# keys that mean something to one protocol only: set on another, they are a mistake (a
# binary_copy on a mysql connection would read as if COPY were masked there)
_ONLY_FOR = {"binary_copy": "postgres", "cleartext_without_tls": "mysql",
             "load_data_local": "mysql", **{k: "http" for k in _HTTP_KEYS}}


def _audit(r: _Reader, default_path: str) -> AuditConfig | None:
    # On unless turned off: a gateway that decides who may run what and keeps no record of it
    # cannot answer the first question after an incident. `enabled = false` is the explicit off.
    enabled = r.get("enabled", bool, True)
    path = r.get("path", str, default_path)
    retention_days = r.get("retention_days", (int, float), None)
    if retention_days is not None and retention_days <= 0:
        r.error("retention_days", "must be positive")
    max_bytes = r.get("max_bytes", (int, str), None, convert=parse_size)
    segment_bytes = r.get("segment_bytes", (int, str), 64 * 1024 * 1024, convert=parse_size)
    if segment_bytes is not None and segment_bytes < 4096:
        r.error("segment_bytes", "must be at least 4KiB")
    if max_bytes is not None and segment_bytes is not None and max_bytes < 2 * segment_bytes:
        r.error("max_bytes", "must hold at least two segments (2 x segment_bytes)")
    on_failure = r.get("on_write_failure", str, "fail-closed", choices=("fail-closed", "fail-open"))
    literals = r.get("statement_literals", str, "mask", choices=("mask", "keep"))
    flush = r.get("flush_interval", (int, str, float), 1.0, convert=parse_duration)
    index_statements = r.get("index_statements", bool, False)
    r.finish()
    if path is None or enabled is False:
        return None
    return AuditConfig(path=path, retention_days=retention_days, max_bytes=max_bytes,
                       segment_bytes=segment_bytes, on_write_failure=on_failure,
                       statement_literals=literals, flush_interval=flush,
                       index_statements=index_statements)


def data_dir(config_path: str | None) -> str:
    """Where the default state file and audit log go: $HOOPWIRE_DATA_DIR (the container image
    sets /var/lib/hoopwire, its volume: the config beside it is mounted read-only), else the
    config file's directory (a bare install), else the working directory."""
    env = os.environ.get("HOOPWIRE_DATA_DIR")
    if env:
        return os.path.abspath(env)
    return os.path.dirname(os.path.abspath(config_path)) if config_path else os.getcwd()


def _state(r: _Reader, config_path: str | None) -> StateConfig | None:
    default = "sqlite:///" + os.path.join(data_dir(config_path), "hoopwire-state.db")
    url = r.get("url", str, default)
    password = r.secret("password")
    poll = r.get("poll_interval", (int, str, float), 0.25, convert=parse_duration)
    if poll is not None and poll < 0.01:
        r.error("poll_interval", "must be at least 10ms (it is how often the store is polled)")
    if url is not None and not (url.startswith("sqlite:///") or url.startswith("postgresql://")
                                or url.startswith("postgres://")):
        r.error("url", "expected sqlite:///<path> or postgresql://user@host:port/database")
    if url is not None and "@" in url.split("://", 1)[-1].split("/", 1)[0] and \
            ":" in url.split("://", 1)[-1].split("@", 1)[0]:
        r.error("url", "put the password in password_env or password_file, not in the URL")
    r.finish()
    if url is None:
        return None
    return StateConfig(url=url, password=password, poll_interval=poll)


_WEBHOOK_EVENTS = ("approval.created", "approval.decided", "approval.expired", "approval.cancelled")


def _webhook(r: _Reader) -> WebhookConfig | None:
    url = r.get("url", str, required=True)
    if url is not None and not url.startswith(("http://", "https://")):
        r.error("url", "expected an http:// or https:// URL")
    secret = r.secret("secret")
    fmt = r.get("format", str, "json", choices=("json", "slack"))
    events = r.strings("events", default=_WEBHOOK_EVENTS[:3])
    for e in events:
        if e not in _WEBHOOK_EVENTS:
            r.error("events", f"unknown event {e!r} (known: {', '.join(_WEBHOOK_EVENTS)})")
    timeout = r.get("timeout", (int, str, float), 5.0, convert=parse_duration)
    attempts = r.get("max_attempts", int, 6)
    if attempts is not None and not 1 <= attempts <= 20:
        r.error("max_attempts", "must be between 1 and 20")
    r.finish()
    if url is None:
        return None
    return WebhookConfig(url=url, secret=secret, format=fmt, events=tuple(events),
                         timeout=timeout, max_attempts=attempts)


def parse_config(doc: dict, path: str | None = None) -> Config:
    """Validate a parsed TOML document; raise ConfigError listing every problem."""
    problems: list[tuple[str, str]] = _Problems()
    root = _Reader(problems, doc, "")

    admin = AdminConfig()
    if "admin" in doc:
        root.used.add("admin")
        a = _Reader(problems, doc["admin"], "admin")
        audience = a.get("audience", str, "hoopwire-admin")
        if not audience:
            a.error("audience", "must not be empty")
            audience = "hoopwire-admin"
        a_cert, a_key = a.get("tls_cert", str), a.get("tls_key", str)
        for k, v in (("tls_cert", a_cert), ("tls_key", a_key)):
            if v is not None and not os.path.isfile(v):
                a.error(k, f"no such file: {v}")
        if (a_cert is None) != (a_key is None):
            a.error("tls_key" if a_key is None else "tls_cert", "tls_cert and tls_key go together")
        listen = a.get("listen", str, None, convert=parse_listen)
        probes = a.get("probes_listen", str, None, convert=parse_listen)
        if probes is not None and probes == listen and probes[1] != 0:
            a.error("probes_listen", "must differ from listen")
        grace = a.get("shutdown_grace", (int, str, float), 5.0, convert=parse_duration)
        if not 0 <= grace <= 3600:
            a.error("shutdown_grace", "must be from 0 to 3600 seconds")
            grace = 5.0
        interval = a.get("upstream_check_interval", (int, str, float), 10.0,
                         convert=parse_duration)
        if not 1 <= interval <= 3600:
            a.error("upstream_check_interval", "must be from 1 to 3600 seconds")
            interval = 10.0
        admin = AdminConfig(listen=listen, admin_groups=a.strings("admin_groups"),
                            audience=audience, probes_listen=probes, tls_cert=a_cert,
                            tls_key=a_key, shutdown_grace=grace,
                            upstream_check_interval=interval)
        a.finish()

    log = LogConfig()
    if "log" in doc:
        root.used.add("log")
        lr = _Reader(problems, doc["log"], "log")
        log = LogConfig(level=lr.get("level", str, "info",
                                     choices=("debug", "info", "warning", "error")),
                        format=lr.get("format", str, "text", choices=("text", "json")))
        lr.finish()

    issuers, api_keys = [], []
    end_at_expiry = False
    if "identity" in doc:
        root.used.add("identity")
        ir = _Reader(problems, doc["identity"], "identity")
        end_at_expiry = ir.get("end_sessions_at_expiry", bool, False)
        for t, p in ir.tables("issuer"):
            iss = _issuer(_Reader(problems, t, p))
            if iss is not None:
                issuers.append(iss)
        for t, p in ir.tables("api_key"):
            k = _api_key(_Reader(problems, t, p))
            if k is not None:
                api_keys.append(k)
        ir.finish()
    issuer_names = [i.issuer for i in issuers]
    for n in set(issuer_names):
        if issuer_names.count(n) > 1:
            problems.append(("identity.issuer", f"issuer {n!r} is configured twice"))
    for i, iss in enumerate(issuers):
        if admin.audience in iss.audience:
            # the data path would then accept admin tokens, and the admin API data tokens
            problems.append((f"identity.issuer[{i}].audience",
                             f"{admin.audience!r} is the admin API's audience (admin.audience); "
                             "database tokens need another one"))
    names = [k.name for k in api_keys]
    for n in set(names):
        if names.count(n) > 1:
            problems.append(("identity.api_key", f"duplicate api key name {n!r}"))

    connections = []
    for t, p in root.tables("connection"):
        c = _connection(_Reader(problems, t, p))
        if c is not None:
            connections.append(c)
    if not connections and not any(k == "connection" or k.startswith("connection[") for k, _ in problems):
        problems.append(("connection", "at least one [[connection]] is required"))
    seen_names, seen_listen = set(), set()
    for i, c in enumerate(connections):
        if c.name in seen_names:
            problems.append((f"connection[{i}].name", f"duplicate connection name {c.name!r}"))
        if c.listen in seen_listen and c.listen[1] != 0:
            problems.append((f"connection[{i}].listen", f"{c.listen[0]}:{c.listen[1]} is used twice"))
        seen_names.add(c.name)
        seen_listen.add(c.listen)
    if connections and not issuers and not api_keys:
        problems.append(("identity", "no [[identity.issuer]] or [[identity.api_key]]: nobody could connect"))

    # the audit log (on by default) indexes its sessions in the state store, so the store is
    # read first: the log's default directory sits next to the store's SQLite file
    root.used.update(("audit", "state"))
    audit_doc = doc.get("audit", {})
    audit_off = isinstance(audit_doc, dict) and audit_doc.get("enabled") is False
    state = None
    has_approvals = any(g.action == "approve" for c in connections for g in c.guardrails)
    if "state" in doc or has_approvals or not audit_off:
        state = _state(_Reader(problems, doc.get("state", {}), "state"), path)
    if state is not None and state.url.startswith("sqlite:///"):
        beside = os.path.dirname(state.url[len("sqlite:///"):])
    else:
        beside = data_dir(path)
    audit = _audit(_Reader(problems, audit_doc, "audit"), os.path.join(beside, "hoopwire-audit"))
    webhooks = [w for w in (_webhook(_Reader(problems, t, p)) for t, p in root.tables("webhook"))
                if w is not None]
    posture = PostureConfig()
    if "posture" in doc:
        root.used.add("posture")
        pr = _Reader(problems, doc["posture"], "posture")
        fail_on = pr.strings("fail_on", default=POSTURE_FINDINGS)
        for name in fail_on:
            if name not in POSTURE_FINDINGS:
                pr.error("fail_on", f"unknown finding {name!r} (known: {', '.join(POSTURE_FINDINGS)})")
        pr.finish()
        posture = PostureConfig(fail_on=tuple(dict.fromkeys(fail_on)))
    if has_approvals and admin.listen is None:
        problems.append(("admin.listen", "approve rules need the admin listener (approvers decide "
                         "through its API)"))
    root.finish()
    if problems:
        raise ConfigError(problems)
    return Config(path=path, admin=admin, log=log,
                  identity=IdentityConfig(issuers=tuple(issuers), api_keys=tuple(api_keys),
                                          end_sessions_at_expiry=end_at_expiry),
                  connections=tuple(connections), audit=audit, state=state,
                  webhooks=tuple(webhooks), posture=posture,
                  warnings=tuple(problems.warnings), raw=doc)


def load_config(path: str) -> Config:
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise ConfigError([("<file>", f"cannot read {path}: {e.strerror}")]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([("<file>", f"not valid TOML: {e}")]) from None
    return parse_config(doc, path)


def hash_api_key(key: str) -> str:
    """The hex sha256 an [[identity.api_key]] stores for `key`."""
    return hashlib.sha256(key.encode()).hexdigest()
