"""The exception tree. Library errors are translated into it once, at the edge
(:mod:`worker.backends.http`), so the rest of the code decides on three
questions only: may I retry, is it final, or is the outcome unknown?

    GrantsError
    ├── BackendError
    │   ├── Retryable             certainly NOT applied: safe to send again
    │   │   ├── ConnectFailed     refused, DNS, connect/pool timeout, write failed
    │   │   ├── RateLimited       429 (carries Retry-After)
    │   │   ├── ServerError       503, 408
    │   │   └── EndpointRefused   3xx, or 404/405 naming no item or operation: the
    │   │                         base URL or configuration is wrong, not the command
    │   ├── Permanent             the backend refused; resending cannot help
    │   │   ├── InvalidRequest    400/409/413/422, 404 naming an item: split the batch
    │   │   │                     to find the bad one
    │   │   ├── AuthFailed        401/403: fix credentials, then replay
    │   │   └── NotSent           the request could not even be built: nothing left
    │   │                         us (certainly not applied; replay after a fix)
    │   └── OutcomeUnknown        sent, no usable answer (read timeout, dropped
    │                             connection, 500/502/504: may have applied)
    └── SendTaskFailed            a send task's batches ended failed or in_doubt
                                  (outcomes written; the task shows FAILURE)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class GrantsError(Exception):
    """Base of every error this service raises on purpose."""


class BackendError(GrantsError):
    """A backend call did not return a usable answer."""

    def __init__(self, message: str, *, status: int | None = None, body: str | None = None):
        super().__init__(message)
        self.status = status
        self.body = body


class Retryable(BackendError):
    """The request certainly did not take effect; sending it again is safe."""

    retry_after: float | None = None


class ConnectFailed(Retryable):
    """No connection, or the request never fully left us."""


class RateLimited(Retryable):
    """HTTP 429. ``retry_after`` is the backend's Retry-After in seconds."""

    def __init__(self, message: str, *, retry_after: float | None, **kw: Any):
        super().__init__(message, **kw)
        self.retry_after = retry_after


class ServerError(Retryable):
    """HTTP 503 or 408: the backend did not take the request on."""


class EndpointRefused(Retryable):
    """A redirect, or a 404/405 that names no item or operation: the endpoint
    or the configuration is wrong, for every command of the lane alike.
    Nothing was applied; the lane backs off, and after the retries its
    commands end ``failed`` (replayable once the configuration is fixed)."""


class Permanent(BackendError):
    """The backend refused the request; the same request will be refused again."""


class InvalidRequest(Permanent):
    """The request (or one operation in it) is invalid: 400/409/413/422, or a
    404 whose body names an item or operation."""


class AuthFailed(Permanent):
    """Credentials refused (401/403). Nothing was applied."""


class NotSent(Permanent):
    """Building the request failed before anything was sent: certainly not applied."""


@contextmanager
def building(what: str) -> Iterator[None]:
    """Turn any failure while a request is built into :class:`NotSent`.

    Code before the first byte leaves us cannot have applied anything, so a
    defect there (or input that slipped past validation) must never count
    as an unknown outcome.
    """
    try:
        yield
    except BackendError:
        raise
    except Exception as exc:
        raise NotSent(f"{what}: request not built, nothing sent ({type(exc).__name__}: {exc})") from None


class OutcomeUnknown(BackendError):
    """The request was sent and the answer lost: it may or may not have applied."""


class SendTaskFailed(GrantsError):
    """A send task whose batches ended with ``failed`` or ``in_doubt``
    commands (worker/tasks.py): raised once their outcomes are written, so
    the task's events, and Flower, say FAILURE instead of SUCCESS. Celery
    never retries it and acks its message as usual: the outcomes are final in
    the ledger; the ledger, not Celery, owns retries and backoff. Its text
    (one argument, so it pickles across the pool) is the task's summary."""
