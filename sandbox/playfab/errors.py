"""PlayFab's error answers: the ApiErrorWrapper, InvalidParams details, injected faults."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from pydantic import ValidationError
from starlette.responses import Response

from sandbox.common import json_response, reason
from schemas.playfab import PlayFabErrorCode

# .NET HttpStatusCode names, which PlayFab's "status" carries.
_STATUS_NAMES = {
    200: "OK",
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    429: "TooManyRequests",
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}
_FAULT_CODES = {
    429: PlayFabErrorCode.APIRequestLimitExceeded,
    500: PlayFabErrorCode.InternalServerError,
    502: PlayFabErrorCode.DownstreamServiceUnavailable,
    503: PlayFabErrorCode.ServiceUnavailable,
    504: PlayFabErrorCode.DownstreamServiceUnavailable,
}


def playfab_error(
    http: int,
    code: PlayFabErrorCode,
    message: str,
    details: dict[str, list[str]] | None = None,
    retry_after: int | None = None,
) -> Response:
    """PlayFab's ApiErrorWrapper; ``retry_after`` fills ``retryAfterSeconds``."""
    body: dict[str, Any] = {
        "code": http,
        "status": _STATUS_NAMES.get(http) or _phrase_name(http),
        "error": code.name,
        "errorCode": int(code),
        "errorMessage": message,
    }
    if details:
        body["errorDetails"] = details
    if retry_after is not None:
        body["retryAfterSeconds"] = retry_after
    return json_response(body, http)


def fault_error(status: int, retry_after: int | None) -> Response:
    """An injected error: the GenericErrorCodes PlayFab gives for that status."""
    code = _FAULT_CODES.get(status, PlayFabErrorCode.UnknownError)
    return playfab_error(
        status, code, f"{_phrase_name(status)} (sandbox fault)", retry_after=retry_after if status == 429 else None
    )


def invalid_params(exc: ValidationError | None, message: str = "Invalid input parameters") -> Response:
    """400 InvalidParams, ``errorDetails`` mapping each bad field's PlayFab
    path (``ItemGrants[0].PlayFabId``) to its problems."""
    details: dict[str, list[str]] = {}
    if exc is not None:
        for err in exc.errors(include_url=False, include_context=False, include_input=False):
            path = ""
            for part in err["loc"]:
                path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
            details.setdefault(path or "Request", []).append(reason(err["msg"]))
    return playfab_error(400, PlayFabErrorCode.InvalidParams, message, details or None)


def _phrase_name(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.replace(" ", "").replace("-", "")
    except ValueError:
        return f"HTTP{status}"
