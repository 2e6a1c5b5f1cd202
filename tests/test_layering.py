"""The layering the README and hoopwire/core/adding-a-protocol.md promise, read from the source.

- Nothing outside a protocol's own folder imports (or cimports) that protocol: the core, the
  neutral layers (identity, policy, masking, approvals, audit, state, metrics, admin) and the
  other protocols know PostgreSQL only through the registry (hoopwire/protocols.py), which
  names every protocol and is imported by nobody but the command line.
- No circles among module-level imports (a function-level import is how a module reaches one
  that is only needed at run time, and is not a circle at import).

Read with `ast` (and a line scan of Cython's cimports), so the test sees every import whether or
not it runs.
"""

from __future__ import annotations

import ast
import os
import re

from helpers import REPO_ROOT

# the Python package, and the Cython sources in ext/ (a tree that mirrors the package)
ROOTS = (REPO_ROOT, os.path.join(REPO_ROOT, "ext"))

# each protocol: its Python package and the extension modules that are its own
PROTOCOLS = {
    "postgres": ("hoopwire.pg", ("hoopwire._pgwire", "hoopwire._sqlnorm")),
}
# may import every protocol: it is the list of them, or the command line that uses it
REGISTRY_USERS = {"hoopwire.protocols", "hoopwire.cli", "hoopwire.__main__"}


def _module_name(path: str) -> str:
    base = ROOTS[1] if path.startswith(ROOTS[1] + os.sep) else ROOTS[0]
    rel = os.path.relpath(path, base)
    name = rel.rsplit(".", 1)[0].replace(os.sep, ".")
    return name[:-len(".__init__")] if name.endswith(".__init__") else name


def _sources():
    for base in ROOTS:
        for root, _, files in os.walk(os.path.join(base, "hoopwire")):
            for f in sorted(files):
                if f.endswith((".py", ".pyx", ".pxd", ".pxi")):
                    yield os.path.join(root, f)


_CIMPORT = re.compile(r"^\s*(?:from\s+([\w.]+)\s+cimport|cimport\s+([\w.]+))", re.M)


def imports(path: str) -> tuple[set[str], set[str]]:
    """(module-level imports, every import) of one source file, as absolute module names."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if not path.endswith(".py"):
        names = {a or b for a, b in _CIMPORT.findall(text)}
        names |= {m.group(1) for m in re.finditer(r"^\s*from\s+([\w.]+)\s+import", text, re.M)}
        return names, names
    tree = ast.parse(text)
    top, every = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found = {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found = {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        else:
            continue
        every |= found
        if node in tree.body or any(node in getattr(n, "body", ()) for n in tree.body
                                    if isinstance(n, (ast.If, ast.Try))):
            if not _type_checking_only(tree, node):
                top |= found
    return top, every


def _type_checking_only(tree: ast.Module, node) -> bool:
    for n in tree.body:
        if isinstance(n, ast.If) and isinstance(n.test, ast.Name) and \
                n.test.id == "TYPE_CHECKING" and node in n.body:
            return True
    return False


def _owner(module: str) -> str | None:
    for proto, (package, extensions) in PROTOCOLS.items():
        if module == package or module.startswith(package + ".") or module in extensions:
            return proto
    return None


def test_nothing_outside_a_protocol_imports_it():
    wrong = []
    for path in _sources():
        me = _module_name(path)
        if me in REGISTRY_USERS:
            continue
        mine = _owner(me)
        _, every = imports(path)
        for name in sorted(every):
            theirs = _owner(name)
            if theirs is not None and theirs != mine:
                wrong.append(f"{os.path.relpath(path, REPO_ROOT)} imports {name} ({theirs})")
    assert not wrong, "\n".join(wrong)


def test_only_the_command_line_uses_the_registry():
    users = set()
    for path in _sources():
        _, every = imports(path)
        if any(n == "hoopwire.protocols" or n.startswith("hoopwire.protocols.") for n in every):
            users.add(_module_name(path))
    assert users <= REGISTRY_USERS, sorted(users - REGISTRY_USERS)


def test_no_import_circles():
    graph: dict[str, set[str]] = {}
    modules = {_module_name(p): p for p in _sources() if p.endswith(".py")}
    for name, path in modules.items():
        top, _ = imports(path)
        deps = set()
        for imp in top:
            # `from a.b import c` names a.b.c, which is a module or an attribute of a.b
            target = imp if imp in modules else imp.rsplit(".", 1)[0]
            if target in modules and target != name:
                deps.add(target)
        graph[name] = deps
    circles = []
    state: dict[str, int] = {}

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                circles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d, stack)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [])
    assert not circles, "\n".join(circles)


def test_the_registry_names_every_configured_protocol():
    from hoopwire.config import _IMPLEMENTED_PROTOCOLS
    from hoopwire.protocols import REGISTRY
    assert set(REGISTRY.names()) == set(_IMPLEMENTED_PROTOCOLS)
    for name in REGISTRY.names():
        spec = REGISTRY.get(name)
        assert spec.name == name and spec.adapter.protocol == name
