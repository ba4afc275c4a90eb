"""Celery's consumer, recording as dead letters the messages it cannot run.

Celery acks (or rejects) an undecodable message, one naming an unknown task,
and one that is not a task message at all, and only logs it. A hand-made or
stale message is still something a producer sent: keep its raw payload and
the reason in the results store (`grants results list --status dead`).
Malformed *commands* inside a valid ingest message are caught by the task
itself (worker/tasks.py).
"""

from __future__ import annotations

from typing import Any

import structlog
from celery.worker.consumer import Consumer

log = structlog.get_logger("grants.consumer")


def _headers_text(message: Any) -> str:
    headers = getattr(message, "headers", None) or {}
    return ", ".join(f"{k}={headers[k]!r}" for k in ("task", "id") if k in headers)


class GrantsConsumer(Consumer):
    """Records unusable messages, then lets Celery ack them as it always does."""

    def _dead_letter(self, raw: Any, reason: str, message: Any) -> None:
        try:
            letter = self.app.grants_runtime().ledger.dead_letter(
                raw if isinstance(raw, (str, bytes)) else repr(raw), reason, source=_headers_text(message) or "broker"
            )
            log.error("message refused: dead letter", dead_letter=letter, reason=reason[:300])
        except Exception as exc:  # never let recording break the consumer
            log.error("could not record a dead letter", reason=reason[:300], error=str(exc))

    def on_decode_error(self, message, exc):
        self._dead_letter(message.body, f"undecodable message ({message.content_type}): {exc}", message)
        return super().on_decode_error(message, exc)

    def on_unknown_message(self, body, message):
        self._dead_letter(body, "not a Celery task message (no task name)", message)
        return super().on_unknown_message(body, message)

    def on_unknown_task(self, body, message, exc):
        self._dead_letter(body, f"unknown task: {exc}", message)
        return super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body, message, exc):
        self._dead_letter(body, f"invalid task message: {exc}", message)
        return super().on_invalid_task(body, message, exc)
