"""`hoopwire config-schema`: the JSON Schema an editor validates hoopwire.toml with.

The schema is generated from the validator's own lookups (hoopwire/configschema.py). These tests
hold it to the parser from both sides -- every key name config.py reads is in the schema at its
table, every key the schema lists is one the parser accepts -- and check the configs we ship and
the README's examples against it.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import subprocess
import sys
import tomllib

import jsonschema
import pytest

from helpers import REPO_ROOT
from hoopwire.config import ConfigError, parse_config

CONFIG_PY = os.path.join(REPO_ROOT, "hoopwire", "config.py")

# config.py's table functions and parse_config's reader variables -> the table they read
FUNCTION_TABLES = {
    "_issuer": "identity.issuer", "_api_key": "identity.api_key", "_role": "connection.role",
    "_guardrail": "connection.guardrail", "_mask": "connection.mask",
    "_detector": "connection.detector", "_connection": "connection", "_audit": "audit",
    "_state": "state", "_webhook": "webhook", "_http_keys": "connection",
}
PARSE_CONFIG_READERS = {"root": "", "a": "admin", "lr": "log", "ir": "identity", "pr": "posture",
                        "doc": "", "audit_doc": "audit"}     # (the last two: plain dict reads)
READER_METHODS = {"get", "strings", "tables", "secret"}


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    e = dict(os.environ, PYTHONPATH=REPO_ROOT, **(env or {}))
    return subprocess.run([sys.executable, "-m", "hoopwire", *args], capture_output=True,
                          text=True, env=e, timeout=60)


@pytest.fixture(scope="module")
def schema() -> dict:
    r = _cli("config-schema")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    jsonschema.Draft202012Validator.check_schema(s)
    return s


def _table(schema: dict, path: str) -> dict:
    node = schema
    for name in filter(None, path.split(".")):
        prop = node["properties"][name]
        node = prop["anyOf"][1] if "anyOf" in prop and prop["anyOf"][1].get("type") == "object" \
            else prop
    return node


def _leaves(schema: dict, path: str = ""):
    """(table path, key) for every key of every table, tables of tables included."""
    node = _table(schema, path)
    for key, prop in node["properties"].items():
        sub = f"{path}.{key}" if path else key
        if prop.get("type") == "object" or ("anyOf" in prop and
                                            prop["anyOf"][1].get("type") == "object"):
            yield from _leaves(schema, sub)
        else:
            yield path, key


def _keys_read_by_config_py() -> set[tuple[str, str]]:
    """Every string-literal key config.py hands a reader, with the table it reads."""
    tree = ast.parse(open(CONFIG_PY, encoding="utf-8").read())
    found: set[tuple[str, str]] = set()
    unmapped = []
    for fn in tree.body:
        if not isinstance(fn, ast.FunctionDef):
            continue
        for call in ast.walk(fn):
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                    and call.func.attr in READER_METHODS and call.args
                    and isinstance(call.args[0], ast.Constant)
                    and isinstance(call.args[0].value, str)
                    and isinstance(call.func.value, ast.Name)):
                continue
            receiver, name = call.func.value.id, call.args[0].value
            if fn.name in FUNCTION_TABLES and receiver == "r":
                table = FUNCTION_TABLES[fn.name]
            elif fn.name == "parse_config" and receiver in PARSE_CONFIG_READERS:
                table = PARSE_CONFIG_READERS[receiver]
            else:
                unmapped.append(f"{fn.name}: {receiver}.{call.func.attr}({name!r})")
                continue
            if call.func.attr == "secret":
                found |= {(table, f"{name}_env"), (table, f"{name}_file")}
            else:
                found.add((table, name))
    assert not unmapped, f"add these readers to FUNCTION_TABLES/PARSE_CONFIG_READERS: {unmapped}"
    return found


def test_the_schema_is_valid_json_schema_and_closed(schema):
    """Draft 2020-12 (checked in the fixture); every table refuses keys it does not list, as
    check-config does."""
    def tables(node):
        if isinstance(node, dict):
            if node.get("type") == "object":
                yield node
            for v in node.values():
                yield from tables(v)
        elif isinstance(node, list):
            for v in node:
                yield from tables(v)
    found = list(tables(schema))
    assert len(found) >= 12
    assert all(t.get("additionalProperties") is False for t in found)


def test_every_key_config_py_reads_is_in_the_schema(schema):
    read = _keys_read_by_config_py()
    assert len(read) > 80
    missing = sorted(f"{t or '<root>'}: {k}" for t, k in read
                     if k not in _table(schema, t)["properties"])
    assert not missing, missing


def _doc_with(table: str, key: str, value) -> dict:
    doc: dict = {"identity": {"issuer": [{}], "api_key": [{}]},
                 "connection": [{"role": [{}], "guardrail": [{}], "mask": [{}],
                                 "detector": [{}]}],
                 "admin": {}, "log": {}, "audit": {}, "state": {}, "webhook": [{}], "posture": {}}
    node = doc
    for name in filter(None, table.split(".")):
        node = node[name][0] if isinstance(node[name], list) else node[name]
    node[key] = value
    return doc


def _at(table: str, key: str) -> str:
    """The key path parse_config reports for a key of the first table at `table`."""
    parts = []
    for name in filter(None, table.split(".")):
        arrays = {"identity.issuer", "identity.api_key", "connection", "connection.role",
                  "connection.guardrail", "connection.mask", "connection.detector", "webhook"}
        parts.append(name)
        if ".".join(p.split("[")[0] for p in parts) in arrays:
            parts[-1] += "[0]"
    return ".".join(parts + [key])


def test_every_key_in_the_schema_is_accepted_by_the_parser(schema):
    """The converse: no key in the schema that check-config would call unknown (its value may
    be wrong here -- only "unknown key" counts)."""
    leaves = list(_leaves(schema))
    assert len(leaves) > 80
    wrongly_unknown = []
    for table, key in leaves:
        try:
            parse_config(_doc_with(table, key, "x"))
        except ConfigError as e:
            problems = dict(e.problems)
            if problems.get(_at(table, key), "").startswith("unknown key"):
                wrongly_unknown.append(_at(table, key))
    assert not wrongly_unknown, wrongly_unknown
    # and the probe itself: a key the schema does not list is unknown to the parser too
    with pytest.raises(ConfigError) as e:
        parse_config(_doc_with("connection", "not_a_key", "x"))
    assert dict(e.value.problems)["connection[0].not_a_key"].startswith("unknown key")


def _typo(key: str) -> str:
    """One slip of the finger: the last letter doubled."""
    return key + key[-1]


def test_did_you_mean_names_the_key_a_typo_was_meant_to_be(schema):
    """Generated over every key of every table: the typo is reported as unknown, with the key
    it was one letter away from -- at the root too, where the tables present are all the
    parser looked up."""
    cases = [(t, k) for t, k in _leaves(schema)] + \
            [("", k) for k in schema["properties"]]
    assert len(cases) > 80
    wrong = []
    for table, key in cases:
        doc = _doc_with(table, _typo(key), "x")
        with pytest.raises(ConfigError) as e:
            parse_config(doc)
        got = dict(e.value.problems).get(_at(table, _typo(key)))
        if got != f'unknown key (did you mean "{key}"?)':
            wrong.append((_at(table, _typo(key)), got))
    assert not wrong, wrong


def test_did_you_mean_on_the_command_line(tmp_path):
    path = tmp_path / "typo.toml"
    path.write_text('[admn]\nlisten = "127.0.0.1:0"\n\n[[conection]]\nname = "x"\n')
    r = _cli("check-config", str(path))
    assert r.returncode == 1
    assert 'admn: unknown key (did you mean "admin"?)' in r.stderr, r.stderr
    assert 'conection: unknown key (did you mean "connection"?)' in r.stderr, r.stderr
    # the other errors of the same file in the same run
    assert "at least one [[connection]] is required" in r.stderr


SHIPPED = [os.path.join(REPO_ROOT, "deploy", "hoopwire.toml"),
           os.path.join(REPO_ROOT, "deploy", "compose", "hoopwire.toml")]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: os.path.relpath(p, REPO_ROOT))
def test_shipped_configs_validate(schema, path):
    with open(path, "rb") as f:
        jsonschema.validate(tomllib.load(f), schema)


def test_kubernetes_configmap_config_validates(schema):
    import yaml
    with open(os.path.join(REPO_ROOT, "deploy", "kubernetes", "configmap.yaml")) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    tomls = [v for d in docs for k, v in (d.get("data") or {}).items() if k.endswith(".toml")]
    assert tomls
    for text in tomls:
        jsonschema.validate(tomllib.loads(text), schema)


def _without_required(node):
    if isinstance(node, dict):
        return {k: _without_required(v) for k, v in node.items() if k != "required"}
    if isinstance(node, list):
        return [_without_required(v) for v in node]
    return node


def test_readme_config_examples_validate(schema):
    """Every ```toml block of the README: the configuration reference as a whole config, the
    others (fragments of one) for their key names and types."""
    text = open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8").read()
    blocks = re.findall(r"```toml\n(.*?)```", text, re.S)
    assert len(blocks) >= 5
    fragment_schema = _without_required(schema)
    whole = 0
    for block in blocks:
        try:
            doc = tomllib.loads(block)
        except tomllib.TOMLDecodeError:
            continue    # an elided example ("# ...") that is no TOML document on its own
        if "connection" in doc and "identity" in doc:
            jsonschema.validate(doc, schema)
            whole += 1
        else:
            jsonschema.validate(doc, fragment_schema)
    assert whole >= 1


def test_a_wrong_value_is_caught_by_the_schema_too(schema):
    """Not only key names: types, choices, durations and sizes."""
    base = tomllib.loads(open(SHIPPED[0]).read())
    validator = jsonschema.Draft202012Validator(schema)
    assert not list(validator.iter_errors(base))
    for path, value in ((("connection", 0, "upstream_tls"), "maybe"),
                        (("connection", 0, "handshake_timeout"), "15 minutes"),
                        (("connection", 0, "max_message_size"), "lots"),
                        (("connection", 0, "require_tls"), "yes"),
                        (("log", "level"), "loud")):
        doc = copy.deepcopy(base)
        node = doc
        for p in path[:-1]:
            node = node.setdefault(p, {}) if isinstance(p, str) else node[p]
        node[path[-1]] = value
        assert list(validator.iter_errors(doc)), path
