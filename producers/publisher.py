"""Publishing commands: one entry per command on the command stream.

``publish(command)`` is one round trip (``XADD``) and returns only once Redis
has the command; ``publish_many`` pipelines them. Nothing of Celery or the
worker is loaded: a purchase pipeline embedding this library needs only
``schemas``, the settings and redis-py. Publishing is at-least-once:
publishing the same purchase again after a failure is safe, the workers
de-duplicate it by its id, and the earliest-published payload is the one
that counts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import redis
import structlog
from redis.exceptions import OutOfMemoryError, RedisError

from schemas.commands import AnyCommand
from schemas.kinds import GRANT, KINDS
from schemas.records import FINAL_STATUSES, parse_record, record_key
from schemas.stream import COMMAND_FIELD, Outcome, command_stream, outcome_stream
from worker.settings import Settings, check_eviction

log = structlog.get_logger("grants.producer")

_FINAL = {s.value for s in FINAL_STATUSES}

# publish_many's round trip: the commands appended in order, one entry each.
# A script costs the client ~1.4 µs a command where a pipeline of XADDs cost
# ~15 (measured, 1,000 per call); Redis spends ~1 µs more.
APPEND_MANY = f"""
for i = 1, #ARGV do redis.call('XADD', KEYS[1], '*', '{COMMAND_FIELD}', ARGV[i]) end
return #ARGV
"""


class PublishFailed(Exception):
    """Redis refused or was unreachable; ``published`` commands got through."""

    def __init__(self, message: str, published: int = 0):
        super().__init__(message)
        self.published = published


def describe(exc: RedisError) -> str:
    """What went wrong with Redis, in words an operator acts on."""
    text = str(exc)
    if isinstance(exc, OutOfMemoryError):
        return (
            f"Redis is out of memory (maxmemory reached; it refuses writes): {text} Nothing of this "
            "publish was kept; publish again once memory is freed or maxmemory raised."
        )
    return f"could not publish to Redis: {type(exc).__name__}: {text}"


def not_replicated(replicas: int, wanted: int, timeout_ms: int) -> str:
    """Why a publish that Redis took is not confirmed."""
    return (
        f"Redis has the command, but only {replicas} of the {wanted} replicas asked for "
        f"(GRANTS_REDIS_MIN_REPLICAS) confirmed it within {timeout_ms} ms: a failover could "
        "lose it. Publish it again (a repeat is recognised, never granted twice)."
    )


class PublisherBase:
    """What the sync and the asyncio publisher share: where and how they publish."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.stream = command_stream(settings.key_prefix)
        self.pipeline_size = settings.publish_chunk_size
        self.min_replicas = settings.redis_min_replicas
        self.replica_timeout_ms = settings.redis_replica_timeout_ms
        self._checked = False

    def _replicated(self, replicas: int, published: int) -> None:
        if int(replicas) < self.min_replicas:
            raise PublishFailed(not_replicated(replicas, self.min_replicas, self.replica_timeout_ms), published)


