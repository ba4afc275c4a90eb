"""Replay: send failed (or in_doubt) grants again, guarded by the ledger.

Selection and planning happen here, in Python; the decision that counts is
taken again atomically by the ledger's replay script, so a purchase granted
in the meantime, or replayed by someone else a moment earlier, is never sent
twice. A replayed command goes back into its project's buffer: the same
batching, sending and outcome path as a new one. Each replay is written into
the record's history (who, when, from which status, after how many attempts).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

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


@dataclass(frozen=True)
class Filters:
    """Which outcomes to replay."""

    status: Status
    project_id: int | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    sku: str | None = None
    user: str | None = None
    limit: int = 1000

    def __post_init__(self) -> None:
        if self.status not in REPLAYABLE:
            raise ValueError(f"only {sorted(s.value for s in REPLAYABLE)} can be replayed, not {self.status.value}")

    def matches(self, record: dict[str, Any]) -> bool:
        operation = (record.get("command") or {}).get("operation") or {}
        if self.user is not None and (operation.get("user") or {}).get("id") != self.user:
            return False
        if self.sku is not None and self.sku not in {i.get("sku") for i in operation.get("items") or []}:
            return False
        return True


@dataclass(frozen=True)
class Planned:
    """One candidate and what replay will do with it, and why."""

    record: dict[str, Any]
    replay: bool
    why: str

    @property
    def name(self) -> str:
        return f"{self.record['project_id']}/{self.record['external_purchase_id']}"


def select(results: Results, filters: Filters) -> Iterator[dict[str, Any]]:
    """Records matching the filters, oldest first, at most ``filters.limit``."""
    found = 0
    for record in results.iter(filters.status, project_id=filters.project_id,
                               since_ms=filters.since_ms, until_ms=filters.until_ms):
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
    actor: str,
    on_progress: Callable[[int], None] | None = None,
) -> Counter:
    """Replay the planned records; counts of the ledger's verdicts.

    Verdicts: replayed; granted / rejected (changed since planning: left
    alone); revoked (refunded: never replayed); needs_force; busy (already
    pending or sending); missing (expired).
    """
    todo = [p for p in planned if p.replay]
    verdicts: Counter = Counter(skipped=len(planned) - len(todo))
    done = 0
    for start in range(0, len(todo), REPLAY_CHUNK):
        chunk = todo[start : start + REPLAY_CHUNK]
        targets = [(p.record["project_id"], p.record["external_purchase_id"]) for p in chunk]
        # The plan already refused in_doubt without --force (or an idempotent
        # backend); the script re-checks everything else at the last moment.
        verdicts.update(ledger.replay(targets, actor=actor, allow_in_doubt=True))
        done += len(chunk)
        if on_progress:
            on_progress(done)
    return verdicts
