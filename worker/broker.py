"""The Celery broker transport: kombu's Redis transport, made safe against
list entries that are not kombu messages.

kombu's Redis channel pops a queue entry with BRPOP and decodes it as a
kombu message envelope before anything of Celery's sees it. An entry that is
not JSON, JSON that is not an envelope (``[1,2,3]``), or 10,000-deep nesting
raises inside kombu's consumer loop: the worker dies with "Unrecoverable
error", and the entry is gone. Anything can write to a Redis list, so here an
entry that cannot be delivered becomes a dead letter (its raw bytes and the
reason) and the loop goes on. Celery-level problems with a well-formed
envelope are handled in :mod:`worker.consumer`.

The channel's ``_brpop_read`` is kombu's own (5.x) with the decode and the
delivery guarded; the Sentinel channel also closes without crashing after
its primary died.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads
from redis.exceptions import ConnectionError as RedisConnectionError

# transport_options key of the callable that records an undeliverable entry:
# ``on_unusable(raw: bytes | str, queue: str, reason: str)``.
ON_UNUSABLE = "grants_on_unusable"

Recorder = Callable[[Any, str, str], None]


def _is_envelope(message: Any) -> bool:
    """The shape kombu's Message needs: a dict with a properties dict."""
    return isinstance(message, dict) and isinstance(message.get("properties"), dict)


class _GuardedDelivery:
    """Mixin for kombu's Redis channels (plain and Sentinel)."""

    _in_poll: Any  # kombu's: the connection a BRPOP is pending on, or None/False

    def _record_unusable(self, raw: Any, queue: str, reason: str) -> None:
        record: Recorder | None = self.connection.client.transport_options.get(ON_UNUSABLE)  # type: ignore[attr-defined]
        if record is not None:
            record(raw, queue, reason)

    def _brpop_read(self, **options: Any) -> bool:
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)  # type: ignore[attr-defined]
            except self.connection_errors:  # type: ignore[attr-defined]
                self.client.connection.disconnect()  # type: ignore[attr-defined]
                raise
            if not dest__item:
                raise kombu_redis.Empty()
            dest, item = dest__item
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]  # type: ignore[attr-defined]
            self._queue_cycle.rotate(dest)  # type: ignore[attr-defined]
            try:
                message = loads(bytes_to_str(item))
            except (ValueError, TypeError, RecursionError) as exc:
                self._record_unusable(item, dest, f"not a kombu message: {type(exc).__name__}: {exc}"[:500])
                return True
            if not _is_envelope(message):
                self._record_unusable(item, dest, "not a kombu message: no properties object")
                return True
            try:
                self.connection._deliver(message, dest)  # type: ignore[attr-defined]
            except Exception as exc:  # a malformed envelope kombu cannot turn into a Message
                self._record_unusable(item, dest, f"undeliverable kombu message: {type(exc).__name__}: {exc}"[:500])
            return True
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()  # type: ignore[attr-defined]


class GuardedChannel(_GuardedDelivery, kombu_redis.Channel):
    """kombu's Redis channel with guarded delivery."""


class GuardedSentinelChannel(_GuardedDelivery, kombu_redis.SentinelChannel):
    """kombu's Sentinel channel with guarded delivery, closed safely.

    kombu (5.7) closing a Sentinel channel after its primary died drops the
    channel's pools, then restores its unacknowledged messages, which builds
    a pool again from a connection that is let go by then: an AttributeError
    no one catches, and the worker exits ("Unrecoverable error"). Here that
    is the connection error it is (the messages stay in the unacked set;
    the next worker to connect restores them).
    """

    def _get_pool(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            raise RedisConnectionError("the broker connection is closed")
        return super()._get_pool(asynchronous)


class Transport(kombu_redis.Transport):
    """``redis://`` / ``rediss://`` broker with guarded delivery."""

    Channel = GuardedChannel


class SentinelTransport(kombu_redis.SentinelTransport):
    """``sentinel://`` broker with guarded delivery."""

    Channel = GuardedSentinelChannel
