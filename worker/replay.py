"""Replay: send failed (or in_doubt) commands again, guarded by the ledger.

Selection and planning happen here, in Python; the decision that counts is
taken again atomically by the ledger's replay script, so a purchase granted
in the meantime, or replayed by someone else a moment earlier, is never sent
twice. A replayed command goes back into its lane's buffer: the same
batching, sending and outcome path as a new one. Each replay is written into
the record's history (who, when, from which status, after how many attempts).

:func:`replay` is the one orchestration; ``grants replay`` and the
``grants.replay`` task both call it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from schemas.records import REPLAYABLE, Status
from worker.ledger import Ledger
from worker.results import Results

IN_DOUBT_RISK = (
    "in_doubt means the request reached the backend and its answer was lost: the items may "
    "already be in the player's inventory, and replaying can grant them twice. Check the "
    "inventory first, or configure the backend as idempotent (GRANTS_XSOLLA_IDEMPOTENT) if it "
    "ignores a repeated external_purchase_id."
)

# Targets per ledger call: one Lua call blocks Redis, so keep each short.
REPLAY_CHUNK = 500


def parse_time(text: str) -> int:
    """An ISO 8601 time as epoch milliseconds; a time without a zone is UTC."""
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def record_user(record: dict[str, Any]) -> str | None:
    """The user a record's command is for, whatever its kind."""
    command = record.get("command") or {}
    operation = command.get("operation") or {}
    return (operation.get("user") or {}).get("id") or command.get("user_id") or command.get("playfab_id")


def record_skus(record: dict[str, Any]) -> set[str]:
    """The SKUs a record's command carries (grants: items; Backpack: item_sku)."""
    command = record.get("command") or {}
    items = (command.get("operation") or {}).get("items") or command.get("items") or []
    return {str(i.get("sku") or i.get("item_sku")) for i in items if isinstance(i, dict)}


@dataclass(frozen=True)
class Filters:
    """Which outcomes to replay."""

    status: Status
    kind: str = "grant"
    project_id: int | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    sku: str | None = None
    user: str | None = None
    limit: int = 1000

    def __post_init__(self) -> None:
        if self.status not in REPLAYABLE:
            raise ValueError(f"only {sorted(s.value for s in REPLAYABLE)} can be replayed, not {self.status.value}")
        if self.limit < 1:
            raise ValueError(f"limit must be at least 1, not {self.limit}")

    def matches(self, record: dict[str, Any]) -> bool:
        if self.user is not None and record_user(record) != self.user:
            return False
        return self.sku is None or self.sku in record_skus(record)


@dataclass(frozen=True)
class Planned:
    """One candidate and what replay will do with it, and why."""

    record: dict[str, Any]
    replay: bool
    why: str

    @property
    def record_id(self) -> str:
        return self.record.get("external_purchase_id") or self.record.get("operation_id") or ""

    @property
    def name(self) -> str:
        return f"{self.record['project_id']}/{self.record_id}"


@dataclass
class Summary:
    """What a replay chose, refused and did."""

    planned: list[Planned]
    verdicts: Counter = field(default_factory=Counter)
    needs_force: bool = False
    done: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The summary as the Celery task returns it (Flower shows it)."""
        out: dict[str, Any] = {
            "candidates": len(self.planned),
            "plan": [f"{'replay' if p.replay else 'skip'} {p.name}: {p.why}" for p in self.planned[:50]],
        }
        if self.needs_force:
            out["risk"] = IN_DOUBT_RISK
        if self.done:
            out["verdicts"] = dict(self.verdicts)
        return out


def select(results: Results, filters: Filters) -> Iterator[dict[str, Any]]:
    """Records matching the filters, oldest first, at most ``filters.limit``."""
    found = 0
    for record in results.iter(
        filters.status,
        kind=filters.kind,
        project_id=filters.project_id,
        since_ms=filters.since_ms,
        until_ms=filters.until_ms,
    ):
        if filters.matches(record):
            yield record
            found += 1
            if found >= filters.limit:
                return


def plan(records: Iterable[dict[str, Any]], *, force: bool, idempotent: Callable[[int], bool]) -> list[Planned]:
    """Decide per record; in_doubt needs ``force`` unless its project's backend is idempotent."""
    planned = []
    for r in records:
        reason = f"{r['status']} after {r['attempts']} attempt(s)" + (f": {r['error']}" if r.get("error") else "")
        if r["status"] == Status.in_doubt.value and not (force or idempotent(r["project_id"])):
            planned.append(Planned(r, False, "in_doubt: needs --force (" + reason + ")"))
        else:
            planned.append(Planned(r, True, reason))
    return planned


def execute(
    ledger: Ledger,
    planned: list[Planned],
    *,
    kind: str,
    actor: str,
    on_progress: Callable[[int], None] | None = None,
) -> Counter:
    """Replay the planned records; counts of the ledger's verdicts.

    Verdicts: replayed; granted / revoked / rejected / noop (changed since
    planning: left alone); refunded (a grant with a revoke: never replayed);
    needs_force; busy (already pending or sending); missing (expired).
    """
    todo = [p for p in planned if p.replay]
    verdicts: Counter = Counter(skipped=len(planned) - len(todo))
    done = 0
    for start in range(0, len(todo), REPLAY_CHUNK):
        chunk = todo[start : start + REPLAY_CHUNK]
        targets = [(p.record["project_id"], p.record_id) for p in chunk]
        # The plan already refused in_doubt without --force (or an idempotent
        # backend); the script re-checks everything else at the last moment.
        verdicts.update(ledger.replay(targets, kind=kind, actor=actor, allow_in_doubt=True))
        done += len(chunk)
        if on_progress:
            on_progress(done)
    return verdicts


def replay(
    ledger: Ledger,
    results: Results,
    filters: Filters,
    *,
    actor: str,
    force: bool,
    dry_run: bool,
    idempotent: Callable[[int], bool],
    on_planned: Callable[[Summary], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> Summary:
    """Select, plan and (unless a dry run, or in_doubt without ``force``) replay.

    ``on_planned`` sees the plan before anything changes (the CLI prints it
    and sizes its progress bar there).
    """
    planned = plan(select(results, filters), force=force, idempotent=idempotent)
    summary = Summary(
        planned, needs_force=filters.status is Status.in_doubt and not force and any(not p.replay for p in planned)
    )
    if on_planned:
        on_planned(summary)
    if dry_run or summary.needs_force:
        return summary
    summary.verdicts = execute(ledger, planned, kind=filters.kind, actor=actor, on_progress=on_progress)
    summary.done = True
    return summary
