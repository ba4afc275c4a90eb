"""The asyncio publisher, for pipelines built on asyncio: the same API as
:class:`producers.publisher.Publisher`, awaited."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from producers.publisher import (
    APPEND_MANY,
    PublisherBase,
    PublishFailed,
    describe,
    final_outcome,
    log,
    scan_outcomes,
)
from schemas.commands import AnyCommand
from schemas.kinds import GRANT, KINDS
from schemas.records import record_key
from schemas.stream import COMMAND_FIELD, Outcome, outcome_stream
from worker.settings import Settings, check_eviction_async


class AsyncPublisher(PublisherBase):
    """Publishes commands from asyncio code; ``await publish(command)``."""

    def __init__(self, settings: Settings, client: aioredis.Redis | None = None):
        super().__init__(settings)
        # The same Redis (or sentinels) as the sync publisher, as patient.
        self.redis = client or settings.redis_client_async()

    async def _check_redis(self) -> None:
        warning = await check_eviction_async(self.redis, allow=self.settings.redis_allow_eviction)
        if warning:
            log.warning(warning)
        self._checked = True

    async def publish(self, command: AnyCommand) -> str:
        """Publish one command; returns its stream entry id once Redis has it
        (and GRANTS_REDIS_MIN_REPLICAS replicas). Raises as the sync one does."""
        try:
            if not self._checked:
                await self._check_redis()
            if self.min_replicas <= 0:
                return await self.redis.xadd(self.stream, {COMMAND_FIELD: command.wire()})
            pipe = self.redis.pipeline(transaction=False)  # WAIT waits for this connection's writes
            pipe.xadd(self.stream, {COMMAND_FIELD: command.wire()})
            pipe.wait(self.min_replicas, self.replica_timeout_ms)
            entry_id, replicas = await pipe.execute()
        except RedisError as exc:
            raise PublishFailed(describe(exc), 0) from exc
        self._replicated(replicas, 0)
        return entry_id

    async def publish_many(
        self, commands: Iterable[AnyCommand], on_progress: Callable[[int], None] | None = None
    ) -> int:
        """Publish commands in order, pipelined; returns how many."""
        published = 0
        batch = list(commands)
        append_many = self.redis.register_script(APPEND_MANY)
        for start in range(0, len(batch), self.pipeline_size):
            chunk = batch[start : start + self.pipeline_size]
            try:
                if not self._checked:
                    await self._check_redis()
                if self.min_replicas <= 0:
                    await append_many(keys=[self.stream], args=[c.wire() for c in chunk])
                else:
                    pipe = self.redis.pipeline(transaction=False)
                    await append_many(keys=[self.stream], args=[c.wire() for c in chunk], client=pipe)
                    pipe.wait(self.min_replicas, self.replica_timeout_ms)
                    self._replicated((await pipe.execute())[1], published)
            except RedisError as exc:
                raise PublishFailed(describe(exc), published) from exc
            published += len(chunk)
            if on_progress:
                on_progress(published)
        return published

    async def outcome(
        self, project_id: int, external_purchase_id: str, timeout: float, *, kind: str = GRANT
    ) -> Outcome:
        """Wait for a command's final outcome; ``TimeoutError`` after ``timeout`` seconds."""
        prefix = self.settings.key_prefix
        stream = outcome_stream(prefix)
        deadline = time.monotonic() + timeout
        last = await self.redis.xrevrange(stream, count=1)
        cursor = last[0][0] if last else "0-0"
        raw = await self.redis.get(record_key(prefix, KINDS[kind].namespace, project_id, external_purchase_id))
        found = final_outcome(raw, project_id, external_purchase_id, kind)
        if found is not None:
            return found
        while True:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                raise TimeoutError(f"no outcome for {kind} {project_id}/{external_purchase_id} within {timeout} s")
            reply = await self.redis.xread({stream: cursor}, count=1000, block=min(left_ms, 1000))
            cursor, found = scan_outcomes(reply, cursor, project_id, external_purchase_id, kind)
            if found is not None:
                return found

    async def close(self) -> None:
        await self.redis.aclose()
