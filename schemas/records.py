"""Commands in the results store: their states, and how a record is stored.

A record is one Redis string per command at ``<prefix>:<namespace>:<project
id>:<id>`` (the namespace per kind is in schemas/kinds.py):
``<header JSON>\n<command JSON>[\n<answer JSON>]``, the header a flat
object with ``st`` (the status), ``rcv`` (received, ms) and the other times
as offsets from it (``e`` enqueued, ``s`` sent, ``c`` completed; records of
earlier versions hold ``enq``, ``snt``, ``cpl`` in ms), ``rq`` (when an
operator put it back in its buffer, ms, absolute), ``att`` (calls), ``dup``,
``spl``, ``bat``, ``err`` and ``hist``. The command is what its key
does not say already (schemas/commands.py ``stored``). The ledger's Lua
scripts write it; :func:`parse_record` reads it.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Any


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


FINAL_STATUSES = frozenset(
    {
        Status.granted,
        Status.rejected,
        Status.failed,
        Status.in_doubt,
        Status.cancelled,
        Status.revoked,
        Status.noop,
    }
)

# Outcomes ops may send again with `grants replay`. Never 'granted' (it would
# double the grant) and never 'rejected' (the backend refused the payload; the
# same payload is refused again).
REPLAYABLE = frozenset({Status.failed, Status.in_doubt})


# Times after ``rcv`` are stored as offsets from it, under one letter.
_OFFSETS = {"e": "enq", "s": "snt", "c": "cpl"}


def parse_record(raw: str) -> tuple[dict[str, Any], Any, Any]:
    """(header, command, answer) of a stored record; the header's times are
    absolute (ms), whichever way they were stored."""
    text, _, rest = raw.partition("\n")
    command, _, answer = rest.partition("\n")
    header = json.loads(text)
    for short, long in _OFFSETS.items():
        if short in header:
            header[long] = int(header.pop(short)) + int(header["rcv"])
    return header, json.loads(command), json.loads(answer) if answer else None


def record_key(prefix: str, namespace: str, project_id: int | str, record_id: str) -> str:
    """Where a record is stored."""
    return f"{prefix}:{namespace}:{project_id}:{record_id}"
