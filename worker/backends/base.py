"""What the worker needs from an inventory backend, and what a backend promises.

The worker reads the declarations instead of special-casing systems:
``on_unknown`` says what a lost answer leads to (resend, read back first,
or in_doubt); batches are cut at the kind table's commands per call for the
backend (schemas/kinds.py). Commands arrive typed (worker/work.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from worker.work import Lane, OnUnknown, Sendable


@dataclass(frozen=True)
class OpResult:
    """The backend's answer for one operation of a call."""

    status: str  # 'applied' | 'rejected' | 'in_doubt'
    response: dict[str, Any] | None = None
    error: str = ""


class Backend(Protocol):
    """One inventory system. ``send`` raises :mod:`worker.errors` types only."""

    name: str
    on_unknown: OnUnknown

    def send(self, lane: Lane, commands: list[Sendable]) -> list[OpResult]:
        """One call for the lane's commands; one result per command, in order."""
        ...

    def refund_data(self, kind: str, command: Sendable, response: Any) -> dict[str, Any] | None:
        """What a later revoke of this applied command will need (kept for
        the refund window), or None for kinds that are never revoked."""
        ...

    def close(self) -> None:
        """Release pooled connections."""
        ...


class ReadsBack(Backend, Protocol):
    """A backend whose ``on_unknown`` is ``reconcile``: it can read back what applied."""

    def reconcile(self, lane: Lane, commands: list[Sendable]) -> list[OpResult | None]:
        """After a lost answer: a result for what applied (or cannot be told),
        None where nothing applied. Raises a BackendError when it cannot read."""
        ...
