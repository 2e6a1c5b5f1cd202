"""Build the Cython extensions in ext/ into the hoopwire package.

Each extension is one root .pyx (with its .pxd) that `include`s its parts, so calls between the
parts stay C calls. The generated .c files are build outputs and never committed.
"""

import glob
import os

from setuptools import Extension, setup

try:
    from Cython.Build import cythonize
except ImportError as e:  # pip installs Cython from [build-system].requires
    raise SystemExit("building hoopwire needs Cython>=3 (pip install Cython)") from e

DEBUG = os.environ.get("HOOPWIRE_DEBUG") == "1"

# module name -> root source; each root lives in ext/ and includes its parts from there
EXTENSIONS = {
    "hoopwire._pgwire": "ext/pgwire.pyx",
    "hoopwire._sqlnorm": "ext/sqlnorm.pyx",
    "hoopwire._mask": "ext/mask.pyx",
    "hoopwire._auditlog": "ext/auditlog.pyx",
}
# C libraries an extension links against, and the Debian package that builds with each:
# OpenSSL's libcrypto (libssl-dev), Hyperscan's libhs (libhyperscan-dev)
LIBRARIES = {"hoopwire._auditlog": ["crypto"], "hoopwire._mask": ["hs"]}

# headers each library needs; a missing one stops the build with the package to install
HEADERS = {"hoopwire._auditlog": ("openssl/sha.h", "libssl-dev"),
           "hoopwire._mask": ("hs/hs.h", "libhyperscan-dev")}
INCLUDE_DIRS = ["/usr/include", "/usr/local/include"] + \
    [d for d in os.environ.get("CPATH", "").split(":") if d]

# HOOPWIRE_EXT=hoopwire._pgwire,... builds only those (handy while working on one module)
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



def _declarations_changed() -> bool:
    """Whether some .pxd is newer than a generated .c. Cython's dependency tracking does not
    follow a cimport of a dotted-name .pxd (ext/hoopwire._mask.pxd, which the relay cimports
    for RowPlan), and a stale .c compiles the old struct layout into the other module."""
    pxds = glob.glob("ext/**/*.pxd", recursive=True)
    newest = max((os.path.getmtime(p) for p in pxds), default=0)
    for src in EXTENSIONS.values():
        c = src[:-len(".pyx")] + ".c"
        if os.path.exists(c) and os.path.getmtime(c) < newest:
            return True
    return False


setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        include_path=["ext"],
        force=_declarations_changed(),
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
