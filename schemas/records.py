"""States of a command in the results store."""

from __future__ import annotations

from enum import Enum


class Status(str, Enum):
    """Where a command is (FINAL_STATUSES are outcomes; the statuses each
    kind goes through are in schemas/kinds.py)."""

    pending = "pending"  # accepted, waiting in a buffer for its batch
    sending = "sending"  # taken into a batch; the backend call may be under way
    granted = "granted"  # the backend confirmed it
    rejected = "rejected"  # the backend refused it (4xx); resending cannot help
    failed = "failed"  # certainly not applied, retries exhausted; safe to replay
    in_doubt = "in_doubt"  # sent, answer lost: may or may not be applied
    conflict = "conflict"  # a repeat of a purchase id with a different payload
    dead = "dead"  # a broker message that is not a valid command (a dead letter)
    cancelled = "cancelled"  # a grant revoked before it was sent: never sent
    # Revokes (refunds) only:
    waiting = "waiting"  # the grant it undoes is being sent: wait for its outcome
    revoked = "revoked"  # the backend took the items back
    noop = "noop"  # nothing to revoke: the grant never applied


FINAL_STATUSES = frozenset({
    Status.granted, Status.rejected, Status.failed, Status.in_doubt, Status.cancelled,
    Status.revoked, Status.noop,
})

# Outcomes ops may send again with `grants replay`. Never 'granted' (it would
# double the grant) and never 'rejected' (the backend refused the payload; the
# same payload is refused again).
REPLAYABLE = frozenset({Status.failed, Status.in_doubt})
