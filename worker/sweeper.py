"""The recovery timer. Every worker runs one; a Redis lock lets one of them
act per tick. No beat process needed: if the lock holder dies, the lock
expires within half a second and another worker's sweeper takes over.

Each tick:
- expired leases: redispatch batches never sent or waiting out a backoff;
  batches lost mid-call become in_doubt (or are resent, if idempotent);
- stale buffers: take partial batches whose oldest command waited the flush
  interval (and full ones a busy pipeline has not taken yet);
- now and then, trim index entries past the retention.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from typing import Any

import structlog
from celery import bootsteps

from worker.keys import INDEX_TRIM_INTERVAL_S, PRUNE_INTERVAL_S, PRUNE_PER_CALL, SWEEPER_LOCK_TICKS
from worker.runtime import Runtime

log = structlog.get_logger("grants.sweeper")

# Batches one tick may take from stale buffers; the rest wait for the next tick.
TAKE_PER_TICK = 50

_RENEW_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0
"""


class Sweeper:
    """One worker's recovery loop (run it in a thread)."""

    def __init__(self, runtime: Runtime):
        self.rt = runtime
        self.me = uuid.uuid4().hex
        self.tick_s = runtime.settings.sweep_interval_ms / 1000
        self.lock_ms = runtime.settings.sweep_interval_ms * SWEEPER_LOCK_TICKS
        self._lock = runtime.redis.register_script(_RENEW_LOCK)
        self._last_trim = 0.0
        self._last_prune = 0.0
        # Monotonic times of the last round, and of the last that worked (health).
        self.alive_at = time.monotonic()
        self.ok_at = -math.inf  # no tick done yet: not ready
        self.stopping = threading.Event()

    def tick(self) -> dict[str, int] | None:
        """One pass, if this worker holds the lock. Returns what it did."""
        if not self._lock(keys=[self.rt.keys.sweeper_lock], args=[self.me, self.lock_ms]):
            return None
        s = self.rt.settings
        doubted, redispatch = self.rt.ledger.recover(
            dispatch_lease_ms=int(s.dispatch_lease_s * 1000), max_attempts=s.retry_max_attempts
        )
        if redispatch:
            self.rt.dispatch(redispatch)
            log.info("batches redispatched", batches=redispatch)
        if doubted:
            log.error("batches lost mid-call: commands marked in_doubt", commands=doubted)
        taken = self.rt.take(TAKE_PER_TICK)
        now = time.monotonic()
        if now - self._last_trim > INDEX_TRIM_INTERVAL_S:
            self._last_trim = now
            self.rt.results.trim(s.result_ttl_ms)
        pruned = (0, 0)
        if now - self._last_prune > PRUNE_INTERVAL_S:
            self._last_prune = now
            pruned = self.rt.ledger.prune(PRUNE_PER_CALL)
            if any(pruned):
                log.debug("claims pruned", deleted=pruned[0], refund_data_dropped=pruned[1])
        return {
            "in_doubt": doubted,
            "redispatched": len(redispatch),
            "taken": len(taken),
            "claims_deleted": pruned[0],
            "refunds_dropped": pruned[1],
        }

    def run(self) -> None:
        """Tick until stopped; Redis outages are logged and waited out."""
        failures = 0
        while not self.stopping.wait(self.tick_s):
            self.alive_at = time.monotonic()
            try:
                self.tick()
                self.ok_at = time.monotonic()
                failures = 0
            except Exception as exc:  # keep the timer alive whatever one tick hit
                failures += 1
                if failures in (1, 10) or failures % 100 == 0:
                    log.warning("sweeper tick failed", error=str(exc), failures=failures)
                self.stopping.wait(min(2.0, self.tick_s * failures))


class SweeperStep(bootsteps.StartStopStep):
    """Runs the sweeper inside ``celery worker`` (the main process)."""

    requires = {"celery.worker.components:Pool"}  # noqa: RUF012 (Celery's bootstep API)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.sweeper: Sweeper | None = None
        self.thread: threading.Thread | None = None

    def start(self, worker: Any) -> None:
        # A runtime of its own: the main process's sockets are not shared with
        # the pool children.
        runtime = worker.app.grants_runtime()
        self.sweeper = worker.app.grants_sweeper = Sweeper(runtime)
        self.thread = threading.Thread(target=self.sweeper.run, name="grants-sweeper", daemon=True)
        self.thread.start()
        log.info("sweeper started", interval_ms=runtime.settings.sweep_interval_ms)

    def stop(self, worker: Any) -> None:
        if self.sweeper is not None:
            self.sweeper.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=5)
