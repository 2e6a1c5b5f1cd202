"""The protocol-neutral core: the gateway and its supervisor, the base listener, the one
session every protocol's relay reports to, and the seams a protocol plugs into.

The core never imports a protocol. hoopwire.protocols (above both) maps a connection's
`protocol = "..."` to the listener that serves it; see hoopwire/core/adding-a-protocol.md.
"""
