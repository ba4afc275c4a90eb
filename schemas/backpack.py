"""Xsolla Backpack API: the bodies of "create items", list and errors.

Endpoints (host ``https://metaframe.xsolla.com``; auth ``Authorization:
Bearer <token>`` plus the ``X-HOST-ID`` header Xsolla issues per integration):

- ``POST /web/backpack/merchants/{merchantId}/projects/{projectId}/user/{userId}/game_keys``
  (likewise ``virtual_items``, ``virtual_currency``, ``promo_codes``): body is a
  JSON array of items, all for that one user; the answer is the array of
  created items, each with its new ``item_id``. Note the singular ``user/``.
- ``DELETE /web/backpack/merchants/{merchantId}/projects/{projectId}/users/{userId}/items/{itemId}``
  (plural ``users/``): 204 No Content, 404 for an unknown item.
- ``GET /web/backpack/merchants/{merchantId}/projects/{projectId}/users/{userId}/items?offset=&limit=``:
  array of ``BackpackItem``.

Field names, required fields, enums and the per-call limit follow Xsolla's
Backpack API reference (developers.xsolla.com/api/backpack). Where it is
silent, the rule is ours and the comment says so. Request models refuse
unknown fields (a misspelt field would otherwise be dropped silently);
response models ignore them, so a field Xsolla adds later does not break a
client parsing real answers.
"""

from __future__ import annotations

import math
import re
from enum import Enum
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    TypeAdapter,
    field_validator,
)

from schemas.xsolla import SKU_PATTERN, iso4217_codes

# Xsolla Backpack reference, every create call ("Create game keys", "Create
# virtual items", "Create virtual currency", "Create promo codes"): "Request
# Body schema: application/json ... Array (<= 100 items)". The reference
# lists only 400 "Bad request" for a body it refuses; our sandbox answers 422
# for any invalid body, this limit included (see sandbox/backpack.py).
MAX_ITEMS_PER_CALL = 100

# Ours: identifiers (SKU, external_game_id, user id, codes) end up in our Redis
# keys and logs; Xsolla documents no maximum. 255 matches schemas.xsolla.
MAX_ID_LENGTH = 255
# Ours: names and descriptions are shown in the Metaframe widget; Xsolla
# documents no maximum.
MAX_NAME_LENGTH = 255
MAX_DESCRIPTION_LENGTH = 4096
MAX_URL_LENGTH = 2048
# quantity is "integer <uint32>" in the reference.
MAX_UINT32 = 2**32 - 1

# Ours, not Xsolla's: Backpack has no idempotency key. The sandbox records this
# request header (one per call) in its audit so tests can count how many times
# a caller's operation was applied. We assume the real API ignores an unknown
# header, as HTTP servers do.
OPERATION_ID_HEADER = "X-Operation-Id"
HOST_ID_HEADER = "X-HOST-ID"

# Xsolla: only this pattern of platform value appears in the reference's
# samples ("steam"); the full enum is not published in what we could find, so
# we accept any lowercase identifier (our assumption).
PLATFORM_PATTERN = re.compile(r"[a-z0-9_]{1,64}")


class ItemType(str, Enum):
    """``item_type`` values (the list call's ``item_type`` query enum)."""

    game_key = "game_key"
    virtual_item = "virtual_item"
    virtual_currency = "virtual_currency"
    promo_code = "promo_code"


