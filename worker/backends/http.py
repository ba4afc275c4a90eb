"""The HTTP edge: the pooled client, and the one place where httpx errors and
HTTP statuses become :mod:`worker.errors`.

Whether a failed request may have reached the backend decides everything
downstream, so the mapping is explicit:

- never connected, or the body was not fully written -> ``ConnectFailed`` (not applied)
- 429 -> ``RateLimited``; 408 and 503 -> ``ServerError``: the server says it
  did not take the request on (timed out waiting for it; unavailable)
- 500, 502, 504 and other 5xx -> ``OutcomeUnknown``: a server that failed while
  working, or a gateway that gave up on an upstream that may have applied it
- 3xx (httpx follows no redirect), and 404/405 whose body names no item or
  operation (the backend's ``names_command`` says) -> ``EndpointRefused``: the
  base URL or configuration is wrong, not the command; nothing applied
- 401/403 -> ``AuthFailed``; other 4xx -> ``InvalidRequest``
- sent but no (complete) answer -> ``OutcomeUnknown``
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

from worker import errors
from worker.settings import Settings

# Error bodies are kept for the record and logs, cut to this many characters.
MAX_ERROR_BODY = 500
# The most of an answer we read: a 50-operation Xsolla answer is ~20 KB and
# 100 PlayFab ItemGrantResults ~40 KB; a 50 MB answer (a broken or hostile
# backend) is cut here instead of landing in memory, Redis and the AOF. A cut
# answer is unreadable JSON, which each backend treats as an unknown outcome.
MAX_RESPONSE_BYTES = 4 << 20


def build_client(
    settings: Settings,
    base_url: str,
    *,
    auth: httpx.Auth | None = None,
    headers: dict[str, str] | None = None,
    transport: httpx.BaseTransport | None = None,
) -> httpx.Client:
    """The one way a backend gets its pooled client: the settings' timeouts
    and pool size; ``transport`` is injectable for tests."""
    return httpx.Client(
        base_url=base_url,
        auth=auth,
        headers=headers,
        timeout=httpx.Timeout(
            connect=settings.http_connect_timeout_s,
            read=settings.http_read_timeout_s,
            write=settings.http_write_timeout_s,
            pool=settings.http_connect_timeout_s,
        ),
        limits=httpx.Limits(
            max_connections=settings.http_max_connections, max_keepalive_connections=settings.http_max_connections
        ),
        transport=transport,
    )


@contextmanager
def translated(what: str) -> Iterator[None]:
    """Map transport failures of the request described by ``what``."""
    try:
        yield
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        raise errors.ConnectFailed(f"{what}: could not connect ({type(exc).__name__})") from None
    except (httpx.WriteError, httpx.WriteTimeout) as exc:
        # The request body did not fully leave us: the backend cannot have
        # parsed, let alone applied, a truncated JSON body.
        raise errors.ConnectFailed(f"{what}: request not fully sent ({type(exc).__name__})") from None
    except httpx.TimeoutException as exc:
        raise errors.OutcomeUnknown(f"{what}: sent, no answer in time ({type(exc).__name__})") from None
    except httpx.TransportError as exc:
        # ReadError, RemoteProtocolError ("server disconnected without sending
        # a response"): the request was sent, the answer lost.
        raise errors.OutcomeUnknown(f"{what}: sent, connection lost ({type(exc).__name__})") from None
    except httpx.HTTPError as exc:
        # Anything else httpx raises (a body it cannot decode, ...) comes after
        # the request left: the answer is unusable, the outcome unknown.
        raise errors.OutcomeUnknown(f"{what}: sent, unusable answer ({type(exc).__name__}: {exc})") from None


def request(client: httpx.Client, method: str, url: str, **kwargs: object) -> httpx.Response:
    """Send one request and read at most MAX_RESPONSE_BYTES of its answer.

    Call it inside :func:`translated`. The response returned is fully read;
    ``response.extensions["truncated"]`` is True when the answer was longer
    (then only its first MAX_RESPONSE_BYTES are kept).
    """
    sent = client.build_request(method, url, **kwargs)  # type: ignore[arg-type]
    response = client.send(sent, stream=True)
    length = response.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) <= MAX_RESPONSE_BYTES:
        response.read()  # the usual case: a short answer that says how long it is
        response.extensions["truncated"] = False
        return response
    body = bytearray()
    truncated = False
    try:
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > MAX_RESPONSE_BYTES:
                truncated = True
                break
    finally:
        response.close()
    # Decoded already: the copy must not be decoded again.
    headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() != "content-encoding"]
    return httpx.Response(
        response.status_code,
        headers=headers,
        content=bytes(body[:MAX_RESPONSE_BYTES]),
        request=sent,
        extensions={"truncated": truncated},
    )


def retry_after_s(value: str | None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def check_status(
    response: httpx.Response, what: str, names_command: Callable[[httpx.Response], bool] = lambda _r: True
) -> None:
    """Raise the matching error for a non-2xx response.

    ``names_command(response)`` tells, for a 404/405, whether the body is the
    backend's own refusal of an item or operation (split the batch to find
    it) rather than a proxy's or a wrong path's (the endpoint is wrong).
    """
    status = response.status_code
    if status < 300:
        return
    body = response.text[:MAX_ERROR_BODY]
    message = f"{what}: HTTP {status}: {body}"
    if status < 400:
        where = response.headers.get("location", "")
        raise errors.EndpointRefused(
            f"{what}: HTTP {status} redirect{' to ' + where if where else ''}: the base URL or configuration "
            "is wrong (redirects are not followed)",
            status=status,
            body=body,
        )
    if status in (404, 405) and not names_command(response):
        raise errors.EndpointRefused(
            f"{what}: HTTP {status} naming no item or operation: the base URL or configuration is wrong: {body}",
            status=status,
            body=body,
        )
    if status == 429:
        raise errors.RateLimited(
            message, retry_after=retry_after_s(response.headers.get("retry-after")), status=status, body=body
        )
    if status in (408, 503):
        raise errors.ServerError(message, status=status, body=body)
    if status >= 500:
        raise errors.OutcomeUnknown(message, status=status, body=body)
    if status in (401, 403):
        raise errors.AuthFailed(message, status=status, body=body)
    raise errors.InvalidRequest(message, status=status, body=body)


def error_message(response: httpx.Response, *fields: str) -> str | None:
    """The text of the first of ``fields`` in a JSON error body, if it has one."""
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    for field in fields:
        if isinstance(body.get(field), str):
            return body[field]
    return None
