"""The call pipeline every imitated API shares, and its counters.

An API (``sandbox.xsolla``, ``sandbox.backpack``, ``sandbox.playfab``)
subclasses ``Api``, giving its name, URL prefix, auth check and the shape of
its error answers, and sends each call through ``Core.call``:

1. count the call; wait the configured latency;
2. ``authorize``: a refusal is the answer (no fault is consumed);
3. ``Faults.next``: an answer-before-applying fault is shaped and returned;
4. apply the request (the API's own handler);
5. an after-applying fault: drop the connection, hang, answer a status
   instead, pad the answer, or name someone else in it.

The core knows no API: APIs import it, ``sandbox.app`` composes them.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson
from starlette.requests import Request
from starlette.responses import Response

from sandbox.common import phrase
from sandbox.connection import CONTROL_KEY
from sandbox.faults import Faults, Injection


@dataclass
class Stats:
    """Counters behind ``GET /sandbox/stats``; ``POST /sandbox/reset`` replaces them."""

    calls: int = 0
    # Xsolla inventory operations: received, applied (at most 50 a call),
    # the most in one call, and those past the 50 that were ignored.
    operations_received: int = 0
    operations_processed: int = 0
    max_operations_per_call: int = 0
    ignored_operations: int = 0
    # Answers by status ("200", "503", ...), plus "dropped".
    responses: Counter[str] = field(default_factory=Counter)
    api_seconds: float = 0.0
    # "xsolla", "backpack", "playfab": calls, and items the call carried
    # (Xsolla operations, Backpack items created, PlayFab ItemGrants/Items).
    calls_by_api: Counter[str] = field(default_factory=Counter)
    items_by_api: Counter[str] = field(default_factory=Counter)


class Api(ABC):
    """One imitated API: what the pipeline needs to know of it."""

    #: The key of its counters in ``calls_by_api`` / ``items_by_api``.
    name: str
    #: The start of its URL paths (the outer layer times and drops those).
    prefix: str

    def __init__(self, core: Core) -> None:
        """Send this API's calls through ``core``."""
        self.core = core

    @abstractmethod
    def authorize(self, request: Request) -> Response | None:
        """None if the call's credentials are right, else the refusal."""

    @abstractmethod
    def fault_response(self, status: int, retry_after: int | None) -> Response:
        """The API's own error answer for an injected ``status`` (the core
        adds the Retry-After and Location headers)."""

    def misattribute(self, response: Response) -> Response:
        """``response`` naming another user than the caller's (the
        ``wrong_user`` fault); unchanged where the API's answers name none."""
        return response

    async def call(self, request: Request, apply: Callable[[], Awaitable[Response]]) -> Response:
        """Run one call of this API through the core's pipeline."""
        return await self.core.call(self, request, apply)


class Core:
    """The fault config and counters one app's APIs share, and the pipeline."""

    def __init__(self, faults: Faults) -> None:
        """Inject ``faults`` into every call."""
        self.faults = faults
        self.stats = Stats()

    def reset_stats(self) -> None:
        """Zero the counters and the fault counts (data, faults and config stay)."""
        self.stats = Stats()
        self.faults.reset_counts()

    def record_seconds(self, seconds: float) -> None:
        """Add one API call's duration (measured by the outer layer)."""
        self.stats.api_seconds += seconds

    async def call(self, api: Api, request: Request, apply: Callable[[], Awaitable[Response]]) -> Response:
        """One API call: latency, auth, faults, apply; see the module docstring."""
        stats = self.stats
        stats.calls += 1
        stats.calls_by_api[api.name] += 1
        faults = self.faults
        if faults.latency_s:
            await asyncio.sleep(faults.latency_s)
        denied = api.authorize(request)
        if denied is not None:
            return self._count(denied)
        injection = faults.next(request.scope["path"])
        if injection is None:
            return self._count(await apply())
        action = injection.action
        if action == "answer":
            # Before anything is applied: the client may safely retry.
            return self._count(_fault_answer(api, request, injection))
        response = await apply()
        # Applied already: now make the client believe it may not have been,
        # or answer something it must not trust.
        if action == "drop":
            request.scope[CONTROL_KEY].drop = True
            stats.responses["dropped"] += 1
            return response
        if action == "hang":
            await asyncio.sleep(injection.hang_s)
        elif action == "apply":
            response = _fault_answer(api, request, injection)
        elif action == "pad":
            response = _padded(response, injection.pad_bytes)
        elif action == "wrong_user" and 200 <= response.status_code < 300:
            response = api.misattribute(response)
        return self._count(response)

    def _count(self, response: Response) -> Response:
        self.stats.responses[str(response.status_code)] += 1
        return response


def _fault_answer(api: Api, request: Request, injection: Injection) -> Response:
    """The answer to an injected status: the scripted body verbatim, the
    request's headers echoed, or else the API's own error; with Retry-After
    and Location as the injection says."""
    status = injection.status
    if injection.body is not None:
        response = _verbatim(status, injection.body)
    elif injection.echo_headers:
        response = _echoed_headers(request, status)
    else:
        response = api.fault_response(status, injection.retry_after)
    if injection.retry_after is not None:
        response.headers["Retry-After"] = str(injection.retry_after)
    if injection.location is not None:
        response.headers["Location"] = injection.location
    return response


def _verbatim(status: int, text: str) -> Response:
    data = text.encode()
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return Response(data, status, media_type="text/plain")
    return Response(data, status, media_type="application/json")


def _echoed_headers(request: Request, status: int) -> Response:
    # What a misconfigured proxy's error page shows: every header as it
    # arrived, credentials included. Raw scope headers, not request.headers,
    # so nothing is normalised away.
    lines = [f"{status} {phrase(status)}"]
    lines += [f"{name.decode('latin-1')}: {value.decode('latin-1')}" for name, value in request.scope["headers"]]
    return Response("\n".join(lines) + "\n", status, media_type="text/plain")


def _padded(response: Response, size: int) -> Response:
    body = bytes(response.body)
    # Spliced as bytes: parsing and re-serialising a 50 MB answer would cost
    # the event loop far more than the copy.
    if body.endswith(b"}"):
        head = body[:-1]
        comma = b"" if head.endswith(b"{") else b","
        body = head + comma + b'"padding":"' + b"x" * size + b'"}'
    elif body.endswith(b"]"):
        body = body[:-1] + b" " * size + b"]"
    else:
        return response
    headers = {k: v for k, v in response.headers.items() if k != "content-length"}
    return Response(body, response.status_code, headers=headers)
