"""Keeping the lease of a call in progress alive.

A batch's 'sending' lease covers connect + write + read timeouts plus a
margin, but httpx's read timeout applies to each read: a backend that
trickles its answer can outlive the lease while its sender is alive, and the
sweeper would then call the batch lost. One thread per process renews the
leases of the calls in progress (under their fencing token) every third of a
lease, up to a hard cap: a call still running after that is given up for lost
by the sweeper, and its late answer can only resolve the doubt.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import structlog

from worker.ledger import Ledger
from worker.logs import Throttle
from worker.work import BatchWork

log = structlog.get_logger("grants.leases")


class LeaseKeeper:
    """Renews the leases of in-progress calls of this process."""

    def __init__(self, ledger: Ledger, *, lease_ms: int, max_hold_s: float):
        self.ledger = ledger
        self.lease_ms = lease_ms
        self.max_hold_s = max_hold_s
        self._active: dict[str, tuple[BatchWork, float]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._throttle = Throttle()

    @contextmanager
    def holding(self, work: BatchWork) -> Iterator[None]:
        """Keep ``work``'s lease alive for the duration of the block."""
        with self._lock:
            self._active[work.batch_id] = (work, time.monotonic())
            if self._thread is None or not self._thread.is_alive():
                # Started lazily: a thread does not survive the pool's fork.
                self._thread = threading.Thread(target=self._run, name="grants-leases", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._active.pop(work.batch_id, None)

    def _run(self) -> None:
        while True:
            time.sleep(self.lease_ms / 3000)
            now = time.monotonic()
            with self._lock:
                due = [(w, t) for w, t in self._active.values()]
            for work, started in due:
                if now - started > self.max_hold_s:
                    continue  # past the cap: let the sweeper call it lost
                try:
                    if self.ledger.renew(work, lease_ms=self.lease_ms):
                        log.info(
                            "lease renewed for a slow call",
                            batch_id=work.batch_id,
                            project_id=work.project_id,
                            held_s=round(now - started, 1),
                        )
                except Exception as exc:  # Redis away or full: the lease may lapse; fencing covers it
                    if self._throttle(f"renew:{type(exc).__name__}"):
                        log.warning("lease renewal failed (said once per 30 s)", batch_id=work.batch_id, error=str(exc))
