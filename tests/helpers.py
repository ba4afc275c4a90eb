"""Builders and waits shared by the tests."""

from __future__ import annotations

import time
from typing import Any, Iterable

from schemas.commands import GrantCommand
from schemas.records import FINAL_STATUSES
from worker.results import Results


def operation(purchase_id: str, *, user: str = "user-1", sku: str = "gem.pack", quantity: int = 1,
              amount: str = "2.99", **extra: Any) -> dict[str, Any]:
    """One Xsolla purchase operation, as a producer would send it."""
    return {
        "user": {"id": user},
        "items": [{"sku": sku, "quantity": quantity}],
        "purchase": {
            "amount": amount,
            "currency": "USD",
            "external_purchase_id": purchase_id,
            "external_purchase_date": "2026-11-21T10:00:00+00:00",
        },
        **extra,
    }


def command(project_id: int, purchase_id: str, **kw: Any) -> GrantCommand:
    return GrantCommand(project_id=project_id, operation=operation(purchase_id, **kw))


def wait_final(results: Results, project_id: int, purchase_ids: Iterable[str], timeout: float = 30.0) -> dict[str, dict]:
    """Wait until every purchase has a final outcome; returns records by id."""
    pending = list(purchase_ids)
    done: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        still = []
        for pid in pending:
            record = results.get(project_id, pid)
            if record and record["status"] in {s.value for s in FINAL_STATUSES}:
                done[pid] = record
            else:
                still.append(pid)
        pending = still
        if pending:
            time.sleep(0.1)
    if pending:
        states = {p: (results.get(project_id, p) or {}).get("status") for p in pending[:10]}
        raise AssertionError(f"{len(pending)} purchases without an outcome after {timeout}s: {states}")
    return done
