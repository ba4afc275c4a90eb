"""Publishing commands: in chunks (one broker message carries up to
``GRANTS_PUBLISH_CHUNK_SIZE`` commands), with the broker's retry policy, and
loudly: a chunk that cannot be published raises :class:`PublishFailed`.

Publishing is at-least-once: publishing the same purchases again after a
failure is safe, the workers de-duplicate them.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

import orjson
import structlog

from schemas.commands import GrantCommand
from worker.celery_app import GrantsCelery, create_app
from worker.settings import Settings
from worker.tasks import INGEST, INGEST_QUEUE

log = structlog.get_logger("grants.producer")

# Broker publish retries: ~30 s of broker outage is ridden out (a Redis
# restart), then the publisher gives up and says so.
PUBLISH_RETRY_POLICY = {"max_retries": 20, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2.0}


class PublishFailed(Exception):
    """The broker refused or was unreachable; ``published`` commands got through."""

    def __init__(self, message: str, published: int):
        super().__init__(message)
        self.published = published


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Publisher:
    """Publishes grant commands to the workers."""

    def __init__(self, settings: Settings, app: GrantsCelery | None = None):
        self.settings = settings
        self.app = app or create_app(settings)
        self.chunk_size = settings.publish_chunk_size

    def publish(self, command: GrantCommand) -> None:
        """Publish one command."""
        self.publish_many([command])

    def publish_many(
        self, commands: Iterable[GrantCommand], on_progress: Callable[[int], None] | None = None
    ) -> int:
        """Publish commands in chunks; returns how many were published."""
        published = 0
        chunk: list[GrantCommand] = []
        with self.app.producer_or_acquire() as producer:
            for command in commands:
                chunk.append(command)
                if len(chunk) >= self.chunk_size:
                    published += self._send(chunk, producer, published)
                    chunk = []
                    if on_progress:
                        on_progress(published)
            if chunk:
                published += self._send(chunk, producer, published)
                if on_progress:
                    on_progress(published)
        return published

    def _send(self, chunk: list[GrantCommand], producer, published: int) -> int:
        stamp = now_ms()
        # One JSON string, not a list of objects: the worker's main process
        # decodes every message body (kombu's decoder calls back into Python for
        # each nested object); a string costs it one call, and the pool process
        # parses it once with orjson.
        payload = orjson.dumps([c.to_message(stamp) for c in chunk]).decode()
        projects = sorted({c.project_id for c in chunk})
        # What Flower shows instead of the whole chunk.
        summary = (
            f"{len(chunk)} commands, project {','.join(map(str, projects[:3]))}"
            f"{'…' if len(projects) > 3 else ''}: "
            f"{chunk[0].external_purchase_id} … {chunk[-1].external_purchase_id}"
        )
        try:
            self.app.send_task(
                INGEST,
                args=[payload],
                queue=INGEST_QUEUE,
                producer=producer,
                retry=True,
                retry_policy=PUBLISH_RETRY_POLICY,
                argsrepr=f"[<{summary}>]",
            )
        except Exception as exc:  # kombu raises OperationalError and friends
            raise PublishFailed(f"could not publish to the broker: {exc}", published) from exc
        log.debug("chunk published", commands=len(chunk), projects=projects)
        return len(chunk)
