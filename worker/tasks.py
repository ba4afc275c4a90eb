"""The Celery tasks: ``grants.send_batches`` (send batches, then keep
draining ready ones for a bounded time) and ``grants.replay`` (for Flower's
task API). Ingestion is not a task: it reads the command stream
(worker/ingest.py).

Each task costs Celery a fixed price (broker round trips, three task events,
an ack) however little it does; a task per 50-grant batch made that price the
bottleneck. A send task therefore carries a few batches and, when done, takes
the next ready batch itself (take + send back to back) until the drain budget
is spent, so the fixed price is paid once per second of work, not per call.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import orjson
import structlog

from worker.keys import is_batch_list
from worker.runtime import Runtime

log = structlog.get_logger("grants.worker")

REPLAY = "grants.replay"
SEND_BATCHES = "grants.send_batches"
SEND_QUEUE = "grants.send"
# Operator tasks (replay) have a queue of their own: a long replay never
# waits behind, or holds up, the send tasks.
OPS_QUEUE = "grants.ops"

# Batches handed to one send task. Small, so a chunk's batches spread over
# the pool processes (and machines) instead of queueing behind one.
BATCHES_PER_TASK = 5
# How long a send task keeps draining ready batches after its own: long enough
# to amortise the task's fixed cost, short enough to stay well inside the
# broker's visibility timeout and to let other tasks in between.
DRAIN_BUDGET_S = 2.0


def _raw(value: Any) -> str:
    """Task arguments as text for a dead letter, whatever they hold."""
    try:
        return orjson.dumps(value, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # integers beyond 64 bits, and the like
        return repr(value)


def send_batches(task, batch_ids: Any = None, *extra: Any, **unexpected: Any) -> dict[str, Any]:
    """Send the given batches, then drain ready ones until the budget is spent."""
    rt: Runtime = task.app.grants_runtime()
    if extra or unexpected or not is_batch_list(batch_ids):
        rt.record_unusable(
            _raw({"args": [batch_ids, *extra], "kwargs": unexpected}),
            "grants.send_batches takes one argument: a list of batch ids",
            source=task.request.id or "",
        )
        return {"dead": 1}
    deadline = time.monotonic() + DRAIN_BUDGET_S
    outcomes: Counter = Counter()
    sent = []
    queue = list(batch_ids)
    while queue:
        summary = rt.sender.send(queue.pop(0))
        if not summary.get("skipped"):
            sent.append(summary["batch_id"])
            outcomes.update({k: v for k, v in summary.items() if k in ("granted", "rejected", "failed", "in_doubt")})
        if not queue and time.monotonic() < deadline:
            queue = rt.take(1, dispatch=False)
    return {"batches": sent, **outcomes}


def replay(
    task,
    status: str,
    kind: str = "grant",
    project_id: int | None = None,
    since: str | None = None,
    until: str | None = None,
    sku: str | None = None,
    user: str | None = None,
    limit: int = 1000,
    dry_run: bool = False,
    force: bool = False,
    actor: str = "celery-task",
) -> dict[str, Any]:
    """``grants replay`` as a task (e.g. from Flower's task API); returns a summary."""
    from schemas.records import Status
    from worker import replay as rp
    from worker.backends.registry import project_is_idempotent

    rt: Runtime = task.app.grants_runtime()
    filters = rp.Filters(
        Status(status),
        kind=kind,
        project_id=project_id,
        since_ms=None if since is None else rp.parse_time(since),
        until_ms=None if until is None else rp.parse_time(until),
        sku=sku,
        user=user,
        limit=limit,
    )
    summary = rp.replay(
        rt.ledger,
        rt.results,
        filters,
        actor=actor,
        force=force,
        dry_run=dry_run,
        idempotent=lambda p: project_is_idempotent(rt.settings, p),
    )
    if summary.done:
        log.warning("replay", actor=actor, status=status, kind=kind, **summary.verdicts)
    return summary.as_dict()
