"""Per-process resources built from the settings: Redis client, ledger,
results, backend, sender. Built lazily after fork, so every Celery pool
process gets its own sockets and its own pooled HTTP client."""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cached_property

import httpx
import structlog
from redis import Redis

from worker.backends.registry import Backends
from worker.keys import Keys
from worker.ledger import Ledger
from worker.logs import Redactor
from worker.metrics import Meter, NoMeter
from worker.results import Results
from worker.sender import Sender
from worker.settings import Settings

log = structlog.get_logger("grants.runtime")

# Batches taken (and handed to send tasks) after each ingest round. A round
# of 500 commands fills 10 batches of one lane; more lanes wait for the next
# round, the send tasks' own draining, or the sweeper.
TAKE_AFTER_INGEST = 16


class Runtime:
    """Everything a task needs, for one process."""

    def __init__(
        self,
        settings: Settings,
        dispatch: Callable[[list[str]], None],
        transport: httpx.BaseTransport | None = None,
    ):
        self.settings = settings
        self.pid = os.getpid()
        self.keys = Keys(settings.key_prefix)
        self.dispatch = dispatch
        self._transport = transport

    @cached_property
    def redis(self) -> Redis:
        return self.settings.redis_client()

    @cached_property
    def redis_bytes(self) -> Redis:
        """A client that returns bytes: stream entries may hold anything."""
        return self.settings.redis_client(decode=False)

    @cached_property
    def redactor(self) -> Redactor:
        return Redactor(self.settings.secrets())

    @cached_property
    def backends(self) -> Backends:
        return Backends(self.settings, self._transport)

    @cached_property
    def ledger(self) -> Ledger:
        limits, default = self.backends.batch_limits()
        return Ledger.from_settings(
            self.redis, self.settings, batch_limits=limits, default_batch_limit=default, scrub=self.redactor.scrub
        )

    @cached_property
    def results(self) -> Results:
        return Results(self.redis, self.keys)

    @cached_property
    def meter(self) -> Meter:
        """This process's metrics (nothing counted when GRANTS_METRICS_PORT is unset)."""
        return Meter() if self.settings.metrics_port else NoMeter()

    @cached_property
    def sender(self) -> Sender:
        return Sender(self.ledger, self.backends, self.settings, self.dispatch, meter=self.meter)

    def record_unusable(self, raw: str | bytes, reason: str, *, source: str) -> str:
        """Record a message nobody can use as a dead letter (raw bytes kept); returns its id."""
        letter = self.ledger.dead_letter(raw, reason, source=source)
        log.error("message refused: dead letter", dead_letter=letter, source=source, reason=reason[:300])
        return letter

    @cached_property
    def budgets(self) -> str:
        return self.backends.budgets_json()

    def take(self, max_batches: int, dispatch: bool = True) -> list[str]:
        """Take ready batches (and dispatch them, unless the caller sends them itself)."""
        s = self.settings
        ids = self.ledger.take(
            max_batches=max_batches,
            max_inflight=s.max_inflight_batches,
            max_inflight_per_lane=s.lane_inflight_cap,
            flush_ms=s.flush_interval_ms,
            lease_ms=int(s.dispatch_lease_s * 1000),
            eager_inflight=s.eager_inflight,
            budgets=self.budgets,
        )
        if ids and dispatch:
            self.dispatch(ids)
        return ids

    def take_eagerly(self) -> list[str]:
        """After an ingest: take what is ready now (an idle lane's lone purchase too)."""
        return self.take(TAKE_AFTER_INGEST)

    def ingested(self, results: list, refused: list) -> None:
        """What ingestion just did (counted in the metrics)."""
        self.meter.ingested(results, len(refused))

    def close(self) -> None:
        if "backends" in self.__dict__:
            self.backends.close()
        if "redis" in self.__dict__:
            self.redis.close()
