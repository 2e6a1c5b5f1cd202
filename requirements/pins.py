"""The test toolchain's pins, and the two ways of looking past them.

    python requirements/pins.py refresh   resolve what `pip install -e ".[test]"` needs (the build
                                          requirements too) under holds.txt, write pins.txt
    python requirements/pins.py pinned    a copy of the tree, a new venv, the README's test command
                                          with the pins: what CI on a fresh machine does
    python requirements/pins.py latest    the same with the newest of everything (no pins, no
                                          holds): prints what moved and what the tests said
    python requirements/pins.py lowest    the same with every runtime dependency at the lower bound
                                          pyproject.toml states, test tools at their pins

pins.txt is a pip constraints file, so it pins versions without asking for anything: the README's
commands and .ci/run pass it as PIP_CONSTRAINT, which pip also applies to the isolated environment
it builds the Cython extensions in (setuptools, wheel, Cython are pinned too). `latest` and `lowest`
report and exit 0 whatever the tests said (2 only when they could not run at all): they are for a
person deciding whether to refresh or to move a bound, not a gate.

Why a copy and a new venv: pytest imports hoopwire from the tree it runs in, so a run in the
working tree would test whatever extensions an earlier build left there, not the ones the pinned
(or newest, or lowest) Cython builds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PINS = HERE / "pins.txt"
HOLDS = HERE / "holds.txt"
PROJECT = "hoopwire"


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(req: str) -> str:
    return canonical(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req).group(1))


def pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def read_pins(path: Path = PINS) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonical(name)] = version.strip()
    return pins


def resolve(targets: list[str], constraints: list[Path]) -> dict[str, str]:
    """What pip would install for `targets` into an empty environment, as {name: version}."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
               "--quiet", "--report", str(report)]
        for c in constraints:
            cmd += ["-c", str(c)]
        subprocess.run(cmd + targets, check=True, cwd=ROOT)
        items = json.loads(report.read_text())["install"]
    return {canonical(i["metadata"]["name"]): i["metadata"]["version"] for i in items
            if canonical(i["metadata"]["name"]) != PROJECT}


def refresh(_args) -> int:
    meta = pyproject()
    # one resolution for the project, its test and fuzz extras and its build requirements, so a package in
    # both the build environment and the test environment gets one version
    targets = [f"{ROOT}[test,fuzz]"] + meta["build-system"]["requires"]
    pins = resolve(targets, [HOLDS])
    today = datetime.date.today().isoformat()
    py = platform.python_version()
    lines = [
        f"# Resolved {today} by `python requirements/pins.py refresh` for CPython {py} on "
        f"{platform.machine()} Linux,",
        "# under requirements/holds.txt: hoopwire's runtime, test and fuzz dependencies and its build",
        "# requirements (setuptools, wheel, Cython), every one pinned. Used as PIP_CONSTRAINT by",
        "# the README's commands and .ci/run. Refresh on purpose (see the README's Testing section),",
        "# never by hand: a hand edit is a resolution nobody ran.",
    ]
    lines += [f"{name}=={version}" for name, version in sorted(pins.items())]
    old = read_pins() if PINS.exists() else {}
    PINS.write_text("\n".join(lines) + "\n")
    print(f"wrote {PINS.relative_to(ROOT)}: {len(pins)} pins")
    for line in moved(old, pins):
        print("  " + line)
    return 0


def moved(before: dict[str, str], after: dict[str, str]) -> list[str]:
    out = []
    for name in sorted(set(before) | set(after)):
        a, b = before.get(name), after.get(name)
        if a != b:
            out.append(f"{name}: {a or '(none)'} -> {b or '(none)'}")
    return out


