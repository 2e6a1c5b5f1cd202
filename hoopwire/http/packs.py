"""Built-in guardrail packs for HTTP, enabled in a rule with `pack = "<name>"`.

Every pattern is written against the request text (hoopwire/http/dialect.py) and matched with
Hyperscan (caseless, dot-all, single match, no lookaround):

* the code view (`CODE`): `METHOD SP target LF` (method upper-cased, target canonical: escapes of
  unreserved bytes decoded, dot segments resolved, `//` collapsed, ambiguous spellings refused
  before any rule runs), then the selected headers as `name: value LF`. `^` is the start of the
  request line. A request that an upstream may run as another method or path (method-override
  headers, `_method`, HEAD as GET, X-Original-URL / X-Rewrite-URL) is scanned once per reading.
* the full view (`FULL`): the same, then `LF` and up to inspect_body_bytes of the body. A rule
  with `scan_literals = true` scans the full view: that is how a rule says it reads bodies, and
  the relay then reads (and holds) a request body up to inspect_body_bytes before judging it;
  a larger body is refused 413 while such a rule applies.

Writing your own rules: matching ignores case, so `/Admin` and `/ADMIN` are `/admin` (right for
the case-insensitive routers of ASP.NET, IIS and Spring, and errs towards blocking elsewhere).
Dot-all: `.` crosses into the headers and body, so stay on the request line with `[^\\n]` or
`\\S`. End a path with `(?:[/?\\n]|$)` so `/users`, `/users/` and `/users?x` all match. Write
non-ASCII and the reserved bytes of a path as `%XX` with upper-case hex (`/caf%C3%A9`).

What each pack catches, and what it cannot:

http-write-methods
    catches   every method but GET, HEAD and OPTIONS: POST, PUT, PATCH, DELETE, WebDAV's MKCOL /
              COPY / MOVE / PROPPATCH / LOCK, PURGE and any custom method; also a GET or POST
              that claims one of them by X-HTTP-Method-Override / X-HTTP-Method /
              X-Method-Override or a `_method` query parameter
    passes    GET, HEAD, OPTIONS (CONNECT and Upgrade never reach the rules: 501)
    cannot    a GET handler upstream that writes (GET /api/delete?id=1): pair it with paths;
              a `_method` form field in a body unless some rule reads bodies.

http-destructive
    catches   DELETE, as sent or as claimed (override headers, `_method` in the query, and in a
              form body when a rule reads bodies)
    passes    every other method
    cannot    deletes the upstream offers through other methods (POST /users/1/delete, a
              GraphQL mutation): write a path or body rule for those.

http-admin-paths
    catches   a path segment (anywhere in the path, any case) naming an admin or diagnostic
              endpoint: admin, _admin, administrator, actuator (Spring Boot), debug (Go's
              /debug/pprof, /debug/vars), jolokia, heapdump, threaddump, _profiler (Symfony),
              server-status and server-info (Apache), manager/html|text|status (Tomcat),
              wp-admin, elmah.axd, trace.axd, phpinfo.php, and the dotfiles .env*, .git,
              .svn, .htaccess, .htpasswd; also through X-Original-URL / X-Rewrite-URL.
              `/adm%69n`, `/x/../admin`, `//admin` and `/ADMIN` are `/admin` here.
    passes    /administration, /v1/debugger, /adminx, a query value holding admin
    cannot    admin endpoints with other names, or under a prefix the upstream strips
              (X-Forwarded-Prefix is shown, not applied); a resource that is itself named
              admin (/users/admin) is blocked too.

All packs
    * The gateway forwards the canonical target it judged, so the upstream never reads a
      spelling the rules did not; spellings with more than one reading (`;`, `%2F`, `\\`,
      double encoding, trailing dots) are refused 400 before the rules run.
    * Only the request is seen; what the upstream does with it is not. The upstream
      credential's scopes are the control that covers the rest.
"""

from __future__ import annotations

from hoopwire.policy.patterns import word_except
from hoopwire.policy.rules import CODE, FULL, Pack

__all__ = ["CODE", "FULL", "Pack", "PACKS", "pack_names"]

# a method token that is not GET, HEAD or OPTIONS: one with a byte that is not a letter, or a
# letters-only word outside the three (word_except needs the space after it to mean "whole")
_OTHER_METHOD = r"(?:[^\n ]*[^a-z\n ][^\n ]*|" + word_except("get", "head", "options") + ")"

# the end of a path segment in the request line: a separator, the query, an extension, the
# end of the line
_SEG_END = r"(?:[/?.\n]|$)"
_ADMIN_SEGMENTS = (r"(?:_?admin|administrator|actuator|debug|jolokia|heapdump|threaddump"
                   r"|_profiler|server-status|server-info|manager/(?:html|text|status)|wp-admin"
                   r"|elmah\.axd|trace\.axd|phpinfo\.php|\.env|\.git|\.svn|\.htaccess"
                   r"|\.htpasswd)")

PACKS: dict[str, Pack] = {p.name: p for p in (
    Pack(
        name="http-write-methods",
        summary="every method but GET, HEAD and OPTIONS",
        message="this connection is read-only: only GET, HEAD and OPTIONS are allowed",
        patterns=(
            (CODE, r"^" + _OTHER_METHOD + " "),
        ),
    ),
    Pack(
        name="http-destructive",
        summary="DELETE",
        message="DELETE is not allowed through this connection",
        patterns=(
            (CODE, r"^delete "),
        ),
    ),
    Pack(
        name="http-admin-paths",
        summary="admin, actuator, debug, server-status and dotfile paths",
        message="admin and diagnostic endpoints are not reachable through this connection",
        patterns=(
            (CODE, r"^[^ \n]+ [^?\n]*/" + _ADMIN_SEGMENTS + _SEG_END),
        ),
    ),
)}


def pack_names() -> tuple[str, ...]:
    return tuple(PACKS)