# The last path segment of each create call, and the item type it creates.
CREATE_PATHS: dict[str, ItemType] = {
    "game_keys": ItemType.game_key,
    "virtual_items": ItemType.virtual_item,
    "virtual_currency": ItemType.virtual_currency,
    "promo_codes": ItemType.promo_code,
}

Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH)]
Url = Annotated[str, Field(min_length=1, max_length=MAX_URL_LENGTH)]
Description = Annotated[str, Field(max_length=MAX_DESCRIPTION_LENGTH)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _CreateItem(_Request):
    """Fields every create call shares."""

    item_sku: Id
    item_name: Name
    image_url: Url
    description: Description | None = None
    game_name: Name | None = None
    game_image_url: Url | None = None
    # The reference marks external_game_id optional, but Xsolla's guide ("Manage
    # user Backpack") says to link every created item with a game through it,
    # and our workers always do: required here (our rule).
    external_game_id: Id

    @field_validator("item_sku")
    @classmethod
    def _sku_charset(cls, v: str) -> str:
        # Xsolla: "The SKU may only contain lowercase Latin alphanumeric
        # characters, periods, dashes, and underscores."
        if not SKU_PATTERN.fullmatch(v):
            raise ValueError("may only contain lowercase Latin letters, digits, '.', '-' and '_'")
        return v


class _WithPlatform(_CreateItem):
    # "If the platform parameter is passed when calling the method, the user
    # needs to link their game platform account to Backpack" (virtual items,
    # virtual currency). Accepted on game keys too (our assumption: the list
    # response carries platform for every item type).
    platform: str | None = None

    @field_validator("platform")
    @classmethod
    def _platform(cls, v: str | None) -> str | None:
        if v is not None and not PLATFORM_PATTERN.fullmatch(v):
            raise ValueError('must be a lowercase platform identifier such as "steam"')
        return v


class GameKeyCreate(_WithPlatform):
    """One element of the "Create game keys" body."""

    code: Id  # "The game key associated with the item." (required)


class VirtualItemCreate(_WithPlatform):
    """One element of the "Create virtual items" body."""


class VirtualCurrencyCreate(_WithPlatform):
    """One element of the "Create virtual currency" body (a currency package)."""

    price: StrictInt | StrictFloat  # required: price in ``currency``
    currency: str  # required: ISO 4217 (our reading of the reference)
    # "integer <uint32>" in the reference; 0 would be an empty package, so we
    # ask for at least 1 (our rule).
    quantity: Annotated[StrictInt, Field(ge=1, le=MAX_UINT32)]

    @field_validator("price")
    @classmethod
    def _price(cls, v: int | float) -> int | float:
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError("must be a finite number")
        if v < 0:
            raise ValueError("must not be negative")
        return v

    @field_validator("currency")
    @classmethod
    def _currency(cls, v: str) -> str:
        if v not in iso4217_codes():
            raise ValueError('must be an ISO 4217 currency code such as "USD"')
        return v


class PromoCodeCreate(_CreateItem):
    """One element of the "Create promo codes" body (the reference's sample
    has no ``platform`` for promo codes, so it is refused here)."""

    promo_code: Id


def _array(model: type[_Request]) -> Any:
    return Annotated[list[model], Field(min_length=1, max_length=MAX_ITEMS_PER_CALL)]  # type: ignore[valid-type]


GameKeysRequest = _array(GameKeyCreate)
VirtualItemsRequest = _array(VirtualItemCreate)
VirtualCurrencyRequest = _array(VirtualCurrencyCreate)
PromoCodesRequest = _array(PromoCodeCreate)

# Built once: compiling a TypeAdapter's validator is the costly part.
CREATE_REQUESTS: dict[ItemType, TypeAdapter[Any]] = {
    ItemType.game_key: TypeAdapter(GameKeysRequest),
    ItemType.virtual_item: TypeAdapter(VirtualItemsRequest),
    ItemType.virtual_currency: TypeAdapter(VirtualCurrencyRequest),
    ItemType.promo_code: TypeAdapter(PromoCodesRequest),
}


# ------------------------------------------------------------------ responses


class _Response(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class CreatedItem(_Response):
    """One element of a create call's answer (fields of the reference's sample)."""

    item_id: str  # uuid, used by delete
    item_sku: str
    item_name: str
    image_url: str
    description: str | None = None
    game_name: str | None = None
    external_game_id: str | None = None
    item_type: ItemType
    created_at: str
    item_status: str
    project_id: int
    merchant_id: int
    platform: str | None = None


class CreatedGameKey(CreatedItem):
    code: str


class CreatedVirtualItem(CreatedItem):
    pass


class CreatedVirtualCurrency(CreatedItem):
    quantity: int
    price: float
    currency: str
    # Xsolla ("Manage user Backpack"): with a Metaframe virtual currency
    # configured in the project the answer carries "is_external_vc": false.
    is_external_vc: bool


class CreatedPromoCode(CreatedItem):
    promo_code: str


CREATE_RESPONSES: dict[ItemType, TypeAdapter[Any]] = {
    ItemType.game_key: TypeAdapter(list[CreatedGameKey]),
    ItemType.virtual_item: TypeAdapter(list[CreatedVirtualItem]),
    ItemType.virtual_currency: TypeAdapter(list[CreatedVirtualCurrency]),
    ItemType.promo_code: TypeAdapter(list[CreatedPromoCode]),
}


class BackpackItem(_Response):
    """One element of "Get user's Backpack items" (every field of every type;
    the ones that do not apply to the item's type are null)."""

    item_id: str
    item_sku: str
    item_name: str
    image_url: str
    image_proxy_url: str | None = None
    description: str | None = None
    project_id: int
    merchant_id: int
    item_type: ItemType
    price: float | None = None
    currency: str | None = None
    promo_code: str | None = None
    code: str | None = None
    game_name: str | None = None
    external_game_id: str | None = None
    created_at: str
    item_status: str
    quantity: int | None = None
    is_external_vc: bool | None = None
    platform: str | None = None


LIST_ITEMS_RESPONSE: TypeAdapter[list[BackpackItem]] = TypeAdapter(list[BackpackItem])


class ErrorResponse(_Response):
    """Backpack's error body (400/404/500 and ``default`` in the reference)."""

    message_id: str | None = None
    message: str


__all__ = [
    "CREATE_PATHS",
    "CREATE_REQUESTS",
    "CREATE_RESPONSES",
    "HOST_ID_HEADER",
    "LIST_ITEMS_RESPONSE",
    "MAX_DESCRIPTION_LENGTH",
    "MAX_ID_LENGTH",
    "MAX_ITEMS_PER_CALL",
    "MAX_NAME_LENGTH",
    "MAX_UINT32",
    "MAX_URL_LENGTH",
    "OPERATION_ID_HEADER",
    "BackpackItem",
    "CreatedGameKey",
    "CreatedItem",
    "CreatedPromoCode",
    "CreatedVirtualCurrency",
    "CreatedVirtualItem",
    "ErrorResponse",
    "GameKeyCreate",
    "GameKeysRequest",
    "ItemType",
    "PromoCodeCreate",
    "PromoCodesRequest",
    "VirtualCurrencyCreate",
    "VirtualCurrencyRequest",
    "VirtualItemCreate",
    "VirtualItemsRequest",
]