class Publisher(PublisherBase):
    """Publishes commands to the workers (thread-safe; one per process is enough)."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None):
        super().__init__(settings)
        # Patient: a Redis restart (a few seconds with AOF) is ridden out
        # inside the call, ~40 s, before publish raises PublishFailed.
        self.redis = client or settings.redis_client()
        self._append_many = self.redis.register_script(APPEND_MANY)

    def _check_redis(self) -> None:
        """Once, before the first publish: a Redis that may evict keys is
        refused (:class:`~worker.settings.UnsafeRedis`)."""
        warning = check_eviction(self.redis, allow=self.settings.redis_allow_eviction)
        if warning:
            log.warning(warning)
        self._checked = True

    def publish(self, command: AnyCommand) -> str:
        """Publish one command; returns its stream entry id once Redis has it
        (and, with GRANTS_REDIS_MIN_REPLICAS, that many replicas too).

        Raises :class:`PublishFailed` when Redis refused or could not be
        reached (publish again: a repeat is never granted twice), and
        :class:`~worker.settings.UnsafeRedis` when Redis may evict keys.
        """
        try:
            if not self._checked:
                self._check_redis()
            if self.min_replicas <= 0:
                return self.redis.xadd(self.stream, {COMMAND_FIELD: command.wire()})
            pipe = self.redis.pipeline(transaction=False)  # WAIT waits for this connection's writes
            pipe.xadd(self.stream, {COMMAND_FIELD: command.wire()})
            pipe.wait(self.min_replicas, self.replica_timeout_ms)
            entry_id, replicas = pipe.execute()
        except RedisError as exc:
            raise PublishFailed(describe(exc), 0) from exc
        self._replicated(replicas, 0)
        return entry_id

    def publish_many(self, commands: Iterable[AnyCommand], on_progress: Callable[[int], None] | None = None) -> int:
        """Publish commands in order, ``GRANTS_PUBLISH_CHUNK_SIZE`` per round trip; returns how many."""
        published = 0
        pending: list[AnyCommand] = []
        for command in commands:
            pending.append(command)
            if len(pending) >= self.pipeline_size:
                published += self._pipelined(pending, published)
                pending = []
                if on_progress:
                    on_progress(published)
        if pending:
            published += self._pipelined(pending, published)
            if on_progress:
                on_progress(published)
        return published

    def _pipelined(self, commands: list[AnyCommand], published: int) -> int:
        try:
            if not self._checked:
                self._check_redis()
            if self.min_replicas <= 0:
                self._append_many(keys=[self.stream], args=[c.wire() for c in commands])
            else:
                pipe = self.redis.pipeline(transaction=False)
                self._append_many(keys=[self.stream], args=[c.wire() for c in commands], client=pipe)
                pipe.wait(self.min_replicas, self.replica_timeout_ms)
                self._replicated(pipe.execute()[1], published)
        except RedisError as exc:
            # Nothing of this round trip was appended unless the reply was
            # lost after it ran: publishing the same commands again is safe.
            raise PublishFailed(describe(exc), published) from exc
        return len(commands)

    def outcome(self, project_id: int, external_purchase_id: str, timeout: float, *, kind: str = GRANT) -> Outcome:
        """Wait for a command's final outcome (following the outcome stream);
        ``TimeoutError`` after ``timeout`` seconds. For the kinds keyed by an
        operation id, ``external_purchase_id`` is that id."""
        return wait_outcome(self.redis, self.settings.key_prefix, project_id, external_purchase_id, timeout, kind=kind)

    def close(self) -> None:
        self.redis.close()


def final_outcome(raw: str | None, project_id: int, record_id: str, kind: str) -> Outcome | None:
    """A stored record's outcome (schemas/records.py) if it is final, with the
    time it was written, else None."""
    if not raw:
        return None
    header = parse_record(raw)[0]
    if header.get("st") not in _FINAL:
        return None
    return Outcome(project_id, record_id, kind, header["st"], int(header.get("cpl") or 0))


def wait_outcome(
    client: redis.Redis, prefix: str, project_id: int, record_id: str, timeout: float, *, kind: str = GRANT
) -> Outcome:
    """The outcome of one command, from its record if final, else from the
    outcome stream (read from a point taken before the record was looked at,
    so an outcome written in between is not missed)."""
    stream = outcome_stream(prefix)
    deadline = time.monotonic() + timeout
    last = client.xrevrange(stream, count=1)
    cursor = last[0][0] if last else "0-0"
    raw = client.get(record_key(prefix, KINDS[kind].namespace, project_id, record_id))
    found = final_outcome(raw, project_id, record_id, kind)
    if found is not None:
        return found
    while True:
        left_ms = int((deadline - time.monotonic()) * 1000)
        if left_ms <= 0:
            raise TimeoutError(f"no outcome for {kind} {project_id}/{record_id} within {timeout} s")
        reply = client.xread({stream: cursor}, count=1000, block=min(left_ms, 1000))
        cursor, found = scan_outcomes(reply, cursor, project_id, record_id, kind)
        if found is not None:
            return found


def scan_outcomes(
    reply: list | None, cursor: str, project_id: int, record_id: str, kind: str
) -> tuple[str, Outcome | None]:
    """Look through one XREAD reply of the outcome stream for a command's
    outcome; returns the new cursor and the outcome, if it was there."""
    wanted = (str(project_id), record_id, kind)
    for _stream, entries in reply or []:
        for entry_id, fields in entries:
            cursor = entry_id
            if (fields.get("project_id"), fields.get("external_purchase_id"), fields.get("kind", GRANT)) == wanted:
                found = Outcome.from_entry(fields)
                if found is not None:
                    return cursor, found
    return cursor, None
