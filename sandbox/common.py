"""Small helpers the backends' handlers share."""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from sandbox.faults import Injection


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """``data`` as JSON (orjson: several times faster than json for big bodies)."""
    return Response(orjson.dumps(data), status_code=status, headers=headers,
                    media_type="application/json")


def query_int(request: Request, name: str, default: int | None) -> int | None:
    """Integer query parameter; ValueError if it is not one (callers answer 400)."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    return int(raw)


def query_bool(request: Request, name: str, default: bool = False) -> bool:
    """``1/true/yes`` or ``0/false/no`` (any case); ValueError otherwise."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.lower()
    if lowered in ("1", "true", "yes"):
        return True
    if lowered in ("0", "false", "no"):
        return False
    raise ValueError(f"{name} must be true or false")


def phrase(status: int) -> str:
    """The reason phrase of ``status`` (``"HTTP 599"`` for one it has none)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def shaped_fault(request: Request, injection: Injection,
                 backend_error: Callable[[int, int | None], Response]) -> Response:
    """The answer to an injected status: the scripted ``body`` verbatim, the
    request's headers echoed, or else ``backend_error(status, retry_after)``;
    with Retry-After and Location headers as the injection says."""
    status = injection.status
    if injection.body is not None:
        response = verbatim(status, injection.body)
    elif injection.echo_headers:
        response = echoed_headers(request, status)
    else:
        response = backend_error(status, injection.retry_after)
    if injection.retry_after is not None:
        response.headers["Retry-After"] = str(injection.retry_after)
    if injection.location is not None:
        response.headers["Location"] = injection.location
    return response


def verbatim(status: int, text: str) -> Response:
    """``text`` as the body: JSON if it parses as JSON, else plain text."""
    data = text.encode()
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return Response(data, status, media_type="text/plain")
    return Response(data, status, media_type="application/json")


def echoed_headers(request: Request, status: int) -> Response:
    """A misconfigured proxy's error page: a status line, then every request
    header as received, ``name: value`` one a line, secrets and all."""
    lines = [f"{status} {phrase(status)}"]
    lines += [f"{name.decode('latin-1')}: {value.decode('latin-1')}"
              for name, value in request.scope["headers"]]
    return Response("\n".join(lines) + "\n", status, media_type="text/plain")


def padded(response: Response, size: int) -> Response:
    """``response`` with ``size`` bytes more: a ``"padding"`` field in a JSON
    object, whitespace in a JSON array (it parses to the same items); any
    other body (e.g. a 204's empty one) unchanged."""
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
