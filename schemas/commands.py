"""The command envelope that travels from producers to workers.

A grant command is exactly one backend operation plus where it goes
(``project_id``). Its identity is ``(project_id, external_purchase_id)``; its
``payload_hash`` tells a harmless repeat (same hash) from a conflict. A revoke
command (a refund or chargeback) names a purchase by the same identity and
takes back exactly what that purchase granted, once.
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from typing import Annotated, Any, Literal, Self

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from schemas.kinds import BACKPACK_CREATE, BACKPACK_DELETE, GRANT, KINDS, PLAYFAB_DELETE, REVOKE
from schemas.paths import PathId
from schemas.xsolla import MAX_COMMENT_LENGTH, MAX_ID_LENGTH, PurchaseOperation

# Bumped when the envelope changes shape; workers refuse versions they do not know.
ENVELOPE_VERSION = 1
# The validation context of a command read back from its record (it passed
# every check when it was ingested, its encoding included).
STORED: dict[str, Any] = {"stored": True}


class _Canonical:
    """Canonical JSON and its digest, shared by every command kind."""

    kind: str
    project_id: int

    def _identity_body(self) -> dict[str, Any]:  # pragma: no cover - each kind defines it
        raise NotImplementedError

    @cached_property
    def canonical(self) -> bytes:
        """Byte-stable JSON of everything that defines this command (computed once)."""
        return orjson.dumps(
            {"kind": self.kind, "project_id": self.project_id, **self._identity_body()},
            option=orjson.OPT_SORT_KEYS,
        )

    def payload_hash(self) -> str:
        """Short digest of :attr:`canonical`; equal hashes mean the same command."""
        # The first 64 bits of blake2b-128 of the canonical JSON, in hex. A
        # hash is only ever compared with the claim of the same id, so a
        # changed payload passes for a repeat with a chance of 2^-64; 16
        # characters instead of 32 in every claim. Claims written with the
        # whole digest compare by its first 16 characters (ingest.lua).
        return hashlib.blake2b(self.canonical, digest_size=16).hexdigest()[:16]

    def _stored_body(self) -> dict[str, Any]:
        # What the record keeps: the identity body without the record id.
        return self._identity_body()

    def stored(self, refund: dict[str, Any] | None = None) -> str:
        """The command as its record keeps it: only what the record's key
        (kind, project, id) does not already say; with ``refund``, also
        without what the refund data repeats (its claim keeps that, as long
        as the record lives). :func:`from_stored` puts it together again."""
        body = self._stored_body()
        if refund:
            body = {k: v for k, v in body.items() if k not in refund or refund[k] != v}
        return orjson.dumps(body).decode()

    def to_message(self, enqueued_at_ms: int | None = None) -> dict[str, Any]:
        """The envelope as it travels (JSON-safe): version, kind, project, fields.

        ``enqueued_at`` is optional: on the command stream the entry id is
        the publish time.
        """
        message = {"v": ENVELOPE_VERSION, **self.model_dump(mode="json", exclude_none=True)}  # type: ignore[attr-defined]
        if enqueued_at_ms is not None:
            message["enqueued_at"] = enqueued_at_ms
        return message

    def wire(self) -> bytes:
        """The envelope as one stream entry's ``command`` field holds it."""
        return orjson.dumps(self.to_message())

    @model_validator(mode="after")
    def _encodable(self, info: ValidationInfo) -> Self:
        # Anything we cannot encode we cannot store, hash or send: integers
        # beyond 64 bits, lone surrogates. Refuse it here, as invalid input,
        # so it never takes its chunk down with it. A command read back from
        # its record was encoded when it was stored: not again.
        if info.context is STORED:
            return self
        try:
            _ = self.canonical
        except (TypeError, ValueError) as exc:
            raise ValueError(f"cannot be encoded as JSON: {exc}") from None
        return self


class GrantCommand(_Canonical, BaseModel):
    """Grant the items of one purchase (one Xsolla purchase operation)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["grant"] = "grant"
    # Xsolla's project_id is an integer path parameter.
    project_id: Annotated[StrictInt, Field(gt=0, lt=2**63)]
    operation: PurchaseOperation

    @property
    def external_purchase_id(self) -> str:
        return self.operation.purchase.external_purchase_id

    @property
    def record_id(self) -> str:
        """The id its record is kept under (its dedupe key within the project)."""
        return self.operation.purchase.external_purchase_id

    @property
    def user_id(self) -> str:
        return self.operation.user.id

    @cached_property
    def _dumped(self) -> bytes:
        # The operation as JSON, dumped once (keys sorted, as the canonical
        # form has them): its hash, its record and its call all start from
        # it, and reading it back costs less than another dump.
        return orjson.dumps(self.operation.model_dump(mode="json", exclude_none=True), option=orjson.OPT_SORT_KEYS)

    def body(self) -> dict[str, Any]:
        """The operation as the backend expects it (unset optional fields left
        out); a new dict each time, the caller's to change."""
        body: dict[str, Any] = orjson.loads(self._dumped)
        return body

    def _identity_body(self) -> dict[str, Any]:
        # Sorted already: the canonical form takes it as it is.
        return {"operation": orjson.Fragment(self._dumped)}

    def _stored_body(self) -> dict[str, Any]:
        operation = self.body()
        del operation["purchase"]["external_purchase_id"]
        return operation


