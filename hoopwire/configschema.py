"""The configuration's JSON Schema (`hoopwire config-schema`), made from the validator itself.

The schema is not written by hand: `schema()` runs `parse_config` over a probe document that
holds every table once, with `config._key_listener` set, and each `_Reader.get`/`tables` call
reports the key it looks up with its type, choices, default and whether it is required. A key
added to the parser is therefore in the schema the same day; tests/test_config_schema.py also
reads config.py's source for every key name it mentions and checks each is in the schema, which
catches the one way this can miss a key: a lookup the probe does not reach.

The schema is a little looser than the validator (it cannot say "tls_cert and tls_key go
together" or "0 is not a size"): `hoopwire check-config` stays the authority; the schema is for
an editor's completion and red squiggles.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from hoopwire import config as _config

__all__ = ["schema", "keys_at"]

# Every table once. A few lookups only happen when their key is present (allowed_groups: an
# empty list means something; allow_kinds: it changes which other keys are valid), so the
# probe carries them.
_PROBE: dict = {
    "admin": {}, "log": {}, "posture": {}, "audit": {}, "state": {},
    "identity": {"issuer": [{"allowed_groups": []}], "api_key": [{}]},
    "connection": [{"role": [{}], "guardrail": [{"allow_kinds": ["select"]}], "mask": [{}],
                    "detector": [{}]}],
    "webhook": [{}],
}

# Defaults that depend on where the config file is: described, not given as a value.
_PLACED_DEFAULTS = {
    ("state", "url"): "sqlite:///<$HOOPWIRE_DATA_DIR, else the config file's directory>"
                      "/hoopwire-state.db",
    ("audit", "path"): "<the SQLite state file's directory, else $HOOPWIRE_DATA_DIR, else the "
                       "config file's directory>/hoopwire-audit",
}

_DURATION = {"anyOf": [{"type": "number", "minimum": 0},
                       {"type": "string", "pattern": _config._DURATION.pattern}],
             "description": "a duration: \"250ms\", \"30s\", \"15m\", \"2h\", \"1d\" or seconds"}
# config._SIZE is case-insensitive by flag; JSON Schema patterns (ECMA 262) have no flags
_SIZE = {"anyOf": [{"type": "integer", "minimum": 1},
                   {"type": "string", "pattern": r"^\s*\d+\s*([bB]|[kKmMgG]([iI]?[bB])?)?\s*$"}],
         "description": "a size: \"64KiB\", \"16MiB\", \"1GB\" or bytes"}
_LISTEN = {"type": "string", "pattern": r"^(\[[0-9A-Fa-f:.]+\]|[^\[\]]*):\d{1,5}$",
           "description": "\"host:port\", \"[ipv6]:port\" or \":port\""}
# protocol = "http": the upstream is a base URL (config.parse_upstream_url)
_URL = {"type": "string", "pattern": r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s]+$",
        "description": "http(s)://host[:port][/base path] (protocol = \"http\")"}
_STRINGS = {"anyOf": [{"type": "string", "minLength": 1},
                      {"type": "array", "items": {"type": "string", "minLength": 1}}]}
_JSON_TYPES = {str: "string", bool: "boolean", int: "integer", float: "number",
               list: "array", dict: "object"}


def _segments(path: str) -> list[tuple[str, bool]]:
    """'connection[0].guardrail[2]' -> [('connection', True), ('guardrail', True)]."""
    if not path:
        return []
    out = []
    for seg in path.split("."):
        m = re.fullmatch(r"(.+?)\[\d+\]", seg)
        out.append((m.group(1), True) if m else (seg, False))
    return out


def _value_schema(kind, convert, choices) -> dict:
    if convert is _config.parse_duration:
        return dict(_DURATION)
    if convert is _config.parse_size:
        return dict(_SIZE)
    if convert is _config.parse_listen:
        return dict(_LISTEN)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if set(kinds) == {list, str}:
        return dict(_STRINGS)
    if kinds == (list,):
        return {"type": "array", "items": {"type": "string", "minLength": 1}}
    types = sorted({_JSON_TYPES[k] for k in kinds if k in _JSON_TYPES})
    if "integer" in types and "number" in types:
        types.remove("integer")
    out: dict[str, Any] = {"type": types[0] if len(types) == 1 else types}
    if choices is not None:
        out["enum"] = list(choices)
    return out


def _object() -> dict:
    return {"type": "object", "properties": {}, "additionalProperties": False}


def _table_at(root: dict, path: str) -> dict:
    node = root
    for name, is_array in _segments(path):
        prop = node["properties"].setdefault(name, _object() if not is_array else
                                             {"$array": True, "item": _object()})
        if "$array" in prop:
            prop["$array"] = True
            node = prop["item"]
        else:
            node = prop
    return node


def _finish(node: dict) -> dict:
    """Turn the builder's array markers into JSON Schema: [[x]] takes a table or an array."""
    if "$array" in node:
        item = _finish(node["item"])
        return {"anyOf": [{"type": "array", "items": item}, item]}
    if node.get("type") == "object":
        node["properties"] = {k: _finish(v) for k, v in sorted(node["properties"].items())}
        if not node.get("required"):
            node.pop("required", None)
    return node


