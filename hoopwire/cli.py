"""The `hoopwire` command."""

from __future__ import annotations

import argparse
import json
import os
import sys

from hoopwire import __version__

__all__ = ["main", "EXIT_OK", "EXIT_CONFIG", "EXIT_CHECK", "EXIT_POSTURE"]

# `hoopwire check-config` exit statuses: a CI job or an init container can tell what to fix
# from the number alone. A check that could not run outranks a finding: the findings are then
# incomplete (a refused login inspects nothing).
EXIT_OK = 0         # valid (and with --connect: every check ran, no finding in [posture] fail_on)
EXIT_CONFIG = 1     # the file is unreadable, not TOML, or not a valid configuration
EXIT_CHECK = 2      # --connect: a check could not run (upstream login, JWKS, state store, audit)
EXIT_POSTURE = 3    # --connect: an upstream role can do something [posture] fail_on names


def _cmd_serve(args: argparse.Namespace) -> int:
    own_dir = False
    if args.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # prometheus-client picks its multiprocess mode when metrics are created, so the
        # directory must exist before hoopwire.metrics is imported.
        import tempfile
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="hoopwire-metrics-")
        own_dir = True   # made for this run: removed when it ends
    from hoopwire.core.gateway import run
    from hoopwire.protocols import REGISTRY
    return run(args.config, REGISTRY, args.workers, own_metrics_dir=own_dir)


def _cmd_check_config(args: argparse.Namespace) -> int:
    from hoopwire.config import ConfigError, load_config
    from hoopwire.core.gateway import build_engines
    from hoopwire.protocols import REGISTRY
    try:
        config = load_config(args.file)
        build_engines(config, REGISTRY)
    except ConfigError as e:
        if args.json:
            print(json.dumps({"ok": False, "config": args.file, "exit": EXIT_CONFIG, "problems": [
                {"key": k, "reason": r} for k, r in e.problems]}, indent=2))
            return EXIT_CONFIG
        for line in e.lines():
            print(f"{args.file}: {line}", file=sys.stderr)
        print(f"{len(e.problems)} error(s)", file=sys.stderr)
        return EXIT_CONFIG
    warnings = [{"key": k, "reason": r} for k, r in config.warnings]
    if not args.json:
        for w in warnings:
            print(f"{args.file}: WARNING {w['key']}: {w['reason']}", file=sys.stderr)
    names = ", ".join(f"{c.name} ({c.protocol} on {c.listen[0]}:{c.listen[1]})" for c in config.connections)
    if not args.connect:
        if args.json:
            print(json.dumps({"ok": True, "config": args.file, "exit": EXIT_OK, "problems": [],
                              "warnings": warnings}, indent=2))
        else:
            print(f"{args.file}: ok -- {len(config.connections)} connection(s): {names}")
        return EXIT_OK
    import asyncio
    from hoopwire.checks import run_checks
    report = asyncio.run(run_checks(config, REGISTRY))
    status = (EXIT_CHECK if any(not c.ok for c in report.checks)
              else EXIT_POSTURE if report.failing else EXIT_OK)
    if args.json:
        print(json.dumps(dict(report.as_json(), config=args.file, exit=status,
                              warnings=warnings), indent=2))
    else:
        print(f"{args.file}: valid -- {len(config.connections)} connection(s): {names}")
        for line in report.lines():
            print(line)
    return status


def _cmd_config_schema(args: argparse.Namespace) -> int:
    from hoopwire.configschema import schema
    print(json.dumps(schema(), indent=2))
    return EXIT_OK


def _cmd_token(args: argparse.Namespace) -> int:
    from hoopwire.identity.devtoken import create_dev_key, mint_token
    from hoopwire.config import parse_duration
    if args.create_key or not os.path.exists(args.key):
        if not args.create_key:
            print(f"no key at {args.key}: pass --create-key to make a development key there",
                  file=sys.stderr)
            return 1
        jwks = create_dev_key(args.key, kid=args.kid)
        # The issuer block to paste: without it a newcomer has to decode a token to learn the
        # iss and aud the gateway must be told (both are this command's defaults).
        print(f"development key written to {args.key}, its JWKS to {jwks}; tokens minted with "
              f"it are accepted by:\n"
              f"  [[identity.issuer]]\n"
              f"  issuer = \"{args.issuer}\"\n"
              f"  audience = \"{args.audience}\"\n"
              f"  jwks_uri = \"file://{os.path.abspath(jwks)}\"\n"
              f"  algorithms = [\"ES256\"]\n"
              f"(admin API tokens: --audience hoopwire-admin)", file=sys.stderr)
        if not args.subject:
            return 0
    if not args.subject:
        print("--subject is required to mint a token", file=sys.stderr)
        return 1
    groups = [g for g in (args.groups or "").split(",") if g]
    token = mint_token(args.key, issuer=args.issuer, audience=args.audience, subject=args.subject,
                       groups=groups, ttl=parse_duration(args.ttl), kid=args.kid)
    print(token)
    return 0


