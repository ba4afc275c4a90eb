"""What the worker needs from an inventory backend, and what a backend promises.

The worker reads the declarations (``max_batch``, ``idempotent``) instead of
special-casing systems: batches are cut at ``max_batch``; an unknown outcome is
resent only when ``idempotent`` says a repeat cannot double a grant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class OpResult:
    """The backend's answer for one operation of a call."""

    status: str  # 'granted' | 'rejected' | 'in_doubt'
    response: dict[str, Any] | None = None
    error: str = ""


class Backend(Protocol):
    """One inventory system. ``send`` raises :mod:`worker.errors` types only."""

    name: str
    max_batch: int
    idempotent: bool

    def send(self, kind: str, project_id: int, operations: list[dict[str, Any]]) -> list[OpResult]:
        """Send one call; one result per operation, in the order given."""
        ...

    def close(self) -> None:
        """Release pooled connections."""
        ...
