"""One attempt at one batch: hold it, call the backend, record what happened.

The decision table, which is the whole point of this module (:func:`decide`
follows it line by line; :meth:`Sender._apply` carries a decision out in one
ledger call):

    answer                         -> decision
    results (a 2xx)                -> Finish: each command's outcome (in_doubt if unreported)
    Retryable (connect, 429, 503)  -> Retry: back off; after max attempts failed
      429, wrong endpoint (3xx,       (the whole lane backs off, not just this batch)
      404/405 naming nothing)
    InvalidRequest                 -> Split in two, each half tried on its own; a
                                      single command is rejected
    AuthFailed                     -> Finish: failed (nothing applied; replay after fixing)
    NotSent (request not built)    -> Finish: failed (nothing left us; replay after fixing)
    Permanent (whole call)         -> Finish: rejected (e.g. PlayFab CatalogNotConfigured)
    OutcomeUnknown                 -> the backend's on_unknown:
                                      resend: Retry (and send again)
                                      reconcile: Retry, reading the inventory back
                                        first and sending only what is absent
                                      doubt: Finish: in_doubt, never resent

Before the call, a batch whose last answer was lost is read back
(:meth:`Sender._read_back`): what that proves applied is final at once.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import structlog
from redis.exceptions import OutOfMemoryError

from schemas.kinds import KINDS
from worker import errors
from worker.backends.base import Backend, OpResult, ReadsBack
from worker.backends.registry import Backends, backend_name
from worker.leases import LeaseKeeper
from worker.ledger import Ledger
from worker.logs import Throttle
from worker.metrics import Meter, NoMeter
from worker.settings import Settings
from worker.work import BatchWork, Lane, OnUnknown, Outcome

log = structlog.get_logger("grants.sender")

# Seconds added to the longest possible HTTP call to make the 'sending' lease:
# covers the Redis round trips around the call and scheduling hiccups.
SEND_LEASE_MARGIN_S = 5.0
# A call may hold its lease (renewed while it runs) for this many times the
# longest call httpx's timeouts allow; past that the sweeper calls it lost.
MAX_HOLD_FACTOR = 4
# While Redis refuses writes (OOM), an answer in hand is written again every
# second for up to five minutes, the batch held all the while: written late,
# it is still the answer; not written, the batch ends in doubt (never resent
# on a backend that is not idempotent) once its lease runs out.
FULL_RETRY_S = 1.0
FULL_HOLD_S = 300.0


def backoff_s(attempt: int, *, base: float, cap: float, retry_after: float | None, rng: random.Random) -> float:
    """Exponential backoff with equal jitter; never shorter than Retry-After.

    Equal jitter (half fixed, half random) keeps retries of many workers apart
    while guaranteeing the wait grows, so a long outage is ridden out instead
    of burning the attempts in the first seconds.
    """
    ceiling = min(cap, base * (2 ** max(0, attempt - 1)))
    delay = ceiling / 2 + rng.uniform(0, ceiling / 2)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


@dataclass(frozen=True)
class Finish:
    """Write these outcomes; the batch is done."""

    outcomes: list[Outcome]


@dataclass(frozen=True)
class Retry:
    """Back off and try again (after max attempts: failed, or in_doubt when
    the answer was lost); ``reconcile``: read back before that next try."""

    error: errors.BackendError
    reconcile: bool = False


@dataclass(frozen=True)
class Split:
    """The call was refused whole: try each half on its own."""

    error: errors.InvalidRequest


Decision = Finish | Retry | Split


def everyone(work: BatchWork, status: str, exc: Exception) -> Finish:
    """The same outcome for every command of the batch."""
    return Finish([Outcome(i, status, error=str(exc)) for i in work.ids])


def decide(work: BatchWork, answer: list[Outcome] | errors.BackendError) -> Decision:
    """The decision table of the module docstring."""
    if isinstance(answer, list):
        return Finish(answer)
    if isinstance(answer, errors.Retryable):
        return Retry(answer)
    if isinstance(answer, errors.InvalidRequest):
        return Split(answer)
    if isinstance(answer, (errors.AuthFailed, errors.NotSent)):
        return everyone(work, "failed", answer)
    if isinstance(answer, errors.Permanent):
        return everyone(work, "rejected", answer)
    if work.on_unknown is OnUnknown.doubt:
        return everyone(work, "in_doubt", answer)
    return Retry(answer, reconcile=work.on_unknown is OnUnknown.reconcile)


class _Fenced(Exception):
    """The batch was taken from us (the sweeper gave it up) mid-attempt."""


class Sender:
    """Sends batches, each to the backend of its lane."""

    def __init__(
        self,
        ledger: Ledger,
        backends: Backends,
        settings: Settings,
        dispatch: Callable[[list[str]], None],
        rng: random.Random | None = None,
        meter: Meter | None = None,
    ):
        self.ledger = ledger
        self.meter = meter or NoMeter()
        self.backends = backends
        self.settings = settings
        self.dispatch = dispatch
        self.rng = rng or random.Random()
        self.throttle = Throttle()
        self.lease_ms = int((settings.http_call_budget_s + SEND_LEASE_MARGIN_S) * 1000)
        self.keeper = LeaseKeeper(
            ledger, lease_ms=self.lease_ms, max_hold_s=MAX_HOLD_FACTOR * settings.http_call_budget_s
        )

    def send(self, batch_id: str) -> dict[str, Any]:
        """Attempt the batch once; returns a summary for the task result."""
        lane = Lane.of_batch(batch_id)
        backend = self.backends.for_lane(lane)
        try:
            work = self.ledger.begin(
                batch_id,
                uuid.uuid4().hex,
                lease_ms=self.lease_ms,
                on_unknown=backend.on_unknown,
                budget=self.backends.budget_spec(lane),
            )
        except OutOfMemoryError:
            # Nothing was written, nothing sent: the sweeper dispatches the
            # batch again once Redis takes writes.
            if self.throttle("redis-full"):
                log.error("Redis is out of memory (maxmemory): no batch can start (said once per 30 s)")
            return {"batch_id": batch_id, "skipped": True}
        if work is None:
            # Finished, held by a live attempt, or backing off: a duplicate dispatch.
            return {"batch_id": batch_id, "skipped": True}
        blog = log.bind(batch_id=batch_id, project_id=lane.project_id, attempt=work.attempt, size=len(work.ids))
        blog.debug("batch sending", backend=backend.name, kind=lane.kind, reconcile=work.reconcile or None)
        answer: list[Outcome] | errors.BackendError
        settled: Counter[str] = Counter()  # what a read-back made final, for the task's result
        try:
            with self.keeper.holding(work):
                if work.reconcile:
                    work, settled = self._read_back(backend, work, blog)
                    if not work.ids:
                        return {"batch_id": batch_id, "reconciled": True, **settled}
                started = time.perf_counter()
                try:
                    results = backend.send(lane, work.commands)
                except errors.BackendError as exc:
                    self.meter.call(backend.name, lane.kind, exc, time.perf_counter() - started, len(work.ids))
                    raise
                self.meter.call(backend.name, lane.kind, results, time.perf_counter() - started, len(work.ids))
                answer = self._outcomes(backend, work, list(enumerate(results)))
        except errors.BackendError as exc:
            answer = exc
        except _Fenced:
            blog.warning("batch lease lost during its read-back")
            return {"batch_id": batch_id, "owned": False}
        except Exception as exc:  # a defect, or a library error nobody mapped
            # It may have happened after the request left: an unknown outcome,
            # rather than a batch stuck in 'sending'.
            blog.exception("backend call failed unexpectedly")
            answer = errors.OutcomeUnknown(f"{type(exc).__name__}: {exc}")
        summary = self._apply(work, decide(work, answer), blog)
        for status, n in settled.items():
            summary[status] = summary.get(status, 0) + n
        return summary

    @staticmethod
    def _outcomes(backend: Backend, work: BatchWork, results: list[tuple[int, OpResult]]) -> list[Outcome]:
        """Outcomes of the batch's commands (by position) from the backend's
        results; an applied grant keeps what its revoke will need."""
        applied = KINDS[work.kind].applied.value
        out = []
        for i, r in results:
            refund = backend.refund_data(work.kind, work.commands[i], r.response) if r.status == "applied" else None
            out.append(
                Outcome(
                    work.ids[i],
                    applied if r.status == "applied" else r.status,
                    result=r.response,
                    error=r.error,
                    refund=refund,
                )
            )
        return out

    def _read_back(self, backend: Backend, work: BatchWork, blog: Any) -> tuple[BatchWork, Counter[str]]:
        """After a lost answer: settle what the inventory shows applied (or
        cannot tell) at once, and go on with what is certainly absent.
        Returns the rest and the statuses settled."""
        if backend.on_unknown is not OnUnknown.reconcile:
            return work, Counter()
        try:
            found = cast(ReadsBack, backend).reconcile(work.lane, work.commands)
        except errors.BackendError as exc:
            # The answer was lost and the inventory cannot be read either.
            raise errors.OutcomeUnknown(f"answer lost, and reading the inventory back failed: {exc}") from None
        settled = self._outcomes(backend, work, [(i, r) for i, r in enumerate(found) if r is not None])
        blog.info("batch reconciled", settled=len(settled), absent=len(found) - len(settled))
        if not settled:
            return work, Counter()
        rest = self.ledger.settle(work, settled)
        if rest is None:
            raise _Fenced()
        return rest, Counter(o.status for o in settled)

    def _apply(self, work: BatchWork, decision: Decision, blog: Any) -> dict[str, Any]:
        if isinstance(decision, Finish):
            return self._finish(work, decision.outcomes, blog)
        if isinstance(decision, Split):
            return self._split(work, decision.error, blog)
        return self._retry_later(work, decision, blog)

    def _recording(self, work: BatchWork, blog: Any, write: Callable[[], Any]) -> Any:
        """Run a ledger write that records the answer of a call made; while
        Redis is out of memory, hold the batch and write again."""
        started = time.monotonic()
        with self.keeper.holding(work):
            while True:
                try:
                    return write()
                except OutOfMemoryError:
                    if time.monotonic() - started > FULL_HOLD_S:
                        raise
                    if self.throttle("redis-full"):
                        blog.error(
                            "Redis is out of memory (maxmemory): this answer is held and written once "
                            "Redis takes writes again; free memory or raise maxmemory (said once per 30 s)"
                        )
                    time.sleep(FULL_RETRY_S)

    def _finish(self, work: BatchWork, outcomes: list[Outcome], blog: Any) -> dict[str, Any]:
        owned, written = self._recording(work, blog, lambda: self.ledger.complete(work, outcomes))
        counts = Counter(o.status for o in outcomes)
        if not owned:
            blog.warning("batch lease lost before its answer", written=written, **counts)
        else:
            blog.info("batch completed", **counts)
        applied = KINDS[work.kind].applied.value
        for o in outcomes:
            if o.status != applied:
                blog.warning("command " + o.status, external_purchase_id=o.record_id, error=o.error)
        return {"batch_id": work.batch_id, "owned": owned, **counts}

    def _retry_later(self, work: BatchWork, retry: Retry, blog: Any) -> dict[str, Any]:
        exc = retry.error
        certainly_not_applied = isinstance(exc, errors.Retryable)
        # Reading back right away could miss a request the backend is still
        # working on: give it at least a read timeout first.
        floor = self.settings.http_read_timeout_s if retry.reconcile else None
        delay = backoff_s(
            work.attempt,
            base=self.settings.retry_base_s,
            cap=self.settings.retry_max_backoff_s,
            retry_after=getattr(exc, "retry_after", None) or floor,
            rng=self.rng,
        )
        # A 429 or a wrong endpoint concerns the lane, not this batch: hold it.
        lane_wide = isinstance(exc, (errors.RateLimited, errors.EndpointRefused))
        self.meter.retry(backend_name(self.settings, work.kind, work.project_id), exc, lane_wide)
        if isinstance(exc, errors.EndpointRefused) and self.throttle(f"endpoint:{work.lane}"):
            blog.error(
                "lane backing off: the backend endpoint refused the call; check its base URL and "
                "configuration (said once per 30 s)",
                kind=work.kind,
                error=str(exc),
            )
        state = self._recording(
            work,
            blog,
            lambda: self.ledger.release(
                work,
                delay_ms=int(delay * 1000),
                error=str(exc),
                max_attempts=self.settings.retry_max_attempts,
                final="failed" if certainly_not_applied else "in_doubt",
                reconcile=retry.reconcile or (work.reconcile and certainly_not_applied),
                lane_wide=lane_wide,
                # A resending backend's lost answer stays unknown; a
                # reconciling one's is settled by the read-back before the
                # next call (what it finds absent is certainly not applied).
                unknown=not certainly_not_applied and work.on_unknown is OnUnknown.resend,
            ),
        )
        if state == "fenced":
            # The sweeper gave the batch up for lost while we waited. This
            # answer proves this attempt applied nothing: turn its in_doubt
            # into failed, unless an earlier attempt of a resending backend
            # may have lost its answer (then that one may have applied).
            earlier_unknown = work.attempt > 1 and work.on_unknown is OnUnknown.resend
            if certainly_not_applied and not earlier_unknown:
                return self._finish(work, everyone(work, "failed", exc).outcomes, blog)
            blog.warning("batch lease lost before its answer", error=str(exc))
        elif state in ("failed", "in_doubt"):
            blog.error(
                "batch ended: retries exhausted", status=state, error=str(exc), external_purchase_ids=work.ids[:50]
            )
        else:
            blog.warning("batch will retry", in_s=round(delay, 3), error=str(exc))
        return {"batch_id": work.batch_id, "state": state, "retry_in_s": round(delay, 3)}

    def _split(self, work: BatchWork, exc: errors.InvalidRequest, blog: Any) -> dict[str, Any]:
        state, children = self._recording(
            work, blog, lambda: self.ledger.split(work, lease_ms=int(self.settings.dispatch_lease_s * 1000))
        )
        if state == "fenced":
            # Given up for lost while we waited: the call was refused whole, so
            # nothing applied. Not 'rejected': the other commands were fine.
            return self._finish(work, everyone(work, "failed", exc).outcomes, blog)
        if state == "single":
            return self._finish(work, everyone(work, "rejected", exc).outcomes, blog)
        blog.warning("batch refused as a whole: split", into=children, error=str(exc))
        self.dispatch(children)
        return {"batch_id": work.batch_id, "split_into": children}
