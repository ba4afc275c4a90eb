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
from typing import Any, Callable

import orjson
import structlog
from pydantic import ValidationError

from schemas.commands import parse_command
from schemas.jsontext import loads_exact, split_array
from worker.keys import is_batch_list
from worker.runtime import Runtime

log = structlog.get_logger("grants.worker")

INGEST = "grants.ingest"
REPLAY = "grants.replay"
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


def _brief(exc: Exception) -> str:
    """A validation error in one line per problem: 'field: reason; ...'."""
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(message)'}: {e['msg']}" for e in exc.errors(include_url=False)
        )[:2000]
    return f"{type(exc).__name__}: {exc}"[:2000]


def _raw(value: Any) -> str:
    """The message as text for a dead letter, whatever it holds."""
    try:
        return orjson.dumps(value, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # integers beyond 64 bits, and the like
        return repr(value)


def chunk_elements(chunk: str | bytes | list) -> list[tuple[Any, Callable[[], str]]]:
    """Each element of a chunk as (decoded, raw text on demand); decoded is a
    ``ValueError`` for an element that is not JSON.

    The whole chunk is decoded at once when it can be (fast); otherwise its
    elements are split off unparsed and decoded one by one, so a 1,100-deep
    or 5,000-digit element is refused alone and its neighbours go on. The raw
    text, for a dead letter, is the element exactly as it arrived. Raises
    ``ValueError`` only when the chunk is not a JSON array at all.
    """
    if isinstance(chunk, list):
        return [(element, lambda e=element: _raw(e)) for element in chunk]
    text = chunk.decode("utf-8", errors="surrogateescape") if isinstance(chunk, bytes) else chunk
    try:
        decoded = loads_exact(text)
    except ValueError:
        pass
    else:
        if not isinstance(decoded, list):
            return [(decoded, lambda: text)]
        raws: list[str] = []

        def raw_of(position: int) -> str:
            if not raws:
                raws.extend(raw.strip() for _, raw in split_array(text))
            return raws[position]

        return [(element, lambda i=i: raw_of(i)) for i, element in enumerate(decoded)]
    elements: list[tuple[Any, Callable[[], str]]] = []
    try:
        for _offset, raw in split_array(text):
            try:
                value: Any = loads_exact(raw)
            except ValueError as exc:
                value = exc
            elements.append((value, lambda r=raw.strip(): r))
    except ValueError:
        if not elements:
            raise
    return elements


def _purchase_id_of(message: Any) -> str:
    """Best effort, for the dead letter's record: the purchase id if there is one."""
    try:
        epid = message["operation"]["purchase"]["external_purchase_id"]
    except (KeyError, TypeError, IndexError):
        return ""
    return epid if isinstance(epid, str) else ""


def ingest(task, chunk: Any = None, *extra: Any, **unexpected: Any) -> dict[str, int]:
    """Validate, de-duplicate and buffer a chunk of command messages.

    Nothing in a message can make this raise: a message that is not a chunk,
    and each element that is not a valid command, become dead letters with
    their raw payload and the reason; the rest of the chunk goes on.
    """
    rt: Runtime = task.app.grants_runtime()
    source = task.request.id or "unknown"
    if extra or unexpected or not isinstance(chunk, (str, bytes, list)):
        rt.ledger.dead_letter(_raw({"args": [chunk, *extra], "kwargs": unexpected}), "grants.ingest takes one argument: a JSON string (or list) of commands",
                              source=source)
        log.error("message refused: not a chunk of commands", task_id=source)
        return {"dead": 1}
    try:
        elements = chunk_elements(chunk)
    except ValueError as exc:  # not an array: nothing in it can be told apart
        rt.record_unusable(chunk if isinstance(chunk, (str, bytes)) else _raw(chunk),
                           f"the chunk is not JSON, or not an array of commands: {exc}", source=source)
        return {"dead": 1}
    parsed = []
    dead = 0
    for position, (message, raw) in enumerate(elements):
        try:
            if isinstance(message, ValueError):
                raise ValueError(f"not JSON: {message}")
            parsed.append(parse_command(message))
        except (ValidationError, ValueError, TypeError, RecursionError) as exc:
            dead += 1
            reason = _brief(exc)
            epid = _purchase_id_of(message)
            letter = rt.ledger.dead_letter(raw(), reason, source=f"{source}:{position}", purchase_id=epid)
            log.error("command refused: dead letter", task_id=source, position=position, dead_letter=letter,
                      external_purchase_id=epid or None, reason=reason[:300])
    results = rt.ledger.ingest(parsed, source=source)
    counts = Counter(r.result for r in results)
    for r in results:
        if r.result in ("dup", "conflict"):
            level = log.warning if r.result == "conflict" else log.info
            level(
                "command " + ("duplicate" if r.result == "dup" else "conflict: rejected, original kept"),
                project_id=r.command.project_id,
                external_purchase_id=r.command.external_purchase_id,
            )
    if parsed:
        log.info("chunk ingested", task_id=source, dead=dead,
                 project_ids=sorted({c.project_id for c, _ in parsed}),
                 external_purchase_ids=f"{parsed[0][0].external_purchase_id} … {parsed[-1][0].external_purchase_id}",
                 **counts)
    rt.take(INGEST_TAKE)
    return {"dead": dead, **counts}


def send_batches(task, batch_ids: Any = None, *extra: Any, **unexpected: Any) -> dict[str, Any]:
    """Send the given batches, then drain ready ones until the budget is spent."""
    rt: Runtime = task.app.grants_runtime()
    if extra or unexpected or not is_batch_list(batch_ids):
        rt.record_unusable(_raw({"args": [batch_ids, *extra], "kwargs": unexpected}),
                           "grants.send_batches takes one argument: a list of batch ids", source=task.request.id or "")
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
    filters = rp.Filters(Status(status), kind=kind, project_id=project_id,
                         since_ms=None if since is None else rp.parse_time(since),
                         until_ms=None if until is None else rp.parse_time(until), sku=sku, user=user, limit=limit)
    summary = rp.replay(rt.ledger, rt.results, filters, actor=actor, force=force, dry_run=dry_run,
                        idempotent=lambda p: project_is_idempotent(rt.settings, p))
    if summary.done:
        log.warning("replay", actor=actor, status=status, kind=kind, **summary.verdicts)
    return summary.as_dict()
