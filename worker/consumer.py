"""Celery's consumer, recording as dead letters the messages it cannot run.

Celery acks (or rejects) an undecodable message, one naming an unknown task,
and one that is not a task message at all, and only logs it; a message whose
body is not what a task message holds (``{"not": "a list"}`` where Celery
expects ``[args, kwargs, embed]``) raises inside its request handling and
stops the worker, and since the message is restored every worker that
starts dies the same way. Here every such message becomes a dead letter
(the raw bytes that arrived and the reason, `grants results list --status
dead`) and is acked; the worker goes on. Entries that are not even kombu
messages are caught one layer down, in :mod:`worker.broker`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from celery.worker.consumer import Consumer
from vine import promise

log = structlog.get_logger("grants.consumer")


def _headers_text(message: Any) -> str:
    headers = getattr(message, "headers", None)
    if not isinstance(headers, dict):
        return ""
    return ", ".join(f"{k}={headers[k]!r}" for k in ("task", "id") if k in headers)


def raw_body(message: Any) -> str | bytes:
    """The body as it arrived (before Celery decoded it), for a dead letter."""
    body = getattr(message, "body", None)
    if isinstance(body, (str, bytes)):
        return body
    return repr(body)


class GrantsConsumer(Consumer):
    """Records unusable messages, acks them, and keeps consuming."""

    def _dead_letter(self, message: Any, reason: str) -> None:
        source = _headers_text(message) or "broker"
        try:
            self.app.grants_runtime().record_unusable(raw_body(message), reason, source=source)
        except Exception as exc:  # never let recording break the consumer
            log.error("could not record a dead letter", reason=reason[:300], error=str(exc))

    def on_decode_error(self, message: Any, exc: Exception) -> Any:
        self._dead_letter(message, f"undecodable message ({message.content_type}): {exc}")
        return super().on_decode_error(message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> Any:
        self._dead_letter(message, "not a Celery task message (no task name)")
        return super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> Any:
        self._dead_letter(message, f"unknown task: {exc}")
        return super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> Any:
        self._dead_letter(message, f"invalid task message: {exc}")
        return super().on_invalid_task(body, message, exc)

    def create_task_handler(self, promise: Callable = promise) -> Callable[[Any], Any]:
        """Celery's task handler, with everything it may raise turned into a dead letter."""
        handle = super().create_task_handler(promise)

        def on_task_received(message: Any) -> Any:
            try:
                return handle(message)
            except Exception as exc:  # whatever the message held
                self._dead_letter(message, f"unusable task message: {type(exc).__name__}: {exc}"[:2000])
                if not getattr(message, "acknowledged", True):
                    message.ack_log_error(log, self.connection_errors)
                return None

        return on_task_received
