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
from celery import Task

from schemas.kinds import KINDS
from worker.errors import SendTaskFailed
from worker.keys import is_batch_list
from worker.runtime import Runtime
from worker.work import Lane

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

# Statuses that make a send task FAILURE in its events (and in Flower).
NOT_APPLIED = ("failed", "in_doubt")
# Bounds of what a send task shows Flower: its args name at most this many
# purchase ids (5 batches of 50 fit), its result lists at most this many
# retries, and its result or exception text is at most this long.
SHOWN_IDS = 300
SHOWN_RETRIES = 10
RESULT_MAX_CHARS = 8192

# The send task's options (worker/celery_app.py registers it with them).
SEND_OPTIONS: dict[str, Any] = {
    "bind": True,
    # Raised on purpose once the outcomes are written (and logged by the
    # sender): Celery logs it at INFO, without a traceback.
    "throws": (SendTaskFailed,),
    # Acked after it ran, failed or not: a FAILURE is final, never put back
    # on the queue or dead-lettered. No Celery retries: the ledger backs off.
    "acks_late": True,
    "acks_on_failure_or_timeout": True,
    "max_retries": 0,
    # The result text in the task-succeeded event (Celery's default: 1024).
    "resultrepr_maxsize": RESULT_MAX_CHARS,
}


def _raw(value: Any) -> str:
    """Task arguments as text for a dead letter, whatever they hold."""
    try:
        return orjson.dumps(value, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # integers beyond 64 bits, and the like
        return repr(value)


def batch_members(rt: Runtime, batch_ids: list[str]) -> dict[str, list[str]]:
    """The purchase (record) ids each batch holds now, in one round trip."""
    pipe = rt.redis.pipeline(transaction=False)
    for batch_id in batch_ids:
        pipe.hget(rt.keys.batch(batch_id), "members")
    return {b: orjson.loads(m) if m else [] for b, m in zip(batch_ids, pipe.execute(), strict=True)}


def _ids_text(ids: list[str]) -> str:
    text = " ".join(ids[:SHOWN_IDS])
    return text + (f" ... and {len(ids) - SHOWN_IDS} more" if len(ids) > SHOWN_IDS else "")


def describe(batch_ids: list[str], members: dict[str, list[str]]) -> str:
    """A send task's ``argsrepr``: its batch ids and their purchase ids, the
    text Flower shows as the task's args and searches (``/api/tasks?search=``)."""
    return f"{batch_ids!r} purchases: {_ids_text([i for b in batch_ids for i in members.get(b, [])])}"


class SendReport:
    """What one send task did, per kind: outcome counts, batches retried
    (backing off in the ledger: not Celery retries), split, or lost to the
    sweeper. Its text is the task's result, or its exception's message."""

    def __init__(self) -> None:
        self.batches: list[str] = []
        self.outcomes: dict[str, Counter] = {}
        self.retries: list[dict[str, Any]] = []
        self.not_applied: list[str] = []  # batches with failed or in_doubt commands
        self.not_applied_ids: list[str] = []  # and their purchase ids
        self.drained: list[str] = []  # purchase ids of batches taken while draining

    def add(self, batch_id: str, members: list[str], summary: dict[str, Any], rt: Runtime) -> None:
        if summary.get("skipped"):
            return
        self.batches.append(batch_id)
        kind = Lane.of_batch(batch_id).kind
        counts = self.outcomes.setdefault(kind, Counter())
        statuses = {s.value for s in KINDS[kind].statuses} if kind in KINDS else set()
        counts.update({k: v for k, v in summary.items() if k in statuses and isinstance(v, int)})
        state = summary.get("state")
        if state in NOT_APPLIED:  # retries exhausted: the whole batch ended so
            counts[state] += len(members)
        elif state == "retry":
            counts["retried"] += 1
            if len(self.retries) < SHOWN_RETRIES:
                error = rt.redis.hget(rt.keys.batch(batch_id), "err") or ""
                self.retries.append({"batch": batch_id, "in_s": summary.get("retry_in_s"), "error": error[:200]})
        if summary.get("split_into"):
            counts["split"] += 1
        if summary.get("reconciled"):  # every command settled by reading the inventory back
            counts["read_back"] += 1
        if summary.get("owned") is False or state == "fenced":
            counts["lease_lost"] += 1
        if any(summary.get(s) for s in NOT_APPLIED) or state in NOT_APPLIED:
            self.not_applied.append(batch_id)
            self.not_applied_ids += members

    def totals(self) -> Counter:
        out: Counter = Counter()
        for counts in self.outcomes.values():
            out.update(counts)
        return out

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"batches": self.batches, "outcomes": {k: dict(v) for k, v in self.outcomes.items()}}
        if self.retries:
            out["retries"] = self.retries
        if self.not_applied:
            out["failed_or_in_doubt_in"] = self.not_applied
            out["their_purchases"] = _ids_text(self.not_applied_ids)
        if self.drained:
            out["drained_purchases"] = _ids_text(self.drained)
        return out

    def failure(self) -> SendTaskFailed | None:
        """The exception that makes the task FAILURE, if anything failed or is in doubt."""
        totals = self.totals()
        if not any(totals[s] for s in NOT_APPLIED):
            return None
        head = ", ".join(f"{totals[s]} {s}" for s in NOT_APPLIED if totals[s])
        text = f"{head}: " + orjson.dumps(self.as_dict()).decode()
        return SendTaskFailed(text if len(text) <= RESULT_MAX_CHARS else text[: RESULT_MAX_CHARS - 3] + "...")


def send_batches(task: Task, batch_ids: Any = None, *extra: Any, **unexpected: Any) -> dict[str, Any]:
    """Send the given batches, then drain ready ones until the budget is spent.

    Ends FAILURE (:class:`SendTaskFailed`, once every outcome is written)
    when a batch ended with failed or in_doubt commands; SUCCESS otherwise.
    Either way the message is acked: nothing is sent twice by Celery.
    """
    rt: Runtime = task.app.grants_runtime()
    if extra or unexpected or not is_batch_list(batch_ids):
        rt.record_unusable(
            _raw({"args": [batch_ids, *extra], "kwargs": unexpected}),
            "grants.send_batches takes one argument: a list of batch ids",
            source=task.request.id or "",
        )
        return {"dead": 1}
    deadline = time.monotonic() + DRAIN_BUDGET_S
    report = SendReport()
    queue = list(batch_ids)
    members = batch_members(rt, queue)
    while queue:
        batch_id = queue.pop(0)
        report.add(batch_id, members.get(batch_id, []), rt.sender.send(batch_id), rt)
        if not queue and time.monotonic() < deadline:
            queue = rt.take(1, dispatch=False)
            if queue:
                members.update(batch_members(rt, queue))
                report.drained += [i for b in queue for i in members[b]]
    failure = report.failure()
    if failure is not None:
        _show_result(task, str(failure))
        raise failure
    return report.as_dict()


def _show_result(task: Task, text: str) -> None:
    """Give a failing task a result text in its events, as a succeeding one
    has: Flower searches a task's args and result, not its exception, and a
    batch the task took while draining is named in neither args nor
    exception. A custom event (``task-outcomes``) sets the ``result`` field
    Flower keeps; the task-failed event after it makes the state FAILURE."""
    try:
        task.send_event("task-outcomes", result=text)
    except Exception as exc:  # the broker away: the outcomes are written all the same
        log.warning("task result event not sent", error=str(exc))


def replay(
    task: Task,
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
