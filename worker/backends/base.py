"""What the worker needs from an inventory backend, and what a backend promises.

The worker reads the declarations (``idempotent``, ``reconcilable``)
instead of special-casing systems; batches are cut at the kind table's
commands per call for the backend (schemas/kinds.py); an unknown outcome is
resent only when ``idempotent`` says a
repeat cannot double a grant, or, when ``reconcilable``, after ``reconcile``
has read back what applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class OpResult:
    """The backend's answer for one operation of a call."""

    status: str  # 'applied' | 'rejected' | 'in_doubt'
    response: dict[str, Any] | None = None
    error: str = ""


class Backend(Protocol):
    """One inventory system. ``send`` raises :mod:`worker.errors` types only."""

    name: str
    idempotent: bool
    # Optional: ``reconcilable = True`` and ``reconcile(kind, project_id,
    # commands) -> list[OpResult | None]`` (None: certainly not applied).

    def send(self, kind: str, project_id: int, commands: list[dict[str, Any]]) -> list[OpResult]:
        """Send one call for the stored commands; one result per command, in order."""
        ...

    def refund_data(self, kind: str, command: dict[str, Any], response: Any) -> dict[str, Any] | None:
        """What a later revoke of this applied command will need (kept for
        the refund window), or None for kinds that are never revoked."""
        ...

    def close(self) -> None:
        """Release pooled connections."""
        ...
