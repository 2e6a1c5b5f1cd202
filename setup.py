"""Build the Cython extensions of the hoopwire package.

The Cython sources live in ext/, in a tree that mirrors the package: each extension's .pyx and
.pxd sit at the module's own path under ext/ (ext/hoopwire/pg/_wire.pyx is hoopwire.pg._wire),
so a `cimport hoopwire.x._y` finds ext/hoopwire/x/_y.pxd on the include path and cythonize
follows every cimport and include when it decides what to regenerate: no rebuild logic of our
own. (Cython finds a .pxd only by its module's package path: a flat ext/core/ would hide the
declarations from its dependency tracking, which is how stale struct layouts got built before.)
An extension may `include` parts (.pxi beside it) so calls between them stay C calls; across
extensions it cimports. The generated .c files are build outputs and never committed.
"""

import os

from setuptools import Extension, setup

try:
    from Cython.Build import cythonize
except ImportError as e:  # pip installs Cython from [build-system].requires
    raise SystemExit("building hoopwire needs Cython>=3 (pip install Cython)") from e

DEBUG = os.environ.get("HOOPWIRE_DEBUG") == "1"

# module name -> root source (the module's path under ext/); a protocol adds its line
EXTENSIONS = {
    "hoopwire.core._frames": "ext/hoopwire/core/_frames.pyx",
    "hoopwire.pg._wire": "ext/hoopwire/pg/_wire.pyx",
    "hoopwire.mysql._wire": "ext/hoopwire/mysql/_wire.pyx",
    "hoopwire.mysql._sqllex": "ext/hoopwire/mysql/_sqllex.pyx",
    "hoopwire.http._parse": "ext/hoopwire/http/_parse.pyx",
    "hoopwire.http._literals": "ext/hoopwire/http/_literals.pyx",
    "hoopwire.http._relay": "ext/hoopwire/http/_relay.pyx",
    "hoopwire.http._jsonwalk": "ext/hoopwire/http/_jsonwalk.pyx",
    "hoopwire._sqlnorm": "ext/hoopwire/_sqlnorm.pyx",
    "hoopwire._mask": "ext/hoopwire/_mask.pyx",
    "hoopwire._auditlog": "ext/hoopwire/_auditlog.pyx",
}
# C libraries an extension links against, and the Debian package that builds with each:
# OpenSSL's libcrypto (libssl-dev), Hyperscan's libhs (libhyperscan-dev)
LIBRARIES = {"hoopwire._auditlog": ["crypto"], "hoopwire._mask": ["hs"]}

# headers each library needs; a missing one stops the build with the package to install
HEADERS = {"hoopwire._auditlog": ("openssl/sha.h", "libssl-dev"),
           "hoopwire._mask": ("hs/hs.h", "libhyperscan-dev")}
INCLUDE_DIRS = ["/usr/include", "/usr/local/include"] + \
    [d for d in os.environ.get("CPATH", "").split(":") if d]

# HOOPWIRE_EXT=hoopwire.pg._wire,... builds only those (handy while working on one module)
ONLY = {n for n in os.environ.get("HOOPWIRE_EXT", "").split(",") if n}

for name, (header, package) in HEADERS.items():
    if (not ONLY or name in ONLY) and \
            not any(os.path.exists(os.path.join(d, header)) for d in INCLUDE_DIRS):
        raise SystemExit(f"building {name} needs <{header}>: install the Debian package "
                         f"{package} (apt-get install -y {package}) or put its include "
                         f"directory on CPATH")

extensions = [
    Extension(name, [src], libraries=LIBRARIES.get(name, []),
              extra_compile_args=["-O2"] + (["-g", "-O0"] if DEBUG else []))
    for name, src in EXTENSIONS.items()
    if not ONLY or name in ONLY
]


setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        include_path=["ext"],
        compiler_directives={
            "boundscheck": DEBUG,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
        },
        compile_time_env={"DEBUG": DEBUG},
        annotate=DEBUG,
    ),
)
