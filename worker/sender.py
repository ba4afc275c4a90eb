"""One attempt at one batch: hold it, call the backend, record what happened.

The decision table, which is the whole point of this module:

    answer                         -> batch / commands
    200                            -> each command granted (or in_doubt if unreported)
    Retryable (connect, 429, 503)  -> back off; after max attempts: failed
      429, wrong endpoint (3xx,    -> the whole lane backs off, not just this batch
      404/405 naming nothing)
    InvalidRequest, >1 command     -> split in two; each half tried on its own
    InvalidRequest, 1 command      -> rejected
    AuthFailed                     -> failed (nothing applied; replay after fixing)
    NotSent (request not built)    -> failed (nothing left us; replay after fixing)
    Permanent (whole call)         -> rejected (e.g. PlayFab CatalogNotConfigured)
    OutcomeUnknown                 -> idempotent backend: back off and resend
                                      reconcilable backend: back off, read the
                                        inventory back, send only what is absent
                                      otherwise: in_doubt, never resent
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from typing import Any, Callable

import structlog

from schemas.kinds import KINDS
from worker import errors
from worker.backends.base import Backend, OpResult
from worker.backends.registry import Backends, unknown_outcome_policy
from worker.keys import batch_lane
from worker.leases import LeaseKeeper
from worker.logs import Throttle
from worker.ledger import BatchWork, Ledger, Outcome
from worker.settings import Settings

log = structlog.get_logger("grants.sender")

# Seconds added to the longest possible HTTP call to make the 'sending' lease:
# covers the Redis round trips around the call and scheduling hiccups.
SEND_LEASE_MARGIN_S = 5.0
# A call may hold its lease (renewed while it runs) for this many times the
# longest call httpx's timeouts allow; past that the sweeper calls it lost.
MAX_HOLD_FACTOR = 4


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


class _Fenced(Exception):
    """The batch was taken from us (the sweeper gave it up) mid-attempt."""


class Sender:
    """Sends batches, each to the backend of its project and kind."""

    def __init__(
        self,
        ledger: Ledger,
        backends: Backends,
        settings: Settings,
        dispatch: Callable[[list[str]], None],
        rng: random.Random | None = None,
    ):
        self.ledger = ledger
        self.backends = backends
        self.settings = settings
        self.dispatch = dispatch
        self.rng = rng or random.Random()
        self.throttle = Throttle()
        self.lease_ms = int((settings.http_call_budget_s + SEND_LEASE_MARGIN_S) * 1000)
        self.keeper = LeaseKeeper(ledger, lease_ms=self.lease_ms,
                                  max_hold_s=MAX_HOLD_FACTOR * settings.http_call_budget_s)

    def send(self, batch_id: str) -> dict[str, Any]:
        """Attempt the batch once; returns a summary for the task result."""
        project_id, kind = batch_lane(batch_id)
        backend = self.backends.for_batch(kind, project_id)
        token = uuid.uuid4().hex
        work = self.ledger.begin(batch_id, token, lease_ms=self.lease_ms, on_unknown=unknown_outcome_policy(backend),
                                 budget=self.backends.budget_spec(kind, project_id))
        if work is None:
            # Finished, held by a live attempt, or backing off: a duplicate dispatch.
            return {"batch_id": batch_id, "skipped": True}
        blog = log.bind(batch_id=batch_id, project_id=work.project_id, attempt=work.attempt, size=len(work.purchase_ids))
        blog.info("batch sending", backend=backend.name, kind=work.kind, reconcile=work.reconcile or None)
        try:
            with self.keeper.holding(work):
                if work.reconcile:
                    # What the read-back proves is final now, whatever the
                    # rest of the batch meets next (a 400, 503s, a split).
                    work = self._read_back(backend, work, blog)
                    if not work.purchase_ids:
                        return {"batch_id": batch_id, "reconciled": True}
                results = backend.send(work.kind, work.project_id, work.commands)
        except errors.Retryable as exc:
            return self._retry_later(work, exc, blog)
        except errors.InvalidRequest as exc:
            return self._split_or_reject(work, exc, blog)
        except (errors.AuthFailed, errors.NotSent) as exc:
            blog.error("batch not applied: " + ("credentials" if isinstance(exc, errors.AuthFailed) else "not sent"),
                       error=str(exc))
            return self._finish(work, [Outcome(p, "failed", error=str(exc)) for p in work.purchase_ids], blog)
        except errors.Permanent as exc:
            return self._finish(work, [Outcome(p, "rejected", error=str(exc)) for p in work.purchase_ids], blog)
        except errors.OutcomeUnknown as exc:
            return self._unknown(backend, work, exc, blog)
        except _Fenced:
            blog.warning("batch lease lost during its read-back")
            return {"batch_id": batch_id, "owned": False}
        except Exception as exc:  # a defect, or a library error nobody mapped
            # It may have happened after the request left: treat it as an
            # unknown outcome rather than leave the batch stuck in 'sending'.
            blog.exception("backend call failed unexpectedly")
            return self._unknown(backend, work, errors.OutcomeUnknown(f"{type(exc).__name__}: {exc}"), blog)
        return self._finish(work, self._outcomes(backend, work, list(zip(range(len(results)), results))), blog)

    @staticmethod
    def _outcomes(backend: Backend, work: BatchWork, results: list[tuple[int, OpResult]]) -> list[Outcome]:
        """Outcomes of the batch's commands (by position) from the backend's
        results; an applied grant keeps what its revoke will need."""
        applied = KINDS[work.kind].applied.value
        out = []
        for i, r in results:
            refund = backend.refund_data(work.kind, work.commands[i], r.response) if r.status == "applied" else None
            out.append(Outcome(work.purchase_ids[i], applied if r.status == "applied" else r.status,
                               result=r.response, error=r.error, refund=refund))
        return out

    def _read_back(self, backend: Backend, work: BatchWork, blog) -> BatchWork:
        """After a lost answer: settle what the inventory shows applied (or
        cannot tell), and return the batch of what is certainly absent."""
        try:
            found = backend.reconcile(work.kind, work.project_id, work.commands)
        except errors.BackendError as exc:
            # The answer was lost and the inventory cannot be read either.
            raise errors.OutcomeUnknown(f"answer lost, and reading the inventory back failed: {exc}") from None
        settled = self._outcomes(backend, work, [(i, r) for i, r in enumerate(found) if r is not None])
        blog.info("batch reconciled", settled=len(settled), absent=len(found) - len(settled))
        if not settled:
            return work
        rest = self.ledger.settle(work, settled)
        if rest is None:
            raise _Fenced()
        return rest

    def _unknown(self, backend: Backend, work: BatchWork, exc: errors.OutcomeUnknown, blog) -> dict[str, Any]:
        policy = unknown_outcome_policy(backend)
        if policy == "doubt":
            return self._finish(work, [Outcome(p, "in_doubt", error=str(exc)) for p in work.purchase_ids], blog)
        return self._retry_later(work, exc, blog, reconcile=policy == "reconcile")

    def _finish(self, work: BatchWork, outcomes: list[Outcome], blog) -> dict[str, Any]:
        owned, written = self.ledger.complete(work, outcomes)
        counts = Counter(o.status for o in outcomes)
        if not owned:
            blog.warning("batch lease lost before its answer", written=written, **counts)
        else:
            blog.info("batch completed", **counts)
        for o in outcomes:
            if o.status != KINDS[work.kind].applied.value:
                blog.warning("command " + o.status, external_purchase_id=o.purchase_id, error=o.error)
            else:
                blog.debug("command " + o.status, external_purchase_id=o.purchase_id)
        return {"batch_id": work.batch_id, "owned": owned, **counts}

    def _retry_later(self, work: BatchWork, exc: errors.BackendError, blog, reconcile: bool = False) -> dict[str, Any]:
        certainly_not_applied = isinstance(exc, errors.Retryable)
        # Reading back right away could miss a request the backend is still
        # working on: give it at least a read timeout first.
        floor = self.settings.http_read_timeout_s if reconcile else None
        delay = backoff_s(
            work.attempt,
            base=self.settings.retry_base_s,
            cap=self.settings.retry_max_backoff_s,
            retry_after=getattr(exc, "retry_after", None) or floor,
            rng=self.rng,
        )
        # A 429 or a wrong endpoint concerns the lane, not this batch: hold it.
        lane_wide = isinstance(exc, (errors.RateLimited, errors.EndpointRefused))
        if isinstance(exc, errors.EndpointRefused) and self.throttle(f"endpoint:{work.kind}:{work.project_id}"):
            blog.error("lane backing off: the backend endpoint refused the call; check its base URL and "
                       "configuration (said once per 30 s)", kind=work.kind, error=str(exc))
        state = self.ledger.release(
            work, delay_ms=int(delay * 1000), error=str(exc), max_attempts=self.settings.retry_max_attempts,
            final="failed" if certainly_not_applied else "in_doubt",
            reconcile=reconcile or (work.reconcile and certainly_not_applied), lane_wide=lane_wide,
        )
        if state == "fenced":
            # The sweeper gave the batch up for lost while we waited. This
            # answer proves nothing applied: turn its in_doubt into failed.
            if certainly_not_applied:
                return self._finish(work, [Outcome(p, "failed", error=str(exc)) for p in work.purchase_ids], blog)
            blog.warning("batch lease lost before its answer", error=str(exc))
        elif state in ("failed", "in_doubt"):
            blog.error("batch ended: retries exhausted", status=state, error=str(exc))
            for p in work.purchase_ids:
                blog.warning("command " + state, external_purchase_id=p, error=str(exc))
        else:
            blog.warning("batch will retry", in_s=round(delay, 3), error=str(exc))
        return {"batch_id": work.batch_id, "state": state, "retry_in_s": round(delay, 3)}

    def _split_or_reject(self, work: BatchWork, exc: errors.InvalidRequest, blog) -> dict[str, Any]:
        state, children = self.ledger.split(work, lease_ms=int(self.settings.dispatch_lease_s * 1000))
        if state == "fenced":
            # Given up for lost while we waited: the call was refused whole, so
            # nothing applied. Not 'rejected': the other commands were fine.
            return self._finish(work, [Outcome(p, "failed", error=str(exc)) for p in work.purchase_ids], blog)
        if state == "single":
            return self._finish(work, [Outcome(p, "rejected", error=str(exc)) for p in work.purchase_ids], blog)
        blog.warning("batch refused as a whole: split", into=children, error=str(exc))
        self.dispatch(children)
        return {"batch_id": work.batch_id, "split_into": children}
