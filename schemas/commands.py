"""The command envelope that travels from producers to workers.

A grant command is exactly one backend operation plus where it goes
(``project_id``). Its identity is ``(project_id, external_purchase_id)``; its
``payload_hash`` tells a harmless repeat (same hash) from a conflict.
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from schemas.xsolla import PurchaseOperation

# Bumped when the envelope changes shape; workers refuse versions they do not know.
ENVELOPE_VERSION = 1


class GrantCommand(BaseModel):
    """Grant the items of one purchase (one Xsolla purchase operation)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["grant"] = "grant"
    # Xsolla's project_id is an integer path parameter.
    project_id: Annotated[int, Field(gt=0, lt=2**63)]
    operation: PurchaseOperation

    @property
    def external_purchase_id(self) -> str:
        return self.operation.purchase.external_purchase_id

    @property
    def user_id(self) -> str:
        return self.operation.user.id

    def body(self) -> dict[str, Any]:
        """The operation as the backend expects it (unset optional fields left out)."""
        return self.operation.model_dump(mode="json", exclude_none=True)

    @cached_property
    def canonical(self) -> bytes:
        """Byte-stable JSON of everything that defines this command (computed once)."""
        return orjson.dumps(
            {"kind": self.kind, "project_id": self.project_id, "operation": self.body()},
            option=orjson.OPT_SORT_KEYS,
        )

    def payload_hash(self) -> str:
        """Short digest of :attr:`canonical`; equal hashes mean the same command."""
        return hashlib.blake2b(self.canonical, digest_size=16).hexdigest()

    def to_message(self, enqueued_at_ms: int) -> dict[str, Any]:
        """The broker representation (JSON-safe)."""
        return {
            "v": ENVELOPE_VERSION,
            "kind": self.kind,
            "project_id": self.project_id,
            "operation": self.body(),
            "enqueued_at": enqueued_at_ms,
        }


# The union grows with the delete/revoke kinds; ``kind`` discriminates.
Command = Annotated[GrantCommand, Field(discriminator="kind")]
_command_adapter: TypeAdapter[GrantCommand] = TypeAdapter(Command)


def parse_command(message: Any) -> tuple[GrantCommand, int | None]:
    """Validate a broker message; returns the command and its enqueue time.

    Raises ``pydantic.ValidationError`` or ``ValueError`` for anything that is
    not a command this worker understands.
    """
    if not isinstance(message, dict):
        raise ValueError(f"a command is a JSON object, got {type(message).__name__}")
    version = message.get("v")
    if version != ENVELOPE_VERSION:
        raise ValueError(f"unknown envelope version {version!r}")
    enqueued_at = message.get("enqueued_at")
    body = {k: v for k, v in message.items() if k not in ("v", "enqueued_at")}
    command = _command_adapter.validate_python(body)
    return command, enqueued_at if isinstance(enqueued_at, int) else None
