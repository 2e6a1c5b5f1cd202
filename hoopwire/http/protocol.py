"""HTTP/1.1's entry in the protocol registry (hoopwire.protocols).

The dialect (request text for guardrails, packs) is hoopwire/http/dialect.py; until it is
there, a plain one stands in: the request text is judged as it is, with no packs.
"""

from __future__ import annotations

from hoopwire.core.seams import ProtocolSpec
from hoopwire.http.adapter import ADAPTER
from hoopwire.http.session import DIALECT, HttpListener

# posture (`check-config --connect`'s look at an upstream role) is SQL-only: None says so
PROTOCOL = ProtocolSpec(name="http", listener=HttpListener, dialect=DIALECT, adapter=ADAPTER,
                        posture=None)
