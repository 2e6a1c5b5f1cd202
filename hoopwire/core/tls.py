"""Server-side TLS on a connection whose plain stream may already hold the ClientHello.

StreamWriter.start_tls leaves whatever the plain stream has read in its buffer, and the TLS
handshake then waits for bytes that already came. That happens in every protocol that does not
wait for the server before sending its ClientHello: PostgreSQL's direct TLS (the hello is the
first thing on the wire) and MySQL's SSLRequest (the hello follows it at once).

Also the TLS the gateway speaks to its upstream (`upstream_tls`, the same three modes for every
protocol), and where TLS buys nothing: a loopback host.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl

__all__ = ["start_server_tls", "upstream_ssl_context", "is_loopback"]

# turns of the loop to wait for start_tls to swap in its protocol: it does so on its first
# turn, so 100 is a bound against a loop that never does, not a figure that is ever reached
_SWAP_TURNS = 100


async def start_server_tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           ctx: ssl.SSLContext, first: bytes = b"") -> bool:
    """Put TLS under `reader` / `writer`, handing the TLS layer `first` (bytes the caller took
    from the plain stream) and then whatever the plain stream still holds, as if they had just
    arrived. The TLS protocol is put in place before the plain buffer is read, and the plain
    protocol stops receiving once the swap is made, so nothing can arrive between the two.
    False when start_tls never swapped its protocol in (the caller refuses the client)."""
    loop = asyncio.get_running_loop()
    transport = writer.transport
    plain = transport.get_protocol()
    task = loop.create_task(loop.start_tls(transport, plain, ctx, server_side=True))
    # start_tls swaps in its TLS protocol and schedules that protocol's connection_made in
    # one step; a turn of the loop after the swap, the TLS protocol is ready for bytes
    for _ in range(_SWAP_TURNS):
        if transport.get_protocol() is not plain or task.done():
            break
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    tls = transport.get_protocol()
    if tls is plain:
        task.cancel()
        return False
    pending = first + bytes(reader._buffer)  # noqa: SLF001 -- the ClientHello, whole or in part
    reader._buffer.clear()  # noqa: SLF001
    if pending:
        if hasattr(tls, "get_buffer"):  # a BufferedProtocol (uvloop's and asyncio's SSL)
            buf = tls.get_buffer(len(pending))
            buf[:len(pending)] = pending
            tls.buffer_updated(len(pending))
        else:
            tls.data_received(pending)
    new_transport = await task
    writer._transport = new_transport  # noqa: SLF001 -- as StreamWriter.start_tls does
    plain._replace_writer(writer)  # noqa: SLF001
    return True


def upstream_ssl_context(mode: str, ca_file: str | None) -> ssl.SSLContext | None:
    """The context for the upstream's TLS in `mode` (disable, require, verify-full)."""
    if mode == "disable":
        return None
    ctx = ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
    if mode == "require":
        # encrypted but not authenticated, like libpq's sslmode=require and the MySQL clients'
        # ssl-mode=REQUIRED
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1: the one place where TLS buys nothing."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
