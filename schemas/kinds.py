"""The command kinds: one table, read by everything that needs to know them.

The producer's validation (``schemas.commands``), ``grants publish --kind``
and ``grants results --kind``, the ledger's Lua scripts (their namespace
table is generated from this one), the results store's statuses and counts,
and the worker's batch limits per backend all read :data:`KINDS`. Adding a
kind means a row here, its model in ``schemas.commands``, and the backend
that sends it.

Each kind has one name, used on the wire (the envelope's ``kind``), on the
command line and in results; older spellings are accepted as aliases.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from schemas.records import Status

GRANT: Final = "grant"
REVOKE: Final = "revoke"
BACKPACK_CREATE: Final = "backpack.create"
BACKPACK_DELETE: Final = "backpack.delete"
PLAYFAB_DELETE: Final = "playfab.delete"

# The backend family "inventory" is the project's own inventory backend:
# Xsolla's inventory API or PlayFab (GRANTS_DEFAULT_BACKEND, GRANTS_PROJECTS).
INVENTORY: Final = "inventory"

_PENDING = (Status.pending, Status.sending)


@dataclass(frozen=True)
class Kind:
    """One command kind and everything the code base needs to know of it."""

    name: str
    # Record namespace in Redis: part of every key of this kind, so short.
    namespace: str
    # The field that identifies one command of this kind (its dedupe key).
    identity: str
    # Which backend sends it: INVENTORY (the project's) or a fixed one.
    family: str
    # What "the backend applied it" is called.
    applied: Status
    # The statuses a command of this kind goes through, in display order.
    statuses: tuple[Status, ...]
    # Commands per backend call, per backend that sends this kind.
    per_call: dict[str, int] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    # What one line of `grants publish --kind NAME` holds, for --help.
    line: str = ""


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind(
            GRANT,
            "rec",
            "external_purchase_id",
            INVENTORY,
            Status.granted,
            (
                *_PENDING,
                Status.granted,
                Status.rejected,
                Status.failed,
                Status.in_doubt,
                Status.cancelled,
                Status.conflict,
                Status.dead,
            ),
            # Xsolla processes at most 50 operations per call and silently
            # ignores the rest. PlayFab: 50 purchases (at most 100 ItemGrants).
            per_call={"xsolla": 50, "playfab": 50},
            line="an Xsolla purchase operation",
        ),
        Kind(
            REVOKE,
            "rvk",
            "external_purchase_id",
            INVENTORY,
            Status.revoked,
            (
                Status.pending,
                Status.waiting,
                Status.sending,
                Status.revoked,
                Status.rejected,
                Status.failed,
                Status.in_doubt,
                Status.noop,
            ),
            # PlayFab: one purchase's instances per call, so each call's
            # per-item errors are about one refund (and under its 25 a call).
            per_call={"xsolla": 50, "playfab": 1},
            line='{"external_purchase_id", "comment"?}: take back what that purchase granted',
        ),
        Kind(
            BACKPACK_CREATE,
            "bpc",
            "operation_id",
            "backpack",
            Status.granted,
            (*_PENDING, Status.granted, Status.rejected, Status.failed, Status.in_doubt, Status.conflict),
            # One create is one call (it carries up to 100 items of one user).
            per_call={"backpack": 1},
            aliases=("backpack-create",),
            line='{"operation_id", "user_id", "item_type", "items"}',
        ),
        Kind(
            BACKPACK_DELETE,
            "bpd",
            "operation_id",
            "backpack",
            Status.revoked,
            (*_PENDING, Status.revoked, Status.rejected, Status.failed, Status.in_doubt, Status.conflict),
            per_call={"backpack": 1},
            aliases=("backpack-delete",),
            line='{"operation_id", "user_id", "item_id"}',
        ),
        Kind(
            PLAYFAB_DELETE,
            "pfd",
            "operation_id",
            "playfab",
            Status.revoked,
            (*_PENDING, Status.revoked, Status.rejected, Status.failed, Status.in_doubt, Status.conflict),
            # RevokeInventoryItems takes at most 25 items per call.
            per_call={"playfab": 25},
            aliases=("playfab-delete",),
            line='{"operation_id", "playfab_id", "item_instance_id", "character_id"?}',
        ),
    )
}

_BY_SPELLING = {spelling: k for k in KINDS.values() for spelling in (k.name, *k.aliases)}


def kind(spelling: str) -> Kind:
    """The kind called ``spelling`` (its name or an older alias); KeyError if none."""
    try:
        return _BY_SPELLING[spelling]
    except KeyError:
        raise KeyError(f"unknown kind {spelling!r}: one of {', '.join(KINDS)}") from None