def copy_tree(dest: Path) -> None:
    """The files git would check out (tracked, and new ones not ignored), as they are now."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, check=True, capture_output=True).stdout.split(b"\0")
    for f in files:
        if not f:
            continue
        src = ROOT / os.fsdecode(f)
        if src.is_file():
            (dest / os.fsdecode(f)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / os.fsdecode(f))


def trial(name: str, constraints: Path | None, keep: bool, pytest_args: list[str]) -> int | None:
    """Copy the tree, make a venv, install -e .[test] (under `constraints`), run pytest there.
    Prints the installed versions against the pins and pytest's closing lines; pytest's exit
    status, or None when the install failed."""
    work = Path(tempfile.mkdtemp(prefix=f"hoopwire-{name}-"))
    tree, venv, log = work / "tree", work / "venv", work / "pytest.log"
    tree.mkdir()
    copy_tree(tree)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = dict(os.environ, VIRTUAL_ENV=str(venv),
               PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("PYTHONPATH", None)
    if constraints is not None:
        env["PIP_CONSTRAINT"] = str(constraints)
    else:
        # the newest of everything: neither our pins nor a constraint file from pip's own config
        env["PIP_CONSTRAINT"] = ""
    py = str(venv / "bin" / "python")
    print(f"[{name}] installing into {venv}", flush=True)
    inst = subprocess.run([py, "-m", "pip", "install", "--quiet", "-e", ".[test]"], cwd=tree,
                          env=env, capture_output=True, text=True)
    if inst.returncode != 0:
        print(f"[{name}] install failed:\n{inst.stdout[-4000:]}{inst.stderr[-4000:]}")
        return None
    frozen = subprocess.run([py, "-m", "pip", "list", "--format=json"], env=env, check=True,
                            capture_output=True, text=True).stdout
    have = {canonical(p["name"]): p["version"] for p in json.loads(frozen)
            if canonical(p["name"]) not in (PROJECT, "pip", "setuptools")}
    pins = read_pins()
    diff = moved({k: v for k, v in pins.items() if k in have}, have)
    print(f"[{name}] {len(diff)} installed versions differ from requirements/pins.txt")
    for line in diff:
        print("  " + line)
    print(f"[{name}] python -m pytest {' '.join(pytest_args)} (log: {log})", flush=True)
    env.pop("PIP_CONSTRAINT", None)
    with open(log, "w") as out:
        rc = subprocess.run([py, "-m", "pytest", *pytest_args], cwd=tree, env=env, stdout=out,
                            stderr=subprocess.STDOUT).returncode
    text = log.read_text().splitlines()
    summary = [ln for ln in text if ln.startswith(("FAILED", "ERROR"))]
    print("\n".join(summary[:60] + text[-3:]))
    print(f"[{name}] pytest exit status {rc}")
    if not keep:
        shutil.rmtree(tree, ignore_errors=True)
        shutil.rmtree(venv, ignore_errors=True)
    return rc


def lowest_constraints(path: Path) -> list[str]:
    """Every runtime and build requirement in the release series its lower bound names, at that
    series' newest patch (`>=41` -> `==41.*`: a bound written `41` claims all of 41.x, and an
    exact 41.0.0 may be yanked or lack wheels for this Python); the test extra's tools at their
    pins (what is tested is our claim about the runtime ranges, not the test tools)."""
    meta = pyproject()
    pins = read_pins()
    lines = []
    for req in meta["project"]["dependencies"] + meta["build-system"]["requires"]:
        m = re.search(r">=\s*([0-9][^,;\s]*)", req)
        if m:
            lines.append(f"{requirement_name(req)}=={m.group(1)}.*")
    for req in meta["project"]["optional-dependencies"]["test"]:
        name = requirement_name(req)
        if name in pins:
            lines.append(f"{name}=={pins[name]}")
    path.write_text("\n".join(lines) + "\n")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["refresh", "pinned", "latest", "lowest"])
    ap.add_argument("--keep", action="store_true", help="keep the copy and the venv")
    ap.add_argument("pytest_args", nargs="*", help="after --: passed to pytest")
    args = ap.parse_args()
    if args.what == "refresh":
        return refresh(args)
    if args.what == "pinned":
        rc = trial("pinned", PINS, args.keep, args.pytest_args)
        return 2 if rc is None else rc
    if args.what == "latest":
        rc = trial("latest", None, args.keep, args.pytest_args)
        return 2 if rc is None else 0
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        low = Path(f.name)
    print("[lowest] " + ", ".join(lowest_constraints(low)))
    rc = trial("lowest", low, args.keep, args.pytest_args)
    low.unlink()
    return 2 if rc is None else 0


if __name__ == "__main__":
    sys.exit(main())