def _cmd_hash_key(args: argparse.Namespace) -> int:
    from hoopwire.config import hash_api_key
    key = args.key if args.key is not None else sys.stdin.readline().rstrip("\r\n")
    print(hash_api_key(key))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.database == "mysql":
        from hoopwire.demo_mysql import main as demo_main
    elif args.database == "http":
        from hoopwire.demo_http import main as demo_main
    else:
        from hoopwire.demo import main as demo_main
    return demo_main(keep=args.keep)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hoopwire", description="Identity-aware, inspecting gateway "
                                "for machine access to production data.")
    p.add_argument("--version", action="version", version=f"hoopwire {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="run the gateway")
    s.add_argument("--config", required=True, help="the TOML configuration file")
    s.add_argument("--workers", type=int, default=1,
                   help="worker processes sharing each port (SO_REUSEPORT); default 1")
    s.set_defaults(func=_cmd_serve)

    c = sub.add_parser("check-config", help="validate a configuration file; print every error",
                       description="Exit status: 0 ok; 1 the configuration is invalid; with "
                       "--connect, 2 a check could not run, 3 a posture finding in [posture] "
                       "fail_on.")
    c.add_argument("file")
    c.add_argument("--connect", action="store_true",
                   help="also log in to each upstream as its configured role and report what "
                        "the role can do that masking cannot stop; fetch each JWKS, open the "
                        "state store, try the audit directory (exit 2 when a check cannot run, "
                        "3 on a finding listed in [posture] fail_on)")
    c.add_argument("--json", action="store_true", help="print the result as JSON")
    c.set_defaults(func=_cmd_check_config)

    j = sub.add_parser("config-schema", help="print the configuration's JSON Schema (for editors)")
    j.set_defaults(func=_cmd_config_schema)

    t = sub.add_parser("token", help="DEVELOPMENT HELPER: mint a JWT from a local key (demos, tests)",
                       description="Development helper, not for production identities: signs an "
                       "ES256 JWT with a local key so demos and tests have a token. Production tokens "
                       "come from your identity provider.")
    t.add_argument("--key", default="hoopwire-dev-key.pem", help="the private key (PEM)")
    t.add_argument("--create-key", action="store_true",
                   help="create the key and KEY.jwks.json (the JWKS to configure as jwks_uri)")
    t.add_argument("--kid", default="dev")
    t.add_argument("--issuer", default="https://hoopwire.dev.local",
                   help="the iss claim (default %(default)s): the [[identity.issuer]] issuer")
    t.add_argument("--audience", default="hoopwire",
                   help="the aud claim (default %(default)s: the data path's; the admin API "
                        "wants hoopwire-admin, its [admin] audience)")
    t.add_argument("--subject", help="the identity, e.g. agent-7")
    t.add_argument("--groups", help="comma-separated groups, e.g. agents,analysts")
    t.add_argument("--ttl", default="15m", help="lifetime, e.g. 15m (default)")
    t.set_defaults(func=_cmd_token)

    h = sub.add_parser("hash-key", help="print the sha256 to store for an API key")
    h.add_argument("key", nargs="?", help="the key (read from stdin when omitted)")
    h.set_defaults(func=_cmd_hash_key)

    d = sub.add_parser("demo", help="run hoopwire in front of a throwaway PostgreSQL (or MariaDB, "
                       "or REST API) and show an agent's session")
    d.add_argument("database", nargs="?", choices=("postgres", "mysql", "http"), default="postgres",
                   help="what is behind the gateway: postgres (default), mysql (a throwaway "
                        "MariaDB, spoken to over the MySQL protocol) or http (a throwaway JSON "
                        "API, over HTTP/1.1)")
    d.add_argument("--keep", action="store_true", help="keep running until Ctrl-C after the demo")
    d.set_defaults(func=_cmd_demo)

    from hoopwire.admincli import add_commands
    add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `hoopwire sessions replay ID | head`: the reader left, which is no error of ours.
        # Point stdout at /dev/null so the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141   # 128 + SIGPIPE, what a shell reports for a writer killed by the pipe


if __name__ == "__main__":
    sys.exit(main())
