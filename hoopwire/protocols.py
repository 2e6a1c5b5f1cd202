"""The protocol registry: which listener, dialect and adapter serve `protocol = "..."`.

It sits above the core and the protocols: each protocol's package imports the core, the core
imports no protocol, and this module names them all -- by import path, so that a gateway
loads only the protocols its configuration uses. Adding a protocol is one line here (see
hoopwire/core/adding-a-protocol.md).
"""

from __future__ import annotations

import importlib

from hoopwire.core.seams import ProtocolSpec

__all__ = ["Registry", "REGISTRY"]


class Registry:
    def __init__(self, entries: dict[str, str]):
        self._entries = dict(entries)
        self._loaded: dict[str, ProtocolSpec] = {}

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def get(self, name: str) -> ProtocolSpec:
        proto = self._loaded.get(name)
        if proto is None:
            module, _, attr = self._entries[name].partition(":")
            proto = self._loaded[name] = getattr(importlib.import_module(module), attr)
        return proto


# protocol name -> "module:attribute" of its ProtocolSpec
REGISTRY = Registry({
    "postgres": "hoopwire.pg.protocol:PROTOCOL",
    "mysql": "hoopwire.mysql.protocol:PROTOCOL",
    "http": "hoopwire.http.protocol:PROTOCOL",
})
