"""The typed values the ledger, the sender and the backends hand each other.

A command is parsed into its model (schemas/commands.py) once when it
arrives, and once more when its batch begins (from what the ledger stored);
from there on everything is typed: no dict is dug into after validation.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from schemas.commands import AnyCommand, RevokeCommand


class OnUnknown(str, Enum):
    """What a backend's lost answer leads to (each backend declares one)."""

    resend = "resend"  # the backend ignores a repeat: send again
    reconcile = "reconcile"  # read back what applied, send only the rest
    doubt = "doubt"  # mark in_doubt, never resend


@dataclass(frozen=True)
class Lane:
    """One project's commands of one kind: what a batch is cut from, what a
    backend is chosen by. A batch id names its lane (``b17|grant:44056``)."""

    kind: str
    project_id: int

    @classmethod
    def of_batch(cls, batch_id: str) -> Lane:
        """The lane a batch id names (the Lua prelude makes them so)."""
        kind, _, project = batch_id.partition("|")[2].partition(":")
        return cls(kind, int(project))

    def __str__(self) -> str:
        return f"{self.kind}:{self.project_id}"


@dataclass(frozen=True)
class RevokeOrder:
    """What a revoke sends: its request, and what its grant left to revoke
    with (Backend.refund_data of the grant; None if nothing was kept)."""

    request: RevokeCommand
    refund: dict[str, Any] | None

    @property
    def record_id(self) -> str:
        return self.request.external_purchase_id


# A command as a batch carries it to its backend.
Sendable = AnyCommand | RevokeOrder


@dataclass(frozen=True)
class Arrival:
    """One valid command as it arrived: its place (``source``: the stream
    entry id, or an older version's message id and position) and its
    publish time."""

    command: AnyCommand
    enqueued_at: int | None
    source: str


@dataclass(frozen=True)
class Refused:
    """An arrival that is no valid command: it becomes a dead letter."""

    source: str
    raw: str
    reason: str
    record_id: str = ""


@dataclass(frozen=True)
class Ingested:
    """What became of one incoming command."""

    command: AnyCommand
    result: str  # new | dup | conflict | revoked | (revokes) waiting | cancelled | noop | in_doubt | rejected


@dataclass(frozen=True)
class BatchWork:
    """A batch this process now holds under ``token``: send it, then complete it."""

    batch_id: str
    token: str
    lane: Lane
    attempt: int
    # Record ids (purchase or operation ids) and their commands, in batch order.
    ids: list[str]
    commands: list[Sendable]
    on_unknown: OnUnknown
    # The last answer was lost and the backend can be read back: do that first.
    reconcile: bool = False

    @property
    def kind(self) -> str:
        return self.lane.kind

    @property
    def project_id(self) -> int:
        return self.lane.project_id

    def without(self, done: set[str]) -> BatchWork:
        """The batch without the members in ``done`` (settled apart)."""
        kept = [i for i, record_id in enumerate(self.ids) if record_id not in done]
        return replace(self, ids=[self.ids[i] for i in kept], commands=[self.commands[i] for i in kept])


@dataclass(frozen=True)
class Outcome:
    """The final word on one command of a batch."""

    record_id: str
    status: str
    result: dict | list | None = None
    error: str = ""
    # What a revoke of this (granted) purchase will need, kept for the refund
    # window (Backend.refund_data).
    refund: dict | None = None
