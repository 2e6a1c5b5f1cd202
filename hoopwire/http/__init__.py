"""HTTP/1.1: the third protocol on the core (issue 21). Identity per request (a Bearer token),
the stored credential injected upstream, guardrails on the request text, JSON masking on the
way back. See hoopwire/core/adding-a-protocol.md for how a protocol plugs in."""
