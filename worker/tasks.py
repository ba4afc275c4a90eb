"""The Celery tasks: ``grants.ingest`` (claim + buffer a chunk of commands)
and ``grants.send_batch`` (one attempt at one batch). Both keep the pipeline
moving by taking the next ready batches when they finish."""

from __future__ import annotations

from collections import Counter
from typing import Any

import structlog
from pydantic import ValidationError

from schemas.commands import parse_command
from worker.runtime import Runtime

log = structlog.get_logger("grants.worker")

INGEST = "grants.ingest"
SEND_BATCH = "grants.send_batch"
INGEST_QUEUE = "grants.ingest"
SEND_QUEUE = "grants.send"

# Batches an ingest may take at once: a full chunk of 500 commands is 10.
INGEST_TAKE = 20
# Batches a finished send takes: one to replace itself, one to catch up.
SEND_TAKE = 2


def ingest(task, commands: list[Any]) -> dict[str, int]:
    """Validate, de-duplicate and buffer a chunk of command messages."""
    rt: Runtime = task.app.grants_runtime()
    parsed = []
    dead = 0
    for position, message in enumerate(commands if isinstance(commands, list) else [commands]):
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


def send_batch(task, batch_id: str) -> dict[str, Any]:
    """Send one batch (once), then take what is ready next."""
    rt: Runtime = task.app.grants_runtime()
    summary = rt.sender.send(batch_id)
    rt.take(SEND_TAKE)
    return summary
