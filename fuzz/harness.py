"""What every harness shares: the checkout on sys.path, atheris when it is installed, and the run.

The harnesses' test_one_input functions import without atheris (tests/test_fuzz_smoke.py runs
them over a fixed corpus); fuzzing for real needs `pip install atheris`.
"""

from __future__ import annotations

import importlib
import os
import sys
import types

# the checkout, as a last resort: an installed hoopwire (or one on PYTHONPATH, such as a build
# instrumented for native coverage, see README) comes first
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.append(ROOT)

try:
    import atheris
except ImportError:  # the smoke test runs the harnesses without atheris
    atheris = None

__all__ = ["atheris", "instrumented_import", "fuzz"]


def instrumented_import(module: str) -> None:
    """Import a hoopwire module under atheris's instrumentation (Python code only: Cython
    modules give no coverage feedback unless built with it, see README)."""
    if atheris is not None:
        with atheris.instrument_imports(include=["hoopwire"]):
            importlib.import_module(module)


def fuzz(namespace: dict, test_one_input, argv: list[str]) -> None:
    """Instrument the harness's own functions too, then hand over to libFuzzer."""
    if atheris is None:
        raise SystemExit("atheris is not installed: pip install atheris")
    for obj in list(namespace.values()):
        if isinstance(obj, types.FunctionType) and obj.__module__ == namespace["__name__"]:
            atheris.instrument_func(obj)
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()
