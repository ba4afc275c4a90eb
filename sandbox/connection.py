"""The outermost ASGI layer: times API calls and drops connections on request.

Dropping must happen below HTTP: the request has been applied and the client
must see the connection die with no response at all (httpx:
RemoteProtocolError "Server disconnected without sending a response"). Only
the server's own ``send`` knows the socket: under uvicorn it is a bound
method of the connection's RequestResponseCycle, whose ``transport`` we abort
instead of writing the response.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Where this layer gives a handler its per-request controls.
CONTROL_KEY = "sandbox.control"


class CallControl:
    """Per-request flags a handler sets for the outer layer."""

    __slots__ = ("drop",)

    def __init__(self) -> None:
        self.drop = False


class CallGuard:
    """Wraps the app: API calls (paths under ``prefixes``) get a
    ``CallControl`` in their scope, are timed into ``record_seconds``, and
    lose their connection instead of their answer when the handler says so.
    Admin calls pass straight through."""

    def __init__(self, app: ASGIApp, prefixes: tuple[str, ...], record_seconds: Callable[[float], None]) -> None:
        """Guard ``app``; ``record_seconds`` receives each API call's duration."""
        self.app = app
        self.prefixes = prefixes
        self.record_seconds = record_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry point."""
        if scope["type"] != "http" or not scope["path"].startswith(self.prefixes):
            await self.app(scope, receive, send)
            return
        control = CallControl()
        scope[CONTROL_KEY] = control
        dropped = False

        async def guarded_send(message: Message) -> None:
            nonlocal dropped
            if dropped:
                return  # swallow the body of the response we never started
            if message["type"] == "http.response.start" and control.drop:
                dropped = True
                await drop_connection(send)
                return
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, guarded_send)
        finally:
            self.record_seconds(time.perf_counter() - started)


async def drop_connection(send: Send) -> None:
    """Abort the socket behind uvicorn's ``send``, or never answer."""
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        # Not uvicorn (or a different one): never answering is the closest
        # we can get; the client's read timeout ends the call.
        await asyncio.sleep(3600)
        return
    transport.abort()
    # abort() reports connection_lost on a later loop iteration. Wait for it,
    # so uvicorn knows the client is gone and does not log "returned without
    # starting response" or try to send a 500 of its own.
    for _ in range(20):
        if getattr(cycle, "disconnected", True):
            break
        await asyncio.sleep(0)
