"""The Celery tasks: ``grants.ingest`` (claim + buffer a chunk of commands)
and ``grants.send_batches`` (send batches, then keep draining ready ones for
a bounded time).

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
from pydantic import ValidationError

from schemas.commands import parse_command
from worker.runtime import Runtime

log = structlog.get_logger("grants.worker")

INGEST = "grants.ingest"
SEND_BATCHES = "grants.send_batches"
INGEST_QUEUE = "grants.ingest"
SEND_QUEUE = "grants.send"

# Batches an ingest takes and hands to a new send task. The rest of its chunk
# stays buffered for the send tasks already draining (and the sweeper): one
# new sender per chunk keeps every pool process busy without a task per batch.
INGEST_TAKE = 5
# Batches handed to one send task. Small, so a chunk's batches spread over
# the pool processes (and machines) instead of queueing behind one.
BATCHES_PER_TASK = 5
# How long a send task keeps draining ready batches after its own: long enough
# to amortise the task's fixed cost, short enough to stay well inside the
# broker's visibility timeout and to let ingest tasks in between.
DRAIN_BUDGET_S = 2.0


def _messages(chunk: Any) -> list[Any]:
    """The command messages of a chunk: a JSON string (what producers send) or a list."""
    if isinstance(chunk, (str, bytes)):
        chunk = orjson.loads(chunk)
    return chunk if isinstance(chunk, list) else [chunk]


def ingest(task, chunk: str | list[Any]) -> dict[str, int]:
    """Validate, de-duplicate and buffer a chunk of command messages."""
    rt: Runtime = task.app.grants_runtime()
    parsed = []
    dead = 0
    for position, message in enumerate(_messages(chunk)):
        try:
            parsed.append(parse_command(message))
        except (ValidationError, ValueError, TypeError) as exc:
            dead += 1
            log.error("command refused: not a valid command", task_id=task.request.id, position=position,
                      reason=str(exc).splitlines()[0][:300])
    results = rt.ledger.ingest(parsed, source=task.request.id)
    counts = Counter(r.result for r in results)
    for r in results:
        if r.result in ("dup", "conflict"):
            level = log.warning if r.result == "conflict" else log.info
            level(
                "command " + ("duplicate" if r.result == "dup" else "conflict: rejected, original kept"),
                project_id=r.command.project_id,
                external_purchase_id=r.command.external_purchase_id,
            )
    log.info("chunk ingested", task_id=task.request.id, dead=dead, **counts)
    rt.take(INGEST_TAKE)
    return {"dead": dead, **counts}


def send_batches(task, batch_ids: list[str]) -> dict[str, Any]:
    """Send the given batches, then drain ready ones until the budget is spent."""
    rt: Runtime = task.app.grants_runtime()
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