@functools.lru_cache(maxsize=1)
def schema() -> dict:
    root = _object()
    root["required"] = ["connection"]

    def listener(path: str, name: str, *, table: bool = False, kind=None, default=None,
                 required: bool = False, convert=None, choices=None) -> None:
        node = _table_at(root, path)
        if table:
            prop = node["properties"].get(name)
            if prop is None or "$array" not in prop:
                node["properties"][name] = {"$array": True, "item": _object()}
            return
        if name in node["properties"]:
            return
        prop = _value_schema(kind, convert, choices)
        if name == "upstream" and convert is _config.parse_listen:
            # the probe's connection is a database one; an http connection reads a base URL
            prop = {"anyOf": [dict(_LISTEN), dict(_URL)]}
        placed = _PLACED_DEFAULTS.get((path, name))
        if placed is not None:
            prop["description"] = f"default: {placed}"
        elif default is not None and isinstance(default, (str, bool, int, float, tuple)):
            prop["default"] = list(default) if isinstance(default, tuple) else default
        node["properties"][name] = prop
        if required:
            node.setdefault("required", []).append(name)

    _config._key_listener = listener
    try:
        _config.parse_config(_PROBE, None)
    except _config.ConfigError:
        pass        # the probe is no valid config: only its lookups matter
    finally:
        _config._key_listener = None
    # [[connection]] is required at the root; its own "required" came from the readers
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "https://hoopwire.dev/schema/config.json",
            "title": "hoopwire configuration",
            "description": "The TOML configuration of hoopwire (`hoopwire check-config` is the "
                           "authority: some rules span keys and are checked there only).",
            **_finish(root)}


def tables_with(key: str) -> list[str]:
    """The tables that accept `key`, spelt as in TOML: ["[[connection]]", "[audit]"]."""
    found: list[str] = []

    def walk(node: dict, names: list[str], array: bool) -> None:
        props = node.get("properties", {})
        if names and key in props:
            found.append(f"[[{'.'.join(names)}]]" if array else f"[{'.'.join(names)}]")
        for name, prop in props.items():
            is_array = "anyOf" in prop and prop["anyOf"][0].get("type") == "array" \
                and prop["anyOf"][1].get("type") == "object"
            sub = prop["anyOf"][1] if is_array else prop
            if sub.get("type") == "object":
                walk(sub, names + [name], is_array)

    walk(schema(), [], False)
    return found


def keys_at(path: str) -> set[str]:
    """The keys the table at `path` ("connection[3].guardrail[0]") accepts."""
    node: dict = schema()
    for name, _ in _segments(path):
        prop = node.get("properties", {}).get(name)
        if prop is None:
            return set()
        node = prop["anyOf"][1] if "anyOf" in prop and prop["anyOf"][1].get("type") == "object" \
            else prop
    return set(node.get("properties", {}))