class RevokeCommand(_Canonical, BaseModel):
    """Take back what one purchase granted (a refund or a chargeback)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["revoke"] = "revoke"
    project_id: Annotated[StrictInt, Field(gt=0, lt=2**63)]
    external_purchase_id: Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]
    # Sent to the backend as the revoke's comment ("Refund", "Chargeback 123").
    comment: Annotated[str | None, Field(min_length=1, max_length=MAX_COMMENT_LENGTH)] = None

    @property
    def record_id(self) -> str:
        """The id its record is kept under: its purchase's."""
        return self.external_purchase_id

    def _identity_body(self) -> dict[str, Any]:
        return {"external_purchase_id": self.external_purchase_id, "comment": self.comment}

    def _stored_body(self) -> dict[str, Any]:
        return {} if self.comment is None else {"comment": self.comment}


OperationId = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]


class _Operation(_Canonical, BaseModel):
    """A command identified by the producer's own operation id (its idempotency key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    project_id: Annotated[StrictInt, Field(gt=0, lt=2**63)]
    operation_id: OperationId

    @property
    def record_id(self) -> str:
        """The id its record is kept under: the producer's operation id."""
        return self.operation_id

    @property
    def external_purchase_id(self) -> str:
        """As the outcome stream names every record id."""
        return self.operation_id

    def _identity_body(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"kind", "project_id"}, exclude_none=True)

    def _stored_body(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"kind", "project_id", "operation_id"}, exclude_none=True)


class BackpackCreateCommand(_Operation):
    """Create items in a user's Xsolla Backpack: game keys, virtual items,
    virtual currency packages or promo codes (one call, up to 100 items)."""

    kind: Literal["backpack.create"] = "backpack.create"
    user_id: PathId
    item_type: Literal["game_keys", "virtual_items", "virtual_currency", "promo_codes"]
    items: list[dict[str, Any]]

    @field_validator("items")
    @classmethod
    def _items_as_the_api_takes_them(cls, items: list[dict[str, Any]], info: ValidationInfo) -> list[dict[str, Any]]:
        from schemas.backpack import CREATE_PATHS, CREATE_REQUESTS

        item_type = info.data.get("item_type")
        if item_type is None:
            return items  # item_type itself is reported invalid
        # Validated with the Backpack request model of that item type, so the
        # field names, limits and 100 items per call are the API's.
        try:
            CREATE_REQUESTS[CREATE_PATHS[item_type]].validate_python(items)
        except ValidationError as exc:
            raise ValueError(
                "; ".join(
                    "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"]).lstrip(".") + f": {e['msg']}"
                    for e in exc.errors(include_url=False)
                )
            ) from None
        return items


class BackpackDeleteCommand(_Operation):
    """Delete one item from a user's Backpack."""

    kind: Literal["backpack.delete"] = "backpack.delete"
    user_id: PathId
    item_id: PathId


class PlayFabDeleteCommand(_Operation):
    """Revoke one item instance from a PlayFab player's inventory."""

    kind: Literal["playfab.delete"] = "playfab.delete"
    playfab_id: OperationId
    item_instance_id: OperationId
    character_id: OperationId | None = None


# Each model's ``kind`` is its name in the kind table (a Literal must spell
# it; tests/unit/schemas tie the two together).
AnyCommand = GrantCommand | RevokeCommand | BackpackCreateCommand | BackpackDeleteCommand | PlayFabDeleteCommand
# The model of each kind in the table (schemas/kinds.py).
MODELS: dict[str, type[AnyCommand]] = {
    GRANT: GrantCommand,
    REVOKE: RevokeCommand,
    BACKPACK_CREATE: BackpackCreateCommand,
    BACKPACK_DELETE: BackpackDeleteCommand,
    PLAYFAB_DELETE: PlayFabDeleteCommand,
}
# ``kind`` discriminates; a message without one is a grant.
Command = Annotated[AnyCommand, Field(discriminator="kind")]
_command_adapter: TypeAdapter[AnyCommand] = TypeAdapter(Command)


def from_stored(
    kind: str, project_id: int | str, record_id: str, stored: Any, refund: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """A command as a message again (kind, project_id and every field), from
    what its record keeps (:meth:`stored`, parsed or as text) and, for a
    finished grant, its claim's refund data. Records of earlier versions
    kept the whole command: taken as they are. None for a record that holds
    no command (a revoke's tombstone of a grant never seen)."""
    body = orjson.loads(stored) if isinstance(stored, str | bytes) else stored
    if not isinstance(body, dict):
        return None
    if "kind" in body and "project_id" in body:
        return body
    # Only what stored(refund) left out comes back from the refund data: a
    # field of the command. The rest of it (PlayFab's granted instances) is
    # for the revoke, not part of the grant.
    fields = PurchaseOperation.model_fields if kind == GRANT else MODELS[kind].model_fields
    body = {**{k: v for k, v in (refund or {}).items() if k in fields and k not in body}, **body}
    message: dict[str, Any] = {"kind": kind, "project_id": int(project_id)}
    if kind == GRANT:
        purchase = {**(body.get("purchase") or {}), "external_purchase_id": record_id}
        message["operation"] = {**body, "purchase": purchase}
    elif kind == REVOKE:
        message.update(external_purchase_id=record_id, **body)
    else:
        message.update(operation_id=record_id, **body)
    return message


def command_from_stored(
    kind: str, project_id: int | str, record_id: str, stored: str, refund: dict[str, Any] | None = None
) -> AnyCommand:
    """:func:`from_stored`, validated into the kind's model."""
    return MODELS[kind].model_validate(from_stored(kind, project_id, record_id, stored, refund), context=STORED)


_ALIASES = {alias: k.name for k in KINDS.values() for alias in k.aliases}


def parse_command(message: Any) -> tuple[AnyCommand, int | None]:
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
    body.setdefault("kind", GRANT)
    if isinstance(body["kind"], str) and body["kind"] in _ALIASES:
        body["kind"] = _ALIASES[body["kind"]]
    command = _command_adapter.validate_python(body)
    return command, enqueued_at if isinstance(enqueued_at, int) else None
